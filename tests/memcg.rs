//! The memory guard in real memory cgroups the tests create (cgroup v1, and v2 where its
//! memory controller can be had): jobs that grow past the limit, counted by the cgroup's
//! own OOM-kill counter and by the `end` the jobs log as their last act. Each test is
//! small (a 256 MiB limit, jobs of 60 MiB) and checks both versions; a version the machine
//! cannot give is reported with `util::machine_cannot`. The cgroups are removed even when a
//! test fails: [`MemCg`]'s Drop resumes and kills what is left, then removes the directory.
//! `bench/memguard` measures the same at the size of the issue's table.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::{
    Output, Sandbox, epoch_minus_monotonic_us, example, is_root, jsrun_bin, machine_cannot,
    path_str, process_gone, shell_words,
};

const MIB: u64 = 1 << 20;
/// The limit of every test cgroup.
const LIMIT: u64 = 256 * MIB;
/// Each job grows to this.
const JOB_MB: u64 = 60;
const JOBS: usize = 8;
/// `--min-memory-avail` for the guard: about one job.
const MIN_AVAIL: &str = "--min-memory-avail=64M";

#[derive(Clone, Copy, Debug)]
enum Version {
    V1,
    V2,
}

/// A memory cgroup of one test: a child of this process's own memory cgroup, with a limit
/// and no swap.
struct MemCg {
    dir: PathBuf,
    version: Version,
}

impl MemCg {
    /// A fresh cgroup limited to `limit` bytes, or why this machine cannot make one.
    fn create(version: Version, limit: u64) -> Result<MemCg, String> {
        if !is_root() {
            return Err("not root: only root may create cgroups".into());
        }
        let parent = match version {
            Version::V1 => v1_parent()?,
            Version::V2 => v2_parent()?,
        };
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let dir = parent.join(format!(
            "jsrun-test-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        let cg = MemCg { dir, version };
        let limit = limit.to_string();
        match version {
            Version::V1 => {
                cg.set("memory.limit_in_bytes", &limit)?;
                if cg.dir.join("memory.memsw.limit_in_bytes").exists() {
                    cg.set("memory.memsw.limit_in_bytes", &limit)?;
                }
                cg.set("memory.swappiness", "0")?;
            }
            Version::V2 => {
                cg.set("memory.max", &limit)?;
                if cg.dir.join("memory.swap.max").exists() {
                    cg.set("memory.swap.max", "0")?;
                }
            }
        }
        Ok(cg)
    }

    fn set(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(|err| format!("cannot write {}: {err}", path.display()))
    }

    /// A command line that moves itself into the cgroup, then runs `program`.
    fn entry(&self) -> Vec<String> {
        let procs = self.dir.join("cgroup.procs");
        vec![
            "-c".into(),
            r#"echo 0 > "$0" && exec "$@""#.into(),
            procs.to_string_lossy().into_owned(),
        ]
    }

    /// The kernel's count of processes the OOM killer killed in this cgroup.
    fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = fs::read_to_string(self.dir.join(file)).expect("read the OOM counter");
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .unwrap_or_else(|| panic!("no oom_kill line in {file}: {text}"))
            .trim()
            .parse()
            .expect("oom_kill count")
    }

    fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }

    /// The processes still in the cgroup (`PID STATE NAME`; state T is stopped).
    fn leftovers(&self) -> Vec<String> {
        self.pids()
            .into_iter()
            .filter(|&pid| !process_gone(pid))
            .map(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat
                    .rsplit_once(')')
                    .map_or("?", |(_, rest)| rest.trim_start());
                let state = state.split_whitespace().next().unwrap_or("?");
                let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                format!("{pid} {state} {}", name.trim())
            })
            .collect()
    }
}

