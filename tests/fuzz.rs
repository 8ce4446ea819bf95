//! Property tests over the library: MAKEFLAGS parsing and rewriting, the
//! escaping of fifo paths, command templates and the line source. Arbitrary
//! input never panics, and each function agrees with a simple reference.
//!
//! Case counts are bounded so the file runs in a few seconds as part of the
//! normal suite; `PROPTEST_CASES=N` raises (or lowers) them for a longer run.

use std::ffi::OsString;
use std::io::{Seek, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use jsrun::jobs::source::{Input, Next, Source};
use jsrun::jobs::template::{Fill, Template};
use jsrun::makeflags::{Auth, MakeFlags, escape, rewrite};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// `cases` unless PROPTEST_CASES says otherwise. Failures are not saved to
/// files: proptest prints the minimal failing input instead.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Generators

/// Text rich in what MAKEFLAGS parsing cares about: blanks, backslashes,
/// dashes, `=`, `,`, digits, `fifo:`, and any other character now and then.
fn makeflags_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            " ", "  ", "\t", "\n", "\\", "\\ ", "-", "--", "-j", "-j4", "-j 3", "--jobs",
            "--jobs=2", "--jobserver-auth=", "--jobserver-fds=", "fifo:", "3,4", "-2,-2",
            ",", "=", "k", "n", "s", "-l7", "-- ", "X=y",
        ])
        .prop_map(str::to_owned),
        2 => "[a-z0-9/._]{1,6}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// A fifo path with blanks, tabs and backslashes in it (newlines have a test of
/// their own: `escape_protects_a_newline_in_a_fifo_path`).
fn fifo_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => prop::sample::select(vec![" ", "  ", "\t", "\\", "\\ ", "/", "-", "--", "fifo:", ","])
            .prop_map(str::to_owned),
        3 => "[A-Za-z0-9._-]{1,8}",
        1 => any::<char>()
            .prop_filter("no newline", |c| *c != '\n')
            .prop_map(String::from),
    ];
    prop::collection::vec(piece, 1..12).prop_map(|pieces| format!("/{}", pieces.concat()))
}

/// One MAKEFLAGS option as make writes it (never a jobserver or -j word:
/// those are what rewrite drops).
fn kept_option() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("-l7".to_owned()),
        Just("--no-print-directory".to_owned()),
        Just("-Onone".to_owned()),
        "[a-z ]{1,8}".prop_map(|dir| format!("-I{}", escape(&dir))),
        "[a-z]{1,8}".prop_map(|name| format!("--eval={name}")),
    ]
}

/// A -j or jobserver word (or two, for `-j N`) that rewrite must drop.
fn dropped_option() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("-j".to_owned()),
        (1u32..64).prop_map(|n| format!("-j{n}")),
        (1u32..64).prop_map(|n| format!("-j {n}")),
        (1u32..64).prop_map(|n| format!("--jobs={n}")),
        Just("--jobs".to_owned()),
        (0i32..20, 0i32..20).prop_map(|(r, w)| format!("--jobserver-auth={r},{w}")),
        (0i32..20, 0i32..20).prop_map(|(r, w)| format!("--jobserver-fds={r},{w}")),
        Just("--jobserver-auth=-2,-2".to_owned()),
        fifo_path().prop_map(|p| format!("--jobserver-auth=fifo:{}", escape(&p))),
    ]
}

/// A MAKEFLAGS value as make writes it, and what it is made of.
#[derive(Debug, Clone)]
struct MakeValue {
    /// The letter word (empty when none) and the options.
    head: String,
    /// ` -- VAR=value ...`, or empty.
    tail: String,
    letters: String,
    /// The options rewrite must keep, in order.
    kept: Vec<String>,
    /// The variables after `--`, escaped.
    vars: Vec<String>,
}

impl MakeValue {
    fn value(&self) -> String {
        format!("{}{}", self.head, self.tail)
    }
}

