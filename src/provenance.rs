//! Where and from what a run started, for its record: the host, the git commit of the
//! pipeline's repository, and a digest of its params.
//!
//! The commit is read from the repository's files (HEAD, then the branch's ref, loose or
//! packed), not by running `git`: a run on a node without git, or a nightly entry with a bare
//! PATH, still records it, and a run of a thousand cached stages pays no process spawn.

use std::path::{Path, PathBuf};

use drover_cache::Trigger;
use drover_engine::exec::RunMeta;
use drover_engine::spec::PipelineSpec;

/// The run record's provenance for a run of `spec` started by `trigger`.
pub fn meta(spec: &PipelineSpec, trigger: Trigger) -> RunMeta {
    RunMeta {
        trigger: Some(trigger),
        host: host(),
        git_revision: git_revision(&spec.dir),
        params_digest: Some(drover_cache::hash::params_digest(&spec.params.to_json())),
    }
}

/// This machine's name.
pub fn host() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok().filter(|h| !h.is_empty())
}

/// The commit checked out in the git repository that holds `dir`, if any (40 hex digits).
pub fn git_revision(dir: &Path) -> Option<String> {
    let (git_dir, common) = find_git_dir(dir)?;
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    match head.strip_prefix("ref: ") {
        None => is_commit(head).then(|| head.to_string()),
        Some(reference) => {
            for base in [&git_dir, &common] {
                if let Ok(id) = std::fs::read_to_string(base.join(reference)) {
                    let id = id.trim();
                    return is_commit(id).then(|| id.to_string());
                }
            }
            // Packed refs: `HASH refs/heads/main` lines.
            let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
            packed.lines().find_map(|line| {
                let (id, name) = line.split_once(' ')?;
                (name == reference && is_commit(id)).then(|| id.to_string())
            })
        }
    }
}

fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The repository's git directory and its common directory (they differ in a worktree, whose
/// `.git` is a file naming its own git directory, which names the common one).
fn find_git_dir(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let start = std::fs::canonicalize(dir).ok()?;
    for d in start.ancestors() {
        let dot = d.join(".git");
        if dot.is_dir() {
            return Some((dot.clone(), dot));
        }
        if dot.is_file() {
            let text = std::fs::read_to_string(&dot).ok()?;
            let git_dir = d.join(text.trim().strip_prefix("gitdir: ")?);
            let common = match std::fs::read_to_string(git_dir.join("commondir")) {
                Ok(c) => git_dir.join(c.trim()),
                Err(_) => git_dir.clone(),
            };
            return Some((git_dir, common));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: &str = "0123456789abcdef0123456789abcdef01234567";
    const C2: &str = "89abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_revision_comes_from_head_loose_or_packed_refs_and_worktrees() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        let git = repo.join(".git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        std::fs::create_dir_all(repo.join("sub/deeper")).unwrap();
        assert_eq!(git_revision(&repo.join("sub/deeper")), None, "no HEAD yet");

        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(git.join("packed-refs"), format!("# pack-refs with: peeled\n{C2} refs/heads/main\n")).unwrap();
        assert_eq!(git_revision(&repo.join("sub/deeper")).as_deref(), Some(C2), "packed");
        std::fs::write(git.join("refs/heads/main"), format!("{C1}\n")).unwrap();
        assert_eq!(git_revision(&repo.join("sub")).as_deref(), Some(C1), "a loose ref wins over a packed one");

        // A worktree: `.git` is a file naming its git directory, whose `commondir` leads back.
        let wt_git = git.join("worktrees/wt");
        std::fs::create_dir_all(&wt_git).unwrap();
        std::fs::write(wt_git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(wt_git.join("commondir"), "../..\n").unwrap();
        let wt = d.path().join("wt");
        std::fs::create_dir_all(&wt).unwrap();
        std::fs::write(wt.join(".git"), format!("gitdir: {}\n", wt_git.display())).unwrap();
        assert_eq!(git_revision(&wt).as_deref(), Some(C1));

        // A detached HEAD holds the commit itself.
        std::fs::write(git.join("HEAD"), format!("{C2}\n")).unwrap();
        assert_eq!(git_revision(&repo).as_deref(), Some(C2));
    }
}
