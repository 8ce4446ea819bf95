//! The command line: what was typed ([`Cli`], whose doc comments are the help text and the
//! man page) and what it means ([`Config`]).

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::limits::{self, Limits};
use crate::makeflags::Auth;
use crate::server::Style;
use crate::status::Status;

/// Run commands in parallel within one GNU make jobserver budget.
///
/// Under make (a +jsrun recipe) or any jobserver, jsrun is a client: its first job
/// runs in the implicit slot, every further concurrent job takes a token that goes back
/// when the job ends. With -jN and no jobserver around, it creates one with N slots and
/// exports it to its children through MAKEFLAGS, so make, ninja, cargo and emerge below it
/// share the same N slots.
#[derive(Debug, Parser)]
#[command(
    name = "jsrun",
    version,
    args_override_self = true,
    override_usage = "jsrun [OPTIONS] [--] COMMAND [ARG...]\n       \
                      jsrun [OPTIONS] [--] COMMAND [ARG...] ::: VALUE...\n       \
                      jsrun [OPTIONS] [--] COMMAND [ARG...] :::: FILE\n       \
                      jsrun [OPTIONS] < commands.txt",
    after_help = "Replacement strings in ARGs: {} value, {.} without extension, {/} basename, \
                  {//} dirname, {/.} basename without extension, {#} job number, {%} slot \
                  number. Without any, the value is appended as the last argument.\n\n\
                  Exit status: the job's status (128+S if killed by signal S); with several \
                  jobs, 0 or the status of the first failed job; 125 jsrun error, 126 not \
                  executable, 127 not found, 141 jsrun's stdout closed."
)]
pub struct Cli {
    /// Job slots: at most N jobs at once (-jN, -j N or --jobs=N). Bare -j or -j0: the
    /// number of CPUs; before a command write -j -- COMMAND. With no usable jobserver
    /// around, jsrun creates one with N slots for its children.
    #[arg(
        short = 'j',
        long = "jobs",
        value_name = "N",
        num_args = 0..=1,
        default_missing_value = "0",
        allow_negative_numbers = true
    )]
    pub jobs: Option<usize>,

    /// While the 1-minute load average is at least LOAD: in a pool of jsrun's own, hold
    /// back the tokens that come back, so the whole tree starts no new job; under another
    /// pool, start no further job of jsrun's own (one may always run).
    #[arg(
        short = 'l',
        long = "load-average",
        value_name = "LOAD",
        value_parser = load_average,
        allow_negative_numbers = true
    )]
    pub load_average: Option<f64>,

    /// While the memory available (the least of MemAvailable and, for each cgroup up to
    /// the root, its limit less its usage) is below SIZE (512M, 4G, bytes): in a pool of
    /// jsrun's own, hold back the tokens that come back; under another pool, run jsrun's
    /// own jobs one at a time.
    #[arg(long, value_name = "SIZE", value_parser = limits::parse_size)]
    pub min_memory_avail: Option<u64>,

    /// While the memory pressure stall (PSI "some avg10", in percent) is at least PCT: in
    /// a pool of jsrun's own, hold back the tokens that come back; under another pool, run
    /// jsrun's own jobs one at a time. Without PSI on the machine: a warning, ignored.
    #[arg(long, value_name = "PCT", value_parser = limits::parse_percent)]
    pub max_memory_pressure: Option<f64>,

    /// With --min-memory-avail or --max-memory-pressure in a pool of jsrun's own: only hold
    /// back new starts; never pause running jobs (by default, while memory keeps running
    /// short, jobs are paused youngest first and resumed oldest first).
    #[arg(long)]
    pub no_pause: bool,

    /// Every job needs K slots of the pool (the implicit slot counts as one) and holds them
    /// until it ends, e.g. `+jsrun --weight=4 -- ld ...` for a link step. K beyond the
    /// pool's size is capped, with a warning.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub weight: Option<u32>,

    /// After a failure, keep starting the remaining jobs (default: start no new job, let
    /// running ones finish).
    #[arg(short = 'k', long)]
    pub keep_going: bool,

    /// Kind of jobserver to create. Default: fifo, or pipe when the command is a GNU make
    /// older than 4.4.
    #[arg(long, value_enum, value_name = "STYLE")]
    pub jobserver_style: Option<Style>,

    /// Let GROUP use the fifo jsrun creates (directory 0710, fifo 0660 instead of 0700 and
    /// 0600), e.g. the build user of emerge's FEATURES=userpriv.
    #[arg(long, value_name = "GROUP")]
    pub jobserver_group: Option<String>,

    /// Use this jobserver (fifo:PATH or R,W) instead of MAKEFLAGS, with no implicit slot:
    /// a token is taken before the first job too.
    #[arg(long, value_name = "AUTH")]
    pub jobserver: Option<String>,

    /// Group the output of jobs: by line (-Oline) or by job (-Ojob, or a bare -O). The
    /// mode is attached, as in make: -O line runs a command named line.
    #[arg(
        short = 'O',
        long,
        value_enum,
        value_name = "MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "job"
    )]
    pub output_sync: Option<OutputSync>,

    /// Prefix each output line with the job's value (implies -Oline unless -O is given).
    #[arg(long)]
    pub tag: bool,

    /// Print each command to stderr as it starts.
    #[arg(short, long)]
    pub verbose: bool,

    /// Print the commands, run nothing (also when MAKEFLAGS says make -n).
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Write one tab-separated row per finished job to FILE.
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<PathBuf>,

    /// Print a summary on stderr at exit: jobs, failures, peak concurrency, tokens,
    /// time spent waiting for tokens, slot utilisation.
    #[arg(long)]
    pub stats: bool,

    /// Write a Chrome trace (JSON for Perfetto or chrome://tracing) to FILE: a row per
    /// slot with a span per job, and the waits for tokens.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,

    /// Show a progress line on stderr while jobs run (only when stderr is a terminal).
    #[arg(long)]
    pub progress: bool,

    /// Serve a system jobserver at PATH (a fifo, created or replaced) with N tokens (-jN;
    /// default one per CPU) until SIGINT or SIGTERM, governed by -l, --min-memory-avail and
    /// --max-memory-pressure, resized by SIGUSR1/SIGUSR2, giving back the tokens of
    /// holders that are gone. No command. For make.conf
    /// (MAKEFLAGS="-jN --jobserver-auth=fifo:PATH") and hosts running several builds.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["jobserver", "info", "dry_run"])]
    pub serve: Option<PathBuf>,

    /// Print the jobserver jsrun would use, and exit.
    #[arg(long)]
    pub info: bool,

    /// The command and its arguments, then `::: VALUE...` or `:::: FILE`.
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputSync {
    /// Children write straight to jsrun's stdout and stderr.
    #[default]
    None,
    /// Whole lines only: lines of different jobs never mix.
    Line,
    /// A job's output in one piece when it ends.
    Job,
}

