//! A second tier of the cache behind the local store (a team cache in object storage): looked
//! in before a stage is computed, and given every stage this run computed.
//!
//! The engine knows only this seam; the binary implements it over S3 (`drover-remote`), so the
//! engine builds no HTTP stack. A tier never decides whether a run succeeds: a lookup that fails
//! is a miss (the stage is computed here), and a push that fails is the tier's to report.

use std::collections::BTreeMap;

use drover_cache::{CacheKey, OutputRef, Store};

use crate::op::BoxFuture;

/// A cache tier the run consults (see the module docs).
pub trait Tier: Send + Sync + std::fmt::Debug {
    /// Where it is (`s3://bucket/prefix`), for notes and messages. Never holds credentials.
    fn location(&self) -> &str;

    /// Brings the key's record and the objects it names into `store` when the tier has them,
    /// verified, and returns the outputs as [`Store::cached_outputs`] would; `None` on a miss.
    /// An error is a miss to the run (the tier says it to the user once).
    fn fetch<'a>(&'a self, store: &'a Store, key: &'a CacheKey) -> BoxFuture<'a, Option<BTreeMap<String, OutputRef>>>;

    /// Sends a stage this run computed (its record is in `store`). Failures are the tier's to
    /// count and report; the stage stays done.
    fn push<'a>(&'a self, store: &'a Store, key: &'a CacheKey) -> BoxFuture<'a, ()>;
}

/// How many lookups a run makes at once.
pub const CONCURRENT_LOOKUPS: usize = 16;
