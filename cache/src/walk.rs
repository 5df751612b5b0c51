//! The one directory walk: every file below a directory, under an explicit symlink policy.
//!
//! Two kinds of directory are walked, and a symbolic link means something different in each.
//! A directory a pipeline reads (a `deps:` entry, a model directory) is the user's: a link in
//! it is followed, and what enters a key is the content read, wherever it lives. A directory a
//! stage wrote (a `dir` output) is about to be moved into the store: a link in it is refused,
//! never followed, so that nothing outside the store is ever read as an output, made read-only
//! or renamed. One walk serves both, so the two can differ only in that policy: the same
//! directory lists the same relative names, in the same order, as a dep and as an output.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{CacheError, IoContext, Result};

/// What the walk does with a symbolic link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symlinks {
    /// Files a pipeline reads (deps, model directories): a link to a directory is walked as a
    /// directory, a link to a file is read as that file. A link back to a directory that
    /// contains it is an error naming both ends ([`CacheError::SymlinkLoop`]).
    Follow,
    /// What a stage wrote (outputs): a link, anywhere below the root or as the root itself, is
    /// an error ([`CacheError::Unstorable`]), never followed; so is a pipe, socket or device.
    Refuse,
}

/// One file found by [`files_below`].
#[derive(Clone, Debug)]
pub struct WalkedFile {
    /// Its path relative to the root, `/` between parts (the name keys and manifests use).
    pub rel: String,
    /// Where to read it (below the root, through links under [`Symlinks::Follow`]).
    pub path: PathBuf,
    /// Its metadata: of what a link leads to under [`Symlinks::Follow`], of the file itself
    /// under [`Symlinks::Refuse`] (where it is always a regular file).
    pub meta: fs::Metadata,
}

/// Every file below directory `root`, each directory's entries in name order, so that the walk
/// (and the first problem it meets) is the same every time.
///
/// Under [`Symlinks::Follow`] a loop is found by the device and inode of the directories being
/// walked, where a blind walk would go round until the kernel's limit of 40 links in one path
/// stopped it in an error naming neither end. Two links to the same directory elsewhere are no
/// loop, and both are listed.
pub fn files_below(root: &Path, symlinks: Symlinks) -> Result<Vec<WalkedFile>> {
    let meta = match symlinks {
        Symlinks::Follow => fs::metadata(root).ctx("stat", root)?,
        Symlinks::Refuse => {
            let meta = fs::symlink_metadata(root).ctx("stat", root)?;
            if !meta.is_dir() {
                return Err(unstorable(root, &meta));
            }
            meta
        }
    };
    let mut files = Vec::new();
    walk(root, &meta, "", symlinks, &mut Vec::new(), &mut files)?;
    Ok(files)
}

/// Walks `dir` (whose metadata, under the policy, is `meta`; its relative path `rel`); `open`
/// holds the directories being walked above it, as (device, inode, path).
fn walk(
    dir: &Path,
    meta: &fs::Metadata,
    rel: &str,
    symlinks: Symlinks,
    open: &mut Vec<(u64, u64, PathBuf)>,
    files: &mut Vec<WalkedFile>,
) -> Result<()> {
    if let Some((_, _, ancestor)) = open.iter().find(|(dev, ino, _)| (*dev, *ino) == (meta.dev(), meta.ino())) {
        return Err(CacheError::SymlinkLoop { path: dir.into(), ancestor: ancestor.clone() });
    }
    open.push((meta.dev(), meta.ino(), dir.into()));
    let mut entries =
        fs::read_dir(dir).ctx("read directory", dir)?.collect::<Result<Vec<_>, _>>().ctx("read directory", dir)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let child = join(rel, &entry.file_name());
        let meta = match symlinks {
            Symlinks::Follow => {
                let is_link = entry.file_type().ctx("stat", &path)?.is_symlink();
                fs::metadata(&path).ctx(if is_link { "follow symlink" } else { "stat" }, &path)?
            }
            Symlinks::Refuse => fs::symlink_metadata(&path).ctx("stat", &path)?,
        };
        if meta.is_dir() {
            walk(&path, &meta, &child, symlinks, open, files)?;
        } else if symlinks == Symlinks::Refuse && !meta.is_file() {
            return Err(unstorable(&path, &meta));
        } else {
            files.push(WalkedFile { rel: child, path, meta });
        }
    }
    open.pop();
    Ok(())
}

fn join(rel: &str, name: &OsStr) -> String {
    let name = name.to_string_lossy();
    match rel.is_empty() {
        true => name.into_owned(),
        false => format!("{rel}/{name}"),
    }
}

