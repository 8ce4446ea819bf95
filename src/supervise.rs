//! The supervision loop: one `poll()` over the signalfd (child exits and SIGINT, SIGTERM,
//! SIGHUP), the jobserver while a job waits for a token, the job source while it has no
//! full line, the output pipes of running jobs, and jsrun's stdout or stderr while grouped
//! output waits for it. Nothing sleeps, nothing spins, and no write blocks.
//!
//! Slots: a job runs in jsrun's implicit slot (there is none under `--jobserver`) or on a
//! token read for it. When the job ends its token is written back, the very byte read
//! for it, or the implicit slot is marked free: nothing is ever written for it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::jobs::source::{Next, Source};
use crate::jobs::template::{Fill, Template};
use crate::jobs::{self, Job};
use crate::output::{Capture, Gone, Output};
use crate::pool::Pool;
use crate::report::{Finished, Report};
use crate::spawn::Spawner;
use crate::status::Status;
use crate::sys::{self, Signals};

/// What to run and how.
pub struct Plan {
    pub template: Template,
    pub source: Source,
    /// At most this many jobs at once.
    pub cap: usize,
    pub keep_going: bool,
    pub load_average: Option<f64>,
    pub verbose: bool,
    /// Command lines run through `/bin/sh -c`: show the line itself.
    pub shell_lines: bool,
    /// Said after "command not found: WORD" for this word (see `Config`).
    pub not_found_hint: Option<(OsString, String)>,
}

pub struct Outcome {
    /// 0, or the status of the first job that failed.
    pub status: Status,
    /// The signal that interrupted jsrun, if one did.
    pub interrupted: Option<Signal>,
}

/// What a job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Implicit,
    Token(u8),
}

struct Running {
    pid: Pid,
    job: Job,
    slot: Slot,
    started: Instant,
    started_at: SystemTime,
    capture: Option<Capture>,
}

/// How often the load average is looked at again while it holds a job back.
const LOAD_RECHECK: Duration = Duration::from_secs(1);

struct Supervisor<'a> {
    plan: Plan,
    signals: &'a Signals,
    pool: &'a Pool,
    report: &'a mut Report,
    output: &'a mut Output,
    spawner: Spawner,
    running: Vec<Running>,
    /// The implicit slot has a job.
    implicit_busy: bool,
    /// The jobserver failed (EOF, I/O error): read no more tokens from it.
    jobserver_failed: bool,
    /// The next job, rendered and resolved, waiting for a slot.
    pending: Option<Job>,
    /// Since when `pending` waits for a token.
    waiting_since: Option<Instant>,
    seq: u64,
    source_done: bool,
    /// Start no new job: after a failure without -k, or an interrupt.
    halt: bool,
    interrupted: Option<Signal>,
    first_failure: Option<Status>,
    /// A spawn failed for want of processes, fds or memory: wait for a job to end.
    short_of_resources: bool,
    shortage_reported: bool,
    /// Resolution of a program name that no job can change, done once.
    resolved: Option<(OsString, Result<PathBuf, Status>)>,
}

pub fn run(
    plan: Plan,
    pool: &Pool,
    signals: &Signals,
    report: &mut Report,
    output: &mut Output,
) -> Result<Outcome> {
    let spawner = Spawner::new(plan.source.reads_stdin(), &pool.env())
        .context("cannot prepare to start jobs")?;
    let mut sup = Supervisor {
        plan,
        signals,
        pool,
        report,
        output,
        spawner,
        running: Vec::new(),
        implicit_busy: false,
        jobserver_failed: false,
        pending: None,
        waiting_since: None,
        seq: 0,
        source_done: false,
        halt: false,
        interrupted: None,
        first_failure: None,
        short_of_resources: false,
        shortage_reported: false,
        resolved: None,
    };
    sup.run()?;
    Ok(Outcome {
        status: sup.first_failure.unwrap_or(Status::SUCCESS),
        interrupted: sup.interrupted,
    })
}

impl Drop for Supervisor<'_> {
    /// However the loop ends (an error, even a panic), every token still held goes back,
    /// but only once its job is gone: written back for a job that still runs, a token
    /// would let one more job start than the pool has slots.
    fn drop(&mut self) {
        self.stop_running();
        for running in std::mem::take(&mut self.running) {
            self.release(running.slot);
        }
    }
}

