//! The governor of a pool of jsrun's own: it follows how many slots the whole tree uses,
//! holds tokens back while a limit is exceeded, resizes the pool, and audits it.
//!
//! - **Following.** Every read and write of the pool's fifo or pipe, by any process, is an
//!   inotify event (IN_ACCESS, IN_MODIFY) on its inode; on each, the governor reads the
//!   pool's level (FIONREAD) and knows how many tokens are out. No timer: nothing runs
//!   while nothing happens.
//! - **Holding back.** While a limit is exceeded the governor reads every token that comes
//!   back and keeps it, so nobody in the tree can start another job; every process's
//!   implicit slot still runs. When the limits are met again the tokens go back one per
//!   [`RELEASE_INTERVAL`].
//! - **Resizing.** One slot more: a new token (kept, while holding back). One slot fewer: a
//!   held or free token is taken out, else the next one that comes back.
//! - **Audit.** More tokens in the pool than it can hold means someone wrote a byte it never
//!   read: said when it happens.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::client::Client;
use crate::makeflags::Auth;

/// How often a held-back token goes back once the limits are met: the whole pool of 16
/// within 4 s, never all at once into the same shortage.
pub const RELEASE_INTERVAL: Duration = Duration::from_millis(250);

/// The byte a pool of jsrun's own holds, as make's.
const TOKEN: u8 = b'+';

pub struct Governor {
    /// The pool's size now (N): tokens plus the implicit slot, if any.
    slots: usize,
    /// 1 when jsrun's own first job runs in an implicit slot of this pool, 0 for `--serve`.
    implicit: usize,
    /// Tokens kept out of the pool.
    held: Vec<u8>,
    /// Tokens to take out for good as they come back (slots removed while all were out).
    retire: usize,
    /// A limit is exceeded: keep what comes back.
    holding: bool,
    next_release: Option<Instant>,
    watch: Option<Inotify>,
    view: View,
    extra_reported: bool,
    /// `--serve`: give back the tokens of holders that are gone (see [`Governor::reclaim`]).
    reclaim: bool,
    start: Instant,
    /// The pool's level may have moved since it was last read (a resize, a hold).
    stale: bool,
}

/// How the tree used the pool, over time.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub in_use: usize,
    pub peak: usize,
    /// Slot-time in use, and time with every slot busy.
    pub busy: Duration,
    pub all_busy: Duration,
    pub held_peak: usize,
    /// Time with at least one token held back.
    pub held_time: Duration,
    since: Option<Instant>,
    held: usize,
    slots: usize,
}

impl View {
    /// Books the time since the last change at the levels that held during it.
    fn advance(&mut self, now: Instant) {
        if let Some(since) = self.since {
            let spell = now.saturating_duration_since(since);
            self.busy += spell * self.in_use as u32;
            if self.in_use >= self.slots {
                self.all_busy += spell;
            }
            if self.held > 0 {
                self.held_time += spell;
            }
        }
        self.since = Some(now);
    }
}

/// A change the trace and `-v` are told about.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Slots in use by the whole tree, slots held back.
    Level { in_use: usize, held: usize },
    /// More tokens in the pool than it can hold, at this time since the start.
    Extra { tokens: usize, at: Duration },
    /// The pool's size changed.
    Resized { slots: usize },
    /// Tokens were missing with no process left holding the pool open: written back.
    Reclaimed { tokens: usize, at: Duration },
}

impl Governor {
    /// The governor of a pool of `slots` whose tokens `client` reads; `implicit` is 1 when
    /// jsrun's own job runs in the pool's implicit slot.
    pub fn new(slots: usize, implicit: usize, client: &Client) -> Governor {
        Governor {
            slots,
            implicit,
            held: Vec::new(),
            retire: 0,
            holding: false,
            next_release: None,
            watch: watch(client).ok(),
            view: View {
                slots,
                ..View::default()
            },
            extra_reported: false,
            reclaim: false,
            start: Instant::now(),
            stale: true,
        }
    }

    /// Gives back tokens whose holders are gone: when tokens are missing and no process
    /// but jsrun has the pool open any more (every process that could still give one back
    /// holds it open), they are lost for good. Looked at when a process closes the pool.
    /// Only where jsrun can see every holder: as root, or on a pool only its user opens.
    pub fn reclaiming(mut self) -> Governor {
        self.reclaim = true;
        self
    }

    /// No inotify watch: for a pool whose every read and write is jsrun's own (the
    /// accounting pool), where the loop looks at the level each time it wakes anyway.
    pub fn unwatched(mut self) -> Governor {
        self.watch = None;
        self
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Reads the pool's level and books it, after tokens moved without a wake-up.
    pub fn observe(&mut self, client: &Client, now: Instant, events: &mut Vec<Event>) {
        self.follow(client, false, now, events);
    }

    /// The inotify descriptor to poll: readable after any read or write of the pool.
    pub fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        self.watch.as_ref().map(|w| w.as_fd())
    }

