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
