//! The readings a governed pool limits on: the load average, the memory available and the
//! memory pressure, and whether a [`Limits`] is exceeded now.
//!
//! No loop, no printing: [`Probe::check`] reads what the set limits need and answers with a
//! [`Verdict`]; the caller decides what to do and what to say.
//!
//! Where the figures come from:
//! - `/proc/loadavg` (the 1-minute figure), `/proc/meminfo` (`MemAvailable`, kB) and
//!   `/proc/pressure/memory` (PSI, the `some avg10` percentage), or the same three files under
//!   the directory named by `JSRUN_PROC_DIR`, which also turns cgroups off ([`Probe::from_env`]);
//! - the memory cgroups of this process, from its own up to the root of the mount: the memory
//!   available is the least of `MemAvailable` and every limit − usage (cgroup v2 `memory.max`
//!   and `memory.current`, cgroup v1 `memory.limit_in_bytes` and `memory.usage_in_bytes`), and
//!   the pressure is the larger of the system's and the own v2 cgroup's `memory.pressure`
//!   ([`Cgroups::find`]).
//!
//! Reading is cheap enough for a few times a second: each file is read with one `read` into a
//! buffer the probe keeps, and nothing is allocated per check. The kernel's files are opened
//! once and read again at offset 0 (`pread`), which makes the kernel produce them afresh; a
//! descriptor that fails is dropped and the file opened again next time. The files of
//! `JSRUN_PROC_DIR` are opened by their path at each check instead, so that a file replaced by
//! a new one (a test writing another `loadavg`) is seen (std opens paths shorter than 384
//! bytes from a stack buffer, without allocating).

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;

/// The environment variable that points the probe at another directory in `/proc`'s format.
pub const PROC_DIR_VAR: &str = "JSRUN_PROC_DIR";

/// Enough for every file read here: `/proc/meminfo` is about 1.5 KiB and `MemAvailable` is its
/// third line; the others are one or two lines.
const BUF_SIZE: usize = 4096;

/// A cgroup memory limit at or above this means no limit: cgroup v1 shows
/// 9223372036854771712 (`LONG_MAX` rounded down to a page), v2 writes `max`.
const NO_LIMIT: u64 = 1 << 62;

/// The limits of a governed pool; `None` = not set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// Hold back while the 1-minute load average is >= this.
    pub load: Option<f64>,
    /// Hold back while the memory available (bytes) is < this.
    pub min_memory_avail: Option<u64>,
    /// Hold back while the memory pressure (`some avg10`, percent) is >= this.
    pub max_memory_pressure: Option<f64>,
}

impl Limits {
    /// Whether any limit is set (only then is there anything to look at).
    pub fn is_set(&self) -> bool {
        self.load.is_some() || self.min_memory_avail.is_some() || self.max_memory_pressure.is_some()
    }
}

/// One of the three limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Load,
    MemoryAvail,
    MemoryPressure,
}

impl Limit {
    /// The option that sets it.
    pub fn option(self) -> &'static str {
        match self {
            Limit::Load => "--load-average",
            Limit::MemoryAvail => "--min-memory-avail",
            Limit::MemoryPressure => "--max-memory-pressure",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The figures now; `None` where one could not be read (for the tests: jsrun itself asks
/// [`Probe::check`]).
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Readings {
    /// The 1-minute load average.
    pub load: Option<f64>,
    /// Bytes: the least of `MemAvailable` and limit − usage of every limited memory cgroup.
    pub memory_available: Option<u64>,
    /// Percent of the last 10 s in which some task stalled on memory (PSI `some avg10`): the
    /// larger of the system's and the own cgroup's.
    pub memory_pressure: Option<f64>,
}

/// A limit exceeded, with the figures; shown as e.g. `memory available 812 MiB < 1 GiB`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Exceeded {
    Load { now: f64, limit: f64 },
    Memory { available: u64, min: u64 },
    Pressure { now: f64, limit: f64 },
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exceeded::Load { now, limit } => write!(f, "load average {now} >= {limit}"),
            Exceeded::Memory { available, min } => {
                write!(f, "memory available {} < {}", Size(available), Size(min))
            }
            Exceeded::Pressure { now, limit } => write!(f, "memory pressure {now}% >= {limit}%"),
        }
    }
}

/// Why a figure is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The file could not be opened or read.
    Os(Errno),
    /// The file was read but holds no such figure.
    NoFigure(&'static str),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Os(errno) => f.write_str(errno.desc()),
            Cause::NoFigure(what) => f.write_str(what),
        }
    }
}

/// A limit that is set but whose figure cannot be had, e.g. no PSI on this machine: answered
/// once per limit; it never holds anything back. Shown as a warning without the `jsrun:
/// warning: ` prefix, e.g. `no memory pressure figures (PSI) on this machine
/// (/proc/pressure/memory: No such file or directory): --max-memory-pressure ignored`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub limit: Limit,
    /// The file that was looked at.
    pub path: PathBuf,
    pub cause: Cause,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, cause, option) = (self.path.display(), self.cause, self.limit.option());
        match self.limit {
            Limit::Load => write!(
                f,
                "cannot read the load average ({path}: {cause}): {option} ignored"
            ),
            Limit::MemoryAvail => write!(
                f,
                "cannot read the memory available ({path}: {cause}) and no cgroup limits \
                 memory: {option} ignored"
            ),
            Limit::MemoryPressure => write!(
                f,
                "no memory pressure figures (PSI) on this machine ({path}: {cause}): {option} \
                 ignored"
            ),
        }
    }
}

/// What [`Probe::check`] says.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub enum Verdict {
    /// No limit is exceeded (or none is set, or none could be read).
    Go,
    /// This limit is exceeded now (the first of memory, pressure, load that is).
    Hold { reason: Exceeded },
    /// A limit is set but cannot be read: said once per limit, the first time. Warn about it
    /// and check again at once; that limit never holds anything back while it cannot be read:
    ///
    /// ```ignore
    /// let verdict = loop {
    ///     match probe.check(&limits) {
    ///         Verdict::Unavailable(u) => say!("jsrun: warning: {u}"),
    ///         verdict => break verdict,
    ///     }
    /// };
    /// ```
    Unavailable(Unavailable),
}

/// The memory cgroups of a process, found once: the files read at each check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cgroups {
    /// Own cgroup first, then each ancestor up to the root of its mount; only directories that
    /// exist and have a limit file.
    levels: Vec<Level>,
    /// `memory.pressure` of the own v2 cgroup (of its nearest existing ancestor if the own
    /// directory is gone).
    pressure: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Level {
    limit: PathBuf,
    usage: PathBuf,
}

impl Cgroups {
    /// No cgroup at all.
    pub fn none() -> Cgroups {
        Cgroups::default()
    }

