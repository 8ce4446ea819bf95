//! `--output-sync` and `--tag`: children's output through pipes jsrun drains as it comes,
//! then written out by line or by job, without ever blocking the supervision loop.
//!
//! jsrun's stdout and stderr become sinks that never block: a pipe, fifo or terminal is
//! reopened through `/proc/self/fd/N`, a new open file description of jsrun's own on which
//! O_NONBLOCK is set (never on the inherited description, which the shell and others
//! share); a socket is written with `send(MSG_DONTWAIT)`; a regular file is written as it
//! is. What a sink cannot take at once waits in one ordered queue (stdout and stderr may be
//! the same pipe: one queue keeps the order of a job's pieces), and the loop polls the sink
//! until it is written. While the queue holds more than `QUEUE_LIMIT`, no job's pipe is
//! drained and no job starts: jobs block on their own full pipes, and memory stays bounded.
//!
//! Output is delivered whole and once, or the job is named: a spill file that fails is cut
//! back to its last good length and the rest is kept in memory; memory that runs out or a
//! spill file that cannot be read back is reported as
//! `jsrun: error: output of job N (COMMAND) could not be kept: REASON`, and the job counts
//! as failed. The reader of stdout or stderr gone (EPIPE) ends the run quietly with 141.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IsTerminal, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::cli::OutputSync;
use crate::jobs::Job;
use crate::sys;

/// A job's output kept in memory up to this size per stream, then in an unlinked file.
const MEMORY_LIMIT: usize = 1 << 20;

/// Output waiting for a sink beyond which jsrun drains no job's pipe and starts no job.
const QUEUE_LIMIT: usize = 1 << 20;

/// How much is read from a pipe or a spill file at a time.
const CHUNK: usize = 64 * 1024;

/// What a queued piece costs besides its bytes, so that many tiny pieces count too.
const PIECE_COST: usize = 64;

/// Pieces this small are appended to the piece before them when they go to the same sink.
const SMALL: usize = 4096;

pub struct Output {
    mode: OutputSync,
    tag: bool,
    buf: Vec<u8>,
    queue: Queue,
    /// The fall-back from a spill file to memory has been reported.
    spill_warned: bool,
}

/// Why grouped output can no longer be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// EPIPE: the reader of jsrun's stdout or stderr has gone.
    BrokenPipe,
    /// Another write error, already said on stderr.
    Failed,
}

/// One job's captured stdout and stderr.
pub struct Capture {
    streams: [Stream; 2],
}

struct Stream {
    /// `None` once the child's end is closed.
    pipe: Option<OwnedFd>,
    /// Job mode: everything so far (after the spill file). Line mode: the unfinished last
    /// line.
    kept: Vec<u8>,
    spill: Option<Spill>,
    /// Why the spill file was given up: from then on everything stays in memory.
    spill_failed: Option<io::Error>,
    /// Why this stream's output is lost, if it is; what comes later is read and dropped.
    lost: Option<String>,
    is_stderr: bool,
}

/// The part of a stream that went to an unlinked temp file: exactly its first `len`
/// bytes, whatever a failed write may have left after them.
struct Spill {
    file: File,
    len: u64,
}

