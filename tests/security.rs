//! Security: the server's fifo is private and cannot be redirected through
//! TMPDIR; `--jobserver=fifo:PATH` opens only fifos and character devices;
//! jsrun never writes a token into a file that is not a jobserver; and no
//! descriptor of jsrun's leaks into a job beyond what the job is meant to
//! have (0, 1, 2, and the two pipe fds of a pipe jobserver).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::{FifoJobserver, PipeJobserver, Sandbox, Seen, entries, jobserver_auth, values};

/// Runs `jsrun ARGS -- probe` whose probe dumps its environment and waits
/// at a barrier; returns the dump and the fifo while jsrun still runs, then
/// lets it finish and returns its output too.
fn with_running_server(
    sandbox: &Sandbox,
    cmd: crate::util::Cmd,
    check: impl FnOnce(&Seen),
) -> crate::util::Output {
    let barrier = sandbox.join("barrier");
    let seen_path = sandbox.join("seen");
    let probe = sandbox
        .probe()
        .id("held")
        .env_out(&seen_path)
        .barrier_deadline(&barrier, 2, 30_000);
    let mut running = cmd.arg("--").args(probe.words()).spawn();
    running.wait_until("the job's environment dump", || seen_path.exists());
    check(&Seen::read(&seen_path));
    fs::create_dir_all(&barrier).unwrap();
    fs::write(barrier.join("test"), b"").unwrap();
    running.wait()
}

// ---------------------------------------------------------------------------
// The server's fifo

#[test]
fn server_fifo_is_0600_in_a_fresh_0700_directory_of_its_own() {
    let sandbox = Sandbox::new();
    let tmp = sandbox.join("tmp");
    fs::create_dir(&tmp).unwrap();
    let mut fifo = PathBuf::new();
    let cmd = sandbox.jsrun().env("TMPDIR", &tmp).arg("-j3");
    let output = with_running_server(&sandbox, cmd, |seen| {
        fifo = seen.fifo();
        let meta = fs::symlink_metadata(&fifo).unwrap();
        assert!(meta.file_type().is_fifo(), "{}", fifo.display());
        assert_eq!(meta.mode() & 0o7777, 0o600, "{}", fifo.display());
        // SAFETY: geteuid and getegid only read process attributes.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        let dir = fifo.parent().unwrap();
        assert_eq!(dir.parent(), Some(tmp.as_path()), "directly in TMPDIR");
        let meta = fs::symlink_metadata(dir).unwrap();
        assert!(meta.is_dir(), "a real directory, not a symlink");
        assert_eq!(meta.mode() & 0o7777, 0o700, "{}", dir.display());
        assert_eq!(meta.uid(), uid);
        let names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["fifo"], "nothing else in the directory");
    });
    output.success();
    assert_eq!(output.stderr, "", "{}", output.report());
    assert!(!fifo.exists() && !fifo.parent().unwrap().exists());
    assert_eq!(entries(&tmp), 0, "TMPDIR is left as it was");
}

/// `--jobserver-group`: directory 0710 and fifo 0660, both of that group.
#[test]
fn jobserver_group_opens_the_fifo_to_that_group_only() {
    let sandbox = Sandbox::new();
    // As root, a group the test does not run as; otherwise its own.
    let gid = if crate::util::is_root() {
        65534
    } else {
        // SAFETY: getegid only reads a process attribute.
        unsafe { libc::getegid() }
    };
    let cmd = sandbox
        .jsrun()
        .env("TMPDIR", sandbox.path())
        .arg("-j3")
        .arg(format!("--jobserver-group={gid}"));
    let output = with_running_server(&sandbox, cmd, |seen| {
        let fifo = seen.fifo();
        let meta = fs::symlink_metadata(&fifo).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, gid));
        let meta = fs::symlink_metadata(fifo.parent().unwrap()).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o710, gid));
    });
    output.success();
}

/// What a directory holds: name → (kind, mode, symlink target).
fn snapshot(dir: &Path) -> BTreeMap<String, (String, u32, Option<PathBuf>)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            let kind = format!("{:?}", meta.file_type());
            let target = fs::read_link(entry.path()).ok();
            (
                entry.file_name().to_string_lossy().into_owned(),
                (kind, meta.mode(), target),
            )
        })
        .collect()
}

