//! The remote tier against a real S3-compatible server: SeaweedFS on loopback, started by
//! `tests/support/s3-server.sh start DIR` (whose `export` lines set `DROVER_TEST_S3_*`). In CI
//! (`CI` or `DROVER_REQUIRE_S3` set) these tests fail without it; elsewhere they say they did
//! not run. Each test works under a prefix of its own, so they run in parallel on one bucket.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use drover_cache::{CacheKey, OutputKind, OutputRef, Placed, Provenance, StageRecord};
use drover_remote::{Credentials, Mode, Pushed, Remote, RemoteConfig, RemoteError};
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};

#[path = "../../tests/support/s3_env.rs"]
mod s3_env;

struct Server {
    s3: s3_env::TestS3,
    credentials: Credentials,
}

fn server() -> Option<Server> {
    let s3 = s3_env::test_s3()?;
    let credentials =
        Credentials { access_key_id: s3.key_id.clone(), secret_access_key: s3.secret.clone(), session_token: None };
    Some(Server { s3, credentials })
}

impl Server {
    /// A prefix no other test (or earlier run) uses.
    fn config(&self) -> RemoteConfig {
        RemoteConfig::from_value(&self.s3.fresh_remote("tests")).unwrap()
    }

    async fn connect(&self, config: &RemoteConfig) -> Remote {
        Remote::connect(config.clone(), &self.credentials).await.unwrap()
    }
}

fn record(key: &CacheKey, stage: &str, output: &[u8]) -> StageRecord {
    let hash = drover_cache::hash::bytes(output);
    let outputs =
        BTreeMap::from([("out".to_string(), OutputRef { kind: OutputKind::Blob, hash, size: output.len() as u64 })]);
    StageRecord {
        key: key.clone(),
        stage: stage.to_string(),
        recipe: serde_json::json!({"op": "test"}),
        provenance: Provenance::default(),
        outputs,
        created: 1,
        duration_ms: 2,
    }
}

fn key(seed: &str) -> CacheKey {
    drover_cache::hash::key(seed.as_bytes())
}

#[tokio::test]
async fn a_stage_stored_by_one_machine_is_found_by_another() {
    let Some(s) = server() else { return };
    let config = s.config();
    let (a, b) = (s.connect(&config).await, s.connect(&config).await);
    assert_eq!(a.mode(), &Mode::ReadWrite);
    let output = b"a table's bytes".to_vec();
    let hash = drover_cache::hash::bytes(&output);
    let k = key("stage one");
    assert!(!b.has_object(&hash).await.unwrap());
    assert_eq!(b.get_record(&k).await.unwrap(), None);

    a.put_object(&hash, Bytes::from(output.clone())).await.unwrap();
    let mine = record(&k, "one", &output);
    assert_eq!(a.create_record(&mine).await.unwrap(), Placed::Created);

    assert!(b.has_object(&hash).await.unwrap());
    assert_eq!(b.get_object(&hash).await.unwrap().as_deref(), Some(&output[..]));
    assert_eq!(b.get_record(&k).await.unwrap(), Some(mine.clone()));
    // B computed the key too (a stage that is not deterministic): it adopts A's record.
    let theirs = record(&k, "one-again", b"other bytes");
    assert_eq!(b.create_record(&theirs).await.unwrap(), Placed::Adopted(mine));
    // An object uploaded twice is no error (content-addressed: same name, same bytes).
    b.put_object(&hash, Bytes::from(output)).await.unwrap();
}

#[tokio::test]
async fn eight_racing_creates_of_one_key_leave_exactly_one_record() {
    let Some(s) = server() else { return };
    let config = s.config();
    let k = key("raced");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let remote = s.connect(&config).await;
        let rec = record(&k, &format!("racer-{i}"), format!("output {i}").as_bytes());
        tasks.spawn(async move { (rec.clone(), remote.create_record(&rec).await.unwrap()) });
    }
    let results = tasks.join_all().await;
    let winners: Vec<&StageRecord> =
        results.iter().filter(|(_, placed)| *placed == Placed::Created).map(|(rec, _)| rec).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = winners[0].clone();
    for (_, placed) in &results {
        if let Placed::Adopted(adopted) = placed {
            assert_eq!(adopted, &winner);
        }
    }
    let stored = s.connect(&config).await.get_record(&k).await.unwrap();
    assert_eq!(stored, Some(winner));
}

/// A direct handle on the bucket, to plant what a broken or malicious writer would leave.
fn raw_store(s: &Server) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&s.s3.bucket)
        .with_region("us-east-1")
        .with_endpoint(&s.s3.endpoint)
        .with_allow_http(true)
        .with_access_key_id(&s.credentials.access_key_id)
        .with_secret_access_key(&s.credentials.secret_access_key)
        .build()
        .unwrap()
}

