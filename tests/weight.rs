//! Heavy jobs (`--weight=K`): every job holds K slots, jsruns that gather
//! sets on one pool never deadlock, and the pool's size is never exceeded.

use std::path::PathBuf;

use crate::util::{Event, Sandbox, make43, make44, shell_words, values};

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
    heavy_recipes(&sandbox);
    let output = sandbox.command(make44()).arg("-j4").run();
    ran_one_at_a_time(&sandbox, &output);
}

/// A Makefile of three recipes `+jsrun --weight=3 -- PROBE` (targets a, b, c).
pub(crate) fn heavy_recipes(sandbox: &Sandbox) {
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
}

/// make ran the [`heavy_recipes`] without a warning, every one, one at a time.
#[track_caller]
pub(crate) fn ran_one_at_a_time(sandbox: &Sandbox, make: &crate::util::Output) {
    make.success().stderr_lacks("warning");
    let log = sandbox.log();
    assert_eq!(log.finished(), ["a", "b", "c"], "{}", log.dump());
    assert_eq!(log.peak(), 1, "{}\n{}", log.dump(), make.report());
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

/// The most slots in use at one instant, the job `heavy` counting `weight`; a job that
/// ends at the very instant another starts does not overlap it.
fn weighted_peak(events: &[Event], heavy: &str, weight: i64) -> i64 {
    let mut edges: Vec<(u128, i64)> = events
        .iter()
        .map(|e| {
            let w = if e.id == heavy { weight } else { 1 };
            (e.nanos, if e.start { w } else { -w })
        })
        .collect();
    // Ends (negative) sort before starts at the same instant.
    edges.sort_unstable();
    let (mut now, mut peak) = (0, 0);
    for (_, delta) in edges {
        now += delta;
        peak = peak.max(now);
    }
    peak
}

/// Runs `make -j4` over `rules` (target, prerequisites, probe options) with
/// `+jsrun -v --weight=3` for target `A`, `runs` times, alternating make 4.4.1
/// (fifo) and make 4.3 (pipe); returns the runs (make, weighted peak, log, output)
/// in which more than 4 slots were in use at once or the heavy job ran with part
/// of its set.
fn heavy_beside_plain(rules: &[(&str, &str, &str)], runs: usize) -> Vec<String> {
    let jsrun = shell_words(&[crate::util::path_str(&crate::util::jsrun_bin())]);
    let mut bad = Vec::new();
    for run in 0..runs {
        let sandbox = Sandbox::new();
        let targets: Vec<&str> = rules.iter().map(|r| r.0).collect();
        let mut text = format!(".PHONY: all {0}\nall: {0}\n", targets.join(" "));
        for (target, after, options) in rules {
            let probe = sandbox.probe().id(target);
            let command = match *target {
                "A" => format!("+{jsrun} -v --weight=3 -- {} {options}", probe.shell()),
                _ => format!("{} {options}", probe.shell()),
            };
            text.push_str(&format!("{target}: {after}\n\t{command}\n"));
        }
        sandbox.write("Makefile", text);
        let make: PathBuf = if run % 2 == 0 { make44() } else { make43() };
        let output = sandbox.command(&make).arg("-j4").run();
        output.success().stderr_lacks("warning");
        let log = sandbox.log();
        let mut want: Vec<String> = targets.iter().map(|t| (*t).to_owned()).collect();
        want.sort();
        assert_eq!(log.finished(), want, "{}\n{}", log.dump(), output.report());
        let peak = weighted_peak(&log.events(), "A", 3);
        if peak > 4 || output.stderr.contains("no slot came back") {
            bad.push(format!(
                "run {run} ({}): weighted peak {peak}\n{}\n{}",
                make.display(),
                log.dump(),
                output.report()
            ));
        }
    }
    bad
}

/// `make -j4` with `+jsrun --weight=3` for A (2 s) beside five plain 1-second jobs,
/// 20 times (make 4.4.1 and make 4.3 in turn). make starts A, p1, p2, p3; A's jsrun
/// holds make's slot and may take one token before make reads its third, then p3
/// waits. When p1 and p2 end make gives their tokens back and reads them again at once
/// for p3 and p4: tokens do come back, jsrun just loses the race for them. Measured by
/// the jobs' own timestamps, A counting 3: never more than 4 slots at once, and A
/// always runs with its whole set (jsrun once took 2 s of lost races for a deadlock
/// and ran A with 2 slots beside p3 and p4).
#[test]
fn a_heavy_recipe_beside_five_plain_jobs_never_exceeds_the_pool() {
    let one_second = "--sleep-ms 1000";
    let rules = [
        ("A", "", "--sleep-ms 2000"),
        ("p1", "", one_second),
        ("p2", "", one_second),
        ("p3", "", one_second),
        ("p4", "", one_second),
        ("p5", "", one_second),
    ];
    let bad = heavy_beside_plain(&rules, 20);
    assert!(
        bad.is_empty(),
        "{} of 20 runs:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The race made sharper: A's jsrun takes the one free token at once (q and p1 hold
/// the rest), then waits for its third slot while p1 (1.2 s) gives its token back and
/// make reads it again at once for p2. Losing that one race must not look like a
/// deadlock: A waits for p2 (or q) to end rather than run beside p2 after 2 s.
#[test]
fn a_heavy_recipe_that_loses_one_race_waits_for_its_whole_set() {
    let rules = [
        ("A", "", "--sleep-ms 1000"),
        ("q", "", "--sleep-ms 3000"),
        ("p1", "", "--sleep-ms 1200"),
        ("p2", "p1", "--sleep-ms 1200"),
    ];
    let bad = heavy_beside_plain(&rules, 10);
    assert!(
        bad.is_empty(),
        "{} of 10 runs:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
