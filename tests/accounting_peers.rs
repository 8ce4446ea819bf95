//! The accounting pool (`jsrun --serve=PATH -jN --accounting`: a token file served
//! through FUSE) under the real peers: two emerges with `FEATURES=jobserver-token`,
//! a cargo build whose build scripts take tokens through the `jobserver` crate, a
//! greedy client beside make 4.4.1 (first come, first served; `--per-process-limit`),
//! and the tokens of a SIGKILLed make coming back while emerge holds the pool.
//!
//! Every pool is a real FUSE mount. Where the machine cannot mount one (no
//! `/dev/fuse`, no permission to mount, not root and no `fusermount3`), a test says
//! so through `util::machine_cannot` and returns; where it can, a pool that does not
//! come up fails the test. Concurrency is measured from the jobs' own timestamps.
//!
//! gcc's lto-wrapper is not among the peers: gcc 12 (Debian 12's) does not read a
//! `fifo:` jobserver and runs its own `make -jN` for the LTRANS jobs, beside the pool.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::accounting::{Detach, fuse_here, is_fuse_mount, makeflags};
use crate::emerge;
use crate::util::{
    Log, Running, Sandbox, blocked_in, is_poll, is_root, machine_cannot, make44, values, wait_until,
};

/// How long a pool may serve one test: the emerge tests run two emerges of up
/// to `emerge::DEADLINE` each.
const POOL_DEADLINE: Duration = Duration::from_secs(400);

// ---------------------------------------------------------------------------
// The pool

/// `jsrun -v --serve=SANDBOX/pool -jN --accounting ARGS`, once its token file is
/// mounted; `None` (said loudly, naming the running test) where this machine
/// cannot mount FUSE.
fn accounting_pool(sandbox: &Sandbox, n: usize, args: &[&str]) -> Option<(Pool, PathBuf)> {
    if !fuse_here() {
        return None;
    }
    let args = [&["--accounting"], args].concat();
    let (mut running, path) = crate::serve::spawn_served(sandbox, n, &args, POOL_DEADLINE);
    running.wait_until("the accounting pool mounted at its path", || {
        is_fuse_mount(&path)
    });
    let pool = Pool {
        daemon: Some(running),
        _mount: Detach(path.clone()),
    };
    Some((pool, path))
}

/// The daemon of an accounting pool. A test that fails before [`stop`] kills it
/// (SIGKILL to its group), which leaves its FUSE mount behind, dead: dropping
/// the pool detaches that mount, so the sandbox can go.
struct Pool {
    daemon: Option<Running>,
    /// Dropped after the daemon.
    _mount: Detach,
}

impl std::ops::Deref for Pool {
    type Target = Running;
    fn deref(&self) -> &Running {
        self.daemon.as_ref().expect("the daemon runs")
    }
}

impl std::ops::DerefMut for Pool {
    fn deref_mut(&mut self) -> &mut Running {
        self.daemon.as_mut().expect("the daemon runs")
    }
}

