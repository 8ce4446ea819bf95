//! The token file of an accounting pool: one regular file served through FUSE on
//! `/dev/fuse`, spoken by hand.
//!
//! Only what a token file needs: INIT, GETATTR, SETATTR (answered with the same
//! attributes), STATFS, OPEN, READ, WRITE, POLL (with its wake-up notification), INTERRUPT,
//! FLUSH (ENOSYS: none is wanted), RELEASE, GETXATTR (the pool's state for `--info`),
//! DESTROY; every other opcode gets ENOSYS, FORGET none. Requests are parsed from little-endian bytes with safe code.
//! A READ that must wait is answered later by its `unique` id, from the same poll loop as
//! everything else: no thread.
//!
//! Mounting: as root with mount(2) (`rootmode=100000`, a file as the root of the mount);
//! otherwise through `fusermount3`, which mounts and passes the `/dev/fuse` descriptor
//! back over a socket. [`TokenFile`] unmounts and removes the file when dropped, however
//! the daemon ends.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::Gid;

use crate::server::ServedFile;
use crate::sys;

/// The FUSE protocol version spoken here (7.31: everything a token file needs).
const MAJOR: u32 = 7;
const MINOR: u32 = 31;

/// `struct fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid, extlen, padding.
const IN_HEADER: usize = 40;
/// `struct fuse_out_header`: len, error, unique.
const OUT_HEADER: usize = 16;

pub const FOPEN_DIRECT_IO: u32 = 1;
pub const FOPEN_NONSEEKABLE: u32 = 4;
/// No FLUSH at every close(2) of the file (Linux 5.16): make marks its jobserver
/// descriptors close-on-exec, so every recipe it starts would close two of them on the way
/// into its exec, each close a round trip to the daemon.
pub const FOPEN_NOFLUSH: u32 = 32;
const FUSE_POLL_SCHEDULE_NOTIFY: u32 = 1;
const FUSE_NOTIFY_POLL: i32 = 1;
/// The name of the extended attribute that describes the pool (free tokens, holders).
pub const POOL_XATTR: &str = "user.jsrun.pool";

/// A request from the kernel.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub unique: u64,
    /// The thread that made the request (the kernel's pid, a thread id).
    pub pid: u32,
    pub op: Op,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Init {
        minor: u32,
        max_readahead: u32,
    },
    GetAttr,
    SetAttr,
    StatFs,
    Open,
    /// `size` 0 takes nothing.
    Read {
        fh: u64,
        size: u32,
        nonblocking: bool,
    },
    Write {
        fh: u64,
        data: Vec<u8>,
    },
    Poll {
        fh: u64,
        kh: u64,
        notify: bool,
        events: u32,
    },
    Interrupt {
        unique: u64,
    },
    Flush,
    Release {
        fh: u64,
    },
    GetXattr {
        name: Vec<u8>,
        size: u32,
    },
    Destroy,
    /// FORGET and BATCH_FORGET: no answer at all.
    Forget,
    Other(u32),
    /// A known opcode whose body is cut short: answered EINVAL, so nobody waits on it.
    Malformed,
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

impl Request {
    /// Parses one request as read from `/dev/fuse` (one read, one request). `None` only
    /// when not even the header is there.
    pub fn parse(buf: &[u8]) -> Option<Request> {
        let len = u32_at(buf, 0)? as usize;
        let buf = buf.get(..len.min(buf.len()))?;
        let opcode = u32_at(buf, 4)?;
        let unique = u64_at(buf, 8)?;
        let pid = u32_at(buf, 32)?;
        let op = Request::body(opcode, buf).unwrap_or(Op::Malformed);
        Some(Request { unique, pid, op })
    }

