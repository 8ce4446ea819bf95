//! A job that grows its memory over time, like a compiler on a large file, for the memory
//! guard's tests and benchmarks: it allocates and touches `--mib` MiB evenly over
//! `--secs` seconds, then holds them, touching its pages again every `--tick-ms` (so that
//! its CPU time grows while it runs, as a working job's does), until `--until FILE`
//! exists or `--hold-ms` has passed.
//!
//! ```text
//! grow [--mib MIB] [--secs S] [--hold-ms MS | --until FILE] [--lock FILE [--after FILE]]
//!      [--delay-ms MS] [--log FILE] [--id ID] [--tick-ms MS] [--deadline-ms MS]
//! ```
//! `--lock FILE`: takes an exclusive `flock` on FILE first (waiting for it, with no CPU)
//! and holds it to the end; with `--after FILE`, only once FILE exists. `--delay-ms`: waits
//! that long (working) before it grows. Log lines:
//! `start`, `locked` (with --lock), `grown`, `end`. At most 2048 MiB. After
//! `--deadline-ms` (default 30 s) it gives up holding and ends, so it never hangs a test.
//! The delay and the growth are counted in ticks, not read from the clock: a job that was
//! stopped (SIGSTOP) goes on where it was when it is resumed, as a compiler does, instead
//! of catching up in one burst.

mod common;

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Args, fail, log_event};

const MAX_MIB: usize = 2048;
const PAGE: usize = 4096;

struct Job {
    log: Option<PathBuf>,
    id: String,
    tick: Duration,
    deadline: Instant,
}

impl Job {
    fn event(&self, event: &str) {
        if let Some(log) = &self.log {
            log_event(log, event, &self.id);
        }
    }

    /// Some CPU work: the pages touched again, and a little more for a job without any.
    fn work(memory: &mut [u8]) {
        for page in memory.chunks_mut(PAGE) {
            page[0] = page[0].wrapping_add(1);
        }
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(2) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

fn main() {
    let mut mib = 0usize;
    let mut secs = 0f64;
    let mut hold_ms = None;
    let mut until = None;
    let mut lock = None;
    let mut after = None;
    let mut delay = Duration::ZERO;
    let mut job = Job {
        log: None,
        id: String::from("grow"),
        tick: Duration::from_millis(50),
        deadline: Instant::now() + Duration::from_secs(30),
    };
    let mut args = Args::new();
    while let Some(option) = args.next_option() {
        match option.as_str() {
            "--mib" => mib = args.number(&option),
            "--secs" => secs = args.number(&option),
            "--hold-ms" => hold_ms = Some(args.number::<u64>(&option)),
            "--until" => until = Some(PathBuf::from(args.value(&option))),
            "--lock" => lock = Some(PathBuf::from(args.value(&option))),
            "--after" => after = Some(PathBuf::from(args.value(&option))),
            "--delay-ms" => delay = Duration::from_millis(args.number(&option)),
            "--log" => job.log = Some(PathBuf::from(args.value(&option))),
            "--id" => job.id = args.value(&option),
            "--tick-ms" => job.tick = Duration::from_millis(args.number(&option)),
            "--deadline-ms" => {
                job.deadline = Instant::now() + Duration::from_millis(args.number(&option));
            }
            _ => fail(&format!("unknown argument {option:?}")),
        }
    }
    if mib > MAX_MIB {
        fail(&format!("--mib must be at most {MAX_MIB}, not {mib}"));
    }
    job.event("start");
    let _lock = lock.map(|path| {
        while let Some(after) = &after
            && !after.exists()
            && Instant::now() < job.deadline
        {
            Job::work(&mut []);
            std::thread::sleep(job.tick);
        }
        let file = File::create(&path)
            .unwrap_or_else(|err| fail(&format!("cannot create {}: {err}", path.display())));
        let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .unwrap_or_else(|(_, err)| fail(&format!("cannot lock {}: {err}", path.display())));
        job.event("locked");
        locked
    });
    let tick_ms = job.tick.as_millis().max(1);
    for _ in 0..delay.as_millis().div_ceil(tick_ms) {
        Job::work(&mut []);
        std::thread::sleep(job.tick.min(delay));
    }
    // Grown in steps of one tick each.
    let mut memory: Vec<u8> = Vec::with_capacity(mib << 20);
    let steps = ((secs * 1000.0) as u128 / tick_ms).max(1) as usize;
    let step = (mib << 20).div_ceil(steps);
    for i in 1..=steps {
        let len = (step * i).min(mib << 20);
        memory.resize(len, 1);
        std::thread::sleep(job.tick);
    }
    job.event("grown");
    let held = Instant::now();
    let done = || {
        Instant::now() >= job.deadline
            || until.as_ref().is_some_and(|f| f.exists())
            || hold_ms.is_some_and(|ms| held.elapsed() >= Duration::from_millis(ms))
            || (until.is_none() && hold_ms.is_none())
    };
    while !done() {
        Job::work(&mut memory);
        std::thread::sleep(job.tick);
    }
    drop(memory);
    job.event("end");
}
