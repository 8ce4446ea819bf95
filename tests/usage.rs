//! The command line as people type it: make's spellings of `-O` in every
//! position, one-line usage errors that name the fix (exit 125, nothing run),
//! and the man page's sections.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::Sandbox;

// ---------------------------------------------------------------------------
// -Oline wherever jsrun's options are

/// Runs two jobs under `options` (plus `-j2`) that prove line grouping: each
/// prints half a line, meets the other, finishes its line, then waits for
/// the test's `go`. Line mode shows both whole lines while the jobs still
/// run; without grouping the halves mix, and job grouping shows nothing yet.
fn grouped_by_line(sandbox: &Sandbox, options: &[&str]) -> crate::util::Output {
    let probe = crate::util::shell_words(&[crate::util::path_str(&crate::util::probe_bin())]);
    let met = crate::util::path_str(&sandbox.join("met"));
    let go = sandbox.join("go");
    let script = format!(
        "printf x$1; {probe} --id $1 --barrier {met} --want 2 --deadline-ms 10000; echo y; \
         {probe} --id $1 --barrier {} --want 3 --deadline-ms 30000",
        crate::util::path_str(&go)
    );
    let mut running = sandbox
        .jsrun()
        .env("JSRUN_PROC_DIR", {
            sandbox.write("loadavg", "0.00 0.00 0.00 1/1 1\n");
            sandbox.path()
        })
        .args(options)
        .args(["-j2", "sh", "-c", &script, "sh", ":::", "1", "2"])
        .spawn();
    let stdout = running.stdout_path();
    running.wait_until("both lines whole while the jobs run", || {
        let text = fs::read_to_string(&stdout).unwrap_or_default();
        text.contains("x1y\n") && text.contains("x2y\n")
    });
    fs::create_dir_all(&go).unwrap();
    fs::write(go.join("test"), "").unwrap();
    let output = running.wait();
    output.success().stderr_lacks("gave up");
    assert_eq!(output.sorted_lines(), ["x1y", "x2y"], "{}", output.report());
    output
}

/// `-Oline` after an option with a separate value was read by clap as
/// `-O -l ine` ("invalid value 'ine' for '--load-average'"); every spelling
/// and position now groups by line, and the other option keeps its value.
#[test]
fn attached_output_sync_works_after_options_with_values() {
    let sandbox = Sandbox::new();
    let joblog = sandbox.str("jobs.tsv");
    let trace = sandbox.str("trace.json");
    let cases: &[&[&str]] = &[
        &["-Oline"],
        &["-O=line"],
        &["--output-sync=line"],
        &["-kOline"],
        &["--joblog", &joblog, "-Oline"],
        &["-j", "2", "-Oline"],
        &["-l", "99", "-Oline"],
        &["-l99", "-Oline"],
        &["--trace", &trace, "-Oline"],
        &["-v", "--joblog", &joblog, "-Oline", "-k"],
    ];
    for options in cases {
        let _ = fs::remove_file(&joblog);
        let _ = fs::remove_dir_all(sandbox.join("met"));
        let _ = fs::remove_dir_all(sandbox.join("go"));
        let output = grouped_by_line(&sandbox, options);
        if options.contains(&joblog.as_str()) {
            let rows = fs::read_to_string(&joblog).unwrap_or_default();
            assert_eq!(
                rows.lines().count(),
                3,
                "{options:?}: header and two rows\n{rows}"
            );
        }
        if options.contains(&trace.as_str()) {
            let text = fs::read_to_string(&trace).unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{options:?}: trace is not JSON: {e}\n{text}"));
            assert!(json["traceEvents"].is_array(), "{options:?}\n{text}");
        }
        if options.contains(&"-v") {
            output.stderr_contains("jsrun: [");
        }
    }
}

/// Nothing after the command is jsrun's: `-Oline` there is the command's.
#[test]
fn words_after_the_command_are_left_alone() {
    let sandbox = Sandbox::new();
    for args in [
        &["-Oline", "echo", "-Oline", "-j", "-l"][..],
        &["-j", "2", "echo", "-Oline"][..],
        &["--", "echo", "-Oline"][..],
    ] {
        let output = sandbox.jsrun().args(args).run();
        output.success();
        let want = args.split(|w| *w == "echo").nth(1).unwrap().join(" ");
        assert_eq!(output.stdout, format!("{want}\n"), "{}", output.report());
    }
}

