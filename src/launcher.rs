//! The program a command line runs in the end: past the wrappers that run the rest of
//! their arguments as a command (`nice ninja`, `env X=1 samu`, `sudo -u portage emerge`)
//! and past a Python interpreter to its script or module (`python3 -u /usr/bin/emerge`,
//! `python3 -m ninja`). The style of a pool depends on it: ninja, samu and emerge speak
//! only fifo, a make older than 4.4 only pipe.
//!
//! Shells (`sh -c LINE`, `bash SCRIPT`) and other interpreters are not followed: a shell
//! line or script may run anything, a make too, and a fifo kills make 4.3 where a pipe
//! only leaves ninja to its own `-j`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The word that names the program a command runs in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runs<'a> {
    /// Which word of the command line it is, from 0.
    pub index: usize,
    /// The program: the word itself, or the module of `python -m MODULE`.
    pub program: &'a OsStr,
}

impl Runs<'_> {
    /// The program's file name: `ninja` of `/usr/bin/ninja`.
    pub fn name(&self) -> &OsStr {
        Path::new(self.program).file_name().unwrap_or_default()
    }
}

/// Words before the command that are not options.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operand {
    None,
    /// One word, whatever it is: taskset's mask, timeout's duration.
    One,
    /// One word when it is a number: chrt's priority, optional for some policies.
    Number,
}

/// How a wrapper's arguments read, as its getopt string does. Every wrapper here stops
/// at its first word that is not an option ("+" in getopt), as the command follows.
struct Syntax {
    names: &'static [&'static str],
    /// Short options that take a value, as `-n 5` or `-n5`.
    short: &'static str,
    /// Long options that take a value, as `--adjustment 5` or `--adjustment=5`.
    long: &'static [&'static str],
    /// Options after which no command follows, or one that cannot be read from the
    /// words: `ionice -p PID`, `env -S STRING`, `sudo -l`.
    short_stop: &'static str,
    long_stop: &'static [&'static str],
    /// `NAME=VALUE` words may come between the options and the command.
    assignments: bool,
    operand: Operand,
}

const WRAPPERS: [Syntax; 12] = [
    Syntax {
        names: &["nice"],
        short: "n",
        long: &["adjustment"],
        short_stop: "",
        long_stop: &["help", "version"],
        assignments: false,
        operand: Operand::None,
    },
    Syntax {
        names: &["env"],
        short: "uCS",
        long: &["unset", "chdir", "split-string"],
        short_stop: "S",
        long_stop: &["split-string", "help", "version"],
        assignments: true,
        operand: Operand::None,
    },
    Syntax {
        names: &["ionice"],
        short: "cnpPu",
        long: &["class", "classdata", "pid", "pgid", "uid"],
        short_stop: "pPuhV",
        long_stop: &["pid", "pgid", "uid", "help", "version"],
        assignments: false,
        operand: Operand::None,
    },
    Syntax {
        names: &["chrt"],
        short: "TPD",
        long: &["sched-runtime", "sched-period", "sched-deadline"],
        short_stop: "pmhV",
        long_stop: &["pid", "max", "help", "version"],
        assignments: false,
        operand: Operand::Number,
    },
    Syntax {
        names: &["taskset"],
        short: "",
        long: &[],
        short_stop: "phV",
        long_stop: &["pid", "help", "version"],
        assignments: false,
        operand: Operand::One,
    },
    Syntax {
        names: &["sudo"],
        short: "aCcDgpRrTtUu",
        long: &[
            "auth-type",
            "close-from",
            "login-class",
            "chdir",
            "group",
            "prompt",
            "chroot",
            "role",
            "command-timeout",
            "type",
            "other-user",
            "user",
        ],
        short_stop: "eKlvVh",
        long_stop: &[
            "edit",
            "remove-timestamp",
            "list",
            "validate",
            "version",
            "help",
        ],
        assignments: true,
        operand: Operand::None,
    },
    Syntax {
        names: &["doas"],
        short: "Cu",
        long: &[],
        short_stop: "CLs",
        long_stop: &[],
        assignments: false,
        operand: Operand::None,
    },
    Syntax {
        names: &["time"],
        short: "fo",
        long: &["format", "output"],
        short_stop: "V",
        long_stop: &["help", "version"],
        assignments: false,
        operand: Operand::None,
    },
    Syntax {
        names: &["stdbuf"],
        short: "ioe",
        long: &["input", "output", "error"],
        short_stop: "",
        long_stop: &["help", "version"],
        assignments: false,
        operand: Operand::None,
    },
    Syntax {
        names: &["nohup"],
        short: "",
        long: &[],
        short_stop: "",
        long_stop: &["help", "version"],
        assignments: false,
        operand: Operand::None,
    },
    Syntax {
        names: &["setsid"],
        short: "",
        long: &[],
        short_stop: "hV",
        long_stop: &["help", "version"],
        assignments: false,
        operand: Operand::None,
    },
    Syntax {
        names: &["timeout"],
        short: "ks",
        long: &["kill-after", "signal"],
        short_stop: "",
        long_stop: &["help", "version"],
        assignments: false,
        operand: Operand::One,
    },
];

