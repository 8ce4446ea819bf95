//! Which GNU make a binary is, asked with `make --version` once per binary and
//! remembered in a small per-user file, so that creating a pool does not pay for a
//! process each time (about 1-2 ms).
//!
//! The answer is kept under the binary's identity: device, inode, size, mtime and ctime.
//! A binary replaced at the same path, copied over in place or touched back to its old
//! mtime has another identity (a write always moves the ctime) and is asked again. Only
//! ELF binaries are remembered: a script named make may run whatever make it finds.
//!
//! The file is `$XDG_RUNTIME_DIR/jsrun/make-versions`, else
//! `$XDG_CACHE_HOME/jsrun/make-versions` (`~/.cache`). It is read only when it is a
//! regular file of jsrun's own user that nobody else may write, so no other user can
//! plant an answer; one that is missing, corrupt or cannot be written is no error, the
//! version is asked instead.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// GNU make's version, `(major, minor)`.
pub type Version = (u32, u32);

/// A version and where it came from.
pub struct Answer {
    pub version: Version,
    /// The file it was remembered in, when it came from there.
    pub remembered: Option<PathBuf>,
}

const FILE: &str = "make-versions";
/// The first line of the file; another one (a later format) is not read.
const HEADER: &str = "jsrun make-versions 1";
/// The most binaries remembered; the least recently asked goes first.
const ENTRIES: usize = 16;

/// The version of the GNU make at `path`, `None` when it is no GNU make (or cannot run).
pub fn of(path: &Path) -> Option<Answer> {
    let before = fs::metadata(path).ok().map(|m| Identity::of(&m));
    let file = cache_dir().map(|dir| dir.join(FILE));
    if let (Some(id), Some(file)) = (&before, &file)
        && let Some(version) = read(file).iter().find(|e| e.0 == *id).map(|e| e.1)
    {
        return Some(Answer {
            version,
            remembered: Some(file.clone()),
        });
    }
    let version = ask(path)?;
    // Remembered only when the binary asked is the one stat'ed: not replaced meanwhile.
    if let (Some(id), Some(file)) = (before, file)
        && is_elf(path).is_some_and(|after| after == id)
    {
        store(&file, id, version);
    }
    Some(Answer {
        version,
        remembered: None,
    })
}

/// Runs `make --version`.
fn ask(path: &Path) -> Option<Version> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .env_remove("MAKEFLAGS")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    gnu_make_version(&String::from_utf8_lossy(&out.stdout))
}

/// `(major, minor)` from the first line of `make --version`: "GNU Make 4.3".
fn gnu_make_version(text: &str) -> Option<Version> {
    let rest = text.lines().next()?.strip_prefix("GNU Make ")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// What tells one binary from another at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(m: &fs::Metadata) -> Identity {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    fn line(&self, (major, minor): Version) -> String {
        let Identity {
            dev,
            ino,
            size,
            mtime,
            ctime,
        } = self;
        format!(
            "{dev} {ino} {size} {} {} {} {} {major} {minor}\n",
            mtime.0, mtime.1, ctime.0, ctime.1
        )
    }

    fn parse(line: &str) -> Option<(Identity, Version)> {
        let mut fields = line.split(' ');
        let mut next = || fields.next()?.parse::<i64>().ok();
        let mut unsigned = || u64::try_from(next()?).ok();
        let (dev, ino, size) = (unsigned()?, unsigned()?, unsigned()?);
        let mtime = (next()?, next()?);
        let ctime = (next()?, next()?);
        let major = u32::try_from(next()?).ok()?;
        let minor = u32::try_from(next()?).ok()?;
        if fields.next().is_some() {
            return None;
        }
        let id = Identity {
            dev,
            ino,
            size,
            mtime,
            ctime,
        };
        Some((id, (major, minor)))
    }
}

/// The identity of `path` when it is an ELF binary, from the same open file that its
/// first bytes were read from.
fn is_elf(path: &Path) -> Option<Identity> {
    let mut file = File::open(path).ok()?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).ok()?;
    (magic == *b"\x7fELF").then_some(())?;
    Some(Identity::of(&file.metadata().ok()?))
}

/// jsrun's directory for the file: `$XDG_RUNTIME_DIR/jsrun`, else
/// `$XDG_CACHE_HOME/jsrun` or `$HOME/.cache/jsrun`. Relative paths are ignored, as the
/// XDG base directory specification says.
fn cache_dir() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let base = absolute("XDG_RUNTIME_DIR")
        .or_else(|| absolute("XDG_CACHE_HOME"))
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))?;
    Some(base.join("jsrun"))
}

/// Whether only jsrun's user (or root) can have written what `m` describes.
fn trusted(m: &fs::Metadata) -> bool {
    m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0
}

/// The entries of the file; none when it is missing, not to be trusted or of another
/// format. Lines that cannot be read are skipped.
fn read(file: &Path) -> Vec<(Identity, Version)> {
    let Ok(mut f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(file)
    else {
        return Vec::new();
    };
    match f.metadata() {
        Ok(m) if m.is_file() && trusted(&m) && m.len() < 64 * 1024 => {}
        _ => return Vec::new(),
    }
    let mut text = String::new();
    if f.read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Vec::new();
    }
    lines.filter_map(Identity::parse).collect()
}

/// Puts `id`'s version first in the file, written whole under a temporary name and
/// renamed into place, so that a reader sees the old file or the new one. Any failure
/// leaves the file as it was.
fn store(file: &Path, id: Identity, version: Version) {
    let Some(dir) = file.parent() else { return };
    let _ = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() && trusted(&m) => {}
        _ => return,
    }
    let mut text = format!("{HEADER}\n{}", id.line(version));
    for (other, v) in read(file)
        .into_iter()
        .filter(|e| e.0 != id)
        .take(ENTRIES - 1)
    {
        text.push_str(&other.line(v));
    }
    let Ok(mut tmp) = tempfile::Builder::new()
        .prefix(".make-versions.")
        .tempfile_in(dir)
    else {
        return;
    };
    if tmp.write_all(text.as_bytes()).is_ok() {
        let _ = tmp.persist(file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_versions() {
        let cases = [
            (
                "GNU Make 4.3\nBuilt for x86_64-pc-linux-gnu\n",
                Some((4, 3)),
            ),
            ("GNU Make 4.4.1\n", Some((4, 4))),
            ("GNU Make 3.82\n", Some((3, 82))),
            ("GNU Make 4.4.90\n", Some((4, 4))),
            ("bmake 20240711\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(gnu_make_version(text), want, "{text:?}");
        }
    }

    #[test]
    fn entries_read_back_and_bad_lines_are_skipped() {
        let id = Identity {
            dev: 2049,
            ino: 123,
            size: 250_000,
            mtime: (1_700_000_000, 5),
            ctime: (1_700_000_001, 999_999_999),
        };
        let line = id.line((4, 3));
        assert_eq!(Identity::parse(line.trim_end()), Some((id, (4, 3))));
        for bad in [
            "",
            "1 2 3",
            "1 2 3 4 5 6 7 4 3 9",
            "-1 2 3 4 5 6 7 4 3",
            "1 2 3 4 5 6 7 4 x",
            "1 2 3 4 5 6 7 -4 3",
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad:?}");
        }
    }
}
