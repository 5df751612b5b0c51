//! The `drover` binary: argument parsing, printing, exit codes and op registration. Nothing else.
//!
//! Exit codes (the README's table; every command keeps to it): 0 success, 1 a stage failed,
//! 2 bad input (pipeline file, params, arguments), 3 the environment failed (disk, permissions,
//! cannot spawn), 4 a metric regressed past a threshold, 75 skipped (a scheduled run found the
//! previous one still going), 130 interrupted.

mod cli;
mod commands;
mod export;
mod html;
mod metrics;
mod nightly;
mod notify;
mod provenance;
mod remote;
mod report;
mod schedule;
mod schema;

use std::process::ExitCode;

/// Plans allocate millions of small nodes; mimalloc frees them markedly faster than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

/// Mesa's Vulkan device-select layer (an implicit layer, on wherever Mesa is installed) asks a
/// display server which GPU is the default each time Vulkan devices are listed. With none to ask
/// (a server, a container, a cron job: no `XDG_RUNTIME_DIR`, no `DISPLAY`), libwayland prints
/// "error: XDG_RUNTIME_DIR is invalid or not set in the environment." on every probe, which reads
/// as drover failing. The layer only reorders devices, drover ranks adapters itself, and without a
/// display the layer has nothing to go by: there it is switched off with its own documented
/// variable, unless the user set that variable.
fn quiet_vulkan_device_select() {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let runtime_dir = var("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir());
    let display = runtime_dir || var("DISPLAY").is_some() || var("WAYLAND_DISPLAY").is_some();
    if !display && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: the first thing `main` does: no other thread exists to read the environment.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// mimalloc's option 5, `purge_decommits` (in mimalloc.h of both v2 and v3; libmimalloc-sys
/// exports no name for it).
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

/// Memory the allocator has freed goes back to the OS lazily (`MADV_FREE`: the kernel takes the
/// pages when it needs them) instead of at once (`MADV_DONTNEED`, mimalloc's default). Training
/// and embedding free and allocate buffers of tens of megabytes every layer; given back at
/// once, each came back as fresh pages the kernel had to zero: a quarter of a `reward_train`
/// fine-tuning step went to it (perf: `clear_page_erms`), 59.3 s against 45.2 s for 128 pairs.
/// `MIMALLOC_PURGE_DECOMMITS=1` in the environment keeps mimalloc's default.
fn free_memory_lazily() {
    if std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_none() {
        // SAFETY: a plain option store, made before any other thread exists (mimalloc says
        // `mi_option_set` is not thread safe).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0) };
    }
}

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
    /// A metric crossed a threshold: exit 4 (already reported).
    Regression,
    /// A scheduled run found the previous one still going and ran nothing: exit 75 (sysexits'
    /// EX_TEMPFAIL: try again later), with the reason.
    Skipped(String),
}

/// The exit codes, in one place.
pub mod exit {
    pub const OK: u8 = 0;
    pub const STAGE_FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const ENVIRONMENT: u8 = 3;
    pub const REGRESSION: u8 = 4;
    pub const SKIPPED: u8 = 75;
    pub const INTERRUPTED: u8 = 130;
}

impl<E: Into<miette::Report>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::User(e.into())
    }
}

fn main() -> ExitCode {
    free_memory_lazily();
    quiet_vulkan_device_select();
    let cli = cli::Cli::parse();
    if cli.command.only_prints() {
        // `drover runs | head` closes the pipe early: a command that only prints ends there, as
        // Unix tools do, instead of panicking in `println!`. Commands that write files or talk to
        // servers keep Rust's ignored SIGPIPE (a write error they handle, not a silent death).
        // SAFETY: no other thread exists yet; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    ExitCode::from(match commands::dispatch(cli) {
        Ok(()) => exit::OK,
        Err(Failure::User(report)) => {
            eprintln!("{report:?}");
            exit::BAD_INPUT
        }
        Err(Failure::Stages) => exit::STAGE_FAILED,
        Err(Failure::Environment(msg)) => {
            eprintln!("error: {msg}");
            exit::ENVIRONMENT
        }
        Err(Failure::Regression) => exit::REGRESSION,
        Err(Failure::Skipped(why)) => {
            eprintln!("skipped: {why}");
            exit::SKIPPED
        }
        Err(Failure::Interrupted) => exit::INTERRUPTED,
        Err(Failure::Exit(code)) => code,
    })
}
