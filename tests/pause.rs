//! The memory guard (governor contract section 8): in a pool of jsrun's own with a memory
//! limit, running jobs are paused (SIGSTOP to the whole tree) youngest first while memory
//! keeps running short, and resumed oldest first as it comes back; never every job; nothing
//! left paused at the end or after SIGTERM; no deadlock when the running job waits for a
//! paused one; `--no-pause` turns it off.
//!
//! Memory is a `JSRUN_PROC_DIR` meminfo the test rewrites: it "falls" when the test writes
//! ever smaller figures, and comes back when it writes a large one. The jobs are
//! `examples/grow` (a little CPU work every 50 ms, so the running ones make progress), and
//! the test sees a job paused in its `/proc/PID/stat` (state `T`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::{Running, Sandbox, example, path_str, shell_words};

/// The limit every test sets, and the memory available while nothing is short.
const MIN: &str = "--min-memory-avail=1G";
const PLENTY_MIB: u64 = 8192;

/// A `JSRUN_PROC_DIR` whose MemAvailable the test sets.
struct Memory {
    dir: PathBuf,
    /// The figure last written, MiB, and when.
    now: u64,
    written: Instant,
}

impl Memory {
    fn new(sandbox: &Sandbox) -> Memory {
        let dir = sandbox.join("proc");
        fs::create_dir_all(&dir).expect("create the proc directory");
        let mut memory = Memory {
            dir,
            now: 0,
            written: Instant::now(),
        };
        memory.set(PLENTY_MIB);
        memory
    }

    /// Writes MemAvailable (a new file renamed over the old one: never read half-written).
    fn set(&mut self, mib: u64) {
        let kb = mib * 1024;
        let text = format!(
            "MemTotal:       16777216 kB\nMemFree:        {kb} kB\nMemAvailable:   {kb} kB\n"
        );
        let partial = self.dir.join("meminfo.partial");
        fs::write(&partial, text).expect("write meminfo");
        fs::rename(&partial, self.dir.join("meminfo")).expect("rename meminfo");
        self.now = mib;
        self.written = Instant::now();
    }

    /// Memory keeps running short: 8 MiB less every 25 ms, from 1000 MiB (below the 1 GiB
    /// limit), down to 16 MiB. Called from a wait loop.
    fn fall(&mut self) {
        if self.now > 1000 {
            self.set(1000);
        } else if self.written.elapsed() >= Duration::from_millis(25) {
            self.set(self.now.saturating_sub(8).max(16));
        }
    }
}

/// The state letter of `/proc/PID/stat`, `None` once the process is gone (or a zombie).
fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
    (state != 'Z').then_some(state)
}

/// `/proc/PID/oom_score_adj`.
fn oom_score_adj(pid: i32) -> i32 {
    fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("oom_score_adj")
}

fn paused(pid: i32) -> bool {
    state(pid) == Some('T')
}

/// The children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// `pid` and every process below it.
fn tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children(all[i]));
        i += 1;
    }
    all
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The `grow` process below `root` whose command line names `marker`.
fn find(root: i32, marker: &str) -> Option<i32> {
    let grow = path_str(&example("grow"));
    tree(root).into_iter().skip(1).find(|&p| {
        let line = cmdline(p);
        line.starts_with(&grow) && line.contains(marker)
    })
}

/// The `grow` command line of job `id`: it holds until `release-ID` exists.
fn grow(sandbox: &Sandbox, id: &str, extra: &[String]) -> String {
    let mut words = vec![
        path_str(&example("grow")),
        "--id".into(),
        id.into(),
        "--log".into(),
        sandbox.str("log"),
        "--until".into(),
        sandbox.str(format!("release-{id}")),
    ];
    words.extend_from_slice(extra);
    shell_words(&words)
}

fn release(sandbox: &Sandbox, id: &str) {
    fs::write(sandbox.join(format!("release-{id}")), b"").expect("write a release file");
}

