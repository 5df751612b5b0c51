//! drover-remote: the remote tier of drover's cache, in S3 or an S3-compatible server.
//!
//! The local store (`drover-cache`) stays what stages read and write; this tier holds the same
//! content-addressed objects and stage records for a whole team. The layout mirrors the local
//! store under the configured prefix: `objects/ab/<hash>` (named by blake3, so a repeated
//! upload is harmless and a download is verified against its name) and
//! `records/ab/<key>.json`, created with `If-None-Match: *` so that the first writer wins and
//! every loser adopts the winner's record, as [`drover_cache::Store::create_record`] does on
//! a shared filesystem. A server that ignores the condition would let two writers both "win":
//! [`Remote::connect`] probes for it and falls back to read-only mode.
//!
//! A crate of its own so that `drover-cache` (synchronous, used by every crate and by stages on
//! compute nodes) does not build an async HTTP stack; only the binary that talks to a remote
//! pulls this in.

mod config;
mod credentials;
mod error;
mod gc;
mod memo;
mod remote;
mod stream;
mod sync;

pub use config::RemoteConfig;
pub use credentials::Credentials;
pub use error::{RemoteError, Result};
pub use gc::GcPlan;
pub use memo::MemoSync;
pub use remote::{Mode, Remote};
pub use stream::STREAM_FROM;
pub use sync::{Pulled, Pushed};
