//! The store: objects, records, per-key locks, stage state and run history under one root.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{CacheError, IoContext, Result};
use crate::fsutil::{Created, link_new, owner, unique_name, write_atomic, write_staged};
use crate::hash;
use crate::lease::{DEFAULT_TTL, Holder, Lease};
use crate::object::{DirEntry, DirManifest, ObjectHash};
use crate::record::{CacheKey, OutputRef, StageRecord};
use crate::runs::RunRecord;
use crate::statcache::StatCache;
use crate::walk::{self, Symlinks};

/// A store rooted at a directory (by default `.drover/` beside the pipeline).
pub struct Store {
    root: PathBuf,
    stat_cache: StatCache,
    /// What the store found wrong and repaired on its own, for the run's summary.
    repairs: Mutex<Vec<String>>,
}

/// How [`Store::create_record`] placed a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Placed {
    /// This record is the key's record now.
    Created,
    /// Another process stored a record for the key first; this is it, and its outputs are the
    /// key's answer (for a stage that is not deterministic, everyone downstream sees one).
    Adopted(StageRecord),
}

const DIRS: [&str; 10] =
    ["objects", "records", "locks", "runs", "logs", "state", "tmp", "quarantine", "memo", "leases"];

/// A schedule's lease: while it is held, no other nightly run of that schedule starts. The OS
/// releases it when the holder exits, however it exits.
#[derive(Debug)]
pub struct ScheduleLease {
    _file: File,
}