/// `jsrun -v --stats -jN MIN OPTIONS` reading the job lines from stdin, with the memory
/// of `memory`.
fn start(
    sandbox: &Sandbox,
    memory: &Memory,
    slots: usize,
    options: &[&str],
    jobs: &[String],
) -> Running {
    let script = sandbox.write("jobs", jobs.join("\n") + "\n");
    sandbox
        .jsrun()
        .env("JSRUN_PROC_DIR", &memory.dir)
        .args(["-v", "--stats", &format!("-j{slots}"), MIN])
        .args(options)
        .arg("::::")
        .arg(script)
        .deadline(Duration::from_secs(40))
        .spawn()
}

/// Waits until the jobs named `ids` run below jsrun; their pids.
fn pids(running: &mut Running, ids: &[&str]) -> Vec<i32> {
    let jsrun = running.pid();
    let mut found = Vec::new();
    running.wait_until("every job to start", || {
        found = ids
            .iter()
            .filter_map(|id| find(jsrun, &format!("release-{id}")))
            .collect();
        found.len() == ids.len()
    });
    found
}

/// `start` with one plain `grow` job per id, once all of them run: their pids.
fn start_grow(
    sandbox: &Sandbox,
    memory: &Memory,
    ids: &[&str],
    options: &[&str],
) -> (Running, Vec<i32>) {
    let jobs: Vec<String> = ids.iter().map(|id| grow(sandbox, id, &[])).collect();
    let mut running = start(sandbox, memory, ids.len(), options, &jobs);
    let pids = pids(&mut running, ids);
    (running, pids)
}

/// Lets memory fall until `pid` is paused.
fn fall_until_paused(running: &mut Running, memory: &mut Memory, what: &str, pid: i32) {
    running.wait_until(what, || {
        memory.fall();
        paused(pid)
    });
}

fn release_all(sandbox: &Sandbox, ids: &[&str]) {
    for id in ids {
        release(sandbox, id);
    }
}

/// The lines of `stderr` that contain `what`, in order.
fn lines_with<'a>(stderr: &'a str, what: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.contains(what)).collect()
}

#[test]
fn the_youngest_are_paused_first_one_always_runs_and_the_oldest_resumes_first() {
    let sandbox = Sandbox::new();
    let mut memory = Memory::new(&sandbox);
    let trace = sandbox.join("trace.json");
    let options = ["--trace", trace.to_str().unwrap()];
    let (mut running, p) = start_grow(&sandbox, &memory, &["1", "2", "3"], &options);
    running.wait_until("jobs 3 and 2 to be paused", || {
        memory.fall();
        assert!(!paused(p[0]), "job 1, the last running, was paused");
        paused(p[1]) && paused(p[2])
    });
    // Memory keeps falling a while longer: job 1 runs on.
    let until = Instant::now() + Duration::from_millis(500);
    running.wait_until("memory to fall on", || {
        memory.fall();
        Instant::now() >= until
    });
    assert!(!paused(p[0]), "job 1, the last running, was paused");
    memory.set(PLENTY_MIB);
    running.wait_until("both to be resumed", || !paused(p[1]) && !paused(p[2]));
    release_all(&sandbox, &["1", "2", "3"]);
    let output = running.wait();
    output.success();
    let stderr = &output.stderr;
    let pauses = lines_with(stderr, "jsrun: paused job");
    let resumes = lines_with(stderr, "jsrun: resumed job");
    assert_eq!(pauses.len(), 2, "{stderr}");
    assert!(pauses[0].starts_with("jsrun: paused job 3 ("), "{stderr}");
    assert!(pauses[1].starts_with("jsrun: paused job 2 ("), "{stderr}");
    assert!(
        pauses[0].contains(" available, below 1024M"),
        "the -v line names the figures: {stderr}"
    );
    assert!(
        pauses[0].contains("release-3"),
        "the -v line names the command: {stderr}"
    );
    assert_eq!(resumes.len(), 2, "{stderr}");
    assert!(resumes[0].starts_with("jsrun: resumed job 2 ("), "{stderr}");
    assert!(resumes[1].starts_with("jsrun: resumed job 3 ("), "{stderr}");
    let pool = lines_with(stderr, "jsrun: pool:");
    assert!(
        pool.len() == 1 && pool[0].contains(", paused up to 2 jobs for "),
        "{stderr}"
    );
    // The trace's counter track follows every change: 1, 2, 1, 0.
    let text = fs::read_to_string(&trace).expect("the trace");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the trace is JSON");
    let track: Vec<u64> = json["traceEvents"]
        .as_array()
        .expect("traceEvents")
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"] == "jobs paused")
        .filter_map(|e| e["args"].as_object()?.values().next()?.as_u64())
        .collect();
    assert_eq!(track, [1, 2, 1, 0], "{text}");
}

