//! What happened: `--joblog` rows, `--trace` spans, the `--progress` line and the
//! `--stats` summary.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use nix::sys::signal::Signal;

use crate::jobs::Job;
use crate::status::Status;

/// A job that ended (or never started: `started` equals `ended`).
pub struct Finished<'a> {
    pub job: &'a Job,
    /// When it started and ended, on the monotonic clock (for durations and the trace)
    /// and on the wall clock (for the job log).
    pub started: (Instant, SystemTime),
    pub ended: (Instant, SystemTime),
    pub status: Status,
    pub signal: Option<Signal>,
}

impl Finished<'_> {
    pub fn runtime(&self) -> Duration {
        self.ended.0.saturating_duration_since(self.started.0)
    }
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
    /// Jobs the OOM killer killed that ran again.
    pub oom_reruns: u64,
}

pub struct Report {
    joblog: Option<BufWriter<File>>,
    trace: Option<Trace>,
    progress: Option<Progress>,
    stats: Stats,
    start: Instant,
}

/// Where reports go; `None` for the ones not asked for.
#[derive(Default)]
pub struct Sinks<'a> {
    pub joblog: Option<&'a Path>,
    pub trace: Option<&'a Path>,
    /// `--progress`: shown only when stderr is a terminal.
    pub progress: bool,
    /// The number of jobs, when known in advance.
    pub total: Option<usize>,
}

impl Report {
    pub fn new(sinks: &Sinks<'_>) -> Result<Report> {
        let joblog = sinks.joblog;
        let joblog = match joblog {
            Some(path) => {
                let failed = |what, e: io::Error| file_error(what, "job log", "--joblog", path, &e);
                let file = File::create(path).map_err(|e| failed("create", e))?;
                let mut log = BufWriter::new(file);
                writeln!(
                    log,
                    "Seq\tSlot\tStarttime\tJobRuntime\tExitval\tSignal\tCommand"
                )
                .and_then(|()| log.flush())
                .map_err(|e| failed("write", e))?;
                Some(log)
            }
            None => None,
        };
        let start = Instant::now();
        let trace = match sinks.trace {
            Some(path) => Some(Trace::create(path)?),
            None => None,
        };
        let progress = (sinks.progress && std::io::stderr().is_terminal()).then_some(Progress {
            total: sinks.total,
            running: 0,
        });
        Ok(Report {
            joblog,
            trace,
            progress,
            stats: Stats::default(),
            start,
        })
    }

    pub fn started(&mut self, running: usize) {
        self.stats.peak = self.stats.peak.max(running);
        if let Some(progress) = &mut self.progress {
            progress.running = running;
            progress.draw(&self.stats);
        }
    }

    /// A token was read after waiting since `since` (`None`: it was there at once).
    pub fn token_acquired(&mut self, since: Option<Instant>) {
        self.stats.tokens += 1;
        self.waited(since);
    }

    /// A job waited for a token since `since` and got a slot (a token, or the implicit
    /// slot that came free first): the wait is booked either way.
    pub fn waited(&mut self, since: Option<Instant>) {
        let waited = since.map_or(Duration::ZERO, |t| t.elapsed());
        self.stats.token_wait += waited;
        self.stats.longest_token_wait = self.stats.longest_token_wait.max(waited);
        if let (Some(trace), Some(since)) = (&mut self.trace, since) {
            trace.span("waiting for a token", 0, since, waited, "");
        }
    }

