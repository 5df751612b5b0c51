//! `remote:`: the team cache in S3 or an S3-compatible server (the `drover-remote` crate), and
//! `drover push` / `drover pull`. The binary owns this top-level section (a `SectionDecl`,
//! checked with the file's other problems); `--remote` or `DROVER_REMOTE` replaces it.
//!
//! ```yaml
//! remote: { url: s3://team-cache/drover/my-project }
//! # or, for an S3-compatible server:
//! remote: { url: s3://drover/proj, endpoint: http://10.0.0.5:8333, allow_http: true }
//! ```
//!
//! The bare URL (`remote: s3://team-cache/drover/my-project`) is the short form for AWS itself;
//! `--remote` takes either form (the mapping as JSON).
//!
//! Credentials come from the `AWS_*` variables or `~/.aws/credentials` when a command needs
//! the remote; they are never written anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use drover_cache::{CacheKey, OutputRef, Store};
use drover_engine::exec::Tier;
use drover_engine::op::BoxFuture;
use drover_engine::plan::Plan;
use drover_engine::spec::PipelineSpec;
use drover_engine::status::{Action, StageStatus, plan_status};
use drover_engine::{OpRegistry, SectionAt, SectionDecl, SectionProblem};
use drover_remote::{Credentials, Mode, Pushed, Remote, RemoteConfig, RemoteError};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::Failure;
use crate::cli::SelectArgs;
use crate::commands::{env, load, open_store, pipeline_file, selection};

/// The section's name.
pub const SECTION: &str = "remote";

/// The section as the engine carries it.
pub fn section() -> SectionDecl {
    let mapping = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["url"],
        "properties": {
            "url": {"type": "string", "description": "s3://BUCKET/PREFIX"},
            "endpoint": {"type": "string", "description": "an S3-compatible server (http://HOST:PORT); default: AWS"},
            "region": {"type": "string", "description": "default: AWS_REGION, else us-east-1"},
            "path_style": {"type": "boolean", "description": "BUCKET in the path, not the host name (default: true with an endpoint)"},
            "allow_http": {"type": "boolean", "description": "allow a plain-HTTP endpoint"},
        },
    });
    SectionDecl {
        name: SECTION,
        holds: "`s3://BUCKET/PREFIX`, or a mapping with `url:` and the server's settings",
        example: "remote: { url: s3://team-cache/drover/my-project }",
        schema: json!({
            "description": "the team cache: stages someone already computed are fetched from it; `drover push` fills it",
            "anyOf": [{"type": "string", "description": "s3://BUCKET/PREFIX (AWS)"}, mapping],
        }),
        env: None,
        stage_schema: None,
        check: Some(check),
        scalar: true,
    }
}

fn check(value: &Value, _at: SectionAt) -> Vec<SectionProblem> {
    match RemoteConfig::from_value(value) {
        Ok(_) => Vec::new(),
        Err(RemoteError::Config { detail, hint, .. }) => vec![SectionProblem::new(&[], detail).help(hint)],
        Err(e) => vec![SectionProblem::new(&[], e.to_string())],
    }
}

/// The remote to use: `--remote`/`DROVER_REMOTE` (a URL, or the mapping as JSON), else the
/// pipeline's `remote:`; `None` when neither names one.
pub fn config(flag: &Option<String>, spec: &PipelineSpec) -> Result<Option<RemoteConfig>, Failure> {
    // `--remote` alone names no remote: the environment's or the file's.
    let named = flag.clone().filter(|f| !f.trim().is_empty()).or_else(|| std::env::var("DROVER_REMOTE").ok());
    let parsed = match named.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
        Some(text) if text.starts_with('{') => match serde_json::from_str::<Value>(text) {
            Ok(value) => RemoteConfig::from_value(&value),
            Err(e) => {
                return Err(Failure::User(miette::miette!(
                    help = "pass `--remote s3://BUCKET/PREFIX`, or the mapping as JSON",
                    "--remote: not JSON: {e}"
                )));
            }
        },
        Some(url) => RemoteConfig::parse_url(url),
        None => match spec.sections.get(SECTION) {
            Some(node) => RemoteConfig::from_value(&node.to_json()),
            None => return Ok(None),
        },
    };
    parsed.map(Some).map_err(|e| Failure::User(miette::miette!("{e}")))
}

