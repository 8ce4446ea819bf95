//! Server set-up: a failed set-up leaves nothing in TMPDIR, a `-j` no pipe
//! can hold is refused at once, and the largest `-j` a pipe can hold really
//! works.

mod util;

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use util::{Sandbox, Seen, jobserver_auth, peak_of};

fn page_size() -> usize {
    // SAFETY: sysconf only reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).expect("page size")
}

/// The most slots jsrun serves: a pipe of fs.pipe-max-size bytes holds that
/// less one page plus one token (see `max_slots` in src/server.rs), and the
/// implicit slot comes on top.
fn max_slots() -> usize {
    let text = fs::read_to_string("/proc/sys/fs/pipe-max-size").expect("pipe-max-size");
    let pipe_max: usize = text.trim().parse().expect("a number");
    pipe_max - page_size() + 2
}

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

/// A `-j` no pipe can hold is refused at once, naming the limit and the
/// fix, with either style; nothing is created, not even the directory.
#[test]
fn a_j_beyond_what_a_pipe_holds_is_refused_and_leaves_nothing() {
    let sandbox = Sandbox::new();
    let tmp = tmpdir(&sandbox);
    let most = max_slots();
    let too_many = (most + 1).to_string();
    for (jobs, style) in [
        (too_many.as_str(), "fifo"),
        (too_many.as_str(), "pipe"),
        ("18446744073709551615", "fifo"),
    ] {
        let output = sandbox
            .jsrun()
            .env("TMPDIR", &tmp)
            .arg(format!("-j{jobs}"))
            .arg(format!("--jobserver-style={style}"))
            .args(["--", "true"])
            .run();
        output.code(125).stderr_contains(&format!(
            "jsrun: error: cannot create a jobserver: -j{jobs} is more than a jobserver pipe \
             can hold here (at most {most} slots"
        ));
        output.stderr_contains(&format!("use -j{most} or less"));
        assert_eq!(output.stderr.lines().count(), 1, "{}", output.report());
        assert_empty(&tmp, &output);
    }
    // Refused before anything is created: a TMPDIR that does not exist is
    // never reached.
    let output = sandbox
        .jsrun()
        .env("TMPDIR", sandbox.join("missing"))
        .arg(format!("-j{too_many}"))
        .args(["--", "true"])
        .run();
    output
        .code(125)
        .stderr_contains("is more than a jobserver pipe can hold")
        .stderr_lacks("directory");
}

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

/// A -j beyond what a default pipe (64 KiB) holds: the pipe is enlarged,
/// the run succeeds, every token comes back and nothing is left.
#[test]
fn a_j_beyond_a_default_pipe_is_served_from_an_enlarged_pipe() {
    let sandbox = Sandbox::new();
    let tmp = tmpdir(&sandbox);
    for style in ["fifo", "pipe"] {
        let output = sandbox
            .jsrun()
            .env("TMPDIR", &tmp)
            .args(["-j70000", &format!("--jobserver-style={style}")])
            .args(["--", "true"])
            .run();
        output.success().stderr_lacks("jsrun");
        assert_empty(&tmp, &output);
    }
}

// ---------------------------------------------------------------------------
// The largest -j accepted really works

/// Opens the pool a job saw: the fifo, or the pipe through jsrun's own fd.
fn open_pool(seen: &Seen, jsrun_pid: i32) -> OwnedFd {
    let auth = jobserver_auth(&seen.var("MAKEFLAGS").expect("MAKEFLAGS")).expect("an auth");
    let path = match auth.strip_prefix("fifo:") {
        Some(path) => path.to_owned(),
        None => {
            let (read, _) = auth.split_once(',').expect("R,W");
            format!("/proc/{jsrun_pid}/fd/{read}")
        }
    };
    let c_path = CString::new(path.clone()).expect("no NUL");
    // SAFETY: c_path is a valid NUL-terminated string.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK) };
    assert!(fd >= 0, "open {path}: {}", io::Error::last_os_error());
    // SAFETY: open succeeded, so fd is open and nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Takes one token and gives it back, `times` times: a client that ends up
/// with the first page of the pipe nearly read. A pipe filled to the brim
/// refuses the write within one page.
fn cycle_tokens(pool: &OwnedFd, times: usize) {
    let mut byte = [0u8; 1];
    for i in 0..times {
        // SAFETY: byte is valid for one byte.
        let n = unsafe { libc::read(pool.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 1, "read token {i}: {}", io::Error::last_os_error());
        // SAFETY: byte is valid for one byte.
        let n = unsafe { libc::write(pool.as_raw_fd(), byte.as_ptr().cast(), 1) };
        assert_eq!(n, 1, "give token {i} back: {}", io::Error::last_os_error());
    }
}

/// jsrun serves the largest -j it accepts: its pool holds every token, a
/// client can take and give back tokens for as long as it likes (here two
/// pages' worth, one at a time, while jsrun holds none), jsrun's own jobs get
/// tokens, and at exit every token is counted back.
fn the_largest_accepted_j_works(style: &str) {
    let sandbox = Sandbox::new();
    let tmp = tmpdir(&sandbox);
    let most = max_slots();
    let hold = sandbox.join("hold");
    let three = sandbox.join("three");
    let seen = sandbox.join("seen");
    let probe = sandbox.probe().id("{}");
    // The first value holds the implicit slot until the test is done with the
    // pool; the next three meet at a barrier, which takes two tokens.
    let script = format!(
        "if [ {{}} = hold ]; then exec {}; else exec {}; fi",
        probe
            .clone()
            .env_out(&seen)
            .barrier_deadline(&hold, 2, 50_000)
            .shell(),
        probe.barrier(&three, 3).shell(),
    );
    let mut jsrun = sandbox
        .jsrun()
        .env("TMPDIR", &tmp)
        .args([format!("-j{most}"), format!("--jobserver-style={style}")])
        .args(["--", "/bin/sh", "-c", &script, "sh", "::::", "-"])
        .stdin_pipe()
        .spawn();
    let mut values_in = jsrun.take_stdin();
    io::Write::write_all(&mut values_in, b"hold\n").expect("write a value");
    jsrun.wait_until("the first job to report", || seen.exists());
    let pool = open_pool(&Seen::read(&seen), jsrun.pid());
    cycle_tokens(&pool, 2 * page_size());
    drop(pool);
    fs::write(hold.join("test"), b"").expect("release the first job");
    io::Write::write_all(&mut values_in, b"1\n2\n3\n").expect("write values");
    drop(values_in);
    let output = jsrun.wait();
    output.success().stderr_lacks("jsrun");
    let makeflags = Seen::read(&seen).var("MAKEFLAGS").expect("MAKEFLAGS");
    assert!(
        makeflags.contains(&format!("-j{most} ")),
        "{makeflags}\n{}",
        output.report()
    );
    let log = sandbox.log();
    let three_jobs: Vec<_> = log
        .events()
        .into_iter()
        .filter(|e| e.id != "hold")
        .collect();
    assert_eq!(peak_of(&three_jobs), 3, "{}", log.dump());
    assert_eq!(log.finished(), ["1", "2", "3", "hold"], "{}", log.dump());
    assert_empty(&tmp, &output);
}

#[test]
fn the_largest_accepted_j_works_with_a_fifo() {
    the_largest_accepted_j_works("fifo");
}

#[test]
fn the_largest_accepted_j_works_with_a_pipe() {
    the_largest_accepted_j_works("pipe");
}