/// The word that names the program `words` runs in the end, or `None` when the words
/// do not tell: a word that differs from job to job (`None` in `words`), an option whose
/// command cannot be read (`env -S`), or nothing after the wrapper.
pub fn runs<'a>(words: &[Option<&'a OsStr>]) -> Option<Runs<'a>> {
    let mut index = 0;
    loop {
        let word = (*words.get(index)?)?;
        let name = Path::new(word).file_name()?;
        if let Some(syntax) = WRAPPERS.iter().find(|s| s.names.iter().any(|&n| name == n)) {
            index = past_wrapper(syntax, words, index + 1)?;
        } else if is_python(name) {
            return past_python(words, index + 1);
        } else {
            return Some(Runs {
                index,
                program: word,
            });
        }
    }
}

/// The index of the command after a wrapper whose arguments start at `index`.
fn past_wrapper(syntax: &Syntax, words: &[Option<&OsStr>], mut index: usize) -> Option<usize> {
    loop {
        let word = (*words.get(index)?)?.as_bytes();
        match word {
            b"--" => {
                index += 1;
                break;
            }
            // `env -`: an empty environment.
            b"-" => index += 1,
            [b'-', b'-', long @ ..] => {
                let (name, value) = match long.iter().position(|&b| b == b'=') {
                    Some(at) => (&long[..at], true),
                    None => (long, false),
                };
                if syntax.long_stop.iter().any(|s| s.as_bytes() == name) {
                    return None;
                }
                let takes_next = !value && syntax.long.iter().any(|l| l.as_bytes() == name);
                index += 1 + usize::from(takes_next);
            }
            [b'-', short @ ..] => {
                let mut takes_next = false;
                for (at, &c) in short.iter().enumerate() {
                    if syntax.short_stop.as_bytes().contains(&c) {
                        return None;
                    }
                    if syntax.short.as_bytes().contains(&c) {
                        // The rest of the word is its value, or the next word is.
                        takes_next = at + 1 == short.len();
                        break;
                    }
                }
                index += 1 + usize::from(takes_next);
            }
            _ => break,
        }
    }
    if syntax.assignments {
        while (*words.get(index)?)?.as_bytes().contains(&b'=') {
            index += 1;
        }
    }
    match syntax.operand {
        Operand::None => {}
        Operand::One => index += 1,
        Operand::Number => {
            if (*words.get(index)?)?
                .as_bytes()
                .iter()
                .all(u8::is_ascii_digit)
            {
                index += 1;
            }
        }
    }
    Some(index)
}

/// `python`, `python3`, `python3.12`, `pypy3`.
fn is_python(name: &OsStr) -> bool {
    let name = name.as_bytes();
    [b"python".as_slice(), b"pypy"].iter().any(|prefix| {
        name.strip_prefix(*prefix)
            .is_some_and(|rest| rest.iter().all(|&b| b.is_ascii_digit() || b == b'.'))
    })
}

