//! Faults: jobs that crash or meddle with the jobserver, signals to jsrun
//! in each phase of a run, spawn failures and resource limits, a fifo that
//! disappears, a make that is SIGKILLed under jsrun, a client killed while
//! it holds tokens. After each, the pool the test owns is counted byte for
//! byte (in server mode jsrun's own count is checked instead).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{
    FifoJobserver, PipeJobserver, Sandbox, Seen, entries, example, is_root, make44, path_str,
    process_gone, shell_words, sorted, values, wait_until,
};

/// Releases a barrier that waits for one more marker than the jobs bring.
fn release(barrier: &Path) {
    fs::create_dir_all(barrier).expect("barrier directory");
    fs::write(barrier.join("test"), b"").expect("barrier marker");
}

/// Waits until every process that logged in the sandbox's log is gone.
fn wait_for_jobs_to_die(sandbox: &Sandbox) {
    let pids: Vec<u32> = sandbox.log().events().iter().map(|e| e.pid).collect();
    wait_until("the jobs to die", || {
        pids.iter().all(|&pid| process_gone(pid))
    });
}

// ---------------------------------------------------------------------------
// Jobs that crash

/// Eight jobs under a pool of three tokens: the first four meet at a barrier
/// (so all three tokens are out), then die of `signal`; `-k` starts the rest,
/// which die the same way. No core files: RLIMIT_CORE is 0.
fn crashing_jobs_return_their_tokens(signal: i32) {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 4)
        .signal(signal);
    let output = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .rlimit(libc::RLIMIT_CORE, 0)
        .arg("-k")
        .args(probe.words())
        .arg(":::")
        .args(values(8))
        .run();
    output.code(128 + signal);
    let log = sandbox.log();
    assert_eq!(log.started(), values(8), "{}", log.dump());
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}", log.dump());
    assert_eq!(sorted(&pool.drain()), b"abc", "{}", output.report());
}

#[test]
fn segfaulting_jobs_return_their_tokens() {
    crashing_jobs_return_their_tokens(libc::SIGSEGV);
}

#[test]
fn sigkilled_jobs_return_their_tokens() {
    crashing_jobs_return_their_tokens(libc::SIGKILL);
}

/// The same with a shell that kills itself, as a crashing recipe would.
#[test]
fn a_shell_that_kills_itself_with_sigsegv_returns_its_token() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 4);
    let script = format!("{}; kill -SEGV $$", probe.shell());
    let output = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .rlimit(libc::RLIMIT_CORE, 0)
        .args(["-k", "sh", "-c", &script, "sh", ":::"])
        .args(values(6))
        .run();
    output.code(128 + libc::SIGSEGV);
    assert_eq!(sandbox.log().finished(), values(6));
    assert_eq!(sandbox.log().peak(), 4, "{}", sandbox.log().dump());
    assert_eq!(sorted(&pool.drain()), b"abc");
}

// ---------------------------------------------------------------------------
// Jobs that close or duplicate the jobserver descriptors

/// Under a pipe pool the jobs inherit its two fds. Each job closes them
/// before it runs; jsrun reads and writes its tokens through descriptions
/// of its own, so nothing is lost.
#[test]
fn jobs_that_close_the_pipe_fds_do_not_disturb_jsrun() {
    let sandbox = Sandbox::new();
    let pool = PipeJobserver::new(b"abc");
    let [r, w] = pool.fds();
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 4)
        .sleep_ms(20);
    let script = format!("exec {r}<&- {w}>&-; exec {}", probe.shell());
    let output = sandbox
        .jsrun()
        .pipe_jobserver(&pool)
        .args(["sh", "-c", &script, "sh", ":::"])
        .args(values(8))
        .run();
    output.success().stderr_lacks("jsrun:");
    assert_eq!(sandbox.log().finished(), values(8));
    assert_eq!(sandbox.log().peak(), 4, "{}", sandbox.log().dump());
    assert_eq!(sorted(&pool.drain()), b"abc");
}