/// Free tokens in the pool now: this process takes every token it can get
/// without waiting, one read of one byte each, and gives them all back.
fn free_tokens(path: &Path) -> usize {
    let mut pool = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
    let mut taken = Vec::new();
    loop {
        let mut byte = [0u8];
        match pool.read(&mut byte) {
            Ok(1) => taken.push(byte[0]),
            Ok(n) => panic!("a read of one token from {} gave {n} bytes", path.display()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => panic!("read a token from {}: {err}", path.display()),
        }
    }
    for byte in &taken {
        let written = pool
            .write(std::slice::from_ref(byte))
            .unwrap_or_else(|err| panic!("give a token back to {}: {err}", path.display()));
        assert_eq!(written, 1, "a token given back to {}", path.display());
    }
    taken.len()
}

/// The holder lines of `jsrun --info` on the pool: (pid, command, tokens).
fn holders(sandbox: &Sandbox, path: &Path, n: usize) -> Vec<(u32, String, usize)> {
    let info = sandbox
        .jsrun()
        .arg("--info")
        .env(
            "MAKEFLAGS",
            format!("-j{n} --jobserver-auth=fifo:{}", path.display()),
        )
        .run();
    info.success();
    info.stdout
        .lines()
        .chain(info.stderr.lines())
        .filter_map(|line| {
            let rest = line.split_once("holder: ")?.1;
            let (pid, rest) = rest.split_once(' ')?;
            let (command, tokens) = match rest.rsplit_once(" (") {
                Some((command, count)) if count.contains("token") => {
                    (command, count.split(' ').next()?.parse().ok()?)
                }
                _ => (rest, 0),
            };
            Some((pid.parse().ok()?, command.to_owned(), tokens))
        })
        .collect()
}

/// SIGTERM to the pool: exit 0 (every token back), the token file unmounted and gone.
#[track_caller]
fn stop(mut pool: Pool, path: &Path) -> crate::util::Output {
    let daemon = pool.daemon.take().expect("the daemon runs");
    daemon.signal(libc::SIGTERM);
    let output = daemon.wait();
    output.success();
    assert!(!is_fuse_mount(path), "{} still mounted", path.display());
    assert!(!path.exists(), "{} left behind", path.display());
    output
}

// ---------------------------------------------------------------------------
// emerge

/// Two emerges at once, each in its own prefix, both with the accounting pool of
/// 4 only in make.conf and `FEATURES=jobserver-token`: exactly 4 builds at once
/// across both (no implicit slot in either), the pool whole afterwards, and
/// SIGTERM ends it with 0 and no warning.
#[test]
fn two_emerges_share_an_accounting_pool() {
    let _serial = emerge::serial();
    let sandbox = Sandbox::new();
    let Some((pool, path)) = accounting_pool(&sandbox, 4, &[]) else {
        return;
    };
    emerge::two_emerges_share(&sandbox, &path, free_tokens);
    stop(pool, &path).stderr_lacks("warning");
}

/// A make -j4 holds 3 tokens of the accounting pool of 4 (its 4 recipes
/// running), emerge takes the fourth for its first build and holds the pool
/// open; make is SIGKILLed. Its 3 tokens come back at once, with a warning
/// naming make's pid, and emerge goes on to build 4 packages at once, which it
/// could not with the 3 tokens lost (its first builds wait for each other).
#[test]
fn a_killed_make_gives_its_tokens_back_while_emerge_holds_the_pool() {
    let _serial = emerge::serial();
    let sandbox = Sandbox::new();
    let Some((pool, path)) = accounting_pool(&sandbox, 4, &[]) else {
        return;
    };
    sandbox.probe_makefile(&values(4), 1, 600_000);
    let mut make = sandbox
        .command(make44())
        .env("MAKEFLAGS", makeflags(4, &path))
        .spawn();
    let log = sandbox.log();
    make.wait_until("make's 4 recipes", || log.started().len() == 4);
    let make_pid = make.pid() as u32;
    let held = holders(&sandbox, &path, 4);
    assert!(
        held.iter()
            .any(|(pid, _, tokens)| *pid == make_pid && *tokens == 3),
        "--info must show make ({make_pid}) holding 3 tokens: {held:?}"
    );

    let prefix = emerge::Prefix::new("reclaim");
    prefix.expect_at_once(4);
    prefix.add_to_make_conf(&format!("MAKEFLAGS=\"{}\"\n", makeflags(4, &path)));
    let mut cmd = prefix.command(emerge::emerge());
    cmd.args(prefix.emerge_args());
    let mut emerging = emerge::Running::start(&mut cmd, &prefix);
    emerging.wait_until("emerge's first build", || {
        prefix.log("builds").contains("start ")
    });

    make.signal(libc::SIGKILL);
    let stderr = pool.stderr_path();
    wait_until("the warning naming the killed make", || {
        fs::read_to_string(&stderr).is_ok_and(|text| {
            text.lines()
                .any(|line| line.contains("warning") && line.contains(&make_pid.to_string()))
        })
    });
    // make's recipes are orphans now; ending them ends the make's group.
    drop(make);

    let out = emerging.wait();
    out.assert_success();
    let peak = emerge::peak_of(prefix.events(&out));
    assert_eq!(
        peak,
        4,
        "emerge builds 4 at once with make's 3 tokens back\n{}\n{out}",
        prefix.log("builds")
    );
    assert_eq!(free_tokens(&path), 4, "the pool whole after emerge\n{out}");
    let end = stop(pool, &path);
    let warning = end
        .stderr
        .lines()
        .find(|line| line.contains(&make_pid.to_string()))
        .unwrap_or_default()
        .to_owned();
    assert!(
        warning.contains("make") && warning.contains('3'),
        "the warning names make and its 3 tokens: {warning:?}\n{}",
        end.report()
    );
}

// ---------------------------------------------------------------------------
// cargo

const BUILD_RS: &str = r#"//! Takes a token from cargo's jobserver (the accounting pool) beside its own slot.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, fs, io::Write, path::Path, thread};

fn log(event: &str, id: &str) {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let line = format!("{event} {id} {nanos} {}\n", std::process::id());
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(env::var("JSRUN_TEST_LOG").unwrap())
        .and_then(|mut log| log.write_all(line.as_bytes()))
        .unwrap();
}

fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < until, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let name = env::var("CARGO_PKG_NAME").unwrap();
    let barrier = env::var("JSRUN_TEST_BARRIER").unwrap();
    let seen = env::var("JSRUN_TEST_SEEN").unwrap();
    fs::write(
        format!("{seen}/{name}"),
        env::var("CARGO_MAKEFLAGS").unwrap_or_default(),
    )
    .unwrap();
    log("start", &format!("{name}.script"));
    fs::write(format!("{barrier}/{name}.script"), "").unwrap();
    // SAFETY: the jobserver's descriptors, if any, are not used elsewhere here.
    let client = unsafe { jobserver::Client::from_env() }.expect("cargo's jobserver");
    let token = client.acquire().expect("a token");
    log("start", &format!("{name}.extra"));
    fs::write(format!("{barrier}/{name}.extra"), "").unwrap();
    wait_for("5 slots in use", || fs::read_dir(&barrier).unwrap().count() >= 5);
    wait_for("the test", || Path::new(&env::var("JSRUN_TEST_GO").unwrap()).exists());
    thread::sleep(Duration::from_millis(100));
    log("end", &format!("{name}.extra"));
    drop(token);
    log("end", &format!("{name}.script"));
}
"#;

