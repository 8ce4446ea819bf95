//! jsrun as a client of a real GNU make: make 4.4.1 (fifo and pipe) and
//! make 4.3 (pipe), recipes with and without `+`.

use std::path::Path;

use crate::util::{Sandbox, make43, make44, shell_words, values};

/// A Makefile with one rule per (target, recipe); `all` depends on them all.
fn makefile(sandbox: &Sandbox, rules: &[(&str, String)]) {
    let targets: Vec<&str> = rules.iter().map(|(target, _)| *target).collect();
    let mut text = format!(".PHONY: all {0}\nall: {0}\n", targets.join(" "));
    for (target, recipe) in rules {
        text.push_str(&format!("{target}:\n\t{recipe}\n"));
    }
    sandbox.write("Makefile", text);
}

/// `[+]jsrun ARGS PROBE ::: 1..n` as a recipe line.
fn jsrun_recipe(plus: bool, jsrun_args: &[&str], probe: &str, n: usize) -> String {
    format!(
        "{}{} {} {probe} ::: {}",
        if plus { "+" } else { "" },
        shell_words(&[crate::util::path_str(&crate::util::jsrun_bin())]),
        shell_words(jsrun_args),
        values(n).join(" ")
    )
}

/// Under `make -j4`, a `+jsrun -j4` recipe with 8 jobs that wait for each
/// other in fours runs exactly 4 at once (make's slot for the recipe plus
/// the 3 tokens of the pool), and make finds every token back.
fn four_at_once_under(make: &Path, make_args: &[&str]) {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 4)
        .sleep_ms(300);
    makefile(
        &sandbox,
        &[("run", jsrun_recipe(true, &["-j4"], &probe.shell(), 8))],
    );
    let output = sandbox.command(make).args(make_args).arg("-j4").run();
    output.success().stderr_lacks("jobserver");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
}

#[test]
fn make44_fifo_recipe_runs_four_jobs_at_once() {
    four_at_once_under(&make44(), &[]);
}

#[test]
fn make44_pipe_recipe_runs_four_jobs_at_once() {
    four_at_once_under(&make44(), &["--jobserver-style=pipe"]);
}

#[test]
fn make43_pipe_recipe_runs_four_jobs_at_once() {
    four_at_once_under(&make43(), &[]);
}

/// Two `+jsrun -j4` recipes side by side under `make -j4` share the 4 slots:
/// together they reach 4 and never more.
fn two_recipes_share_four_slots_under(make: &Path, make_args: &[&str]) {
    let sandbox = Sandbox::new();
    let barrier = sandbox.join("barrier");
    let recipe = |name: &str| {
        let probe = sandbox
            .probe()
            .id(format!("{name}{{}}"))
            .barrier(&barrier, 4)
            .sleep_ms(300);
        jsrun_recipe(true, &["-j4"], &probe.shell(), 8)
    };
    makefile(&sandbox, &[("a", recipe("a")), ("b", recipe("b"))]);
    let output = sandbox.command(make).args(make_args).arg("-j4").run();
    output.success().stderr_lacks("jobserver");
    let log = sandbox.log();
    assert_eq!(log.finished().len(), 16, "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
}

#[test]
fn make44_fifo_two_recipes_share_four_slots() {
    two_recipes_share_four_slots_under(&make44(), &[]);
}

#[test]
fn make44_pipe_two_recipes_share_four_slots() {
    two_recipes_share_four_slots_under(&make44(), &["--jobserver-style=pipe"]);
}

#[test]
fn make43_two_recipes_share_four_slots() {
    two_recipes_share_four_slots_under(&make43(), &[]);
}

/// make 4.4.1's fifo reaches every recipe, `+` or not (no fds to inherit).
#[test]
fn make44_fifo_reaches_a_recipe_without_plus() {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 4)
        .sleep_ms(300);
    makefile(
        &sandbox,
        &[("run", jsrun_recipe(false, &[], &probe.shell(), 8))],
    );
    let output = sandbox.command(make44()).arg("-j4").run();
    output.success().stderr_lacks("jobserver");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
}