    /// The operation of `opcode` from the request in `buf`, header included.
    fn body(opcode: u32, buf: &[u8]) -> Option<Op> {
        let body = IN_HEADER;
        Some(match opcode {
            26 => Op::Init {
                minor: u32_at(buf, body + 4)?,
                max_readahead: u32_at(buf, body + 8)?,
            },
            3 => Op::GetAttr,
            4 => Op::SetAttr,
            17 => Op::StatFs,
            14 => Op::Open,
            15 => Op::Read {
                fh: u64_at(buf, body)?,
                size: u32_at(buf, body + 16)?,
                nonblocking: u32_at(buf, body + 32)? & OFlag::O_NONBLOCK.bits() as u32 != 0,
            },
            16 => {
                let size = u32_at(buf, body + 16)? as usize;
                Op::Write {
                    fh: u64_at(buf, body)?,
                    data: buf.get(body + 40..body + 40 + size)?.to_vec(),
                }
            }
            40 => Op::Poll {
                fh: u64_at(buf, body)?,
                kh: u64_at(buf, body + 8)?,
                notify: u32_at(buf, body + 16)? & FUSE_POLL_SCHEDULE_NOTIFY != 0,
                events: u32_at(buf, body + 20)?,
            },
            36 => Op::Interrupt {
                unique: u64_at(buf, body)?,
            },
            25 => Op::Flush,
            18 => Op::Release {
                fh: u64_at(buf, body)?,
            },
            22 => {
                let name = buf.get(body + 8..)?;
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                Op::GetXattr {
                    name: name[..end].to_vec(),
                    size: u32_at(buf, body)?,
                }
            }
            38 => Op::Destroy,
            2 | 42 => Op::Forget,
            other => Op::Other(other),
        })
    }
}

/// A reply to request `unique`: `error` (a positive errno) or `body`.
pub fn reply(unique: u64, result: Result<&[u8], Errno>) -> Vec<u8> {
    let (error, body) = match result {
        Ok(body) => (0, body),
        Err(e) => (-(e as i32), &[][..]),
    };
    let mut out = Vec::with_capacity(OUT_HEADER + body.len());
    out.extend_from_slice(&((OUT_HEADER + body.len()) as u32).to_le_bytes());
    out.extend_from_slice(&error.to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The notification that wakes the pollers of poll handle `kh`; the kernel then asks
/// POLL again.
pub fn poll_wakeup(kh: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(OUT_HEADER + 8);
    out.extend_from_slice(&((OUT_HEADER + 8) as u32).to_le_bytes());
    out.extend_from_slice(&FUSE_NOTIFY_POLL.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&kh.to_le_bytes());
    out
}

/// `struct fuse_init_out` (64 bytes): our version, no optional features, writes of one
/// page at most (tokens are single bytes).
pub fn init_out(kernel_minor: u32, max_readahead: u32) -> Vec<u8> {
    let mut out = vec![0u8; 64];
    out[0..4].copy_from_slice(&MAJOR.to_le_bytes());
    out[4..8].copy_from_slice(&MINOR.min(kernel_minor).to_le_bytes());
    out[8..12].copy_from_slice(&max_readahead.to_le_bytes());
    // flags: none. max_background, congestion_threshold: the kernel's defaults.
    out[20..24].copy_from_slice(&4096u32.to_le_bytes());
    // time_gran: 1 ns.
    out[24..28].copy_from_slice(&1u32.to_le_bytes());
    out
}

/// `struct fuse_attr_out` for the token file: a regular file of size 0 with `mode`,
/// owned by `uid`/`gid`; the kernel may keep it for a day (it never changes).
pub fn attr_out(mode: u32, uid: u32, gid: u32) -> Vec<u8> {
    let mut out = vec![0u8; 104];
    out[0..8].copy_from_slice(&86_400u64.to_le_bytes());
    let attr = 16;
    out[attr..attr + 8].copy_from_slice(&1u64.to_le_bytes()); // ino
    out[attr + 60..attr + 64].copy_from_slice(&(0o100_000 | mode).to_le_bytes());
    out[attr + 64..attr + 68].copy_from_slice(&1u32.to_le_bytes()); // nlink
    out[attr + 68..attr + 72].copy_from_slice(&uid.to_le_bytes());
    out[attr + 72..attr + 76].copy_from_slice(&gid.to_le_bytes());
    out[attr + 80..attr + 84].copy_from_slice(&4096u32.to_le_bytes()); // blksize
    out
}

/// `struct fuse_statfs_out`: an empty file system of 4 KiB blocks (statfs(2) on the
/// token file tells clients it is on FUSE).
pub fn statfs_out() -> Vec<u8> {
    let mut out = vec![0u8; 80];
    out[40..44].copy_from_slice(&4096u32.to_le_bytes()); // bsize
    out[44..48].copy_from_slice(&255u32.to_le_bytes()); // namelen
    out[48..52].copy_from_slice(&4096u32.to_le_bytes()); // frsize
    out
}

/// `struct fuse_open_out`: handle `fh`; no page cache, no offsets, no FLUSH.
pub fn open_out(fh: u64) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    out[0..8].copy_from_slice(&fh.to_le_bytes());
    let flags = FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE | FOPEN_NOFLUSH;
    out[8..12].copy_from_slice(&flags.to_le_bytes());
    out
}

/// `struct fuse_write_out`: `size` bytes taken.
pub fn write_out(size: u32) -> Vec<u8> {
    let mut out = vec![0u8; 8];
    out[0..4].copy_from_slice(&size.to_le_bytes());
    out
}

/// `struct fuse_poll_out` (also `fuse_getxattr_out`): one u32 and padding.
pub fn u32_out(value: u32) -> Vec<u8> {
    write_out(value)
}

/// How the file was mounted, hence how it is unmounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mounter {
    Root,
    Fusermount,
}

