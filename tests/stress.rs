//! Stress: dozens of jsrun clients, a make 4.4.1 and jobserver-crate clients
//! on ONE jobserver of 4 slots (3 tokens), all at once. The global number of
//! jobs running never exceeds 4, every job runs, and the pool holds exactly
//! its 3 tokens at the end. Once with a fifo, once with an inherited pipe.
//!
//! How the budget is measured. The test plays the parent make of a `-j4`
//! build: 3 tokens in the pool plus its own implicit slot, which it hands to
//! exactly one child, client 0 (started with MAKEFLAGS, so it runs its first
//! job in that implicit slot and takes a token for each further one). Every
//! other participant is started through `jsrun --jobserver=AUTH`, which has
//! no implicit slot: it takes a token before its first job. For make and
//! the crate clients that token is their implicit slot (make and
//! jobserver-rs run their first job without reading a token), so each of
//! their further jobs needs a token too. Hence at any instant every running
//! job stands on its own slot: 1 implicit + 3 tokens, and the global peak,
//! computed from the jobs' own start/end timestamps in one shared log, must
//! be <= 4. Fifty clients that each had an implicit slot of their own could
//! legitimately run 50 jobs at once and would prove nothing.
//!
//! Size: 50 jsrun clients x 40 jobs, make with 100 recipes and 6 crate
//! clients x 25 jobs: 2,250 jobs through 3 tokens, each job a probe (or a
//! crate client's thread) that sleeps 1-5 ms.

use std::fmt::Write as _;
use std::os::fd::RawFd;

use crate::util::{
    FifoJobserver, PipeJobserver, Running, Sandbox, example, make44, path_str, shell_words, sorted,
    values,
};

const CLIENTS: usize = 50;
const JOBS_PER_CLIENT: usize = 40;
const MAKE_RECIPES: usize = 100;
const CRATE_HELPERS: usize = 4;
const BLOCKING_CRATE_CLIENTS: usize = 2;
const JOBS_PER_CRATE_CLIENT: usize = 25;
/// The budget: the test's implicit slot plus 3 tokens.
const SLOTS: usize = 4;
const TOKENS: &[u8] = b"+++";

/// How the participants reach the pool.
#[derive(Clone, Copy)]
enum Pool<'a> {
    Fifo(&'a FifoJobserver),
    Pipe(&'a PipeJobserver),
}

impl Pool<'_> {
    /// `--jobserver=AUTH` for this pool.
    fn option(&self) -> String {
        match self {
            Pool::Fifo(pool) => format!("--jobserver=fifo:{}", pool.path().display()),
            Pool::Pipe(pool) => {
                let [r, w] = pool.fds();
                format!("--jobserver={r},{w}")
            }
        }
    }

    /// A jsrun started with no implicit slot of its own.
    fn jsrun(&self, sandbox: &Sandbox) -> crate::util::Cmd {
        let cmd = sandbox.jsrun();
        let cmd = match self {
            Pool::Fifo(_) => cmd,
            Pool::Pipe(pool) => cmd.inherit_fds(&pool.fds()),
        };
        cmd.arg(self.option())
    }

    /// A jsrun started in the test's implicit slot, through MAKEFLAGS.
    fn jsrun_in_implicit_slot(&self, sandbox: &Sandbox) -> crate::util::Cmd {
        match self {
            Pool::Fifo(pool) => sandbox.jsrun().fifo_jobserver(pool),
            Pool::Pipe(pool) => sandbox.jsrun().pipe_jobserver(pool),
        }
    }

    fn drain(&self) -> Vec<u8> {
        match self {
            Pool::Fifo(pool) => pool.drain(),
            Pool::Pipe(pool) => pool.drain(),
        }
    }

    fn fds(&self) -> Option<[RawFd; 2]> {
        match self {
            Pool::Fifo(_) => None,
            Pool::Pipe(pool) => Some(pool.fds()),
        }
    }
}