    /// Whether [`Governor::wake`] has anything to do on an unwatched pool that nobody but
    /// its caller touched since the last wake: take or give back tokens, or read a level
    /// that may have moved.
    pub fn due(&self, now: Instant) -> bool {
        self.stale
            || self.watch.is_some()
            || self.wants_tokens()
            || self.next_release.is_some_and(|at| now >= at)
    }

    /// Whether tokens that come back are to be taken (held back or retired): poll the
    /// pool's read descriptor.
    pub fn wants_tokens(&self) -> bool {
        self.holding || self.retire > 0
    }

    /// Whether jsrun's own jobs may take tokens: not while the tree is held back.
    pub fn may_take(&self) -> bool {
        !self.holding
    }

    /// When the loop must wake up for the governor even if nothing else happens.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_release
    }

    /// Holds back (a limit is exceeded) or lets go (all limits are met).
    pub fn hold(&mut self, hold: bool, now: Instant) {
        if hold == self.holding {
            return;
        }
        self.stale = true;
        self.holding = hold;
        self.next_release = (!hold && !self.held.is_empty()).then_some(now);
    }

    /// One slot more (`grow`) or fewer, down to 1.
    pub fn resize(&mut self, grow: bool, client: &Client) -> Option<Event> {
        self.stale = true;
        if grow {
            self.slots += 1;
            // A token still to be retired is out there: it simply stays.
            if self.retire > 0 {
                self.retire -= 1;
            } else if self.holding || client.release(TOKEN).is_err() {
                self.held.push(TOKEN);
                self.next_release = self.next_release.or((!self.holding).then(Instant::now));
            }
        } else {
            if self.slots <= 1 {
                return None;
            }
            self.slots -= 1;
            if self.held.pop().is_none() && !matches!(client.try_acquire(), Ok(Some(_))) {
                self.retire += 1;
            }
        }
        self.view.slots = self.slots;
        Some(Event::Resized { slots: self.slots })
    }

    /// After the loop woke up: reads what inotify says (only to clear it), takes tokens
    /// while holding back or retiring, gives one back when it is time, and reports the
    /// pool's new level. `own_implicit_busy`: jsrun's own job holds the implicit slot.
    pub fn wake(
        &mut self,
        client: &Client,
        own_implicit_busy: bool,
        now: Instant,
        events: &mut Vec<Event>,
    ) {
        let closed = self.watch.as_ref().is_some_and(drain_events);
        if self.wants_tokens() {
            while let Ok(Some(token)) = client.try_acquire() {
                if self.retire > 0 {
                    self.retire -= 1;
                } else {
                    self.held.push(token);
                }
                if !self.wants_tokens() {
                    break;
                }
            }
        }
        if let Some(at) = self.next_release
            && now >= at
        {
            match self.held.pop() {
                Some(token) if client.release(token).is_ok() => {}
                Some(token) => self.held.push(token),
                None => {}
            }
            self.next_release = (!self.held.is_empty()).then_some(now + RELEASE_INTERVAL);
        }
        self.follow(client, own_implicit_busy, now, events);
        if self.reclaim && closed {
            self.reclaim(client, own_implicit_busy, now, events);
        }
    }

    /// Writes back the missing tokens when nobody but jsrun holds the pool open.
    ///
    /// The level and the holders cannot be read at one instant, so both are read twice,
    /// holders around each level: a token counted missing at the first level was taken
    /// before it, by a process that still holds the pool at the second scan unless it gave
    /// the token back, which the second level then shows. Only tokens missing both times
    /// with nobody holding the pool either time are written back.
    fn reclaim(
        &mut self,
        client: &Client,
        own_implicit_busy: bool,
        now: Instant,
        events: &mut Vec<Event>,
    ) {
        let Ok(stat) = nix::sys::stat::fstat(client.fd()) else {
            return;
        };
        let me = std::process::id();
        let alone = || {
            crate::sys::holders((stat.st_dev, stat.st_ino))
                .iter()
                .all(|h| h.pid == me)
        };
        let tokens = self.slots - self.implicit + self.retire;
        let missing = || {
            client
                .available()
                .map_or(0, |free| tokens.saturating_sub(free + self.held.len()))
        };
        if missing() == 0 || !alone() {
            return;
        }
        let first = missing();
        if first == 0 || !alone() {
            return;
        }
        let written = (0..first.min(missing()))
            .take_while(|_| client.release(TOKEN).is_ok())
            .count();
        if written > 0 {
            events.push(Event::Reclaimed {
                tokens: written,
                at: now.saturating_duration_since(self.start),
            });
            self.follow(client, own_implicit_busy, now, events);
        }
    }

    /// Reads the pool's level and books it.
    fn follow(
        &mut self,
        client: &Client,
        own_implicit_busy: bool,
        now: Instant,
        events: &mut Vec<Event>,
    ) {
        let Ok(free) = client.available() else {
            return;
        };
        self.stale = false;
        // Tokens that exist: the pool's, plus those still to be retired.
        let tokens = self.slots - self.implicit + self.retire;
        let present = free + self.held.len();
        if present > tokens && !self.extra_reported {
            self.extra_reported = true;
            events.push(Event::Extra {
                tokens: present - tokens,
                at: now.saturating_duration_since(self.start),
            });
        }
        let out = tokens.saturating_sub(present);
        let in_use = out + usize::from(own_implicit_busy && self.implicit > 0);
        let held = self.held.len();
        if (in_use, held) != (self.view.in_use, self.view.held) || self.view.since.is_none() {
            self.view.advance(now);
            self.view.in_use = in_use;
            self.view.held = held;
            self.view.peak = self.view.peak.max(in_use);
            self.view.held_peak = self.view.held_peak.max(held);
            events.push(Event::Level { in_use, held });
        }
    }

    /// The end of the run: the view up to `now`, the tokens held back (they count as
    /// present), and how many tokens the pool should hold.
    pub fn finish(&mut self, now: Instant) -> (View, Vec<u8>, usize) {
        self.view.advance(now);
        let expected = self.slots - self.implicit + self.retire;
        (self.view.clone(), std::mem::take(&mut self.held), expected)
    }
}

