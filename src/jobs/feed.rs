//! The job feed: values from a [`Source`] become numbered, rendered jobs whose program is
//! found before any token is taken for them. The supervision loop and the dry run both
//! read jobs from it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use super::source::{self, Source};
use super::template::{Fill, Template};
use super::{Job, resolve};
use crate::status::Status;

pub struct Feed {
    template: Template,
    source: Source,
    /// Command lines run through `/bin/sh -c`: show the line itself.
    shell_lines: bool,
    seq: u64,
    done: bool,
    /// The resolution of a program name no job can change, done once.
    resolved: Option<(OsString, Result<PathBuf, Status>)>,
    /// Said after "command not found: WORD" for this word (see `cli::Config`).
    not_found_hint: Option<(OsString, String)>,
}

pub enum Next {
    Job(Job),
    /// No full line yet: poll [`Feed::fd`], then call [`Feed::fill`].
    Wait,
    Done,
}

impl Feed {
    pub fn new(
        template: Template,
        source: Source,
        shell_lines: bool,
        not_found_hint: Option<(OsString, String)>,
    ) -> Feed {
        Feed {
            template,
            source,
            shell_lines,
            seq: 0,
            done: false,
            resolved: None,
            not_found_hint,
        }
    }

    /// The next job, numbered and rendered for slot number `slot` (`{%}`).
    pub fn next(&mut self, slot: usize) -> Next {
        if self.done {
            return Next::Done;
        }
        match self.source.next_job() {
            source::Next::Job(value) => {
                self.seq += 1;
                let fill = Fill {
                    value: value.as_deref(),
                    seq: self.seq,
                    slot,
                };
                let argv = self.template.render(&fill);
                Next::Job(Job::new(self.seq, slot, argv, value, self.shell_lines))
            }
            source::Next::Wait => Next::Wait,
            source::Next::Done => {
                self.done = true;
                Next::Done
            }
        }
    }

    /// The command template, for what the pool's style depends on.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// Whether no job will come any more.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Gives up on the rest of the jobs (after a failure, an interrupt).
    pub fn close(&mut self) {
        self.done = true;
    }

    /// Renders `job` again for slot number `slot`, when the number changed while it waited
    /// for a token and the command shows it.
    pub fn renumber(&self, job: &mut Job, slot: usize) {
        if job.slot == slot {
            return;
        }
        job.slot = slot;
        if self.template.uses_slot() {
            job.argv = self.template.render(&Fill {
                value: job.value.as_deref(),
                seq: job.seq,
                slot,
            });
        }
    }

    /// Finds the job's program before any token is taken for it: 127 not found, 126 not
    /// executable, said on stderr.
    pub fn resolve(&mut self, job: &mut Job) -> Result<(), Status> {
        let name = job.argv[0].as_os_str();
        let result = match &self.resolved {
            // Said once already.
            Some((cached, result)) if cached == name => result.clone(),
            _ => {
                let result = resolve(name);
                if self.template.constant_program().is_some() {
                    self.resolved = Some((name.to_owned(), result.clone()));
                }
                if let Err(status) = result {
                    self.say_unresolved(name, status);
                }
                result
            }
        };
        job.program = result?;
        Ok(())
    }

    fn say_unresolved(&self, name: &OsStr, status: Status) {
        let (what, hint) = if status == Status::NOT_FOUND {
            // `-O line` runs `line`, as in make: suggest `-Oline`.
            let hint = match &self.not_found_hint {
                Some((word, hint)) if word == name => hint.as_str(),
                _ => "",
            };
            ("command not found", hint)
        } else {
            ("command not executable", "")
        };
        crate::say!("jsrun: {what}: {}{hint}", name.to_string_lossy());
    }

    /// The descriptor to wait on after [`Next::Wait`].
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.source.fd()
    }

    /// Reads what is available after the descriptor polled readable.
    pub fn fill(&mut self) -> io::Result<()> {
        self.source.fill()
    }

    /// Whether the jobs must not inherit stdin, because the values come from it.
    pub fn reads_stdin(&self) -> bool {
        self.source.reads_stdin()
    }
}
