//! From a parsed command line to an exit status: find or create the jobserver, run the
//! supervision loop, report, clean up.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::{self, Config, Input};
use crate::info;
use crate::jobs::feed::{Feed, Next};
use crate::jobs::source::{self, Source};
use crate::jobs::template::Template;
use crate::makeflags::MakeFlags;
use crate::output::Output;
use crate::pool::{Inherited, Pool};
use crate::report::{Report, Sinks};
use crate::say;
use crate::server::Mismatch;
use crate::status::{self, Status};
use crate::steer::Pausing;
use crate::supervise::{self, Outcome, Plan};
use crate::sys::{self, Signals};

pub fn run<I: IntoIterator<Item = OsString>>(args: I) -> Status {
    // First of all, so that no signal can come too early to be obeyed.
    if let Err(e) = sys::take_signals() {
        crate::say!("jsrun: error: cannot set up signal handling: {e}");
        return Status::USAGE;
    }
    match cli::parse(args) {
        // A closed stdout ends jsrun quietly, as it ends `seq` or `cat`.
        Ok(config) => execute(&config).unwrap_or_else(|err| match say::is_broken_pipe(&err) {
            true => Status::BROKEN_PIPE,
            false => status::report(&err),
        }),
        Err(status) => {
            sys::release_signals();
            status
        }
    }
}

fn execute(config: &Config) -> Result<Status> {
    // Inherited jobserver fds are checked before jsrun opens any file of its own, which
    // could otherwise take the number of a closed one.
    if config.info {
        sys::release_signals();
        return info::print(config);
    }
    if let Some(path) = &config.serve {
        return serve(config, path);
    }
    let makeflags = MakeFlags::parse(&std::env::var("MAKEFLAGS").unwrap_or_default());
    let dry_run = config.dry_run || makeflags.dry_run();
    let inherited = match (&config.jobserver, dry_run) {
        (None, false) => Inherited::open(),
        _ => None,
    };
    let (template, source, shell_lines) = jobs_of(config)?;
    let feed = Feed::new(template, source, shell_lines, config.not_found_hint.clone());
    if dry_run {
        sys::release_signals();
        return print_jobs(feed);
    }
    // The handled signals are blocked since the first instruction and read in the loop,
    // so an interrupt at any point still removes the fifo and gives every token back.
    let signals = Signals::new().context("cannot set up signal handling")?;
    let (pool, cap) = Pool::new(config, inherited, feed.template())?;
    let plan = Plan {
        feed,
        cap,
        weight: pool.weight(config.weight, config.jobs),
        keep_going: config.keep_going,
        limits: config.limits,
        verbose: config.verbose,
        serve: false,
        pausing: Pausing {
            on: !config.no_pause,
            below_clients: matches!(config.input, Input::None),
        },
    };
    let total = match &config.input {
        Input::None => Some(1),
        Input::Values(values) => Some(values.len()),
        _ => None,
    };
    let (outcome, _) = supervise_pool(config, pool, plan, &signals, total)?;
    Ok(outcome.status)
}

/// `--serve=PATH`: a system jobserver, governed, until SIGINT, SIGTERM or SIGHUP. Exit 0
/// with the pool whole, 1 (and a warning) when tokens are missing at the end.
fn serve(config: &Config, path: &Path) -> Result<Status> {
    let signals = Signals::new().context("cannot set up signal handling")?;
    let n = match config.jobs {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    };
    let pool = Pool::serve_at(config, path, n)?;
    let plan = Plan {
        feed: Feed::new(Template::parse(&[], false), Source::none(), false, None),
        cap: 0,
        keep_going: true,
        limits: config.limits,
        verbose: config.verbose,
        weight: 1,
        serve: true,
        pausing: Pausing::default(),
    };
    let (_, mismatch) = supervise_pool(config, pool, plan, &signals, None)?;
    Ok(match mismatch {
        Some(m) if m.missing() => Status::Code(1),
        _ => Status::SUCCESS,
    })
}

/// Runs the loop over `pool`, then counts an own pool's tokens (held-back ones as present)
/// and removes its fifo, and prints what `--stats` asks for. Returns what the loop came to
/// and what the count found.
fn supervise_pool(
    config: &Config,
    pool: Pool,
    plan: Plan,
    signals: &Signals,
    total: Option<usize>,
) -> Result<(Outcome, Option<Mismatch>)> {
    // For slot utilisation: -jN, else the outer make's -jN, else what jsrun reached.
    let slots = pool.slots(plan.cap);
    let serve = plan.serve;
    let mut report = Report::new(&Sinks {
        joblog: config.joblog.as_deref(),
        trace: config.trace.as_deref(),
        progress: config.progress && !serve,
        total,
    })?;
    let mut output = Output::new(config.output_sync, config.tag);
    let outcome = supervise::run(plan, &pool, signals, &mut report, &mut output);
    let governed = outcome.as_ref().ok().and_then(|o| o.governed.as_ref());
    let mismatch = pool.close(governed.map(|g| (g.held, g.expected)));
    if let Some(mismatch) = &mismatch {
        crate::say!("jsrun: warning: {mismatch}");
    }
    report.close();
    let outcome = outcome?;
    if config.stats {
        if !serve {
            let slots = outcome.governed.as_ref().map_or(slots, |g| Some(g.slots));
            report.print_stats(slots);
        }
        if let Some(governed) = &outcome.governed {
            report.print_pool(governed.slots, &governed.view, governed.paused);
        }
    }
    Ok((outcome, mismatch))
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
fn print_jobs(mut feed: Feed) -> Result<Status> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        match feed.next(1) {
            Next::Job(job) => writeln!(out, "{}", job.display())?,
            // Nothing runs, so a blocking read is fine here.
            Next::Wait => feed.fill()?,
            Next::Done => {
                out.flush()?;
                return Ok(Status::SUCCESS);
            }
        }
    }
}