/// An inotify watch on the pool's inode for every read, write and close.
pub(crate) fn watch(client: &Client) -> nix::Result<Inotify> {
    let flags = AddWatchFlags::IN_ACCESS
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CLOSE_NOWRITE;
    watch_for(client, flags)
}

/// An inotify watch for `flags` on the pool's inode: a fifo by its path, a pipe by
/// `/proc/self/fd/N` (the watch follows the magic link to the pipe's inode).
pub(crate) fn watch_for(client: &Client, flags: AddWatchFlags) -> nix::Result<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    if let Auth::Fifo(path) = client.auth() {
        inotify.add_watch(path.as_path(), flags)?
    } else {
        let path = format!("/proc/self/fd/{}", client.fd().as_raw_fd());
        inotify.add_watch(path.as_str(), flags)?
    };
    Ok(inotify)
}

/// Empties the inotify queue: whether a process closed the pool, and otherwise only
/// that something happened.
pub(crate) fn drain_events(watch: &Inotify) -> bool {
    let close = (AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_CLOSE_NOWRITE).bits();
    drain(watch) & close != 0
}

/// Empties the inotify queue: the union of the events' masks (0 when there was none).
pub(crate) fn drain(watch: &Inotify) -> u32 {
    // struct inotify_event: wd (4 bytes), mask (4), cookie (4), len (4), name (len).
    const HEADER: usize = 16;
    let mut seen = 0;
    let mut buf = [0u8; 4096];
    loop {
        let n = match nix::unistd::read(watch.as_fd(), &mut buf) {
            Ok(n) if n > 0 => n,
            Err(Errno::EINTR) => continue,
            _ => return seen,
        };
        let mut at = 0;
        while at + HEADER <= n {
            let word = |i: usize| {
                let bytes: [u8; 4] = buf[at + i..at + i + 4].try_into().unwrap_or_default();
                u32::from_ne_bytes(bytes)
            };
            seen |= word(4);
            at += HEADER + word(12) as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Server, Style};

    fn levels(events: &[Event]) -> Vec<(usize, usize)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Level { in_use, held } => Some((*in_use, *held)),
                _ => None,
            })
            .collect()
    }

    /// A client of the same pool, as make would be.
    fn other(server: &Server) -> Client {
        Client::open(server.auth()).unwrap()
    }

    #[test]
    fn the_level_follows_every_read_and_write_of_any_client() {
        for style in [Style::Fifo, Style::Pipe] {
            let (server, client) = Server::create(style, 4, None).unwrap();
            let make = other(&server);
            let mut gov = Governor::new(4, 1, &client);
            assert!(gov.watch_fd().is_some(), "{style:?}: no inotify watch");
            let mut events = Vec::new();
            let now = Instant::now();
            gov.wake(&client, true, now, &mut events);
            let a = make.try_acquire().unwrap().unwrap();
            let _b = make.try_acquire().unwrap().unwrap();
            // The watch saw the reads.
            let mut fds = [nix::poll::PollFd::new(
                gov.watch_fd().unwrap(),
                nix::poll::PollFlags::POLLIN,
            )];
            assert_eq!(nix::poll::poll(&mut fds, 0u16).unwrap(), 1, "{style:?}");
            gov.wake(&client, true, now, &mut events);
            make.release(a).unwrap();
            gov.wake(&client, true, now, &mut events);
            assert_eq!(levels(&events), [(1, 0), (3, 0), (2, 0)], "{style:?}");
            let (view, held, expected) = gov.finish(now);
            assert_eq!((view.peak, held.len(), expected), (3, 0, 3));
        }
    }

    #[test]
    fn holding_back_keeps_what_comes_back_and_lets_go_gradually() {
        let (server, client) = Server::create(Style::Fifo, 4, None).unwrap();
        let make = other(&server);
        let mut gov = Governor::new(4, 1, &client);
        let mut events = Vec::new();
        let t0 = Instant::now();
        let a = make.try_acquire().unwrap().unwrap();
        gov.hold(true, t0);
        assert!(gov.wants_tokens() && !gov.may_take());
        gov.wake(&client, true, t0, &mut events);
        // The two free tokens are held; the tree is down to make's token and jsrun's job.
        assert_eq!(make.try_acquire().unwrap(), None);
        make.release(a).unwrap();
        gov.wake(&client, true, t0, &mut events);
        assert_eq!(levels(&events).last(), Some(&(1, 3)));
        gov.hold(false, t0);
        assert_eq!(gov.deadline(), Some(t0));
        gov.wake(&client, true, t0, &mut events);
        assert_eq!(client.available().unwrap(), 1, "one token at once");
        let t1 = t0 + RELEASE_INTERVAL;
        assert_eq!(gov.deadline(), Some(t1));
        gov.wake(&client, true, t1, &mut events);
        gov.wake(&client, true, t1 + RELEASE_INTERVAL, &mut events);
        assert_eq!(client.available().unwrap(), 3);
        assert_eq!(gov.deadline(), None);
        let (view, held, _) = gov.finish(t1 + RELEASE_INTERVAL);
        assert_eq!((view.held_peak, held.len()), (3, 0));
        assert_eq!(view.held_time, 2 * RELEASE_INTERVAL);
    }

    #[test]
    fn resizing_adds_and_retires_tokens() {
        let (server, client) = Server::create(Style::Pipe, 2, None).unwrap();
        let make = other(&server);
        let mut gov = Governor::new(2, 1, &client);
        let mut events = Vec::new();
        let now = Instant::now();
        assert_eq!(gov.resize(true, &client), Some(Event::Resized { slots: 3 }));
        assert_eq!(client.available().unwrap(), 2);
        let a = make.try_acquire().unwrap().unwrap();
        let b = make.try_acquire().unwrap().unwrap();
        // Both tokens are out: the next one back is retired.
        assert_eq!(
            gov.resize(false, &client),
            Some(Event::Resized { slots: 2 })
        );
        assert!(gov.wants_tokens());
        make.release(a).unwrap();
        gov.wake(&client, true, now, &mut events);
        assert_eq!(client.available().unwrap(), 0, "retired");
        make.release(b).unwrap();
        gov.wake(&client, true, now, &mut events);
        assert_eq!(client.available().unwrap(), 1);
        assert!(!gov.wants_tokens());
        assert_eq!(
            gov.resize(false, &client),
            Some(Event::Resized { slots: 1 })
        );
        assert_eq!(gov.resize(false, &client), None, "never below one slot");
        let (_, held, expected) = gov.finish(now);
        assert_eq!(
            (held.len(), expected, client.available().unwrap()),
            (0, 0, 0)
        );
        // All out, one slot fewer, then one more: the token to retire stays and none
        // is written, so the pool never holds more tokens than it has slots for.
        assert_eq!(gov.resize(true, &client), Some(Event::Resized { slots: 2 }));
        let c = make.try_acquire().unwrap().unwrap();
        assert_eq!(
            gov.resize(false, &client),
            Some(Event::Resized { slots: 1 })
        );
        assert_eq!(gov.resize(true, &client), Some(Event::Resized { slots: 2 }));
        assert_eq!(client.available().unwrap(), 0, "no token written");
        make.release(c).unwrap();
        gov.wake(&client, true, now, &mut events);
        assert_eq!(client.available().unwrap(), 1, "nothing retired");
    }

    #[test]
    fn a_token_nobody_read_is_reported_when_it_appears() {
        let (_server, client) = Server::create(Style::Fifo, 2, None).unwrap();
        let mut gov = Governor::new(2, 1, &client);
        let mut events = Vec::new();
        client.release(b'x').unwrap();
        gov.wake(&client, false, Instant::now(), &mut events);
        assert!(
            matches!(events[0], Event::Extra { tokens: 1, .. }),
            "{events:?}"
        );
        client.release(b'y').unwrap();
        gov.wake(&client, false, Instant::now(), &mut events);
        let extras = events.iter().filter(|e| matches!(e, Event::Extra { .. }));
        assert_eq!(extras.count(), 1, "said once");
    }
}
