//! The kernel's word that memory is getting short, so that the guard looks at once instead
//! of at its next look. Three kinds, each polled by the supervision loop with everything
//! else:
//!
//! - cgroup v1 usage **marks** (`cgroup.event_control` with an eventfd on
//!   `memory.usage_in_bytes`), at the minimum's distance from each limit (short), half
//!   that (critical once a shape is known: pausing) and twice that (near): the eventfd
//!   becomes readable when usage crosses a mark either way;
//! - a PSI **trigger** on `/proc/pressure/memory`, or where that cannot be had the own
//!   cgroup v2 `memory.pressure`: `some T W` makes the file poll `POLLPRI` when tasks
//!   stalled on memory for T µs within a window of W µs (1 s; 2 s where only a multiple
//!   of 2 s is allowed, Linux 6.5 and later without `CAP_SYS_RESOURCE`). T is the
//!   `--max-memory-pressure` share of the window, or [`EARLY`] of it (reclaim began: an
//!   early warning for `--min-memory-avail`), the lower of the two;
//! - cgroup v2 **`memory.events`** of each cgroup with a `memory.max` or `memory.high`:
//!   it polls `POLLPRI` when a counter changes; the guard looks when `high`, `max`, `oom` or
//!   `oom_kill` grew.
//!
//! What cannot be had (no v1 limit, not allowed to write, no PSI, `JSRUN_PROC_DIR`) is left
//! out, said under `-v`; the looks alone follow memory then: every 250 ms, faster as it
//! falls towards the minimum. `MemAvailable` has no notification of its own.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::policy::Thresholds as Wanted;

/// The PSI trigger's threshold with `--min-memory-avail` alone: stalls for this share of
/// the window (percent).
pub const EARLY: f64 = 5.0;

/// After a wake, the notices are left out of the poll for this long: at a v2 limit,
/// `memory.events` changes at every reclaim, thousands of times a second.
pub const QUIET: Duration = Duration::from_millis(20);

/// Where the kernel may be asked: found by the probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sources {
    /// cgroup v1 memory cgroups with a limit, and the limit (bytes).
    pub v1_limits: Vec<(PathBuf, u64)>,
    /// cgroup v2 directories with a `memory.max` or `memory.high`.
    pub v2_limited: Vec<PathBuf>,
    /// PSI files to set a trigger on, the first that takes one: `/proc/pressure/memory`,
    /// then the own cgroup's `memory.pressure`.
    pub pressure: Vec<PathBuf>,
}

#[derive(Default)]
pub struct Notices {
    marks: Vec<EventFd>,
    trigger: Option<File>,
    events: Vec<Events>,
    /// The last wake's quiet time ends then.
    quiet_until: Option<Instant>,
    /// What was set up and what could not be, for `-v`.
    pub said: Vec<String>,
}

/// One `memory.events`, and the counters last read from it.
struct Events {
    path: PathBuf,
    file: File,
    counts: Counts,
}

/// The counters of `memory.events` that mean the cgroup is at its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
}

impl Notices {
    /// Everything of `sources` the limits call for and the kernel grants.
    pub fn new(sources: &Sources, wanted: Wanted) -> Notices {
        let mut notices = Notices::default();
        if let Some(min) = wanted.min_available {
            for (dir, limit) in &sources.v1_limits {
                for distance in [min / 2, min, min.saturating_mul(2)] {
                    let Some(mark) = limit.checked_sub(distance).filter(|m| *m > 0) else {
                        continue;
                    };
                    match register(dir, mark) {
                        Ok(fd) => notices.marks.push(fd),
                        Err(e) => notices
                            .said
                            .push(format!("no usage mark in {} ({e})", dir.display())),
                    }
                }
            }
            let marked = notices.marks.len();
            if marked > 0 {
                notices
                    .said
                    .push(format!("{marked} usage marks in cgroup v1"));
            }
            for dir in &sources.v2_limited {
                match Events::open(dir) {
                    Ok(events) => {
                        notices
                            .said
                            .push(format!("watching {}", events.path.display()));
                        notices.events.push(events);
                    }
                    Err(e) => notices.said.push(format!(
                        "cannot watch {} ({e})",
                        dir.join("memory.events").display()
                    )),
                }
            }
        }
        let percent = match (wanted.min_available, wanted.max_pressure) {
            (_, Some(max)) => Some(max.min(EARLY)),
            (Some(_), None) => Some(EARLY),
            (None, None) => None,
        };
        if let Some(percent) = percent {
            let mut refused = Vec::new();
            for path in &sources.pressure {
                match trigger(path, percent) {
                    Ok((file, line)) => {
                        notices
                            .said
                            .push(format!("a pressure trigger on {} ({line})", path.display()));
                        notices.trigger = Some(file);
                        break;
                    }
                    Err(e) => refused.push(format!("{}: {e}", path.display())),
                }
            }
            if notices.trigger.is_none() && !sources.pressure.is_empty() {
                let why = refused.join("; ");
                notices.said.push(format!("no pressure trigger ({why})"));
            }
        }
        notices
    }

