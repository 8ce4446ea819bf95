//! What comes out of a run and what jsrun tells about it: grouped output
//! under real parallelism (megabytes of it), dry runs under `make -n`, the
//! load limit against a load figure the test controls, `--joblog`,
//! `--stats`, `--trace`, `--info`, `--progress` and the completion scripts.
//!
//! The output tests need a job that writes a lot in small pieces to stdout
//! and stderr at once. That job is this test binary itself, run again with
//! the `writer_process` test selected (see there).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{
    Event, FifoJobserver, Output, Sandbox, make43, make44, path_str, shell_words, sorted,
};

// ---------------------------------------------------------------------------
// The writer job

/// Set for a writer job: its name, the first word of every line it writes.
const WRITER_JOB: &str = "JSRUN_OBSERVE_JOB";
/// Bytes a writer job writes to each of stdout and stderr (about: it writes
/// whole lines).
const WRITER_BYTES: &str = "JSRUN_OBSERVE_BYTES";
/// Optional: a directory where the writer jobs meet before they write, so
/// they all write at the same time.
const WRITER_BARRIER: &str = "JSRUN_OBSERVE_BARRIER";
/// How many writer jobs meet at the barrier.
const WRITER_WANT: &str = "JSRUN_OBSERVE_WANT";

/// Size of each write(2) of a writer job.
const CHUNK: usize = 4096;

const MIB: usize = 1 << 20;

/// Not a test: the body of a writer job. A normal run of this binary skips
/// it (no `JSRUN_OBSERVE_JOB`). The jobs that `writer_command` starts run
/// this binary with only this test selected; the wrapper script hands it
/// the job's stdout and stderr as fds 3 and 4 and sends the test harness's
/// own output to a file, so nothing but the payload reaches jsrun.
///
/// The payload: `content(job, "out", …)` on stdout and `content(job, "err",
/// …)` on stderr, in writes of 4 KiB, alternating between the two streams.
/// Line lengths vary, so most writes end in the middle of a line.
#[test]
fn writer_process() {
    let Ok(job) = std::env::var(WRITER_JOB) else {
        return;
    };
    let bytes: usize = std::env::var(WRITER_BYTES)
        .expect("JSRUN_OBSERVE_BYTES")
        .parse()
        .expect("a byte count");
    if let Ok(dir) = std::env::var(WRITER_BARRIER) {
        let want: usize = std::env::var(WRITER_WANT)
            .expect("JSRUN_OBSERVE_WANT")
            .parse()
            .expect("a count");
        barrier(Path::new(&dir), &job, want);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: the wrapper script opened fds 3 and 4 for this process (the
    // job's stdout and stderr); nothing else in it uses them.
    let (mut out, mut err) = unsafe { (fs::File::from_raw_fd(3), fs::File::from_raw_fd(4)) };
    let stdout = content(&job, "out", bytes);
    let stderr = content(&job, "err", bytes);
    let mut out_chunks = stdout.as_bytes().chunks(CHUNK);
    let mut err_chunks = stderr.as_bytes().chunks(CHUNK);
    loop {
        let a = out_chunks.next();
        if let Some(chunk) = a {
            out.write_all(chunk).expect("write stdout");
        }
        let b = err_chunks.next();
        if let Some(chunk) = b {
            err.write_all(chunk).expect("write stderr");
        }
        if a.is_none() && b.is_none() {
            break;
        }
    }
}

/// What writer job `job` writes to `stream` ("out" or "err"): numbered
/// lines `JOB STREAM NNNNNNNN xxx…` of varying length, at least `bytes` in all.
fn content(job: &str, stream: &str, bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 128);
    let mut n = 0usize;
    while text.len() < bytes {
        n += 1;
        let pad = n % 53;
        let _ = writeln!(text, "{job} {stream} {n:08} {:x<pad$}", "");
    }
    text
}

/// Leaves a marker `dir/id`, then waits until `dir` holds `want` markers or
/// the barrier deadline passes (then goes on; the test fails by measurement).
fn barrier(dir: &Path, id: &str, want: usize) {
    fs::create_dir_all(dir).expect("create the barrier directory");
    fs::write(dir.join(id), b"").expect("write a barrier marker");
    let until = Instant::now() + Duration::from_millis(crate::util::BARRIER_DEADLINE_MS);
    while Instant::now() < until {
        if fs::read_dir(dir).map_or(0, std::iter::Iterator::count) >= want {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `sh -c '…' TESTBIN {}`: a writer job named by the job's value. The test
/// harness's own output goes to `VALUE.harness` in the sandbox.
fn writer_command() -> Vec<String> {
    let exe = std::env::current_exe().expect("current_exe");
    let script = format!(
        r#"export {WRITER_JOB}="$1"; exec "$0" observe::writer_process --exact --quiet --test-threads=1 3>&1 4>&2 >"$1.harness" 2>&1"#
    );
    vec![
        "sh".into(),
        "-c".into(),
        script,
        path_str(&exe),
        "{}".into(),
    ]
}

/// jsrun with `args`, running a writer job per value; `bytes` per stream
/// each; all of them meet at a barrier before writing.
fn writers(sandbox: &Sandbox, args: &[&str], jobs: &[&str], bytes: usize) -> crate::util::Cmd {
    sandbox
        .jsrun()
        .env(WRITER_BYTES, bytes.to_string())
        .env(WRITER_BARRIER, sandbox.join("barrier"))
        .env(WRITER_WANT, jobs.len().to_string())
        .args(args)
        .args(writer_command())
        .arg(":::")
        .args(jobs)
}

/// The run's status and the start of its output: the whole of it can be
/// megabytes, too much for a failure message.
fn brief(output: &Output) -> String {
    let head = |text: &str| -> String {
        let cut: String = text.chars().take(2000).collect();
        if cut.len() < text.len() {
            format!("{cut}… ({} bytes in all)\n", text.len())
        } else {
            cut
        }
    };
    format!(
        "command: {}\nstatus: {:?}\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
        output.description,
        output.status,
        head(&output.stdout),
        head(&output.stderr)
    )
}

#[track_caller]
fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "expected success\n{}",
        brief(output)
    );
}

/// Where `got` first differs from `want`, with the lines around it.
fn first_difference(got: &str, want: &str) -> String {
    let at = got
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let around = |text: &str| -> String {
        let from = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
        text[from..].lines().take(2).collect::<Vec<_>>().join("⏎")
    };
    format!(
        "lengths {} (got) and {} (want); first difference at byte {at}:\n  got:  {:?}\n  want: {:?}",
        got.len(),
        want.len(),
        around(got),
        around(want)
    )
}

/// `-O job`: `text` is the whole `stream` of each job, each in one piece,
/// one job after the other. Returns the jobs in the order they came.
#[track_caller]
fn whole_jobs(text: &str, stream: &str, jobs: &[&str], bytes: usize) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let job = rest.split(' ').next().unwrap_or_default();
        assert!(
            jobs.contains(&job),
            "std{stream} at byte {}: not the start of a job's output: {:?}",
            text.len() - rest.len(),
            rest.lines().next().unwrap_or_default()
        );
        assert!(
            !order.iter().any(|seen| seen == job),
            "std{stream}: job {job}'s output comes in more than one piece (order so far {order:?})"
        );
        let want = content(job, stream, bytes);
        assert!(
            rest.starts_with(&want),
            "std{stream}: job {job}'s output is not whole and contiguous: {}",
            first_difference(&rest[..rest.len().min(want.len())], &want)
        );
        order.push(job.to_owned());
        rest = &rest[want.len()..];
    }
    let mut got = order.clone();
    got.sort();
    let mut want: Vec<String> = jobs.iter().map(std::string::ToString::to_string).collect();
    want.sort();
    assert_eq!(got, want, "std{stream}: jobs missing");
    order
}

