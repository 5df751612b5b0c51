//! `notify:`: who hears about a nightly run that failed, recovered or regressed. A webhook (a
//! POST of JSON with a Slack-compatible `text` beside the structured run summary) and/or a
//! command (the same JSON on its stdin). The binary owns this top-level section (declared with a
//! `SectionDecl`, checked with the file's other problems); only `drover nightly` notifies.
//!
//! ```yaml
//! notify:
//!   on: [failure, recovery, regression]      # the default: all three
//!   webhook:
//!     url_env: SLACK_WEBHOOK_URL             # a webhook URL carries its token: by variable name only
//!     headers_env: { Authorization: TOKEN }  # header -> variable holding its value
//!   command: sh scripts/page.sh              # through sh -c, in the pipeline's directory
//! ```
//!
//! Secrets are named, never written: the URL and headers come from drover's environment when a
//! notice is sent. A notice that cannot be delivered is reported on stderr and does not change
//! the exit code, which already says what happened to the run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_cache::{RunRecord, StageOutcome};
use drover_engine::diag::Diags;
use drover_engine::spec::PipelineSpec;
use drover_engine::yaml::{Node, Span};
use drover_engine::{CheckLocation, SectionDecl};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::metrics::Regression;

/// The section's name.
pub const SECTION: &str = "notify";

/// How long a webhook or a command may take before the notice is given up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// `notify:` as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    /// When to notify: `failure` (a stage failed, or the environment did), `recovery` (a run
    /// succeeded after a failed one), `regression` (a metric crossed a threshold). Default: all.
    #[serde(default = "all_events")]
    pub on: Vec<Event>,
    /// POST the notice as JSON.
    #[serde(default)]
    pub webhook: Option<Webhook>,
    /// Run this through `sh -c` in the pipeline's directory, the notice's JSON on its stdin and
    /// `DROVER_NOTIFY_EVENT`, `DROVER_NOTIFY_TEXT` in its environment.
    #[serde(default)]
    pub command: Option<String>,
}

/// `webhook:`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// The variable holding the URL (Slack's incoming-webhook URLs are secrets).
    pub url_env: String,
    /// Headers to send, each from the variable named (`{ Authorization: NOTIFY_TOKEN }`).
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
}

/// What a notice is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Failure,
    Recovery,
    Regression,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Failure => "failure",
            Event::Recovery => "recovery",
            Event::Regression => "regression",
        }
    }
}

fn all_events() -> Vec<Event> {
    vec![Event::Failure, Event::Recovery, Event::Regression]
}

/// The section as the engine carries it.
pub fn section() -> SectionDecl {
    let mut schema = serde_json::to_value(schemars::schema_for!(NotifySpec)).expect("a schema serialises");
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("$schema");
        obj.remove("title");
        obj.insert("description".into(), json!("who hears about a nightly run that failed, recovered or regressed"));
    }
    SectionDecl {
        name: SECTION,
        holds: "a mapping with `webhook:` and/or `command:`",
        example: "notify: { webhook: { url_env: SLACK_WEBHOOK_URL } }",
        schema,
        env: None,
        stage_schema: None,
        // Checked by [`check`], which locates each problem in the file itself.
        check: None,
        scalar: false,
    }
}

