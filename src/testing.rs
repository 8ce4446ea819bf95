//! For the tests: saying loudly that the machine cannot give a test what it needs. Compiled
//! into the unit tests and, through `#[path]` in tests/util.rs, into the integration tests
//! (another crate).

/// Says that this machine cannot give `test` the real resource it needs (a memory cgroup,
/// a PSI trigger, a FUSE mount), so it returns without having checked anything: on stderr
/// and, when scripts/test runs the suite, in the file `JSRUN_CANNOT_LOG` names, which
/// scripts/test lists after the total: such a test is never counted silently as a pass.
pub fn machine_cannot(test: &str, why: &str) {
    use std::io::Write;
    let line = format!("NOT RUN on this machine: {test}: {why}");
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("JSRUN_CANNOT_LOG") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(err) = appended {
            panic!("{line} (and JSRUN_CANNOT_LOG could not take it: {err})");
        }
    }
}
