//! The memory guard's decisions, from memory samples and what the jobs look like: which job
//! to pause or resume, whether a new job may start now, and when to look again. Pure: no
//! /proc, no signal, no clock of its own (every call is given `now`), so that recorded memory
//! curves can drive it in the unit tests.
//!
//! - **Pause** the youngest running job when memory is critical (available below the
//!   minimum while nothing is known of the jobs; below half of it once a shape foretells
//!   their growth, since the admission keeps to the minimum and pausing is the last resort;
//!   or pressure at or above the maximum, with available below the minimum when one is
//!   set) *and still running short*: available fell by more than [`NOISE`]
//!   within the last [`TREND`] (pressure rose). Memory that is short but steady is left to
//!   holding back: pausing frees nothing, it only stops growth. Never the last running job.
//! - **Pause at once** a running job younger than a paused one (a client started it beside
//!   the paused one, in its implicit slot or with a token it gave back and took again):
//!   the paused jobs are always the youngest.
//! - **Resume** the oldest paused job when memory is no longer short and has room for it: the
//!   minimum plus what the job held when it was paused (a paused job's footprint is what it
//!   will need at least once it runs on), or a quarter of the minimum if that is more; one
//!   resume per [`RESUME_GAP`], so that the growth of the one resumed shows before the next.
//! - **Resume anyway** the oldest paused job when no job runs any more, or when the running
//!   jobs made no progress (their CPU time did not grow) for [`STALL`]: they may wait for a
//!   paused one (a lock, a pipe). No pause follows for [`STALL`] after such a resume.
//! - **Start nothing new** while a job is paused: the paused job is resumed first.
//! - **Admit** a new start, while the room above the minimum is less than one footprint per
//!   slot, only when the room holds what the jobs, the new one included, are expected to
//!   take. The footprint is the largest of: the largest peak of a job that ended (before
//!   one ended, the minimum itself stands in), and the largest job now.
//!   - Before a job was seen from start to end, and while memory falls (the jobs grow),
//!     each running job is expected to grow to the footprint and stay, and a job started
//!     since the last look counts whole: a first wave of jobs that grow together starts as
//!     many as their footprints fit, not as many as fit while they are still small. While
//!     memory does not fall, nothing foretells growth: the pace alone.
//!   - Once the job with the largest peak was seen from start to end (its *shape*: peak
//!     and duration), every job is expected to grow as it did, evenly from nothing to that
//!     peak, and to end when its duration has passed (a job older than that: at its
//!     footprint, ending at an unknown time). The start is admitted when, just before each
//!     expected end, what the jobs will have grown by, less what the ended ones freed, fits
//!     the room: jobs at different stages fit where as many starting together would not.
//!     Under a client (make, ninja), a job that ends is taken to be followed at once by the
//!     client's next job in its slot, growing in turn.
//!
//!   Pausing is left for what this could not foresee.
//! - **Pace** new starts in that case too: a start at most every [`PACE`], and, before a
//!   shape is known, none while the trend since the last start would use the room within
//!   [`HORIZON`].
//! - **Look** every [`LOOK`], faster as memory falls towards the minimum: a quarter of the
//!   time it would take to reach it at the current rate, down to [`FASTEST_LOOK`]. Slower
//!   while memory is steady and far above the minimum: half the time a [`SUDDEN`] fall would
//!   take to use the room, up to [`SLOWEST_LOOK`]; with a pressure limit alone, every
//!   [`SLOWEST_LOOK`] while pressure is below it and the kernel's trigger watches it (the
//!   `avg10` figure moves every 2 s).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A fall of available memory smaller than this is noise.
pub const NOISE: u64 = 2 << 20;
/// How far back the trend of available memory is taken.
pub const TREND: Duration = Duration::from_millis(500);
/// The least time between two resumes for room.
pub const RESUME_GAP: Duration = Duration::from_millis(500);
/// Running jobs whose CPU time does not grow for this long make no progress.
pub const STALL: Duration = Duration::from_millis(1500);
/// The least time between two paced starts.
pub const PACE: Duration = Duration::from_millis(150);
/// A start is held while memory, at its rate since the last start, would reach the minimum
/// within this.
pub const HORIZON: Duration = Duration::from_secs(2);
/// How often memory is looked at while a limit is set and nothing is near.
pub const LOOK: Duration = Duration::from_millis(250);
/// The fastest look, as memory falls towards the minimum.
pub const FASTEST_LOOK: Duration = Duration::from_millis(20);
/// The slowest look: memory steady and far above the minimum.
pub const SLOWEST_LOOK: Duration = Duration::from_secs(1);
/// The fall of available memory (bytes per second) that a steady look must not miss:
/// 8 jobs growing at 128 MiB/s.
pub const SUDDEN: u64 = 1 << 30;

/// What was read at one look.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Bytes available (the least of MemAvailable and every cgroup's room).
    pub available: Option<u64>,
    /// PSI `some avg10`, percent.
    pub pressure: Option<f64>,
}