/// `-O line` (and `--tag`): every line of `text` is whole, each job's lines
/// are all there once and in the job's order. With `tag`, each line is
/// `VALUE<TAB>LINE`, VALUE the job's value (here: its name).
#[track_caller]
fn whole_lines(text: &str, stream: &str, jobs: &[&str], bytes: usize, tag: bool) {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "std{stream} ends in a broken line: {:?}",
        text.lines().last()
    );
    let mut per_job: BTreeMap<&str, String> =
        jobs.iter().map(|job| (*job, String::new())).collect();
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let body = if tag {
            let (prefix, body) = line.split_once('\t').unwrap_or_else(|| {
                panic!(
                    "std{stream} line {}: no tab after a tag: {line:?}",
                    number + 1
                )
            });
            let job = body.split(' ').next().unwrap_or_default();
            assert_eq!(
                prefix,
                job,
                "std{stream} line {}: tagged with another job's value: {line:?}",
                number + 1
            );
            body
        } else {
            line
        };
        let job = body.split(' ').next().unwrap_or_default();
        let kept = per_job.get_mut(job).unwrap_or_else(|| {
            panic!(
                "std{stream} line {}: not a line any job wrote (broken or mixed?): {line:?}",
                number + 1
            )
        });
        kept.push_str(body);
    }
    for (job, got) in per_job {
        let want = content(job, stream, bytes);
        assert!(
            got == want,
            "std{stream}: the lines of job {job}, in the order they came, differ from what it wrote: {}",
            first_difference(&got, &want)
        );
    }
}

const THREE: [&str; 3] = ["alpha", "bravo", "charlie"];

/// `-O job` under `-j3`: three jobs that each write 1 MiB to stdout and
/// 1 MiB to stderr, in 4 KiB writes, all at the same time. Each stream
/// holds each job's output whole, in one piece; stdout and stderr have the
/// jobs in the same order (a job's output comes out when it ends).
#[test]
fn output_sync_job_keeps_megabytes_whole_under_parallelism() {
    let sandbox = Sandbox::new();
    let output = writers(&sandbox, &["-j3", "--output-sync=job"], &THREE, MIB).run();
    assert_success(&output);
    let out_order = whole_jobs(&output.stdout, "out", &THREE, MIB);
    let err_order = whole_jobs(&output.stderr, "err", &THREE, MIB);
    assert_eq!(out_order, err_order, "jobs in another order on stderr");
}