/// Where job values come from.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// The single-command form: one job.
    None,
    /// `::: VALUE...`
    Values(Vec<OsString>),
    /// `:::: FILE`; `-` is stdin.
    File(PathBuf),
    /// No COMMAND: command lines on stdin.
    StdinCommands,
}

#[derive(Debug)]
pub struct Config {
    /// `-j`, with 0 already turned into the number of CPUs.
    pub jobs: Option<usize>,
    /// `-l`, `--min-memory-avail`, `--max-memory-pressure`.
    pub limits: Limits,
    /// `--weight`: slots per job, 1 when not given.
    pub weight: usize,
    /// `--no-pause`: the memory limits only hold back.
    pub no_pause: bool,
    /// `--serve=PATH`.
    pub serve: Option<PathBuf>,
    pub keep_going: bool,
    pub jobserver_style: Option<Style>,
    pub jobserver_group: Option<nix::unistd::Gid>,
    pub jobserver: Option<Auth>,
    pub output_sync: OutputSync,
    pub tag: bool,
    pub verbose: bool,
    pub dry_run: bool,
    pub joblog: Option<PathBuf>,
    pub stats: bool,
    pub trace: Option<PathBuf>,
    pub progress: bool,
    pub info: bool,
    pub command: Vec<OsString>,
    pub input: Input,
    /// `-O line` runs the command `line`, as in make; when it is not found, the message
    /// adds this hint: (the word, the hint).
    pub not_found_hint: Option<(OsString, String)>,
}

/// Parses jsrun's arguments. A usage error is said on one line (`jsrun: error: ...; use
/// ...`) and returns 125; `--help` and `--version` are printed here and return 0.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Config, Status> {
    let mut cmd = Cli::command();
    cmd.build();
    let scan = Scan::new(&cmd, args.into_iter().collect());
    let cli = cmd
        .try_get_matches_from_mut(scan.args)
        .and_then(|matches| Cli::from_arg_matches(&matches))
        .map_err(|e| {
            if !e.use_stderr() {
                let _ = e.print();
                return Status::SUCCESS;
            }
            crate::say!("jsrun: error: {}", usage_error(&cmd, &e));
            Status::USAGE
        })?;
    let mut config = Config::try_from(cli).map_err(|message| {
        crate::say!("jsrun: error: {message}");
        Status::USAGE
    })?;
    config.not_found_hint = scan.mode_as_command.map(|m| {
        let hint = m.hint();
        (m.word, hint)
    });
    Ok(config)
}

/// How an option takes its value, as clap's definition says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    Nothing,
    /// Attached (`-lN`, `--joblog=F`) or as the next word.
    Value,
    /// Optional: attached, or the next word when it is a number (`-j`, `-j4`, `-j 4`).
    OptionalNumber,
    /// Optional and only attached (`-O`, `-Oline`, `-O=line`, `--output-sync=line`), so
    /// that the next word stays the command.
    OptionalAttached,
}

fn takes(arg: &clap::Arg) -> Takes {
    match arg.get_num_args() {
        Some(range) if range.takes_values() && range.min_values() > 0 => Takes::Value,
        Some(range) if range.takes_values() && arg.is_require_equals_set() => {
            Takes::OptionalAttached
        }
        Some(range) if range.takes_values() => Takes::OptionalNumber,
        _ => Takes::Nothing,
    }
}

