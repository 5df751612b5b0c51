//! The cache's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the store. All of it is an environment failure from the
/// user's point of view (disk full, permissions, a corrupt object), never a bad pipeline.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("corrupt {what} at {path}: {detail}")]
    Corrupt { what: &'static str, path: PathBuf, detail: String },
    #[error("object {0} is not in the store")]
    MissingObject(String),
    /// What a stage left at an output path cannot be stored (a symbolic link, a device, a
    /// socket): the stage's fault, not the environment's.
    #[error("{path}: {detail}")]
    Unstorable { path: PathBuf, detail: String },
    /// A directory a pipeline reads leads, through a symlink, back into itself.
    #[error("symlink loop: {path} leads back to {ancestor}, a directory that contains it")]
    SymlinkLoop { path: PathBuf, ancestor: PathBuf },
}

impl CacheError {
    /// True when the error is the stage's fault (what it wrote), not the machine's.
    pub fn is_stage_fault(&self) -> bool {
        matches!(self, CacheError::Unstorable { .. })
    }
}

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// Attaches the action and path to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| CacheError::Io { action, path: path.to_path_buf(), source })
    }
}
