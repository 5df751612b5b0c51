//! The memo: small values kept by key under `.drover/memo/`, such as language-model responses,
//! so that work finished inside a stage survives the stage dying.
//!
//! Unlike objects and records, a memo entry is not synced to disk one by one: a language-model
//! response takes a second to make and a sync costs as much as a small request. An entry is
//! written to a temporary file and renamed into place, so a process that is killed leaves whole
//! entries or none. After a power loss an entry may be empty or torn; every entry starts with
//! the blake3 of its value, so such an entry reads as missing (the work is redone) and is never
//! served. [`Memo::sync`] makes what was written durable, once per stage.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::fsutil::{Created, link_new, unique_name};
use crate::hash;
use crate::object::ObjectHash;
use crate::statcache::StatCache;

/// A handle on the memo of one store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Memo {
    root: PathBuf,
    tmp: PathBuf,
    /// The store's stat cache, for the files whose content enters the keys of entries.
    stat_cache: StatCache,
}

/// Bytes before the value: 64 hex digits of its blake3, then a newline.
const HEADER: usize = 65;

impl Memo {
    /// The memo of the store rooted at `store_root` (see `Store::memo`).
    pub fn new(store_root: &Path) -> Memo {
        Memo::with_stat_cache(store_root, StatCache::load(&crate::store::stat_cache_path(store_root)))
    }

    pub(crate) fn with_stat_cache(store_root: &Path, stat_cache: StatCache) -> Memo {
        Memo { root: store_root.join("memo"), tmp: store_root.join("tmp"), stat_cache }
    }

    /// The content hash of a file whose content enters the keys of entries (the model file a
    /// local server loads), through the store's stat cache, as `Store::hash_source_file`: a
    /// file already hashed by this process, for a stage's key or another entry's, is not read
    /// again, and one whose size, mtime and inode are unchanged since an earlier run is not
    /// read at all.
    pub fn hash_source_file(&self, path: &Path) -> Result<ObjectHash> {
        self.stat_cache.hash(path)
    }

    /// The path of `key`'s entry (keys are hex digests).
    fn path(&self, key: &str) -> PathBuf {
        let split = key.len().min(2);
        self.root.join(&key[..split]).join(&key[split..])
    }

    /// The value stored under `key`, if a whole one is there.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let bytes = fs::read(self.path(key)).ok()?;
        if bytes.len() < HEADER || bytes[HEADER - 1] != b'\n' {
            return None;
        }
        let (head, value) = bytes.split_at(HEADER);
        (hash::bytes(value).as_str().as_bytes() == &head[..HEADER - 1]).then(|| value.to_vec())
    }

    /// Stores `value` under `key` unless a whole entry is there already: the first writer
    /// wins, so that processes on several hosts asking the same question keep one answer (and
    /// none replaces a file another host may be reading). A torn entry is replaced.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let dest = self.path(key);
        let dir = dest.parent().expect("memo entries are in a directory");
        fs::create_dir_all(dir).ctx("create memo directory", dir)?;
        fs::create_dir_all(&self.tmp).ctx("create store directory", &self.tmp)?;
        let tmp = self.tmp.join(unique_name("memo"));
        let mut file = fs::File::create(&tmp).ctx("create", &tmp)?;
        let mut bytes = Vec::with_capacity(HEADER + value.len());
        bytes.extend_from_slice(hash::bytes(value).as_str().as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(value);
        file.write_all(&bytes).ctx("write", &tmp)?;
        drop(file);
        let placed = match link_new(&tmp, &dest) {
            Ok(Created::Exists) if self.get(key).is_none() => {
                fs::rename(&tmp, &dest).ctx("rename into the memo", &dest)
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        let _ = fs::remove_file(&tmp);
        placed
    }

    /// Makes every entry written so far durable (one `syncfs` of the store's filesystem).
    pub fn sync(&self) {
        if let Ok(dir) = fs::File::open(&self.root) {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs takes any open descriptor on the filesystem and only flushes it.
            unsafe { libc::syncfs(dir.as_raw_fd()) };
        }
    }

    /// Removes every entry (unless `dry_run`); returns how many there were and their bytes.
    pub fn clear(&self, dry_run: bool) -> Result<(u64, u64)> {
        let usage = self.usage();
        if !dry_run && self.root.exists() {
            fs::remove_dir_all(&self.root).ctx("remove the memo", &self.root)?;
            fs::create_dir_all(&self.root).ctx("create the memo", &self.root)?;
        }
        Ok(usage)
    }

    /// Removes `key`'s entry, if there is one (a checkpoint an older one replaces).
    pub fn remove(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).ctx("remove memo entry", &path),
            _ => Ok(()),
        }
    }

    /// The key of every entry, in no particular order (torn entries included: [`Memo::get`]
    /// tells them apart).
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for sub in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let prefix = sub.file_name().to_string_lossy().into_owned();
            for entry in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                keys.push(format!("{prefix}{}", entry.file_name().to_string_lossy()));
            }
        }
        keys
    }

    /// How many entries there are and their total size in bytes.
    pub fn usage(&self) -> (u64, u64) {
        let mut count = 0;
        let mut bytes = 0;
        for sub in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            for entry in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                count += 1;
                bytes += entry.metadata().map_or(0, |m| m.len());
            }
        }
        (count, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_entry_reads_as_missing_and_removing_nothing_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let memo = Memo::new(dir.path());
        memo.put("ab12", b"value").unwrap();
        assert_eq!(memo.get("ab12").as_deref(), Some(&b"value"[..]));
        memo.remove("ab12").unwrap();
        assert_eq!(memo.get("ab12"), None);
        memo.remove("ab12").unwrap();
        assert_eq!(memo.usage().0, 0);
    }

    /// A file hashed for a stage's key (`Store::hash_source_file`) is not read again for a memo
    /// key in the same process: edited in between, it still gives the hash the key was made of.
    #[test]
    fn the_memo_shares_the_stores_stat_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(&dir.path().join(".drover")).unwrap();
        let model = dir.path().join("m.gguf");
        fs::write(&model, "GGUF v1").unwrap();
        let keyed = store.hash_source_file(&model).unwrap();
        // blake3(b"GGUF v1"), by PyPI's `blake3` package.
        assert_eq!(keyed.as_str(), "b001951ba80abb8ccdef9d5738d4a8d84455d2a88eef6092d1ac2f007acf899e");
        fs::write(&model, "GGUF v2").unwrap();
        assert_eq!(store.memo().hash_source_file(&model).unwrap(), keyed);
    }

    #[test]
    fn a_torn_or_empty_entry_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let memo = Memo::new(dir.path());
        let key = "ab".repeat(32);
        assert_eq!(memo.get(&key), None);
        memo.put(&key, b"{\"text\":\"hello\"}").unwrap();
        assert_eq!(memo.get(&key).as_deref(), Some(&b"{\"text\":\"hello\"}"[..]));
        // What a power loss can leave: a short file, then an empty one.
        let path = memo.path(&key);
        let whole = fs::read(&path).unwrap();
        fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        assert_eq!(memo.get(&key), None);
        fs::write(&path, b"").unwrap();
        assert_eq!(memo.get(&key), None);
    }
}