/// `-j`'s separate value: a word that reads as a number (negative ones included, so that
/// `-j -3` is refused as a value rather than taken for an option).
fn is_number(word: Option<&OsString>) -> bool {
    let Some(word) = word.and_then(|w| w.to_str()) else {
        return false;
    };
    let digits = word.strip_prefix('-').unwrap_or(word);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A command word that reads as a mode and came right after a bare `-O` (`-O line`): it
/// runs as a command, as in make, and "command not found" suggests the attached spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModeAsCommand {
    word: OsString,
    /// The option as it was written, `-O` or `--output-sync`.
    option: String,
}

impl ModeAsCommand {
    /// ` (did you mean -Oline? -O takes its mode attached)`.
    fn hint(&self) -> String {
        let word = self.word.to_string_lossy();
        let option = &self.option;
        if option.starts_with("--") {
            format!(" (did you mean {option}={word}? {option} takes its mode after '=')")
        } else {
            format!(" (did you mean {option}{word}? {option} takes its mode attached)")
        }
    }
}

/// jsrun's own options read as make reads them, before clap sees them. make spells an
/// optional value attached, `-Oline`, which clap reads as `-O -l ine`; the scan rewrites
/// it to `-O=line`. It knows from clap's definition which options take the next word as
/// their value, and stops at `--` or at the command: nothing after it is touched.
#[derive(Debug)]
struct Scan {
    args: Vec<OsString>,
    mode_as_command: Option<ModeAsCommand>,
}

impl Scan {
    fn new(cmd: &clap::Command, mut args: Vec<OsString>) -> Scan {
        let by_long = |name: &str| cmd.get_arguments().find(|a| a.get_long() == Some(name));
        let by_short = |c: char| cmd.get_arguments().find(|a| a.get_short() == Some(c));
        let mut mode_as_command = None;
        // The word before was an option whose optional value must be attached, bare.
        let mut bare: Option<(&clap::Arg, String)> = None;
        let mut at = 1;
        while at < args.len() {
            let before = bare.take();
            let Some(word) = args[at].to_str() else { break };
            at += 1;
            if word == "--" {
                break;
            }
            if let Some(long) = word.strip_prefix("--") {
                let (name, attached) = match long.split_once('=') {
                    Some((name, _)) => (name, true),
                    None => (long, false),
                };
                let Some(arg) = by_long(name) else { continue };
                match takes(arg) {
                    Takes::Value if !attached => at += 1,
                    Takes::OptionalNumber if !attached && is_number(args.get(at)) => at += 1,
                    Takes::OptionalAttached if !attached => bare = Some((arg, format!("--{name}"))),
                    _ => {}
                }
                continue;
            }
            if let Some(shorts) = word.strip_prefix('-').filter(|s| !s.is_empty()) {
                let mut rewrite = None;
                for (pos, c) in shorts.char_indices() {
                    let rest = &shorts[pos + c.len_utf8()..];
                    let Some(arg) = by_short(c) else { break };
                    match takes(arg) {
                        Takes::Nothing => continue,
                        Takes::Value if rest.is_empty() => at += 1,
                        Takes::OptionalNumber if rest.is_empty() && is_number(args.get(at)) => {
                            at += 1;
                        }
                        Takes::OptionalAttached if rest.is_empty() => {
                            bare = Some((arg, format!("-{c}")));
                        }
                        Takes::OptionalAttached if !rest.starts_with('=') => {
                            let split = 1 + pos + c.len_utf8();
                            rewrite = Some(format!("{}={rest}", &word[..split]));
                        }
                        _ => {}
                    }
                    break;
                }
                if let Some(word) = rewrite {
                    args[at - 1] = word.into();
                }
                continue;
            }
            // The command.
            if let Some((arg, option)) = before
                && arg
                    .get_possible_values()
                    .iter()
                    .any(|value| value.matches(word, false))
            {
                mode_as_command = Some(ModeAsCommand {
                    word: word.into(),
                    option,
                });
            }
            break;
        }
        Scan {
            args,
            mode_as_command,
        }
    }
}

/// One line for a usage error clap found: what is wrong and how to write it instead.
fn usage_error(cmd: &clap::Command, err: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let text = |kind| match err.get(kind) {
        Some(ContextValue::String(text)) => Some(text.as_str()),
        _ => None,
    };
    // clap names the option as its usage shows it, e.g. "--jobs [<N>]".
    let shown = text(ContextKind::InvalidArg).unwrap_or_default();
    let arg = cmd
        .get_arguments()
        .find(|a| !a.is_positional() && a.to_string() == shown);
    let value = text(ContextKind::InvalidValue);
    match (err.kind(), arg, value) {
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(arg), Some(value))
            if !value.is_empty() || takes(arg) != Takes::Value =>
        {
            bad_value(arg, value)
        }
        (ErrorKind::InvalidValue, Some(arg), _) => {
            let option = spelling(arg);
            let name = value_name(arg);
            format!("{option} needs a {name}; use {option} {name}")
        }
        (ErrorKind::TooManyValues, Some(_), Some(value)) => {
            format!("{shown} takes no value, not '{value}'; use {shown} alone")
        }
        (ErrorKind::UnknownArgument, _, _) => match text(ContextKind::SuggestedArg) {
            Some(suggested) => {
                format!("unknown option '{shown}'; use {suggested} (see jsrun --help)")
            }
            None => format!(
                "unknown option '{shown}'; see jsrun --help, and write -- before a COMMAND \
                 that starts with '-'"
            ),
        },
        _ => {
            // Whatever else clap reports: its first line, without its own "error: ".
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            format!("{first}; see jsrun --help")
        }
    }
}

