//! The governed pool against real peers.
//!
//! - A pool of jsrun's own held back by a limit (load, memory available, memory
//!   pressure read from `JSRUN_PROC_DIR`) under make 4.4.1 (fifo), make 4.3 (pipe),
//!   ninja and a jobserver-crate client: the whole tree runs one job at a time, and
//!   once the limit is met it is back to N.
//! - A limit under someone else's pool: jsrun's own jobs one at a time, the pool
//!   untouched.
//!
//! Concurrency is always measured from the jobs' own start/end lines (the probe log),
//! never taken from what jsrun says; what jsrun says is checked against them.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use util::{
    Event, FifoJobserver, Log, Output, Probe, Sandbox, Seen, entries, path_str, peak_of,
    shell_words, sorted, tokens_at,
};

// ---------------------------------------------------------------------------
// Limits the test controls

/// A limit, exceeded or met through the files of a `JSRUN_PROC_DIR`.
#[derive(Clone, Copy, Debug)]
enum Limit {
    /// `-l 2`: loadavg 5.00, then 0.50.
    Load,
    /// `--min-memory-avail=1G`: MemAvailable 256 MiB, then 8 GiB.
    Memory,
    /// `--max-memory-pressure=10`: `some avg10=50.00`, then `0.00`.
    Pressure,
}

impl Limit {
    fn options(self) -> &'static [&'static str] {
        match self {
            Limit::Load => &["-l", "2"],
            Limit::Memory => &["--min-memory-avail=1G"],
            Limit::Pressure => &["--max-memory-pressure=10"],
        }
    }

    /// A `JSRUN_PROC_DIR` in the sandbox with this limit exceeded.
    fn proc_dir(self, sandbox: &Sandbox) -> PathBuf {
        let dir = sandbox.join("proc");
        fs::create_dir_all(dir.join("pressure")).expect("create the proc directory");
        self.set(&dir, true);
        dir
    }

    /// Writes the figure that exceeds the limit, or the one that meets it.
    fn set(self, dir: &Path, exceeded: bool) {
        let (name, text) = match self {
            Limit::Load => {
                let load = if exceeded { "5.00" } else { "0.50" };
                ("loadavg", format!("{load} {load} {load} 2/345 6789\n"))
            }
            Limit::Memory => {
                let kb = if exceeded { 262_144 } else { 8_388_608 };
                (
                    "meminfo",
                    format!(
                        "MemTotal:       16777216 kB\nMemFree:          {kb} kB\n\
                         MemAvailable:     {kb} kB\nBuffers:           12345 kB\n"
                    ),
                )
            }
            Limit::Pressure => {
                let avg10 = if exceeded { "50.00" } else { "0.00" };
                (
                    "pressure/memory",
                    format!(
                        "some avg10={avg10} avg60=0.00 avg300=0.00 total=0\n\
                         full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                    ),
                )
            }
        };
        util::write_atomically(&dir.join(name), &text);
    }
}

// ---------------------------------------------------------------------------
// Pools, processes and phases

/// Where the test counts the tokens of the pool a job saw in MAKEFLAGS: the fifo,
/// or the read end of jsrun's pipe through `/proc/JSRUN/fd/R`.
#[track_caller]
fn pool_of(seen: &Seen, jsrun: i32) -> PathBuf {
    let makeflags = seen
        .var("MAKEFLAGS")
        .expect("MAKEFLAGS in the job's environment");
    let auth = util::jobserver_auth(&makeflags)
        .unwrap_or_else(|| panic!("no --jobserver-auth in {makeflags:?}"));
    match auth.strip_prefix("fifo:") {
        Some(path) => PathBuf::from(path),
        None => {
            let (read, _) = auth
                .split_once(',')
                .unwrap_or_else(|| panic!("not R,W: {auth:?}"));
            PathBuf::from(format!("/proc/{jsrun}/fd/{read}"))
        }
    }
}

/// The events of the jobs whose ids `keep` accepts.
fn phase(log: &Log, keep: impl Fn(&str) -> bool) -> Vec<Event> {
    log.events()
        .into_iter()
        .filter(|event| keep(&event.id))
        .collect()
}

fn ids(words: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    ids.sort();
    ids
}

/// A marker from the test in a barrier directory: the jobs waiting there go on.
fn release(dir: &Path) {
    fs::create_dir_all(dir).expect("create the barrier directory");
    fs::write(dir.join("test"), "").expect("write the test's marker");
}

/// One rule of a build: target, prerequisites, command.
struct Rule {
    target: String,
    after: Vec<String>,
    command: String,
}