/// Checks `notify:` and adds its problems to the spec's, located in the file.
pub fn check(spec: &mut PipelineSpec) {
    let Some(node) = spec.sections.get(SECTION) else { return };
    let mut d = Diags::new(spec.source.clone());
    let at = |path: &[String], key: bool| -> Span {
        let found = match key {
            true => path.split_last().and_then(|(name, parent)| {
                node.at_path(parent)?.as_map()?.iter().find(|(k, _)| k.key_text() == *name).map(|(k, _)| k.span)
            }),
            false => (0..=path.len()).rev().find_map(|i| node.at_path(&path[..i])).map(|n| n.span),
        };
        found.unwrap_or(node.span)
    };
    match drover_engine::op::parse_params::<NotifySpec>(&node.to_json()) {
        Err(e) => {
            let (span, path) = match &e.at {
                CheckLocation::ParamKey(p) => (at(p, true), p.clone()),
                CheckLocation::Param(p) => (at(p, false), p.clone()),
                _ => (node.span, Vec::new()),
            };
            let message = e.message.replace("unknown param", "unknown setting").replace("param `", "setting `");
            let help = e.help.map(|h| h.replace("params: ", "settings: "));
            let label = if path.is_empty() { "here".to_string() } else { format!("`{SECTION}.{}`", path.join(".")) };
            d.error(None, span, format!("`{SECTION}`: {message}"), label, help);
        }
        Ok(n) => {
            if n.webhook.is_none() && n.command.is_none() {
                d.error(
                    None,
                    node.span,
                    format!("`{SECTION}` names no webhook and no command"),
                    "nothing to notify",
                    Some("add `webhook: { url_env: VAR }` or `command: ...`".into()),
                );
            }
            if let Some(w) = &n.webhook {
                let vars = std::iter::once((vec!["webhook".to_string(), "url_env".to_string()], &w.url_env)).chain(
                    w.headers_env.iter().map(|(h, v)| (vec!["webhook".into(), "headers_env".into(), h.clone()], v)),
                );
                for (path, var) in vars {
                    if !valid_var(var) {
                        d.error(
                            None,
                            at(&path, false),
                            format!("`{SECTION}.{}` must name an environment variable; found `{var}`", path.join(".")),
                            "not a variable name",
                            Some(
                                "secrets are given by the name of the variable holding them (export SLACK_WEBHOOK_URL=... \
                                 before the run, or put it in the schedule's --env-file), never written here"
                                    .into(),
                            ),
                        );
                    }
                }
            }
            if n.on.is_empty() {
                d.error(
                    None,
                    at(&["on".to_string()], false),
                    format!("`{SECTION}.on` is empty: nothing would be sent"),
                    "no events",
                    Some("list some of failure, recovery, regression, or leave `on` out for all three".into()),
                );
            }
        }
    }
    spec.errors.extend(d.into_errors());
}