#[test]
fn the_last_running_job_ending_resumes_a_paused_one_even_while_short() {
    let sandbox = Sandbox::new();
    let mut memory = Memory::new(&sandbox);
    let (mut running, p) = start_grow(&sandbox, &memory, &["1", "2"], &[]);
    // The OOM killer takes a job before jsrun: jsrun's children (the jobs' shells) are
    // raised at once. (What a shell forks in the same moment may miss the raise.)
    let jsrun = oom_score_adj(running.pid());
    let shells = children(running.pid());
    assert_eq!(shells.len(), 2);
    assert!(shells.iter().all(|&pid| oom_score_adj(pid) > jsrun));
    fall_until_paused(&mut running, &mut memory, "job 2 to be paused", p[1]);
    assert!(!paused(p[0]));
    // Memory stays short; job 1 ends.
    release(&sandbox, "1");
    running.wait_until("job 2 to be resumed", || !paused(p[1]));
    release(&sandbox, "2");
    let output = running.wait();
    output
        .success()
        .stderr_contains("jsrun: resumed job 2 (")
        .stderr_lacks("missing");
}

/// SIGTERM while job 3 is paused: jsrun resumes it before it passes the signal on, so
/// it ends at once, while job 1 (which ignores SIGTERM) still runs; then job 1 ends, and
/// jsrun dies of SIGTERM with no process left and no token missing.
#[test]
fn sigterm_while_a_job_is_paused_ends_every_process_and_loses_no_token() {
    let sandbox = Sandbox::new();
    let mut memory = Memory::new(&sandbox);
    // `exec`: jsrun's child is grow itself, which the SIGTERM jsrun passes on reaches.
    let jobs: Vec<String> = ["1", "2", "3"]
        .iter()
        .map(|id| {
            let ignore = if *id == "1" { "trap '' TERM; " } else { "" };
            format!("{ignore}exec {}", grow(&sandbox, id, &[]))
        })
        .collect();
    let mut running = start(&sandbox, &memory, 3, &[], &jobs);
    let p = pids(&mut running, &["1", "2", "3"]);
    fall_until_paused(&mut running, &mut memory, "job 3 to be paused", p[2]);
    running.signal(libc::SIGTERM);
    running.wait_until("jobs 2 and 3 to end while job 1 runs on", || {
        assert!(state(p[0]).is_some(), "job 1 ended");
        state(p[1]).is_none() && state(p[2]).is_none()
    });
    release(&sandbox, "1");
    let output = running.wait();
    output.killed_by(libc::SIGTERM).stderr_lacks("missing");
    for pid in p {
        assert_eq!(
            state(pid),
            None,
            "job process {pid} is left: {}",
            output.report()
        );
    }
    assert!(
        output.stderr.contains("jsrun: resumed job 3 ("),
        "{}",
        output.report()
    );
}

