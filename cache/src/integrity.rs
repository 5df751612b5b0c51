//! Whether an artifact's bytes are still the bytes its hash names: checked before a stage reads
//! them and, cheaply, after; and what happens when they are not.
//!
//! Inputs reach a stage as hard links to store objects, so a stage that writes to one writes to
//! the store. Before a stage runs, each input is re-hashed (bit rot keeps size and mtime, so no
//! stat shortcut is sound there). Its files' identity (inode, size, mtime, ctime) is noted; after
//! the stage, a changed identity (any write through a link changes mtime and ctime, and ctime
//! cannot be set back) triggers a second hash. A corrupt object is moved to `quarantine/`, and
//! every record that names it, as an output or as something its recipe was computed from, is
//! removed, so the producer and its consumers run again instead of serving a wrong result.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::error::{CacheError, Result};
use crate::object::ObjectHash;
use crate::record::{CacheKey, OutputKind, OutputRef};
use crate::store::Store;

/// An artifact whose bytes no longer match its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// The object whose bytes are wrong (for a `dir` artifact: the manifest or one file).
    pub object: ObjectHash,
    /// For a file of a `dir` artifact, its path inside the directory.
    pub file: Option<String>,
}

/// The identity of an artifact's files when a stage started to read them.
#[derive(Clone, Debug)]
pub struct Snapshot {
    files: Vec<(PathBuf, Option<FileId>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        }
    }
}

/// What [`Store::invalidate`] did.
#[derive(Debug, Default)]
pub struct Invalidated {
    /// Objects moved to `quarantine/` (still wrong when looked at again).
    pub quarantined: Vec<ObjectHash>,
    /// Records removed: they named a corrupt object as an output, or were computed from one.
    pub records: Vec<CacheKey>,
}

impl Store {
    /// Re-hashes an artifact (for a `dir`: its manifest and every file). `Ok(None)` when every
    /// byte is what its name says; a missing object is an error.
    pub fn check_artifact(&self, out: &OutputRef) -> Result<Option<Corruption>> {
        if !self.object_matches(&out.hash)? {
            return Ok(Some(Corruption { object: out.hash.clone(), file: None }));
        }
        if out.kind == OutputKind::Dir {
            for f in self.read_manifest(&out.hash)?.files {
                if !self.object_matches(&f.hash)? {
                    return Ok(Some(Corruption { object: f.hash, file: Some(f.path) }));
                }
            }
        }
        Ok(None)
    }

    /// Whether the object's file hashes to its name.
    fn object_matches(&self, hash: &ObjectHash) -> Result<bool> {
        if !self.has_object(hash) {
            return Err(CacheError::MissingObject(hash.to_string()));
        }
        Ok(crate::hash::file(&self.object_path(hash))? == *hash)
    }

    /// Notes the identity of an artifact's files, to tell later whether anything wrote to them.
    pub fn snapshot(&self, out: &OutputRef) -> Result<Snapshot> {
        let mut paths = vec![self.object_path(&out.hash)];
        if out.kind == OutputKind::Dir {
            paths.extend(self.read_manifest(&out.hash)?.files.iter().map(|f| self.object_path(&f.hash)));
        }
        let files = paths
            .into_iter()
            .map(|p| {
                let id = fs::symlink_metadata(&p).ok().map(|m| FileId::of(&m));
                (p, id)
            })
            .collect();
        Ok(Snapshot { files })
    }

    /// True when a file of the snapshot is not what it was (written, replaced or removed). A
    /// new hard link to it (another stage reading it) counts too: the caller re-hashes to know.
    pub fn changed_since(&self, snapshot: &Snapshot) -> bool {
        snapshot.files.iter().any(|(path, id)| fs::symlink_metadata(path).ok().map(|m| FileId::of(&m)) != *id)
    }

    /// Quarantines the objects of `corrupt` that are still wrong at their place, and removes
    /// every record that names one of them as an output (directly or inside a `dir` output's
    /// manifest) or whose recipe was computed from one. Such records rerun on the next run.
    pub fn invalidate(&self, corrupt: &BTreeSet<ObjectHash>) -> Result<Invalidated> {
        let mut done = Invalidated::default();
        for hash in corrupt {
            let path = self.object_path(hash);
            let wrong = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => crate::hash::file(&path)? != *hash,
                Ok(_) => true,
                Err(_) => false,
            };
            if wrong {
                self.quarantine(&path)?;
                done.quarantined.push(hash.clone());
            }
        }
        // A `dir` artifact holding a corrupt file is corrupt as a whole.
        let mut tainted = corrupt.clone();
        let records: Vec<_> = self.all_record_keys()?.into_iter().filter_map(|k| self.get_record(&k)).collect();
        for record in &records {
            for out in record.outputs.values().filter(|o| o.kind == OutputKind::Dir) {
                if let Ok(m) = self.read_manifest(&out.hash)
                    && m.files.iter().any(|f| corrupt.contains(&f.hash))
                {
                    tainted.insert(out.hash.clone());
                }
            }
        }
        for record in records {
            let names_output = record.outputs.values().any(|o| tainted.contains(&o.hash));
            // Recipes are opaque here: a recipe computed from an object names its hash somewhere.
            let recipe = record.recipe.to_string();
            let computed_from = tainted.iter().any(|h| recipe.contains(h.as_str()));
            if names_output || computed_from {
                self.remove_record(&record.key)?;
                done.records.push(record.key);
            }
        }
        Ok(done)
    }
}