/// Each job moves the fds elsewhere (dup to 7 and 8, close the originals),
/// then takes a token through the copy and puts it back. The pool has one
/// token more than jsrun may use (-j4), so the jobs never wait for long.
#[test]
fn jobs_that_dup_the_pipe_fds_and_use_them_keep_the_count() {
    let sandbox = Sandbox::new();
    let pool = PipeJobserver::new(b"abcd");
    let [r, w] = pool.fds();
    // Numbers of the copies: never the pipe's own, which depend on what else
    // the test process has open and may have two digits (bash, not dash).
    let (r2, w2) = (r.max(w) + 10, r.max(w) + 11);
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 4)
        .sleep_ms(20);
    let script = format!(
        "exec {r2}<&{r} {w2}>&{w}; exec {r}<&- {w}>&-; \
         dd bs=1 count=1 <&{r2} >&{w2} 2>/dev/null || exit 9; exec {}",
        probe.shell()
    );
    let output = sandbox
        .jsrun()
        .pipe_jobserver(&pool)
        .args(["-j4", "bash", "-c", &script, "bash", ":::"])
        .args(values(8))
        .run();
    output.success().stderr_lacks("jsrun:");
    assert_eq!(sandbox.log().finished(), values(8));
    assert_eq!(sorted(&pool.drain()), b"abcd");
}

/// jsrun as a pipe server: the jobs close the advertised fds (found in
/// MAKEFLAGS) and exit; jsrun's own count at exit finds every token.
#[test]
fn server_pipe_survives_jobs_that_close_its_fds() {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 3)
        .sleep_ms(20);
    let script = format!(
        "fds=${{MAKEFLAGS##*--jobserver-auth=}}; fds=${{fds%% *}}; \
         eval \"exec ${{fds%,*}}<&- ${{fds#*,}}>&-\"; exec {}",
        probe.shell()
    );
    let output = sandbox
        .jsrun()
        .args(["-j3", "--jobserver-style=pipe", "sh", "-c", &script, "sh"])
        .arg(":::")
        .args(values(6))
        .run();
    output.success();
    assert_eq!(output.stderr, "", "{}", output.report());
    assert_eq!(sandbox.log().finished(), values(6));
    assert_eq!(sandbox.log().peak(), 3, "{}", sandbox.log().dump());
}

// ---------------------------------------------------------------------------
// SIGINT, SIGTERM and SIGHUP in each phase of a run

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Pool empty, one job in the implicit slot, the next waiting for a token.
    WaitingForAToken,
    /// `--jobserver` on an empty pool: no job yet, the first one waits.
    WaitingForTheFirstToken,
    /// Four jobs running, at jsrun's -j4 cap: nobody waits for a token, more
    /// values are left.
    ChildrenRunning,
    /// Every value started (the source is done), the jobs still running.
    Draining,
}

