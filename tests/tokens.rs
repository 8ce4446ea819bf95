//! Token conservation: whatever happens to the jobs, the pool the test owns
//! holds the same bytes after the run as before.

use crate::util::{FifoJobserver, PipeJobserver, Sandbox, sorted, values};

/// Runs `jsrun ARGS probe --id {} PROBE_ARGS (barrier of 4) ::: 1..8` under a
/// fifo preloaded with `abc` and checks that `abc` is back afterwards.
fn run_and_check_pool(jsrun_args: &[&str], probe_args: &[&str]) -> (Sandbox, crate::util::Output) {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 4)
        .sleep_ms(100);
    let output = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args(jsrun_args)
        .args(probe.words())
        .args(probe_args)
        .arg(":::")
        .args(values(8))
        .run();
    assert_eq!(
        sorted(&pool.drain()),
        b"abc",
        "the pool lost or gained tokens\n{}",
        output.report()
    );
    // The first four met at the barrier: jsrun did use the pool.
    let log = sandbox.log();
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
    (sandbox, output)
}

#[test]
fn failing_jobs_return_their_tokens() {
    let (sandbox, output) = run_and_check_pool(&[], &["--exit", "1"]);
    output.code(1);
    // No new job after the first failure: only the 4 already running.
    let log = sandbox.log();
    assert_eq!(
        log.started().len(),
        4,
        "{}\n{}",
        log.dump(),
        output.report()
    );
    assert_eq!(log.finished().len(), 4, "{}", log.dump());
}

#[test]
fn failing_jobs_with_keep_going_return_their_tokens() {
    let (sandbox, output) = run_and_check_pool(&["-k"], &["--exit", "1"]);
    output.code(1);
    let log = sandbox.log();
    assert_eq!(
        log.finished(),
        values(8),
        "{}\n{}",
        log.dump(),
        output.report()
    );
}

#[test]
fn jobs_killed_by_a_signal_return_their_tokens() {
    let (sandbox, output) = run_and_check_pool(&["-k"], &["--signal", "9"]);
    output.code(128 + 9);
    assert_eq!(sandbox.log().started().len(), 8, "{}", sandbox.log().dump());
}

#[test]
fn jobs_killed_by_sigterm_return_their_tokens() {
    let (_, output) = run_and_check_pool(&[], &["--signal", "15"]);
    output.code(128 + 15);
}

#[test]
fn successful_jobs_return_the_same_bytes() {
    let (sandbox, output) = run_and_check_pool(&[], &[]);
    output.success();
    assert_eq!(sandbox.log().finished(), values(8));
}

/// A command that does not exist is reported (127) before any token is
/// taken: nothing starts, the pool is untouched.
#[test]
fn missing_command_takes_no_token() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let output = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args(["-j4", "jsrun-test-no-such-command", ":::", "1", "2", "3"])
        .run();
    output.code(127);
    assert_eq!(sorted(&pool.drain()), b"abc");
}

/// The same with `--jobserver=AUTH` on an empty pool, where even the first
/// job needs a token: jsrun must say 127 at once instead of waiting for one.
#[test]
fn missing_command_is_reported_before_waiting_for_a_token() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"");
    let output = sandbox
        .jsrun()
        .arg(format!("--jobserver=fifo:{}", pool.path().display()))
        .arg("jsrun-test-no-such-command")
        .deadline(std::time::Duration::from_secs(10))
        .run();
    output.code(127);
    assert_eq!(pool.drain(), b"");
}

/// A pipe pool (the shared-description case) gets its bytes back too, also
/// after failures.
#[test]
fn pipe_pool_gets_its_bytes_back_after_failures() {
    let sandbox = Sandbox::new();
    let pool = PipeJobserver::new(b"abc");
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 4)
        .sleep_ms(100)
        .exit(2);
    let output = sandbox
        .jsrun()
        .pipe_jobserver(&pool)
        .arg("-k")
        .args(probe.words())
        .arg(":::")
        .args(values(8))
        .run();
    output.code(2);
    assert_eq!(sandbox.log().peak(), 4, "{}", sandbox.log().dump());
    assert_eq!(sorted(&pool.drain()), b"abc");
}
