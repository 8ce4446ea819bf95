//! Grouped output (`-O line`, `-O job`, `--tag`) is delivered whole or fails
//! loudly, and writing it never blocks the loop: a closed stdout stops the
//! run with 141, a full file system under `-O job` neither reorders nor
//! duplicates a byte, and a signal reaches jsrun while nobody reads its
//! output.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::{FifoJobserver, Sandbox, path_str, sorted, wait_until};

/// The grouping modes whose output jsrun writes itself.
const GROUPED: [&str; 3] = ["-Oline", "-Ojob", "--tag"];

/// How long a run that must stop early may take at most.
const SHORT: Duration = Duration::from_secs(30);

fn jsrun() -> String {
    path_str(&crate::util::jsrun_bin())
}

// ---------------------------------------------------------------------------
// A stdout nobody reads

/// A fifo in the sandbox, held open read-write by the test (so jsrun can
/// open it for writing and never sees it closed) and never read.
struct Unread {
    path: PathBuf,
    fd: OwnedFd,
}

impl Unread {
    fn new(path: PathBuf) -> Unread {
        let c_path = CString::new(path_str(&path)).expect("path without NUL");
        // SAFETY: c_path is a valid NUL-terminated string.
        let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("open the fifo");
        Unread {
            path,
            fd: OwnedFd::from(file),
        }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Bytes waiting in the fifo.
    fn pending(&self) -> usize {
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int to the pointer given.
        let rc = unsafe { libc::ioctl(self.raw(), libc::FIONREAD, &mut pending) };
        assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
        pending as usize
    }

    fn capacity(&self) -> usize {
        // SAFETY: F_GETPIPE_SZ only reads the pipe's capacity.
        let capacity = unsafe { libc::fcntl(self.raw(), libc::F_GETPIPE_SZ) };
        assert!(
            capacity > 0,
            "F_GETPIPE_SZ: {}",
            std::io::Error::last_os_error()
        );
        capacity as usize
    }
}

/// Processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().collect())
                    .unwrap_or_default();
                // state ppid pgrp: a zombie has done its dying.
                fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
            })
        })
        .collect()
}

/// `jsrun -j2 -Oline sh -c 'yes | head -c 2000000' ::: 1 2 3 >FIFO`, nobody
/// reading FIFO: once the fifo is full (jsrun cannot write any more), SIGTERM
/// ends jsrun by that signal within the deadline, its jobs and their
/// children are gone, and every token is back.
#[test]
fn sigterm_reaches_jsrun_while_nobody_reads_its_output() {
    for mode in GROUPED {
        let sandbox = Sandbox::new();
        let pool = FifoJobserver::new(&sandbox, b"xyz");
        let fifo = Unread::new(sandbox.join("out"));
        let script = format!(
            "exec {} -j2 {mode} sh -c 'yes | head -c 2000000' ::: 1 2 3 >{}",
            jsrun(),
            path_str(&fifo.path)
        );
        let mut running = sandbox
            .command("bash")
            .args(["-c", &script])
            .fifo_jobserver(&pool)
            .deadline(SHORT)
            .spawn();
        let pgid = running.pid() as u32;
        let full = fifo.capacity() - 4096;
        running.wait_until("jsrun to fill its stdout", || fifo.pending() >= full);
        running.signal(libc::SIGTERM);
        let output = running.wait();
        output.killed_by(libc::SIGTERM);
        wait_until("the jobs and their children to end", || {
            group_members(pgid).is_empty()
        });
        assert_eq!(sorted(&pool.drain()), b"xyz", "{mode}: tokens back");
    }
}

/// The first field of /proc/PID/syscall: the number of the system call the
/// process is blocked in ("running" or nothing when it is not).
fn syscall_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/syscall"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Whether `pid` sleeps in poll (x86_64: poll 7, ppoll 271; aarch64: ppoll 73).
fn in_poll(pid: u32) -> bool {
    let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    wchan.contains("poll") || ["7", "271", "73"].contains(&syscall_of(pid).as_str())
}

