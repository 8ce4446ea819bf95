//! An independent jobserver client built on the `jobserver` crate, to check
//! that jsrun's pool serves other implementations.
//!
//! ```text
//! crate_client --jobs K --out FILE [--log FILE] [--id-prefix P]
//!              [--barrier DIR --want W [--deadline-ms MS]] [--sleep-ms MS]
//! ```
//! Runs K jobs (threads): the first in its implicit slot, each further
//! concurrent one under a token from `acquire()`. Jobs log like the probe.
//! At the end it writes `tokens N` (the most tokens held at once) and
//! `var NAME` (the variable the jobserver came from) to the out file. Without
//! a usable jobserver it fails with status 99.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::{Args, barrier, fail, log_event};

struct Job {
    id: String,
    log: Option<PathBuf>,
    barrier: Option<(PathBuf, usize, Duration)>,
    sleep: Duration,
}

impl Job {
    fn run(&self) {
        if let Some(log) = &self.log {
            log_event(log, "start", &self.id);
        }
        if let Some((dir, want, deadline)) = &self.barrier {
            barrier(dir, &self.id, *want, *deadline);
        }
        thread::sleep(self.sleep);
        if let Some(log) = &self.log {
            log_event(log, "end", &self.id);
        }
    }
}

fn main() {
    let mut jobs = 1usize;
    let mut out = None;
    let mut log = None;
    let mut prefix = String::from("c");
    let mut barrier_dir = None;
    let mut want = 1usize;
    let mut deadline_ms = 10_000u64;
    let mut sleep_ms = 0u64;

    let mut args = Args::new();
    while let Some(option) = args.next_option() {
        match option.as_str() {
            "--jobs" => jobs = args.number(&option),
            "--out" => out = Some(PathBuf::from(args.value(&option))),
            "--log" => log = Some(PathBuf::from(args.value(&option))),
            "--id-prefix" => prefix = args.value(&option),
            "--barrier" => barrier_dir = Some(PathBuf::from(args.value(&option))),
            "--want" => want = args.number(&option),
            "--deadline-ms" => deadline_ms = args.number(&option),
            "--sleep-ms" => sleep_ms = args.number(&option),
            _ => fail(&format!("unknown argument {option:?}")),
        }
    }
    let out = out.unwrap_or_else(|| fail("--out FILE is required"));

    // SAFETY: called first thing in main, before any file is opened, so the
    // descriptors named in the environment are the ones we inherited.
    let from_env = unsafe { jobserver::Client::from_env_ext(true) };
    let var = from_env
        .var
        .map(|(name, _)| name.to_owned())
        .unwrap_or_default();
    let client = from_env
        .client
        .unwrap_or_else(|err| fail(&format!("no usable jobserver ({var}): {err}")));

    let implicit_free = Arc::new(AtomicBool::new(true));
    let held = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for n in 1..=jobs {
        let job = Job {
            id: format!("{prefix}{n}"),
            log: log.clone(),
            barrier: barrier_dir
                .clone()
                .map(|dir| (dir, want, Duration::from_millis(deadline_ms))),
            sleep: Duration::from_millis(sleep_ms),
        };
        if implicit_free.swap(false, Ordering::SeqCst) {
            let implicit_free = Arc::clone(&implicit_free);
            threads.push(thread::spawn(move || {
                job.run();
                implicit_free.store(true, Ordering::SeqCst);
            }));
        } else {
            let token = client
                .acquire()
                .unwrap_or_else(|err| fail(&format!("acquire: {err}")));
            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let held = Arc::clone(&held);
            threads.push(thread::spawn(move || {
                job.run();
                held.fetch_sub(1, Ordering::SeqCst);
                drop(token);
            }));
        }
    }
    for thread in threads {
        thread
            .join()
            .unwrap_or_else(|_| fail("a job thread panicked"));
    }
    let report = format!("tokens {}\nvar {var}\n", peak.load(Ordering::SeqCst));
    std::fs::write(&out, report)
        .unwrap_or_else(|err| fail(&format!("cannot write {}: {err}", out.display())));
}
