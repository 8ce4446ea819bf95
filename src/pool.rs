//! Where slots come from: the one place that decides, from the command line and the
//! environment, which jobserver jsrun uses, and that owns the connection to it.
//!
//! | pool | when | implicit slot | tokens |
//! |---|---|---|---|
//! | [`Pool::Alone`] | no jobserver, no `-j`; or one named that cannot be used | yes | none |
//! | [`Pool::Inherited`] | MAKEFLAGS (CARGO_MAKEFLAGS, MFLAGS) names one | yes | its |
//! | [`Pool::Given`] | `--jobserver=AUTH` | no | its |
//! | [`Pool::Own`] | `-jN` and no jobserver around | yes | N-1 of jsrun's own |

use std::path::Path;

use anyhow::{Context, Result};

use crate::bridge::Bridge;
use crate::cli::Config;
use crate::client::{Client, OpenError};
use crate::fuse::TokenFile;
use crate::govern::Governor;
use crate::jobs::template::Template;
use crate::makeflags::{self, Auth, MakeFlags};
use crate::server::{self, Mismatch, Server, Style};
use crate::style;

/// The variables a jobserver is looked for in, in this order. MAKEFLAGS first, as make
/// reads it; CARGO_MAKEFLAGS is how cargo hands its jobserver to build scripts; the first
/// one that names a jobserver wins (unlike the jobserver crate, an empty or stale variable
/// does not hide a good one further down).
const JOBSERVER_VARS: [&str; 3] = ["MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS"];

/// A jobserver named in the environment.
pub struct Found {
    /// The variable that named it.
    pub var: &'static str,
    pub auth: Auth,
    /// The `-jN` beside it.
    pub advertised: Option<usize>,
}

/// The jobserver named in the environment, if any.
pub fn find_in_env() -> Option<Found> {
    JOBSERVER_VARS.iter().find_map(|&var| {
        let flags = MakeFlags::parse(&std::env::var(var).ok()?);
        let advertised = flags.jobs.flatten().map(|n| n as usize).filter(|&n| n > 0);
        Some(Found {
            var,
            auth: flags.auth?,
            advertised,
        })
    })
}

/// The environment's jobserver, opened. Called before jsrun opens any file of its own,
/// which could otherwise take the number of a closed inherited fd.
pub struct Inherited {
    found: Found,
    client: Result<Client, OpenError>,
}

impl Inherited {
    pub fn open() -> Option<Inherited> {
        let found = find_in_env()?;
        let client = Client::open(&found.auth);
        Some(Inherited { found, client })
    }
}

pub enum Pool {
    Alone,
    Inherited(Client),
    Given(Client),
    Own {
        server: Server,
        client: Client,
    },
    /// `--serve=PATH`: N tokens at PATH, no job of jsrun's own.
    Served {
        server: Server,
        client: Client,
    },
    /// A pipe pool from the environment, and a fifo bridged to it for the children.
    Bridged {
        outer: Client,
        bridge: Bridge,
    },
}

impl Pool {
    /// Decides the pool, and at most how many jobs jsrun runs at once in it.
    pub fn new(
        config: &Config,
        inherited: Option<Inherited>,
        template: &Template,
    ) -> Result<(Pool, usize)> {
        let cap = config.jobs.unwrap_or(usize::MAX);
        if let Some(auth) = &config.jobserver {
            let client =
                Client::open(auth).with_context(|| format!("cannot use --jobserver={auth}"))?;
            return Ok((Pool::Given(client), cap));
        }
        let Some(Inherited { found, client }) = inherited else {
            return match config.jobs {
                Some(n) => Ok((Pool::serve(config, n, template)?, n)),
                // Without -j and without a jobserver: one job at a time, like make.
                None => Ok((Pool::Alone, 1)),
            };
        };
        match client {
            // A character device may hand out tokens without end (fifo:/dev/zero): never
            // more jobs than the pool's advertised size. A pipe or fifo holds what its owner
            // put in it, and an owner may grow it while we run.
            Ok(client) => {
                let cap = match found.advertised {
                    Some(n) if client.is_device() => cap.min(n),
                    _ => cap,
                };
                let Some(why) = wants_bridge(config, template, &client) else {
                    return Ok((Pool::Inherited(client), cap));
                };
                let bridge = Bridge::new(&found.auth, found.advertised, config.jobserver_group)?;
                if config.verbose {
                    crate::say!(
                        "jsrun: bridging the {} jobserver {} to --jobserver-auth={} for the \
                         children ({why})",
                        if client.is_token_file() {
                            "token file"
                        } else {
                            "pipe"
                        },
                        found.auth,
                        bridge.inner_auth()
                    );
                }
                Ok((
                    Pool::Bridged {
                        outer: client,
                        bridge,
                    },
                    cap,
                ))
            }
            Err(e) => Pool::unusable(config, &found, &e, template),
        }
    }

