//! Files a pipeline reads: where a path written in a pipeline leads, the name a `deps:` entry
//! has in a key, and the files below a directory that a stage reads.
//!
//! One policy for every read (`deps:`, `read_table`, `read_model`, `serve: { gguf }`, an op's
//! prompt or config file): a path is relative to the pipeline's directory or absolute and may
//! lead anywhere (datasets live outside projects, and a `command` can read anything anyway);
//! symlinks are followed; what enters a key is the content read. Writes are the store's
//! business, never a pipeline's.

use std::path::{Component, Path, PathBuf};

use drover_cache::walk::{self, Symlinks};

use crate::error::EngineError;

/// Where a path written in a pipeline leads: against the pipeline's directory, unless absolute.
pub fn resolve(pipeline_dir: &Path, written: impl AsRef<Path>) -> PathBuf {
    pipeline_dir.join(written)
}

/// The name a `deps:` entry has in the key: the path as written, normalised lexically (`.` and
/// `name/..` dropped, `/` between parts). Inside the pipeline's directory that is the name keys
/// have always used (`./scripts/a.sh` is `scripts/a.sh`); a path that climbs out keeps its
/// leading `..` (`../shared/a.txt`), and an absolute one stays absolute (`/data/a.csv`).
///
/// `None` when the path is the pipeline's directory itself (`.`, `sub/..`): that directory
/// holds the store, which changes with every run.
pub fn dep_name(written: &str) -> Option<String> {
    let mut absolute = false;
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(written).components() {
        match c {
            Component::RootDir | Component::Prefix(_) => absolute = true,
            Component::CurDir => {}
            Component::ParentDir => match parts.last() {
                Some(&"..") => parts.push(".."),
                Some(_) => {
                    parts.pop();
                }
                // `/..` is `/`; a relative path climbs out.
                None if absolute => {}
                None => parts.push(".."),
            },
            Component::Normal(s) => parts.push(s.to_str().expect("a &str's components are UTF-8")),
        }
    }
    match (absolute, parts.is_empty()) {
        (true, _) => Some(format!("/{}", parts.join("/"))),
        (false, true) => None,
        (false, false) => Some(parts.join("/")),
    }
}

/// Every file below directory `root`, as (its path relative to `root`, the path to read it at),
/// each directory's entries in name order. Symlinks are followed: a link to a directory is
/// walked as a directory, a link to a file is read as that file. A link back to a directory
/// that contains it (a loop) is an error naming both ends. This is the store's one walk
/// ([`drover_cache::walk`]) under [`Symlinks::Follow`]; outputs are walked by the same code
/// under [`Symlinks::Refuse`], so a directory lists the same names as a dep and as an output.
pub fn files_below(root: &Path) -> Result<Vec<(String, PathBuf)>, EngineError> {
    let files = walk::files_below(root, Symlinks::Follow)?;
    Ok(files.into_iter().map(|f| (f.rel, f.path)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn dep_names_are_normalised_lexically() {
        // Inside the pipeline's directory: the names keys have always used.
        assert_eq!(dep_name("scripts/a.sh").as_deref(), Some("scripts/a.sh"));
        assert_eq!(dep_name("./scripts//a.sh").as_deref(), Some("scripts/a.sh"));
        assert_eq!(dep_name("sub/../data.csv").as_deref(), Some("data.csv"));
        assert_eq!(dep_name("data/").as_deref(), Some("data"));
        // Outside: the climb is kept.
        assert_eq!(dep_name("../shared.txt").as_deref(), Some("../shared.txt"));
        assert_eq!(dep_name("a/../../x/./y").as_deref(), Some("../x/y"));
        assert_eq!(dep_name("../../x").as_deref(), Some("../../x"));
        // Absolute.
        assert_eq!(dep_name("/data/./sets/../a.csv").as_deref(), Some("/data/a.csv"));
        assert_eq!(dep_name("/../etc").as_deref(), Some("/etc"));
        // The pipeline's directory itself.
        assert_eq!(dep_name("."), None);
        assert_eq!(dep_name("sub/.."), None);
    }

    fn sorted(mut files: Vec<(String, PathBuf)>) -> Vec<(String, PathBuf)> {
        files.sort();
        files
    }

    #[test]
    fn files_below_follows_symlinks_and_lists_a_directory_linked_twice_twice() {
        let d = tempfile::tempdir().unwrap();
        let (root, elsewhere) = (d.path().join("root"), d.path().join("elsewhere"));
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(root.join("sub/a.txt"), "a").unwrap();
        fs::write(elsewhere.join("b.txt"), "b").unwrap();
        symlink(&elsewhere, root.join("one")).unwrap();
        symlink(&elsewhere, root.join("sub/two")).unwrap();
        symlink(root.join("sub/a.txt"), root.join("file_link")).unwrap();
        let got = sorted(files_below(&root).unwrap());
        let want = vec![
            ("file_link".to_string(), root.join("file_link")),
            ("one/b.txt".to_string(), root.join("one/b.txt")),
            ("sub/a.txt".to_string(), root.join("sub/a.txt")),
            ("sub/two/b.txt".to_string(), root.join("sub/two/b.txt")),
        ];
        assert_eq!(got, want);
    }
}
