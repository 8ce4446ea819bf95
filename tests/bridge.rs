//! The bridge: a client that speaks only fifo (examples/fifo_client.rs, standing in for
//! upstream ninja and Portage) under a pipe pool (make 4.3, a pipe the test owns): jsrun
//! gives it a private fifo that draws from the outer pipe and returns every token to it.

use std::fs;
use std::path::PathBuf;

use crate::util::{PipeJobserver, Sandbox, example, make43, shell_words, sorted, values};

/// The stand-in's command line for `jobs` probe jobs that meet at a barrier of
/// `want` and sleep a little.
fn fifo_client(sandbox: &Sandbox, jobs: usize, want: usize) -> Vec<String> {
    // `%n`: the stand-in's job number (`{}` would be jsrun's own).
    let probe = sandbox
        .probe()
        .id("%n")
        .barrier(&sandbox.join("barrier"), want)
        .sleep_ms(100);
    let mut words = vec![
        crate::util::path_str(&example("fifo_client")),
        "--jobs".into(),
        jobs.to_string(),
        "--".into(),
    ];
    words.extend(probe.words());
    words
}

/// make 4.3 -j4 runs `+jsrun --jobserver-style=fifo -- fifo_client`: the
/// client's 8 jobs run 4 at once (its implicit slot, which is jsrun's, which
/// is make's, and the 3 tokens through the bridge), never more, and make finds
/// every token back at its exit.
#[test]
fn a_fifo_only_client_under_make43_gets_the_whole_pool_and_no_more() {
    let sandbox = Sandbox::new();
    let client = shell_words(&fifo_client(&sandbox, 8, 4));
    let jsrun = shell_words(&[crate::util::path_str(&crate::util::jsrun_bin())]);
    sandbox.write(
        "Makefile",
        format!(".PHONY: all\nall:\n\t+{jsrun} -v --jobserver-style=fifo -- {client}\n"),
    );
    let output = sandbox.command(make43()).arg("-j4").run();
    output
        .success()
        .stderr_contains("bridging the pipe jobserver")
        .stderr_lacks("not supported")
        .stderr_lacks("INTERNAL");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
}

/// A command named like a fifo-only tool (here the stand-in under the name
/// `ninja`) is bridged by default. Under a pipe the test owns, with distinct
/// bytes: 4 at once, and exactly those bytes back.
#[test]
fn a_command_named_ninja_is_bridged_by_default_and_the_pipe_gets_its_bytes_back() {
    let sandbox = Sandbox::new();
    let bin = sandbox.join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(example("fifo_client"), bin.join("ninja")).unwrap();
    let mut words = fifo_client(&sandbox, 6, 4);
    words[0] = "ninja".into();
    let pool = PipeJobserver::new(b"xyz");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let output = sandbox
        .jsrun()
        .pipe_jobserver(&pool)
        .env("PATH", path)
        .arg("--")
        .args(&words)
        .run();
    output.success().stderr_lacks("not supported");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(6), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
    assert_eq!(sorted(&pool.drain()), b"xyz");
}

/// make 4.3 -j4 runs `+jsrun -v -- nice ninja` (the stand-in named `ninja`,
/// behind `nice`): bridged without being told, `-v` names the word that
/// decided, and the client's 8 jobs run 4 at once.
#[test]
fn a_fifo_only_client_behind_nice_under_make43_is_bridged_by_default() {
    let sandbox = Sandbox::new();
    let bin = sandbox.join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(example("fifo_client"), bin.join("ninja")).unwrap();
    let mut words = fifo_client(&sandbox, 8, 4);
    words[0] = "ninja".into();
    let client = shell_words(&words);
    let jsrun = shell_words(&[crate::util::path_str(&crate::util::jsrun_bin())]);
    sandbox.write(
        "Makefile",
        format!(".PHONY: all\nall:\n\t+{jsrun} -v -- nice {client}\n"),
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let output = sandbox.command(make43()).env("PATH", path).arg("-j4").run();
    output
        .success()
        .stderr_contains("bridging the pipe jobserver")
        .stderr_contains("'ninja' (word 2 of the command) speaks only fifo")
        .stderr_lacks("not supported")
        .stderr_lacks("INTERNAL");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
}

/// SIGTERM while the client's jobs hold bridged tokens: jsrun passes it on,
/// dies of it, and every byte is back in the outer pipe; the bridge's fifo and
/// its directory are gone.
#[test]
fn sigterm_mid_run_gives_every_bridged_token_back() {
    let sandbox = Sandbox::new();
    let tmp = sandbox.join("tmp");
    fs::create_dir(&tmp).unwrap();
    let words = fifo_client(&sandbox, 4, 5);
    let pool = PipeJobserver::new(b"xyz");
    let mut running = sandbox
        .jsrun()
        .pipe_jobserver(&pool)
        .env("TMPDIR", &tmp)
        .args(["--jobserver-style=fifo", "--"])
        .args(&words)
        .spawn();
    let barrier: PathBuf = sandbox.join("barrier");
    running.wait_until("4 jobs to run", || crate::util::entries(&barrier) == 4);
    running.signal(libc::SIGTERM);
    running.wait().killed_by(libc::SIGTERM);
    assert_eq!(sorted(&pool.drain()), b"xyz");
    assert_eq!(
        crate::util::entries(&tmp),
        0,
        "the bridge's fifo directory is gone"
    );
}

/// The jobserver crate's pipe server above jsrun (as cargo hands its pool to
/// build scripts): the fifo-only client under the bridge reaches the server's
/// 3 slots, never more, and the server gets its 2 tokens back.
#[test]
fn under_the_jobserver_crate_s_pipe_server() {
    let sandbox = Sandbox::new();
    let mut command = vec![
        crate::util::path_str(&crate::util::jsrun_bin()),
        "--jobserver-style=fifo".into(),
        "--".into(),
    ];
    command.extend(fifo_client(&sandbox, 6, 3));
    let output = sandbox
        .command(example("crate_server"))
        .args(["3", "--"])
        .args(command)
        .run();
    output.success().stderr_lacks("not supported");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(6), "{}", log.dump());
    assert_eq!(log.peak(), 3, "{}\n{}", log.dump(), output.report());
    output.stderr_contains("tokens-left 2\n");
}
