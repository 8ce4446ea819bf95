//! `jsrun --serve=PATH -jN --accounting`: the token file on a real FUSE mount. Real
//! make 4.4.1, the jobserver crate, a fifo-only client and jsrun itself as clients;
//! per-process accounting (a killed holder's tokens back while another holder lives, a
//! killed waiting reader, a foreign write), the per-process limit, first-come order,
//! `--info` counts, SIGTERM with holders and waiters, a stale mount, and FUSE unavailable.
//!
//! Holders are bash processes that read and write the token file themselves (`read -N 1
//! -u 3`, `printf + >&3`): tokens belong to the process that read them, so a `head`
//! child reading for a shell would hold them, not the shell.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use crate::util::{Running, Sandbox, is_root, jsrun_bin, machine_cannot, make44, path_str, values};

/// Whether this machine can mount a FUSE token file; says so loudly, naming the running
/// test, when it cannot.
pub(crate) fn fuse_here() -> bool {
    let Some(why) = fuse_unavailable() else {
        return true;
    };
    let current = std::thread::current();
    machine_cannot(current.name().unwrap_or("accounting"), &why);
    false
}

/// Why this machine cannot mount a FUSE file system, or `None` when it can. As
/// root the probe mounts one for a moment on a directory of its own (a
/// connection nobody serves, unmounted at once); otherwise the per-user path
/// needs `fusermount3`. The answer is the machine's, not jsrun's: a pool that
/// fails to come up where this says FUSE works fails the test.
pub(crate) fn fuse_unavailable() -> Option<String> {
    static ANSWER: OnceLock<Option<String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let device = match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/fuse")
            {
                Ok(device) => device,
                Err(err) => return Some(format!("/dev/fuse cannot be opened: {err}")),
            };
            if !is_root() {
                return match which::which("fusermount3") {
                    Ok(_) => None,
                    Err(_) => Some("not root, and no fusermount3 (Debian: fuse3)".into()),
                };
            }
            let dir = tempfile::tempdir().expect("a directory to probe a FUSE mount on");
            let target = CString::new(dir.path().as_os_str().as_bytes()).expect("no NUL");
            let options = CString::new(format!(
                "fd={},rootmode=40000,user_id=0,group_id=0",
                device.as_raw_fd()
            ))
            .expect("no NUL");
            // SAFETY: every pointer is a NUL-terminated string that outlives the call.
            let rc = unsafe {
                libc::mount(
                    c"jsrun-probe".as_ptr(),
                    target.as_ptr(),
                    c"fuse".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    options.as_ptr().cast(),
                )
            };
            if rc != 0 {
                return Some(format!(
                    "mounting a FUSE file system fails: {}",
                    io::Error::last_os_error()
                ));
            }
            // Closing the device aborts the connection; nothing has looked at the mount.
            drop(device);
            // SAFETY: target is a NUL-terminated path; MNT_DETACH never waits.
            let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            assert_eq!(
                rc,
                0,
                "unmount the probe at {}: {}",
                dir.path().display(),
                io::Error::last_os_error()
            );
            None
        })
        .clone()
}

/// Whether a FUSE file system is mounted at `path` now (/proc/self/mountinfo).
pub(crate) fn is_fuse_mount(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let wanted = path_str(path);
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split(' ').next());
        fields.get(4) == Some(&wanted.as_str())
            && fstype.is_some_and(|kind| kind == "fuse" || kind.starts_with("fuse."))
    })
}

/// Starts `jsrun -v --serve=SANDBOX/pool -jN --accounting ARGS` and waits until it
/// serves. The guard detaches the mount if a failing test leaves it behind (the harness
/// kills the daemon with SIGKILL, which no daemon can clean up after).
fn serve(sandbox: &Sandbox, n: usize, args: &[&str]) -> (Running, PathBuf, Detach) {
    let args: Vec<&str> = ["--accounting"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let (running, path) = crate::serve::serve(sandbox, n, &args);
    let guard = Detach(path.clone());
    (running, path, guard)
}

/// Detaches a token file's mount when dropped, if it is still there: a daemon killed
/// with SIGKILL (a failing test) leaves it behind, dead, and the sandbox could not go.
pub(crate) struct Detach(pub(crate) PathBuf);

impl Drop for Detach {
    fn drop(&mut self) {
        if !is_fuse_mount(&self.0) {
        } else if is_root() {
            // MNT_DETACH never waits.
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        } else {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.0)
                .status();
        }
    }
}