/// Job 2, the younger, holds a lock; job 1 will need it once `go` exists. Memory runs
/// short: job 2 is paused. Then job 1 waits for the lock, makes no progress, and the guard
/// resumes job 2, which can then finish and let job 1 have the lock.
#[test]
fn a_paused_job_holding_a_lock_the_running_one_needs_is_resumed() {
    let sandbox = Sandbox::new();
    let mut memory = Memory::new(&sandbox);
    let lock = sandbox.str("lock");
    let go = sandbox.str("go");
    let job1 = grow(
        &sandbox,
        "1",
        &["--lock".into(), lock.clone(), "--after".into(), go.clone()],
    );
    // Job 2 takes the lock at once, then holds it until released.
    let job2 = grow(&sandbox, "2", &["--lock".into(), lock]);
    let mut running = start(&sandbox, &memory, 2, &[], &[job1, job2]);
    let p = pids(&mut running, &["1", "2"]);
    let log = sandbox.log();
    running.wait_until("job 2 to hold the lock", || {
        log.text().contains("locked 2 ")
    });
    fall_until_paused(&mut running, &mut memory, "job 2 to be paused", p[1]);
    fs::write(&go, b"").expect("write go");
    release(&sandbox, "2");
    running.wait_until("job 2 to be resumed, and job 1 to take the lock", || {
        log.text().contains("locked 1 ")
    });
    release(&sandbox, "1");
    let output = running.wait();
    output
        .success()
        .stderr_contains("jsrun: resumed job 2 (")
        .stderr_contains("no progress");
}

#[test]
fn no_pause_only_holds_back() {
    let sandbox = Sandbox::new();
    let mut memory = Memory::new(&sandbox);
    let (mut running, p) = start_grow(&sandbox, &memory, &["1", "2", "3"], &["--no-pause"]);
    // Memory falls for longer than it takes to pause two jobs otherwise.
    let until = Instant::now() + Duration::from_millis(1500);
    running.wait_until("memory to fall", || {
        memory.fall();
        assert!(p.iter().all(|&pid| !paused(pid)), "a job was paused");
        Instant::now() >= until
    });
    release_all(&sandbox, &["1", "2", "3"]);
    let output = running.wait();
    output
        .success()
        .stderr_contains("jsrun: holding back")
        .stderr_lacks("paused");
}

/// A makefile of three recipes that each run `grow`, under `jsrun -j3 MIN -- MAKE`: the
/// recipes are paused as whole trees, youngest first; make itself never.
/// A makefile whose target `all` needs one target per id, each running `grow` (through a
/// shell: the job is the tree of both) with `extra`; `jsrun -v --stats -jN MIN OPTIONS --
/// MAKE` started on it.
fn start_make(
    sandbox: &Sandbox,
    memory: &Memory,
    make: &Path,
    ids: &[&str],
    extra: &[String],
    options: &[&str],
) -> Running {
    let mut makefile = format!("all: {}\n", ids.join(" "));
    for id in ids {
        let line = grow(sandbox, id, extra);
        makefile += &format!("{id}:\n\t{line} && true\n");
    }
    sandbox.write("Makefile", makefile);
    sandbox
        .jsrun()
        .env("JSRUN_PROC_DIR", &memory.dir)
        .args(["-v", "--stats", &format!("-j{}", ids.len()), MIN])
        .args(options)
        .arg("--")
        .arg(make)
        .deadline(Duration::from_secs(40))
        .spawn()
}

