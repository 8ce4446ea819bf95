//! Real emerge (PyPI `portage` 3.0.83, `FEATURES=jobserver-token`) under jsrun.
//!
//! Each test makes a throwaway Portage prefix: a repository with eight EAPI 8
//! packages that have no sources and no dependencies (`tests/emerge/build.ebuild`),
//! a `make.conf` (`tests/emerge/make.conf`), and the global config of the
//! installed package. Every build appends `start <pkg> <ns>` in `pkg_setup` and
//! `end <pkg> <ns>` at the end of `src_install` to one log; the test computes from
//! it how many builds overlapped. `emerge --jobs=8` would run all eight at once,
//! so the peak is the number of job slots emerge got from the jobserver. The
//! first builds of a run wait for each other in `src_install` until as many as
//! the test expects have arrived ([`Prefix::expect_at_once`]): the peak does
//! not depend on how fast emerge starts builds on a busy machine.
//!
//! The prefixes and the emerge runs have a harness of their own here; from
//! `crate::util` come only the peers it shares and, for the served pool, its
//! `Sandbox`. The tests take one lock, so the emerge runs of different tests
//! never overlap: on two cores they would slow each other down and blur the
//! peaks. The one test that runs two emerges at once makes them meet at a
//! shared barrier and measures their combined peak from both logs.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, open};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::stat::Mode;
use nix::unistd::{Pid, mkfifo};

/// How long one emerge run (including jsrun or make around it) may take
/// before the test kills it and fails; one run takes 10-25 s on two cores.
pub(crate) const DEADLINE: Duration = Duration::from_secs(120);

/// The packages of the test repository, all built by every run.
const PACKAGES: [&str; 8] = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"];
const CATEGORY: &str = "js-test";

const EBUILD: &str = include_str!("emerge/build.ebuild");
const MAKE_CONF: &str = include_str!("emerge/make.conf");

/// Serializes the tests of this file (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// The scenarios

/// `jsrun -j4 -- emerge --jobs=8`: jsrun serves 3 tokens, emerge finds the
/// jobserver in its environment and runs its first build in its implicit slot.
#[test]
fn emerge_under_jsrun_server_uses_all_four_slots() {
    let _serial = serial();
    let prefix = Prefix::new("server");
    prefix.expect_at_once(4);
    // emerge, then a count of the tokens in jsrun's fifo while jsrun still runs.
    let script = r#""$@"; status=$?; python3 "$0" > "$PORTAGE_OVERRIDE_EPREFIX/log/free-tokens" || exit 99; exit $status"#;
    let mut cmd = prefix.command(jsrun());
    cmd.args(["-j4", "--", "sh", "-c", script])
        .arg(repo_root().join("tests/emerge/free-tokens.py"))
        .arg(emerge())
        .args(prefix.emerge_args());
    let out = run(&mut cmd, &prefix);
    out.assert_success();
    let makeflags = prefix.makeflags(&out);
    let fifo = jobserver_fifo(&makeflags).unwrap_or_else(|| {
        panic!("emerge saw no fifo jobserver in MAKEFLAGS {makeflags:?}\n{out}")
    });
    assert!(
        makeflags.split_whitespace().any(|w| w == "-j4"),
        "MAKEFLAGS {makeflags:?} lacks -j4\n{out}"
    );
    assert_eq!(
        prefix.free_tokens_after_emerge(),
        3,
        "tokens in jsrun's fifo right after emerge exited\n{out}"
    );
    assert_no_token_warning(&out);
    assert!(
        !fifo.exists(),
        "jsrun left its fifo {} behind",
        fifo.display()
    );
    if let Some(dir) = fifo.parent() {
        assert!(
            !dir.exists(),
            "jsrun left its fifo directory {} behind",
            dir.display()
        );
    }
    assert_eq!(
        prefix.peak(&out),
        4,
        "3 tokens + emerge's implicit slot\n{out}"
    );
}

