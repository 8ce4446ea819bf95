//! Command templates with GNU parallel's replacement strings, parsed once and rendered in
//! one pass, so a value that itself contains `{}` is never expanded again.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    /// `{}`
    Value,
    /// `{.}`: the value without its extension.
    NoExtension,
    /// `{/}`
    Basename,
    /// `{//}`
    Dirname,
    /// `{/.}`
    BasenameNoExtension,
    /// `{#}`: the job's sequence number, from 1.
    Seq,
    /// `{%}`: the job's slot number, 1..N; the implicit slot is 1.
    Slot,
}

/// Longest first, so `{//}` is not read as `{/}` followed by text.
const PLACEHOLDERS: [(&[u8], Piece); 7] = [
    (b"{//}", Piece::Dirname),
    (b"{/.}", Piece::BasenameNoExtension),
    (b"{/}", Piece::Basename),
    (b"{.}", Piece::NoExtension),
    (b"{#}", Piece::Seq),
    (b"{%}", Piece::Slot),
    (b"{}", Piece::Value),
];

#[derive(Debug, Clone)]
pub struct Template {
    args: Vec<Vec<Piece>>,
}

/// What one job's command is rendered from.
pub struct Fill<'a> {
    pub value: Option<&'a [u8]>,
    pub seq: u64,
    pub slot: usize,
}

impl Template {
    /// Parses `args`. When `value_expected` and no argument holds a replacement string,
    /// the value is appended as the last argument (GNU parallel, `xargs -n1`).
    pub fn parse(args: &[OsString], value_expected: bool) -> Template {
        let mut args: Vec<Vec<Piece>> = args.iter().map(|a| parse_arg(a.as_bytes())).collect();
        let has_placeholder = args.iter().flatten().any(|p| !matches!(p, Piece::Text(_)));
        if value_expected && !has_placeholder {
            args.push(vec![Piece::Value]);
        }
        Template { args }
    }

    /// The first argument, when no job can change it: resolve the program only once.
    pub fn constant_program(&self) -> Option<&OsStr> {
        self.constant_words().first().copied().flatten()
    }

    /// Each argument as it is for every job, `None` where a job's value goes.
    pub fn constant_words(&self) -> Vec<Option<&OsStr>> {
        self.args
            .iter()
            .map(|pieces| match pieces.as_slice() {
                [Piece::Text(t)] => Some(OsStr::from_bytes(t)),
                [] => Some(OsStr::new("")),
                _ => None,
            })
            .collect()
    }

    /// Whether `{%}` appears: the rendering depends on the slot.
    pub fn uses_slot(&self) -> bool {
        self.args.iter().flatten().any(|p| *p == Piece::Slot)
    }

    pub fn render(&self, fill: &Fill<'_>) -> Vec<OsString> {
        self.args
            .iter()
            .map(|pieces| {
                let mut out = Vec::new();
                for piece in pieces {
                    render_piece(piece, fill, &mut out);
                }
                OsString::from_vec(out)
            })
            .collect()
    }
}

fn parse_arg(arg: &[u8]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = Vec::new();
    let mut rest = arg;
    'outer: while !rest.is_empty() {
        if rest[0] == b'{' {
            for (pattern, piece) in &PLACEHOLDERS {
                if rest.starts_with(pattern) {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(piece.clone());
                    rest = &rest[pattern.len()..];
                    continue 'outer;
                }
            }
        }
        text.push(rest[0]);
        rest = &rest[1..];
    }
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

fn render_piece(piece: &Piece, fill: &Fill<'_>, out: &mut Vec<u8>) {
    let value = fill.value.unwrap_or_default();
    match piece {
        Piece::Text(t) => out.extend_from_slice(t),
        Piece::Value => out.extend_from_slice(value),
        Piece::NoExtension => {
            let (dir, base) = split_path(value);
            out.extend_from_slice(dir);
            out.extend_from_slice(strip_extension(base));
        }
        Piece::Basename => out.extend_from_slice(split_path(value).1),
        Piece::Dirname => out.extend_from_slice(dirname(value)),
        Piece::BasenameNoExtension => out.extend_from_slice(strip_extension(split_path(value).1)),
        Piece::Seq => out.extend_from_slice(fill.seq.to_string().as_bytes()),
        Piece::Slot => out.extend_from_slice(fill.slot.to_string().as_bytes()),
    }
}

/// (everything up to and including the last `/`, the rest).
fn split_path(value: &[u8]) -> (&[u8], &[u8]) {
    match value.iter().rposition(|&b| b == b'/') {
        Some(i) => value.split_at(i + 1),
        None => (&[], value),
    }
}

/// `{//}`: the value up to its last `/`; `.` when it has none, `/` for a top-level path.
fn dirname(value: &[u8]) -> &[u8] {
    match value.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &value[..i],
        None => b".",
    }
}

/// A basename without its extension; a leading dot (`.bashrc`) is not an extension.
fn strip_extension(base: &[u8]) -> &[u8] {
    match base.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => &base[..i],
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(args: &[&str], value: &str) -> Vec<String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let fill = Fill {
            value: Some(value.as_bytes()),
            seq: 7,
            slot: 2,
        };
        Template::parse(&args, true)
            .render(&fill)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn replacement_strings() {
        let cases: &[(&str, &str, &str)] = &[
            ("{}", "dir/sub/file.tar.gz", "dir/sub/file.tar.gz"),
            ("{.}", "dir/sub/file.tar.gz", "dir/sub/file.tar"),
            ("{/}", "dir/sub/file.tar.gz", "file.tar.gz"),
            ("{//}", "dir/sub/file.tar.gz", "dir/sub"),
            ("{/.}", "dir/sub/file.tar.gz", "file.tar"),
            ("{.}", "a.d/file", "a.d/file"),
            ("{.}", "dir/.hidden", "dir/.hidden"),
            ("{//}", "file", "."),
            ("{//}", "/file", "/"),
            ("{/}", "file.c", "file.c"),
            ("{#}", "x", "7"),
            ("{%}", "x", "2"),
            ("out/{/.}.o", "src/a.c", "out/a.o"),
            ("{}{}", "ab", "abab"),
            ("{x}", "v", "{x}"),
            ("{", "v", "{"),
        ];
        for (arg, value, want) in cases {
            assert_eq!(
                render(&["cmd", arg], value)[1],
                *want,
                "{arg} with {value:?}"
            );
        }
    }

    #[test]
    fn value_is_appended_without_replacement_string() {
        assert_eq!(render(&["gzip", "-9"], "a.log"), ["gzip", "-9", "a.log"]);
        assert_eq!(render(&["echo", "{#}"], "v"), ["echo", "7"]);
    }

    #[test]
    fn a_value_holding_a_replacement_string_is_not_expanded_again() {
        assert_eq!(render(&["echo", "{}"], "{.}{#}"), ["echo", "{.}{#}"]);
    }

    #[test]
    fn nothing_is_appended_for_a_single_command() {
        let args = [OsString::from("true")];
        let t = Template::parse(&args, false);
        let fill = Fill {
            value: None,
            seq: 1,
            slot: 1,
        };
        assert_eq!(t.render(&fill), [OsString::from("true")]);
        assert_eq!(t.constant_program(), Some(OsStr::new("true")));
        let t = Template::parse(&[OsString::from("{}")], true);
        assert_eq!(t.constant_program(), None);
    }
}