    /// The memory cgroups of the process whose `/proc/PID/cgroup` is `self_cgroup`, mounted as
    /// `mountinfo` says, under the filesystem root `root` (`/proc/self/cgroup`,
    /// `/proc/self/mountinfo` and `/` for jsrun itself).
    ///
    /// cgroup v2: the `0::/PATH` line and the `cgroup2` mount; cgroup v1: the line whose
    /// controllers include `memory` and the `cgroup` mount whose super options do. Both are
    /// used when both are there (a hybrid layout). The mount's own root is taken off the path
    /// (a container sees only its part of the tree); a path outside it, or with `..` (a
    /// cgroup outside this cgroup namespace), is not followed. Unreadable files: no cgroups.
    pub fn find(self_cgroup: &Path, mountinfo: &Path, root: &Path) -> Cgroups {
        let mut found = Cgroups::default();
        let Ok(own) = std::fs::read(self_cgroup) else {
            return found;
        };
        let mounts = std::fs::read(mountinfo).unwrap_or_default();
        let mut v1 = None;
        let mut v2 = None;
        for line in own.split(|&b| b == b'\n') {
            let mut fields = line.splitn(3, |&b| b == b':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if id == b"0" && controllers.is_empty() {
                v2 = Some(path);
            } else if controllers.split(|&b| b == b',').any(|c| c == b"memory") {
                v1 = Some(path);
            }
        }
        if let Some(path) = v1
            && let Some((dir, top)) = locate(&mounts, path, root, |fstype, options| {
                fstype == b"cgroup" && options.split(|&b| b == b',').any(|o| o == b"memory")
            })
        {
            found.walk(&dir, &top, "memory.limit_in_bytes", "memory.usage_in_bytes");
        }
        if let Some(path) = v2
            && let Some((dir, top)) = locate(&mounts, path, root, |fstype, _| fstype == b"cgroup2")
        {
            found.walk(&dir, &top, "memory.max", "memory.current");
            found.pressure = dir
                .ancestors()
                .take_while(|d| d.starts_with(&top))
                .find(|d| d.is_dir())
                .map(|d| d.join("memory.pressure"))
                .filter(|p| p.exists());
        }
        found
    }

    /// Adds `dir` and each existing ancestor up to `top` that has a `limit` file.
    fn walk(&mut self, dir: &Path, top: &Path, limit: &str, usage: &str) {
        for level in dir.ancestors().take_while(|d| d.starts_with(top)) {
            let limit = level.join(limit);
            if limit.exists() {
                let usage = level.join(usage);
                self.levels.push(Level { limit, usage });
            }
        }
    }

    /// The cgroup directories whose memory limits are read, own first.
    #[cfg(test)]
    pub fn memory_dirs(&self) -> impl Iterator<Item = &Path> {
        self.levels.iter().filter_map(|l| l.limit.parent())
    }

    /// The cgroup `memory.pressure` file that is read, if any.
    #[cfg(test)]
    pub fn pressure_file(&self) -> Option<&Path> {
        self.pressure.as_deref()
    }
}

/// The directory of cgroup `path` and the top of its mount, from the first mount in
/// `mountinfo` that `wanted(fstype, super_options)` and whose root holds `path`.
fn locate(
    mountinfo: &[u8],
    path: &[u8],
    root: &Path,
    wanted: impl Fn(&[u8], &[u8]) -> bool,
) -> Option<(PathBuf, PathBuf)> {
    if Path::new(OsStr::from_bytes(path))
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return None;
    }
    for line in mountinfo.split(|&b| b == b'\n') {
        // ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS
        let Some(dash) = line.windows(3).position(|w| w == b" - ") else {
            continue;
        };
        let mut left = line[..dash].split(|&b| b == b' ').skip(3);
        let mut right = line[dash + 3..].split(|&b| b == b' ');
        let (Some(mount_root), Some(mount_point)) = (left.next(), left.next()) else {
            continue;
        };
        let (Some(fstype), Some(_source), Some(options)) =
            (right.next(), right.next(), right.next())
        else {
            continue;
        };
        if !wanted(fstype, options) {
            continue;
        }
        let mount_root = unescape(mount_root);
        let relative = if mount_root == b"/" {
            path
        } else {
            match path.strip_prefix(mount_root.as_slice()) {
                Some(rest) if rest.is_empty() || rest.starts_with(b"/") => rest,
                _ => continue,
            }
        };
        let top = root.join(trim_slashes(&unescape(mount_point)));
        let dir = top.join(trim_slashes(relative));
        return Some((dir, top));
    }
    None
}

/// `bytes` as a relative path.
fn trim_slashes(bytes: &[u8]) -> &Path {
    let start = bytes.iter().position(|&b| b != b'/').unwrap_or(bytes.len());
    Path::new(OsStr::from_bytes(&bytes[start..]))
}

/// Undoes mountinfo's octal escapes (`\040` for a blank, `\134` for a backslash).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(digits) = field.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Reads the figures, from a `/proc`-like directory and a process's [`Cgroups`].
#[derive(Debug)]
pub struct Probe {
    loadavg: Source,
    meminfo: Source,
    pressure: Source,
    /// Per cgroup level: its limit and its usage file.
    levels: Vec<(Source, Source)>,
    cgroup_pressure: Option<Source>,
    #[cfg(test)]
    cgroups: Cgroups,
    /// Keep descriptors open between checks (the kernel's files) or open by path each time.
    keep_open: bool,
    buf: Vec<u8>,
    notes: Notes,
    /// The memory figures the last check read: available bytes, pressure percent.
    last_memory: (Option<u64>, Option<f64>),
}

impl Probe {
    /// jsrun's probe: the directory in `JSRUN_PROC_DIR` without cgroups when it is set (and
    /// not empty), else [`Probe::system`].
    pub fn from_env() -> Probe {
        Probe::from_proc_dir_var(std::env::var_os(PROC_DIR_VAR).as_deref())
    }

    /// [`Probe::from_env`] with the variable's value given.
    pub fn from_proc_dir_var(value: Option<&OsStr>) -> Probe {
        match value {
            Some(dir) if !dir.is_empty() => Probe::new(Path::new(dir), Cgroups::none()),
            _ => Probe::system(),
        }
    }

    /// `/proc` and the cgroups of this process, descriptors kept open.
    pub fn system() -> Probe {
        let proc = Path::new("/proc");
        let cgroups = Cgroups::find(
            &proc.join("self/cgroup"),
            &proc.join("self/mountinfo"),
            Path::new("/"),
        );
        Probe::new(proc, cgroups).keep_files_open()
    }