    /// The jobserver `found` in the environment cannot be used: make's rule for a sub-make
    /// whose jobserver is gone, one job at a time. A pool of jsrun's own here would
    /// multiply the parent's -j. Only a stale leftover in CARGO_MAKEFLAGS or MFLAGS, which
    /// make does not read, gives way to -jN.
    fn unusable(
        config: &Config,
        found: &Found,
        e: &OpenError,
        template: &Template,
    ) -> Result<(Pool, usize)> {
        let serve = match config.jobs {
            Some(n) if found.var != "MAKEFLAGS" => Some(n),
            _ => None,
        };
        let fallback = match serve {
            Some(n) => format!("creating a jobserver with {n} slots (-j{n})"),
            None => "running one job at a time".into(),
        };
        let hint = match e.hint() {
            "" => String::new(),
            hint => format!(" {hint}"),
        };
        crate::say!(
            "jsrun: warning: jobserver unavailable: {e} ({} has --jobserver-auth={}); \
             {fallback}.{hint}",
            found.var,
            found.auth
        );
        match serve {
            Some(n) => Ok((Pool::serve(config, n, template)?, n)),
            None => Ok((Pool::Alone, 1)),
        }
    }

    /// `--serve=PATH` with `n` tokens.
    pub fn serve_at(config: &Config, path: &Path, n: usize) -> Result<Pool> {
        let group = config.jobserver_group;
        let (server, client) = match config.accounting {
            true => Server::account_at(path, n, group, config.per_process_limit)?,
            false => Server::serve_at(path, n, group)?,
        };
        if config.verbose {
            crate::say!(
                "jsrun: serving {n} tokens through --jobserver-auth=fifo:{}{}",
                path.display(),
                if config.accounting {
                    " (accounting)"
                } else {
                    ""
                }
            );
        }
        Ok(Pool::Served { server, client })
    }

    /// A pool of jsrun's own with `n` slots.
    fn serve(config: &Config, n: usize, template: &Template) -> Result<Pool> {
        let style = match config.jobserver_style {
            Some(style) => style,
            None => style::default(template, config.verbose),
        };
        let (server, client) = Server::create(style, n, config.jobserver_group)
            .context("cannot create a jobserver")?;
        if config.verbose {
            crate::say!(
                "jsrun: serving {n} slot{} through --jobserver-auth={}",
                if n == 1 { "" } else { "s" },
                server.auth()
            );
        }
        Ok(Pool::Own { server, client })
    }

    /// The governor of a pool of jsrun's own (its first job runs in the implicit slot).
    pub fn governor(&self) -> Option<Governor> {
        match self {
            Pool::Own { server, client } => Some(Governor::new(server.slots(), 1, client)),
            // An accounting pool: its own ledger reclaims, and only jsrun touches its pipe,
            // so the loop needs no watch on it.
            Pool::Served { server, client } if server.token_file().is_some() => {
                Some(Governor::new(server.slots(), 0, client).unwatched())
            }
            Pool::Served { server, client } => {
                let governor = Governor::new(server.slots(), 0, client);
                // Reclaiming needs to see every holder: root sees all; a user sees only
                // its own processes, enough for a fifo no group shares.
                let sees_all = nix::unistd::geteuid().is_root();
                let private = matches!(
                    server.auth(),
                    Auth::Fifo(path) if std::fs::metadata(path).is_ok_and(|m| {
                        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 == 0
                    })
                );
                Some(match sees_all || private {
                    true => governor.reclaiming(),
                    false => governor,
                })
            }
            _ => None,
        }
    }

    /// The token file of an accounting pool (`--serve --accounting`).
    pub fn token_file(&self) -> Option<&TokenFile> {
        match self {
            Pool::Served { server, .. } => server.token_file(),
            _ => None,
        }
    }

    /// The bridge to a pipe pool, if jsrun bridges one.
    pub fn bridge(&self) -> Option<&Bridge> {
        match self {
            Pool::Bridged { bridge, .. } => Some(bridge),
            _ => None,
        }
    }

