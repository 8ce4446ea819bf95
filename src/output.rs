//! `--output-sync` and `--tag`: children's output through pipes jsrun drains as it comes,
//! so no child ever blocks on a full pipe, then written out by line or by job.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};

use crate::cli::OutputSync;
use crate::jobs::Job;

/// A job's output kept in memory up to this size per stream, then in an unlinked file.
const MEMORY_LIMIT: usize = 1 << 20;

pub struct Output {
    mode: OutputSync,
    tag: bool,
    buf: Vec<u8>,
}

/// One job's captured stdout and stderr.
pub struct Capture {
    streams: [Stream; 2],
}

struct Stream {
    /// `None` once the child's end is closed.
    pipe: Option<OwnedFd>,
    /// Job mode: everything so far. Line mode: the unfinished last line.
    kept: Vec<u8>,
    spill: Option<File>,
    is_stderr: bool,
}

impl Output {
    pub fn new(mode: OutputSync, tag: bool) -> Output {
        Output {
            mode,
            tag,
            buf: vec![0; 64 * 1024],
        }
    }

    /// Fresh pipes for a job's stdout and stderr, unless output is not grouped: the
    /// capture for jsrun, and the write ends for the child.
    pub fn prepare(&mut self) -> io::Result<Option<(Capture, [OwnedFd; 2])>> {
        if self.mode == OutputSync::None {
            return Ok(None);
        }
        let stream = |is_stderr| -> io::Result<(Stream, OwnedFd)> {
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            // Our own end of a pipe of our own: non-blocking, so draining never waits.
            nix::fcntl::fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
            let stream = Stream {
                pipe: Some(read),
                kept: Vec::new(),
                spill: None,
                is_stderr,
            };
            Ok((stream, write))
        };
        let (out, out_w) = stream(false)?;
        let (err, err_w) = stream(true)?;
        let capture = Capture {
            streams: [out, err],
        };
        Ok(Some((capture, [out_w, err_w])))
    }

    /// Reads what the job has written so far; line mode prints its complete lines.
    pub fn drain(&mut self, capture: &mut Capture, job: &Job) {
        for stream in &mut capture.streams {
            self.read_stream(stream, job);
        }
    }

    /// The job has ended: take the rest of its output and print what is left.
    pub fn finish(&mut self, mut capture: Capture, job: &Job) {
        self.drain(&mut capture, job);
        let stdout = io::stdout();
        let stderr = io::stderr();
        // Both locks, so no other output gets between a job's stdout and stderr.
        let mut out = stdout.lock();
        let mut err = stderr.lock();
        for stream in &mut capture.streams {
            let sink: &mut dyn Write = if stream.is_stderr { &mut err } else { &mut out };
            let _ = self.write_all_kept(stream, job, sink);
        }
        let _ = out.flush();
        let _ = err.flush();
    }

    fn read_stream(&mut self, stream: &mut Stream, job: &Job) {
        loop {
            let Some(pipe) = &stream.pipe else { return };
            match nix::unistd::read(pipe.as_fd(), &mut self.buf) {
                Ok(0) => {
                    stream.pipe = None;
                    break;
                }
                Ok(n) => {
                    let data = &self.buf[..n];
                    match self.mode {
                        OutputSync::Line => {
                            stream.kept.extend_from_slice(data);
                            if let Some(end) = stream.kept.iter().rposition(|&b| b == b'\n') {
                                let lines: Vec<u8> = stream.kept.drain(..=end).collect();
                                emit(stream.is_stderr, &lines, self.tag, job);
                            }
                        }
                        _ => keep(stream, data),
                    }
                }
                Err(Errno::EINTR) => continue,
                // EAGAIN: nothing more for now. Anything else: the pipe is unusable.
                Err(Errno::EAGAIN) => break,
                Err(_) => {
                    stream.pipe = None;
                    break;
                }
            }
        }
    }

    /// Writes a finished job's stream: the spilled part in pieces (never whole in
    /// memory), then what was kept in memory.
    fn write_all_kept(
        &mut self,
        stream: &mut Stream,
        job: &Job,
        sink: &mut dyn Write,
    ) -> io::Result<()> {
        let mut tagger = Tagger::new(self.tag, job);
        if let Some(mut file) = stream.spill.take() {
            file.rewind()?;
            loop {
                let n = match file.read(&mut self.buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                tagger.write(sink, &self.buf[..n])?;
            }
        }
        tagger.write(sink, &stream.kept)?;
        stream.kept.clear();
        Ok(())
    }
}

impl Capture {
    /// The pipes still open, to poll.
    pub fn pipes(&self) -> impl Iterator<Item = &OwnedFd> {
        self.streams.iter().filter_map(|s| s.pipe.as_ref())
    }
}

/// Job mode: keep in memory up to the limit, then move everything to an unlinked file.
fn keep(stream: &mut Stream, data: &[u8]) {
    if stream.spill.is_none()
        && stream.kept.len() + data.len() > MEMORY_LIMIT
        && let Ok(mut file) = tempfile::tempfile()
        && file.write_all(&stream.kept).is_ok()
    {
        stream.kept.clear();
        stream.spill = Some(file);
    }
    let spilled = match &mut stream.spill {
        Some(file) => file.write_all(data).is_ok(),
        None => false,
    };
    if !spilled {
        // No temp file to be had: keep it in memory rather than lose a byte.
        stream.kept.extend_from_slice(data);
    }
}

fn emit(is_stderr: bool, data: &[u8], tag: bool, job: &Job) {
    let mut tagger = Tagger::new(tag, job);
    let _ = if is_stderr {
        tagger.write(&mut io::stderr().lock(), data)
    } else {
        tagger.write(&mut io::stdout().lock(), data)
    };
}

/// Writes data in pieces, putting the job's value and a tab before each line under
/// `--tag`, also when a line spans two pieces.
struct Tagger {
    tag: Option<Vec<u8>>,
    at_line_start: bool,
}

impl Tagger {
    fn new(tag: bool, job: &Job) -> Tagger {
        Tagger {
            tag: tag.then(|| job.tag()),
            at_line_start: true,
        }
    }

    fn write(&mut self, sink: &mut dyn Write, data: &[u8]) -> io::Result<()> {
        let Some(tag) = &self.tag else {
            return sink.write_all(data);
        };
        for piece in data.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                sink.write_all(tag)?;
                sink.write_all(b"\t")?;
            }
            sink.write_all(piece)?;
            self.at_line_start = piece.ends_with(b"\n");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_survive_lines_split_across_pieces() {
        let job = Job::new(1, 1, vec!["echo".into()], Some(b"v".to_vec()), false);
        let mut tagger = Tagger::new(true, &job);
        let mut out = Vec::new();
        for piece in [&b"ab"[..], b"c\nd", b"\n\ne", b""] {
            tagger.write(&mut out, piece).unwrap();
        }
        assert_eq!(out, b"v\tabc\nv\td\nv\t\nv\te");
        let mut plain = Tagger::new(false, &job);
        let mut out = Vec::new();
        plain.write(&mut out, b"x\ny").unwrap();
        assert_eq!(out, b"x\ny");
    }
}
