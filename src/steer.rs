//! What the supervision loop consults besides its jobs: the limits, the governor of a pool
//! of jsrun's own, and the bridge to a pipe pool. It looks at the limits when they are due,
//! tells the governor to hold back or let go, keeps the bridge balanced, and turns what the
//! governor saw into trace counters and warnings.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::account::Accountant;
use crate::bridge::Bridge;
use crate::govern::{Event, Governor, View};
use crate::limits::{self, Exceeded, Limits, Probe};
use crate::pool::Pool;
use crate::report::Report;

/// How often a limit is looked at while it is set.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

pub struct Steer<'p> {
    pool: &'p Pool,
    governor: Option<Governor>,
    /// The ledger of an accounting pool (`--serve --accounting`).
    accountant: Option<Accountant<'p>>,
    limiter: Option<Limiter>,
    verbose: bool,
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
}

impl<'p> Steer<'p> {
    pub fn new(pool: &'p Pool, limits: Limits, verbose: bool) -> Steer<'p> {
        Steer {
            pool,
            governor: pool.governor(),
            accountant: pool
                .token_file()
                .zip(pool.client())
                .map(|(file, client)| Accountant::new(file, client)),
            limiter: limits.is_set().then(|| Limiter {
                limits,
                probe: Probe::from_env(),
                next_check: Instant::now(),
                exceeded: None,
            }),
            verbose,
        }
    }

    /// Looks at the limits when it is time, lets the governor follow the pool, and
    /// balances the bridge. `implicit_busy`: jsrun's own job holds its implicit slot.
    pub fn tick(&mut self, now: Instant, implicit_busy: bool, report: &mut Report) {
        if let Some(bridge) = self.pool.bridge() {
            bridge.balance();
        }
        self.check_limits(now);
        let (Some(governor), Some(client)) = (&mut self.governor, self.pool.client()) else {
            return;
        };
        let mut events = Vec::new();
        if let Some(accountant) = &mut self.accountant {
            // Requests first (a token written back goes to the next in line), then the
            // governor (which takes what is free while it holds back), then what it let go.
            accountant.serve(!governor.wants_tokens(), now);
            governor.wake(client, implicit_busy, now, &mut events);
            accountant.hand_out(!governor.wants_tokens(), now);
            governor.observe(client, now, &mut events);
        } else {
            governor.wake(client, implicit_busy, now, &mut events);
        }
        for event in events {
            match event {
                Event::Level { in_use, held } => {
                    report.counter("slots in use", in_use);
                    report.counter("held back", held);
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

    fn check_limits(&mut self, now: Instant) {
        let Some(limiter) = &mut self.limiter else {
            return;
        };
        if now < limiter.next_check {
            return;
        }
        limiter.next_check = now + CHECK_INTERVAL;
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
        if let Some(governor) = &mut self.governor {
            governor.hold(limiter.exceeded.is_some(), now);
        }
    }

    /// Whether jsrun's own jobs may take tokens: not while its pool is held back.
    pub fn may_take(&self) -> bool {
        self.governor.as_ref().is_none_or(Governor::may_take)
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
        let ready = self.accountant.as_ref().and_then(Accountant::deadline);
        check.into_iter().chain(release).chain(ready).min()
    }

    /// The descriptors to poll for reading: the governor's watch, the pool while the
    /// governor takes tokens, the bridge's watch and the outer pipe it waits on.
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
    pub fn finish(&mut self, now: Instant) -> Option<Governed> {
        let governor = self.governor.as_mut()?;
        let slots = governor.slots();
        let (view, held, expected) = governor.finish(now);
        Some(Governed {
            slots,
            view,
            held: held.len(),
            expected,
        })
    }
}