/// An option value that clap refused: what was given and what the option takes.
fn bad_value(arg: &clap::Arg, value: &str) -> String {
    match arg.get_id().as_str() {
        "jobs" => format!(
            "invalid -j value '{value}': not a number of job slots; use -jN (e.g. -j4), or \
             -j -- COMMAND for one slot per CPU"
        ),
        "load_average" => format!(
            "invalid -l value '{value}': not a load average above 0; use -l LOAD (e.g. -l 4 \
             or -l 2.5)"
        ),
        "weight" => format!(
            "invalid --weight '{value}': not a number of slots of 1 or more; use --weight=K \
             (e.g. --weight=4)"
        ),
        "min_memory_avail" => limits::parse_size(value).err().unwrap_or_default(),
        "max_memory_pressure" => limits::parse_percent(value).err().unwrap_or_default(),
        "output_sync" => format!(
            "invalid -O mode '{value}'; use -Oline, -Ojob or -Onone (a bare -O means -Ojob)"
        ),
        _ => {
            let option = spelling(arg);
            let long = arg.get_long().unwrap_or_default();
            let choices: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|v| format!("--{long}={}", v.get_name()))
                .collect();
            match choices.split_last() {
                None => format!(
                    "invalid {option} value '{value}'; use {option} {} (see jsrun --help)",
                    value_name(arg)
                ),
                Some((only, [])) => format!("invalid {option} '{value}'; use {only}"),
                Some((last, others)) => format!(
                    "invalid {option} '{value}'; use {} or {last}",
                    others.join(", ")
                ),
            }
        }
    }
}

/// `-j` for an option with a short name, else `--joblog`.
fn spelling(arg: &clap::Arg) -> String {
    match (arg.get_short(), arg.get_long()) {
        (Some(c), _) => format!("-{c}"),
        (None, Some(long)) => format!("--{long}"),
        (None, None) => arg.get_id().to_string(),
    }
}

fn value_name(arg: &clap::Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map_or_else(|| "VALUE".into(), std::string::ToString::to_string)
}

/// `-l`: a load average above 0.
fn load_average(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(load) if load > 0.0 => Ok(load),
        _ => Err("not a load average above 0".into()),
    }
}

impl TryFrom<Cli> for Config {
    type Error = String;

    fn try_from(cli: Cli) -> Result<Config, String> {
        let (command, input) = split_input(cli.command)?;
        if cli.serve.is_some() && input != Input::StdinCommands {
            return Err("--serve runs no command; use jsrun --serve=PATH -jN alone".into());
        }
        if input == Input::StdinCommands
            && std::io::stdin().is_terminal()
            && !cli.info
            && cli.serve.is_none()
        {
            return Err(
                "no COMMAND given, and stdin is a terminal; use jsrun [OPTIONS] \
                 COMMAND ..., or pipe command lines into jsrun"
                    .into(),
            );
        }
        let jobserver = match cli.jobserver {
            Some(text) => match Auth::parse(&text) {
                auth @ (Auth::Fifo(_) | Auth::Pipe { .. }) => Some(auth),
                _ => {
                    return Err(format!(
                        "invalid --jobserver '{text}': not a jobserver; use \
                         --jobserver=fifo:PATH or --jobserver=R,W (two inherited fds)"
                    ));
                }
            },
            None => None,
        };
        let jobs = cli.jobs.map(|n| match n {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        });
        let output_sync = match cli.output_sync {
            Some(mode) => mode,
            None if cli.tag => OutputSync::Line,
            None => OutputSync::None,
        };
        Ok(Config {
            jobs,
            weight: cli.weight.map_or(1, |k| k as usize),
            no_pause: cli.no_pause,
            serve: cli.serve,
            limits: Limits {
                load: cli.load_average,
                min_memory_avail: cli.min_memory_avail,
                max_memory_pressure: cli.max_memory_pressure,
            },
            keep_going: cli.keep_going,
            jobserver_style: cli.jobserver_style,
            jobserver_group: cli.jobserver_group.map(|g| group_id(&g)).transpose()?,
            jobserver,
            output_sync,
            tag: cli.tag,
            verbose: cli.verbose,
            dry_run: cli.dry_run,
            joblog: cli.joblog,
            stats: cli.stats,
            trace: cli.trace,
            progress: cli.progress,
            info: cli.info,
            command,
            input,
            not_found_hint: None,
        })
    }
}

/// A group name or number.
fn group_id(group: &str) -> Result<nix::unistd::Gid, String> {
    if let Ok(n) = group.parse() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        _ => Err(format!(
            "invalid --jobserver-group '{group}': no such group; use a group name or \
             number, e.g. --jobserver-group=portage"
        )),
    }
}