    /// `proc_dir/loadavg`, `proc_dir/meminfo`, `proc_dir/pressure/memory`, and `cgroups`,
    /// each file opened by its path at each check. (The tests keep `cgroups` to look at.)
    #[cfg_attr(not(test), allow(clippy::needless_pass_by_value))]
    pub fn new(proc_dir: &Path, cgroups: Cgroups) -> Probe {
        let levels = cgroups
            .levels
            .iter()
            .map(|l| (Source::new(&l.limit), Source::new(&l.usage)))
            .collect();
        Probe {
            loadavg: Source::new(&proc_dir.join("loadavg")),
            meminfo: Source::new(&proc_dir.join("meminfo")),
            pressure: Source::new(&proc_dir.join("pressure/memory")),
            levels,
            cgroup_pressure: cgroups.pressure.as_deref().map(Source::new),
            #[cfg(test)]
            cgroups,
            keep_open: false,
            buf: vec![0; BUF_SIZE],
            notes: Notes::default(),
            last_memory: (None, None),
        }
    }

    /// The files that count the OOM killer's kills (an `oom_kill N` line): `vmstat` beside
    /// `meminfo`, and each memory cgroup's `memory.oom_control` (v1) or `memory.events` (v2).
    pub fn oom_counters(&self) -> Vec<PathBuf> {
        let vmstat = self.meminfo.path.with_file_name("vmstat");
        let cgroups = self.levels.iter().filter_map(|(limit, _)| {
            let dir = limit.path.parent()?;
            Some(match limit.path.file_name()? == "memory.limit_in_bytes" {
                true => dir.join("memory.oom_control"),
                false => dir.join("memory.events"),
            })
        });
        std::iter::once(vmstat).chain(cgroups).collect()
    }

    /// The cgroup v1 memory cgroups with a limit, and the limit (bytes), read now: where
    /// the kernel can say when usage crosses a mark (`cgroup.event_control`).
    pub fn v1_limits(&self) -> Vec<(PathBuf, u64)> {
        self.levels
            .iter()
            .filter(|(limit, _)| {
                limit.path.file_name() == Some(OsStr::new("memory.limit_in_bytes"))
            })
            .filter_map(|(limit, _)| {
                let text = std::fs::read(&limit.path).ok()?;
                let bytes = parse_cgroup_limit(&text)??;
                Some((limit.path.parent()?.to_owned(), bytes))
            })
            .collect()
    }

    /// Keeps each file open once read, and reads it again at offset 0: for the kernel's
    /// files, which are produced afresh by each read from the start and never replaced.
    pub fn keep_files_open(mut self) -> Probe {
        self.keep_open = true;
        self
    }

    /// The cgroups it reads.
    #[cfg(test)]
    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    /// All three figures now.
    #[cfg(test)]
    pub fn readings(&mut self) -> Readings {
        Readings {
            load: self.load(),
            memory_available: self.memory_available(),
            memory_pressure: self.memory_pressure(),
        }
    }

    /// Whether a limit is exceeded now, reading only what the set limits need. A limit that
    /// cannot be read is answered [`Verdict::Unavailable`] once; it holds nothing back while it
    /// cannot be read, and counts again if its figure comes back.
    pub fn check(&mut self, limits: &Limits) -> Verdict {
        let memory = limits
            .min_memory_avail
            .map(|min| (min, self.memory_available()));
        let pressure = limits
            .max_memory_pressure
            .map(|limit| (limit, self.memory_pressure()));
        let load = limits.load.map(|limit| (limit, self.load()));
        self.last_memory = (memory.and_then(|m| m.1), pressure.and_then(|p| p.1));
        let unread = [
            (Limit::MemoryAvail, matches!(memory, Some((_, None)))),
            (Limit::MemoryPressure, matches!(pressure, Some((_, None)))),
            (Limit::Load, matches!(load, Some((_, None)))),
        ];
        for (limit, unread) in unread {
            if unread && let Some(unavailable) = self.notes.take(limit) {
                return Verdict::Unavailable(unavailable);
            }
        }
        let reason = if let Some((min, Some(available))) = memory
            && available < min
        {
            Exceeded::Memory { available, min }
        } else if let Some((limit, Some(now))) = pressure
            && now >= limit
        {
            Exceeded::Pressure { now, limit }
        } else if let Some((limit, Some(now))) = load
            && now >= limit
        {
            Exceeded::Load { now, limit }
        } else {
            return Verdict::Go;
        };
        Verdict::Hold { reason }
    }

    /// The memory available (bytes) and pressure (percent) the last check read, where it
    /// read them.
    pub fn last_memory(&self) -> (Option<u64>, Option<f64>) {
        self.last_memory
    }

    fn load(&mut self) -> Option<f64> {
        let read = self.loadavg.read(
            self.keep_open,
            &mut self.buf,
            parse_loadavg,
            "no load figure",
        );
        match read {
            Ok(load) => Some(load),
            Err(failure) => {
                self.notes.note(Limit::Load, &self.loadavg, failure);
                None
            }
        }
    }

    fn memory_available(&mut self) -> Option<u64> {
        let read = self.meminfo.read(
            self.keep_open,
            &mut self.buf,
            parse_meminfo,
            "no MemAvailable line",
        );
        let mut least = match read {
            Ok(bytes) => Some(bytes),
            Err(failure) => {
                self.notes.note(Limit::MemoryAvail, &self.meminfo, failure);
                None
            }
        };
        for (limit, usage) in &mut self.levels {
            let Ok(Some(limit)) = limit.read(self.keep_open, &mut self.buf, parse_cgroup_limit, "")
            else {
                continue;
            };
            let Ok(usage) = usage.read(self.keep_open, &mut self.buf, parse_u64, "") else {
                continue;
            };
            let room = limit.saturating_sub(usage);
            least = Some(least.map_or(room, |l| l.min(room)));
        }
        least
    }

    fn memory_pressure(&mut self) -> Option<f64> {
        let no_figure = "no 'some avg10=' line";
        let read = self
            .pressure
            .read(self.keep_open, &mut self.buf, parse_psi, no_figure);
        let system = match read {
            Ok(pct) => Some(pct),
            Err(failure) => {
                self.notes
                    .note(Limit::MemoryPressure, &self.pressure, failure);
                None
            }
        };
        let cgroup = self.cgroup_pressure.as_mut().and_then(|s| {
            s.read(self.keep_open, &mut self.buf, parse_psi, no_figure)
                .ok()
        });
        match (system, cgroup) {
            (Some(s), Some(c)) => Some(s.max(c)),
            (s, c) => s.or(c),
        }
    }
}

/// Per [`Limit`], why it cannot be read: kept until said, said once.
#[derive(Debug, Default)]
struct Notes {
    /// The first reason found, not said yet.
    pending: [Option<Unavailable>; 3],
    said: [bool; 3],
}

impl Notes {
    /// Keeps the first reason why `limit` cannot be read, unless said already.
    fn note(&mut self, limit: Limit, source: &Source, failure: Failure) {
        let i = limit.index();
        if let Failure::Missing(cause) = failure
            && !self.said[i]
            && self.pending[i].is_none()
        {
            let path = source.path.clone();
            self.pending[i] = Some(Unavailable { limit, path, cause });
        }
    }

