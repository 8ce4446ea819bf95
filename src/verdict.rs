//! What a run comes to, and whether it may start another job: the contract's rules in
//! one place.
//!
//! - The first failure wins: a later one never replaces it, whatever its status.
//! - After a failure no new job starts, unless `-k`.
//! - An interrupt (SIGINT, SIGTERM, SIGHUP) starts nothing more, `-k` or not, and jsrun
//!   then dies of that signal, whatever the jobs did.
//! - A stop of jsrun's own (its stdout gone, a job list it cannot read) starts nothing
//!   more either, and counts as a failure with its own status.

use nix::sys::signal::Signal;

use crate::status::Status;

#[derive(Debug, Default)]
pub struct Verdict {
    keep_going: bool,
    first_failure: Option<Status>,
    interrupted: Option<Signal>,
    stopped: bool,
}

impl Verdict {
    pub fn new(keep_going: bool) -> Verdict {
        Verdict {
            keep_going,
            ..Verdict::default()
        }
    }

    /// A job ended (or could not start) with `status`.
    pub fn job(&mut self, status: Status) {
        if !status.success() {
            self.first_failure.get_or_insert(status);
            self.stopped |= !self.keep_going;
        }
    }

    /// jsrun itself cannot go on (e.g. its stdout is gone): no new job, `-k` or not.
    pub fn stop(&mut self, status: Status) {
        self.first_failure.get_or_insert(status);
        self.stopped = true;
    }

    /// jsrun got SIGINT, SIGTERM or SIGHUP.
    pub fn interrupt(&mut self, sig: Signal) {
        self.interrupted.get_or_insert(sig);
        self.stopped = true;
    }

    pub fn interrupted(&self) -> Option<Signal> {
        self.interrupted
    }

    /// No new job may start.
    pub fn halted(&self) -> bool {
        self.stopped
    }

    /// jsrun's exit status: death by the signal that interrupted it, else the first
    /// failure, else success.
    pub fn status(&self) -> Status {
        match (self.interrupted, self.first_failure) {
            (Some(sig), _) => Status::Killed(sig),
            (None, Some(status)) => status,
            (None, None) => Status::SUCCESS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_wins_and_halts_unless_keep_going() {
        let mut v = Verdict::new(false);
        v.job(Status::SUCCESS);
        assert!(!v.halted());
        v.job(Status::Code(4));
        v.job(Status::Code(5));
        assert!(v.halted());
        assert_eq!(v.status(), Status::Code(4));

        let mut k = Verdict::new(true);
        k.job(Status::Code(3));
        assert!(!k.halted(), "-k keeps starting jobs");
        k.job(Status::NOT_FOUND);
        assert_eq!(k.status(), Status::Code(3));
    }

    #[test]
    fn an_interrupt_wins_over_every_status_and_halts_even_with_keep_going() {
        let mut v = Verdict::new(true);
        v.job(Status::Code(2));
        v.interrupt(Signal::SIGTERM);
        v.interrupt(Signal::SIGINT);
        assert!(v.halted());
        assert_eq!(v.interrupted(), Some(Signal::SIGTERM));
        assert_eq!(v.status(), Status::Killed(Signal::SIGTERM));
    }

    #[test]
    fn a_stop_of_jsrun_s_own_halts_and_keeps_an_earlier_failure() {
        let mut v = Verdict::new(true);
        v.stop(Status::BROKEN_PIPE);
        assert!(v.halted());
        assert_eq!(v.status(), Status::BROKEN_PIPE);
        let mut w = Verdict::new(true);
        w.job(Status::Code(1));
        w.stop(Status::USAGE);
        assert_eq!(w.status(), Status::Code(1));
        assert_eq!(Verdict::new(false).status(), Status::SUCCESS);
    }
}
