//! What the supervision loop consults besides its jobs: the limits, the governor of a pool
//! of jsrun's own, and the bridge to a pipe pool. It looks at the limits when they are due,
//! tells the governor to hold back or let go, keeps the bridge balanced, and turns what the
//! governor saw into trace counters and warnings.

use std::os::fd::{BorrowedFd, RawFd};

use nix::poll::PollFlags;
use std::time::{Duration, Instant};

use crate::account::Accountant;
use crate::bridge::Bridge;
use crate::govern::{Event, Governor, View};
use crate::guard::Guard;
use crate::guard::policy::{PACE, Sample};
use crate::limits::{self, Exceeded, Limits, Probe};
use crate::pool::Pool;
use crate::report::Report;
use crate::running::Running;

/// How often a limit is looked at while it is set.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

pub struct Steer<'p> {
    pool: &'p Pool,
    governor: Option<Governor>,
    /// The ledger of an accounting pool (`--serve --accounting`).
    accountant: Option<Accountant<'p>>,
    limiter: Option<Limiter>,
    /// Pauses and resumes jobs, paces starts: a pool of jsrun's own with a memory limit.
    guard: Option<Guard>,
    /// Slots in use at the last look at the pool.
    in_use: usize,
    /// Whether jsrun's own job held the implicit slot at the last tick.
    implicit_busy: bool,
    verbose: bool,
}

/// Whether and how the memory guard runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pausing {
    /// Pausing allowed (not `--no-pause`, not `--serve`).
    pub on: bool,
    /// Jobs are the trees below the pool's clients (`-jN -- CMD`), not jsrun's own jobs.
    pub below_clients: bool,
}

/// How the guard paused jobs: the most at once, and for how long any was paused.
#[derive(Clone, Copy, Debug)]
pub struct PauseView {
    pub most: usize,
    pub time: Duration,
}

/// The limits and when to look at them next.
struct Limiter {
    limits: Limits,
    probe: Probe,
    next_check: Instant,
    /// Why jobs are held back now.
    exceeded: Option<Exceeded>,
}

/// The end of a governed pool.
pub struct Governed {
    pub slots: usize,
    pub view: View,
    /// Tokens held back at the end: they count as present.
    pub held: usize,
    /// Tokens the pool should hold.
    pub expected: usize,
    /// The memory guard ran: how it paused jobs.
    pub paused: Option<PauseView>,
}

impl<'p> Steer<'p> {
    pub fn new(pool: &'p Pool, limits: Limits, verbose: bool, pausing: Pausing) -> Steer<'p> {
        let governor = pool.governor();
        // Nothing is read without a limit.
        let probe = limits.is_set().then(Probe::from_env);
        let guard = match (pausing.on, &governor, pool.client()) {
            (true, Some(_), Some(client)) => {
                let file = nix::sys::stat::fstat(client.fd()).ok();
                let counters = probe.as_ref().map(Probe::oom_counters);
                let counters = counters.unwrap_or_default();
                let sources = probe
                    .as_ref()
                    .map(Probe::notice_sources)
                    .unwrap_or_default();
                let pool = match (pausing.below_clients, file) {
                    (false, _) => Some(None),
                    (true, Some(stat)) => Some(Some((stat.st_dev, stat.st_ino))),
                    (true, None) => None,
                };
                pool.and_then(|pool| Guard::new(&limits, pool, counters, &sources, verbose))
            }
            _ => None,
        };
        Steer {
            pool,
            guard,
            in_use: 0,
            implicit_busy: false,
            governor,
            accountant: pool
                .token_file()
                .zip(pool.client())
                .map(|(file, client)| Accountant::new(file, client)),
            limiter: probe.map(|probe| Limiter {
                limits,
                probe,
                next_check: Instant::now(),
                exceeded: None,
            }),
            verbose,
        }
    }

    /// The pool steered.
    pub fn pool(&self) -> &'p Pool {
        self.pool
    }

