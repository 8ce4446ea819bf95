//! MAKEFLAGS as GNU make writes it, and as jsrun rewrites it for its children.
//!
//! Pure string work, no syscalls. Layout (GNU make `src/main.c`, `define_makeflags`):
//! a first word of single-letter flags without a dash (empty when there are none, so the
//! value starts with a blank), dashed options such as `-j4`, `-l7` and
//! `--jobserver-auth=fifo:PATH`, then optionally ` -- VAR=value ...`. Blanks inside a word
//! are escaped with a backslash.

use std::path::PathBuf;

/// Where a jobserver lives, as named by `--jobserver-auth=` / `--jobserver-fds=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `fifo:PATH`: a named pipe (or steve's character device) that each client opens.
    Fifo(PathBuf),
    /// `R,W`: the two ends of an inherited pipe.
    Pipe { read: i32, write: i32 },
    /// A negative fd, e.g. make 4.4's `-2,-2`: the jobserver is disabled for this process.
    Disabled,
    /// Anything else: some other style (e.g. a Windows semaphore name); never connect.
    Unknown(String),
}

impl Auth {
    /// Parses the text after `--jobserver-auth=`.
    pub fn parse(text: &str) -> Auth {
        if let Some(path) = text.strip_prefix("fifo:") {
            return Auth::Fifo(PathBuf::from(path));
        }
        let fds = text.split_once(',').and_then(|(r, w)| {
            Some((r.trim().parse::<i32>().ok()?, w.trim().parse::<i32>().ok()?))
        });
        match fds {
            Some((r, w)) if r < 0 || w < 0 => Auth::Disabled,
            Some((read, write)) => Auth::Pipe { read, write },
            None => Auth::Unknown(text.to_owned()),
        }
    }
}

impl std::fmt::Display for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Fifo(path) => write!(f, "fifo:{}", path.display()),
            Auth::Pipe { read, write } => write!(f, "{read},{write}"),
            Auth::Disabled => f.write_str("-2,-2"),
            Auth::Unknown(text) => f.write_str(text),
        }
    }
}

/// The parts of a MAKEFLAGS value that jsrun cares about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MakeFlags {
    /// Single-letter flags of the first word (`k`, `n`, `s`, ...), if it has no dash.
    pub letters: String,
    /// `-j`/`-jN`/`--jobs[=N]`: `Some(None)` for a bare `-j`.
    pub jobs: Option<Option<u32>>,
    /// The last `--jobserver-auth=` or `--jobserver-fds=`, whichever comes last.
    pub auth: Option<Auth>,
}

impl MakeFlags {
    pub fn parse(value: &str) -> MakeFlags {
        let mut flags = MakeFlags::default();
        let words = split(value);
        let mut iter = words.iter().map(|w| w.text.as_str()).peekable();
        if let Some(first) = iter.peek()
            && !first.starts_with('-')
        {
            flags.letters = first.to_string();
            iter.next();
        }
        while let Some(word) = iter.next() {
            if word == "--" {
                break;
            }
            if let Some(auth) = word
                .strip_prefix("--jobserver-auth=")
                .or_else(|| word.strip_prefix("--jobserver-fds="))
            {
                flags.auth = Some(Auth::parse(auth));
            } else if let Some(jobs) = jobs_word(word) {
                flags.jobs = Some(match jobs {
                    Some(n) => Some(n),
                    None => iter.next_if(|w| is_number(w)).and_then(|w| w.parse().ok()),
                });
            }
        }
        flags
    }

    /// `n` among the letter flags: make runs with `-n`, so tools should not act.
    pub fn dry_run(&self) -> bool {
        self.letters.contains('n')
    }
}

/// For `-j`, `-jN`, `--jobs`, `--jobs=N`: `Some(Some(N))` or `Some(None)` when bare.
fn jobs_word(word: &str) -> Option<Option<u32>> {
    let rest = word
        .strip_prefix("--jobs")
        .map(|r| r.strip_prefix('=').unwrap_or(r))
        .or_else(|| word.strip_prefix("-j"))?;
    if rest.is_empty() {
        Some(None)
    } else {
        rest.parse().ok().map(Some)
    }
}

fn is_number(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit())
}

