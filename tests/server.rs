//! jsrun as a jobserver server (`jsrun -jN -- COMMAND` with no jobserver
//! around): real make, ninja and the jobserver crate as its clients, and the
//! fifo it creates.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use crate::util::{Sandbox, Seen, jobserver_auth, make43, make44, makeflags_words, ninja, values};

/// A Makefile whose 6 targets are probe jobs that wait for each other in
/// threes. No `-j` is given to this make: it must take the pool from
/// MAKEFLAGS (an explicit -jN would reset jobserver mode).
fn six_probe_makefile(sandbox: &Sandbox) {
    let ids = values(6);
    let mut text = format!(".PHONY: all {0}\nall: {0}\n", ids.join(" "));
    for id in &ids {
        let probe = sandbox
            .probe()
            .id(id)
            .barrier(&sandbox.join("barrier"), 3)
            .sleep_ms(300);
        text.push_str(&format!("{id}:\n\t{}\n", probe.shell()));
    }
    sandbox.write("Makefile", text);
}

#[track_caller]
fn assert_three_at_once(sandbox: &Sandbox, output: &crate::util::Output) {
    output
        .success()
        .stderr_lacks("warning")
        .stderr_lacks("INTERNAL");
    let log = sandbox.log();
    assert_eq!(
        log.finished(),
        values(6),
        "{}\n{}",
        log.dump(),
        output.report()
    );
    assert_eq!(log.peak(), 3, "{}\n{}", log.dump(), output.report());
}

#[test]
fn make44_runs_three_jobs_from_the_fifo_pool() {
    let sandbox = Sandbox::new();
    six_probe_makefile(&sandbox);
    let output = sandbox.jsrun().args(["-j3", "--"]).arg(make44()).run();
    assert_three_at_once(&sandbox, &output);
}

#[test]
fn make44_runs_three_jobs_from_a_pipe_pool() {
    let sandbox = Sandbox::new();
    six_probe_makefile(&sandbox);
    let output = sandbox
        .jsrun()
        .args(["-j3", "--jobserver-style=pipe", "--"])
        .arg(make44())
        .run();
    assert_three_at_once(&sandbox, &output);
}

#[test]
fn make43_runs_three_jobs_from_a_pipe_pool() {
    let sandbox = Sandbox::new();
    six_probe_makefile(&sandbox);
    let output = sandbox
        .jsrun()
        .args(["-j3", "--jobserver-style=pipe", "--"])
        .arg(make43())
        .run();
    assert_three_at_once(&sandbox, &output);
}

/// make 4.3 dies on a fifo MAKEFLAGS; jsrun sees it is make < 4.4 and
/// serves a pipe without being told.
#[test]
fn make43_gets_a_pipe_pool_by_default() {
    let sandbox = Sandbox::new();
    six_probe_makefile(&sandbox);
    let output = sandbox.jsrun().args(["-j3", "--"]).arg(make43()).run();
    assert_three_at_once(&sandbox, &output);
}