fn interrupted(phase: Phase, signal: i32) {
    let sandbox = Sandbox::new();
    let barrier = sandbox.join("barrier");
    // The barrier never fills: the jobs wait there until the signal.
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier_deadline(&barrier, 99, 30_000);
    let (tokens, jsrun_args, n, running): (&[u8], Vec<String>, usize, usize) = match phase {
        Phase::WaitingForAToken => (b"", vec![], 3, 1),
        Phase::WaitingForTheFirstToken => (b"", vec![], 2, 0),
        Phase::ChildrenRunning => (b"abc", vec!["-j4".into()], 8, 4),
        Phase::Draining => (b"abc", vec![], 4, 4),
    };
    let pool = FifoJobserver::new(&sandbox, tokens);
    let cmd = match phase {
        Phase::WaitingForTheFirstToken => sandbox
            .jsrun()
            .arg(format!("--jobserver=fifo:{}", pool.path().display())),
        _ => sandbox.jsrun().fifo_jobserver(&pool),
    };
    let mut jsrun = cmd
        .args(&jsrun_args)
        .args(probe.words())
        .arg(":::")
        .args(values(n))
        .spawn();
    let pid = jsrun.pid();
    match running {
        // Nothing to see but jsrun itself, blocked in poll().
        0 => jsrun.wait_until("jsrun to wait in poll", || blocked_in_poll(pid)),
        _ => jsrun.wait_until("the jobs to run", || entries(&barrier) == running),
    }
    jsrun.signal(signal);
    let output = jsrun.wait();
    output.killed_by(signal);
    wait_for_jobs_to_die(&sandbox);
    let log = sandbox.log();
    assert_eq!(
        log.started().len(),
        running,
        "no job may start after the signal ({phase:?})\n{}\n{}",
        log.dump(),
        output.report()
    );
    assert_eq!(
        log.finished(),
        Vec::<String>::new(),
        "the jobs die of the forwarded signal ({phase:?})\n{}",
        log.dump()
    );
    assert_eq!(
        sorted(&pool.drain()),
        tokens,
        "every token back, none added ({phase:?})\n{}",
        output.report()
    );
}

/// Whether process `pid` sleeps in poll(): its wchan says so, or, where the
/// kernel hides wchan, it is asleep at all (jsrun sleeps nowhere else).
fn blocked_in_poll(pid: i32) -> bool {
    let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    if wchan.contains("poll") {
        return true;
    }
    let hidden = wchan.is_empty() || wchan == "0";
    let asleep = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
    });
    hidden && asleep
}

#[test]
fn sigint_while_waiting_for_a_token() {
    interrupted(Phase::WaitingForAToken, libc::SIGINT);
}

#[test]
fn sigterm_while_waiting_for_a_token() {
    interrupted(Phase::WaitingForAToken, libc::SIGTERM);
}

#[test]
fn sighup_while_waiting_for_a_token() {
    interrupted(Phase::WaitingForAToken, libc::SIGHUP);
}

#[test]
fn sigint_while_waiting_for_the_first_token() {
    interrupted(Phase::WaitingForTheFirstToken, libc::SIGINT);
}

#[test]
fn sigterm_while_waiting_for_the_first_token() {
    interrupted(Phase::WaitingForTheFirstToken, libc::SIGTERM);
}

#[test]
fn sighup_while_waiting_for_the_first_token() {
    interrupted(Phase::WaitingForTheFirstToken, libc::SIGHUP);
}

#[test]
fn sigint_while_children_run() {
    interrupted(Phase::ChildrenRunning, libc::SIGINT);
}

#[test]
fn sigterm_while_children_run() {
    interrupted(Phase::ChildrenRunning, libc::SIGTERM);
}

#[test]
fn sighup_while_children_run() {
    interrupted(Phase::ChildrenRunning, libc::SIGHUP);
}

#[test]
fn sigint_while_draining() {
    interrupted(Phase::Draining, libc::SIGINT);
}

#[test]
fn sigterm_while_draining() {
    interrupted(Phase::Draining, libc::SIGTERM);
}

#[test]
fn sighup_while_draining() {
    interrupted(Phase::Draining, libc::SIGHUP);
}

// ---------------------------------------------------------------------------
// Spawn failures