    /// The descriptors to poll, with what to poll them for: none within [`QUIET`] of a
    /// wake.
    pub fn fds(&self, now: Instant) -> impl Iterator<Item = (BorrowedFd<'_>, PollFlags)> {
        let on = self.quiet_until.is_none_or(|q| now >= q);
        let marks = self.marks.iter().map(|m| (m.as_fd(), PollFlags::POLLIN));
        let trigger = self.trigger.iter().map(|f| (f.as_fd(), PollFlags::POLLPRI));
        let events = self
            .events
            .iter()
            .map(|e| (e.file.as_fd(), PollFlags::POLLPRI));
        marks.chain(trigger).chain(events).filter(move |_| on)
    }

    /// When the quiet time after a wake ends: the loop polls the notices again then.
    pub fn quiet_until(&self, now: Instant) -> Option<Instant> {
        self.quiet_until.filter(|q| *q > now)
    }

    /// Whether there is anything to poll.
    pub fn any(&self) -> bool {
        !self.marks.is_empty() || self.trigger.is_some() || !self.events.is_empty()
    }

    /// After the loop was woken by one of [`Notices::fds`]: clears what the kernel said
    /// (reads the eventfds, reads `memory.events` again, which arms it anew; the trigger
    /// was cleared by the poll itself), and whether memory is to be looked at now. A
    /// trigger that has failed (the kernel says `POLLERR` then, for good: its cgroup went
    /// away) is dropped, which is said; one that fired again in a new window has not.
    pub fn clear(&mut self, now: Instant) -> bool {
        self.quiet_until = Some(now + QUIET);
        let mut look = false;
        for fd in &self.marks {
            let mut buf = [0u8; 8];
            look |= matches!(nix::unistd::read(fd.as_fd(), &mut buf), Ok(8));
        }
        for events in &mut self.events {
            look |= events.changed();
        }
        // The trigger woke the loop if nothing else did.
        look |= self.trigger.is_some();
        let stuck = |fd: BorrowedFd<'_>, flags: PollFlags| {
            let mut set = [PollFd::new(fd, flags)];
            let failed = PollFlags::POLLERR | PollFlags::POLLNVAL;
            matches!(nix::poll::poll(&mut set, PollTimeout::ZERO), Ok(n) if n > 0)
                && set[0].revents().is_some_and(|r| r.intersects(failed))
        };
        if self
            .trigger
            .as_ref()
            .is_some_and(|t| stuck(t.as_fd(), PollFlags::POLLPRI))
        {
            self.trigger = None;
            self.said
                .push("the pressure trigger failed: dropped".to_owned());
        }
        look
    }

    #[cfg(test)]
    pub fn marks(&self) -> usize {
        self.marks.len()
    }
}

/// An eventfd that becomes readable when the usage of cgroup `dir` crosses `mark` bytes.
fn register(dir: &Path, mark: u64) -> std::io::Result<EventFd> {
    let event = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let usage = File::open(dir.join("memory.usage_in_bytes"))?;
    let mut control = OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.event_control"))?;
    // "<event fd> <fd of memory.usage_in_bytes> <threshold>"; the kernel keeps what it
    // needs, so `usage` may be closed after.
    let line = format!("{} {} {mark}", event.as_fd().as_raw_fd(), usage.as_raw_fd());
    control.write_all(line.as_bytes())?;
    Ok(event)
}

