//! drover-cache: the content-addressed store beside a pipeline (`.drover/`).
//!
//! Objects (tables as Parquet, blobs, directory manifests) are named by their blake3 hash;
//! stage records map a cache key to the objects a stage produced; run records keep history.
//! Every write is atomic (temporary file, fsync, rename), so a crash at any moment leaves a
//! store whose records only point at complete objects. Objects, records and memo entries are
//! created first-writer-wins (`link()`), so a store on a filesystem shared by many hosts
//! (NFS, Lustre, GPFS) stays consistent without `flock`: leases only save duplicate work.
//!
//! Architecture invariant: this crate knows nothing of YAML, ops or plans. Keys and recipes are
//! opaque to it.

mod error;
mod fsutil;
mod gc;
pub mod hash;
pub mod host;
mod integrity;
mod lease;
mod memo;
mod object;
mod record;
mod runs;
mod statcache;
mod store;
pub mod walk;

pub use error::{CacheError, Result};
pub use gc::{GcReport, VerifyReport};
pub use integrity::{Corruption, Invalidated, Snapshot};
pub use lease::{Holder, Lease};
pub use memo::Memo;
pub use object::{DirEntry, DirManifest, ObjectHash};
pub use record::{CacheKey, OutputKind, OutputRef, Provenance, StageRecord};
pub use runs::{RunRecord, RunStage, StageOutcome, Trigger, utc};
pub use store::{Placed, ScheduleLease, Store, escape};