/// What the pool says of itself (the extended attribute `--info` reads).
#[derive(Debug)]
struct Account {
    free: usize,
    waiting: usize,
    /// (pid, tokens) of every holder.
    holders: Vec<(u32, usize)>,
}

fn account(path: &Path) -> Account {
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new("user.jsrun.pool").unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: both strings are NUL-terminated, and `buf` is valid for writes of its
    // length for the whole call.
    let n = unsafe {
        libc::getxattr(
            cpath.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n >= 0, "getxattr: {}", std::io::Error::last_os_error());
    let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
    let mut account = Account {
        free: 0,
        waiting: 0,
        holders: Vec::new(),
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["free", n] => account.free = n.parse().unwrap(),
            ["waiting", n] => account.waiting = n.parse().unwrap(),
            ["holder", pid, n, ..] => account
                .holders
                .push((pid.parse().unwrap(), n.parse().unwrap())),
            _ => panic!("unexpected account line {line:?} in {text:?}"),
        }
    }
    account
}

fn stderr_of(running: &Running) -> String {
    fs::read_to_string(running.stderr_path()).unwrap_or_default()
}

/// A bash process that opens the token file, takes `take` tokens itself, touches
/// `took-NAME`; when a line comes on its stdin it gives them back and touches
/// `gave-NAME`, then sleeps. Returned at once: it may still wait for its tokens.
fn taker(sandbox: &Sandbox, path: &Path, take: usize, name: &str) -> Running {
    let script = format!(
        "exec 3<>\"$1\"; for i in $(seq {take}); do read -r -N 1 -u 3 t || exit 3; done; \
         : > \"$2\"; read line; for i in $(seq {take}); do printf + >&3 || exit 4; done; \
         : > \"$3\"; exec sleep 600"
    );
    sandbox
        .command("bash")
        .args(["-c", &script, "bash"])
        .arg(path)
        .arg(sandbox.join(format!("took-{name}")))
        .arg(sandbox.join(format!("gave-{name}")))
        .stdin_pipe()
        .spawn()
}

/// [`taker`], returned once it holds its tokens.
fn holder(sandbox: &Sandbox, path: &Path, take: usize, name: &str) -> Running {
    let mut running = taker(sandbox, path, take, name);
    let took = sandbox.join(format!("took-{name}"));
    running.wait_until("the holder to take its tokens", || took.exists());
    running
}

/// Tells a [`taker`] to give its tokens back and waits until it has.
fn give_back(sandbox: &Sandbox, running: &mut Running, name: &str) {
    writeln!(running.take_stdin(), "go").unwrap();
    let gave = sandbox.join(format!("gave-{name}"));
    running.wait_until("the holder to give its tokens back", || gave.exists());
}

/// Waits until the SIGKILLed process `pid` has ended (a zombie or gone). One that hangs
/// in the kernel (D state, its FUSE request never answered) is freed by killing the
/// daemon first, so the test fails instead of hanging.
fn ended(daemon: &Running, pid: i32) {
    let gone = || {
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z'))
        })
    };
    let until = Instant::now() + crate::util::DEADLINE;
    while !gone() {
        if Instant::now() > until {
            daemon.signal(libc::SIGKILL);
            panic!("the SIGKILLed reader {pid} hangs in the kernel (D state)");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// MAKEFLAGS naming the pool, as make.conf or a CI job sets it.
pub(crate) fn makeflags(n: usize, path: &Path) -> String {
    format!("-j{n} --jobserver-auth=fifo:{}", path.display())
}

/// make 4.4.1 takes the token file from MAKEFLAGS (as from make.conf) and runs its
/// implicit slot and the 3 tokens, 4 jobs at once (they meet in fours), without a word
/// of complaint; SIGTERM then ends the daemon with 0, unmounted, PATH removed.
#[test]
fn make_runs_on_the_token_file_and_sigterm_ends_it_cleanly() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (running, path, _mount) = serve(&sandbox, 3, &[]);
    assert!(fs::metadata(&path).unwrap().is_file());
    sandbox.probe_makefile(&values(8), 4, 100);
    let make = sandbox
        .command(make44())
        .env("MAKEFLAGS", makeflags(3, &path))
        .run();
    make.success()
        .stderr_lacks("warning")
        .stderr_lacks("jobserver");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), make.report());
    let after = account(&path);
    assert_eq!((after.free, after.holders.len()), (3, 0), "{after:?}");
    running.signal(libc::SIGTERM);
    running.wait().success().stderr_lacks("warning");
    assert!(!is_fuse_mount(&path), "still mounted");
    assert!(!path.exists(), "the token file is removed");
}