/// A PSI trigger on `path` for stalls of `percent` of a 1 s window, or of a 2 s window
/// where the kernel refuses 1 s (unprivileged); the file, and the trigger written.
fn trigger(path: &Path, percent: f64) -> std::io::Result<(File, String)> {
    let mut last = None;
    for window in [1_000_000u64, 2_000_000] {
        // A trigger takes a descriptor of its own: a refused write leaves none behind.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)?;
        let threshold = ((window as f64 * percent / 100.0) as u64).clamp(1, window);
        let line = format!("some {threshold} {window}");
        match file.write_all(line.as_bytes()) {
            Ok(()) => return Ok((file, line)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("refused")))
}

impl Events {
    fn open(dir: &Path) -> std::io::Result<Events> {
        let path = dir.join("memory.events");
        let file = File::open(&path)?;
        let mut events = Events {
            path,
            file,
            counts: Counts::default(),
        };
        // The first read arms the file: it polls POLLPRI at the next change.
        events.counts = events.read()?;
        Ok(events)
    }

    fn read(&self) -> std::io::Result<Counts> {
        let mut buf = [0u8; 512];
        let n = self.file.read_at(&mut buf, 0)?;
        Ok(parse_events(&buf[..n]))
    }

    /// Reads the counters again (arming the file anew): whether one that means the limit
    /// was reached grew.
    fn changed(&mut self) -> bool {
        let Ok(now) = self.read() else {
            return false;
        };
        let was = std::mem::replace(&mut self.counts, now);
        now.high > was.high || now.max > was.max || now.oom > was.oom || now.oom_kill > was.oom_kill
    }
}

/// The counters of a cgroup v2 `memory.events`: `low 0\nhigh 12\nmax 3\noom 0\n...`;
/// unknown lines and missing counters count as 0.
pub fn parse_events(text: &[u8]) -> Counts {
    let mut counts = Counts::default();
    for line in String::from_utf8_lossy(text).lines() {
        let mut words = line.split_ascii_whitespace();
        let (Some(name), Some(Ok(value))) = (words.next(), words.next().map(str::parse)) else {
            continue;
        };
        match name {
            "high" => counts.high = value,
            "max" => counts.max = value,
            "oom" => counts.oom = value,
            "oom_kill" => counts.oom_kill = value,
            _ => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(min: u64) -> Wanted {
        Wanted {
            min_available: Some(min),
            max_pressure: None,
        }
    }

    /// The system's PSI file, else the v2 root cgroup's (a hybrid layout's or a v2 one's).
    fn psi_files() -> ([&'static str; 3], Sources) {
        let files = [
            "/proc/pressure/memory",
            "/sys/fs/cgroup/unified/memory.pressure",
            "/sys/fs/cgroup/memory.pressure",
        ];
        let sources = Sources {
            pressure: files.iter().map(PathBuf::from).collect(),
            ..Sources::default()
        };
        (files, sources)
    }

    #[test]
    fn memory_events_counters_parse() {
        let text = b"low 1\nhigh 12\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(
            parse_events(text),
            Counts {
                high: 12,
                max: 3,
                oom: 2,
                oom_kill: 1
            }
        );
        assert_eq!(parse_events(b""), Counts::default());
        assert_eq!(
            parse_events(b"max x\nhigh\nmax 7\nbogus 9 9\n"),
            Counts {
                max: 7,
                ..Counts::default()
            }
        );
    }

    /// A fake cgroup v2 directory: `memory.events` is watched with the limit, read at
    /// set-up; a grown `high`, `max`, `oom` or `oom_kill` asks for a look, a grown `low`
    /// does not. (A plain file never polls POLLPRI: the kernel's side is
    /// `memory_events_of_a_real_v2_cgroup_wake_the_loop` in tests/pause.rs.)
    #[test]
    fn memory_events_of_a_fake_cgroup_are_watched_and_compared() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("memory.events");
        std::fs::write(&events, "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n").unwrap();
        let sources = Sources {
            v2_limited: vec![dir.path().to_owned(), dir.path().join("gone")],
            ..Sources::default()
        };
        // Nothing without a minimum.
        let none = Notices::new(&sources, Wanted::default());
        assert!(!none.any());
        let mut notices = Notices::new(&sources, memory(1 << 20));
        assert_eq!(notices.events.len(), 1, "{:?}", notices.said);
        assert!(
            notices.said[0].starts_with("watching "),
            "{:?}",
            notices.said
        );
        assert!(
            notices.said[1].starts_with("cannot watch "),
            "{:?}",
            notices.said
        );
        let t0 = Instant::now();
        assert_eq!(notices.fds(t0).count(), 1);
        assert_eq!(
            notices.fds(t0).next().map(|f| f.1),
            Some(PollFlags::POLLPRI)
        );
        std::fs::write(&events, "low 5\nhigh 0\nmax 0\noom 0\noom_kill 0\n").unwrap();
        assert!(!notices.clear(t0), "a grown low is no reason to look");
        // Quiet after a wake, polled again after.
        assert_eq!(notices.fds(t0).count(), 0);
        assert_eq!(notices.quiet_until(t0), Some(t0 + QUIET));
        assert_eq!(notices.fds(t0 + QUIET).count(), 1);
        for grown in [
            "high 1\nmax 0",
            "high 1\nmax 4",
            "high 1\nmax 4\noom 1\noom_kill 1",
        ] {
            std::fs::write(&events, grown).unwrap();
            assert!(notices.clear(t0), "{grown}");
            assert!(!notices.clear(t0), "{grown} again");
        }
    }

    /// The PSI trigger against the kernel's own file: set (1 s window with
    /// CAP_SYS_RESOURCE, 2 s where only that is allowed) and pollable for POLLPRI; an
    /// invalid trigger refused. (A stall that fires it:
    /// `a_memory_stall_fires_the_pressure_trigger`.)
    #[test]
    fn a_pressure_trigger_on_the_real_file() {
        let (files, sources) = psi_files();
        let wanted = Wanted {
            min_available: None,
            max_pressure: Some(50.0),
        };
        let notices = Notices::new(&sources, wanted);
        let Some(file) = &notices.trigger else {
            let why = format!("no trigger allowed here: {:?}", notices.said);
            crate::testing::machine_cannot(
                "guard::notify::a_pressure_trigger_on_the_real_file",
                &why,
            );
            return;
        };
        // --max-memory-pressure=50 asks for the earlier of 50% and EARLY.
        assert!(
            notices.said[0].ends_with("(some 50000 1000000)")
                || notices.said[0].ends_with("(some 100000 2000000)"),
            "{:?}",
            notices.said
        );
        let path = files
            .iter()
            .map(Path::new)
            .find(|p| notices.said[0].contains(&format!("on {} (", p.display())))
            .unwrap();
        let (fd, flags) = notices.fds(Instant::now()).next().unwrap();
        assert_eq!(fd.as_raw_fd(), file.as_raw_fd());
        assert_eq!(flags, PollFlags::POLLPRI);
        // Pollable: no error, and no event with nothing stalled for 50 ms in a second
        // (a loaded machine may stall: then POLLPRI alone).
        let mut set = [PollFd::new(fd, PollFlags::POLLPRI)];
        nix::poll::poll(&mut set, PollTimeout::ZERO).unwrap();
        let revents = set[0].revents().unwrap();
        assert!(!revents.contains(PollFlags::POLLERR), "{revents:?}");
        // A window past 10 s, a threshold past the window, a second trigger on one
        // descriptor: refused.
        for bad in [
            "some 1000 20000000",
            "some 3000000 1000000",
            "most 1000 1000000",
        ] {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            assert!(f.write_all(bad.as_bytes()).is_err(), "{bad} taken");
        }
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        f.write_all(b"some 100000 2000000").unwrap();
        assert!(
            f.write_all(b"some 100000 2000000").is_err(),
            "a second trigger taken"
        );
        // A file that is no PSI file refuses too: the next one is tried, and with none
        // left that is said.
        let sources = Sources {
            pressure: vec![PathBuf::from("/proc/self/stat"), path.to_owned()],
            ..Sources::default()
        };
        let notices = Notices::new(&sources, wanted);
        assert!(notices.trigger.is_some(), "{:?}", notices.said);
        let sources = Sources {
            pressure: vec![PathBuf::from("/proc/self/stat")],
            ..Sources::default()
        };
        let notices = Notices::new(&sources, wanted);
        assert!(notices.trigger.is_none());
        assert!(
            notices.said[0].starts_with("no pressure trigger (/proc/self/stat: "),
            "{:?}",
            notices.said
        );
    }

    /// In a cgroup v1 memory cgroup made below this process's own: a mark 16 MiB above the
    /// usage now is crossed when a child allocates 64 MiB in it. Where no such cgroup can be
    /// made (no v1 memory controller, not root), says so and checks nothing.
    #[test]
    fn crossing_a_mark_makes_the_eventfd_readable() {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(path) = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path.to_owned())
        }) else {
            crate::testing::machine_cannot(
                "guard::notify::crossing_a_mark_makes_the_eventfd_readable",
                "no cgroup v1 memory controller",
            );
            return;
        };
        let parent = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
        let dir = parent.join(format!("jsrun-unit-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() {
            let why = format!("cannot make a cgroup in {}", parent.display());
            crate::testing::machine_cannot(
                "guard::notify::crossing_a_mark_makes_the_eventfd_readable",
                &why,
            );
            return;
        }
        let limit = 512u64 << 20;
        let usage = || -> u64 {
            std::fs::read_to_string(dir.join("memory.usage_in_bytes"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        // The mark at usage + 16 MiB: min = limit - (usage + 16 MiB).
        let min = limit - (usage() + (16 << 20));
        let sources = Sources {
            v1_limits: vec![(dir.clone(), limit)],
            ..Sources::default()
        };
        let mut marks = Notices::new(&sources, memory(min));
        assert!(marks.marks() >= 1, "{:?}", marks.said);
        assert!(!marks.clear(Instant::now()));
        // A child in the cgroup takes 64 MiB and holds it until its stdin closes.
        let script = format!(
            "echo $$ > {}/cgroup.procs && v=$(head -c 67108864 /dev/zero | tr '\\0' a) && sleep 1",
            dir.display()
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .unwrap();
        let mut fds: Vec<PollFd<'_>> = marks
            .fds(Instant::now() + QUIET)
            .map(|(fd, flags)| PollFd::new(fd, flags))
            .collect();
        let ready = nix::poll::poll(&mut fds, 10_000u16).unwrap();
        drop(fds);
        let _ = child.wait();
        assert!(ready >= 1, "no word from the kernel within 10 s");
        assert!(marks.clear(Instant::now()));
        drop(marks);
        let _ = std::fs::remove_dir(&dir);
    }

    /// A real stall fires the trigger: a child in a cgroup v1 memory cgroup of 48 MiB writes
    /// 256 MiB to a file on disk (not tmpfs) and reads it back, so the kernel reclaims the
    /// cgroup's page cache while dirty pages are written back; tasks stall on memory (5% of
    /// the window is asked for), the descriptor polls POLLPRI and [`Notices::clear`] asks
    /// for a look. Where no such cgroup can be made or no trigger set, says so and checks
    /// nothing.
    #[test]
    fn a_memory_stall_fires_the_pressure_trigger() {
        let (_, sources) = psi_files();
        let mut notices = Notices::new(&sources, memory(1 << 20));
        if notices.trigger.is_none() {
            let why = format!("no trigger allowed here: {:?}", notices.said);
            crate::testing::machine_cannot(
                "guard::notify::a_memory_stall_fires_the_pressure_trigger",
                &why,
            );
            return;
        }
        let parent = Path::new("/sys/fs/cgroup/memory");
        let dir = parent.join(format!("jsrun-stall-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() {
            let why = format!("cannot make a cgroup in {}", parent.display());
            crate::testing::machine_cannot(
                "guard::notify::a_memory_stall_fires_the_pressure_trigger",
                &why,
            );
            return;
        }
        std::fs::write(dir.join("memory.limit_in_bytes"), (48u64 << 20).to_string()).unwrap();
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        let disk = tempfile::tempdir_in(&target).unwrap();
        let file = disk.path().join("stall");
        let script = format!(
            "echo $$ > {}/cgroup.procs && dd if=/dev/zero of={f} bs=64k count=4096 \
             conv=fsync 2>/dev/null && cat {f} {f} > /dev/null",
            dir.display(),
            f = file.display()
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .unwrap();
        let (fd, flags) = notices.fds(Instant::now()).next().unwrap();
        let mut set = [PollFd::new(fd, flags)];
        let ready = nix::poll::poll(&mut set, 20_000u16).unwrap();
        let revents = set[0].revents();
        let look = ready == 1 && notices.clear(Instant::now());
        // The writer's own end does not matter (in a small cgroup without swap the OOM
        // killer may end it): the stall it caused does.
        let status = child.wait().unwrap();
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(
            ready, 1,
            "no stall said within 20 s (the writer: {status}): {:?}",
            notices.said
        );
        assert_eq!(revents, Some(PollFlags::POLLPRI));
        assert!(look);
        assert!(notices.trigger.is_some(), "dropped: {:?}", notices.said);
        // The stall goes on after the first wake (the trigger may fire again in a later
        // window): that is not taken for a failed trigger.
        notices.clear(Instant::now());
        assert!(
            notices.trigger.is_some(),
            "dropped later: {:?}",
            notices.said
        );
    }
}