/// `-O line` under `-j3`, with the same three writers: no line broken or
/// mixed, every line exactly once, each job's lines in its own order. Both
/// spellings: `--output-sync=line` and make's `-Oline`.
#[test]
fn output_sync_line_keeps_megabytes_of_lines_whole_under_parallelism() {
    for sync in ["--output-sync=line", "-Oline"] {
        let sandbox = Sandbox::new();
        let output = writers(&sandbox, &["-j3", sync], &THREE, MIB).run();
        assert_success(&output);
        whole_lines(&output.stdout, "out", &THREE, MIB, false);
        whole_lines(&output.stderr, "err", &THREE, MIB, false);
    }
}

/// `--tag` (which implies `-O line`): every line of both streams is the
/// job's value, a tab, then a whole line of that job.
#[test]
fn tag_prefixes_every_line_with_the_value_and_a_tab() {
    let sandbox = Sandbox::new();
    let output = writers(&sandbox, &["-j3", "--tag"], &THREE, MIB).run();
    assert_success(&output);
    whole_lines(&output.stdout, "out", &THREE, MIB, true);
    whole_lines(&output.stderr, "err", &THREE, MIB, true);
}

/// `-O job` with output far past the 1 MiB kept in memory (the rest goes
/// to a temporary file): two jobs writing 10 MiB to each stream at once
/// arrive byte for byte, each in one piece.
#[test]
fn output_sync_job_spills_ten_mebibytes_byte_exact() {
    let jobs = ["big1", "big2"];
    let sandbox = Sandbox::new();
    let output = writers(&sandbox, &["-j2", "-O"], &jobs, 10 * MIB).run();
    assert_success(&output);
    let out_order = whole_jobs(&output.stdout, "out", &jobs, 10 * MIB);
    let err_order = whole_jobs(&output.stderr, "err", &jobs, 10 * MIB);
    assert_eq!(out_order, err_order, "jobs in another order on stderr");
}

// ---------------------------------------------------------------------------
// Dry run under make -n

/// `make -n` runs `+` recipes anyway; the `+jsrun` in one sees `n` in
/// MAKEFLAGS, prints each command and runs none: the probe, which would
/// create its log file first thing, never ran.
fn make_dry_run_runs_nothing(make: &Path) {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("job-{}");
    let recipe = format!(
        "+{} {} ::: 1 2",
        shell_words(&[path_str(&crate::util::jsrun_bin())]),
        probe.shell()
    );
    sandbox.write("Makefile", format!(".PHONY: run\nrun:\n\t{recipe}\n"));
    let output = sandbox.command(make).args(["-n", "-j2"]).run();
    output.success();
    assert!(
        !sandbox.join("log").exists(),
        "a job ran under make -n\n{}\n{}",
        sandbox.log().dump(),
        output.report()
    );
    for n in 1..=2 {
        // The words need no quoting, so jsrun prints them as they are.
        let words = probe.clone().words();
        let line = words.join(" ").replace("job-{}", &format!("job-{n}"));
        assert!(
            output.stdout.lines().any(|printed| printed == line),
            "job {n} not printed as {line:?}\n{}",
            output.report()
        );
    }
}

#[test]
fn make44_dry_run_prints_and_runs_nothing() {
    make_dry_run_runs_nothing(&make44());
}

#[test]
fn make43_dry_run_prints_and_runs_nothing() {
    make_dry_run_runs_nothing(&make43());
}

// ---------------------------------------------------------------------------
// Load limit

