//! Writing to jsrun's own stdout and stderr without ever panicking.
//!
//! `println!` and `eprintln!` panic when the stream is closed or full ("failed printing
//! to stdout"), so jsrun never uses them (the crate denies `clippy::print_stdout` and
//! `clippy::print_stderr`). A message for stderr is lost when stderr is gone: there is
//! nowhere left to say anything. What goes to stdout is data, and its errors are returned.

use std::fmt;
use std::io::{self, Write};

/// One line on stderr, e.g. `say!("jsrun: warning: {e}")`, written in one piece so that
/// it does not mix with other processes' output. Errors are ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes `args` to stderr in one `write`, ignoring errors.
pub fn stderr(args: fmt::Arguments<'_>) {
    let text = args.to_string();
    let _ = io::stderr().lock().write_all(text.as_bytes());
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