impl Output {
    pub fn new(mode: OutputSync, tag: bool) -> Output {
        let grouped = mode != OutputSync::None;
        Output {
            mode,
            tag,
            buf: match grouped {
                true => vec![0; CHUNK],
                false => Vec::new(),
            },
            queue: Queue::new(grouped),
            spill_warned: false,
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
                spill_failed: None,
                lost: None,
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

    /// Reads what the job has written so far (a bounded amount, and nothing more once the
    /// queue is full); line mode queues its complete lines.
    pub fn drain(&mut self, capture: &mut Capture, job: &Job) {
        if self.queue.gone.is_some() {
            return;
        }
        for stream in &mut capture.streams {
            self.read_stream(stream, job, 4 * CHUNK, true);
        }
        self.flush_unless_blocked();
    }

    /// The job has ended: takes what it left in its pipes and queues its output. `false`
    /// when a part of it could not be kept (said on stderr): the job counts as failed.
    pub fn finish(&mut self, mut capture: Capture, job: &Job) -> bool {
        if self.queue.gone.is_some() {
            return true;
        }
        for stream in &mut capture.streams {
            // What the job wrote before it ended is in the pipe now; a process it left
            // behind may go on writing, and is not waited for.
            let budget = match &stream.pipe {
                Some(pipe) => sys::bytes_available(pipe.as_fd()).unwrap_or(usize::MAX),
                None => 0,
            };
            self.read_stream(stream, job, budget, false);
        }
        let mut whole = true;
        for stream in capture.streams {
            whole &= self.queue_stream(stream, job);
        }
        self.flush_unless_blocked();
        whole
    }

    /// Writes as much of the queue as the sinks take now, without waiting.
    pub fn flush(&mut self) {
        self.queue.flush(&mut self.buf);
    }

    fn flush_unless_blocked(&mut self) {
        if !self.queue.blocked {
            self.flush();
        }
    }

    /// The queue is over its bound: drain no pipe and start no job until it is written.
    pub fn backlogged(&self) -> bool {
        self.queue.held > QUEUE_LIMIT
    }

    /// Nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.queue.pieces.is_empty()
    }

    /// The sink to poll for POLLOUT: the queue waits for it.
    pub fn waiting_for(&self) -> Option<BorrowedFd<'_>> {
        let head = self.queue.pieces.front()?;
        match (self.queue.blocked, &self.queue.sinks) {
            (true, Some(sinks)) => Some(sinks[head.to].fd()),
            _ => None,
        }
    }

    /// Once: the output can no longer be written.
    pub fn take_gone(&mut self) -> Option<Gone> {
        match (self.queue.gone, self.queue.gone_reported) {
            (Some(gone), false) => {
                self.queue.gone_reported = true;
                Some(gone)
            }
            _ => None,
        }
    }

    /// Outputs lost while they were written out (said on stderr) since the last call.
    pub fn take_lost(&mut self) -> usize {
        std::mem::take(&mut self.queue.lost)
    }

    /// Reads up to `limit` bytes from a stream's pipe, until it would block or ends; with
    /// `bounded`, also stops once the queue is over its bound.
    fn read_stream(&mut self, stream: &mut Stream, job: &Job, limit: usize, bounded: bool) {
        let mut total = 0;
        while total < limit && !(bounded && self.backlogged()) {
            let Some(pipe) = &stream.pipe else { return };
            let want = self.buf.len().min(limit - total);
            match nix::unistd::read(pipe.as_fd(), &mut self.buf[..want]) {
                Ok(0) => stream.pipe = None,
                Ok(n) => {
                    total += n;
                    let data = &self.buf[..n];
                    match self.mode {
                        OutputSync::Line => {
                            let lines = take_lines(stream, data);
                            if let Some(lines) = lines {
                                let to = usize::from(stream.is_stderr);
                                let mut tagger = Tagger::new(self.tag, job);
                                self.queue.push_bytes(to, tagger.apply(lines));
                            }
                        }
                        _ => keep(stream, data, job, &mut self.spill_warned),
                    }
                }
                Err(Errno::EINTR) => {}
                // EAGAIN: nothing more for now. Anything else: the pipe is unusable.
                Err(Errno::EAGAIN) => return,
                Err(_) => stream.pipe = None,
            }
        }
    }

