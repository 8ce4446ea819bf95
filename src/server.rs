//! A jobserver of jsrun's own: a private fifo (or a pipe) holding N-1 tokens.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::Gid;

use crate::client::Client;
use crate::fuse::TokenFile;
use crate::makeflags::{self, Auth};
use crate::sys;

/// The byte jsrun fills its pool with, as make does.
const TOKEN: u8 = b'+';

/// The largest pipe an unprivileged process may ask for when /proc does not say: the
/// kernel's default `fs.pipe-max-size`.
const DEFAULT_PIPE_MAX_SIZE: usize = 1024 * 1024;

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
    /// `--serve`'s fifo, removed when dropped.
    _served: Option<ServedFile>,
    /// `--serve --accounting`'s token file, unmounted and removed when dropped.
    token_file: Option<TokenFile>,
}

impl Server {
    /// Creates a pool for `slots` concurrent jobs: `slots - 1` tokens, since the first job
    /// runs in jsrun's implicit slot. Returns jsrun's own connection to it too.
    ///
    /// `group`: also let this group use the fifo (directory 0710, fifo 0660), e.g. the
    /// build user Portage drops to under FEATURES=userpriv.
    ///
    /// Nothing is left behind on any error: a `slots` no pipe can hold here is refused
    /// before anything is created, and the fifo's directory belongs to a guard that
    /// removes it from the moment it exists.
    pub fn create(style: Style, slots: usize, group: Option<Gid>) -> Result<(Server, Client)> {
        let page = page_size();
        let pipe_max = pipe_max_size();
        let most = max_slots(pipe_max, page);
        if slots > most {
            bail!(
                "-j{slots} is more than a jobserver pipe can hold here (at most {most} slots, \
                 with fs.pipe-max-size at {pipe_max} bytes); use -j{most} or less"
            );
        }
        let tokens = slots.saturating_sub(1);
        let (auth, dir, pipe) = match style {
            Style::Fifo => {
                let dir = FifoDir::create(group)?;
                (Auth::Fifo(dir.fifo.clone()), Some(dir), None)
            }
            Style::Pipe => {
                let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                    .context("cannot create a pipe")?;
                stock(w.as_fd(), tokens, page, pipe_max)?;
                // No child has the pipe yet. The ones that will share these descriptions
                // (make 4.3) expect them to block.
                for fd in [&r, &w] {
                    nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(OFlag::empty()))
                        .context("cannot make the jobserver pipe blocking")?;
                }
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
        if style == Style::Fifo {
            // A fifo has a pipe only while it is open: jsrun's read-write descriptor keeps
            // it, with its size and tokens, for as long as the pool lives.
            stock(client.fd(), tokens, page, pipe_max)?;
        }
        let server = Server {
            slots,
            auth,
            _dir: dir,
            _pipe: pipe,
            _served: None,
            token_file: None,
        };
        Ok((server, client))
    }

    /// `--serve=PATH`: a system jobserver at `path` holding `slots` tokens (the daemon has
    /// no job, so no implicit slot). Refuses anything at `path` that is not a fifo, and a
    /// fifo that a live `jsrun --serve` still serves; replaces a stale fifo. The fifo is
    /// 0600, or 0660 and given to `group`.
    pub fn serve_at(path: &Path, slots: usize, group: Option<Gid>) -> Result<(Server, Client)> {
        let (page, pipe_max) = served_fits(slots)?;
        let show = path.display();
        match nix::sys::stat::lstat(path) {
            Ok(stat) if sys::is_fifo(&stat) => {
                let me = std::process::id();
                let serving = sys::holders((stat.st_dev, stat.st_ino))
                    .into_iter()
                    .find(|h| h.pid != me && is_jsrun_serving(&h.command));
                if let Some(holder) = serving {
                    bail!(
                        "{show} is served by jsrun already (pid {}); stop that one first, or \
                         choose another --serve path",
                        holder.pid
                    );
                }
                crate::say!("jsrun: replacing {show}, a fifo no live jsrun serves");
                std::fs::remove_file(path).with_context(|| format!("cannot remove {show}"))?;
            }
            Ok(_) => {
                bail!("{show} exists and is not a fifo; remove it or choose another --serve path")
            }
            Err(Errno::ENOENT) => {}
            Err(e) => bail!("cannot look at {show}: {e}"),
        }
        nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)
            .with_context(|| format!("cannot create fifo {show}"))?;
        let stat = nix::sys::stat::lstat(path).with_context(|| format!("cannot create {show}"))?;
        // From here on the fifo is removed on every path, an error included.
        let served = ServedFile {
            path: path.to_owned(),
            id: (stat.st_dev, stat.st_ino),
        };
        if let Some(gid) = group {
            nix::unistd::chown(path, None, Some(gid))
                .with_context(|| format!("cannot give {show} to group {gid}"))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                .with_context(|| format!("cannot open {show} to its group"))?;
        }
        let auth = Auth::Fifo(path.to_owned());
        let client = Client::open(&auth).context("cannot open the jobserver jsrun created")?;
        stock(client.fd(), slots, page, pipe_max)?;
        let server = Server {
            slots,
            auth,
            _dir: None,
            _pipe: None,
            _served: Some(served),
            token_file: None,
        };
        Ok((server, client))
    }

