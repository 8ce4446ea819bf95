//! A jobserver of jsrun's own: a private fifo (or a pipe) holding N-1 tokens.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::Gid;

use crate::client::Client;
use crate::makeflags::{self, Auth};
use crate::sys;

/// The byte jsrun fills its pool with, as make does.
const TOKEN: u8 = b'+';

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Style {
    /// A named pipe in a private directory (make >= 4.4, ninja, Portage, cargo).
    Fifo,
    /// An inherited anonymous pipe (make <= 4.3).
    Pipe,
}

pub struct Server {
    slots: usize,
    auth: Auth,
    /// The private directory holding the fifo; both removed when dropped.
    _dir: Option<FifoDir>,
    /// Both ends of the pipe, inheritable, open until jsrun exits.
    _pipe: Option<(OwnedFd, OwnedFd)>,
}

impl Server {
    /// Creates a pool for `slots` concurrent jobs: `slots - 1` tokens, since the first job
    /// runs in jsrun's implicit slot. Returns jsrun's own connection to it too.
    ///
    /// `group`: also let this group use the fifo (directory 0710, fifo 0660), e.g. the
    /// build user Portage drops to under FEATURES=userpriv.
    ///
    /// Nothing is left behind on any error: the fifo's directory belongs to a guard that
    /// removes it from the moment it exists.
    pub fn create(style: Style, slots: usize, group: Option<Gid>) -> Result<(Server, Client)> {
        let (auth, dir, pipe) = match style {
            Style::Fifo => {
                let dir = FifoDir::create(group)?;
                (Auth::Fifo(dir.fifo.clone()), Some(dir), None)
            }
            Style::Pipe => {
                let (r, w) =
                    nix::unistd::pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
                // Every child gets the pipe at these numbers: jsrun cannot tell which of
                // its children are jobserver clients.
                sys::set_inheritable(r.as_fd())?;
                sys::set_inheritable(w.as_fd())?;
                let auth = Auth::Pipe {
                    read: r.as_raw_fd(),
                    write: w.as_raw_fd(),
                };
                (auth, None, Some((r, w)))
            }
        };
        let client = Client::open(&auth).context("cannot open the jobserver jsrun created")?;
        for _ in 1..slots {
            client.release(TOKEN).context("cannot fill the jobserver")?;
        }
        let server = Server {
            slots,
            auth,
            _dir: dir,
            _pipe: pipe,
        };
        Ok((server, client))
    }