/// TMPDIR full of `jsrun.*` traps: directories (one world-writable), files,
/// fifos, symlinks to a victim directory, to a victim file and to nowhere.
/// jsrun makes a fresh directory of its own next to them, touches none of
/// them, writes nothing through any symlink, and leaves them as they were.
#[test]
fn pre_created_entries_and_symlinks_in_tmpdir_cannot_redirect_the_fifo() {
    let sandbox = Sandbox::new();
    let tmp = sandbox.join("tmp");
    let victim = sandbox.join("victim");
    let victim_file = sandbox.join("victim-file");
    fs::create_dir(&tmp).unwrap();
    fs::create_dir(&victim).unwrap();
    fs::write(&victim_file, "precious\n").unwrap();
    let mut traps = 0;
    for i in 0..300 {
        // Names of jsrun's shape (jsrun.XXXXXX) and a few plain ones.
        let name = match i {
            0 => "jsrun.".to_owned(),
            1 => "jsrun".to_owned(),
            2 => "jsrun.fifo".to_owned(),
            _ => format!("jsrun.{:06}", i * 7919 % 1_000_000),
        };
        let path = tmp.join(&name);
        match i % 6 {
            0 => symlink(&victim, &path).unwrap(),
            1 => symlink(&victim_file, &path).unwrap(),
            2 => symlink(sandbox.join("nowhere"), &path).unwrap(),
            3 => {
                fs::create_dir(&path).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
            }
            4 => fs::write(&path, "").unwrap(),
            _ => {
                FifoJobserver::at(path, b"");
            }
        }
        traps += 1;
    }
    let before = snapshot(&tmp);
    assert_eq!(before.len(), traps);
    let cmd = sandbox.jsrun().env("TMPDIR", &tmp).arg("-j3");
    let mut fifo = PathBuf::new();
    let output = with_running_server(&sandbox, cmd, |seen| {
        fifo = seen.fifo();
        let dir = fifo.parent().unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !before.contains_key(&name),
            "jsrun used the pre-created {name}"
        );
        assert_eq!(dir.parent(), Some(tmp.as_path()));
        let meta = fs::symlink_metadata(dir).unwrap();
        assert!(meta.is_dir() && !meta.file_type().is_symlink());
        assert_eq!(meta.mode() & 0o7777, 0o700);
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    });
    output.success();
    assert_eq!(output.stderr, "", "{}", output.report());
    assert_eq!(snapshot(&tmp), before, "TMPDIR's entries are untouched");
    assert_eq!(entries(&victim), 0, "nothing created through a symlink");
    assert_eq!(fs::read_to_string(&victim_file).unwrap(), "precious\n");
    assert!(!sandbox.join("nowhere").exists());
}

/// A TMPDIR with a blank (which the jobserver crate and ninja would cut
/// the fifo path at) or a relative one is not used: the fifo goes to /tmp.
#[test]
fn unusable_tmpdir_falls_back_to_tmp() {
    let sandbox = Sandbox::new();
    let blank = sandbox.join("with blank");
    fs::create_dir(&blank).unwrap();
    for tmpdir in [blank.as_os_str(), "relative/dir".as_ref()] {
        let cmd = sandbox.jsrun().env("TMPDIR", tmpdir).arg("-j2");
        let output = with_running_server(&sandbox, cmd, |seen| {
            let fifo = seen.fifo();
            assert_eq!(
                fifo.parent().and_then(Path::parent),
                Some(Path::new("/tmp")),
                "TMPDIR={tmpdir:?}"
            );
        });
        output.success();
        fs::remove_dir_all(sandbox.join("barrier")).unwrap();
        fs::remove_file(sandbox.join("seen")).unwrap();
    }
    assert_eq!(entries(&blank), 0);
}