#[tokio::test]
async fn corrupt_remote_objects_and_records_are_refused() {
    let Some(s) = server() else { return };
    let config = s.config();
    let remote = s.connect(&config).await;
    let good = b"the real bytes".to_vec();
    let hash = drover_cache::hash::bytes(&good);
    let raw = raw_store(&s);
    let object_at = format!("{}/objects/{}/{hash}", config.prefix, &hash.as_str()[..2]);
    raw.put(&Path::from(object_at.as_str()), PutPayload::from_static(b"tampered")).await.unwrap();
    let e = remote.get_object(&hash).await.unwrap_err();
    assert!(matches!(e, RemoteError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("remote object {object_at} is corrupt: its 8 bytes hash to ")), "{e}");

    let k = key("planted");
    let record_at = format!("{}/records/{}/{k}.json", config.prefix, &k.as_str()[..2]);
    let other = record(&key("another key"), "x", &good);
    raw.put(&Path::from(record_at.as_str()), PutPayload::from(serde_json::to_vec(&other).unwrap())).await.unwrap();
    let e = remote.get_record(&k).await.unwrap_err().to_string();
    assert_eq!(e, format!("remote record {record_at} is corrupt: it is the record of key {}", other.key));

    // Bytes that are not what the hash names are never uploaded.
    let e = remote.put_object(&hash, Bytes::from_static(b"not it")).await.unwrap_err().to_string();
    assert!(e.contains("is corrupt: its bytes hash to "), "{e}");
    assert_eq!(remote.get_object(&drover_cache::hash::bytes(b"not it")).await.unwrap(), None);
}

#[tokio::test]
async fn wrong_credentials_fail_without_showing_the_secret() {
    let Some(s) = server() else { return };
    let secret = "wrong-secret-do-not-print";
    let creds = Credentials { secret_access_key: secret.to_string(), ..s.credentials.clone() };
    let e = Remote::connect(s.config(), &creds).await.expect_err("a wrong secret is refused");
    let (shown, debug) = (e.to_string(), format!("{e:?}"));
    assert!(shown.starts_with("remote probe "), "{shown}");
    assert!(!shown.contains(secret) && !debug.contains(secret), "{shown}\n{debug}");
    assert!(!shown.contains(&s.credentials.secret_access_key), "{shown}");
}

/// An object store that drops the condition from every create, as some S3-compatible servers
/// do: a second create of one key overwrites the first.
#[derive(Debug)]
struct IgnoresConditions(object_store::aws::AmazonS3);

impl std::fmt::Display for IgnoresConditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IgnoresConditions({})", self.0)
    }
}

#[async_trait]
impl ObjectStore for IgnoresConditions {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let opts = PutOptions { mode: PutMode::Overwrite, ..opts };
        self.0.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }
    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.0.delete(location).await
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.0.copy(from, to).await
    }
    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.0.copy_if_not_exists(from, to).await
    }
}

#[tokio::test]
async fn a_server_that_ignores_conditional_creates_makes_the_remote_read_only() {
    let Some(s) = server() else { return };
    let config = s.config();
    let remote = Remote::over(config.clone(), Arc::new(IgnoresConditions(raw_store(&s)))).await.unwrap();
    let Mode::ReadOnly(reason) = remote.mode() else { panic!("{:?}", remote.mode()) };
    assert!(reason.starts_with("the server does not honour conditional creates"), "{reason}");
    let output = b"bytes".to_vec();
    let e = remote.create_record(&record(&key("k"), "s", &output)).await.unwrap_err().to_string();
    assert_eq!(e, format!("remote {} is read-only: {reason}", config.url));
    let hash = drover_cache::hash::bytes(&output);
    let e = remote.put_object(&hash, Bytes::from(output)).await.unwrap_err().to_string();
    assert!(e.starts_with(&format!("remote {} is read-only: ", config.url)), "{e}");
    // Reading still works.
    assert_eq!(remote.get_record(&key("k")).await.unwrap(), None);
}

/// A local store with one stage done: a blob output and a dir output of two files.
fn store_with_a_stage(root: &std::path::Path, k: &CacheKey) -> (drover_cache::Store, StageRecord) {
    let store = drover_cache::Store::open_private(&root.join(".drover")).unwrap();
    let blob = store.put_bytes(b"metrics: 0.93").unwrap();
    let dir = root.join("model");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("weights.bin"), vec![7u8; 100_000]).unwrap();
    std::fs::write(dir.join("sub/config.json"), b"{}").unwrap();
    let (manifest, size) = store.put_dir(&dir).unwrap();
    let rec = StageRecord {
        outputs: BTreeMap::from([
            ("metrics".to_string(), OutputRef { kind: OutputKind::Blob, hash: blob, size: 13 }),
            ("model".to_string(), OutputRef { kind: OutputKind::Dir, hash: manifest, size }),
        ]),
        ..record(k, "train", b"")
    };
    assert_eq!(store.create_record(&rec).unwrap(), Placed::Created);
    (store, rec)
}

