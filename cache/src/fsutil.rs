//! File writes safe for a store shared by many processes and machines: unique scratch names,
//! atomic replacement (temporary file, fsync, rename, directory fsync), and exclusive creation
//! (`link()`), where the first writer of a name wins and never has its file replaced.
//!
//! Why `link()` and not `rename()` for what must not be replaced: a rename over an existing
//! name is last-writer-wins, and on NFS it also deletes the inode that another client may be
//! reading (it gets `ESTALE`). `link()` fails with `EEXIST` atomically on local filesystems and
//! on NFS (it is the classic NFS-safe lock primitive, where `O_EXCL` was not before NFSv3).

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{CacheError, IoContext, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other writer uses at the same time: not another thread (the counter), nor another
/// process of this host (the pid) or of another host or PID namespace (the host tag, last, so
/// that [`owner`] finds it).
pub(crate) fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let me = crate::host::me();
    format!("{prefix}-{}-{n}-{}", me.pid, me.tag)
}

/// The host tag and pid of the process that made a [`unique_name`].
pub(crate) fn owner(name: &str) -> Option<(&str, u32)> {
    let mut parts = name.rsplitn(4, '-');
    let tag = parts.next()?;
    let _n: u64 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    (tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit())).then_some((tag, pid))
}

/// Writes `bytes` to `dest` atomically, staging in `tmp_dir` (same filesystem). Replaces
/// whatever is at `dest`: for files one writer owns (run records, stage state).
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_staged(tmp_dir, "w", bytes)?;
    rename_durable(&tmp, dest)
}

/// Writes `bytes` to a fresh file in `tmp_dir` and syncs it; returns its path.
pub(crate) fn write_staged(tmp_dir: &Path, prefix: &str, bytes: &[u8]) -> Result<std::path::PathBuf> {
    let tmp = tmp_dir.join(unique_name(prefix));
    let mut f = File::create(&tmp).ctx("create", &tmp)?;
    f.write_all(bytes).ctx("write", &tmp)?;
    f.sync_all().ctx("fsync", &tmp)?;
    Ok(tmp)
}

/// Renames `from` to `to` (creating `to`'s parent) and fsyncs the parent directory.
pub(crate) fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    let parent = to.parent().expect("store paths have parents");
    if !parent.exists() {
        fs::create_dir_all(parent).ctx("create directory", parent)?;
    }
    fs::rename(from, to).ctx("rename into", to)?;
    sync_dir(parent);
    Ok(())
}

/// A directory fsync makes a rename or link in it durable; failures are not fatal on
/// filesystems that do not support it.
fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// What [`link_new`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Created {
    /// `dest` is now the staged file.
    Yes,
    /// Something was at `dest` already; it was left as it was.
    Exists,
}

/// Gives the complete, synced file `staged` the name `dest` unless that name exists, in one
/// atomic step; `staged` stays (the caller removes it). On a filesystem without hard links it
/// falls back to `renameat2(RENAME_NOREPLACE)` (then `staged` is gone when created), and fails
/// when that is missing too: first-writer-wins cannot be had there.
pub(crate) fn link_new(staged: &Path, dest: &Path) -> Result<Created> {
    let parent = dest.parent().expect("store paths have parents");
    let mut made_parent = false;
    loop {
        match fs::hard_link(staged, dest) {
            Ok(()) => {
                sync_dir(parent);
                return Ok(Created::Yes);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Created::Exists),
            // The parent is missing, or `staged` is: make the parent (another thread may have
            // made it since the link failed, which create_dir_all accepts) and try once more.
            // Asking whether the parent exists instead lost that race: the link failed for want
            // of a parent another thread then made, and the store reported "No such file".
            Err(e) if e.kind() == ErrorKind::NotFound && !made_parent => {
                fs::create_dir_all(parent).ctx("create directory", parent)?;
                made_parent = true;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP | libc::EMLINK)) => {
                return rename_noreplace(staged, dest, e);
            }
            Err(e) => return Err(CacheError::Io { action: "link into", path: dest.to_path_buf(), source: e }),
        }
    }
}

fn rename_noreplace(staged: &Path, dest: &Path, link_error: std::io::Error) -> Result<Created> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("store paths have no NUL");
    let (from, to) = (c(staged), c(dest));
    // SAFETY: two NUL-terminated paths that live across the call; AT_FDCWD resolves them as
    // open(2) would.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        sync_dir(dest.parent().expect("store paths have parents"));
        return Ok(Created::Yes);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == ErrorKind::AlreadyExists {
        return Ok(Created::Exists);
    }
    Err(CacheError::Io {
        action: "create exclusively",
        path: dest.to_path_buf(),
        source: std::io::Error::new(
            e.kind(),
            format!(
                "this filesystem has neither hard links ({link_error}) nor RENAME_NOREPLACE ({e}), so drover \
                 cannot create store entries first-writer-wins on it; put the store on another filesystem"
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_name_says_which_host_and_process_made_it() {
        let name = unique_name("build_x-1");
        let me = crate::host::me();
        assert_eq!(owner(&name), Some((me.tag.as_str(), me.pid)));
        assert_eq!(owner("w-12-3"), None, "a name without a host tag (an older drover's) has no owner");
        assert_ne!(unique_name("w"), unique_name("w"));
    }

    #[test]
    fn the_first_link_wins_and_the_second_leaves_it_alone() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, dest) = (d.path().join("a"), d.path().join("b"), d.path().join("sub/dest"));
        fs::write(&a, "first").unwrap();
        fs::write(&b, "second").unwrap();
        assert_eq!(link_new(&a, &dest).unwrap(), Created::Yes, "the parent is made on the way");
        assert_eq!(link_new(&b, &dest).unwrap(), Created::Exists);
        assert_eq!(fs::read_to_string(&dest).unwrap(), "first");
        assert!(b.exists(), "the loser's file is the caller's to remove");
    }

    #[test]
    fn threads_linking_into_one_new_directory_all_succeed() {
        // Many outputs of one stage land in the same new shard directory at once (seen failing
        // in a full test run: a merge's model directory, "link into ...: No such file").
        let d = tempfile::tempdir().unwrap();
        let staged: Vec<_> = (0..8)
            .map(|t| {
                let p = d.path().join(format!("staged-{t}"));
                fs::write(&p, t.to_string()).unwrap();
                p
            })
            .collect();
        for round in 0..1000 {
            let shard = d.path().join(format!("objects/{round}"));
            std::thread::scope(|s| {
                let links: Vec<_> = staged
                    .iter()
                    .enumerate()
                    .map(|(t, p)| {
                        let dest = shard.join(format!("o{t}"));
                        s.spawn(move || link_new(p, &dest))
                    })
                    .collect();
                for l in links {
                    assert_eq!(l.join().unwrap().unwrap(), Created::Yes, "round {round}");
                }
            });
        }
    }

    #[test]
    fn a_missing_staged_file_is_an_error_naming_the_destination() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("sub/dest");
        let e = link_new(&d.path().join("gone"), &dest).unwrap_err().to_string();
        assert!(e.contains("link into") && e.contains("sub/dest"), "{e}");
    }
}
