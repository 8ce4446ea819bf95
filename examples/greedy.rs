//! A greedy jobserver client, as cargo is while it has queued work (rust-lang/cargo#17391):
//! it takes every token it can get and keeps asking.
//!
//! ```text
//! greedy --pool PATH --threads T [--hold-ms MS] --log FILE [--held FILE]
//! ```
//! Opens PATH once (read-write, blocking) and runs T threads. Each reads one token
//! (a blocking read), logs `start gT.N`, holds the token for MS ms, logs `end gT.N`,
//! writes the byte back and at once reads again. Without `--hold-ms` a token is held
//! until a line arrives on stdin: each line makes one holding thread give its token
//! back (and end). After every token taken or given back it writes the number it
//! holds now to `--held` (a temporary name, then renamed). A read or write that fails
//! ends the thread with a message; the process runs until it is killed.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::Duration;

use common::{Args, fail, log_event};

struct Greedy {
    pool: File,
    hold: Option<Duration>,
    log: PathBuf,
    held_file: Option<PathBuf>,
    /// Tokens held now; the lock also keeps two threads from writing `--held` at once.
    held: Mutex<usize>,
    /// One message per stdin line: a token held without `--hold-ms` goes back.
    release: Mutex<mpsc::Receiver<()>>,
}

impl Greedy {
    fn count(&self, taken: bool) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if taken {
            *held += 1;
        } else {
            *held -= 1;
        }
        if let Some(path) = &self.held_file {
            write_atomically(path, &format!("{held}\n"));
        }
    }

    fn run(&self, thread: usize) {
        for n in 1.. {
            let mut token = [0u8];
            if let Err(err) = (&self.pool).read_exact(&mut token) {
                eprintln!("greedy: thread {thread}: reading a token: {err}");
                return;
            }
            let id = format!("g{thread}.{n}");
            self.count(true);
            log_event(&self.log, "start", &id);
            let released = if let Some(hold) = self.hold {
                thread::sleep(hold);
                false
            } else {
                let line = self
                    .release
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv();
                if line.is_err() {
                    // stdin ended: held until the process is killed.
                    loop {
                        thread::park();
                    }
                }
                true
            };
            log_event(&self.log, "end", &id);
            self.count(false);
            if let Err(err) = (&self.pool).write_all(&token) {
                eprintln!("greedy: thread {thread}: giving a token back: {err}");
                return;
            }
            if released {
                return;
            }
        }
    }
}

fn write_atomically(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    fs::write(&partial, text)
        .and_then(|()| fs::rename(&partial, path))
        .unwrap_or_else(|err| fail(&format!("cannot write {}: {err}", path.display())));
}

fn main() {
    let mut pool = None;
    let mut threads = 1usize;
    let mut hold = None;
    let mut log = None;
    let mut held_file = None;
    let mut args = Args::new();
    while let Some(option) = args.next_option() {
        match option.as_str() {
            "--pool" => pool = Some(PathBuf::from(args.value(&option))),
            "--threads" => threads = args.number(&option),
            "--hold-ms" => hold = Some(Duration::from_millis(args.number(&option))),
            "--log" => log = Some(PathBuf::from(args.value(&option))),
            "--held" => held_file = Some(PathBuf::from(args.value(&option))),
            _ => fail(&format!("unknown argument {option:?}")),
        }
    }
    let (Some(pool), Some(log)) = (pool, log) else {
        fail("usage: greedy --pool PATH --threads T [--hold-ms MS] --log FILE [--held FILE]");
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pool)
        .unwrap_or_else(|err| fail(&format!("cannot open {}: {err}", pool.display())));
    let (lines, release) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() || lines.send(()).is_err() {
                break;
            }
        }
    });
    let greedy = Arc::new(Greedy {
        pool: file,
        hold,
        log,
        held_file,
        held: Mutex::new(0),
        release: Mutex::new(release),
    });
    if let Some(path) = &greedy.held_file {
        write_atomically(path, "0\n");
    }
    let workers: Vec<_> = (1..=threads)
        .map(|thread| {
            let greedy = Arc::clone(&greedy);
            thread::spawn(move || greedy.run(thread))
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    // Every thread failed: stay, as a holder of the pool, until killed.
    loop {
        thread::park();
    }
}
