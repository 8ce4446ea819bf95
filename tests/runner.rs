//! The parallel runner: replacement strings, value sources, output options.

use std::collections::BTreeMap;

use crate::util::{Sandbox, values};

#[test]
fn replacement_strings() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args([
            "-j1", "echo", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}",
        ])
        .args([":::", "dir.d/sub/file.tar.gz", "/abs/dir.d/noext"])
        .run();
    output.success();
    assert_eq!(
        output.stdout,
        "dir.d/sub/file.tar.gz dir.d/sub/file.tar file.tar.gz dir.d/sub file.tar 1 1\n\
         /abs/dir.d/noext /abs/dir.d/noext noext /abs/dir.d noext 2 1\n",
        "{}",
        output.report()
    );
}

#[test]
fn replacement_strings_inside_arguments() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args(["-j1", "echo", "--in={}", "out/{/.}.o", "#{#}"])
        .args([":::", "src/a.c", "src/b.c"])
        .run();
    output.success();
    assert_eq!(
        output.stdout,
        "--in=src/a.c out/a.o #1\n--in=src/b.c out/b.o #2\n",
        "{}",
        output.report()
    );
}

#[test]
fn a_value_that_looks_like_a_replacement_string_is_not_expanded_again() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args(["-j1", "echo", "<{}>", ":::", "{}", "{#}"])
        .run();
    output.success();
    assert_eq!(output.stdout, "<{}>\n<{#}>\n", "{}", output.report());
}

#[test]
fn value_is_appended_without_a_replacement_string() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args(["-j1", "echo", "hello", ":::", "a b", "c"])
        .run();
    output.success();
    assert_eq!(output.stdout, "hello a b\nhello c\n", "{}", output.report());
}

#[test]
fn argv_form_runs_without_a_shell() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args(["-j1", "echo", "$HOME", "*", ":::", "`x`", "a;b"])
        .run();
    output.success();
    assert_eq!(
        output.stdout,
        "$HOME * `x`\n$HOME * a;b\n",
        "{}",
        output.report()
    );
}

#[test]
fn values_from_a_file() {
    let sandbox = Sandbox::new();
    sandbox.write("values.txt", "one\ntwo words\nthree\n");
    let output = sandbox
        .jsrun()
        .args(["-j1", "echo", "v:{}", "::::", "values.txt"])
        .run();
    output.success();
    assert_eq!(
        output.stdout,
        "v:one\nv:two words\nv:three\n",
        "{}",
        output.report()
    );
}

#[test]
fn values_from_stdin() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args(["-j1", "echo", "v:{}", "::::", "-"])
        .stdin("alpha\nbeta\n")
        .run();
    output.success();
    assert_eq!(output.stdout, "v:alpha\nv:beta\n", "{}", output.report());
}

#[test]
fn commands_from_stdin_run_through_the_shell() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .arg("-j1")
        .stdin("echo one\necho two | tr a-z A-Z\nx=3; echo $x\n")
        .run();
    output.success();
    assert_eq!(output.stdout, "one\nTWO\n3\n", "{}", output.report());
}

#[test]
fn commands_from_stdin_run_in_parallel() {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .barrier(&sandbox.join("barrier"), 3)
        .sleep_ms(200);
    let lines: String = values(6)
        .iter()
        .map(|id| format!("{} --id {id}\n", probe.shell()))
        .collect();
    let output = sandbox.jsrun().arg("-j3").stdin(lines).run();
    output.success();
    let log = sandbox.log();
    assert_eq!(log.finished(), values(6), "{}", log.dump());
    assert_eq!(log.peak(), 3, "{}\n{}", log.dump(), output.report());
}

#[test]
fn a_failing_stdin_command_sets_the_status() {
    let sandbox = Sandbox::new();
    let output = sandbox.jsrun().arg("-j1").stdin("true\nexit 6\n").run();
    output.code(6);
}

/// `{%}` is a slot number in 1..N, and no two running jobs share one;
/// `{#}` numbers the jobs 1, 2, 3, … once each.
#[test]
fn slot_and_sequence_numbers() {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .id("{%}:{#}")
        .barrier(&sandbox.join("barrier"), 3)
        .sleep_ms(100);
    let output = sandbox
        .jsrun()
        .arg("-j3")
        .args(probe.words())
        .arg(":::")
        .args(values(9))
        .run();
    output.success();
    let log = sandbox.log();
    assert_eq!(log.peak(), 3, "{}", log.dump());
    let mut sequence = Vec::new();
    let mut per_slot: BTreeMap<u32, Vec<crate::util::Event>> = BTreeMap::new();
    for event in log.events() {
        let (slot, seq) = event.id.split_once(':').expect("slot:seq");
        let slot: u32 = slot.parse().expect("numeric slot");
        assert!(
            (1..=3).contains(&slot),
            "slot {slot} outside 1..3\n{}",
            log.dump()
        );
        if event.start {
            sequence.push(seq.parse::<u32>().expect("numeric sequence"));
        }
        per_slot.entry(slot).or_default().push(event);
    }
    sequence.sort_unstable();
    assert_eq!(sequence, (1..=9).collect::<Vec<_>>(), "{}", log.dump());
    for (slot, events) in per_slot {
        assert!(
            crate::util::peak_of(&events) <= 1,
            "two jobs ran in slot {slot} at once\n{}",
            log.dump()
        );
    }
}

