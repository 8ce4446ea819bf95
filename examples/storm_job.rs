//! The job of the signal storm (tests/storm.rs): it records which signals it
//! receives and whether a marker file existed when it started.
//!
//! ```text
//! storm_job --log FILE --id ID [--marker FILE --handled FILE] [--sleep-ms MS]
//! storm_job --version                        (as a fake `make`, see below)
//! storm_job --exec-ignoring-sigchld PROGRAM [ARG]...
//! ```
//!
//! As a job, in this order: handlers for SIGINT, SIGTERM and SIGHUP are
//! installed; the marker is looked for; `start ID PID SAW AUTH` is logged
//! (SAW 1 if the marker existed, AUTH the last `--jobserver-auth=` value of
//! MAKEFLAGS or `-`); a line goes to stdout and one to stderr. A job that saw
//! the marker then waits until the `--handled` file exists (at most 30 s,
//! then it logs `timeout ID PID` and exits 3); one that did not sleeps
//! `--sleep-ms`. At the end it logs `end ID PID` and exits 0. A signal logs
//! `sig ID PID SIGNO` from the handler, in one write, and the job then dies
//! of that signal.
//!
//! `--version` answers like GNU make (`$STORM_MAKE_VERSION`, default
//! `GNU Make 4.4.1`), so that a symlink named `make` to this program is
//! asked for its version by jsrun. With `$STORM_VERSION_GATE` set to a
//! directory it first creates `asked` there and waits (at most 30 s) until
//! `release` exists.
//!
//! `--exec-ignoring-sigchld` sets SIGCHLD to SIG_IGN and executes the rest
//! of the command line, which then starts with that disposition inherited.

mod common;

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Args, fail};

/// How long a job or the fake make waits for a file the test creates.
const WAIT: Duration = Duration::from_secs(30);

/// The signals a job records.
const RECORDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The log, open for appending; read by the signal handler.
static LOG_FD: AtomicI32 = AtomicI32::new(-1);
/// The `sig` line for each recorded signal, built before the handlers are
/// installed so the handler only writes.
static SIG_LINES: OnceLock<Vec<(libc::c_int, Vec<u8>)>> = OnceLock::new();

fn main() {
    let first = std::env::args().nth(1).unwrap_or_default();
    match first.as_str() {
        "--version" => fake_make_version(),
        "--exec-ignoring-sigchld" => exec_ignoring_sigchld(),
        _ => job(),
    }
}

fn job() {
    let mut log = None;
    let mut id = String::from("-");
    let mut marker = None;
    let mut handled = None;
    let mut sleep_ms = 0u64;
    let mut args = Args::new();
    while let Some(option) = args.next_option() {
        match option.as_str() {
            "--log" => log = Some(PathBuf::from(args.value(&option))),
            "--id" => id = args.value(&option),
            "--marker" => marker = Some(PathBuf::from(args.value(&option))),
            "--handled" => handled = Some(PathBuf::from(args.value(&option))),
            "--sleep-ms" => sleep_ms = args.number(&option),
            _ => fail(&format!("unknown argument {option:?}")),
        }
    }
    let log = log.unwrap_or_else(|| fail("--log is required"));
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .unwrap_or_else(|err| fail(&format!("cannot open log {}: {err}", log.display())));
    LOG_FD.store(file.into_raw_fd(), Ordering::SeqCst);
    let pid = std::process::id();
    let lines = RECORDED
        .iter()
        .map(|&sig| (sig, format!("sig {id} {pid} {sig}\n").into_bytes()))
        .collect();
    let _ = SIG_LINES.set(lines);
    for sig in RECORDED {
        install_handler(sig);
    }

    let saw = marker.as_deref().is_some_and(Path::exists);
    let auth = std::env::var("MAKEFLAGS")
        .ok()
        .and_then(|flags| {
            flags
                .split_whitespace()
                .filter_map(|word| word.strip_prefix("--jobserver-auth="))
                .next_back()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "-".to_owned());
    log_line(&format!("start {id} {pid} {} {auth}\n", u8::from(saw)));
    // A closed or full pipe must not stop the job: the output is only there
    // to give -O and --tag something to carry.
    let _ = writeln!(std::io::stdout(), "out {id}");
    let _ = writeln!(std::io::stderr(), "err {id}");

    match (saw, &handled) {
        (true, Some(handled)) => {
            if !wait_for(handled) {
                log_line(&format!("timeout {id} {pid}\n"));
                std::process::exit(3);
            }
        }
        _ => thread::sleep(Duration::from_millis(sleep_ms)),
    }
    log_line(&format!("end {id} {pid}\n"));
}

/// Appends `line` to the log in one write (O_APPEND: lines never interleave).
fn log_line(line: &str) {
    let fd = LOG_FD.load(Ordering::SeqCst);
    // SAFETY: fd is the log, open for the life of the process; the buffer is
    // valid for its length.
    let n = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    if n != line.len() as isize {
        fail(&format!(
            "cannot write the log: {}",
            std::io::Error::last_os_error()
        ));
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = LOG_FD.load(Ordering::SeqCst);
    if let Some(lines) = SIG_LINES.get() {
        for (recorded, line) in lines {
            if *recorded == sig {
                // SAFETY: write is async-signal-safe; the line lives in a
                // static that is never changed after it is set.
                unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
            }
        }
    }
    // SAFETY: signal and raise are async-signal-safe. The signal is blocked
    // while its handler runs, so the raised one is delivered, at its default
    // action (death), when the handler returns.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn install_handler(sig: libc::c_int) {
    // SAFETY: an all-zero sigaction is a valid value to fill in; the handler
    // only does async-signal-safe work.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        fail(&format!(
            "sigaction({sig}): {}",
            std::io::Error::last_os_error()
        ));
    }
}

/// Waits until `path` exists, at most [`WAIT`].
fn wait_for(path: &Path) -> bool {
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        if path.exists() {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    false
}

fn fake_make_version() {
    if let Some(gate) = std::env::var_os("STORM_VERSION_GATE") {
        let gate = PathBuf::from(gate);
        std::fs::write(gate.join("asked"), b"")
            .unwrap_or_else(|err| fail(&format!("cannot write {}: {err}", gate.display())));
        if !wait_for(&gate.join("release")) {
            fail("the version gate was never released");
        }
    }
    let version =
        std::env::var("STORM_MAKE_VERSION").unwrap_or_else(|_| "GNU Make 4.4.1".to_owned());
    let _ = writeln!(std::io::stdout(), "{version}");
}

fn exec_ignoring_sigchld() {
    let argv: Vec<CString> = std::env::args()
        .skip(2)
        .map(|arg| CString::new(arg).unwrap_or_else(|_| fail("NUL in an argument")))
        .collect();
    if argv.is_empty() {
        fail("--exec-ignoring-sigchld needs a command");
    }
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: SIG_IGN is a valid disposition; argv is a NULL-terminated array
    // of pointers to NUL-terminated strings that outlive the call.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        libc::execvp(pointers[0], pointers.as_ptr());
    }
    fail(&format!(
        "cannot execute {:?}: {}",
        argv[0],
        std::io::Error::last_os_error()
    ));
}
