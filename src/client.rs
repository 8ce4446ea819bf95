//! A connection to a jobserver: open and validate it, take and give back tokens.
//!
//! Fifo and pipe look the same from outside: one private, non-blocking read descriptor to
//! poll and read tokens from, and one descriptor to write them back through.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::makeflags::Auth;
use crate::sys;

/// Why a jobserver cannot be used. Each kind has its own advice ([`OpenError::hint`]):
/// closed fds mean a missing '+', fds of the wrong kind mean a stale MAKEFLAGS.
#[derive(Debug)]
pub enum OpenError {
    /// An fd of `R,W` is not open: the parent make closed it (no '+').
    Closed(i32),
    /// `--jobserver-auth=-2,-2`: make 4.4 in pipe style, recipe without '+'.
    Disabled,
    /// An fd of `R,W` is open but no pipe.
    NotAPipe(i32),
    /// `R` and `W` are two different pipes.
    NotSamePipe(i32, i32),
    /// `R` is not readable, or `W` not writable.
    WrongMode { fd: i32, want: &'static str },
    /// `fifo:PATH` names something that is neither a fifo nor a character device.
    NotAFifo(PathBuf),
    /// `fifo:PATH` cannot be opened (or stat'ed).
    CannotOpen(PathBuf, io::Error),
    /// `fifo:PATH` was swapped for another file while it was being opened.
    Replaced(PathBuf),
    /// A style jsrun does not speak, e.g. Windows' `sem:`.
    Unknown(String),
    /// Reading /proc about an inherited fd, or reopening it, failed.
    Io(i32, io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Closed(n) => write!(f, "fd {n} is closed"),
            OpenError::Disabled => write!(f, "the parent disabled it (--jobserver-auth=-2,-2)"),
            OpenError::NotAPipe(n) => write!(f, "fd {n} is not a pipe"),
            OpenError::NotSamePipe(r, w) => write!(f, "fds {r} and {w} are not the same pipe"),
            OpenError::WrongMode { fd, want } => write!(f, "fd {fd} is not open for {want}"),
            OpenError::NotAFifo(path) => write!(f, "{} is not a fifo", path.display()),
            OpenError::CannotOpen(path, e) => write!(f, "cannot open {}: {e}", path.display()),
            OpenError::Replaced(path) => {
                write!(
                    f,
                    "{} was replaced while it was being opened",
                    path.display()
                )
            }
            OpenError::Unknown(text) => write!(f, "unknown jobserver style '{text}'"),
            OpenError::Io(n, e) => write!(f, "fd {n}: {e}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl OpenError {
    /// What to do about it, for the warning of a jobserver found in MAKEFLAGS.
    pub fn hint(&self) -> &'static str {
        match self {
            OpenError::Closed(_) | OpenError::Disabled => "Add '+' to the parent make rule.",
            OpenError::NotAPipe(_) | OpenError::NotSamePipe(..) | OpenError::WrongMode { .. } => {
                "The fds are not a jobserver's: MAKEFLAGS is stale here (inherited past \
                 the make that set it)."
            }
            OpenError::CannotOpen(_, e) if e.kind() == io::ErrorKind::NotFound => {
                "The make that created it has ended: MAKEFLAGS is stale here."
            }
            OpenError::CannotOpen(_, e) if e.kind() == io::ErrorKind::PermissionDenied => {
                "It belongs to another user: its creator can share it (jsrun: \
                 --jobserver-group)."
            }
            OpenError::NotAFifo(_) | OpenError::Replaced(_) => {
                "fifo:PATH must name a fifo, a character device or the token file of jsrun \
                 --serve --accounting."
            }
            OpenError::Unknown(_) => "jsrun speaks fifo:PATH and R,W.",
            OpenError::CannotOpen(..) | OpenError::Io(..) => "",
        }
    }
}

pub struct Client {
    read: OwnedFd,
    write: OwnedFd,
    auth: Auth,
    /// A character device behind `fifo:` (steve's /dev/steve), not a pipe or fifo.
    device: bool,
    /// The token file of an accounting pool.
    token_file: bool,
    /// The free tokens, kept in this process instead of the pipe: the private pool of an
    /// accounting pool, which nobody but jsrun reads or writes (see [`Client::in_memory`]).
    memory: Option<Box<RefCell<Vec<u8>>>>,
}

/// What `fifo:PATH` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fifo,
    /// A character device (steve's /dev/steve).
    Device,
    /// A regular file on a FUSE mount: the token file of `jsrun --serve --accounting`.
    TokenFile,
}

impl Client {
    /// Connects to the jobserver `auth` names, or says why it cannot be used.
    pub fn open(auth: &Auth) -> Result<Client, OpenError> {
        let (read, write, kind) = match auth {
            Auth::Fifo(path) => open_fifo(path)?,
            Auth::Pipe { read, write } => {
                let (r, w) = open_pipe(*read, *write)?;
                (r, w, Kind::Fifo)
            }
            Auth::Disabled => return Err(OpenError::Disabled),
            Auth::Unknown(text) => return Err(OpenError::Unknown(text.clone())),
        };
        Ok(Client {
            read,
            write,
            auth: auth.clone(),
            device: kind == Kind::Device,
            token_file: kind == Kind::TokenFile,
            memory: None,
        })
    }

