//! `--info`: the jobserver jsrun would use here, for `+jsrun --info` in a recipe.

use std::fmt::Write as _;

use anyhow::Result;

use crate::cli::Config;
use crate::client::Client;
use crate::makeflags::{Auth, MakeFlags};
use crate::pool;
use crate::say;
use crate::status::Status;
use crate::sys;

/// How many tokens `--info` takes from a character device with no -jN beside it before it
/// calls the device unbounded: more than any real pool lends at once.
const UNBOUNDED_PROBE: usize = 4096;

/// `--info`: the jobserver jsrun would use. Exit 0 when usable, 1 when not.
pub fn print(config: &Config) -> Result<Status> {
    let mut text = String::new();
    let status = describe_jobserver(config, &mut text);
    say::stdout(&text)?;
    Ok(status)
}

/// A line of `--info` into a String (writing into a String cannot fail).
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {{ let _ = writeln!($out, $($arg)*); }};
}

/// The lines of `--info`, into `out`; the status says whether the jobserver is usable.
fn describe_jobserver(config: &Config, out: &mut String) -> Status {
    let (source, auth, implicit, advertised) = match (&config.jobserver, pool::find_in_env()) {
        (Some(auth), _) => ("--jobserver", Some(auth.clone()), false, None),
        (None, Some(found)) => (found.var, Some(found.auth), true, found.advertised),
        (None, None) => ("none", None, false, None),
    };
    put!(out, "source: {source}");
    let jobs = MakeFlags::parse(&std::env::var("MAKEFLAGS").unwrap_or_default()).jobs;
    match jobs {
        Some(Some(n)) => put!(out, "make -j: {n}"),
        Some(None) => put!(out, "make -j: unlimited"),
        None => put!(out, "make -j: none"),
    }
    if let Some(n) = config.jobs {
        put!(out, "jsrun -j: {n}");
    }
    let Some(auth) = auth else {
        // With -jN jsrun would serve a jobserver of its own: that one is usable.
        return if let Some(n) = config.jobs {
            put!(out, "jsrun would create a jobserver with {n} slots");
            Status::SUCCESS
        } else {
            put!(out, "jsrun would run one job at a time");
            Status::Code(1)
        };
    };
    let style = match &auth {
        Auth::Fifo(_) => "fifo",
        Auth::Pipe { .. } => "pipe",
        Auth::Disabled => "disabled",
        Auth::Unknown(_) => "unknown",
    };
    put!(out, "style: {style}");
    put!(out, "auth: {auth}");
    put!(
        out,
        "implicit slot: {}",
        if implicit { "yes" } else { "no" }
    );
    match Client::open(&auth) {
        Ok(client) => {
            put!(out, "usable: yes");
            describe_usable(&client, advertised, out);
            Status::SUCCESS
        }
        Err(e) => {
            put!(out, "usable: no ({e})");
            if !e.hint().is_empty() {
                put!(out, "hint: {}", e.hint());
            }
            Status::Code(1)
        }
    }
}

/// The lines on a usable jobserver: its free tokens, a device that never runs out, and
/// who else has it open (the pool's make, its clients, a stuck straggler).
fn describe_usable(client: &Client, advertised: Option<usize>, out: &mut String) {
    let account = client.account();
    match (&account, client.available()) {
        // A token file has no FIONREAD: its server counts.
        (Some(Ok(_)), _) => {}
        (Some(Err(e)), _) => put!(out, "free tokens: unknown (no account from the pool: {e})"),
        (None, Ok(n)) => put!(out, "free tokens: {n}"),
        (None, Err(e)) => put!(out, "free tokens: unknown ({e})"),
    }
    if let Ok(true) = client.looks_unbounded(advertised.unwrap_or(UNBOUNDED_PROBE)) {
        let bound = match advertised {
            Some(n) => format!("jsrun runs at most {n} jobs (make -j{n})"),
            None => "nothing bounds jsrun's jobs but -jN".into(),
        };
        put!(
            out,
            "warning: {} looks unbounded: it never runs out of tokens; {bound}",
            client.auth()
        );
    }
    let me = std::process::id();
    let open_by = nix::sys::stat::fstat(client.fd())
        .map(|stat| sys::holders((stat.st_dev, stat.st_ino)))
        .unwrap_or_default();
    match account {
        Some(Ok(account)) => {
            let counted = describe_account(&account, out);
            for holder in open_by.iter().filter(|h| h.pid != me) {
                if !counted.contains(&holder.pid) {
                    put!(out, "holder: {} {} (0 tokens)", holder.pid, holder.command);
                }
            }
        }
        _ => {
            for holder in open_by.iter().filter(|h| h.pid != me) {
                put!(out, "holder: {} {}", holder.pid, holder.command);
            }
        }
    }
}

/// The lines on an accounting pool from its own account: free tokens (instead of the
/// FIONREAD a token file cannot answer) and every process holding tokens, with how many.
/// Returns the pids it named.
fn describe_account(account: &str, out: &mut String) -> Vec<u32> {
    let mut named = Vec::new();
    for line in account.lines() {
        if let Some(free) = line.strip_prefix("free ") {
            put!(out, "free tokens: {free}");
            put!(out, "accounting: yes");
        } else if let Some(waiting) = line.strip_prefix("waiting ") {
            put!(out, "waiting for a token: {waiting}");
        } else if let Some(rest) = line.strip_prefix("holder ") {
            let mut words = rest.splitn(3, ' ');
            let (Some(pid), Some(count), command) = (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let (Ok(pid), Ok(count)) = (pid.parse::<u32>(), count.parse::<usize>()) else {
                continue;
            };
            named.push(pid);
            put!(
                out,
                "holder: {pid} {} ({})",
                command.unwrap_or_default(),
                crate::account::tokens(count)
            );
        }
    }
    named
}
