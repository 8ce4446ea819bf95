//! jsrun as a client of a jobserver the test owns (fifo or pipe): how many
//! jobs run at once, and that the pool gets back exactly what it lent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::{FifoJobserver, PipeJobserver, Sandbox, Seen, sorted, values};

/// `jsrun [ARGS] probe --id {} (barrier of `want`, 300 ms) ::: 1..n`.
fn probe_run(sandbox: &Sandbox, jsrun_args: &[&str], want: usize, n: usize) -> crate::util::Cmd {
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), want)
        .sleep_ms(300);
    sandbox
        .jsrun()
        .args(jsrun_args)
        .args(probe.words())
        .arg(":::")
        .args(values(n))
}

#[test]
fn fifo_pool_of_three_tokens_runs_four_jobs_at_once() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let output = probe_run(&sandbox, &[], 4, 8).fifo_jobserver(&pool).run();
    output.success();
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
    assert_eq!(
        sorted(&pool.drain()),
        b"abc",
        "the bytes lent must come back"
    );
}

#[test]
fn pipe_pool_of_three_tokens_runs_four_jobs_at_once() {
    let sandbox = Sandbox::new();
    let pool = PipeJobserver::new(b"xyz");
    let output = probe_run(&sandbox, &[], 4, 8).pipe_jobserver(&pool).run();
    output.success();
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
    assert_eq!(
        sorted(&pool.drain()),
        b"xyz",
        "the bytes lent must come back"
    );
}

/// The legacy spelling `--jobserver-fds=R,W` (make < 4.2, jobserver-rs).
#[test]
fn legacy_jobserver_fds_is_understood() {
    let sandbox = Sandbox::new();
    let pool = PipeJobserver::new(b"||");
    let [r, w] = pool.fds();
    let output = probe_run(&sandbox, &[], 3, 6)
        .inherit_fds(&[r, w])
        .env("MAKEFLAGS", format!("-j --jobserver-fds={r},{w}"))
        .run();
    output.success();
    let log = sandbox.log();
    assert_eq!(log.peak(), 3, "{}\n{}", log.dump(), output.report());
    assert_eq!(pool.drain(), b"||");
}

/// Under a jobserver, -jN caps jsrun's own concurrency.
#[test]
fn jobs_option_caps_concurrency_under_a_jobserver() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abcdef");
    let output = probe_run(&sandbox, &["-j2"], 2, 6)
        .fifo_jobserver(&pool)
        .run();
    output.success();
    let log = sandbox.log();
    assert_eq!(log.peak(), 2, "{}\n{}", log.dump(), output.report());
    assert_eq!(sorted(&pool.drain()), b"abcdef");
}

/// The last jobserver option in MAKEFLAGS wins.
#[test]
fn last_jobserver_auth_wins() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"ab");
    let makeflags = format!(
        " -j3 --jobserver-auth=fifo:{}/missing --jobserver-auth=fifo:{}",
        sandbox.path().display(),
        pool.path().display()
    );
    let output = probe_run(&sandbox, &[], 3, 6)
        .env("MAKEFLAGS", makeflags)
        .run();
    output.success().stderr_lacks("unavailable");
    let log = sandbox.log();
    assert_eq!(log.peak(), 3, "{}\n{}", log.dump(), output.report());
    assert_eq!(sorted(&pool.drain()), b"ab");
}

/// Children get MAKEFLAGS (and the pipe fds) exactly as jsrun got them,
/// also when -jN caps jsrun itself.
#[test]
fn children_get_makeflags_unchanged() {
    for jobs in [&[][..], &["-j2"]] {
        let sandbox = Sandbox::new();
        let pool = PipeJobserver::new(b"++");
        let [r, w] = pool.fds();
        let makeflags = format!("ks -j3 --jobserver-auth={r},{w} -- FOO=bar\\ baz");
        let probe = sandbox.probe().id("{}").env_out(&sandbox.join("seen-{}"));
        let output = sandbox
            .jsrun()
            .args(jobs)
            .args(probe.words())
            .args([":::", "1", "2"])
            .inherit_fds(&[r, w])
            .env("MAKEFLAGS", &makeflags)
            .run();
        output.success();
        for id in ["1", "2"] {
            let seen = Seen::read(&sandbox.join(format!("seen-{id}")));
            assert_eq!(
                seen.var("MAKEFLAGS").as_deref(),
                Some(makeflags.as_str()),
                "{jobs:?}"
            );
            let open: Vec<i32> = seen.fds().iter().map(|(fd, _, _)| *fd).collect();
            assert!(open.contains(&r) && open.contains(&w), "{}", seen.text);
        }
        assert_eq!(pool.drain(), b"++");
    }
}