    /// The same pool with its free tokens moved out of the pipe into this process: taking
    /// and giving back a token costs no system call. Only for a pool that nobody but this
    /// process reads or writes: the pipe's descriptor is never readable again.
    pub fn in_memory(mut self) -> Client {
        let mut tokens = Vec::new();
        while let Ok(Some(token)) = sys::read_byte(self.read.as_fd()) {
            tokens.push(token);
        }
        self.memory = Some(Box::new(RefCell::new(tokens)));
        self
    }

    /// Tokens kept in this process ([`Client::in_memory`]): 0 for a pool in its pipe.
    pub fn kept(&self) -> usize {
        self.memory.as_ref().map_or(0, |m| m.borrow().len())
    }

    /// Whether the jobserver is a character device: nothing but its driver bounds the
    /// tokens it hands out.
    pub fn is_device(&self) -> bool {
        self.device
    }

    /// Whether the jobserver is the token file of an accounting pool (a regular file,
    /// which clients that stat their fifo, as upstream ninja does, refuse).
    pub fn is_token_file(&self) -> bool {
        self.token_file
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// An accounting pool's own account of itself (`free N`, `waiting N`, then `holder
    /// PID TOKENS COMMAND` lines), read from its token file; `None` for any other jobserver.
    pub fn account(&self) -> Option<io::Result<String>> {
        self.token_file.then(|| {
            sys::get_xattr(self.read.as_fd(), crate::fuse::POOL_XATTR)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    /// Takes one token if one is free right now. Never blocks: poll [`Client::fd`] first.
    /// Another client may win the race for a byte poll reported, hence `Ok(None)`.
    pub fn try_acquire(&self) -> io::Result<Option<u8>> {
        match &self.memory {
            Some(memory) => Ok(memory.borrow_mut().pop()),
            None => sys::read_byte(self.read.as_fd()),
        }
    }

    /// Gives back a token: the very byte that was read, since bytes may carry meaning.
    pub fn release(&self, token: u8) -> io::Result<()> {
        match &self.memory {
            Some(memory) => {
                memory.borrow_mut().push(token);
                Ok(())
            }
            None => sys::write_byte(self.write.as_fd(), token),
        }
    }

    /// The descriptor that becomes readable when a token may be free.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The advisory lock on the jobserver that jsruns gathering several slots for one job
    /// take in turn, so that two never each hold part of a set the other needs. `None`
    /// when another process has it now. Never blocks.
    pub fn try_lock(&self) -> io::Result<Option<Flock<OwnedFd>>> {
        // A descriptor of our own description: locks belong to descriptions.
        match Flock::lock(self.read.try_clone()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e.into()),
        }
    }

    /// Tokens free in the pool right now.
    pub fn available(&self) -> io::Result<usize> {
        match &self.memory {
            Some(memory) => Ok(memory.borrow().len()),
            None => sys::bytes_available(self.read.as_fd()),
        }
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

/// Opens a fifo (or steve's character device, or an accounting pool's token file)
/// read-write: a read-write open never waits for a peer, and being a writer ourselves we
/// never see EOF/POLLHUP when others leave. Also says which it is.
fn open_fifo(path: &Path) -> Result<(OwnedFd, OwnedFd, Kind), OpenError> {
    let cannot = |e: Errno| OpenError::CannotOpen(path.to_owned(), e.into());
    let stat = nix::sys::stat::stat(path).map_err(cannot)?;
    let kind = if sys::is_fifo(&stat) {
        Kind::Fifo
    } else if sys::is_char_device(&stat) {
        Kind::Device
    } else if sys::is_regular(&stat) && sys::on_fuse(path) {
        Kind::TokenFile
    } else {
        return Err(OpenError::NotAFifo(path.to_owned()));
    };
    let fd =
        sys::open(path, OFlag::O_RDWR).map_err(|e| OpenError::CannotOpen(path.to_owned(), e))?;
    // Check what was opened, not only what the path named a moment ago.
    let opened = nix::sys::stat::fstat(&fd).map_err(cannot)?;
    if (opened.st_dev, opened.st_ino) != (stat.st_dev, stat.st_ino) {
        return Err(OpenError::Replaced(path.to_owned()));
    }
    let write = fd
        .try_clone()
        .map_err(|e| OpenError::CannotOpen(path.to_owned(), e))?;
    Ok((fd, write, kind))
}

/// Validates inherited pipe fds, then opens private descriptions of both ends.
fn open_pipe(read: i32, write: i32) -> Result<(OwnedFd, OwnedFd), OpenError> {
    let stat_of = |n: i32| {
        sys::inherited_fd_stat(n).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => OpenError::Closed(n),
            _ => OpenError::Io(n, e),
        })
    };
    // Both are checked before anything is opened (see sys::inherited_fd_stat).
    let (rs, ws) = (stat_of(read)?, stat_of(write)?);
    for (n, s) in [(read, &rs), (write, &ws)] {
        if !sys::is_fifo(s) {
            return Err(OpenError::NotAPipe(n));
        }
    }
    if (rs.st_dev, rs.st_ino) != (ws.st_dev, ws.st_ino) {
        return Err(OpenError::NotSamePipe(read, write));
    }
    let access = |n: i32| sys::inherited_fd_access(n).map_err(|e| OpenError::Io(n, e));
    if access(read)? == OFlag::O_WRONLY {
        return Err(OpenError::WrongMode {
            fd: read,
            want: "reading",
        });
    }
    if access(write)? == OFlag::O_RDONLY {
        return Err(OpenError::WrongMode {
            fd: write,
            want: "writing",
        });
    }
    let private =
        |n: i32, access: OFlag| sys::reopen_inherited(n, access).map_err(|e| OpenError::Io(n, e));
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

    fn error(auth: &Auth) -> String {
        Client::open(auth).err().expect("an error").to_string()
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
    fn a_pool_in_memory_takes_the_pipes_tokens_and_leaves_it_empty() {
        let (r, w) = pipe();
        nix::unistd::write(&w, b"abc").unwrap();
        let auth = Auth::Pipe {
            read: r.as_raw_fd(),
            write: w.as_raw_fd(),
        };
        let client = Client::open(&auth).unwrap().in_memory();
        assert_eq!((client.available().unwrap(), client.kept()), (3, 3));
        assert_eq!(sys::bytes_available(client.fd()).unwrap(), 0);
        let token = client.try_acquire().unwrap().expect("a token");
        assert_eq!(client.available().unwrap(), 2);
        client.release(token).unwrap();
        let taken: Vec<u8> = std::iter::from_fn(|| client.try_acquire().unwrap()).collect();
        assert_eq!(taken.len(), 3);
        assert_eq!(client.try_acquire().unwrap(), None);
        // Nothing went through the pipe.
        assert_eq!(sys::bytes_available(client.fd()).unwrap(), 0);
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
            let got = error(&Auth::Pipe { read, write });
            assert!(got.contains(want), "{read},{write}: {got}");
        }
        let got = error(&Auth::Pipe {
            read: closed,
            write: w1.as_raw_fd(),
        });
        // The number may have been reused by another test's fd meanwhile.
        assert!(got.contains("closed") || got.contains("pipe"), "{got}");
        assert!(error(&Auth::Disabled).contains("disabled"));
        assert!(error(&Auth::Unknown("sem".into())).contains("unknown"));
    }

    /// Each kind of failure carries its own advice: '+' only where the fds were closed
    /// or disabled by the parent make.
    #[test]
    fn each_failure_has_the_hint_that_fits_it() {
        let (r1, w1) = pipe();
        let (_r2, w2) = pipe();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let plus = "Add '+'";
        let cases = [
            (OpenError::Closed(3), plus),
            (OpenError::Disabled, plus),
            (
                Client::open(&Auth::Pipe {
                    read: r1.as_raw_fd(),
                    write: w2.as_raw_fd(),
                })
                .err()
                .unwrap(),
                "stale",
            ),
            (
                Client::open(&Auth::Pipe {
                    read: w1.as_raw_fd(),
                    write: r1.as_raw_fd(),
                })
                .err()
                .unwrap(),
                "stale",
            ),
            (
                Client::open(&Auth::Fifo(dir.path().join("none")))
                    .err()
                    .unwrap(),
                "has ended",
            ),
            (
                Client::open(&Auth::Fifo(file)).err().unwrap(),
                "must name a fifo",
            ),
            (OpenError::Unknown("sem:x".into()), "fifo:PATH and R,W"),
            (
                OpenError::CannotOpen("/x".into(), io::Error::from(Errno::EACCES)),
                "--jobserver-group",
            ),
        ];
        for (error, want) in cases {
            assert!(error.hint().contains(want), "{error}: {}", error.hint());
            if want != plus {
                assert!(!error.hint().contains(plus), "{error}: {}", error.hint());
            }
        }
    }

    #[test]
    fn a_fifo_path_must_be_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(error(&Auth::Fifo(file)).contains("is not a fifo"));
        assert!(error(&Auth::Fifo(dir.path().join("none"))).contains("cannot open"));
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