/// `cargo build` of a workspace of three crates whose build scripts each
/// take a token through the `jobserver` crate, on an accounting pool of 4 named in
/// MAKEFLAGS (offline, from the crates in `~/.cargo/registry`). The scripts run
/// in cargo's slots (its implicit one and 2 tokens) and take 2 more: 5 at once,
/// from their own timestamps, never more; `--info` then shows the 4 tokens held
/// by cargo and the scripts. The build succeeds, the scripts saw the pool in
/// CARGO_MAKEFLAGS, the pool is whole afterwards and nothing was reclaimed.
#[test]
fn a_cargo_build_takes_its_tokens_from_the_accounting_pool() {
    let sandbox = Sandbox::new();
    let Some((pool, path)) = accounting_pool(&sandbox, 4, &[]) else {
        return;
    };
    let crates = ["a", "b", "c"];
    sandbox.write(
        "Cargo.toml",
        "[workspace]\nmembers = [\"a\", \"b\", \"c\"]\nresolver = \"2\"\n",
    );
    for name in crates {
        fs::create_dir_all(sandbox.join(name).join("src")).expect("mkdir crate");
        sandbox.write(
            format!("{name}/Cargo.toml"),
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
                 [build-dependencies]\njobserver = \"=0.1.35\"\n"
            ),
        );
        sandbox.write(format!("{name}/build.rs"), BUILD_RS);
        sandbox.write(format!("{name}/src/lib.rs"), "");
    }
    for dir in ["barrier", "seen"] {
        fs::create_dir(sandbox.join(dir)).expect("mkdir");
    }
    let go = sandbox.join("go");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = sandbox
        .command(cargo)
        .args(["build", "--offline", "--workspace"])
        .env("CARGO_TARGET_DIR", sandbox.join("target"))
        .env("CARGO_TERM_COLOR", "never")
        .env("MAKEFLAGS", makeflags(4, &path))
        .env("JSRUN_TEST_LOG", sandbox.join("log"))
        .env("JSRUN_TEST_BARRIER", sandbox.join("barrier"))
        .env("JSRUN_TEST_SEEN", sandbox.join("seen"))
        .env("JSRUN_TEST_GO", &go)
        .deadline(Duration::from_secs(300))
        .spawn();
    let barrier = sandbox.join("barrier");
    build.wait_until("5 slots in use by the build scripts", || {
        crate::util::entries(&barrier) >= 5
    });
    let held = holders(&sandbox, &path, 4);
    let total: usize = held.iter().map(|(_, _, tokens)| tokens).sum();
    assert_eq!(
        total, 4,
        "every token held, by cargo and its scripts: {held:?}"
    );
    assert!(
        held.iter()
            .any(|(_, command, tokens)| command.contains("build-script-build") && *tokens == 1),
        "a build script holds its token: {held:?}"
    );
    fs::write(&go, "").expect("write go");
    let out = build.wait();
    out.success();
    assert!(
        !out.stderr
            .lines()
            .any(|line| line.contains("warning") || line.contains("error")),
        "cargo warns (a jobserver it cannot use?)\n{}",
        out.report()
    );
    for name in crates {
        let seen = fs::read_to_string(sandbox.join("seen").join(name)).expect("seen");
        assert!(
            seen.contains(&format!("fifo:{}", path.display())),
            "build script {name} got CARGO_MAKEFLAGS {seen:?}"
        );
    }
    let log = Log::new(sandbox.join("log"));
    assert_eq!(log.finished().len(), 6, "{}", log.dump());
    assert_eq!(
        log.peak(),
        5,
        "the pool's 4 tokens and cargo's implicit slot\n{}",
        log.dump()
    );
    assert_eq!(free_tokens(&path), 4, "the pool whole after the build");
    stop(pool, &path).stderr_lacks("warning");
}

