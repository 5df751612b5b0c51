//! Moving one stage's results between the local store and the remote: what `drover push`,
//! `drover pull` and a run's remote lookups are made of.

use std::collections::BTreeSet;

use bytes::Bytes;
use drover_cache::{CacheKey, ObjectHash, OutputKind, Placed, StageRecord, Store};

use crate::error::{RemoteError, Result};
use crate::remote::Remote;

/// What [`Remote::push_key`] did.
#[derive(Debug, PartialEq)]
pub enum Pushed {
    /// The local store has no complete record of the key: nothing to push.
    NotLocal,
    /// The remote had the key's record already: nothing sent.
    AlreadyThere,
    /// Objects sent (those the remote lacked), then the record created.
    Sent { objects: usize, bytes: u64 },
    /// Objects sent, but another machine created the key's record meanwhile: theirs stands.
    Adopted { objects: usize, bytes: u64, winner: StageRecord },
}

/// What [`Remote::pull_key`] did when the remote had the key.
#[derive(Debug, PartialEq)]
pub struct Pulled {
    /// Objects downloaded (those the local store lacked), and their bytes.
    pub objects: usize,
    pub bytes: u64,
    /// How the record went into the local store: `Adopted` when it had one of its own.
    pub placed: Placed,
}

/// Every object a record names: its outputs, and for a `dir` output the manifest's files.
fn objects_of(store: &Store, record: &StageRecord) -> Result<BTreeSet<ObjectHash>> {
    let mut all = BTreeSet::new();
    for output in record.outputs.values() {
        all.insert(output.hash.clone());
        if output.kind == OutputKind::Dir {
            all.extend(store.read_manifest(&output.hash)?.files.into_iter().map(|f| f.hash));
        }
    }
    Ok(all)
}

impl Remote {
    /// Pushes a key's record and the objects it names: objects first (those the remote lacks,
    /// one HEAD each), then the record, created first-writer-wins; so a reader never sees a
    /// record whose objects are not all there.
    pub async fn push_key(&self, store: &Store, key: &CacheKey) -> Result<Pushed> {
        self.push_key_with(store, key, true).await
    }

    /// [`Remote::push_key`] for a stage just computed, which the remote most likely lacks: no
    /// GET of its record first (two requests for a stage of one small output, not three). If
    /// the remote had it after all, the record's create says so and the answer is the same.
    pub async fn push_new_key(&self, store: &Store, key: &CacheKey) -> Result<Pushed> {
        self.push_key_with(store, key, false).await
    }

    async fn push_key_with(&self, store: &Store, key: &CacheKey, ask_first: bool) -> Result<Pushed> {
        let Some(record) = store.get_record(key).filter(|r| store.cached_outputs(&r.key).is_some()) else {
            return Ok(Pushed::NotLocal);
        };
        if ask_first && self.get_record(key).await?.is_some() {
            return Ok(Pushed::AlreadyThere);
        }
        let (mut objects, mut bytes) = (0, 0);
        for hash in objects_of(store, &record)? {
            let path = store.object_path(&hash);
            let size = std::fs::metadata(&path)
                .map_err(|e| drover_cache::CacheError::Io { action: "stat", path: path.clone(), source: e })?
                .len();
            // A large object is asked about first (a HEAD saves a multipart upload); a small
            // one is simply created, which costs one request whether or not it is there.
            let sent = if size >= crate::STREAM_FROM {
                !self.has_object(&hash).await? && {
                    self.put_object_streamed(&hash, &path).await?;
                    true
                }
            } else {
                let data = std::fs::read(&path).map_err(|e| drover_cache::CacheError::Io {
                    action: "read",
                    path: path.clone(),
                    source: e,
                })?;
                self.put_object(&hash, Bytes::from(data)).await?
            };
            if sent {
                bytes += size;
                objects += 1;
            }
        }
        Ok(match self.create_record(&record).await? {
            Placed::Created => Pushed::Sent { objects, bytes },
            Placed::Adopted(winner) if objects == 0 && winner.outputs == record.outputs => Pushed::AlreadyThere,
            Placed::Adopted(winner) => Pushed::Adopted { objects, bytes, winner },
        })
    }

    /// Pulls a key's record and the objects it names into the local store (each verified by
    /// its hash on the way), objects first; `None` when the remote has no record of the key.
    /// A record whose objects the remote lacks is refused, and nothing of it is recorded.
    pub async fn pull_key(&self, store: &Store, key: &CacheKey) -> Result<Option<Pulled>> {
        let Some(record) = self.get_record(key).await? else { return Ok(None) };
        let (mut objects, mut bytes) = (0, 0);
        let mut fetch = async |hash: &ObjectHash| -> Result<()> {
            if store.has_object(hash) {
                return Ok(());
            }
            let size = self.get_object_into(store, hash).await?.ok_or_else(|| RemoteError::Corrupt {
                what: "record",
                location: format!("{} of key {key}", self.config().url),
                detail: format!("it names object {hash}, which the remote does not have"),
            })?;
            objects += 1;
            bytes += size;
            Ok(())
        };
        for output in record.outputs.values() {
            fetch(&output.hash).await?;
            if output.kind == OutputKind::Dir {
                for file in store.read_manifest(&output.hash)?.files {
                    fetch(&file.hash).await?;
                }
            }
        }
        let placed = store.create_record(&record)?;
        Ok(Some(Pulled { objects, bytes, placed }))
    }
}
