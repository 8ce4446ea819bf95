//! A job that takes real memory, for the memory-limit tests: it allocates and writes
//! every page of `--mb` MiB, says so, and holds the memory until it is released.
//!
//! ```text
//! hog --mb MB [--log FILE] [--id ID] [--ready FILE]
//!     [--barrier DIR --want K [--deadline-ms MS]]
//! ```
//! Order: `start` line, allocation (every page written), `--ready` file (written to a
//! temporary name, then renamed), barrier, memory freed, `end` line. At most 1024 MiB:
//! the machine is shared.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::{Args, barrier, fail, log_event};

/// The most memory a test may take.
const MAX_MB: usize = 1024;

/// Writing one byte per page is enough for the kernel to back every page.
const PAGE: usize = 4096;

fn main() {
    let mut mb = 0usize;
    let mut log = None;
    let mut id = String::from("hog");
    let mut ready = None;
    let mut barrier_dir = None;
    let mut want = 1usize;
    let mut deadline_ms = 10_000u64;

    let mut args = Args::new();
    while let Some(option) = args.next_option() {
        match option.as_str() {
            "--mb" => mb = args.number(&option),
            "--log" => log = Some(PathBuf::from(args.value(&option))),
            "--id" => id = args.value(&option),
            "--ready" => ready = Some(PathBuf::from(args.value(&option))),
            "--barrier" => barrier_dir = Some(PathBuf::from(args.value(&option))),
            "--want" => want = args.number(&option),
            "--deadline-ms" => deadline_ms = args.number(&option),
            _ => fail(&format!("unknown argument {option:?}")),
        }
    }
    if mb == 0 || mb > MAX_MB {
        fail(&format!("--mb must be 1..={MAX_MB}, not {mb}"));
    }

    if let Some(log) = &log {
        log_event(log, "start", &id);
    }
    // A zeroed allocation of this size is fresh pages the kernel has not backed yet:
    // writing each one makes it count as used.
    let mut memory = vec![0u8; mb << 20];
    for page in memory.chunks_mut(PAGE) {
        page[0] = 1;
    }
    std::hint::black_box(&mut memory);
    if let Some(path) = &ready {
        let partial = path.with_extension("partial");
        fs::write(&partial, format!("{mb}\n"))
            .unwrap_or_else(|err| fail(&format!("cannot write {}: {err}", partial.display())));
        fs::rename(&partial, path)
            .unwrap_or_else(|err| fail(&format!("cannot rename to {}: {err}", path.display())));
    }
    if let Some(dir) = &barrier_dir {
        barrier(dir, &id, want, Duration::from_millis(deadline_ms));
    }
    drop(memory);
    if let Some(log) = &log {
        log_event(log, "end", &id);
    }
}
