//! The service files of `service/` for `jsrun --serve` (systemd units, OpenRC
//! script, their settings) pass `scripts/check-services`, and that script
//! fails on copies broken the ways a unit or an init script breaks: a value
//! systemd cannot parse, a misspelt setting it only warns about, a reload
//! mapped to a resize, a shell syntax error, a command line that lost an
//! option, an accounting unit whose mount would stay in a namespace of its own.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{Output, Sandbox, jsrun_bin};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/check-services DIR`, with the unit's ExecStart pointed at the
/// jsrun under test (systemd-analyze rejects a program that does not exist).
fn check(sandbox: &Sandbox, dir: &Path) -> Output {
    sandbox
        .command(repo().join("scripts/check-services"))
        .arg(dir)
        .env("JSRUN_BIN", jsrun_bin())
        .run()
}

/// The unit is only checked where systemd-analyze is: a missing one fails
/// the test, naming the fix, instead of letting the unit go unchecked.
#[track_caller]
fn assert_unit_was_verified(output: &Output) {
    assert!(
        !output
            .stdout
            .contains("skipped: systemd-analyze verify (no systemd-analyze"),
        "systemd-analyze is missing, so the unit went unchecked: install it \
         (Debian: apt-get install systemd; .ci/run does)\n{}",
        output.report()
    );
}

/// A copy of `service/` in the sandbox, to break.
fn copy_of_service(sandbox: &Sandbox) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
        for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
            let entry = entry.expect("directory entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                copy(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), &target)
                    .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
            }
        }
    }
    let dir = sandbox.join("service");
    copy(&repo().join("service"), &dir);
    dir
}

/// Replaces the one occurrence of `from` in `file` with `to`.
#[track_caller]
fn edit(file: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} should occur once in {}",
        file.display()
    );
    fs::write(file, text.replacen(from, to, 1)).expect("write the broken copy");
}

/// A broken copy fails with exit status 1 and a FAILED line naming `check`
/// whose details include `detail`.
#[track_caller]
fn assert_fails(output: &Output, check: &str, detail: &str) {
    output.code(1);
    assert!(
        output
            .stdout
            .contains(&format!("check-services: FAILED: {check}")),
        "expected the check {check:?} to fail\n{}",
        output.report()
    );
    assert!(
        output.stdout.contains(detail),
        "expected {detail:?} in the report\n{}",
        output.report()
    );
}

#[test]
fn the_service_files_pass_their_checks() {
    let sandbox = Sandbox::new();
    let output = check(&sandbox, &repo().join("service"));
    assert_unit_was_verified(&output);
    output.success();
    for check in [
        "ok: systemd-analyze verify jsrun.service",
        "ok: systemd-analyze security jsrun.service",
        "ok: jsrun.service settings",
        "ok: systemd-analyze verify jsrun-accounting.service",
        "ok: systemd-analyze security jsrun-accounting.service",
        "ok: jsrun-accounting.service settings",
        "ok: jsrun-accounting.service accounting",
        "ok: sh -n openrc/jsrun",
        "ok: bash -n openrc/jsrun",
        "ok: openrc/jsrun with the shipped conf.d",
        "ok: openrc/jsrun with JSRUN_JOBS that is no number",
        "ok: openrc/jsrun with JSRUN_ACCOUNTING=yes",
        "ok: README.md and gentoo/sandbox.conf",
        " 0 failed",
    ] {
        assert!(
            output.stdout.contains(check),
            "expected {check:?}\n{}",
            output.report()
        );
    }
}

/// A value systemd cannot parse: systemd-analyze says so (and ignores the
/// line), the check fails.
#[test]
fn a_unit_with_a_bad_value_fails() {
    let sandbox = Sandbox::new();
    let dir = copy_of_service(&sandbox);
    edit(
        &dir.join("systemd/jsrun.service"),
        "\nType=exec\n",
        "\nType=exce\n",
    );
    let output = check(&sandbox, &dir);
    assert_unit_was_verified(&output);
    assert_fails(&output, "systemd-analyze verify", "exce");
}

/// A misspelt setting: systemd-analyze only warns and exits 0, which must
/// still fail the check (the hardening it meant would be gone).
#[test]
fn a_unit_with_a_misspelt_setting_fails() {
    let sandbox = Sandbox::new();
    let dir = copy_of_service(&sandbox);
    edit(
        &dir.join("systemd/jsrun.service"),
        "\nProtectHome=yes\n",
        "\nProtectHom=yes\n",
    );
    let output = check(&sandbox, &dir);
    assert_unit_was_verified(&output);
    assert_fails(
        &output,
        "systemd-analyze verify",
        "Unknown key 'ProtectHom'",
    );
}