/// The "stevie" case: a jobserver that belongs to somebody else (here: the
/// test) with 3 tokens. jsrun takes one for emerge before starting it, emerge
/// runs one build on it and takes the other two itself.
#[test]
fn emerge_under_jsrun_with_outer_fifo_jobserver_uses_its_three_tokens() {
    let _serial = serial();
    let prefix = Prefix::new("stevie");
    prefix.expect_at_once(3);
    let pool = OuterFifo::new(&prefix.root.join("jobserver"), b"xyz");
    let mut cmd = prefix.command(jsrun());
    cmd.arg(format!("--jobserver=fifo:{}", pool.path.display()))
        .arg("--")
        .arg(emerge())
        .args(prefix.emerge_args());
    let out = run(&mut cmd, &prefix);
    out.assert_success();
    let makeflags = prefix.makeflags(&out);
    assert_eq!(
        jobserver_fifo(&makeflags).as_deref(),
        Some(pool.path.as_path()),
        "emerge must get the outer jobserver, MAKEFLAGS {makeflags:?}\n{out}"
    );
    let mut left = pool.drain();
    left.sort_unstable();
    assert_eq!(
        left, b"xyz",
        "tokens in the outer fifo after the run\n{out}"
    );
    assert_eq!(prefix.peak(&out), 3, "the outer pool's 3 tokens\n{out}");
}

/// SIGINT to jsrun in the "stevie" case while three builds hold all the
/// slots (jsrun's token for emerge, emerge's two): jsrun passes it on, emerge
/// stops its builds, and all 3 tokens are back in the outer fifo by the time
/// jsrun has died of the same signal.
#[test]
fn interrupted_emerge_under_jsrun_with_outer_fifo_jobserver_returns_every_token() {
    let _serial = serial();
    let prefix = Prefix::new("interrupt");
    let pool = OuterFifo::new(&prefix.root.join("jobserver"), b"xyz");
    let mut cmd = prefix.command(jsrun());
    cmd.arg(format!("--jobserver=fifo:{}", pool.path.display()))
        .arg("--")
        .arg(emerge())
        .args(prefix.emerge_args());
    let mut running = Running::start(&mut cmd, &prefix);
    running.wait_until("3 builds were running", || {
        prefix.log("builds").matches("start ").count() >= 3
    });
    kill(running.pid(), Signal::SIGINT).expect("kill -INT jsrun");
    let out = running.wait();
    assert_eq!(
        out.status.and_then(|s| s.signal()),
        Some(Signal::SIGINT as i32),
        "jsrun must die of SIGINT\n{out}"
    );
    let mut left = pool.drain();
    left.sort_unstable();
    assert_eq!(
        left, b"xyz",
        "tokens in the outer fifo after the interrupt\n{out}"
    );
}

/// A Makefile in the prefix whose one recipe is `+jsrun -- emerge ARGS`.
fn jsrun_emerge_makefile(prefix: &Prefix) -> PathBuf {
    let mut recipe = vec![
        jsrun().display().to_string(),
        "--".into(),
        emerge().display().to_string(),
    ];
    recipe.extend(prefix.emerge_args());
    let makefile = prefix.root.join("Makefile");
    fs::write(&makefile, format!("all:\n\t+{}\n", recipe.join(" "))).expect("write Makefile");
    makefile
}

/// `+jsrun -- emerge` in a recipe of make 4.4.1 `-j4`: jsrun is a client and
/// runs emerge in the recipe's slot, emerge takes make's 3 tokens.
#[test]
fn emerge_under_jsrun_under_make_uses_all_four_slots() {
    let _serial = serial();
    let prefix = Prefix::new("make");
    prefix.expect_at_once(4);
    let makefile = jsrun_emerge_makefile(&prefix);
    let mut cmd = prefix.command(make44());
    cmd.arg("-j4").arg("-f").arg(&makefile);
    let out = run(&mut cmd, &prefix);
    out.assert_success();
    assert!(
        !out.stderr.contains("INTERNAL") && !out.stderr.contains("jobserver unavailable"),
        "make reports a jobserver problem\n{out}"
    );
    let makeflags = prefix.makeflags(&out);
    assert!(
        jobserver_fifo(&makeflags).is_some_and(|p| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("GMfifo"))),
        "emerge must get make's jobserver, MAKEFLAGS {makeflags:?}\n{out}"
    );
    assert_eq!(
        prefix.peak(&out),
        4,
        "make's 3 tokens + the recipe's slot\n{out}"
    );
}