impl Drop for MemCg {
    fn drop(&mut self) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let pids = self.pids();
            if pids.is_empty() && (fs::remove_dir(&self.dir).is_ok() || !self.dir.exists()) {
                return;
            }
            for pid in pids {
                // A paused process first goes on, then dies; either may find it gone.
                let pid = Pid::from_raw(pid as i32);
                let _ = kill(pid, Signal::SIGCONT);
                let _ = kill(pid, Signal::SIGKILL);
            }
            if Instant::now() > until {
                eprintln!("memcg: could not empty and remove {}", self.dir.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// This process's own v1 memory cgroup, the parent of the test's.
fn v1_parent() -> Result<PathBuf, String> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|err| err.to_string())?;
    let mount = mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "memory"))
        .ok_or("no cgroup v1 memory hierarchy mounted")?;
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|err| err.to_string())?;
    let path = own
        .lines()
        .filter_map(|line| {
            line.split_once(':')
                .and_then(|(_, rest)| rest.split_once(':'))
        })
        .find(|(controllers, _)| controllers.split(',').any(|c| c == "memory"))
        .map(|(_, path)| path)
        .ok_or("no memory line in /proc/self/cgroup")?;
    let dir = Path::new(mount[1]).join(path.trim_start_matches('/'));
    if !dir.is_dir() {
        return Err(format!(
            "{}: not found (another cgroup namespace?)",
            dir.display()
        ));
    }
    Ok(dir)
}

/// This process's own v2 cgroup, with the memory controller enabled for its children.
fn v2_parent() -> Result<PathBuf, String> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|err| err.to_string())?;
    let mount = mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .ok_or("no cgroup2 mounted")?;
    let root = Path::new(mount[1]);
    let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(format!(
            "the cgroup2 mount {} has no memory controller (cgroup.controllers: {}; it is \
             bound to cgroup v1 here)",
            root.display(),
            controllers.trim()
        ));
    }
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|err| err.to_string())?;
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or("no cgroup2 line (0::) in /proc/self/cgroup")?;
    let dir = root.join(path.trim_start_matches('/'));
    let subtree = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&subtree).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "memory") {
        fs::write(&subtree, "+memory").map_err(|err| {
            format!(
                "cannot enable memory for children of {} ({err}: it has processes of its \
                 own); run the tests from a cgroup of their own",
                dir.display()
            )
        })?;
    }
    Ok(dir)
}

/// Runs `body` with a fresh cgroup of each version; a version this machine cannot give is
/// reported, loudly, as not run.
fn each_version(test: &str, body: impl Fn(&MemCg, &Sandbox)) {
    for version in [Version::V1, Version::V2] {
        match MemCg::create(version, LIMIT) {
            Ok(cg) => body(&cg, &Sandbox::new()),
            Err(why) => machine_cannot(&format!("{test} (cgroup {version:?})"), &why),
        }
    }
}

/// The words of one job `id` that grows to `mb` MiB in 1 s (examples/grow), holds it
/// for 0.2 s and logs its `end`; `hold` replaces the 0.2 s.
fn job(sandbox: &Sandbox, id: &str, mb: u64, hold: &[&str]) -> Vec<String> {
    let mut words = vec![
        path_str(&example("grow")),
        "--mib".into(),
        mb.to_string(),
        "--secs".into(),
        "1".into(),
        "--id".into(),
        id.into(),
        "--log".into(),
        sandbox.str("log"),
        "--deadline-ms".into(),
        "120000".into(),
    ];
    if hold.is_empty() {
        words.extend(["--hold-ms".into(), "200".into()]);
    }
    words.extend(hold.iter().map(ToString::to_string));
    words
}

/// A Makefile with one target per job, all under `all`.
fn makefile(sandbox: &Sandbox, jobs: &[Vec<String>]) {
    let names: Vec<String> = (1..=jobs.len()).map(|i| format!("j{i}")).collect();
    let mut text = format!(".PHONY: all {0}\nall: {0}\n", names.join(" "));
    for (name, words) in names.iter().zip(jobs) {
        text.push_str(&format!("{name}:\n\t{}\n", shell_words(words)));
    }
    sandbox.write("Makefile", text);
}

/// The ids of the jobs that logged `event` (`grown`: took all their memory; `end`: done).
fn logged(sandbox: &Sandbox, event: &str) -> Vec<String> {
    let text = fs::read_to_string(sandbox.join("log")).unwrap_or_default();
    let mut ids: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix(event)?.strip_prefix(' '))
        .filter_map(|rest| rest.split(' ').next().map(String::from))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn done(sandbox: &Sandbox) -> usize {
    logged(sandbox, "end").len()
}

const DEADLINE: Duration = Duration::from_secs(180);

