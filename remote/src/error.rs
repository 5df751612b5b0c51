//! The remote tier's error type.

/// What can go wrong with a remote. Messages name the bucket and key, never a credential:
/// they are printed, and kept in run logs.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The `remote:` setting (or `--remote`, `DROVER_REMOTE`) is malformed.
    #[error("remote {value:?}: {detail}\n  hint: {hint}")]
    Config { value: String, detail: String, hint: &'static str },
    /// No usable credentials, or a malformed credentials file.
    #[error("remote credentials: {detail}\n  hint: {hint}")]
    Credentials { detail: String, hint: &'static str },
    /// A request failed after object_store's retries (unreachable, refused, denied).
    #[error("remote {action} {location}: {source}")]
    Request { action: &'static str, location: String, source: object_store::Error },
    /// What the remote holds does not match its name (a corrupt or tampered object).
    #[error("remote {what} {location} is corrupt: {detail}")]
    Corrupt { what: &'static str, location: String, detail: String },
    /// The local store failed while pushing from it or pulling into it.
    #[error("local store: {0}")]
    Local(#[from] drover_cache::CacheError),
    /// A write to a remote that is in read-only mode.
    #[error("remote {url} is read-only: {reason}")]
    ReadOnly { url: String, reason: String },
}

pub type Result<T, E = RemoteError> = std::result::Result<T, E>;
