//! The supervision loop: one `poll()` over the signalfd (child exits, SIGINT, SIGTERM,
//! SIGHUP, SIGUSR1/2), the jobserver while a job waits for a token, the job list while it
//! has no full line, the output pipes of running jobs, jsrun's stdout or stderr while
//! grouped output waits for it, and what [`Steer`] watches (a governed pool, a bridge).
//! Nothing sleeps, nothing spins and no write blocks; a timeout is set only while a limit
//! is to be looked at, held-back tokens go back, or a heavy job waits for its set.
//!
//! Slots come from the [`Ledger`]; a job's [`Held`] slots go back when the job is gone.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;

use anyhow::{Context, Result};
use nix::poll::PollFlags;
use nix::sys::signal::Signal;

use crate::jobs::Job;
use crate::jobs::feed::{Feed, Next};
use crate::limits::Limits;
use crate::output::{Capture, Output};
use crate::pollset::PollSet;
use crate::pool::Pool;
use crate::report::Report;
use crate::running::Crew;
use crate::slots::{Gather, Ledger};
use crate::spawn::Spawner;
use crate::status::Status;
use crate::steer::{Governed, Pausing, Steer};
use crate::sys::Signals;
use crate::verdict::Verdict;

// Gathering slots, starting jobs, booking how they ended.
mod book;

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
    /// The memory guard: may it pause jobs, and which.
    pub pausing: Pausing,
}

pub struct Outcome {
    pub status: Status,
    /// A pool of jsrun's own: how the tree used it.
    pub governed: Option<Governed>,
}

struct Supervisor<'a> {
    plan: Plan,
    signals: &'a Signals,
    ledger: &'a Ledger<'a>,
    steer: Steer<'a>,
    report: &'a mut Report,
    output: &'a mut Output,
    spawner: Spawner,
    crew: Crew<'a>,
    verdict: Verdict,
    /// The next job, rendered and resolved, waiting for its slots.
    pending: Option<Job>,
    /// The slots gathered for `pending` so far.
    gather: Gather<'a, 'a>,
    /// Since when `pending` waits for a token.
    waiting_since: Option<Instant>,
    /// When a heavy job must look again for the lock or stop waiting for its set.
    gather_deadline: Option<Instant>,
    /// A spawn failed for want of processes, fds or memory: wait for a job to end.
    short_of_resources: bool,
    /// Jobs the OOM killer killed, to run once more, each alone.
    rerun: std::collections::VecDeque<Job>,
    /// A job runs again alone: start nothing else meanwhile.
    alone: bool,
    /// The jobs run again (by `seq`): never a third time.
    reran: Vec<u64>,
    shortage_reported: bool,
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
    let mut sup = Supervisor {
        verdict: Verdict::new(plan.keep_going),
        steer: Steer::new(pool, plan.limits, plan.verbose, plan.pausing),
        gather: Gather::new(plan.weight),
        plan,
        signals,
        ledger: &ledger,
        report,
        output,
        spawner,
        crew: Crew::default(),
        pending: None,
        waiting_since: None,
        gather_deadline: None,
        short_of_resources: false,
        shortage_reported: false,
        rerun: std::collections::VecDeque::new(),
        alone: false,
        reran: Vec::new(),
    };
    sup.run()?;
    Ok(Outcome {
        status: sup.verdict.status(),
        governed: sup.steer.finish(Instant::now(), sup.report),
    })
}

impl Drop for Supervisor<'_> {
    /// However the loop ends (an error, even a panic), every slot still held goes back,
    /// but only once its job is gone: given back for a job that still runs, a token would
    /// let one more job start than the pool has slots.
    fn drop(&mut self) {
        // Nothing stays paused: a stopped job would neither end nor take SIGTERM.
        self.steer.resume_all(Instant::now(), self.report);
        self.crew.stop(self.signals);
    }
}

/// What the loop waits for besides signals.
#[derive(Default)]
struct Wants {
    token: bool,
    source: bool,
}