/// The limits the guard keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Thresholds {
    pub min_available: Option<u64>,
    pub max_pressure: Option<f64>,
}

/// One job as the guard sees it at a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobView {
    /// The guard's key for the job.
    pub id: u64,
    /// Start order: larger is younger.
    pub age: u64,
    pub paused: bool,
    /// Resident memory of the job's processes, bytes.
    pub rss: u64,
    /// Since the job's root process started.
    pub elapsed: Duration,
    /// CPU time of the job's processes, clock ticks.
    pub cpu: u64,
}

/// Why a job is resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Memory has room for it again.
    Room,
    /// No other job runs.
    Alone,
    /// The running jobs made no progress: they may wait for this one.
    Stalled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pause(u64),
    Resume(u64, Why),
}

#[derive(Debug)]
pub struct Policy {
    limits: Thresholds,
    /// Recent samples of available memory, oldest first, within [`TREND`].
    recent: VecDeque<(Instant, u64)>,
    recent_pressure: VecDeque<(Instant, f64)>,
    last_resume: Option<Instant>,
    /// The last resume forced by a stall or by no job running.
    forced: Option<Instant>,
    /// The running jobs' CPU time, and since when it has not grown.
    cpu: u64,
    progress: Option<Instant>,
    /// The largest peak footprint of a job that ended.
    footprint: Option<u64>,
    /// The peak and duration of the job with the largest peak seen from start to end.
    shape: Option<(u64, Duration)>,
    /// The last start: when, and the memory available then.
    last_start: Option<(Instant, Option<u64>)>,
    /// The resident memory and age of each running job at the last look at the jobs.
    running: Vec<(u64, Duration)>,
    /// Starts since the last look at the jobs (not in `running` yet).
    unseen: usize,
    /// The jobs are a client's (make, ninja): it fills the slot a job leaves with its next
    /// job at once, without asking (a token it gives back and takes again, its implicit
    /// slot), so a job's end frees nothing for a start admitted meanwhile.
    refills: bool,
    last: Sample,
    /// The sample of available memory before the last one.
    previous: Option<(Instant, u64)>,
    /// The kernel tells when memory pressure rises (a PSI trigger).
    notified: bool,
}

impl Policy {
    pub fn new(limits: Thresholds) -> Policy {
        Policy {
            limits,
            recent: VecDeque::new(),
            recent_pressure: VecDeque::new(),
            last_resume: None,
            forced: None,
            cpu: 0,
            progress: None,
            footprint: None,
            shape: None,
            last_start: None,
            running: Vec::new(),
            unseen: 0,
            refills: false,
            last: Sample::default(),
            previous: None,
            notified: false,
        }
    }

    /// The jobs are a client's, which fills a slot again as soon as a job leaves it.
    pub fn refilled(&mut self, refills: bool) {
        self.refills = refills;
    }

    /// The kernel tells when memory pressure rises: with a pressure limit alone, the
    /// looks may be slower while pressure is below it.
    pub fn notified(&mut self, notified: bool) {
        self.notified = notified;
    }

    /// Takes a new sample.
    pub fn sample(&mut self, now: Instant, sample: Sample) {
        self.last = sample;
        if self.last.available.is_some() {
            self.previous = self.recent.back().copied();
        }
        if let Some(available) = sample.available {
            self.recent.push_back((now, available));
        }
        if let Some(pressure) = sample.pressure {
            self.recent_pressure.push_back((now, pressure));
        }
        let old = |at: Instant| now.saturating_duration_since(at) > TREND;
        while self.recent.len() > 1 && self.recent.front().is_some_and(|s| old(s.0)) {
            self.recent.pop_front();
        }
        while self.recent_pressure.len() > 1
            && self.recent_pressure.front().is_some_and(|s| old(s.0))
        {
            self.recent_pressure.pop_front();
        }
    }

    /// Available memory is below the minimum, or pressure at or above the maximum.
    pub fn short(&self) -> bool {
        self.below(1) || self.pressing()
    }

    /// Available memory is below the minimum divided by `share`.
    fn below(&self, share: u64) -> bool {
        matches!(
            (self.last.available, self.limits.min_available),
            (Some(a), Some(min)) if a < min / share
        )
    }

    /// Pressure is at or above the maximum.
    fn pressing(&self) -> bool {
        matches!(
            (self.last.pressure, self.limits.max_pressure),
            (Some(p), Some(max)) if p >= max
        )
    }

    /// Memory is critical: available is below the minimum while nothing is known of the
    /// jobs, below half of it once a shape foretells their growth (the admission keeps to
    /// the minimum; pausing is the last resort for what it could not foresee); or pressure
    /// at or above the maximum while available is below the minimum too, when one is set
    /// (pressure is a 10 s average: it stays up long after its cause).
    pub fn critical(&self) -> bool {
        let memory = self.below(if self.shape.is_some() { 2 } else { 1 });
        memory || (self.pressing() && (self.limits.min_available.is_none() || self.below(1)))
    }