/// A directory `bin` in the sandbox holding `make` (make 4.3) and the given
/// names for the probe, and a PATH that finds them first.
fn bin_with_make43(sandbox: &Sandbox, probe_names: &[&str]) -> String {
    let bin = sandbox.join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(make43(), bin.join("make")).unwrap();
    for name in probe_names {
        std::os::unix::fs::symlink(crate::util::probe_bin(), bin.join(name)).unwrap();
    }
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

/// make 4.3 run by a command that is not make itself (`nice make`, `sh -c
/// make`, `env CC=cc make`): the make on PATH decides, and jsrun serves a
/// pipe, which make 4.3 understands.
#[test]
fn make43_on_path_gets_a_pipe_pool_whatever_starts_it() {
    for (command, decided_by) in [
        (&["nice", "make"][..], "'make' (word 2 of the command)"),
        (&["sh", "-c", "make"], "the make on PATH"),
        (&["env", "CC=cc", "make"], "'make' (word 3 of the command)"),
        (
            &["nice", "-n", "5", "gmake"],
            "'gmake' (word 4 of the command)",
        ),
    ] {
        let sandbox = Sandbox::new();
        six_probe_makefile(&sandbox);
        let path = bin_with_make43(&sandbox, &[]);
        std::os::unix::fs::symlink(make43(), sandbox.join("bin/gmake")).unwrap();
        let output = sandbox
            .jsrun()
            .env("PATH", path)
            .args(["-j3", "-v", "--"])
            .args(command)
            .run();
        output
            .stderr_contains("--jobserver-style=pipe")
            .stderr_contains(decided_by);
        assert_three_at_once(&sandbox, &output);
    }
}

/// A Python script `name` in `dir` that runs the probe with its own arguments:
/// a stand-in for Portage's emerge started as `python3 SCRIPT`.
fn python_stand_in(dir: &Path, name: &str) -> String {
    fs::create_dir_all(dir).unwrap();
    let probe = crate::util::path_str(&crate::util::probe_bin());
    let script = dir.join(name);
    fs::write(
        &script,
        format!("import os, sys\nos.execv({probe:?}, [{probe:?}] + sys.argv[1:])\n"),
    )
    .unwrap();
    crate::util::path_str(&script)
}

/// With make 4.3 first on PATH, a fifo-only program behind wrappers (nice, env,
/// stdbuf, timeout) or a Python interpreter still gets a fifo pool, and `-v`
/// names the word that decided. Another program behind the same wrappers gets a
/// pipe.
#[test]
fn fifo_only_programs_behind_wrappers_and_python_keep_a_fifo_when_make_on_path_is_old() {
    let sandbox = Sandbox::new();
    let path = bin_with_make43(&sandbox, &["ninja", "samu", "emerge", "tool"]);
    let script = python_stand_in(&sandbox.join("portage"), "emerge");
    let other_script = python_stand_in(&sandbox.join("portage"), "tool");
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["nice", "ninja"], Some("'ninja' (word 2 of the command)")),
        (&["nice", "-n", "5", "ninja"], Some("'ninja' (word 4")),
        (&["env", "X=1", "samu"], Some("'samu' (word 3")),
        (
            &["env", "-u", "HOME", "nice", "emerge"],
            Some("'emerge' (word 5"),
        ),
        (
            &["stdbuf", "-oL", "timeout", "60", "ninja"],
            Some("'ninja' (word 5"),
        ),
        (&["python3", &script], Some("(word 2 of the command)")),
        (&["nice", "python3", "-u", &script], Some("(word 4")),
        (&["nice", "tool"], None),
        (&["env", "X=1", "python3", &other_script], None),
    ];
    for (i, &(command, decided_by)) in cases.iter().enumerate() {
        let seen = sandbox.join(format!("seen-{i}"));
        let words = sandbox.probe().env_out(&seen).words();
        let output = sandbox
            .jsrun()
            .env("PATH", &path)
            .args(["-j2", "-v", "--"])
            .args(command)
            .args(&words[1..])
            .run();
        output.success();
        let auth = jobserver_auth(&Seen::read(&seen).var("MAKEFLAGS").unwrap()).unwrap();
        let fifo = auth.starts_with("fifo:");
        assert_eq!(
            fifo,
            decided_by.is_some(),
            "{command:?}: {auth}\n{}",
            output.report()
        );
        if let Some(word) = decided_by {
            output
                .stderr_contains(word)
                .stderr_contains("speaks only fifo: using --jobserver-style=fifo");
        } else {
            output.stderr_contains("the make on PATH the command may run, is GNU make 4.3");
        }
    }
}

/// `bytes` of `make`, padded with zeros to `size` (an ELF binary ignores what
/// follows its segments): two makes of one size.
fn padded(make: &Path, size: usize) -> Vec<u8> {
    let mut bytes = fs::read(make).unwrap();
    assert!(
        bytes.len() <= size,
        "{} is larger than {size}",
        make.display()
    );
    bytes.resize(size, 0);
    bytes
}

/// What the probe `tool` saw in MAKEFLAGS under `jsrun -j2 -v`, with `make`
/// in `bin` first on PATH and `runtime` as XDG_RUNTIME_DIR; and jsrun's
/// stderr.
fn style_seen(sandbox: &Sandbox, runtime: &Path, round: &str) -> (String, String) {
    let seen = sandbox.join(format!("seen-{round}"));
    let words = sandbox.probe().env_out(&seen).words();
    let path = format!("{}:{}", sandbox.str("bin"), std::env::var("PATH").unwrap());
    let output = sandbox
        .jsrun()
        .env("PATH", path)
        .env("XDG_RUNTIME_DIR", runtime)
        .args(["-j2", "-v", "--", "tool"])
        .args(&words[1..])
        .run();
    output
        .success()
        .stderr_lacks("warning")
        .stderr_lacks("error");
    let auth = jobserver_auth(&Seen::read(&seen).var("MAKEFLAGS").unwrap()).unwrap();
    (auth, output.stderr.clone())
}

