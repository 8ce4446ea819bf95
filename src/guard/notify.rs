//! The kernel's word that memory crossed a mark, so that the guard looks at once instead of
//! at its next look: cgroup v1 usage thresholds (`cgroup.event_control` with an eventfd on
//! `memory.usage_in_bytes`), at the minimum's distance from each limit (short) and twice
//! that (near). The eventfd becomes readable when usage crosses a mark either way; the
//! supervision loop polls it with everything else.
//!
//! Where there is no cgroup v1 limit (cgroup v2, MemAvailable alone, `JSRUN_PROC_DIR`) or the
//! marks cannot be set (not allowed to write `cgroup.event_control`), there are none, and
//! the looks alone follow memory: every 250 ms, faster as it falls towards the minimum.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::sys::eventfd::{EfdFlags, EventFd};

#[derive(Default)]
pub struct Marks {
    fds: Vec<EventFd>,
}

impl Marks {
    /// Marks at `limit - min` and `limit - 2 min` of usage in each cgroup of `limits`
    /// (directory, limit in bytes).
    pub fn new(limits: &[(std::path::PathBuf, u64)], min: u64) -> Marks {
        let mut marks = Marks::default();
        for (dir, limit) in limits {
            for distance in [min, min.saturating_mul(2)] {
                if let Some(mark) = limit.checked_sub(distance).filter(|m| *m > 0)
                    && let Ok(fd) = register(dir, mark)
                {
                    marks.fds.push(fd);
                }
            }
        }
        marks
    }

    /// The eventfds to poll for reading.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.fds.iter().map(AsFd::as_fd)
    }

    /// Whether a mark was crossed since the last call; clears what was said.
    pub fn crossed(&self) -> bool {
        let mut crossed = false;
        for fd in &self.fds {
            let mut buf = [0u8; 8];
            crossed |= matches!(nix::unistd::read(fd.as_fd(), &mut buf), Ok(8));
        }
        crossed
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.fds.len()
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

#[cfg(test)]
mod tests {
    use super::*;

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
            eprintln!("NOT RUN: no cgroup v1 memory controller");
            return;
        };
        let parent = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
        let dir = parent.join(format!("jsrun-unit-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() {
            eprintln!("NOT RUN: cannot make a cgroup in {}", parent.display());
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
        let marks = Marks::new(&[(dir.clone(), limit)], min);
        assert!(marks.len() >= 1);
        assert!(!marks.crossed());
        // A child in the cgroup takes 64 MiB and holds it until its stdin closes.
        let script = format!(
            "echo $$ > {}/cgroup.procs && v=$(head -c 67108864 /dev/zero | tr '\\0' a) && sleep 1",
            dir.display()
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .unwrap();
        let mut fds: Vec<nix::poll::PollFd<'_>> = marks
            .fds()
            .map(|fd| nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN))
            .collect();
        let ready = nix::poll::poll(&mut fds, 10_000u16).unwrap();
        let _ = child.wait();
        assert!(ready >= 1, "no word from the kernel within 10 s");
        assert!(marks.crossed());
        drop(marks);
        let _ = std::fs::remove_dir(&dir);
    }
}
