//! A job for the integration tests: it records when it runs, can wait for
//! its siblings, and reports what it inherited.
//!
//! ```text
//! probe [--log FILE] [--id ID] [--env-out FILE] [--print TEXT]...
//!       [--barrier DIR --want K [--deadline-ms MS]] [--sleep-ms MS]
//!       [--exit CODE] [--signal SIG]
//! ```
//! Order: `start` line, `--env-out` dump, `--print`, barrier, sleep, `end`
//! line, then `--signal` (dies of it) or `--exit`.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use common::{Args, barrier, fail, log_event};

fn main() {
    let mut log = None;
    let mut id = String::from("-");
    let mut env_out = None;
    let mut prints = Vec::new();
    let mut barrier_dir = None;
    let mut want = 1usize;
    let mut deadline_ms = 10_000u64;
    let mut sleep_ms = 0u64;
    let mut exit = 0i32;
    let mut signal = None;

    let mut args = Args::new();
    while let Some(option) = args.next_option() {
        match option.as_str() {
            "--log" => log = Some(PathBuf::from(args.value(&option))),
            "--id" => id = args.value(&option),
            "--env-out" => env_out = Some(PathBuf::from(args.value(&option))),
            "--print" => prints.push(args.value(&option)),
            "--barrier" => barrier_dir = Some(PathBuf::from(args.value(&option))),
            "--want" => want = args.number(&option),
            "--deadline-ms" => deadline_ms = args.number(&option),
            "--sleep-ms" => sleep_ms = args.number(&option),
            "--exit" => exit = args.number(&option),
            "--signal" => signal = Some(args.number::<i32>(&option)),
            _ => fail(&format!("unknown argument {option:?}")),
        }
    }

    if let Some(log) = &log {
        log_event(log, "start", &id);
    }
    if let Some(path) = &env_out {
        dump_environment(path);
    }
    for text in &prints {
        println!("{text}");
    }
    if let Some(dir) = &barrier_dir {
        barrier(dir, &id, want, Duration::from_millis(deadline_ms));
    }
    if sleep_ms > 0 {
        thread::sleep(Duration::from_millis(sleep_ms));
    }
    if let Some(log) = &log {
        log_event(log, "end", &id);
    }
    if let Some(signal) = signal {
        die_of(signal);
    }
    std::process::exit(exit);
}

/// Writes `env NAME=VALUE` (or `unset NAME`) for the jobserver variables,
/// `fd N TARGET flags=OCTAL` for every open descriptor, and the signal lines
/// of /proc/self/status. Written to a temporary name first, then renamed, so a
/// reader never sees half a file.
fn dump_environment(path: &PathBuf) {
    let mut text = String::new();
    for name in ["MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "GNUMAKEFLAGS"] {
        match std::env::var_os(name) {
            Some(value) => writeln!(text, "env {name}={}", value.to_string_lossy()).unwrap(),
            None => writeln!(text, "unset {name}").unwrap(),
        }
    }
    let mut fds: Vec<(i32, String)> = fs::read_dir("/proc/self/fd")
        .unwrap_or_else(|err| fail(&format!("cannot list /proc/self/fd: {err}")))
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    for (fd, target) in fds {
        // The directory listing itself shows up as one more descriptor.
        if target.starts_with("/proc/") && target.ends_with("/fd") {
            continue;
        }
        let flags = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix("flags:").map(|f| f.trim().to_owned()))
            })
            .unwrap_or_else(|| "?".to_owned());
        writeln!(text, "fd {fd} {target} flags={flags}").unwrap();
    }
    let status = fs::read_to_string("/proc/self/status")
        .unwrap_or_else(|err| fail(&format!("cannot read /proc/self/status: {err}")));
    for line in status.lines() {
        if line.starts_with("Sig") {
            writeln!(text, "{line}").unwrap();
        }
    }
    let partial = path.with_extension("partial");
    fs::write(&partial, text)
        .unwrap_or_else(|err| fail(&format!("cannot write {}: {err}", partial.display())));
    fs::rename(&partial, path)
        .unwrap_or_else(|err| fail(&format!("cannot rename to {}: {err}", path.display())));
}

/// Dies of `signal`, whatever disposition was inherited.
fn die_of(signal: i32) -> ! {
    // SAFETY: resetting a disposition to the default and raising a signal in
    // a single-threaded process touch no memory of ours.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    fail(&format!("still alive after raising signal {signal}"))
}