impl Store {
    /// Opens (creating if needed) a store at `root` that is shared on purpose (`--store`,
    /// `DROVER_STORE`): its directory keeps the permissions it has, and the directories drover
    /// creates in it take the same ones (a team's group-writable store stays group-writable).
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_as(root, false)
    }

    /// Opens (creating if needed) a store beside a pipeline: created readable by its owner only,
    /// since records hold the params of every stage.
    pub fn open_private(root: &Path) -> Result<Store> {
        Store::open_as(root, true)
    }

    fn open_as(root: &Path, private: bool) -> Result<Store> {
        if !root.exists() {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).ctx("create directory", parent)?;
            }
            let mut builder = fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, if private { 0o700 } else { 0o777 });
            match builder.create(root) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                    return Err(CacheError::Io {
                        action: "create store directory",
                        path: root.to_path_buf(),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        // Directories made inside take the root's permission bits, whatever the umask.
        let mode = fs::metadata(root).ctx("stat", root)?.permissions().mode() & 0o7777;
        for dir in DIRS {
            let path = root.join(dir);
            if !path.exists() {
                fs::create_dir_all(&path).ctx("create store directory", &path)?;
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode));
            }
        }
        let stat_cache = StatCache::load(&stat_cache_path(root));
        Ok(Store { root: root.to_path_buf(), stat_cache, repairs: Mutex::new(Vec::new()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The memo of this store: values kept by key inside a stage's work (see [`crate::Memo`]).
    /// It shares the store's stat cache ([`crate::Memo::hash_source_file`]).
    pub fn memo(&self) -> crate::Memo {
        crate::Memo::with_stat_cache(&self.root, self.stat_cache.clone())
    }

    /// A fresh directory for a stage's scratch files, inside the store's filesystem so that
    /// outputs can be renamed into place.
    pub fn new_work_dir(&self, label: &str) -> Result<PathBuf> {
        let safe: String = label.chars().take(40).map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let dir = self.root.join("tmp").join(unique_name(&safe));
        fs::create_dir_all(&dir).ctx("create work directory", &dir)?;
        Ok(dir)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    // ---- objects ----

    pub fn object_path(&self, hash: &ObjectHash) -> PathBuf {
        let h = hash.as_str();
        self.root.join("objects").join(&h[..2]).join(&h[2..])
    }

    /// True when the object is a regular file at its place (not a directory or a link that
    /// something else left there).
    pub fn has_object(&self, hash: &ObjectHash) -> bool {
        fs::symlink_metadata(self.object_path(hash)).is_ok_and(|m| m.is_file())
    }

    /// Moves a finished file into the store and returns its hash and size. The file is moved
    /// when it is drover's own (in the store's scratch, with no other name); a file that has
    /// other hard links (a user's file linked into an output) or lives elsewhere is copied, so
    /// that nothing outside the store is ever renamed or made read-only. A symbolic link or a
    /// special file is refused ([`CacheError::Unstorable`]).
    pub fn put_file(&self, src: &Path) -> Result<(ObjectHash, u64)> {
        let meta = fs::symlink_metadata(src).ctx("stat", src)?;
        if !meta.is_file() {
            return Err(walk::unstorable(src, &meta));
        }
        let hash = hash::file(src)?;
        let size = meta.len();
        let dest = self.object_path(&hash);
        if self.object_in_place(&hash, &dest, size)? {
            return Ok((hash, size));
        }
        use std::os::unix::fs::MetadataExt;
        let staged = if src.starts_with(&self.root) && meta.nlink() == 1 {
            src.to_path_buf()
        } else {
            let tmp = self.tmp_dir().join(unique_name("copy"));
            fs::copy(src, &tmp).ctx("copy into store", src)?;
            tmp
        };
        File::open(&staged).and_then(|f| f.sync_all()).ctx("fsync", &staged)?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o444)).ctx("chmod", &staged)?;
        self.place_object(&staged, &dest)?;
        Ok((hash, size))
    }

    /// Gives a complete, synced object its name unless another writer did first (then the
    /// object is there, with the same bytes by its name): never a rename over an object that a
    /// process on another host may be reading.
    fn place_object(&self, staged: &Path, dest: &Path) -> Result<()> {
        let placed = link_new(staged, dest);
        let _ = fs::remove_file(staged);
        placed.map(|_| ())
    }

    /// Stores bytes as an object.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<ObjectHash> {
        let hash = hash::bytes(bytes);
        let dest = self.object_path(&hash);
        if !self.object_in_place(&hash, &dest, bytes.len() as u64)? {
            let tmp = write_staged(&self.tmp_dir(), "bytes", bytes)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444)).ctx("chmod", &tmp)?;
            self.place_object(&tmp, &dest)?;
        }
        Ok(hash)
    }

    /// Whether an object of this size already sits at `dest`. Anything else there (a
    /// directory, a link, a file of another size) blocks the place: it is moved to
    /// `quarantine/` and said so in [`Store::take_repairs`], and the caller stores afresh.
    fn object_in_place(&self, hash: &ObjectHash, dest: &Path, size: u64) -> Result<bool> {
        let meta = match fs::symlink_metadata(dest) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(CacheError::Io { action: "stat", path: dest.to_path_buf(), source: e }),
        };
        if meta.is_file() && meta.len() == size {
            return Ok(true);
        }
        let what = if meta.is_dir() {
            "a directory".to_string()
        } else if meta.is_symlink() {
            "a symbolic link".to_string()
        } else if meta.is_file() {
            format!("a file of {} bytes instead of {size}", meta.len())
        } else {
            "a special file".to_string()
        };
        self.quarantine(dest)?;
        self.note_repair(format!(
            "object {} was blocked by {what} at {}: moved to quarantine/ and stored again",
            hash.short(),
            dest.display()
        ));
        Ok(false)
    }

    /// Stores every file under `dir` and a manifest of them; returns the manifest's hash and
    /// the total size of the files. `dir` itself, and everything in it, must be a real
    /// directory or a regular file: a symbolic link is refused ([`CacheError::Unstorable`]),
    /// never followed ([`Symlinks::Refuse`]). The whole tree is walked before anything is
    /// stored, so a refused output stores none of its files.
    pub fn put_dir(&self, dir: &Path) -> Result<(ObjectHash, u64)> {
        let mut manifest = DirManifest::default();
        for file in walk::files_below(dir, Symlinks::Refuse)? {
            let executable = file.meta.permissions().mode() & 0o111 != 0;
            let (hash, size) = self.put_file(&file.path)?;
            manifest.files.push(DirEntry { path: file.rel, hash, size, executable });
        }
        let total = manifest.total_size();
        Ok((self.put_bytes(&hash::manifest_bytes(&manifest))?, total))
    }

    pub fn read_manifest(&self, hash: &ObjectHash) -> Result<DirManifest> {
        let path = self.object_path(hash);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => CacheError::MissingObject(hash.to_string()),
            _ => CacheError::Io { action: "read", path: path.clone(), source: e },
        })?;
        serde_json::from_slice(&bytes).map_err(|e| CacheError::Corrupt {
            what: "dir manifest",
            path,
            detail: e.to_string(),
        })
    }

    /// Makes an object appear at `dest` (hard link, or a copy across filesystems). The link
    /// shares the object's bytes: whoever reads through it must not write (see
    /// [`Store::snapshot`], which tells when something did).
    pub fn materialize(&self, hash: &ObjectHash, dest: &Path) -> Result<()> {
        let src = self.object_path(hash);
        if !self.has_object(hash) {
            return Err(CacheError::MissingObject(hash.to_string()));
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).ctx("create directory", parent)?;
        }
        if fs::hard_link(&src, dest).is_err() {
            fs::copy(&src, dest).ctx("copy out of store", dest)?;
            fs::set_permissions(dest, fs::Permissions::from_mode(0o444)).ctx("chmod", dest)?;
        }
        Ok(())
    }

    /// Recreates a `dir` artifact as a plain directory at `dest`.
    pub fn materialize_dir(&self, manifest: &ObjectHash, dest: &Path) -> Result<()> {
        let manifest = self.read_manifest(manifest)?;
        fs::create_dir_all(dest).ctx("create directory", dest)?;
        for file in &manifest.files {
            self.materialize(&file.hash, &dest.join(&file.path))?;
        }
        Ok(())
    }

    // ---- records ----

    fn record_path(&self, key: &CacheKey) -> PathBuf {
        let k = key.as_str();
        self.root.join("records").join(&k[..2]).join(format!("{k}.json"))
    }

    /// The record of a key, or `None` if the key was never completed. A record that does not
    /// parse counts as absent (and `cache verify` quarantines it).
    pub fn get_record(&self, key: &CacheKey) -> Option<StageRecord> {
        let bytes = fs::read(self.record_path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The outputs of a completed key whose objects are all present: what deciding "cached"
    /// needs, without parsing the recipe (a no-op rerun of 10,000 stages reads 10,000 records).
    pub fn cached_outputs(&self, key: &CacheKey) -> Option<BTreeMap<String, OutputRef>> {
        #[derive(serde::Deserialize)]
        struct OutputsOnly {
            outputs: BTreeMap<String, OutputRef>,
        }
        let bytes = fs::read(self.record_path(key)).ok()?;
        let record: OutputsOnly = serde_json::from_slice(&bytes).ok()?;
        self.outputs_complete(&record.outputs).then_some(record.outputs)
    }

    /// Writes a record, replacing the key's record if there is one: for a stage rerun on
    /// purpose (`--force`). Call only after every object it names is stored.
    pub fn put_record(&self, record: &StageRecord) -> Result<()> {
        let bytes = serde_json::to_vec(record).expect("records serialise");
        write_atomic(&self.tmp_dir(), &self.record_path(&record.key), &bytes)
    }

    /// Creates the key's record unless another process (on any host sharing the store) did
    /// first; then that one is returned to adopt. A record already there that does not parse,
    /// or names a missing object, is no answer: it goes to `quarantine/` and this one takes
    /// its place. Call only after every object `record` names is stored.
    pub fn create_record(&self, record: &StageRecord) -> Result<Placed> {
        let dest = self.record_path(&record.key);
        let bytes = serde_json::to_vec(record).expect("records serialise");
        let staged = write_staged(&self.tmp_dir(), "record", &bytes)?;
        let placed = self.create_record_from(&staged, &dest, &record.key);
        let _ = fs::remove_file(&staged);
        placed
    }

    fn create_record_from(&self, staged: &Path, dest: &Path, key: &CacheKey) -> Result<Placed> {
        // Each pass either places ours, finds a usable winner, or moves an unusable one away;
        // a few passes cover other processes doing the same at once.
        for _ in 0..8 {
            if link_new(staged, dest)? == Created::Yes {
                return Ok(Placed::Created);
            }
            match fs::read(dest) {
                Ok(bytes) => match serde_json::from_slice::<StageRecord>(&bytes) {
                    Ok(winner) if self.record_complete(&winner) => return Ok(Placed::Adopted(winner)),
                    Ok(_) => {
                        self.quarantine_if_there(dest)?;
                        self.note_repair(format!(
                            "record {} named a missing object: moved to quarantine/ and stored again",
                            key.short()
                        ));
                    }
                    Err(_) => {
                        self.quarantine_if_there(dest)?;
                        self.note_repair(format!(
                            "record {} did not parse: moved to quarantine/ and stored again",
                            key.short()
                        ));
                    }
                },
                // Moved away by another process meanwhile: try again.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::Io { action: "read", path: dest.to_path_buf(), source: e }),
            }
        }
        Err(CacheError::Corrupt {
            what: "record",
            path: dest.to_path_buf(),
            detail: "other processes keep replacing it with records that cannot be used".into(),
        })
    }

    /// Moves `path` to `quarantine/`; gone already (another process moved it) is fine.
    fn quarantine_if_there(&self, path: &Path) -> Result<()> {
        match self.quarantine(path) {
            Err(CacheError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    pub fn remove_record(&self, key: &CacheKey) -> Result<()> {
        let path = self.record_path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(CacheError::Io { action: "remove", path, source: e }),
            _ => Ok(()),
        }
    }

    /// Every record in the store.
    pub fn all_record_keys(&self) -> Result<Vec<CacheKey>> {
        let mut keys = Vec::new();
        for path in list_files(&self.root.join("records"), 2)? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(key) = name.strip_suffix(".json").and_then(CacheKey::parse) {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    // ---- leases ----

    fn lease_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(format!("{name}.lease"))
    }

    /// Waits until this process holds the key's lease. Another process computing the same key
    /// (here or on another host) holds it until its record is written, or until it is known
    /// to be gone: ended, on this host; silent for the lease's time to live, elsewhere. Only
    /// avoids computing a key twice: records are created first-writer-wins whatever happens.
    pub fn lease_key(&self, key: &CacheKey) -> Result<Lease> {
        Lease::acquire(&self.tmp_dir(), &self.lease_path(key.as_str()), DEFAULT_TTL)
    }

    /// The key's lease if nobody else holds it.
    pub fn try_lease_key(&self, key: &CacheKey) -> Result<Option<Lease>> {
        Lease::try_acquire(&self.tmp_dir(), &self.lease_path(key.as_str()), DEFAULT_TTL)
    }

    /// Who holds the key's lease, for a message while waiting.
    pub fn key_holder(&self, key: &CacheKey) -> Option<Holder> {
        Lease::holder(&self.lease_path(key.as_str()))
    }

    /// Takes the lease of schedule `name` without waiting, and writes `holder` (who holds it,
    /// for the message another run prints) into it: `Ok(Err(holder))` says who holds it now.
    /// A `flock` on `leases/NAME.lock`, which gc never removes (a removed lock file would let a
    /// second holder in). On a cluster filesystem that keeps `flock` per node (Lustre), two
    /// nodes can both take it: the Slurm entry queues its jobs as a singleton for that reason.
    pub fn try_lease(&self, name: &str, holder: &str) -> Result<std::result::Result<ScheduleLease, String>> {
        use std::io::{Read, Seek, Write};
        let dir = self.root.join("leases");
        fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        let path = dir.join(format!("{}.lock", escape(name)));
        let mut file =
            File::options().create(true).truncate(false).read(true).write(true).open(&path).ctx("open lease", &path)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).ctx("write lease", &path)?;
                file.seek(std::io::SeekFrom::Start(0)).ctx("write lease", &path)?;
                file.write_all(holder.as_bytes()).ctx("write lease", &path)?;
                Ok(Ok(ScheduleLease { _file: file }))
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                Ok(Err(text.trim().to_string()))
            }
            Err(fs::TryLockError::Error(e)) => Err(e).ctx("lock lease", &path),
        }
    }

    // ---- stage state: the last key each stage of a pipeline had, to explain changes ----

    fn state_path(&self, pipeline: &str) -> PathBuf {
        self.root.join("state").join(format!("{}.json", escape(pipeline)))
    }

    /// Stage id -> the key it had when it last ran or was found cached.
    pub fn load_state(&self, pipeline: &str) -> BTreeMap<String, CacheKey> {
        fs::read(self.state_path(pipeline)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Merges `updates` into the pipeline's state (under a lock, so concurrent runs both land).
    pub fn update_state(&self, pipeline: &str, updates: &BTreeMap<String, CacheKey>) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        // Held briefly; losing it (a filesystem without shared locks) would lose an update of
        // what `plan` explains, never a result.
        let _lease =
            Lease::acquire(&self.tmp_dir(), &self.lease_path(&format!("state-{}", escape(pipeline))), DEFAULT_TTL)?;
        let mut state = self.load_state(pipeline);
        let before = state.clone();
        state.extend(updates.iter().map(|(k, v)| (k.clone(), v.clone())));
        if state != before {
            let bytes = serde_json::to_vec(&state).expect("state serialises");
            write_atomic(&self.tmp_dir(), &self.state_path(pipeline), &bytes)?;
        }
        Ok(())
    }

    // ---- runs and logs ----

    pub fn put_run(&self, run: &RunRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(run).expect("runs serialise");
        write_atomic(&self.tmp_dir(), &self.root.join("runs").join(format!("{}.json", run.id)), &bytes)
    }

    /// Every run record, oldest first. Unreadable ones are skipped.
    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        let mut runs: Vec<RunRecord> = list_files(&self.root.join("runs"), 0)?
            .into_iter()
            .filter_map(|p| serde_json::from_slice(&fs::read(p).ok()?).ok())
            .collect();
        runs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(runs)
    }

    /// Removes these runs' records and their logs (`logs/RUN/`); how many log directories went
    /// (or would go, with `dry_run`). A run id that has no record is passed over.
    pub fn prune_runs(&self, ids: &[String], dry_run: bool) -> Result<usize> {
        let mut logs = 0;
        for id in ids {
            // Ids come from records' names and contents; one with a separator would leave the
            // store's directories.
            if id.contains('/') || id.starts_with('.') {
                continue;
            }
            let record = self.root.join("runs").join(format!("{id}.json"));
            let log_dir = self.root.join("logs").join(id);
            if log_dir.is_dir() {
                logs += 1;
                if !dry_run {
                    fs::remove_dir_all(&log_dir).ctx("remove", &log_dir)?;
                }
            }
            if !dry_run {
                match fs::remove_file(&record) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(e).ctx("remove", &record),
                    _ => {}
                }
            }
        }
        Ok(logs)
    }

    /// Where a stage's log goes in a run: (absolute path, path relative to the root).
    pub fn log_path(&self, run_id: &str, stage: &str) -> (PathBuf, String) {
        let rel = format!("logs/{}/{}.log", run_id, escape(stage));
        (self.root.join(&rel), rel)
    }

    // ---- repairs ----

    pub(crate) fn note_repair(&self, what: String) {
        self.repairs.lock().unwrap_or_else(|p| p.into_inner()).push(what);
    }

    /// What the store repaired on its own since the last call (a blocked object path, say),
    /// for the run to report.
    pub fn take_repairs(&self) -> Vec<String> {
        std::mem::take(&mut *self.repairs.lock().unwrap_or_else(|p| p.into_inner()))
    }

    // ---- stat cache ----

    /// The content hash of a file outside the store, re-read only when its size, mtime or
    /// inode changed.
    pub fn hash_source_file(&self, path: &Path) -> Result<ObjectHash> {
        self.stat_cache.hash(path)
    }

    /// Saves the stat cache (best effort: it is only a cache).
    pub fn flush(&self) {
        self.stat_cache.save(&self.tmp_dir(), &stat_cache_path(&self.root));
    }
}

