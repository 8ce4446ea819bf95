//! The supervisor's bookkeeping of jobs: gathering a job's slots, starting it, and booking
//! how it ended (its output written out, the verdict told); and what becomes of grouped
//! output that can no longer be written.

use std::io;
use std::time::{Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{Supervisor, Wants};
use crate::jobs::{self, Job};
use crate::output::{Capture, Gone};
use crate::report::Finished;
use crate::running::{Ended, Running};
use crate::slots::{Gathered, HEAVY_WAIT, Held};
use crate::status::Status;

impl<'a> Supervisor<'a> {
    /// The slots of the pending job, or `None` and what to wait for.
    pub(super) fn gather_slots(&mut self, wants: &mut Wants) -> Option<Vec<Held<'a, 'a>>> {
        let tokens = self.steer.may_take();
        let slots = match self.gather.step(self.ledger, tokens, Instant::now()) {
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
                return None;
            }
            Gathered::Never(error) => {
                self.jobserver_failed(error);
                return None;
            }
        };
        for _ in slots.iter().filter(|slot| slot.is_token()) {
            self.report.token_acquired(self.waiting_since.take());
        }
        // A wait that the implicit slot ended, when it came free before a token did.
        if let Some(since) = self.waiting_since.take() {
            self.report.waited(Some(since));
        }
        Some(slots)
    }

    /// The jobserver gave EOF or an error: going on with the slots held, or, with no
    /// slot at all, nothing can run.
    pub(super) fn jobserver_failed(&mut self, error: Option<io::Error>) {
        let (Some(e), Some(auth)) = (error, self.ledger.auth()) else {
            return;
        };
        if !self.ledger.has_implicit() && self.crew.jobs.is_empty() {
            crate::say!("jsrun: error: jobserver {auth} failed ({e}) before any job could start");
            self.verdict.stop(Status::USAGE);
            self.pending = None;
        } else {
            crate::say!(
                "jsrun: warning: jobserver {auth} failed ({e}); going on with the slots held"
            );
        }
    }

    pub(super) fn spawn(&mut self, job: Job, slots: Vec<Held<'a, 'a>>) {
        match self.try_spawn(&job) {
            Ok((pid, capture, started)) => {
                if self.plan.verbose {
                    crate::say!("jsrun: [{}] {}", job.slot, job.display());
                }
                self.crew.jobs.push(Running {
                    pid,
                    job,
                    slots,
                    started,
                    capture,
                });
                self.report.started(self.crew.jobs.len());
                self.steer.started(Instant::now(), pid.as_raw());
            }
            // Out of processes (RLIMIT_NPROC), fds or memory while other jobs run: try
            // again when one of them has ended, rather than fail a job that could run.
            Err(e) if is_shortage(&e) && !self.crew.jobs.is_empty() => {
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

    /// Acts on what became of grouped output. Its reader gone (EPIPE) or a write failed:
    /// start no job, drop every capture (a job that writes again gets SIGPIPE, as it would
    /// without `-O`; one that does not finishes), let the running jobs end, and end with
    /// 141 (a failed write: 125). Output lost on its way out counts as a failed job.
    pub(super) fn check_output(&mut self) {
        if let Some(gone) = self.output.take_gone() {
            for running in &mut self.crew.jobs {
                running.capture = None;
            }
            self.stop(match gone {
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

    /// jsrun itself cannot go on: no new job.
    pub(super) fn stop(&mut self, status: Status) {
        self.verdict.stop(status);
        self.pending = None;
    }

    /// A job that ended: its output written out (output that could not be kept, said
    /// already, fails a job that succeeded: 125, an error of jsrun's own), then booked.
    pub(super) fn ended(&mut self, ended: Ended) {
        self.short_of_resources = false;
        if self.crew.jobs.is_empty() {
            self.alone = false;
        }
        // Killed by the OOM killer: run once more, alone, unless this was that run.
        if ended.signal == Some(Signal::SIGKILL)
            && !self.verdict.halted()
            && !self.reran.contains(&ended.job.seq)
            && self.steer.oom_killed()
        {
            if let Some(capture) = ended.capture {
                self.output.finish(capture, &ended.job);
            }
            if self.plan.verbose {
                crate::say!(
                    "jsrun: job {} ({}) was killed by the OOM killer: it runs again alone",
                    ended.job.seq,
                    ended.job.display()
                );
            }
            self.reran.push(ended.job.seq);
            self.report.oom_rerun();
            self.rerun.push_back(ended.job);
            return;
        }
        let mut status = ended.status;
        if let Some(capture) = ended.capture
            && !self.output.finish(capture, &ended.job)
            && status.success()
        {
            status = Status::USAGE;
        }
        self.book(&ended.job, Some(ended.started), status, ended.signal);
    }

    /// Books a job that ended, or never started (`started` is `None`).
    pub(super) fn book(
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
        self.report.finished(&done, self.crew.jobs.len());
        self.verdict.job(status);
        if self.verdict.halted() {
            self.pending = None;
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