/// One blank-separated word: `raw` as written (escapes kept), `text` unescaped.
#[derive(Debug, PartialEq, Eq)]
struct Word {
    raw: String,
    text: String,
}

/// Splits on unescaped blanks; a backslash escapes the next character.
fn split(value: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut raw = String::new();
    let mut text = String::new();
    // A value starting with a blank has an empty first word: no letter flags.
    let mut started = true;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                // A lone backslash at the very end stands for itself.
                let next = chars.next().unwrap_or('\\');
                raw.push(c);
                raw.push(next);
                text.push(next);
                started = true;
            }
            ' ' | '\t' | '\n' => {
                if started {
                    words.push(Word {
                        raw: std::mem::take(&mut raw),
                        text: std::mem::take(&mut text),
                    });
                }
                started = false;
            }
            _ => {
                raw.push(c);
                text.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(Word { raw, text });
    }
    words
}

/// Escapes blanks (newlines too) and backslashes the way make does inside a MAKEFLAGS word.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, ' ' | '\t' | '\n' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Rewrites a MAKEFLAGS-style value for the children of a jobserver jsrun serves:
/// every `-j`/`--jobs` and `--jobserver-auth`/`--jobserver-fds` word is dropped, every other
/// flag kept, and `extra` (e.g. `-j4 --jobserver-auth=fifo:PATH`) appended before the
/// ` -- VAR=value` part. The result always starts with the letter word (possibly empty,
/// hence a leading blank), as make writes it.
pub fn rewrite(value: &str, extra: &str) -> String {
    let words = split(value);
    let mut iter = words.iter().peekable();
    let mut letters = "";
    if let Some(first) = iter.peek()
        && !first.text.starts_with('-')
    {
        letters = &first.raw;
        iter.next();
    }
    let mut kept: Vec<&str> = vec![letters];
    let mut vars: Vec<&str> = Vec::new();
    while let Some(word) = iter.next() {
        let text = word.text.as_str();
        if text == "--" {
            vars.push("--");
            vars.extend(iter.by_ref().map(|w| w.raw.as_str()));
            break;
        }
        if text.starts_with("--jobserver-auth=") || text.starts_with("--jobserver-fds=") {
            continue;
        }
        if let Some(jobs) = jobs_word(text) {
            if jobs.is_none() {
                iter.next_if(|w| is_number(&w.text));
            }
            continue;
        }
        kept.push(&word.raw);
    }
    kept.push(extra);
    kept.extend(vars);
    kept.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> Option<Auth> {
        MakeFlags::parse(value).auth
    }

    #[test]
    fn jobserver_auth_forms() {
        let cases: &[(&str, Option<Auth>)] = &[
            ("", None),
            (" -j4", None),
            (
                " -j4 --jobserver-auth=fifo:/tmp/GMfifo1",
                Some(Auth::Fifo("/tmp/GMfifo1".into())),
            ),
            (
                " -j4 --jobserver-auth=3,4",
                Some(Auth::Pipe { read: 3, write: 4 }),
            ),
            (
                "-j --jobserver-fds=5,6",
                Some(Auth::Pipe { read: 5, write: 6 }),
            ),
            // make 4.4.1 pipe mode, non-recursive child: the last word wins.
            (
                " -j4 --jobserver-auth=3,4 --jobserver-auth=-2,-2",
                Some(Auth::Disabled),
            ),
            // The last of either spelling wins, as in make and ninja.
            (
                " --jobserver-auth=-2,-2 --jobserver-fds=fifo:/nonexist",
                Some(Auth::Fifo("/nonexist".into())),
            ),
            (
                " --jobserver-fds=3,4 --jobserver-auth=7,8",
                Some(Auth::Pipe { read: 7, write: 8 }),
            ),
            (
                " -j3 -l7 --jobserver-auth=fifo:/tmp/sp\\ ace/GMfifo9",
                Some(Auth::Fifo("/tmp/sp ace/GMfifo9".into())),
            ),
            (
                " --jobserver-auth=sem_name",
                Some(Auth::Unknown("sem_name".into())),
            ),
            // Words after a standalone `--` are variables, not options.
            (" -j2 -- X=--jobserver-auth=3,4", None),
            (
                "ik -j4 --jobserver-auth=fifo:/f -- BAR=x\\ y FOO=bar",
                Some(Auth::Fifo("/f".into())),
            ),
        ];
        for (flags, want) in cases {
            assert_eq!(auth(flags), *want, "MAKEFLAGS={flags:?}");
        }
    }

    #[test]
    fn letters_and_dry_run() {
        let cases: &[(&str, &str, bool)] = &[
            ("", "", false),
            (" -j4 --jobserver-auth=3,4", "", false),
            ("n -j2 --jobserver-auth=fifo:/f", "n", true),
            ("ks -j4", "ks", false),
            // jobserver-rs writes no letter word: a leading dash means none.
            ("-j --jobserver-fds=3,4 --jobserver-auth=3,4", "", false),
            ("-n", "", false),
            ("wn", "wn", true),
        ];
        for (flags, letters, dry) in cases {
            let parsed = MakeFlags::parse(flags);
            assert_eq!(parsed.letters, *letters, "MAKEFLAGS={flags:?}");
            assert_eq!(parsed.dry_run(), *dry, "MAKEFLAGS={flags:?}");
        }
    }

    #[test]
    fn jobs_forms() {
        let cases: &[(&str, Option<Option<u32>>)] = &[
            ("", None),
            (" -j", Some(None)),
            (" -j4", Some(Some(4))),
            (" -j 6", Some(Some(6))),
            (" --jobs=8", Some(Some(8))),
            (" --jobs", Some(None)),
            (" -j1 -j3", Some(Some(3))),
            ("k -l7", None),
        ];
        for (flags, want) in cases {
            assert_eq!(MakeFlags::parse(flags).jobs, *want, "MAKEFLAGS={flags:?}");
        }
    }

    #[test]
    fn split_keeps_escapes_in_raw_form() {
        let words = split("a\\ b  c\\\\");
        let texts: Vec<_> = words.iter().map(|w| w.text.as_str()).collect();
        let raws: Vec<_> = words.iter().map(|w| w.raw.as_str()).collect();
        assert_eq!(texts, ["a b", "c\\"]);
        assert_eq!(raws, ["a\\ b", "c\\\\"]);
        assert_eq!(split(" x")[0].text, "");
        // A trailing lone backslash is kept, escaped, so nothing appended can join it.
        assert_eq!(rewrite("k -Ifoo\\", "-j2"), "k -Ifoo\\\\ -j2");
        assert_eq!(escape("a\nb c"), "a\\\nb\\ c");
    }

    #[test]
    fn rewrite_replaces_jobserver_and_keeps_other_flags() {
        let extra = "-j4 --jobserver-auth=fifo:/d/fifo";
        let cases: &[(&str, &str)] = &[
            ("", " -j4 --jobserver-auth=fifo:/d/fifo"),
            (
                " -j8 --jobserver-auth=3,4 --jobserver-auth=-2,-2",
                " -j4 --jobserver-auth=fifo:/d/fifo",
            ),
            ("k -j2 -l3", "k -l3 -j4 --jobserver-auth=fifo:/d/fifo"),
            (
                "-j --jobserver-fds=3,4 --jobserver-auth=3,4",
                " -j4 --jobserver-auth=fifo:/d/fifo",
            ),
            (
                "ik -j 3 --jobs=2 -- BAR=x\\ y FOO=bar",
                "ik -j4 --jobserver-auth=fifo:/d/fifo -- BAR=x\\ y FOO=bar",
            ),
            (
                "s --no-print-directory",
                "s --no-print-directory -j4 --jobserver-auth=fifo:/d/fifo",
            ),
        ];
        for (value, want) in cases {
            assert_eq!(rewrite(value, extra), *want, "MAKEFLAGS={value:?}");
        }
    }

    #[test]
    fn rewritten_value_parses_back() {
        let value = rewrite(
            "kn -j9 --jobserver-auth=3,4",
            &format!("-j2 --jobserver-auth=fifo:{}", escape("/a b/f")),
        );
        let parsed = MakeFlags::parse(&value);
        assert_eq!(parsed.auth, Some(Auth::Fifo("/a b/f".into())));
        assert_eq!(parsed.jobs, Some(Some(2)));
        assert!(parsed.dry_run());
    }
}