/// The jobserver crate (cargo's, cc's) opens the token file behind fifo: and takes
/// tokens with blocking reads from several threads; the fifo-only client (a stand-in for
/// upstream ninja and Portage) too. Each reaches its implicit slot + 2 tokens.
#[test]
fn the_jobserver_crate_and_a_fifo_only_client_use_the_token_file() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (running, path, _mount) = serve(&sandbox, 2, &[]);
    let client = sandbox.crate_client(&makeflags(2, &path), 3, 3).run();
    client.success();
    let log = sandbox.log();
    assert_eq!(log.finished().len(), 3, "{}", log.dump());
    assert_eq!(log.peak(), 3, "{}", log.dump());
    assert_eq!(account(&path).free, 2);

    let sandbox2 = Sandbox::new();
    let probe = sandbox2
        .probe()
        .id("f%n")
        .barrier(&sandbox2.join("barrier"), 3)
        .sleep_ms(100);
    let fifo_only = sandbox2
        .command(crate::util::example("fifo_client"))
        .env("MAKEFLAGS", makeflags(2, &path))
        .args(["--jobs", "3", "--"])
        .args(probe.words())
        .run();
    fifo_only.success();
    let log = sandbox2.log();
    assert_eq!(log.finished().len(), 3, "{}", log.dump());
    assert_eq!(log.peak(), 3, "{}", log.dump());
    assert_eq!(account(&path).free, 2);
    running.signal(libc::SIGTERM);
    running.wait().success().stderr_lacks("warning");
}

/// jsrun itself as a client (non-blocking reads and poll, as make's and ninja's): under
/// MAKEFLAGS its implicit slot + 2 tokens; with --jobserver=fifo:PATH exactly the 2.
#[test]
fn jsrun_is_a_client_of_the_token_file() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (running, path, _mount) = serve(&sandbox, 2, &[]);
    for (env, given, want) in [(true, false, 3), (false, true, 2)] {
        let run = Sandbox::new();
        let probe = run
            .probe()
            .id("{}")
            .barrier(&run.join("barrier"), want)
            .sleep_ms(100);
        let mut cmd = run.jsrun();
        if env {
            cmd = cmd.env("MAKEFLAGS", makeflags(2, &path));
        }
        if given {
            cmd = cmd.arg(format!("--jobserver=fifo:{}", path.display()));
        }
        let output = cmd.args(probe.words()).arg(":::").args(values(6)).run();
        output.success().stderr_lacks("warning");
        let log = run.log();
        assert_eq!(log.finished(), values(6), "{}", log.dump());
        assert_eq!(log.peak(), want, "{}\n{}", log.dump(), output.report());
        assert_eq!(account(&path).free, 2);
    }
    running.signal(libc::SIGTERM);
    running.wait().success().stderr_lacks("warning");
}

/// A holder SIGKILLed with 2 tokens while another holder lives: a fifo could not give
/// them back until nobody held it open; the token file gives them back at once (the
/// pidfd), with a warning naming the pid, its command and the count.
#[test]
fn a_killed_holders_tokens_come_back_while_another_holder_lives() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (mut running, path, _mount) = serve(&sandbox, 4, &[]);
    let keeper = holder(&sandbox, &path, 1, "keeper");
    let taker = holder(&sandbox, &path, 2, "taker");
    let before = account(&path);
    assert_eq!(before.free, 1, "{before:?}");
    let victim = taker.pid() as u32;
    assert!(before.holders.contains(&(victim, 2)), "{before:?}");
    let killed = Instant::now();
    taker.signal(libc::SIGKILL);
    let stderr = running.stderr_path();
    let warning = format!("pid {victim} (bash -c");
    running.wait_until("the reclaim", || {
        fs::read_to_string(&stderr)
            .is_ok_and(|e| e.contains(&warning) && e.contains("ended holding 2 tokens"))
    });
    eprintln!("reclaimed {:?} after the SIGKILL", killed.elapsed());
    drop(taker.wait());
    let after = account(&path);
    assert_eq!(after.free, 3, "{after:?}");
    assert_eq!(
        after.holders,
        [(keeper.pid() as u32, 1)],
        "the keeper keeps its token"
    );
    drop(keeper);
    running.wait_until("the keeper's token back", || account(&path).free == 4);
    running.signal(libc::SIGTERM);
    running.wait().success();
}

