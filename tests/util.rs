//! The harness every integration test shares (`mod util;`).
//!
//! - [`Sandbox`]: a temporary directory per test, and commands (jsrun, peers,
//!   helper programs) that run in it with no inherited jobserver variables.
//! - [`Running`] and [`Output`]: every wait has a deadline; on failure the
//!   panic shows command, status, stdout and stderr.
//! - [`Probe`] and [`Log`]: jobs record `start`/`end` lines, the test
//!   computes from them how many ran at once.
//! - [`FifoJobserver`] and [`PipeJobserver`]: a pool the test owns, counted
//!   and compared byte for byte after the run.
//! - Real peers: [`make44`], [`make43`], [`ninja`]; a missing one fails the
//!   test (run `scripts/test`, which installs them).

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long any one command may run before the test kills it and fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How long a probe waits at a barrier before giving up (and letting the
/// measurement fail the test).
pub const BARRIER_DEADLINE_MS: u64 = 10_000;

/// Variables through which a jobserver could leak from whatever runs the
/// tests (`cargo test` itself may run under `make -j`).
const JOBSERVER_VARIABLES: [&str; 6] = [
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_MAKEFLAGS",
    "GNUMAKEFLAGS",
    "MAKELEVEL",
    "MAKEFILES",
];

// ---------------------------------------------------------------------------
// Binaries

/// The jsrun binary under test.
pub fn jsrun_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jsrun"))
}

/// A helper program from `examples/`, built by `cargo test` next to the test
/// binaries: `target/debug/deps/<test>` → `target/debug/examples/<name>`.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "helper program {} missing: build it with `cargo build --examples` (scripts/test does)",
        path.display()
    );
    path
}

pub fn probe_bin() -> PathBuf {
    example("probe")
}

/// GNU make 4.4.1 (fifo jobserver by default).
pub fn make44() -> PathBuf {
    peer("make 4.4.1", "JSRUN_MAKE44", ".peers/venv/bin/make")
}

/// GNU make 4.3 (pipe jobserver only).
pub fn make43() -> PathBuf {
    peer("make 4.3", "JSRUN_MAKE43", "/usr/bin/make")
}

/// ninja 1.13.2 (jobserver client).
pub fn ninja() -> PathBuf {
    peer("ninja 1.13.2", "JSRUN_NINJA", ".peers/venv/bin/ninja")
}

/// A PATH whose `make` is make 4.4.1, as on a current distribution. jsrun
/// chooses the style of the pool it creates from the make on PATH (pipe for
/// make < 4.4, which Debian 12's /usr/bin/make is); with this PATH the tests
/// see the fifo default. Tests of the pipe default set PATH themselves.
/// The XDG_RUNTIME_DIR of the commands the tests start, where jsrun remembers make
/// versions: one for the whole suite, not the user's own.
fn runtime_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-runtime");
        fs::create_dir_all(&dir).expect("create the XDG_RUNTIME_DIR of the tests");
        dir
    })
}

fn path_with_make44() -> OsString {
    static PATH: std::sync::OnceLock<OsString> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("make44-on-path");
        let link = dir.join("make");
        if fs::read_link(&link).ok() != Some(make44()) {
            fs::create_dir_all(&dir).expect("create the make44-on-path directory");
            // Another test binary may be doing the same: a fresh name, renamed into place.
            let tmp = dir.join(format!("make.{}", std::process::id()));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(make44(), &tmp).expect("symlink make 4.4.1");
            fs::rename(&tmp, &link).expect("put make 4.4.1 on the PATH");
        }
        let mut path = dir.into_os_string();
        if let Some(rest) = std::env::var_os("PATH") {
            path.push(":");
            path.push(rest);
        }
        path
    })
    .clone()
}

fn peer(name: &str, variable: &str, fallback: &str) -> PathBuf {
    let path = match std::env::var_os(variable) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(fallback),
    };
    let executable = fs::metadata(&path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
    assert!(
        executable,
        "peer {name} missing at {}: run scripts/test (it installs the peers and sets {variable})",
        path.display()
    );
    path
}

/// `machine_cannot`: one source for the unit tests and these (another crate).
#[path = "../src/testing.rs"]
mod testing;
pub use testing::machine_cannot;

// ---------------------------------------------------------------------------
// Sandbox and commands

/// A temporary directory for one test, removed when the test ends.
pub struct Sandbox {
    dir: tempfile::TempDir,
    commands: Cell<u32>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("jsrun-test.")
            .tempdir()
            .expect("create a temporary directory");
        Sandbox {
            dir,
            commands: Cell::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `join` as a `String`, for command lines and Makefiles.
    pub fn str(&self, name: impl AsRef<Path>) -> String {
        self.join(name).to_str().expect("UTF-8 path").to_owned()
    }

    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        fs::write(&path, contents).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
        path
    }

