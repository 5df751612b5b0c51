//! The engine's error type for failures that are not problems in the pipeline file.

use std::path::PathBuf;

/// An environment failure while planning or running (exit code 3 in the CLI).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Cache(#[from] drover_cache::CacheError),
    #[error("stage `{stage}`: cannot hash dep `{path}`: {detail}")]
    Dep { stage: String, path: String, detail: String },
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// A directory a stage reads leads, through a symlink, back into itself.
    #[error("symlink loop: {path} leads back to {ancestor}, a directory that contains it")]
    SymlinkLoop { path: PathBuf, ancestor: PathBuf },
    #[error("{0}")]
    Other(String),
}