    /// Memory keeps running short: available fell, or pressure rose, within [`TREND`].
    pub fn falling(&self) -> bool {
        let fell = self.last.available.is_some_and(|now| {
            let top = self.recent.iter().map(|s| s.1).max().unwrap_or(now);
            top.saturating_sub(now) > NOISE
        });
        let rose = self.last.pressure.is_some_and(|now| {
            let low = self
                .recent_pressure
                .iter()
                .map(|s| s.1)
                .fold(f64::INFINITY, f64::min);
            now > low
        });
        fell || rose
    }

    /// Bytes above the minimum now, when both are known.
    fn room(&self) -> Option<u64> {
        Some(
            self.last
                .available?
                .saturating_sub(self.limits.min_available?),
        )
    }

    /// Available memory's fall per second over [`TREND`] (since the sample before the
    /// last, when looks are further apart), when it falls.
    fn fall_rate(&self) -> Option<f64> {
        let &(t1, a1) = self.recent.back()?;
        let (t0, a0) = match self.recent.len() {
            1 => self.previous?,
            _ => *self.recent.front()?,
        };
        let secs = t1.saturating_duration_since(t0).as_secs_f64();
        (a1 < a0 && secs > 0.0).then(|| (a0 - a1) as f64 / secs)
    }

    /// What to do now about the jobs, one action at a time.
    pub fn decide(&mut self, now: Instant, jobs: &[JobView]) -> Option<Action> {
        let running = || jobs.iter().filter(|j| !j.paused);
        self.running = running().map(|j| (j.rss, j.elapsed)).collect();
        self.unseen = 0;
        let oldest_paused = jobs.iter().filter(|j| j.paused).min_by_key(|j| j.age);
        let cpu: u64 = running().map(|j| j.cpu).sum();
        if cpu != self.cpu || self.progress.is_none() || oldest_paused.is_none() {
            self.cpu = cpu;
            self.progress = Some(now);
        }
        if let Some(job) = oldest_paused {
            if running().next().is_none() {
                return Some(self.resumed(now, job.id, Why::Alone));
            }
            if self
                .progress
                .is_some_and(|p| now.saturating_duration_since(p) >= STALL)
            {
                return Some(self.resumed(now, job.id, Why::Stalled));
            }
        }
        let after_forced = self
            .forced
            .is_none_or(|f| now.saturating_duration_since(f) >= STALL);
        let beside = oldest_paused.and_then(|paused| {
            running()
                .filter(|j| j.age > paused.age)
                .max_by_key(|j| j.age)
        });
        let pause = match beside {
            Some(job) => Some(job),
            None if self.critical() && self.falling() => running().max_by_key(|j| j.age),
            None => None,
        };
        if let Some(job) = pause
            && after_forced
            && running().count() >= 2
        {
            self.progress = Some(now);
            return Some(Action::Pause(job.id));
        }
        let job = oldest_paused?;
        let gap = self
            .last_resume
            .is_none_or(|r| now.saturating_duration_since(r) >= RESUME_GAP);
        let room = match (self.room(), self.limits.min_available) {
            (Some(room), Some(min)) => room >= job.rss.max(min / 4),
            _ => true,
        };
        (gap && room && !self.short() && !self.falling())
            .then(|| self.resumed(now, job.id, Why::Room))
    }

    fn resumed(&mut self, now: Instant, id: u64, why: Why) -> Action {
        self.last_resume = Some(now);
        self.progress = Some(now);
        if why != Why::Room {
            self.forced = Some(now);
        }
        Action::Resume(id, why)
    }

    /// A job ended whose peak footprint was `peak` bytes, after `duration` when it is
    /// known.
    pub fn ended(&mut self, peak: u64, duration: Option<Duration>) {
        self.footprint = Some(self.footprint.map_or(peak, |f| f.max(peak)));
        if let Some(duration) = duration.filter(|d| !d.is_zero())
            && self.shape.is_none_or(|(top, _)| peak >= top)
        {
            self.shape = Some((peak, duration));
        }
    }

    /// A job started (or a token went out for one).
    pub fn started(&mut self, now: Instant) {
        self.last_start = Some((now, self.last.available));
        self.unseen += 1;
    }

    /// What one job is expected to take at its peak: the largest peak of a job that ended
    /// (the minimum before one did), or the largest job now if that is more.
    fn footprint(&self) -> Option<u64> {
        let known = self.footprint.or(self.limits.min_available)?;
        let largest = self.running.iter().map(|j| j.0).max().unwrap_or(0);
        Some(known.max(largest).max(1))
    }

    /// Whether the room above the minimum holds fewer footprints than there are `slots`:
    /// starts are admitted one by one, from the jobs' sizes.
    pub fn tight(&self, slots: usize) -> bool {
        match (self.room(), self.footprint()) {
            (Some(room), Some(footprint)) => room / footprint < slots as u64,
            _ => false,
        }
    }