/// `-l 2 -j4` with `JSRUN_PROC_DIR`'s loadavg saying 5.00: jsrun's pool holds
/// its tokens back, so jobs s1, s2, s3 (300 ms each) run one at a time, in
/// the implicit slot. Once s3 has started the test sets the load to 0.50;
/// jsrun looks again (a few times a second), gives the tokens back and runs
/// the rest in parallel: p1..p4 wait for each other in fours, which they can
/// only pass when all four run at once.
#[test]
fn load_limit_follows_the_load_figure() {
    let sandbox = Sandbox::new();
    let proc_dir = sandbox.join("proc");
    fs::create_dir(&proc_dir).unwrap();
    let loadavg = proc_dir.join("loadavg");
    crate::util::set_load(&loadavg, "5.00");
    let log = sandbox.log();
    let probe = shell_words(&[path_str(&crate::util::probe_bin())]);
    let log_path = shell_words(&[path_str(log.path())]);
    let barrier = shell_words(&[sandbox.str("barrier")]);
    let script = format!(
        "case $1 in \
           s*) exec {probe} --log {log_path} --id $1 --sleep-ms 300 ;; \
           *) exec {probe} --log {log_path} --id $1 --barrier {barrier} --want 4 --deadline-ms {} ;; \
         esac",
        crate::util::BARRIER_DEADLINE_MS
    );
    let mut running = sandbox
        .jsrun()
        .env("JSRUN_PROC_DIR", &proc_dir)
        .args(["-l", "2", "-j4", "sh", "-c", &script, "sh", ":::"])
        .args(["s1", "s2", "s3", "p1", "p2", "p3", "p4"])
        .spawn();
    running.wait_until("job s3 to start", || {
        log.started().iter().any(|id| id == "s3")
    });
    crate::util::set_load(&loadavg, "0.50");
    let output = running.wait();
    output.success();
    let events = log.events();
    let phase = |prefix: char| -> Vec<Event> {
        events
            .iter()
            .filter(|event| event.id.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(log.finished().len(), 7, "{}", log.dump());
    assert_eq!(
        crate::util::peak_of(&phase('s')),
        1,
        "jobs ran side by side while the load was 5.00 (limit 2)\n{}",
        log.dump()
    );
    assert_eq!(
        crate::util::peak_of(&phase('p')),
        4,
        "jobs did not run in parallel once the load was 0.50\n{}\n{}",
        log.dump(),
        output.report()
    );
}

// ---------------------------------------------------------------------------
// --joblog

/// A parsed `--joblog` row.
#[derive(Debug)]
struct Row {
    seq: u64,
    slot: usize,
    /// Starttime in µs since the epoch.
    start_us: u128,
    /// JobRuntime in µs.
    runtime_us: u128,
    exitval: i32,
    signal: i32,
    command: String,
}

/// `S.uuuuuu` (seconds with 6 decimals) in µs.
fn micros(text: &str) -> u128 {
    let (secs, frac) = text
        .split_once('.')
        .unwrap_or_else(|| panic!("{text:?}: no decimal point"));
    assert_eq!(frac.len(), 6, "{text:?}: not 6 decimals");
    secs.parse::<u128>().expect("seconds") * 1_000_000 + frac.parse::<u128>().expect("microseconds")
}

/// The rows of a job log, after checking its header.
fn joblog_rows(path: &Path) -> Vec<Row> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("Seq\tSlot\tStarttime\tJobRuntime\tExitval\tSignal\tCommand"),
        "header of\n{text}"
    );
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 7, "row {line:?}");
            Row {
                seq: fields[0].parse().expect("Seq"),
                slot: fields[1].parse().expect("Slot"),
                start_us: micros(fields[2]),
                runtime_us: micros(fields[3]),
                exitval: fields[4].parse().expect("Exitval"),
                signal: fields[5].parse().expect("Signal"),
                command: fields[6].to_owned(),
            }
        })
        .collect()
}

/// How far a job log's times may be from the job's own clock readings:
/// the time between jsrun's fork and the job's first instruction, and
/// between its last one and jsrun's reaping, under whatever else the
/// machine does. A consistency check (seconds for ms, a wrong epoch, a
/// swapped column), not a measure of speed.
const SCHEDULING_SLACK_MS: u128 = 500;

