//! The slot ledger: which slots jsrun's jobs hold, and the rule that each goes back.
//!
//! A job runs in jsrun's implicit slot (there is none under `--jobserver`) or on a token
//! read for it. A [`Held`] slot gives itself back when dropped: a token writes back the
//! very byte that was read for it (bytes may carry meaning), the implicit slot is marked
//! free and nothing is written for it. So no path — an error, a failed spawn, a panic —
//! can keep a token, and none can give one back twice.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::Flock;
use nix::sys::inotify::{AddWatchFlags, Inotify};

use crate::client::Client;

pub struct Ledger<'p> {
    client: Option<&'p Client>,
    /// Whether the pool has an implicit slot for jsrun at all.
    has_implicit: bool,
    implicit_free: Cell<bool>,
    /// The jobserver failed (EOF, I/O error): read no more tokens from it.
    failed: Cell<bool>,
}

/// The answer to "a slot for one more job?".
pub enum Take<'l, 'p> {
    Got(Held<'l, 'p>),
    /// Wait until the jobserver is readable.
    Wait,
    /// No slot will come from the jobserver: it failed now (the error), or before.
    Never(Option<io::Error>),
}

/// A slot a job holds; given back when dropped.
pub struct Held<'l, 'p> {
    ledger: &'l Ledger<'p>,
    /// `None`: the implicit slot.
    token: Option<u8>,
}

impl<'p> Ledger<'p> {
    /// The slots of a pool: `client` for tokens, `implicit` when jsrun has an implicit slot.
    pub fn new(client: Option<&'p Client>, implicit: bool) -> Ledger<'p> {
        Ledger {
            client,
            has_implicit: implicit,
            implicit_free: Cell::new(implicit),
            failed: Cell::new(false),
        }
    }

    /// The implicit slot when free, else a token if `tokens` allows one and the jobserver
    /// has one now. Never blocks.
    pub fn take<'l>(&'l self, tokens: bool) -> Take<'l, 'p> {
        if self.implicit_free.replace(false) {
            return Take::Got(Held {
                ledger: self,
                token: None,
            });
        }
        let Some(client) = self.client.filter(|_| !self.failed.get()) else {
            return Take::Never(None);
        };
        if !tokens {
            return Take::Wait;
        }
        match client.try_acquire() {
            Ok(Some(token)) => Take::Got(Held {
                ledger: self,
                token: Some(token),
            }),
            Ok(None) => Take::Wait,
            Err(e) => {
                self.failed.set(true);
                Take::Never(Some(e))
            }
        }
    }

    /// The jobserver's read descriptor, to poll while a job waits for a token.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'p>> {
        self.client.map(Client::fd)
    }

    /// The jobserver, for messages.
    pub fn auth(&self) -> Option<&'p crate::makeflags::Auth> {
        self.client.map(Client::auth)
    }

    pub fn has_implicit(&self) -> bool {
        self.has_implicit
    }

    /// jsrun's implicit slot is in use.
    pub fn implicit_busy(&self) -> bool {
        self.has_implicit && !self.implicit_free.get()
    }
}

/// A heavy job's slots, gathered one by one (`--weight=K`). Beyond the first slot, which
/// every client takes the same way, the set is gathered under the jobserver's advisory
/// lock, so that of several jsruns only one holds part of a set; and when no token came
/// back for [`HEAVY_WAIT`] (the slots it lacks are held by jobs that are themselves
/// waiting), the job runs with what it has rather than wait for ever.
///
/// "Came back" means written into the pool by anyone, not only read by this jsrun: make
/// gives a token back and reads it again at once for its next job, and a jsrun that only
/// counted the tokens it got itself would take a pool where tokens go round for a
/// deadlock, and run beside jobs holding the very slots it lacks (the pool's N exceeded).
/// An inotify watch (IN_MODIFY on the pool's inode) sees every such write while the set
/// is partial.
pub struct Gather<'l, 'p> {
    want: usize,
    held: Vec<Held<'l, 'p>>,
    lock: Option<Flock<OwnedFd>>,
    /// When the last slot came, the lock was taken, or a token came back to the pool.
    progress: Instant,
    /// Writes into the pool while the set is partial.
    writes: Option<Inotify>,
}

/// How long a heavy job waits with part of its set while no token comes back.
pub const HEAVY_WAIT: Duration = Duration::from_secs(2);