    /// Whether the room holds a new job besides the running ones (see the module's
    /// **Admit**).
    fn fits(&self, room: u64, footprint: u64) -> bool {
        let shape = self.shape.filter(|&(peak, _)| peak > 0);
        // Each job: resident now, and when it is expected to end (`None`: not foreseen).
        let ends = |elapsed: Duration| shape.and_then(|(_, d)| d.checked_sub(elapsed));
        let jobs: Vec<(u64, Option<Duration>)> = self
            .running
            .iter()
            .map(|&(rss, elapsed)| (rss, ends(elapsed)))
            .chain((0..=self.unseen).map(|_| (0, ends(Duration::ZERO))))
            .collect();
        let rate = shape.map_or(0.0, |(_, d)| footprint as f64 / d.as_secs_f64());
        // What the jobs take, beyond what they hold now, just before `at` (`None`: once
        // every foreseen end has passed).
        let need = |at: Option<Duration>| -> f64 {
            jobs.iter()
                .map(|&(rss, end)| {
                    let top = rss.max(footprint) as f64;
                    let then = match (end, at) {
                        // Ended: its slot is empty, or a client filled it with a new job.
                        (Some(e), Some(a)) if e < a && self.refills => {
                            (rate * (a - e).as_secs_f64()).min(footprint as f64)
                        }
                        (Some(e), Some(a)) if e < a => 0.0,
                        (Some(_), None) => 0.0,
                        (Some(_), Some(a)) => top.min(rss as f64 + rate * a.as_secs_f64()),
                        (None, _) => top,
                    };
                    then - rss as f64
                })
                .sum()
        };
        let room = room as f64;
        // Filled again and again, the slots repeat within one duration: no end to look past
        // (before a shape is known, no end is foreseen: the end is all there is).
        ((self.refills && shape.is_some()) || need(None) <= room)
            && jobs
                .iter()
                .filter_map(|j| j.1)
                .all(|at| need(Some(at)) <= room)
    }

    /// Whether a new job may start now in a pool of `slots`; `paused`: a job is paused.
    /// A paused job comes first: it holds its memory and its slot, and a job started
    /// beside it would take the room it needs to run on.
    pub fn may_start(&self, now: Instant, slots: usize, paused: bool) -> bool {
        if paused || self.short() {
            return false;
        }
        let (Some(room), Some(footprint)) = (self.room(), self.footprint()) else {
            return true;
        };
        if !self.tight(slots) {
            return true;
        }
        // Nothing runs, as far as the last look saw: a start is always allowed, however
        // large (a job alone larger than the memory is attempted, as without jsrun).
        let alone = self.running.is_empty() && self.unseen == 0;
        let foretold = self.shape.is_some() || self.falling();
        if !alone && foretold && !self.fits(room, footprint) {
            return false;
        }
        let Some((at, then)) = self.last_start else {
            return true;
        };
        let since = now.saturating_duration_since(at);
        if since < PACE {
            return false;
        }
        if self.shape.is_some() {
            return true;
        }
        let (Some(then), Some(available)) = (then, self.last.available) else {
            return true;
        };
        let rate = then.saturating_sub(available) as f64 / since.as_secs_f64();
        rate <= 0.0 || room as f64 / rate >= HORIZON.as_secs_f64()
    }

    /// When to look again: [`LOOK`], sooner as memory falls towards the minimum, later
    /// while it is steady far above it.
    pub fn next_look(&self) -> Duration {
        let Some(room) = self.room() else {
            let pressure_alone = self.limits.min_available.is_none();
            return match pressure_alone && self.notified && !self.short() {
                true => SLOWEST_LOOK,
                false => LOOK,
            };
        };
        let trend = self
            .fall_rate()
            .map_or(f64::INFINITY, |rate| room as f64 / rate / 4.0);
        if trend < LOOK.as_secs_f64() {
            return Duration::from_secs_f64(trend).max(FASTEST_LOOK);
        }
        let far = room as f64 / SUDDEN as f64 / 2.0;
        Duration::from_secs_f64(trend.min(far).min(SLOWEST_LOOK.as_secs_f64()))
            .clamp(LOOK, SLOWEST_LOOK)
    }