/// `-O line` with a blank runs the command `line`, as `make -O line` makes
/// the target `line`; when there is none, "command not found" suggests
/// `-Oline`, and only for a word right after a bare -O.
#[test]
fn a_mode_after_a_bare_o_is_the_command() {
    let sandbox = Sandbox::new();
    let bin = sandbox.join("bin");
    fs::create_dir(&bin).unwrap();
    let path = |dir: &Path| format!("{}:/usr/bin:/bin", dir.display());

    // A program named `line` exists: it runs, its output grouped by job.
    let line = bin.join("line");
    fs::write(
        &line,
        "#!/bin/sh\n[ -p /dev/stdout ] && echo \"line ran: $*\"\n",
    )
    .unwrap();
    fs::set_permissions(&line, fs::Permissions::from_mode(0o755)).unwrap();
    let output = sandbox
        .jsrun()
        .env("PATH", path(&bin))
        .args(["-O", "line", "a"])
        .run();
    output.success();
    assert_eq!(output.stdout, "line ran: a\n", "{}", output.report());

    // None exists: 127 and the hint, on one line.
    let empty = sandbox.join("empty");
    fs::create_dir(&empty).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["-O", "line"],
            "jsrun: command not found: line (did you mean -Oline? -O takes its mode attached)\n",
        ),
        (
            &["-j2", "-kO", "job", "x", ":::", "a", "b"],
            "jsrun: command not found: job (did you mean -Ojob? -O takes its mode attached)\n",
        ),
        (
            &["--output-sync", "none"],
            "jsrun: command not found: none (did you mean --output-sync=none? --output-sync \
             takes its mode after '=')\n",
        ),
        (&["-O", "--", "line"], "jsrun: command not found: line\n"),
        (&["-O", "-k", "line"], "jsrun: command not found: line\n"),
        (&["line"], "jsrun: command not found: line\n"),
        (&["-O", "lines"], "jsrun: command not found: lines\n"),
    ];
    for (args, want) in cases {
        let output = sandbox.jsrun().env("PATH", path(&empty)).args(*args).run();
        output.code(127);
        assert_eq!(output.stderr, *want, "{args:?}\n{}", output.report());
    }
}

// ---------------------------------------------------------------------------
// Usage errors: one line, the problem and the fix, 125, nothing run

/// Runs jsrun with `args` before a probe job and checks it refused them with
/// exactly `want`, with status 125, without running the job.
#[track_caller]
fn refused(sandbox: &Sandbox, args: &[&str], want: &str) {
    let output = sandbox
        .jsrun()
        .args(args)
        .args(sandbox.probe().id("job").words())
        .run();
    output.code(125);
    assert_eq!(
        output.stderr,
        format!("{want}\n"),
        "{args:?}\n{}",
        output.report()
    );
    assert_eq!(output.stdout, "", "{args:?}\n{}", output.report());
    assert_eq!(sandbox.log().text(), "", "{args:?}: nothing may run");
}

/// `--joblog` on a file that cannot be written failed with a bare "No space
/// left on device" that named neither the job log nor the fix.
#[test]
fn a_job_log_that_cannot_be_written_is_named() {
    let sandbox = Sandbox::new();
    refused(
        &sandbox,
        &["--joblog", "/dev/full"],
        "jsrun: error: cannot write the job log /dev/full: No space left on device (os error \
         28); give --joblog a file jsrun can write",
    );
    let missing = sandbox.str("no-such-dir/jobs.tsv");
    refused(
        &sandbox,
        &["--joblog", &missing],
        &format!(
            "jsrun: error: cannot create the job log {missing}: No such file or directory (os \
             error 2); give --joblog a file jsrun can write"
        ),
    );
    // The trace's first bytes are written at once too: a full disk is said
    // before any job runs, not as a warning at the end.
    refused(
        &sandbox,
        &["--trace", "/dev/full"],
        "jsrun: error: cannot write the trace file /dev/full: No space left on device (os \
         error 28); give --trace a file jsrun can write",
    );
}

/// clap's messages were several lines, and for `-j -3` its tip ("use '-- -3'")
/// would run `-3` as a command; `-j abc` printed jsrun's tip after clap's
/// "For more information"; `-l abc` said only "invalid float literal".
#[test]
fn bad_option_values_get_one_line_that_names_the_fix() {
    let sandbox = Sandbox::new();
    let jobs = "not a number of job slots; use -jN (e.g. -j4), or -j -- COMMAND for one slot \
                per CPU";
    let load = "not a load average above 0; use -l LOAD (e.g. -l 4 or -l 2.5)";
    let mode = "use -Oline, -Ojob or -Onone (a bare -O means -Ojob)";
    let cases: &[(&[&str], String)] = &[
        (&["-j", "-3"], format!("invalid -j value '-3': {jobs}")),
        (&["-j-3"], format!("invalid -j value '-3': {jobs}")),
        (&["--jobs=-3"], format!("invalid -j value '-3': {jobs}")),
        (&["-j", "abc"], format!("invalid -j value 'abc': {jobs}")),
        (&["-jabc"], format!("invalid -j value 'abc': {jobs}")),
        (&["-l", "abc"], format!("invalid -l value 'abc': {load}")),
        (&["-l", "-1"], format!("invalid -l value '-1': {load}")),
        (
            &["--load-average=0"],
            format!("invalid -l value '0': {load}"),
        ),
        (&["-O=x"], format!("invalid -O mode 'x'; {mode}")),
        (&["-Ox"], format!("invalid -O mode 'x'; {mode}")),
        (&["--output-sync=x"], format!("invalid -O mode 'x'; {mode}")),
        (
            &["--jobserver-style=x"],
            "invalid --jobserver-style 'x'; use --jobserver-style=fifo or \
             --jobserver-style=pipe"
                .into(),
        ),
        (
            &["--jobserver-group=no-such-group-x"],
            "invalid --jobserver-group 'no-such-group-x': no such group; use a group name or \
             number, e.g. --jobserver-group=portage"
                .into(),
        ),
        (
            &["--jobserver=x"],
            "invalid --jobserver 'x': not a jobserver; use --jobserver=fifo:PATH or \
             --jobserver=R,W (two inherited fds)"
                .into(),
        ),
        (
            &["--joblog", "-Oline"],
            "--joblog needs a FILE; use --joblog FILE".into(),
        ),
        (
            &["--keep-going=yes"],
            "--keep-going takes no value, not 'yes'; use --keep-going alone".into(),
        ),
        (
            &["--stat"],
            "unknown option '--stat'; use --stats (see jsrun --help)".into(),
        ),
        (
            &["--bogus"],
            "unknown option '--bogus'; see jsrun --help, and write -- before a COMMAND that \
             starts with '-'"
                .into(),
        ),
    ];
    for (args, want) in cases {
        refused(&sandbox, args, &format!("jsrun: error: {want}"));
    }
    // An option missing its value at the very end.
    for (option, name) in [("--jobserver-group", "GROUP"), ("--joblog", "FILE")] {
        let output = sandbox.jsrun().arg(option).run();
        output.code(125);
        assert_eq!(
            output.stderr,
            format!("jsrun: error: {option} needs a {name}; use {option} {name}\n"),
            "{}",
            output.report()
        );
    }
}

