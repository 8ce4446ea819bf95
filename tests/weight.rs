//! Heavy jobs (`--weight=K`): every job holds K slots, jsruns that gather
//! sets on one pool never deadlock, and the pool's size is never exceeded.

use crate::util::{Sandbox, make44, shell_words, values};

/// In a pool of its own with 4 slots, jobs of weight 2 run two at a time:
/// two meet at a barrier (so two do run at once) and never a third.
#[test]
fn a_pool_of_four_runs_two_jobs_of_weight_two() {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 2)
        .sleep_ms(100);
    let output = sandbox
        .jsrun()
        .args(["-j4", "--weight=2", "--stats"])
        .args(probe.words())
        .arg(":::")
        .args(values(6))
        .run();
    output.success().stderr_lacks("warning");
    let log = sandbox.log();
    assert_eq!(log.finished().len(), 6, "{}", log.dump());
    assert_eq!(log.peak(), 2, "{}\n{}", log.dump(), output.report());
    assert!(
        output.stderr.contains("peak 4 in use"),
        "the pool line: two jobs of two slots\n{}",
        output.report()
    );
}

/// Three `+jsrun --weight=3` recipes under `make -j4`: each holds one of
/// make's slots and waits for two more, which only one of them can get. No
/// deadlock: every recipe runs, one heavy job at a time, and make finds
/// every token back.
#[test]
fn three_heavy_recipes_under_make_j4_all_run_one_at_a_time() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("$@").sleep_ms(300);
    let jsrun = shell_words(&[crate::util::path_str(&crate::util::jsrun_bin())]);
    let mut text = String::from(".PHONY: all a b c\nall: a b c\n");
    for target in ["a", "b", "c"] {
        text.push_str(&format!(
            "{target}:\n\t+{jsrun} --weight=3 -- {}\n",
            probe.shell()
        ));
    }
    sandbox.write("Makefile", text);
    let output = sandbox.command(make44()).arg("-j4").run();
    output.success().stderr_lacks("warning");
    let log = sandbox.log();
    assert_eq!(log.finished(), ["a", "b", "c"], "{}", log.dump());
    assert_eq!(log.peak(), 1, "{}\n{}", log.dump(), output.report());
}

/// A weight beyond the pool is capped with a warning, and the job runs.
#[test]
fn a_weight_beyond_the_pool_is_capped() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args(["-j2", "--weight=5"])
        .args(sandbox.probe().id("x").words())
        .run();
    output
        .success()
        .stderr_contains("--weight=5 is more than the pool's 2 slots");
    assert_eq!(sandbox.log().finished(), ["x"]);
}