fn recipes_are_paused_as_trees_and_make_never(make: &Path) {
    let sandbox = Sandbox::new();
    let mut memory = Memory::new(&sandbox);
    let mut running = start_make(&sandbox, &memory, make, &["a", "b", "c"], &[], &[]);
    let jsrun = running.pid();
    let p = pids(&mut running, &["a", "b", "c"]);
    let make_pid = children(jsrun)[0];
    running.wait_until("recipe c to be paused", || {
        memory.fall();
        paused(p[2])
    });
    // The whole recipe: the shell and grow below it.
    let shell = fs::read_to_string(format!("/proc/{}/stat", p[2]))
        .ok()
        .and_then(|s| {
            s[s.rfind(')').unwrap() + 2..]
                .split(' ')
                .nth(1)?
                .parse::<i32>()
                .ok()
        })
        .expect("grow's parent");
    if shell != make_pid {
        assert!(paused(shell), "the recipe's shell runs on");
    }
    assert!(!paused(make_pid), "make was paused");
    assert!(!paused(p[0]), "recipe a, the oldest, was paused");
    memory.set(PLENTY_MIB);
    running.wait_until("recipe c to be resumed", || !paused(p[2]) && !paused(p[1]));
    release_all(&sandbox, &["a", "b", "c"]);
    let output = running.wait();
    output.success().stderr_lacks("warning");
    let pauses = lines_with(&output.stderr, "jsrun: paused job");
    assert!(
        pauses.first().is_some_and(|l| l.contains("release-c")),
        "{}",
        output.stderr
    );
    assert!(
        pauses.iter().all(|l| !l.contains("release-a")),
        "{}",
        output.stderr
    );
}

/// make 4.4.1 -j3 of a, b, c, d: c is paused; then a ends and make starts d beside it,
/// with the token a gave back (jsrun's hold cannot win that race) or its implicit slot.
/// Memory is back above the minimum but without room for c to resume, and not falling, so
/// only the rule that paused jobs are the youngest pauses d, at once; when memory comes
/// back, c resumes before d.
#[test]
fn a_recipe_started_beside_a_paused_one_is_paused_at_once() {
    let sandbox = Sandbox::new();
    let mut memory = Memory::new(&sandbox);
    let ids = ["a", "b", "c", "d"];
    let mut makefile = format!("all: {}\n", ids.join(" "));
    for id in ids {
        makefile += &format!("{id}:\n\t{}\n", grow(&sandbox, id, &[]));
    }
    sandbox.write("Makefile", makefile);
    let mut running = sandbox
        .jsrun()
        .env("JSRUN_PROC_DIR", &memory.dir)
        .args(["-v", "--stats", "-j3", MIN, "--"])
        .arg(crate::util::make44())
        .deadline(Duration::from_secs(40))
        .spawn();
    let p = pids(&mut running, &["a", "b", "c"]);
    fall_until_paused(&mut running, &mut memory, "recipe c to be paused", p[2]);
    // 76 MiB above the minimum: not short, so nothing else is paused; too little room for
    // c to resume (a quarter of the minimum at least).
    memory.set(1100);
    release(&sandbox, "a");
    let d = pids(&mut running, &["d"])[0];
    running.wait_until("recipe d to be paused", || paused(d));
    assert!(paused(p[2]), "recipe c was resumed without room for it");
    assert!(!paused(p[1]), "recipe b, the last running, was paused");
    memory.set(PLENTY_MIB);
    running.wait_until("c and d to be resumed", || !paused(p[2]) && !paused(d));
    release_all(&sandbox, &["b", "c", "d"]);
    let output = running.wait();
    output.success().stderr_lacks("warning");
    let order: Vec<&str> = output
        .stderr
        .lines()
        .filter(|l| l.starts_with("jsrun: resumed job"))
        .collect();
    assert!(
        order.len() == 2 && order[0].contains("release-c") && order[1].contains("release-d"),
        "c resumes first, then d:\n{}",
        output.stderr
    );
}

#[test]
fn make44_recipes_are_paused_as_trees_and_make_never() {
    recipes_are_paused_as_trees_and_make_never(&crate::util::make44());
}

#[test]
fn make43_recipes_are_paused_as_trees_and_make_never() {
    recipes_are_paused_as_trees_and_make_never(&crate::util::make43());
}