    /// Looks at the limits when it is time, lets the governor follow the pool, and
    /// balances the bridge. `implicit_busy`: jsrun's own job holds its implicit slot.
    pub fn tick(
        &mut self,
        now: Instant,
        implicit_busy: bool,
        crew: &[Running<'_>],
        report: &mut Report,
    ) {
        if let Some(bridge) = self.pool.bridge() {
            bridge.balance();
        }
        self.check_limits(now, crew, report);
        let (Some(governor), Some(client)) = (&mut self.governor, self.pool.client()) else {
            return;
        };
        let mut events = Vec::new();
        let busy_before = std::mem::replace(&mut self.implicit_busy, implicit_busy);
        if let Some(accountant) = &mut self.accountant {
            // Requests first (a token written back goes to the next in line), then the
            // governor (which takes what is free while it holds back), then what it let go.
            // The private pipe is the accountant's and the governor's alone: its level is
            // read again only when one of them moved a token (or jsrun's own job began or
            // ended).
            accountant.serve(!governor.wants_tokens(), now);
            if accountant.moved() || governor.due(now) || implicit_busy != busy_before {
                governor.wake(client, implicit_busy, now, &mut events);
            }
            if accountant.hand_out(!governor.wants_tokens(), now) {
                accountant.moved();
                governor.observe(client, now, &mut events);
            }
        } else {
            governor.wake(client, implicit_busy, now, &mut events);
        }
        for event in events {
            match event {
                Event::Level { in_use, held } => {
                    report.counter("slots in use", in_use);
                    report.counter("held back", held);
                    if let Some(guard) = &mut self.guard {
                        let started = in_use > self.in_use;
                        if started {
                            guard.started(now);
                        }
                        // A job started beside a paused one is to be paused at once; after
                        // an end, a paused one may resume, or another job start.
                        let look = match started {
                            true => guard.has_paused(),
                            false => guard.wants_ends(governor.slots()),
                        };
                        if look && let Some(limiter) = &mut self.limiter {
                            limiter.next_check = now;
                        }
                    }
                    self.in_use = in_use;
                }
                Event::Extra { tokens, at } => crate::say!(
                    "jsrun: warning: at {:.1}s: {tokens} more token(s) in the pool than it can \
                     hold; a job wrote a byte it never read",
                    at.as_secs_f64()
                ),
                Event::Reclaimed { tokens, at } => crate::say!(
                    "jsrun: warning: at {:.1}s: {tokens} token(s) missing and no process holds \
                     the pool open any more: written back",
                    at.as_secs_f64()
                ),
                Event::Resized { .. } => {}
            }
        }
    }

    fn check_limits(&mut self, now: Instant, crew: &[Running<'_>], report: &mut Report) {
        let Some(limiter) = &mut self.limiter else {
            return;
        };
        if now < limiter.next_check {
            return;
        }
        let verdict = loop {
            match limiter.probe.check(&limiter.limits) {
                limits::Verdict::Unavailable(u) => crate::say!("jsrun: warning: {u}"),
                verdict => break verdict,
            }
        };
        let exceeded = match verdict {
            limits::Verdict::Hold { reason } => Some(reason),
            _ => None,
        };
        if self.verbose && exceeded.is_some() != limiter.exceeded.is_some() {
            match &exceeded {
                Some(reason) => crate::say!("jsrun: holding back: {reason}"),
                None => crate::say!("jsrun: limits met again: slots go back"),
            }
        }
        limiter.exceeded = exceeded;
        let mut next = CHECK_INTERVAL;
        let mut pace = false;
        if let Some(guard) = &mut self.guard {
            let (available, pressure) = limiter.probe.last_memory();
            let slots = self.governor.as_ref().map_or(1, Governor::slots);
            guard.look(
                now,
                Sample {
                    available,
                    pressure,
                },
                slots,
                crew,
                report,
            );
            next = guard.next_look();
            pace = limiter.exceeded.is_none() && !guard.may_start(now, slots);
            // While starts are admitted one by one, the next look comes before the
            // governor lets a second held token go (one every `RELEASE_INTERVAL`).
            if pace || guard.wants_ends(slots) {
                next = next.min(PACE);
            }
        }
        limiter.next_check = now + next;
        if let Some(governor) = &mut self.governor {
            governor.hold(limiter.exceeded.is_some() || pace, now);
        }
    }

    /// One of jsrun's own jobs ended: its peak is learnt, and with a job paused or starts
    /// admitted from the jobs' sizes, jsrun looks again at once.
    pub fn job_ended(&mut self, now: Instant) {
        if let Some(guard) = &mut self.guard
            && guard.runner()
        {
            guard.reaped();
        }
        let slots = self.governor.as_ref().map_or(1, Governor::slots);
        if self.guard.as_ref().is_some_and(|g| g.wants_ends(slots))
            && let Some(limiter) = &mut self.limiter
        {
            limiter.next_check = now;
        }
    }

    /// Resumes every paused job; none is paused from now on (the end, an interrupt).
    pub fn resume_all(&mut self, now: Instant, report: &mut Report) {
        if let Some(guard) = &mut self.guard {
            guard.resume_all(now, report);
        }
    }

    /// Whether jsrun's own jobs may take tokens: not while its pool is held back.
    /// While the memory guard paces starts, not before it lets the next one start.
    pub fn may_take(&self) -> bool {
        self.governor.as_ref().is_none_or(Governor::may_take) && self.guard_may_start()
    }

    /// Whether the memory guard lets one of jsrun's own jobs start now, in a token or in
    /// the implicit slot: not while a job is paused (it resumes first), nor before the
    /// pace allows. A job paused with none running is resumed, so this never stalls.
    pub fn guard_may_start(&self) -> bool {
        let slots = self.governor.as_ref().map_or(1, Governor::slots);
        self.guard
            .as_ref()
            .is_none_or(|g| g.may_start(Instant::now(), slots))
    }

    /// One of jsrun's own jobs started, as process `pid`.
    pub fn started(&mut self, now: Instant, pid: i32) {
        if let Some(guard) = &mut self.guard {
            guard.started(now);
            guard.adopt(pid);
        }
    }

    /// One of the runner's jobs died of SIGKILL: whether the OOM killer killed it and it
    /// is to run again (only while the memory guard runs, and only in the runner).
    pub fn oom_killed(&mut self) -> bool {
        self.guard
            .as_mut()
            .is_some_and(|g| g.runner() && g.oom_killed())
    }

    /// Whether an accounting pool's token file was unmounted from outside: nothing is
    /// left to serve.
    pub fn token_file_gone(&self) -> bool {
        self.accountant.as_ref().is_some_and(Accountant::gone)
    }

    /// Under another pool a limit keeps jsrun's own jobs down to one (a pool of jsrun's
    /// own is held back by its governor instead).
    pub fn own_jobs_limited(&self) -> bool {
        self.governor.is_none() && self.limiter.as_ref().is_some_and(|l| l.exceeded.is_some())
    }

    /// When the loop must wake up to look again, even if nothing else happens.
    pub fn deadline(&self) -> Option<Instant> {
        let check = self.limiter.as_ref().map(|l| l.next_check);
        let release = self.governor.as_ref().and_then(Governor::deadline);
        let quiet = self
            .guard
            .as_ref()
            .and_then(|g| g.quiet_until(Instant::now()));
        let ready = self.accountant.as_ref().and_then(Accountant::deadline);
        check
            .into_iter()
            .chain(release)
            .chain(quiet)
            .chain(ready)
            .min()
    }

    /// The descriptors by which the kernel says memory gets short, with what to poll them
    /// for: when one is ready, call [`Steer::notified`].
    pub fn notice_fds(&self, now: Instant) -> impl Iterator<Item = (BorrowedFd<'_>, PollFlags)> {
        self.guard.iter().flat_map(move |g| g.notice_fds(now))
    }

    /// The kernel said memory gets short: look at it at once.
    pub fn notified(&mut self, now: Instant) {
        if let Some(guard) = &mut self.guard
            && guard.notified(now)
            && let Some(limiter) = &mut self.limiter
        {
            limiter.next_check = now;
        }
    }

    /// The descriptors to poll for reading: the governor's watch, the pool while the
    /// governor takes tokens, the bridge's watch and the outer pipe it waits on, and an
    /// accounting pool's descriptors (/dev/fuse, the holders' pidfds).
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        let governor = self.governor.as_ref();
        let holding = governor
            .is_some_and(Governor::wants_tokens)
            .then(|| self.pool.client().map(|c| c.fd()))
            .flatten();
        let bridge = self.pool.bridge();
        [
            governor.and_then(Governor::watch_fd),
            holding,
            bridge.and_then(Bridge::watch_fd),
            bridge.and_then(Bridge::outer_fd),
        ]
        .into_iter()
        .flatten()
        .chain(self.accountant.iter().flat_map(Accountant::fds))
    }

    /// What the loop's poll found ready among [`Steer::fds`], as raw descriptors.
    pub fn woke(&mut self, ready: &[RawFd]) {
        if let Some(accountant) = &mut self.accountant {
            accountant.woke(ready);
        }
    }

    /// SIGUSR1 (`grow`) or SIGUSR2 on a pool of jsrun's own: its new size; `None` when
    /// jsrun governs no pool.
    pub fn resize(&mut self, grow: bool) -> Option<usize> {
        let (governor, client) = (self.governor.as_mut()?, self.pool.client()?);
        Some(match governor.resize(grow, client) {
            Some(Event::Resized { slots }) => slots,
            _ => governor.slots(),
        })
    }

    /// The end: how the tree used a governed pool.
    pub fn finish(&mut self, now: Instant, report: &mut Report) -> Option<Governed> {
        self.resume_all(now, report);
        let paused = self.guard.as_ref().map(|g| PauseView {
            most: g.most,
            time: g.time,
        });
        let governor = self.governor.as_mut()?;
        let slots = governor.slots();
        let (view, held, expected) = governor.finish(now);
        Some(Governed {
            slots,
            view,
            held: held.len(),
            expected,
            paused,
        })
    }
}