fn rule(target: &str, after: &[&str], probe: &Probe) -> Rule {
    Rule {
        target: target.to_owned(),
        after: after.iter().map(|a| a.to_string()).collect(),
        command: probe.shell(),
    }
}

/// A Makefile of phony targets, `all` building `goals`.
fn write_makefile(sandbox: &Sandbox, goals: &[&str], rules: &[Rule]) {
    let targets: Vec<&str> = rules.iter().map(|r| r.target.as_str()).collect();
    let mut text = format!(
        ".PHONY: all {}\nall: {}\n",
        targets.join(" "),
        goals.join(" ")
    );
    for r in rules {
        text.push_str(&format!(
            "{}: {}\n\t{}\n",
            r.target,
            r.after.join(" "),
            r.command
        ));
    }
    sandbox.write("Makefile", text);
}

/// The same build for ninja: one edge per rule, prerequisites as implicit inputs.
fn write_ninja(sandbox: &Sandbox, goals: &[&str], rules: &[Rule]) {
    let mut text = String::from("rule run\n  command = $cmd\n");
    for r in rules {
        let after = match r.after.is_empty() {
            true => String::new(),
            false => format!(" | {}", r.after.join(" ")),
        };
        text.push_str(&format!(
            "build {}: run{after}\n  cmd = {}\n",
            r.target, r.command
        ));
    }
    text.push_str(&format!("default {}\n", goals.join(" ")));
    sandbox.write("build.ninja", text);
}

/// Slots of the pools in the peer tests.
const SLOTS: usize = 4;

/// The two phases of a governed build: s1, s2, s3 (100 ms each, independent: a
/// tree with free slots runs them at once), then `gate`, which dumps its
/// environment to `seen` and waits at `gate/` for the test, then p1..p4, which
/// wait for each other at `p/`: they pass only when all four run at once.
fn two_phases(sandbox: &Sandbox, slots: usize) -> (Vec<&'static str>, Vec<Rule>) {
    let first = ["s1", "s2", "s3"];
    let second: Vec<&'static str> = ["p1", "p2", "p3", "p4"][..slots].to_vec();
    let mut rules: Vec<Rule> = first
        .iter()
        .map(|id| rule(id, &[], &sandbox.probe().id(id).sleep_ms(100)))
        .collect();
    let gate = sandbox
        .probe()
        .id("gate")
        .env_out(&sandbox.join("seen"))
        .barrier_deadline(&sandbox.join("gate"), 2, 30_000);
    rules.push(rule("gate", &first, &gate));
    for id in &second {
        let probe = sandbox.probe().id(id).barrier(&sandbox.join("p"), slots);
        rules.push(rule(id, &["gate"], &probe));
    }
    (second, rules)
}

/// Checks the measured phases of a two-phase build: the first (s*, gate) one job
/// at a time, the second (p*) all `slots` at once, every job done.
#[track_caller]
fn check_two_phases(log: &Log, slots: usize, output: &Output) {
    let mut all = vec!["s1", "s2", "s3", "gate"];
    all.extend(&["p1", "p2", "p3", "p4"][..slots]);
    assert_eq!(
        log.finished(),
        ids(&all),
        "{}\n{}",
        log.dump(),
        output.report()
    );
    let held = phase(log, |id| id.starts_with('s') || id == "gate");
    assert_eq!(
        peak_of(&held),
        1,
        "the tree ran jobs side by side while a limit was exceeded\n{}\n{}",
        log.dump(),
        output.report()
    );
    let back = phase(log, |id| id.starts_with('p'));
    assert_eq!(
        peak_of(&back),
        slots,
        "the tree did not get all {slots} slots back once the limit was met\n{}\n{}",
        log.dump(),
        output.report()
    );
}

// ---------------------------------------------------------------------------
// 1. A pool of jsrun's own, held back, under make, ninja and the jobserver crate

#[derive(Clone, Copy, Debug)]
enum Peer {
    /// make 4.4.1: a fifo pool.
    Make44,
    /// make 4.3 as the command: jsrun picks a pipe pool.
    Make43,
    /// ninja, no -j: it takes the pool from MAKEFLAGS.
    Ninja,
}