/// Programs that cannot run, each among jobs that can (`-k`): a missing
/// command, a missing path, a script whose interpreter is missing (ENOENT
/// at exec time), a file without the x bit (EACCES), a directory, and an
/// executable that is no program (ENOEXEC).
#[test]
fn programs_that_cannot_run_among_jobs_that_can() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let script = sandbox.write("no-interpreter", "#!/jsrun-test/no/such/interpreter\n");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let plain = sandbox.write("not-executable", "#!/bin/sh\nexit 0\n");
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let garbage = sandbox.write("garbage", b"\x7fELF\x02\x01\x01 not really a program");
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o755)).unwrap();
    let probe = path_str(&crate::util::probe_bin());
    let cases: [(String, i32); 6] = [
        ("jsrun-test-no-such-command".into(), 127),
        ("/jsrun-test/no/such/path".into(), 127),
        (path_str(&script), 127),
        (path_str(&plain), 126),
        (sandbox.str("."), 126),
        (path_str(&garbage), 126),
    ];
    for (program, status) in &cases {
        let log = sandbox.join("log");
        let _ = fs::remove_file(&log);
        let values = [probe.as_str(), program.as_str(), probe.as_str()];
        let output = sandbox
            .jsrun()
            .fifo_jobserver(&pool)
            .args(["-k", "{}", "--log", &path_str(&log), "--id", "{#}", ":::"])
            .args(values)
            .run();
        output.code(*status);
        assert!(
            output.stderr.contains(program.as_str()),
            "the error names {program}\n{}",
            output.report()
        );
        assert_eq!(sandbox.log().finished(), ["1", "3"], "{program}");
        assert_eq!(sorted(&pool.drain()), b"abc", "{program}");
        pool.put(b"abc");
    }
}

/// Without -k, a job that cannot start stops the run like a failed job:
/// the job before it runs, none after it starts.
#[test]
fn a_missing_command_stops_the_run_without_keep_going() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let probe = path_str(&crate::util::probe_bin());
    let log = path_str(sandbox.log().path());
    let output = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args([
            "{}",
            "--log",
            &log,
            "--id",
            "{#}",
            "--sleep-ms",
            "50",
            ":::",
        ])
        .args([probe.as_str(), "jsrun-test-no-such-command", &probe, &probe])
        .run();
    output.code(127);
    assert_eq!(sandbox.log().started(), ["1"], "{}", output.report());
    assert_eq!(sorted(&pool.drain()), b"abc");
}

/// E2BIG: a value of 100,000 bytes (read from a file), in 30 arguments of
/// one job, is 3 MB of arguments, more than exec takes (a quarter of the
/// 8 MiB stack limit); that job fails with 126, the others run. (A single
/// value longer than one argument may hold never reaches exec: see
/// tests/setup.rs.)
#[test]
fn an_argument_too_long_for_exec_fails_only_its_job() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let big = "x".repeat(100_000);
    let values = sandbox.write("values", format!("small1\n{big}\nsmall2\n"));
    let probe = (0..30).fold(sandbox.probe().id("{#}"), |probe, _| probe.print("{}"));
    let output = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .rlimit(libc::RLIMIT_STACK, 8 << 20)
        .arg("-k")
        .args(probe.words())
        .arg("::::")
        .arg(&values)
        .run();
    output.code(126).stderr_contains("Argument list too long");
    assert_eq!(sandbox.log().finished(), ["1", "3"]);
    let mut want = vec!["small1"; 30];
    want.extend(vec!["small2"; 30]);
    assert_eq!(output.sorted_lines(), want);
    assert_eq!(sorted(&pool.drain()), b"abc");
}

/// RLIMIT_NOFILE 16 with -Ojob (two pipes per job): only a few jobs fit at
/// once. jsrun waits for a running job to end instead of failing the next
/// one, says so once, and every job completes with its output whole.
#[test]
fn fd_limit_delays_jobs_but_all_complete() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abcdefg");
    let probe = sandbox
        .probe()
        .id("{}")
        .sleep_ms(100)
        .print("out-{}")
        .print("more-{}");
    let output = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .rlimit(libc::RLIMIT_NOFILE, 16)
        .arg("-Ojob")
        .args(probe.words())
        .arg(":::")
        .args(values(8))
        .run();
    output.success();
    assert_eq!(
        output.stderr.matches("cannot start a job now").count(),
        1,
        "one warning\n{}",
        output.report()
    );
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert!(log.peak() < 8, "the limit held jobs back\n{}", log.dump());
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 16, "{}", output.report());
    for pair in lines.chunks(2) {
        let id = pair[0].strip_prefix("out-").expect("out- line first");
        assert_eq!(pair[1], format!("more-{id}"), "{}", output.report());
    }
    assert_eq!(sorted(&pool.drain()), b"abcdefg");
}

