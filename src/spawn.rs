//! Starting jobs with `posix_spawn` (glibc: one `clone(CLONE_VM|CLONE_VFORK)` and the
//! `exec`, no copy of jsrun's memory), with the signal state a child expects.
//!
//! jsrun keeps SIGCHLD, SIGINT, SIGTERM and SIGHUP blocked (they arrive on a signalfd) and
//! the Rust runtime ignores SIGPIPE; both a blocked mask and an ignored disposition
//! survive `exec`, so every child gets an empty mask and SIGPIPE back at its default.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

pub struct Spawner {
    attr: PosixSpawnAttr,
    /// The environment, captured once: it does not change while jobs run.
    env: Vec<CString>,
    /// Jobs read /dev/null instead of jsrun's stdin.
    dev_null: Option<OwnedFd>,
    /// The file actions of a job whose output is not captured, built once: glibc asks
    /// for the fd limit each time an action is added.
    plain: PosixSpawnFileActions,
}

impl Spawner {
    /// Jobs get jsrun's environment with `vars` set (the pool's MAKEFLAGS and friends).
    pub fn new(stdin_null: bool, vars: &[(&str, String)]) -> io::Result<Spawner> {
        let mut attr = PosixSpawnAttr::init()?;
        attr.set_sigmask(&SigSet::empty())?;
        let mut defaults = SigSet::empty();
        defaults.add(Signal::SIGPIPE);
        attr.set_sigdefault(&defaults)?;
        attr.set_flags(
            PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
        )?;
        let inherited = std::env::vars_os()
            .filter(|(k, _)| vars.iter().all(|(name, _)| k != name))
            .map(|(k, v)| (k.into_encoded_bytes(), v.into_encoded_bytes()));
        let set = vars
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()));
        let env = inherited
            .chain(set)
            .filter_map(|(mut entry, value)| {
                entry.push(b'=');
                entry.extend_from_slice(&value);
                CString::new(entry).ok()
            })
            .collect();
        let dev_null = match stdin_null {
            true => Some(crate::sys::open(Path::new("/dev/null"), OFlag::O_RDONLY)?),
            false => None,
        };
        let plain = file_actions(dev_null.as_ref(), None)?;
        Ok(Spawner {
            attr,
            env,
            dev_null,
            plain,
        })
    }

    /// Starts `program` with `argv` (whose first word is shown as the process name), with
    /// its stdout and stderr on `output` when given.
    pub fn spawn(
        &self,
        program: &Path,
        argv: &[impl AsRef<OsStr>],
        output: Option<[&OwnedFd; 2]>,
    ) -> io::Result<Pid> {
        let argv = argv
            .iter()
            .map(|a| CString::new(a.as_ref().as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an argument contains a NUL byte",
                )
            })?;
        let captured;
        let actions = match output {
            Some(_) => {
                captured = file_actions(self.dev_null.as_ref(), output)?;
                &captured
            }
            None => &self.plain,
        };
        Ok(nix::spawn::posix_spawn(
            program, actions, &self.attr, &argv, &self.env,
        )?)
    }
}

/// dup2 clears close-on-exec on the new descriptor; the originals, all close-on-exec,
/// vanish at exec.
fn file_actions(
    stdin: Option<&OwnedFd>,
    output: Option<[&OwnedFd; 2]>,
) -> io::Result<PosixSpawnFileActions> {
    let mut actions = PosixSpawnFileActions::init()?;
    if let Some(fd) = stdin {
        actions.add_dup2(fd.as_raw_fd(), 0)?;
    }
    if let Some([out, err]) = output {
        actions.add_dup2(out.as_raw_fd(), 1)?;
        actions.add_dup2(err.as_raw_fd(), 2)?;
    }
    Ok(actions)
}
