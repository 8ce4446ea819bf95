//! Signals: jsrun interrupted while jobs run forwards the signal, returns
//! every token, removes its fifo and dies of the same signal; children start
//! with a clean signal state.

use std::fs;

use crate::util::{FifoJobserver, Sandbox, Seen, entries, sorted, values, wait_until};

/// A process is gone once /proc forgets it or it is a zombie.
fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Four jobs hold the fifo's three tokens and jsrun's implicit slot (they
/// wait at a barrier that never fills); then jsrun gets `signal`.
fn interrupted_client(signal: i32) {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let barrier = sandbox.join("barrier");
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier_deadline(&barrier, 5, 20_000);
    let mut running = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args(probe.words())
        .arg(":::")
        .args(values(6))
        .spawn();
    running.wait_until("4 jobs to run", || entries(&barrier) == 4);
    running.signal(signal);
    let output = running.wait();
    output.killed_by(signal);
    let log = sandbox.log();
    let pids: Vec<u32> = log.events().iter().map(|event| event.pid).collect();
    wait_until("the jobs to die", || pids.iter().all(|&pid| gone(pid)));
    assert_eq!(
        log.started().len(),
        4,
        "{}\n{}",
        log.dump(),
        output.report()
    );
    assert_eq!(
        log.finished(),
        Vec::<String>::new(),
        "the jobs should have died of the forwarded signal\n{}",
        log.dump()
    );
    assert_eq!(
        sorted(&pool.drain()),
        b"abc",
        "every token must be back\n{}",
        output.report()
    );
}

#[test]
fn sigint_returns_every_token() {
    interrupted_client(libc::SIGINT);
}

#[test]
fn sigterm_returns_every_token() {
    interrupted_client(libc::SIGTERM);
}

#[test]
fn sighup_returns_every_token() {
    interrupted_client(libc::SIGHUP);
}

/// As a server (`-j3`, three jobs running): the signal reaches the jobs,
/// the fifo and its directory disappear, jsrun dies of the signal.
fn interrupted_server(signal: i32) {
    let sandbox = Sandbox::new();
    let barrier = sandbox.join("barrier");
    let probe = sandbox
        .probe()
        .id("{}")
        .env_out(&sandbox.join("seen-{}"))
        .barrier_deadline(&barrier, 4, 20_000);
    let mut running = sandbox
        .jsrun()
        .arg("-j3")
        .args(probe.words())
        .arg(":::")
        .args(values(3))
        .spawn();
    running.wait_until("3 jobs to run", || entries(&barrier) == 3);
    let fifo = Seen::read(&sandbox.join("seen-1")).fifo();
    assert!(fifo.exists());
    running.signal(signal);
    let output = running.wait();
    output.killed_by(signal);
    assert!(!fifo.exists(), "{} left behind", fifo.display());
    assert!(
        !fifo.parent().unwrap().exists(),
        "fifo directory left behind"
    );
    let log = sandbox.log();
    let pids: Vec<u32> = log.events().iter().map(|event| event.pid).collect();
    wait_until("the jobs to die", || pids.iter().all(|&pid| gone(pid)));
    assert_eq!(log.finished(), Vec::<String>::new(), "{}", log.dump());
}

#[test]
fn server_cleans_up_on_sigint() {
    interrupted_server(libc::SIGINT);
}

#[test]
fn server_cleans_up_on_sigterm() {
    interrupted_server(libc::SIGTERM);
}

#[test]
fn server_cleans_up_on_sighup() {
    interrupted_server(libc::SIGHUP);
}

/// Children start with no blocked signal, whatever jsrun does with its own
/// mask while it waits.
fn children_start_unblocked(jsrun_args: &[&str]) {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("{}").env_out(&sandbox.join("seen-{}"));
    sandbox
        .jsrun()
        .args(jsrun_args)
        .args(probe.words())
        .arg(":::")
        .args(["1", "2"])
        .run()
        .success();
    for id in ["1", "2"] {
        let seen = Seen::read(&sandbox.join(format!("seen-{id}")));
        assert_eq!(seen.mask("SigBlk"), 0, "job {id}:\n{}", seen.text);
    }
}

#[test]
fn children_start_with_no_blocked_signal() {
    children_start_unblocked(&["-j2"]);
}

#[test]
fn children_start_with_no_blocked_signal_under_a_jobserver() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"x");
    let probe = sandbox.probe().id("{}").env_out(&sandbox.join("seen-{}"));
    sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args(probe.words())
        .arg(":::")
        .args(["1", "2"])
        .run()
        .success();
    for id in ["1", "2"] {
        let seen = Seen::read(&sandbox.join(format!("seen-{id}")));
        assert_eq!(seen.mask("SigBlk"), 0, "job {id}:\n{}", seen.text);
    }
    assert_eq!(pool.drain(), b"x");
}