/// Memory just below the limit but steady (a fall of 2 MiB, within the noise): held back,
/// nothing paused, since pausing frees nothing; the pool line says so.
#[test]
fn memory_that_is_short_but_steady_pauses_nothing() {
    let sandbox = Sandbox::new();
    let mut memory = Memory::new(&sandbox);
    let (mut running, p) = start_grow(&sandbox, &memory, &["1", "2"], &[]);
    // Just above the limit, for long enough that the fall from 8 GiB is out of the trend
    // jsrun takes (0.5 s) whatever its looks' timing.
    memory.set(1025);
    let until = Instant::now() + Duration::from_secs(2);
    running.wait_until("2 s above the limit", || Instant::now() >= until);
    memory.set(1023);
    let stderr = running.stderr_path();
    running.wait_until("jsrun to hold back", || {
        fs::read_to_string(&stderr).is_ok_and(|s| s.contains("holding back"))
    });
    let until = Instant::now() + Duration::from_millis(1000);
    running.wait_until("a second of steady shortage", || {
        assert!(p.iter().all(|&pid| !paused(pid)), "a job was paused");
        Instant::now() >= until
    });
    release_all(&sandbox, &["1", "2"]);
    let output = running.wait();
    output
        .success()
        .stderr_contains(", nothing paused")
        .stderr_lacks("jsrun: paused");
}