/// A reader blocked waiting for a token is SIGKILLed: the daemon answers the kernel's
/// INTERRUPT, so the reader dies at once instead of hanging in D state, and it is not
/// given the token later: the pool is whole when the holder gives its token back.
#[test]
fn a_killed_waiting_reader_neither_hangs_nor_takes_a_token() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (mut running, path, _mount) = serve(&sandbox, 1, &[]);
    let mut keeper = holder(&sandbox, &path, 1, "keeper");
    let waiter = taker(&sandbox, &path, 1, "waiter");
    running.wait_until("the reader in line", || account(&path).waiting == 1);
    let pid = waiter.pid();
    waiter.signal(libc::SIGKILL);
    ended(&running, pid);
    drop(waiter.wait());
    assert!(!sandbox.join("took-waiter").exists());
    assert_eq!(account(&path).waiting, 0);
    give_back(&sandbox, &mut keeper, "keeper");
    let after = account(&path);
    assert_eq!((after.free, after.holders.len()), (1, 0), "{after:?}");
    running.signal(libc::SIGTERM);
    running.wait().success().stderr_lacks("warning");
}

/// A byte written by a process that holds no token is refused (ENOSPC, as steve does)
/// and never grows the pool, with a warning; a holder's own write is taken.
#[test]
fn a_write_from_a_process_holding_none_never_grows_the_pool() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (running, path, _mount) = serve(&sandbox, 2, &[]);
    let write = sandbox
        .command("bash")
        .args(["-c", "exec 3<>\"$1\"; printf +++ >&3", "bash"])
        .arg(&path)
        .run();
    write.code(1).stderr_contains("No space left on device");
    assert_eq!(account(&path).free, 2, "the pool grew");
    let stderr = stderr_of(&running);
    assert!(
        stderr.contains("wrote a token it never took: refused"),
        "{stderr}"
    );
    // A holder of 1 writing 3 bytes gives back 1: the rest is refused.
    let script = "exec 3<>\"$1\"; read -r -N 1 -u 3 t; printf +++ >&3";
    let partial = sandbox
        .command("bash")
        .args(["-c", script, "bash"])
        .arg(&path)
        .run();
    partial.code(1);
    assert_eq!(account(&path).free, 2);
    running.signal(libc::SIGTERM);
    running.wait().success();
}

/// `--per-process-limit=2`: one jsrun (one process) with `-j6 --jobserver=fifo:PATH`
/// never holds more than 2 of the 4 tokens; another process still gets the rest.
#[test]
fn the_per_process_limit_caps_one_process() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (running, path, _mount) = serve(&sandbox, 4, &["--per-process-limit=2"]);
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 2)
        .sleep_ms(150);
    let greedy = sandbox
        .jsrun()
        .arg("-j6")
        .arg(format!("--jobserver=fifo:{}", path.display()))
        .args(probe.words())
        .arg(":::")
        .args(values(6))
        .spawn();
    let other = holder(&sandbox, &path, 2, "other");
    greedy.wait().success();
    let log = sandbox.log();
    assert_eq!(log.finished(), values(6), "{}", log.dump());
    assert_eq!(log.peak(), 2, "{}", log.dump());
    assert!(account(&path).holders.contains(&(other.pid() as u32, 2)));
    drop(other);
    running.signal(libc::SIGTERM);
    running.wait();
}