impl Supervisor<'_> {
    fn run(&mut self) -> Result<()> {
        // A signal that came before the first job (while the jobserver was set up or a
        // make was asked its version) stops it from starting.
        self.handle_signals()?;
        loop {
            let now = Instant::now();
            // A daemon told to stop hands out nothing more (--serve: the loop ends now).
            if !(self.plan.serve && self.verdict.halted()) {
                let busy = self.ledger.implicit_busy();
                self.steer.tick(now, busy, &self.crew.jobs, self.report);
            }
            if self.steer.token_file_gone() && !self.verdict.halted() {
                // Unmounted from outside: no client can reach the pool any more.
                self.stop(Status::Code(1));
            }
            let started = self.crew.jobs.len();
            let wants = self.start_jobs();
            if self.crew.jobs.len() != started {
                // The pool's level now, with jsrun's own jobs in it (the first one holds
                // the implicit slot, which no read or write of the pool shows).
                let (now, busy) = (Instant::now(), self.ledger.implicit_busy());
                self.steer.tick(now, busy, &self.crew.jobs, self.report);
            }
            let feed_done = self.plan.feed.is_done()
                && self.pending.is_none()
                && self.rerun.is_empty()
                && !self.plan.serve;
            if self.crew.jobs.is_empty()
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

    /// Starts jobs while slots, jobs and limits allow; says what to wait for next.
    fn start_jobs(&mut self) -> Wants {
        let mut wants = Wants::default();
        self.gather_deadline = None;
        // A heavy job counts as `weight` of jsrun's own cap.
        let most = (self.plan.cap / self.plan.weight).max(1);
        while !self.verdict.halted()
            && !self.short_of_resources
            && !self.output.backlogged()
            && self.crew.jobs.len() < most
        {
            if self.alone && self.crew.jobs.is_empty() && self.pending.is_none() {
                // The job run again alone never started (its spawn failed, or it was
                // dropped): others may start.
                self.alone = false;
            }
            if self.alone || (!self.rerun.is_empty() && !self.crew.jobs.is_empty()) {
                // A job the OOM killer killed runs again when it can run alone.
                break;
            }
            if self.pending.is_none()
                && let Some(job) = self.rerun.pop_front()
            {
                self.alone = true;
                self.pending = Some(job);
            }
            if self.pending.is_none() {
                match self.plan.feed.next(self.crew.free_number()) {
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
            let held = self.steer.own_jobs_limited() || !self.steer.guard_may_start();
            if held && !self.crew.jobs.is_empty() {
                break;
            }
            let Some(slots) = self.gather_slots(&mut wants) else {
                break;
            };
            let mut job = self.pending.take().expect("a pending job");
            // The lowest number free now that the job starts: it may have waited for a
            // token while other jobs ended.
            self.plan.feed.renumber(&mut job, self.crew.free_number());
            self.spawn(job, slots);
        }
        wants
    }

    fn wait(&mut self, wants: &Wants) -> Result<()> {
        let mut set = PollSet::default();
        let signals = set.add(Some(self.signals.fd()), PollFlags::POLLIN);
        let token = self.ledger.fd().filter(|_| wants.token);
        set.add(token, PollFlags::POLLIN);
        let source = set.add(
            self.plan.feed.fd().filter(|_| wants.source),
            PollFlags::POLLIN,
        );
        let sink = set.add(self.output.waiting_for(), PollFlags::POLLOUT);
        // jsrun's own messages waiting for stderr to take them.
        set.add(crate::say::waiting(), PollFlags::POLLOUT);
        let steered: Vec<(RawFd, Option<usize>)> = self
            .steer
            .fds()
            .map(|fd| (fd.as_raw_fd(), set.add(Some(fd), PollFlags::POLLIN)))
            .collect();
        // The kernel's word that memory gets short (the memory guard's notices).
        let notices: Vec<Option<usize>> = self
            .steer
            .notice_fds(Instant::now())
            .map(|(fd, events)| set.add(Some(fd), events))
            .collect();
        // A heavy job holding part of its set: a token written back to the pool.
        let came_back = set.add(self.gather.watch_fd(), PollFlags::POLLIN);
        // A full queue drains no pipe: jobs wait on their own pipes, not in jsrun's memory.
        let mut outputs = Vec::new();
        if !self.output.backlogged() {
            for (i, running) in self.crew.jobs.iter().enumerate() {
                for pipe in running.capture.iter().flat_map(Capture::pipes) {
                    outputs.push((i, set.add(Some(pipe.as_fd()), PollFlags::POLLIN)));
                }
            }
        }
        let deadline = self
            .steer
            .deadline()
            .into_iter()
            .chain(self.gather_deadline)
            .min();
        set.poll(deadline)?;
        let (source_ready, sink_ready) = (set.ready(source), set.ready(sink));
        let came_back = set.ready(came_back);
        let noticed = notices.iter().any(|at| set.ready(*at));
        let signalled = set.ready(signals);
        let steered: Vec<RawFd> = steered
            .into_iter()
            .filter(|(_, at)| set.ready(*at))
            .map(|(fd, _)| fd)
            .collect();
        let ready_outputs: Vec<usize> = outputs
            .iter()
            .filter(|(_, at)| set.ready(*at))
            .map(|(i, _)| *i)
            .collect();
        drop(set);
        self.steer.woke(&steered);
        if came_back {
            self.gather.came_back(Instant::now());
        }
        if noticed {
            self.steer.notified(Instant::now());
        }
        if sink_ready {
            self.output.flush();
        }
        crate::say::flush();
        for i in ready_outputs {
            let running = &mut self.crew.jobs[i];
            if let Some(capture) = &mut running.capture {
                self.output.drain(capture, &running.job);
            }
        }
        if source_ready && let Err(e) = self.plan.feed.fill() {
            // The message names the input (and the line of one too long); no new job
            // starts, running jobs finish.
            crate::say!("jsrun: error: {e}");
            self.plan.feed.close();
            self.stop(Status::USAGE);
        }
        // The signalfd is read only when the poll found it readable (a read that finds
        // nothing costs a system call on every wake-up of a busy daemon).
        if signalled {
            return self.handle_signals();
        }
        self.check_output();
        Ok(())
    }

    /// Acts on every signal that has come: child exits, interrupts, resizing.
    fn handle_signals(&mut self) -> Result<()> {
        while let Some(sig) = self.signals.next()? {
            match sig {
                Signal::SIGCHLD => {
                    while let Some(ended) = self.crew.reap() {
                        self.steer.job_ended(Instant::now());
                        self.ended(ended);
                    }
                }
                Signal::SIGUSR1 => self.resize(true),
                Signal::SIGUSR2 => self.resize(false),
                // SIGINT, SIGTERM, SIGHUP: pass it on to every running job, start nothing
                // new, and let the loop wait for the jobs to end.
                sig => {
                    self.verdict.interrupt(sig);
                    self.pending = None;
                    self.rerun.clear();
                    // Paused jobs are resumed first: a stopped process acts on no signal.
                    self.steer.resume_all(Instant::now(), self.report);
                    self.crew.signal(sig);
                }
            }
        }
        self.check_output();
        Ok(())
    }

    /// SIGUSR1: one slot more; SIGUSR2: one fewer, down to 1. A pool of jsrun's own
    /// changes size and jsrun's own jobs follow it, as xargs -P's do: more start at once,
    /// or fewer (running ones finish). Under another pool jsrun's own cap changes (from
    /// "no cap", one fewer than the jobs running now).
    fn resize(&mut self, grow: bool) {
        let cap = &mut self.plan.cap;
        if let Some(slots) = self.steer.resize(grow) {
            *cap = slots;
        } else {
            *cap = match grow {
                true => cap.saturating_add(1),
                false => (*cap).min(self.crew.jobs.len()).saturating_sub(1).max(1),
            };
        }
        self.report.sized(self.steer.pool().slots(*cap));
        if self.plan.verbose {
            let sig = if grow { "SIGUSR1" } else { "SIGUSR2" };
            match *cap {
                usize::MAX => crate::say!("jsrun: {sig}: no cap of jsrun's own; the pool decides"),
                1 => crate::say!("jsrun: {sig}: 1 slot"),
                n => crate::say!("jsrun: {sig}: {n} slots"),
            }
        }
    }
}