/// A command that needs a remote found none (exit 2), with how to name one.
pub fn no_remote(message: String) -> Failure {
    Failure::User(miette::miette!(
        help = "add `remote: { url: s3://BUCKET/PREFIX }` to the pipeline, or pass `--remote s3://BUCKET/PREFIX` \
                (or set DROVER_REMOTE)",
        "{message}"
    ))
}

/// Connects without writing anything, for reading: `plan`, `pull`.
fn reader(config: RemoteConfig) -> Result<Remote, Failure> {
    let credentials = Credentials::from_env().map_err(env)?;
    Remote::reader(config, &credentials).map_err(env)
}

/// Connects and probes; says once when the remote is read-only.
async fn connect(config: RemoteConfig) -> Result<Remote, Failure> {
    let credentials = Credentials::from_env().map_err(env)?;
    let remote = Remote::connect(config, &credentials).await.map_err(env)?;
    if let Mode::ReadOnly(reason) = remote.mode() {
        eprintln!("note: remote {} is read-only: {reason}", remote.config().url);
    }
    Ok(remote)
}

/// The pipeline, its selected stages, its store and its remote, for `push` and `pull`.
fn setup(
    ops: &OpRegistry,
    store_override: &Option<PathBuf>,
    remote_flag: &Option<String>,
    select: &SelectArgs,
) -> Result<(Plan, BTreeSet<usize>, Store, RemoteConfig), Failure> {
    let pargs = select.file.resolved();
    let (spec, plan) = load(ops, &pargs)?;
    let (selected, _) = selection(&plan, select)?;
    let store = open_store(store_override, &pipeline_file(&pargs))?;
    let Some(config) = config(remote_flag, &spec)? else {
        return Err(no_remote(format!("{}: no remote configured", plan.file.display())));
    };
    Ok((plan, selected, store, config))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(env)
}

/// What a push or a pull moved.
#[derive(Default)]
struct Moved {
    stages: usize,
    objects: usize,
    bytes: u64,
    /// Push: already on the remote. Pull: not on the remote.
    elsewhere: usize,
    /// Push: not computed here.
    not_here: usize,
}

/// Requests in flight at once for `drover push`, `drover pull` and `plan`'s lookups (each
/// stage's objects go one after another; stages go side by side).
const CONCURRENT_STAGES: usize = 16;

/// Pushes every selected stage cached here that the remote lacks, one line per stage pushed.
async fn push_all(remote: &Remote, plan: &Plan, store: &Store, selected: &BTreeSet<usize>) -> Result<Moved, Failure> {
    let statuses = plan_status(plan, store, selected, &BTreeSet::new()).map_err(env)?;
    let mut m = Moved::default();
    let mut cached = Vec::new();
    for status in &statuses {
        match status.key.as_ref().filter(|_| status.action == Action::Cached) {
            Some(key) => cached.push((status.stage.as_str(), key)),
            None => m.not_here += 1,
        }
    }
    let mut pushes = futures::stream::iter(cached)
        .map(|(stage, key)| async move { (stage, remote.push_key(store, key).await) })
        .buffer_unordered(CONCURRENT_STAGES);
    while let Some((stage, pushed)) = pushes.next().await {
        let (objects, bytes) = match pushed.map_err(env)? {
            Pushed::NotLocal => {
                m.not_here += 1;
                continue;
            }
            Pushed::AlreadyThere => {
                m.elsewhere += 1;
                continue;
            }
            Pushed::Sent { objects, bytes } => {
                println!("pushed {stage}: {objects} objects, {bytes} bytes");
                (objects, bytes)
            }
            Pushed::Adopted { objects, bytes, .. } => {
                println!("pushed {stage}: another machine stored its record first; that one stands");
                (objects, bytes)
            }
        };
        (m.stages, m.objects, m.bytes) = (m.stages + 1, m.objects + objects, m.bytes + bytes);
    }
    Ok(m)
}