/// Readers are served in the order they came, blocking readers and a polling one
/// (jsrun as a client) alike, one token each: a pool of 1 goes first, second, third.
#[test]
fn waiting_readers_and_pollers_are_served_first_come_first_served() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (mut running, path, _mount) = serve(&sandbox, 1, &[]);
    let mut keeper = holder(&sandbox, &path, 1, "keeper");
    let order = sandbox.join("order");
    // Each takes the token, notes its name, and gives it back when it ends.
    let note = |name: &str| {
        format!(
            "exec 3<>\"$1\"; read -r -N 1 -u 3 t; echo {name} >> \"$2\"; sleep 0.05; printf + >&3"
        )
    };
    let first = sandbox
        .command("bash")
        .args(["-c", &note("first"), "bash"])
        .arg(&path)
        .arg(&order)
        .spawn();
    running.wait_until("the first in line", || account(&path).waiting == 1);
    let second = sandbox
        .jsrun()
        .arg(format!("--jobserver=fifo:{}", path.display()))
        .args(["sh", "-c", "echo second >> \"$1\"", "sh"])
        .arg(&order)
        .spawn();
    running.wait_until("the poller in line", || account(&path).waiting == 2);
    let third = sandbox
        .command("bash")
        .args(["-c", &note("third"), "bash"])
        .arg(&path)
        .arg(&order)
        .spawn();
    running.wait_until("the third in line", || account(&path).waiting == 3);
    give_back(&sandbox, &mut keeper, "keeper");
    first.wait().success();
    second.wait().success();
    third.wait().success();
    assert_eq!(
        fs::read_to_string(&order).unwrap(),
        "first\nsecond\nthird\n"
    );
    assert_eq!(account(&path).free, 1);
    running.signal(libc::SIGTERM);
    running.wait().success();
}

/// `--info` under MAKEFLAGS naming the token file lists each holder with its count. With
/// `--jobserver-group` the file is 0660 and the group's.
#[test]
fn info_lists_each_holder_with_its_tokens() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (running, path, _mount) = serve(&sandbox, 3, &["--jobserver-group=0"]);
    // The file is the group's, as the fifo would be.
    let meta = fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.mode(), meta.gid()), (0o100_660, 0));
    let two = holder(&sandbox, &path, 2, "two");
    let info = sandbox
        .jsrun()
        .env("MAKEFLAGS", makeflags(3, &path))
        .arg("--info")
        .run();
    info.success();
    let want = format!("holder: {} bash -c ", two.pid());
    let line = info
        .stdout
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("no {want:?} in\n{}", info.report()));
    assert!(line.ends_with(" (2 tokens)"), "{line}");
    assert!(
        info.stdout.contains("free tokens: 1\n"),
        "{}",
        info.report()
    );
    assert!(
        info.stdout.contains("accounting: yes\n"),
        "{}",
        info.report()
    );
    drop(two);
    running.signal(libc::SIGTERM);
    running.wait();
}

/// SIGTERM while a holder holds a token and a reader waits: the reader gets an error at
/// once (no token will come), the daemon names the holder, exits 1, and leaves nothing
/// mounted and no file behind.
#[test]
fn sigterm_with_holders_and_waiters_unmounts_and_exits_1() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (mut running, path, _mount) = serve(&sandbox, 1, &[]);
    let keeper = holder(&sandbox, &path, 1, "keeper");
    let waiter = taker(&sandbox, &path, 1, "waiter");
    running.wait_until("the reader in line", || account(&path).waiting == 1);
    running.signal(libc::SIGTERM);
    let output = running.wait();
    output
        .code(1)
        .stderr_contains(&format!("pid {} (bash -c", keeper.pid()))
        .stderr_contains("still holds 1 token at the end")
        .stderr_contains("1 missing at exit");
    waiter.wait().code(3);
    assert!(!is_fuse_mount(&path), "still mounted");
    assert!(!path.exists(), "the token file is left behind");
}

/// A daemon killed with SIGKILL leaves its mount behind (every access: ENOTCONN); the
/// next one unmounts it and serves again. A live token file is refused.
#[test]
fn a_stale_token_file_is_replaced_and_a_live_one_refused() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (running, path, _mount) = serve(&sandbox, 2, &[]);
    let second = sandbox
        .jsrun()
        .arg(format!("--serve={}", path.display()))
        .args(["-j2", "--accounting"])
        .run();
    second.code(125).stderr_contains("served already");
    running.signal(libc::SIGKILL);
    drop(running.wait());
    assert!(is_fuse_mount(&path), "a SIGKILL leaves the mount");
    let (running, path, _mount) = serve(&sandbox, 2, &[]);
    assert!(stderr_of(&running).contains("replacing"));
    assert_eq!(account(&path).free, 2);
    running.signal(libc::SIGTERM);
    running.wait().success();
    assert!(!is_fuse_mount(&path) && !path.exists());
}

