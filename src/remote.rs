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

use drover_cache::Store;
use drover_engine::plan::Plan;
use drover_engine::spec::PipelineSpec;
use drover_engine::status::{Action, plan_status};
use drover_engine::{OpRegistry, SectionAt, SectionDecl, SectionProblem};
use drover_remote::{Credentials, Mode, Pushed, Remote, RemoteConfig, RemoteError};
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

/// `drover push`: every selected stage that is cached here and not on the remote.
pub fn push(
    ops: &OpRegistry,
    store_override: &Option<PathBuf>,
    remote_flag: &Option<String>,
    select: &SelectArgs,
) -> Result<(), Failure> {
    let (plan, selected, store, config) = setup(ops, store_override, remote_flag, select)?;
    let statuses = plan_status(&plan, &store, &selected, &BTreeSet::new()).map_err(env)?;
    runtime()?.block_on(async {
        let remote = connect(config).await?;
        let (mut pushed, mut there, mut not_here, mut objects, mut bytes) = (0, 0, 0, 0, 0);
        for status in &statuses {
            let key = match (&status.key, status.action) {
                (Some(key), Action::Cached) => key,
                _ => {
                    not_here += 1;
                    continue;
                }
            };
            match remote.push_key(&store, key).await.map_err(env)? {
                Pushed::NotLocal => not_here += 1,
                Pushed::AlreadyThere => there += 1,
                Pushed::Sent { objects: o, bytes: b } => {
                    println!("pushed {}: {o} objects, {b} bytes", status.stage);
                    (pushed, objects, bytes) = (pushed + 1, objects + o, bytes + b);
                }
                Pushed::Adopted { objects: o, bytes: b, .. } => {
                    println!("pushed {}: another machine stored its record first; that one stands", status.stage);
                    (pushed, objects, bytes) = (pushed + 1, objects + o, bytes + b);
                }
            }
        }
        println!(
            "pushed {pushed} stages ({objects} objects, {bytes} bytes) to {}; {there} already there; \
             {not_here} not computed here",
            remote.config().url
        );
        Ok(())
    })
}

/// `drover pull`: every selected stage that is not cached here and is on the remote. A stage's
/// key depends on what its inputs hold, so pulling goes round by round: what one round brings
/// lets the next compute the keys of the stages downstream.
pub fn pull(
    ops: &OpRegistry,
    store_override: &Option<PathBuf>,
    remote_flag: &Option<String>,
    select: &SelectArgs,
) -> Result<(), Failure> {
    let (plan, selected, store, config) = setup(ops, store_override, remote_flag, select)?;
    runtime()?.block_on(async {
        let remote = connect(config).await?;
        let mut asked = BTreeSet::new();
        let (mut pulled, mut objects, mut bytes) = (0, 0, 0);
        loop {
            let statuses = plan_status(&plan, &store, &selected, &BTreeSet::new()).map_err(env)?;
            let mut progressed = false;
            for status in statuses.iter().filter(|s| s.action == Action::Run) {
                let Some(key) = status.key.as_ref().filter(|k| asked.insert((*k).clone())) else { continue };
                if let Some(got) = remote.pull_key(&store, key).await.map_err(env)? {
                    println!("pulled {}: {} objects, {} bytes", status.stage, got.objects, got.bytes);
                    (pulled, objects, bytes) = (pulled + 1, objects + got.objects, bytes + got.bytes);
                    progressed = true;
                }
            }
            if !progressed {
                let missing = statuses.iter().filter(|s| s.action == Action::Run).count();
                store.flush();
                println!(
                    "pulled {pulled} stages ({objects} objects, {bytes} bytes) from {}; {missing} not on the remote",
                    remote.config().url
                );
                return Ok(());
            }
        }
    })
}
