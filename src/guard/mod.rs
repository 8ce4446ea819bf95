//! The memory guard of a pool jsrun owns, with `--min-memory-avail` or
//! `--max-memory-pressure` set (not with `--no-pause`): it pauses running jobs, youngest
//! first, while memory keeps running short, resumes them oldest first as it comes back,
//! and paces new starts; the decisions are [`policy::Policy`]'s, the process trees
//! [`tree`]'s.
//!
//! A job is a process tree below a client of the pool. In the runner, each of jsrun's own
//! jobs. Under `jsrun -jN -- CMD`, a child of a process that holds the pool open (make,
//! a sub-make, ninja, cargo, a `+jsrun` recipe) that does not hold it itself, or holds it
//! but has no child (rustc under cargo); processes between jsrun and the first client
//! (`sh -c make`) are passed through. The trees are read from
//! /proc only while memory is short or near it, or a job is paused: otherwise the guard
//! costs one reading of memory per look, as holding back does.

pub mod notify;
pub mod oom;
pub mod policy;
pub mod tree;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use policy::{Action, JobView, Policy, Sample, Thresholds, Why};

use crate::limits::Limits;
use crate::report::Report;
use crate::running::Running;

/// A job's key: its root's pid and start time (a pid may be used again).
type Key = (i32, u64);

pub struct Guard {
    policy: Policy,
    limits: Thresholds,
    /// `-jN -- CMD`: jobs are found below the pool's clients; the pool's file. `None`: the
    /// runner's own jobs.
    clients_of: Option<(u64, u64)>,
    paused: Vec<Paused>,
    /// Numbers given to jobs found below clients, in the order they were found.
    numbers: HashMap<Key, usize>,
    /// The largest resident memory seen of each job found at the last scan.
    peaks: HashMap<Key, u64>,
    page: u64,
    verbose: bool,
    /// Interrupted: resume everything, pause nothing more.
    off: bool,
    /// The OOM killer's counters and the jobs' oom_score_adj.
    oom: oom::Oom,
    /// The kernel's word that memory is getting short.
    notices: notify::Notices,
    /// The most jobs paused at once, the time with one or more paused, and since when.
    pub most: usize,
    pub time: Duration,
    since: Option<Instant>,
}

/// A paused job.
struct Paused {
    key: Key,
    number: usize,
    command: String,
    stopped: Vec<i32>,
}

/// A job found at a look.
struct Found {
    key: Key,
    number: usize,
    command: String,
    age: u64,
    rss: u64,
    cpu: u64,
}

impl Guard {
    /// A guard for `limits`, when they include a memory limit. `clients_of`: the pool's
    /// file when jobs are to be found below its clients.
    /// `oom_counters`: the files that count the OOM killer's kills; `sources`: where the
    /// kernel may be asked to tell when memory gets short.
    pub fn new(
        limits: &Limits,
        clients_of: Option<(u64, u64)>,
        oom_counters: Vec<std::path::PathBuf>,
        sources: &notify::Sources,
        verbose: bool,
    ) -> Option<Guard> {
        let thresholds = Thresholds {
            min_available: limits.min_memory_avail,
            max_pressure: limits.max_memory_pressure,
        };
        let mut policy = Policy::new(thresholds);
        // The run's start counts as a start: the first wave is paced from the first job.
        policy.started(Instant::now());
        if thresholds.min_available.is_none() && thresholds.max_pressure.is_none() {
            return None;
        }
        let notices = notify::Notices::new(sources, thresholds);
        policy.notified(notices.any());
        policy.refilled(clients_of.is_some());
        let mut guard = Guard {
            policy,
            limits: thresholds,
            clients_of,
            paused: Vec::new(),
            numbers: HashMap::new(),
            peaks: HashMap::new(),
            page: tree::page_size(),
            verbose,
            oom: oom::Oom::new(oom_counters),
            notices,
            off: false,
            most: 0,
            time: Duration::ZERO,
            since: None,
        };
        guard.say_notices();
        Some(guard)
    }

    /// Under `-v`, what the kernel was asked and what it refused, once.
    fn say_notices(&mut self) {
        for line in self.notices.said.drain(..) {
            if self.verbose {
                crate::say!("jsrun: memory guard: {line}");
            }
        }
    }