/// `+jsrun -- emerge` in a recipe of make 4.3 `-j4`: a pipe pool, which
/// Portage cannot read ("Unsupported jobserver type"). jsrun bridges it: emerge
/// gets a fifo of jsrun's own and takes make's 3 tokens through it.
#[test]
fn emerge_under_jsrun_under_make43_uses_all_four_slots_through_the_bridge() {
    let _serial = serial();
    let prefix = Prefix::new("bridge");
    prefix.expect_at_once(4);
    let makefile = jsrun_emerge_makefile(&prefix);
    let mut cmd = prefix.command(crate::util::make43());
    cmd.arg("-j4").arg("-f").arg(&makefile);
    let out = run(&mut cmd, &prefix);
    out.assert_success();
    assert!(
        !out.stderr.contains("INTERNAL")
            && !out.stderr.contains("Unsupported jobserver type")
            && !out.stderr.contains("jobserver unavailable"),
        "a jobserver problem\n{out}"
    );
    let makeflags = prefix.makeflags(&out);
    assert!(
        jobserver_fifo(&makeflags).is_some(),
        "emerge must get the bridge's fifo, MAKEFLAGS {makeflags:?}\n{out}"
    );
    assert_eq!(
        prefix.peak(&out),
        4,
        "make's 3 tokens + the recipe's slot, through the bridge\n{out}"
    );
}

/// `jsrun -j4 -- python3 EMERGE` with make 4.3 first on PATH: the command is
/// python3, but the script it runs is emerge, which speaks only fifo, so jsrun
/// serves a fifo (a pipe would give "Unsupported jobserver type" and all 8
/// builds at once) and emerge builds 4 packages at once in it.
#[test]
fn emerge_through_python3_with_make43_on_path_gets_a_fifo_and_uses_all_four_slots() {
    let _serial = serial();
    let prefix = Prefix::new("python");
    prefix.expect_at_once(4);
    let bin = prefix.root.join("make43-on-path");
    fs::create_dir(&bin).expect("mkdir make43-on-path");
    symlink(crate::util::make43(), bin.join("make")).expect("link make 4.3");
    let mut cmd = prefix.command(jsrun());
    let path = cmd
        .get_envs()
        .find_map(|(k, v)| (k == "PATH").then_some(v).flatten())
        .expect("the prefix's PATH")
        .to_owned();
    let mut path_43 = bin.into_os_string();
    path_43.push(":");
    path_43.push(path);
    cmd.env("PATH", path_43)
        .args(["-j4", "-v", "--", "python3", "-u"])
        .arg(emerge())
        .args(prefix.emerge_args());
    let out = run(&mut cmd, &prefix);
    out.assert_success();
    assert!(
        !out.stderr.contains("Unsupported jobserver type"),
        "emerge got a pipe\n{out}"
    );
    assert!(
        out.stderr
            .contains("(word 3 of the command) speaks only fifo"),
        "-v names the word that decided\n{out}"
    );
    let makeflags = prefix.makeflags(&out);
    assert!(
        jobserver_fifo(&makeflags).is_some(),
        "emerge must get a fifo, MAKEFLAGS {makeflags:?}\n{out}"
    );
    assert_no_token_warning(&out);
    assert_eq!(
        prefix.peak(&out),
        4,
        "3 tokens + emerge's implicit slot\n{out}"
    );
}

/// Negative control: the same jsrun server as the first test, but emerge
/// learns the jobserver from make.conf only, not from its environment. Then
/// Portage believes it is the top-level client, reads a token for every build
/// and leaves its implicit slot unused: one build fewer. This shows the log
/// and the peak can tell 3 from 4.
#[test]
fn emerge_with_jobserver_only_in_make_conf_uses_one_slot_less() {
    let _serial = serial();
    let prefix = Prefix::new("control");
    prefix.expect_at_once(3);
    let script = r#"printf 'MAKEFLAGS="%s"\n' "$MAKEFLAGS" >> "$PORTAGE_OVERRIDE_EPREFIX/etc/portage/make.conf" && exec env -u MAKEFLAGS -u MFLAGS "$@""#;
    let mut cmd = prefix.command(jsrun());
    cmd.args(["-j4", "--", "sh", "-c", script, "sh"])
        .arg(emerge())
        .args(prefix.emerge_args());
    let out = run(&mut cmd, &prefix);
    out.assert_success();
    let makeflags = prefix.makeflags(&out);
    assert!(
        jobserver_fifo(&makeflags).is_some(),
        "emerge's builds must still see jsrun's jobserver, MAKEFLAGS {makeflags:?}\n{out}"
    );
    assert_no_token_warning(&out);
    assert_eq!(prefix.peak(&out), 3, "3 tokens, no implicit slot\n{out}");
}