/// A lone job runs in the implicit slot, `{%}` = 1.
#[test]
fn single_job_runs_in_slot_one() {
    let sandbox = Sandbox::new();
    let output = sandbox.jsrun().args(["echo", "{%}"]).run();
    output.success();
    assert_eq!(output.stdout, "1\n", "{}", output.report());
}

#[test]
fn dry_run_prints_and_runs_nothing() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("job-{}");
    let output = sandbox
        .jsrun()
        .args(["-n", "-j2"])
        .args(probe.words())
        .args([":::", "1", "2"])
        .run();
    output.success();
    assert!(output.stdout.contains("job-1"), "{}", output.report());
    assert!(output.stdout.contains("job-2"), "{}", output.report());
    assert_eq!(sandbox.log().text(), "", "nothing may run");
}

#[test]
fn n_in_makeflags_means_dry_run() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("job-{}");
    let output = sandbox
        .jsrun()
        .env("MAKEFLAGS", "n")
        .arg("-j2")
        .args(probe.words())
        .args([":::", "1", "2"])
        .run();
    output.success();
    assert!(output.stdout.contains("job-1"), "{}", output.report());
    assert_eq!(sandbox.log().text(), "", "nothing may run");
}

#[test]
fn verbose_prints_each_command_to_stderr() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args(["-v", "-j1", "echo", "word-{}", ":::", "x", "y"])
        .run();
    output.success();
    assert_eq!(output.stdout, "word-x\nword-y\n");
    output.stderr_contains("word-x").stderr_contains("word-y");
}

#[test]
fn tag_prefixes_every_line_with_the_value() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args([
            "--tag",
            "-j2",
            "sh",
            "-c",
            "echo one; echo two",
            "sh",
            ":::",
        ])
        .args(["alpha", "beta"])
        .run();
    output.success();
    let lines = output.sorted_lines();
    assert_eq!(lines.len(), 4, "{}", output.report());
    for line in &lines {
        let tagged = ["alpha", "beta"]
            .iter()
            .any(|value| line.starts_with(value));
        let body = line.ends_with("one") || line.ends_with("two");
        assert!(tagged && body, "line {line:?}\n{}", output.report());
    }
}

/// `-O` (job): each job's output comes out whole, even when the jobs print
/// at the same time.
#[test]
fn output_sync_keeps_each_job_together() {
    let sandbox = Sandbox::new();
    let barrier = crate::util::path_str(&sandbox.join("barrier"));
    let script = format!(
        "echo $1-1; {} --id $1 --barrier {barrier} --want 3 --deadline-ms 10000; echo $1-2",
        crate::util::shell_words(&[crate::util::path_str(&crate::util::probe_bin())])
    );
    let output = sandbox
        .jsrun()
        .args(["-O", "-j3", "sh", "-c", &script, "sh", ":::", "a", "b", "c"])
        .run();
    output.success();
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", output.report());
    for pair in lines.chunks(2) {
        let job = pair[0].strip_suffix("-1").expect("first line of a job");
        assert_eq!(pair[1], format!("{job}-2"), "{}", output.report());
    }
}

#[test]
fn joblog_has_a_header_and_one_row_per_job() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args([
            "-k", "-j2", "--joblog", "jobs.tsv", "sh", "-c", "exit $1", "sh",
        ])
        .args([":::", "0", "3"])
        .run();
    output.code(3);
    let joblog = std::fs::read_to_string(sandbox.join("jobs.tsv")).expect("joblog");
    let mut lines = joblog.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    assert_eq!(
        header,
        [
            "Seq",
            "Slot",
            "Starttime",
            "JobRuntime",
            "Exitval",
            "Signal",
            "Command"
        ]
    );
    let mut rows: Vec<Vec<String>> = lines
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect();
    rows.sort();
    assert_eq!(rows.len(), 2, "{joblog}");
    assert_eq!(rows[0][0], "1", "{joblog}");
    assert_eq!(rows[0][4], "0", "{joblog}");
    assert_eq!(rows[1][0], "2", "{joblog}");
    assert_eq!(rows[1][4], "3", "{joblog}");
    assert!(rows.iter().all(|row| row[5] == "0"), "{joblog}");
}

