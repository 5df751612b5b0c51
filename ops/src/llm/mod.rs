//! The language-model backend shared by every text op: endpoints (`endpoint`), the client
//! with its response memo (`client`), the embedded local server (`serve`), and [`run_all`],
//! which sends a stage's requests with progress.

pub mod client;
pub mod endpoint;
pub mod serve;
pub mod template;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use drover_engine::{OpError, Progress};

pub use client::{Client, Completion, Message, Prompt, Request, Sampling};
pub use endpoint::{Endpoint, check_endpoint, default_llm};

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
                results[i] = Some(result?);
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
