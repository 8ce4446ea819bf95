//! Every syscall-level trick jsrun needs, each with the reason it is done this way.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// `stat` of what inherited fd `n` refers to, through `/proc/self/fd/n`.
///
/// Path-based on purpose: it allocates no fd, so checking fd 4 can never be fooled by a
/// file that checking fd 3 just opened (make 4.3 leaves both closed in non-`+` recipes,
/// and the first file a client opens then becomes "fd 3").
pub fn inherited_fd_stat(n: i32) -> io::Result<FileStat> {
    Ok(nix::sys::stat::stat(format!("/proc/self/fd/{n}").as_str())?)
}

/// The `O_ACCMODE` bits of inherited fd `n`, from the `flags:` line of `/proc/self/fdinfo/n`.
pub fn inherited_fd_access(n: i32) -> io::Result<OFlag> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}"))?;
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
        .ok_or_else(|| io::Error::other(format!("no flags in /proc/self/fdinfo/{n}")))?;
    Ok(OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE)
}

pub fn is_fifo(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO
}

pub fn is_char_device(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR
}

/// Opens a fresh, private, close-on-exec file description of inherited pipe fd `n`.
///
/// On Linux, opening `/proc/self/fd/n` of a pipe creates a new open file description of
/// the same pipe (unlike `dup`), so O_NONBLOCK set here never reaches make or any other
/// client sharing the inherited description.
pub fn reopen_inherited(n: i32, access: OFlag) -> io::Result<OwnedFd> {
    open(Path::new(&format!("/proc/self/fd/{n}")), access)
}

/// `open(path, flags | O_NONBLOCK | O_CLOEXEC)`.
///
/// O_NONBLOCK matters for fifos twice: the open itself never waits for a peer, and reads
/// of an empty pool return EAGAIN instead of blocking the supervision loop.
pub fn open(path: &Path, access: OFlag) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        path,
        access | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Reads one byte from a non-blocking fd: `Ok(None)` when there is none right now.