/// Values from stdin are streamed: the first job starts while stdin is still
/// open, before the rest of the list exists.
#[test]
fn values_from_stdin_are_streamed() {
    use std::io::Write;
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("{}");
    let mut running = sandbox
        .jsrun()
        .arg("-j2")
        .args(probe.words())
        .args(["::::", "-"])
        .stdin_pipe()
        .spawn();
    let mut stdin = running.take_stdin();
    let log = sandbox.log();
    stdin.write_all(b"first\n").unwrap();
    running.wait_until("job 'first' to run while stdin is open", || {
        log.finished() == ["first"]
    });
    stdin.write_all(b"second\n").unwrap();
    running.wait_until("job 'second' to run while stdin is open", || {
        log.finished().len() == 2
    });
    drop(stdin);
    running.wait().success();
    assert_eq!(log.finished(), ["first", "second"]);
}

/// Command lines from stdin are streamed the same way.
#[test]
fn commands_from_stdin_are_streamed() {
    use std::io::Write;
    let sandbox = Sandbox::new();
    let probe = sandbox.probe();
    let mut running = sandbox.jsrun().arg("-j2").stdin_pipe().spawn();
    let mut stdin = running.take_stdin();
    let log = sandbox.log();
    writeln!(stdin, "{} --id one", probe.shell()).unwrap();
    running.wait_until("the first command to run while stdin is open", || {
        log.finished() == ["one"]
    });
    drop(stdin);
    running.wait().success();
}

/// `-l`: while the load average is at or above LOAD, no further job starts
/// (one always may). The load figure comes from the loadavg file of
/// `JSRUN_PROC_DIR`, which the test writes: 5.00 against a limit of 2, so the
/// limit holds for the whole run whatever else the machine is doing.
#[test]
fn load_limit_runs_one_job_at_a_time() {
    let sandbox = Sandbox::new();
    sandbox.write("loadavg", "5.00 5.00 5.00 1/123 4567\n");
    let probe = sandbox.probe().id("{}").sleep_ms(150);
    let output = sandbox
        .jsrun()
        .env("JSRUN_PROC_DIR", sandbox.path())
        .args(["-j3", "-l", "2"])
        .args(probe.words())
        .arg(":::")
        .args(values(4))
        .run();
    output.success();
    let log = sandbox.log();
    assert_eq!(log.finished(), values(4), "{}", log.dump());
    assert_eq!(log.peak(), 1, "{}", log.dump());
}

#[test]
fn a_high_load_limit_does_not_hold_jobs_back() {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 3)
        .sleep_ms(100);
    let output = sandbox
        .jsrun()
        .args(["-j3", "--load-average=1000"])
        .args(probe.words())
        .arg(":::")
        .args(values(6))
        .run();
    output.success();
    assert_eq!(sandbox.log().peak(), 3, "{}", sandbox.log().dump());
}

/// Bare `-j` and `-j0` mean one slot per CPU.
#[test]
fn bare_jobs_means_one_slot_per_cpu() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    for jobs in [&["-j0"][..], &["-j", "--"]] {
        let sandbox = Sandbox::new();
        let probe = sandbox
            .probe()
            .id("{}")
            .barrier(&sandbox.join("barrier"), cpus)
            .sleep_ms(200);
        let output = sandbox
            .jsrun()
            .args(jobs)
            .args(probe.words())
            .arg(":::")
            .args(values(2 * cpus + 1))
            .run();
        output.success();
        let log = sandbox.log();
        assert_eq!(log.peak(), cpus, "{jobs:?}\n{}", log.dump());
    }
}

/// `--output-sync=line`: two jobs that each print half a line, meet, then
/// finish the line: every line comes out whole.
fn lines_stay_whole(sync: &str) {
    let sandbox = Sandbox::new();
    let barrier = crate::util::path_str(&sandbox.join("barrier"));
    let script = format!(
        "printf x$1; {} --id $1 --barrier {barrier} --want 2 --deadline-ms 10000; echo y",
        crate::util::shell_words(&[crate::util::path_str(&crate::util::probe_bin())])
    );
    let output = sandbox
        .jsrun()
        .args([sync, "-j2", "sh", "-c", &script, "sh", ":::", "1", "2"])
        .run();
    output.success();
    assert_eq!(output.sorted_lines(), ["x1y", "x2y"], "{}", output.report());
}

#[test]
fn output_sync_line_keeps_lines_whole() {
    lines_stay_whole("--output-sync=line");
}

/// The short form with the type attached, as make writes it (`-Oline`).
#[test]
fn short_output_sync_takes_an_attached_type() {
    lines_stay_whole("-Oline");
}