fn valid_var(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The pipeline's `notify:`, once checked (`None` when it has none).
pub fn settings(spec: &PipelineSpec) -> Option<NotifySpec> {
    spec.sections.get(SECTION).and_then(|n: &Node| drover_engine::op::parse_params(&n.to_json()).ok())
}

/// One notice: its event, the Slack-compatible text, and the JSON sent.
#[derive(Debug)]
pub struct Notice {
    pub event: Event,
    pub text: String,
    pub payload: Value,
}

/// The notice for `event` about run `run` (of schedule `schedule`); `previous` is the run it
/// recovered from; `regressions` the thresholds crossed.
pub fn notice(
    event: Event,
    run: &RunRecord,
    schedule: &str,
    previous: Option<&RunRecord>,
    regressions: &[Regression],
) -> Notice {
    let count = |o: StageOutcome| run.stages.iter().filter(|s| s.outcome == o).count();
    let failed: Vec<&drover_cache::RunStage> =
        run.stages.iter().filter(|s| s.outcome == StageOutcome::Failed).collect();
    let head = format!(
        "drover: `{}` {} (nightly `{schedule}` on {}, run {})",
        run.pipeline,
        match event {
            Event::Failure => "failed",
            Event::Recovery => "recovered",
            Event::Regression => "regressed",
        },
        run.host.as_deref().unwrap_or("an unknown host"),
        run.id
    );
    let detail = match event {
        Event::Failure => {
            let names: Vec<String> = failed.iter().map(|s| format!("`{}`", s.stage)).collect();
            let first = failed
                .first()
                .and_then(|s| s.error.as_deref())
                .map(|e| format!(": {}", e.lines().next().unwrap_or("")))
                .unwrap_or_default();
            match failed.is_empty() {
                true => format!("the run ended `{}`", run.status),
                false => format!(
                    "{} of {} stage{} failed: {}{first}",
                    failed.len(),
                    run.stages.len(),
                    if run.stages.len() == 1 { "" } else { "s" },
                    names.join(", ")
                ),
            }
        }
        Event::Recovery => format!(
            "all {} stage{} ok after the failed run {}",
            run.stages.len(),
            if run.stages.len() == 1 { "" } else { "s" },
            previous.map_or("before it", |p| p.id.as_str())
        ),
        Event::Regression => regressions.iter().map(Regression::describe).collect::<Vec<_>>().join("; "),
    };
    let text = format!("{head}: {detail}");
    let payload = json!({
        "text": text,
        "event": event.name(),
        "pipeline": run.pipeline,
        "schedule": schedule,
        "run": {
            "id": run.id,
            "status": run.status,
            "started": run.started,
            "duration_ms": run.duration_ms,
            "trigger": run.trigger_kind(),
            "host": run.host,
            "git_revision": run.git_revision,
            "params_digest": run.params_digest,
            "stages": {"ran": count(StageOutcome::Ran), "cached": count(StageOutcome::Cached), "failed": failed.len(),
                       "skipped": count(StageOutcome::Skipped)},
        },
        "failed": failed.iter().map(|s| json!({"stage": s.stage, "error": s.error})).collect::<Vec<_>>(),
        "metrics": run.metrics,
        "regressions": regressions.iter().map(|r| json!({
            "metric": r.threshold.metric, "threshold": r.threshold.to_string(),
            "baseline": r.baseline, "current": r.current,
        })).collect::<Vec<_>>(),
        "previous_run": previous.map(|p| json!({"id": p.id, "status": p.status})),
    });
    Notice { event, text, payload }
}

/// Delivers a notice as `settings` say, if its event is one they listen for; returns what went
/// wrong (nothing when it was delivered or not wanted).
pub fn send(settings: &NotifySpec, dir: &Path, notice: &Notice) -> Vec<String> {
    if !settings.on.contains(&notice.event) {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let body = serde_json::to_vec(&notice.payload).expect("a notice serialises");
    if let Some(w) = &settings.webhook
        && let Err(e) = post(w, &body)
    {
        problems.push(format!("webhook: {e}"));
    }
    if let Some(cmd) = &settings.command
        && let Err(e) = run_command(cmd, dir, notice, &body)
    {
        problems.push(format!("command `{cmd}`: {e}"));
    }
    problems
}

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("${name} is not set (export it, or put it in the schedule's --env-file)"))
}

fn post(w: &Webhook, body: &[u8]) -> Result<(), String> {
    let url = var(&w.url_env)?;
    let mut headers = Vec::new();
    for (h, v) in &w.headers_env {
        headers.push((h.clone(), var(v)?));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build().map_err(|e| e.to_string())?;
        let mut req = client.post(&url).header("content-type", "application/json").body(body.to_vec());
        for (h, v) in headers {
            req = req.header(h, v);
        }
        // The URL is a secret: errors name the variable, never the address.
        let resp = req.send().await.map_err(|e| format!("POST to ${} failed: {}", w.url_env, without_url(&e)))?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s => Err(format!("POST to ${} answered {s}", w.url_env)),
        }
    })
}

/// A reqwest error's words without the URL it carries.
fn without_url(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = String::from("request failed");
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    if e.is_timeout() { "timed out".into() } else { last }
}

fn run_command(cmd: &str, dir: &Path, notice: &Notice, body: &[u8]) -> Result<(), String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .env("DROVER_NOTIFY_EVENT", notice.event.name())
        .env("DROVER_NOTIFY_TEXT", &notice.text)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin closes it early: not an error.
        let _ = stdin.write_all(body);
    }
    let started = Instant::now();
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(format!("exited with {status}")),
            None if started.elapsed() > DELIVERY_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {}s: killed", DELIVERY_TIMEOUT.as_secs()));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
