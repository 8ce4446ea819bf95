//! `jsrun --serve=PATH -jN`: a system jobserver for make.conf and build hosts. Real make
//! 4.4.1 on the served fifo, reclaiming the tokens of dead holders (never while a
//! holder lives), resizing, refusals, a stale fifo replaced, and the end on SIGTERM.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::util::{Running, Sandbox, make44, values};

/// Starts `jsrun -v --serve=SANDBOX/pool -jN ARGS` and waits until it serves (also
/// the token file of `--accounting`, tests/accounting.rs).
pub(crate) fn serve(sandbox: &Sandbox, n: usize, args: &[&str]) -> (Running, PathBuf) {
    let (mut running, path) = spawn_served(sandbox, n, args, crate::util::DEADLINE);
    let stderr = running.stderr_path();
    running.wait_until("the served fifo", || {
        fs::read_to_string(&stderr).is_ok_and(|e| e.contains("serving"))
    });
    (running, path)
}

/// Starts `jsrun -v --serve=SANDBOX/pool -jN ARGS`, to run at most `deadline`.
pub(crate) fn spawn_served(
    sandbox: &Sandbox,
    n: usize,
    args: &[&str],
    deadline: std::time::Duration,
) -> (Running, PathBuf) {
    let path = sandbox.join("pool");
    let running = sandbox
        .jsrun()
        .arg("-v")
        .arg(format!("--serve={}", path.display()))
        .arg(format!("-j{n}"))
        .args(args)
        .deadline(deadline)
        .spawn();
    (running, path)
}

/// Free tokens in the pool now (the test holds it open only for the look).
fn free_tokens(path: &Path) -> usize {
    let fd = open(path);
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `n`; `fd` is open for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0);
    n as usize
}

fn open(path: &Path) -> OwnedFd {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .into()
}

fn stderr_of(running: &Running) -> String {
    fs::read_to_string(running.stderr_path()).unwrap_or_default()
}

/// Waits until jsrun has acted on everything before: it says the size after a
/// SIGUSR1 and again after a SIGUSR2, which it handles after what came first.
fn sync(running: &mut Running, n: usize) {
    for (signal, slots) in [(libc::SIGUSR1, n + 1), (libc::SIGUSR2, n)] {
        let said = stderr_of(running)
            .matches(&format!(": {slots} slots"))
            .count();
        running.signal(signal);
        let path = running.stderr_path();
        running.wait_until("jsrun to say its size", || {
            fs::read_to_string(&path)
                .unwrap_or_default()
                .matches(&format!(": {slots} slots"))
                .count()
                > said
        });
    }
}

/// A process that opens the pool, takes `take` tokens and holds them (and the
/// fifo) until it is killed; returns it once it has them.
fn holder(sandbox: &Sandbox, path: &Path, take: usize, name: &str) -> Running {
    let took = sandbox.join(format!("took-{name}"));
    let script =
        format!("exec 3<>\"$1\"; head -c {take} <&3 >/dev/null; : > \"$2\"; exec sleep 600");
    let mut running = sandbox
        .command("sh")
        .args(["-c", &script, "sh"])
        .arg(path)
        .arg(&took)
        .spawn();
    running.wait_until("the holder to take its tokens", || took.exists());
    running
}

/// make 4.4.1 reads the served pool from MAKEFLAGS (as from make.conf): its
/// implicit slot and the 3 tokens, 4 jobs at once (they meet in fours); at
/// SIGTERM the daemon exits 0 with the pool whole and removes the fifo.
#[test]
fn make_runs_on_the_served_pool_and_sigterm_ends_it_cleanly() {
    let sandbox = Sandbox::new();
    let (running, path) = serve(&sandbox, 3, &[]);
    assert!(fs::metadata(&path).unwrap().file_type().is_fifo());
    sandbox.probe_makefile(&values(8), 4, 100);
    let make = sandbox
        .command(make44())
        .env(
            "MAKEFLAGS",
            format!("-j3 --jobserver-auth=fifo:{}", path.display()),
        )
        .run();
    make.success().stderr_lacks("warning");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), make.report());
    assert_eq!(free_tokens(&path), 3);
    running.signal(libc::SIGTERM);
    let output = running.wait();
    output.success().stderr_lacks("warning");
    assert!(!path.exists(), "the fifo is removed");
}

/// A holder SIGKILLed with two tokens: they are written back, with a warning,
/// once nobody holds the fifo open; not while another holder lives.
#[test]
fn tokens_of_a_dead_holder_come_back_only_when_no_holder_lives() {
    let sandbox = Sandbox::new();
    let (mut running, path) = serve(&sandbox, 3, &[]);
    let keeper = holder(&sandbox, &path, 0, "keeper");
    let taker = holder(&sandbox, &path, 2, "taker");
    assert_eq!(free_tokens(&path), 1);
    taker.signal(libc::SIGKILL);
    drop(taker.wait());
    sync(&mut running, 3);
    assert_eq!(free_tokens(&path), 1, "reclaimed while the keeper lives");
    assert!(!stderr_of(&running).contains("written back"));
    keeper.signal(libc::SIGKILL);
    drop(keeper.wait());
    let stderr = running.stderr_path();
    running.wait_until("the reclaim warning", || {
        fs::read_to_string(&stderr).is_ok_and(|e| e.contains("2 token(s) missing"))
    });
    assert_eq!(free_tokens(&path), 3);
    running.signal(libc::SIGTERM);
    running.wait().success();
}