    /// The connection jobs take their tokens from.
    pub fn client(&self) -> Option<&Client> {
        match self {
            Pool::Alone => None,
            Pool::Inherited(client)
            | Pool::Given(client)
            | Pool::Own { client, .. }
            | Pool::Served { client, .. }
            | Pool::Bridged { outer: client, .. } => Some(client),
        }
    }

    /// How many jobs run without a token: jsrun's implicit slot, none under `--jobserver`.
    pub fn implicit(&self) -> usize {
        match self {
            Pool::Given(_) | Pool::Served { .. } => 0,
            _ => 1,
        }
    }

    /// The variables jsrun's children get instead of the ones jsrun has, so that they
    /// use this pool.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Pool::Alone | Pool::Inherited(_) | Pool::Served { .. } => Vec::new(),
            Pool::Own { server, .. } => server::export_env(&server.makeflags_words()),
            Pool::Bridged { bridge, .. } => server::export_env(&bridge.makeflags_words()),
            // No -j word: "-j" alone would read as "unlimited" to a tool that sizes itself
            // from it; make, ninja and Portage use the jobserver without one.
            Pool::Given(client) => server::export_env(&auth_words(client.auth())),
        }
    }

    /// The whole pool's size, when jsrun knows it: its own N, or the `-jN` advertised
    /// beside the jobserver in the environment.
    pub fn size(&self) -> Option<usize> {
        match self {
            Pool::Own { server, .. } | Pool::Served { server, .. } => Some(server.slots()),
            Pool::Inherited(_) | Pool::Bridged { .. } => {
                find_in_env().and_then(|found| found.advertised)
            }
            Pool::Alone => Some(1),
            Pool::Given(_) => None,
        }
    }

    /// The slots each job takes under `--weight=K`: K, or the pool's size (said once) when
    /// K is more, since a job that needs more slots than the pool has would wait for ever.
    pub fn weight(&self, k: usize, jobs: Option<usize>) -> usize {
        match self.size().or(jobs) {
            Some(n) if k > n => {
                crate::say!(
                    "jsrun: warning: --weight={k} is more than the pool's {n} slots; each job \
                     takes {n}"
                );
                n
            }
            _ => k,
        }
    }

    /// The pool's size when jsrun knows it: its own, or the `-jN` of the outer make.
    pub fn slots(&self, cap: usize) -> Option<usize> {
        match (cap, self) {
            (usize::MAX, Pool::Inherited(_) | Pool::Bridged { .. }) => {
                find_in_env().and_then(|found| found.advertised)
            }
            (usize::MAX, _) => None,
            (n, _) => Some(n),
        }
    }

    /// The end of the run: an own pool counts its tokens (a warning when any are
    /// missing or extra) and removes its fifo. `governed`: the tokens its governor held
    /// back (present) and how many the pool should hold after resizing.
    pub fn close(self, governed: Option<(usize, usize)>) -> Option<Mismatch> {
        match self {
            Pool::Own { server, client } => {
                let (held, expected) = governed.unwrap_or((0, server.slots() - 1));
                server.count_tokens(&client, held, expected)
            }
            Pool::Served { server, client } => {
                let (held, expected) = governed.unwrap_or((0, server.slots()));
                server.count_tokens(&client, held, expected)
            }
            _ => None,
        }
    }
}

/// The MAKEFLAGS words naming `auth`: pipes under both spellings, for make < 4.2.
fn auth_words(auth: &Auth) -> String {
    match auth {
        Auth::Pipe { .. } => format!("--jobserver-fds={auth} --jobserver-auth={auth}"),
        _ => format!("--jobserver-auth={}", makeflags::escape(&auth.to_string())),
    }
}

/// Why the children get a bridge under a pipe pool, if they do: `--jobserver-style=fifo`,
/// or by default a command that runs a program speaking only fifo.
fn wants_bridge(config: &Config, template: &Template, client: &Client) -> Option<String> {
    // A pipe, or the token file of an accounting pool: upstream ninja opens `fifo:PATH`
    // and refuses anything that is not a fifo ("Not a fifo path").
    if !matches!(client.auth(), Auth::Pipe { .. }) && !client.is_token_file() {
        return None;
    }
    match config.jobserver_style {
        Some(Style::Fifo) => Some("--jobserver-style=fifo".into()),
        Some(Style::Pipe) => None,
        None => style::fifo_only(template).map(|word| format!("{word} speaks only fifo")),
    }
}