    /// Queues a finished job's stream: the spilled part is read back a chunk at a time
    /// when its turn comes (never whole in memory), then what was kept in memory.
    fn queue_stream(&mut self, stream: Stream, job: &Job) -> bool {
        let to = usize::from(stream.is_stderr);
        if let Some(reason) = stream.lost {
            crate::say!(
                "jsrun: error: {} could not be kept: {reason}",
                output_of(job)
            );
            return false;
        }
        let Some(Spill { mut file, len }) = stream.spill else {
            if !stream.kept.is_empty() {
                let mut tagger = Tagger::new(self.tag, job);
                self.queue.push_bytes(to, tagger.apply(stream.kept));
            }
            return true;
        };
        if let Err(e) = file.rewind() {
            crate::say!(
                "jsrun: error: {} could not be kept: {}: cannot read back its temp file: {e}",
                output_of(job),
                stream_name(to)
            );
            return false;
        }
        self.queue.push(Piece {
            to,
            data: Vec::new(),
            done: 0,
            rest: Some(Box::new(Spilled {
                file,
                left: len,
                tail: stream.kept,
                tail_done: 0,
                tagger: Tagger::new(self.tag, job),
                job: output_of(job),
            })),
        });
        true
    }
}

impl Capture {
    /// The pipes still open, to poll.
    pub fn pipes(&self) -> impl Iterator<Item = &OwnedFd> {
        self.streams.iter().filter_map(|s| s.pipe.as_ref())
    }
}

/// "output of job N (COMMAND)", for messages.
fn output_of(job: &Job) -> String {
    format!("output of job {} ({})", job.seq, job.display())
}

fn stream_name(to: usize) -> &'static str {
    match to {
        0 => "stdout",
        _ => "stderr",
    }
}

/// Line mode: adds `data` to the stream's unfinished line and takes the complete lines,
/// if there are any now.
fn take_lines(stream: &mut Stream, data: &[u8]) -> Option<Vec<u8>> {
    if stream.lost.is_some() {
        return None;
    }
    if stream.kept.try_reserve(data.len()).is_err() {
        let kept = stream.kept.len();
        lose(
            stream,
            &format!("a line of more than {kept} bytes: out of memory"),
        );
        return None;
    }
    let start = stream.kept.len();
    stream.kept.extend_from_slice(data);
    // Only the new bytes can hold a line end: the unfinished line had none.
    let end = start + data.iter().rposition(|&b| b == b'\n')?;
    let rest = stream.kept.split_off(end + 1);
    Some(std::mem::replace(&mut stream.kept, rest))
}

/// Job mode: keeps in memory up to the limit, then in an unlinked temp file. A temp file
/// that cannot be created or written is cut back to what it holds whole, and everything
/// from there on stays in memory: no byte is lost, duplicated or reordered. Memory that
/// runs out loses the stream, which is said when the job ends.
fn keep(stream: &mut Stream, data: &[u8], job: &Job, warned: &mut bool) {
    if stream.lost.is_some() {
        return;
    }
    if stream.spill.is_none()
        && stream.spill_failed.is_none()
        && stream.kept.len() + data.len() > MEMORY_LIMIT
    {
        match start_spill(&stream.kept) {
            Ok(file) => {
                let len = stream.kept.len() as u64;
                stream.kept = Vec::new();
                stream.spill = Some(Spill { file, len });
            }
            Err(e) => spill_failed(stream, e, job, warned),
        }
    }
    if stream.spill_failed.is_none()
        && let Some(spill) = &mut stream.spill
    {
        match spill.file.write_all(data) {
            Ok(()) => {
                spill.len += data.len() as u64;
                return;
            }
            Err(e) => {
                // A part of `data` may be in the file: cut it off (and free the space).
                // Reading back takes `len` bytes in any case.
                let _ = spill.file.set_len(spill.len);
                spill_failed(stream, e, job, warned);
            }
        }
    }
    if stream.kept.try_reserve(data.len()).is_err() {
        let reason = match &stream.spill_failed {
            Some(e) => format!(
                "the temp file failed ({e}), then memory ran out at {} MiB",
                stream.kept.len() >> 20
            ),
            None => format!("memory ran out at {} MiB", stream.kept.len() >> 20),
        };
        lose(stream, &reason);
        return;
    }
    stream.kept.extend_from_slice(data);
}