    /// The reason to say about `limit`, once.
    fn take(&mut self, limit: Limit) -> Option<Unavailable> {
        let i = limit.index();
        let unavailable = self.pending[i].take()?;
        self.said[i] = true;
        Some(unavailable)
    }
}

/// Why a file gave no figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Not there or without the figure: worth one warning.
    Missing(Cause),
    /// Out of descriptors or memory, or an empty file (being rewritten): just not this time.
    Busy,
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32));
        match errno {
            Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::EAGAIN | Errno::ENOBUFS => {
                Failure::Busy
            }
            _ => Failure::Missing(Cause::Os(errno)),
        }
    }
}

/// A file read at each check.
#[derive(Debug)]
struct Source {
    path: PathBuf,
    /// Kept between checks in keep-open mode.
    file: Option<File>,
}

impl Source {
    fn new(path: &Path) -> Source {
        Source {
            path: path.to_owned(),
            file: None,
        }
    }

    /// The figure `parse` finds in the file, read with one `read` into `buf`. In keep-open
    /// mode the descriptor is kept only when it gave a figure.
    fn read<T>(
        &mut self,
        keep_open: bool,
        buf: &mut [u8],
        parse: fn(&[u8]) -> Option<T>,
        no_figure: &'static str,
    ) -> Result<T, Failure> {
        let file = match self.file.take() {
            Some(file) => file,
            None => File::open(&self.path)?,
        };
        let n = loop {
            match file.read_at(buf, 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let text = buf.get(..n).unwrap_or_default();
        if text.iter().all(u8::is_ascii_whitespace) {
            return Err(Failure::Busy);
        }
        let figure = parse(text).ok_or(Failure::Missing(Cause::NoFigure(no_figure)))?;
        if keep_open {
            self.file = Some(file);
        }
        Ok(figure)
    }
}

/// The first number of `/proc/loadavg`: `0.52 0.58 0.59 1/467 12345`.
fn parse_loadavg(text: &[u8]) -> Option<f64> {
    let first = text
        .split(u8::is_ascii_whitespace)
        .find(|w| !w.is_empty())?;
    parse_f64(first)
}

/// `MemAvailable:   24082220 kB` in `/proc/meminfo`, as bytes.
fn parse_meminfo(text: &[u8]) -> Option<u64> {
    let line = text
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"MemAvailable:"))?;
    let mut words = line
        .split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty());
    let kib = parse_u64(words.next()?)?;
    match words.next() {
        Some(b"kB") | None => Some(kib.saturating_mul(1024)),
        Some(_) => None,
    }
}

/// `avg10` of the `some` line of a PSI file:
/// `some avg10=12.34 avg60=5.00 avg300=1.00 total=123456`.
fn parse_psi(text: &[u8]) -> Option<f64> {
    let line = text
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"some "))?;
    let value = line
        .split(u8::is_ascii_whitespace)
        .find_map(|w| w.strip_prefix(b"avg10="))?;
    parse_f64(value)
}

/// A cgroup memory limit: `Some(None)` for no limit (`max`, or v1's huge value).
fn parse_cgroup_limit(text: &[u8]) -> Option<Option<u64>> {
    if text.trim_ascii() == b"max" {
        return Some(None);
    }
    let limit = parse_u64(text)?;
    Some((limit < NO_LIMIT).then_some(limit))
}

fn parse_u64(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text.trim_ascii()).ok()?.parse().ok()
}

fn parse_f64(text: &[u8]) -> Option<f64> {
    let value: f64 = std::str::from_utf8(text.trim_ascii()).ok()?.parse().ok()?;
    value.is_finite().then_some(value)
}

/// A size in bytes: a whole number of bytes, or a number (`1.5` too) with `K`, `M`, `G` or
/// `T` (also `KiB`... `TiB`, any case; powers of 1024). Fractions of a byte are dropped.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let examples = "e.g. 512M, 4G, 1.5G or 1073741824";
    let invalid = || {
        format!(
            "invalid size '{text}': use bytes or a number with K, M, G or T (or KiB, MiB, GiB, \
             TiB; powers of 1024), {examples}"
        )
    };
    let too_large =
        || format!("invalid size '{text}': too large, the most is 16 EiB - 1 byte; use {examples}");
    let s = text.trim();
    if s.starts_with('-') {
        return Err(format!(
            "invalid size '{text}': a size cannot be negative; use {examples}"
        ));
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(invalid()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    if number.contains('.') && shift == 0 {
        return Err(format!(
            "invalid size '{text}': a fraction of a byte; use whole bytes or a unit, e.g. 1.5K"
        ));
    }
    let unit = 1u128 << shift;
    let whole: u128 = match whole {
        "" => 0,
        digits => digits.parse().map_err(|_| too_large())?,
    };
    // Digits beyond the 24th cannot change a whole byte with units up to 2^40.
    let fraction = fraction.get(..24).unwrap_or(fraction);
    let part = match fraction {
        "" => 0,
        digits => {
            let value: u128 = digits.parse().map_err(|_| invalid())?;
            let scale = 10u128.pow(u32::try_from(digits.len()).map_err(|_| invalid())?);
            value * unit / scale
        }
    };
    let total = whole
        .checked_mul(unit)
        .and_then(|w| w.checked_add(part))
        .ok_or_else(too_large)?;
    u64::try_from(total).map_err(|_| too_large())
}

/// A percentage above 0 and at most 100: `10`, `10%`, `2.5`.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let s = text.trim();
    let s = s.strip_suffix('%').unwrap_or(s).trim_end();
    let plain = s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().filter(|&b| b == b'.').count() <= 1;
    match s.parse::<f64>() {
        Ok(pct) if plain && pct > 0.0 && pct <= 100.0 => Ok(pct),
        _ => Err(format!(
            "invalid percentage '{text}': use a number above 0 and at most 100, e.g. 10, 10% \
             or 2.5"
        )),
    }
}

