//! The engine's error type for failures that are not problems in the pipeline file.

/// An environment failure while planning or running (exit code 3 in the CLI).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Cache(#[from] drover_cache::CacheError),
    #[error("stage `{stage}`: cannot hash dep `{path}`: {detail}")]
    Dep { stage: String, path: String, detail: String },
    #[error("{0}")]
    Other(String),
}
