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