/// The token file: the mount at PATH and the `/dev/fuse` descriptor that serves it.
/// Dropping it unmounts (lazily: holders may still have it open) and removes the file.
pub struct TokenFile {
    /// Closed before the file is removed: closing ends the connection, and any request
    /// still open fails (ENOTCONN).
    fd: OwnedFd,
    /// The regular file under the mount, removed at the end.
    file: ServedFile,
    mounter: Mounter,
    /// Permission bits, owner and group the file shows.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `--per-process-limit`.
    pub per_process_limit: Option<usize>,
}

/// Why FUSE cannot be used here, with the advice the contract asks for.
fn no_fuse(why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "--accounting needs FUSE, which cannot be used here: {why}; plain --serve (a fifo, \
         without --accounting) works without it"
    )
}

impl TokenFile {
    /// Mounts a token file at `path`: 0600, or 0660 and owned by `group`. Refuses anything
    /// at `path` but a stale token file (the mount of a daemon that died), which is
    /// replaced. Answers the kernel's INIT before it returns, so that the mount is known
    /// to work.
    pub fn mount(path: &Path, group: Option<Gid>, limit: Option<usize>) -> Result<TokenFile> {
        let show = path.display();
        clear_stale(path)?;
        let created = nix::fcntl::open(
            path,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .with_context(|| format!("cannot create {show}"))?;
        let stat = nix::sys::stat::fstat(&created)?;
        drop(created);
        // From here on the file is removed on every path.
        let guard = ServedFile {
            path: path.to_owned(),
            id: (stat.st_dev, stat.st_ino),
        };
        let uid = nix::unistd::geteuid().as_raw();
        let gid = group.unwrap_or_else(nix::unistd::getegid).as_raw();
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        let (fd, mounter) = if nix::unistd::geteuid().is_root() {
            (mount_as_root(path, uid, gid)?, Mounter::Root)
        } else {
            (
                mount_through_fusermount(path, group.is_some())?,
                Mounter::Fusermount,
            )
        };
        let file = TokenFile {
            fd,
            file: guard,
            mounter,
            mode,
            uid,
            gid,
            per_process_limit: limit,
        };
        file.init()?;
        nix::fcntl::fcntl(
            &file.fd,
            nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK | OFlag::O_RDWR),
        )
        .context("cannot make /dev/fuse non-blocking")?;
        Ok(file)
    }