/// The script or module a Python interpreter runs, its arguments starting at `index`:
/// `python3 [-u] [-W ARG] [-X OPT] SCRIPT`, `python3 -m MODULE`. `-c CODE` does not tell.
fn past_python<'a>(words: &[Option<&'a OsStr>], mut index: usize) -> Option<Runs<'a>> {
    loop {
        let word = (*words.get(index)?)?;
        match word.as_bytes() {
            b"--" => {
                index += 1;
                break;
            }
            b"--check-hash-based-pycs" => index += 2,
            // --help, --version: no script runs; `-`: the script is read from stdin.
            [b'-', b'-', ..] | b"-" => return None,
            [b'-', short @ ..] => {
                let mut takes_next = false;
                for (at, &c) in short.iter().enumerate() {
                    let rest = &short[at + 1..];
                    match c {
                        b'c' => return None,
                        b'm' if rest.is_empty() => {
                            let module = (*words.get(index + 1)?)?;
                            return Some(Runs {
                                index: index + 1,
                                program: module,
                            });
                        }
                        b'm' => {
                            return Some(Runs {
                                index,
                                program: OsStr::from_bytes(rest),
                            });
                        }
                        b'W' | b'X' => {
                            takes_next = rest.is_empty();
                            break;
                        }
                        _ => {}
                    }
                }
                index += 1 + usize::from(takes_next);
            }
            _ => break,
        }
    }
    let script = (*words.get(index)?)?;
    Some(Runs {
        index,
        program: script,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(line: &str) -> Option<(usize, String)> {
        let words: Vec<Option<&OsStr>> = line
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(|w| (w != "{}").then_some(OsStr::new(w)))
            .collect();
        runs(&words).map(|r| (r.index, r.program.to_str().unwrap().to_owned()))
    }

    #[test]
    fn the_program_past_wrappers_and_python() {
        let cases: &[(&str, Option<(usize, &str)>)] = &[
            ("ninja -C build", Some((0, "ninja"))),
            ("/usr/bin/make -j4", Some((0, "/usr/bin/make"))),
            ("nice ninja", Some((1, "ninja"))),
            ("nice -n 5 ninja", Some((3, "ninja"))),
            ("nice -n5 ninja", Some((2, "ninja"))),
            ("nice -10 make", Some((2, "make"))),
            ("nice --adjustment=5 samu", Some((2, "samu"))),
            ("nice --adjustment 5 samu", Some((3, "samu"))),
            ("/usr/bin/nice -- ninja", Some((2, "ninja"))),
            ("env X=1 samu", Some((2, "samu"))),
            ("env -i A=1 B=2 -u C make", Some((4, "-u"))),
            ("env -u NAME X=1 ninja", Some((4, "ninja"))),
            ("env -uNAME -C /tmp ninja", Some((4, "ninja"))),
            ("env --unset=NAME --chdir /tmp ninja", Some((4, "ninja"))),
            ("env - PATH=/bin ninja", Some((3, "ninja"))),
            ("env -S 'ninja -v'", None),
            ("env --split-string=ninja", None),
            ("ionice -c 3 ninja", Some((3, "ninja"))),
            ("ionice -c3 -n7 -t ninja", Some((4, "ninja"))),
            ("ionice --class idle make", Some((3, "make"))),
            ("ionice -p 1234", None),
            ("chrt -b 0 ninja", Some((3, "ninja"))),
            ("chrt --idle ninja", Some((2, "ninja"))),
            ("chrt -f 10 make", Some((3, "make"))),
            ("chrt -d -T 1000 -P 2000 0 ninja", Some((7, "ninja"))),
            ("chrt -p 10 1234", None),
            ("taskset 0x3 ninja", Some((2, "ninja"))),
            ("taskset -c 0-1 ninja", Some((3, "ninja"))),
            ("taskset -a -c 0,1 emerge -uDN @world", Some((4, "emerge"))),
            ("taskset -p 0x3 1234", None),
            ("sudo emerge", Some((1, "emerge"))),
            ("sudo -u portage -g portage ninja", Some((5, "ninja"))),
            ("sudo -uportage -E FEATURES=x emerge", Some((4, "emerge"))),
            (
                "sudo --user=portage --preserve-env=PATH ninja",
                Some((3, "ninja")),
            ),
            ("sudo -n -H -- make", Some((4, "make"))),
            ("sudo -l ninja", None),
            ("doas -u portage emerge", Some((3, "emerge"))),
            ("doas -n ninja", Some((2, "ninja"))),
            ("doas -s", None),
            ("time ninja", Some((1, "ninja"))),
            (
                "/usr/bin/time -f %e -o out.txt -a ninja",
                Some((6, "ninja")),
            ),
            ("time --format=%e --output out ninja", Some((4, "ninja"))),
            ("time -p -v make", Some((3, "make"))),
            ("stdbuf -oL -e 0 ninja", Some((4, "ninja"))),
            ("stdbuf --output=L ninja", Some((2, "ninja"))),
            ("nohup ninja", Some((1, "ninja"))),
            ("setsid -w -f ninja", Some((3, "ninja"))),
            ("timeout 1h ninja", Some((2, "ninja"))),
            (
                "timeout -k 5 -s INT --foreground 10m make",
                Some((7, "make")),
            ),
            (
                "nice -n 19 ionice -c 3 env MAKEOPTS= python3 -u /usr/bin/emerge -uDN",
                Some((10, "/usr/bin/emerge")),
            ),
            (
                "python3 /usr/bin/emerge --jobs=8",
                Some((1, "/usr/bin/emerge")),
            ),
            ("python3 -u emerge", Some((2, "emerge"))),
            (
                "python3.12 -uB -W ignore -X dev emerge",
                Some((6, "emerge")),
            ),
            ("python -Wignore -Xdev emerge", Some((3, "emerge"))),
            ("/usr/bin/python3.11 -- emerge", Some((2, "emerge"))),
            ("pypy3 emerge", Some((1, "emerge"))),
            ("python3 -m ninja -C build", Some((2, "ninja"))),
            ("python3 -u -mninja", Some((2, "ninja"))),
            ("python3 -c 'import ninja'", None),
            ("python3 --version", None),
            ("python3 - emerge", None),
            ("python3", None),
            ("pythonista ninja", Some((0, "pythonista"))),
            ("sh -c ninja", Some((0, "sh"))),
            ("bash build.sh", Some((0, "bash"))),
            ("nice", None),
            ("nice -n", None),
            ("env X=1", None),
            ("nice {} ninja", None),
            ("{} ninja", None),
            ("nice ninja {}", Some((1, "ninja"))),
            ("", None),
        ];
        for &(line, want) in cases {
            let want = want.map(|(i, p)| (i, p.to_owned()));
            assert_eq!(program(line), want, "{line:?}");
        }
    }

    #[test]
    fn names_of_pythons() {
        for (name, want) in [
            ("python", true),
            ("python3", true),
            ("python3.12", true),
            ("pypy3", true),
            ("python3-config", false),
            ("ipython3", false),
            ("pythonista", false),
        ] {
            assert_eq!(is_python(OsStr::new(name)), want, "{name}");
        }
    }
}
