//! jsrun: run commands in parallel within one GNU make jobserver budget.
//!
//! One module per concern: [`cli`] (arguments), [`makeflags`] (MAKEFLAGS strings),
//! [`client`] and [`server`] (the jobserver), [`jobs`] (what to run), [`supervise`] (the
//! poll loop), [`output`] and [`report`] (what the user sees), [`status`] and [`sys`].

// Printing must never panic: see `say`.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod bridge;
pub mod cli;
pub mod client;
pub mod govern;
pub mod info;
pub mod jobs;
pub mod limits;
pub mod makeflags;
pub mod output;
pub mod pollset;
pub mod pool;
pub mod report;
pub mod run;
pub mod running;
pub mod say;
pub mod server;
pub mod slots;
pub mod spawn;
pub mod status;
pub mod steer;
pub mod supervise;
pub mod sys;
pub mod verdict;

pub use run::run;