pub fn read_byte(fd: BorrowedFd<'_>) -> io::Result<Option<u8>> {
    let mut buf = [0u8; 1];
    loop {
        return match nix::unistd::read(fd, &mut buf) {
            Ok(1) => Ok(Some(buf[0])),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the jobserver has no writer left",
            )),
            Err(Errno::EAGAIN) => Ok(None),
            Err(Errno::EINTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

pub fn write_byte(fd: BorrowedFd<'_>, byte: u8) -> io::Result<()> {
    loop {
        return match nix::unistd::write(fd, &[byte]) {
            Ok(1) => Ok(()),
            Ok(_) => Err(io::Error::new(io::ErrorKind::WriteZero, "short write")),
            Err(Errno::EINTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

nix::ioctl_read_bad!(fionread, nix::libc::FIONREAD, nix::libc::c_int);

/// Bytes waiting in a pipe or fifo right now (`FIONREAD`), e.g. free tokens.
pub fn bytes_available(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at `n`, a live,
    // properly aligned c_int; `fd` is a valid open descriptor for the whole call.
    unsafe { fionread(fd.as_raw_fd(), &mut n) }?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Makes an fd of jsrun's own inheritable, so children find it at the advertised number.
pub fn set_inheritable(fd: BorrowedFd<'_>) -> io::Result<()> {
    nix::fcntl::fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(())
}

/// The signals the supervision loop handles, as bytes on a signalfd instead of handlers.
pub const HANDLED: [Signal; 6] = [
    Signal::SIGCHLD,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    // One slot more, one slot fewer (GNU xargs -P's signals).
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The signals of [`HANDLED`] jsrun takes: all but those inherited as ignored (see
/// [`take_signals`]), decided once at start-up.
static TAKEN: std::sync::OnceLock<SigSet> = std::sync::OnceLock::new();

/// [`HANDLED`] less the signals inherited as ignored, as a set.
fn handled() -> SigSet {
    *TAKEN.get_or_init(|| {
        let mut mask = SigSet::empty();
        for sig in HANDLED {
            if sig == Signal::SIGCHLD || !is_ignored(sig) {
                mask.add(sig);
            }
        }
        mask
    })
}

/// Whether `sig`'s disposition is SIG_IGN now.
fn is_ignored(sig: Signal) -> bool {
    let mut old = std::mem::MaybeUninit::<nix::libc::sigaction>::zeroed();
    // SAFETY: a null new action only reads the disposition into `old`, which has room for
    // one sigaction and was zeroed; nothing else is touched.
    let rc = unsafe { nix::libc::sigaction(sig as i32, std::ptr::null(), old.as_mut_ptr()) };
    // SAFETY: on success sigaction filled `old`; on failure it stays zeroed (SIG_DFL).
    let old = unsafe { old.assume_init() };
    rc == 0 && old.sa_sigaction == nix::libc::SIG_IGN
}

/// jsrun's first instruction: from here on the handled signals wait, blocked, until the
/// supervision loop reads them from a signalfd, so a signal that comes before the first
/// job starts still stops it from starting.
///
/// A SIGCHLD inherited as ignored would make the kernel reap the jobs itself and send no
/// SIGCHLD: jsrun would wait forever. It is put back to its default. SIGINT, SIGTERM,
/// SIGHUP, SIGUSR1 and SIGUSR2 inherited as ignored (`nohup`, `cmd &` in a script) stay
/// ignored, for jsrun and its jobs, as the parent asked: they are not blocked (Linux
/// queues a blocked signal even when it is ignored), so the kernel drops them.
pub fn take_signals() -> io::Result<()> {
    // Read before SIGCHLD changes: the taken set never includes an ignored signal.
    let taken = handled();
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_DFL runs no code of ours in signal context, and jsrun is
    // single-threaded here: nothing else changes dispositions at the same time.
    unsafe { nix::sys::signal::sigaction(Signal::SIGCHLD, &default) }?;
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&taken), None)?;
    Ok(())
}

/// Unblocks the handled signals where jsrun will run no job (usage errors, `--info`, a dry
/// run): one that came meanwhile, and any later one, acts at once with its default action.
pub fn release_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&handled()), None);
}

/// A signalfd for [`HANDLED`], which [`take_signals`] blocked. Children start with an empty
/// mask again (see `spawn`), so they see signals normally.
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    pub fn new() -> io::Result<Signals> {
        let mask = handled();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next pending signal, if any.
    pub fn next(&self) -> io::Result<Option<Signal>> {
        match self.fd.read_signal() {
            Ok(Some(info)) => Ok(Signal::try_from(info.ssi_signo as i32).ok()),
            Ok(None) | Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Terminates jsrun by `sig`, so its parent sees a death by that signal.
///
/// The handled signals have their default action (jsrun installs no handler; it only
/// blocks them), so raising one while blocked and then unblocking it ends the process.
pub fn die_of(sig: Signal) -> ! {
    // The Rust runtime ignores SIGPIPE; other signals keep their default action.
    let _ = nix::sys::signal::raise(sig);
    let mut mask = SigSet::empty();
    mask.add(sig);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&mask), None);
    // Only reached for a signal whose default action is not to terminate.
    std::process::exit(128 + sig as i32)
}

/// Time on CLOCK_MONOTONIC, the clock every process on the machine shares (Rust's
/// `Instant` reads it too, but does not show its value).
pub fn monotonic() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(std::time::Duration::from)
        .unwrap_or_default()
}

pub fn is_socket(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK
}

/// `send(fd, data, MSG_DONTWAIT | MSG_NOSIGNAL)`: writes to a socket without waiting and
/// without touching the flags of its open file description, which others share (a socket
/// cannot be reopened through `/proc/self/fd`). A closed peer gives EPIPE, not SIGPIPE.
pub fn send_nonblocking(fd: BorrowedFd<'_>, data: &[u8]) -> Result<usize, Errno> {
    // SAFETY: `data` is valid for reads of `data.len()` bytes for the whole call, and `fd`
    // is an open descriptor for the whole call; send only reads from the buffer.
    let n = unsafe {
        nix::libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            nix::libc::MSG_DONTWAIT | nix::libc::MSG_NOSIGNAL,
        )
    };
    Errno::result(n).map(isize::unsigned_abs)
}

/// A process that has a file open.
pub struct Holder {
    pub pid: u32,
    /// Its command line, words joined by blanks (its name in brackets if it has none).
    pub command: String,
}

/// The processes that have the file `(st_dev, st_ino)` open, by their `/proc/PID/fd`
/// links: all of them for root, else those of the same user (the kernel hides the
/// descriptors of others). jsrun itself included.
pub fn holders(file: (u64, u64)) -> Vec<Holder> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Holder> = procs
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| holds(*pid, file))
        .map(|pid| Holder {
            pid,
            command: command_of(pid),
        })
        .collect();
    found.sort_by_key(|h| h.pid);
    found
}

/// Whether process `pid` has `file` open.
pub fn holds(pid: u32, file: (u64, u64)) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .any(|fd| nix::sys::stat::stat(&fd.path()).is_ok_and(|s| (s.st_dev, s.st_ino) == file))
}

/// The command line of `pid`, words joined by blanks (its name in brackets if it has none).
pub fn command_of(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    if !words.is_empty() {
        words.join(" ")
    } else {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        format!("[{}]", comm.trim())
    }
}
