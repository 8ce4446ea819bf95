//! `--joblog` and `--stats`: what happened, as rows per job and a summary at exit.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::jobs::Job;
use crate::status::Status;

/// A job that ended (or never started: zero runtime).
pub struct Finished<'a> {
    pub job: &'a Job,
    pub started_at: SystemTime,
    pub runtime: Duration,
    pub status: Status,
    pub signal: Option<Signal>,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub jobs: u64,
    pub failed: u64,
    pub peak: usize,
    pub tokens: u64,
    pub token_wait: Duration,
    pub longest_token_wait: Duration,
    /// Sum of the jobs' runtimes: busy slot-time.
    pub busy: Duration,
}

pub struct Report {
    joblog: Option<BufWriter<File>>,
    stats: Stats,
    start: Instant,
}

impl Report {
    pub fn new(joblog: Option<&Path>) -> Result<Report> {
        let joblog = match joblog {
            Some(path) => {
                let file = File::create(path)
                    .with_context(|| format!("cannot create job log {}", path.display()))?;
                let mut log = BufWriter::new(file);
                writeln!(
                    log,
                    "Seq\tSlot\tStarttime\tJobRuntime\tExitval\tSignal\tCommand"
                )?;
                log.flush()?;
                Some(log)
            }
            None => None,
        };
        Ok(Report {
            joblog,
            stats: Stats::default(),
            start: Instant::now(),
        })
    }

    pub fn started(&mut self, running: usize) {
        self.stats.peak = self.stats.peak.max(running);
    }

    pub fn token_acquired(&mut self, waited: Duration) {
        self.stats.tokens += 1;
        self.stats.token_wait += waited;
        self.stats.longest_token_wait = self.stats.longest_token_wait.max(waited);
    }

    pub fn finished(&mut self, done: &Finished<'_>) {
        self.stats.jobs += 1;
        self.stats.busy += done.runtime;
        if !done.status.success() {
            self.stats.failed += 1;
        }
        if let Some(log) = &mut self.joblog {
            let start = done
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            let exitval = match (done.status, done.signal) {
                (_, Some(_)) => 0,
                (Status::Code(code), None) => code,
                (Status::Killed(_), None) => 0,
            };
            let row = writeln!(
                log,
                "{}\t{}\t{}.{:03}\t{:.3}\t{}\t{}\t{}",
                done.job.seq,
                done.job.slot,
                start.as_secs(),
                start.subsec_millis(),
                done.runtime.as_secs_f64(),
                exitval,
                done.signal.map_or(0, |s| s as i32),
                done.job.display.replace(['\t', '\n'], " "),
            );
            // One row at a time on disk, so the log is useful while jobs still run.
            if row.and_then(|()| log.flush()).is_err() {
                eprintln!("jsrun: warning: cannot write the job log; it stops here");
                self.joblog = None;
            }
        }
    }

    /// The `--stats` summary: one line on stderr.
    pub fn print_stats(&self, slots: usize) {
        let s = &self.stats;
        let wall = self.start.elapsed();
        let utilisation = if slots > 0 && !wall.is_zero() {
            100.0 * s.busy.as_secs_f64() / (slots as f64 * wall.as_secs_f64())
        } else {
            0.0
        };
        eprintln!(
            "jsrun: {} jobs, {} failed, {:.3}s wall, peak {} of {} slots, {} tokens acquired, \
             {:.3}s waiting for tokens (longest {:.3}s), slot utilisation {:.0}%",
            s.jobs,
            s.failed,
            wall.as_secs_f64(),
            s.peak,
            slots,
            s.tokens,
            s.token_wait.as_secs_f64(),
            s.longest_token_wait.as_secs_f64(),
            utilisation,
        );
    }
}
