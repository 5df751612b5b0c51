//! A stat cache for source files (deps, tables read by `read_table`, the model file of a local
//! language-model server): a file whose size, mtime and inode are unchanged is not re-read, as
//! git's index does.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::fsutil::write_atomic;
use crate::hash;
use crate::object::ObjectHash;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    ino: u64,
    hash: ObjectHash,
}

/// A handle on one store's stat cache, shared by the store and the memo it hands out, so that
/// a file hashed for a stage's key is not read again for its memo keys. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct StatCache(Arc<Mutex<Inner>>);

impl std::fmt::Debug for StatCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatCache")
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<PathBuf, Entry>,
    dirty: bool,
    /// Hashes already taken by this process, by path as given: a file is hashed at most once
    /// per run (a thousand stages sharing one dep file cost one stat).
    seen: HashMap<PathBuf, ObjectHash>,
}

/// Files modified this recently are hashed every time: a second write within the same mtime
/// tick could otherwise go unseen.
const RACY_WINDOW: Duration = Duration::from_secs(2);

impl StatCache {
    pub(crate) fn load(path: &Path) -> StatCache {
        let entries = fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        StatCache(Arc::new(Mutex::new(Inner { entries, dirty: false, seen: HashMap::new() })))
    }

    /// The content hash of the file at `path` (symlinks followed).
    pub(crate) fn hash(&self, path: &Path) -> Result<ObjectHash> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).hash(path)
    }

    /// Writes the entries out, if any changed (best effort: it is only a cache).
    pub(crate) fn save(&self, tmp_dir: &Path, path: &Path) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).save(tmp_dir, path)
    }
}

impl Inner {
    fn hash(&mut self, path: &Path) -> Result<ObjectHash> {
        if let Some(hash) = self.seen.get(path) {
            return Ok(hash.clone());
        }
        let hash = self.hash_uncached(path)?;
        self.seen.insert(path.to_path_buf(), hash.clone());
        Ok(hash)
    }

    fn hash_uncached(&mut self, path: &Path) -> Result<ObjectHash> {
        let abs = fs::canonicalize(path).ctx("resolve", path)?;
        let meta = fs::metadata(&abs).ctx("stat", path)?;
        let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
        if let Some(e) = self.entries.get(&abs)
            && e.size == meta.len()
            && e.mtime_ns == mtime_ns
            && e.ino == meta.ino()
        {
            return Ok(e.hash.clone());
        }
        let hash = hash::file(&abs)?;
        let recent = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < RACY_WINDOW);
        if !recent {
            self.entries.insert(abs, Entry { size: meta.len(), mtime_ns, ino: meta.ino(), hash: hash.clone() });
            self.dirty = true;
        }
        Ok(hash)
    }

    fn save(&self, tmp_dir: &Path, path: &Path) {
        if self.dirty
            && let Ok(bytes) = serde_json::to_vec(&self.entries)
        {
            let _ = write_atomic(tmp_dir, path, &bytes);
        }
    }
}
