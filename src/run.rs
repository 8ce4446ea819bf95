//! From a parsed command line to an exit status: find or create the jobserver, run the
//! supervision loop, report, clean up.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::{self, Config, Input};
use crate::client::Client;
use crate::jobs::source::{self, Next, Source};
use crate::jobs::template::{Fill, Template};
use crate::jobs::{self, Job};
use crate::makeflags::{Auth, MakeFlags};
use crate::output::Output;
use crate::report::{Report, Sinks};
use crate::say;
use crate::server::{self, Server, Style};
use crate::status::{self, Status};
use crate::supervise::{self, Plan, Pool};
use crate::sys::Signals;

/// The variables a jobserver is looked for in, in this order. MAKEFLAGS first, as make
/// reads it; CARGO_MAKEFLAGS is how cargo hands its jobserver to build scripts; the first
/// one that names a jobserver wins (unlike the jobserver crate, an empty or stale variable
/// does not hide a good one further down).
const JOBSERVER_VARS: [&str; 3] = ["MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS"];

pub fn run<I: IntoIterator<Item = OsString>>(args: I) -> Status {
    match cli::parse(args) {
        // A closed stdout ends jsrun quietly, as it ends `seq` or `cat`.
        Ok(config) => execute(config).unwrap_or_else(|err| match say::is_broken_pipe(&err) {
            true => Status::BROKEN_PIPE,
            false => status::report(&err),
        }),
        Err(status) => status,
    }
}

/// The jobserver named in the environment: (variable, auth).
fn jobserver_from_env() -> Option<(&'static str, Auth)> {
    JOBSERVER_VARS.iter().find_map(|&name| {
        let value = std::env::var(name).ok()?;
        Some((name, MakeFlags::parse(&value).auth?))
    })
}

fn execute(config: Config) -> Result<Status> {
    // Inherited jobserver fds are checked before jsrun opens any file of its own, which
    // could otherwise take the number of a closed one.
    if config.info {
        return print_info(&config);
    }
    let makeflags = MakeFlags::parse(&std::env::var("MAKEFLAGS").unwrap_or_default());
    let dry_run = config.dry_run || makeflags.dry_run();
    let inherited = match (&config.jobserver, dry_run) {
        (None, false) => jobserver_from_env().map(|(var, auth)| {
            let client = Client::open(&auth);
            (var, auth, client)
        }),
        _ => None,
    };
    let (template, source, shell_lines) = jobs_of(&config)?;
    if dry_run {
        return print_jobs(&template, source, shell_lines);
    }
    // Signals are blocked from here on and read in the loop, so an interrupt at any
    // point still removes the fifo and gives every token back.
    let signals = Signals::new().context("cannot set up signal handling")?;
    let mut server = None;
    let (mut pool, cap) = match (&config.jobserver, inherited) {
        (Some(auth), _) => {
            let client =
                Client::open(auth).with_context(|| format!("cannot use --jobserver={auth}"))?;
            // No -j word: "-j" alone would read as "unlimited" to a tool that sizes itself
            // from it; make, ninja and Portage use the jobserver without one.
            export(&auth_words(auth));
            let pool = Pool {
                client: Some(client),
                implicit: 0,
            };
            (pool, config.jobs.unwrap_or(usize::MAX))
        }
        (None, Some((var, auth, client))) => match client {
            Ok(client) => {
                let pool = Pool {
                    client: Some(client),
                    implicit: 1,
                };
                (pool, config.jobs.unwrap_or(usize::MAX))
            }
            Err(e) => {
                let fallback = match config.jobs {
                    Some(n) => format!("creating a jobserver with {n} slots (-j{n})"),
                    None => "running one job at a time".into(),
                };
                // Closed or disabled pipe fds: the parent make rule lacks a '+'. A fifo
                // that cannot be opened: its make is gone or it is not ours to use.
                let hint = match auth {
                    Auth::Pipe { .. } | Auth::Disabled => " Add '+' to the parent make rule.",
                    _ => "",
                };
                crate::say!(
                    "jsrun: warning: jobserver unavailable: {e:#} ({var} has \
                     --jobserver-auth={auth}); {fallback}.{hint}"
                );
                serve_or_alone(&config, &template, &mut server)?
            }
        },
        (None, None) => serve_or_alone(&config, &template, &mut server)?,
    };
    // For slot utilisation: -jN, else the outer make's -jN, else what jsrun reached.
    let slots = match (cap, makeflags.jobs) {
        (usize::MAX, Some(Some(n))) => Some(n as usize),
        (usize::MAX, _) => None,
        (n, _) => Some(n),
    };
    let total = match &config.input {
        Input::None => Some(1),
        Input::Values(values) => Some(values.len()),
        _ => None,
    };
    let mut report = Report::new(&Sinks {
        joblog: config.joblog.as_deref(),
        trace: config.trace.as_deref(),
        progress: config.progress,
        total,
    })?;
    let mut output = Output::new(config.output_sync, config.tag);
    let plan = Plan {
        template,
        source,
        cap,
        keep_going: config.keep_going,
        load_average: config.load_average,
        verbose: config.verbose,
        shell_lines,
    };
    let outcome = supervise::run(plan, &mut pool, &signals, &mut report, &mut output);
    if let (Some(server), Some(client)) = (&server, &pool.client)
        && let Some(warning) = server.count_tokens(client)
    {
        crate::say!("jsrun: warning: {warning}");
    }
    // Removes the fifo and its directory.
    drop(server);
    report.close();
    let outcome = outcome?;
    if config.stats {
        report.print_stats(slots);
    }
    Ok(match outcome.interrupted {
        Some(sig) => Status::Killed(sig),
        None => outcome.status,
    })
}

