//! The `drover` binary: argument parsing, printing, exit codes and op registration. Nothing else.
//!
//! Exit codes: 0 success, 1 a stage failed, 2 bad input (pipeline file, params, arguments),
//! 3 the environment failed (disk, permissions, cannot spawn), 130 interrupted.

mod cli;
mod commands;
mod export;
mod report;
mod schema;

use std::process::ExitCode;

/// Plans allocate millions of small nodes; mimalloc frees them markedly faster than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

/// How a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: exit 2. Printed as a miette report (file, line, column, hint).
    User(miette::Report),
    /// One or more stages failed: exit 1 (already reported).
    Stages,
    /// Environment: exit 3.
    Environment(String),
    /// Interrupted by Ctrl-C: exit 130.
    Interrupted,
    /// This exit code, already reported (a Slurm job's: 143 after SIGTERM).
    Exit(u8),
}

impl<E: Into<miette::Report>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::User(e.into())
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::User(report)) => {
            eprintln!("{report:?}");
            ExitCode::from(2)
        }
        Err(Failure::Stages) => ExitCode::from(1),
        Err(Failure::Environment(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(3)
        }
        Err(Failure::Interrupted) => ExitCode::from(130),
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}