/// The error for an output that is not a regular file or directory.
pub(crate) fn unstorable(path: &Path, meta: &fs::Metadata) -> CacheError {
    let detail = if meta.is_symlink() {
        let target = fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
        format!(
            "is a symbolic link (to {target}); drover stores what a stage writes, never what a link points at: \
             write or copy the data itself (e.g. `cp -rL SOURCE OUTPUT`)"
        )
    } else if meta.is_dir() {
        "is a directory where a file was expected".to_string()
    } else if meta.is_file() {
        "is a file where a directory was expected".to_string()
    } else {
        "is a special file (a pipe, socket or device); only regular files and directories can be stored".to_string()
    };
    CacheError::Unstorable { path: path.to_path_buf(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn listed(files: &[WalkedFile]) -> Vec<(&str, &Path)> {
        files.iter().map(|f| (f.rel.as_str(), f.path.as_path())).collect()
    }

    /// `root/b.txt`, `root/sub/a.txt` and `elsewhere/c.txt`, linked from `root/one` and
    /// `root/sub/two`, and `root/file_link` leading to `root/b.txt`.
    fn tree(d: &Path) -> (PathBuf, PathBuf) {
        let (root, elsewhere) = (d.join("root"), d.join("elsewhere"));
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(root.join("b.txt"), "b").unwrap();
        fs::write(root.join("sub/a.txt"), "a").unwrap();
        fs::write(elsewhere.join("c.txt"), "c").unwrap();
        symlink(&elsewhere, root.join("one")).unwrap();
        symlink(&elsewhere, root.join("sub/two")).unwrap();
        symlink(root.join("b.txt"), root.join("file_link")).unwrap();
        (root, elsewhere)
    }

    #[test]
    fn follow_walks_through_links_in_name_order_and_lists_a_directory_linked_twice_twice() {
        let d = tempfile::tempdir().unwrap();
        let (root, _) = tree(d.path());
        let files = files_below(&root, Symlinks::Follow).unwrap();
        assert_eq!(
            listed(&files),
            [
                ("b.txt", root.join("b.txt").as_path()),
                ("file_link", root.join("file_link").as_path()),
                ("one/c.txt", root.join("one/c.txt").as_path()),
                ("sub/a.txt", root.join("sub/a.txt").as_path()),
                ("sub/two/c.txt", root.join("sub/two/c.txt").as_path()),
            ]
        );
        // The metadata is what the link leads to: a one-byte regular file.
        assert!(files[1].meta.is_file() && files[1].meta.len() == 1);
    }

    #[test]
    fn refuse_names_the_first_link_in_name_order_and_never_follows_it() {
        let d = tempfile::tempdir().unwrap();
        let (root, elsewhere) = tree(d.path());
        let err = files_below(&root, Symlinks::Refuse).unwrap_err();
        assert!(err.is_stage_fault());
        assert_eq!(
            err.to_string(),
            format!(
                "{}: is a symbolic link (to {}); drover stores what a stage writes, never what a link points at: \
                 write or copy the data itself (e.g. `cp -rL SOURCE OUTPUT`)",
                root.join("file_link").display(),
                root.join("b.txt").display()
            )
        );
        // Without the links, the same tree lists the same names as under `Follow`.
        for link in ["file_link", "one", "sub/two"] {
            fs::remove_file(root.join(link)).unwrap();
        }
        let refused = files_below(&root, Symlinks::Refuse).unwrap();
        assert_eq!(listed(&refused), listed(&files_below(&root, Symlinks::Follow).unwrap()));
        assert_eq!(
            listed(&refused),
            [("b.txt", root.join("b.txt").as_path()), ("sub/a.txt", root.join("sub/a.txt").as_path())]
        );
        // A link as the root itself is refused too.
        symlink(&elsewhere, d.path().join("root_link")).unwrap();
        let err = files_below(&d.path().join("root_link"), Symlinks::Refuse).unwrap_err();
        assert!(matches!(&err, CacheError::Unstorable { path, .. } if path == &d.path().join("root_link")), "{err}");
    }

    #[test]
    fn refuse_refuses_a_special_file() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path and creates a file; nothing else.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = files_below(d.path(), Symlinks::Refuse).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: is a special file (a pipe, socket or device); only regular files and directories can be stored",
                fifo.display()
            )
        );
    }

    #[test]
    fn a_symlink_loop_is_an_error_naming_both_ends() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        symlink("..", root.join("sub/up")).unwrap();
        let err = files_below(&root, Symlinks::Follow).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "symlink loop: {} leads back to {}, a directory that contains it",
                root.join("sub/up").display(),
                root.display()
            )
        );
    }

    #[test]
    fn a_dangling_symlink_is_an_error_that_says_so() {
        let d = tempfile::tempdir().unwrap();
        symlink("nowhere", d.path().join("gone")).unwrap();
        let err = files_below(d.path(), Symlinks::Follow).unwrap_err().to_string();
        assert!(err.starts_with(&format!("follow symlink {}: ", d.path().join("gone").display())), "{err}");
    }
}