/// The spans of jobs in a trace: (start µs, name), by start.
fn job_spans(trace: &Path) -> Vec<(u64, String)> {
    let text = fs::read_to_string(trace).expect("the trace");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the trace is JSON");
    let mut spans: Vec<(u64, String)> = json["traceEvents"]
        .as_array()
        .expect("traceEvents")
        .iter()
        .filter(|e| e["ph"] == "X" && e["args"]["seq"].is_u64())
        .map(|e| {
            let ts = e["ts"].as_u64().expect("ts");
            (ts, e["name"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    spans.sort();
    spans
}

/// 476 MiB above a limit of 1 GiB, 4 slots: the room holds less than one limit's worth of
/// memory per slot, so starts are paced: by jsrun's own clock (the trace), each job started
/// at least 150 ms after the one before, though all 4 were ready at once.
#[test]
fn the_first_wave_is_paced_when_the_room_is_tight() {
    let sandbox = Sandbox::new();
    let mut memory = Memory::new(&sandbox);
    memory.set(1500);
    let trace = sandbox.join("trace.json");
    let options = ["--trace", trace.to_str().unwrap()];
    let ids = ["1", "2", "3", "4"];
    let (running, _) = start_grow(&sandbox, &memory, &ids, &options);
    release_all(&sandbox, &ids);
    running.wait().success();
    let spans = job_spans(&trace);
    assert_eq!(spans.len(), 4, "{spans:?}");
    for pair in spans.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= 150_000, "started {gap} µs apart: {spans:?}");
    }
}

/// A cgroup v1 memory cgroup the test makes below its own, removed at the end.
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// `/sys/fs/cgroup/memory/<own>/jsrun-test-PID-N` with `limit` bytes (and as much with
    /// swap); why not, where the machine cannot.
    fn v1(limit: u64) -> Result<MemoryCgroup, String> {
        let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let path = own
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then_some(path)
            })
            .ok_or("no cgroup v1 memory controller")?;
        let top = Path::new("/sys/fs/cgroup/memory");
        let parent = top.join(path.trim_start_matches('/'));
        if !parent.join("memory.limit_in_bytes").exists() {
            return Err(format!("{} is not a memory cgroup here", parent.display()));
        }
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("jsrun-test-{}-{n}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cgroup = MemoryCgroup { dir };
        let write = |file: &str| {
            let path = cgroup.dir.join(file);
            match path.exists() {
                true => fs::write(&path, limit.to_string())
                    .map_err(|e| format!("cannot write {}: {e}", path.display())),
                false => Ok(()),
            }
        };
        write("memory.limit_in_bytes")?;
        write("memory.memsw.limit_in_bytes")?;
        Ok(cgroup)
    }

    fn oom_kills(&self) -> u64 {
        fs::read_to_string(self.dir.join("memory.oom_control"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once every process in it has ended.
        let _ = fs::remove_dir(&self.dir);
    }
}

/// In a 256 MiB cgroup, job 2 takes 100 MiB at once and holds it for 3 s; job 1, 300 ms
/// later, takes 200 MiB. However the guard acts (it can pause only job 2, the younger,
/// which keeps its 100 MiB), the two do not fit, and the kernel finds nothing to reclaim
/// for 2.7 s: the OOM killer kills one (never jsrun), and it runs again, alone, and
/// succeeds.
#[test]
fn a_job_the_oom_killer_killed_runs_again_alone() {
    let cgroup = match MemoryCgroup::v1(256 * 1024 * 1024) {
        Ok(cgroup) => cgroup,
        Err(why) => {
            crate::util::machine_cannot(
                "pause::a_job_the_oom_killer_killed_runs_again_alone",
                &why,
            );
            return;
        }
    };
    let sandbox = Sandbox::new();
    let log = sandbox.log();
    let line = |id: &str, mib: &str, delay: &str, hold: &str| {
        let words = [
            path_str(&example("grow")),
            "--mib".into(),
            mib.into(),
            "--delay-ms".into(),
            delay.into(),
            "--hold-ms".into(),
            hold.into(),
            "--log".into(),
            path_str(log.path()),
            "--id".into(),
            id.into(),
        ];
        format!("exec {}", shell_words(&words))
    };
    let jobs = sandbox.write(
        "jobs",
        format!(
            "{}\n{}\n",
            line("1", "200", "300", "500"),
            line("2", "100", "0", "3000")
        ),
    );
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} -v --stats -j2 --min-memory-avail=1M :::: {}",
        cgroup.dir.display(),
        path_str(&crate::util::jsrun_bin()),
        path_str(&jobs),
    );
    let output = sandbox
        .command("sh")
        .args(["-c", &script])
        .deadline(Duration::from_secs(60))
        .run();
    assert!(cgroup.oom_kills() >= 1, "no OOM kill: {}", output.report());
    output
        .success()
        .stderr_contains("was killed by the OOM killer: it runs again alone")
        .stderr_contains(" run again after the OOM killer killed them");
    let text = log.text();
    let ends = text.lines().filter(|l| l.starts_with("end ")).count();
    assert_eq!(ends, 2, "{text}");
    // The run again started after the other job ended: alone.
    let events: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
    let last_start = events.iter().rposition(|e| *e == "start").unwrap();
    let first_end = events.iter().position(|e| *e == "end").unwrap();
    assert_eq!(
        events.iter().filter(|e| **e == "start").count(),
        3,
        "{text}"
    );
    assert!(first_end < last_start, "{text}");
}

/// make 4.4.1 with 4 ready targets in a pool of 4, the room tight (476 MiB above a 1 GiB
/// minimum): jsrun holds the 3 tokens from its first look, before make could take them,
/// and lets them out one at a time, at least 150 ms apart by jsrun's own clock (the trace's
/// `held back` track).
#[test]
fn make_s_first_wave_is_paced() {
    let sandbox = Sandbox::new();
    let mut memory = Memory::new(&sandbox);
    memory.set(1500);
    let trace = sandbox.join("trace.json");
    let ids = ["a", "b", "c", "d"];
    let extra = ["--hold-ms".to_owned(), "300".to_owned()];
    let options = ["--trace", trace.to_str().unwrap()];
    let make = crate::util::make44();
    // Each recipe holds for 300 ms (no release file is written).
    let running = start_make(&sandbox, &memory, &make, &ids, &extra, &options);
    running.wait().success();
    let text = fs::read_to_string(&trace).expect("the trace");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the trace is JSON");
    let held: Vec<(u64, u64)> = json["traceEvents"]
        .as_array()
        .expect("traceEvents")
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"] == "held back")
        .filter_map(|e| Some((e["ts"].as_u64()?, e["args"]["held back"].as_u64()?)))
        .collect();
    assert_eq!(held.iter().map(|h| h.1).max(), Some(3), "{held:?}");
    let start = held.iter().position(|h| h.1 == 3).unwrap();
    let releases: Vec<u64> = held[start..]
        .windows(2)
        .filter(|w| w[1].1 < w[0].1)
        .map(|w| w[1].0)
        .collect();
    assert!(releases.len() >= 3, "{held:?}");
    for pair in releases.windows(2) {
        assert!(
            pair[1] - pair[0] >= 150_000,
            "released {} µs apart: {held:?}",
            pair[1] - pair[0]
        );
    }
}

