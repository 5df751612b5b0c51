//! `cache verify` (re-hash, quarantine what is corrupt) and `gc` (drop what nothing references).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{IoContext, Result};
use crate::fsutil::unique_name;
use crate::hash;
use crate::object::ObjectHash;
use crate::record::{CacheKey, OutputKind, OutputRef, StageRecord};
use crate::store::{Store, list_files};

/// What `cache verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub records_checked: usize,
    /// Objects whose bytes do not match their name, moved to `quarantine/`.
    pub corrupt_objects: Vec<ObjectHash>,
    /// Object places taken by something other than a regular file (a directory, a link),
    /// moved to `quarantine/`.
    pub blocked_objects: Vec<PathBuf>,
    /// Records that did not parse, moved to `quarantine/`.
    pub corrupt_records: Vec<PathBuf>,
    /// Records naming an object that is missing or was quarantined; removed so that the stage
    /// reruns instead of failing.
    pub dangling_records: Vec<CacheKey>,
    /// Records computed from a corrupt object (their result may be wrong); removed so that the
    /// stage reruns.
    pub tainted_records: Vec<CacheKey>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt_objects.is_empty()
            && self.blocked_objects.is_empty()
            && self.corrupt_records.is_empty()
            && self.dangling_records.is_empty()
            && self.tainted_records.is_empty()
    }
}

/// What `gc` removed (or would remove, with `dry_run`).
#[derive(Debug, Default)]
pub struct GcReport {
    pub records_removed: usize,
    pub objects_removed: usize,
    pub bytes_freed: u64,
    pub tmp_removed: usize,
    pub locks_removed: usize,
    pub objects_kept: usize,
}

impl Store {
    /// Re-hashes every object and parses every record. Corrupt objects, and whatever else sits
    /// at an object's place, go to `quarantine/`; records that name them, or were computed
    /// from them, are removed so that their stages rerun.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut corrupt = BTreeSet::new();
        for path in object_places(&self.root().join("objects"))? {
            report.objects_checked += 1;
            let Some(name) = object_name(&path) else { continue };
            let meta = fs::symlink_metadata(&path).ctx("stat", &path)?;
            if !meta.is_file() {
                self.quarantine(&path)?;
                report.blocked_objects.push(path);
                corrupt.insert(name);
                continue;
            }
            let actual = hash::file(&path)?;
            if actual != name {
                self.quarantine(&path)?;
                report.corrupt_objects.push(name.clone());
                corrupt.insert(name);
            }
        }
        for path in list_files(&self.root().join("records"), 1)? {
            report.records_checked += 1;
            let parsed: Option<StageRecord> = fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            match parsed {
                None => {
                    self.quarantine(&path)?;
                    report.corrupt_records.push(path);
                }
                Some(record) => {
                    if !self.record_complete(&record) {
                        self.remove_record(&record.key)?;
                        report.dangling_records.push(record.key);
                    }
                }
            }
        }
        if !corrupt.is_empty() {
            report.tainted_records = self.invalidate(&corrupt)?.records;
        }
        Ok(report)
    }

    /// True when every object a record names (and every file of its dirs) is present.
    pub fn record_complete(&self, record: &StageRecord) -> bool {
        self.outputs_complete(&record.outputs)
    }

    /// True when every one of these outputs (and every file of its dirs) is present.
    pub fn outputs_complete(&self, outputs: &BTreeMap<String, OutputRef>) -> bool {
        outputs.values().all(|out| {
            self.has_object(&out.hash)
                && (out.kind != OutputKind::Dir
                    || self.read_manifest(&out.hash).is_ok_and(|m| m.files.iter().all(|f| self.has_object(&f.hash))))
        })
    }

    pub(crate) fn quarantine(&self, path: &Path) -> Result<()> {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let dest = self.root().join("quarantine").join(format!("{name}.{}", unique_name("q")));
        fs::rename(path, &dest).ctx("quarantine", path)
    }

    /// Keeps the records of `roots` (keys referenced by run records or the current pipeline)
    /// and the objects they reach; removes every other record and object, and stale scratch
    /// directories.
    pub fn gc(&self, roots: &BTreeSet<CacheKey>, dry_run: bool) -> Result<GcReport> {
        let mut report = GcReport::default();
        let mut live: BTreeSet<ObjectHash> = BTreeSet::new();
        for key in self.all_record_keys()? {
            match self.get_record(&key) {
                Some(record) if roots.contains(&key) => {
                    for out in record.outputs.values() {
                        live.insert(out.hash.clone());
                        if out.kind == OutputKind::Dir
                            && let Ok(m) = self.read_manifest(&out.hash)
                        {
                            live.extend(m.files.into_iter().map(|f| f.hash));
                        }
                    }
                }
                _ => {
                    report.records_removed += 1;
                    if !dry_run {
                        self.remove_record(&key)?;
                    }
                }
            }
        }
        for path in list_files(&self.root().join("objects"), 1)? {
            match object_name(&path) {
                Some(name) if live.contains(&name) => report.objects_kept += 1,
                _ => {
                    report.objects_removed += 1;
                    report.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    if !dry_run {
                        fs::remove_file(&path).ctx("remove", &path)?;
                    }
                }
            }
        }
        // Leases of ended processes of this host, and lock files of drovers before leases.
        // (Another host's lease is left: it expires by itself, and its pid means nothing here.)
        let locks = self.root().join("locks");
        for path in list_files(&locks, 0)? {
            let old_lock = path.extension().is_some_and(|e| e == "lock");
            if old_lock || crate::lease::Lease::abandoned_here(&path) {
                report.locks_removed += 1;
                if !dry_run {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        // Scratch left by crashed runs. A live run's scratch is younger than a day and is left.
        let tmp = self.root().join("tmp");
        for entry in fs::read_dir(&tmp).ctx("read directory", &tmp)? {
            let entry = entry.ctx("read directory", &tmp)?;
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > Duration::from_secs(24 * 3600));
            if old {
                report.tmp_removed += 1;
                if !dry_run {
                    let p = entry.path();
                    let _ = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                }
            }
        }
        Ok(report)
    }
}

/// Every entry at depth two under `objects/` (where objects live), whatever its kind.
fn object_places(objects: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for prefix in fs::read_dir(objects).ctx("read directory", objects)? {
        let prefix = prefix.ctx("read directory", objects)?.path();
        if !fs::symlink_metadata(&prefix).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        for entry in fs::read_dir(&prefix).ctx("read directory", &prefix)? {
            out.push(entry.ctx("read directory", &prefix)?.path());
        }
    }
    Ok(out)
}

fn object_name(path: &Path) -> Option<ObjectHash> {
    let prefix = path.parent()?.file_name()?.to_str()?;
    let rest = path.file_name()?.to_str()?;
    ObjectHash::parse(&format!("{prefix}{rest}"))
}
