//! Atomic file writes: temporary file in the same filesystem, fsync, rename, fsync directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other writer (thread or process) in this store uses at the same time.
pub(crate) fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Writes `bytes` to `dest` atomically, staging in `tmp_dir` (same filesystem).
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_dir.join(unique_name("w"));
    {
        let mut f = File::create(&tmp).ctx("create", &tmp)?;
        f.write_all(bytes).ctx("write", &tmp)?;
        f.sync_all().ctx("fsync", &tmp)?;
    }
    rename_durable(&tmp, dest)
}

/// Renames `from` to `to` (creating `to`'s parent) and fsyncs the parent directory.
pub(crate) fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    let parent = to.parent().expect("store paths have parents");
    if !parent.exists() {
        fs::create_dir_all(parent).ctx("create directory", parent)?;
    }
    fs::rename(from, to).ctx("rename into", to)?;
    // A directory fsync makes the rename itself durable; failures here are not fatal on
    // filesystems that do not support it.
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Hashes a file with blake3. Large files are read in big blocks and hashed on every core
/// (a 2 GB input is verified before each stage that reads it). Reads, never maps: a file that
/// is truncated while it is hashed gives a wrong hash, where a map would crash the process.
pub(crate) fn hash_file(path: &Path) -> Result<blake3::Hash> {
    use std::io::Read;
    /// Below this a block is hashed on one thread (blake3's own advice: rayon pays from ~128 KiB).
    const PARALLEL_FROM: usize = 1 << 20;
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path).ctx("open", path)?;
    // Sized to the file (plus one byte, to see its end in one read), at most 8 MiB.
    let len = file.metadata().map_or(0, |m| m.len());
    let mut buf = vec![0u8; (len.saturating_add(1)).clamp(4096, 8 << 20) as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(crate::CacheError::Io { action: "read", path: path.to_path_buf(), source: e }),
            }
        }
        if filled >= PARALLEL_FROM {
            hasher.update_rayon(&buf[..filled]);
        } else {
            hasher.update(&buf[..filled]);
        }
        if filled < buf.len() {
            return Ok(hasher.finalize());
        }
    }
}