/// `--joblog` with `-k -j2`: one row per job, Exitval 3 for a job that
/// exited 3, Signal 15 (and Exitval 0) for one killed by SIGTERM; and each
/// row's Starttime and Starttime+JobRuntime bracket the probe's own start
/// and end readings.
#[test]
fn joblog_rows_agree_with_the_jobs() {
    let sandbox = Sandbox::new();
    let log = sandbox.log();
    // `--$3` splits into the probe option and its value: `--exit 3`.
    let script = r#"exec "$0" --log "$1" --id "$2" --sleep-ms 150 --$3"#;
    let output = sandbox
        .jsrun()
        .args(["-k", "-j2", "--joblog", "jobs.tsv", "sh", "-c", script])
        .arg(crate::util::probe_bin())
        .arg(log.path())
        .args([
            "{#}",
            "{}",
            ":::",
            "exit 0",
            "exit 3",
            "signal 15",
            "exit 0",
        ])
        .run();
    assert!(
        matches!(output.status.code(), Some(3 | 143)),
        "expected the status of the first failed job\n{}",
        output.report()
    );
    let rows = joblog_rows(&sandbox.join("jobs.tsv"));
    let seqs: Vec<u64> = {
        let mut seqs: Vec<u64> = rows.iter().map(|row| row.seq).collect();
        seqs.sort_unstable();
        seqs
    };
    assert_eq!(seqs, [1, 2, 3, 4], "{rows:#?}");
    let events = log.events();
    for row in &rows {
        let (want_exit, want_signal) = match row.seq {
            2 => (3, 0),
            3 => (0, 15),
            _ => (0, 0),
        };
        assert_eq!(
            (row.exitval, row.signal),
            (want_exit, want_signal),
            "Exitval and Signal of job {}: {row:?}",
            row.seq
        );
        assert!((1..=2).contains(&row.slot), "{row:?}");
        assert!(row.command.contains("sh -c"), "{row:?}");
        let reading = |start: bool| -> u128 {
            events
                .iter()
                .find(|event| event.start == start && event.id == row.seq.to_string())
                .unwrap_or_else(|| panic!("job {} did not log\n{}", row.seq, log.dump()))
                .nanos
                / 1_000
        };
        let (probe_start, probe_end) = (reading(true), reading(false));
        // jsrun reads the clock before it starts the job, and after it ends;
        // both are rounded down to the µs, hence the 1 µs below.
        let slack = SCHEDULING_SLACK_MS * 1000;
        let end_us = row.start_us + row.runtime_us;
        assert!(
            row.start_us <= probe_start && probe_start - row.start_us <= slack,
            "Starttime {} vs the job's start {probe_start} (µs): {row:?}",
            row.start_us
        );
        assert!(
            end_us + 1 >= probe_end && end_us <= probe_end + slack,
            "Starttime+JobRuntime {end_us} vs the job's end {probe_end} (µs): {row:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// --stats

/// The numbers of the `--stats` line: (jobs, failed, peak).
fn stats_numbers(stderr: &str) -> (u64, u64, usize) {
    let line = stderr
        .lines()
        .find(|line| line.starts_with("jsrun: ") && line.contains(" jobs, "))
        .unwrap_or_else(|| panic!("no --stats line in\n{stderr}"));
    let number_before = |word: &str| -> u64 {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let at = words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
        words[at - 1]
            .parse()
            .unwrap_or_else(|_| panic!("no number before {word:?} in {line:?}"))
    };
    let peak = line
        .split_once("peak ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {line:?}"));
    (number_before("jobs"), number_before("failed"), peak)
}

/// `--stats` with `-k -j3`, six jobs of which two fail: the summary's job
/// count, failed count and peak are what the jobs' own log shows.
#[test]
fn stats_agree_with_the_measured_run() {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .id("{#}")
        .barrier(&sandbox.join("barrier"), 3)
        .sleep_ms(100)
        .exit_value();
    let exits = ["0", "0", "4", "0", "5", "0"];
    let output = sandbox
        .jsrun()
        .args(["-k", "-j3", "--stats"])
        .args(probe.words())
        .arg(":::")
        .args(exits)
        .run();
    assert!(
        matches!(output.status.code(), Some(4 | 5)),
        "{}",
        output.report()
    );
    let log = sandbox.log();
    let (jobs, failed, peak) = stats_numbers(&output.stderr);
    assert_eq!(jobs as usize, log.finished().len(), "{}", output.report());
    assert_eq!(jobs, 6, "{}", output.report());
    let want_failed = exits.iter().filter(|code| **code != "0").count() as u64;
    assert_eq!(failed, want_failed, "{}", output.report());
    assert_eq!(peak, log.peak(), "{}\n{}", log.dump(), output.report());
    assert_eq!(peak, 3, "{}", log.dump());
}

/// The seconds in `jsrun: NAME exited CODE after S.SSSs` (or `was killed by SIG
/// after`), and the rest of the line before " after".
fn command_line_of(stderr: &str, name: &str) -> (String, f64) {
    let prefix = format!("jsrun: {name} ");
    let line = stderr
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no line of the command {name} in\n{stderr}"));
    let (what, secs) = line
        .rsplit_once(" after ")
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    let secs = secs
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seconds in {line:?}"));
    (what.to_owned(), secs)
}

/// `jsrun -j4 --stats -- make` (one command in a pool jsrun owns): no line about
/// jsrun's "1 jobs" that reads as if the pool sat idle; the command's line says what
/// make did (its exit, 2 for a failed recipe, and a time at least as long as the
/// recipe ran by its own timestamps, at most the run's), and the pool line comes last,
/// as the summary. A command killed by a signal and one that cannot start say so.
#[test]
fn stats_of_one_command_in_its_own_pool_say_what_the_command_did() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("r").sleep_ms(200).exit(3);
    sandbox.write("Makefile", format!("all:\n\t{}\n", probe.shell()));
    let make = crate::util::make44();
    let began = Instant::now();
    let output = sandbox
        .jsrun()
        .args(["-j4", "--stats", "--"])
        .arg(&make)
        .run();
    let wall = began.elapsed().as_secs_f64();
    output.code(2).stderr_lacks(" jobs, ");
    let events = sandbox.log().events();
    let ran = (events[1].nanos - events[0].nanos) as f64 / 1e9;
    let (what, secs) = command_line_of(&output.stderr, &path_str(&make));
    assert_eq!(what, "exited 2", "{}", output.report());
    assert!(
        secs >= ran && secs <= wall,
        "make ran {secs}s by jsrun, the recipe {ran}s, the run {wall}s\n{}",
        output.report()
    );
    let last = output.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("jsrun: pool: 4 slots, peak 1 in use"),
        "the pool line last\n{}",
        output.report()
    );

    let killed = sandbox
        .jsrun()
        .args(["-j4", "--stats", "--"])
        .args(sandbox.probe().id("k").signal(libc::SIGTERM).words())
        .run();
    killed.code(128 + libc::SIGTERM).stderr_lacks(" jobs, ");
    let (what, _) = command_line_of(&killed.stderr, &path_str(&crate::util::probe_bin()));
    assert_eq!(what, "was killed by SIGTERM", "{}", killed.report());

    let missing = sandbox
        .jsrun()
        .args(["-j4", "--stats", "--", "no-such-program-here"])
        .run();
    missing
        .code(127)
        .stderr_contains("jsrun: no-such-program-here could not be started (exit 127)\n")
        .stderr_contains("jsrun: pool: 4 slots")
        .stderr_lacks(" jobs, ");
}

// ---------------------------------------------------------------------------
// --trace

/// A complete ("X") event of a trace.
#[derive(Debug)]
struct Span {
    name: String,
    tid: u64,
    ts: u64,
    dur: u64,
    seq: Option<u64>,
}

