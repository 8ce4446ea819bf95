//! Where job values come from: nothing (one command), `:::` arguments, or lines streamed
//! from a file or stdin. Lines are read as the loop needs them, so memory does not grow
//! with the number of jobs, and reading never blocks the loop: it polls [`Source::fd`].

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
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

    /// No job at all (`--serve`).
    pub fn none() -> Source {
        Source::Once { done: true }
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
    /// `buf[pos..scanned]` holds no newline: each byte is looked at once.
    scanned: usize,
    /// Newlines consumed so far, for the number of the line an error is in.
    lines: u64,
    eof: bool,
    /// Reading failed or a line was too long: no further line is handed out.
    failed: bool,
}

/// Bytes asked for per read: lines are short, and each read zero-fills what it asks for.
const CHUNK: usize = 16 * 1024;

/// The longest value a line may hold: Linux's MAX_ARG_STRLEN (32 pages of 4 KiB) less
/// the NUL that ends an argument. A longer value could not be passed to any job.
const MAX_VALUE: usize = 131_071;

// A read adds less than one line's worth: only the line open before it can grow too long.
const _: () = assert!(CHUNK <= MAX_VALUE);

impl LineReader {
    fn new(input: Input) -> LineReader {
        LineReader {
            input,
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
            lines: 0,
            eof: false,
            failed: false,
        }
    }

    /// Empty lines are skipped, as `xargs` does.
    fn next_line(&mut self) -> Next {
        loop {
            if self.failed {
                return Next::Done;
            }
            let line = match self.find_newline() {
                Some(i) => {
                    let line = self.buf[self.pos..i].to_vec();
                    self.pos = i + 1;
                    self.scanned = self.pos;
                    self.lines += 1;
                    line
                }
                None if self.eof => {
                    let rest = self.buf[self.pos..].to_vec();
                    self.pos = self.buf.len();
                    self.scanned = self.pos;
                    if rest.is_empty() {
                        return Next::Done;
                    }
                    rest
                }
                None => return Next::Wait,
            };
            if !line.is_empty() {
                return Next::Job(Some(line));
            }
        }
    }

    /// The position of the next newline at or after `pos`, scanning only bytes not
    /// scanned before.
    fn find_newline(&mut self) -> Option<usize> {
        if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(self.scanned + i)
        } else {
            self.scanned = self.buf.len();
            None
        }
    }

    /// One `read()`: it does not block, since the loop only calls it after poll said the
    /// input is readable (a regular file always is). jsrun never sets O_NONBLOCK on stdin,
    /// whose file description it shares with other processes.
    ///
    /// A line longer than [`MAX_VALUE`] is an error as soon as the bytes read show it, so
    /// memory stays bounded (`:::: /dev/zero`). After any error the reader hands out no
    /// further line.
    fn fill(&mut self) -> io::Result<()> {
        if self.failed || self.eof {
            return Ok(());
        }
        // A full line is still waiting to be handed out: nothing to read yet.
        if self.find_newline().is_some() {
            return Ok(());
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.scanned -= self.pos;
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
                let error = io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot read the job list from {}: {e}", self.name()),
                );
                return Err(self.fail(error));
            }
        };
        self.buf.truncate(len + n);
        self.eof = n == 0 && result.is_ok();
        // The line open before this read ends at the first newline, or is still open; the
        // lines after it are shorter than one read.
        let end = self.find_newline().unwrap_or(self.buf.len());
        if end - self.pos > MAX_VALUE {
            let error = io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} line {}: longer than {MAX_VALUE} bytes, the most one argument may hold",
                    self.name(),
                    self.lines + 1
                ),
            );
            return Err(self.fail(error));
        }
        Ok(())
    }

    /// Stops the reader for good and lets go of what it buffered.
    fn fail(&mut self, error: io::Error) -> io::Error {
        self.failed = true;
        self.buf = Vec::new();
        self.pos = 0;
        self.scanned = 0;
        error
    }

    /// The input as messages name it: `stdin`, or the file jsrun opened.
    fn name(&self) -> String {
        match &self.input {
            Input::Stdin => "stdin".into(),
            Input::File(file) => {
                let link = format!("/proc/self/fd/{}", file.as_raw_fd());
                std::fs::read_link(link)
                    .map_or_else(|_| "the job list".into(), |path| path.display().to_string())
            }
        }
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

    /// The values read from `text` until the end or an error, and the error.
    fn read_all(text: &[u8]) -> (Vec<usize>, Option<String>) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(text).unwrap();
        file.rewind().unwrap();
        let mut source = Source::lines(Input::File(file));
        let mut lengths = Vec::new();
        loop {
            match source.next_job() {
                Next::Job(v) => lengths.push(v.unwrap().len()),
                Next::Wait => {
                    if let Err(e) = source.fill() {
                        // Nothing more comes, and reading again reads nothing.
                        assert!(matches!(source.next_job(), Next::Done));
                        source.fill().unwrap();
                        return (lengths, Some(e.to_string()));
                    }
                }
                Next::Done => return (lengths, None),
            }
        }
    }

    fn line(len: usize) -> Vec<u8> {
        let mut line = vec![b'v'; len];
        line.push(b'\n');
        line
    }

    #[test]
    fn a_value_may_be_as_long_as_one_argument() {
        let text = [line(3), line(MAX_VALUE), line(MAX_VALUE), line(1)].concat();
        assert_eq!(read_all(&text), (vec![3, MAX_VALUE, MAX_VALUE, 1], None));
        // The last line needs no newline.
        let text = [line(2), vec![b'v'; MAX_VALUE]].concat();
        assert_eq!(read_all(&text), (vec![2, MAX_VALUE], None));
    }

    #[test]
    fn a_longer_value_is_an_error_naming_its_line() {
        let too_long = |line: usize| {
            format!(" line {line}: longer than 131071 bytes, the most one argument may hold")
        };
        // Good lines first (an empty one counts as a line), then one byte too many: ended
        // by a newline, by the end of the file, or a line that goes on and on.
        let good = [line(5), line(0), line(CHUNK - 10)].concat();
        for bad in [
            line(MAX_VALUE + 1),
            vec![b'v'; MAX_VALUE + 1],
            line(1 << 22),
        ] {
            let text = [good.clone(), bad, line(4)].concat();
            let (lengths, error) = read_all(&text);
            assert_eq!(lengths, [5, CHUNK - 10]);
            let error = error.expect("an error");
            assert!(error.starts_with("/"), "{error}");
            assert!(error.ends_with(&too_long(4)), "{error}");
        }
    }

    #[test]
    fn once_and_values() {
        assert_eq!(collect(Source::once()), [""]);
        let values = vec![OsString::from("x"), OsString::from("y")];
        assert_eq!(collect(Source::values(values)), ["x", "y"]);
    }
}
