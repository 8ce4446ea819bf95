//! Signal storm: seeded, bounded, randomized rounds of jsrun runs that get
//! SIGINT, SIGTERM or SIGHUP at random moments (right after the spawn,
//! before any job started, after a few jobs started, while jsrun asks a
//! `make` for its version, after jsrun ended) while the test SIGKILLs random
//! jobs. Each round picks a mode (client of a fifo or pipe pool the test
//! owns with distinct token bytes, `--jobserver=fifo:`, server `-jN` with no
//! jobserver around, or alone), `-j`, `-O`/`--tag`, `-k`, the number of jobs
//! and how long each runs.
//!
//! After each round:
//! - the pool holds exactly the bytes it held before (as a multiset);
//! - jsrun died of the signal it was sent, or exited normally when the
//!   signal came after the end, with the status its own job log implies;
//! - no job started after jsrun handled the signal (see [`Record`]);
//! - a signal queued while jsrun provably had not reached its first job
//!   (it was waiting for `make --version`) lets no job start at all;
//! - TMPDIR (the test's own) is empty again: the server's fifo directory is
//!   gone; jsrun reported no missing or extra token;
//! - no process is left in jsrun's process group.
//!
//! The seed is `JSRUN_STORM_SEED` when set, else taken from the clock; it is
//! printed, and every failing round is reported with the seed, its number
//! and its plan. All rounds of one seed have the same plans; the moments
//! signals land on are as random as the scheduler makes them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::util::{FifoJobserver, PipeJobserver, Sandbox, example, path_str, process_gone, sorted};

/// At most this many rounds ...
const MAX_ROUNDS: u64 = 60;
/// ... and no new round once the storm has taken this long (the whole test
/// stays well within a minute on two busy cores).
const BUDGET: Duration = Duration::from_secs(40);
/// How long one round (jsrun and all its jobs) may take; a round takes well
/// under a second when nothing is wrong.
const ROUND_DEADLINE: Duration = Duration::from_secs(10);

const SIGNALS: [(i32, &str); 3] = [
    (libc::SIGINT, "SIGINT"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGHUP, "SIGHUP"),
];

#[test]
fn signal_storm() {
    let seed = storm_seed();
    eprintln!("storm: seed {seed} (replay with JSRUN_STORM_SEED={seed})");
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut tally = Tally::default();
    let mut rounds = 0;
    while rounds < MAX_ROUNDS && started.elapsed() < BUDGET {
        let mut rng = Rng::new(mix(seed ^ mix(rounds + 1)));
        let plan = Plan::random(&mut rng);
        let result = panic::catch_unwind(AssertUnwindSafe(|| run_round(&plan, &mut rng)));
        match result {
            Ok(done) => tally.add(&plan, &done),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| {
                        payload
                            .downcast_ref::<&str>()
                            .map(std::string::ToString::to_string)
                    })
                    .unwrap_or_else(|| "(no message)".into());
                failures.push(format!("round {rounds}: {plan:?}\n{}", gist(&message)));
            }
        }
        rounds += 1;
    }
    eprintln!(
        "storm: seed {seed}: {rounds} rounds in {:.1} s; {}",
        started.elapsed().as_secs_f64(),
        tally.summary()
    );
    assert!(
        failures.is_empty(),
        "storm: seed {seed} (replay with JSRUN_STORM_SEED={seed}): {} of {rounds} rounds failed\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// The seed and the generator

fn storm_seed() -> u64 {
    if let Ok(text) = std::env::var("JSRUN_STORM_SEED") {
        let text = text.trim();
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        return parsed.unwrap_or_else(|_| panic!("JSRUN_STORM_SEED={text:?} is not a number"));
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    mix(nanos ^ u64::from(std::process::id()))
}

/// splitmix64's finalizer: neighbouring inputs give unrelated outputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    /// One of `items`, each with its weight.
    fn weighted<T: Copy>(&mut self, items: &[(u64, T)]) -> T {
        let total: u64 = items.iter().map(|(w, _)| w).sum();
        let mut at = self.next() % total;
        for &(weight, item) in items {
            if at < weight {
                return item;
            }
            at -= weight;
        }
        unreachable!("weights sum to {total}")
    }
}

// ---------------------------------------------------------------------------
// What a round does

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// MAKEFLAGS names the test's fifo: implicit slot plus its tokens.
    FifoClient,
    /// MAKEFLAGS names the test's pipe, its fds inherited.
    PipeClient,
    /// `--jobserver=fifo:PATH`: no implicit slot.
    JobserverOption,
    /// `-jN` and no jobserver: jsrun serves one in the test's TMPDIR.
    Server,
    /// No `-j`, no jobserver: one job at a time.
    Alone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    /// Right after the spawn, before jsrun could start anything.
    AtSpawn,
    /// After a random pause.
    AfterMicros(u64),
    /// Once this many jobs have logged their start.
    AfterStarts(usize),
    /// While jsrun waits for `make --version` (a fake make that answers
    /// only when the test lets it): before jsrun can have started a job.
    DuringVersionProbe,
    /// After jsrun has ended (a zombie, not reaped yet).
    AfterExit,
}