    /// The words children find in MAKEFLAGS: `-jN` and the jobserver, both spellings for a
    /// pipe since make < 4.2 only knows `--jobserver-fds`.
    pub fn makeflags_words(&self) -> String {
        let n = self.slots;
        match &self.auth {
            Auth::Fifo(path) => {
                let path = makeflags::escape(&path.to_string_lossy());
                format!("-j{n} --jobserver-auth=fifo:{path}")
            }
            auth => format!("-j{n} --jobserver-fds={auth} --jobserver-auth={auth}"),
        }
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Counts the tokens left in the pool at the end: `Some(message)` when any are missing
    /// or extra. Reads without waiting, so a straggler holding the fifo cannot stall jsrun.
    pub fn count_tokens(&self, client: &Client) -> Option<String> {
        let mut found = 0usize;
        while let Ok(Some(_)) = client.try_acquire() {
            found += 1;
        }
        let want = self.slots - 1;
        let difference = match found.cmp(&want) {
            std::cmp::Ordering::Equal => return None,
            std::cmp::Ordering::Less => format!("{} missing", want - found),
            std::cmp::Ordering::Greater => format!("{} extra", found - want),
        };
        Some(format!(
            "jobserver tokens: {difference} at exit ({found} found, {want} expected); \
             a job may have kept or added tokens"
        ))
    }
}

/// The private directory of a fifo server. It owns the directory from the moment the
/// directory exists: dropping it removes the fifo and the directory, the two entries it
/// knows, without listing the directory.
struct FifoDir {
    dir: PathBuf,
    fifo: PathBuf,
}

impl FifoDir {
    /// A fresh 0700 directory made atomically with a random name, so nobody can pre-create
    /// or swap the path; the fifo inside is 0600.
    fn create(group: Option<Gid>) -> Result<FifoDir> {
        let dir = tempfile::Builder::new()
            .prefix("jsrun.")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(temp_base())
            .context("cannot create a directory for the jobserver fifo")?
            .keep();
        let guard = FifoDir {
            fifo: dir.join("fifo"),
            dir,
        };
        nix::unistd::mkfifo(&guard.fifo, Mode::S_IRUSR | Mode::S_IWUSR)
            .with_context(|| format!("cannot create fifo {}", guard.fifo.display()))?;
        if let Some(gid) = group {
            share_with_group(&guard.dir, &guard.fifo, gid)?;
        }
        Ok(guard)
    }
}

impl Drop for FifoDir {
    fn drop(&mut self) {
        // The fifo is absent when mkfifo failed: no warning for it.
        let _ = std::fs::remove_file(&self.fifo);
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            crate::say!("jsrun: warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Hands directory and fifo to `gid`, then opens them to it: the group first, so the
/// wider modes never apply to the wrong group.
fn share_with_group(dir: &Path, fifo: &Path, gid: Gid) -> Result<()> {
    for (path, mode) in [(dir, 0o710), (fifo, 0o660)] {
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot open {} to its group", path.display()))?;
    }
    Ok(())
}

/// `TMPDIR` when it is absolute and blank-free, else `/tmp`: ninja and the jobserver crate
/// split MAKEFLAGS on plain blanks and would truncate such a fifo path.
fn temp_base() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|dir| {
            dir.is_absolute()
                && !dir
                    .to_string_lossy()
                    .contains(|c: char| c.is_whitespace() || c == '\\')
        })
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Exports `server` to every child: MAKEFLAGS rewritten, and stale jobserver words in
/// MFLAGS and CARGO_MAKEFLAGS replaced too (the jobserver crate reads the first of
/// CARGO_MAKEFLAGS, MAKEFLAGS, MFLAGS that is set, even when it names no jobserver).
pub fn export_env(words: &str) -> Vec<(&'static str, String)> {
    let old = |name| std::env::var(name).ok();
    let mut vars = vec![(
        "MAKEFLAGS",
        makeflags::rewrite(&old("MAKEFLAGS").unwrap_or_default(), words),
    )];
    // MFLAGS is written by make with a dash on its first word and no blank before it.
    if let Some(value) = old("MFLAGS") {
        let rewritten = makeflags::rewrite(&value, words);
        vars.push(("MFLAGS", rewritten.trim_start().to_owned()));
    }
    if let Some(value) = old("CARGO_MAKEFLAGS") {
        vars.push(("CARGO_MAKEFLAGS", makeflags::rewrite(&value, words)));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[test]
    fn a_fifo_server_holds_n_minus_one_tokens_in_a_private_directory() {
        let (server, client) = Server::create(Style::Fifo, 4, None).unwrap();
        let Auth::Fifo(path) = server.auth().clone() else {
            panic!("not a fifo: {}", server.auth())
        };
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_fifo());
        assert_eq!(meta.mode() & 0o777, 0o600);
        let dir = path.parent().unwrap();
        assert_eq!(std::fs::metadata(dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(client.available().unwrap(), 3);
        assert_eq!(
            server.makeflags_words(),
            format!("-j4 --jobserver-auth=fifo:{}", path.display())
        );
        assert_eq!(server.count_tokens(&client), None);
        // Drained by the count: every token is now missing.
        assert!(server.count_tokens(&client).unwrap().contains("3 missing"));
        drop(server);
        assert!(!path.exists() && !dir.exists());
    }

    #[test]
    fn a_group_can_be_given_the_fifo() {
        let gid = nix::unistd::getegid();
        let (server, _client) = Server::create(Style::Fifo, 2, Some(gid)).unwrap();
        let Auth::Fifo(path) = server.auth().clone() else {
            panic!("not a fifo")
        };
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, gid.as_raw()));
        let dir = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dir.mode() & 0o777, 0o710);
    }

    #[test]
    fn a_pipe_server_exports_both_spellings() {
        let (server, client) = Server::create(Style::Pipe, 2, None).unwrap();
        let Auth::Pipe { read, write } = *server.auth() else {
            panic!("not a pipe")
        };
        assert_eq!(
            server.makeflags_words(),
            format!("-j2 --jobserver-fds={read},{write} --jobserver-auth={read},{write}")
        );
        client.release(b'+').unwrap();
        let warning = server.count_tokens(&client).unwrap();
        assert!(warning.contains("1 extra"), "{warning}");
    }
}