    /// `--serve=PATH --accounting`: `slots` tokens handed out through a token file at
    /// `path` (see `fuse` and `account`). The free tokens are kept in a private pipe, so
    /// the returned connection reads and writes them as any pool's.
    pub fn account_at(
        path: &Path,
        slots: usize,
        group: Option<Gid>,
        per_process_limit: Option<usize>,
    ) -> Result<(Server, Client)> {
        let (page, pipe_max) = served_fits(slots)?;
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .context("cannot create a pipe")?;
        let pipe = Auth::Pipe {
            read: r.as_raw_fd(),
            write: w.as_raw_fd(),
        };
        stock(w.as_fd(), slots, page, pipe_max)?;
        // Only jsrun takes and gives back the free tokens of a token file: they are kept
        // in memory, not read from and written to the pipe for every client's token.
        let client = Client::open(&pipe)
            .context("cannot open the pool's pipe")?
            .in_memory();
        let token_file = TokenFile::mount(path, group, per_process_limit)?;
        let server = Server {
            slots,
            auth: Auth::Fifo(path.to_owned()),
            _dir: None,
            _pipe: Some((r, w)),
            _served: None,
            token_file: Some(token_file),
        };
        Ok((server, client))
    }

    /// The token file of an accounting pool.
    pub fn token_file(&self) -> Option<&TokenFile> {
        self.token_file.as_ref()
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

    /// The pool's size as created.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Counts the tokens left in the pool at the end: `Some` when any are missing or
    /// extra. Reads without waiting, so a straggler holding the fifo cannot stall jsrun.
    /// `held`: tokens kept out of the pool by its governor, present all the same; `want`:
    /// the tokens the pool should hold (N-1, or as resized).
    pub fn count_tokens(&self, client: &Client, held: usize, want: usize) -> Option<Mismatch> {
        let found = drain(client.fd()) + client.kept() + held;
        (found != want).then_some(Mismatch { found, want })
    }
}

/// Tokens found at the end that are not what the pool should hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub found: usize,
    pub want: usize,
}