    /// A Makefile with a phony target per id, each a probe that meets `meet` others at a
    /// barrier and sleeps `sleep_ms`: make's peak concurrency shows in the log.
    pub fn probe_makefile(&self, ids: &[String], meet: usize, sleep_ms: u64) -> PathBuf {
        let mut text = format!(".PHONY: all {0}\nall: {0}\n", ids.join(" "));
        for id in ids {
            let probe = self
                .probe()
                .id(id)
                .barrier(&self.join("barrier"), meet)
                .sleep_ms(sleep_ms);
            text.push_str(&format!("{id}:\n\t{}\n", probe.shell()));
        }
        self.write("Makefile", text)
    }

    /// examples/crate_client under `makeflags`: `jobs` jobs (ids c1..), each meeting
    /// `want` at the barrier and sleeping 100 ms, logged to this sandbox's log.
    pub fn crate_client(&self, makeflags: &str, jobs: usize, want: usize) -> Cmd {
        self.command(example("crate_client"))
            .env("MAKEFLAGS", makeflags)
            .args(["--jobs", &jobs.to_string(), "--id-prefix", "c"])
            .arg("--out")
            .arg(self.join("crate.out"))
            .arg("--log")
            .arg(self.log().path())
            .arg("--barrier")
            .arg(self.join("barrier"))
            .args(["--want", &want.to_string(), "--sleep-ms", "100"])
    }

    /// The default job log of this sandbox.
    pub fn log(&self) -> Log {
        Log::new(self.join("log"))
    }

    /// jsrun, run in the sandbox.
    pub fn jsrun(&self) -> Cmd {
        self.command(jsrun_bin())
    }

    /// Any program, run in the sandbox with no jobserver in its environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Cmd {
        let n = self.commands.get() + 1;
        self.commands.set(n);
        let mut cmd = Command::new(program);
        cmd.current_dir(self.path());
        for variable in JOBSERVER_VARIABLES {
            cmd.env_remove(variable);
        }
        cmd.env("PATH", path_with_make44());
        cmd.env("XDG_RUNTIME_DIR", runtime_dir());
        Cmd {
            cmd,
            stdin: Input::Null,
            inherit: Vec::new(),
            files: self.join(format!(".cmd{n}")),
            deadline: DEADLINE,
        }
    }

    /// A probe job writing to this sandbox's log.
    pub fn probe(&self) -> Probe {
        Probe::new(&self.log())
    }
}

enum Input {
    Null,
    Bytes(Vec<u8>),
    Pipe,
}

/// A command to run with a deadline. Output goes to files in the sandbox,
/// so nothing can block on a full pipe or on a grandchild holding one open.
pub struct Cmd {
    cmd: Command,
    stdin: Input,
    inherit: Vec<RawFd>,
    files: PathBuf,
    deadline: Duration,
}

impl Cmd {
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Feeds these bytes on standard input (default: /dev/null).
    pub fn stdin(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.stdin = Input::Bytes(bytes.as_ref().to_vec());
        self
    }

    /// Standard input is a pipe the test writes to ([`Running::take_stdin`]).
    pub fn stdin_pipe(mut self) -> Self {
        self.stdin = Input::Pipe;
        self
    }

    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Leaves these descriptors open (not close-on-exec) in the child.
    pub fn inherit_fds(mut self, fds: &[RawFd]) -> Self {
        self.inherit.extend_from_slice(fds);
        self
    }

    /// Runs under the test's fifo jobserver.
    pub fn fifo_jobserver(self, jobserver: &FifoJobserver) -> Self {
        self.env("MAKEFLAGS", jobserver.makeflags())
    }

    /// Runs under the test's pipe jobserver, its fds inherited.
    pub fn pipe_jobserver(self, jobserver: &PipeJobserver) -> Self {
        let fds = jobserver.fds();
        self.env("MAKEFLAGS", jobserver.makeflags())
            .inherit_fds(&fds)
    }