/// Where FUSE cannot be used (here: /dev/null bind-mounted over /dev/fuse in a private
/// mount namespace, so the mount is refused), exit 125 with one line saying why and that
/// plain --serve works; nothing is left at PATH.
#[test]
fn fuse_unavailable_is_125_with_the_reason() {
    let test = "accounting::fuse_unavailable_is_125_with_the_reason";
    if !nix::unistd::geteuid().is_root() || which::which("unshare").is_err() {
        machine_cannot(
            test,
            "needs root and unshare(1) for a private mount namespace",
        );
        return;
    }
    let sandbox = Sandbox::new();
    let path = sandbox.join("pool");
    let script = "mount --bind /dev/null /dev/fuse && exec \"$@\"";
    let output = sandbox
        .command("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(jsrun_bin())
        .arg(format!("--serve={}", path.display()))
        .args(["-j2", "--accounting"])
        .run();
    if output.stderr.contains("unshare:") || output.stderr.contains("mount:") {
        machine_cannot(
            test,
            &format!("no private mount namespace: {}", output.stderr),
        );
        return;
    }
    output
        .code(125)
        .stderr_contains("--accounting needs FUSE, which cannot be used here: mount refused")
        .stderr_contains("plain --serve (a fifo, without --accounting) works without it");
    assert_eq!(output.stderr.lines().count(), 1, "{}", output.report());
    assert!(!path.exists());
}

/// The governor works on the accounting pool as on the fifo: a load limit exceeded from
/// the start holds every token back (a blocked reader waits, however long), the tokens
/// go back when the load falls and the reader is served; SIGUSR1 and SIGUSR2 resize; the
/// --stats pool line comes at the end.
#[test]
fn limits_resizing_and_stats_govern_the_token_file() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (mut running, path, loadavg) =
        crate::serve::serve_over_the_load_limit(&sandbox, &["-j3", "--accounting", "--stats"]);
    let _mount = Detach(path.clone());
    running.wait_until("every token held back", || account(&path).free == 0);
    let mut reader = taker(&sandbox, &path, 1, "reader");
    running.wait_until("the reader in line", || account(&path).waiting == 1);
    crate::util::set_load(&loadavg, "0.50");
    running.wait_until("the reader served", || sandbox.join("took-reader").exists());
    running.wait_until("the tokens back", || account(&path).free == 2);
    give_back(&sandbox, &mut reader, "reader");
    running.signal(libc::SIGUSR1);
    running.wait_until("4 slots", || account(&path).free == 4);
    running.signal(libc::SIGUSR2);
    running.wait_until("3 slots", || account(&path).free == 3);
    running.signal(libc::SIGTERM);
    let output = running.wait();
    output
        .success()
        .stderr_contains("jsrun: pool: 3 slots, peak 1 in use")
        .stderr_lacks("warning");
    assert!(!is_fuse_mount(&path) && !path.exists());
}