    /// Waits for the kernel's INIT (the first request of every mount) and answers it.
    fn init(&self) -> Result<()> {
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = match nix::unistd::read(&self.fd, &mut buf) {
                Ok(n) => n,
                Err(Errno::EINTR | Errno::ENOENT) => continue,
                Err(e) => return Err(no_fuse(format!("no INIT from the kernel: {e}"))),
            };
            match Request::parse(&buf[..n]) {
                Some(Request {
                    unique,
                    op:
                        Op::Init {
                            minor,
                            max_readahead,
                        },
                    ..
                }) => {
                    let out = init_out(minor, max_readahead);
                    self.send(&reply(unique, Ok(&out)));
                    return Ok(());
                }
                Some(Request { op: Op::Forget, .. }) => {}
                Some(Request { unique, .. }) => {
                    self.send(&reply(unique, Err(Errno::EIO)));
                }
                None => bail!("a malformed first request from /dev/fuse"),
            }
        }
    }

    /// The `/dev/fuse` descriptor: readable when a request waits.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The next request, if one waits. `Err` when the connection is gone (ENODEV:
    /// unmounted from outside).
    pub fn next(&self, buf: &mut [u8]) -> io::Result<Option<Request>> {
        loop {
            return match nix::unistd::read(&self.fd, buf) {
                Ok(n) => Ok(Request::parse(&buf[..n])),
                // ENOENT: a request that was interrupted before it was read.
                Err(Errno::EINTR | Errno::ENOENT) => continue,
                Err(Errno::EAGAIN) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
    }

    /// Writes one reply or notification; whether the kernel took it. ENOENT (the request
    /// is gone: its caller was interrupted or killed, or a poller left) is no error of
    /// ours, but a token in that reply reached nobody.
    pub fn send(&self, message: &[u8]) -> bool {
        loop {
            match nix::unistd::write(&self.fd, message) {
                Err(Errno::EINTR) => {}
                done => return done.is_ok(),
            }
        }
    }
}

/// Large enough for any request the kernel may send (it refuses smaller buffers).
pub const BUFFER: usize = 64 * 1024 + 4096;

impl Drop for TokenFile {
    /// Unmounts; then the fields go: the connection, then the file under the mount.
    fn drop(&mut self) {
        let path = &self.file.path;
        match self.mounter {
            Mounter::Root => {
                if let Err(e) = sys::unmount_lazily(path) {
                    crate::say!("jsrun: warning: cannot unmount {}: {e}", path.display());
                }
            }
            Mounter::Fusermount => {
                let done = std::process::Command::new("fusermount3")
                    .args(["-u", "-z", "--"])
                    .arg(path)
                    .stdin(std::process::Stdio::null())
                    .status();
                if !done.is_ok_and(|s| s.success()) {
                    crate::say!(
                        "jsrun: warning: fusermount3 -u could not unmount {}",
                        path.display()
                    );
                }
            }
        }
    }
}

/// Makes way for a new token file at `path`: nothing there is fine; a stale mount (its
/// daemon died: every access fails with ENOTCONN) is unmounted and the empty file under
/// it removed; a live one, or anything else, is refused.
fn clear_stale(path: &Path) -> Result<()> {
    let show = path.display();
    // The kernel may answer lstat from its cache even for a dead mount; statfs always
    // asks the daemon.
    let stale = match nix::sys::stat::lstat(path) {
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ENOTCONN) => true,
        Err(e) => bail!("cannot look at {show}: {e}"),
        Ok(stat) => match nix::sys::statfs::statfs(path) {
            Err(Errno::ENOTCONN) => true,
            Ok(fs)
                if fs.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC
                    && sys::is_regular(&stat) =>
            {
                bail!(
                    "{show} is a token file served already (by a live jsrun --accounting); \
                     stop that one first, or choose another --serve path"
                )
            }
            _ => false,
        },
    };
    if !stale {
        bail!("{show} exists; remove it or choose another --serve path");
    }
    crate::say!("jsrun: replacing {show}, a token file whose jsrun has ended");
    sys::unmount_lazily(path).with_context(|| format!("cannot unmount {show}"))?;
    match nix::sys::stat::lstat(path) {
        Ok(stat) if sys::is_regular(&stat) && stat.st_size == 0 => {
            std::fs::remove_file(path).with_context(|| format!("cannot remove {show}"))
        }
        Err(Errno::ENOENT) => Ok(()),
        _ => bail!("{show} exists; remove it or choose another --serve path"),
    }
}

/// mount(2) of a FUSE file system whose root is the regular file at `path`.
fn mount_as_root(path: &Path, uid: u32, gid: u32) -> Result<OwnedFd> {
    let fd = nix::fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| no_fuse(format!("cannot open /dev/fuse: {e}")))?;
    let options = format!(
        "fd={},rootmode=100000,user_id={uid},group_id={gid},allow_other,default_permissions",
        fd.as_raw_fd()
    );
    sys::mount_fuse(path, &options).map_err(|e| no_fuse(format!("mount refused: {e}")))?;
    // A FUSE character device, not something bind-mounted over /dev/fuse.
    Ok(fd)
}

