//! A connected remote: the probe of conditional creates, objects and records.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drover_cache::{CacheKey, ObjectHash, Placed, StageRecord};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectMeta, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
};

use crate::config::RemoteConfig;
use crate::credentials::Credentials;
use crate::error::{RemoteError, Result};

/// Whether this process may write to the remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    ReadWrite,
    /// Reads only; the reason is said once to the user (a server that ignores conditional
    /// creates, credentials that may not write).
    ReadOnly(String),
}

/// A remote tier, probed and ready.
pub struct Remote {
    config: RemoteConfig,
    store: Arc<dyn ObjectStore>,
    mode: Mode,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.config.url).field("mode", &self.mode).finish()
    }
}

/// Retries of 5xx answers and dropped connections (object_store's backoff), bounded so that an
/// unreachable remote costs a run seconds, not object_store's default three minutes.
fn retry() -> RetryConfig {
    RetryConfig { backoff: BackoffConfig::default(), max_retries: 4, retry_timeout: Duration::from_secs(20) }
}

/// How many times [`Remote::create_record`] looks again when the winner's record vanished
/// between our failed create and our read (a `gc` on another machine).
const CREATE_PASSES: usize = 4;

impl Remote {
    /// Connects to an S3 or S3-compatible remote with these credentials and probes it, for
    /// writing ([`Remote::over`]).
    pub async fn connect(config: RemoteConfig, credentials: &Credentials) -> Result<Remote> {
        let mut remote = Remote::reader(config, credentials)?;
        remote.mode = remote.probe().await?;
        Ok(remote)
    }

