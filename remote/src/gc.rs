//! Garbage collection on a shared remote, where a mistake loses a team's work (DVC's `gc
//! --cloud` deletes whatever the one workspace running it does not use): nothing younger than
//! the grace period goes, nothing a kept record names goes, records go before the objects they
//! name, and the caller previews before it deletes.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use drover_cache::{CacheKey, DirManifest, ObjectHash, OutputKind, StageRecord};
use futures::StreamExt;
use object_store::ObjectMeta;
use object_store::path::Path;

use crate::error::{RemoteError, Result};
use crate::remote::Remote;

/// What a collection would delete, and what it keeps.
#[derive(Debug, Default)]
pub struct GcPlan {
    pub delete_records: Vec<Path>,
    pub delete_objects: Vec<Path>,
    /// Bytes of the objects to delete.
    pub bytes: u64,
    pub kept_records: usize,
    pub kept_objects: usize,
}

impl Remote {
    /// Plans a collection: records older than `grace` whose key is not in `keep` go, then
    /// objects older than `grace` that no remaining record names (a `dir` output's files
    /// included). A record that cannot be read is kept, and so is everything it might name.
    pub async fn gc_plan(&self, keep: &BTreeSet<CacheKey>, grace: Duration, now: SystemTime) -> Result<GcPlan> {
        let old = |meta: &ObjectMeta| {
            let modified = SystemTime::from(meta.last_modified);
            now.duration_since(modified).is_ok_and(|age| age >= grace)
        };
        let mut plan = GcPlan::default();
        let mut named = BTreeSet::new();
        let mut unreadable = false;
        let records = self.list_all("records").await?;
        let mut kept = Vec::new();
        for meta in records {
            let key = meta.location.filename().and_then(|f| f.strip_suffix(".json")).and_then(CacheKey::parse);
            match key {
                Some(k) if old(&meta) && !keep.contains(&k) => plan.delete_records.push(meta.location),
                Some(k) => kept.push(k),
                // Not a record's name: not ours to judge; kept.
                None => {}
            }
        }
        plan.kept_records = kept.len();
        let reads = futures::stream::iter(kept).map(|k| async move { self.get_record(&k).await }).buffer_unordered(16);
        let read: Vec<Result<Option<StageRecord>>> = reads.collect().await;
        for record in read {
            match record {
                Ok(Some(record)) => {
                    for output in record.outputs.values() {
                        named.insert(output.hash.clone());
                        if output.kind == OutputKind::Dir {
                            match self.get_object(&output.hash).await {
                                Ok(Some(bytes)) => match manifest(&bytes) {
                                    Some(m) => named.extend(m.files.into_iter().map(|f| f.hash)),
                                    None => unreadable = true,
                                },
                                _ => unreadable = true,
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(_) => unreadable = true,
            }
        }
        for meta in self.list_all("objects").await? {
            let hash = meta.location.filename().and_then(ObjectHash::parse);
            match hash {
                Some(h) if old(&meta) && !named.contains(&h) && !unreadable => {
                    plan.bytes += meta.size;
                    plan.delete_objects.push(meta.location);
                }
                _ => plan.kept_objects += 1,
            }
        }
        // Leftovers of `Remote::connect`'s probe.
        for meta in self.list_all("probe").await? {
            if old(&meta) {
                plan.delete_objects.push(meta.location);
            }
        }
        Ok(plan)
    }

    /// Deletes what `plan` lists: records first, so that no record ever names a deleted object.
    pub async fn gc_apply(&self, plan: &GcPlan) -> Result<()> {
        self.writable()?;
        for batch in [&plan.delete_records, &plan.delete_objects] {
            let locations = futures::stream::iter(batch.iter().cloned().map(Ok)).boxed();
            let mut deleted = self.store().delete_stream(locations);
            while let Some(done) = deleted.next().await {
                match done {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(source) => {
                        return Err(RemoteError::Request {
                            action: "delete",
                            location: self.config().url.clone(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

fn manifest(bytes: &Bytes) -> Option<DirManifest> {
    serde_json::from_slice(bytes).ok()
}
