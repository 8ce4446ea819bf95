//! The supervision loop: one `poll()` over the signalfd (child exits, SIGINT, SIGTERM,
//! SIGHUP, SIGUSR1/2), the jobserver while a job waits for a token, the job list while it
//! has no full line, the output pipes of running jobs, jsrun's stdout or stderr while
//! grouped output waits for it, and, for a pool of jsrun's own, the pool's inotify watch.
//! Nothing sleeps, nothing spins and no write blocks; a timeout is set only while a limit
//! is to be looked at or held-back tokens go back.
//!
//! Slots come from the [`Ledger`]; a job's [`Held`] slot goes back when the job is gone.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::bridge::Bridge;
use crate::govern::{self, Governor, View};
use crate::jobs::feed::{Feed, Next};
use crate::jobs::{self, Job};
use crate::limits::{self, Limits, Probe};
use crate::output::{Capture, Gone, Output};
use crate::pool::Pool;
use crate::report::{Finished, Report};
use crate::slots::{Gather, Gathered, HEAVY_WAIT, Held, Ledger};
use crate::spawn::Spawner;
use crate::status::Status;
use crate::sys::Signals;
use crate::verdict::Verdict;

/// What to run and how.
pub struct Plan {
    pub feed: Feed,
    /// At most this many jobs at once (changed by SIGUSR1/SIGUSR2 under another pool).
    pub cap: usize,
    pub keep_going: bool,
    pub limits: Limits,
    pub verbose: bool,
    /// Slots every job needs (`--weight`), already capped at the pool's size.
    pub weight: usize,
    /// `--serve`: no job; serve the pool until SIGINT, SIGTERM or SIGHUP.
    pub serve: bool,
}

pub struct Outcome {
    pub status: Status,
    /// A pool of jsrun's own: how the tree used it.
    pub governed: Option<Governed>,
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

struct Running<'a> {
    pid: Pid,
    job: Job,
    /// Given back when the job is gone, never before.
    _slots: Vec<Held<'a, 'a>>,
    started: (Instant, SystemTime),
    capture: Option<Capture>,
}

/// How often a limit is looked at while it is set.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// How long jobs get to end after SIGTERM when the loop failed, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

struct Supervisor<'a> {
    plan: Plan,
    signals: &'a Signals,
    ledger: &'a Ledger<'a>,
    pool: &'a Pool,
    report: &'a mut Report,
    output: &'a mut Output,
    spawner: Spawner,
    running: Vec<Running<'a>>,
    verdict: Verdict,
    /// The next job, rendered and resolved, waiting for a slot.
    pending: Option<Job>,
    /// The slots gathered for `pending` so far.
    gather: Gather<'a, 'a>,
    /// Since when `pending` waits for a token.
    waiting_since: Option<Instant>,
    /// When a heavy job must look again for the lock or stop waiting for its set.
    gather_deadline: Option<Instant>,
    /// A spawn failed for want of processes, fds or memory: wait for a job to end.
    short_of_resources: bool,
    shortage_reported: bool,
    governor: Option<Governor>,
    limiter: Option<Limiter>,
}

/// The limits and when to look at them next.
struct Limiter {
    limits: Limits,
    probe: Probe,
    next_check: Instant,
    /// Why jobs are held back now.
    exceeded: Option<limits::Exceeded>,
}

pub fn run(
    plan: Plan,
    pool: &Pool,
    signals: &Signals,
    report: &mut Report,
    output: &mut Output,
) -> Result<Outcome> {
    let spawner = Spawner::new(plan.feed.reads_stdin(), &pool.env())
        .context("cannot prepare to start jobs")?;
    let ledger = Ledger::new(pool.client(), pool.implicit() > 0);
    let limiter = plan.limits.is_set().then(|| Limiter {
        limits: plan.limits,
        probe: Probe::from_env(),
        next_check: Instant::now(),
        exceeded: None,
    });
    let plan_weight = plan.weight;
    let mut sup = Supervisor {
        verdict: Verdict::new(plan.keep_going),
        plan,
        signals,
        ledger: &ledger,
        pool,
        report,
        output,
        spawner,
        running: Vec::new(),
        pending: None,
        gather: Gather::new(plan_weight),
        waiting_since: None,
        gather_deadline: None,
        short_of_resources: false,
        shortage_reported: false,
        governor: pool.governor(),
        limiter,
    };
    sup.run()?;
    let now = Instant::now();
    let governed = sup.governor.as_mut().map(|g| {
        let slots = g.slots();
        let (view, held, expected) = g.finish(now);
        Governed {
            slots,
            view,
            held: held.len(),
            expected,
        }
    });
    Ok(Outcome {
        status: sup.verdict.status(),
        governed,
    })
}