#[tokio::test]
async fn a_stage_pushed_by_one_store_is_pulled_whole_by_another() {
    let Some(s) = server() else { return };
    let config = s.config();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let k = key("train stage");
    let (a, rec) = store_with_a_stage(a_dir.path(), &k);
    let remote = s.connect(&config).await;
    // Four objects: the blob, the manifest and its two files.
    let manifest_size = std::fs::metadata(a.object_path(&rec.outputs["model"].hash)).unwrap().len();
    let sent = Pushed::Sent { objects: 4, bytes: 13 + 100_002 + manifest_size };
    assert_eq!(remote.push_key(&a, &k).await.unwrap(), sent);
    assert_eq!(remote.push_key(&a, &k).await.unwrap(), Pushed::AlreadyThere);
    assert_eq!(remote.push_key(&a, &key("never run")).await.unwrap(), Pushed::NotLocal);

    let b = drover_cache::Store::open_private(&b_dir.path().join(".drover")).unwrap();
    let other = s.connect(&config).await;
    assert_eq!(other.pull_key(&b, &key("never run")).await.unwrap(), None);
    let pulled = other.pull_key(&b, &k).await.unwrap().expect("the remote has the key");
    assert_eq!((pulled.objects, pulled.placed), (4, Placed::Created));
    assert_eq!(b.get_record(&k), Some(rec.clone()));
    let dest = b_dir.path().join("restored");
    b.materialize_dir(&rec.outputs["model"].hash, &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("weights.bin")).unwrap(), vec![7u8; 100_000]);
    assert_eq!(std::fs::read(dest.join("sub/config.json")).unwrap(), b"{}");
    // Pulling again downloads nothing.
    let again = other.pull_key(&b, &k).await.unwrap().unwrap();
    assert_eq!((again.objects, again.bytes), (0, 0));
}

/// Language-model responses one machine kept are answered on another: its run's new entries go
/// up as one pack (one request, however many), and the other machine reads each pack once.
#[tokio::test]
async fn memo_entries_go_up_as_one_pack_and_are_read_once_by_another_store() {
    let Some(s) = server() else { return };
    let config = s.config();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = drover_cache::Store::open_private(&a_dir.path().join(".drover")).unwrap();
    let b = drover_cache::Store::open_private(&b_dir.path().join(".drover")).unwrap();
    let keys: Vec<String> = (0..50).map(|i| key(&format!("request {i}")).as_str().to_string()).collect();
    for (i, k) in keys.iter().enumerate() {
        a.memo().put(k, format!("response {i}").as_bytes()).unwrap();
    }
    let remote = s.connect(&config).await;
    assert_eq!(remote.push_memo(&a).await.unwrap(), drover_remote::MemoSync { packs: 1, entries: 50 });
    // Nothing new: nothing sent.
    assert_eq!(remote.push_memo(&a).await.unwrap(), drover_remote::MemoSync::default());
    // B had an answer of its own to one request: it keeps it (the first answer stays).
    b.memo().put(&keys[0], b"b's own answer").unwrap();
    let other = s.connect(&config).await;
    assert_eq!(other.pull_memo(&b).await.unwrap(), drover_remote::MemoSync { packs: 1, entries: 49 });
    assert_eq!(b.memo().get(&keys[7]).as_deref(), Some(&b"response 7"[..]));
    assert_eq!(b.memo().get(&keys[0]).as_deref(), Some(&b"b's own answer"[..]));
    assert_eq!(other.pull_memo(&b).await.unwrap(), drover_remote::MemoSync::default());
    // What B adds later goes up alone; what it read is not sent back.
    b.memo().put(key("request 50").as_str(), b"response 50").unwrap();
    assert_eq!(other.push_memo(&b).await.unwrap(), drover_remote::MemoSync { packs: 1, entries: 1 });
    assert_eq!(remote.pull_memo(&a).await.unwrap(), drover_remote::MemoSync { packs: 1, entries: 1 });
}