    /// Connects for reading only (`drover plan`, `drover pull`): no probe, so nothing is
    /// written; its first request finds out whether the remote can be reached.
    pub fn reader(config: RemoteConfig, credentials: &Credentials) -> Result<Remote> {
        let region = config
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string());
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_allow_http(config.allow_http)
            // `If-None-Match: *` on creates (object_store's default in 0.12, said here since
            // records depend on it).
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(retry())
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(300))
                    .with_allow_http(config.allow_http),
            );
        if let Some(token) = &credentials.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|source| RemoteError::Request {
            action: "configure",
            location: config.url.clone(),
            source,
        })?;
        let mode = Mode::ReadOnly("connected for reading only".into());
        Ok(Remote { config, store: Arc::new(store), mode })
    }

    /// A remote over any object store (tests give one that misbehaves on purpose), probed:
    /// two creates of one fresh key must give one success and one "already exists", else the
    /// remote is read-only. Credentials that may not write make it read-only too. A remote
    /// that cannot be reached at all is an error.
    pub async fn over(config: RemoteConfig, store: Arc<dyn ObjectStore>) -> Result<Remote> {
        let mut remote = Remote { config, store, mode: Mode::ReadWrite };
        remote.mode = remote.probe().await?;
        Ok(remote)
    }

    async fn probe(&self) -> Result<Mode> {
        let nonce: u64 = rand::random();
        let location = self.path(&format!("probe/{nonce:016x}"));
        let create = |body: &'static [u8]| {
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            self.store.put_opts(&location, PutPayload::from_static(body), opts)
        };
        // A read first: credentials that cannot even read (a wrong secret) are an error, not a
        // read-only remote.
        match self.store.head(&location).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => {
                return Err(RemoteError::Request { action: "probe", location: location.to_string(), source });
            }
        }
        match create(b"first").await {
            Ok(_) => {}
            Err(e @ (object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })) => {
                return Ok(Mode::ReadOnly(format!("these credentials may not write ({e})")));
            }
            Err(source) => {
                return Err(RemoteError::Request { action: "probe", location: location.to_string(), source });
            }
        }
        let mode = match create(b"second").await {
            Err(object_store::Error::AlreadyExists { .. }) => Mode::ReadWrite,
            Ok(_) | Err(object_store::Error::NotImplemented) => Mode::ReadOnly(
                "the server does not honour conditional creates (a second `If-None-Match: *` PUT of one key \
                 succeeded), so two machines could both store a record for one key; only reading from it"
                    .to_string(),
            ),
            Err(source) => {
                return Err(RemoteError::Request { action: "probe", location: location.to_string(), source });
            }
        };
        // A leftover probe object is harmless (gc removes it); its removal may be denied.
        let _ = self.store.delete(&location).await;
        Ok(mode)
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn path(&self, rest: &str) -> Path {
        Path::from(self.config.key(rest))
    }

    pub(crate) fn object_path(&self, hash: &ObjectHash) -> Path {
        let h = hash.as_str();
        self.path(&format!("objects/{}/{h}", &h[..2]))
    }

    fn record_path(&self, key: &CacheKey) -> Path {
        let k = key.as_str();
        self.path(&format!("records/{}/{k}.json", &k[..2]))
    }

    pub(crate) fn writable(&self) -> Result<()> {
        match &self.mode {
            Mode::ReadWrite => Ok(()),
            Mode::ReadOnly(reason) => {
                Err(RemoteError::ReadOnly { url: self.config.url.clone(), reason: reason.clone() })
            }
        }
    }

    /// Everything under `<prefix>/<under>` (one listing, paged by object_store).
    pub(crate) async fn list_all(&self, under: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = Path::from(self.config().key(under));
        self.store().list(Some(&prefix)).try_collect().await.map_err(|source| RemoteError::Request {
            action: "list",
            location: prefix.to_string(),
            source,
        })
    }

    /// True when something is at `location` (a HEAD request; not read or checked).
    async fn exists(&self, location: &Path) -> Result<bool> {
        match self.store.head(location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(RemoteError::Request { action: "look up", location: location.to_string(), source }),
        }
    }

    /// True when the remote holds the object (a HEAD request).
    pub async fn has_object(&self, hash: &ObjectHash) -> Result<bool> {
        self.exists(&self.object_path(hash)).await
    }

    /// Uploads an object under its hash, unless the remote has it already (a create, so one
    /// request either way: no HEAD first); true when this upload created it. Bytes that are
    /// not what `hash` names are refused before anything is sent.
    pub async fn put_object(&self, hash: &ObjectHash, bytes: Bytes) -> Result<bool> {
        self.writable()?;
        let location = self.object_path(hash);
        let actual = drover_cache::hash::bytes(&bytes);
        if &actual != hash {
            return Err(RemoteError::Corrupt {
                what: "upload of object",
                location: location.to_string(),
                detail: format!("its bytes hash to {actual}"),
            });
        }
        // Create-only: an object already there has these bytes (its name says so), and a
        // PUT over it would cost a full upload for nothing.
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&location, PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(source) => Err(RemoteError::Request { action: "upload", location: location.to_string(), source }),
        }
    }

    /// The bytes at `location`; `None` when there is nothing there.
    pub(crate) async fn fetch_bytes(&self, action: &'static str, location: &Path) -> Result<Option<Bytes>> {
        let fail = |source| RemoteError::Request { action, location: location.to_string(), source };
        match self.store.get(location).await {
            Ok(got) => got.bytes().await.map(Some).map_err(fail),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(fail(source)),
        }
    }

    /// Downloads an object, verified against its name; `None` when the remote lacks it.
    pub async fn get_object(&self, hash: &ObjectHash) -> Result<Option<Bytes>> {
        let location = self.object_path(hash);
        let Some(bytes) = self.fetch_bytes("download", &location).await? else { return Ok(None) };
        let actual = drover_cache::hash::bytes(&bytes);
        if &actual != hash {
            return Err(RemoteError::Corrupt {
                what: "object",
                location: location.to_string(),
                detail: format!("its {} bytes hash to {actual}, not to its name", bytes.len()),
            });
        }
        Ok(Some(bytes))
    }

    /// True when the remote has a record of the key (a HEAD request; not read or checked).
    pub async fn has_record(&self, key: &CacheKey) -> Result<bool> {
        self.exists(&self.record_path(key)).await
    }

    /// The key's record on the remote, if any. One that does not parse, or names another key,
    /// is an error, never an answer.
    pub async fn get_record(&self, key: &CacheKey) -> Result<Option<StageRecord>> {
        let location = self.record_path(key);
        let Some(bytes) = self.fetch_bytes("read record", &location).await? else { return Ok(None) };
        let corrupt = |detail: String| RemoteError::Corrupt { what: "record", location: location.to_string(), detail };
        let record: StageRecord = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if &record.key != key {
            return Err(corrupt(format!("it is the record of key {}", record.key)));
        }
        Ok(Some(record))
    }

    /// Creates the key's record unless another machine did first (`If-None-Match: *`; a 412,
    /// or the 409 some servers answer, means someone did): then theirs is returned to adopt,
    /// as [`drover_cache::Store::create_record`] does locally. Call only after every object
    /// the record names is on the remote.
    pub async fn create_record(&self, record: &StageRecord) -> Result<Placed> {
        self.writable()?;
        let location = self.record_path(&record.key);
        let bytes = Bytes::from(serde_json::to_vec(record).expect("records serialise"));
        for _ in 0..CREATE_PASSES {
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            match self.store.put_opts(&location, PutPayload::from(bytes.clone()), opts).await {
                Ok(_) => return Ok(Placed::Created),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(source) => {
                    return Err(RemoteError::Request {
                        action: "create record",
                        location: location.to_string(),
                        source,
                    });
                }
            }
            if let Some(winner) = self.get_record(&record.key).await? {
                return Ok(Placed::Adopted(winner));
            }
        }
        Err(RemoteError::Corrupt {
            what: "record",
            location: location.to_string(),
            detail: "it exists when created and is gone when read, again and again".into(),
        })
    }
}