/// The control: plain `make -j8` of jobs that hold 60 MiB each until every one has either
/// taken it or been killed, in a 256 MiB cgroup. The cgroup's counter shows OOM kills, so
/// the tests below can fail.
#[test]
fn plain_make_loses_jobs_to_the_oom_killer() {
    each_version(
        "memcg::plain_make_loses_jobs_to_the_oom_killer",
        |cg, sandbox| {
            let release = sandbox.str("release");
            let jobs: Vec<Vec<String>> = (1..=JOBS)
                .map(|id| job(sandbox, &id.to_string(), JOB_MB, &["--until", &release]))
                .collect();
            makefile(sandbox, &jobs);
            let mut running = sandbox
                .command("sh")
                .args(cg.entry())
                .args(["make", "-j8", "-k"])
                .deadline(DEADLINE)
                .spawn();
            running.wait_until("every job grown or killed", || {
                logged(sandbox, "grown").len() as u64 + cg.oom_kills() >= JOBS as u64
            });
            fs::write(&release, b"").expect("write the release file");
            let out = running.wait();
            out.code(2);
            assert!(
                cg.oom_kills() > 0,
                "no OOM kill in {}\n{}",
                cg.dir.display(),
                out.report()
            );
            assert!(done(sandbox) < JOBS, "every job done\n{}", out.report());
            assert_eq!(cg.leftovers(), Vec::<String>::new(), "left in the cgroup");
        },
    );
}

/// `jsrun -j8 --min-memory-avail=64M -- make -k` of 8 jobs growing to 60 MiB each in a
/// 256 MiB cgroup: every job done, no OOM kill, nothing left paused or running.
#[test]
fn guard_keeps_every_make_job_alive() {
    each_version("memcg::guard_keeps_every_make_job_alive", |cg, sandbox| {
        let jobs: Vec<Vec<String>> = (1..=JOBS)
            .map(|id| job(sandbox, &id.to_string(), JOB_MB, &[]))
            .collect();
        makefile(sandbox, &jobs);
        let words = ["-j8", MIN_AVAIL, "--stats", "--", "make", "-k"].map(String::from);
        every_job_alive(cg, sandbox, &words);
    });
}

/// The runner: `jsrun -j8 -k --min-memory-avail=64M grow ... ::: 1..8` in a 256 MiB
/// cgroup: every job done, no OOM kill, nothing left.
#[test]
fn guard_keeps_every_runner_job_alive() {
    each_version(
        "memcg::guard_keeps_every_runner_job_alive",
        |cg, sandbox| {
            let mut words = ["-j8", "-k", MIN_AVAIL, "--stats"]
                .map(String::from)
                .to_vec();
            words.extend(job(sandbox, "{}", JOB_MB, &[]));
            words.push(":::".into());
            words.extend((1..=JOBS).map(|i| i.to_string()));
            every_job_alive(cg, sandbox, &words);
        },
    );
}

/// Runs jsrun with these words in the cgroup: it succeeds, every job is done, the cgroup
/// counted no OOM kill, and nothing is left in it when jsrun has ended.
fn every_job_alive(cg: &MemCg, sandbox: &Sandbox, words: &[String]) {
    let out = jsrun_in(cg, sandbox, words);
    let left = cg.leftovers();
    assert_eq!(cg.oom_kills(), 0, "OOM kills\n{}", out.report());
    assert_eq!(done(sandbox), JOBS, "jobs done\n{}", out.report());
    assert_eq!(
        left,
        Vec::<String>::new(),
        "left in the cgroup\n{}",
        out.report()
    );
    out.success();
}

/// jsrun with these words, run in the cgroup.
fn jsrun_in(cg: &MemCg, sandbox: &Sandbox, words: &[String]) -> Output {
    sandbox
        .command("sh")
        .args(cg.entry())
        .arg(jsrun_bin())
        .args(words)
        .deadline(DEADLINE)
        .run()
}