fn well_formed_makeflags() -> impl Strategy<Value = MakeValue> {
    let option = prop_oneof![
        kept_option().prop_map(|o| (o, true)),
        dropped_option().prop_map(|o| (o, false)),
    ];
    (
        "[iknsw]{0,4}",
        prop::collection::vec(option, 0..8),
        prop::collection::vec(("[A-Z]{1,4}", "[a-z =\\\\]{0,6}"), 0..3),
    )
        .prop_map(|(letters, options, vars)| {
            let mut words = vec![letters.clone()];
            let mut kept = Vec::new();
            for (option, keep) in options {
                if keep {
                    kept.push(option.clone());
                }
                words.push(option);
            }
            let vars: Vec<String> = vars
                .into_iter()
                .map(|(name, value)| format!("{name}={}", escape(&value)))
                .collect();
            let tail = match vars.is_empty() {
                true => String::new(),
                false => format!(" -- {}", vars.join(" ")),
            };
            MakeValue {
                head: words.join(" "),
                tail,
                letters,
                kept,
                vars,
            }
        })
}

/// The words a jsrun server (`-jN` and the jobserver) or `--jobserver=AUTH`
/// (the jobserver alone) exports: (words, auth, the -j children should see).
fn extra_words() -> impl Strategy<Value = (String, Auth, Option<Option<u32>>)> {
    prop_oneof![
        (1u32..512, fifo_path()).prop_map(|(n, path)| {
            let words = format!("-j{n} --jobserver-auth=fifo:{}", escape(&path));
            (words, Auth::Fifo(PathBuf::from(path)), Some(Some(n)))
        }),
        (1u32..512, 3i32..1000, 3i32..1000).prop_map(|(n, r, w)| {
            let words = format!("-j{n} --jobserver-fds={r},{w} --jobserver-auth={r},{w}");
            (words, Auth::Pipe { read: r, write: w }, Some(Some(n)))
        }),
        fifo_path().prop_map(|path| {
            let words = format!("--jobserver-auth=fifo:{}", escape(&path));
            (words, Auth::Fifo(PathBuf::from(path)), None)
        }),
        (3i32..1000, 3i32..1000).prop_map(|(r, w)| {
            let words = format!("--jobserver-fds={r},{w} --jobserver-auth={r},{w}");
            (words, Auth::Pipe { read: r, write: w }, None)
        }),
    ]
}