/// With -jN: a jobserver of jsrun's own. Without: one job at a time, like make.
fn serve_or_alone(
    config: &Config,
    template: &Template,
    server: &mut Option<Server>,
) -> Result<(Pool, usize)> {
    let Some(n) = config.jobs else {
        let pool = Pool {
            client: None,
            implicit: 1,
        };
        return Ok((pool, 1));
    };
    let style = match config.jobserver_style {
        Some(style) => style,
        None => default_style(template, config.verbose),
    };
    let (created, client) =
        Server::create(style, n, config.jobserver_group).context("cannot create a jobserver")?;
    export(&created.makeflags_words());
    if config.verbose {
        crate::say!(
            "jsrun: serving {n} slots through --jobserver-auth={}",
            created.auth()
        );
    }
    *server = Some(created);
    Ok((
        Pool {
            client: Some(client),
            implicit: 1,
        },
        n,
    ))
}

/// Fifo, unless the command is a GNU make older than 4.4, which dies on a fifo MAKEFLAGS
/// ("invalid --jobserver-auth string"): one `--version` probe, only for make and gmake.
fn default_style(template: &Template, verbose: bool) -> Style {
    let Some(program) = template.constant_program() else {
        return Style::Fifo;
    };
    let name = Path::new(program).file_name().unwrap_or_default();
    if name != "make" && name != "gmake" {
        return Style::Fifo;
    }
    let Ok(path) = jobs::resolve(program) else {
        return Style::Fifo;
    };
    let version = std::process::Command::new(&path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|out| gnu_make_version(&String::from_utf8_lossy(&out.stdout)));
    match version {
        Some(v) if v < (4, 4) => {
            if verbose {
                crate::say!(
                    "jsrun: {} is GNU make {}.{}, which only knows pipe jobservers: \
                     using --jobserver-style=pipe",
                    path.display(),
                    v.0,
                    v.1
                );
            }
            Style::Pipe
        }
        _ => Style::Fifo,
    }
}

/// `(major, minor)` from the first line of `make --version`: "GNU Make 4.3".
fn gnu_make_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.lines().next()?.strip_prefix("GNU Make ")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// The MAKEFLAGS words naming `auth`: pipes under both spellings, for make < 4.2.
fn auth_words(auth: &Auth) -> String {
    match auth {
        Auth::Pipe { .. } => format!("--jobserver-fds={auth} --jobserver-auth={auth}"),
        _ => format!(
            "--jobserver-auth={}",
            crate::makeflags::escape(&auth.to_string())
        ),
    }
}

/// Puts `words` (`-jN --jobserver-auth=...`) into the environment all children inherit.
fn export(words: &str) {
    for (name, value) in server::export_env(words) {
        // SAFETY: jsrun is single-threaded: no other thread can read or write the
        // environment while it is changed.
        unsafe { std::env::set_var(name, value) };
    }
}