/// How often a heavy job tries again for the lock another jsrun holds.
pub const LOCK_RETRY: Duration = Duration::from_millis(100);

/// What gathering came to.
pub enum Gathered<'l, 'p> {
    /// The whole set.
    All(Vec<Held<'l, 'p>>),
    /// Part of it, after [`HEAVY_WAIT`] without a token.
    Part(Vec<Held<'l, 'p>>),
    /// Wait for a token (`true`) or until `Instant`, then gather again.
    Wait(bool, Option<Instant>),
    /// No slot will come (see [`Take::Never`]).
    Never(Option<io::Error>),
}

impl<'l, 'p> Gather<'l, 'p> {
    pub fn new(want: usize) -> Gather<'l, 'p> {
        Gather {
            want: want.max(1),
            held: Vec::new(),
            lock: None,
            progress: Instant::now(),
            writes: None,
        }
    }

    /// The descriptor to poll while part of the set is held: readable when a token was
    /// written into the pool (call [`Gather::came_back`] then).
    pub fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        self.writes.as_ref().map(AsFd::as_fd)
    }

    /// The watch was readable: a token came back to the pool, whoever took it.
    pub fn came_back(&mut self, now: Instant) {
        if let Some(writes) = &self.writes
            && crate::govern::drain(writes) != 0
        {
            self.progress = now;
        }
    }

    /// The set is complete, given up or gone: no more watching.
    fn done(&mut self) -> Vec<Held<'l, 'p>> {
        self.lock = None;
        self.writes = None;
        std::mem::take(&mut self.held)
    }

    /// Takes what can be taken now, without waiting.
    pub fn step(&mut self, ledger: &'l Ledger<'p>, tokens: bool, now: Instant) -> Gathered<'l, 'p> {
        while self.held.len() < self.want {
            if !self.held.is_empty() && self.lock.is_none() {
                match ledger.client.map(Client::try_lock) {
                    Some(Ok(Some(lock))) => {
                        self.lock = Some(lock);
                        self.progress = now;
                    }
                    // Another jsrun gathers: try again soon, holding one slot like any client.
                    Some(Ok(None)) => return Gathered::Wait(false, Some(now + LOCK_RETRY)),
                    // No lock to be had (no jobserver, or it refuses locks): run with what
                    // there is.
                    _ => return Gathered::Part(self.done()),
                }
            }
            match ledger.take(tokens) {
                Take::Got(slot) => {
                    self.held.push(slot);
                    self.progress = now;
                }
                Take::Wait if self.held.is_empty() => return Gathered::Wait(tokens, None),
                Take::Wait => {
                    // Watched from the first wait on, in the step that took the lock and
                    // set `progress`: no write after that is missed.
                    if self.writes.is_none() {
                        let modify = AddWatchFlags::IN_MODIFY;
                        self.writes = ledger
                            .client
                            .and_then(|client| crate::govern::watch_for(client, modify).ok());
                    }
                    let until = self.progress + HEAVY_WAIT;
                    if now >= until {
                        return Gathered::Part(self.done());
                    }
                    return Gathered::Wait(tokens, Some(until));
                }
                Take::Never(e) if self.held.is_empty() => return Gathered::Never(e),
                Take::Never(_) => return Gathered::Part(self.done()),
            }
        }
        Gathered::All(self.done())
    }
}

impl Held<'_, '_> {
    /// Whether this is a token (not the implicit slot).
    pub fn is_token(&self) -> bool {
        self.token.is_some()
    }
}

