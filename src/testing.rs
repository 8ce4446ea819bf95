//! For the unit tests: saying loudly that the machine cannot give a test what it needs.

/// Says that this machine cannot give `test` the real resource it needs (a cgroup, a PSI
/// trigger), so it returns without having checked anything: on stderr and, when
/// scripts/test runs the suite, in the file `JSRUN_CANNOT_LOG` names, which scripts/test
/// lists after the total. The unit tests' twin of `machine_cannot` in tests/util.rs (the
/// integration tests are another crate).
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