/// A user without root serves a token file through fusermount3 (the per-user pool): the
/// daemon runs as uid 65534 in a private mount namespace whose /dev/fuse that user may
/// open (this machine's is root's alone), a jsrun of the same user runs on it with its 2
/// tokens, `--info` counts, and SIGTERM unmounts (fusermount3 -u) and removes PATH.
#[test]
fn a_user_without_root_serves_through_fusermount3() {
    let test = "accounting::a_user_without_root_serves_through_fusermount3";
    let tools = ["unshare", "setpriv", "fusermount3", "mknod"];
    if !nix::unistd::geteuid().is_root() || tools.iter().any(|t| which::which(t).is_err()) {
        machine_cannot(
            test,
            "needs root to set it up, and unshare, setpriv, fusermount3",
        );
        return;
    }
    let sandbox = Sandbox::new();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(sandbox.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = sandbox.join("user");
    fs::create_dir(&dir).unwrap();
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    nix::unistd::chown(&dir, nobody, Some(nix::unistd::Gid::from_raw(65534))).unwrap();
    let dev = sandbox.join("dev");
    fs::create_dir(&dev).unwrap();
    let log = crate::util::Log::new(dir.join("log"));
    let probe = crate::util::Probe::new(&log)
        .id("{}")
        .barrier(&dir.join("barrier"), 2)
        .sleep_ms(100);
    // The user runs copies in the sandbox: the build's own may sit in a directory only
    // root can enter (a checkout in a private home, a `mktemp -d`).
    let jsrun = sandbox.join("jsrun");
    fs::copy(jsrun_bin(), &jsrun).expect("copy jsrun into the sandbox");
    let mut words = probe.words();
    let probe_copy = sandbox.join("probe");
    fs::copy(&words[0], &probe_copy).expect("copy the probe into the sandbox");
    words[0] = probe_copy
        .into_os_string()
        .into_string()
        .expect("a UTF-8 path");
    let script = r#"
        set -u
        dev=$1 dir=$2 jsrun=$3; shift 3
        user() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
        mount -t tmpfs -o mode=755 jsrun-dev "$dev" || exit 10
        mknod -m 666 "$dev/fuse" c 10 229 && mount --bind "$dev/fuse" /dev/fuse || exit 10
        setpriv --reuid=65534 --regid=65534 --clear-groups \
            "$jsrun" -v --serve="$dir/pool" -j2 --accounting 2>"$dir/daemon.err" &
        daemon=$!
        until grep -q serving "$dir/daemon.err"; do
            kill -0 $daemon 2>/dev/null || { cat "$dir/daemon.err"; exit 11; }
            sleep 0.05
        done
        grep " $dir/pool fuse.jsrun " /proc/self/mounts
        user "$jsrun" --jobserver=fifo:"$dir/pool" -j4 "$@" ::: 1 2 3 4 || exit 12
        user env MAKEFLAGS="-j2 --jobserver-auth=fifo:$dir/pool" "$jsrun" --info
        kill -TERM $daemon; wait $daemon; echo "daemon exit $?"
        cat "$dir/daemon.err"
        if grep -q " $dir/pool " /proc/self/mounts; then echo "still mounted"; fi
        if [ -e "$dir/pool" ]; then echo "left behind"; fi
    "#;
    let output = sandbox
        .command("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "bash",
            "-c",
            script,
            "bash",
        ])
        .arg(&dev)
        .arg(&dir)
        .arg(&jsrun)
        .args(words)
        .run();
    if output.status.code() == Some(10) {
        machine_cannot(test, &format!("no private /dev/fuse: {}", output.report()));
        return;
    }
    output.success();
    let report = output.report();
    assert!(output.stdout.contains("user_id=65534"), "{report}");
    assert!(output.stdout.contains("free tokens: 2\n"), "{report}");
    assert!(output.stdout.contains("daemon exit 0\n"), "{report}");
    assert!(!output.stdout.contains("still mounted"), "{report}");
    assert!(!output.stdout.contains("left behind"), "{report}");
    assert!(!output.stdout.contains("warning"), "{report}");
    assert_eq!(log.finished(), values(4), "{}", log.dump());
    assert_eq!(log.peak(), 2, "{}", log.dump());
}

/// `--trace` on an accounting pool: the `slots in use` and `held back` counter tracks of
/// the daemon's pid follow the holders, event by event: up to 2 taken, 3, one given back
/// (2), the holder of 2 killed and its tokens taken back (0).
#[test]
fn the_trace_tracks_follow_the_holders_of_the_token_file() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let trace = sandbox.join("trace.json");
    let (mut running, path, _mount) = serve(&sandbox, 3, &["--trace", &path_str(&trace)]);
    let pid = running.pid() as u64;
    let two = holder(&sandbox, &path, 2, "two");
    let mut one = holder(&sandbox, &path, 1, "one");
    give_back(&sandbox, &mut one, "one");
    two.signal(libc::SIGKILL);
    drop(two.wait());
    running.wait_until("the killed holder's tokens back", || {
        account(&path).free == 3
    });
    running.signal(libc::SIGTERM);
    let output = running.wait();
    output.success().stderr_contains("ended holding 2 tokens");
    let counters = crate::govern::counters(&trace);
    let track = |name: &str| -> Vec<u64> {
        let mut values: Vec<u64> = Vec::new();
        for c in counters.iter().filter(|c| c.name == name) {
            assert_eq!(c.pid, pid, "{c:?}");
            if values.last() != Some(&c.value) {
                values.push(c.value);
            }
        }
        values
    };
    // Both reads of one holder may be served in one wake-up: 1 need not show on its own.
    let in_use = track("slots in use");
    let climb = &in_use[..in_use.len().saturating_sub(2)];
    assert!(
        in_use.ends_with(&[3, 2, 0])
            && climb.first() == Some(&0)
            && climb.windows(2).all(|w| w[0] < w[1]),
        "{in_use:?}\n{counters:?}\n{}",
        output.report()
    );
    assert_eq!(track("held back"), [0], "{counters:?}");
}

