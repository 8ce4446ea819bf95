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
    /// The budget of slots since when, if known; SIGUSR1/SIGUSR2 change it.
    size: Option<(usize, Instant)>,
    /// Slot-time of the budget before `size`'s instant, for slot utilisation.
    capacity: Duration,
    /// How the last job ended: with one command, what the command did.
    last: Option<Ended>,
}

/// How a job ended, for the one command's `--stats` line.
struct Ended {
    status: Status,
    signal: Option<Signal>,
    runtime: Duration,
    started: bool,
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
            size: None,
            capacity: Duration::ZERO,
            last: None,
        })
    }

    /// The budget of slots from now on (`None`: unknown, the peak stands in for it).
    pub fn sized(&mut self, slots: Option<usize>) {
        self.sized_at(slots, Instant::now());
    }

    fn sized_at(&mut self, slots: Option<usize>, now: Instant) {
        if let Some((n, since)) = self.size {
            self.capacity += now.saturating_duration_since(since) * n as u32;
        }
        self.size = slots.map(|n| (n, now));
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
        self.last = Some(Ended {
            status: done.status,
            signal: done.signal,
            runtime,
            started: done.started.0 != done.ended.0,
        });
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

    /// The `--stats` summary of jsrun's jobs: one line on stderr. Slot utilisation is
    /// the jobs' busy time over the slot-time of the budget as SIGUSR1/SIGUSR2 changed it
    /// (the peak's, when the budget is unknown); "of N slots" is the budget at exit.
    pub fn print_stats(&self) {
        let s = &self.stats;
        let now = Instant::now();
        let wall = now.saturating_duration_since(self.start);
        let (slots, utilisation) = self.utilisation(now);
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

    /// The budget at `now` and the share of its slot-time the jobs used, in percent.
    fn utilisation(&self, now: Instant) -> (usize, f64) {
        let s = &self.stats;
        let (slots, capacity) = match self.size {
            Some((n, since)) => {
                let spell = now.saturating_duration_since(since);
                (n, self.capacity + spell * n as u32)
            }
            None => (
                s.peak,
                now.saturating_duration_since(self.start) * s.peak as u32,
            ),
        };
        // Jobs that run on after SIGUSR2 shrank the budget run over it: their time counts
        // as the budget used in full, not as more than all of it.
        let share = match capacity.is_zero() {
            true => 0.0,
            false => (100.0 * s.busy.as_secs_f64() / capacity.as_secs_f64()).min(100.0),
        };
        (slots, share)
    }

    /// The `--stats` line of one command in a pool of jsrun's own, whose pool line is the
    /// summary: what the command did, e.g. `jsrun: make exited 0 after 52.312s`.
    pub fn print_command(&self, name: &str) {
        let Some(ended) = &self.last else {
            crate::say!("jsrun: {name} did not run");
            return;
        };
        let after = ended.runtime.as_secs_f64();
        match (ended.signal, ended.started) {
            (Some(signal), _) => {
                crate::say!(
                    "jsrun: {name} was killed by {} after {after:.3}s",
                    signal.as_str()
                );
            }
            (None, false) => crate::say!(
                "jsrun: {name} could not be started (exit {})",
                ended.status.code()
            ),
            (None, true) => crate::say!(
                "jsrun: {name} exited {} after {after:.3}s",
                ended.status.code()
            ),
        }
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
    fn utilisation_counts_the_slots_there_were_as_the_size_changed() {
        let mut report = Report::new(&Sinks::default()).unwrap();
        let t0 = report.start;
        let s = Duration::from_secs;
        report.sized_at(Some(2), t0);
        // 2 slots for 1 s, 4 for 2 s, then 1 for 1 s: 11 slot-seconds, 4 s of wall.
        report.sized_at(Some(4), t0 + s(1));
        report.sized_at(Some(1), t0 + s(3));
        report.stats.busy = s(11) / 2;
        report.stats.peak = 4;
        assert_eq!(report.utilisation(t0 + s(4)), (1, 50.0));
        // Unknown size: the peak stands in for it over the whole run.
        report.sized_at(None, t0 + s(4));
        assert_eq!(report.utilisation(t0 + s(4)), (4, 100.0 * 5.5 / 16.0));
        // 4 jobs busy throughout, shrunk to 3 for the last second: they ran on over it.
        let mut report = Report::new(&Sinks::default()).unwrap();
        let t0 = report.start;
        report.sized_at(Some(4), t0);
        report.sized_at(Some(3), t0 + s(3));
        report.stats.busy = s(16);
        assert_eq!(report.utilisation(t0 + s(4)), (3, 100.0));
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string(r#"echo "a\b""#), r#""echo \"a\\b\"""#);
        assert_eq!(json_string("tab\there"), r#""tab\u0009here""#);
    }
}