/// `jsrun -j4 LIMIT -- PEER` with the limit exceeded from the start: s1, s2, s3 and the
/// gate run one at a time (the governor holds every token, so nothing but the implicit
/// slot runs) and the pool is empty meanwhile; the test meets the limit, waits until
/// the pool holds its 3 tokens again, opens the gate, and p1..p4 meet at their barrier.
/// No token is missing or extra at the end, and the peer warns about nothing.
///
/// The test waits for the whole pool before it opens the gate because ninja 1.13 looks
/// for tokens only when one of its own jobs ends: with the gate opened at once, p1..p3
/// took the tokens back so far and waited at their barrier, and ninja never saw the
/// third one.
fn governed_tree(peer: Peer, limit: Limit) {
    let sandbox = Sandbox::new();
    let proc = limit.proc_dir(&sandbox);
    let (goals, rules) = two_phases(&sandbox, SLOTS);
    let command = match peer {
        Peer::Make44 => {
            write_makefile(&sandbox, &goals, &rules);
            util::make44()
        }
        Peer::Make43 => {
            write_makefile(&sandbox, &goals, &rules);
            util::make43()
        }
        Peer::Ninja => {
            write_ninja(&sandbox, &goals, &rules);
            util::ninja()
        }
    };
    let mut running = sandbox
        .jsrun()
        .env("JSRUN_PROC_DIR", &proc)
        .arg(format!("-j{SLOTS}"))
        .args(limit.options())
        .arg("--")
        .arg(command)
        .deadline(Duration::from_secs(30))
        .spawn();
    let gate = sandbox.join("gate");
    running.wait_until("the gate job", || entries(&gate) == 1);
    let pool = pool_of(&Seen::read(&sandbox.join("seen")), running.pid());
    if let Peer::Make43 = peer {
        assert!(pool.starts_with("/proc"), "not a pipe pool: {pool:?}");
    }
    let log = sandbox.log();
    assert_eq!(
        tokens_at(&pool),
        0,
        "{peer:?}, {limit:?}: tokens in the pool while the limit is exceeded\n{}",
        log.dump()
    );
    limit.set(&proc, false);
    running.wait_until("the held-back tokens to be back in the pool", || {
        tokens_at(&pool) == SLOTS - 1
    });
    release(&gate);
    let output = running.wait();
    output.success().stderr_lacks("warning");
    check_two_phases(&log, SLOTS, &output);
}

#[test]
fn make44_held_back_by_the_load() {
    governed_tree(Peer::Make44, Limit::Load);
}

#[test]
fn make44_held_back_by_memory_available() {
    governed_tree(Peer::Make44, Limit::Memory);
}

#[test]
fn make44_held_back_by_memory_pressure() {
    governed_tree(Peer::Make44, Limit::Pressure);
}

#[test]
fn make43_held_back_by_the_load() {
    governed_tree(Peer::Make43, Limit::Load);
}

#[test]
fn make43_held_back_by_memory_available() {
    governed_tree(Peer::Make43, Limit::Memory);
}

#[test]
fn make43_held_back_by_memory_pressure() {
    governed_tree(Peer::Make43, Limit::Pressure);
}

#[test]
fn ninja_held_back_by_the_load() {
    governed_tree(Peer::Ninja, Limit::Load);
}

#[test]
fn ninja_held_back_by_memory_available() {
    governed_tree(Peer::Ninja, Limit::Memory);
}

#[test]
fn ninja_held_back_by_memory_pressure() {
    governed_tree(Peer::Ninja, Limit::Pressure);
}

/// A jobserver-crate client (`crate_client --jobs 3`, then `--jobs 4` at a barrier of 4)
/// under `jsrun -j4 LIMIT` with the limit exceeded: s1 runs in the client's implicit slot
/// and ends, and the client waits in `acquire()` for a token that does not come (s2 has
/// not started). Once the limit is met, s2 and s3 run, and the second client gets 3
/// tokens: p1..p4 run at once.
fn governed_crate_client(limit: Limit) {
    let sandbox = Sandbox::new();
    let proc = limit.proc_dir(&sandbox);
    let log = sandbox.log();
    let client = path_str(&util::example("crate_client"));
    let log_path = path_str(log.path());
    let first = shell_words(&[
        client.as_str(),
        "--jobs",
        "3",
        "--id-prefix",
        "s",
        "--sleep-ms",
        "100",
        "--log",
        &log_path,
        "--out",
        &sandbox.str("s.out"),
    ]);
    let second = shell_words(&[
        client.as_str(),
        "--jobs",
        "4",
        "--id-prefix",
        "p",
        "--log",
        &log_path,
        "--barrier",
        &sandbox.str("p"),
        "--want",
        "4",
        "--out",
        &sandbox.str("p.out"),
    ]);
    let mut running = sandbox
        .jsrun()
        .env("JSRUN_PROC_DIR", &proc)
        .arg(format!("-j{SLOTS}"))
        .args(limit.options())
        .args(["--", "sh", "-c", &format!("{first} && {second}")])
        .deadline(Duration::from_secs(30))
        .spawn();
    running.wait_until("s1 to end and the client to wait for a token", || {
        log.events().iter().any(|event| {
            !event.start
                && event.id == "s1"
                && util::blocked_in(event.pid)
                    .is_some_and(|nr| nr == libc::SYS_read || util::is_poll(nr))
        })
    });
    assert_eq!(
        log.started(),
        ["s1"],
        "{limit:?}: the client got a token while the limit was exceeded\n{}",
        log.dump()
    );
    limit.set(&proc, false);
    let output = running.wait();
    output.success().stderr_lacks("warning");
    assert_eq!(
        log.finished(),
        ids(&["s1", "s2", "s3", "p1", "p2", "p3", "p4"]),
        "{}\n{}",
        log.dump(),
        output.report()
    );
    let back = phase(&log, |id| id.starts_with('p'));
    assert_eq!(peak_of(&back), SLOTS, "{}\n{}", log.dump(), output.report());
    let report = fs::read_to_string(sandbox.join("p.out")).expect("the client's report");
    assert!(
        report.contains("tokens 3\n"),
        "{report}\n{}",
        output.report()
    );
}