/// `--weight` under a token file: the advisory lock that serialises jsruns gathering
/// slots works on the FUSE file (a second open file cannot take it while the first holds
/// it), and three `+jsrun --weight=3` recipes under make -j4 on the pool all run, one at a
/// time, every token back.
#[test]
fn heavy_jobs_gather_their_slots_from_the_token_file_one_at_a_time() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (running, path, _mount) = serve(&sandbox, 3, &[]);
    let open = || fs::OpenOptions::new().read(true).open(&path).unwrap();
    let first = nix::fcntl::Flock::lock(open(), nix::fcntl::FlockArg::LockExclusiveNonblock)
        .unwrap_or_else(|(_, e)| panic!("flock on the token file: {e}"));
    let second = nix::fcntl::Flock::lock(open(), nix::fcntl::FlockArg::LockExclusiveNonblock);
    assert!(
        matches!(second, Err((_, nix::errno::Errno::EWOULDBLOCK))),
        "a second lock on the token file was not refused"
    );
    drop(first);
    crate::weight::heavy_recipes(&sandbox);
    let make = sandbox
        .command(make44())
        .env("MAKEFLAGS", makeflags(4, &path))
        .run();
    crate::weight::ran_one_at_a_time(&sandbox, &make);
    let after = account(&path);
    assert_eq!((after.free, after.holders.len()), (3, 0), "{after:?}");
    running.signal(libc::SIGTERM);
    running.wait().success().stderr_lacks("warning");
}

/// Upstream ninja 1.13 opens `fifo:PATH` and refuses anything but a fifo or a character
/// device ("Not a fifo path"): the stand-in doing the same (`fifo_client --strict`)
/// refuses the token file. Through `jsrun -- ninja` (the stand-in under that name) jsrun
/// bridges the token file to a private fifo: its 8 jobs run 4 at once (jsrun's implicit
/// slot and the pool's 3 tokens), never more, and every token is back afterwards.
#[test]
fn a_client_that_takes_only_a_fifo_joins_the_token_file_through_jsrun() {
    if !fuse_here() {
        return;
    }
    let sandbox = Sandbox::new();
    let (running, path, _mount) = serve(&sandbox, 3, &[]);
    let probe = sandbox
        .probe()
        .id("%n")
        .barrier(&sandbox.join("barrier"), 4)
        .sleep_ms(100);
    let mut words: Vec<String> = ["ninja", "--strict", "--jobs", "8", "--"]
        .map(String::from)
        .to_vec();
    words.extend(probe.words());
    let bin = sandbox.join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(crate::util::example("fifo_client"), bin.join("ninja")).unwrap();
    let search = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let direct = sandbox
        .command(bin.join("ninja"))
        .args(&words[1..])
        .env("MAKEFLAGS", makeflags(4, &path))
        .run();
    direct
        .code(1)
        .stderr_contains(&format!("Not a fifo path: {}", path.display()));
    assert_eq!(
        sandbox.log().finished().len(),
        0,
        "{}",
        sandbox.log().dump()
    );
    let output = sandbox
        .jsrun()
        .arg("-v")
        .env("MAKEFLAGS", makeflags(4, &path))
        .env("PATH", search)
        .arg("--")
        .args(&words)
        .run();
    output
        .success()
        .stderr_contains("bridging the token file jobserver")
        .stderr_lacks("Not a fifo path");
    let log = sandbox.log();
    assert_eq!(log.finished(), values(8), "{}", log.dump());
    assert_eq!(log.peak(), 4, "{}\n{}", log.dump(), output.report());
    let after = account(&path);
    assert_eq!((after.free, after.holders.len()), (3, 0), "{after:?}");
    running.signal(libc::SIGTERM);
    running.wait().success().stderr_lacks("warning");
}