/// A fifo path that cannot be opened: warning, one job at a time.
#[test]
fn unopenable_fifo_warns_and_runs_serially() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("{}").sleep_ms(150);
    let output = sandbox
        .jsrun()
        .env(
            "MAKEFLAGS",
            format!(" -j4 --jobserver-auth=fifo:{}", sandbox.str("no-such-fifo")),
        )
        .args(probe.words())
        .arg(":::")
        .args(values(3))
        .run();
    output.success().stderr_contains("jobserver unavailable");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(3), "{}", log.dump());
    assert_eq!(log.peak(), 1, "{}", log.dump());
}

/// Pipe fds that are not two ends of one pipe: warning, one at a time, and
/// neither pipe is touched.
#[test]
fn fds_of_two_different_pipes_warn_and_run_serially() {
    let sandbox = Sandbox::new();
    let first = PipeJobserver::new(b"12");
    let second = PipeJobserver::new(b"34");
    let r = first.fds()[0];
    let w = second.fds()[1];
    let probe = sandbox.probe().id("{}").sleep_ms(150);
    let output = sandbox
        .jsrun()
        .inherit_fds(&[r, w])
        .env("MAKEFLAGS", format!(" -j3 --jobserver-auth={r},{w}"))
        .args(probe.words())
        .arg(":::")
        .args(values(3))
        .run();
    output
        .success()
        .stderr_contains("jobserver unavailable")
        .stderr_contains("MAKEFLAGS is stale")
        // Not the advice for closed fds: a '+' would not help here.
        .stderr_lacks("Add '+'");
    let log = sandbox.log();
    assert_eq!(log.peak(), 1, "{}", log.dump());
    assert_eq!(first.drain(), b"12");
    assert_eq!(second.drain(), b"34");
}

/// Pipe fds that are not open in jsrun (a make rule without `+`): warning,
/// one at a time.
#[test]
fn closed_fds_warn_and_run_serially() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("{}").sleep_ms(150);
    let output = sandbox
        .jsrun()
        .env("MAKEFLAGS", " -j4 --jobserver-auth=57,58")
        .args(probe.words())
        .arg(":::")
        .args(values(3))
        .run();
    output
        .success()
        .stderr_contains("jobserver unavailable")
        .stderr_contains("Add '+' to the parent make rule");
    assert_eq!(sandbox.log().peak(), 1, "{}", sandbox.log().dump());
}

/// `--jobserver=AUTH` takes no implicit slot: with 2 tokens, 2 jobs at once.
#[test]
fn jobserver_option_has_no_implicit_slot() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"st");
    let auth = format!("--jobserver=fifo:{}", pool.path().display());
    let output = probe_run(&sandbox, &[&auth], 2, 5).run();
    output.success();
    let log = sandbox.log();
    assert_eq!(log.finished(), values(5), "{}", log.dump());
    assert_eq!(log.peak(), 2, "{}\n{}", log.dump(), output.report());
    assert_eq!(sorted(&pool.drain()), b"st");
}

/// `--jobserver=AUTH` with an empty pool: the first job waits for a token.
/// The test waits until jsrun sleeps in poll(), puts a token in, and checks
/// that the job started after that (its own start time, on the clock every
/// process shares), not before.
#[test]
fn jobserver_option_waits_for_a_token_before_the_first_job() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"");
    let auth = format!("--jobserver=fifo:{}", pool.path().display());
    let mut running = sandbox
        .jsrun()
        .arg(&auth)
        .args(sandbox.probe().id("only").words())
        .spawn();
    let pid = running.pid();
    running.wait_until("jsrun to wait in poll", || crate::util::sleeps_in_poll(pid));
    assert_eq!(sandbox.log().text(), "", "started without a token");
    let put_at = now_nanos();
    pool.put(b"q");
    running.wait_until("the job to run", || !sandbox.log().finished().is_empty());
    running.wait().success();
    let start = sandbox.log().events()[0].nanos;
    assert!(
        start > put_at,
        "the job started {} µs before the token was there\n{}",
        (put_at - start) / 1000,
        sandbox.log().dump()
    );
    assert_eq!(pool.drain(), b"q");
}