fn stress(pool: Pool<'_>) {
    let sandbox = Sandbox::new();
    let log = sandbox.log();
    let mut expected: Vec<String> = Vec::new();
    let mut running: Vec<(String, Running)> = Vec::new();

    // make 4.4.1 with many short recipes, started first so that it competes
    // with the jsrun clients for the whole run.
    let mut makefile = String::from(".PHONY: all\nall:");
    for n in 1..=MAKE_RECIPES {
        write!(makefile, " m{n}").unwrap();
    }
    makefile.push('\n');
    for n in 1..=MAKE_RECIPES {
        let probe = sandbox
            .probe()
            .id(format!("m{n}"))
            .sleep_ms(1 + n as u64 % 5);
        writeln!(makefile, ".PHONY: m{n}\nm{n}:\n\t@{}", probe.shell()).unwrap();
        expected.push(format!("m{n}"));
    }
    sandbox.write("Makefile", makefile);
    let make = pool
        .jsrun(&sandbox)
        .arg("--")
        .arg(make44())
        .arg("-s")
        .env("TMPDIR", sandbox.path())
        .spawn();
    running.push(("make".into(), make));

    // jobserver-crate clients: crate_helper asks for tokens from a helper
    // thread, as cargo does; crate_client blocks in acquire() even when its
    // implicit slot is free again. Three of the latter could sit on all three
    // tokens at once, each waiting for a fourth (a deadlock of that simple
    // client, not of the pool), so there are only two of them.
    let crate_clients = (0..CRATE_HELPERS)
        .map(|k| ("crate_helper", format!("h{k}-"), JOBS_PER_CRATE_CLIENT))
        .chain(
            (0..BLOCKING_CRATE_CLIENTS)
                .map(|k| ("crate_client", format!("c{k}-"), JOBS_PER_CRATE_CLIENT)),
        );
    for (k, (program, prefix, jobs)) in crate_clients.enumerate() {
        let client = pool
            .jsrun(&sandbox)
            .arg("--")
            .arg(example(program))
            .args(["--jobs", &jobs.to_string()])
            .args(["--log", &path_str(log.path())])
            .args(["--id-prefix", &prefix])
            .args(["--sleep-ms", &(1 + k % 5).to_string()])
            .args(["--out", &sandbox.str(format!("{prefix}out"))])
            .spawn();
        running.push((format!("{program} {prefix}"), client));
        for n in 1..=jobs {
            expected.push(format!("{prefix}{n}"));
        }
    }

    // The jsrun clients: client 0 in the test's implicit slot, the others
    // with --jobserver.
    for i in 0..CLIENTS {
        let probe = sandbox
            .probe()
            .id(format!("j{i}-{{}}"))
            .sleep_ms(1 + (i % 5) as u64);
        let cmd = match i {
            0 => pool.jsrun_in_implicit_slot(&sandbox),
            _ => pool.jsrun(&sandbox),
        };
        let client = cmd
            .args(probe.words())
            .arg(":::")
            .args(values(JOBS_PER_CLIENT))
            .spawn();
        running.push((format!("jsrun client {i}"), client));
        for n in 1..=JOBS_PER_CLIENT {
            expected.push(format!("j{i}-{n}"));
        }
    }

    for (name, client) in running {
        let output = client.wait();
        output.success();
        assert!(
            !output.stderr.contains("jsrun:"),
            "{name} complained\n{}",
            output.report()
        );
    }

    expected.sort();
    let started = log.started();
    let finished = log.finished();
    assert_eq!(
        started.len(),
        expected.len(),
        "jobs started (pool {:?})",
        pool.fds()
    );
    assert_eq!(started, expected, "every job starts once");
    assert_eq!(finished, expected, "every job ends once");
    let peak = log.peak();
    eprintln!(
        "stress: {} jobs, global peak {peak} of {SLOTS} slots",
        expected.len()
    );
    assert!(
        peak <= SLOTS,
        "{peak} jobs ran at once on a budget of {SLOTS}\n{}",
        busiest_instant(&log)
    );
    // Not serialised either: the tokens were in use.
    assert!(peak >= 2, "the pool was never used: peak {peak}");
    assert_eq!(
        sorted(&pool.drain()),
        TOKENS,
        "the pool must hold exactly its tokens at the end"
    );
}

/// The jobs running at the busiest instant, for a failure message.
fn busiest_instant(log: &crate::util::Log) -> String {
    let events = log.events();
    let mut edges: Vec<(u128, bool, &str)> = events
        .iter()
        .map(|e| (e.nanos, e.start, e.id.as_str()))
        .collect();
    // Ends before starts at the same instant, as Log::peak counts them.
    edges.sort_by_key(|(nanos, start, _)| (*nanos, *start));
    let mut running: Vec<&str> = Vec::new();
    let mut busiest: Vec<&str> = Vec::new();
    for (_, start, id) in edges {
        if start {
            running.push(id);
            if running.len() > busiest.len() {
                busiest = running.clone();
            }
        } else {
            running.retain(|r| *r != id);
        }
    }
    format!("running together: {}", shell_words(&busiest))
}

#[test]
fn fifo_pool_shared_by_50_jsrun_clients_make_and_crate_clients() {
    let sandbox = Sandbox::new();
    let pool = FifoJobserver::new(&sandbox, TOKENS);
    stress(Pool::Fifo(&pool));
}

#[test]
fn pipe_pool_shared_by_50_jsrun_clients_make_and_crate_clients() {
    let pool = PipeJobserver::new(TOKENS);
    stress(Pool::Pipe(&pool));
}