/// A job larger than the whole limit, among small ones, under the guard: it is attempted
/// and killed as it would be without jsrun, the small ones finish, jsrun ends (make's
/// status 2) and leaves nothing paused or running.
#[test]
fn a_job_larger_than_the_limit_fails_and_the_build_ends() {
    each_version(
        "memcg::a_job_larger_than_the_limit_fails_and_the_build_ends",
        |cg, sandbox| {
            let mut jobs = vec![job(sandbox, "1", LIMIT / MIB + 64, &[])];
            jobs.extend((2..=4).map(|id| job(sandbox, &id.to_string(), 20, &[])));
            makefile(sandbox, &jobs);
            let words = ["-j8", MIN_AVAIL, "--stats", "--", "make", "-k"].map(String::from);
            let out = jsrun_in(cg, sandbox, &words);
            out.code(2);
            assert!(cg.oom_kills() >= 1, "no OOM kill\n{}", out.report());
            let ids = ["2", "3", "4"].map(String::from);
            assert_eq!(logged(sandbox, "end"), ids, "jobs done\n{}", out.report());
            assert_eq!(
                cg.leftovers(),
                Vec::<String>::new(),
                "left in the cgroup\n{}",
                out.report()
            );
        },
    );
}

/// No new job starts while a job is paused: the paused ones are the youngest, and memory
/// that comes back is theirs first (they resume oldest first). `jsrun -j8
/// --min-memory-avail=128M --trace T grow --mib {} ... ::: 4 50 50 50 50 50 50 4 4 4` in
/// 256 MiB, every job idling 1.5 s before it grows over 2 s: the first, small, job teaches
/// the guard a small footprint, so the six of 50 MiB start side by side while they idle,
/// and grow together past what fits; the guard must pause. Every `start` the jobs log
/// (CLOCK_REALTIME, turned into jsrun's CLOCK_MONOTONIC) falls where the trace's `jobs
/// paused` track is 0.
#[test]
fn guard_starts_no_new_job_while_one_is_paused() {
    each_version(
        "memcg::guard_starts_no_new_job_while_one_is_paused",
        |cg, sandbox| {
            let trace = sandbox.str("trace.json");
            let min = "--min-memory-avail=128M";
            let mut words = ["-j8", "-k", min, "--stats", "--trace", &trace]
                .map(String::from)
                .to_vec();
            let late = ["--delay-ms", "1500", "--hold-ms", "200", "--secs", "2"];
            let mut command = job(sandbox, "{#}", JOB_MB, &late);
            let mib = command.iter().position(|w| w == "--mib").expect("--mib") + 1;
            command[mib] = "{}".into();
            words.extend(command);
            words.push(":::".into());
            let sizes = ["4", "50", "50", "50", "50", "50", "50", "4", "4", "4"];
            words.extend(sizes.map(String::from));
            let offset = epoch_minus_monotonic_us();
            let out = jsrun_in(cg, sandbox, &words);
            out.success();
            assert_eq!(cg.oom_kills(), 0, "OOM kills\n{}", out.report());
            let json: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(&trace).expect("read the trace"))
                    .expect("the trace is JSON");
            // (µs, jobs paused from then on)
            let paused: Vec<(i128, u64)> = json["traceEvents"]
                .as_array()
                .expect("traceEvents")
                .iter()
                .filter(|e| e["name"] == "jobs paused" && e["ph"] == "C")
                .map(|e| {
                    let ts = e["ts"].as_u64().expect("ts");
                    (
                        i128::from(ts),
                        e["args"]["jobs paused"].as_u64().expect("value"),
                    )
                })
                .collect();
            assert!(
                paused.iter().any(|&(_, n)| n > 0),
                "nothing paused\n{}",
                out.report()
            );
            let log = fs::read_to_string(sandbox.join("log")).expect("read the log");
            let mut starts_while_paused = Vec::new();
            for line in log.lines().filter(|line| line.starts_with("start ")) {
                let words: Vec<&str> = line.split(' ').collect();
                let at = words[2].parse::<i128>().expect("nanos") / 1000 - offset;
                let now = paused.iter().take_while(|&&(ts, _)| ts <= at).last();
                if let Some(&(_, n)) = now.filter(|&&(_, n)| n > 0) {
                    starts_while_paused.push(format!("job {} started with {n} paused", words[1]));
                }
            }
            assert!(
                starts_while_paused.is_empty(),
                "{starts_while_paused:?}\npaused track (µs, n): {paused:?}\nlog:\n{log}\n{}",
                out.report()
            );
        },
    );
}