/// The stat cache of this host: a per-host speed-up, since the files it describes (by path,
/// size, mtime and inode) may be another file with the same path on another host.
pub(crate) fn stat_cache_path(root: &Path) -> PathBuf {
    root.join(format!("statcache-{}.json", crate::host::me().tag))
}

/// A file name for an arbitrary stage or pipeline name: `[A-Za-z0-9_.-]` kept, the rest `%XX`
/// (a leading `.` escaped too).
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Regular files under `dir`, descending `depth` levels of subdirectories.
pub(crate) fn list_files(dir: &Path, depth: usize) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(CacheError::Io { action: "read directory", path: dir.to_path_buf(), source: e }),
    };
    for entry in entries {
        let entry = entry.ctx("read directory", dir)?;
        let path = entry.path();
        if path.is_dir() {
            if depth > 0 {
                out.extend(list_files(&path, depth - 1)?);
            }
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

impl Store {
    /// Removes scratch entries of processes of this host that have ended (a crashed run's).
    /// Another host's scratch is never judged: its pids mean nothing here (`gc` removes what is
    /// a day old).
    pub fn clean_stale_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else { return };
        let me = crate::host::me();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some((tag, pid)) = owner(&name)
                && tag == me.tag
                && pid != me.pid
                && crate::host::start_time(pid).is_none()
            {
                let p = entry.path();
                let _ = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `dir` output's hash is its manifest's: entries sorted by path, the executable bit only
    /// where set. Pinned: the manifest written by hand and hashed with PyPI's `blake3` package.
    #[test]
    fn a_dir_output_is_named_by_its_manifest() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join(".drover")).unwrap();
        let out = d.path().join("out");
        fs::create_dir_all(out.join("sub")).unwrap();
        fs::write(out.join("sub/a.txt"), "a\n").unwrap();
        fs::write(out.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(out.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let (hash, size) = store.put_dir(&out).unwrap();
        assert_eq!(hash.as_str(), "9d6a287478ef9789abee16962396a531650c58029f2ab4c400a3c1defbb05146");
        assert_eq!(size, 20);
    }

    fn record(store: &Store, key: &CacheKey, output: &[u8]) -> StageRecord {
        let hash = store.put_bytes(output).unwrap();
        let out = OutputRef { kind: crate::OutputKind::Blob, hash, size: output.len() as u64 };
        StageRecord {
            key: key.clone(),
            stage: "s".into(),
            recipe: serde_json::json!({}),
            provenance: Default::default(),
            outputs: [("out".to_string(), out)].into(),
            created: 0,
            duration_ms: 0,
        }
    }

    /// Two processes that computed one key (a stage that is not deterministic) store one
    /// answer: the first record stays, and the second writer is handed it to adopt.
    #[test]
    fn the_first_record_of_a_key_wins_and_the_second_writer_adopts_it() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join(".drover")).unwrap();
        let key = crate::hash::key(b"recipe");
        let first = record(&store, &key, b"heads");
        let second = record(&store, &key, b"tails");
        assert_eq!(store.create_record(&first).unwrap(), Placed::Created);
        assert_eq!(store.create_record(&second).unwrap(), Placed::Adopted(first.clone()));
        assert_eq!(store.get_record(&key), Some(first));
        assert!(store.take_repairs().is_empty());
        let tmp: Vec<_> = fs::read_dir(store.tmp_dir()).unwrap().collect();
        assert!(tmp.is_empty(), "no staged record is left behind: {tmp:?}");
    }

    /// A record already there that is no answer (it names an object that is gone) does not
    /// block the key forever: it is moved aside and the new record takes its place.
    #[test]
    fn a_record_naming_a_missing_object_gives_way_to_a_new_one() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join(".drover")).unwrap();
        let key = crate::hash::key(b"recipe");
        let stale = record(&store, &key, b"gone");
        store.put_record(&stale).unwrap();
        fs::remove_file(store.object_path(&stale.outputs["out"].hash)).unwrap();
        let fresh = record(&store, &key, b"fresh");
        assert_eq!(store.create_record(&fresh).unwrap(), Placed::Created);
        assert_eq!(store.get_record(&key), Some(fresh));
        assert_eq!(
            store.take_repairs(),
            [format!("record {} named a missing object: moved to quarantine/ and stored again", key.short())]
        );
        assert_eq!(fs::read_dir(store.root().join("quarantine")).unwrap().count(), 1);
    }

    /// Scratch of an ended process of this host is removed; scratch named by another host (or
    /// PID namespace) is never judged by this host's `/proc`, whatever its pid.
    #[test]
    fn stale_scratch_is_cleaned_only_for_this_hosts_ended_processes() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join(".drover")).unwrap();
        let me = crate::host::me();
        let ended = format!("stage-4194304-0-{}", me.tag); // above the kernel's pid_max
        let other_host = "stage-4194304-0-0123456789abcdef";
        let mine = unique_name("stage");
        for name in [&ended, other_host, &mine] {
            fs::create_dir_all(store.tmp_dir().join(name)).unwrap();
        }
        store.clean_stale_tmp();
        let mut left: Vec<String> =
            fs::read_dir(store.tmp_dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut want = vec![other_host.to_string(), mine];
        want.sort();
        assert_eq!(left, want);
    }
}