#[derive(Debug)]
struct Plan {
    mode: Mode,
    /// Distinct bytes in the test's pool (client modes).
    tokens: Vec<u8>,
    /// `-jN`.
    jobs: Option<usize>,
    /// `--jobserver-style=` (server).
    style: Option<&'static str>,
    /// The command is a fake `make` answering `--version` with this.
    fake_make: Option<&'static str>,
    /// `-Oline`, `-Ojob` or `--tag`.
    output: Option<&'static str>,
    keep_going: bool,
    /// How long each job sleeps (ms), one per value after `:::`; `None`: a
    /// single command, no `:::`.
    sleeps: Option<Vec<u64>>,
    signal: Option<(i32, Moment)>,
    /// Before each of these numbers of started jobs, SIGKILL a running job.
    kills: Vec<usize>,
    /// jsrun starts with SIGCHLD ignored (inherited from its parent).
    sigchld_ignored: bool,
}

impl Plan {
    fn random(rng: &mut Rng) -> Plan {
        use Mode::*;
        let mode = rng.weighted(&[
            (25, FifoClient),
            (20, PipeClient),
            (15, JobserverOption),
            (30, Server),
            (10, Alone),
        ]);
        let tokens = match mode {
            FifoClient | PipeClient => {
                let n = rng.range(0, 4) as usize;
                distinct_bytes(rng, n)
            }
            JobserverOption => {
                let n = rng.range(1, 4) as usize;
                distinct_bytes(rng, n)
            }
            Server | Alone => Vec::new(),
        };
        let jobs = match mode {
            FifoClient | PipeClient | JobserverOption => {
                rng.percent(50).then(|| rng.range(1, 5) as usize)
            }
            Server => Some(rng.range(1, 5) as usize),
            Alone => None,
        };
        let style = match mode {
            Server => rng.weighted(&[(2, None), (1, Some("fifo")), (1, Some("pipe"))]),
            _ => None,
        };
        let fake_make = match mode {
            Server if rng.percent(40) => {
                Some(rng.weighted(&[(1, "GNU Make 4.4.1"), (1, "GNU Make 4.3")]))
            }
            _ => None,
        };
        let output = rng.weighted(&[
            (3, None),
            (1, Some("-Oline")),
            (1, Some("-Ojob")),
            (1, Some("--tag")),
        ]);
        let keep_going = rng.percent(40);
        let sleeps = if rng.percent(15) {
            None
        } else {
            let n = rng.range(1, 10);
            Some((0..n).map(|_| rng.range(0, 30)).collect::<Vec<_>>())
        };
        let n = sleeps.as_ref().map_or(1, Vec::len);
        let probe_possible = fake_make.is_some() && style.is_none();
        let signal = if !rng.percent(85) {
            None
        } else {
            let signal = SIGNALS[rng.range(0, 2) as usize].0;
            let pause = rng.range(0, 20_000);
            let starts = rng.range(1, n as u64) as usize;
            let moment = rng.weighted(&[
                (15, Moment::AtSpawn),
                (20, Moment::AfterMicros(pause)),
                (35, Moment::AfterStarts(starts)),
                (
                    if probe_possible { 40 } else { 0 },
                    Moment::DuringVersionProbe,
                ),
                (10, Moment::AfterExit),
            ]);
            Some((signal, moment))
        };
        let kill_count = rng.weighted(&[(5, 0), (3, 1), (2, 2)]);
        let kills = (0..kill_count)
            .map(|_| rng.range(1, n as u64) as usize)
            .collect();
        let sigchld_ignored = rng.percent(8);
        Plan {
            mode,
            tokens,
            jobs,
            style,
            fake_make,
            output,
            keep_going,
            sleeps,
            signal,
            kills,
            sigchld_ignored,
        }
    }