/// `fusermount3` mounts for a user without root and passes the `/dev/fuse` descriptor
/// back over a socket (`_FUSE_COMMFD`).
fn mount_through_fusermount(path: &Path, shared: bool) -> Result<OwnedFd> {
    let program = which::which("fusermount3")
        .map_err(|_| no_fuse("fusermount3 is not installed (Debian: the fuse3 package)"))?;
    let (ours, theirs) = sys::socket_pair().context("cannot create a socket for fusermount3")?;
    let mut options = String::from("default_permissions,fsname=jsrun,subtype=jsrun");
    if shared {
        options.push_str(",allow_other");
    }
    let output = sys::with_inheritable(theirs.as_fd(), || {
        std::process::Command::new(&program)
            .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
            .args(["-o", &options, "--"])
            .arg(path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
    })
    .map_err(|e| no_fuse(format!("cannot run fusermount3: {e}")))?;
    drop(theirs);
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let said = said.lines().next().unwrap_or("it failed").trim().to_owned();
        return Err(no_fuse(format!("fusermount3 refused the mount: {said}")));
    }
    sys::receive_fd(ours.as_fd())
        .map_err(|e| no_fuse(format!("fusermount3 passed no /dev/fuse descriptor: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: u32, unique: u64, pid: u32, body: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; IN_HEADER];
        buf[0..4].copy_from_slice(&((IN_HEADER + body.len()) as u32).to_le_bytes());
        buf[4..8].copy_from_slice(&opcode.to_le_bytes());
        buf[8..16].copy_from_slice(&unique.to_le_bytes());
        buf[32..36].copy_from_slice(&pid.to_le_bytes());
        buf.extend_from_slice(body);
        buf
    }

    #[test]
    fn requests_are_parsed_from_their_little_endian_structs() {
        let mut read = vec![0u8; 40];
        read[0..8].copy_from_slice(&7u64.to_le_bytes());
        read[16..20].copy_from_slice(&1u32.to_le_bytes());
        read[32..36].copy_from_slice(&(OFlag::O_NONBLOCK.bits() as u32).to_le_bytes());
        let mut write = vec![0u8; 40];
        write[0..8].copy_from_slice(&9u64.to_le_bytes());
        write[16..20].copy_from_slice(&2u32.to_le_bytes());
        write.extend_from_slice(b"++");
        let mut poll = vec![0u8; 24];
        poll[0..8].copy_from_slice(&3u64.to_le_bytes());
        poll[8..16].copy_from_slice(&11u64.to_le_bytes());
        poll[16..20].copy_from_slice(&1u32.to_le_bytes());
        poll[20..24].copy_from_slice(&1u32.to_le_bytes());
        let mut xattr = vec![0u8; 8];
        xattr.extend_from_slice(b"user.jsrun.pool\0");
        let cases = [
            (
                header(15, 5, 42, &read),
                Op::Read {
                    fh: 7,
                    size: 1,
                    nonblocking: true,
                },
            ),
            (
                header(16, 5, 42, &write),
                Op::Write {
                    fh: 9,
                    data: b"++".to_vec(),
                },
            ),
            (
                header(40, 5, 42, &poll),
                Op::Poll {
                    fh: 3,
                    kh: 11,
                    notify: true,
                    events: 1,
                },
            ),
            (
                header(36, 5, 42, &77u64.to_le_bytes()),
                Op::Interrupt { unique: 77 },
            ),
            (
                header(22, 5, 42, &xattr),
                Op::GetXattr {
                    name: b"user.jsrun.pool".to_vec(),
                    size: 0,
                },
            ),
            (header(42, 5, 42, &[0u8; 8]), Op::Forget),
            (header(1, 5, 42, b"x\0"), Op::Other(1)),
        ];
        for (buf, op) in cases {
            assert_eq!(
                Request::parse(&buf),
                Some(Request {
                    unique: 5,
                    pid: 42,
                    op
                })
            );
        }
        // Cut short: answered as malformed (nobody waits for ever), no panic.
        let buf = header(16, 5, 42, &write);
        assert_eq!(Request::parse(&buf[..50]).unwrap().op, Op::Malformed);
        assert_eq!(Request::parse(&buf[..20]), None);
    }

    #[test]
    fn replies_carry_their_length_error_and_id() {
        let out = reply(9, Err(Errno::EAGAIN));
        assert_eq!(out.len(), 16);
        assert_eq!(i32::from_le_bytes(out[4..8].try_into().unwrap()), -11);
        let out = reply(9, Ok(b"+"));
        assert_eq!(u32::from_le_bytes(out[0..4].try_into().unwrap()), 17);
        assert_eq!(u64::from_le_bytes(out[8..16].try_into().unwrap()), 9);
        // Opened without page cache, offsets or FLUSH at every close.
        let open = open_out(3);
        let flags = u32::from_le_bytes(open[8..12].try_into().unwrap());
        assert_eq!(flags, FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE | FOPEN_NOFLUSH);
        let attr = attr_out(0o660, 0, 5);
        assert_eq!(
            u32::from_le_bytes(attr[76..80].try_into().unwrap()),
            0o100_660
        );
    }
}
