//! Pieces shared by the test helper programs: the start/end log and the barrier.

#![allow(dead_code)] // each helper program uses a different part

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the epoch; every process on the machine shares this clock.
pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_nanos()
}

/// Appends `EVENT ID NANOS PID` to `log` in one write on an O_APPEND file,
/// so lines of concurrent jobs never interleave.
pub fn log_event(log: &Path, event: &str, id: &str) {
    let line = format!("{event} {id} {} {}\n", now_nanos(), std::process::id());
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap_or_else(|err| fail(&format!("cannot open log {}: {err}", log.display())));
    file.write_all(line.as_bytes())
        .unwrap_or_else(|err| fail(&format!("cannot write log {}: {err}", log.display())));
}

/// Leaves a marker `dir/id`, then waits until `dir` holds at least `want`
/// markers or the deadline passes. Never hangs: after the deadline it goes
/// on, and the test fails by measurement instead.
pub fn barrier(dir: &Path, id: &str, want: usize, deadline: Duration) {
    fs::create_dir_all(dir)
        .unwrap_or_else(|err| fail(&format!("cannot create {}: {err}", dir.display())));
    fs::write(dir.join(id), b"")
        .unwrap_or_else(|err| fail(&format!("cannot write marker in {}: {err}", dir.display())));
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        let present = fs::read_dir(dir).map_or(0, std::iter::Iterator::count);
        if present >= want {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "barrier {}: {id} gave up waiting for {want} markers",
        dir.display()
    );
}

/// Prints the message and exits with status 99, which no test expects.
pub fn fail(message: &str) -> ! {
    eprintln!("{}: {message}", program());
    std::process::exit(99)
}

fn program() -> String {
    std::env::args()
        .next()
        .and_then(|arg0| {
            Path::new(&arg0)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

/// A minimal `--name value` argument reader: test helpers need no more.
pub struct Args {
    args: std::iter::Peekable<std::vec::IntoIter<String>>,
}

impl Args {
    pub fn new() -> Args {
        Args {
            args: std::env::args()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .peekable(),
        }
    }

    /// The next option name, or `None` at the end or at `--`.
    pub fn next_option(&mut self) -> Option<String> {
        match self.args.next() {
            Some(arg) if arg == "--" => None,
            Some(arg) => Some(arg),
            None => None,
        }
    }

    pub fn value(&mut self, option: &str) -> String {
        self.args
            .next()
            .unwrap_or_else(|| fail(&format!("{option} needs a value")))
    }

    pub fn number<T: std::str::FromStr>(&mut self, option: &str) -> T {
        let value = self.value(option);
        value
            .parse()
            .unwrap_or_else(|_| fail(&format!("{option}: not a number: {value:?}")))
    }

    /// Whatever follows `--`.
    pub fn rest(self) -> Vec<String> {
        self.args.collect()
    }
}
