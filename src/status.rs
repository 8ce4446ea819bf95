//! jsrun's exit status: the contract's table in one type.

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exit with this code.
    Code(i32),
    /// jsrun itself was interrupted: die of the same signal.
    Killed(Signal),
}

impl Status {
    pub const SUCCESS: Status = Status::Code(0);
    /// Bad usage or options, jobserver creation failure.
    pub const USAGE: Status = Status::Code(125);
    pub const NOT_EXECUTABLE: Status = Status::Code(126);
    pub const NOT_FOUND: Status = Status::Code(127);
    /// jsrun's stdout is a pipe nobody reads any more: 128 + SIGPIPE, what a shell shows
    /// for `seq` or `cat` in the same place.
    pub const BROKEN_PIPE: Status = Status::Code(141);

    /// A finished job's status as a shell reports it: its exit code, or 128+S when a
    /// signal killed it.
    pub fn of_job(wait: WaitStatus) -> Option<Status> {
        match wait {
            WaitStatus::Exited(_, code) => Some(Status::Code(code)),
            WaitStatus::Signaled(_, sig, _) => Some(Status::Code(128 + sig as i32)),
            _ => None,
        }
    }

    /// The number a shell would show: the code, or 128+S for a death by signal S.
    pub fn code(self) -> i32 {
        match self {
            Status::Code(code) => code,
            Status::Killed(sig) => 128 + sig as i32,
        }
    }

    pub fn success(self) -> bool {
        self == Status::SUCCESS
    }

    pub fn exit(self) -> ! {
        crate::say::finish();
        match self {
            Status::Code(code) => std::process::exit(code),
            Status::Killed(sig) => crate::sys::die_of(sig),
        }
    }
}

/// Reports an error of jsrun's own on stderr, once, with its context chain.
pub fn report(err: &anyhow::Error) -> Status {
    crate::say!("jsrun: error: {err:#}");
    Status::USAGE
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Pid;

    #[test]
    fn job_status_follows_the_shell() {
        let pid = Pid::from_raw(1);
        assert_eq!(
            Status::of_job(WaitStatus::Exited(pid, 3)),
            Some(Status::Code(3))
        );
        assert_eq!(
            Status::of_job(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(Status::Code(137))
        );
        assert_eq!(Status::of_job(WaitStatus::StillAlive), None);
    }
}