fn spans(trace: &serde_json::Value) -> Vec<Span> {
    let events = trace["traceEvents"]
        .as_array()
        .unwrap_or_else(|| panic!("no traceEvents array in {trace}"));
    events
        .iter()
        .filter(|event| event["ph"] == "X")
        .map(|event| {
            let number = |key: &str| {
                event[key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{key} of {event}"))
            };
            Span {
                name: event["name"].as_str().expect("name").to_owned(),
                tid: number("tid"),
                ts: number("ts"),
                dur: number("dur"),
                seq: event["args"]["seq"].as_u64(),
            }
        })
        .collect()
}

/// `--trace` under a pool of one token, `-j4`, four jobs, the first two of
/// which wait for each other at a barrier (so two run at once in every run,
/// however slow the machine): the file is Chrome trace-event JSON with one
/// "X" span per job on the row (tid) of the job's slot, whose ts and dur
/// agree with the job log row of the same seq; job 3 had to wait for the
/// token while jobs 1 and 2 held both slots, which shows as spans on row 0,
/// each ending as a job starts.
#[test]
fn trace_has_a_span_per_job_and_the_token_waits() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, b"t");
    let probe = sandbox
        .probe()
        .id("{#}:{%}")
        .barrier(&sandbox.join("barrier"), 2);
    let output = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .args(["-j4", "--trace", "trace.json", "--joblog", "jobs.tsv"])
        .args(probe.words())
        .args([":::", "1", "2", "3", "4"])
        .run();
    output.success();
    assert_eq!(sorted(&pool.drain()), b"t", "the token must come back");
    assert_eq!(sandbox.log().peak(), 2, "{}", sandbox.log().dump());

    let text = fs::read_to_string(sandbox.join("trace.json")).expect("trace file");
    let trace: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("the trace is not JSON: {err}\n{text}"));
    let spans = spans(&trace);
    let (waits, jobs): (Vec<&Span>, Vec<&Span>) = spans.iter().partition(|span| span.tid == 0);

    // The slot each job saw as {%}, by seq.
    let slot_of: BTreeMap<u64, u64> = sandbox
        .log()
        .events()
        .iter()
        .filter(|event| event.start)
        .map(|event| {
            let (seq, slot) = event.id.split_once(':').expect("seq:slot");
            (seq.parse().unwrap(), slot.parse().unwrap())
        })
        .collect();
    let rows = joblog_rows(&sandbox.join("jobs.tsv"));
    assert_eq!(jobs.len(), 4, "one span per job\n{text}");
    let seqs: BTreeSet<u64> = jobs.iter().filter_map(|span| span.seq).collect();
    assert_eq!(seqs, BTreeSet::from([1, 2, 3, 4]), "args.seq\n{text}");

    // The trace counts on CLOCK_MONOTONIC, the job log from the epoch: the
    // difference is the same for every job (up to whatever time passes
    // between two clock readings jsrun makes for one event).
    let mut offsets = Vec::new();
    for span in &jobs {
        let seq = span.seq.expect("seq");
        let row = rows
            .iter()
            .find(|row| row.seq == seq)
            .unwrap_or_else(|| panic!("no job log row for seq {seq}: {rows:?}"));
        assert_eq!(span.tid, row.slot as u64, "tid vs Slot: {span:?} {row:?}");
        assert_eq!(Some(&span.tid), slot_of.get(&seq), "tid vs {{%}}: {span:?}");
        assert!(
            span.dur.abs_diff(row.runtime_us as u64) <= 1000,
            "dur vs JobRuntime: {span:?} {row:?}"
        );
        offsets.push(row.start_us as i128 - span.ts as i128);
    }
    let spread = offsets.iter().max().unwrap() - offsets.iter().min().unwrap();
    assert!(
        spread <= 50_000,
        "ts and Starttime disagree by {spread} µs between jobs\n{text}\n{rows:#?}"
    );

    assert!(
        !waits.is_empty(),
        "no token waits on row 0, though job 3 waited for the one token\n{text}"
    );
    for wait in &waits {
        assert!(wait.seq.is_none(), "{wait:?}");
        let end = wait.ts + wait.dur;
        assert!(
            jobs.iter()
                .any(|job| job.ts + 1 >= end && job.ts <= end + 50_000),
            "no job starts as the wait {wait:?} ends\n{text}"
        );
        assert!(!wait.name.is_empty(), "{wait:?}");
    }
    // Each row used has a name (metadata "M" events).
    let events = trace["traceEvents"].as_array().unwrap();
    for tid in jobs.iter().map(|span| span.tid).chain([0]) {
        assert!(
            events
                .iter()
                .any(|event| event["ph"] == "M" && event["tid"] == tid),
            "row {tid} has no thread_name\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// --info

/// The value of `key: value` in `--info` output.
fn info<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}: ");
    stdout.lines().find_map(|line| line.strip_prefix(&prefix))
}

/// A Makefile whose only recipe is `[+]@jsrun --info; echo "exit=$?"`, run
/// under `make -j4`; returns make's output and jsrun's exit status.
fn info_under_make(make: &Path, plus: bool) -> (Output, i32) {
    let sandbox = Sandbox::new();
    let recipe = format!(
        "{}@{} --info; echo \"exit=$$?\"",
        if plus { "+" } else { "" },
        shell_words(&[path_str(&crate::util::jsrun_bin())])
    );
    sandbox.write("Makefile", format!(".PHONY: run\nrun:\n\t{recipe}\n"));
    let output = sandbox.command(make).arg("-j4").run();
    output.success();
    let status = output
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("exit="))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no exit status\n{}", output.report()));
    (output, status)
}