/// Nor an ignored one: SIGPIPE, SIGINT and friends are at their defaults
/// (a job must die of SIGPIPE when its reader goes away, as under make).
/// Read by a shell, since a Rust program ignores SIGPIPE on its own.
#[test]
fn children_start_with_default_dispositions() {
    let sandbox = Sandbox::new();
    for jsrun_args in [&["-j1"][..], &["-j2", "--jobserver-style=pipe"]] {
        let output = sandbox
            .jsrun()
            .args(jsrun_args)
            .args(["sh", "-c", "grep ^SigIgn: /proc/$$/status", "sh"])
            .run();
        output.success();
        let seen = Seen {
            text: output.stdout.clone(),
        };
        // Signals 1 to 31; glibc keeps two real-time signals for itself.
        assert_eq!(
            seen.mask("SigIgn") & 0x7fff_ffff,
            0,
            "{jsrun_args:?}\n{}",
            output.report()
        );
    }
}

/// SIGTERM while jsrun asks `make --version` (to choose the pool's style),
/// before any job: the job never starts, and jsrun dies of SIGTERM.
#[test]
fn a_signal_before_the_first_job_stops_it_from_starting() {
    let sandbox = Sandbox::new();
    let bin = sandbox.join("bin");
    fs::create_dir(&bin).unwrap();
    let gate = sandbox.join("gate");
    let status = std::process::Command::new("mkfifo")
        .arg(&gate)
        .status()
        .unwrap();
    assert!(status.success());
    let probed = sandbox.join("probed");
    let started = sandbox.join("started");
    // A make whose --version waits at the gate.
    let make = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then : > {probed}; read x < {gate}; \
         echo 'GNU Make 4.4.1'; exit 0; fi\n: > {started}\n",
        probed = crate::util::path_str(&probed),
        gate = crate::util::path_str(&gate),
        started = crate::util::path_str(&started),
    );
    fs::write(bin.join("make"), make).unwrap();
    fs::set_permissions(
        bin.join("make"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut running = sandbox
        .jsrun()
        .env("PATH", path)
        .args([
            "-j2",
            "--joblog",
            &crate::util::path_str(&sandbox.join("log")),
            "--",
            "make",
        ])
        .spawn();
    running.wait_until("make --version to be asked", || probed.exists());
    running.signal(libc::SIGTERM);
    // Opening the gate for writing and closing it ends the probe's read.
    drop(fs::OpenOptions::new().write(true).open(&gate).unwrap());
    let output = running.wait();
    output.killed_by(libc::SIGTERM);
    // A job started and killed at once may not get as far as its first line:
    // the job log shows every job that was started.
    let log = fs::read_to_string(sandbox.join("log")).unwrap();
    assert_eq!(
        log.lines().count(),
        1,
        "a job started after SIGTERM:\n{log}"
    );
    assert!(
        !started.exists(),
        "make ran after SIGTERM\n{}",
        output.report()
    );
}

/// python3's arguments that run jsrun with signal `name` ignored, as a parent
/// that set it to SIG_IGN would start it.
fn ignoring(name: &str) -> Vec<String> {
    let script = format!(
        "import os, signal, sys\n\
         signal.signal(signal.{name}, signal.SIG_IGN)\n\
         os.execv(sys.argv[1], sys.argv[1:])"
    );
    vec![
        "-c".into(),
        script,
        crate::util::path_str(&crate::util::jsrun_bin()),
    ]
}

/// Started with SIGCHLD ignored (the kernel would reap the jobs itself and
/// send no SIGCHLD), jsrun still sees its jobs end; they start with SIGCHLD
/// at its default.
#[test]
fn an_inherited_ignored_sigchld_is_reset() {
    let sandbox = Sandbox::new();
    let seen = sandbox.join("seen-{}");
    let probe = sandbox.probe().id("{}").env_out(&seen);
    let output = sandbox
        .command("python3")
        .args(ignoring("SIGCHLD"))
        .arg("-j3")
        .args(probe.words())
        .args([":::", "1", "2", "3"])
        .deadline(std::time::Duration::from_secs(20))
        .run();
    output.success();
    assert_eq!(sandbox.log().finished().len(), 3, "{}", output.report());
    for id in 1..=3 {
        let seen = Seen::read(&sandbox.join(format!("seen-{id}")));
        let sigchld = 1u64 << (libc::SIGCHLD - 1);
        assert_eq!(seen.mask("SigIgn") & sigchld, 0, "job {id}:\n{}", seen.text);
    }
}

/// Started with SIGINT ignored (`cmd &` in a shell script, `nohup` for
/// SIGHUP), jsrun leaves it ignored, as make does: a SIGINT neither stops it
/// nor reaches its jobs, which inherit the ignored disposition.
#[test]
fn an_inherited_ignored_sigint_stays_ignored() {
    let sandbox = Sandbox::new();
    let barrier = sandbox.join("barrier");
    let probe = sandbox
        .probe()
        .id("{}")
        .env_out(&sandbox.join("seen-{}"))
        .barrier(&barrier, 3);
    let mut running = sandbox
        .command("python3")
        .args(ignoring("SIGINT"))
        .arg("-j2")
        .args(probe.words())
        .args([":::", "1", "2"])
        .spawn();
    running.wait_until("2 jobs to run", || entries(&barrier) == 2);
    let pid = running.pid();
    // The kernel drops a signal whose disposition is SIG_IGN and that is not blocked:
    // nothing pends, nothing is queued for a signalfd.
    running.signal(libc::SIGINT);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let pending = status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(pending & (1 << (libc::SIGINT - 1)), 0, "{status}");
    fs::write(barrier.join("test"), b"").unwrap();
    let output = running.wait();
    output.success();
    assert_eq!(sandbox.log().finished().len(), 2, "{}", output.report());
    for id in 1..=2 {
        let seen = Seen::read(&sandbox.join(format!("seen-{id}")));
        let sigint = 1u64 << (libc::SIGINT - 1);
        assert_eq!(
            seen.mask("SigIgn") & sigint,
            sigint,
            "job {id}:\n{}",
            seen.text
        );
    }
}

/// `-v` into a stderr nobody reads (a fifo whose only reader never reads):
/// four long command lines fill the pipe. jsrun's own messages wait for room
/// instead of blocking it, so SIGTERM still ends it at once, its jobs are
/// signalled and every token goes back.
#[test]
fn sigterm_reaches_jsrun_while_nobody_reads_its_messages() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let barrier = sandbox.join("barrier");
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier_deadline(&barrier, 5, 20_000);
    // 20 KB of command line per job: four `-v` lines are more than a pipe holds.
    let long = "x".repeat(20_000);
    // The long word is the inner shell's $1, dropped before the probe runs.
    let command = format!(
        "{} -v sh -c 'shift; exec \"$@\"' sh {long} {} ::: 1 2 3 4 5 6 2>p",
        crate::util::shell_words(&[crate::util::path_str(&crate::util::jsrun_bin())]),
        crate::util::shell_words(&probe.words()),
    );
    // fd 4 keeps a reader on the fifo (jsrun inherits it and never reads).
    let script = format!("rm -f p; mkfifo p; exec 4<>p; exec {command}");
    let mut running = sandbox
        .command("bash")
        .env("MAKEFLAGS", pool.makeflags())
        .args(["-c", &script])
        .deadline(std::time::Duration::from_secs(20))
        .spawn();
    running.wait_until("4 jobs to run", || entries(&barrier) == 4);
    running.signal(libc::SIGTERM);
    let output = running.wait();
    output.killed_by(libc::SIGTERM);
    assert_eq!(
        sorted(&pool.drain()),
        b"abc",
        "every token must be back\n{}",
        output.report()
    );
}
