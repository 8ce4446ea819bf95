//! Server set-up and job lists: a failed set-up leaves nothing in TMPDIR, a
//! `-j` no pipe can hold is refused at once, the largest `-j` a pipe can hold
//! really works, and a value longer than one argument may hold ends the run
//! with an error naming the file and line.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::{Sandbox, Seen, entries, jobserver_auth, jsrun_bin, peak_of, values};

/// The longest value one argument may hold: Linux MAX_ARG_STRLEN less its NUL.
const MAX_VALUE: usize = 131_071;

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
fn assert_empty(dir: &Path, output: &crate::util::Output) {
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
    let path = if let Some(path) = auth.strip_prefix("fifo:") {
        path.to_owned()
    } else {
        let (read, _) = auth.split_once(',').expect("R,W");
        format!("/proc/{jsrun_pid}/fd/{read}")
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

// ---------------------------------------------------------------------------
// Values longer than one argument may hold

/// `:::: /dev/zero` is one endless line: refused once it passes the limit,
/// in a run and in a dry run, and as command lines on stdin.
#[test]
fn an_endless_line_ends_the_run_with_an_error() {
    let sandbox = Sandbox::new();
    let deadline = Duration::from_secs(20);
    let message = format!(
        "jsrun: error: {{}} line 1: longer than {MAX_VALUE} bytes, the most one argument may hold\n"
    );
    for dry_run in [&[][..], &["-n"][..]] {
        let output = sandbox
            .jsrun()
            .deadline(deadline)
            .args(dry_run)
            .args(["true", "::::", "/dev/zero"])
            .run();
        output.code(125);
        assert_eq!(
            output.stderr,
            message.replace("{}", "/dev/zero"),
            "{}",
            output.report()
        );
    }
    let output = sandbox
        .command("/bin/sh")
        .deadline(deadline)
        .args(["-c", r#"exec "$0" < /dev/zero"#])
        .arg(jsrun_bin())
        .run();
    output.code(125);
    assert_eq!(
        output.stderr,
        message.replace("{}", "stdin"),
        "{}",
        output.report()
    );
}

/// Good lines, then a 200,000-byte line, then another good line: the good
/// lines' jobs run, the error names the file and the line, the jobs still
/// running finish, the line after is never run, and jsrun exits 125.
#[test]
fn a_line_too_long_stops_the_run_after_the_good_lines() {
    let sandbox = Sandbox::new();
    let mut text = b"1\n2\n\n3\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', 200_000));
    text.extend(b"\n4\n");
    let list = sandbox.write("list", &text);
    let barrier = sandbox.join("barrier");
    // Three jobs wait at the barrier for the test's marker.
    let probe = sandbox.probe().id("{}").barrier(&barrier, 4);
    let mut jsrun = sandbox
        .jsrun()
        .args(["-j4"])
        .args(probe.words())
        .arg("::::")
        .arg(&list)
        .spawn();
    let list = fs::canonicalize(&list).expect("canonical path");
    let message = format!(
        "jsrun: error: {} line 5: longer than {MAX_VALUE} bytes, the most one argument may hold\n",
        list.display()
    );
    let stderr = jsrun.stderr_path();
    jsrun.wait_until("the error about line 5", || {
        fs::read_to_string(&stderr).is_ok_and(|text| text == message)
    });
    // The error came while the jobs ran: none has ended yet.
    jsrun.wait_until("the three jobs at the barrier", || entries(&barrier) == 3);
    let log = sandbox.log();
    assert_eq!(log.started(), values(3), "{}", log.dump());
    assert!(log.finished().is_empty(), "{}", log.dump());
    fs::write(barrier.join("test"), b"").expect("release the jobs");
    let output = jsrun.wait();
    output.code(125);
    assert_eq!(output.stderr, message, "{}", output.report());
    assert_eq!(log.started(), values(3), "{}", log.dump());
    assert_eq!(log.finished(), values(3), "{}", log.dump());
}

/// A value of exactly 131,071 bytes is passed whole, as a value and as a
/// command line on stdin; one byte more is refused with its line number.
#[test]
fn a_line_of_exactly_the_most_one_argument_holds_is_accepted() {
    let sandbox = Sandbox::new();
    let longest = "y".repeat(MAX_VALUE);
    let list = sandbox.write("list", format!("short\n{longest}\n"));
    let output = sandbox
        .jsrun()
        .args(["/bin/sh", "-c", r#"echo "${#1}""#, "sh", "::::"])
        .arg(&list)
        .run();
    output.success();
    assert_eq!(
        output.stdout,
        format!("5\n{MAX_VALUE}\n"),
        "{}",
        output.report()
    );

    // A command line of exactly the limit: `echo ` and the rest.
    let line = format!("echo {}", "z".repeat(MAX_VALUE - 5));
    assert_eq!(line.len(), MAX_VALUE);
    let output = sandbox.jsrun().stdin(format!("{line}\n")).run();
    output.success();
    assert_eq!(
        output.stdout.trim_end().len(),
        MAX_VALUE - 5,
        "{}",
        output.report()
    );

    let output = sandbox.jsrun().stdin(format!("echo ok\n{line}z\n")).run();
    output.code(125);
    assert_eq!(output.stdout, "ok\n", "{}", output.report());
    assert_eq!(
        output.stderr,
        format!(
            "jsrun: error: stdin line 2: longer than {MAX_VALUE} bytes, the most one argument may hold\n"
        ),
        "{}",
        output.report()
    );
}