    pub fn spawn(mut self) -> Running {
        let stdout = self.files.with_extension("stdout");
        let stderr = self.files.with_extension("stderr");
        let stdin = match &self.stdin {
            Input::Bytes(bytes) => {
                let path = self.files.with_extension("stdin");
                fs::write(&path, bytes).expect("write stdin file");
                Stdio::from(File::open(&path).expect("open stdin file"))
            }
            Input::Pipe => Stdio::piped(),
            Input::Null => Stdio::null(),
        };
        self.cmd
            .stdin(stdin)
            .stdout(File::create(&stdout).expect("create stdout file"))
            .stderr(File::create(&stderr).expect("create stderr file"))
            // Own process group: a timeout kills the command and all it started.
            .process_group(0);
        let fds = self.inherit.clone();
        // SAFETY: between fork and exec only sigaction, sigprocmask,
        // close_range and fcntl are called, all async-signal-safe; nothing
        // is allocated.
        unsafe {
            self.cmd.pre_exec(move || {
                reset_signals();
                close_inherited_fds();
                for &fd in &fds {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let description = describe_command(&self.cmd);
        let child = self
            .cmd
            .spawn()
            .unwrap_or_else(|err| panic!("cannot spawn {description}: {err}"));
        Running {
            child: Some(child),
            description,
            stdout,
            stderr,
            deadline: Instant::now() + self.deadline,
        }
    }

    /// Spawns and waits (with the deadline).
    pub fn run(self) -> Output {
        self.spawn().wait()
    }
}

/// Makes `cmd` start with every signal at its default disposition and none
/// blocked, as [`Cmd`] does: for the few tests that build a
/// `std::process::Command` of their own.
pub fn default_signals(cmd: &mut Command) -> &mut Command {
    // SAFETY: between fork and exec only sigaction and sigprocmask are
    // called, both async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            reset_signals();
            Ok(())
        })
    }
}

/// Every signal at its default disposition and none blocked, so the command
/// starts the same whether the tests run from a terminal, in the background
/// of a shell (SIGINT ignored) or under CI.
///
/// # Safety
/// Only for a freshly forked child: it changes process-wide signal state.
unsafe fn reset_signals() {
    for signal in 1..32 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: SIG_DFL is a valid disposition; signal() is sigaction.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
    // SAFETY: an all-zero sigset_t is the empty set, which is all we pass.
    unsafe {
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Marks every descriptor above stderr close-on-exec, so the command gets
/// only what the test gives it, not whatever the test runner inherited.
///
/// # Safety
/// Only for a freshly forked child.
unsafe fn close_inherited_fds() {
    // SAFETY: close_range only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        for fd in 3..1024 {
            // SAFETY: fcntl on a descriptor that may not exist just fails.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

fn describe_command(cmd: &Command) -> String {
    let mut text = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(text, "{}={:?} ", key.to_string_lossy(), value);
        }
    }
    let _ = write!(text, "{:?}", cmd.get_program());
    for arg in cmd.get_args() {
        let _ = write!(text, " {arg:?}");
    }
    if let Some(dir) = cmd.get_current_dir() {
        let _ = write!(text, "\n  in {}", dir.display());
    }
    text
}

/// A running command. Dropping it kills its process group.
pub struct Running {
    child: Option<Child>,
    description: String,
    stdout: PathBuf,
    stderr: PathBuf,
    deadline: Instant,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("still running").id() as i32
    }

    /// The writing end of standard input, for a command built with
    /// [`Cmd::stdin_pipe`]. Dropping it closes the command's input.
    pub fn take_stdin(&mut self) -> std::process::ChildStdin {
        self.child
            .as_mut()
            .and_then(|child| child.stdin.take())
            .expect("spawned with stdin_pipe() and not taken yet")
    }

    /// Sends `signal` to the command itself (not its group).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is our unreaped child,
        // so it cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(
            rc,
            0,
            "kill({}, {signal}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// CPU time (user + system) the command itself has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .unwrap_or_else(|err| panic!("read /proc/{}/stat: {err}", self.pid()));
        // Fields after the command name in parentheses; utime and stime are
        // fields 14 and 15 of the whole line.
        let rest = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a constant.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_nanos(ticks * 1_000_000_000 / per_second)
    }