/// A pipe jobserver that does not reach the recipe (make 4.3 closes the
/// fds; make 4.4.1 adds `--jobserver-auth=-2,-2`): jsrun warns, runs one
/// job at a time and finishes, also when it is given `-jN` (make's rule for
/// a sub-make that lost its jobserver: a pool of its own would multiply the
/// parent's -j).
fn unavailable_without_plus(make: &Path, make_args: &[&str], jsrun_args: &[&str]) {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("{}").sleep_ms(150);
    makefile(
        &sandbox,
        &[("run", jsrun_recipe(false, jsrun_args, &probe.shell(), 4))],
    );
    let output = sandbox.command(make).args(make_args).arg("-j4").run();
    output.success().stderr_contains("jobserver unavailable");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(4), "{}", log.dump());
    assert_eq!(log.peak(), 1, "{}\n{}", log.dump(), output.report());
}

#[test]
fn make43_recipe_without_plus_warns_and_runs_serially() {
    unavailable_without_plus(&make43(), &[], &[]);
    unavailable_without_plus(&make43(), &[], &["-j4"]);
}

#[test]
fn make44_pipe_recipe_without_plus_warns_and_runs_serially() {
    unavailable_without_plus(&make44(), &["--jobserver-style=pipe"], &[]);
    unavailable_without_plus(&make44(), &["--jobserver-style=pipe"], &["-j4"]);
}

/// `make -n` still runs `+` recipes; jsrun sees `n` in MAKEFLAGS and only
/// prints what it would run.
#[test]
fn make_dry_run_reaches_jsrun() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("job-{}");
    makefile(
        &sandbox,
        &[("run", jsrun_recipe(true, &[], &probe.shell(), 2))],
    );
    let output = sandbox.command(make44()).args(["-n", "-j2"]).run();
    output.success();
    assert!(
        output.stdout.contains("job-1") && output.stdout.contains("job-2"),
        "jsrun should print the commands\n{}",
        output.report()
    );
    assert_eq!(sandbox.log().text(), "", "nothing may run under make -n");
}

/// A sub-make started by jsrun (a client under the outer make) joins the
/// same pool: outer make -j4, `+jsrun` runs two sub-makes of 4 jobs each,
/// all 8 jobs wait in fours: never more than 4 at once.
#[test]
fn sub_makes_under_jsrun_share_the_outer_pool() {
    let sandbox = Sandbox::new();
    let barrier = sandbox.join("barrier");
    let mut inner = String::from(".PHONY: all j1 j2 j3 j4\nall: j1 j2 j3 j4\n");
    for n in 1..=4 {
        let probe = sandbox
            .probe()
            .id(format!("$(PART){n}"))
            .barrier(&barrier, 4)
            .sleep_ms(300);
        inner.push_str(&format!("j{n}:\n\t{}\n", probe.shell()));
    }
    sandbox.write("inner.mk", inner);
    let make = crate::util::path_str(&make44());
    let recipe = format!(
        "+{} {make} -f inner.mk PART={{}} ::: a b",
        shell_words(&[crate::util::path_str(&crate::util::jsrun_bin())])
    );
    makefile(&sandbox, &[("run", recipe)]);
    let output = sandbox.command(make44()).arg("-j4").run();
    output.success().stderr_lacks("jobserver");
    let log = sandbox.log();
    assert_eq!(log.finished().len(), 8, "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
}

/// make 4.3 closes fds 3 and 4 in a recipe without `+`. jsrun checks them
/// before it opens anything of its own (here the `::::` value file), so the
/// warning names the closed fd instead of a file that took its number.
#[test]
fn make43_closed_fds_are_named_even_with_a_value_file() {
    let sandbox = Sandbox::new();
    let values_file = sandbox.write("values.txt", "1\n2\n");
    let probe = sandbox.probe().id("{}");
    let recipe = format!(
        "{} {} :::: {}",
        shell_words(&[crate::util::path_str(&crate::util::jsrun_bin())]),
        probe.shell(),
        crate::util::path_str(&values_file)
    );
    makefile(&sandbox, &[("run", recipe)]);
    let output = sandbox.command(make43()).arg("-j4").run();
    output.success().stderr_contains("fd 3 is closed");
    assert_eq!(sandbox.log().finished().len(), 2);
}