/// The make version is asked once and remembered under
/// `$XDG_RUNTIME_DIR/jsrun`; a make replaced at the same path is asked again,
/// whether it is a new file renamed into place or the same file written over in
/// place with its size and mtime as before (only its ctime moves). A script
/// named make is asked every time.
#[test]
fn the_make_version_is_remembered_and_a_replaced_make_is_asked_again() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.join("runtime");
    fs::create_dir(&runtime).unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    let bin = sandbox.join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(crate::util::probe_bin(), bin.join("tool")).unwrap();
    let size = fs::metadata(make43())
        .unwrap()
        .len()
        .max(fs::metadata(make44()).unwrap().len());
    let size = usize::try_from(size).unwrap();
    let (old, new) = (padded(&make43(), size), padded(&make44(), size));
    let make = bin.join("make");
    fs::write(&make, &old).unwrap();
    fs::set_permissions(&make, fs::Permissions::from_mode(0o755)).unwrap();

    let (auth, stderr) = style_seen(&sandbox, &runtime, "asked");
    assert!(
        !auth.starts_with("fifo:"),
        "make 4.3: a pipe, {auth}\n{stderr}"
    );
    assert!(!stderr.contains("remembered"), "{stderr}");
    let (auth, stderr) = style_seen(&sandbox, &runtime, "remembered");
    assert!(
        !auth.starts_with("fifo:"),
        "make 4.3: a pipe, {auth}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "remembered in {}",
            runtime.join("jsrun/make-versions").display()
        )),
        "the second run takes the version from the file\n{stderr}"
    );

    // make 4.4.1 written over make 4.3 in place: same inode, size and mtime.
    let before = fs::metadata(&make).unwrap();
    let mut file = fs::OpenOptions::new().write(true).open(&make).unwrap();
    std::io::Write::write_all(&mut file, &new).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
    drop(file);
    let after = fs::metadata(&make).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (after.ino(), after.size(), after.mtime(), after.mtime_nsec()),
        (
            before.ino(),
            before.size(),
            before.mtime(),
            before.mtime_nsec()
        )
    );
    let (auth, stderr) = style_seen(&sandbox, &runtime, "in-place");
    assert!(
        auth.starts_with("fifo:"),
        "make 4.4.1 in place: a fifo, {auth}\n{stderr}"
    );
    assert!(!stderr.contains("remembered"), "asked again\n{stderr}");

    // make 4.3 again, a new file renamed into place.
    let tmp = bin.join("make.new");
    fs::write(&tmp, &old).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, &make).unwrap();
    let (auth, stderr) = style_seen(&sandbox, &runtime, "renamed");
    assert!(
        !auth.starts_with("fifo:"),
        "make 4.3 renamed into place: a pipe, {auth}\n{stderr}"
    );
    assert!(!stderr.contains("remembered"), "asked again\n{stderr}");

    // A script named make may run any make: asked every time.
    let script = bin.join("make.sh");
    fs::write(
        &script,
        format!("#!/bin/sh\nexec {} \"$@\"\n", make43().display()),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&script, &make).unwrap();
    for round in ["script", "script-again"] {
        let (auth, stderr) = style_seen(&sandbox, &runtime, round);
        assert!(
            !auth.starts_with("fifo:"),
            "{round}: a pipe, {auth}\n{stderr}"
        );
        assert!(!stderr.contains("remembered"), "{round}: asked\n{stderr}");
    }
}