    /// One look in a pool of `slots`: the sample, then, when memory is short or near it, a
    /// job is paused or starts are admitted from the jobs' sizes, the jobs, and what to do
    /// about them.
    pub fn look(
        &mut self,
        now: Instant,
        sample: Sample,
        slots: usize,
        crew: &[Running<'_>],
        report: &mut Report,
    ) {
        self.policy.sample(now, sample);
        if self.off || !self.policy.watching(!self.paused.is_empty(), slots) {
            return;
        }
        let found = self.find(crew);
        self.learn(&found);
        let views: Vec<JobView> = found
            .iter()
            .enumerate()
            .map(|(i, f)| JobView {
                id: i as u64,
                age: f.age,
                paused: self.paused.iter().any(|p| p.key == f.key),
                rss: f.rss,
                cpu: f.cpu,
                elapsed: tree::since_start(f.key.1),
            })
            .collect();
        // A paused job no longer found (killed from outside, or its make died and it was
        // reparented away) is continued, in case it lives on, and forgotten.
        let (kept, lost): (Vec<Paused>, Vec<Paused>) = std::mem::take(&mut self.paused)
            .into_iter()
            .partition(|p| found.iter().any(|f| f.key == p.key));
        self.paused = kept;
        for paused in &lost {
            tree::resume(paused.key.0, &paused.stopped);
        }
        if !lost.is_empty() {
            self.book(now);
            report.counter("jobs paused", self.paused.len());
        }
        match self.policy.decide(now, &views) {
            Some(Action::Pause(i)) => self.pause(now, &found[i as usize], sample, report),
            Some(Action::Resume(i, why)) => {
                let key = found[i as usize].key;
                self.resume(now, key, why, report);
            }
            None => {}
        }
        self.book(now);
    }

    /// When to look again.
    pub fn next_look(&self) -> Duration {
        self.policy.next_look()
    }

    /// Whether a new job may start now in a pool of `slots`: none while a job is paused.
    pub fn may_start(&self, now: Instant, slots: usize) -> bool {
        self.policy.may_start(now, slots, !self.paused.is_empty())
    }

    /// A job started (a token went out).
    pub fn started(&mut self, now: Instant) {
        self.policy.started(now);
    }

    /// The descriptors by which the kernel says memory gets short, with what to poll them
    /// for.
    pub fn notice_fds(
        &self,
        now: Instant,
    ) -> impl Iterator<Item = (std::os::fd::BorrowedFd<'_>, nix::poll::PollFlags)> {
        self.notices.fds(now)
    }

    /// One of [`Guard::notice_fds`] was ready: whether to look at memory at once.
    pub fn notified(&mut self, now: Instant) -> bool {
        let look = self.notices.clear(now);
        self.say_notices();
        look
    }

    /// When the notices are to be polled again after a wake.
    pub fn quiet_until(&self, now: Instant) -> Option<Instant> {
        self.notices.quiet_until(now)
    }

    /// A job of jsrun's own started: the OOM killer is to take it before jsrun.
    pub fn adopt(&self, pid: i32) {
        self.oom.adopt(pid);
    }

    /// A job of jsrun's own died of SIGKILL: whether the OOM killer killed it.
    pub fn oom_killed(&mut self) -> bool {
        self.oom.killed()
    }

    /// One of jsrun's own jobs ended and was reaped: the largest resident set of a process
    /// jsrun (or a job) waited for, `getrusage(RUSAGE_CHILDREN)`'s `ru_maxrss`, teaches
    /// the footprint of a job, even when no scan saw it.
    pub fn reaped(&mut self) {
        if let Ok(usage) =
            nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        {
            let kib = u64::try_from(usage.max_rss()).unwrap_or(0);
            self.policy.ended(kib * 1024, None);
        }
    }

    /// Jobs are jsrun's own (the runner), not found below clients.
    pub fn runner(&self) -> bool {
        self.clients_of.is_none()
    }

    pub fn has_paused(&self) -> bool {
        !self.paused.is_empty()
    }

    /// Whether a job's end matters at once: one is paused (it may resume), or starts are
    /// admitted from the jobs' sizes in a pool of `slots` (the next may start).
    pub fn wants_ends(&self, slots: usize) -> bool {
        self.has_paused() || self.policy.tight(slots)
    }

    /// Resumes every paused job and pauses no more: at the end, on SIGINT, SIGTERM, SIGHUP.
    pub fn resume_all(&mut self, now: Instant, report: &mut Report) {
        self.off = true;
        while let Some(paused) = self.paused.first() {
            let key = paused.key;
            self.resume(now, key, Why::Alone, report);
        }
        self.book(now);
    }

    /// The jobs now, with their footprints.
    fn find(&mut self, crew: &[Running<'_>]) -> Vec<Found> {
        let mut found = Vec::new();
        for running in crew {
            let root = running.pid.as_raw();
            let Some(stat) = tree::stat(root) else {
                continue;
            };
            match self.clients_of {
                None => {
                    let pids = tree::descendants(root);
                    let (rss, cpu) = tree::footprint(&pids, self.page);
                    found.push(Found {
                        key: (root, stat.start),
                        number: usize::try_from(running.job.seq).unwrap_or(usize::MAX),
                        command: running.job.display(),
                        age: running.job.seq,
                        rss,
                        cpu,
                    });
                }
                Some(pool) => self.walk(root, false, pool, &mut found),
            }
        }
        found
    }

    /// Jobs below `pid`: a client's children that are not clients are jobs, and so are
    /// its children that are clients with no child of their own (a rustc under cargo, which
    /// holds the pool itself); processes not under a client yet are passed through.
    fn walk(&mut self, pid: i32, under_client: bool, pool: (u64, u64), found: &mut Vec<Found>) {
        let client = crate::sys::holds(pid as u32, pool);
        let children = tree::children(pid);
        if under_client && (!client || children.is_empty()) {
            let Some(stat) = tree::stat(pid) else {
                return;
            };
            let key = (pid, stat.start);
            let next = self.numbers.len() + 1;
            let number = *self.numbers.entry(key).or_insert(next);
            let pids = tree::descendants(pid);
            let (rss, cpu) = tree::footprint(&pids, self.page);
            found.push(Found {
                key,
                number,
                command: crate::sys::command_of(pid as u32),
                age: (stat.start << 22) | u64::try_from(pid).unwrap_or(0),
                rss,
                cpu,
            });
            return;
        }
        for child in children {
            self.walk(child, under_client || client, pool, found);
        }
    }

    /// Keeps each job's peak; a job gone since the last scan teaches its peak and how long
    /// it ran (up to now: it ended since the last scan).
    fn learn(&mut self, found: &[Found]) {
        let mut peaks = HashMap::with_capacity(found.len());
        for f in found {
            let peak = self.peaks.get(&f.key).copied().unwrap_or(0).max(f.rss);
            peaks.insert(f.key, peak);
        }
        for (key, peak) in std::mem::replace(&mut self.peaks, peaks) {
            if !self.peaks.contains_key(&key) {
                self.policy.ended(peak, Some(tree::since_start(key.1)));
            }
        }
    }

    fn pause(&mut self, now: Instant, job: &Found, sample: Sample, report: &mut Report) {
        let stopped = tree::stop(job.key.0);
        if stopped.is_empty() {
            return;
        }
        if self.verbose {
            crate::say!(
                "jsrun: paused job {} ({}): {}",
                job.number,
                job.command,
                self.why(sample)
            );
        }
        self.book(now);
        self.paused.push(Paused {
            key: job.key,
            number: job.number,
            command: job.command.clone(),
            stopped,
        });
        self.book(now);
        report.counter("jobs paused", self.paused.len());
    }

    fn resume(&mut self, now: Instant, key: Key, why: Why, report: &mut Report) {
        let Some(i) = self.paused.iter().position(|p| p.key == key) else {
            return;
        };
        self.book(now);
        let paused = self.paused.remove(i);
        tree::resume(paused.key.0, &paused.stopped);
        if self.verbose {
            crate::say!(
                "jsrun: resumed job {} ({}){}",
                paused.number,
                paused.command,
                match why {
                    Why::Stalled => ": the running jobs made no progress",
                    Why::Room | Why::Alone => "",
                }
            );
        }
        self.book(now);
        report.counter("jobs paused", self.paused.len());
    }

    /// Books the time with jobs paused, up to `now`.
    fn book(&mut self, now: Instant) {
        if let Some(since) = self.since {
            self.time += now.saturating_duration_since(since);
        }
        self.since = (!self.paused.is_empty()).then_some(now);
        self.most = self.most.max(self.paused.len());
    }

    /// Why memory is short, as the `-v` line says it.
    fn why(&self, sample: Sample) -> String {
        if let (Some(available), Some(min)) = (sample.available, self.limits.min_available)
            && available < min
        {
            return format!("{} available, below {}", Mib(available), Mib(min));
        }
        match (sample.pressure, self.limits.max_pressure) {
            (Some(now), Some(max)) => format!("memory pressure {now}%, at or above {max}%"),
            _ => "memory running short".to_owned(),
        }
    }
}

/// Bytes as whole MiB: `512M`.
struct Mib(u64);

impl std::fmt::Display for Mib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}M", self.0 >> 20)
    }
}
