//! The accounting pool (`--serve --accounting`): tokens handed out through a FUSE token
//! file, one process at a time, with a ledger of who holds how many.
//!
//! - **Free tokens** live in the pool's private pipe, as in every pool of jsrun's own, so
//!   the governor holds back, resizes, audits and counts them unchanged. Only this module
//!   reads and writes that pipe for clients.
//! - **Taking**: a READ takes one token, for the requesting thread's process (thread group).
//!   None free: a blocking READ waits in line (its reply is sent later), a non-blocking
//!   one gets EAGAIN. A POLL that asks for reading waits in line too; when its turn comes
//!   a token is held ready for its open file for [`READY_FOR`] and its poller is woken; a
//!   token it does not read goes back, and it goes to the end of the line.
//! - **Giving back**: a WRITE gives back as many tokens as its process holds; a process
//!   that holds none is refused (ENOSPC, as steve refuses it), so a stray byte never grows
//!   the pool.
//! - **Reclaim**: each holder has a pidfd in the poll loop; when it ends holding tokens,
//!   they come back at once, with a warning naming it.
//! - **Fairness**: one line, first come first served, one token per hand-out, blocking
//!   readers and pollers alike; `--per-process-limit=K` skips a process holding K.

use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::client::Client;
use crate::fuse::{self, Op, Request, TokenFile};

/// How long a token is held ready for a poller that was told it may read.
pub const READY_FOR: Duration = Duration::from_secs(1);

/// The byte put back for the tokens of a holder that ended, as make's.
const TOKEN: u8 = b'+';

const POLLIN: u32 = 0x1;
const POLLOUT: u32 = 0x4;
const POLLRDNORM: u32 = 0x40;
const POLLWRNORM: u32 = 0x100;

/// A process that took a token: it may hold some now or none. Kept, with its pidfd, until
/// it ends, so that a process taking and giving back one token after another (make) is
/// looked up in /proc only once.
struct Holder {
    pidfd: OwnedFd,
    tokens: usize,
    /// Its command line, read when it took its first token (gone once it has ended).
    command: String,
}

/// A place in the line for the next free token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiter {
    /// A blocking READ, answered when its turn comes.
    Read { unique: u64, fh: u64, tgid: u32 },
    /// A POLL for reading on open file `fh`; `kh` is the handle to wake it by.
    Poll { fh: u64, kh: u64, tgid: u32 },
}

impl Waiter {
    fn tgid(&self) -> u32 {
        match *self {
            Waiter::Read { tgid, .. } | Waiter::Poll { tgid, .. } => tgid,
        }
    }
}

/// A token held ready for the pollers of one open file.
struct Ready {
    token: u8,
    kh: u64,
    tgid: u32,
    until: Instant,
}

pub struct Accountant<'p> {
    file: &'p TokenFile,
    /// The free tokens: the pool's private pipe.
    pool: &'p Client,
    limit: Option<usize>,
    holders: HashMap<u32, Holder>,
    line: VecDeque<Waiter>,
    ready: HashMap<u64, Ready>,
    next_fh: u64,
    buf: Vec<u8>,
    /// Processes already warned about a write of a token they never took.
    warned: HashSet<u32>,
    /// The connection is gone (unmounted from outside).
    gone: bool,
    /// What the loop's poll found ready among [`Accountant::fds`]: `/dev/fuse` has
    /// requests; the pidfds of holders that ended.
    fuse_ready: bool,
    ended: Vec<RawFd>,
    /// A token was taken from or put back into the private pipe since
    /// [`Accountant::moved`] was last asked.
    moved: Cell<bool>,
}