/// The remembered answer for make 4.3 (`bin/make`) written by the test as a
/// lie: make 4.4. In a file of the user's own it is believed (so the test
/// knows the file is read); in one that others may write, or that belongs to
/// another user, it is ignored and make is asked. A corrupt file, or an
/// XDG_RUNTIME_DIR that is not a directory, is no error either.
#[test]
fn a_remembered_version_is_believed_only_from_a_file_no_other_user_could_write() {
    use std::os::unix::fs::MetadataExt;
    let sandbox = Sandbox::new();
    let runtime = sandbox.join("runtime");
    fs::create_dir_all(runtime.join("jsrun")).unwrap();
    fs::set_permissions(runtime.join("jsrun"), fs::Permissions::from_mode(0o700)).unwrap();
    bin_with_make43(&sandbox, &["tool"]);
    let m = fs::metadata(make43()).unwrap();
    let lie = format!(
        "jsrun make-versions 1\n{} {} {} {} {} {} {} 4 4\n",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    );
    let file = runtime.join("jsrun/make-versions");
    let plant = |text: &str, mode: u32| {
        let _ = fs::remove_file(&file);
        fs::write(&file, text).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
    };

    plant(&lie, 0o600);
    let (auth, stderr) = style_seen(&sandbox, &runtime, "own");
    assert!(
        auth.starts_with("fifo:"),
        "the user's own file is believed: {auth}\n{stderr}"
    );
    assert!(stderr.contains("remembered in"), "{stderr}");

    for mode in [0o620, 0o602] {
        plant(&lie, mode);
        let (auth, stderr) = style_seen(&sandbox, &runtime, &format!("mode-{mode:o}"));
        assert!(
            !auth.starts_with("fifo:"),
            "mode {mode:o}: make is asked, {auth}\n{stderr}"
        );
        assert!(!stderr.contains("remembered"), "{stderr}");
    }

    if crate::util::is_root() {
        plant(&lie, 0o600);
        // A file of another user: nobody's.
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
        let (auth, stderr) = style_seen(&sandbox, &runtime, "other-user");
        assert!(
            !auth.starts_with("fifo:"),
            "another user's file: make is asked, {auth}\n{stderr}"
        );
        assert!(!stderr.contains("remembered"), "{stderr}");
    } else {
        crate::util::machine_cannot(
            "a_remembered_version_is_believed_only_from_a_file_no_other_user_could_write \
             (the file of another user)",
            "only root can give a file to another user",
        );
    }

    plant("jsrun make-versions 1\n\0garbage 1 2\nmore\n", 0o600);
    let (auth, stderr) = style_seen(&sandbox, &runtime, "corrupt");
    assert!(
        !auth.starts_with("fifo:"),
        "a corrupt file: make is asked, {auth}\n{stderr}"
    );
    let (_, stderr) = style_seen(&sandbox, &runtime, "rewritten");
    assert!(
        stderr.contains("remembered in"),
        "the corrupt file was replaced\n{stderr}"
    );

    let not_a_dir = sandbox.write("not-a-dir", "");
    let (auth, stderr) = style_seen(&sandbox, &not_a_dir, "not-a-dir");
    assert!(!auth.starts_with("fifo:"), "{auth}\n{stderr}");
}

/// Under the same PATH, commands that speak only fifo (ninja, samu, emerge)
/// keep a fifo pool, and any other command gets a pipe.
#[test]
fn fifo_only_commands_keep_a_fifo_when_make_on_path_is_old() {
    let sandbox = Sandbox::new();
    let path = bin_with_make43(&sandbox, &["ninja", "samu", "emerge", "tool"]);
    for (name, want_fifo) in [
        ("ninja", true),
        ("samu", true),
        ("emerge", true),
        ("tool", false),
    ] {
        let seen = sandbox.join(format!("seen-{name}"));
        let words = sandbox.probe().env_out(&seen).words();
        sandbox
            .jsrun()
            .env("PATH", &path)
            .args(["-j2", "--", name])
            .args(&words[1..])
            .run()
            .success();
        let auth = jobserver_auth(&Seen::read(&seen).var("MAKEFLAGS").unwrap()).unwrap();
        assert_eq!(auth.starts_with("fifo:"), want_fifo, "{name}: {auth}");
    }
}

/// ninja 1.13 reads the pool from MAKEFLAGS. Two slots, since without the
/// pool ninja would run at least 3 jobs at once (2 cores: 3; more: nproc+2).
#[test]
fn ninja_runs_two_jobs_from_the_fifo_pool() {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .barrier(&sandbox.join("barrier"), 2)
        .sleep_ms(300);
    let mut text = format!("rule probe\n  command = {} --id $id\n", probe.shell());
    for id in values(6) {
        text.push_str(&format!("build out{id}: probe\n  id = {id}\n"));
    }
    sandbox.write("build.ninja", text);
    let output = sandbox.jsrun().args(["-j2", "--"]).arg(ninja()).run();
    output.success().stderr_lacks("warning");
    let log = sandbox.log();
    assert_eq!(
        log.finished(),
        values(6),
        "{}\n{}",
        log.dump(),
        output.report()
    );
    assert_eq!(log.peak(), 2, "{}\n{}", log.dump(), output.report());
}