    /// Whether the guard must see the jobs at this look: memory is short or near it, a
    /// job is paused, or starts are admitted from the jobs' sizes (in a pool of `slots`).
    pub fn watching(&self, paused: bool, slots: usize) -> bool {
        let near = match (self.room(), self.limits.min_available) {
            (Some(room), Some(min)) => room < min,
            _ => false,
        };
        paused || self.short() || near || self.tight(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn job(id: u64, paused: bool, rss_mib: u64, cpu: u64) -> JobView {
        JobView {
            id,
            age: id,
            paused,
            rss: rss_mib * MIB,
            cpu,
            elapsed: Duration::ZERO,
        }
    }

    fn memory(min_mib: u64) -> Policy {
        Policy::new(Thresholds {
            min_available: Some(min_mib * MIB),
            max_pressure: None,
        })
    }

    fn mib(available: u64) -> Sample {
        Sample {
            available: Some(available * MIB),
            pressure: None,
        }
    }

    /// Replays `curve` (MiB available, one sample per 50 ms) over jobs 1..=4 that each
    /// grow and make progress; paused jobs stay as they are. The actions, with the index
    /// of the sample they followed.
    fn replay(policy: &mut Policy, curve: &[u64]) -> Vec<(usize, Action)> {
        let t0 = Instant::now();
        let mut jobs: Vec<JobView> = (1..=4).map(|id| job(id, false, 100, 0)).collect();
        let mut actions = Vec::new();
        for (i, &available) in curve.iter().enumerate() {
            let now = t0 + Duration::from_millis(50 * i as u64);
            for j in jobs.iter_mut().filter(|j| !j.paused) {
                j.cpu += 1;
                j.rss += 5 * MIB;
            }
            policy.sample(now, mib(available));
            if let Some(action) = policy.decide(now, &jobs) {
                let (Action::Pause(id) | Action::Resume(id, _)) = action;
                let j = jobs.iter_mut().find(|j| j.id == id).unwrap();
                j.paused = matches!(action, Action::Pause(_));
                actions.push((i, action));
            }
        }
        actions
    }

    #[test]
    fn falling_below_the_minimum_pauses_the_youngest_first_never_the_last() {
        // 4 jobs growing: 1000 MiB down by 20 MiB per sample, to 60. Nothing known of the
        // jobs: paused below the minimum, 1000 - 20 i < 512 from sample 25 on. Once a shape
        // foretells their growth, held back below the minimum and paused only below half of
        // it: 1000 - 20 i < 256 from sample 38 on.
        let curve: Vec<u64> = (0..48).map(|i| 1000 - 20 * i).collect();
        for (shape, first) in [(None, 25), (Some(Duration::from_secs(4)), 38)] {
            let mut policy = memory(512);
            if shape.is_some() {
                policy.ended(400 * MIB, shape);
            }
            let actions = replay(&mut policy, &curve);
            let paused: Vec<u64> = actions
                .iter()
                .filter_map(|(_, a)| match a {
                    Action::Pause(id) => Some(*id),
                    Action::Resume(..) => None,
                })
                .collect();
            assert_eq!(paused, [4, 3, 2], "youngest first, job 1 always runs");
            assert_eq!(actions[0].0, first, "{shape:?}: {actions:?}");
            assert!(actions.iter().all(|(_, a)| matches!(a, Action::Pause(_))));
        }
    }

    #[test]
    fn a_job_started_beside_a_paused_one_is_paused_at_once() {
        // Job 3 is paused; make started job 4 beside it with a token it gave back and
        // took again. Memory is not short now: job 4 is paused all the same, and job 3,
        // the oldest paused, resumes first when there is room.
        let mut policy = memory(512);
        let now = Instant::now();
        policy.sample(now, mib(800));
        let jobs = [
            job(1, false, 100, 1),
            job(2, false, 100, 1),
            job(3, true, 100, 1),
            job(4, false, 5, 1),
        ];
        assert_eq!(policy.decide(now, &jobs), Some(Action::Pause(4)));
        let jobs = [
            job(1, false, 100, 2),
            job(2, false, 100, 2),
            job(3, true, 100, 1),
            job(4, true, 5, 1),
        ];
        let later = now + RESUME_GAP;
        policy.sample(later, mib(800));
        assert_eq!(
            policy.decide(later, &jobs),
            Some(Action::Resume(3, Why::Room))
        );
        // Never the last running job.
        let alone = [job(1, true, 100, 1), job(2, false, 5, 1)];
        assert_eq!(policy.decide(later, &alone), None);
    }

    #[test]
    fn short_but_steady_memory_pauses_nothing() {
        let mut policy = memory(1024);
        let actions = replay(&mut policy, &[256; 20]);
        assert_eq!(actions, []);
    }

    #[test]
    fn memory_coming_back_resumes_the_oldest_first_with_a_gap_and_room() {
        let mut policy = memory(512);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut jobs = vec![
            job(1, false, 300, 10),
            job(2, true, 200, 0),
            job(3, true, 100, 0),
        ];
        // Just above the minimum: no room for job 2's 200 MiB.
        policy.sample(at(0), mib(600));
        assert_eq!(policy.decide(at(0), &jobs), None);
        jobs[0].cpu += 1;
        policy.sample(at(100), mib(800));
        assert_eq!(
            policy.decide(at(100), &jobs),
            Some(Action::Resume(2, Why::Room))
        );
        jobs[1].paused = false;
        jobs[0].cpu += 1;
        policy.sample(at(200), mib(800));
        assert_eq!(policy.decide(at(200), &jobs), None, "one per gap");
        jobs[0].cpu += 1;
        policy.sample(at(100 + RESUME_GAP.as_millis() as u64), mib(800));
        assert_eq!(
            policy.decide(at(100 + RESUME_GAP.as_millis() as u64), &jobs),
            Some(Action::Resume(3, Why::Room))
        );
    }

    #[test]
    fn a_stall_resumes_the_oldest_paused_and_no_pause_follows_at_once() {
        let mut policy = memory(512);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Job 1 runs but its CPU time does not grow: it waits for job 2 (a lock).
        let jobs = [job(1, false, 300, 7), job(2, true, 200, 3)];
        let mut resumed = None;
        for i in 0..40 {
            let now = at(100 * i);
            policy.sample(now, mib(400 - i));
            if let Some(action) = policy.decide(now, &jobs) {
                resumed = Some((i, action));
                break;
            }
        }
        let (i, action) = resumed.expect("a resume");
        assert_eq!(action, Action::Resume(2, Why::Stalled));
        assert_eq!(
            i,
            STALL.as_millis() as u64 / 100,
            "after STALL without progress"
        );
        // Both run, memory still short and falling: no pause within STALL.
        let jobs = [job(1, false, 300, 7), job(2, false, 200, 3)];
        let now = at(100 * i + 100);
        policy.sample(now, mib(200));
        assert_eq!(policy.decide(now, &jobs), None);
        let later = now + STALL;
        policy.sample(later - Duration::from_millis(100), mib(160));
        policy.sample(later, mib(150));
        assert_eq!(policy.decide(later, &jobs), Some(Action::Pause(2)));
    }

    #[test]
    fn no_job_running_resumes_the_oldest_paused_even_when_short() {
        let mut policy = memory(512);
        let now = Instant::now();
        policy.sample(now, mib(100));
        let jobs = [job(2, true, 200, 0), job(3, true, 100, 0)];
        assert_eq!(
            policy.decide(now, &jobs),
            Some(Action::Resume(2, Why::Alone))
        );
    }

    #[test]
    fn with_a_minimum_too_pressure_pauses_only_below_the_minimum() {
        let mut policy = Policy::new(Thresholds {
            min_available: Some(512 * MIB),
            max_pressure: Some(5.0),
        });
        let t0 = Instant::now();
        let jobs = [job(1, false, 0, 1), job(2, false, 0, 1)];
        let mut look = |ms: u64, available: u64, pressure: f64| {
            let now = t0 + Duration::from_millis(ms);
            let sample = Sample {
                available: Some(available * MIB),
                pressure: Some(pressure),
            };
            policy.sample(now, sample);
            policy.decide(now, &jobs)
        };
        assert_eq!(look(0, 900, 1.0), None);
        assert_eq!(look(100, 800, 9.0), None, "rising, but memory is not short");
        assert_eq!(look(200, 400, 12.0), Some(Action::Pause(2)));
    }

    #[test]
    fn rising_pressure_pauses_and_pressure_below_the_limit_resumes() {
        let mut policy = Policy::new(Thresholds {
            min_available: None,
            max_pressure: Some(10.0),
        });
        let t0 = Instant::now();
        let mut jobs = vec![job(1, false, 0, 0), job(2, false, 0, 0)];
        let mut seen = Vec::new();
        for (i, p) in [0.0, 5.0, 12.0, 20.0, 20.0, 8.0, 8.0, 8.0]
            .iter()
            .enumerate()
        {
            let now = t0 + Duration::from_millis(300 * i as u64);
            jobs[0].cpu += 1;
            policy.sample(
                now,
                Sample {
                    available: None,
                    pressure: Some(*p),
                },
            );
            if let Some(action) = policy.decide(now, &jobs) {
                jobs[1].paused = matches!(action, Action::Pause(_));
                seen.push((i, action));
            }
        }
        assert_eq!(
            seen,
            [(2, Action::Pause(2)), (5, Action::Resume(2, Why::Room))],
            "paused while rising above; resumed once below and no longer rising"
        );
    }

    #[test]
    fn the_first_wave_is_paced_by_the_trend_until_a_footprint_is_known() {
        // 1.5 GiB of room, a minimum of 512 MiB, 8 slots: the minimum stands in for the
        // footprint, so the room holds 2 of them, not 8: paced.
        let mut policy = memory(512);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        policy.sample(at(0), mib(2048));
        assert!(policy.may_start(at(0), 8, false));
        policy.started(at(0));
        assert!(
            !policy.may_start(at(50), 8, false),
            "within PACE of the last start"
        );
        // 100 MiB gone in 200 ms: 1436 MiB of room lasts 2.9 s at that rate.
        policy.sample(at(200), mib(1948));
        assert!(policy.may_start(at(200), 8, false));
        policy.started(at(200));
        // 300 MiB more in 200 ms: 1136 MiB lasts 0.76 s, below the horizon.
        policy.sample(at(400), mib(1648));
        assert!(!policy.may_start(at(400), 8, false));
        // Short: never.
        policy.sample(at(900), mib(500));
        assert!(!policy.may_start(at(900), 8, false));
        // Jobs of 10 MiB ended: 8 of them fit the room, no pacing.
        policy.ended(10 * MIB, None);
        policy.sample(at(1000), mib(1648));
        policy.started(at(1000));
        assert!(policy.may_start(at(1001), 8, false));
    }

    #[test]
    fn starts_are_admitted_while_the_room_holds_what_running_jobs_will_grow_to() {
        // The bench's table: 1.5 GiB, a minimum of 512 MiB, 8 slots, jobs that grow to
        // 400 MiB together. The trend alone let 5 start before their growth showed.
        let mut policy = memory(512);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let look = |policy: &mut Policy, ms: u64, available: u64, rss: &[u64]| {
            policy.sample(at(ms), mib(available));
            let jobs: Vec<JobView> = (0..rss.len())
                .map(|i| job(i as u64, false, rss[i], ms))
                .collect();
            policy.decide(at(ms), &jobs);
        };
        look(&mut policy, 0, 1536, &[]);
        assert!(policy.tight(8) && policy.watching(false, 8));
        assert!(policy.may_start(at(0), 8, false), "nothing runs: always");
        policy.started(at(0));
        // The minimum stands in for the footprint: 1024 MiB of room holds job 1's growth
        // and one more.
        look(&mut policy, 200, 1516, &[20]);
        assert!(policy.may_start(at(200), 8, false));
        policy.started(at(200));
        assert!(
            !policy.may_start(at(400), 8, false),
            "job 2 not seen yet counts whole"
        );
        look(&mut policy, 400, 1476, &[40, 20]);
        assert!(
            !policy.may_start(at(400), 8, false),
            "1004 MiB of room, 984 MiB for the two to grow by: no third"
        );
        // Job 1 ended at its peak of 400 MiB; job 2 is at 380: 644 MiB of room holds job
        // 2's last 20 MiB and one more of 400.
        policy.ended(400 * MIB, None);
        look(&mut policy, 4000, 1156, &[380]);
        assert!(policy.may_start(at(4000), 8, false));
        policy.started(at(4000));
        look(&mut policy, 4200, 1136, &[390, 20]);
        assert!(
            !policy.may_start(at(4200), 8, false),
            "624 MiB of room, 390 MiB still to grow: not another 400"
        );
        // Small jobs: room for all 8 slots, not tight, no look at the jobs needed.
        policy.ended(400 * MIB, None);
        look(&mut policy, 9000, 1536, &[]);
        let mut small = memory(64);
        small.ended(10 * MIB, None);
        small.sample(at(0), mib(1536));
        assert!(!small.tight(8) && !small.watching(false, 8));
    }

    #[test]
    fn once_a_shape_is_known_jobs_at_different_stages_share_the_room() {
        // The same pool; a job of 400 MiB was seen from start to end in 4 s.
        let mut policy = memory(512);
        policy.ended(400 * MIB, Some(Duration::from_secs(4)));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // (MiB, ms since its start) of each running job.
        let look = |policy: &mut Policy, ms: u64, available: u64, jobs: &[(u64, u64)]| {
            policy.sample(at(ms), mib(available));
            let views: Vec<JobView> = jobs
                .iter()
                .enumerate()
                .map(|(i, &(rss, age))| JobView {
                    elapsed: Duration::from_millis(age),
                    ..job(i as u64, false, rss, ms)
                })
                .collect();
            policy.decide(at(ms), &views);
        };
        // One job at 380 MiB, ending in 200 ms: 644 MiB of room. A new one and then a
        // second new one fit (380 + 2 x 20 before the end; then 2 x 400 in the room that
        // the ended job frees), a third would not (3 x 400).
        look(&mut policy, 0, 1156, &[(380, 3800)]);
        assert!(policy.may_start(at(0), 8, false));
        policy.started(at(0));
        assert!(policy.may_start(at(200), 8, false), "a second");
        policy.started(at(200));
        assert!(
            !policy.may_start(at(400), 8, false),
            "three starting together would not fit"
        );
        // Two jobs at 100 MiB (1 s old): 824 MiB of room. A third now would be at 300 MiB
        // when they end at 400 each: 1100 MiB. At 2.2 s, it would be at 180: 980 MiB, fits.
        look(&mut policy, 1000, 1336, &[(100, 1000), (100, 1000)]);
        assert!(!policy.may_start(at(1000), 8, false));
        look(&mut policy, 2200, 1096, &[(220, 2200), (220, 2200)]);
        assert!(policy.may_start(at(2200), 8, false));
        // A job older than the shape's duration is expected neither to end nor to shrink:
        // at its footprint, it leaves 624 MiB; the new one's 400 fits, a second does not.
        look(&mut policy, 9000, 1136, &[(390, 6000)]);
        assert!(policy.may_start(at(9000), 8, false));
        policy.started(at(9000));
        assert!(!policy.may_start(at(9200), 8, false));
    }

    #[test]
    fn under_a_client_before_a_shape_is_known_running_jobs_grow_to_the_footprint() {
        let mut policy = memory(512);
        policy.refilled(true);
        let now = Instant::now();
        policy.sample(now, mib(1536));
        policy.decide(now, &[job(1, false, 20, 1)]);
        policy.sample(now + PACE, mib(1520));
        assert!(policy.may_start(now + PACE, 8, false), "1008 MiB hold two");
        policy.started(now + PACE);
        assert!(!policy.may_start(now + 2 * PACE, 8, false), "not three");
    }

    #[test]
    fn under_a_client_a_job_that_ends_is_followed_by_the_next_in_its_slot() {
        // As above: one job at 380 MiB ending in 200 ms, 644 MiB of room. The runner
        // admits two; under make, the one ending is followed by make's next, which will
        // have grown to 380 MiB when a new one reaches 400: room for one.
        let mut policy = memory(512);
        policy.refilled(true);
        policy.ended(400 * MIB, Some(Duration::from_secs(4)));
        let now = Instant::now();
        policy.sample(now, mib(1156));
        let running = [JobView {
            elapsed: Duration::from_millis(3800),
            ..job(1, false, 380, 1)
        }];
        policy.decide(now, &running);
        assert!(policy.may_start(now, 8, false));
        policy.started(now);
        let later = now + PACE;
        assert!(!policy.may_start(later, 8, false));
    }

    #[test]
    fn nothing_starts_while_a_job_is_paused() {
        let mut policy = memory(512);
        let now = Instant::now();
        policy.sample(now, mib(8192));
        assert!(policy.may_start(now, 4, false));
        assert!(
            !policy.may_start(now, 4, true),
            "a paused job is resumed before anything new starts"
        );
    }

    #[test]
    fn ample_room_or_no_memory_figure_is_never_paced() {
        let mut policy = memory(1024);
        let now = Instant::now();
        policy.sample(now, mib(8192));
        policy.started(now);
        assert!(
            policy.may_start(now, 4, false),
            "7 GiB of room holds 4 jobs of 1 GiB"
        );
        let mut pressure = Policy::new(Thresholds {
            min_available: None,
            max_pressure: Some(10.0),
        });
        pressure.sample(
            now,
            Sample {
                available: None,
                pressure: Some(1.0),
            },
        );
        pressure.started(now);
        assert!(pressure.may_start(now, 8, false));
    }

    #[test]
    fn looks_come_faster_as_memory_falls_towards_the_minimum() {
        let mut policy = memory(512);
        let t0 = Instant::now();
        policy.sample(t0, mib(4096));
        // Steady, 3.5 GiB above the minimum: a sudden fall takes 3.5 s to use it.
        assert_eq!(policy.next_look(), SLOWEST_LOOK);
        // 800 MiB/s falling with 3.3 GiB of room: 4.2 s away, a look every second.
        policy.sample(t0 + Duration::from_millis(250), mib(3896));
        assert_eq!(policy.next_look(), SLOWEST_LOOK);
        policy.sample(t0 + Duration::from_millis(500), mib(3696));
        let look = policy.next_look();
        assert!(look > LOOK && look < SLOWEST_LOOK, "{look:?}");
        policy.sample(t0 + Duration::from_millis(600), mib(700));
        let look = policy.next_look();
        assert!(look < LOOK && look >= FASTEST_LOOK, "{look:?}");
        assert!(policy.watching(false, 1));
    }

    #[test]
    fn looks_are_slower_far_from_the_minimum_and_not_while_steady_near_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 100 MiB above the minimum and steady (held back): the usual look, no faster.
        let mut policy = memory(512);
        policy.sample(t0, mib(612));
        policy.sample(at(250), mib(612));
        assert_eq!(policy.next_look(), LOOK);
        // 768 MiB of room: half of what a sudden fall uses in 0.75 s -> 375 ms.
        let mut policy = memory(256);
        policy.sample(t0, mib(1024));
        assert_eq!(policy.next_look(), Duration::from_millis(375));
        // Looks a second apart still see a fall: 1 GiB/s with 1.5 GiB of room left.
        let mut policy = memory(512);
        policy.sample(t0, mib(3072));
        assert_eq!(policy.next_look(), SLOWEST_LOOK);
        policy.sample(at(1000), mib(2048));
        assert_eq!(policy.next_look(), Duration::from_millis(375));
        policy.sample(at(1250), mib(700));
        assert_eq!(policy.next_look(), FASTEST_LOOK);
    }

    #[test]
    fn a_pressure_limit_alone_looks_every_second_while_a_trigger_watches() {
        let t0 = Instant::now();
        let pressure = |pct| Sample {
            available: None,
            pressure: Some(pct),
        };
        let mut policy = Policy::new(Thresholds {
            min_available: None,
            max_pressure: Some(10.0),
        });
        policy.sample(t0, pressure(1.0));
        assert_eq!(policy.next_look(), LOOK, "no trigger: the usual look");
        policy.notified(true);
        assert_eq!(policy.next_look(), SLOWEST_LOOK);
        policy.sample(t0, pressure(12.0));
        assert_eq!(policy.next_look(), LOOK, "short: the usual look");
    }
}
