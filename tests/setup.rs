//! Server set-up: a failed set-up leaves nothing in TMPDIR.

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use util::Sandbox;

/// An empty TMPDIR of the test's own, to see what jsrun leaves there.
fn tmpdir(sandbox: &Sandbox) -> PathBuf {
    let dir = sandbox.join("tmp");
    fs::create_dir(&dir).expect("create TMPDIR");
    dir
}

#[track_caller]
fn assert_empty(dir: &Path, output: &util::Output) {
    let left: Vec<_> = fs::read_dir(dir)
        .expect("read TMPDIR")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "left in TMPDIR: {left:?}\n{}",
        output.report()
    );
}

// ---------------------------------------------------------------------------
// A failed set-up leaves nothing behind

/// Out of descriptors at every point of the set-up, with either style:
/// whichever step fails, jsrun exits 125 and its directory and fifo are gone.
/// The limit goes up from 4 (the dynamic loader needs one descriptor beyond
/// 0-2) until the run succeeds, so every step that opens one is met once.
#[test]
fn running_out_of_descriptors_during_set_up_leaves_nothing() {
    let sandbox = Sandbox::new();
    let tmp = tmpdir(&sandbox);
    for style in ["fifo", "pipe"] {
        let mut setup_failures = 0;
        let mut limit = 4u64;
        loop {
            let output = sandbox
                .jsrun()
                .env("TMPDIR", &tmp)
                .rlimit(libc::RLIMIT_NOFILE, limit)
                .args(["-j3", &format!("--jobserver-style={style}"), "--", "true"])
                .run();
            assert_empty(&tmp, &output);
            if output.status.success() {
                break;
            }
            output
                .code(125)
                .stderr_contains("jsrun: error: cannot create a jobserver: ");
            setup_failures += 1;
            limit += 1;
            assert!(
                limit <= 32,
                "jsrun -j3 never succeeded\n{}",
                output.report()
            );
        }
        assert!(
            setup_failures > 0,
            "{style}: no set-up failure below RLIMIT_NOFILE {limit}: the test misses its point"
        );
    }
}