/// The template and job source the command line describes; `true` for command lines run
/// through `/bin/sh -c`.
fn jobs_of(config: &Config) -> Result<(Template, Source, bool)> {
    let shell = || {
        let argv: Vec<OsString> = ["/bin/sh", "-c", "{}"].map(OsString::from).into();
        Template::parse(&argv, true)
    };
    let shell_lines = config.command.is_empty();
    let template = if shell_lines {
        shell()
    } else {
        Template::parse(&config.command, config.input != Input::None)
    };
    let source = match &config.input {
        Input::None => Source::once(),
        Input::Values(values) => Source::values(values.clone()),
        Input::StdinCommands => Source::lines(source::Input::Stdin),
        Input::File(path) if path.as_os_str() == "-" => Source::lines(source::Input::Stdin),
        Input::File(path) => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            Source::lines(source::Input::File(file))
        }
    };
    Ok((template, source, shell_lines))
}

/// `-n`: print each command, run nothing.
fn print_jobs(template: &Template, mut source: Source, shell_lines: bool) -> Result<Status> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut seq = 0;
    loop {
        match source.next_job() {
            Next::Job(value) => {
                seq += 1;
                let fill = Fill {
                    value: value.as_deref(),
                    seq,
                    slot: 1,
                };
                let job = Job::new(seq, 1, template.render(&fill), value, shell_lines);
                writeln!(out, "{}", job.display())?;
            }
            // Nothing runs, so a blocking read is fine here.
            Next::Wait => source.fill()?,
            Next::Done => {
                out.flush()?;
                return Ok(Status::SUCCESS);
            }
        }
    }
}

/// `--info`: the jobserver jsrun would use. Exit 0 when usable, 1 when not.
fn print_info(config: &Config) -> Result<Status> {
    let mut text = String::new();
    let status = describe_jobserver(config, &mut text);
    say::stdout(&text)?;
    Ok(status)
}

/// The lines of `--info`, into `out`; the status says whether the jobserver is usable.
fn describe_jobserver(config: &Config, out: &mut String) -> Status {
    // Writing into a String cannot fail.
    macro_rules! put {
        ($($arg:tt)*) => {{ let _ = writeln!(out, $($arg)*); }};
    }
    let (source, auth, implicit) = match (&config.jobserver, jobserver_from_env()) {
        (Some(auth), _) => ("--jobserver", Some(auth.clone()), false),
        (None, Some((var, auth))) => (var, Some(auth), true),
        (None, None) => ("none", None, false),
    };
    put!("source: {source}");
    let jobs = MakeFlags::parse(&std::env::var("MAKEFLAGS").unwrap_or_default()).jobs;
    match jobs {
        Some(Some(n)) => put!("make -j: {n}"),
        Some(None) => put!("make -j: unlimited"),
        None => put!("make -j: none"),
    }
    if let Some(n) = config.jobs {
        put!("jsrun -j: {n}");
    }
    let Some(auth) = auth else {
        // With -jN jsrun would serve a jobserver of its own: that one is usable.
        return match config.jobs {
            Some(n) => {
                put!("jsrun would create a jobserver with {n} slots");
                Status::SUCCESS
            }
            None => {
                put!("jsrun would run one job at a time");
                Status::Code(1)
            }
        };
    };
    let style = match &auth {
        Auth::Fifo(_) => "fifo",
        Auth::Pipe { .. } => "pipe",
        Auth::Disabled => "disabled",
        Auth::Unknown(_) => "unknown",
    };
    put!("style: {style}");
    put!("auth: {auth}");
    put!("implicit slot: {}", if implicit { "yes" } else { "no" });
    match Client::open(&auth) {
        Ok(client) => {
            put!("usable: yes");
            match client.available() {
                Ok(n) => put!("free tokens: {n}"),
                Err(e) => put!("free tokens: unknown ({e})"),
            }
            Status::SUCCESS
        }
        Err(e) => {
            put!("usable: no ({e:#})");
            Status::Code(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_versions() {
        let cases = [
            (
                "GNU Make 4.3\nBuilt for x86_64-pc-linux-gnu\n",
                Some((4, 3)),
            ),
            ("GNU Make 4.4.1\n", Some((4, 4))),
            ("GNU Make 3.82\n", Some((3, 82))),
            ("GNU Make 4.4.90\n", Some((4, 4))),
            ("bmake 20240711\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(gnu_make_version(text), want, "{text:?}");
        }
    }
}