    /// How many jobs the run has.
    fn job_count(&self) -> usize {
        self.sleeps.as_ref().map_or(1, Vec::len)
    }
}

fn distinct_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut pool: Vec<u8> = (b'a'..=b'z').chain(b'A'..=b'Z').collect();
    (0..n)
        .map(|_| pool.swap_remove(rng.range(0, pool.len() as u64 - 1) as usize))
        .collect()
}

fn signal_name(signal: i32) -> &'static str {
    SIGNALS
        .iter()
        .find(|(s, _)| *s == signal)
        .map_or("?", |(_, name)| name)
}

/// What happened in a round, for the summary.
#[derive(Default)]
struct Done {
    signal_sent: bool,
    died_of_signal: bool,
    kills: usize,
    jobs_started: usize,
}

#[derive(Default)]
struct Tally {
    rounds: usize,
    signals: usize,
    died: usize,
    kills: usize,
    jobs: usize,
    by_mode: BTreeMap<String, usize>,
}

impl Tally {
    fn add(&mut self, plan: &Plan, done: &Done) {
        self.rounds += 1;
        self.signals += usize::from(done.signal_sent);
        self.died += usize::from(done.died_of_signal);
        self.kills += done.kills;
        self.jobs += done.jobs_started;
        *self.by_mode.entry(format!("{:?}", plan.mode)).or_default() += 1;
    }

    fn summary(&self) -> String {
        format!(
            "{} passed: {} signals sent ({} deaths by them), {} jobs SIGKILLed, {} jobs started; {:?}",
            self.rounds, self.signals, self.died, self.kills, self.jobs, self.by_mode
        )
    }
}

// ---------------------------------------------------------------------------
// One round

/// Paths of one round.
struct Files {
    tmp: PathBuf,
    log: PathBuf,
    marker: PathBuf,
    handled: PathBuf,
    joblog: PathBuf,
    gate: PathBuf,
}