/// Pulls every selected stage not cached here that the remote has. A stage's key depends on
/// what its inputs hold, so pulling goes round by round: what one round brings lets the next
/// compute the keys of the stages downstream.
async fn pull_all(remote: &Remote, plan: &Plan, store: &Store, selected: &BTreeSet<usize>) -> Result<Moved, Failure> {
    let mut asked = BTreeSet::new();
    let mut m = Moved::default();
    loop {
        let statuses = plan_status(plan, store, selected, &BTreeSet::new()).map_err(env)?;
        let round: Vec<(&str, &CacheKey)> = statuses
            .iter()
            .filter(|s| s.action == Action::Run)
            .filter_map(|s| s.key.as_ref().filter(|k| asked.insert((*k).clone())).map(|k| (s.stage.as_str(), k)))
            .collect();
        let mut pulls = futures::stream::iter(round)
            .map(|(stage, key)| async move { (stage, remote.pull_key(store, key).await) })
            .buffer_unordered(CONCURRENT_STAGES);
        let mut progressed = false;
        while let Some((stage, pulled)) = pulls.next().await {
            if let Some(got) = pulled.map_err(env)? {
                println!("pulled {stage}: {} objects, {} bytes", got.objects, got.bytes);
                (m.stages, m.objects, m.bytes) = (m.stages + 1, m.objects + got.objects, m.bytes + got.bytes);
                progressed = true;
            }
        }
        if !progressed {
            m.elsewhere = statuses.iter().filter(|s| s.action == Action::Run).count();
            store.flush();
            return Ok(m);
        }
    }
}

/// `drover push`: every selected stage that is cached here and not on the remote.
pub fn push(
    ops: &OpRegistry,
    store_override: &Option<PathBuf>,
    remote_flag: &Option<String>,
    select: &SelectArgs,
) -> Result<(), Failure> {
    let (plan, selected, store, config) = setup(ops, store_override, remote_flag, select)?;
    runtime()?.block_on(async {
        let remote = connect(config).await?;
        let m = push_all(&remote, &plan, &store, &selected).await?;
        println!(
            "pushed {} stages ({} objects, {} bytes) to {}; {} already there; {} not computed here",
            m.stages,
            m.objects,
            m.bytes,
            remote.config().url,
            m.elsewhere,
            m.not_here
        );
        Ok(())
    })
}

/// `drover pull`: every selected stage that is not cached here and is on the remote.
pub fn pull(
    ops: &OpRegistry,
    store_override: &Option<PathBuf>,
    remote_flag: &Option<String>,
    select: &SelectArgs,
) -> Result<(), Failure> {
    let (plan, selected, store, config) = setup(ops, store_override, remote_flag, select)?;
    runtime()?.block_on(async {
        let remote = reader(config)?;
        let m = pull_all(&remote, &plan, &store, &selected).await?;
        println!(
            "pulled {} stages ({} objects, {} bytes) from {}; {} not on the remote",
            m.stages,
            m.objects,
            m.bytes,
            remote.config().url,
            m.elsewhere
        );
        Ok(())
    })
}

/// The team cache as a run's cache tier: each stage not cached here is looked up on the remote
/// before it is computed, and each stage the run computed is pushed as it finishes.
#[derive(Debug)]
pub struct RunTier {
    remote: Remote,
    /// Where the keys of pushes not yet done are kept, one empty file each: a push that
    /// fails, or a run killed before its pushes end, leaves them for the next run.
    pending: PathBuf,
    fetched: AtomicUsize,
    pushed: AtomicUsize,
    /// The first failure of each kind, said once after the run.
    lookup_failure: Mutex<Option<String>>,
    push_failure: Mutex<Option<String>>,
}

impl Tier for RunTier {
    fn location(&self) -> &str {
        &self.remote.config().url
    }

