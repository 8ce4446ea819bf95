//! The descriptors of one `poll()`, each entry found again by the index it was added at.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

#[derive(Default)]
pub struct PollSet<'f> {
    fds: Vec<PollFd<'f>>,
}

impl<'f> PollSet<'f> {
    /// Adds `fd` when there is one; its index, to ask [`PollSet::ready`] after the poll.
    pub fn add(&mut self, fd: Option<BorrowedFd<'f>>, events: PollFlags) -> Option<usize> {
        let fd = fd?;
        self.fds.push(PollFd::new(fd, events));
        Some(self.fds.len() - 1)
    }

    /// Waits until an entry is ready, a signal comes, or `deadline`.
    pub fn poll(&mut self, deadline: Option<Instant>) -> Result<()> {
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

    pub fn ready(&self, at: Option<usize>) -> bool {
        at.and_then(|i| self.fds[i].revents())
            .is_some_and(|r| !r.is_empty())
    }
}