/// Two emerges at the same time, each in its own prefix, on one
/// `jsrun --serve=PATH -j4` pool that both know from make.conf only (as in
/// README's Gentoo set-up): neither has MAKEFLAGS in its environment, so
/// neither has an implicit slot and every build reads a token. Together they
/// run exactly 4 builds at once, never 5; the first 4 builds of both meet at
/// one barrier directory, so 4 at once really happens. Afterwards the pool
/// holds its 4 tokens again, and SIGTERM ends the daemon with 0, no warning,
/// and no fifo left.
#[test]
fn two_emerges_share_a_served_pool() {
    let _serial = serial();
    let sandbox = crate::util::Sandbox::new();
    let pool = sandbox.join("pool");
    let mut daemon = sandbox
        .jsrun()
        .arg("-v")
        .arg(format!("--serve={}", pool.display()))
        .arg("-j4")
        // Outlives both emerges, each of which may take up to DEADLINE.
        .deadline(3 * DEADLINE)
        .spawn();
    let daemon_stderr = daemon.stderr_path();
    daemon.wait_until("the served fifo", || {
        fs::read_to_string(&daemon_stderr).is_ok_and(|e| e.contains("serving"))
    });
    two_emerges_share(&sandbox, &pool, tokens_in);
    daemon.signal(libc::SIGTERM);
    let end = daemon.wait();
    end.success().stderr_lacks("warning");
    assert!(
        !pool.exists(),
        "the daemon left its fifo {}",
        pool.display()
    );
}

/// The two emerges of [`two_emerges_share_a_served_pool`] on the served pool
/// of 4 at `pool` (a fifo, or the token file of an accounting pool), whose
/// free tokens `free` counts: 4 before, exactly 4 builds at once across both
/// prefixes, 4 free again after.
pub(crate) fn two_emerges_share(
    sandbox: &crate::util::Sandbox,
    pool: &Path,
    free: impl Fn(&Path) -> usize,
) {
    assert_eq!(free(pool), 4, "free tokens in the served pool at the start");

    let makeflags = format!("-j4 --jobserver-auth=fifo:{}", pool.display());
    let barrier = sandbox.join("barrier");
    fs::create_dir(&barrier).expect("mkdir barrier");
    let prefixes = ["share-a", "share-b"].map(|name| {
        let prefix = Prefix::new(name);
        prefix.expect_at_once(4);
        prefix.share_barrier(&barrier);
        prefix.add_to_make_conf(&format!("MAKEFLAGS=\"{makeflags}\"\n"));
        prefix
    });
    let emerges: Vec<Running> = prefixes
        .iter()
        .map(|prefix| {
            let mut cmd = prefix.command(emerge());
            cmd.args(prefix.emerge_args());
            Running::start(&mut cmd, prefix)
        })
        .collect();
    let outs: Vec<Output> = emerges.into_iter().map(Running::wait).collect();
    let report = outs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");

    let mut events = Vec::new();
    for (prefix, out) in prefixes.iter().zip(&outs) {
        out.assert_success();
        let seen = prefix.makeflags(out);
        assert_eq!(
            jobserver_fifo(&seen).as_deref(),
            Some(pool),
            "{}: the builds must see the served pool, MAKEFLAGS {seen:?}\n{out}",
            prefix.name
        );
        assert!(
            !out.stderr.contains("jobserver"),
            "{}: emerge reports a jobserver problem\n{out}",
            prefix.name
        );
        events.extend(prefix.events(out));
    }
    let peak = peak_of(events);
    eprintln!("both prefixes: at most {peak} builds at once");
    let logs = prefixes
        .iter()
        .map(|p| format!("{}:\n{}", p.name, p.log("builds")))
        .collect::<String>();
    assert_eq!(
        peak, 4,
        "the pool's 4 tokens, no implicit slot in either emerge\n{logs}\n{report}"
    );
    assert_eq!(
        free(pool),
        4,
        "free tokens in the served pool after both emerges\n{report}"
    );
}

// ---------------------------------------------------------------------------
// Peers