#[test]
fn crate_client_held_back_by_the_load() {
    governed_crate_client(Limit::Load);
}

#[test]
fn crate_client_held_back_by_memory_available() {
    governed_crate_client(Limit::Memory);
}

#[test]
fn crate_client_held_back_by_memory_pressure() {
    governed_crate_client(Limit::Pressure);
}

// ---------------------------------------------------------------------------
// 2. Under someone else's pool

/// `jsrun -j4 LIMIT` under a test-owned fifo of tokens `abc`: while the limit is
/// exceeded jsrun's own jobs s1, s2, s3 and the gate run one at a time, each in the
/// implicit slot (the pool keeps its 3 tokens); once it is met p1, p2, p3 take the 3
/// tokens beside the gate, p4 follows the gate, all four meet; the pool gets back
/// exactly `abc`.
fn limit_under_another_pool(limit: Limit) {
    let sandbox = Sandbox::new();
    let proc = limit.proc_dir(&sandbox);
    let pool = FifoJobserver::new(&sandbox, b"abc");
    let log = sandbox.log();
    let probe = shell_words(&[path_str(&util::probe_bin())]);
    let log_path = shell_words(&[path_str(log.path())]);
    let script = format!(
        "case $1 in \
           s*) exec {probe} --log {log_path} --id $1 --sleep-ms 100 ;; \
           gate) exec {probe} --log {log_path} --id gate --barrier {} --want 2 --deadline-ms 30000 ;; \
           *) exec {probe} --log {log_path} --id $1 --barrier {} --want 4 --deadline-ms {} ;; \
         esac",
        shell_words(&[sandbox.str("gate")]),
        shell_words(&[sandbox.str("p")]),
        util::BARRIER_DEADLINE_MS
    );
    let mut running = sandbox
        .jsrun()
        .fifo_jobserver(&pool)
        .env("JSRUN_PROC_DIR", &proc)
        .arg("-j4")
        .args(limit.options())
        .args(["sh", "-c", &script, "sh", ":::"])
        .args(["s1", "s2", "s3", "gate", "p1", "p2", "p3", "p4"])
        .deadline(Duration::from_secs(30))
        .spawn();
    let gate = sandbox.join("gate");
    running.wait_until("the gate job", || entries(&gate) == 1);
    assert_eq!(
        pool.level(),
        3,
        "{limit:?}: jsrun took tokens while its jobs ran one at a time\n{}",
        log.dump()
    );
    limit.set(&proc, false);
    let p = sandbox.join("p");
    running.wait_until("p1, p2, p3 beside the gate", || entries(&p) == 3);
    assert_eq!(pool.level(), 0, "{}", log.dump());
    release(&gate);
    let output = running.wait();
    output.success().stderr_lacks("warning");
    check_two_phases(&log, 4, &output);
    assert_eq!(sorted(&pool.drain()), b"abc", "{}", output.report());
}

#[test]
fn under_another_pool_the_load_limit_keeps_own_jobs_to_one() {
    limit_under_another_pool(Limit::Load);
}

#[test]
fn under_another_pool_the_memory_limit_keeps_own_jobs_to_one() {
    limit_under_another_pool(Limit::Memory);
}

#[test]
fn under_another_pool_the_pressure_limit_keeps_own_jobs_to_one() {
    limit_under_another_pool(Limit::Pressure);
}