    fn fetch<'a>(&'a self, store: &'a Store, key: &'a CacheKey) -> BoxFuture<'a, Option<BTreeMap<String, OutputRef>>> {
        Box::pin(async move {
            match self.remote.pull_key(store, key).await {
                Ok(Some(_)) => {
                    self.fetched.fetch_add(1, Ordering::Relaxed);
                    store.cached_outputs(key)
                }
                Ok(None) => None,
                Err(e) => {
                    let mut first = self.lookup_failure.lock().unwrap_or_else(|p| p.into_inner());
                    if first.is_none() {
                        eprintln!(
                            "note: looking up key {} on remote {} failed: {e}; computing here",
                            key.short(),
                            self.location()
                        );
                        *first = Some(e.to_string());
                    }
                    None
                }
            }
        })
    }

    fn push<'a>(&'a self, store: &'a Store, key: &'a CacheKey) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if *self.remote.mode() != Mode::ReadWrite {
                return;
            }
            let marker = self.pending.join(key.as_str());
            let _ = std::fs::create_dir_all(&self.pending).and_then(|()| std::fs::write(&marker, b""));
            match self.remote.push_new_key(store, key).await {
                Ok(Pushed::Sent { .. } | Pushed::Adopted { .. }) => {
                    self.pushed.fetch_add(1, Ordering::Relaxed);
                    let _ = std::fs::remove_file(&marker);
                }
                Ok(Pushed::AlreadyThere | Pushed::NotLocal) => {
                    let _ = std::fs::remove_file(&marker);
                }
                Err(e) => {
                    let mut first = self.push_failure.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        })
    }
}

/// Connects a run to its remote, if it has one: pushes what earlier runs left unpushed, and
/// reads the memo packs other machines added. An unreachable remote is said once and the run
/// goes on locally, unless `required` (then exit 3).
pub async fn open_tier(config: RemoteConfig, store: &Store, required: bool) -> Result<Option<Arc<RunTier>>, Failure> {
    let url = config.url.clone();
    let remote = match connect(config).await {
        Ok(remote) => remote,
        Err(e) if required => {
            return Err(Failure::Environment(format!(
                "remote {url} is required (--remote-required) and cannot be used: {}",
                failure_text(&e)
            )));
        }
        Err(e) => {
            eprintln!("note: remote {url} not used: {}; running locally", failure_text(&e));
            return Ok(None);
        }
    };
    let pending = remote.state_dir(store).join("pending");
    let tier = Arc::new(RunTier {
        remote,
        pending,
        fetched: AtomicUsize::new(0),
        pushed: AtomicUsize::new(0),
        lookup_failure: Mutex::new(None),
        push_failure: Mutex::new(None),
    });
    let left: Vec<CacheKey> = std::fs::read_dir(&tier.pending)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| CacheKey::parse(&e.file_name().to_string_lossy()))
        .collect();
    for key in &left {
        tier.push(store, key).await;
    }
    if !left.is_empty() {
        eprintln!("note: pushed {} stage(s) an earlier run left unpushed", tier.pushed.swap(0, Ordering::Relaxed));
    }
    if let Err(e) = tier.remote.pull_memo(store).await {
        eprintln!("note: reading language-model responses from remote {url} failed: {e}");
    }
    Ok(Some(tier))
}

/// After the run: the memo entries it added go up as one pack, and what the remote did is said
/// in one line (failures once each: a failed push is retried by the next run).
pub async fn close_tier(tier: Arc<RunTier>, store: &Store) {
    let url = tier.location().to_string();
    let mut memo = None;
    if *tier.remote.mode() == Mode::ReadWrite {
        match tier.remote.push_memo(store).await {
            Ok(sync) => memo = Some(sync.entries),
            Err(e) => eprintln!("note: pushing language-model responses to remote {url} failed: {e}"),
        }
    }
    let (fetched, pushed) = (tier.fetched.load(Ordering::Relaxed), tier.pushed.load(Ordering::Relaxed));
    let memo = match memo {
        Some(n) if n > 0 => format!(", {n} language-model response(s) shared"),
        _ => String::new(),
    };
    eprintln!("remote {url}: {fetched} stage(s) fetched, {pushed} pushed{memo}");
    if let Some(e) = tier.push_failure.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        eprintln!("note: a push to remote {url} failed: {e}; the next run (or `drover push`) sends it");
    }
}