/// Whether `value` ends in an unpaired backslash, which escapes whatever
/// comes after it (see `rewrite_after_a_trailing_backslash_keeps_the_jobserver`).
fn ends_in_a_lone_backslash(value: &str) -> bool {
    value.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

/// Splits a MAKEFLAGS value into unescaped words, as the reference: blanks
/// (space, tab, newline) separate words, a backslash escapes the next
/// character. Returns (raw, text) pairs.
fn reference_words(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

// ---------------------------------------------------------------------------
// MAKEFLAGS

proptest! {
    #![proptest_config(config(512))]

    /// Nothing panics on any input.
    #[test]
    fn makeflags_functions_never_panic(value in makeflags_text(), extra in makeflags_text()) {
        let parsed = MakeFlags::parse(&value);
        let _ = parsed.dry_run();
        if let Some(auth) = &parsed.auth {
            let _ = auth.to_string();
        }
        let _ = Auth::parse(&value);
        let _ = escape(&value);
        let rewritten = rewrite(&value, &extra);
        let _ = MakeFlags::parse(&rewritten);
    }

    /// The same with any string at all, not only MAKEFLAGS-like ones.
    #[test]
    fn makeflags_functions_never_panic_on_any_string(value in any::<String>(), extra in any::<String>()) {
        let _ = MakeFlags::parse(&value);
        let _ = Auth::parse(&value).to_string();
        let _ = MakeFlags::parse(&rewrite(&value, &extra));
    }

    /// Parsing what an Auth prints gives the same Auth: what jsrun exports
    /// means what it read.
    #[test]
    fn auth_display_parses_back(text in makeflags_text()) {
        let auth = Auth::parse(&text);
        prop_assert_eq!(Auth::parse(&auth.to_string()), auth);
    }

    /// The last jobserver word wins, whichever spelling and wherever the
    /// letters are; words after a standalone `--` are variables.
    #[test]
    fn last_jobserver_word_wins(
        make in well_formed_makeflags(),
        path in fifo_path(),
        fds in any::<bool>(),
    ) {
        let word = if fds { "--jobserver-fds" } else { "--jobserver-auth" };
        let value = format!("{} {word}=fifo:{}{}", make.head, escape(&path), make.tail);
        prop_assert_eq!(MakeFlags::parse(&value).auth, Some(Auth::Fifo(PathBuf::from(path))));
    }

    /// An escaped fifo path with blanks, tabs and backslashes comes back
    /// whole, and is one word for a make-style splitter.
    #[test]
    fn escaped_fifo_path_round_trips(path in fifo_path(), n in 1u32..100) {
        let value = format!(" -j{n} --jobserver-auth=fifo:{}", escape(&path));
        let parsed = MakeFlags::parse(&value);
        prop_assert_eq!(parsed.auth, Some(Auth::Fifo(PathBuf::from(&path))));
        prop_assert_eq!(parsed.jobs, Some(Some(n)));
        prop_assert_eq!(reference_words(&value), vec![format!("-j{n}"), format!("--jobserver-auth=fifo:{path}")]);
    }

    /// rewrite on any value: the new jobserver is what the children parse.
    #[test]
    fn rewrite_of_any_value_names_the_new_jobserver(
        value in makeflags_text(),
        (extra, auth, _) in extra_words(),
    ) {
        prop_assume!(!ends_in_a_lone_backslash(&value));
        let rewritten = rewrite(&value, &extra);
        prop_assert_eq!(MakeFlags::parse(&rewritten).auth, Some(auth), "rewritten: {:?}", rewritten);
    }

    /// rewrite on a value as make writes it: the new -j and jobserver, the
    /// same letters, every other option in order, the variables after `--`,
    /// and not one old -j or jobserver word.
    #[test]
    fn rewrite_of_a_make_value_keeps_everything_else(
        make in well_formed_makeflags(),
        (extra, auth, jobs) in extra_words(),
    ) {
        let MakeValue { letters, kept, vars, .. } = &make;
        let rewritten = rewrite(&make.value(), &extra);
        let parsed = MakeFlags::parse(&rewritten);
        prop_assert_eq!(&parsed.auth, &Some(auth), "rewritten: {:?}", rewritten);
        prop_assert_eq!(parsed.jobs, jobs, "rewritten: {:?}", rewritten);
        prop_assert_eq!(&parsed.letters, letters, "rewritten: {:?}", rewritten);
        prop_assert_eq!(parsed.dry_run(), letters.contains('n'));
        // make's layout: the letter word first, empty when there are none.
        prop_assert!(rewritten.starts_with(&format!("{letters} ")), "rewritten: {:?}", rewritten);

        let words = reference_words(&rewritten);
        let (options, variables) = match words.iter().position(|w| w == "--") {
            Some(i) => (&words[..i], words[i + 1..].to_vec()),
            None => (&words[..], Vec::new()),
        };
        let options: Vec<&String> = options.iter().skip(usize::from(!letters.is_empty())).collect();
        let extra_count = reference_words(&extra).len();
        let (old, new) = options.split_at(options.len() - extra_count);
        let old: Vec<String> = old.iter().map(|w| (*w).clone()).collect();
        let new: Vec<String> = new.iter().map(|w| (*w).clone()).collect();
        let kept: Vec<String> = kept.iter().flat_map(|o| reference_words(o)).collect();
        prop_assert_eq!(old, kept, "rewritten: {:?}", rewritten);
        prop_assert_eq!(new, reference_words(&extra));
        let vars: Vec<String> = vars.iter().flat_map(|v| reference_words(v)).collect();
        prop_assert_eq!(variables, vars, "rewritten: {:?}", rewritten);
    }

    /// Rewriting twice is rewriting once: a jsrun server under a jsrun
    /// server does not pile up words.
    #[test]
    fn rewrite_is_idempotent(
        make in well_formed_makeflags(),
        (extra, _, _) in extra_words(),
    ) {
        let once = rewrite(&make.value(), &extra);
        prop_assert_eq!(rewrite(&once, &extra), once);
    }
}

// ---------------------------------------------------------------------------
// Templates

const PLACEHOLDERS: [&str; 7] = ["{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}"];

/// Bytes of a template argument or a value: placeholders, their pieces,
/// slashes and dots, and any byte (also invalid UTF-8) now and then.
fn template_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => prop::sample::select(PLACEHOLDERS.to_vec()).prop_map(|p| p.as_bytes().to_vec()),
        3 => prop::sample::select(vec!["{", "}", "/", ".", "//", "{x}", "{/", "{{", "}}", "a.b", "dir/", ".hidden"])
            .prop_map(|p| p.as_bytes().to_vec()),
        2 => "[a-z0-9]{1,5}".prop_map(String::into_bytes),
        1 => any::<u8>().prop_filter("no NUL", |b| *b != 0).prop_map(|b| vec![b]),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// GNU parallel's replacement strings, written independently of jsrun's
/// parser: at a `{`, the text up to the first `}` is looked up as a whole.
fn reference_render(arg: &[u8], value: &[u8], seq: u64, slot: usize) -> Vec<u8> {
    let (dir_with_slash, base) = match value.iter().rposition(|&b| b == b'/') {
        Some(i) => (&value[..=i], &value[i + 1..]),
        None => (&value[..0], value),
    };
    let base_no_ext = match base.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => &base[..i],
        _ => base,
    };
    let dirname: &[u8] = match value.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &value[..i],
        None => b".",
    };
    let mut no_ext = dir_with_slash.to_vec();
    no_ext.extend_from_slice(base_no_ext);
    let seq = seq.to_string().into_bytes();
    let slot = slot.to_string().into_bytes();

    let mut out = Vec::new();
    let mut i = 0;
    while i < arg.len() {
        if arg[i] == b'{'
            && let Some(len) = arg[i..].iter().position(|&b| b == b'}')
        {
            let replacement: Option<&[u8]> = match &arg[i..=i + len] {
                b"{}" => Some(value),
                b"{.}" => Some(&no_ext),
                b"{/}" => Some(base),
                b"{//}" => Some(dirname),
                b"{/.}" => Some(base_no_ext),
                b"{#}" => Some(&seq),
                b"{%}" => Some(&slot),
                _ => None,
            };
            if let Some(replacement) = replacement {
                out.extend_from_slice(replacement);
                i += len + 1;
                continue;
            }
        }
        out.push(arg[i]);
        i += 1;
    }
    out
}

