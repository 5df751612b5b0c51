//! What the prompt-synthesis ops share (`self_instruct`, `tgrt_topics`, `tgrt_questions`): the
//! requests of a list of prompts, each with its own seed; [`Rounds`], for ops whose next prompts
//! depend on the responses to the last ones, with the loop that runs them and the replay that
//! tells `drover plan` how much the memo already answers; prompt files in Python's `str.format`
//! syntax; and their plan-time checks.
//!
//! Invariant: the requests built here depend only on the prompts, the sampling, the endpoint
//! and each request's index among the stage's requests, so that a resumed or repeated stage asks
//! exactly what it asked before and the memo answers it.

use std::path::PathBuf;

use drover_engine::{CheckCx, CheckError, Checked, OpError, RunCx, StageCx, paths, run_blocking};

use crate::kit::llm::template::Rows;
use crate::kit::llm::{self, Client, Completion, Prompt, Request, Sampling};
use crate::kit::pystr::{Format, py_strip};

/// An op's work as rounds of prompts, each round built from the responses to the ones before.
/// Kept free of I/O, so that [`run_rounds`] sends its prompts and [`rounds_left`] replays the
/// rounds the memo answers.
pub trait Rounds: Send + 'static {
    /// The next round's prompts, `sent` requests having been sent before it; `None` when done.
    fn next(&mut self, sent: u64) -> Option<Vec<String>>;

    /// Takes in the responses to the round's prompts, in their order.
    fn fold(&mut self, responses: &[Completion]);
}

/// Runs `rounds` to the end: each round's prompts go out `batch` at a time (see [`complete`]),
/// and its responses are folded in on the blocking pool (the filters of a round are CPU work).
/// Returns the rounds and how many requests were sent.
pub async fn run_rounds<R: Rounds>(
    cx: &RunCx,
    client: &Client,
    sampling: &Sampling,
    mut rounds: R,
    batch: usize,
) -> Result<(R, u64), OpError> {
    let mut sent = 0;
    while let Some(prompts) = rounds.next(sent) {
        let mut responses = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(batch.max(1)) {
            responses.extend(complete(cx, client, sampling, chunk.to_vec(), &mut sent).await?);
        }
        rounds = run_blocking(move || {
            rounds.fold(&responses);
            Ok(rounds)
        })
        .await?;
    }
    Ok((rounds, sent))
}

/// What `drover plan` says of [`Rounds`]: it replays the rounds the memo answers (the next
/// round's prompts depend on the responses), which costs the CPU work of those rounds again.
pub fn rounds_left(client: &Client, sampling: &Sampling, mut rounds: impl Rounds) -> String {
    let mut sent = 0;
    while let Some(prompts) = rounds.next(sent) {
        let requests = requests(client, sampling, prompts, sent);
        let responses: Vec<Option<Completion>> = requests.iter().map(|r| client.cached(r)).collect();
        if responses.iter().any(Option::is_none) {
            return match sent + responses.iter().flatten().count() as u64 {
                0 => "requests to send".into(),
                n => format!("{n} requests already answered, more to send"),
            };
        }
        sent += responses.len() as u64;
        rounds.fold(&responses.into_iter().flatten().collect::<Vec<_>>());
    }
    format!("all {sent} requests already answered")
}

/// Completion requests for `prompts`, each with its own seed (from the prompt and its index
/// among the stage's requests, the first being `first`) unless the stage fixes one.
pub fn requests(client: &Client, sampling: &Sampling, prompts: Vec<String>, first: u64) -> Vec<Request> {
    let request = |(i, text): (usize, String)| {
        let mut sampling = sampling.clone();
        sampling.seed = sampling.seed.or_else(|| Some(client.row_seed(&text, first + i as u64)));
        Request { prompt: Prompt::Text(text), sampling }
    };
    prompts.into_iter().enumerate().map(request).collect()
}

/// Sends `prompts` (see [`requests`]); `sent` counts the stage's requests. Responses in order.
pub async fn complete(
    cx: &RunCx,
    client: &Client,
    sampling: &Sampling,
    prompts: Vec<String>,
    sent: &mut u64,
) -> Result<Vec<Completion>, OpError> {
    let requests = requests(client, sampling, prompts, *sent);
    *sent += requests.len() as u64;
    cx.progress.set_total(*sent);
    llm::run_all(client, requests, &cx.progress).await
}

/// The texts of `column`, which must exist (when the schema was unknown at plan time).
pub fn column_texts(rows: &Rows, port: &str, column: &str) -> Result<Vec<String>, OpError> {
    if rows.batch.schema().index_of(column).is_err() {
        return Err(OpError::failed(format!("input `{port}` has no column `{column}`")));
    }
    rows.texts(column)
}

/// The error for a count param that is 0, if it is; `help` says what to ask for instead.
pub fn at_least_one(param: &str, value: u64, help: &str) -> Option<CheckError> {
    (value == 0).then(|| CheckError::param(&[param], format!("{param} is 0")).help(help))
}

/// At plan time: the prompt file `file` (param `prompt_file`) exists; it then enters the key.
/// `help` says which file to give.
pub fn check_prompt_file(cx: &CheckCx<'_>, file: &str, help: &str, checked: &mut Checked) -> Result<(), CheckError> {
    let path = paths::resolve(cx.pipeline_dir, file);
    if !path.is_file() {
        return Err(CheckError::param(&["prompt_file"], format!("no prompt file at {}", path.display())).help(help));
    }
    checked.file_deps.push(PathBuf::from(file));
    Ok(())
}

/// At plan time: the prompt file `file` exists (see [`check_prompt_file`]) and is a `str.format`
/// template with `wanted` fields, which are `what`.
pub fn check_format_file(
    cx: &CheckCx<'_>,
    file: &str,
    what: &str,
    wanted: usize,
    checked: &mut Checked,
) -> Option<CheckError> {
    let help = "give the path relative to the pipeline's directory (Dromedary's prompts are under \
                pipelines/data/dromedary)";
    if let Err(e) = check_prompt_file(cx, file, help, checked) {
        return Some(e);
    }
    let at = |message: String| CheckError::param(&["prompt_file"], message);
    match read_format(&paths::resolve(cx.pipeline_dir, file)) {
        Err(why) => Some(
            at(format!("the prompt file cannot be used: {why}"))
                .help("fields are `{}`, filled in order (Python's str.format); write a literal brace as `{{` or `}}`"),
        ),
        Ok(p) if p.fields() != wanted => Some(
            at(format!("the prompt file has {} `{{}}` field(s); this op fills {wanted}", p.fields()))
                .help(format!("put a `{{}}` where each of these goes, in this order: {what}")),
        ),
        Ok(_) => None,
    }
}

/// At run time: the stage's prompt file, as [`check_format_file`] checked it.
pub fn format_file(cx: &StageCx, file: &str) -> Result<Format, OpError> {
    read_format(&paths::resolve(&cx.pipeline_dir, file)).map_err(|e| OpError::failed(format!("prompt file: {e}")))
}

/// A prompt file as the originals read it (universal newlines, then stripped).
fn read_format(path: &std::path::Path) -> Result<Format, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    Format::parse(py_strip(&text))
}
