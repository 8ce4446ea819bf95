//! A connection to a jobserver: open and validate it, take and give back tokens.
//!
//! Fifo and pipe look the same from outside: one private, non-blocking read descriptor to
//! poll and read tokens from, and one descriptor to write them back through.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{Context, Result, bail};
use nix::fcntl::OFlag;

use crate::makeflags::Auth;
use crate::sys;

pub struct Client {
    read: OwnedFd,
    write: OwnedFd,
    auth: Auth,
}

impl Client {
    /// Connects to the jobserver `auth` names, or says why it cannot be used.
    pub fn open(auth: &Auth) -> Result<Client> {
        let (read, write) = match auth {
            Auth::Fifo(path) => open_fifo(path)?,
            Auth::Pipe { read, write } => open_pipe(*read, *write)?,
            Auth::Disabled => bail!("the parent disabled it (--jobserver-auth=-2,-2)"),
            Auth::Unknown(text) => bail!("unknown jobserver style '{text}'"),
        };
        Ok(Client {
            read,
            write,
            auth: auth.clone(),
        })
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Takes one token if one is free right now. Never blocks: poll [`Client::fd`] first.
    /// Another client may win the race for a byte poll reported, hence `Ok(None)`.
    pub fn try_acquire(&self) -> io::Result<Option<u8>> {
        sys::read_byte(self.read.as_fd())
    }

    /// Gives back a token: the very byte that was read, since bytes may carry meaning.
    pub fn release(&self, token: u8) -> io::Result<()> {
        sys::write_byte(self.write.as_fd(), token)
    }

    /// The descriptor that becomes readable when a token may be free.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Tokens free in the pool right now.
    pub fn available(&self) -> io::Result<usize> {
        sys::bytes_available(self.read.as_fd())
    }
}

/// Opens a fifo (or steve's character device) read-write: a read-write open never waits
/// for a peer, and being a writer ourselves we never see EOF/POLLHUP when others leave.
fn open_fifo(path: &std::path::Path) -> Result<(OwnedFd, OwnedFd)> {
    let show = path.display();
    let stat = nix::sys::stat::stat(path).with_context(|| format!("cannot open {show}"))?;
    if !(sys::is_fifo(&stat) || sys::is_char_device(&stat)) {
        bail!("{show} is not a fifo");
    }
    let fd = sys::open(path, OFlag::O_RDWR).with_context(|| format!("cannot open {show}"))?;
    // Check what was opened, not only what the path named a moment ago.
    let opened = nix::sys::stat::fstat(&fd)?;
    if (opened.st_dev, opened.st_ino) != (stat.st_dev, stat.st_ino) {
        bail!("{show} was replaced while it was being opened");
    }
    let write = fd.try_clone()?;
    Ok((fd, write))
}

/// Validates inherited pipe fds, then opens private descriptions of both ends.
fn open_pipe(read: i32, write: i32) -> Result<(OwnedFd, OwnedFd)> {
    let stat_of = |n: i32| {
        sys::inherited_fd_stat(n).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => anyhow::anyhow!("fd {n} is closed"),
            _ => anyhow::anyhow!("fd {n}: {e}"),
        })
    };
    // Both are checked before anything is opened (see sys::inherited_fd_stat).
    let (rs, ws) = (stat_of(read)?, stat_of(write)?);
    for (n, s) in [(read, &rs), (write, &ws)] {
        if !sys::is_fifo(s) {
            bail!("fd {n} is not a pipe");
        }
    }
    if (rs.st_dev, rs.st_ino) != (ws.st_dev, ws.st_ino) {
        bail!("fds {read} and {write} are not the same pipe");
    }
    if sys::inherited_fd_access(read)? == OFlag::O_WRONLY {
        bail!("fd {read} is not open for reading");
    }
    if sys::inherited_fd_access(write)? == OFlag::O_RDONLY {
        bail!("fd {write} is not open for writing");
    }
    let private = |n: i32, access: OFlag| {
        sys::reopen_inherited(n, access).with_context(|| format!("cannot reopen fd {n}"))
    };
    Ok((
        private(read, OFlag::O_RDONLY)?,
        private(write, OFlag::O_WRONLY)?,
    ))
}