fn start_spill(kept: &[u8]) -> io::Result<File> {
    let mut file = tempfile::tempfile()?;
    file.write_all(kept)?;
    Ok(file)
}

fn spill_failed(stream: &mut Stream, e: io::Error, job: &Job, warned: &mut bool) {
    if !std::mem::replace(warned, true) {
        crate::say!(
            "jsrun: warning: cannot put the {} in a temp file ({e}); keeping it in memory",
            output_of(job)
        );
    }
    stream.spill_failed = Some(e);
}

/// Gives up a stream's output: what was kept is freed, and what comes later is dropped.
fn lose(stream: &mut Stream, reason: &str) {
    let name = stream_name(usize::from(stream.is_stderr));
    stream.lost = Some(format!("{name}: {reason}"));
    stream.kept = Vec::new();
    stream.spill = None;
}

// ---------------------------------------------------------------------------
// Sinks and the queue

/// jsrun's stdout or stderr, written without blocking.
struct Sink {
    std: Std,
    /// Pipes, fifos and terminals: a private non-blocking description of the same file.
    private: Option<OwnedFd>,
    kind: Kind,
}

enum Std {
    Out(io::Stdout),
    Err(io::Stderr),
}

impl AsFd for Std {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Std::Out(out) => out.as_fd(),
            Std::Err(err) => err.as_fd(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Written through `private`, non-blocking.
    Private,
    /// `send(MSG_DONTWAIT)`: one call that does not block, the description unchanged.
    Socket,
    /// A regular file, a device: written as it is (it does not keep a writer waiting).
    Plain,
    /// A pipe or terminal that could not be reopened: written only when poll says it has
    /// room, at most PIPE_BUF bytes at a time, which a pipe with room takes without waiting.
    Guarded,
}

impl Sink {
    fn open(std: Std) -> Sink {
        let fd = std.as_fd();
        let raw = fd.as_raw_fd();
        let writable = nix::fcntl::fcntl(fd, FcntlArg::F_GETFL).is_ok_and(|flags| {
            OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE != OFlag::O_RDONLY
        });
        let (private, kind) = match nix::sys::stat::fstat(fd) {
            Ok(stat)
                if writable
                    && (sys::is_fifo(&stat)
                        || (sys::is_char_device(&stat) && fd.is_terminal())) =>
            {
                // No reader left (ENXIO) or not ours to open: the inherited one, guarded.
                match sys::reopen_inherited(raw, OFlag::O_WRONLY | OFlag::O_NOCTTY) {
                    Ok(private) => (Some(private), Kind::Private),
                    Err(_) => (None, Kind::Guarded),
                }
            }
            Ok(stat) if sys::is_socket(&stat) => (None, Kind::Socket),
            _ => (None, Kind::Plain),
        };
        Sink { std, private, kind }
    }

    /// The descriptor written to, to poll for POLLOUT.
    fn fd(&self) -> BorrowedFd<'_> {
        match &self.private {
            Some(fd) => fd.as_fd(),
            None => self.std.as_fd(),
        }
    }