/// On the real /proc (no `JSRUN_PROC_DIR`), the guard asks the kernel for a PSI trigger
/// and says under `-v` what it got: a 1 s window with CAP_SYS_RESOURCE, else a 2 s one, or
/// the refusal.
#[test]
fn the_kernel_s_pressure_trigger_is_set_and_said() {
    if !Path::new("/proc/pressure/memory").exists() {
        crate::util::machine_cannot(
            "the_kernel_s_pressure_trigger_is_set_and_said",
            "no /proc/pressure/memory (a kernel without PSI)",
        );
        return;
    }
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args(["-v", "-j2", "--min-memory-avail=1M", "--", "true"])
        .run();
    output.success();
    // Which one depends on the kernel and on CAP_SYS_RESOURCE: either is said.
    let said = lines_with(&output.stderr, "jsrun: memory guard: ");
    assert!(
        said.iter().any(|l| {
            l.starts_with("jsrun: memory guard: a pressure trigger on ")
                || l.starts_with("jsrun: memory guard: no pressure trigger (")
        }),
        "{}",
        output.stderr
    );
}

/// Where cgroup v2 has a memory controller: jsrun in a cgroup with `memory.high` watches
/// its `memory.events` (said under `-v`), and a job that goes past `memory.high` (the
/// kernel counts `high` events, which wake the loop) does not keep it from ending.
#[test]
fn memory_events_of_a_real_v2_cgroup_are_watched() {
    let test = "memory_events_of_a_real_v2_cgroup_are_watched";
    let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|m| m.join("cgroup.controllers").exists());
    let Some(mount) = mount else {
        crate::util::machine_cannot(test, "no cgroup v2 mount");
        return;
    };
    let controllers = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        crate::util::machine_cannot(
            test,
            &format!(
                "no memory controller in cgroup v2 ({}/cgroup.controllers: '{}')",
                mount.display(),
                controllers.trim()
            ),
        );
        return;
    }
    let _ = fs::write(mount.join("cgroup.subtree_control"), "+memory");
    let dir = mount.join(format!("jsrun-test-{}", std::process::id()));
    if let Err(e) = fs::create_dir(&dir)
        .and_then(|()| fs::write(dir.join("memory.high"), (16u64 << 20).to_string()))
    {
        crate::util::machine_cannot(test, &format!("cannot make {}: {e}", dir.display()));
        return;
    }
    let sandbox = Sandbox::new();
    // The shell moves itself into the cgroup and becomes jsrun; the job touches 48 MiB.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} -v -j2 --min-memory-avail=8M -- sh -c \
         'v=$(head -c 50331648 /dev/zero | tr \"\\0\" a); echo ${{#v}}'",
        path_str(&dir),
        path_str(&crate::util::jsrun_bin())
    );
    let output = sandbox.command("sh").args(["-c", &script]).run();
    let events = fs::read_to_string(dir.join("memory.events")).unwrap_or_default();
    let _ = fs::remove_dir(&dir);
    output.success().stderr_contains(&format!(
        "jsrun: memory guard: watching {}/memory.events",
        dir.display()
    ));
    let high: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("high "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(high > 0, "the job never went past memory.high: {events}");
}
