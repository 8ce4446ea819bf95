//! Where job values come from: nothing (one command), `:::` arguments, or lines streamed
//! from a file or stdin. Lines are read as the loop needs them, so memory does not grow
//! with the number of jobs, and reading never blocks the loop: it polls [`Source::fd`].

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;

use nix::errno::Errno;

/// What the loop gets when it asks for the next job.
pub enum Next {
    /// One more job; `None` for the single-command form, which has no value.
    Job(Option<Vec<u8>>),
    /// No full line yet: poll [`Source::fd`] for input, then call [`Source::fill`].
    Wait,
    Done,
}

pub enum Source {
    Once { done: bool },
    Values(std::vec::IntoIter<OsString>),
    Lines(LineReader),
}

impl Source {
    pub fn once() -> Source {
        Source::Once { done: false }
    }

    pub fn values(values: Vec<OsString>) -> Source {
        Source::Values(values.into_iter())
    }

    pub fn lines(input: Input) -> Source {
        Source::Lines(LineReader::new(input))
    }

    pub fn next_job(&mut self) -> Next {
        match self {
            Source::Once { done } => {
                if std::mem::replace(done, true) {
                    Next::Done
                } else {
                    Next::Job(None)
                }
            }
            Source::Values(values) => match values.next() {
                Some(v) => Next::Job(Some(v.into_vec())),
                None => Next::Done,
            },
            Source::Lines(reader) => reader.next_line(),
        }
    }

    /// The descriptor to wait on after [`Next::Wait`].
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Source::Lines(reader) => Some(reader.input.as_fd()),
            _ => None,
        }
    }

    /// Reads what is available after the descriptor polled readable.
    pub fn fill(&mut self) -> io::Result<()> {
        match self {
            Source::Lines(reader) => reader.fill(),
            _ => Ok(()),
        }
    }

    /// Whether the jobs must not inherit stdin, because jsrun reads its values from it.
    pub fn reads_stdin(&self) -> bool {
        matches!(
            self,
            Source::Lines(LineReader {
                input: Input::Stdin,
                ..
            })
        )
    }
}

pub enum Input {
    Stdin,
    File(File),
}

impl AsFd for Input {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Input::Stdin => stdin_fd(),
            Input::File(f) => f.as_fd(),
        }
    }
}

/// Standard input, borrowed for the life of the process.
fn stdin_fd() -> BorrowedFd<'static> {
    static STDIN: std::sync::OnceLock<io::Stdin> = std::sync::OnceLock::new();
    STDIN.get_or_init(io::stdin).as_fd()
}

pub struct LineReader {
    input: Input,
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
    eof: bool,
}

/// Bytes asked for per read: lines are short, and each read zero-fills what it asks for.
const CHUNK: usize = 16 * 1024;

impl LineReader {
    fn new(input: Input) -> LineReader {
        LineReader {
            input,
            buf: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    /// Empty lines are skipped, as `xargs` does.
    fn next_line(&mut self) -> Next {
        loop {
            let rest = &self.buf[self.pos..];
            let line = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pos += i + 1;
                    rest[..i].to_vec()
                }
                None if self.eof => {
                    self.pos = self.buf.len();
                    if rest.is_empty() {
                        return Next::Done;
                    }
                    rest.to_vec()
                }
                None => return Next::Wait,
            };
            if !line.is_empty() {
                return Next::Job(Some(line));
            }
        }
    }

    /// One `read()`: it does not block, since the loop only calls it after poll said the
    /// input is readable (a regular file always is). jsrun never sets O_NONBLOCK on stdin,
    /// whose file description it shares with other processes.
    fn fill(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + CHUNK, 0);
        let result = loop {
            match nix::unistd::read(self.input.as_fd(), &mut self.buf[len..]) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        let n = match result {
            Ok(n) => n,
            Err(Errno::EAGAIN) => 0,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e.into());
            }
        };
        self.buf.truncate(len + n);
        self.eof = n == 0 && result.is_ok();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    fn collect(mut source: Source) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match source.next_job() {
                Next::Job(v) => out.push(String::from_utf8(v.unwrap_or_default()).unwrap()),
                Next::Wait => source.fill().unwrap(),
                Next::Done => return out,
            }
        }
    }

    #[test]
    fn lines_are_streamed_and_empty_lines_skipped() {
        let mut file = tempfile::tempfile().unwrap();
        let mut text = String::from("a\n\nb c\n");
        for i in 0..20_000 {
            text.push_str(&format!("value{i}\n"));
        }
        text.push_str("last-without-newline");
        file.write_all(text.as_bytes()).unwrap();
        file.rewind().unwrap();
        let got = collect(Source::lines(Input::File(file)));
        assert_eq!(got.len(), 20_003);
        assert_eq!(&got[..3], ["a", "b c", "value0"]);
        assert_eq!(got.last().unwrap(), "last-without-newline");
    }

    #[test]
    fn once_and_values() {
        assert_eq!(collect(Source::once()), [""]);
        let values = vec![OsString::from("x"), OsString::from("y")];
        assert_eq!(collect(Source::values(values)), ["x", "y"]);
    }
}