/// Splits `COMMAND ARG... ::: VALUE...` / `:::: FILE` into the command and its input.
fn split_input(mut words: Vec<OsString>) -> Result<(Vec<OsString>, Input), String> {
    let Some(at) = words.iter().position(|w| w == ":::" || w == "::::") else {
        let input = if words.is_empty() {
            Input::StdinCommands
        } else {
            Input::None
        };
        return Ok((words, input));
    };
    let mut rest = words.split_off(at);
    let marker = rest.remove(0);
    if rest.iter().any(|w| w == ":::" || w == "::::") {
        return Err(
            "more than one input source; use either ::: VALUE... or :::: FILE, once".into(),
        );
    }
    let input = if marker == ":::" {
        if rest.is_empty() {
            return Err("no value after :::; use COMMAND ::: VALUE...".into());
        }
        Input::Values(rest)
    } else {
        match <[OsString; 1]>::try_from(rest) {
            Ok([file]) => Input::File(file.into()),
            Err(_) => {
                return Err(":::: takes exactly one FILE; use :::: FILE ('-' for stdin)".into());
            }
        }
    };
    Ok((words, input))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn input_forms() {
        assert_eq!(
            split_input(os(&["gzip", "{}", ":::", "a", "b"])).unwrap(),
            (os(&["gzip", "{}"]), Input::Values(os(&["a", "b"])))
        );
        assert_eq!(
            split_input(os(&["cat", "::::", "-"])).unwrap(),
            (os(&["cat"]), Input::File("-".into()))
        );
        assert_eq!(
            split_input(os(&["true"])).unwrap(),
            (os(&["true"]), Input::None)
        );
        assert!(split_input(os(&["echo", ":::"])).is_err());
        assert!(split_input(os(&["echo", ":::", "a", ":::", "b"])).is_err());
        assert!(split_input(os(&["echo", "::::", "a", "b"])).is_err());
    }

    #[test]
    fn options_parse() {
        let config = parse(os(&["jsrun", "-j3", "-k", "-O", "echo", "x"])).unwrap();
        assert_eq!(config.jobs, Some(3));
        assert!(config.keep_going);
        assert_eq!(config.output_sync, OutputSync::Job);
        assert_eq!(config.command, os(&["echo", "x"]));
        for spelling in ["-Oline", "-O=line", "--output-sync=line"] {
            let config = parse(os(&["jsrun", spelling, "-j2", "echo", "-Ojob"])).unwrap();
            assert_eq!(config.output_sync, OutputSync::Line, "{spelling}");
            assert_eq!(config.command, os(&["echo", "-Ojob"]));
        }
        let config = parse(os(&["jsrun", "--output-sync=line", "--", "-weird"])).unwrap();
        assert_eq!(config.output_sync, OutputSync::Line);
        assert_eq!(config.command, os(&["-weird"]));
        assert_eq!(
            parse(os(&["jsrun", "-j", "abc", "x"])).unwrap_err(),
            Status::USAGE
        );
        assert_eq!(
            parse(os(&["jsrun", "--jobs=x", "y"])).unwrap_err(),
            Status::USAGE
        );
        assert_eq!(
            parse(os(&["jsrun", "-j", "--", "y"]))
                .unwrap()
                .jobs
                .map(|n| n > 0),
            Some(true)
        );
        assert_eq!(
            parse(os(&["jsrun", "--bogus", "x"])).unwrap_err(),
            Status::USAGE
        );
        assert_eq!(
            parse(os(&["jsrun", "--jobserver=nonsense", "x"])).unwrap_err(),
            Status::USAGE
        );
    }

    /// Runs the scan over `words` (after the program name).
    fn scan(words: &[&str]) -> Scan {
        let mut cmd = Cli::command();
        cmd.build();
        Scan::new(&cmd, os(&[&["jsrun"], words].concat()))
    }

    #[test]
    fn attached_modes_are_rewritten_among_options_only() {
        // (words, what clap gets)
        let cases: &[(&[&str], &[&str])] = &[
            (&["-Oline", "echo"], &["-O=line", "echo"]),
            (
                &["--joblog", "x.log", "-Oline", "echo"],
                &["--joblog", "x.log", "-O=line", "echo"],
            ),
            (
                &["--joblog=x.log", "-Oline", "e"],
                &["--joblog=x.log", "-O=line", "e"],
            ),
            (
                &["-j", "2", "-Oline", "echo"],
                &["-j", "2", "-O=line", "echo"],
            ),
            (&["-j", "-Ojob", "echo"], &["-j", "-O=job", "echo"]),
            (
                &["-l", "99", "-Oline", "echo"],
                &["-l", "99", "-O=line", "echo"],
            ),
            (&["-l99", "-Oline", "echo"], &["-l99", "-O=line", "echo"]),
            (
                &["--trace", "F", "-Oline", "echo"],
                &["--trace", "F", "-O=line", "echo"],
            ),
            (&["-kOline", "echo"], &["-kO=line", "echo"]),
            (&["-Ox", "echo"], &["-O=x", "echo"]),
            (&["-O=line", "echo"], &["-O=line", "echo"]),
            // Nothing after the command or after --, nor a value of an option.
            (&["echo", "-Oline"], &["echo", "-Oline"]),
            (&["-O", "line", "-Ojob"], &["-O", "line", "-Ojob"]),
            (&["--", "-Oline"], &["--", "-Oline"]),
            (&["--joblog", "-Oline", "x"], &["--joblog", "-Oline", "x"]),
            (&["-j", "abc", "-Oline"], &["-j", "abc", "-Oline"]),
            (&["-", "-Oline"], &["-", "-Oline"]),
        ];
        for (words, want) in cases {
            let scan = scan(words);
            assert_eq!(scan.args[1..], os(want), "{words:?}");
        }
    }

    #[test]
    fn a_mode_right_after_a_bare_o_is_remembered() {
        let mode = |option: &str, word: &str| {
            Some(ModeAsCommand {
                word: word.into(),
                option: option.into(),
            })
        };
        let cases: &[(&[&str], Option<ModeAsCommand>)] = &[
            (&["-O", "line"], mode("-O", "line")),
            (&["-kO", "job", "x"], mode("-O", "job")),
            (&["--output-sync", "none"], mode("--output-sync", "none")),
            (&["-O", "linex"], None),
            (&["-O", "--", "line"], None),
            (&["-O", "-k", "line"], None),
            (&["-Oline", "line"], None),
            (&["line"], None),
        ];
        for (words, want) in cases {
            assert_eq!(&scan(words).mode_as_command, want, "{words:?}");
        }
    }

    /// Every option whose value is optional is either attached-only or numeric (-j): the
    /// scan relies on it to find where the command starts.
    #[test]
    fn optional_values_are_attached_or_numbers() {
        let mut cmd = Cli::command();
        cmd.build();
        let numeric: Vec<&str> = cmd
            .get_arguments()
            .filter(|arg| takes(arg) == Takes::OptionalNumber)
            .map(|arg| arg.get_id().as_str())
            .collect();
        assert_eq!(numeric, ["jobs"]);
    }

    #[test]
    fn usage_errors_name_the_fix() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["-j", "-3", "x"],
                "invalid -j value '-3': not a number of job slots; use -jN (e.g. -j4), or -j -- COMMAND for one slot per CPU",
            ),
            (
                &["-j", "abc", "x"],
                "invalid -j value 'abc': not a number of job slots; use -jN (e.g. -j4), or -j -- COMMAND for one slot per CPU",
            ),
            (
                &["-l", "abc", "x"],
                "invalid -l value 'abc': not a load average above 0; use -l LOAD (e.g. -l 4 or -l 2.5)",
            ),
            (
                &["-l", "-1", "x"],
                "invalid -l value '-1': not a load average above 0; use -l LOAD (e.g. -l 4 or -l 2.5)",
            ),
            (
                &["-O=x", "x"],
                "invalid -O mode 'x'; use -Oline, -Ojob or -Onone (a bare -O means -Ojob)",
            ),
            (
                &["--jobserver-style=x", "x"],
                "invalid --jobserver-style 'x'; use --jobserver-style=fifo or --jobserver-style=pipe",
            ),
            (
                &["--jobserver-group"],
                "--jobserver-group needs a GROUP; use --jobserver-group GROUP",
            ),
            (&["--joblog"], "--joblog needs a FILE; use --joblog FILE"),
            (
                &["--keep-going=yes", "x"],
                "--keep-going takes no value, not 'yes'; use --keep-going alone",
            ),
            (
                &["--stat", "x"],
                "unknown option '--stat'; use --stats (see jsrun --help)",
            ),
        ];
        for (words, want) in cases {
            let mut cmd = Cli::command();
            cmd.build();
            let args = Scan::new(&cmd, os(&[&["jsrun"], *words].concat())).args;
            let err = cmd
                .try_get_matches_from_mut(args)
                .expect_err("a usage error");
            assert_eq!(usage_error(&cmd, &err), *want, "{words:?}");
        }
    }

    #[test]
    fn options_may_be_repeated_the_last_one_wins() {
        let config = parse(os(&[
            "jsrun", "-j2", "-j3", "-k", "-k", "-Ojob", "-Oline", "x",
        ]))
        .unwrap();
        assert_eq!(config.jobs, Some(3));
        assert_eq!(config.output_sync, OutputSync::Line);
    }
}

