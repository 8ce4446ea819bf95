//! The real peers are the pinned versions the other tests rely on
//! (installed by scripts/peers.sh from tests/peers.txt).

use crate::util::Sandbox;

#[track_caller]
fn first_line(sandbox: &Sandbox, program: std::path::PathBuf) -> String {
    let output = sandbox.command(program).arg("--version").run();
    output.success();
    output.stdout.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn make44_is_gnu_make_4_4_1() {
    assert_eq!(
        first_line(&Sandbox::new(), crate::util::make44()),
        "GNU Make 4.4.1"
    );
}

#[test]
fn make43_is_gnu_make_4_3() {
    assert_eq!(
        first_line(&Sandbox::new(), crate::util::make43()),
        "GNU Make 4.3"
    );
}

#[test]
fn ninja_is_1_13_2() {
    let version = first_line(&Sandbox::new(), crate::util::ninja());
    assert!(version.starts_with("1.13.2"), "ninja --version: {version}");
}