fn jsrun() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jsrun"))
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv `scripts/peers.sh` fills from `tests/peers.txt`.
fn peers_venv() -> PathBuf {
    repo_root().join(".peers/venv")
}

/// emerge from PyPI `portage` 3.0.83 in the peers venv. Missing or another
/// version fails the test: it must never pass without having run emerge.
pub(crate) fn emerge() -> PathBuf {
    let venv = peers_venv();
    let emerge = venv.join("bin/emerge");
    let pinned = fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|python| {
            python
                .path()
                .join("site-packages/portage-3.0.83.dist-info")
                .is_dir()
        });
    assert!(
        emerge.is_file() && pinned && portage_config().join("make.globals").is_file(),
        "peer portage missing: run scripts/test (it installs portage==3.0.83 into {})",
        venv.display()
    );
    emerge
}

/// Portage's global config (make.globals, sets) as the wheel installs it.
fn portage_config() -> PathBuf {
    peers_venv().join("share/portage/config")
}

/// GNU make 4.4.1: `$JSRUN_MAKE44`, else the peers venv.
fn make44() -> PathBuf {
    let make = std::env::var_os("JSRUN_MAKE44")
        .map_or_else(|| peers_venv().join("bin/make"), PathBuf::from);
    assert!(
        make.is_file(),
        "peer make 4.4.1 missing ({}): run scripts/test",
        make.display()
    );
    make
}

// ---------------------------------------------------------------------------
// The throwaway prefix

pub(crate) struct Prefix {
    name: String,
    _dir: tempfile::TempDir,
    /// EPREFIX: etc/portage, var/db/pkg, the repository, the logs.
    pub(crate) root: PathBuf,
}

impl Prefix {
    pub(crate) fn new(name: &str) -> Prefix {
        emerge(); // fail early and loudly without the peer
        let dir = tempfile::Builder::new()
            .prefix(&format!("jsrun-emerge-{name}-"))
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        let mkdir = |p: &str| fs::create_dir_all(root.join(p)).expect("mkdir in prefix");
        for p in [
            "etc/portage",
            "share/portage/config/sets",
            "var/db/pkg",
            "var/tmp",
            "var/cache/edb",
            "var/lib/portage",
            "repo/metadata",
            "repo/profiles/base",
            "log",
        ] {
            mkdir(p);
        }
        let write = |p: &str, text: &str| fs::write(root.join(p), text).expect("write in prefix");

        // Portage installed as a Python module looks for its global config
        // under $EPREFIX/share/portage/config.
        let config = portage_config();
        symlink(
            config.join("make.globals"),
            root.join("share/portage/config/make.globals"),
        )
        .expect("link make.globals");
        symlink(
            config.join("sets/portage.conf"),
            root.join("share/portage/config/sets/portage.conf"),
        )
        .expect("link sets/portage.conf");

        write("repo/profiles/repo_name", "test\n");
        write("repo/profiles/categories", &format!("{CATEGORY}\n"));
        write(
            "repo/metadata/layout.conf",
            "masters =\nthin-manifests = true\n",
        );
        write("repo/profiles/base/eapi", "8\n");
        write(
            "repo/profiles/base/make.defaults",
            "ARCH=\"amd64\"\nACCEPT_KEYWORDS=\"amd64\"\n",
        );
        symlink(
            root.join("repo/profiles/base"),
            root.join("etc/portage/make.profile"),
        )
        .expect("link make.profile");
        for pkg in PACKAGES {
            mkdir(&format!("repo/{CATEGORY}/{pkg}"));
            write(&format!("repo/{CATEGORY}/{pkg}/{pkg}-1.ebuild"), EBUILD);
        }

        let make_conf = MAKE_CONF
            .replace("@USER@", &id("-un"))
            .replace("@GROUP@", &id("-gn"))
            .replace("@EPREFIX@", &root.display().to_string());
        write("etc/portage/make.conf", &make_conf);

        Prefix {
            name: name.to_string(),
            _dir: dir,
            root,
        }
    }

