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
use crate::jobs::{self, template::Template};
use crate::makeflags::{self, Auth, MakeFlags};
use crate::server::{self, Mismatch, Server, Style};

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
                if !wants_bridge(config, template, &found.auth) {
                    return Ok((Pool::Inherited(client), cap));
                }
                let bridge = Bridge::new(&found.auth, found.advertised, config.jobserver_group)?;
                if config.verbose {
                    crate::say!(
                        "jsrun: bridging the pipe jobserver {} to --jobserver-auth={} for the \
                         children, which speak only fifo",
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
            None => default_style(template, config.verbose),
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

/// Programs that speak only the fifo style (upstream ninja, samurai, Portage).
const FIFO_ONLY: [&str; 3] = ["ninja", "samu", "emerge"];

/// Whether the command speaks only the fifo style.
fn fifo_only(template: &Template) -> bool {
    let name = template
        .constant_program()
        .map(Path::new)
        .and_then(Path::file_name)
        .unwrap_or_default();
    FIFO_ONLY.iter().any(|&n| name == n)
}

/// A bridge for children under a pipe pool: asked for with `--jobserver-style=fifo`, or
/// by default for a command that speaks only fifo.
fn wants_bridge(config: &Config, template: &Template, auth: &Auth) -> bool {
    matches!(auth, Auth::Pipe { .. })
        && match config.jobserver_style {
            Some(style) => style == Style::Fifo,
            None => fifo_only(template),
        }
}

/// The style of a pool jsrun creates, when `--jobserver-style` does not say: fifo, unless
/// a GNU make older than 4.4 may read it, which dies on a fifo ("invalid --jobserver-auth
/// string"). That make is the command itself when it is `make` or `gmake`, else the `make`
/// on PATH, which any command may run (`nice make`, `sh -c make`, a build script). Commands
/// that speak only fifo keep it. One `--version` probe at most.
fn default_style(template: &Template, verbose: bool) -> Style {
    if fifo_only(template) {
        return Style::Fifo;
    }
    let program = template.constant_program().map(Path::new);
    let name = program.and_then(Path::file_name).unwrap_or_default();
    let (make, why) = match program {
        Some(program) if name == "make" || name == "gmake" => (program.as_os_str(), "the command"),
        _ => (
            "make".as_ref(),
            "the make on PATH, which the command may run",
        ),
    };
    let Ok(path) = jobs::resolve(make) else {
        return Style::Fifo;
    };
    match make_version(&path) {
        Some(v) if v < (4, 4) => {
            if verbose {
                crate::say!(
                    "jsrun: {} ({why}) is GNU make {}.{}, which only knows pipe jobservers: \
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

/// Asks `make --version`.
fn make_version(path: &Path) -> Option<(u32, u32)> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .env_remove("MAKEFLAGS")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    gnu_make_version(&String::from_utf8_lossy(&out.stdout))
}

/// `(major, minor)` from the first line of `make --version`: "GNU Make 4.3".
fn gnu_make_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.lines().next()?.strip_prefix("GNU Make ")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
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