/// A memo pack whose bytes are not what its name says is refused, and nothing of it is kept.
#[tokio::test]
async fn a_corrupt_memo_pack_is_refused() {
    let Some(s) = server() else { return };
    let config = s.config();
    let dir = tempfile::tempdir().unwrap();
    let store = drover_cache::Store::open_private(&dir.path().join(".drover")).unwrap();
    let raw = raw_store(&s);
    let name = format!("{}.pack", blake3::hash(b"something else").to_hex());
    let body = format!("{}\n5\nforged", key("q").as_str());
    let len = body.len();
    raw.put(&Path::from(format!("{}/memo/{name}", config.prefix)), PutPayload::from(body.into_bytes())).await.unwrap();
    let remote = s.connect(&config).await;
    let err = remote.pull_memo(&store).await.unwrap_err().to_string();
    assert!(err.starts_with(&format!("remote memo pack {}/memo/{name} is corrupt: ", config.prefix)), "{err}");
    assert!(err.ends_with(&format!("its {len} bytes do not hash to its name")), "{err}");
    assert_eq!(store.memo().get(key("q").as_str()), None);
}

/// A local store whose one stage made a blob of `size` bytes (a pattern, not zeros).
fn store_with_a_blob(root: &std::path::Path, k: &CacheKey, size: usize) -> (drover_cache::Store, StageRecord) {
    let store = drover_cache::Store::open_private(&root.join(".drover")).unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let hash = store.put_bytes(&data).unwrap();
    let outputs = BTreeMap::from([("out".to_string(), OutputRef { kind: OutputKind::Blob, hash, size: size as u64 })]);
    let rec = StageRecord { outputs, ..record(k, "big", b"") };
    assert_eq!(store.create_record(&rec).unwrap(), Placed::Created);
    (store, rec)
}

/// An object past `STREAM_FROM` goes up in parts and comes down as a stream, whole.
#[tokio::test]
async fn a_large_object_goes_up_in_parts_and_comes_down_whole() {
    let Some(s) = server() else { return };
    let config = s.config();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let k = key("large");
    let size = drover_remote::STREAM_FROM as usize + 4097;
    let (a, rec) = store_with_a_blob(a_dir.path(), &k, size);
    let remote = s.connect(&config).await;
    assert_eq!(remote.push_key(&a, &k).await.unwrap(), Pushed::Sent { objects: 1, bytes: size as u64 });
    let b = drover_cache::Store::open_private(&b_dir.path().join(".drover")).unwrap();
    let pulled = remote.pull_key(&b, &k).await.unwrap().unwrap();
    assert_eq!((pulled.objects, pulled.bytes), (1, size as u64));
    let hash = &rec.outputs["out"].hash;
    assert_eq!(drover_cache::hash::file(&b.object_path(hash)).unwrap(), *hash);
    assert_eq!(b.cached_outputs(&k), Some(rec.outputs.clone()));
}

/// Bytes that rotted in the local store are never sent: the upload (in parts or whole) is
/// refused before it completes, and the remote has neither the object nor the record.
#[tokio::test]
async fn rotten_local_bytes_are_never_pushed() {
    let Some(s) = server() else { return };
    let config = s.config();
    let remote = s.connect(&config).await;
    for size in [1000, drover_remote::STREAM_FROM as usize + 1] {
        let dir = tempfile::tempdir().unwrap();
        let k = key(&format!("rotten {size}"));
        let (store, rec) = store_with_a_blob(dir.path(), &k, size);
        let path = store.object_path(&rec.outputs["out"].hash);
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&path, perms).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[size / 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = remote.push_key(&store, &k).await.unwrap_err().to_string();
        assert!(err.starts_with("remote upload of object "), "{err}");
        assert!(err.contains(" is corrupt: "), "{err}");
        assert!(!remote.has_object(&rec.outputs["out"].hash).await.unwrap(), "size {size}");
        assert_eq!(remote.get_record(&k).await.unwrap(), None);
    }
}

/// A push killed after its objects went up and before its record: the objects are there and
/// no record names them; the next push sends no object again and creates the record.
#[tokio::test]
async fn a_push_stopped_between_objects_and_record_is_finished_by_the_next() {
    let Some(s) = server() else { return };
    let config = s.config();
    let dir = tempfile::tempdir().unwrap();
    let k = key("half pushed");
    let (store, rec) = store_with_a_blob(dir.path(), &k, 5000);
    let remote = s.connect(&config).await;
    let hash = &rec.outputs["out"].hash;
    remote.put_object(hash, Bytes::from(std::fs::read(store.object_path(hash)).unwrap())).await.unwrap();
    assert_eq!(remote.get_record(&k).await.unwrap(), None);
    let other = tempfile::tempdir().unwrap();
    let b = drover_cache::Store::open_private(&other.path().join(".drover")).unwrap();
    assert_eq!(remote.pull_key(&b, &k).await.unwrap(), None, "an object without its record is no answer");
    assert_eq!(remote.push_key(&store, &k).await.unwrap(), Pushed::Sent { objects: 0, bytes: 0 });
    assert_eq!(remote.get_record(&k).await.unwrap(), Some(rec));
}