impl<'p> Accountant<'p> {
    pub fn new(file: &'p TokenFile, pool: &'p Client) -> Accountant<'p> {
        Accountant {
            file,
            pool,
            limit: file.per_process_limit,
            holders: HashMap::new(),
            line: VecDeque::new(),
            ready: HashMap::new(),
            next_fh: 1,
            buf: vec![0u8; fuse::BUFFER],
            warned: HashSet::new(),
            gone: false,
            fuse_ready: false,
            ended: Vec::new(),
            moved: Cell::new(false),
        }
    }

    /// What to poll: `/dev/fuse`, and the pidfd of every holder.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        let fuse = (!self.gone).then(|| self.file.fd());
        fuse.into_iter()
            .chain(self.holders.values().map(|h| h.pidfd.as_fd()))
    }

    /// What the loop's poll found ready: the raw descriptors among [`Accountant::fds`]
    /// (for the next [`Accountant::serve`]; no second poll of the pidfds).
    pub fn woke(&mut self, ready: &[RawFd]) {
        self.fuse_ready = ready.contains(&self.file.fd().as_raw_fd());
        self.ended.clear();
        self.ended.extend(
            self.holders
                .values()
                .map(|h| h.pidfd.as_raw_fd())
                .filter(|fd| ready.contains(fd)),
        );
    }

    /// Whether a token was taken from or put back into the pool since the last call:
    /// its level may have moved.
    pub fn moved(&self) -> bool {
        self.moved.replace(false)
    }

    /// When a token held ready for a poller goes back.
    pub fn deadline(&self) -> Option<Instant> {
        self.ready.values().map(|r| r.until).min()
    }

    /// Whether the token file was unmounted from outside: nothing more to serve.
    pub fn gone(&self) -> bool {
        self.gone
    }

    /// After the loop woke up: takes back the tokens of holders that ended and of pollers
    /// that did not read in time, answers every request that waits, and hands out free
    /// tokens. `may`: tokens may be handed out (the governor neither holds back nor
    /// retires slots).
    pub fn serve(&mut self, may: bool, now: Instant) {
        self.reclaim();
        self.expire(now);
        // Read until EAGAIN only when the poll said so: the poll is level-triggered, and
        // the first wake-up after a request finds it.
        let ready = std::mem::take(&mut self.fuse_ready);
        while ready && !self.gone {
            match self.file.next(&mut self.buf) {
                Ok(Some(request)) => self.answer(request, may, now),
                Ok(None) => break,
                Err(e) => {
                    crate::say!(
                        "jsrun: warning: {} is no longer served ({e}): it was unmounted",
                        self.file.path().display()
                    );
                    self.gone = true;
                }
            }
            self.hand_out(may, now);
        }
        self.hand_out(may, now);
    }

    /// Gives free tokens to the line, first come first served, one at a time. Whether it
    /// gave any.
    pub fn hand_out(&mut self, may: bool, now: Instant) -> bool {
        let mut gave = false;
        while may && let Some(at) = self.line.iter().position(|w| self.eligible(w)) {
            let Ok(Some(token)) = self.pool.try_acquire() else {
                break;
            };
            self.moved.set(true);
            gave = true;
            match self.line.remove(at) {
                Some(Waiter::Read { unique, tgid, .. }) => self.give(unique, tgid, token),
                Some(Waiter::Poll { fh, kh, tgid }) => self.hold_ready(fh, kh, tgid, token, now),
                None => self.put_back(&[token]),
            }
        }
        gave
    }

    /// Whether a waiter may have the next token: below the per-process limit, and a
    /// poller without a token already held ready for it.
    fn eligible(&self, waiter: &Waiter) -> bool {
        let fresh = match waiter {
            Waiter::Poll { fh, .. } => !self.ready.contains_key(fh),
            Waiter::Read { .. } => true,
        };
        fresh && self.below_limit(waiter.tgid())
    }

    fn below_limit(&self, tgid: u32) -> bool {
        self.limit.is_none_or(|k| {
            let held = self.holders.get(&tgid).map_or(0, |h| h.tokens);
            let ready = self.ready.values().filter(|r| r.tgid == tgid).count();
            held + ready < k
        })
    }

    fn answer(&mut self, request: Request, may: bool, now: Instant) {
        let Request { unique, pid, op } = request;
        let reply = |result: Result<&[u8], Errno>| fuse::reply(unique, result);
        let message = match op {
            Op::GetAttr | Op::SetAttr => {
                let f = self.file;
                reply(Ok(&fuse::attr_out(f.mode, f.uid, f.gid)))
            }
            Op::StatFs => reply(Ok(&fuse::statfs_out())),
            Op::Open => {
                let fh = self.next_fh;
                self.next_fh += 1;
                reply(Ok(&fuse::open_out(fh)))
            }
            // A read of nothing takes nothing.
            Op::Read { size: 0, .. } => reply(Ok(&[])),
            Op::Read {
                fh, nonblocking, ..
            } => {
                let tgid = self.tgid(pid);
                if let Some(ready) = self.ready.remove(&fh) {
                    self.line
                        .retain(|w| !matches!(w, Waiter::Poll { fh: f, .. } if *f == fh));
                    return self.give(unique, tgid, ready.token);
                }
                if let Some(token) = self.free_for(tgid, may) {
                    return self.give(unique, tgid, token);
                }
                if nonblocking {
                    reply(Err(Errno::EAGAIN))
                } else {
                    self.line.push_back(Waiter::Read { unique, fh, tgid });
                    return;
                }
            }
            Op::Write { data, .. } => {
                let tgid = self.tgid(pid);
                match self.take_back(tgid, &data) {
                    Ok(out) => reply(Ok(&out)),
                    Err(e) => reply(Err(e)),
                }
            }
            Op::Poll {
                fh,
                kh,
                notify,
                events,
            } => {
                let tgid = self.tgid(pid);
                let revents = self.poll(fh, kh, notify, events, tgid, may, now);
                reply(Ok(&fuse::u32_out(revents)))
            }
            Op::Interrupt {
                unique: interrupted,
            } => {
                let before = self.line.len();
                self.line
                    .retain(|w| !matches!(w, Waiter::Read { unique: u, .. } if *u == interrupted));
                if self.line.len() == before {
                    // Answered already: the kernel forgets the interrupt.
                    return;
                }
                fuse::reply(interrupted, Err(Errno::EINTR))
            }
            Op::Release { fh } => {
                if let Some(ready) = self.ready.remove(&fh) {
                    self.put_back(&[ready.token]);
                }
                self.line.retain(|w| match w {
                    Waiter::Poll { fh: f, .. } | Waiter::Read { fh: f, .. } => *f != fh,
                });
                reply(Ok(&[]))
            }
            Op::GetXattr { name, size } if name == fuse::POOL_XATTR.as_bytes() => {
                let text = self.describe();
                match size {
                    0 => reply(Ok(&fuse::u32_out(text.len() as u32))),
                    n if (n as usize) < text.len() => reply(Err(Errno::ERANGE)),
                    _ => reply(Ok(text.as_bytes())),
                }
            }
            Op::GetXattr { .. } => reply(Err(Errno::ENODATA)),
            Op::Destroy => {
                self.gone = true;
                reply(Ok(&[]))
            }
            Op::Forget => return,
            // FLUSH: a kernel older than FOPEN_NOFLUSH sends none again once told ENOSYS.
            Op::Flush | Op::Init { .. } | Op::Other(_) => reply(Err(Errno::ENOSYS)),
            Op::Malformed => reply(Err(Errno::EINVAL)),
        };
        self.file.send(&message);
    }

    /// A POLL: readable when a token is held ready for this open file (or one is free
    /// and nobody waits for it); else in line, when the kernel asks to be woken. Writing
    /// never waits.
    #[allow(clippy::too_many_arguments)]
    fn poll(
        &mut self,
        fh: u64,
        kh: u64,
        notify: bool,
        events: u32,
        tgid: u32,
        may: bool,
        now: Instant,
    ) -> u32 {
        let writable = events & (POLLOUT | POLLWRNORM);
        let readable = events & (POLLIN | POLLRDNORM);
        if readable == 0 {
            return writable;
        }
        if self.ready.contains_key(&fh) {
            return writable | readable;
        }
        if let Some(token) = self.free_for(tgid, may) {
            let until = now + READY_FOR;
            let ready = Ready {
                token,
                kh,
                tgid,
                until,
            };
            self.ready.insert(fh, ready);
            return writable | readable;
        }
        let queued = self
            .line
            .iter()
            .any(|w| matches!(w, Waiter::Poll { fh: f, .. } if *f == fh));
        if notify && !queued {
            self.line.push_back(Waiter::Poll { fh, kh, tgid });
        }
        writable
    }

    /// A free token for a newcomer of process `tgid`: only while tokens may be handed
    /// out, it is below the limit, and nobody in line could take it instead.
    fn free_for(&self, tgid: u32, may: bool) -> Option<u8> {
        let first = may && self.below_limit(tgid) && !self.line.iter().any(|w| self.eligible(w));
        let token = first
            .then(|| self.pool.try_acquire().ok().flatten())
            .flatten();
        if token.is_some() {
            self.moved.set(true);
        }
        token
    }

    /// Holds `token` ready for the pollers of `fh` and wakes them.
    fn hold_ready(&mut self, fh: u64, kh: u64, tgid: u32, token: u8, now: Instant) {
        self.ready.insert(
            fh,
            Ready {
                token,
                kh,
                tgid,
                until: now + READY_FOR,
            },
        );
        self.file.send(&fuse::poll_wakeup(kh));
    }

    /// Answers READ `unique` with `token`, booked to process `tgid`.
    fn give(&mut self, unique: u64, tgid: u32, token: u8) {
        let holder = match self.holders.entry(tgid) {
            Entry::Occupied(holder) => holder.into_mut(),
            Entry::Vacant(place) => {
                let Ok(pidfd) = crate::sys::pidfd_open(tgid) else {
                    // Gone already: nobody will read the answer.
                    self.put_back(&[token]);
                    self.file.send(&fuse::reply(unique, Err(Errno::ESRCH)));
                    return;
                };
                place.insert(Holder {
                    pidfd,
                    tokens: 0,
                    command: crate::sys::command_of(tgid),
                })
            }
        };
        holder.tokens += 1;
        if !self.file.send(&fuse::reply(unique, Ok(&[token]))) {
            // The reader is gone (interrupted, killed): the token stays free.
            if let Some(holder) = self.holders.get_mut(&tgid) {
                holder.tokens -= 1;
            }
            self.put_back(&[token]);
        }
    }

    /// A WRITE: takes back as many of `data`'s bytes as `tgid` holds tokens; none held is
    /// refused.
    fn take_back(&mut self, tgid: u32, data: &[u8]) -> Result<Vec<u8>, Errno> {
        let held = self.holders.get(&tgid).map_or(0, |h| h.tokens);
        let n = data.len().min(held);
        if n == 0 {
            if !data.is_empty() && self.warned.insert(tgid) {
                crate::say!(
                    "jsrun: warning: pid {tgid} ({}) wrote a token it never took: refused",
                    crate::sys::command_of(tgid)
                );
            }
            return if data.is_empty() {
                Ok(fuse::write_out(0))
            } else {
                Err(Errno::ENOSPC)
            };
        }
        self.put_back(&data[..n]);
        if let Some(holder) = self.holders.get_mut(&tgid) {
            holder.tokens -= n;
        }
        Ok(fuse::write_out(n as u32))
    }

    /// Puts tokens back among the free ones.
    fn put_back(&self, tokens: &[u8]) {
        self.moved.set(true);
        for &token in tokens {
            if let Err(e) = self.pool.release(token) {
                crate::say!("jsrun: warning: a token could not go back into the pool: {e}");
            }
        }
    }

    /// The process of thread `tid`. A known process's pid is a process's (its pidfd keeps
    /// the number from being reused), so only strangers are looked up.
    fn tgid(&self, tid: u32) -> u32 {
        if self.holders.contains_key(&tid) {
            return tid;
        }
        crate::sys::tgid_of(tid).unwrap_or(tid)
    }

    /// Takes back the tokens of every holder whose pidfd the loop's poll found readable:
    /// it has ended.
    fn reclaim(&mut self) {
        if self.ended.is_empty() {
            return;
        }
        let ended: Vec<u32> = self
            .holders
            .iter()
            .filter(|(_, h)| self.ended.contains(&h.pidfd.as_raw_fd()))
            .map(|(&pid, _)| pid)
            .collect();
        self.ended.clear();
        for pid in ended {
            if let Some(holder) = self.holders.remove(&pid)
                && holder.tokens > 0
            {
                self.put_back(&vec![TOKEN; holder.tokens]);
                crate::say!(
                    "jsrun: warning: pid {pid} ({}) ended holding {}: taken back",
                    holder.command,
                    tokens(holder.tokens)
                );
            }
        }
    }

    /// Tokens held ready too long go back; their pollers go to the end of the line.
    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .ready
            .iter()
            .filter(|(_, r)| r.until <= now)
            .map(|(&fh, _)| fh)
            .collect();
        for fh in late {
            if let Some(ready) = self.ready.remove(&fh) {
                self.put_back(&[ready.token]);
                self.line.push_back(Waiter::Poll {
                    fh,
                    kh: ready.kh,
                    tgid: ready.tgid,
                });
            }
        }
    }

    /// The pool's state for `--info` (the extended attribute [`fuse::POOL_XATTR`]):
    /// `free N`, `waiting N` (readers and pollers in line), then `holder PID TOKENS
    /// COMMAND` lines.
    fn describe(&self) -> String {
        let mut text = format!(
            "free {}\nwaiting {}\n",
            self.pool.available().unwrap_or(0),
            self.line.len()
        );
        for (pid, h) in self.holding() {
            text.push_str(&format!("holder {pid} {} {}\n", h.tokens, h.command));
        }
        text
    }

    /// The processes that hold tokens now, by pid.
    fn holding(&self) -> Vec<(u32, &Holder)> {
        let mut holding: Vec<(u32, &Holder)> = self
            .holders
            .iter()
            .filter(|(_, h)| h.tokens > 0)
            .map(|(pid, h)| (*pid, h))
            .collect();
        holding.sort_unstable_by_key(|(pid, _)| *pid);
        holding
    }
}

impl Drop for Accountant<'_> {
    /// The end of serving: waiting readers get an error (no token will come), pollers are
    /// woken, tokens held ready go back, and every holder is named.
    fn drop(&mut self) {
        for waiter in std::mem::take(&mut self.line) {
            let message = match waiter {
                Waiter::Read { unique, .. } => fuse::reply(unique, Err(Errno::EIO)),
                Waiter::Poll { kh, .. } => fuse::poll_wakeup(kh),
            };
            self.file.send(&message);
        }
        let ready: Vec<u8> = self.ready.drain().map(|(_, r)| r.token).collect();
        self.put_back(&ready);
        for (pid, h) in self.holding() {
            crate::say!(
                "jsrun: warning: pid {pid} ({}) still holds {} at the end",
                h.command,
                tokens(h.tokens)
            );
        }
    }
}

/// "1 token", "2 tokens".
pub fn tokens(n: usize) -> String {
    match n {
        1 => "1 token".into(),
        n => format!("{n} tokens"),
    }
}