// ---------------------------------------------------------------------------
// A greedy client beside make

/// A greedy client (examples/greedy.rs) named `name` on the pool, with `threads`
/// threads holding each token `hold_ms` (None: until a line on its stdin);
/// returns it once it holds `holds` tokens.
fn greedy(
    sandbox: &Sandbox,
    path: &Path,
    name: &str,
    threads: usize,
    hold_ms: Option<u64>,
    holds: usize,
) -> Running {
    let mut command = sandbox
        .command(crate::util::example("greedy"))
        .arg("--pool")
        .arg(path)
        .args(["--threads", &threads.to_string()])
        .arg("--log")
        .arg(sandbox.join(format!("{name}.log")))
        .arg("--held")
        .arg(sandbox.join(format!("{name}.held")))
        .stdin_pipe()
        .deadline(POOL_DEADLINE);
    if let Some(ms) = hold_ms {
        command = command.args(["--hold-ms", &ms.to_string()]);
    }
    let mut running = command.spawn();
    running.wait_until("the greedy client's tokens", || {
        held(sandbox, name) == Some(holds)
    });
    running
}

/// The tokens the greedy client `name` holds now, once it has said.
fn held(sandbox: &Sandbox, name: &str) -> Option<usize> {
    fs::read_to_string(sandbox.join(format!("{name}.held")))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// Whether a thread of process `pid` is blocked in read() now.
fn a_thread_blocks_in_read(pid: u32) -> bool {
    let read = libc::SYS_read.to_string();
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|task| {
            fs::read_to_string(task.path().join("syscall"))
                .is_ok_and(|text| text.split_whitespace().next() == Some(read.as_str()))
        })
}

/// First come, first served, for a poller as for a blocking reader: a greedy
/// client holds all 4 tokens of the accounting pool, and two more clients wait
/// for one: make -j4 (its first recipe runs in its implicit slot; it waits in
/// pselect() for a token for the second) and a client blocked in read(). The
/// greedy client gives one token back: whichever of the two waited first gets
/// it, the other nothing (make's second recipe starts, or the reader holds 1).
/// Then a second token goes back and reaches the other one. Both orders are
/// tried twice. (On a plain fifo a blocked reader and make's pselect race for
/// each byte: run on `jsrun --serve` without `--accounting`, one of two orders
/// failed in 3 runs of 4.)
#[test]
fn waiting_clients_are_served_first_come_first_served() {
    for make_first in [true, false, true, false] {
        if !served_in_order(make_first) {
            return;
        }
    }
}

