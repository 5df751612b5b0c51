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
//! In the file the section is a mapping (the engine's sections are mappings; the bare-URL form
//! `remote: s3://...` needs a `SectionDecl` that admits a scalar); `--remote` takes either.
//!
//! Credentials come from the `AWS_*` variables or `~/.aws/credentials` when a command needs
//! the remote; they are never written anywhere.

use std::collections::BTreeSet;
use std::path::PathBuf;

use drover_cache::{RunRecord, StageOutcome, Store};
use drover_engine::plan::Plan;
use drover_engine::spec::PipelineSpec;
use drover_engine::status::{Action, plan_status};
use drover_engine::{OpRegistry, SectionAt, SectionDecl, SectionProblem};
use drover_remote::{Credentials, Mode, Pushed, Remote, RemoteConfig, RemoteError};
use serde_json::{Value, json};

use crate::Failure;
use crate::cli::SelectArgs;
use crate::commands::{Loaded, env, load, open_store, pipeline_file, selection};

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
        holds: "a mapping with `url: s3://BUCKET/PREFIX` and the server's settings",
        example: "remote: { url: s3://team-cache/drover/my-project }",
        schema: json!({
            "description": "the team cache: stages someone already computed are fetched from it; `drover push` fills it",
            "allOf": [mapping],
        }),
        env: None,
        stage_schema: None,
        check: Some(check),
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
    let parsed = match flag.as_deref().map(str::trim) {
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
        return Err(Failure::User(miette::miette!(
            help = "add `remote: { url: s3://BUCKET/PREFIX }` to the pipeline, or pass `--remote s3://BUCKET/PREFIX` \
                    (or set DROVER_REMOTE)",
            "{}: no remote configured",
            plan.file.display()
        )));
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

/// Pushes every selected stage cached here that the remote lacks, one line per stage pushed.
async fn push_all(remote: &Remote, plan: &Plan, store: &Store, selected: &BTreeSet<usize>) -> Result<Moved, Failure> {
    let statuses = plan_status(plan, store, selected, &BTreeSet::new()).map_err(env)?;
    let mut m = Moved::default();
    for status in &statuses {
        let Some(key) = status.key.as_ref().filter(|_| status.action == Action::Cached) else {
            m.not_here += 1;
            continue;
        };
        let (objects, bytes) = match remote.push_key(store, key).await.map_err(env)? {
            Pushed::NotLocal => {
                m.not_here += 1;
                continue;
            }
            Pushed::AlreadyThere => {
                m.elsewhere += 1;
                continue;
            }
            Pushed::Sent { objects, bytes } => {
                println!("pushed {}: {objects} objects, {bytes} bytes", status.stage);
                (objects, bytes)
            }
            Pushed::Adopted { objects, bytes, .. } => {
                println!("pushed {}: another machine stored its record first; that one stands", status.stage);
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
        let mut progressed = false;
        for status in statuses.iter().filter(|s| s.action == Action::Run) {
            let Some(key) = status.key.as_ref().filter(|k| asked.insert((*k).clone())) else { continue };
            if let Some(got) = remote.pull_key(store, key).await.map_err(env)? {
                println!("pulled {}: {} objects, {} bytes", status.stage, got.objects, got.bytes);
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
        let remote = connect(config).await?;
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

/// A run's remote, connected before it starts.
pub struct RunRemote {
    rt: tokio::runtime::Runtime,
    remote: Remote,
}

/// `drover run` with a remote, before the run: what the remote has of the selected stages is
/// pulled, so they count as cached. A remote that cannot be reached, or fails midway, never
/// stops the run: it is said once on stderr and the run goes on locally.
pub fn before_run(remote_flag: &Option<String>, loaded: &Loaded) -> Result<Option<RunRemote>, Failure> {
    let Some(config) = config(remote_flag, &loaded.spec)? else { return Ok(None) };
    let url = config.url.clone();
    let rt = runtime()?;
    let remote = match rt.block_on(connect(config)) {
        Ok(remote) => remote,
        Err(e) => {
            eprintln!("note: remote {url} not used: {}; running locally", failure_text(&e));
            return Ok(None);
        }
    };
    match rt.block_on(pull_all(&remote, &loaded.plan, &loaded.store, &loaded.selected)) {
        Ok(_) => Ok(Some(RunRemote { rt, remote })),
        Err(e) => {
            eprintln!("note: pulling from remote {url} failed: {}; running locally", failure_text(&e));
            Ok(None)
        }
    }
}

/// After the run: each stage it computed is pushed. A failed push fails nothing (the stage is
/// done here); it is said, and `drover push` or the next run sends it.
pub fn after_run(remote: Option<RunRemote>, store: &Store, record: &RunRecord) {
    let Some(RunRemote { rt, remote }) = remote else { return };
    if *remote.mode() != Mode::ReadWrite {
        return;
    }
    let ran = record.stages.iter().filter(|s| s.outcome == StageOutcome::Ran);
    for stage in ran {
        let Some(key) = &stage.key else { continue };
        if let Err(e) = rt.block_on(remote.push_key(store, key)) {
            eprintln!("note: pushing to remote {} failed: {e}; it is pushed next time", remote.config().url);
            return;
        }
    }
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Environment(text) => text.clone(),
        Failure::User(report) => report.to_string(),
        _ => "failed".to_string(),
    }
}