fn run_round(plan: &Plan, rng: &mut Rng) -> Done {
    let sandbox = Sandbox::new();
    let files = Files {
        tmp: sandbox.join("tmp"),
        log: sandbox.join("jobs.log"),
        marker: sandbox.join("marker"),
        handled: sandbox.join("handled"),
        joblog: sandbox.join("joblog.tsv"),
        gate: sandbox.join("gate"),
    };
    fs::create_dir(&files.tmp).unwrap();
    fs::create_dir(&files.gate).unwrap();
    let storm_job = example("storm_job");
    let program = match plan.fake_make {
        Some(_) => {
            let bin = sandbox.join("bin");
            fs::create_dir(&bin).unwrap();
            symlink(&storm_job, bin.join("make")).unwrap();
            bin.join("make")
        }
        None => storm_job.clone(),
    };
    let fifo_pool = matches!(plan.mode, Mode::FifoClient | Mode::JobserverOption)
        .then(|| FifoJobserver::new(&sandbox, &plan.tokens));
    let pipe_pool = (plan.mode == Mode::PipeClient).then(|| PipeJobserver::new(&plan.tokens));

    let mut cmd = match plan.sigchld_ignored {
        true => sandbox
            .command(&storm_job)
            .arg("--exec-ignoring-sigchld")
            .arg(crate::util::jsrun_bin()),
        false => sandbox.jsrun(),
    };
    // A place of the round's own to remember make versions in: the fake make is one
    // binary that answers as the round says, and a round that waits for the probe needs
    // jsrun to ask.
    cmd = cmd
        .env("TMPDIR", &files.tmp)
        .env("XDG_RUNTIME_DIR", sandbox.path())
        .deadline(ROUND_DEADLINE);
    cmd = match (plan.mode, &fifo_pool, &pipe_pool) {
        (Mode::FifoClient, Some(pool), _) => cmd.fifo_jobserver(pool),
        (Mode::PipeClient, _, Some(pool)) => cmd.pipe_jobserver(pool),
        (Mode::JobserverOption, Some(pool), _) => {
            cmd.arg(format!("--jobserver=fifo:{}", pool.path().display()))
        }
        _ => cmd,
    };
    if let Some(version) = plan.fake_make {
        cmd = cmd.env("STORM_MAKE_VERSION", version);
    }
    let moment = plan.signal.map(|(_, moment)| moment);
    if moment == Some(Moment::DuringVersionProbe) {
        cmd = cmd.env("STORM_VERSION_GATE", &files.gate);
    }
    if let Some(n) = plan.jobs {
        cmd = cmd.arg(format!("-j{n}"));
    }
    if let Some(style) = plan.style {
        cmd = cmd.arg(format!("--jobserver-style={style}"));
    }
    if plan.keep_going {
        cmd = cmd.arg("-k");
    }
    if let Some(output) = plan.output {
        cmd = cmd.arg(output);
    }
    cmd = cmd
        .arg("--joblog")
        .arg(&files.joblog)
        .arg(&program)
        .arg("--log")
        .arg(&files.log)
        .arg("--marker")
        .arg(&files.marker)
        .arg("--handled")
        .arg(&files.handled);
    cmd = match &plan.sleeps {
        Some(sleeps) => cmd
            .args(["--id", "{#}", "--sleep-ms", "{}", ":::"])
            .args(sleeps.iter().map(u64::to_string)),
        None => cmd.args(["--id", "1", "--sleep-ms", "5"]),
    };

    if moment == Some(Moment::AtSpawn) {
        fs::write(&files.marker, b"").unwrap();
    }
    let running = cmd.spawn();
    let pid = running.pid();
    let until = Instant::now() + ROUND_DEADLINE;
    let mut sent = None;
    let mut queued_before_any_job = false;
    let mut kills = 0;

    // Signals at a moment of their own.
    match plan.signal {
        Some((signal, Moment::AtSpawn)) => {
            running.signal(signal);
            sent = Some(signal);
            let state = wait_until_handled(pid, signal, until);
            fs::write(&files.handled, state).unwrap();
        }
        Some((signal, Moment::AfterMicros(us))) => {
            // The pause only picks the moment; nothing waits on it.
            thread::sleep(Duration::from_micros(us));
            fs::write(&files.marker, b"").unwrap();
            running.signal(signal);
            sent = Some(signal);
            let state = wait_until_handled(pid, signal, until);
            fs::write(&files.handled, state).unwrap();
        }
        Some((signal, Moment::DuringVersionProbe)) => {
            let asked = files.gate.join("asked");
            wait_for("jsrun to ask make for its version", until, || {
                asked.exists() || process_gone(pid as u32)
            });
            fs::write(&files.marker, b"").unwrap();
            running.signal(signal);
            sent = Some(signal);
            if asked.exists() {
                wait_for("the signal to be queued in jsrun", until, || {
                    process_gone(pid as u32)
                        || signal_state(pid).is_some_and(|(blocked, pending)| {
                            blocked & bit(signal) != 0 && pending & bit(signal) != 0
                        })
                });
                queued_before_any_job = !process_gone(pid as u32);
            }
            fs::write(files.gate.join("release"), b"").unwrap();
            let state = wait_until_handled(pid, signal, until);
            fs::write(&files.handled, state).unwrap();
        }
        _ => {}
    }

    // Kills, and a signal after a number of starts, in the order of their
    // thresholds. jsrun may end first (after a failure without -k).
    let mut steps: Vec<(usize, Option<i32>)> = plan.kills.iter().map(|&k| (k, None)).collect();
    if let Some((signal, Moment::AfterStarts(k))) = plan.signal {
        steps.push((k, Some(signal)));
    }
    steps.sort();
    for (threshold, signal) in steps {
        wait_for("jobs to start", until, || {
            started(&read_jobs(&files.log)) >= threshold || process_gone(pid as u32)
        });
        if process_gone(pid as u32) {
            break;
        }
        match signal {
            None => {
                let alive: Vec<u32> = read_jobs(&files.log)
                    .values()
                    .filter(|job| job.pid != 0 && !job.ended && job.signals.is_empty())
                    .map(|job| job.pid)
                    .collect();
                if !alive.is_empty() {
                    let victim = alive[rng.range(0, alive.len() as u64 - 1) as usize];
                    kills += usize::from(kill_job(victim, pid));
                }
            }
            Some(signal) => {
                fs::write(&files.marker, b"").unwrap();
                running.signal(signal);
                sent = Some(signal);
                let state = wait_until_handled(pid, signal, until);
                fs::write(&files.handled, state).unwrap();
            }
        }
    }

    if let Some((signal, Moment::AfterExit)) = plan.signal {
        wait_for("jsrun to end", until, || process_gone(pid as u32));
        running.signal(signal);
        sent = Some(signal);
    }

    let output = running.wait();
    let report = format!(
        "{}\n--- jobs log ---\n{}--- job log ---\n{}",
        output.report(),
        fs::read_to_string(&files.log).unwrap_or_default(),
        fs::read_to_string(&files.joblog).unwrap_or_default()
    );
    let jobs = read_jobs(&files.log);
    let rows = read_joblog(&files.joblog);
    let died_of = output.status.signal();

    // How jsrun ended.
    match (sent, died_of) {
        (Some(signal), Some(died)) => assert_eq!(
            died,
            signal,
            "jsrun died of {died}, not of the {} it was sent\n{report}",
            signal_name(signal)
        ),
        (None, Some(died)) => panic!("jsrun died of signal {died}, none was sent\n{report}"),
        (_, None) => {
            if let Some(signal) = sent {
                assert!(
                    moment != Some(Moment::DuringVersionProbe) && !queued_before_any_job,
                    "jsrun exited normally though {} was queued before its first job\n{report}",
                    signal_name(signal)
                );
            }
            let want = rows
                .iter()
                .find(|row| row.signal != 0 || row.exit != 0)
                .map_or(0, |row| match row.signal {
                    0 => row.exit,
                    signal => 128 + signal,
                });
            assert_eq!(
                output.status.code(),
                Some(want),
                "jsrun's status is not the first failure of its job log\n{report}"
            );
            let failed = rows.iter().any(|row| row.signal != 0 || row.exit != 0);
            if !failed || plan.keep_going {
                assert_eq!(
                    rows.len(),
                    plan.job_count(),
                    "jsrun exited normally without running every job\n{report}"
                );
            }
        }
    }
    if sent.is_some() && died_of.is_some() && moment == Some(Moment::AfterExit) {
        panic!("jsrun died of a signal sent after it had ended\n{report}");
    }

    // What the jobs saw and got.
    for (id, job) in &jobs {
        assert!(!job.timed_out, "job {id} waited 30 s in vain\n{report}");
        for &got in &job.signals {
            assert!(
                Some(got) == sent && died_of == sent,
                "job {id} got signal {got}; jsrun was sent {sent:?} and died of {died_of:?}\n{report}"
            );
        }
        if let Some(signal) = sent {
            assert!(
                !(job.saw_marker && job.ended && job.signals.is_empty()),
                "job {id} (pid {}) started after jsrun had handled {}: it saw the marker \
                 created before the signal, yet ended without getting the forwarded signal\n{report}",
                job.pid,
                signal_name(signal)
            );
        }
    }
    if queued_before_any_job {
        assert!(
            rows.is_empty(),
            "{} was queued in jsrun while it waited for `make --version`, before any job \
             could start, yet jsrun started {} job(s)\n{report}",
            signal_name(sent.unwrap_or_default()),
            rows.len()
        );
    }
    for row in &rows {
        let allowed = row.signal == 0 || row.signal == libc::SIGKILL || Some(row.signal) == died_of;
        assert!(
            allowed,
            "job {} died of signal {}\n{report}",
            row.seq, row.signal
        );
        assert!(
            row.signal != 0 || row.exit == 0,
            "job {} exited with {}\n{report}",
            row.seq,
            row.exit
        );
    }
    assert!(
        jobs.len() <= rows.len(),
        "{} jobs left lines in the storm log, jsrun's job log has {} rows\n{report}",
        jobs.len(),
        rows.len()
    );

    // Tokens, files, processes.
    if let Some(pool) = &fifo_pool {
        assert_eq!(
            sorted(&pool.drain()),
            sorted(&plan.tokens),
            "the fifo pool's bytes\n{report}"
        );
    }
    if let Some(pool) = &pipe_pool {
        assert_eq!(
            sorted(&pool.drain()),
            sorted(&plan.tokens),
            "the pipe pool's bytes\n{report}"
        );
    }
    let left: Vec<String> = fs::read_dir(&files.tmp)
        .unwrap()
        .map(|entry| path_str(&entry.unwrap().path()))
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}\n{report}");
    if plan.mode == Mode::Server {
        for job in jobs.values() {
            if let Some(fifo) = job.auth.strip_prefix("fifo:") {
                let fifo = Path::new(fifo);
                assert_eq!(
                    fifo.parent().and_then(Path::parent),
                    Some(files.tmp.as_path()),
                    "the server's fifo is not in TMPDIR\n{report}"
                );
            }
        }
        assert!(
            !output.stderr.contains("jobserver tokens"),
            "jsrun miscounted its tokens\n{report}"
        );
    }
    for line in output.stderr.lines() {
        assert!(
            !line.contains("panicked") && !line.starts_with("jsrun: error"),
            "{line}\n{report}"
        );
    }
    assert!(
        process_group_is_empty(pid),
        "processes left in jsrun's group\n{report}"
    );

    Done {
        signal_sent: sent.is_some(),
        died_of_signal: died_of.is_some(),
        kills,
        jobs_started: started(&jobs),
    }
}