/// RLIMIT_NPROC: room for jsrun and three jobs. jsrun waits for a job to
/// end instead of failing the next one (EAGAIN from posix_spawn), and every
/// job completes. Root is exempt from the limit, so the command runs as a
/// uid of the test's own ([`crate::util::private_uid`]): RLIMIT_NPROC counts every
/// task of the real uid on the machine, and under a shared uid such as
/// `nobody` other tests starting and ending processes would change the
/// count between the test's measurement and the spawn. The first three
/// jobs wait at a barrier until jsrun has said it cannot start the fourth,
/// so the limit is reached in every run, whatever the timing. That uid may
/// not be able to reach the build's binaries (a checkout in a private home
/// or `mktemp -d`): it runs copies of jsrun and the probe in the sandbox.
/// As another user than root, or with a sandbox that other users cannot
/// reach, the test says loudly that it could not run.
#[test]
fn process_limit_delays_jobs_but_all_complete() {
    const TEST: &str = "faults::process_limit_delays_jobs_but_all_complete";
    if !is_root() {
        crate::util::machine_cannot(TEST, "only root can run jsrun under a uid of its own");
        return;
    }
    let uid = crate::util::private_uid();
    let sandbox = Sandbox::new();
    if let Some(dir) = sandbox
        .path()
        .ancestors()
        .skip(1)
        .find(|dir| fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
    {
        crate::util::machine_cannot(
            TEST,
            &format!(
                "other users cannot enter {}, which holds the sandbox: point TMPDIR elsewhere",
                dir.display()
            ),
        );
        return;
    }
    fs::set_permissions(sandbox.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let jsrun = sandbox.join("jsrun");
    let probe = sandbox.join("probe");
    for (from, to) in [
        (crate::util::jsrun_bin(), &jsrun),
        (crate::util::probe_bin(), &probe),
    ] {
        fs::copy(&from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    let pool = FifoJobserver::new(&sandbox, b"abcdefg");
    fs::set_permissions(pool.path(), fs::Permissions::from_mode(0o666)).unwrap();
    let barrier = sandbox.join("barrier");
    let probe_job = sandbox
        .probe()
        .id("{}")
        .barrier_deadline(&barrier, 4, 30_000);
    let mut words = probe_job.words();
    words[0] = path_str(&probe);
    // jsrun itself and three jobs; nothing else runs under this uid.
    let mut running = sandbox
        .command(&jsrun)
        .fifo_jobserver(&pool)
        .rlimit(libc::RLIMIT_NPROC, 4)
        .user(uid, uid)
        .args(words)
        .arg(":::")
        .args(values(8))
        .spawn();
    let stderr = running.stderr_path();
    running.wait_until("three jobs at the barrier and the warning", || {
        entries(&barrier) == 3
            && fs::read_to_string(&stderr).is_ok_and(|text| text.contains("cannot start a job now"))
    });
    release(&barrier);
    let output = running.wait();
    output.success();
    assert_eq!(
        output.stderr.matches("cannot start a job now").count(),
        1,
        "one warning\n{}",
        output.report()
    );
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 3, "the limit held jobs back\n{}", log.dump());
    assert_eq!(sorted(&pool.drain()), b"abcdefg");
    assert_eq!(crate::util::tasks_of_uid(uid), 0, "a job outlived jsrun");
}

// ---------------------------------------------------------------------------
// The fifo disappears or is replaced while jsrun runs

/// Four jobs hold the implicit slot and the three tokens when the fifo is
/// unlinked (and, with `replacement`, a new fifo with other bytes put at
/// its path). jsrun keeps using the fifo it opened: the last four jobs take
/// their tokens from it after the unlink, and every token goes back into it
/// (the test still holds it open). A replacement is never touched.
fn fifo_goes_away(replacement: Option<&[u8]>) {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let barrier = sandbox.join("barrier");
    let probe = sandbox.probe().id("{}").barrier(&barrier, 5).sleep_ms(20);
    let mut running = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args(probe.words())
        .arg(":::")
        .args(values(8))
        .spawn();
    running.wait_until("4 jobs to run", || entries(&barrier) == 4);
    fs::remove_file(pool.path()).expect("unlink the fifo");
    let new = replacement.map(|tokens| FifoJobserver::at(pool.path().to_owned(), tokens));
    release(&barrier);
    let output = running.wait();
    output.success().stderr_lacks("jsrun:");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}", log.dump());
    assert_eq!(sorted(&pool.drain()), b"abc", "{}", output.report());
    if let (Some(new), Some(tokens)) = (new, replacement) {
        assert_eq!(sorted(&new.drain()), sorted(tokens), "the new fifo");
    }
}

#[test]
fn fifo_unlinked_mid_run_gets_its_tokens_back() {
    fifo_goes_away(None);
}

#[test]
fn fifo_replaced_mid_run_is_left_alone() {
    fifo_goes_away(Some(b"XYZW"));
}

// ---------------------------------------------------------------------------
// The jobserver's make is SIGKILLed while a +jsrun recipe runs

/// `make -j4` (4.4.1, fifo) runs `+jsrun` with eight jobs; four hold the
/// implicit slot and make's three tokens when make gets SIGKILL. make's
/// fifo stays (SIGKILL leaves it), jsrun's read-write descriptor keeps it
/// alive: jsrun finishes all eight, its shell records status 0, and the
/// three tokens are back in the fifo (held open by the test).
#[test]
fn make_killed_under_a_running_jsrun() {
    let sandbox = Sandbox::new();
    let barrier = sandbox.join("barrier");
    let probe = sandbox
        .probe()
        .id("{}")
        .env_out(&sandbox.join("seen-{}"))
        .barrier(&barrier, 5)
        .sleep_ms(20);
    let recipe = format!(
        "+{} {} ::: {}; echo $$? > {}",
        shell_words(&[path_str(&crate::util::jsrun_bin())]),
        probe.shell(),
        values(8).join(" "),
        sandbox.str("status")
    );
    sandbox.write("Makefile", format!(".PHONY: run\nrun:\n\t{recipe}\n"));
    let mut make = sandbox
        .command(make44())
        .arg("-j4")
        .env("TMPDIR", sandbox.path())
        .spawn();
    make.wait_until("4 jobs to run", || entries(&barrier) == 4);
    let pool = kill_make_keeping_its_fifo(&sandbox, make);
    release(&barrier);
    let status = sandbox.join("status");
    // The shell creates the file before it writes the status into it.
    wait_until("jsrun to finish", || {
        fs::read_to_string(&status).is_ok_and(|s| s.ends_with('\n'))
    });
    let log = sandbox.log();
    assert_eq!(fs::read_to_string(&status).unwrap().trim(), "0");
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}", log.dump());
    assert_eq!(pool.drain(), b"+++");
}

/// Opens the fifo job 1 saw in MAKEFLAGS (so the test can count it later),
/// then SIGKILLs make, which leaves that fifo behind.
fn kill_make_keeping_its_fifo(sandbox: &Sandbox, make: crate::util::Running) -> FifoJobserver {
    let pool = FifoJobserver::open_existing(Seen::read(&sandbox.join("seen-1")).fifo());
    make.signal(libc::SIGKILL);
    make.wait().killed_by(libc::SIGKILL);
    pool
}

/// Worse: make dies while its other recipes hold all three tokens and
/// jsrun waits for one. Those tokens will never come back, but jsrun still
/// has its implicit slot: it runs the remaining jobs one at a time and
/// exits 0. It never writes a token for its implicit slot, so the fifo
/// stays empty.
#[test]
fn make_killed_while_jsrun_waits_for_a_token() {
    let sandbox = Sandbox::new();
    let held = sandbox.join("held");
    let jobs_barrier = sandbox.join("jobs");
    let others = crate::util::Log::new(sandbox.join("others.log"));
    let other = |id: &str, want: usize| {
        crate::util::Probe::new(&others)
            .id(id)
            .barrier_deadline(&held, want, 30_000)
            .shell()
    };
    let probe = sandbox
        .probe()
        .id("{}")
        .env_out(&sandbox.join("seen-{}"))
        .barrier(&jobs_barrier, 2);
    // The jsrun recipe starts its jobs only once h1-h3 hold make's tokens.
    let run = format!(
        "+{} && {} {} ::: {}; echo $$? > {}",
        other("gate", 4),
        shell_words(&[path_str(&crate::util::jsrun_bin())]),
        probe.shell(),
        values(6).join(" "),
        sandbox.str("status")
    );
    let mut makefile = String::from(".PHONY: all run h1 h2 h3\nall: run h1 h2 h3\n");
    makefile.push_str(&format!("run:\n\t{run}\n"));
    for h in ["h1", "h2", "h3"] {
        makefile.push_str(&format!("{h}:\n\t{}\n", other(h, 5)));
    }
    sandbox.write("Makefile", makefile);
    let mut make = sandbox
        .command(make44())
        .arg("-j4")
        .env("TMPDIR", sandbox.path())
        .spawn();
    make.wait_until("job 1 to run", || entries(&jobs_barrier) == 1);
    let pool = kill_make_keeping_its_fifo(&sandbox, make);
    release(&jobs_barrier);
    let status = sandbox.join("status");
    // The shell creates the file before it writes the status into it.
    wait_until("jsrun to finish", || {
        fs::read_to_string(&status).is_ok_and(|s| s.ends_with('\n'))
    });
    let log = sandbox.log();
    assert_eq!(fs::read_to_string(&status).unwrap().trim(), "0");
    assert_eq!(log.finished(), values(6), "{}", log.dump());
    assert_eq!(log.peak(), 1, "{}", log.dump());
    release(&held);
    let pids: Vec<u32> = others.events().iter().map(|e| e.pid).collect();
    wait_until("h1-h3 to end", || pids.iter().all(|&pid| process_gone(pid)));
    assert_eq!(pool.drain(), b"", "nothing written for the implicit slot");
}

// ---------------------------------------------------------------------------
// Server mode: a client killed while it holds tokens

/// `jsrun -j5 -- crate_client --jobs 4`: the client runs one job in its
/// implicit slot and three under tokens, all at a barrier, when it gets
/// SIGKILL. Its three tokens are lost; jsrun says exactly that at exit.
fn killed_client_loses_tokens(style: &[&str]) {
    let sandbox = Sandbox::new();
    let barrier = sandbox.join("barrier");
    let mut jsrun = sandbox
        .jsrun()
        .arg("-j5")
        .args(style)
        .arg("--")
        .arg(example("crate_client"))
        .args(["--jobs", "4", "--want", "5", "--deadline-ms", "30000"])
        .arg("--log")
        .arg(sandbox.log().path())
        .arg("--barrier")
        .arg(&barrier)
        .arg("--out")
        .arg(sandbox.join("client.out"))
        .spawn();
    jsrun.wait_until("4 jobs to run", || entries(&barrier) == 4);
    let client = sandbox.log().events()[0].pid;
    crate::util::kill(client, libc::SIGKILL);
    let output = jsrun.wait();
    output
        .code(128 + libc::SIGKILL)
        .stderr_contains("jobserver tokens: 3 missing at exit (1 found, 4 expected)");
    assert_eq!(
        output.stderr.matches("warning").count(),
        1,
        "{}",
        output.report()
    );
}

#[test]
fn server_names_the_tokens_a_killed_client_kept() {
    killed_client_loses_tokens(&[]);
}

#[test]
fn pipe_server_names_the_tokens_a_killed_client_kept() {
    killed_client_loses_tokens(&["--jobserver-style=pipe"]);
}

// ---------------------------------------------------------------------------
// Regressions

/// The contract: "the byte read is the byte written back when that child
/// exits". Jobs 2, 3 and 4 take `a`, `b` and `c` in that order (a fifo
/// gives bytes in the order they were written); when job 2 alone ends,
/// the byte that goes back must be job 2's `a`, not the last byte read.
#[test]
fn the_byte_written_back_is_the_ending_jobs_own() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let barrier = |id: &str| sandbox.join(format!("b{id}"));
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier_deadline(&sandbox.join("b{}"), 2, 30_000);
    let mut running = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args(probe.words())
        .arg(":::")
        .args(values(4))
        .spawn();
    running.wait_until("4 jobs to run", || {
        values(4).iter().all(|id| entries(&barrier(id)) == 1)
    });
    release(&barrier("2"));
    let log = sandbox.log();
    running.wait_until("job 2 to end", || log.finished() == ["2"]);
    let mut back = Vec::new();
    running.wait_until("a token to come back", || {
        back.extend(pool.drain());
        !back.is_empty()
    });
    pool.put(&back);
    for id in ["1", "3", "4"] {
        release(&barrier(id));
    }
    running.wait().success();
    assert_eq!(sorted(&pool.drain()), b"abc");
    assert_eq!(
        String::from_utf8_lossy(&back),
        "a",
        "job 2 held the first byte read"
    );
}