impl Mismatch {
    pub fn missing(&self) -> bool {
        self.found < self.want
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (found, want) = (self.found, self.want);
        let difference = match self.missing() {
            true => format!("{} missing", want - found),
            false => format!("{} extra", found - want),
        };
        write!(
            f,
            "jobserver tokens: {difference} at exit ({found} found, {want} expected); a job \
             may have kept or added tokens"
        )
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

/// Whether a command line is a `jsrun --serve` daemon's.
fn is_jsrun_serving(command: &str) -> bool {
    let mut words = command.split(' ');
    let program = words.next().unwrap_or_default();
    Path::new(program)
        .file_name()
        .is_some_and(|name| name == "jsrun")
        && words.any(|w| w == "--serve" || w.starts_with("--serve="))
}

/// `--serve`'s fifo or token file: removed when the daemon ends, if it is still the one
/// it created.
pub(crate) struct ServedFile {
    pub path: PathBuf,
    pub id: (u64, u64),
}

impl Drop for ServedFile {
    fn drop(&mut self) {
        let ours = nix::sys::stat::lstat(&self.path).is_ok_and(|s| (s.st_dev, s.st_ino) == self.id);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            crate::say!("jsrun: warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Page size and `fs.pipe-max-size`, once a served pool of `slots` tokens (no implicit
/// slot) is known to fit in a pipe.
fn served_fits(slots: usize) -> Result<(usize, usize)> {
    let page = page_size();
    let pipe_max = pipe_max_size();
    let most = max_slots(pipe_max, page) - 1;
    if slots > most {
        bail!(
            "-j{slots} is more than a jobserver pipe can hold here (at most {most} tokens, \
             with fs.pipe-max-size at {pipe_max} bytes); use -j{most} or less"
        );
    }
    Ok((page, pipe_max))
}

/// The most slots a pool in a pipe of `capacity` bytes can serve: the implicit slot, and
/// as many tokens as the pipe holds while every token taken out can always go back.
///
/// The pipe is a ring of page-sized buffers. A one-byte write is added to the last
/// buffer while its page has room, else it needs a free buffer; a buffer is freed only
/// when all of it has been read. A full pipe whose first page a reader has taken one
/// byte from therefore has no room for that byte to come back (EAGAIN, or a blocked
/// make). A write fails only when every buffer is in use and the last page is full,
/// which takes more than `capacity - page` bytes in the pipe; a token comes back when at
/// most `tokens - 1` are in it. Hence `capacity - page + 1` tokens, and one slot more.
fn max_slots(capacity: usize, page: usize) -> usize {
    capacity.saturating_sub(page).saturating_add(2)
}

/// Gives the pipe behind `fd` room for `tokens` (see [`max_slots`]), enlarging it with
/// F_SETPIPE_SZ when its present size is too small.
fn make_room(fd: BorrowedFd<'_>, tokens: usize, page: usize, pipe_max: usize) -> Result<()> {
    let slots = tokens.saturating_add(1);
    let size = nix::fcntl::fcntl(fd, FcntlArg::F_GETPIPE_SZ)
        .context("cannot read the size of the jobserver pipe")?;
    if slots <= max_slots(usize::try_from(size).unwrap_or(0), page) {
        return Ok(());
    }
    let want = tokens.saturating_add(page - 1);
    let enlarged = i32::try_from(want)
        .map_err(|_| Errno::EINVAL)
        .and_then(|want| nix::fcntl::fcntl(fd, FcntlArg::F_SETPIPE_SZ(want)));
    match enlarged {
        Ok(size) if slots <= max_slots(usize::try_from(size).unwrap_or(0), page) => Ok(()),
        Ok(size) => bail!(
            "-j{slots} is more than a jobserver pipe can hold here (the pipe grew to only \
             {size} bytes); use -j{} or less",
            max_slots(usize::try_from(size).unwrap_or(0), page)
        ),
        Err(e) => bail!(
            "cannot enlarge the jobserver pipe to {want} bytes for -j{slots}: {e} (limits: \
             fs.pipe-max-size {pipe_max} bytes a pipe, fs.pipe-user-pages-soft for all of a \
             user's pipes); use -j{} or less",
            max_slots(usize::try_from(size).unwrap_or(0), page)
        ),
    }
}

/// Gives the empty pool behind the non-blocking `fd` room for `tokens`, then puts them in.
fn stock(fd: BorrowedFd<'_>, tokens: usize, page: usize, pipe_max: usize) -> Result<()> {
    make_room(fd, tokens, page, pipe_max)?;
    fill(fd, tokens).context("cannot fill the jobserver")
}

/// Writes `tokens` token bytes into the empty pool behind the non-blocking `fd`, many per
/// `write`. The pipe has room for them all ([`make_room`]): EAGAIN is an error, never a
/// wait.
fn fill(fd: BorrowedFd<'_>, tokens: usize) -> std::io::Result<()> {
    let chunk = [TOKEN; 4096];
    let mut left = tokens;
    while left > 0 {
        match nix::unistd::write(fd, &chunk[..left.min(chunk.len())]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => left -= n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads every byte in the pool behind the non-blocking `fd` without waiting, many per
/// `read`, and returns how many there were.
fn drain(fd: BorrowedFd<'_>) -> usize {
    let mut buf = [0u8; 4096];
    let mut found = 0usize;
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return found,
            Ok(n) => found += n,
            Err(Errno::EINTR) => {}
            Err(_) => return found,
        }
    }
}

/// The size of a memory page (4096 if it cannot be known).
fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|page| page.is_power_of_two())
        .unwrap_or(4096)
}

/// `fs.pipe-max-size`: the largest pipe an unprivileged process may make. jsrun keeps to
/// it for every user, root included, so `-j` means the same everywhere on the machine.
fn pipe_max_size() -> usize {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_PIPE_MAX_SIZE)
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
        assert_eq!(server.count_tokens(&client, 0, server.slots() - 1), None);
        // Drained by the count: every token is now missing.
        assert!(
            server
                .count_tokens(&client, 0, server.slots() - 1)
                .unwrap()
                .to_string()
                .contains("3 missing")
        );
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

    /// The size of a new pipe, which a pool that fits needs not change.
    fn default_pipe_size() -> usize {
        let (r, _w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        nix::fcntl::fcntl(&r, FcntlArg::F_GETPIPE_SZ).unwrap() as usize
    }

    /// Takes a token and gives it back `times` times; the error of the first give-back
    /// that fails.
    fn cycle(read: BorrowedFd<'_>, write: BorrowedFd<'_>, times: usize) -> Result<(), Errno> {
        for _ in 0..times {
            let token = sys::read_byte(read).unwrap().expect("a token");
            nix::unistd::write(write, &[token])?;
        }
        Ok(())
    }

    #[test]
    fn a_pipe_holds_its_size_less_a_page_plus_one_token() {
        assert_eq!(max_slots(65536, 4096), 61442);
        assert_eq!(max_slots(1 << 20, 4096), 1_044_482);
    }

    #[test]
    fn a_full_pool_always_takes_its_tokens_back() {
        let page = page_size();
        let size = default_pipe_size();
        // The kernel behaviour the limit rests on: one token more, and a client that
        // took one from a nearly read first page cannot give it back.
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        fill(w.as_fd(), max_slots(size, page)).unwrap();
        assert_eq!(cycle(r.as_fd(), w.as_fd(), page), Err(Errno::EAGAIN));
        // At the limit, jsrun's pool takes every token back however long it is used.
        for style in [Style::Fifo, Style::Pipe] {
            let slots = max_slots(size, page);
            let (server, client) = Server::create(style, slots, None).unwrap();
            assert_eq!(client.available().unwrap(), slots - 1);
            for _ in 0..2 * page {
                let token = client.try_acquire().unwrap().expect("a token");
                client.release(token).unwrap();
            }
            assert_eq!(server.count_tokens(&client, 0, server.slots() - 1), None);
        }
    }

    #[test]
    fn a_pool_larger_than_a_default_pipe_gets_a_larger_pipe() {
        let slots = max_slots(default_pipe_size(), page_size()) + 1;
        for style in [Style::Fifo, Style::Pipe] {
            let (server, client) = Server::create(style, slots, None).unwrap();
            assert_eq!(client.available().unwrap(), slots - 1);
            let size = nix::fcntl::fcntl(client.fd(), FcntlArg::F_GETPIPE_SZ).unwrap();
            assert!(size as usize > default_pipe_size());
            assert_eq!(server.count_tokens(&client, 0, server.slots() - 1), None);
        }
    }

    #[test]
    fn more_slots_than_the_largest_pipe_holds_are_refused() {
        let most = max_slots(pipe_max_size(), page_size());
        let error = Server::create(Style::Fifo, most + 1, None).err().unwrap();
        let error = format!("{error:#}");
        assert!(error.contains(&format!("at most {most} slots")), "{error}");
        assert!(error.contains(&format!("use -j{most} or less")), "{error}");
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
        let warning = server
            .count_tokens(&client, 0, server.slots() - 1)
            .unwrap()
            .to_string();
        assert!(warning.contains("1 extra"), "{warning}");
    }
}