/// A valid unit that lost its hardening: systemd-analyze verify has nothing
/// to say, its exposure score fails the check.
#[test]
fn a_unit_without_its_hardening_fails() {
    let sandbox = Sandbox::new();
    let dir = copy_of_service(&sandbox);
    let unit = dir.join("systemd/jsrun.service");
    let text = fs::read_to_string(&unit).expect("read the unit");
    let hardening = [
        "NoNewPrivileges=",
        "CapabilityBoundingSet=",
        "Protect",
        "Private",
        "Restrict",
        "ReadWritePaths=",
        "LockPersonality=",
        "MemoryDenyWriteExecute=",
        "SystemCall",
        "UMask=",
    ];
    let bare: String = text
        .lines()
        .filter(|line| !hardening.iter().any(|setting| line.starts_with(setting)))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        bare.len() < text.len() && bare.contains("\nExecStart="),
        "the unit should have hardening to take out:\n{text}"
    );
    fs::write(&unit, bare).expect("write the bare unit");
    let output = check(&sandbox, &dir);
    assert_unit_was_verified(&output);
    assert!(
        output
            .stdout
            .contains("ok: systemd-analyze verify jsrun.service"),
        "the bare unit is still valid\n{}",
        output.report()
    );
    assert_fails(
        &output,
        "systemd-analyze security",
        "Overall exposure level",
    );
}

/// The accounting unit hardened the way the fifo unit is: ProtectSystem= gives it
/// a mount namespace of its own, where the token file would be mounted for
/// jsrun alone. systemd finds nothing wrong with that; the check does.
#[test]
fn an_accounting_unit_in_a_mount_namespace_of_its_own_fails() {
    let sandbox = Sandbox::new();
    let dir = copy_of_service(&sandbox);
    edit(
        &dir.join("systemd/jsrun-accounting.service"),
        "\nPrivateMounts=no\n",
        "\nPrivateMounts=no\nProtectSystem=strict\n",
    );
    let output = check(&sandbox, &dir);
    assert_unit_was_verified(&output);
    assert!(
        output
            .stdout
            .contains("ok: systemd-analyze verify jsrun-accounting.service"),
        "the unit is still valid to systemd\n{}",
        output.report()
    );
    assert_fails(
        &output,
        "jsrun-accounting.service accounting",
        "ProtectSystem= gives the unit a mount namespace of its own",
    );
}

/// SIGUSR1 resizes the pool; a reload mapped to it is refused.
#[test]
fn a_unit_that_maps_reload_to_a_resize_fails() {
    let sandbox = Sandbox::new();
    let dir = copy_of_service(&sandbox);
    edit(
        &dir.join("systemd/jsrun.service"),
        "\nKillSignal=SIGTERM\n",
        "\nKillSignal=SIGTERM\nExecReload=/bin/kill -USR1 $MAINPID\n",
    );
    let output = check(&sandbox, &dir);
    assert_fails(&output, "jsrun.service settings", "ExecReload=");
}

#[test]
fn an_openrc_script_with_a_syntax_error_fails() {
    let sandbox = Sandbox::new();
    let dir = copy_of_service(&sandbox);
    edit(
        &dir.join("openrc/jsrun"),
        "\nstart_pre() {\n",
        "\nstart_pre() {\n\tif true; then\n",
    );
    let output = check(&sandbox, &dir);
    assert_fails(&output, "sh -n openrc/jsrun", "openrc/jsrun");
    assert_fails(&output, "bash -n openrc/jsrun", "openrc/jsrun");
}

/// Valid shell that no longer passes JSRUN_GROUP on: only the command line
/// the script builds shows it.
#[test]
fn an_openrc_script_that_drops_the_group_fails() {
    let sandbox = Sandbox::new();
    let dir = copy_of_service(&sandbox);
    edit(
        &dir.join("openrc/jsrun"),
        "${JSRUN_GROUP:+ --jobserver-group=${JSRUN_GROUP}}",
        "",
    );
    let output = check(&sandbox, &dir);
    assert_fails(
        &output,
        "openrc/jsrun with the shipped conf.d",
        "--jobserver-group=portage",
    );
}