// ---------------------------------------------------------------------------
// The loop fails while jobs run

/// The supervision loop ends with an error while three jobs run (here: poll
/// refuses more descriptors than RLIMIT_NOFILE, lowered from outside). The
/// jobs are stopped and reaped before their tokens go back: a token written
/// back for a job that still runs would let the pool run one job too many.
#[test]
fn a_failing_loop_ends_its_jobs_before_giving_their_tokens_back() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"ab");
    let marks = sandbox.join("marks");
    fs::create_dir(&marks).unwrap();
    let gate = sandbox.join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // Each job notes its pid, then blocks opening a fifo nobody writes.
    let script = format!(
        "echo $$ > {}/$1; exec cat {}",
        crate::util::path_str(&marks),
        crate::util::path_str(&gate)
    );
    let mut running = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args([
            "-j3", "-Oline", "sh", "-c", &script, "sh", "{}", ":::", "1", "2", "3",
        ])
        .spawn();
    running.wait_until("3 jobs to run", || entries(&marks) == 3);
    let pids: Vec<u32> = (1..=3)
        .map(|i| {
            let path = marks.join(i.to_string());
            running.wait_until("a job's pid", || {
                fs::read_to_string(&path).is_ok_and(|t| t.ends_with('\n'))
            });
            fs::read_to_string(&path).unwrap().trim().parse().unwrap()
        })
        .collect();
    // Fewer descriptors than the loop polls (signalfd + 2 pipes per job), then
    // a wake-up: the next poll() fails with EINVAL.
    let limit = libc::rlimit {
        rlim_cur: 4,
        rlim_max: 4,
    };
    // SAFETY: prlimit only reads `limit`, a valid rlimit, and writes nothing.
    let rc = unsafe {
        libc::prlimit(
            running.pid(),
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    running.signal(libc::SIGCHLD);
    let output = running.wait();
    output.code(125).stderr_contains("poll");
    for pid in pids {
        assert!(
            process_gone(pid),
            "job {pid} still runs after jsrun exited\n{}",
            output.report()
        );
    }
    assert_eq!(sorted(&pool.drain()), b"ab", "{}", output.report());
}