/// Jobs that logged their start.
fn started(jobs: &BTreeMap<String, Record>) -> usize {
    jobs.values().filter(|job| job.pid != 0).count()
}

// ---------------------------------------------------------------------------
// Observing jsrun

fn bit(signal: i32) -> u64 {
    1 << (signal - 1)
}

/// jsrun's blocked mask and its pending signals (thread and process).
fn signal_state(pid: i32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| u64::from_str_radix(value.trim(), 16).ok())
    };
    Some((field("SigBlk:")?, field("SigPnd:")? | field("ShdPnd:")?))
}

/// Waits until jsrun has handled `signal`: it is gone, or the signal, which
/// it blocks, is no longer pending (jsrun read it from its signalfd) and
/// after that jsrun sleeps in poll() again, which it does only once it has
/// passed the signal on to every running job. Returns what it saw, for the
/// `handled` file.
fn wait_until_handled(pid: i32, signal: i32, until: Instant) -> &'static str {
    loop {
        if process_gone(pid as u32) {
            return "jsrun ended\n";
        }
        let taken = signal_state(pid).is_some_and(|(blocked, pending)| {
            blocked & bit(signal) != 0 && pending & bit(signal) == 0
        });
        if taken && crate::util::sleeps_in_poll(pid) {
            return "jsrun took the signal and sleeps in poll\n";
        }
        assert!(
            Instant::now() < until,
            "jsrun neither ended nor took {} off its queue and went back to poll()",
            signal_name(signal)
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[track_caller]
fn wait_for(what: &str, until: Instant, mut condition: impl FnMut() -> bool) {
    while !condition() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILLs job `pid` if it is still a child of `parent`, through a pidfd,
/// so that a pid the system has reused for another process is never hit.
fn kill_job(pid: u32, parent: i32) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd names the process that had `pid` when it was opened; if that
    // process is still alive after this check, the check was about it.
    if parent_of(pid) != Some(parent) {
        return false;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal reads no memory when info is null.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

/// The parent of a live (not zombie) process.
fn parent_of(pid: u32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state.starts_with(['Z', 'X']) {
        return None;
    }
    fields.next()?.parse().ok()
}

/// Whether no process is left in process group `pgid` (jsrun's: the test
/// starts it as a group leader, its jobs stay in the group).
fn process_group_is_empty(pgid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the group exists.
    let rc = unsafe { libc::kill(-pgid, 0) };
    rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

// ---------------------------------------------------------------------------
// What the jobs and jsrun wrote down

/// One job, from its lines in the storm log (see examples/storm_job.rs).
/// The check on it: a job that saw the marker (created just before the
/// signal was sent) and then ended normally without receiving the signal was
/// not running when jsrun passed the signal on. A job that saw the marker
/// waits until the test knows jsrun has handled the signal, so if it had
/// been running then, the forwarded signal would have reached it first: it
/// was started after jsrun handled the signal.
#[derive(Debug, Default)]
struct Record {
    /// 0 until the start line: a job can get a signal before it logs that.
    pid: u32,
    saw_marker: bool,
    auth: String,
    signals: Vec<i32>,
    ended: bool,
    timed_out: bool,
}

fn read_jobs(log: &Path) -> BTreeMap<String, Record> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut jobs: BTreeMap<String, Record> = BTreeMap::new();
    for line in text.lines() {
        let number = |word: &str| -> i64 {
            word.parse()
                .unwrap_or_else(|_| panic!("bad line {line:?} in {}\n{text}", log.display()))
        };
        match line.split(' ').collect::<Vec<_>>().as_slice() {
            ["start", id, pid, saw, auth] => {
                let job = jobs.entry(id.to_string()).or_default();
                job.pid = number(pid) as u32;
                job.saw_marker = *saw == "1";
                job.auth = auth.to_string();
            }
            ["sig", id, _, signal] => {
                let job = jobs.entry(id.to_string()).or_default();
                job.signals.push(number(signal) as i32);
            }
            ["end", id, _] => jobs.entry(id.to_string()).or_default().ended = true,
            ["timeout", id, _] => jobs.entry(id.to_string()).or_default().timed_out = true,
            _ => panic!("bad line {line:?} in {}\n{text}", log.display()),
        }
    }
    jobs
}

/// A row of jsrun's `--joblog`.
#[derive(Debug)]
struct Row {
    seq: u64,
    exit: i32,
    signal: i32,
}

fn read_joblog(path: &Path) -> Vec<Row> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let field = |i: usize| -> i64 {
                fields
                    .get(i)
                    .and_then(|f| f.trim().parse().ok())
                    .unwrap_or_else(|| panic!("bad job log row {line:?}\n{text}"))
            };
            Row {
                seq: field(0) as u64,
                exit: field(4) as i32,
                signal: field(5) as i32,
            }
        })
        .collect()
}

/// The first line of a round's failure and the command it ran; the whole
/// message (output, both logs) is printed where the round failed.
fn gist(message: &str) -> String {
    let mut out = String::new();
    for line in message.lines() {
        if out.is_empty() || line.starts_with("command: ") {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}
