//! A jobserver server built on the `jobserver` crate, to check jsrun as a
//! client of another implementation.
//!
//! ```text
//! crate_server N -- COMMAND [ARG...]
//! ```
//! Creates a pipe jobserver with N-1 tokens (the command runs in the implicit
//! slot), hands it to COMMAND through MAKEFLAGS, MFLAGS and CARGO_MAKEFLAGS,
//! waits for it, then counts the tokens left without blocking and prints
//! `tokens-left K` to stderr. Exits with the command's status (128+S if it
//! was killed by signal S).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use common::{Args, fail};

fn main() {
    let mut args = Args::new();
    let slots: usize = args.number("N");
    if args.next_option().is_some() {
        fail("usage: crate_server N -- COMMAND [ARG...]");
    }
    let command = args.rest();
    let (program, arguments) = command
        .split_first()
        .unwrap_or_else(|| fail("usage: crate_server N -- COMMAND [ARG...]"));
    if slots == 0 {
        fail("N must be at least 1");
    }

    let client = jobserver::Client::new(slots - 1)
        .unwrap_or_else(|err| fail(&format!("cannot create a jobserver: {err}")));
    let mut cmd = Command::new(program);
    cmd.args(arguments);
    client.configure_make(&mut cmd);
    let status = cmd
        .status()
        .unwrap_or_else(|err| fail(&format!("cannot run {program}: {err}")));

    eprintln!("tokens-left {}", tokens_left(&client));
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 99,
    };
    std::process::exit(code);
}

/// Takes tokens with `try_acquire` until none is left. The crate refuses
/// that on the blocking pipe of `Client::new`; then the bytes waiting in the
/// pipe are the answer, since the command and its children are gone.
fn tokens_left(client: &jobserver::Client) -> usize {
    let mut taken = Vec::new();
    loop {
        match client.try_acquire() {
            Ok(Some(token)) => taken.push(token),
            Ok(None) => return taken.len(),
            Err(err) if err.kind() == std::io::ErrorKind::Unsupported && taken.is_empty() => {
                return client
                    .available()
                    .unwrap_or_else(|err| fail(&format!("available: {err}")));
            }
            Err(err) => fail(&format!("try_acquire: {err}")),
        }
    }
}