/// `drover plan` with a remote: the stages to run whose records the remote has (a HEAD each, 16
/// at a time), and the remote's URL; `None`, said once, when it cannot be reached. Stages
/// downstream of one that will run have no key yet, so they are not asked about.
pub fn on_remote(
    config: RemoteConfig,
    statuses: &[StageStatus],
    forced: &BTreeSet<usize>,
    plan: &Plan,
) -> Option<(String, BTreeSet<String>)> {
    let url = config.url.clone();
    let forced: BTreeSet<&str> = forced.iter().map(|&i| plan.nodes[i].id.as_str()).collect();
    let asked: Vec<(&str, &CacheKey)> = statuses
        .iter()
        .filter(|s| s.action == Action::Run && !forced.contains(s.stage.as_str()))
        .filter_map(|s| s.key.as_ref().map(|k| (s.stage.as_str(), k)))
        .collect();
    let found = runtime().ok()?.block_on(async {
        let remote = match reader(config) {
            Ok(remote) => remote,
            Err(e) => {
                eprintln!("note: remote {url} not asked: {}", failure_text(&e));
                return None;
            }
        };
        let looked = futures::stream::iter(asked)
            .map(|(stage, key)| {
                let remote = &remote;
                async move { (stage, remote.has_record(key).await) }
            })
            .buffer_unordered(CONCURRENT_STAGES)
            .collect::<Vec<_>>()
            .await;
        let mut found = BTreeSet::new();
        for (stage, has) in looked {
            match has {
                Ok(true) => {
                    found.insert(stage.to_string());
                }
                Ok(false) => {}
                Err(e) => {
                    eprintln!("note: remote {url}: {e}");
                    return None;
                }
            }
        }
        Some(found)
    })?;
    Some((url, found))
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Environment(text) => text.clone(),
        Failure::User(report) => report.to_string(),
        _ => "failed".to_string(),
    }
}

/// `drover gc --remote`: previews (or with `--yes` does) a collection of the remote. Kept:
/// everything younger than `grace`, every record this store holds, every stage key of this
/// pipeline that can be computed here, and every object a kept record names.
pub fn gc(
    ops: &OpRegistry,
    store_override: &Option<PathBuf>,
    remote_flag: &Option<String>,
    args: &crate::cli::PipelineArgs,
    grace: std::time::Duration,
    delete: bool,
) -> Result<(), Failure> {
    let (spec, plan) = load(ops, args)?;
    let store = open_store(store_override, &pipeline_file(args))?;
    let Some(config) = config(remote_flag, &spec)? else {
        return Err(no_remote(format!("{}: no remote configured to collect", plan.file.display())));
    };
    let mut keep: BTreeSet<CacheKey> = store.all_record_keys().map_err(env)?.into_iter().collect();
    let all: BTreeSet<usize> = (0..plan.nodes.len()).collect();
    keep.extend(plan_status(&plan, &store, &all, &BTreeSet::new()).map_err(env)?.into_iter().filter_map(|s| s.key));
    runtime()?.block_on(async {
        let remote = connect(config).await?;
        let url = remote.config().url.clone();
        let found = remote.gc_plan(&keep, grace, std::time::SystemTime::now()).await.map_err(env)?;
        if delete {
            remote.gc_apply(&found).await.map_err(env)?;
        }
        let verb = if delete { "deleted" } else { "would delete" };
        println!(
            "{verb} {} records and {} objects ({} bytes) from {url}; kept {} records and {} objects \
             (younger than {}, or known here)",
            found.delete_records.len(),
            found.delete_objects.len(),
            found.bytes,
            found.kept_records,
            found.kept_objects,
            age(grace)
        );
        if !delete {
            println!("nothing deleted: this was a preview; `drover gc --remote --yes` deletes");
        }
        Ok(())
    })
}

/// `7d`, `36h`, `90m`, `45s`: as `--grace` is written.
fn age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s >= 86_400 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s >= 3_600 && s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s >= 60 && s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}
