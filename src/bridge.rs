//! The bridge: fifo-only clients (upstream ninja, samurai, Portage) under a pipe pool
//! (make <= 4.3, cargo, the jobserver crate) or the token file of an accounting pool
//! (which upstream ninja refuses: not a fifo). jsrun gives its children a private fifo that
//! draws its tokens from the outer pool and returns them to it.
//!
//! The fifo holds at most one idle token of the outer pool: when it is empty, jsrun moves
//! one outer token in; when children give back more than one, jsrun moves the extras out
//! again. So the tree stays within the outer N, and while nobody needs a token at most one
//! is parked. Every token jsrun moved in goes back to the outer pipe at the end, also the
//! ones a killed child never gave back, and on any error (Drop).

use std::cell::{Cell, RefCell};
use std::os::fd::BorrowedFd;

use anyhow::{Context, Result};
use nix::sys::inotify::Inotify;

use crate::client::Client;
use crate::govern;
use crate::makeflags::{self, Auth};
use crate::server::{Server, Style};

/// The byte jsrun puts into the inner fifo.
const TOKEN: u8 = b'+';

pub struct Bridge {
    /// The inner fifo, in a private directory removed with it.
    inner_server: Server,
    inner: Client,
    /// jsrun's own descriptions of the outer pipe, for the bridge alone.
    outer: Client,
    watch: Option<Inotify>,
    /// The outer tokens moved in, to give back as they were.
    borrowed: RefCell<Vec<u8>>,
    /// The inner fifo is empty and no outer token was free: poll the outer pipe.
    wants_outer: Cell<bool>,
    advertised: Option<usize>,
}

impl Bridge {
    /// A bridge from the pipe `outer` names (with `-jN` advertised beside it).
    pub fn new(
        outer: &Auth,
        advertised: Option<usize>,
        group: Option<nix::unistd::Gid>,
    ) -> Result<Bridge> {
        let outer =
            Client::open(outer).context("cannot open the outer jobserver for the bridge")?;
        // One slot: the fifo starts without tokens.
        let (inner_server, inner) = Server::create(Style::Fifo, 1, group)
            .context("cannot create the fifo of the bridge")?;
        let watch = govern::watch(&inner).ok();
        Ok(Bridge {
            inner_server,
            inner,
            outer,
            watch,
            borrowed: RefCell::new(Vec::new()),
            wants_outer: Cell::new(false),
            advertised,
        })
    }

    /// The MAKEFLAGS words children get: the outer pool's -jN and the inner fifo.
    pub fn makeflags_words(&self) -> String {
        let Auth::Fifo(path) = self.inner_server.auth() else {
            return String::new();
        };
        let path = makeflags::escape(&path.to_string_lossy());
        match self.advertised {
            Some(n) => format!("-j{n} --jobserver-auth=fifo:{path}"),
            None => format!("--jobserver-auth=fifo:{path}"),
        }
    }

    pub fn inner_auth(&self) -> &Auth {
        self.inner_server.auth()
    }

    /// Readable after any read or write of the inner fifo.
    pub fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        self.watch.as_ref().map(std::os::fd::AsFd::as_fd)
    }

    /// The outer pipe's read end, while the bridge waits for a token from it.
    pub fn outer_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wants_outer.get().then(|| self.outer.fd())
    }

    /// Moves tokens so that the inner fifo holds one idle token when one is to be had,
    /// and never more than one that came from outside.
    pub fn balance(&self) {
        if let Some(watch) = &self.watch {
            govern::drain_events(watch);
        }
        let mut borrowed = self.borrowed.borrow_mut();
        let mut level = self.inner.available().unwrap_or(0);
        while level > 1 && !borrowed.is_empty() {
            match self.inner.try_acquire() {
                Ok(Some(_)) => {
                    if let Some(token) = borrowed.pop()
                        && self.outer.release(token).is_err()
                    {
                        borrowed.push(token);
                        break;
                    }
                    level -= 1;
                }
                _ => break,
            }
        }
        self.wants_outer.set(false);
        if level == 0 {
            match self.outer.try_acquire() {
                Ok(Some(token)) => {
                    if self.inner.release(TOKEN).is_ok() {
                        borrowed.push(token);
                    } else {
                        let _ = self.outer.release(token);
                    }
                }
                Ok(None) => self.wants_outer.set(true),
                Err(_) => {}
            }
        }
    }
}

impl Drop for Bridge {
    /// Every outer token moved in goes back, whether the inner fifo still holds it or a
    /// child took it and is gone: the inner fifo ends here, and with it every token in it.
    fn drop(&mut self) {
        for token in self.borrowed.get_mut().drain(..) {
            if let Err(e) = self.outer.release(token) {
                crate::say!("jsrun: warning: cannot give a token back to the jobserver: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn one_idle_token_moves_in_and_extras_go_back_out() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        nix::unistd::write(&w, b"abc").unwrap();
        let auth = Auth::Pipe {
            read: r.as_raw_fd(),
            write: w.as_raw_fd(),
        };
        let outer = Client::open(&auth).unwrap();
        let bridge = Bridge::new(&auth, Some(4), None).unwrap();
        let child = Client::open(bridge.inner_auth()).unwrap();
        bridge.balance();
        assert_eq!(
            (outer.available().unwrap(), child.available().unwrap()),
            (2, 1)
        );
        // A child takes the idle token: another moves in.
        let t1 = child.try_acquire().unwrap().unwrap();
        bridge.balance();
        let t2 = child.try_acquire().unwrap().unwrap();
        bridge.balance();
        assert_eq!(
            (outer.available().unwrap(), child.available().unwrap()),
            (0, 1)
        );
        // Both come back: one stays idle, the other goes out.
        child.release(t1).unwrap();
        child.release(t2).unwrap();
        bridge.balance();
        assert_eq!(
            (outer.available().unwrap(), child.available().unwrap()),
            (2, 1)
        );
        // A child keeps a token and vanishes: at the end the outer pool is whole all the
        // same, with its own bytes.
        let _kept = child.try_acquire().unwrap().unwrap();
        drop(bridge);
        let mut back = [0u8; 4];
        assert_eq!(nix::unistd::read(&r, &mut back).unwrap(), 3);
        let mut got = back[..3].to_vec();
        got.sort_unstable();
        assert_eq!(got, b"abc");
    }
}