/// Nanoseconds since the epoch, the clock the probes log with.
fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// Waiting for a token or a child costs no CPU and no wake-ups: with an
/// empty pool, jsrun runs job 1 in its implicit slot (it waits at a barrier
/// until the test releases it) while job 2 waits for a token that never
/// comes. Once jsrun sleeps in poll(), over one second of that wait it must
/// not wake up (poll, no sleep loop), and its CPU time stays small.
#[test]
fn waiting_costs_no_cpu() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"");
    let barrier = sandbox.join("barrier");
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier_deadline(&barrier, 2, 30_000);
    let mut running = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args(probe.words())
        .arg(":::")
        .args(["1", "2"])
        .spawn();
    let pid = running.pid();
    let log = sandbox.log();
    running.wait_until("job 1 to wait at the barrier", || {
        crate::util::entries(&barrier) == 1
    });
    running.wait_until("jsrun to wait in poll", || crate::util::sleeps_in_poll(pid));
    let switches_before = running.voluntary_switches();
    std::thread::sleep(Duration::from_millis(1000));
    let switches = running.voluntary_switches() - switches_before;
    assert_eq!(
        log.started(),
        ["1"],
        "job 2 has no slot yet\n{}",
        log.dump()
    );
    std::fs::write(barrier.join("test"), b"").unwrap();
    running.wait_until("job 2 to start", || log.started().len() == 2);
    let cpu = running.cpu_time();
    running.wait().success();
    assert_eq!(log.peak(), 1, "{}", log.dump());
    assert!(
        cpu < Duration::from_millis(100),
        "jsrun used {cpu:?} of CPU while it waited"
    );
    assert!(
        switches <= 5,
        "jsrun woke up {switches} times in 1 s while nothing happened"
    );
    assert_eq!(pool.drain(), b"");
}

/// jsrun never sets O_NONBLOCK on the pipe description it shares with make
/// and the other clients (make 4.2.1 dies of EAGAIN if someone does): the
/// test's own descriptor of that description stays blocking all along.
#[test]
fn shared_pipe_stays_blocking() {
    let sandbox = Sandbox::new();
    let pool = PipeJobserver::new(b"abc");
    assert!(!pool.read_end_is_nonblocking());
    let mut running = probe_run(&sandbox, &[], 4, 8).pipe_jobserver(&pool).spawn();
    let log = sandbox.log();
    let mut samples = 0;
    running.wait_until("all jobs to finish", || {
        samples += 1;
        assert!(
            !pool.read_end_is_nonblocking(),
            "O_NONBLOCK set on the shared pipe\n{}",
            log.dump()
        );
        log.finished().len() == 8
    });
    running.wait().success();
    assert!(!pool.read_end_is_nonblocking());
    assert!(samples > 10, "too few samples ({samples}) to tell");
    assert_eq!(log.peak(), 4, "{}", log.dump());
    assert_eq!(sorted(&pool.drain()), b"abc");
}

/// `--info` reports the jobserver (style, where, free tokens) and runs
/// nothing, and takes nothing from the pool.
#[test]
fn info_describes_the_jobserver_and_takes_nothing() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let output = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args(["--info"])
        .args(sandbox.probe().id("never").words())
        .run();
    output.success();
    let path = crate::util::path_str(pool.path());
    assert!(output.stdout.contains("fifo"), "{}", output.report());
    assert!(output.stdout.contains(&path), "{}", output.report());
    assert!(
        output.stdout.contains('3'),
        "free tokens\n{}",
        output.report()
    );
    assert_eq!(sandbox.log().text(), "", "--info runs nothing");
    assert_eq!(sorted(&pool.drain()), b"abc");
}

/// `--stats`: the summary counts the jobs, the peak and the tokens taken.
#[test]
fn stats_summarize_the_run() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let output = probe_run(&sandbox, &["--stats"], 4, 4)
        .fifo_jobserver(&pool)
        .run();
    output.success();
    assert_eq!(sandbox.log().peak(), 4, "{}", sandbox.log().dump());
    let stderr = output.stderr.to_lowercase();
    for text in ["4 jobs", "0 failed", "peak 4", "3 tokens"] {
        assert!(
            stderr.contains(text),
            "{text:?} missing\n{}",
            output.report()
        );
    }
    assert_eq!(sorted(&pool.drain()), b"abc");
}

/// `--jobserver=R,W`: inherited pipe fds named on the command line.
#[test]
fn jobserver_option_accepts_pipe_fds() {
    let sandbox = Sandbox::new();
    let pool = PipeJobserver::new(b"st");
    let [r, w] = pool.fds();
    let output = probe_run(&sandbox, &[&format!("--jobserver={r},{w}")], 2, 5)
        .inherit_fds(&[r, w])
        .run();
    output.success();
    let log = sandbox.log();
    assert_eq!(log.finished(), values(5), "{}", log.dump());
    assert_eq!(log.peak(), 2, "{}\n{}", log.dump(), output.report());
    assert_eq!(sorted(&pool.drain()), b"st");
}