#[test]
fn info_in_a_make43_plus_recipe_finds_a_usable_pipe() {
    let (output, status) = info_under_make(&make43(), true);
    let report = output.report();
    assert_eq!(status, 0, "{report}");
    assert_eq!(info(&output.stdout, "style"), Some("pipe"), "{report}");
    assert_eq!(info(&output.stdout, "usable"), Some("yes"), "{report}");
    assert_eq!(info(&output.stdout, "free tokens"), Some("3"), "{report}");
    assert_make_holds_it(&output, &make43());
}

/// `--info` names the processes that hold the jobserver open: make among them.
#[track_caller]
fn assert_make_holds_it(output: &Output, make: &Path) {
    let want = format!("{} -j4", path_str(make));
    assert!(
        output
            .stdout
            .lines()
            .filter_map(|line| line.strip_prefix("holder: "))
            .any(|holder| holder
                .split_once(' ')
                .is_some_and(|(pid, command)| { pid.parse::<u32>().is_ok() && command == want })),
        "no 'holder: PID {want}'\n{}",
        output.report()
    );
}

#[test]
fn info_in_a_make43_recipe_without_plus_finds_it_unusable() {
    let (output, status) = info_under_make(&make43(), false);
    let report = output.report();
    assert_eq!(status, 1, "{report}");
    assert_eq!(info(&output.stdout, "style"), Some("pipe"), "{report}");
    let usable = info(&output.stdout, "usable").unwrap_or_default();
    assert!(usable.starts_with("no"), "{report}");
}

#[test]
fn info_under_make44_finds_a_usable_fifo_and_its_free_tokens() {
    let (output, status) = info_under_make(&make44(), false);
    let report = output.report();
    assert_eq!(status, 0, "{report}");
    assert_eq!(info(&output.stdout, "style"), Some("fifo"), "{report}");
    assert_eq!(info(&output.stdout, "usable"), Some("yes"), "{report}");
    // make -j4 with one recipe running (in make's own slot): 3 tokens free.
    assert_eq!(info(&output.stdout, "free tokens"), Some("3"), "{report}");
    assert!(
        info(&output.stdout, "auth").is_some_and(|auth| auth.starts_with("fifo:")),
        "{report}"
    );
    assert_make_holds_it(&output, &make44());
}

/// No jobserver anywhere: `--info` exits 1 (one job at a time), but with
/// `-j4` 0 (jsrun would serve one itself).
#[test]
fn info_without_a_jobserver() {
    let sandbox = Sandbox::new();
    let alone = sandbox.jsrun().arg("--info").run();
    alone.code(1);
    assert_eq!(
        info(&alone.stdout, "source"),
        Some("none"),
        "{}",
        alone.report()
    );
    let serving = sandbox.jsrun().args(["-j4", "--info"]).run();
    serving.code(0);
    assert!(
        serving.stdout.contains('4'),
        "the slots jsrun would serve\n{}",
        serving.report()
    );
}

// ---------------------------------------------------------------------------
// --progress

/// `--progress` with stderr a file: no progress line at all.
#[test]
fn progress_is_off_when_stderr_is_not_a_terminal() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args(["--progress", "-j2"])
        .args(sandbox.probe().id("{}").sleep_ms(50).words())
        .args([":::", "1", "2", "3"])
        .run();
    output.success();
    assert!(
        !output.stderr.contains('\r') && !output.stdout.contains('\r'),
        "a progress line without a terminal\n{}",
        output.report()
    );
    assert_eq!(sandbox.log().finished().len(), 3);
}

/// `program` found in PATH.
fn in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// `--progress` on a terminal: run under `script` (util-linux), which gives
/// jsrun a pseudo-terminal and copies what it shows; the `done/total`
/// line is redrawn with carriage returns and reaches 3/3.
#[test]
fn progress_shows_on_a_terminal() {
    let Some(script) = in_path("script") else {
        // No way to give jsrun a terminal here; the half above still runs.
        eprintln!("progress_shows_on_a_terminal: no `script` in PATH, not checked");
        return;
    };
    let sandbox = Sandbox::new();
    let mut words = vec![
        path_str(&crate::util::jsrun_bin()),
        "--progress".into(),
        "-j2".into(),
    ];
    words.extend(sandbox.probe().id("{}").sleep_ms(50).words());
    words.extend([":::", "1", "2", "3"].map(String::from));
    let output = sandbox
        .command(script)
        .args(["-q", "-e", "-c", &shell_words(&words), "/dev/null"])
        .run();
    output.success();
    let shown = &output.stdout;
    assert!(
        shown.contains('\r') && shown.contains("3/3 done"),
        "no progress line on the terminal\n{}",
        output.report()
    );
    assert_eq!(sandbox.log().finished().len(), 3);
}

// ---------------------------------------------------------------------------
// Completion scripts