    /// Writes a part of `data`, or says EAGAIN.
    fn write(&self, data: &[u8]) -> Result<usize, Errno> {
        loop {
            let result = match self.kind {
                Kind::Private | Kind::Plain => nix::unistd::write(self.fd(), data),
                Kind::Socket => sys::send_nonblocking(self.fd(), data),
                Kind::Guarded => {
                    let mut fds = [PollFd::new(self.fd(), PollFlags::POLLOUT)];
                    match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
                        Ok(0) => Err(Errno::EAGAIN),
                        Ok(_) => {
                            let n = data.len().min(nix::libc::PIPE_BUF);
                            nix::unistd::write(self.fd(), &data[..n])
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Err(Errno::EINTR) => continue,
                // Not open for writing (`1<file`): dropped, as Rust's own stdout does.
                Err(Errno::EBADF) => return Ok(data.len()),
                Ok(0) if !data.is_empty() => return Err(Errno::EIO),
                result => return result,
            }
        }
    }
}

/// Output on its way to the sinks, in the order it is to appear.
struct Queue {
    /// Stdout and stderr; `None` when output is not grouped.
    sinks: Option<[Sink; 2]>,
    pieces: VecDeque<Piece>,
    /// Memory the pieces hold (see [`Piece::cost`]).
    held: usize,
    /// The sink of the first piece took nothing the last time: wait until poll says it can.
    blocked: bool,
    gone: Option<Gone>,
    gone_reported: bool,
    /// Outputs lost on the way out, not yet counted by the caller.
    lost: usize,
}

/// A piece of output for one sink.
struct Piece {
    /// 0: stdout, 1: stderr.
    to: usize,
    data: Vec<u8>,
    /// Bytes of `data` written so far.
    done: usize,
    /// A spilled stream, read back into `data` a chunk at a time.
    rest: Option<Box<Spilled>>,
}

struct Spilled {
    file: File,
    /// Bytes of the file still to read.
    left: u64,
    /// What the stream kept in memory after the file's part.
    tail: Vec<u8>,
    tail_done: usize,
    tagger: Tagger,
    /// "output of job N (COMMAND)", for a message.
    job: String,
}

impl Piece {
    /// Memory this piece holds: its buffers, a chunk for a spilled stream still to read,
    /// and a fixed cost per piece.
    fn cost(&self) -> usize {
        let rest = self.rest.as_ref().map_or(0, |r| CHUNK + r.tail.capacity());
        self.data.capacity() + rest + PIECE_COST
    }
}

impl Spilled {
    /// The next chunk of the stream, tagged, into `out`: `false` when there is none left.
    fn next_chunk(&mut self, out: &mut Vec<u8>, buf: &mut [u8]) -> io::Result<bool> {
        out.clear();
        if self.left > 0 {
            let want = buf
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            let n = loop {
                match self.file.read(&mut buf[..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "it is shorter than what was written to it",
                ));
            }
            self.left -= n as u64;
            self.tagger.push(out, &buf[..n]);
            return Ok(true);
        }
        if self.tail_done < self.tail.len() {
            let end = self.tail.len().min(self.tail_done + CHUNK);
            self.tagger.push(out, &self.tail[self.tail_done..end]);
            self.tail_done = end;
            if end == self.tail.len() {
                self.tail = Vec::new();
                self.tail_done = 0;
            }
            return Ok(true);
        }
        Ok(false)
    }
}

/// What became of the first piece in one step of [`Queue::flush`].
enum Step {
    /// Written in part, or refilled from its spill file: go on.
    More,
    /// Written whole.
    Done,
    /// Its sink would block.
    Blocked,
    /// Its sink failed.
    Gone(Gone),
    /// Its spill file could not be read back (said on stderr).
    Lost,
}

impl Queue {
    fn new(grouped: bool) -> Queue {
        let sinks = grouped.then(|| {
            [
                Sink::open(Std::Out(io::stdout())),
                Sink::open(Std::Err(io::stderr())),
            ]
        });
        Queue {
            sinks,
            pieces: VecDeque::new(),
            held: 0,
            blocked: false,
            gone: None,
            gone_reported: false,
            lost: 0,
        }
    }

    fn push(&mut self, piece: Piece) {
        if self.gone.is_some() {
            return;
        }
        self.held += piece.cost();
        self.pieces.push_back(piece);
    }

    fn push_bytes(&mut self, to: usize, data: Vec<u8>) {
        if self.gone.is_some() || data.is_empty() {
            return;
        }
        if data.len() <= SMALL
            && let Some(last) = self.pieces.back_mut()
            && last.to == to
            && last.rest.is_none()
        {
            self.held -= last.cost();
            last.data.extend_from_slice(&data);
            self.held += last.cost();
            return;
        }
        self.push(Piece {
            to,
            data,
            done: 0,
            rest: None,
        });
    }

    /// Writes pieces in order until the queue is empty or a sink would block.
    fn flush(&mut self, buf: &mut [u8]) {
        self.blocked = false;
        let Some(sinks) = &self.sinks else { return };
        while self.gone.is_none() {
            let Some(head) = self.pieces.front_mut() else {
                return;
            };
            self.held -= head.cost();
            let step = step(head, sinks, buf);
            match step {
                Step::More => self.held += head.cost(),
                Step::Blocked => {
                    self.held += head.cost();
                    self.blocked = true;
                    return;
                }
                Step::Done => {
                    self.pieces.pop_front();
                }
                Step::Lost => {
                    self.pieces.pop_front();
                    self.lost += 1;
                }
                Step::Gone(gone) => {
                    self.pieces.clear();
                    self.held = 0;
                    self.gone = Some(gone);
                }
            }
        }
    }
}

/// Writes what it can of the first piece, or reads its next chunk back.
fn step(head: &mut Piece, sinks: &[Sink; 2], buf: &mut [u8]) -> Step {
    if head.done < head.data.len() {
        return match sinks[head.to].write(&head.data[head.done..]) {
            Ok(n) => {
                head.done += n;
                Step::More
            }
            Err(Errno::EAGAIN) => Step::Blocked,
            // The reader has gone: quietly, as `seq | head -1` ends.
            Err(Errno::EPIPE) => Step::Gone(Gone::BrokenPipe),
            Err(e) => {
                crate::say!(
                    "jsrun: error: cannot write to {}: {e}",
                    stream_name(head.to)
                );
                Step::Gone(Gone::Failed)
            }
        };
    }
    let Some(rest) = &mut head.rest else {
        return Step::Done;
    };
    head.done = 0;
    match rest.next_chunk(&mut head.data, buf) {
        Ok(true) => Step::More,
        Ok(false) => Step::Done,
        Err(e) => {
            crate::say!(
                "jsrun: error: {} could not be kept: {}: cannot read back its temp file: {e}",
                rest.job,
                stream_name(head.to)
            );
            Step::Lost
        }
    }
}

/// Puts the job's value and a tab before each line under `--tag`, also when a line spans
/// two pieces.
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

    /// `data` as it is to be written: the very vector when there is no tag.
    fn apply(&mut self, data: Vec<u8>) -> Vec<u8> {
        if self.tag.is_none() {
            return data;
        }
        let mut out = Vec::with_capacity(data.len() + data.len() / 8);
        self.push(&mut out, &data);
        out
    }

    /// Appends `data` to `out`, tagged.
    fn push(&mut self, out: &mut Vec<u8>, data: &[u8]) {
        let Some(tag) = &self.tag else {
            out.extend_from_slice(data);
            return;
        };
        for piece in data.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                out.extend_from_slice(tag);
                out.push(b'\t');
            }
            out.extend_from_slice(piece);
            self.at_line_start = piece.ends_with(b"\n");
        }
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
            tagger.push(&mut out, piece);
        }
        assert_eq!(out, b"v\tabc\nv\td\nv\t\nv\te");
        let mut plain = Tagger::new(false, &job);
        assert_eq!(plain.apply(b"x\ny".to_vec()), b"x\ny");
    }

    #[test]
    fn lines_are_taken_whole_and_the_rest_kept() {
        let mut stream = Stream {
            pipe: None,
            kept: Vec::new(),
            spill: None,
            spill_failed: None,
            lost: None,
            is_stderr: false,
        };
        assert_eq!(take_lines(&mut stream, b"ab"), None);
        assert_eq!(
            take_lines(&mut stream, b"c\nd\ne").as_deref(),
            Some(&b"abc\nd\n"[..])
        );
        assert_eq!(stream.kept, b"e");
        assert_eq!(take_lines(&mut stream, b"\n").as_deref(), Some(&b"e\n"[..]));
        assert!(stream.kept.is_empty());
    }
}
