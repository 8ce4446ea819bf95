//! A stand-in for a client that speaks only the fifo style of the jobserver, as upstream
//! ninja 1.13 and Portage do (PyPI's ninja also takes pipes, so it cannot show this).
//!
//! ```text
//! fifo_client [--strict] --jobs K -- COMMAND [ARG...]
//! ```
//! Runs COMMAND K times, `%n` in an ARG replaced by the job's number 1..K, as many at
//! once as the jobserver in MAKEFLAGS allows: the first in its implicit slot, each further
//! one under a token read (blocking) from the fifo and written back when it ends. Under a
//! pipe jobserver it says "Pipe-based protocol is not supported!", as ninja does, and runs
//! all K at once. `--strict`: as upstream ninja 1.13 (src/jobserver-posix.cc), the opened
//! path must be a fifo or a character device: anything else (a regular file, such as the
//! token file of `jsrun --serve --accounting`) is refused with "Not a fifo path: PATH"
//! and exit 1. Exits 0 when every job succeeded.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let strict = args.first().is_some_and(|a| a == "--strict");
    if strict {
        args.remove(0);
    }
    let (jobs, command) = match args.as_slice() {
        [flag, k, dash, command @ ..]
            if flag == "--jobs" && dash == "--" && !command.is_empty() =>
        {
            (k.parse::<usize>().expect("--jobs K"), command.to_vec())
        }
        _ => {
            eprintln!("usage: fifo_client [--strict] --jobs K -- COMMAND [ARG...]");
            std::process::exit(2);
        }
    };
    let makeflags = std::env::var("MAKEFLAGS").unwrap_or_default();
    let auth = makeflags
        .split(' ')
        .filter_map(|w| w.strip_prefix("--jobserver-auth="))
        .next_back();
    let fifo = match auth {
        Some(auth) => {
            if let Some(path) = auth.strip_prefix("fifo:") {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .expect("open the jobserver fifo");
                let kind = file
                    .metadata()
                    .expect("fstat the jobserver fifo")
                    .file_type();
                if strict && !kind.is_fifo() && !kind.is_char_device() {
                    eprintln!("fifo_client: error: Not a fifo path: {path}");
                    std::process::exit(1);
                }
                Some(Arc::new(file))
            } else {
                eprintln!("fifo_client: warning: Pipe-based protocol is not supported!");
                None
            }
        }
        None => None,
    };
    let implicit = Arc::new(Mutex::new(true));
    let threads: Vec<_> = (1..=jobs)
        .map(|n| {
            let argv: Vec<String> = command
                .iter()
                .map(|a| a.replace("%n", &n.to_string()))
                .collect();
            let fifo = fifo.clone();
            let implicit = Arc::clone(&implicit);
            thread::spawn(move || run(&argv, fifo.as_deref(), &implicit))
        })
        .collect();
    let ok = threads.into_iter().all(|t| t.join().unwrap_or(false));
    std::process::exit(if ok { 0 } else { 1 });
}

/// One job: in the implicit slot if free, else under a token; without a jobserver, at once.
fn run(argv: &[String], fifo: Option<&File>, implicit: &Mutex<bool>) -> bool {
    let in_implicit = std::mem::replace(&mut *implicit.lock().unwrap(), false);
    let token = match (in_implicit, fifo) {
        (false, Some(mut fifo)) => {
            let mut byte = [0u8; 1];
            fifo.read_exact(&mut byte).expect("read a token");
            Some(byte[0])
        }
        _ => None,
    };
    let ok = Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .is_ok_and(|s| s.success());
    match (token, fifo) {
        (Some(byte), Some(mut fifo)) => fifo.write_all(&[byte]).expect("give the token back"),
        _ if in_implicit => *implicit.lock().unwrap() = true,
        _ => {}
    }
    ok
}
