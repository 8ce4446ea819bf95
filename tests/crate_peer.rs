//! jsrun as a client of the `jobserver` crate's server (a pipe of `|`
//! tokens advertised in MAKEFLAGS, MFLAGS and CARGO_MAKEFLAGS), as cargo
//! hands it to build scripts.

use crate::util::{Sandbox, values};

/// `crate_server 3 -- COMMAND`: the jobs reach 3 at once (barrier of 3),
/// never more, and the server gets its 2 tokens back.
#[track_caller]
fn three_at_once_with_tokens_back(sandbox: &Sandbox, command: Vec<String>) {
    let output = sandbox
        .command(crate::util::example("crate_server"))
        .args(["3", "--"])
        .args(command)
        .run();
    output.success().stderr_lacks("warning");
    let log = sandbox.log();
    assert_eq!(
        log.finished(),
        values(6),
        "{}\n{}",
        log.dump(),
        output.report()
    );
    assert_eq!(log.peak(), 3, "{}\n{}", log.dump(), output.report());
    output.stderr_contains("tokens-left 2\n");
}

#[test]
fn jsrun_runs_three_jobs_under_the_crate_server() {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 3)
        .sleep_ms(300);
    let command = [
        vec![crate::util::path_str(&crate::util::jsrun_bin())],
        probe.words(),
    ]
    .concat()
    .into_iter()
    .chain([":::".to_owned()])
    .chain(values(6))
    .collect();
    three_at_once_with_tokens_back(&sandbox, command);
}

/// The pool passes through jsrun to a sub-make: jsrun hands MAKEFLAGS and
/// the inherited fds on unchanged.
#[test]
fn make_under_jsrun_under_the_crate_server_shares_the_pool() {
    let sandbox = Sandbox::new();
    let ids = values(6);
    let mut makefile = format!(".PHONY: all {0}\nall: {0}\n", ids.join(" "));
    for id in &ids {
        let probe = sandbox
            .probe()
            .id(id)
            .barrier(&sandbox.join("barrier"), 3)
            .sleep_ms(300);
        makefile.push_str(&format!("{id}:\n\t{}\n", probe.shell()));
    }
    sandbox.write("Makefile", makefile);
    let command = vec![
        crate::util::path_str(&crate::util::jsrun_bin()),
        crate::util::path_str(&crate::util::make44()),
    ];
    three_at_once_with_tokens_back(&sandbox, command);
}