impl Drop for Supervisor<'_> {
    /// However the loop ends (an error, even a panic), every slot still held goes back,
    /// but only once its job is gone: given back for a job that still runs, a token would
    /// let one more job start than the pool has slots.
    fn drop(&mut self) {
        self.stop_running();
    }
}

/// What the loop waits for besides signals.
#[derive(Default)]
struct Wants {
    token: bool,
    source: bool,
}

impl<'a> Supervisor<'a> {
    fn run(&mut self) -> Result<()> {
        // A signal that came before the first job (while the jobserver was set up or a
        // make was asked its version) stops it from starting.
        self.handle_signals()?;
        loop {
            self.govern(Instant::now());
            let wants = self.start_jobs();
            let feed_done = self.plan.feed.is_done() && self.pending.is_none() && !self.plan.serve;
            if self.running.is_empty()
                && (self.verdict.halted() || feed_done)
                && (self.output.is_empty() || self.verdict.interrupted().is_some())
            {
                break;
            }
            self.wait(&wants)?;
        }
        // Interrupted with output still queued: one last try that does not wait.
        self.output.flush();
        Ok(())
    }

    /// Looks at the limits when it is time, lets the governor follow the pool, and
    /// balances the bridge.
    fn govern(&mut self, now: Instant) {
        if let Some(bridge) = self.pool.bridge() {
            bridge.balance();
        }
        if let Some(limiter) = &mut self.limiter
            && now >= limiter.next_check
        {
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
            if self.plan.verbose && exceeded.is_some() != limiter.exceeded.is_some() {
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
        let (Some(governor), Some(client)) = (&mut self.governor, self.pool.client()) else {
            return;
        };
        let mut events = Vec::new();
        governor.wake(client, self.ledger.implicit_busy(), now, &mut events);
        for event in events {
            match event {
                govern::Event::Level { in_use, held } => {
                    self.report.counter("slots in use", in_use);
                    self.report.counter("held back", held);
                }
                govern::Event::Extra { tokens, at } => crate::say!(
                    "jsrun: warning: at {:.1}s: {tokens} more token(s) in the pool than it can \
                     hold; a job wrote a byte it never read",
                    at.as_secs_f64()
                ),
                govern::Event::Reclaimed { tokens, at } => crate::say!(
                    "jsrun: warning: at {:.1}s: {tokens} token(s) missing and no process holds \
                     the pool open any more: written back",
                    at.as_secs_f64()
                ),
                govern::Event::Resized { .. } => {}
            }
        }
    }

    /// Starts jobs while slots, jobs and limits allow; says what to wait for next.
    fn start_jobs(&mut self) -> Wants {
        let mut wants = Wants::default();
        self.gather_deadline = None;
        // A heavy job counts as `weight` of jsrun's own cap.
        let most = (self.plan.cap / self.plan.weight).max(1);
        while !self.verdict.halted()
            && !self.short_of_resources
            && !self.output.backlogged()
            && self.running.len() < most
        {
            if self.pending.is_none() {
                match self.plan.feed.next(self.free_number()) {
                    Next::Job(mut job) => {
                        match self.plan.feed.resolve(&mut job) {
                            Ok(()) => self.pending = Some(job),
                            Err(status) => self.book(&job, None, status, None),
                        }
                        continue;
                    }
                    Next::Wait => wants.source = true,
                    Next::Done => {}
                }
                break;
            }
            // Under another pool a limit keeps jsrun's own jobs down to one; a pool of
            // jsrun's own is held back by its governor instead.
            let limited = self.limiter.as_ref().is_some_and(|l| l.exceeded.is_some());
            if limited && self.governor.is_none() && !self.running.is_empty() {
                break;
            }
            let tokens = self.governor.as_ref().is_none_or(Governor::may_take);
            let ledger = self.ledger;
            let slots = match self.gather.step(ledger, tokens, Instant::now()) {
                Gathered::All(slots) => slots,
                Gathered::Part(slots) => {
                    if self.plan.verbose {
                        crate::say!(
                            "jsrun: no slot came back for {}s: the job runs with {} of its {} slots",
                            HEAVY_WAIT.as_secs(),
                            slots.len(),
                            self.plan.weight
                        );
                    }
                    slots
                }
                Gathered::Wait(token, until) => {
                    self.waiting_since.get_or_insert_with(Instant::now);
                    wants.token = token;
                    self.gather_deadline = until;
                    break;
                }
                Gathered::Never(error) => {
                    self.jobserver_failed(error);
                    break;
                }
            };
            for _ in slots.iter().filter(|slot| slot.is_token()) {
                self.report.token_acquired(self.waiting_since.take());
            }
            self.waiting_since = None;
            let mut job = self.pending.take().expect("a pending job");
            // The lowest number free now that the job starts: it may have waited for a
            // token while other jobs ended.
            self.plan.feed.renumber(&mut job, self.free_number());
            self.spawn(job, slots);
        }
        wants
    }

    /// The jobserver gave EOF or an error: going on with the slots held, or, with no
    /// slot at all, nothing can run.
    fn jobserver_failed(&mut self, error: Option<io::Error>) {
        let (Some(e), Some(client)) = (error, self.pool.client()) else {
            return;
        };
        if !self.ledger.has_implicit() && self.running.is_empty() {
            crate::say!(
                "jsrun: error: jobserver {} failed ({e}) before any job could start",
                client.auth()
            );
            self.verdict.stop(Status::USAGE);
            self.pending = None;
        } else {
            crate::say!(
                "jsrun: warning: jobserver {} failed ({e}); going on with the slots held",
                client.auth()
            );
        }
    }

    /// The lowest slot number no running job has (`{%}`, 1..N).
    fn free_number(&self) -> usize {
        (1..)
            .find(|n| self.running.iter().all(|r| r.job.slot != *n))
            .unwrap_or(1)
    }

    fn spawn(&mut self, job: Job, slots: Vec<Held<'a, 'a>>) {
        match self.try_spawn(&job) {
            Ok((pid, capture, started)) => {
                if self.plan.verbose {
                    crate::say!("jsrun: [{}] {}", job.slot, job.display());
                }
                self.running.push(Running {
                    pid,
                    job,
                    _slots: slots,
                    started,
                    capture,
                });
                self.report.started(self.running.len());
            }
            // Out of processes (RLIMIT_NPROC), fds or memory while other jobs run: try
            // again when one of them has ended, rather than fail a job that could run.
            Err(e) if is_shortage(&e) && !self.running.is_empty() => {
                if !std::mem::replace(&mut self.shortage_reported, true) {
                    crate::say!(
                        "jsrun: warning: cannot start a job now ({e}); waiting for running jobs to end"
                    );
                }
                drop(slots);
                self.short_of_resources = true;
                self.pending = Some(job);
            }
            Err(e) => {
                drop(slots);
                let status = jobs::spawn_error_status(&e);
                crate::say!("jsrun: cannot run {}: {e}", job.argv[0].to_string_lossy());
                self.book(&job, None, status, None);
            }
        }
    }

    /// Output pipes (when grouped) and the process.
    fn try_spawn(
        &mut self,
        job: &Job,
    ) -> io::Result<(Pid, Option<Capture>, (Instant, SystemTime))> {
        let (capture, pipes) = match self.output.prepare()? {
            Some((capture, pipes)) => (Some(capture), Some(pipes)),
            None => (None, None),
        };
        let started = (Instant::now(), SystemTime::now());
        let pid =
            self.spawner
                .spawn(&job.program, &job.argv, pipes.as_ref().map(|[o, e]| [o, e]))?;
        // `pipes` ends here: the child has its own copies, and ours would keep the
        // pipes from ever ending.
        Ok((pid, capture, started))
    }

    fn wait(&mut self, wants: &Wants) -> Result<()> {
        let client = self.pool.client();
        let governor = self.governor.as_ref();
        let mut set = PollSet::default();
        set.add(Some(self.signals.fd()), PollFlags::POLLIN);
        set.add(
            client.filter(|_| wants.token).map(|c| c.fd()),
            PollFlags::POLLIN,
        );
        let source = set.add(
            self.plan.feed.fd().filter(|_| wants.source),
            PollFlags::POLLIN,
        );
        let sink = set.add(self.output.waiting_for(), PollFlags::POLLOUT);
        set.add(governor.and_then(Governor::watch_fd), PollFlags::POLLIN);
        let holding = governor.is_some_and(Governor::wants_tokens);
        set.add(
            client.filter(|_| holding).map(|c| c.fd()),
            PollFlags::POLLIN,
        );
        let bridge = self.pool.bridge();
        set.add(bridge.and_then(Bridge::watch_fd), PollFlags::POLLIN);
        set.add(bridge.and_then(Bridge::outer_fd), PollFlags::POLLIN);
        // A full queue drains no pipe: jobs wait on their own pipes, not in jsrun's memory.
        let mut outputs = Vec::new();
        if !self.output.backlogged() {
            for (i, running) in self.running.iter().enumerate() {
                for pipe in running.capture.iter().flat_map(Capture::pipes) {
                    outputs.push((i, set.add(Some(pipe.as_fd()), PollFlags::POLLIN)));
                }
            }
        }
        let deadline = [
            self.limiter.as_ref().map(|l| l.next_check),
            governor.and_then(Governor::deadline),
            self.gather_deadline,
        ]
        .into_iter()
        .flatten()
        .min();
        set.poll(deadline)?;
        let source_ready = set.ready(source);
        let sink_ready = set.ready(sink);
        let ready_outputs: Vec<usize> = outputs
            .iter()
            .filter(|(_, at)| set.ready(*at))
            .map(|(i, _)| *i)
            .collect();
        drop(set);
        if sink_ready {
            self.output.flush();
        }
        for i in ready_outputs {
            let running = &mut self.running[i];
            if let Some(capture) = &mut running.capture {
                self.output.drain(capture, &running.job);
            }
        }
        if source_ready && let Err(e) = self.plan.feed.fill() {
            // The message names the input (and the line of one too long); no new job
            // starts, running jobs finish.
            crate::say!("jsrun: error: {e}");
            self.plan.feed.close();
            self.verdict.stop(Status::USAGE);
            self.pending = None;
        }
        self.handle_signals()
    }

    /// Acts on every signal that has come: child exits, interrupts, resizing.
    fn handle_signals(&mut self) -> Result<()> {
        while let Some(sig) = self.signals.next()? {
            match sig {
                Signal::SIGCHLD => self.reap(),
                Signal::SIGUSR1 => self.resize(true),
                Signal::SIGUSR2 => self.resize(false),
                sig => self.interrupt(sig),
            }
        }
        self.check_output();
        Ok(())
    }

    /// SIGUSR1: one slot more; SIGUSR2: one fewer, down to 1. A pool of jsrun's own
    /// changes size; under another pool jsrun's own cap changes.
    fn resize(&mut self, grow: bool) {
        let slots = match (&mut self.governor, self.pool.client()) {
            (Some(governor), Some(client)) => match governor.resize(grow, client) {
                Some(govern::Event::Resized { slots }) => slots,
                _ => governor.slots(),
            },
            // jsrun's own cap; from "no cap", one fewer than the jobs running now.
            _ => {
                let cap = &mut self.plan.cap;
                *cap = match grow {
                    true => cap.saturating_add(1),
                    false => (*cap).min(self.running.len()).saturating_sub(1).max(1),
                };
                *cap
            }
        };
        if self.plan.verbose {
            let sig = if grow { "SIGUSR1" } else { "SIGUSR2" };
            crate::say!(
                "jsrun: {sig}: {slots} slot{}",
                if slots == 1 { "" } else { "s" }
            );
        }
    }

    /// Ends the jobs still running when the loop cannot go on: SIGTERM, up to
    /// [`STOP_GRACE`] for them to end, then SIGKILL; every one is reaped and its slot
    /// given back.
    fn stop_running(&mut self) {
        if self.running.is_empty() {
            return;
        }
        for r in &self.running {
            let _ = nix::sys::signal::kill(r.pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut sig = Signal::SIGTERM;
        while !self.running.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && sig == Signal::SIGTERM {
                sig = Signal::SIGKILL;
                for r in &self.running {
                    let _ = nix::sys::signal::kill(r.pid, sig);
                }
            }
            // After SIGKILL the wait is short and sure: block in waitpid.
            let flags = (sig == Signal::SIGTERM).then_some(WaitPidFlag::WNOHANG);
            self.running.retain(|r| {
                matches!(
                    nix::sys::wait::waitpid(r.pid, flags),
                    Ok(WaitStatus::StillAlive) | Err(Errno::EINTR)
                )
            });
            if !self.running.is_empty() && sig == Signal::SIGTERM {
                // Woken by SIGCHLD (or the deadline); what the signalfd holds is read
                // only to clear it.
                let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, timeout);
                while let Ok(Some(_)) = self.signals.next() {}
            }
        }
    }

    /// Acts on what became of grouped output. Its reader gone (EPIPE) or a write failed:
    /// start no job, drop every capture (a job that writes again gets SIGPIPE, as it would
    /// without `-O`; one that does not finishes), let the running jobs end, and end with
    /// 141 (a failed write: 125). Output lost on its way out counts as a failed job.
    fn check_output(&mut self) {
        if let Some(gone) = self.output.take_gone() {
            self.pending = None;
            for running in &mut self.running {
                running.capture = None;
            }
            self.verdict.stop(match gone {
                Gone::BrokenPipe => Status::BROKEN_PIPE,
                Gone::Failed => Status::USAGE,
            });
        }
        if self.output.take_lost() > 0 {
            self.verdict.job(Status::USAGE);
            if self.verdict.halted() {
                self.pending = None;
            }
        }
    }

    /// Reaps every child that has ended.
    fn reap(&mut self) {
        loop {
            let wait = match nix::sys::wait::waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    crate::say!("jsrun: warning: waitpid failed: {e}");
                    return;
                }
                Ok(wait) => wait,
            };
            let (Some(pid), Some(mut status)) = (wait.pid(), Status::of_job(wait)) else {
                continue;
            };
            let Some(i) = self.running.iter().position(|r| r.pid == pid) else {
                continue;
            };
            let Running {
                job,
                _slots: slots,
                started,
                capture,
                ..
            } = self.running.swap_remove(i);
            // The slots first: their job is gone.
            drop(slots);
            self.short_of_resources = false;
            // Output that could not be kept (said already) fails a job that succeeded: 125,
            // an error of jsrun's own.
            if let Some(capture) = capture
                && !self.output.finish(capture, &job)
                && status.success()
            {
                status = Status::USAGE;
            }
            let signal = match wait {
                WaitStatus::Signaled(_, sig, _) => Some(sig),
                _ => None,
            };
            self.book(&job, Some(started), status, signal);
        }
    }