    /// A command that sees this prefix and nothing of the caller's jobserver:
    /// a cleared environment with PATH (peers venv first), HOME, and
    /// Portage's prefix and repository settings.
    pub(crate) fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new(program.as_ref());
        let path = match std::env::var("PATH") {
            Ok(p) if !p.is_empty() => format!("{}:{p}", peers_venv().join("bin").display()),
            _ => format!(
                "{}:/usr/local/bin:/usr/bin:/bin",
                peers_venv().join("bin").display()
            ),
        };
        cmd.env_clear()
            .current_dir(&self.root)
            .env("PATH", path)
            .env("HOME", &self.root)
            .env("LC_ALL", "C")
            .env("PORTAGE_OVERRIDE_EPREFIX", &self.root)
            .env(
                "PORTAGE_REPOSITORIES",
                format!(
                    "[DEFAULT]\nmain-repo = test\n\n[test]\nlocation = {}\n",
                    self.root.join("repo").display()
                ),
            );
        if let Some(tmp) = std::env::var_os("TMPDIR") {
            cmd.env("TMPDIR", tmp);
        }
        cmd
    }

    pub(crate) fn emerge_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--oneshot",
            "--jobs=8",
            "--quiet-build=y",
            "--color=n",
            "--nospinner",
        ]
        .map(String::from)
        .into();
        args.extend(PACKAGES.iter().map(|p| format!("{CATEGORY}/{p}")));
        args
    }

    /// Makes the first `builds` builds wait for each other in src_install
    /// (tests/emerge/build.ebuild), so that many overlap whatever the timing.
    pub(crate) fn expect_at_once(&self, builds: usize) {
        fs::write(self.root.join("log/want"), format!("{builds}\n")).expect("write log/want");
    }

    pub(crate) fn log(&self, name: &str) -> String {
        fs::read_to_string(self.root.join("log").join(name)).unwrap_or_default()
    }

    /// MAKEFLAGS as the builds saw it; the same for all of them.
    fn makeflags(&self, out: &Output) -> String {
        let seen: Vec<String> = PACKAGES
            .iter()
            .map(|p| {
                self.log(&format!("makeflags.{p}"))
                    .trim_end_matches('\n')
                    .to_string()
            })
            .collect();
        assert!(
            seen.iter().all(|m| *m == seen[0]),
            "builds saw different MAKEFLAGS: {seen:?}\n{out}"
        );
        seen[0].clone()
    }

    fn free_tokens_after_emerge(&self) -> usize {
        let text = self.log("free-tokens");
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no token count after emerge: {text:?}"))
    }

    /// The most builds that ran at once, after checking every package built
    /// exactly once.
    fn peak(&self, out: &Output) -> usize {
        let peak = peak_of(self.events(out));
        eprintln!("{}: at most {peak} builds at once", self.name);
        peak
    }

    /// The builds' starts and ends, `(ns, is_start)`, after checking every
    /// package built exactly once.
    pub(crate) fn events(&self, out: &Output) -> Vec<(u128, bool)> {
        let log = self.log("builds");
        let mut events = Vec::new();
        let mut seen: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for line in log.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let &[kind, pkg, ns] = fields.as_slice() else {
                panic!("bad log line {line:?}\n{out}");
            };
            let ns: u128 = ns
                .parse()
                .unwrap_or_else(|_| panic!("bad log line {line:?}\n{out}"));
            let entry = seen.entry(pkg).or_default();
            match kind {
                "start" => entry.0 += 1,
                "end" => entry.1 += 1,
                _ => panic!("bad log line {line:?}\n{out}"),
            }
            events.push((ns, kind == "start"));
        }
        let expected: BTreeMap<&str, (usize, usize)> =
            PACKAGES.iter().map(|p| (*p, (1, 1))).collect();
        assert_eq!(
            seen, expected,
            "every package must build once\nlog:\n{log}\n{out}"
        );
        events
    }

    /// Makes this prefix's builds meet at `dir` (log/barrier becomes a link to
    /// it), with the builds of every other prefix linked there too.
    fn share_barrier(&self, dir: &Path) {
        symlink(dir, self.root.join("log/barrier")).expect("link log/barrier");
    }

    pub(crate) fn add_to_make_conf(&self, text: &str) {
        fs::OpenOptions::new()
            .append(true)
            .open(self.root.join("etc/portage/make.conf"))
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("append to make.conf");
    }
}

/// The most builds at once in `(ns, is_start)` events, from one log or
/// several (the times are CLOCK_REALTIME, comparable across prefixes).
pub(crate) fn peak_of(mut events: Vec<(u128, bool)>) -> usize {
    // At equal times an end sorts before a start: no false overlap.
    events.sort_unstable();
    let (mut now, mut peak) = (0usize, 0usize);
    for (_, start) in events {
        if start {
            now += 1;
            peak = peak.max(now);
        } else {
            now -= 1;
        }
    }
    peak
}

