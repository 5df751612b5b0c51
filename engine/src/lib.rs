//! drover-engine: pipeline specs (YAML with spans), typed plans, cache keys and the executor.
//!
//! Architecture invariant: the engine knows the [`op::Op`] trait and never a concrete op, and
//! depends on `drover-cache` but never on ops, burn or clap.

pub mod diag;
pub mod error;
pub mod exec;
pub mod interp;
pub mod key;
pub mod kit;
pub mod metrics;
pub mod op;
pub mod paths;
pub mod plan;
pub mod spec;
pub mod status;
pub mod yaml;

pub use drover_cache::Memo;
/// Every content hash and key (ops key their memo entries with [`hash::memo_key`]).
pub use drover_cache::hash;
pub use kit::{CheckErrors, OpKit, Work, run_blocking};
pub use op::{
    BoxFuture, CheckCx, CheckError, CheckLocation, CheckSubject, Checked, Column, Input, InputItem, NoProgress, Op,
    OpError, OpErrorKind, OpInfo, OpRegistry, OutputSlot, PortDecl, PortType, Ports, Progress, RunCx, SectionAt,
    SectionDecl, SectionProblem, StageCx, StageNotes, TableSchema, params_schema,
};
