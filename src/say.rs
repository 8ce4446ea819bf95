//! Writing to jsrun's own stdout and stderr without ever panicking, and without ever
//! blocking on a stderr nobody reads.
//!
//! `println!` and `eprintln!` panic when the stream is closed or full ("failed printing
//! to stdout"), so jsrun never uses them (the crate denies `clippy::print_stdout` and
//! `clippy::print_stderr`). What goes to stdout is data, and its errors are returned.
//!
//! Messages for stderr go through a private non-blocking description of it when it is a
//! pipe, fifo or terminal (as grouped output does, see `output`): what it does not take
//! at once waits in a small buffer that the supervision loop writes out when poll says
//! stderr has room, so a stderr nobody reads (`jsrun -v ... 2>&1 | sleep 60`) never keeps
//! jsrun from its signals. A message for a stderr that is gone is lost: there is nowhere
//! left to say anything.

use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// One line on stderr, e.g. `say!("jsrun: warning: {e}")`, written in one piece so that
/// it does not mix with other processes' output. Errors are ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Messages waiting for stderr beyond this are dropped (and counted).
const PENDING_LIMIT: usize = 64 * 1024;

/// How long jsrun waits at its end for a stderr that takes nothing.
const LAST_WAIT: Duration = Duration::from_secs(1);

/// The private non-blocking description of stderr, when it is a pipe, fifo or terminal.
/// Never closed: messages may come until the process ends.
static PRIVATE: OnceLock<Option<OwnedFd>> = OnceLock::new();

/// Bytes of messages stderr did not take yet, and how many messages were dropped.
static PENDING: Mutex<(Vec<u8>, usize)> = Mutex::new((Vec::new(), 0));

fn private() -> Option<BorrowedFd<'static>> {
    PRIVATE
        .get_or_init(|| {
            let fd = io::stderr();
            let stat = nix::sys::stat::fstat(fd.as_fd()).ok()?;
            let pipe_or_tty = crate::sys::is_fifo(&stat)
                || (crate::sys::is_char_device(&stat) && io::IsTerminal::is_terminal(&fd));
            pipe_or_tty
                .then(|| crate::sys::reopen_inherited(2, OFlag::O_WRONLY | OFlag::O_NOCTTY).ok())
                .flatten()
        })
        .as_ref()
        .map(AsFd::as_fd)
}

/// Writes `args` to stderr, as one `write` when it has room; else later (see the module).
pub fn stderr(args: fmt::Arguments<'_>) {
    let text = args.to_string();
    let Some(fd) = private() else {
        // A file or a socket: written as it is.
        let _ = io::stderr().lock().write_all(text.as_bytes());
        return;
    };
    let Ok(mut pending) = PENDING.lock() else {
        return;
    };
    if pending.0.len() + text.len() > PENDING_LIMIT {
        pending.1 += 1;
    } else {
        pending.0.extend_from_slice(text.as_bytes());
    }
    write_pending(fd, &mut pending);
}

/// Writes what stderr takes now, without waiting.
fn write_pending(fd: BorrowedFd<'_>, pending: &mut (Vec<u8>, usize)) {
    if pending.1 > 0 && pending.0.is_empty() {
        let dropped = std::mem::take(&mut pending.1);
        let note = format!("jsrun: warning: {dropped} message(s) dropped: stderr took nothing\n");
        pending.0.extend_from_slice(note.as_bytes());
    }
    while !pending.0.is_empty() {
        match nix::unistd::write(fd, &pending.0) {
            Ok(n) if n > 0 => {
                pending.0.drain(..n);
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return,
            // Gone, or another error: nothing can be said any more.
            _ => {
                pending.0.clear();
                return;
            }
        }
    }
}

/// The descriptor to poll for POLLOUT while messages wait.
pub fn waiting() -> Option<BorrowedFd<'static>> {
    let fd = private()?;
    let pending = PENDING.lock().ok()?;
    (!pending.0.is_empty()).then_some(fd)
}

/// Writes what waits, as far as stderr takes it now.
pub fn flush() {
    if let (Some(fd), Ok(mut pending)) = (private(), PENDING.lock()) {
        write_pending(fd, &mut pending);
    }
}

/// jsrun's end: what still waits gets [`LAST_WAIT`] to be taken, then is lost.
pub fn finish() {
    let until = Instant::now() + LAST_WAIT;
    while let Some(fd) = waiting() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        if !matches!(nix::poll::poll(&mut fds, timeout), Ok(n) if n > 0) {
            return;
        }
        flush();
    }
}

/// Writes `text` to stdout and flushes it: `Err` (e.g. `BrokenPipe`) when it cannot.
pub fn stdout(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Whether an error chain ends in a closed pipe, which ends jsrun quietly.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