    /// Voluntary context switches of all the command's threads so far:
    /// each is one wake-up after blocking. A process waiting in poll() for
    /// an event that does not come makes none; a sleep loop makes many.
    pub fn voluntary_switches(&self) -> u64 {
        let tasks = format!("/proc/{}/task", self.pid());
        fs::read_dir(&tasks)
            .unwrap_or_else(|err| panic!("list {tasks}: {err}"))
            .filter_map(|task| {
                let status = fs::read_to_string(task.ok()?.path().join("status")).ok()?;
                status.lines().find_map(|line| {
                    line.strip_prefix("voluntary_ctxt_switches:")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .sum()
    }

    /// Polls `condition` every few ms until it holds. Panics (with the
    /// command's output) at the deadline or if the command ends first.
    #[track_caller]
    pub fn wait_until(&mut self, what: &str, mut condition: impl FnMut() -> bool) {
        loop {
            if condition() {
                return;
            }
            let child = self.child.as_mut().expect("still running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                let output = self.collect(status);
                panic!(
                    "command ended while the test waited for {what}\n{}",
                    output.report()
                );
            }
            if Instant::now() > self.deadline {
                self.kill();
                panic!(
                    "timed out waiting for {what}\n{}",
                    self.collect_after_kill().report()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the command to end, at most until its deadline; then kills
    /// it and panics with everything known about it.
    #[track_caller]
    pub fn wait(mut self) -> Output {
        loop {
            let child = self.child.as_mut().expect("not waited yet");
            if let Some(status) = child.try_wait().expect("try_wait") {
                return self.collect(status);
            }
            if Instant::now() > self.deadline {
                self.kill();
                panic!("timed out\n{}", self.collect_after_kill().report());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory effects; the group is the one the
            // child leads (process_group(0)).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        }
    }

    fn collect_after_kill(&mut self) -> Output {
        let status = self
            .child
            .as_mut()
            .expect("not waited yet")
            .wait()
            .expect("wait after SIGKILL");
        self.collect(status)
    }

    fn collect(&mut self, status: ExitStatus) -> Output {
        self.child = None;
        Output {
            status,
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
            description: self.description.clone(),
        }
    }
}

impl Drop for Running {
    /// A test that ends without waiting (a skip, a failed assertion): SIGTERM to the
    /// group first, so that jsrun removes what it made (its fifo's directory, a mount)
    /// and no paused job stays stopped; SIGKILL if it has not ended within 5 s.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill has no memory effects; the group is the one the child leads
        // (process_group(0)).
        unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
        // Not reaped until the end: the zombie keeps the group's id from being used again.
        let ended = || {
            fs::read_to_string(format!("/proc/{}/stat", child.id()))
                .ok()
                .and_then(|s| Some(s[s.rfind(')')? + 2..].starts_with('Z')))
                .unwrap_or(true)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ended() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above; whatever of the group is left.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
    }
}

/// What a finished command left behind.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub description: String,
}

impl Output {
    pub fn report(&self) -> String {
        format!(
            "command: {}\nstatus: {:?}\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.description, self.status, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn success(&self) -> &Output {
        assert!(self.status.success(), "expected success\n{}", self.report());
        self
    }

    #[track_caller]
    pub fn code(&self, want: i32) -> &Output {
        assert_eq!(
            self.status.code(),
            Some(want),
            "expected exit status {want}\n{}",
            self.report()
        );
        self
    }

    #[track_caller]
    pub fn killed_by(&self, signal: i32) -> &Output {
        assert_eq!(
            self.status.signal(),
            Some(signal),
            "expected death by signal {signal}\n{}",
            self.report()
        );
        self
    }

    #[track_caller]
    pub fn stderr_contains(&self, text: &str) -> &Output {
        assert!(
            self.stderr.contains(text),
            "expected {text:?} on stderr\n{}",
            self.report()
        );
        self
    }

    #[track_caller]
    pub fn stderr_lacks(&self, text: &str) -> &Output {
        assert!(
            !self.stderr.contains(text),
            "unexpected {text:?} on stderr\n{}",
            self.report()
        );
        self
    }

    /// Lines of stdout, sorted (for output whose order is not the point).
    pub fn sorted_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.stdout.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }
}

/// Polls `condition` every few ms until it holds; panics after `DEADLINE`.
#[track_caller]
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// Probe jobs and their log

/// The command line of one probe job (see `examples/probe.rs`).
#[derive(Clone)]
pub struct Probe {
    words: Vec<String>,
}

impl Probe {
    pub fn new(log: &Log) -> Probe {
        Probe {
            words: vec![path_str(&probe_bin()), "--log".into(), path_str(log.path())],
        }
    }

    /// Any probe option, e.g. `with("--sleep-ms", "{}")`.
    #[allow(clippy::needless_pass_by_value)] // numbers and strings alike, as written
    pub fn with(mut self, option: &str, value: impl ToString) -> Probe {
        self.words.push(option.into());
        self.words.push(value.to_string());
        self
    }

    pub fn id(self, id: impl ToString) -> Probe {
        self.with("--id", id)
    }

    /// Waits until `want` jobs have reached `dir` (or the barrier deadline).
    pub fn barrier(self, dir: &Path, want: usize) -> Probe {
        self.with("--barrier", path_str(dir))
            .with("--want", want)
            .with("--deadline-ms", BARRIER_DEADLINE_MS)
    }

    /// A barrier with its own deadline.
    pub fn barrier_deadline(self, dir: &Path, want: usize, deadline_ms: u64) -> Probe {
        self.with("--barrier", path_str(dir))
            .with("--want", want)
            .with("--deadline-ms", deadline_ms)
    }

    pub fn sleep_ms(self, ms: u64) -> Probe {
        self.with("--sleep-ms", ms)
    }

    pub fn exit(self, code: i32) -> Probe {
        self.with("--exit", code)
    }

    /// Exits with the job's value: `--exit {}`.
    pub fn exit_value(self) -> Probe {
        self.with("--exit", "{}")
    }

    pub fn signal(self, signal: i32) -> Probe {
        self.with("--signal", signal)
    }

    pub fn env_out(self, path: &Path) -> Probe {
        self.with("--env-out", path_str(path))
    }

    pub fn print(self, text: &str) -> Probe {
        self.with("--print", text)
    }

    /// The words, for an argv.
    pub fn words(&self) -> Vec<String> {
        self.words.clone()
    }

    /// The words quoted for /bin/sh (Makefile recipes, ninja rules).
    pub fn shell(&self) -> String {
        shell_words(&self.words)
    }
}

/// Quotes words for /bin/sh (and for make and ninja, which pass them on).
pub fn shell_words<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|word| {
            let word = word.as_ref();
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-+=,:{}%#".contains(c))
            {
                word.to_owned()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn path_str(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").to_owned()
}

/// One line of a probe log.
#[derive(Clone, Debug)]
pub struct Event {
    pub start: bool,
    pub id: String,
    pub nanos: u128,
    pub pid: u32,
}

/// The start/end log that probes (and crate_client jobs) append to.
#[derive(Clone)]
pub struct Log {
    path: PathBuf,
}

impl Log {
    pub fn new(path: PathBuf) -> Log {
        Log { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn text(&self) -> String {
        match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
            Err(err) => panic!("read {}: {err}", self.path.display()),
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.text()
            .lines()
            .map(|line| {
                let words: Vec<&str> = line.split(' ').collect();
                assert!(
                    words.len() == 4 && (words[0] == "start" || words[0] == "end"),
                    "bad log line {line:?} in {}",
                    self.path.display()
                );
                Event {
                    start: words[0] == "start",
                    id: words[1].to_owned(),
                    nanos: words[2].parse().expect("nanos"),
                    pid: words[3].parse().expect("pid"),
                }
            })
            .collect()
    }

    /// Ids of jobs that started, sorted.
    pub fn started(&self) -> Vec<String> {
        self.ids(true)
    }

    /// Ids of jobs that finished, sorted.
    pub fn finished(&self) -> Vec<String> {
        self.ids(false)
    }

    fn ids(&self, start: bool) -> Vec<String> {
        let mut ids: Vec<String> = self
            .events()
            .into_iter()
            .filter(|event| event.start == start)
            .map(|event| event.id)
            .collect();
        ids.sort();
        ids
    }

    /// The largest number of jobs running at one instant. A job that never
    /// logged its end counts as running to the end of time; a job that ends
    /// at the very instant another starts does not overlap it.
    pub fn peak(&self) -> usize {
        peak_of(&self.events())
    }

    /// The log, for assertion messages.
    pub fn dump(&self) -> String {
        format!("--- log {} ---\n{}", self.path.display(), self.text())
    }
}

pub fn peak_of(events: &[Event]) -> usize {
    let mut edges: Vec<(u128, i32)> = events
        .iter()
        .map(|event| (event.nanos, if event.start { 1 } else { -1 }))
        .collect();
    // Ends sort before starts at the same instant.
    edges.sort();
    let mut running = 0i32;
    let mut peak = 0i32;
    for (_, delta) in edges {
        running += delta;
        peak = peak.max(running);
    }
    peak as usize
}

/// `1 2 … n` as strings, for `:::`.
pub fn values(n: usize) -> Vec<String> {
    (1..=n).map(|i| i.to_string()).collect()
}

/// Sorted bytes: two pools hold the same tokens if these are equal.
pub fn sorted(bytes: &[u8]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes.sort_unstable();
    bytes
}

// ---------------------------------------------------------------------------
// Jobserver pools owned by the test

/// A named-pipe jobserver: the test keeps one read-write descriptor open for
/// the whole run (a fifo's contents vanish with its last descriptor).
pub struct FifoJobserver {
    path: PathBuf,
    fd: OwnedFd,
    tokens: usize,
}

impl FifoJobserver {
    /// A fifo `jobserver.fifo` in the sandbox holding `tokens`, one byte per
    /// token; advertised as `-j(tokens+1)`.
    pub fn new(sandbox: &Sandbox, tokens: &[u8]) -> FifoJobserver {
        Self::at(sandbox.join("jobserver.fifo"), tokens)
    }

    pub fn at(path: PathBuf, tokens: &[u8]) -> FifoJobserver {
        let c_path = std::ffi::CString::new(path_str(&path)).unwrap();
        // SAFETY: c_path is a valid NUL-terminated string.
        let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(
            rc,
            0,
            "mkfifo {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
        let fd = OwnedFd::from(file);
        write_all(&fd, tokens);
        FifoJobserver {
            path,
            fd,
            tokens: tokens.len(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// MAKEFLAGS as make 4.4 writes it for this pool.
    pub fn makeflags(&self) -> String {
        format!(
            " -j{} --jobserver-auth=fifo:{}",
            self.tokens + 1,
            self.path.display()
        )
    }

    /// Adds tokens while a run is going on.
    pub fn put(&self, tokens: &[u8]) {
        write_all(&self.fd, tokens);
    }

    /// Takes every byte now in the fifo (reads until EAGAIN) and returns them.
    pub fn drain(&self) -> Vec<u8> {
        read_available(&self.fd)
    }
}

/// An anonymous-pipe jobserver; its descriptors are close-on-exec except in
/// the children of commands built with [`Cmd::pipe_jobserver`].
pub struct PipeJobserver {
    read: OwnedFd,
    write: OwnedFd,
    tokens: usize,
}

impl PipeJobserver {
    pub fn new(tokens: &[u8]) -> PipeJobserver {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: pipe2 succeeded, so both descriptors are open and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        write_all(&write, tokens);
        PipeJobserver {
            read,
            write,
            tokens: tokens.len(),
        }
    }

    pub fn fds(&self) -> [RawFd; 2] {
        [self.read.as_raw_fd(), self.write.as_raw_fd()]
    }

    /// Whether the pipe's shared read description is non-blocking now
    /// (anyone who sets O_NONBLOCK on it changes it for every holder).
    pub fn read_end_is_nonblocking(&self) -> bool {
        // SAFETY: F_GETFL only reads the descriptor's status flags.
        let flags = unsafe { libc::fcntl(self.read.as_raw_fd(), libc::F_GETFL) };
        assert!(flags >= 0, "F_GETFL: {}", io::Error::last_os_error());
        flags & libc::O_NONBLOCK != 0
    }

    /// MAKEFLAGS as make 4.3 writes it for this pool (in a `+` recipe).
    pub fn makeflags(&self) -> String {
        let [r, w] = self.fds();
        format!(" -j{} --jobserver-auth={r},{w}", self.tokens + 1)
    }

    /// Takes every byte now in the pipe and returns them. Reads exactly what
    /// FIONREAD reports, so the shared file description stays blocking.
    pub fn drain(&self) -> Vec<u8> {
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int to the pointer given.
        let rc = unsafe { libc::ioctl(self.read.as_raw_fd(), libc::FIONREAD, &mut pending) };
        assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
        let mut bytes = vec![0u8; pending as usize];
        let mut file = File::from(self.read.try_clone().expect("dup"));
        file.read_exact(&mut bytes).expect("read the pipe");
        bytes
    }
}

fn write_all(fd: &OwnedFd, bytes: &[u8]) {
    let mut file = File::from(fd.try_clone().expect("dup"));
    io::Write::write_all(&mut file, bytes).expect("write tokens");
}

fn read_available(fd: &OwnedFd) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            bytes.extend_from_slice(&buf[..n as usize]);
            continue;
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        assert!(
            n < 0 && err.kind() == io::ErrorKind::WouldBlock,
            "draining the jobserver: read returned {n}: {err}"
        );
        return bytes;
    }
}

// ---------------------------------------------------------------------------
// What a probe saw: `--env-out` files

/// A parsed `--env-out` dump.
pub struct Seen {
    pub text: String,
}

impl Seen {
    /// Reads the dump at `path`; the probe must have written it already.
    #[track_caller]
    pub fn read(path: &Path) -> Seen {
        let text = fs::read_to_string(path)
            .unwrap_or_else(|err| panic!("no environment dump at {}: {err}", path.display()));
        Seen { text }
    }

    /// The value of a variable, `None` if unset.
    pub fn var(&self, name: &str) -> Option<String> {
        let prefix = format!("env {name}=");
        self.text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
    }

    /// The fifo named by the last `--jobserver-auth=` of the MAKEFLAGS seen.
    #[track_caller]
    pub fn fifo(&self) -> PathBuf {
        let makeflags = self.var("MAKEFLAGS").expect("MAKEFLAGS");
        jobserver_auth(&makeflags)
            .and_then(|auth| auth.strip_prefix("fifo:").map(PathBuf::from))
            .unwrap_or_else(|| panic!("no fifo in {makeflags:?}"))
    }

    /// Open descriptors: (fd, target, flags).
    pub fn fds(&self) -> Vec<(i32, String, String)> {
        self.text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("fd ")?;
                let (fd, rest) = rest.split_once(' ')?;
                let (target, flags) = rest.rsplit_once(" flags=")?;
                Some((fd.parse().ok()?, target.to_owned(), flags.to_owned()))
            })
            .collect()
    }

    /// A `Sig…:` mask from /proc/self/status, e.g. `field("SigBlk")`.
    pub fn mask(&self, field: &str) -> u64 {
        let prefix = format!("{field}:");
        let value = self
            .text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {field} in\n{}", self.text));
        u64::from_str_radix(value.trim(), 16).expect("hex mask")
    }
}

/// Splits MAKEFLAGS into words the way make does: blanks separate words,
/// a backslash escapes the next character.
pub fn makeflags_words(makeflags: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = makeflags.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The value of the last `--jobserver-auth=` word, if any.
pub fn jobserver_auth(makeflags: &str) -> Option<String> {
    makeflags_words(makeflags)
        .iter()
        .rev()
        .find_map(|word| word.strip_prefix("--jobserver-auth=").map(str::to_owned))
}

// ---------------------------------------------------------------------------
// Limits, users and processes (fault and security tests)

impl Cmd {
    /// Sets the soft and hard `resource` limit to `limit` in the command
    /// before it starts; everything it starts inherits the limit.
    pub fn rlimit(mut self, resource: libc::__rlimit_resource_t, limit: u64) -> Self {
        let value = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit is async-signal-safe and only reads `value`, a
        // copy owned by the closure.
        unsafe {
            self.cmd.pre_exec(move || {
                if libc::setrlimit(resource, &value) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }

    /// Runs the command as `uid`/`gid` with no supplementary groups (the
    /// test must be root). Called after [`Cmd::rlimit`], the limits are set
    /// while still privileged.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        // SAFETY: setgroups, setgid and setuid are async-signal-safe and
        // touch no memory of ours.
        unsafe {
            self.cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }
}

/// Whether the tests run as root (who is exempt from RLIMIT_NPROC and from
/// file permissions).
pub fn is_root() -> bool {
    // SAFETY: geteuid only reads a process attribute.
    unsafe { libc::geteuid() == 0 }
}

/// A process is gone once /proc forgets it or it is a zombie.
pub fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Sends `signal` to any process (not only a child of the test).
pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill has no memory effects.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        io::Error::last_os_error()
    );
}

/// How many entries `dir` holds now (0 if it does not exist): the jobs
/// waiting at a barrier.
/// Writes a `/proc/loadavg`-style file (for `JSRUN_PROC_DIR`) in one rename, so jsrun
/// never reads it half-written.
pub fn set_load(path: &Path, load: &str) {
    let partial = path.with_extension("partial");
    fs::write(&partial, format!("{load} {load} {load} 1/123 4567\n")).expect("write load file");
    fs::rename(&partial, path).expect("rename load file");
}

pub fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, std::iter::Iterator::count)
}

impl FifoJobserver {
    /// Opens a fifo somebody else created (make's), read-write and
    /// non-blocking, so the test can count what is in it; holding it open
    /// keeps its contents when every other process has closed it.
    pub fn open_existing(path: PathBuf) -> FifoJobserver {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
        FifoJobserver {
            path,
            fd: OwnedFd::from(file),
            tokens: 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Output while a command runs (tests/usage.rs, tests/setup.rs)

impl Running {
    /// The file the command's stdout goes to, for reading while it runs (a
    /// `wait_until` condition cannot borrow the `Running` itself).
    pub fn stdout_path(&self) -> PathBuf {
        self.stdout.clone()
    }

    /// The file the command's stderr goes to, to read while it runs.
    pub fn stderr_path(&self) -> PathBuf {
        self.stderr.clone()
    }
}

// ---------------------------------------------------------------------------
// Determinism helpers: a uid of the test's own, where a process sleeps

/// A uid no account and no other test uses, for one test process: a number
/// far above any account (3,000,000,000) plus the test process's pid, so
/// two suites running at the same time (other checkouts, other people) never
/// share it. RLIMIT_NPROC counts the tasks of a real uid machine-wide; with
/// a uid of its own a test counts only the processes it started. Panics if
/// some process already runs under it.
pub fn private_uid() -> u32 {
    let uid = 3_000_000_000 + std::process::id();
    let tasks = tasks_of_uid(uid);
    assert_eq!(
        tasks, 0,
        "{tasks} tasks already run as the private uid {uid}"
    );
    uid
}

/// Tasks (processes and threads) whose real uid is `uid` now.
pub fn tasks_of_uid(uid: u32) -> u64 {
    let mut count = 0;
    let Ok(processes) = fs::read_dir("/proc") else {
        return 0;
    };
    for entry in processes.flatten() {
        let Ok(tasks) = fs::read_dir(entry.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let owner = fs::read_to_string(task.path().join("status"))
                .ok()
                .and_then(|status| {
                    status.lines().find_map(|line| {
                        line.strip_prefix("Uid:")
                            .and_then(|ids| ids.split_whitespace().next()?.parse::<u32>().ok())
                    })
                });
            if owner == Some(uid) {
                count += 1;
            }
        }
    }
    count
}

/// The system call process `pid` is blocked in (`/proc/PID/syscall`'s first
/// field), `None` while it runs or when the kernel does not say.
pub fn blocked_syscall(pid: i32) -> Option<i64> {
    let text = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Whether process `pid` sleeps in poll() or ppoll() now: per
/// /proc/PID/syscall, or per its wchan where that file says nothing.
pub fn sleeps_in_poll(pid: i32) -> bool {
    match blocked_syscall(pid) {
        Some(nr) => nr == libc::SYS_poll || nr == libc::SYS_ppoll,
        None => fs::read_to_string(format!("/proc/{pid}/wchan"))
            .is_ok_and(|wchan| wchan.contains("poll")),
    }
}

// ---------------------------------------------------------------------------
// The governed pool: token counts, blocked processes, clocks (tests/govern.rs)

/// Bytes waiting in the pipe open at `fd` (FIONREAD): tokens in a pool, or
/// what a command has not read yet of its standard input.
pub fn unread(fd: RawFd) -> usize {
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer given.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut pending) };
    assert_eq!(rc, 0, "FIONREAD on fd {fd}: {}", io::Error::last_os_error());
    pending as usize
}

/// Tokens in the pool at `path` now: a fifo, or `/proc/PID/fd/N` for a pipe
/// another process holds. Opened read-only and non-blocking, so the open
/// never waits; nothing is read, so no process sees a token go.
#[track_caller]
pub fn tokens_at(path: &Path) -> usize {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
    unread(file.as_raw_fd())
}

impl FifoJobserver {
    /// Tokens in the pool now, none taken out.
    pub fn level(&self) -> usize {
        unread(self.fd.as_raw_fd())
    }
}

/// The system call process `pid`'s main thread is blocked in, by number
/// (`/proc/PID/syscall`); `None` while it runs or once it is gone.
pub fn blocked_in(pid: u32) -> Option<i64> {
    blocked_syscall(pid as i32)
}

/// Whether `nr` is one of the calls a process waits for descriptors in.
pub fn is_poll(nr: i64) -> bool {
    #[cfg(target_arch = "x86_64")]
    if nr == libc::SYS_poll || nr == libc::SYS_select {
        return true;
    }
    nr == libc::SYS_ppoll || nr == libc::SYS_pselect6
}

/// The children of process `pid` now (its main thread's).
pub fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect()
}

/// CLOCK_MONOTONIC in µs, the clock of `--trace` timestamps.
pub fn monotonic_us() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", io::Error::last_os_error());
    ts.tv_sec as u128 * 1_000_000 + ts.tv_nsec as u128 / 1000
}

/// How to turn a probe's timestamp (ns since the epoch) into µs of
/// CLOCK_MONOTONIC: the difference of the two clocks, read back to back.
pub fn epoch_minus_monotonic_us() -> i128 {
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock before 1970")
        .as_micros() as i128;
    epoch - monotonic_us() as i128
}

/// Writes `text` to `path` atomically (a temporary name, then a rename), as
/// a reader that opens the file at any moment must see it whole.
pub fn write_atomically(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    fs::write(&partial, text).unwrap_or_else(|err| panic!("write {}: {err}", partial.display()));
    fs::rename(&partial, path).unwrap_or_else(|err| panic!("rename to {}: {err}", path.display()));
}