/// `man/jsrun.1` and `completions/*`, generated from [`Cli`] by the tests below and
/// checked in, so the binary carries no generator and no roff.
#[cfg(test)]
mod generated {
    use super::*;
    use clap_mangen::Man;
    use std::io::Write;
    use std::path::Path;

    /// What roff renders clap puts at the head of each piece it renders.
    const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

    /// The man page as the CLI definition renders it today, in the sections of make's and
    /// ripgrep's pages. clap renders NAME, SYNOPSIS, DESCRIPTION and OPTIONS
    /// (without the COMMAND operand, which the synopsis and description cover); the rest
    /// is the roff below.
    fn man_page() -> Vec<u8> {
        let cmd = Cli::command().mut_arg("command", |arg| arg.hide(true));
        let (name, version) = (
            cmd.get_name().to_owned(),
            cmd.get_version().map(str::to_owned),
        );
        let man = Man::new(cmd);
        let clap_part = |render: fn(&Man, &mut dyn Write) -> std::io::Result<()>| {
            let mut out = Vec::new();
            render(&man, &mut out).expect("render a man page section");
            let text = String::from_utf8(out).expect("UTF-8 roff");
            let text = text.strip_prefix(PREAMBLE).expect("roff's preamble first");
            text.to_owned()
        };
        // clap_mangen leaves the date out unquoted, which shifts the source and manual
        // into the wrong fields of .TH: written here with an empty date, as make's.
        let title = format!(
            ".TH {} 1 \"\" \"{name} {}\" \"User Commands\"\n",
            name.to_uppercase(),
            version.unwrap_or_default()
        );
        let page = [
            PREAMBLE.to_owned(),
            title,
            clap_part(Man::render_name_section),
            clap_part(Man::render_synopsis_section),
            clap_part(Man::render_description_section),
            DESCRIPTION.to_owned(),
            clap_part(Man::render_options_section),
            AFTER_OPTIONS.to_owned(),
        ];
        page.concat().into_bytes()
    }

