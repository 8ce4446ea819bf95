//! A job whose memory grows while it runs, like a compiler on a big translation unit or a
//! link at the end of a build: for the memory guard's benchmark (`bench/memguard`) and
//! its tests in a real memory cgroup (`tests/memcg.rs`).
//!
//! ```text
//! memgrow --mb MB [--grow-ms MS] [--idle-ms MS] [--hold-ms MS] [--step-ms MS]
//!         [--done FILE] [--log FILE] [--id ID]
//!         [--barrier DIR --want K [--deadline-ms MS]]
//! ```
//! Order: `start` line in `--log`; `--idle-ms` with almost no memory (the compile before
//! the link); `--mb` MiB taken in steps over `--grow-ms` (every page of a step written,
//! then a sleep of `--step-ms`, default 20); the barrier, memory held (a test's way of
//! making K jobs hold their memory at once); held for `--hold-ms` (default 200); memory
//! freed; `--done` written (`MB\n`, to a temporary name, then renamed); `end` line.
//!
//! Time is counted in steps, not read from the clock: a job that was stopped (SIGSTOP)
//! goes on where it was when it is resumed, instead of catching up in one burst. A job
//! the OOM killer kills leaves no `--done` file and no `end` line.

mod common;

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use common::{Args, barrier, fail, log_event, write_whole};

/// The most memory one job may take: enough to be larger than a benchmark's cgroup.
const MAX_MB: usize = 4096;

/// Writing one byte per page is enough for the kernel to back every page.
const PAGE: usize = 4096;

fn main() {
    let mut mb = 0usize;
    let mut grow_ms = 1000u64;
    let mut idle_ms = 0u64;
    let mut hold_ms = 200u64;
    let mut step_ms = 20u64;
    let mut done = None;
    let mut log = None;
    let mut id = String::from("memgrow");
    let mut barrier_dir = None;
    let mut want = 1usize;
    let mut deadline_ms = 10_000u64;

    let mut args = Args::new();
    while let Some(option) = args.next_option() {
        match option.as_str() {
            "--mb" => mb = args.number(&option),
            "--grow-ms" => grow_ms = args.number(&option),
            "--idle-ms" => idle_ms = args.number(&option),
            "--hold-ms" => hold_ms = args.number(&option),
            "--step-ms" => step_ms = args.number(&option),
            "--done" => done = Some(PathBuf::from(args.value(&option))),
            "--log" => log = Some(PathBuf::from(args.value(&option))),
            "--id" => id = args.value(&option),
            "--barrier" => barrier_dir = Some(PathBuf::from(args.value(&option))),
            "--want" => want = args.number(&option),
            "--deadline-ms" => deadline_ms = args.number(&option),
            _ => fail(&format!("unknown argument {option:?}")),
        }
    }
    if mb == 0 || mb > MAX_MB {
        fail(&format!("--mb must be 1..={MAX_MB}, not {mb}"));
    }
    if step_ms == 0 {
        fail("--step-ms must be at least 1");
    }

    if let Some(log) = &log {
        log_event(log, "start", &id);
    }
    sleep_steps(idle_ms, step_ms);

    // A zeroed allocation of this size is fresh pages the kernel has not backed yet:
    // each page counts as used once it is written.
    let mut memory = vec![0u8; mb << 20];
    let steps = (grow_ms / step_ms).max(1) as usize;
    let pages = memory.len() / PAGE;
    let mut written = 0;
    for step in 1..=steps {
        let until = pages * step / steps;
        for page in written..until {
            memory[page * PAGE] = 1;
        }
        written = until;
        std::hint::black_box(&mut memory);
        thread::sleep(Duration::from_millis(step_ms));
    }
    if let Some(dir) = &barrier_dir {
        barrier(dir, &id, want, Duration::from_millis(deadline_ms));
    }
    sleep_steps(hold_ms, step_ms);
    drop(memory);

    if let Some(path) = &done {
        write_whole(path, &format!("{mb}\n"));
    }
    if let Some(log) = &log {
        log_event(log, "end", &id);
    }
}

/// Sleeps `ms` in steps of `step_ms`, so that time spent stopped does not count.
fn sleep_steps(ms: u64, step_ms: u64) {
    for _ in 0..ms / step_ms {
        thread::sleep(Duration::from_millis(step_ms));
    }
    thread::sleep(Duration::from_millis(ms % step_ms));
}
