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
    /// A character device behind `fifo:` (steve's /dev/steve), not a pipe or fifo.
    device: bool,
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
        let device = sys::is_char_device(&nix::sys::stat::fstat(&read)?);
        Ok(Client {
            read,
            write,
            auth: auth.clone(),
            device,
        })
    }

    /// Whether the jobserver is a character device: nothing but its driver bounds the
    /// tokens it hands out.
    pub fn is_device(&self) -> bool {
        self.device
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

    /// Whether a character device behind `fifo:` hands out more than `limit` tokens at
    /// once (`/dev/zero` never runs out): takes up to `limit + 1` without waiting and gives
    /// each back at once. A pipe or fifo holds what was written to it: never unbounded.
    pub fn looks_unbounded(&self, limit: usize) -> io::Result<bool> {
        if !self.device {
            return Ok(false);
        }
        let mut taken = Vec::new();
        while taken.len() <= limit
            && let Some(token) = self.try_acquire()?
        {
            taken.push(token);
        }
        for &token in &taken {
            self.release(token)?;
        }
        Ok(taken.len() > limit)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap()
    }

    fn error(auth: Auth) -> String {
        format!("{:#}", Client::open(&auth).err().expect("an error"))
    }

    #[test]
    fn a_pipe_is_validated_and_read_through_a_private_description() {
        let (r, w) = pipe();
        let auth = Auth::Pipe {
            read: r.as_raw_fd(),
            write: w.as_raw_fd(),
        };
        let client = Client::open(&auth).unwrap();
        assert_eq!(
            client.try_acquire().unwrap(),
            None,
            "empty pool, no blocking"
        );
        nix::unistd::write(&w, b"xy").unwrap();
        assert_eq!(client.available().unwrap(), 2);
        assert_eq!(client.try_acquire().unwrap(), Some(b'x'));
        client.release(b'x').unwrap();
        // The shared description stays blocking: only ours is non-blocking.
        let flags = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & OFlag::O_NONBLOCK.bits(), 0);
        let mut buf = [0u8; 2];
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 2);
        assert_eq!(&buf, b"yx");
    }

    #[test]
    fn unusable_pipes_are_named() {
        let (r1, w1) = pipe();
        let (_r2, w2) = pipe();
        let file = tempfile::tempfile().unwrap();
        let closed = {
            let (r, _w) = pipe();
            r.as_raw_fd()
        };
        let cases = [
            (r1.as_raw_fd(), w2.as_raw_fd(), "not the same pipe"),
            (file.as_raw_fd(), w1.as_raw_fd(), "is not a pipe"),
            (w1.as_raw_fd(), r1.as_raw_fd(), "is not open for reading"),
        ];
        for (read, write, want) in cases {
            let got = error(Auth::Pipe { read, write });
            assert!(got.contains(want), "{read},{write}: {got}");
        }
        let got = error(Auth::Pipe {
            read: closed,
            write: w1.as_raw_fd(),
        });
        // The number may have been reused by another test's fd meanwhile.
        assert!(got.contains("closed") || got.contains("pipe"), "{got}");
        assert!(error(Auth::Disabled).contains("disabled"));
        assert!(error(Auth::Unknown("sem".into())).contains("unknown"));
    }

    #[test]
    fn a_fifo_path_must_be_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(error(Auth::Fifo(file)).contains("is not a fifo"));
        assert!(error(Auth::Fifo(dir.path().join("none"))).contains("cannot open"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // No other reader or writer: the open still does not block, and reads see EAGAIN.
        let client = Client::open(&Auth::Fifo(fifo)).unwrap();
        assert_eq!(client.try_acquire().unwrap(), None);
        client.release(b'q').unwrap();
        assert_eq!(client.try_acquire().unwrap(), Some(b'q'));
        // steve's /dev/steve is a character device behind fifo:.
        assert!(Client::open(&Auth::Fifo("/dev/null".into())).is_ok());
    }
}