/// The jobserver crate as client: its own slot plus exactly the 2 tokens.
fn crate_client_takes_two_tokens(style: &[&str]) {
    let sandbox = Sandbox::new();
    let out = sandbox.join("client.out");
    let output = sandbox
        .jsrun()
        .arg("-j3")
        .args(style)
        .arg("--")
        .arg(crate::util::example("crate_client"))
        .args(["--jobs", "6", "--sleep-ms", "300", "--want", "3"])
        .arg("--log")
        .arg(sandbox.log().path())
        .arg("--barrier")
        .arg(sandbox.join("barrier"))
        .arg("--out")
        .arg(&out)
        .run();
    output.success().stderr_lacks("warning");
    let log = sandbox.log();
    assert_eq!(log.finished().len(), 6, "{}", log.dump());
    assert_eq!(log.peak(), 3, "{}\n{}", log.dump(), output.report());
    let report = fs::read_to_string(&out).expect("crate_client report");
    assert!(
        report.contains("tokens 2\n"),
        "{report}\n{}",
        output.report()
    );
}

#[test]
fn crate_client_takes_two_tokens_from_the_fifo_pool() {
    crate_client_takes_two_tokens(&[]);
}

#[test]
fn crate_client_takes_two_tokens_from_a_pipe_pool() {
    crate_client_takes_two_tokens(&["--jobserver-style=pipe"]);
}

/// Starts `jsrun -j3 -- probe` whose probe dumps what it sees, then waits at
/// a barrier until the test adds the second marker.
fn start_held_probe(sandbox: &Sandbox, jsrun_args: &[&str]) -> (crate::util::Running, Seen) {
    let probe = sandbox
        .probe()
        .id("held")
        .env_out(&sandbox.join("seen"))
        .barrier_deadline(&sandbox.join("barrier"), 2, 30_000);
    let mut running = sandbox
        .jsrun()
        .args(jsrun_args)
        .arg("--")
        .args(probe.words())
        .spawn();
    let seen_path = sandbox.join("seen");
    running.wait_until("the probe's environment dump", || seen_path.exists());
    (running, Seen::read(&seen_path))
}

/// The probe writes its environment dump before it reaches the barrier: the
/// barrier's directory may not exist yet.
fn release_held_probe(sandbox: &Sandbox) {
    let barrier = sandbox.join("barrier");
    fs::create_dir_all(&barrier).expect("barrier directory");
    fs::write(barrier.join("test"), b"").expect("write marker");
}

#[track_caller]
fn assert_private_fifo(fifo: &Path) {
    let meta = fs::metadata(fifo).unwrap_or_else(|err| panic!("{}: {err}", fifo.display()));
    assert!(
        meta.file_type().is_fifo(),
        "{} is not a fifo",
        fifo.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "mode of {}",
        fifo.display()
    );
    let dir = fifo.parent().expect("fifo has a directory");
    let meta = fs::metadata(dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "mode of {}",
        dir.display()
    );
    let path = crate::util::path_str(fifo);
    assert!(!path.contains(char::is_whitespace), "blank in {path:?}");
}

#[test]
fn fifo_is_private_advertised_and_removed_at_exit() {
    let sandbox = Sandbox::new();
    let (running, seen) = start_held_probe(&sandbox, &["-j3"]);
    let makeflags = seen.var("MAKEFLAGS").unwrap();
    let fifo = seen.fifo();
    assert!(
        makeflags.ends_with(&format!(" -j3 --jobserver-auth=fifo:{}", fifo.display())),
        "MAKEFLAGS={makeflags:?}"
    );
    assert_private_fifo(&fifo);
    release_held_probe(&sandbox);
    running.wait().success().stderr_lacks("warning");
    assert!(!fifo.exists(), "{} left behind", fifo.display());
    assert!(
        !fifo.parent().unwrap().exists(),
        "fifo directory left behind"
    );
}