/// Processes of group `pgid` named `comm`.
fn named(pgid: u32, comm: &str) -> Vec<u32> {
    group_members(pgid)
        .into_iter()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// The peak resident size of process `pid` so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<usize>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Backpressure: two jobs each write 32 MiB of lines under `-O line` into a
/// fifo nobody reads yet. Once the fifo is full, jsrun waits in poll with
/// its queue bounded and stops draining, so the jobs block on their own
/// pipes: jsrun's peak memory stays far below the output. Then the test
/// reads everything: every line arrives whole, none missing, and jsrun
/// exits 0.
#[test]
fn output_nobody_reads_yet_holds_the_jobs_back_not_memory() {
    use std::io::Read as _;
    const BYTES: usize = 32 << 20;
    let sandbox = Sandbox::new();
    let fifo = Unread::new(sandbox.join("out"));
    let script = format!(
        "exec {} -j2 -Oline sh -c 'yes {{}} | head -c {BYTES}' ::: 1 2 >{}",
        jsrun(),
        path_str(&fifo.path)
    );
    let mut running = sandbox
        .command("bash")
        .args(["-c", &script])
        .deadline(SHORT)
        .spawn();
    let pid = running.pid() as u32;
    let full = fifo.capacity() - 4096;
    running.wait_until("the jobs to block on their pipes, jsrun in poll", || {
        let heads = named(pid, "head");
        fifo.pending() >= full
            && in_poll(pid)
            && heads.len() == 2
            && heads.iter().all(|&head| syscall_of(head) == "1")
    });
    let peak = peak_rss(pid);
    assert!(
        peak > 0 && peak < 24 << 20,
        "jsrun's peak memory was {} MiB with {} MiB of output held back",
        peak >> 20,
        (2 * BYTES) >> 20
    );
    let mut reader = fs::File::from(fifo.fd.try_clone().expect("dup the fifo"));
    let mut counts = [0usize; 2];
    let mut partial = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut exited = false;
    let deadline = std::time::Instant::now() + SHORT;
    loop {
        match reader.read(&mut buf) {
            Ok(n) => {
                partial.extend_from_slice(&buf[..n]);
                let end = partial
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |e| e + 1);
                for line in partial[..end]
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                {
                    match line {
                        b"1" => counts[0] += 1,
                        b"2" => counts[1] += 1,
                        other => {
                            panic!("a line no job wrote: {:?}", String::from_utf8_lossy(other))
                        }
                    }
                }
                partial.drain(..end);
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if exited {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "jsrun did not finish");
                // Whether jsrun has ended, then read what it left; else wait for data.
                exited = crate::util::process_gone(pid);
                let mut fds = [libc::pollfd {
                    fd: fifo.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: fds is a valid array of one pollfd.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
            }
            Err(err) => panic!("read the fifo: {err}"),
        }
    }
    let output = running.wait();
    output.success();
    assert!(partial.is_empty(), "output ends in a broken line");
    assert_eq!(counts, [BYTES / 2; 2], "lines of each job");
}

// ---------------------------------------------------------------------------
// A closed stdout

/// Runs a bash pipeline under the test's pool and returns the status of
/// the pipeline's command number `index` (as `PIPESTATUS` has it).
#[track_caller]
fn pipeline_status(sandbox: &Sandbox, pool: &FifoJobserver, pipeline: &str, index: usize) -> i32 {
    let script = format!("{pipeline}; echo \"status=${{PIPESTATUS[{index}]}}\"");
    let output = sandbox
        .command("bash")
        .args(["-c", &script])
        .fifo_jobserver(pool)
        .deadline(SHORT)
        .run();
    output
        .success()
        .stderr_lacks("jsrun")
        .stderr_lacks("panicked");
    output
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("status="))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line\n{}", output.report()))
}

/// Rows of a job log (the header not counted).
fn joblog_rows(path: &Path) -> usize {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
        .saturating_sub(1)
}

/// `jsrun -j4 MODE echo ::: 1..10000 | head -1`: the reader is gone after one
/// line. jsrun starts no further job, ends with 141 without a word, and
/// gives every token back, as it does under `-O none`.
#[test]
fn a_closed_stdout_stops_a_grouped_run_of_values() {
    for mode in GROUPED {
        let sandbox = Sandbox::new();
        let pool = FifoJobserver::new(&sandbox, b"abc");
        let joblog = sandbox.join("joblog");
        let pipeline = format!(
            "{} -j4 {mode} --joblog {} echo ::: $(seq 10000) | head -1 >/dev/null",
            jsrun(),
            path_str(&joblog)
        );
        let status = pipeline_status(&sandbox, &pool, &pipeline, 0);
        assert_eq!(status, 141, "{mode}: jsrun's status");
        let ran = joblog_rows(&joblog);
        assert!(
            ran < 10_000,
            "{mode}: all {ran} jobs ran for a closed stdout"
        );
        assert_eq!(sorted(&pool.drain()), b"abc", "{mode}: tokens back");
    }
}

/// `seq 1 100000000 | jsrun -j4 MODE echo :::: - | head -1`: the same with
/// values streamed from stdin; jsrun must stop, not run a hundred million
/// jobs into a closed pipe.
#[test]
fn a_closed_stdout_stops_a_grouped_run_of_streamed_values() {
    for mode in GROUPED {
        let sandbox = Sandbox::new();
        let pool = FifoJobserver::new(&sandbox, b"abc");
        let pipeline = format!(
            "seq 1 100000000 | {} -j4 {mode} echo :::: - | head -1 >/dev/null",
            jsrun()
        );
        let status = pipeline_status(&sandbox, &pool, &pipeline, 1);
        assert_eq!(status, 141, "{mode}: jsrun's status");
        assert_eq!(sorted(&pool.drain()), b"abc", "{mode}: tokens back");
    }
}

// ---------------------------------------------------------------------------
// -O job and a full file system

/// A small tmpfs, unmounted when the test ends, also when it fails.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax, e.g. `2m`) at `dir`;
    /// `None`, with a note, where mounting is not allowed (not root, a
    /// container without the capability).
    fn mount(dir: PathBuf, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(&dir).expect("create the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output();
        match output {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            Ok(out) => {
                eprintln!(
                    "note: skipped, cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(err) => {
                eprintln!("note: skipped, cannot run mount: {err}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process of a failed test): detach it now.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// `lines` numbered lines that name `name`, about 30 bytes each.
fn text(name: &str, lines: usize) -> String {
    (0..lines)
        .map(|i| format!("{name} {i:08} quick brown fox\n"))
        .collect()
}

/// Where two long texts first differ, without printing megabytes.
fn difference(got: &str, want: &str) -> String {
    let at = got
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let near = |text: &str| {
        let from = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
        text[from..].lines().next().unwrap_or_default().to_owned()
    };
    format!(
        "lengths {} (got) and {} (want); first difference at byte {at}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        near(got),
        near(want)
    )
}

/// A job that writes FILE in an odd first piece and then the rest, so that
/// the spill file's length is not a multiple of a page when the file system
/// fills up and a write is cut short.
const ODD_CAT: &str = "head -c 1000 \"$1\"; tail -c +1001 \"$1\"";

/// `-O job` with TMPDIR on a 2 MiB tmpfs: two jobs at once, each writing
/// 6 MiB, spill until the file system is full. Each job's output still
/// arrives byte for byte, in one piece, exactly once, and jsrun exits 0.
#[test]
fn output_sync_job_on_a_full_file_system_keeps_every_byte_in_order() {
    let sandbox = Sandbox::new();
    let Some(tmpfs) = Tmpfs::mount(sandbox.join("tmp"), "2m") else {
        return;
    };
    let one = text("one", 200_000);
    let two = text("two", 200_000);
    sandbox.write("one", &one);
    sandbox.write("two", &two);
    let output = sandbox
        .jsrun()
        .env("TMPDIR", &tmpfs.dir)
        .args(["-j2", "-O", "sh", "-c", ODD_CAT, "sh", ":::", "one", "two"])
        .run();
    let summary = format!("status {:?}, stderr:\n{}", output.status, output.stderr);
    assert!(output.status.success(), "{summary}");
    let first = output.stdout.get(..3).unwrap_or_default();
    let want = match first {
        "two" => format!("{two}{one}"),
        _ => format!("{one}{two}"),
    };
    assert!(
        output.stdout == want,
        "the jobs' output is not each whole and once: {}\n{summary}",
        difference(&output.stdout, &want)
    );
}

/// The same with jsrun's address space limited (RLIMIT_AS 128 MiB) and a
/// job writing 512 MiB: neither the tmpfs nor memory can keep it. jsrun
/// names the job, prints none of its output and exits non-zero, instead of
/// aborting or passing on a part.
#[test]
fn output_sync_job_names_a_job_whose_output_cannot_be_kept() {
    const LIMIT: u64 = 128 << 20;
    let sandbox = Sandbox::new();
    let Some(tmpfs) = Tmpfs::mount(sandbox.join("tmp"), "2m") else {
        return;
    };
    let output = sandbox
        .jsrun()
        .env("TMPDIR", &tmpfs.dir)
        .rlimit(libc::RLIMIT_AS, LIMIT)
        .args(["-O", "head", "-c", "536870912", "/dev/zero"])
        .run();
    output
        .stderr_contains(
            "jsrun: error: output of job 1 (head -c 536870912 /dev/zero) could not be kept: ",
        )
        .stderr_lacks("panicked");
    assert_eq!(
        output.status.code(),
        Some(125),
        "jsrun's status\n{}",
        output.report()
    );
    assert!(
        output.stdout.is_empty(),
        "a part of the lost output was printed ({} bytes)",
        output.stdout.len()
    );
}
