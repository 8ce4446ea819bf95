//! Process trees from /proc: a process's children (`/proc/PID/task/*/children`), what one
//! `stat` line says of a process, and stopping or continuing a whole tree.
//!
//! What it cannot see: processes of other users unless jsrun is root (their `fd` directory),
//! processes in another PID namespace, a process that left the tree (reparented to init when
//! its parent died: a daemon, `setsid` and a double fork), and a tree that forks faster than
//! it is scanned (it is scanned again until no new process appears, up to [`ROUNDS`] times).

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often a tree is scanned again while stopping it, for processes forked meanwhile.
pub const ROUNDS: usize = 50;

/// What `/proc/PID/stat` says of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `T` (stopped), `t`, `Z`, ...
    pub state: u8,
    /// utime + stime, clock ticks.
    pub cpu: u64,
    /// Start time after boot, clock ticks.
    pub start: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

impl Stat {
    /// Stopped, or gone (a zombie or dead).
    pub fn halted(&self) -> bool {
        matches!(self.state, b'T' | b't' | b'Z' | b'X' | b'x')
    }
}

/// `/proc/PID/stat` of `pid`, or `None` when it is gone.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// After the command's closing `)`: state (field 3), ..., utime (14), stime (15), ...,
/// starttime (22), vsize (23), rss (24).
fn parse_stat(text: &[u8]) -> Option<Stat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let fields: Vec<&[u8]> = text[close + 1..]
        .split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty())
        .collect();
    // fields[0] is field 3.
    let number =
        |n: usize| -> Option<u64> { std::str::from_utf8(fields.get(n - 3)?).ok()?.parse().ok() };
    Some(Stat {
        state: *fields.first()?.first()?,
        cpu: number(14)? + number(15)?,
        start: number(22)?,
        rss_pages: number(24)?,
    })
}

/// How long ago a process started `start` clock ticks after boot (its `stat` start time).
pub fn since_start(start: u64) -> Duration {
    let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100);
    let Ok(now) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) else {
        return Duration::ZERO;
    };
    let now = Duration::new(
        u64::try_from(now.tv_sec()).unwrap_or(0),
        u32::try_from(now.tv_nsec()).unwrap_or(0),
    );
    let started = Duration::from_secs(start / ticks)
        + Duration::from_nanos((start % ticks) * 1_000_000_000 / ticks);
    now.saturating_sub(started)
}

/// The bytes of a page.
pub fn page_size() -> u64 {
    sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096)
}

/// A positive `sysconf` value.
fn sysconf(var: nix::unistd::SysconfVar) -> Option<u64> {
    nix::unistd::sysconf(var)
        .ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n > 0)
}

/// The children of `pid`, from every thread's `children` file (a thread that forks is the
/// parent there).
pub fn children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.filter_map(Result::ok) {
        let Ok(text) = std::fs::read(task.path().join("children")) else {
            continue;
        };
        found.extend(
            text.split(u8::is_ascii_whitespace)
                .filter_map(|w| std::str::from_utf8(w).ok()?.parse::<i32>().ok()),
        );
    }
    found
}

/// `root` and every process below it, parents before children.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let kids = children(all[i]);
        all.extend(kids);
        i += 1;
    }
    all
}

/// Stops the tree of `root` with SIGSTOP: scanned again until no new process appears and
/// every one it stopped has stopped (a fork in flight when its parent was stopped shows up
/// as a new child). The processes stopped.
pub fn stop(root: i32) -> Vec<i32> {
    let mut stopped = BTreeSet::new();
    for round in 0..ROUNDS {
        let tree = descendants(root);
        let fresh: Vec<i32> = tree
            .iter()
            .copied()
            .filter(|p| !stopped.contains(p))
            .collect();
        for &pid in &fresh {
            if kill(Pid::from_raw(pid), Signal::SIGSTOP).is_ok() {
                stopped.insert(pid);
            }
        }
        let settled = fresh.is_empty() && tree.iter().all(|&p| stat(p).is_none_or(|s| s.halted()));
        if settled {
            break;
        }
        // The signal is delivered when the process is next scheduled: give it the CPU.
        if round > 2 {
            std::thread::sleep(Duration::from_millis(1));
        } else {
            std::thread::yield_now();
        }
    }
    stopped.into_iter().collect()
}

/// Continues the tree of `root` and the processes `stopped` earlier (one may have left
/// the tree meanwhile).
pub fn resume(root: i32, stopped: &[i32]) {
    let mut all: BTreeSet<i32> = stopped.iter().copied().collect();
    all.extend(descendants(root));
    for pid in all {
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    }
}

/// The resident memory (bytes) and CPU time (ticks) of `pids` together.
pub fn footprint(pids: &[i32], page: u64) -> (u64, u64) {
    pids.iter()
        .filter_map(|&p| stat(p))
        .fold((0, 0), |(rss, cpu), s| {
            (rss + s.rss_pages * page, cpu + s.cpu)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_blanks_and_parentheses_in_the_name() {
        let line = b"4711 (a (b) c) S 1 4711 4711 0 -1 4194560 100 0 0 0 12 3 0 0 20 0 1 0 \
                     98765 1234567 256 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: b'S',
                cpu: 15,
                start: 98765,
                rss_pages: 256
            })
        );
    }

    #[test]
    fn a_tree_is_stopped_whole_and_continued() {
        // sh starts two sleeps and waits: three processes.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let root = child.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while descendants(root).len() < 3 {
            assert!(std::time::Instant::now() < deadline, "no sleeps under sh");
            std::thread::sleep(Duration::from_millis(5));
        }
        let stopped = stop(root);
        assert_eq!(stopped.len(), 3, "{stopped:?}");
        assert!(stopped.iter().all(|&p| stat(p).unwrap().state == b'T'));
        let (rss, _) = footprint(&stopped, page_size());
        assert!(rss > 0);
        resume(root, &stopped);
        while stopped.iter().any(|&p| stat(p).unwrap().state == b'T') {
            assert!(std::time::Instant::now() < deadline, "still stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        for &p in stopped.iter().rev() {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let _ = child.wait();
    }
}