    pub fn finished(&mut self, done: &Finished<'_>, running: usize) {
        let runtime = done.runtime();
        if let Some(trace) = &mut self.trace {
            let args = format!(
                r#","args":{{"seq":{},"exit":{}}}"#,
                done.job.seq,
                done.status.code()
            );
            trace.span(
                &done.job.display(),
                done.job.slot,
                done.started.0,
                runtime,
                &args,
            );
        }
        if let Some(progress) = &mut self.progress {
            progress.running = running;
        }
        self.stats.jobs += 1;
        self.stats.busy += runtime;
        if !done.status.success() {
            self.stats.failed += 1;
        }
        if let Some(log) = &mut self.joblog {
            // Both ends on the wall clock, in whole µs rounded down: a job that starts
            // after another ended never seems to overlap it.
            let micros = |t: SystemTime| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_micros()
            };
            let (start, end) = (micros(done.started.1), micros(done.ended.1));
            let runtime = end.saturating_sub(start);
            // GNU parallel's Exitval: 0 for a job killed by a signal (the Signal column).
            let exitval = match (done.status, done.signal) {
                (Status::Code(code), None) => code,
                _ => 0,
            };
            let row = writeln!(
                log,
                "{}\t{}\t{}.{:06}\t{}.{:06}\t{}\t{}\t{}",
                done.job.seq,
                done.job.slot,
                start / 1_000_000,
                start % 1_000_000,
                runtime / 1_000_000,
                runtime % 1_000_000,
                exitval,
                done.signal.map_or(0, |s| s as i32),
                done.job.display().replace(['\t', '\n'], " "),
            );
            // One row at a time on disk, so the log is useful while jobs still run.
            if row.and_then(|()| log.flush()).is_err() {
                crate::say!("jsrun: warning: cannot write the job log; it stops here");
                self.joblog = None;
            }
        }
        if let Some(progress) = &self.progress {
            progress.draw(&self.stats);
        }
    }

    /// A job the OOM killer killed runs again.
    pub fn oom_rerun(&mut self) {
        self.stats.oom_reruns += 1;
    }

    /// A counter track of the trace (`slots in use`, `held back`) takes `value` now.
    pub fn counter(&mut self, name: &str, value: usize) {
        if let Some(trace) = &mut self.trace {
            trace.counter(name, Instant::now(), value);
        }
    }

    /// Ends the trace file and the progress line.
    pub fn close(&mut self) {
        if let Some(trace) = self.trace.take()
            && let Err(e) = trace.close()
        {
            crate::say!("jsrun: warning: cannot write the trace file: {e}");
        }
        if self.progress.take().is_some() {
            crate::say::stderr(format_args!("\r\x1b[K"));
        }
    }

    /// The pool line of `--stats` for a pool of jsrun's own: how the whole tree used it.
    /// `paused`: the memory guard ran, and how it paused jobs.
    pub fn print_pool(
        &self,
        slots: usize,
        view: &crate::govern::View,
        paused: Option<crate::steer::PauseView>,
    ) {
        let wall = self.start.elapsed().as_secs_f64();
        let share = |d: Duration| match wall > 0.0 {
            true => 100.0 * d.as_secs_f64() / wall,
            false => 0.0,
        };
        let mean = match wall > 0.0 {
            true => view.busy.as_secs_f64() / wall,
            false => 0.0,
        };
        let held = match view.held_peak {
            0 => "nothing held back".to_owned(),
            n => format!(
                "held back up to {n} for {:.1}s",
                view.held_time.as_secs_f64()
            ),
        };
        let paused = match paused {
            None => String::new(),
            Some(p) if p.most == 0 => ", nothing paused".to_owned(),
            Some(p) => format!(
                ", paused up to {} jobs for {:.1}s",
                p.most,
                p.time.as_secs_f64()
            ),
        };
        crate::say!(
            "jsrun: pool: {slots} slots, peak {} in use, mean {mean:.1}, all busy {:.0}% of \
             {wall:.1}s, {held}{paused}",
            view.peak,
            share(view.all_busy),
        );
    }

    /// The `--stats` summary: one line on stderr.
    /// `slots`: the budget, `None` when unknown (then the peak stands in for it).
    pub fn print_stats(&self, slots: Option<usize>) {
        let s = &self.stats;
        let slots = slots.unwrap_or(s.peak);
        let wall = self.start.elapsed();
        let utilisation = if slots > 0 && !wall.is_zero() {
            100.0 * s.busy.as_secs_f64() / (slots as f64 * wall.as_secs_f64())
        } else {
            0.0
        };
        // Said only when it happened: the line stays as it was otherwise.
        let reruns = match s.oom_reruns {
            0 => String::new(),
            n => format!(", {n} run again after the OOM killer killed them"),
        };
        crate::say!(
            "jsrun: {} jobs, {} failed, {:.3}s wall, peak {} of {} slots, {} tokens acquired, \
             {:.3}s waiting for tokens (longest {:.3}s), slot utilisation {:.0}%{reruns}",
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

/// A report file that cannot be created or written, named with the option that gave it.
/// The error keeps its kind: a closed pipe still ends jsrun quietly.
fn file_error(what: &str, file: &str, option: &str, path: &Path, e: &io::Error) -> io::Error {
    let message = format!(
        "cannot {what} the {file} {}: {e}; give {option} a file jsrun can write",
        path.display()
    );
    io::Error::new(e.kind(), message)
}

/// `--trace`: Chrome trace-event JSON (Perfetto, chrome://tracing), written as jobs end:
/// one row per slot with a span per job, and a row of token waits.
///
/// Events carry jsrun's real pid and microseconds of CLOCK_MONOTONIC, a clock every
/// process on the machine shares: the traces of several jsruns in one build line up when
/// their event arrays are put into one file.
struct Trace {
    out: BufWriter<File>,
    /// An instant and the same moment in µs of CLOCK_MONOTONIC.
    origin: (Instant, u128),
    pid: u32,
    rows: Vec<usize>,
}

impl Trace {
    fn create(path: &Path) -> Result<Trace> {
        let failed = |what, e: io::Error| file_error(what, "trace file", "--trace", path, &e);
        let file = File::create(path).map_err(|e| failed("create", e))?;
        let mut out = BufWriter::new(file);
        let pid = std::process::id();
        let written = write!(
            out,
            "{{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n\
             {{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":{pid},\"args\":{{\"name\":\"jsrun {pid}\"}}}},\n\
             {{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":{pid},\"tid\":0,\"args\":{{\"name\":\"token waits\"}}}}"
        );
        // Flushed now, so that a file that cannot be written is said before any job runs.
        written
            .and_then(|()| out.flush())
            .map_err(|e| failed("write", e))?;
        Ok(Trace {
            out,
            origin: (Instant::now(), crate::sys::monotonic().as_micros()),
            pid,
            rows: vec![0],
        })
    }

    /// A complete event on row `tid`; `args` is empty or a `,"args":{...}` member.
    fn span(&mut self, name: &str, tid: usize, from: Instant, length: Duration, args: &str) {
        let pid = self.pid;
        if !self.rows.contains(&tid) {
            self.rows.push(tid);
            let _ = write!(
                self.out,
                ",\n{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":{pid},\"tid\":{tid},\
                 \"args\":{{\"name\":\"slot {tid}\"}}}}"
            );
        }
        let ts = self.ts(from);
        let _ = write!(
            self.out,
            ",\n{{\"name\":{},\"ph\":\"X\",\"pid\":{pid},\"tid\":{tid},\"ts\":{ts},\"dur\":{}{args}}}",
            json_string(name),
            length.as_micros(),
        );
    }

    /// A counter event: the track `name` has `value` from `at` on.
    fn counter(&mut self, name: &str, at: Instant, value: usize) {
        let ts = self.ts(at);
        let _ = write!(
            self.out,
            ",\n{{\"name\":{name},\"ph\":\"C\",\"pid\":{},\"ts\":{ts},\"args\":{{{name}:{value}}}}}",
            self.pid,
            name = json_string(name),
        );
    }

    /// µs of CLOCK_MONOTONIC at `at`.
    fn ts(&self, at: Instant) -> u128 {
        let (origin, origin_us) = self.origin;
        match at.checked_duration_since(origin) {
            Some(after) => origin_us + after.as_micros(),
            None => origin_us.saturating_sub(origin.duration_since(at).as_micros()),
        }
    }

    fn close(mut self) -> std::io::Result<()> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `--progress`: one line on a terminal, redrawn as jobs start and end.
struct Progress {
    total: Option<usize>,
    running: usize,
}

impl Progress {
    fn draw(&self, stats: &Stats) {
        let total = self.total.map_or(String::new(), |t| format!("/{t}"));
        crate::say::stderr(format_args!(
            "\r\x1b[Kjsrun: {}{total} done, {} failed, {} running",
            stats.jobs, stats.failed, self.running
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string(r#"echo "a\b""#), r#""echo \"a\\b\"""#);
        assert_eq!(json_string("tab\there"), r#""tab\u0009here""#);
    }
}