/// One order of [`waiting_clients_are_served_first_come_first_served`]; false
/// where this machine cannot mount FUSE.
fn served_in_order(make_first: bool) -> bool {
    let sandbox = Sandbox::new();
    let Some((pool, path)) = accounting_pool(&sandbox, 4, &[]) else {
        return false;
    };
    let mut first = greedy(&sandbox, &path, "first", 4, None, 4);
    let log = sandbox.log();
    sandbox.probe_makefile(&values(2), 1, 2_000);
    let start_make = || {
        let mut make = sandbox
            .command(make44())
            .env("MAKEFLAGS", makeflags(4, &path))
            .spawn();
        let make_pid = make.pid() as u32;
        make.wait_until("make's first recipe, and make waiting for a token", || {
            log.started().len() == 1 && blocked_in(make_pid).is_some_and(is_poll)
        });
        make
    };
    let start_reader = || {
        let reader = greedy(&sandbox, &path, "reader", 1, None, 0);
        let reader_pid = reader.pid() as u32;
        wait_until("the reader blocked in read()", || {
            a_thread_blocks_in_read(reader_pid)
        });
        reader
    };
    let (mut make, reader) = if make_first {
        let make = start_make();
        (make, start_reader())
    } else {
        let reader = start_reader();
        (start_make(), reader)
    };
    let order = if make_first {
        "make, then the reader"
    } else {
        "the reader, then make"
    };
    let mut release = first.take_stdin();
    writeln!(release, "give one back").expect("tell the greedy client");
    make.wait_until("the first token to reach make or the reader", || {
        log.started().len() == 2 || held(&sandbox, "reader") == Some(1)
    });
    let want = if make_first {
        (2, Some(0))
    } else {
        (1, Some(1))
    };
    assert_eq!(
        (log.started().len(), held(&sandbox, "reader")),
        want,
        "waiting: {order}; (make's recipes started, tokens the reader holds) after one \
         token came back\n{}",
        log.dump()
    );
    writeln!(release, "give another back").expect("tell the greedy client");
    make.wait_until("the second token to reach the other", || {
        log.started().len() == 2 && held(&sandbox, "reader") == Some(1)
    });
    make.wait().success().stderr_lacks("warning");
    for client in [first, reader] {
        client.signal(libc::SIGKILL);
        drop(client.wait());
    }
    wait_until("the killed clients' tokens back", || {
        free_tokens(&path) == 4
    });
    stop(pool, &path);
    true
}

/// With `--per-process-limit=2` a greedy client that keeps every token it gets
/// holds 2 of the pool's 4 (its other threads wait), and make -j4 runs 3 recipes
/// at once: its implicit slot and the 2 left (never 4; they meet in threes). When
/// the greedy client is SIGKILLed its 2 tokens come back with a warning naming
/// it, and SIGTERM finds the pool whole (exit 0).
#[test]
fn a_per_process_limit_leaves_make_its_share_beside_a_greedy_client() {
    let sandbox = Sandbox::new();
    let Some((pool, path)) = accounting_pool(&sandbox, 4, &["--per-process-limit=2"]) else {
        return;
    };
    let greedy = greedy(&sandbox, &path, "greedy", 4, None, 2);
    sandbox.probe_makefile(&values(9), 3, 100);
    let make = sandbox
        .command(make44())
        .env("MAKEFLAGS", makeflags(4, &path))
        .run();
    make.success().stderr_lacks("warning");
    let log = sandbox.log();
    assert_eq!(log.finished().len(), 9, "{}", log.dump());
    assert_eq!(
        log.peak(),
        3,
        "make's implicit slot and the 2 tokens the limit left\n{}",
        log.dump()
    );
    let held = fs::read_to_string(sandbox.join("greedy.held")).expect("greedy.held");
    assert_eq!(held.trim(), "2", "the greedy client never held more than 2");
    let greedy_pid = greedy.pid().to_string();
    greedy.signal(libc::SIGKILL);
    drop(greedy.wait());
    let stderr = pool.stderr_path();
    wait_until("the warning naming the greedy client", || {
        fs::read_to_string(&stderr).is_ok_and(|text| {
            text.lines()
                .any(|line| line.contains("warning") && line.contains(&greedy_pid))
        })
    });
    let end = stop(pool, &path);
    let warning = end
        .stderr
        .lines()
        .find(|line| line.contains(&greedy_pid))
        .unwrap_or_default()
        .to_owned();
    assert!(
        warning.contains("greedy") && warning.contains('2'),
        "the warning names the greedy client and its 2 tokens: {warning:?}"
    );
}