/// SIGUSR1 adds a token, SIGUSR2 takes one out: a free one, or, while all
/// are out, the next that comes back (here: with the tokens a dead holder
/// left, written back). SIGTERM then finds the pool whole at its new size.
#[test]
fn the_served_pool_resizes() {
    let sandbox = Sandbox::new();
    let (mut running, path) = serve(&sandbox, 2, &[]);
    sync(&mut running, 2);
    running.signal(libc::SIGUSR1);
    let stderr = running.stderr_path();
    running.wait_until("3 slots", || {
        fs::read_to_string(&stderr).is_ok_and(|e| e.matches("SIGUSR1: 3 slots").count() == 2)
    });
    assert_eq!(free_tokens(&path), 3);
    let taker = holder(&sandbox, &path, 3, "taker");
    running.signal(libc::SIGUSR2);
    running.wait_until("2 slots", || {
        fs::read_to_string(&stderr).is_ok_and(|e| e.matches("SIGUSR2: 2 slots").count() == 2)
    });
    assert_eq!(free_tokens(&path), 0);
    taker.signal(libc::SIGKILL);
    drop(taker.wait());
    running.wait_until("the reclaim", || {
        fs::read_to_string(&stderr).is_ok_and(|e| e.contains("written back"))
    });
    running.wait_until("one token retired", || free_tokens(&path) == 2);
    running.signal(libc::SIGTERM);
    let output = running.wait();
    output.success();
    assert!(!output.stderr.contains("at exit"), "{}", output.report());
}

/// `jsrun -v -l 4 ARGS --serve=SANDBOX/pool` with a `JSRUN_PROC_DIR` load of 9.00, once
/// it says it holds back: the daemon, the pool's path and the loadavg file to lower.
pub(crate) fn serve_over_the_load_limit(
    sandbox: &Sandbox,
    args: &[&str],
) -> (Running, PathBuf, PathBuf) {
    let proc_dir = sandbox.join("proc");
    fs::create_dir(&proc_dir).unwrap();
    let loadavg = proc_dir.join("loadavg");
    crate::util::set_load(&loadavg, "9.00");
    let path = sandbox.join("pool");
    let mut running = sandbox
        .jsrun()
        .env("JSRUN_PROC_DIR", &proc_dir)
        .args(["-v", "-l", "4"])
        .args(args)
        .arg(format!("--serve={}", path.display()))
        .spawn();
    let stderr = running.stderr_path();
    running.wait_until("the hold", || {
        fs::read_to_string(&stderr).is_ok_and(|e| e.contains("holding back"))
    });
    (running, path, loadavg)
}

/// A limit exceeded from the start holds every token back: the pool is empty
/// while the load is high; the tokens come back when it falls.
#[test]
fn a_limit_holds_the_served_tokens_back() {
    let sandbox = Sandbox::new();
    let (mut running, path, loadavg) = serve_over_the_load_limit(&sandbox, &["-j3"]);
    running.wait_until("an empty pool", || free_tokens(&path) == 0);
    crate::util::set_load(&loadavg, "0.50");
    running.wait_until("the tokens back", || free_tokens(&path) == 3);
    running.signal(libc::SIGTERM);
    running.wait().success().stderr_lacks("warning");
}

/// A PATH that is not a fifo is refused with 125 and left as it was; a fifo
/// that a live jsrun serves is refused; a stale fifo (nobody serves it) is
/// replaced.
#[test]
fn refusals_and_a_stale_fifo() {
    let sandbox = Sandbox::new();
    let file = sandbox.write("file", "keep me");
    let refused = sandbox
        .jsrun()
        .arg(format!("--serve={}", file.display()))
        .arg("-j2")
        .run();
    refused.code(125).stderr_contains("is not a fifo");
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");

    let (running, path) = serve(&sandbox, 2, &[]);
    let second = sandbox
        .jsrun()
        .arg(format!("--serve={}", path.display()))
        .arg("-j2")
        .run();
    second
        .code(125)
        .stderr_contains("is served by jsrun already");
    running.signal(libc::SIGTERM);
    running.wait().success();

    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (running, path) = serve(&sandbox, 2, &[]);
    assert!(stderr_of(&running).contains("replacing"));
    assert_eq!(free_tokens(&path), 2);
    running.signal(libc::SIGTERM);
    running.wait().success();
    assert!(!path.exists());
}

/// make 4.4.1 and a jobserver-crate client side by side on one served pool of
/// 3 tokens: each is a top-level client with its own implicit slot, so
/// together they reach 3 + 2 = 5 jobs at once (they meet in fives), never
/// more; every token is back at the end.
#[test]
fn make_and_a_jobserver_crate_client_share_the_served_pool() {
    let sandbox = Sandbox::new();
    let (running, path) = serve(&sandbox, 3, &[]);
    let makeflags = format!("-j3 --jobserver-auth=fifo:{}", path.display());
    let barrier = sandbox.join("barrier");
    let ids = ["m1", "m2", "m3"];
    let mut text = format!(".PHONY: all {0}\nall: {0}\n", ids.join(" "));
    for id in ids {
        let probe = sandbox.probe().id(id).barrier(&barrier, 5).sleep_ms(100);
        text.push_str(&format!("{id}:\n\t{}\n", probe.shell()));
    }
    sandbox.write("Makefile", text);
    let make = sandbox
        .command(make44())
        .env("MAKEFLAGS", &makeflags)
        .spawn();
    let client = sandbox.crate_client(&makeflags, 2, 5).spawn();
    make.wait().success().stderr_lacks("warning");
    client.wait().success();
    let log = sandbox.log();
    assert_eq!(log.finished().len(), 5, "{}", log.dump());
    assert_eq!(log.peak(), 5, "{}", log.dump());
    assert_eq!(free_tokens(&path), 3, "{}", stderr_of(&running));
    running.signal(libc::SIGTERM);
    running.wait().success().stderr_lacks("warning");
}