#[test]
fn fifo_is_removed_when_jsrun_is_terminated() {
    let sandbox = Sandbox::new();
    let (running, seen) = start_held_probe(&sandbox, &["-j3"]);
    let fifo = seen.fifo();
    assert_private_fifo(&fifo);
    running.signal(libc::SIGTERM);
    running.wait().killed_by(libc::SIGTERM);
    assert!(!fifo.exists(), "{} left behind", fifo.display());
    assert!(
        !fifo.parent().unwrap().exists(),
        "fifo directory left behind"
    );
}

/// Fifo style: the child needs no descriptor of jsrun's, and gets none.
#[test]
fn fifo_pool_leaks_no_descriptor_into_children() {
    let sandbox = Sandbox::new();
    let (running, seen) = start_held_probe(&sandbox, &["-j3"]);
    release_held_probe(&sandbox);
    running.wait().success();
    let fds: Vec<i32> = seen.fds().iter().map(|(fd, _, _)| *fd).collect();
    assert_eq!(fds, [0, 1, 2], "{}", seen.text);
}

/// Pipe style: MAKEFLAGS names both spellings, and the two fds are open in
/// the child, ends of one pipe, readable and writable.
#[test]
fn pipe_pool_is_inherited_and_advertised() {
    let sandbox = Sandbox::new();
    let (running, seen) = start_held_probe(&sandbox, &["-j3", "--jobserver-style=pipe"]);
    release_held_probe(&sandbox);
    running.wait().success().stderr_lacks("warning");
    let makeflags = seen.var("MAKEFLAGS").unwrap();
    let auth = jobserver_auth(&makeflags).expect("--jobserver-auth");
    let (r, w) = auth.split_once(',').expect("R,W");
    let words = makeflags_words(&makeflags);
    assert!(words.contains(&"-j3".to_owned()), "MAKEFLAGS={makeflags:?}");
    assert!(
        words.contains(&format!("--jobserver-fds={r},{w}")),
        "MAKEFLAGS={makeflags:?}"
    );
    let fds = seen.fds();
    let find = |fd: &str| {
        let fd: i32 = fd.parse().expect("numeric fd");
        fds.iter()
            .find(|(n, _, _)| *n == fd)
            .unwrap_or_else(|| panic!("fd {fd} not open in the child\n{}", seen.text))
            .clone()
    };
    let (_, read_target, read_flags) = find(r);
    let (_, write_target, write_flags) = find(w);
    assert!(read_target.starts_with("pipe:"), "{}", seen.text);
    assert_eq!(read_target, write_target, "not one pipe\n{}", seen.text);
    let access = |flags: &str| u32::from_str_radix(flags, 8).unwrap() & 3;
    assert_ne!(access(&read_flags), libc::O_WRONLY as u32, "{}", seen.text);
    assert_ne!(access(&write_flags), libc::O_RDONLY as u32, "{}", seen.text);
}

/// Letter flags of MAKEFLAGS survive; old -j and jobserver words, and stale
/// jobserver settings in MFLAGS and CARGO_MAKEFLAGS (which make does not read:
/// jsrun warns and serves its -j3), do not reach the child.
#[test]
fn children_get_a_clean_makeflags() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().env_out(&sandbox.join("seen"));
    let output = sandbox
        .jsrun()
        .env("MAKEFLAGS", "k -j7")
        .env("MFLAGS", "-k -j7 --jobserver-auth=fifo:/stale/mflags")
        .env(
            "CARGO_MAKEFLAGS",
            "-j --jobserver-fds=61,62 --jobserver-auth=fifo:/stale/cargo",
        )
        .args(["-j3", "--"])
        .args(probe.words())
        .run();
    output.success();
    let seen = Seen::read(&sandbox.join("seen"));
    let makeflags = seen.var("MAKEFLAGS").unwrap();
    let words = makeflags_words(&makeflags);
    assert!(
        words
            .first()
            .is_some_and(|first| !first.starts_with('-') && first.contains('k')),
        "MAKEFLAGS={makeflags:?}"
    );
    assert!(
        !words.contains(&"-j7".to_owned()),
        "MAKEFLAGS={makeflags:?}"
    );
    let fifo = seen.fifo();
    assert!(
        makeflags.ends_with(&format!(" -j3 --jobserver-auth=fifo:{}", fifo.display())),
        "MAKEFLAGS={makeflags:?}"
    );
    for name in ["MFLAGS", "CARGO_MAKEFLAGS"] {
        let value = seen.var(name).unwrap();
        assert!(
            value.ends_with(&format!("-j3 --jobserver-auth=fifo:{}", fifo.display())),
            "{name}={value:?}"
        );
        assert!(
            !value.contains("-j7") && !value.contains("-j5"),
            "{name}={value:?}"
        );
    }
}

