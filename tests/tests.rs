//! The integration tests, one binary: a module per concern, all on the harness in
//! `util` (sandboxes, deadlines, probes, test-owned pools, the real peers).
//!
//! Run one part with `cargo test --test tests MODULE::` (e.g. `storm::`), after
//! `cargo build --examples` (the tests run the helper programs of examples/).

mod util;

mod accounting;
mod accounting_peers;
mod bridge;
mod client;
mod crate_peer;
mod emerge;
mod faults;
mod fuzz;
mod govern;
mod make;
mod memcg;
mod observe;
mod output;
mod pause;
mod peers;
mod runner;
mod security;
mod serve;
mod server;
mod services;
mod setup;
mod signals;
mod status;
mod storm;
mod stress;
mod tokens;
mod usage;
mod weight;