fn has_placeholder(arg: &[u8]) -> bool {
    PLACEHOLDERS
        .iter()
        .any(|p| arg.windows(p.len()).any(|w| w == p.as_bytes()))
}

proptest! {
    #![proptest_config(config(512))]

    /// Rendering agrees with the reference byte for byte: each replacement
    /// string is replaced once, and a value that holds `{}`, `{.}` or any
    /// other replacement string reaches the command as it is.
    #[test]
    fn template_renders_like_the_reference(
        args in prop::collection::vec(template_bytes(), 1..5),
        value in template_bytes(),
        seq in 1u64..1_000_000,
        slot in 1usize..512,
        value_expected in any::<bool>(),
    ) {
        let os_args: Vec<OsString> = args.iter().cloned().map(OsString::from_vec).collect();
        let template = Template::parse(&os_args, value_expected);
        let fill = Fill { value: Some(&value), seq, slot };
        let got: Vec<Vec<u8>> = template
            .render(&fill)
            .into_iter()
            .map(OsString::into_vec)
            .collect();
        let mut want: Vec<Vec<u8>> = args
            .iter()
            .map(|arg| reference_render(arg, &value, seq, slot))
            .collect();
        if value_expected && !args.iter().any(|a| has_placeholder(a)) {
            want.push(value.clone());
        }
        prop_assert_eq!(got, want);
    }

    /// `{}` alone is the value, whatever it holds; rendering a rendered
    /// command again (as a second expansion would) is not what jsrun does.
    #[test]
    fn a_value_is_never_expanded_twice(value in template_bytes(), seq in 1u64..100, slot in 1usize..9) {
        let template = Template::parse(&[OsString::from("cmd"), OsString::from("{}")], true);
        let fill = Fill { value: Some(&value), seq, slot };
        let got = template.render(&fill);
        prop_assert_eq!(got.len(), 2);
        prop_assert_eq!(got[1].as_bytes(), &value[..]);
    }

    /// Without a replacement string the value becomes the last argument,
    /// and the other arguments stay as they are.
    #[test]
    fn value_is_appended_without_a_replacement_string(
        args in prop::collection::vec("[a-z{}./ -]{0,6}", 1..5),
        value in template_bytes(),
    ) {
        prop_assume!(!args.iter().any(|a| has_placeholder(a.as_bytes())));
        let os_args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let fill = Fill { value: Some(&value), seq: 3, slot: 2 };
        let mut want: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        let once: Vec<Vec<u8>> = Template::parse(&os_args, false)
            .render(&fill)
            .into_iter()
            .map(OsString::into_vec)
            .collect();
        prop_assert_eq!(&once, &want, "nothing appended for a single command");
        want.push(value.clone());
        let got: Vec<Vec<u8>> = Template::parse(&os_args, true)
            .render(&fill)
            .into_iter()
            .map(OsString::into_vec)
            .collect();
        prop_assert_eq!(got, want);
    }

    /// The program is resolved once only when no job can change it.
    #[test]
    fn constant_program_means_no_replacement_string_in_it(
        args in prop::collection::vec(template_bytes(), 1..4),
        value_expected in any::<bool>(),
    ) {
        let os_args: Vec<OsString> = args.iter().cloned().map(OsString::from_vec).collect();
        let template = Template::parse(&os_args, value_expected);
        match template.constant_program() {
            Some(program) => {
                prop_assert!(!has_placeholder(&args[0]));
                prop_assert_eq!(program.as_bytes(), &args[0][..]);
            }
            None => prop_assert!(has_placeholder(&args[0])),
        }
    }
}

