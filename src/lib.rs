//! jsrun: run commands in parallel within one GNU make jobserver budget, and govern it.
//!
//! One module per concern; README.md's Design section has the map. The library is the
//! binary's: only [`run`] (and, for tests/fuzz.rs, the parsers in [`jobs`] and
//! [`makeflags`]) is public.

// Printing must never panic: see `say`.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod account;
mod bridge;
mod cli;
mod client;
mod fuse;
mod govern;
mod guard;
mod info;
// Public for tests/fuzz.rs, which drives the parsers directly; the rest is the binary's.
pub mod jobs;
mod launcher;
mod limits;
mod make_version;
pub mod makeflags;
mod output;
mod pollset;
mod pool;
mod report;
mod run;
mod running;
mod say;
mod server;
mod slots;
mod spawn;
mod status;
mod steer;
mod style;
mod supervise;
mod sys;
#[cfg(test)]
mod testing;
mod verdict;

pub use run::run;
pub use status::Status;
