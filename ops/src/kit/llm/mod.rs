//! The language-model backend shared by every text op: endpoints (`endpoint`), the client
//! with its response memo (`client`), the embedded local server (`serve`), and [`run_all`],
//! which sends a stage's requests with progress. In tests, `mock` stands in for a server.

pub mod client;
pub mod endpoint;
pub mod mmproj;
#[cfg(test)]
pub(crate) mod mock;
pub mod serve;
pub mod template;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use drover_engine::{CheckCx, CheckError, Checked, OpError, Progress, RunCx};

pub use client::{Client, Completion, Content, Message, Part, Prompt, Request, Sampling};
pub use endpoint::{Endpoint, check_endpoint, default_llm};

/// The pipeline's top-level section of language-model endpoints, which this backend owns.
pub const SECTION: &str = "llms";

/// `llms:` as the engine carries it: a mapping of endpoint name to its settings, overridden
/// with `--set llms.NAME.FIELD=V` or `DROVER_LLM_<NAME>=MAPPING`.
pub fn section() -> drover_engine::SectionDecl {
    let mut endpoint = endpoint::schema();
    let mut defs = serde_json::Map::new();
    if let Some(obj) = endpoint.as_object_mut() {
        obj.remove("$schema");
        if let Some(serde_json::Value::Object(d)) = obj.remove("$defs") {
            defs = d;
        }
    }
    drover_engine::SectionDecl {
        name: SECTION,
        holds: "a mapping of endpoint name to its settings",
        example: "llms: { default: { base_url: http://127.0.0.1:8080/v1, model: NAME } }",
        schema: serde_json::json!({
            "type": "object",
            "additionalProperties": endpoint,
            "description": "language-model endpoints by name; override with --set llms.NAME.FIELD=v or DROVER_LLM_<NAME>",
            "$defs": defs,
        }),
        env: Some("LLM"),
        stage_schema: None,
        check: None,
        scalar: false,
    }
}

/// A problem in one endpoint of `llms:`, at `path` inside the section.
pub fn section_error(path: &[&str], message: impl Into<String>) -> CheckError {
    CheckError::section(SECTION, path, message)
}

/// Checks the sampling params every text op takes.
pub fn check_sampling(s: &Sampling) -> Vec<CheckError> {
    let mut errors = Vec::new();
    let at = |field: &str, message: String| CheckError::param(&["sampling", field], message);
    if let Some(t) = s.temperature
        && !(0.0..=2.0).contains(&t)
    {
        errors.push(at("temperature", format!("temperature {t} is outside [0, 2]")));
    }
    if let Some(p) = s.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        errors.push(at("top_p", format!("top_p {p} is outside (0, 1]")));
    }
    if s.max_tokens == Some(0) {
        errors.push(at("max_tokens", "max_tokens is 0".into()).help("ask for at least one token"));
    }
    if s.n == Some(0) {
        errors.push(at("n", "n is 0".into()).help("ask for at least one completion"));
    }
    for (token, bias) in s.logit_bias.iter().flatten() {
        if !(-100.0..=100.0).contains(bias) {
            errors.push(CheckError::param(
                &["sampling", "logit_bias", token],
                format!("bias {bias} is outside [-100, 100]"),
            ));
        }
    }
    errors
}

/// The plan-time checks of every text op: its endpoint (whose model then enters the key) and
/// its sampling params.
pub fn check(cx: &CheckCx<'_>, llm: &str, sampling: &Sampling, checked: &mut Checked) -> Vec<CheckError> {
    let mut errors = check_sampling(sampling);
    if let Err(e) = check_endpoint(cx, llm, checked) {
        errors.extend(e);
    }
    errors
}

