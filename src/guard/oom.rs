//! What the OOM killer did: its kill counters (`oom_kill N` in /proc/vmstat, cgroup v1
//! `memory.oom_control`, cgroup v2 `memory.events`), read only when a job died of SIGKILL;
//! and the jobs' `oom_score_adj`, raised above jsrun's own so that the killer picks a job
//! before jsrun.

use std::path::PathBuf;

/// How much higher than jsrun's own `oom_score_adj` a job's is set (at most 1000).
const RAISE: i32 = 500;

pub struct Oom {
    counters: Vec<(PathBuf, u64)>,
    /// jsrun's own `oom_score_adj`.
    own: i32,
}

impl Oom {
    /// Reads the counters now, as the base for [`Oom::killed`].
    pub fn new(files: Vec<PathBuf>) -> Oom {
        let counters = files
            .into_iter()
            .map(|f| {
                let n = read_count(&f).unwrap_or(0);
                (f, n)
            })
            .collect();
        let own = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Oom { counters, own }
    }

    /// A job died of SIGKILL: whether the OOM killer did it, i.e. a counter grew since the
    /// last kill it was taken for. Each kill is taken for one job only.
    pub fn killed(&mut self) -> bool {
        let mut grew = false;
        for (file, seen) in &mut self.counters {
            if let Some(now) = read_count(file)
                && now > *seen
            {
                *seen += 1;
                grew = true;
            }
        }
        grew
    }

    /// Raises the `oom_score_adj` of job `pid` above jsrun's own: allowed to any process for
    /// its own children (lowering one needs CAP_SYS_RESOURCE). What the job starts from now
    /// on inherits it; what it started already (a shell forks at once) is raised after it.
    pub fn adopt(&self, pid: i32) {
        let value = (self.own + RAISE).min(1000);
        if value <= self.own {
            return;
        }
        let value = value.to_string();
        let raise = |p: i32| std::fs::write(format!("/proc/{p}/oom_score_adj"), &value);
        // Twice: a process forked while the first scan ran shows up in the second.
        if raise(pid).is_ok() {
            for _ in 0..2 {
                for p in super::tree::descendants(pid).into_iter().skip(1) {
                    let _ = raise(p);
                }
            }
        }
    }
}

/// The `oom_kill N` figure of a counter file.
fn read_count(file: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kill_is_taken_for_one_job() {
        let dir = tempfile::tempdir().unwrap();
        let vmstat = dir.path().join("vmstat");
        let events = dir.path().join("memory.events");
        std::fs::write(&vmstat, "pgfault 1\noom_kill 3\n").unwrap();
        std::fs::write(&events, "low 0\noom 1\noom_kill 1\n").unwrap();
        let mut oom = Oom::new(vec![vmstat.clone(), events.clone()]);
        assert!(!oom.killed(), "no kill since the start");
        // Two kills, seen in both files.
        std::fs::write(&vmstat, "pgfault 1\noom_kill 5\n").unwrap();
        std::fs::write(&events, "low 0\noom 3\noom_kill 3\n").unwrap();
        assert!(oom.killed());
        assert!(oom.killed());
        assert!(!oom.killed(), "a third SIGKILL was someone else's");
    }
}