/// A TMPDIR that does not exist: jsrun cannot create its jobserver and says
/// so with 125 before running anything.
#[test]
fn missing_tmpdir_is_a_clear_error() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .env("TMPDIR", sandbox.join("no-such-dir"))
        .args(["-j2", "--"])
        .args(sandbox.probe().words())
        .run();
    output
        .code(125)
        .stderr_contains("cannot create a directory for the jobserver fifo");
    assert_eq!(sandbox.log().started(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// What `fifo:PATH` may name

/// `--jobserver=fifo:PATH` naming a regular file, a directory, a symlink to
/// a file, or nothing: 125 with a message naming the path, no job, and the
/// file unchanged.
#[test]
fn jobserver_option_refuses_what_is_not_a_fifo() {
    let sandbox = Sandbox::new();
    let file = sandbox.write("regular", "do not write here\n");
    let dir = sandbox.join("directory");
    fs::create_dir(&dir).unwrap();
    let link = sandbox.join("link-to-file");
    symlink(&file, &link).unwrap();
    let cases = [
        (file.clone(), "is not a fifo"),
        (dir.clone(), "is not a fifo"),
        (link, "is not a fifo"),
        (sandbox.join("missing"), "cannot open"),
    ];
    for (path, message) in cases {
        let output = sandbox
            .jsrun()
            .arg(format!("--jobserver=fifo:{}", path.display()))
            .arg("--")
            .args(sandbox.probe().id("job").words())
            .deadline(Duration::from_secs(10))
            .run();
        output.code(125).stderr_contains(message);
        assert!(
            output.stderr.contains(&path.display().to_string()),
            "the message names the path\n{}",
            output.report()
        );
        assert_eq!(sandbox.log().started(), Vec::<String>::new());
    }
    assert_eq!(fs::read_to_string(&file).unwrap(), "do not write here\n");
    assert_eq!(entries(&dir), 0);
}

/// MAKEFLAGS naming a regular file as its fifo (a stale or hostile value):
/// jsrun warns, runs the jobs one at a time, and never writes into it.
#[test]
fn makeflags_naming_a_regular_file_is_never_written() {
    let sandbox = Sandbox::new();
    let file = sandbox.write("regular", "");
    let probe = sandbox.probe().id("{}").sleep_ms(20);
    let output = sandbox
        .jsrun()
        .env(
            "MAKEFLAGS",
            format!(" -j4 --jobserver-auth=fifo:{}", file.display()),
        )
        .args(probe.words())
        .arg(":::")
        .args(values(4))
        .run();
    output
        .success()
        .stderr_contains("jobserver unavailable")
        .stderr_contains("is not a fifo");
    assert_eq!(sandbox.log().finished(), values(4));
    assert_eq!(sandbox.log().peak(), 1, "{}", sandbox.log().dump());
    assert_eq!(fs::read(&file).unwrap(), b"", "nothing written into it");
}

/// A character device is accepted behind `fifo:` (steve's /dev/steve);
/// /dev/null stands in for one. Reading it gives EOF at once, which jsrun
/// takes for a jobserver without writers: under `--jobserver` (no implicit
/// slot) no slot can ever come, so it stops with 125 instead of waiting;
/// it neither hangs nor spins.
#[test]
fn jobserver_option_on_dev_null_stops_without_hanging() {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .arg("--jobserver=fifo:/dev/null")
        .arg("--")
        .args(sandbox.probe().id("job").words())
        .deadline(Duration::from_secs(10))
        .run();
    output
        .code(125)
        .stderr_contains("jobserver fifo:/dev/null failed");
    assert_eq!(sandbox.log().started(), Vec::<String>::new());
}

/// A character device that never blocks (`fifo:/dev/zero`) hands out a token
/// for every read: jsrun still runs no more jobs at once than the `-j2`
/// advertised beside it, two of them in parallel (they wait for each other in
/// pairs), and `--info` calls the device unbounded.
#[test]
fn a_device_that_never_blocks_cannot_lift_the_advertised_bound() {
    let sandbox = Sandbox::new();
    let makeflags = " -j2 --jobserver-auth=fifo:/dev/zero";
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 2)
        .sleep_ms(100);
    let output = sandbox
        .jsrun()
        .env("MAKEFLAGS", makeflags)
        .args(probe.words())
        .arg(":::")
        .args(values(8))
        .run();
    output.success();
    let log = sandbox.log();
    assert_eq!(log.finished().len(), 8, "{}", log.dump());
    assert_eq!(log.peak(), 2, "{}\n{}", log.dump(), output.report());
    let info = sandbox
        .jsrun()
        .env("MAKEFLAGS", makeflags)
        .arg("--info")
        .run();
    info.success();
    assert!(
        info.stdout.contains("looks unbounded") && info.stdout.contains("at most 2 jobs"),
        "{}",
        info.report()
    );
}

/// The same device in MAKEFLAGS, with the implicit slot: after the first
/// EOF jsrun drops the jobserver, warns once, and runs every job in its
/// implicit slot. While a job runs it sleeps in poll() instead of reading
/// the always-readable device again and again.
#[test]
fn makeflags_naming_dev_null_runs_one_job_at_a_time_without_spinning() {
    let sandbox = Sandbox::new();
    let barrier = sandbox.join("barrier");
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier_deadline(&barrier, 2, 30_000);
    let mut running = sandbox
        .jsrun()
        .env("MAKEFLAGS", " -j4 --jobserver-auth=fifo:/dev/null")
        .args(probe.words())
        .arg(":::")
        .args(values(3))
        .spawn();
    running.wait_until("job 1 to run", || entries(&barrier) == 1);
    let cpu_before = running.cpu_time();
    std::thread::sleep(Duration::from_millis(500));
    let cpu = running.cpu_time() - cpu_before;
    fs::write(barrier.join("test"), b"").unwrap();
    let output = running.wait();
    output.success();
    assert_eq!(
        output.stderr.matches("warning").count(),
        1,
        "{}",
        output.report()
    );
    assert!(
        cpu < Duration::from_millis(100),
        "jsrun used {cpu:?} of CPU in 500 ms of waiting for one job"
    );
    assert_eq!(sandbox.log().finished(), values(3));
    assert_eq!(sandbox.log().peak(), 1, "{}", sandbox.log().dump());
}

// ---------------------------------------------------------------------------
// Descriptors the jobs inherit

/// The descriptors a job holds: fd → target.
fn fds_of(seen: &Seen) -> BTreeMap<i32, String> {
    seen.fds()
        .into_iter()
        .map(|(fd, target, _)| (fd, target))
        .collect()
}

/// Runs `jsrun ARGS probe --env-out` for jobs 1 and 2 (at once) and returns
/// what each held.
fn job_fds(
    sandbox: &Sandbox,
    cmd: crate::util::Cmd,
    barrier_want: usize,
) -> Vec<(Seen, BTreeMap<i32, String>)> {
    let probe = sandbox
        .probe()
        .id("{}")
        .env_out(&sandbox.join("seen-{}"))
        .barrier(&sandbox.join("barrier"), barrier_want);
    let output = cmd.args(probe.words()).arg(":::").args(["1", "2"]).run();
    output.success();
    ["1", "2"]
        .iter()
        .map(|id| {
            let seen = Seen::read(&sandbox.join(format!("seen-{id}")));
            let fds = fds_of(&seen);
            (seen, fds)
        })
        .collect()
}

#[track_caller]
fn assert_fds(fds: &BTreeMap<i32, String>, want: &[i32], seen: &Seen) {
    let got: Vec<i32> = fds.keys().copied().collect();
    assert_eq!(got, want, "{}", seen.text);
}

/// Fifo server with every file option jsrun opens (job log, trace, value
/// file): the jobs hold 0, 1 and 2 only.
#[test]
fn fifo_server_jobs_hold_only_the_standard_fds() {
    let sandbox = Sandbox::new();
    let values_file = sandbox.write("values", "1\n2\n");
    let probe = sandbox
        .probe()
        .id("{}")
        .env_out(&sandbox.join("seen-{}"))
        .barrier(&sandbox.join("barrier"), 2);
    sandbox
        .jsrun()
        .args(["-j2", "--stats", "--joblog"])
        .arg(sandbox.join("joblog"))
        .arg("--trace")
        .arg(sandbox.join("trace.json"))
        .args(probe.words())
        .arg("::::")
        .arg(&values_file)
        .run()
        .success();
    for id in ["1", "2"] {
        let seen = Seen::read(&sandbox.join(format!("seen-{id}")));
        assert_fds(&fds_of(&seen), &[0, 1, 2], &seen);
    }
}

/// Pipe server: exactly the two advertised fds on top of 0, 1, 2, and they
/// are the two ends of one pipe.
#[test]
fn pipe_server_jobs_hold_exactly_the_advertised_fds() {
    let sandbox = Sandbox::new();
    let cmd = sandbox.jsrun().args(["-j2", "--jobserver-style=pipe"]);
    for (seen, fds) in job_fds(&sandbox, cmd, 2) {
        let auth = jobserver_auth(&seen.var("MAKEFLAGS").unwrap()).unwrap();
        let (r, w) = auth.split_once(',').unwrap();
        let (r, w): (i32, i32) = (r.parse().unwrap(), w.parse().unwrap());
        let mut want = vec![0, 1, 2, r, w];
        want.sort();
        assert_fds(&fds, &want, &seen);
        assert!(
            fds[&r].starts_with("pipe:") && fds[&r] == fds[&w],
            "{}",
            seen.text
        );
    }
}

/// Clients: of a fifo in MAKEFLAGS or `--jobserver`, the jobs hold 0, 1,
/// 2; of an inherited pipe, the same two pipe fds jsrun was given (they are
/// in the MAKEFLAGS the jobs get unchanged), and nothing of jsrun's own.
#[test]
fn client_jobs_hold_only_what_they_inherited() {
    let sandbox = Sandbox::new();
    let fifo = FifoJobserver::new(&sandbox, b"a");
    for cmd in [
        sandbox.jsrun().fifo_jobserver(&fifo),
        sandbox
            .jsrun()
            .arg(format!("--jobserver=fifo:{}", fifo.path().display())),
    ] {
        for (seen, fds) in job_fds(&sandbox, cmd, 1) {
            assert_fds(&fds, &[0, 1, 2], &seen);
        }
    }
    let pipe = PipeJobserver::new(b"a");
    let [r, w] = pipe.fds();
    let mut want = vec![0, 1, 2, r, w];
    want.sort();
    for (seen, fds) in job_fds(&sandbox, sandbox.jsrun().pipe_jobserver(&pipe), 2) {
        assert_fds(&fds, &want, &seen);
    }
    assert_eq!(fifo.drain(), b"a");
    assert_eq!(pipe.drain(), b"a");
}

/// Under -O (job and line) and --tag, a job's 1 and 2 are pipes of its own:
/// not jsrun's stdout or stderr, not another job's, and nothing else open.
#[test]
fn grouped_output_jobs_hold_only_their_own_pipes() {
    for option in ["-Ojob", "-Oline", "--tag"] {
        let sandbox = Sandbox::new();
        let cmd = sandbox.jsrun().args(["-j2", option]);
        let jobs = job_fds(&sandbox, cmd, 2);
        let mut pipes = Vec::new();
        for (seen, fds) in &jobs {
            assert_fds(fds, &[0, 1, 2], seen);
            for fd in [1, 2] {
                assert!(fds[&fd].starts_with("pipe:"), "{option}\n{}", seen.text);
                pipes.push(fds[&fd].clone());
            }
        }
        let mut distinct = pipes.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            4,
            "{option}: four different pipes {pipes:?}"
        );
    }
}

/// Values read from stdin: the jobs get /dev/null as stdin, not jsrun's
/// input, and no other descriptor.
#[test]
fn jobs_of_stdin_values_hold_dev_null_as_stdin() {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .id("{}")
        .env_out(&sandbox.join("seen-{}"))
        .barrier(&sandbox.join("barrier"), 2);
    sandbox
        .jsrun()
        .arg("-j2")
        .args(probe.words())
        .args(["::::", "-"])
        .stdin("1\n2\n")
        .run()
        .success();
    for id in ["1", "2"] {
        let seen = Seen::read(&sandbox.join(format!("seen-{id}")));
        let fds = fds_of(&seen);
        assert_fds(&fds, &[0, 1, 2], &seen);
        assert_eq!(fds[&0], "/dev/null", "{}", seen.text);
    }
}