/// How long jobs get to end after SIGTERM when the loop failed, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the loop waits for besides signals.
#[derive(Default)]
struct Wants {
    token: bool,
    source: bool,
    timeout: Option<Duration>,
}

impl Supervisor<'_> {
    fn run(&mut self) -> Result<()> {
        // A signal that came before the first job (while the jobserver was set up or a
        // make was asked its version) stops it from starting.
        self.handle_signals()?;
        loop {
            let wants = self.start_jobs()?;
            if self.running.is_empty()
                && (self.halt || (self.source_done && self.pending.is_none()))
                && (self.output.is_empty() || self.interrupted.is_some())
            {
                break;
            }
            self.wait(&wants)?;
        }
        // Interrupted with output still queued: one last try that does not wait.
        self.output.flush();
        Ok(())
    }

    /// Starts jobs while slots, jobs and the load allow; says what to wait for next.
    fn start_jobs(&mut self) -> Result<Wants> {
        let mut wants = Wants::default();
        while !self.halt
            && !self.short_of_resources
            && !self.output.backlogged()
            && self.running.len() < self.plan.cap
        {
            if self.pending.is_none() {
                match self.plan.source.next_job() {
                    Next::Job(value) => {
                        if let Some(job) = self.prepare(value) {
                            self.pending = Some(job);
                        }
                        continue;
                    }
                    Next::Wait => {
                        wants.source = true;
                        break;
                    }
                    Next::Done => {
                        self.source_done = true;
                        break;
                    }
                }
            }
            if !self.running.is_empty() && self.load_too_high() {
                wants.timeout = Some(LOAD_RECHECK);
                break;
            }
            let Some(slot) = self.take_slot() else {
                wants.token = self.pool.client().is_some() && !self.jobserver_failed;
                break;
            };
            let mut job = self.pending.take().expect("a pending job");
            // The slot number is the lowest free one now that the job starts: it may have
            // waited for a token while other jobs ended.
            let number = self.free_slot();
            if number != job.slot {
                job.slot = number;
                if self.plan.template.uses_slot() {
                    job.argv = self.plan.template.render(&Fill {
                        value: job.value.as_deref(),
                        seq: job.seq,
                        slot: number,
                    });
                }
            }
            self.spawn(job, slot);
        }
        Ok(wants)
    }

    /// Numbers the next job, renders its command and resolves its program. `None` when
    /// it cannot run (reported and counted as failed) or is only printed.
    fn prepare(&mut self, value: Option<Vec<u8>>) -> Option<Job> {
        self.seq += 1;
        let slot = self.free_slot();
        let fill = Fill {
            value: value.as_deref(),
            seq: self.seq,
            slot,
        };
        let argv = self.plan.template.render(&fill);
        let mut job = Job::new(self.seq, slot, argv, value, self.plan.shell_lines);
        match self.resolve(&job.argv[0]) {
            Ok(program) => {
                job.program = program;
                Some(job)
            }
            Err(status) => {
                self.finish(&job, None, status, None);
                None
            }
        }
    }

    /// The lowest slot number no running job has (`{%}`, 1..N).
    fn free_slot(&self) -> usize {
        (1..)
            .find(|s| self.running.iter().all(|r| r.job.slot != *s))
            .unwrap_or(1)
    }

    /// Finds the program before any token is taken for it: 127 not found, 126 not
    /// executable.
    fn resolve(&mut self, name: &OsStr) -> Result<PathBuf, Status> {
        if let Some((cached, result)) = &self.resolved
            && cached == name
        {
            return result.clone();
        }
        let result = jobs::resolve(name);
        if self.plan.template.constant_program().is_some() {
            self.resolved = Some((name.to_owned(), result.clone()));
        }
        if let Err(status) = result {
            let (what, hint) = if status == Status::NOT_FOUND {
                // `-O line` runs `line`, as in make: suggest `-Oline`.
                let hint = match &self.plan.not_found_hint {
                    Some((word, hint)) if word == name => hint.clone(),
                    _ => String::new(),
                };
                ("command not found", hint)
            } else {
                ("command not executable", String::new())
            };
            crate::say!("jsrun: {what}: {}{hint}", name.to_string_lossy());
        }
        result
    }

    fn load_too_high(&self) -> bool {
        let Some(limit) = self.plan.load_average else {
            return false;
        };
        sys::load_average().is_ok_and(|load| load >= limit)
    }

    /// A slot for one more job: the implicit slot when free, else a token read now.
    fn take_slot(&mut self) -> Option<Slot> {
        if self.pool.implicit() > 0 && !self.implicit_busy {
            self.implicit_busy = true;
            return Some(Slot::Implicit);
        }
        let client = self.pool.client().filter(|_| !self.jobserver_failed)?;
        match client.try_acquire() {
            Ok(Some(token)) => {
                self.report.token_acquired(self.waiting_since.take());
                Some(Slot::Token(token))
            }
            Ok(None) => {
                self.waiting_since.get_or_insert_with(Instant::now);
                None
            }
            Err(e) => {
                self.jobserver_failed = true;
                if self.pool.implicit() == 0 && self.running.is_empty() {
                    // No slot will ever come: nothing can run.
                    crate::say!(
                        "jsrun: error: jobserver {} failed ({e}) before any job could start",
                        client.auth()
                    );
                    self.halt = true;
                    self.first_failure.get_or_insert(Status::USAGE);
                } else {
                    crate::say!(
                        "jsrun: warning: jobserver {} failed ({e}); going on with the slots held",
                        client.auth()
                    );
                }
                None
            }
        }
    }

    /// Frees a job's slot: its token goes back, the implicit slot is marked free.
    fn release(&mut self, slot: Slot) {
        match slot {
            Slot::Implicit => self.implicit_busy = false,
            Slot::Token(token) => {
                if let Some(client) = self.pool.client()
                    && let Err(e) = client.release(token)
                {
                    crate::say!("jsrun: warning: cannot give a token back to the jobserver: {e}");
                }
            }
        }
    }

    fn spawn(&mut self, job: Job, slot: Slot) {
        match self.try_spawn(&job) {
            Ok((pid, capture, started, started_at)) => {
                if self.plan.verbose {
                    crate::say!("jsrun: [{}] {}", job.slot, job.display());
                }
                self.running.push(Running {
                    pid,
                    job,
                    slot,
                    started,
                    started_at,
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
                self.release(slot);
                self.short_of_resources = true;
                self.pending = Some(job);
            }
            Err(e) => {
                self.release(slot);
                let status = jobs::spawn_error_status(&e);
                crate::say!("jsrun: cannot run {}: {e}", job.argv[0].to_string_lossy());
                self.finish(&job, None, status, None);
            }
        }
    }

    /// Output pipes (when grouped) and the process.
    fn try_spawn(&mut self, job: &Job) -> io::Result<(Pid, Option<Capture>, Instant, SystemTime)> {
        let (capture, pipes) = match self.output.prepare()? {
            Some((capture, pipes)) => (Some(capture), Some(pipes)),
            None => (None, None),
        };
        let started_at = SystemTime::now();
        let started = Instant::now();
        let pid =
            self.spawner
                .spawn(&job.program, &job.argv, pipes.as_ref().map(|[o, e]| [o, e]))?;
        // `pipes` ends here: the child has its own copies, and ours would keep the
        // pipes from ever ending.
        Ok((pid, capture, started, started_at))
    }

    fn wait(&mut self, wants: &Wants) -> Result<()> {
        let mut fds: Vec<PollFd<'_>> = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
        let token_fd = match (self.pool.client(), wants.token) {
            (Some(client), true) => Some(client.fd()),
            _ => None,
        };
        let source_fd = match wants.source {
            true => self.plan.source.fd(),
            false => None,
        };
        for fd in [token_fd, source_fd].into_iter().flatten() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        // Grouped output waiting for jsrun's stdout or stderr to take it.
        let sink_fd = self.output.waiting_for();
        if let Some(fd) = sink_fd {
            fds.push(PollFd::new(fd, PollFlags::POLLOUT));
        }
        let first_output = fds.len();
        let output_fds: Vec<(usize, BorrowedFd<'_>)> = match self.output.backlogged() {
            // A full queue drains no pipe: jobs wait on their own pipes, not in jsrun's memory.
            true => Vec::new(),
            false => self
                .running
                .iter()
                .enumerate()
                .flat_map(|(i, r)| {
                    r.capture
                        .iter()
                        .flat_map(move |c| c.pipes().map(move |p| (i, p.as_fd())))
                })
                .collect(),
        };
        fds.extend(
            output_fds
                .iter()
                .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN)),
        );
        let timeout = match wants.timeout {
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll failed"),
        }
        let source_ready = source_fd.is_some()
            && fds[1 + usize::from(token_fd.is_some())]
                .revents()
                .is_some_and(|r| !r.is_empty());
        let sink_ready = sink_fd.is_some()
            && fds[first_output - 1]
                .revents()
                .is_some_and(|r| !r.is_empty());
        let ready_outputs: Vec<usize> = fds[first_output..]
            .iter()
            .zip(&output_fds)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, (i, _))| *i)
            .collect();
        drop(fds);
        if sink_ready {
            self.output.flush();
        }
        for i in ready_outputs {
            let running = &mut self.running[i];
            if let Some(capture) = &mut running.capture {
                self.output.drain(capture, &running.job);
            }
        }
        if source_ready && let Err(e) = self.plan.source.fill() {
            // The message names the input (and the line of one too long); the source
            // hands out no more lines.
            crate::say!("jsrun: error: {e}");
            self.source_done = true;
            self.first_failure.get_or_insert(Status::USAGE);
        }
        self.handle_signals()
    }

    /// Acts on every signal that has come: child exits, interrupts.
    fn handle_signals(&mut self) -> Result<()> {
        while let Some(sig) = self.signals.next()? {
            match sig {
                Signal::SIGCHLD => self.reap(),
                sig => self.interrupt(sig),
            }
        }
        self.check_output();
        Ok(())
    }

    /// Ends the jobs still running when the loop cannot go on: SIGTERM, up to
    /// [`STOP_GRACE`] for them to end, then SIGKILL; every one is reaped and its slot
    /// freed.
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
            let mut i = 0;
            while i < self.running.len() {
                match nix::sys::wait::waitpid(self.running[i].pid, flags) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => i += 1,
                    // Ended (or not ours any more): its slot is free.
                    _ => {
                        let done = self.running.swap_remove(i);
                        self.release(done.slot);
                    }
                }
            }
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
            self.halt = true;
            self.pending = None;
            for running in &mut self.running {
                running.capture = None;
            }
            self.first_failure.get_or_insert(match gone {
                Gone::BrokenPipe => Status::BROKEN_PIPE,
                Gone::Failed => Status::USAGE,
            });
        }
        if self.output.take_lost() > 0 {
            self.first_failure.get_or_insert(Status::USAGE);
            if !self.plan.keep_going {
                self.halt = true;
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
            let mut done = self.running.swap_remove(i);
            self.release(done.slot);
            self.short_of_resources = false;
            // Output that could not be kept (said already) fails a job that succeeded: 125,
            // an error of jsrun's own.
            if let Some(capture) = done.capture.take()
                && !self.output.finish(capture, &done.job)
                && status.success()
            {
                status = Status::USAGE;
            }
            let signal = match wait {
                WaitStatus::Signaled(_, sig, _) => Some(sig),
                _ => None,
            };
            self.finish(
                &done.job,
                Some((done.started, done.started_at)),
                status,
                signal,
            );
        }
    }

    /// Books a job that ended, or never started (`times` is `None`).
    fn finish(
        &mut self,
        job: &Job,
        times: Option<(Instant, SystemTime)>,
        status: Status,
        signal: Option<Signal>,
    ) {
        let ended = (Instant::now(), SystemTime::now());
        let done = Finished {
            job,
            started: times.unwrap_or(ended),
            ended,
            status,
            signal,
        };
        self.report.finished(&done, self.running.len());
        if !status.success() {
            self.first_failure.get_or_insert(status);
            if !self.plan.keep_going {
                self.halt = true;
                self.pending = None;
            }
        }
    }

    /// SIGINT, SIGTERM, SIGHUP: pass it on to every running job, start nothing new, and
    /// let the loop wait for the jobs to end.
    fn interrupt(&mut self, sig: Signal) {
        self.interrupted = Some(sig);
        self.halt = true;
        self.pending = None;
        for r in &self.running {
            let _ = nix::sys::signal::kill(r.pid, sig);
        }
    }
}

/// Errors that go away when a running job ends.
fn is_shortage(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error().map(Errno::from_raw),
        Some(Errno::EAGAIN | Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM)
    )
}
