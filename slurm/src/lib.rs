//! drover-slurm: runs a pipeline's stages as Slurm jobs, with the same YAML, keys and store.
//!
//! - [`settings`]: the `slurm:` section (top level and per stage), declared to the engine.
//! - [`ctl`]: `sbatch`, `squeue`, `scancel`, counted.
//! - [`rundir`]: a run's directory in the store, shared by the driver and the jobs.
//! - [`driver`]: `drover run --executor slurm`, an [`drover_engine::exec::Executor`].
//! - [`job`]: what a job runs on its node (`drover job`).
//! - [`submit`]: `drover submit`, the whole DAG at once with dependencies; nothing stays alive.
//!
//! Architecture invariant: the engine knows nothing of Slurm; this crate knows the engine's
//! executor seam and sections, never an op.

pub mod ctl;
pub mod driver;
pub mod job;
pub mod rundir;
pub mod settings;
pub mod submit;

pub use driver::{Launch, SlurmExecutor, Stats};
pub use settings::section;