/// A jobserver named in MAKEFLAGS but unusable (a fifo that cannot be
/// opened, fds closed by a parent rule without '+', fds disabled by make
/// 4.4): jsrun warns and runs one job at a time even with -jN, and creates no
/// pool of its own, which would multiply the parent's budget (make's rule for
/// a sub-make without its jobserver).
#[test]
fn an_unusable_jobserver_in_makeflags_means_one_job_at_a_time() {
    let name = "MAKEFLAGS";
    for value in [
        " -j4 --jobserver-auth=fifo:/stale/makeflags",
        " -j4 --jobserver-auth=61,62",
        " -j4 --jobserver-auth=-2,-2",
    ] {
        let sandbox = Sandbox::new();
        let probe = sandbox.probe().id("{}").sleep_ms(100);
        let output = sandbox
            .jsrun()
            .env(name, value)
            .arg("-j4")
            .args(probe.words())
            .arg(":::")
            .args(values(4))
            .run();
        output
            .success()
            .stderr_contains("jobserver unavailable")
            .stderr_contains("running one job at a time");
        let log = sandbox.log();
        assert_eq!(log.finished(), values(4), "{name}: {}", log.dump());
        assert_eq!(log.peak(), 1, "{name}: {}\n{}", log.dump(), output.report());
    }
}

/// A child that keeps a token (reads one and exits) or adds one: jsrun
/// reports the mismatch at exit as a warning.
fn token_mismatch_is_reported(script: &str) {
    let sandbox = Sandbox::new();
    let output = sandbox
        .jsrun()
        .args(["-j3", "--", "sh", "-c", script])
        .run();
    output.success();
    assert!(
        output.stderr.to_lowercase().contains("token"),
        "expected a warning about tokens\n{}",
        output.report()
    );
}

const FIFO_OF_MAKEFLAGS: &str = r#"f=${MAKEFLAGS##*--jobserver-auth=fifo:}; f=${f%% *}"#;

#[test]
fn a_kept_token_is_reported() {
    token_mismatch_is_reported(&format!(
        "{FIFO_OF_MAKEFLAGS}; dd if=\"$f\" of=/dev/null bs=1 count=1 2>/dev/null"
    ));
}

#[test]
fn an_extra_token_is_reported() {
    token_mismatch_is_reported(&format!("{FIFO_OF_MAKEFLAGS}; printf + >\"$f\""));
}

/// Tokens all back, no warning: a clean run says nothing about tokens.
#[test]
fn a_clean_run_reports_nothing() {
    let sandbox = Sandbox::new();
    let probe = sandbox.probe().id("{}").sleep_ms(50);
    let output = sandbox
        .jsrun()
        .arg("-j3")
        .args(probe.words())
        .arg(":::")
        .args(values(6))
        .run();
    output.success();
    assert_eq!(output.stderr, "", "{}", output.report());
    assert_eq!(sandbox.log().finished(), values(6));
}

/// jsrun under jsrun: the inner one is a client of the outer one's pool.
fn nested_jsrun(style: &[&str]) {
    let sandbox = Sandbox::new();
    let probe = sandbox
        .probe()
        .id("{}")
        .barrier(&sandbox.join("barrier"), 3)
        .sleep_ms(300);
    let output = sandbox
        .jsrun()
        .arg("-j3")
        .args(style)
        .arg("--")
        .arg(crate::util::jsrun_bin())
        .args(probe.words())
        .arg(":::")
        .args(values(6))
        .run();
    output.success();
    assert_eq!(output.stderr, "", "{}", output.report());
    let log = sandbox.log();
    assert_eq!(log.finished(), values(6), "{}", log.dump());
    assert_eq!(log.peak(), 3, "{}\n{}", log.dump(), output.report());
}

#[test]
fn jsrun_under_jsrun_shares_the_fifo_pool() {
    nested_jsrun(&[]);
}

#[test]
fn jsrun_under_jsrun_shares_a_pipe_pool() {
    nested_jsrun(&["--jobserver-style=pipe"]);
}