/// Bytes in binary units, e.g. `812 MiB`, `1.5 GiB`, `100 B`: one decimal at most, cut off
/// rather than rounded (never more than there is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut i = 0;
        while i + 1 < UNITS.len() && self.0 >> (10 * (i + 1)) > 0 {
            i += 1;
        }
        let tenths = (u128::from(self.0) * 10) >> (10 * i);
        match (tenths / 10, tenths % 10) {
            (whole, 0) => write!(f, "{whole} {}", UNITS[i]),
            (whole, tenth) => write!(f, "{whole}.{tenth} {}", UNITS[i]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    /// A fake filesystem root in a temporary directory.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            Tree {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn file(&self, rel: &str, text: &str) -> &Tree {
            let path = self.path(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            self
        }

        fn remove(&self, rel: &str) {
            std::fs::remove_file(self.path(rel)).unwrap();
        }

        /// `proc/loadavg`, `proc/meminfo` with MemAvailable (kB) and `proc/pressure/memory`.
        fn proc(&self, load: f64, mem_available_kb: u64, some_avg10: f64) -> &Tree {
            self.file("proc/loadavg", &format!("{load:.2} 1.00 0.50 2/345 6789\n"));
            self.file(
                "proc/meminfo",
                &format!(
                    "MemTotal:       32768000 kB\nMemFree:         1000000 kB\n\
                     MemAvailable:   {mem_available_kb:>8} kB\nBuffers:           12345 kB\n"
                ),
            );
            self.file("proc/pressure/memory", &psi(some_avg10))
        }

        /// A cgroup v2 layout: `/sys/fs/cgroup`, the process in `path`.
        fn v2(&self, path: &str) -> &Tree {
            self.file("proc/self/cgroup", &format!("0::{path}\n"));
            self.file(
                "proc/self/mountinfo",
                "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                 30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - \
                 cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
            )
        }

        /// A limit and a usage for cgroup directory `dir` (v2 file names).
        fn v2_level(&self, dir: &str, max: &str, current: u64) -> &Tree {
            self.file(&format!("{dir}/memory.max"), &format!("{max}\n"));
            self.file(&format!("{dir}/memory.current"), &format!("{current}\n"))
        }

        /// A limit and a usage for cgroup directory `dir` (v1 file names).
        fn v1_level(&self, dir: &str, limit: u64, usage: u64) -> &Tree {
            self.file(
                &format!("{dir}/memory.limit_in_bytes"),
                &format!("{limit}\n"),
            );
            self.file(
                &format!("{dir}/memory.usage_in_bytes"),
                &format!("{usage}\n"),
            )
        }

        fn cgroups(&self) -> Cgroups {
            Cgroups::find(
                &self.path("proc/self/cgroup"),
                &self.path("proc/self/mountinfo"),
                self.dir.path(),
            )
        }

        fn probe(&self) -> Probe {
            Probe::new(&self.path("proc"), self.cgroups())
        }

        /// The memory cgroup directories, relative to the root.
        fn memory_dirs(&self) -> Vec<String> {
            self.cgroups()
                .memory_dirs()
                .map(|d| {
                    let rel = d.strip_prefix(self.dir.path()).unwrap();
                    rel.to_str().unwrap().to_owned()
                })
                .collect()
        }
    }

    fn psi(some_avg10: f64) -> String {
        format!(
            "some avg10={some_avg10:.2} avg60=1.00 avg300=0.50 total=123456\n\
             full avg10=0.50 avg60=0.25 avg300=0.10 total=6789\n"
        )
    }

    /// The v1 value for "no limit" on x86-64 (LONG_MAX rounded down to 4 KiB).
    const V1_NO_LIMIT: u64 = 9223372036854771712;

    const HYBRID_MOUNTS: &str = "\
        22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
        31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
        40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

    #[test]
    fn v2_nested_limits_the_least_wins() {
        let t = Tree::new();
        t.proc(0.5, 8 * 1024 * 1024, 0.0)
            .v2("/user.slice/build.scope")
            .v2_level(
                "sys/fs/cgroup/user.slice/build.scope",
                "2147483648",
                GIB + GIB / 2,
            )
            .v2_level("sys/fs/cgroup/user.slice", "1073741824", 864 * MIB)
            .file("sys/fs/cgroup/memory.pressure", &psi(0.0));
        assert_eq!(
            t.memory_dirs(),
            [
                "sys/fs/cgroup/user.slice/build.scope",
                "sys/fs/cgroup/user.slice"
            ]
        );
        let mut probe = t.probe();
        // Own: 2 GiB - 1.5 GiB = 512 MiB; parent: 1 GiB - 864 MiB = 160 MiB.
        assert_eq!(probe.readings().memory_available, Some(160 * MIB));
        // Read anew each time: now the own cgroup is the tighter one.
        t.v2_level(
            "sys/fs/cgroup/user.slice/build.scope",
            "2147483648",
            2 * GIB - 100 * MIB,
        );
        assert_eq!(probe.readings().memory_available, Some(100 * MIB));
        // MemAvailable lower than both.
        t.proc(0.5, 50 * 1024, 0.0);
        assert_eq!(probe.readings().memory_available, Some(50 * MIB));
    }

    #[test]
    fn v2_max_everywhere_leaves_mem_available() {
        let t = Tree::new();
        t.proc(0.5, 3 * 1024 * 1024, 0.0)
            .v2("/system.slice/build.service")
            .v2_level("sys/fs/cgroup/system.slice/build.service", "max", 5 * GIB)
            .v2_level("sys/fs/cgroup/system.slice", "max", 9 * GIB);
        assert_eq!(t.memory_dirs().len(), 2);
        let mut probe = t.probe();
        assert_eq!(probe.readings().memory_available, Some(3 * GIB));
        let limits = Limits {
            min_memory_avail: Some(2 * GIB),
            ..Limits::default()
        };
        assert_eq!(probe.check(&limits), Verdict::Go);
    }

    #[test]
    fn v1_hierarchy_with_the_no_limit_value() {
        let t = Tree::new();
        t.proc(0.5, 16 * 1024 * 1024, 0.0)
            .file(
                "proc/self/cgroup",
                "9:name=systemd:/\n5:devices:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n",
            )
            .file("proc/self/mountinfo", HYBRID_MOUNTS)
            .v1_level("sys/fs/cgroup/memory/process_api/abc", V1_NO_LIMIT, 3244032)
            .v1_level("sys/fs/cgroup/memory/process_api", GIB, 100 * MIB)
            .v1_level("sys/fs/cgroup/memory", V1_NO_LIMIT, 7 * GIB);
        assert_eq!(
            t.memory_dirs(),
            [
                "sys/fs/cgroup/memory/process_api/abc",
                "sys/fs/cgroup/memory/process_api",
                "sys/fs/cgroup/memory"
            ]
        );
        let mut probe = t.probe();
        assert_eq!(probe.readings().memory_available, Some(GIB - 100 * MIB));
        let limits = Limits {
            min_memory_avail: Some(GIB),
            ..Limits::default()
        };
        assert_eq!(
            probe.check(&limits),
            Verdict::Hold {
                reason: Exceeded::Memory {
                    available: 924 * MIB,
                    min: GIB
                }
            }
        );
        // The huge value everywhere: no cgroup limit, MemAvailable alone.
        t.v1_level("sys/fs/cgroup/memory/process_api", V1_NO_LIMIT, 100 * MIB);
        assert_eq!(probe.readings().memory_available, Some(16 * GIB));
        assert_eq!(probe.check(&limits), Verdict::Go);
    }

    #[test]
    fn hybrid_v1_memory_and_v2_pressure() {
        let t = Tree::new();
        t.proc(0.5, 16 * 1024 * 1024, 5.0)
            .file(
                "proc/self/cgroup",
                "4:memory:/build\n2:cpu,cpuacct:/\n0::/session.scope\n",
            )
            .file("proc/self/mountinfo", HYBRID_MOUNTS)
            .v1_level("sys/fs/cgroup/memory/build", 2 * GIB, GIB)
            .v1_level("sys/fs/cgroup/memory", V1_NO_LIMIT, 0)
            .file(
                "sys/fs/cgroup/unified/session.scope/memory.pressure",
                &psi(30.0),
            )
            .file("sys/fs/cgroup/unified/memory.pressure", &psi(1.0));
        let cgroups = t.cgroups();
        assert_eq!(
            cgroups.pressure_file(),
            Some(
                t.path("sys/fs/cgroup/unified/session.scope/memory.pressure")
                    .as_path()
            )
        );
        // The unified hierarchy has no memory controller here: no level from it.
        assert_eq!(
            t.memory_dirs(),
            ["sys/fs/cgroup/memory/build", "sys/fs/cgroup/memory"]
        );
        let mut probe = t.probe();
        let readings = probe.readings();
        assert_eq!(readings.memory_available, Some(GIB));
        // The cgroup's 30% beats the system's 5%.
        assert_eq!(readings.memory_pressure, Some(30.0));
    }

    #[test]
    fn a_cgroup_that_no_longer_exists_is_skipped() {
        let t = Tree::new();
        t.proc(0.5, 16 * 1024 * 1024, 2.0)
            .v2("/a/b/gone")
            .v2_level("sys/fs/cgroup/a/b", "1073741824", 0)
            .v2_level("sys/fs/cgroup/a", "2147483648", 0)
            .file("sys/fs/cgroup/a/b/memory.pressure", &psi(7.5));
        assert_eq!(t.memory_dirs(), ["sys/fs/cgroup/a/b", "sys/fs/cgroup/a"]);
        assert_eq!(
            t.cgroups().pressure_file(),
            Some(t.path("sys/fs/cgroup/a/b/memory.pressure").as_path())
        );
        let mut probe = t.probe();
        assert_eq!(probe.readings().memory_available, Some(GIB));
        assert_eq!(probe.readings().memory_pressure, Some(7.5));
        // A level that disappears after the probe was made is skipped too.
        std::fs::remove_dir_all(t.path("sys/fs/cgroup/a/b")).unwrap();
        assert_eq!(probe.readings().memory_available, Some(2 * GIB));
        assert_eq!(probe.readings().memory_pressure, Some(2.0));
    }

    #[test]
    fn mount_roots_escapes_and_foreign_paths() {
        // A container's view: the mount's root is the container's cgroup.
        let t = Tree::new();
        t.proc(0.5, 16 * 1024 * 1024, 0.0)
            .file("proc/self/cgroup", "0::/docker/abc/job\n")
            .file(
                "proc/self/mountinfo",
                "30 22 0:26 /docker/abc /sys/fs/my\\040cgroup ro - cgroup2 cgroup2 rw\n",
            )
            .v2_level("sys/fs/my cgroup/job", "1073741824", 0)
            .v2_level("sys/fs/my cgroup", "2147483648", 0);
        assert_eq!(
            t.memory_dirs(),
            ["sys/fs/my cgroup/job", "sys/fs/my cgroup"]
        );

        // A path outside the mount's root, or outside the cgroup namespace: not followed.
        t.file("proc/self/cgroup", "0::/other/job\n");
        assert_eq!(t.memory_dirs(), Vec::<String>::new());
        t.file("proc/self/cgroup", "0::/docker/abc/../../job\n");
        assert_eq!(t.memory_dirs(), Vec::<String>::new());
        t.file("proc/self/cgroup", "0::/docker/abcdef\n");
        assert_eq!(t.memory_dirs(), Vec::<String>::new());

        // No cgroup files at all: no cgroups, MemAvailable alone.
        t.remove("proc/self/cgroup");
        let mut probe = t.probe();
        assert_eq!(probe.cgroups(), &Cgroups::none());
        assert_eq!(probe.readings().memory_available, Some(16 * GIB));
    }

    #[test]
    fn meminfo_without_mem_available() {
        let t = Tree::new();
        t.proc(0.5, 0, 0.0).file(
            "proc/meminfo",
            "MemTotal:        1000000 kB\nMemFree:          500000 kB\nBuffers: 1 kB\n",
        );
        let limits = Limits {
            min_memory_avail: Some(GIB),
            ..Limits::default()
        };
        // No cgroup: said once, then never a hold.
        let mut probe = Probe::new(&t.path("proc"), Cgroups::none());
        assert_eq!(probe.readings().memory_available, None);
        let Verdict::Unavailable(u) = probe.check(&limits) else {
            panic!("no answer about the missing figure");
        };
        assert_eq!(u.limit, Limit::MemoryAvail);
        assert_eq!(
            u.to_string(),
            format!(
                "cannot read the memory available ({}: no MemAvailable line) and no cgroup \
                 limits memory: --min-memory-avail ignored",
                t.path("proc/meminfo").display()
            )
        );
        assert_eq!(probe.check(&limits), Verdict::Go);
        assert_eq!(probe.check(&limits), Verdict::Go);

        // With a cgroup limit, that is the figure.
        t.v2("/job")
            .v2_level("sys/fs/cgroup/job", "1073741824", 600 * MIB);
        let mut probe = t.probe();
        assert_eq!(probe.readings().memory_available, Some(424 * MIB));
        assert_eq!(
            probe.check(&limits),
            Verdict::Hold {
                reason: Exceeded::Memory {
                    available: 424 * MIB,
                    min: GIB
                }
            }
        );
    }

    #[test]
    fn psi_some_avg10_and_the_cgroup_pressure() {
        let t = Tree::new();
        t.proc(0.5, 16 * 1024 * 1024, 0.0).file(
            "proc/pressure/memory",
            "some avg10=12.34 avg60=8.00 avg300=2.10 total=1234567\n\
             full avg10=50.00 avg60=3.00 avg300=1.00 total=765432\n",
        );
        let limits = |pct| Limits {
            max_memory_pressure: Some(pct),
            ..Limits::default()
        };
        let mut probe = Probe::new(&t.path("proc"), Cgroups::none());
        assert_eq!(probe.readings().memory_pressure, Some(12.34));
        let verdict = probe.check(&limits(10.0));
        let Verdict::Hold { reason } = verdict else {
            panic!("no hold: {verdict:?}");
        };
        assert_eq!(reason.to_string(), "memory pressure 12.34% >= 10%");
        assert_eq!(probe.check(&limits(12.35)), Verdict::Go);

        // The cgroup's memory.pressure: the larger figure counts.
        t.v2("/job")
            .file("sys/fs/cgroup/job/memory.pressure", &psi(40.5));
        let mut probe = t.probe();
        assert_eq!(probe.readings().memory_pressure, Some(40.5));
        t.file("sys/fs/cgroup/job/memory.pressure", &psi(3.0));
        assert_eq!(probe.readings().memory_pressure, Some(12.34));

        // No PSI in /proc but in the cgroup: no warning, the cgroup's figure.
        t.remove("proc/pressure/memory");
        assert_eq!(probe.check(&limits(2.0)), hold_pressure(3.0, 2.0));

        // No PSI at all: said once, then never a hold.
        let mut probe = Probe::new(&t.path("proc"), Cgroups::none());
        let Verdict::Unavailable(u) = probe.check(&limits(2.0)) else {
            panic!("no answer about the missing PSI");
        };
        assert_eq!(
            u.to_string(),
            format!(
                "no memory pressure figures (PSI) on this machine ({}: No such file or \
                 directory): --max-memory-pressure ignored",
                t.path("proc/pressure/memory").display()
            )
        );
        assert_eq!(probe.check(&limits(2.0)), Verdict::Go);
        // Once PSI is there it counts again.
        t.file("proc/pressure/memory", &psi(9.0));
        assert_eq!(probe.check(&limits(2.0)), hold_pressure(9.0, 2.0));
    }

    fn hold_pressure(now: f64, limit: f64) -> Verdict {
        Verdict::Hold {
            reason: Exceeded::Pressure { now, limit },
        }
    }

    #[test]
    fn proc_dir_variable_reads_that_directory_and_no_cgroup() {
        let t = Tree::new();
        t.proc(7.25, 2 * 1024 * 1024, 4.5);
        let dir = t.path("proc");
        let mut probe = Probe::from_proc_dir_var(Some(dir.as_os_str()));
        assert_eq!(probe.cgroups(), &Cgroups::none());
        assert!(!probe.keep_open);
        assert_eq!(
            probe.readings(),
            Readings {
                load: Some(7.25),
                memory_available: Some(2 * GIB),
                memory_pressure: Some(4.5),
            }
        );
        // Unset or empty: the real /proc.
        for value in [None, Some(OsStr::new(""))] {
            let probe = Probe::from_proc_dir_var(value);
            assert_eq!(probe.loadavg.path, Path::new("/proc/loadavg"));
            assert!(probe.keep_open);
        }
    }

    #[test]
    fn check_names_the_limit_exceeded_with_its_figures() {
        let t = Tree::new();
        t.proc(5.32, 812 * 1024, 1.0);
        let mut probe = Probe::new(&t.path("proc"), Cgroups::none());
        let all = Limits {
            load: Some(4.0),
            min_memory_avail: Some(parse_size("1G").unwrap()),
            max_memory_pressure: Some(10.0),
        };
        let reason = |v: Verdict| match v {
            Verdict::Hold { reason } => reason.to_string(),
            other => panic!("no hold: {other:?}"),
        };
        // Memory first, then load.
        assert_eq!(
            reason(probe.check(&all)),
            "memory available 812 MiB < 1 GiB"
        );
        t.proc(5.32, 2 * 1024 * 1024, 1.0);
        assert_eq!(reason(probe.check(&all)), "load average 5.32 >= 4");
        t.proc(4.0, 2 * 1024 * 1024, 1.0);
        assert_eq!(reason(probe.check(&all)), "load average 4 >= 4");
        t.proc(3.99, 2 * 1024 * 1024, 1.0);
        assert_eq!(probe.check(&all), Verdict::Go);
        assert_eq!(probe.check(&Limits::default()), Verdict::Go);
        assert!(all.is_set() && !Limits::default().is_set());
    }

    #[test]
    fn only_the_set_limits_are_read_and_said() {
        let t = Tree::new();
        t.file("proc/meminfo", "MemAvailable: 1048576 kB\n");
        let mut probe = Probe::new(&t.path("proc"), Cgroups::none());
        let memory = Limits {
            min_memory_avail: Some(GIB),
            ..Limits::default()
        };
        // No loadavg, no PSI: nothing to say while only memory is limited.
        assert_eq!(probe.check(&memory), Verdict::Go);
        let all = Limits {
            load: Some(1.0),
            max_memory_pressure: Some(10.0),
            ..memory
        };
        let mut said = Vec::new();
        let verdict = loop {
            match probe.check(&all) {
                Verdict::Unavailable(u) => said.push(u.limit),
                verdict => break verdict,
            }
        };
        assert_eq!(verdict, Verdict::Go);
        assert_eq!(said, [Limit::MemoryPressure, Limit::Load]);
        assert_eq!(probe.check(&all), Verdict::Go);
    }

    #[test]
    fn an_empty_file_is_no_figure_this_time_and_no_warning() {
        // A file being rewritten (truncated, not yet written) reads empty.
        let t = Tree::new();
        t.file("proc/loadavg", "");
        let mut probe = Probe::new(&t.path("proc"), Cgroups::none());
        let load = Limits {
            load: Some(1.0),
            ..Limits::default()
        };
        assert_eq!(probe.check(&load), Verdict::Go);
        t.file("proc/loadavg", "2.00 1.00 1.00 1/1 1\n");
        assert_eq!(
            probe.check(&load),
            Verdict::Hold {
                reason: Exceeded::Load {
                    now: 2.0,
                    limit: 1.0
                }
            }
        );
        // A file with something else in it is worth a warning.
        t.file("proc/loadavg", "garbage\n");
        assert!(matches!(probe.check(&load), Verdict::Unavailable(_)));
    }

    #[test]
    fn kept_files_are_read_afresh_and_reopened_after_a_failure() {
        let t = Tree::new();
        t.proc(1.5, 4 * 1024 * 1024, 0.0)
            .v2("/job")
            .v2_level("sys/fs/cgroup/job", "1073741824", 0);
        let mut probe = t.probe().keep_files_open();
        assert_eq!(probe.readings().load, Some(1.5));
        assert_eq!(probe.readings().memory_available, Some(GIB));
        // Rewritten in place (the kernel's files change this way): the kept descriptor sees it.
        t.proc(2.5, 4 * 1024 * 1024, 0.0)
            .v2_level("sys/fs/cgroup/job", "1073741824", 24 * MIB);
        assert_eq!(probe.readings().load, Some(2.5));
        assert_eq!(probe.readings().memory_available, Some(1000 * MIB));
        // A descriptor that gives no figure is dropped: the path is opened again next time,
        // so a new file in its place is read.
        t.file("proc/loadavg", "garbage\n");
        assert_eq!(probe.readings().load, None);
        assert!(probe.loadavg.file.is_none());
        t.remove("proc/loadavg");
        t.file("proc/loadavg", "3.5 1 1 1/1 1\n");
        assert_eq!(probe.readings().load, Some(3.5));
        assert!(probe.loadavg.file.is_some());
    }

    #[test]
    fn parsers_of_the_proc_files() {
        assert_eq!(parse_loadavg(b"0.52 0.58 0.59 1/467 12345\n"), Some(0.52));
        assert_eq!(parse_loadavg(b"  12.00 1 1"), Some(12.0));
        assert_eq!(parse_loadavg(b"nan 1 1"), None);
        assert_eq!(parse_loadavg(b"x"), None);
        assert_eq!(
            parse_meminfo(b"MemAvailable:   24082220 kB\n"),
            Some(24082220 * 1024)
        );
        assert_eq!(
            parse_meminfo(b"MemFree: 1 kB\nMemAvailable: 2 kB"),
            Some(2048)
        );
        assert_eq!(parse_meminfo(b"MemAvailable: 2 MB\n"), None);
        assert_eq!(parse_meminfo(b"MemFree: 1 kB\n"), None);
        assert_eq!(
            parse_psi(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
            Some(0.0)
        );
        assert_eq!(
            parse_psi(b"full avg10=9.00 avg60=0 avg300=0 total=0\n"),
            None
        );
        assert_eq!(parse_psi(b"some avg60=1.00\n"), None);
        assert_eq!(parse_cgroup_limit(b"max\n"), Some(None));
        assert_eq!(parse_cgroup_limit(b"9223372036854771712\n"), Some(None));
        assert_eq!(parse_cgroup_limit(b"1073741824\n"), Some(Some(GIB)));
        assert_eq!(parse_cgroup_limit(b"-1\n"), None);
        assert_eq!(unescape(b"/a\\040b\\134c\\9"), b"/a b\\c\\9");
    }

    #[test]
    fn parse_size_table() {
        let good: &[(&str, u64)] = &[
            ("0", 0),
            ("1073741824", GIB),
            ("100K", 100 * 1024),
            ("100k", 100 * 1024),
            ("512M", 512 * MIB),
            ("512MiB", 512 * MIB),
            ("512mib", 512 * MIB),
            ("4G", 4 * GIB),
            ("4g", 4 * GIB),
            ("4GiB", 4 * GIB),
            ("1.5G", GIB + GIB / 2),
            ("1.5 GiB", GIB + GIB / 2),
            (".5G", GIB / 2),
            ("2T", 2 << 40),
            ("1.1K", 1126),
            ("64B", 64),
            (" 8M ", 8 * MIB),
            ("18446744073709551615", u64::MAX),
            ("16384T", 1 << 54),
            ("16777215.9999999999999999999999T", u64::MAX),
        ];
        for &(text, want) in good {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "use bytes or a number with K, M, G or T"),
            ("G", "use bytes or a number with K, M, G or T"),
            ("4GB", "use bytes or a number with K, M, G or T"),
            ("4X", "use bytes or a number with K, M, G or T"),
            ("1e9", "use bytes or a number with K, M, G or T"),
            ("0x10", "use bytes or a number with K, M, G or T"),
            ("1.2.3G", "use bytes or a number with K, M, G or T"),
            ("+5G", "use bytes or a number with K, M, G or T"),
            ("-1", "cannot be negative"),
            ("-512M", "cannot be negative"),
            ("1.5", "a fraction of a byte"),
            ("18446744073709551616", "too large"),
            ("16777216T", "too large"),
            ("99999999999999999999999999999999999999999G", "too large"),
        ];
        for &(text, want) in bad {
            let err = parse_size(text).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid size '{text}': ")) && err.contains(want),
                "{text}: {err}"
            );
            assert!(err.contains("e.g."), "{text}: {err}");
        }
    }

    #[test]
    fn parse_percent_table() {
        for (text, want) in [
            ("10", 10.0),
            ("10%", 10.0),
            ("2.5", 2.5),
            ("2.5 %", 2.5),
            ("100", 100.0),
            ("0.01", 0.01),
        ] {
            assert_eq!(parse_percent(text), Ok(want), "{text}");
        }
        for text in [
            "", "0", "0%", "-5", "100.1", "101%", "nan", "inf", "1e1", "%", "5%%", "ten", ".",
        ] {
            let err = parse_percent(text).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "invalid percentage '{text}': use a number above 0 and at most 100, e.g. \
                     10, 10% or 2.5"
                )
            );
        }
    }

    #[test]
    fn sizes_are_shown_in_binary_units_never_rounded_up() {
        for (bytes, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1126, "1 KiB"),
            (1536, "1.5 KiB"),
            (812 * MIB, "812 MiB"),
            (GIB - 1, "1023.9 MiB"),
            (GIB, "1 GiB"),
            (GIB + GIB / 2, "1.5 GiB"),
            (u64::MAX, "15.9 EiB"),
        ] {
            assert_eq!(Size(bytes).to_string(), want, "{bytes}");
        }
    }

    /// This machine, whatever its layout: the figures parse.
    #[test]
    fn the_real_machine_parses() {
        let mut probe = Probe::system();
        let readings = probe.readings();
        // Read again through the kept descriptors.
        let again = probe.readings();
        assert!(
            again.load.is_some() && again.memory_available.is_some(),
            "{again:?}"
        );
        crate::say!(
            "limits: this machine: {readings:?}; memory cgroups {:?}; cgroup pressure {:?}",
            probe.cgroups().memory_dirs().collect::<Vec<_>>(),
            probe.cgroups().pressure_file()
        );
        assert!(readings.load.is_some(), "{readings:?}");
        assert!(readings.memory_available.is_some(), "{readings:?}");
    }

    /// The cost of one check with all three limits set, on this machine, with the kernel's
    /// files kept open (jsrun's way) and opened at each check (`JSRUN_PROC_DIR`'s way):
    /// `cargo test --release --lib limits::tests::cost_of_a_check -- --ignored`.
    #[test]
    #[ignore]
    fn cost_of_a_check() {
        let limits = Limits {
            load: Some(1000.0),
            min_memory_avail: Some(1),
            max_memory_pressure: Some(100.0),
        };
        const ROUNDS: u32 = 10_000;
        let kept = Probe::system();
        let cgroups = kept.cgroups().clone();
        let reopened = Probe::new(Path::new("/proc"), cgroups);
        for (mut probe, how) in [(kept, "kept open"), (reopened, "opened each time")] {
            let start = std::time::Instant::now();
            for _ in 0..ROUNDS {
                assert_eq!(probe.check(&limits), Verdict::Go);
            }
            let each = start.elapsed() / ROUNDS;
            crate::say!(
                "limits: one check with all three limits, files {how}: {each:?} ({} memory \
                 cgroup levels, cgroup pressure {})",
                probe.cgroups().memory_dirs().count(),
                probe.cgroups().pressure_file().is_some()
            );
        }
    }
}
