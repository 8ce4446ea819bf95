//! What to run: job values from a [`source::Source`], commands from a
//! [`template::Template`], programs resolved before any token is taken for them.

pub mod feed;
pub mod source;
pub mod template;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::status::Status;

/// One job, ready to start.
pub struct Job {
    /// 1-based sequence number (`{#}`).
    pub seq: u64,
    /// Slot number 1..N (`{%}`).
    pub slot: usize,
    pub argv: Vec<OsString>,
    /// `argv[0]` resolved through PATH.
    pub program: PathBuf,
    pub value: Option<Vec<u8>>,
    /// Run through `/bin/sh -c`: the value is the command line.
    shell_line: bool,
}

impl Job {
    pub fn new(
        seq: u64,
        slot: usize,
        argv: Vec<OsString>,
        value: Option<Vec<u8>>,
        shell_line: bool,
    ) -> Job {
        Job {
            seq,
            slot,
            argv,
            program: PathBuf::new(),
            value,
            shell_line,
        }
    }

    /// The command as a user would type it, for `-v`, `-n`, the job log and the trace.
    /// Made on demand: most runs never need it.
    pub fn display(&self) -> String {
        match (&self.value, self.shell_line) {
            (Some(line), true) => String::from_utf8_lossy(line).into_owned(),
            _ => self
                .argv
                .iter()
                .map(|a| quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// What `--tag` puts before each line: the value, or the command when there is none.
    pub fn tag(&self) -> Vec<u8> {
        match &self.value {
            Some(value) => value.clone(),
            None => self.display().into_bytes(),
        }
    }
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn quote(word: &OsStr) -> String {
    let text = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=+:,@%^".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Finds `name` as `execvp` would: 127 when it is nowhere, 126 when it is not executable.
pub fn resolve(name: &OsStr) -> Result<PathBuf, Status> {
    if name.is_empty() {
        return Err(Status::NOT_FOUND);
    }
    if let Ok(path) = which::which(name) {
        return Ok(path);
    }
    let path = PathBuf::from(name);
    if name.as_bytes().contains(&b'/') && path.exists() {
        return Err(Status::NOT_EXECUTABLE);
    }
    Err(Status::NOT_FOUND)
}

/// The status of a job whose spawn failed, as a shell would report it.
pub fn spawn_error_status(err: &io::Error) -> Status {
    match err.kind() {
        io::ErrorKind::NotFound => Status::NOT_FOUND,
        _ => Status::NOT_EXECUTABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let cases = [
            ("plain-word_1.txt", "plain-word_1.txt"),
            ("two words", "'two words'"),
            ("it's", r"'it'\''s'"),
            ("", "''"),
            ("$HOME", "'$HOME'"),
        ];
        for (word, want) in cases {
            assert_eq!(quote(OsStr::new(word)), want);
        }
    }

    #[test]
    fn resolution_statuses() {
        assert!(resolve(OsStr::new("sh")).is_ok());
        assert_eq!(
            resolve(OsStr::new("surely-no-such-command-xyz")),
            Err(Status::NOT_FOUND)
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            resolve(file.path().as_os_str()),
            Err(Status::NOT_EXECUTABLE)
        );
        assert_eq!(resolve(OsStr::new("/no/such/file")), Err(Status::NOT_FOUND));
    }
}