/// [`check`], for ops that read one completion per request: `n` must be unset (or 1).
pub fn check_one_choice(cx: &CheckCx<'_>, llm: &str, sampling: &Sampling, checked: &mut Checked) -> Vec<CheckError> {
    let mut errors = check(cx, llm, sampling, checked);
    if sampling.n.is_some_and(|n| n != 1) {
        errors.push(
            CheckError::param(&["sampling", "n"], "this op reads one completion per request")
                .help("leave `n` unset; ask for more with the op's own params"),
        );
    }
    errors
}

/// Sends every request (each answered from the memo when it can be), at most the endpoint's
/// concurrency at once, and returns the responses in request order. Progress counts requests;
/// its message says how many are in flight, tokens per second and retries. On the first
/// failure the requests still in flight are dropped and the error returned: every response
/// received so far is already in the memo, so a rerun resumes from there.
pub async fn run_all(
    client: &Client,
    requests: Vec<Request>,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<Completion>, OpError> {
    run_all_named(client, requests, progress, None).await
}

/// [`run_all`], whose error names the request that failed: `name(i)` for request `i` (e.g.
/// "row 3 (images/a.png)") is put before the message.
pub async fn run_all_named(
    client: &Client,
    requests: Vec<Request>,
    progress: &Arc<dyn Progress>,
    name: Option<&(dyn Fn(usize) -> String + Sync)>,
) -> Result<Vec<Completion>, OpError> {
    let total = requests.len();
    let mut results: Vec<Option<Completion>> = vec![None; total];
    let mut pending = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        let key = client.key(&request);
        match client.cached_at(&key) {
            Some(done) => results[i] = Some(done),
            None => pending.push((i, key, request)),
        }
    }
    let cached = total - pending.len();
    client.stats.cached.fetch_add(cached as u64, Ordering::Relaxed);
    progress.advance(cached as u64);
    if pending.is_empty() {
        return Ok(results.into_iter().map(|r| r.expect("every result is set")).collect());
    }
    let started = Instant::now();
    let tokens_before = client.stats.completion_tokens.load(Ordering::Relaxed);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, key, request) in pending {
        let client = client.clone();
        tasks.spawn(async move { (i, client.fetch(&request, &key).await) });
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                let (i, result) = joined.map_err(|e| OpError::failed(format!("a request task ended: {e}")))?;
                results[i] = Some(result.map_err(|e| match name {
                    Some(name) => OpError { message: format!("{}: {}", name(i), e.message), ..e },
                    None => e,
                })?);
                progress.advance(1);
            }
            _ = ticker.tick() => {
                let s = &client.stats;
                let tokens = s.completion_tokens.load(Ordering::Relaxed) - tokens_before;
                let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-3);
                let retries = s.retries.load(Ordering::Relaxed);
                let retries = if retries > 0 { format!(", {retries} retries") } else { String::new() };
                progress.message(&format!(
                    "{} in flight, {rate:.0} tok/s{retries}",
                    s.in_flight.load(Ordering::Relaxed)
                ));
            }
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every result is set")).collect())
}

/// What `drover plan` says of a stage's requests: how many the memo already answers.
pub fn work_left(client: &Client, requests: &[Request]) -> String {
    let answered = requests.iter().filter(|r| client.cached(r).is_some()).count();
    let total = requests.len();
    match answered {
        0 => format!("{total} requests to send"),
        a if a == total => format!("all {total} requests already answered"),
        a => format!("{a} of {total} requests already answered, {} to send", total - a),
    }
}

/// A one-line account of a stage's requests, for its log.
pub fn summary(client: &Client) -> String {
    let s = &client.stats;
    format!(
        "llm `{}`: {} requests sent, {} answered from the memo, {} retries, {} completion tokens",
        client.endpoint().name,
        s.sent.load(Ordering::Relaxed),
        s.cached.load(Ordering::Relaxed),
        s.retries.load(Ordering::Relaxed),
        s.completion_tokens.load(Ordering::Relaxed)
    )
}

/// Appends a line to the stage's log.
pub fn append_log(cx: &RunCx, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&cx.log_path) {
        let _ = writeln!(f, "{line}");
    }
}