// ---------------------------------------------------------------------------
// Line source

proptest! {
    #![proptest_config(config(64))]

    /// Values from a file are its non-empty lines, whole, in order, any
    /// bytes, any lengths up to the most one argument may hold (also longer
    /// than one read).
    #[test]
    fn lines_from_a_file_are_its_non_empty_lines(
        lines in prop::collection::vec(
            prop_oneof![
                4 => prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..40),
                1 => (1usize..=131_071).prop_map(|n| vec![b'x'; n]),
            ],
            0..30,
        ),
        final_newline in any::<bool>(),
    ) {
        let mut text = lines.join(&b'\n');
        if final_newline {
            text.push(b'\n');
        }
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&text).unwrap();
        file.rewind().unwrap();
        let mut source = Source::lines(Input::File(file));
        let mut got = Vec::new();
        loop {
            match source.next_job() {
                Next::Job(value) => got.push(value.expect("a line has a value")),
                Next::Wait => source.fill().unwrap(),
                Next::Done => break,
            }
        }
        let want: Vec<Vec<u8>> = lines.into_iter().filter(|l| !l.is_empty()).collect();
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------
// Regressions

/// MakeFlags::parse (like make) splits on a newline too, so escape() must
/// protect one, or a `--jobserver=fifo:PATH` whose PATH holds a newline would
/// reach the children cut at the newline.
#[test]
fn escape_protects_a_newline_in_a_fifo_path() {
    let path = "/tmp/a\nb/fifo";
    let value = rewrite("", &format!("--jobserver-auth=fifo:{}", escape(path)));
    assert_eq!(
        MakeFlags::parse(&value).auth,
        Some(Auth::Fifo(PathBuf::from(path))),
        "MAKEFLAGS={value:?}"
    );
}

/// A MAKEFLAGS value that ends in a lone backslash (make never writes one,
/// a user may) must not glue the backslash to the first word rewrite()
/// appends: under `--jobserver=AUTH` that is the jobserver word itself.
#[test]
fn rewrite_after_a_trailing_backslash_keeps_the_jobserver() {
    let value = rewrite("k -Ifoo\\", "--jobserver-auth=fifo:/d/fifo");
    let parsed = MakeFlags::parse(&value);
    assert_eq!(
        parsed.auth,
        Some(Auth::Fifo(PathBuf::from("/d/fifo"))),
        "MAKEFLAGS={value:?}"
    );
    assert_eq!(parsed.letters, "k", "MAKEFLAGS={value:?}");
}
