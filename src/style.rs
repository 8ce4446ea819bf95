//! Which style of jobserver jsrun's children get when `--jobserver-style` does not say:
//! the word of the command that decides (through wrappers and a Python interpreter, see
//! `launcher`), and what the make that may read the pool understands.

use std::ffi::{OsStr, OsString};

use crate::jobs::{self, template::Template};
use crate::launcher::{self, Runs};
use crate::make_version;
use crate::server::Style;

/// Programs that speak only the fifo style (upstream ninja, samurai, Portage).
const FIFO_ONLY: [&str; 3] = ["ninja", "samu", "emerge"];

/// The word of the command that names a program speaking only fifo, if it runs one.
pub fn fifo_only(template: &Template) -> Option<Word> {
    let words = template.constant_words();
    let runs = launcher::runs(&words)?;
    FIFO_ONLY
        .iter()
        .any(|&n| runs.name() == n)
        .then(|| Word::of(runs))
}

/// A word of the command line, for messages: `'ninja' (word 2 of the command)`.
pub struct Word {
    text: OsString,
    index: usize,
}

impl Word {
    fn of(runs: Runs<'_>) -> Word {
        Word {
            text: runs.program.to_owned(),
            index: runs.index,
        }
    }
}

impl std::fmt::Display for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            0 => write!(f, "'{}' (the command)", self.text.to_string_lossy()),
            i => write!(
                f,
                "'{}' (word {} of the command)",
                self.text.to_string_lossy(),
                i + 1
            ),
        }
    }
}

/// The style of a pool jsrun creates: fifo, unless a GNU make older than 4.4 may read it,
/// which dies on a fifo ("invalid --jobserver-auth string"). That make is the program the
/// command runs when it is `make` or `gmake` (also `nice make`), else the `make` on
/// PATH, which any command may run (`sh -c make`, a build script). Commands that run a
/// program speaking only fifo keep it. Under `verbose` it says which word decided.
pub fn default(template: &Template, verbose: bool) -> Style {
    if let Some(word) = fifo_only(template) {
        if verbose {
            crate::say!("jsrun: {word} speaks only fifo: using --jobserver-style=fifo");
        }
        return Style::Fifo;
    }
    let words = template.constant_words();
    let decider = launcher::runs(&words)
        .filter(|runs| runs.name() == "make" || runs.name() == "gmake")
        .map(Word::of);
    let make = decider
        .as_ref()
        .map_or(OsStr::new("make"), |word| &word.text);
    let Some(path) = jobs::resolve(make).ok() else {
        if verbose {
            let what = match &decider {
                Some(word) => format!("{word} is not found"),
                None => "no make on PATH".into(),
            };
            crate::say!("jsrun: {what}: using --jobserver-style=fifo");
        }
        return Style::Fifo;
    };
    let what = match &decider {
        Some(word) => format!("{word} at {}", path.display()),
        None => format!("{}, the make on PATH the command may run,", path.display()),
    };
    let Some(answer) = make_version::of(&path) else {
        if verbose {
            crate::say!("jsrun: {what} is no GNU make: using --jobserver-style=fifo");
        }
        return Style::Fifo;
    };
    let (major, minor) = answer.version;
    let style = match answer.version < (4, 4) {
        true => Style::Pipe,
        false => Style::Fifo,
    };
    if verbose {
        let (knows, name) = match style {
            Style::Pipe => ("which only knows pipe jobservers", "pipe"),
            Style::Fifo => ("which knows fifo jobservers", "fifo"),
        };
        let source = match &answer.remembered {
            Some(file) => format!(" (remembered in {})", file.display()),
            None => String::new(),
        };
        crate::say!(
            "jsrun: {what} is GNU make {major}.{minor}{source}, {knows}: using \
             --jobserver-style={name}"
        );
    }
    style
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn template(line: &str) -> Template {
        let args: Vec<OsString> = line.split(' ').map(OsString::from).collect();
        Template::parse(&args, false)
    }

    #[test]
    fn the_word_that_speaks_only_fifo_is_named() {
        let cases = [
            ("ninja -C build", Some("'ninja' (the command)")),
            ("nice -n 5 ninja", Some("'ninja' (word 4 of the command)")),
            (
                "python3 -u /usr/bin/emerge --jobs=8",
                Some("'/usr/bin/emerge' (word 3 of the command)"),
            ),
            ("env X=1 samu", Some("'samu' (word 3 of the command)")),
            ("nice make", None),
            ("sh -c ninja", None),
        ];
        for (line, want) in cases {
            let got = fifo_only(&template(line)).map(|w| w.to_string());
            assert_eq!(got.as_deref(), want, "{line:?}");
        }
    }
}