/// Tokens in a fifo now, counted without taking any: FIONREAD on a
/// read-only non-blocking description of it (the pool's owner keeps it open,
/// so closing this one loses nothing).
fn tokens_in(path: &Path) -> usize {
    let fd = open(
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `n`; `fd` is open for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD on {}", path.display());
    usize::try_from(n).expect("FIONREAD count")
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("run id");
    assert!(out.status.success(), "id {flag} failed");
    String::from_utf8(out.stdout)
        .expect("id output")
        .trim()
        .to_string()
}

/// The path of the last `--jobserver-auth=fifo:` word of a MAKEFLAGS value.
pub(crate) fn jobserver_fifo(makeflags: &str) -> Option<PathBuf> {
    makeflags
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--jobserver-auth="))
        .next_back()
        .and_then(|auth| auth.strip_prefix("fifo:"))
        .map(PathBuf::from)
}

fn assert_no_token_warning(out: &Output) {
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("jsrun") && l.contains("token"))
        .collect();
    assert!(
        warnings.is_empty(),
        "jsrun complains about tokens: {warnings:?}\n{out}"
    );
}

// ---------------------------------------------------------------------------
// A fifo jobserver owned by the test

struct OuterFifo {
    path: PathBuf,
    /// Keeps the fifo open, so it never sees EOF and its bytes stay.
    _keep: OwnedFd,
}

impl OuterFifo {
    fn new(path: &Path, tokens: &[u8]) -> OuterFifo {
        mkfifo(path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let keep = open(path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).expect("open fifo");
        File::from(keep.try_clone().expect("dup fifo fd"))
            .write_all(tokens)
            .expect("fill fifo");
        OuterFifo {
            path: path.to_path_buf(),
            _keep: keep,
        }
    }

    /// Every byte in the fifo now, read on a private non-blocking description.
    fn drain(&self) -> Vec<u8> {
        let fd = open(
            &self.path,
            OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .expect("open fifo");
        let mut file = File::from(fd);
        let mut bytes = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read fifo: {e}"),
            }
        }
        bytes
    }
}

// ---------------------------------------------------------------------------
// Running with a deadline

pub(crate) struct Output {
    command: String,
    /// None if it could not even be reaped after a kill.
    pub(crate) status: Option<ExitStatus>,
    stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    pub(crate) fn assert_success(&self) {
        assert!(
            self.status.is_some_and(|s| s.success()),
            "command failed\n{self}"
        );
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- command: {}\n--- status: {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// A command started in a process group of its own, stdout and stderr in
/// files of the prefix. Every wait has a deadline; past it the whole group is
/// killed and the test fails with the output so far.
pub(crate) struct Running {
    child: Child,
    command: String,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Running {
    pub(crate) fn start(cmd: &mut Command, prefix: &Prefix) -> Running {
        let command = format!("{cmd:?}");
        let stdout = prefix.root.join("log/stdout");
        let stderr = prefix.root.join("log/stderr");
        // The test's SIGINT must reach a jsrun that has not inherited it ignored
        // (a suite started with `&` from a non-interactive shell).
        let child = crate::util::default_signals(cmd)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
        Running {
            child,
            command,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    fn output(&self, status: Option<ExitStatus>) -> Output {
        Output {
            command: self.command.clone(),
            status,
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }

    /// Fails the test if the deadline has passed.
    fn check_deadline(&mut self) {
        if self.started.elapsed() > DEADLINE {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            let status = self.child.wait().ok();
            panic!("killed after {DEADLINE:?}\n{}", self.output(status));
        }
    }

    /// Waits until `ready()` holds, while the command runs.
    pub(crate) fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        while !ready() {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("exited before {what}\n{}", self.output(Some(status)));
            }
            self.check_deadline();
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn wait(mut self) -> Output {
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return self.output(Some(status));
            }
            self.check_deadline();
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    /// A test that fails while the command still runs (e.g. waiting for
    /// another command) kills its whole group.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to the end (see [`Running`]).
fn run(cmd: &mut Command, prefix: &Prefix) -> Output {
    Running::start(cmd, prefix).wait()
}
