//! The jobs that run now: their processes, their slots and their captured output, and
//! how they end: reaped one by one, or all stopped when the loop cannot go on.

use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::jobs::Job;
use crate::output::Capture;
use crate::slots::Held;
use crate::status::Status;
use crate::sys::Signals;

/// How long jobs get to end after SIGTERM when the loop failed, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub struct Running<'a> {
    pub pid: Pid,
    pub job: Job,
    /// Given back when the job is gone, never before.
    pub slots: Vec<Held<'a, 'a>>,
    pub started: (Instant, SystemTime),
    pub capture: Option<Capture>,
}

/// A job that has ended: its slots are given back already.
pub struct Ended {
    pub job: Job,
    pub status: Status,
    pub signal: Option<Signal>,
    pub started: (Instant, SystemTime),
    pub capture: Option<Capture>,
}

#[derive(Default)]
pub struct Crew<'a> {
    pub jobs: Vec<Running<'a>>,
}

impl Crew<'_> {
    /// The lowest slot number no running job has (`{%}`, 1..N).
    pub fn free_number(&self) -> usize {
        (1..)
            .find(|n| self.jobs.iter().all(|r| r.job.slot != *n))
            .unwrap_or(1)
    }

    /// Sends `sig` to every running job.
    pub fn signal(&self, sig: Signal) {
        for r in &self.jobs {
            let _ = nix::sys::signal::kill(r.pid, sig);
        }
    }

    /// The next job that has ended, reaped, its slots given back; `None` when none has.
    pub fn reap(&mut self) -> Option<Ended> {
        loop {
            let wait = match nix::sys::wait::waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return None,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    crate::say!("jsrun: warning: waitpid failed: {e}");
                    return None;
                }
                Ok(wait) => wait,
            };
            let (Some(pid), Some(status)) = (wait.pid(), Status::of_job(wait)) else {
                continue;
            };
            let Some(i) = self.jobs.iter().position(|r| r.pid == pid) else {
                continue;
            };
            let Running {
                job,
                slots,
                started,
                capture,
                ..
            } = self.jobs.swap_remove(i);
            // The slots first: their job is gone.
            drop(slots);
            let signal = match wait {
                WaitStatus::Signaled(_, sig, _) => Some(sig),
                _ => None,
            };
            return Some(Ended {
                job,
                status,
                signal,
                started,
                capture,
            });
        }
    }

    /// Ends every job when the loop cannot go on: SIGTERM, up to [`STOP_GRACE`] for them
    /// to end, then SIGKILL; each is reaped and its slots given back.
    pub fn stop(&mut self, signals: &Signals) {
        if self.jobs.is_empty() {
            return;
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        let mut sig = Signal::SIGTERM;
        while !self.jobs.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && sig == Signal::SIGTERM {
                sig = Signal::SIGKILL;
                self.signal(sig);
            }
            // After SIGKILL the wait is short and sure: block in waitpid.
            let flags = (sig == Signal::SIGTERM).then_some(WaitPidFlag::WNOHANG);
            self.jobs.retain(|r| {
                matches!(
                    nix::sys::wait::waitpid(r.pid, flags),
                    Ok(WaitStatus::StillAlive) | Err(Errno::EINTR)
                )
            });
            if !self.jobs.is_empty() && sig == Signal::SIGTERM {
                // Woken by SIGCHLD (or the deadline); what the signalfd holds is read
                // only to clear it.
                let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(signals.fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, timeout);
                while let Ok(Some(_)) = signals.next() {}
            }
        }
    }
}