impl Drop for Held<'_, '_> {
    fn drop(&mut self) {
        match (self.token, self.ledger.client) {
            (None, _) => self.ledger.implicit_free.set(true),
            (Some(token), Some(client)) => {
                if let Err(e) = client.release(token) {
                    crate::say!("jsrun: warning: cannot give a token back to the jobserver: {e}");
                }
            }
            (Some(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::makeflags::Auth;
    use std::os::fd::AsRawFd;

    fn pool(tokens: &[u8]) -> (Client, std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        nix::unistd::write(&w, tokens).unwrap();
        let client = Client::open(&Auth::Pipe {
            read: r.as_raw_fd(),
            write: w.as_raw_fd(),
        })
        .unwrap();
        (client, r, w)
    }

    fn got<'l, 'p>(take: Take<'l, 'p>) -> Held<'l, 'p> {
        match take {
            Take::Got(held) => held,
            Take::Wait => panic!("wait"),
            Take::Never(e) => panic!("never: {e:?}"),
        }
    }

    #[test]
    fn the_implicit_slot_first_then_tokens_each_given_back_as_it_was() {
        let (client, _r, _w) = pool(b"ab");
        let ledger = Ledger::new(Some(&client), true);
        let implicit = got(ledger.take(true));
        assert!(!implicit.is_token() && ledger.implicit_busy());
        let a = got(ledger.take(true));
        let b = got(ledger.take(true));
        assert!(matches!(ledger.take(true), Take::Wait));
        assert_eq!(client.available().unwrap(), 0);
        drop(b);
        drop(implicit);
        assert!(!ledger.implicit_busy());
        assert_eq!(
            client.available().unwrap(),
            1,
            "nothing written for the implicit slot"
        );
        drop(a);
        let mut back = [0u8; 2];
        assert_eq!(nix::unistd::read(client.fd(), &mut back).unwrap(), 2);
        assert_eq!(&back, b"ba", "the very bytes, in the order they came back");
    }

    #[test]
    fn no_implicit_slot_under_a_given_jobserver_and_no_tokens_while_held_back() {
        let (client, _r, _w) = pool(b"x");
        let ledger = Ledger::new(Some(&client), false);
        assert!(
            matches!(ledger.take(false), Take::Wait),
            "tokens not allowed"
        );
        let x = got(ledger.take(true));
        assert!(x.is_token());
        assert!(matches!(ledger.take(true), Take::Wait));
        drop(x);
        assert_eq!(client.available().unwrap(), 1);
        let alone = Ledger::new(None, true);
        let only = got(alone.take(true));
        assert!(matches!(alone.take(true), Take::Never(None)));
        drop(only);
        assert!(matches!(alone.take(true), Take::Got(_)));
    }

    #[test]
    fn a_jobserver_at_eof_is_never_read_again() {
        // /dev/null behind fifo: reads see EOF at once.
        let dev_null = Client::open(&Auth::Fifo("/dev/null".into())).unwrap();
        let ledger = Ledger::new(Some(&dev_null), false);
        assert!(matches!(ledger.take(true), Take::Never(Some(_))));
        assert!(matches!(ledger.take(true), Take::Never(None)));
    }

    fn waits_until(gathered: &Gathered<'_, '_>) -> Option<Instant> {
        match gathered {
            Gathered::Wait(true, until) => *until,
            Gathered::Wait(false, _) => panic!("not waiting for a token"),
            Gathered::All(_) | Gathered::Part(_) | Gathered::Never(_) => panic!("not waiting"),
        }
    }

    #[test]
    fn a_token_written_back_to_the_pool_is_progress_whoever_takes_it() {
        let (client, r, w) = pool(b"a");
        let ledger = Ledger::new(Some(&client), true);
        let mut gather = Gather::new(3);
        let t0 = Instant::now();
        assert_eq!(
            waits_until(&gather.step(&ledger, true, t0)),
            Some(t0 + HEAVY_WAIT)
        );
        // Another client gives a token back and takes it again at once, as make does.
        nix::unistd::write(&w, b"b").unwrap();
        nix::unistd::read(&r, &mut [0u8]).unwrap();
        let watch = gather.watch_fd().expect("watched while the set is partial");
        let mut fds = [nix::poll::PollFd::new(watch, nix::poll::PollFlags::POLLIN)];
        assert_eq!(
            nix::poll::poll(&mut fds, 0u16).unwrap(),
            1,
            "the write is seen"
        );
        let t1 = t0 + HEAVY_WAIT / 2;
        gather.came_back(t1);
        let t2 = t0 + HEAVY_WAIT;
        assert_eq!(
            waits_until(&gather.step(&ledger, true, t2)),
            Some(t1 + HEAVY_WAIT)
        );
        // Nothing written since: after HEAVY_WAIT it runs with what it holds.
        gather.came_back(t1 + HEAVY_WAIT);
        match gather.step(&ledger, true, t1 + HEAVY_WAIT) {
            Gathered::Part(held) => assert_eq!(held.len(), 2),
            _ => panic!("not given up"),
        }
        assert!(gather.watch_fd().is_none(), "no watch once given up");
    }
}