/// `--completions SHELL` prints a script naming the options, in each
/// shell's own spelling (fish names long options as `-l output-sync`).
#[test]
fn completion_scripts_name_the_options() {
    let sandbox = Sandbox::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
    for (file, spelling) in [
        ("jsrun.bash", "--output-sync"),
        ("_jsrun", "--output-sync"),
        ("jsrun.fish", "-l output-sync"),
    ] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).expect("a completion script");
        assert!(text.contains(spelling), "{file}: {spelling:?} missing");
        assert!(text.contains("jobserver-group"), "{file}: out of date");
        if file == "jsrun.bash" {
            sandbox.command("bash").arg("-n").arg(&path).run().success();
        }
    }
}

// ---------------------------------------------------------------------------
// Memory under -O job

/// Kills and reaps a child that the test still owns when it ends (a failed
/// assertion or a deadline).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Bytes waiting in a pipe.
fn pipe_pending(fd: std::os::fd::RawFd) -> usize {
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer given.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut pending) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    pending as usize
}

/// The peak resident size of process `pid` so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("read /proc/{pid}/status: {err}"));
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in\n{status}"));
    kib * 1024
}

/// `-O job` keeps up to 1 MiB per stream in memory and the rest in an
/// unlinked temp file, so that output of any size can pass (README). A job
/// writes 64 MiB; jsrun's stdout is a pipe the test leaves unread until it
/// is half full, that is until jsrun is writing the job's output out. jsrun's
/// peak memory up to then stays far below the output's size, and the
/// output arrives whole.
#[test]
fn output_sync_job_does_not_load_a_spilled_output_into_memory() {
    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;
    use std::process::{Command, Stdio};
    const SIZE: usize = 64 * MIB;
    let sandbox = Sandbox::new();
    let mut command = Command::new(crate::util::jsrun_bin());
    for variable in ["MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "GNUMAKEFLAGS"] {
        command.env_remove(variable);
    }
    let child = crate::util::default_signals(&mut command)
        .args(["-O", "head", "-c", &SIZE.to_string(), "/dev/zero"])
        .current_dir(sandbox.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(sandbox.join("stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn jsrun");
    let mut child = Reaped(child);
    let pid = child.0.id();
    let mut stdout = child.0.stdout.take().expect("stdout pipe");
    let fd = stdout.as_raw_fd();
    // SAFETY: F_GETPIPE_SZ only reads the pipe's capacity.
    let capacity = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    assert!(
        capacity > 0,
        "F_GETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    crate::util::wait_until("jsrun to write the job's output", || {
        pipe_pending(fd) >= capacity as usize / 2
    });
    let peak = peak_rss(pid);

    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = stdout.read(&mut buf).expect("read jsrun's stdout");
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == 0), "not the job's output");
        total += n;
    }
    let deadline = Instant::now() + crate::util::DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "jsrun did not exit");
        thread::sleep(Duration::from_millis(5));
    };
    let stderr = fs::read_to_string(sandbox.join("stderr")).unwrap_or_default();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert_eq!(total, SIZE, "bytes of output\n{stderr}");
    assert!(
        peak < SIZE / 2,
        "jsrun's peak memory was {} MiB while passing on a 64 MiB output that \
         -O job had spilled to a temp file",
        peak / MIB
    );
}

/// Microseconds of CLOCK_MONOTONIC, the clock of the trace.
fn monotonic_us() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    Duration::from(now).as_micros() as u64
}

/// Two jsruns side by side: each trace carries its jsrun's real pid and
/// times on CLOCK_MONOTONIC (between the test's own readings before and
/// after), so their event arrays line up in one file; in the job log, a job
/// that starts in a slot after another ended never seems to overlap it.
#[test]
fn traces_share_one_clock_and_job_log_rows_never_overlap() {
    let sandbox = Sandbox::new();
    let before = monotonic_us();
    let run = |name: &str| {
        sandbox
            .jsrun()
            .args(["-j1", "--trace", &format!("{name}.json")])
            .args(["--joblog", &format!("{name}.tsv"), "true", ":::"])
            .args(crate::util::values(50))
            .spawn()
    };
    let (a, b) = (run("a"), run("b"));
    let pids = [a.pid() as u64, b.pid() as u64];
    a.wait().success();
    b.wait().success();
    let after = monotonic_us();
    for (name, pid) in ["a", "b"].into_iter().zip(pids) {
        let text = fs::read_to_string(sandbox.join(format!("{name}.json"))).unwrap();
        let trace: serde_json::Value = serde_json::from_str(&text).unwrap();
        let events = trace["traceEvents"].as_array().unwrap();
        for event in events {
            assert_eq!(event["pid"].as_u64(), Some(pid), "{event}");
        }
        let spans = spans(&trace);
        assert_eq!(spans.len(), 50, "{text}");
        for span in &spans {
            assert!(
                before <= span.ts && span.ts + span.dur <= after,
                "{span:?} not within the test's clock readings {before}..{after}"
            );
        }
        let mut rows = joblog_rows(&sandbox.join(format!("{name}.tsv")));
        rows.sort_by_key(|row| row.seq);
        for pair in rows.windows(2) {
            assert!(
                pair[0].start_us + pair[0].runtime_us <= pair[1].start_us,
                "job {} ends after job {} starts: {pair:#?}",
                pair[0].seq,
                pair[1].seq
            );
        }
    }
}