// ---------------------------------------------------------------------------
// The man page

/// The `.SH` sections of the checked-in man page with their roff lines.
fn man_sections() -> Vec<(String, Vec<String>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/jsrun.1");
    let text = fs::read_to_string(&path).expect("man/jsrun.1");
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix(".SH ") {
            sections.push((name.trim_matches('"').to_owned(), Vec::new()));
        } else if let Some((_, lines)) = sections.last_mut() {
            lines.push(line.to_owned());
        }
    }
    sections
}

/// Roff to the words a reader sees: no font changes, `\-` a dash.
fn plain(roff: &str) -> String {
    let mut text = roff.to_owned();
    for (from, to) in [
        ("\\fB", ""),
        ("\\fI", ""),
        ("\\fR", ""),
        ("\\-", "-"),
        ("\\(aq", "'"),
        ("\\*(Aq", "'"),
    ] {
        text = text.replace(from, to);
    }
    text
}

/// The sections of make's and ripgrep's pages, in their order: the exit
/// status once (no clap "EXTRA" repeating it), no "VERSION", and no COMMAND
/// operand among the OPTIONS.
#[test]
fn man_page_has_the_sections_of_a_unix_manual() {
    let sections = man_sections();
    let names: Vec<&str> = sections.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXIT STATUS",
            "ENVIRONMENT",
            "DIAGNOSTICS",
            "EXAMPLES",
            "SEE ALSO"
        ]
    );
    let section = |name: &str| {
        let (_, lines) = sections.iter().find(|(n, _)| n == name).unwrap();
        lines.clone()
    };
    // Each option's heading is the line after `.TP`.
    let options = section("OPTIONS");
    let headings: Vec<String> = options
        .iter()
        .zip(options.iter().skip(1))
        .filter(|(tp, _)| *tp == ".TP")
        .map(|(_, heading)| plain(heading))
        .collect();
    assert!(
        headings.iter().any(|h| h.starts_with("-j, --jobs")),
        "{headings:?}"
    );
    assert!(
        headings.iter().all(|h| h.starts_with('-')),
        "an operand among the options: {headings:?}"
    );
    let exit = section("EXIT STATUS").join("\n");
    for code in ["125", "126", "127", "141"] {
        assert!(
            exit.contains(&format!(".B {code}\n")),
            "exit status {code}\n{exit}"
        );
    }
    let environment = plain(&section("ENVIRONMENT").join("\n"));
    for variable in ["MAKEFLAGS", "TMPDIR", "JSRUN_PROC_DIR"] {
        assert!(
            environment.contains(&format!(".B {variable}")),
            "{variable}\n{environment}"
        );
    }
}

/// Every Troubleshooting item of the README is in DIAGNOSTICS: the message
/// in the item's bold text (its code span, if it has one).
#[test]
fn man_page_diagnostics_cover_the_readme_troubleshooting() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let troubleshooting = readme
        .split("\n## Troubleshooting\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Troubleshooting section in README.md");
    let diagnostics = plain(
        &man_sections()
            .into_iter()
            .find(|(name, _)| name == "DIAGNOSTICS")
            .expect("DIAGNOSTICS")
            .1
            .join("\n"),
    );
    let mut items = 0;
    for item in troubleshooting
        .lines()
        .filter_map(|l| l.strip_prefix("- **"))
    {
        let bold = item.split("**").next().unwrap();
        let message = match bold.split('`').nth(1) {
            Some(code) => code.split("...").next().unwrap(),
            None => bold,
        };
        assert!(
            diagnostics.contains(message),
            "README item {message:?} missing from DIAGNOSTICS\n{diagnostics}"
        );
        items += 1;
    }
    assert!(items >= 5, "README Troubleshooting items found: {items}");
}