    /// Books a job that ended, or never started (`started` is `None`).
    fn book(
        &mut self,
        job: &Job,
        started: Option<(Instant, SystemTime)>,
        status: Status,
        signal: Option<Signal>,
    ) {
        let ended = (Instant::now(), SystemTime::now());
        let done = Finished {
            job,
            started: started.unwrap_or(ended),
            ended,
            status,
            signal,
        };
        self.report.finished(&done, self.running.len());
        self.verdict.job(status);
        if self.verdict.halted() {
            self.pending = None;
        }
    }

    /// SIGINT, SIGTERM, SIGHUP: pass it on to every running job, start nothing new, and
    /// let the loop wait for the jobs to end.
    fn interrupt(&mut self, sig: Signal) {
        self.verdict.interrupt(sig);
        self.pending = None;
        for r in &self.running {
            let _ = nix::sys::signal::kill(r.pid, sig);
        }
    }
}

/// The descriptors of one `poll()`, each entry found again by the index `add` gave.
#[derive(Default)]
struct PollSet<'f> {
    fds: Vec<PollFd<'f>>,
}

impl<'f> PollSet<'f> {
    /// Adds `fd` when there is one; its index, to ask [`PollSet::ready`] after the poll.
    fn add(&mut self, fd: Option<BorrowedFd<'f>>, events: PollFlags) -> Option<usize> {
        let fd = fd?;
        self.fds.push(PollFd::new(fd, events));
        Some(self.fds.len() - 1)
    }

    /// Waits until an entry is ready, a signal comes, or `deadline`.
    fn poll(&mut self, deadline: Option<Instant>) -> Result<()> {
        let timeout = match deadline {
            Some(at) => {
                // Rounded up: a wake-up a little early would find nothing due and poll again.
                let left =
                    at.saturating_duration_since(Instant::now()) + Duration::from_micros(999);
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        match nix::poll::poll(&mut self.fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e).context("poll failed"),
        }
    }

    fn ready(&self, at: Option<usize>) -> bool {
        at.and_then(|i| self.fds[i].revents())
            .is_some_and(|r| !r.is_empty())
    }
}

/// Errors that go away when a running job ends.
fn is_shortage(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error().map(Errno::from_raw),
        Some(Errno::EAGAIN | Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM)
    )
}
