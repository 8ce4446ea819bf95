//! Exit statuses: the job's, 128+S, the first failure, and jsrun's own
//! 125/126/127.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::Sandbox;

#[test]
fn one_job_passes_its_exit_code_through() {
    let sandbox = Sandbox::new();
    let output = sandbox.jsrun().args(sandbox.probe().exit(3).words()).run();
    output.code(3);
}

#[test]
fn one_successful_job_exits_zero() {
    let sandbox = Sandbox::new();
    sandbox
        .jsrun()
        .args(sandbox.probe().id("ok").words())
        .run()
        .success();
    assert_eq!(sandbox.log().finished(), ["ok"]);
}

#[test]
fn a_job_killed_by_a_signal_gives_128_plus_the_signal() {
    let sandbox = Sandbox::new();
    for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGSEGV] {
        let output = sandbox
            .jsrun()
            .args(sandbox.probe().signal(signal).words())
            .run();
        output.code(128 + signal);
    }
}

#[test]
fn several_jobs_give_the_status_of_the_first_failure() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("{}").exit_value();
    let output = sandbox
        .jsrun()
        .arg("-j1")
        .args(probe.words())
        .args([":::", "0", "4", "5", "0"])
        .run();
    output.code(4);
    assert_eq!(
        sandbox.log().started(),
        ["0", "4"],
        "no job after a failure"
    );
}

#[test]
fn keep_going_runs_everything_and_reports_the_first_failure() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("{}").exit_value();
    let output = sandbox
        .jsrun()
        .args(["-j1", "-k"])
        .args(probe.words())
        .args([":::", "0", "4", "5", "0"])
        .run();
    output.code(4);
    assert_eq!(sandbox.log().started(), ["0", "0", "4", "5"]);
}

#[test]
fn several_successful_jobs_exit_zero() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("{}");
    sandbox
        .jsrun()
        .arg("-j2")
        .args(probe.words())
        .args([":::", "1", "2", "3"])
        .run()
        .success();
    assert_eq!(sandbox.log().finished(), ["1", "2", "3"]);
}

#[test]
fn bad_usage_exits_125() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().words();
    let cases: Vec<Vec<String>> = vec![
        vec!["--no-such-option".into(), "true".into()],
        vec!["-j".into(), "abc".into(), "true".into()],
        vec!["-jabc".into(), "true".into()],
        vec!["--jobs=-3".into(), "true".into()],
        vec!["--jobserver-style=socket".into(), "true".into()],
        vec!["--output-sync=sometimes".into(), "true".into()],
        [probe.clone(), vec![":::".into()]].concat(),
    ];
    for args in cases {
        let output = sandbox.jsrun().args(&args).run();
        output.code(125);
        assert!(!output.stderr.is_empty(), "no message\n{}", output.report());
    }
    assert_eq!(sandbox.log().text(), "", "nothing may run on bad usage");
}

#[test]
fn help_and_version_exit_zero() {
    let sandbox = Sandbox::new();
    for flag in ["--help", "--version"] {
        let output = sandbox.jsrun().arg(flag).run();
        output.success();
        assert!(!output.stdout.is_empty(), "{}", output.report());
    }
}

#[test]
fn missing_command_exits_127() {
    let sandbox = Sandbox::new();
    let output = sandbox.jsrun().arg("jsrun-test-no-such-command").run();
    output.code(127);
    assert!(!output.stderr.is_empty(), "{}", output.report());
    let output = sandbox
        .jsrun()
        .args(["-j2", "./no-such-file", ":::", "a", "b"])
        .run();
    output.code(127);
}

#[test]
fn non_executable_command_exits_126() {
    let sandbox = Sandbox::new();
    let script = sandbox.write("script", "#!/bin/sh\nexit 0\n");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let output = sandbox.jsrun().arg("./script").run();
    output.code(126);
    assert!(!output.stderr.is_empty(), "{}", output.report());
    let output = sandbox.jsrun().arg(&script).args([":::", "a", "b"]).run();
    output.code(126);
}

#[test]
fn jsrun_terminated_dies_of_sigterm() {
    let sandbox = Sandbox::new();
    let barrier = sandbox.join("barrier");
    let probe = sandbox
        .probe()
        .id("held")
        .barrier_deadline(&barrier, 2, 30_000);
    let mut running = sandbox.jsrun().args(probe.words()).spawn();
    let marker = barrier.join("held");
    running.wait_until("the job to start", || marker.exists());
    running.signal(libc::SIGTERM);
    running.wait().killed_by(libc::SIGTERM);
}

/// With no COMMAND and stdin a terminal, jsrun would wait for command lines
/// nobody types: it prints a hint and exits 125 instead. `script` (util-linux)
/// gives it a terminal.
#[test]
fn no_command_on_a_terminal_prints_a_hint_instead_of_waiting() {
    let sandbox = Sandbox::new();
    let jsrun = crate::util::jsrun_bin();
    let output = sandbox
        .command("script")
        .args([
            "-q",
            "-e",
            "-c",
            &format!("'{}'", jsrun.display()),
            "/dev/null",
        ])
        .run();
    output.code(125);
    assert!(
        output.stdout.contains("stdin is a terminal"),
        "no hint\n{}",
        output.report()
    );
}

/// jsrun's own printing into a pipe nobody reads: the dry run and `--info` end
/// quietly with 141 (what a shell shows for `seq | head -1`), and messages that
/// cannot reach a closed stderr are dropped without a panic (exit 101).
///
/// The pipe's reader is gone before jsrun writes: its read end is closed
/// before jsrun starts (in a shell pipeline such as `jsrun --info | true`,
/// `true` may or may not have exited by the time jsrun writes, and jsrun's
/// status depends on which came first). The dry run also runs into a reader
/// that leaves after the first line (`| head -1`): its output is larger than
/// a pipe holds, so some write always fails.
#[test]
fn closed_stdout_or_stderr_never_panics() {
    let sandbox = Sandbox::new();
    let jsrun = crate::util::path_str(&crate::util::jsrun_bin());
    let cases = [
        // (jsrun's arguments and redirection to fd 5, jsrun's status)
        ("-n echo ::: $(seq 20000) >&5".to_owned(), 141),
        ("--info >&5".to_owned(), 141),
        ("-j2 -v --stats true ::: 1 2 3 2>&5".to_owned(), 0),
        ("--stats true 2>&5".to_owned(), 0),
    ];
    for (args, want) in cases {
        // fd 5: the write end of a fifo whose only reader (fd 4) is closed
        // before jsrun starts, so every write to it fails with EPIPE.
        let script =
            format!("rm -f p; mkfifo p; exec 4<>p 5>p 4<&-; {jsrun} {args}; echo \"status=$?\"");
        let output = sandbox.command("bash").args(["-c", &script]).run();
        output.success().stderr_lacks("panicked");
        assert!(
            output.stdout.contains(&format!("status={want}\n")),
            "{args}: want status {want}\n{}",
            output.report()
        );
    }
}