// ---------------------------------------------------------------------------
// A pool of one user

/// A pool of one user, without root: jsrun started as an unprivileged user (`nobody`
/// when the tests run as root) mounts its token file through
/// `fusermount3` (Debian's fuse3, which scripts/peers.sh installs), and make -j4 of the
/// same user runs 4 recipes at once on it: its implicit slot and the 3 tokens. SIGTERM
/// unmounts the token file and removes it.
#[test]
fn a_pool_of_one_user_mounts_through_fusermount3() {
    let test = "accounting_peers::a_pool_of_one_user_mounts_through_fusermount3";
    if which::which("fusermount3").is_err() {
        machine_cannot(
            test,
            "no fusermount3 (Debian: fuse3; scripts/peers.sh installs it)",
        );
        return;
    }
    let user = if is_root() {
        let mode = fs::metadata("/dev/fuse").map_or(0, |meta| {
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions())
        });
        if mode & 0o006 != 0o006 {
            machine_cannot(
                test,
                &format!(
                    "/dev/fuse is mode {:o} here: only root may open it",
                    mode & 0o777
                ),
            );
            return;
        }
        // fusermount3 wants the user's name: an account, not a bare uid.
        let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
            machine_cannot(test, "no account 'nobody' to run an unprivileged jsrun as");
            return;
        };
        Some((nobody.uid.as_raw(), nobody.gid.as_raw()))
    } else if !fuse_here() {
        return;
    } else {
        None
    };
    let sandbox = Sandbox::new();
    let as_user = |cmd: crate::util::Cmd| match user {
        Some((uid, gid)) => cmd.user(uid, gid),
        None => cmd,
    };
    // The user reaches the sandbox, writes the probes' log and barrier, owns the
    // directory of the token file.
    let open_to_all = |path: &Path, mode: u32| {
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap_or_else(|err| panic!("chmod {}: {err}", path.display()));
    };
    open_to_all(sandbox.path(), 0o755);
    fs::create_dir(sandbox.join("barrier")).expect("mkdir barrier");
    open_to_all(&sandbox.join("barrier"), 0o777);
    sandbox.write("log", "");
    open_to_all(&sandbox.join("log"), 0o666);
    let dir = sandbox.join("user");
    fs::create_dir(&dir).expect("mkdir user");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the user's directory");
    }
    let path = dir.join("pool");
    let mut daemon = as_user(
        sandbox
            .jsrun()
            .arg("-v")
            .arg(format!("--serve={}", path.display()))
            .args(["-j3", "--accounting"]),
    )
    .spawn();
    daemon.wait_until("the token file mounted through fusermount3", || {
        is_fuse_mount(&path)
    });
    let pool = Pool {
        daemon: Some(daemon),
        _mount: Detach(path.clone()),
    };
    sandbox.probe_makefile(&values(8), 4, 100);
    let make = as_user(
        sandbox
            .command(make44())
            .env("MAKEFLAGS", makeflags(4, &path)),
    )
    .run();
    make.success().stderr_lacks("warning");
    let log = sandbox.log();
    assert_eq!(log.finished().len(), 8, "{}", log.dump());
    assert_eq!(
        log.peak(),
        4,
        "make's implicit slot and the 3 tokens\n{}",
        log.dump()
    );
    stop(pool, &path).stderr_lacks("warning");
}
