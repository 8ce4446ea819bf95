//! A jobserver client built the way cargo uses the `jobserver` crate: a
//! helper thread (`into_helper_thread`) asks for tokens while the main
//! thread runs a job in the implicit slot whenever that slot is free. Unlike
//! `crate_client`, which blocks in `acquire()` even after its implicit slot
//! has become free, it never waits for a token it does not need, so many of
//! them can share a small pool without a deadlock.
//!
//! ```text
//! crate_helper --jobs K --out FILE [--log FILE] [--id-prefix P] [--sleep-ms MS]
//! ```
//! Jobs log like the probe. At the end it writes `tokens N` (the most tokens
//! held at once) to the out file. Without a usable jobserver it fails with
//! status 99.

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{Args, fail, log_event};

enum Event {
    Token(std::io::Result<jobserver::Acquired>),
    /// A job ended; `true` when it ran in the implicit slot.
    Done(bool),
}

fn main() {
    let mut jobs = 1usize;
    let mut out = None;
    let mut log = None;
    let mut prefix = String::from("h");
    let mut sleep_ms = 0u64;

    let mut args = Args::new();
    while let Some(option) = args.next_option() {
        match option.as_str() {
            "--jobs" => jobs = args.number(&option),
            "--out" => out = Some(PathBuf::from(args.value(&option))),
            "--log" => log = Some(PathBuf::from(args.value(&option))),
            "--id-prefix" => prefix = args.value(&option),
            "--sleep-ms" => sleep_ms = args.number(&option),
            _ => fail(&format!("unknown argument {option:?}")),
        }
    }
    let out = out.unwrap_or_else(|| fail("--out FILE is required"));

    // SAFETY: called first thing in main, before any file is opened, so the
    // descriptors named in the environment are the ones we inherited.
    let client = unsafe { jobserver::Client::from_env_ext(true) }
        .client
        .unwrap_or_else(|err| fail(&format!("no usable jobserver: {err}")));

    let (events, inbox) = mpsc::channel();
    let tokens = events.clone();
    let helper = client
        .into_helper_thread(move |token| {
            let _ = tokens.send(Event::Token(token));
        })
        .unwrap_or_else(|err| fail(&format!("helper thread: {err}")));

    let run = |n: usize, implicit: bool, token: Option<jobserver::Acquired>| {
        let id = format!("{prefix}{n}");
        let log = log.clone();
        let events = events.clone();
        thread::spawn(move || {
            if let Some(log) = &log {
                log_event(log, "start", &id);
            }
            thread::sleep(Duration::from_millis(sleep_ms));
            if let Some(log) = &log {
                log_event(log, "end", &id);
            }
            // The token goes back before the main thread hears of the end.
            drop(token);
            let _ = events.send(Event::Done(implicit));
        });
    };

    let mut next = 1usize;
    let mut running = 0usize;
    let mut implicit_free = true;
    let mut requested = 0usize;
    let mut held = 0usize;
    let mut peak = 0usize;
    loop {
        if implicit_free && next <= jobs {
            implicit_free = false;
            run(next, true, None);
            next += 1;
            running += 1;
        }
        // One request in flight per job not started yet; a token that comes
        // when none is needed any more goes straight back.
        let waiting = jobs + 1 - next;
        while requested < waiting {
            helper.request_token();
            requested += 1;
        }
        if running == 0 && next > jobs {
            break;
        }
        match inbox.recv() {
            Ok(Event::Token(token)) => {
                requested -= 1;
                let token = token.unwrap_or_else(|err| fail(&format!("acquire: {err}")));
                if next <= jobs {
                    held += 1;
                    peak = peak.max(held);
                    run(next, false, Some(token));
                    next += 1;
                    running += 1;
                }
            }
            Ok(Event::Done(implicit)) => {
                running -= 1;
                if implicit {
                    implicit_free = true;
                } else {
                    held -= 1;
                }
            }
            Err(_) => fail("event channel closed"),
        }
    }
    // Stops the helper; a token it acquired meanwhile arrives in the inbox
    // and goes back when dropped with it.
    drop(helper);
    drop(inbox);
    std::fs::write(&out, format!("tokens {peak}\n"))
        .unwrap_or_else(|err| fail(&format!("cannot write {}: {err}", out.display())));
}