    /// The rest of DESCRIPTION: the job forms and the replacement strings.
    const DESCRIPTION: &str = r#".PP
With
.B :::
the command runs once per VALUE, with
.B ::::
once per line of FILE
.RB ( \- :
stdin), and with no COMMAND each line of stdin is run by
.BR "/bin/sh \-c" .
Commands are executed directly, not through a shell, and a value is never expanded again.
Values from a file or stdin are streamed: memory does not grow with the number of jobs.
Empty lines are skipped.
After a failure jsrun starts no new job and lets the running ones finish
.RB ( \-k
keeps going).
.PP
Replacement strings in ARGs:
.TP
.B {}
the value
.TP
.B {.}
the value without its extension
.TP
.B {/}
its basename
.TP
.B {//}
its dirname
.TP
.B {/.}
its basename without extension
.TP
.B {#}
the job number, from 1
.TP
.B {%}
the slot number, 1..N (the implicit slot is 1)
.PP
Without any, the value is appended as the last argument.
"#;

    /// EXIT STATUS, ENVIRONMENT, DIAGNOSTICS, EXAMPLES and SEE ALSO.
    const AFTER_OPTIONS: &str = r#".SH "EXIT STATUS"
One job: the job's exit status, or 128+S when signal S killed it.
Several jobs: 0 when all succeeded, else the status of the first job that failed.
.TP
.B 125
jsrun's own error: bad usage or options (one line on stderr that names the fix), or the
jobserver could not be created.
.TP
.B 126
The command is not executable.
.TP
.B 127
The command was not found.
126 and 127 are found before any token is taken.
.TP
.B 141
jsrun's standard output was closed by its reader, e.g.
.BR "jsrun \-n ... | head \-1" :
jsrun ends quietly, as
.B seq
or
.B cat
would in its place.
.PP
125 also ends a job list that cannot be read or has a line longer than 131071 bytes, and
grouped output that could not be kept or written.
When jsrun receives SIGINT, SIGTERM or SIGHUP it passes the signal on to its running
jobs, waits for them, gives back every token, removes its fifo and then dies of the same
signal; a signal inherited as ignored stays ignored.
.PP
With
.BR \-\-serve :
0 after SIGINT or SIGTERM with the pool whole, 1 (and a warning) when tokens were missing
at the end, 125 for a PATH it refuses.
.SH ENVIRONMENT
.TP
.B MAKEFLAGS
Where make advertises its jobserver:
.B \-\-jobserver\-auth=fifo:PATH
(make 4.4 and later) or
.B \-\-jobserver\-auth=R,W
(an inherited pipe; older make also
.BR \-\-jobserver\-fds=R,W ).
The last such word wins; negative fds mean "no jobserver".
An
.B n
among the single-letter flags (make \-n) makes jsrun print commands without running them.
When jsrun serves a jobserver it rewrites MAKEFLAGS for its children: other flags kept,
old \-j and jobserver words replaced by
.BR "\-jN \-\-jobserver\-auth=..." .
.TP
.B CARGO_MAKEFLAGS, MFLAGS
Read after MAKEFLAGS, in this order; the first variable naming a jobserver is used.
Rewritten like MAKEFLAGS when jsrun serves a jobserver.
.TP
.B TMPDIR
Where jsrun creates the private directory of its fifo, when TMPDIR is absolute and holds
no blanks; else /tmp.
.TP
.B JSRUN_PROC_DIR
A directory whose
.BR loadavg ,
.B meminfo
and
.B pressure/memory
jsrun reads instead of those in /proc for
.BR \-l ,
.B \-\-min\-memory\-avail
and
.BR \-\-max\-memory\-pressure ;
no cgroup is read then. For tests, and to try the limits out.
.SH DIAGNOSTICS
.TP
.B "jobserver unavailable: fd N is closed"
The parent make rule lacks
.B +
(make 4.3, or make 4.4 in pipe mode), so the jobserver fds were closed; jsrun runs one job
at a time.
Add
.B +
in front of the recipe line, or use $(MAKE)-style recursion.
.TP
.B "the parent disabled it (\-\-jobserver\-auth=\-2,\-2)"
make 4.4 in pipe mode disables the jobserver for non-recursive children; add
.BR + .
.TP
.B "jobserver tokens: 1 missing at exit"
(server mode) A job kept a token, e.g. a process killed with SIGKILL while holding one, or
a daemon started by a job still holds one.
.TP
.B "invalid \-\-jobserver\-auth string \(aqfifo:...\(aq"
make 4.3 says this when it was started under a fifo jobserver, which it cannot read.
jsrun picks a pipe when it starts make itself, but a make further down (e.g. started by a
script) cannot be detected: use
.BR \-\-jobserver\-style=pipe .
.TP
.B "command not found: line (did you mean \-Oline? ...)"
As in make, the mode of
.B \-O
is attached:
.B \-O line
runs a command named line.
Write
.BR \-Oline .
.TP
.B "The fds are not a jobserver's: MAKEFLAGS is stale here"
MAKEFLAGS names fds that are not the jobserver's pipe (a shell that inherited MAKEFLAGS
past the make that set it); a
.B +
would not help. Unset MAKEFLAGS, or run jsrun from the make.
.TP
.B "\-jN is more than a jobserver pipe can hold here"
Use the
.B \-j
the message names, or raise fs.pipe\-max\-size.
.TP
.B "output of job N (...) could not be kept"
Neither the temp file in $TMPDIR nor memory could hold that job's output (\-O job).
Point TMPDIR at a file system with room, or use \-Oline or no \-O.
.TP
.B "more token(s) in the pool than it can hold"
A job wrote a byte into jsrun's pool that it never read.
.TP
.B "token(s) missing and no process holds the pool open any more: written back"
(\-\-serve) A build died holding tokens and nobody holds the fifo any more: jsrun gave
them back.
.TP
.B Is the pool being used?
.B +jsrun \-\-info
inside the recipe shows the jobserver jsrun would use;
.B \-\-stats
and
.B \-\-trace
show how the slots were used.
.SH EXAMPLES
.TP
In a Makefile recipe (the + lets make pass its jobserver):
.B +jsrun gzip {} ::: *.log
.TP
One budget of 16 slots for emerge and every build it starts (Portage >= 3.0.76; the group lets Portage's build user open the fifo):
.B FEATURES=jobserver\-token jsrun \-j16 \-\-jobserver\-group=portage emerge \-uDN @world
.TP
A jobserver for cargo or make, sized to the machine:
.B jsrun \-j \-\- cargo build
.TP
Four at a time, output grouped per job, a job log:
.B jsrun \-j4 \-Ojob \-\-joblog jobs.tsv xz \-9 {} ::: *.tar
.TP
Command lines from a file, each run by /bin/sh \-c, their output in whole lines:
.B jsrun \-j8 \-Oline < commands.txt
.TP
Pre-acquire a token from a system jobserver and run emerge in it:
.B jsrun \-\-jobserver=fifo:/dev/steve \-\- emerge \-uDN @world
.TP
A build held back while the load is 24 or more or less than 4 GiB of memory is available, with a view of how it used its slots:
.B jsrun \-j16 \-l 24 \-\-min\-memory\-avail=4G \-\-stats \-\-trace build.json \-\- make
.TP
A link step that needs four slots of make's pool:
.B +jsrun \-\-weight=4 \-\- ld ...
.TP
A system jobserver for make.conf (MAKEFLAGS="\-j16 \-\-jobserver\-auth=fifo:/run/jsrun/jobserver"):
.B jsrun \-\-serve=/run/jsrun/jobserver \-j16 \-\-jobserver\-group=portage
.TP
What jobserver would jsrun use here, and who holds it?
.B +jsrun \-\-info
.SH "SEE ALSO"
.BR make (1),
.BR ninja (1),
.BR emerge (1),
.BR parallel (1),
.BR xargs (1)
"#;

    fn completion(shell: clap_complete::Shell) -> Vec<u8> {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "jsrun", &mut out);
        out
    }

    /// Fails when `file` differs from `want`; `JSRUN_UPDATE_DOCS=1 cargo test generated`
    /// rewrites it.
    #[track_caller]
    fn check(file: &str, want: &[u8]) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        if std::env::var_os("JSRUN_UPDATE_DOCS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, want).unwrap();
        }
        let have = std::fs::read(&path).unwrap_or_default();
        assert!(
            have == want,
            "{file} is out of date: run JSRUN_UPDATE_DOCS=1 cargo test generated"
        );
    }

    #[test]
    fn man_page_matches_the_cli() {
        check("man/jsrun.1", &man_page());
    }

    #[test]
    fn completions_match_the_cli() {
        use clap_complete::Shell;
        check("completions/jsrun.bash", &completion(Shell::Bash));
        check("completions/_jsrun", &completion(Shell::Zsh));
        check("completions/jsrun.fish", &completion(Shell::Fish));
    }
}
