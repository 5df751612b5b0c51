//! The `llm_generate` op: one language-model request per row, from a prompt template over the
//! row's columns; adds `response`, `finish_reason`, `model` and token counts to each row.
//!
//! The template, system prompt, sampling params and the endpoint's model enter the key; each
//! request's response is kept in the store's memo as it arrives (see `llm::client`), so a
//! stage that dies resumes, and a rerun of a finished stage sends nothing.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field};
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, Column, OpError, OpKit, PortType, Ports, RunCx, StageCx, Work,
};
use serde::Deserialize;

use crate::kit::llm::template::{Rows, Template, check_no_clash, extend, extended_type};
use crate::kit::llm::{self, Client, Message, Prompt, Request, Sampling};
use crate::kit::table;

/// The `with:` block of an `llm_generate` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmGenerateParams {
    /// The endpoint under the pipeline's `llms:`. Default: `default`.
    #[serde(default = "llm::default_llm")]
    pub llm: String,
    /// The prompt (the user message in chat mode): a Jinja template over the row's columns,
    /// e.g. `"Answer briefly: {{ question }}"`. `row` is the whole row.
    pub template: String,
    /// A system message (chat mode), also a template.
    pub system: Option<String>,
    /// `chat` (`/chat/completions`, the server applies the model's chat template) or
    /// `completion` (`/completions`, the rendered text is the whole prompt). Default: `chat`.
    #[serde(default)]
    pub mode: Mode,
    /// Sampling params, as the OpenAI API names them.
    #[serde(default)]
    pub sampling: Sampling,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Chat,
    Completion,
}

/// Sends one request per row.
pub struct LlmGenerate;

const ADDED: [(&str, &str); 7] = [
    ("response", "Utf8"),
    ("finish_reason", "Utf8"),
    ("model", "Utf8"),
    ("prompt_tokens", "UInt64"),
    ("completion_tokens", "UInt64"),
    ("choice", "UInt32"),
    ("logprobs", "Utf8"),
];

/// Whether an added column is in the output for these params.
fn added(name: &str, sampling: &Sampling) -> bool {
    match name {
        "choice" => sampling.n.unwrap_or(1) > 1,
        "logprobs" => sampling.logprobs.is_some(),
        _ => true,
    }
}

impl OpKit for LlmGenerate {
    type Params = LlmGenerateParams;
    const NAME: &str = "llm_generate";
    const VERSION: u32 = 1;
    const DOC: &str = "Sends one language-model request per row from a prompt template; adds response, \
                       finish_reason, model, prompt_tokens, completion_tokens (and choice, one row per completion, \
                       when n > 1; logprobs, the server's JSON, when sampling.logprobs is set).";
    const DETERMINISTIC: bool = false;

    fn inputs() -> Ports {
        Ports::one("table", PortType::any_table(), "One request per row; the template reads its columns.")
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "The input rows with the responses.")
    }

    fn check(&self, params: &LlmGenerateParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let columns = table::input_columns(cx, "table")?;
        let mut checked = Checked::default();
        let mut errors = CheckErrors::from(llm::check(cx, &params.llm, &params.sampling, &mut checked));
        errors.extend(Template::check(&params.template, "template", columns).err());
        if let Some(system) = &params.system {
            errors.extend(Template::check(system, "system", columns).err());
            if params.mode == Mode::Completion {
                errors.push(
                    CheckError::param(&["system"], "a system message needs `mode: chat`")
                        .help("in completion mode the template is the whole prompt: put the system text in it"),
                );
            }
        }
        errors.extend(check_no_clash(columns, &ADDED).err());
        let added = ADDED.iter().filter(|(name, _)| added(name, &params.sampling));
        errors.or(checked.output("out", extended_type(columns, added)))
    }

    fn run(&self, params: LlmGenerateParams, cx: RunCx) -> Work {
        Work::future(async move {
            let (input, client, requests) = requests(&params, &cx)?;
            cx.progress.set_total(requests.len() as u64);
            let responses = llm::run_all(&client, requests, &cx.progress).await?;
            llm::append_log(&cx, &llm::summary(&client));
            let out = output(&params, &input, &responses)?;
            table::write_parquet(&cx.output("out")?.path, &out.schema(), &[out])
        })
    }

    fn work_left(&self, params: &LlmGenerateParams, cx: &StageCx) -> Option<String> {
        let (_, client, requests) = requests(params, cx).ok()?;
        Some(llm::work_left(&client, &requests))
    }
}

/// The stage's requests, one per row, as `run` sends them.
fn requests(params: &LlmGenerateParams, cx: &StageCx) -> Result<(Rows, Client, Vec<Request>), OpError> {
    let input = Rows::read(&cx.input("table")?.path)?;
    let columns: Vec<Column> = input.batch.schema().fields().iter().map(|f| Column::new(f.name(), "")).collect();
    let template = Template::check(&params.template, "template", Some(&columns)).map_err(check_error)?;
    let system = params
        .system
        .as_deref()
        .map(|s| Template::check(s, "system", Some(&columns)))
        .transpose()
        .map_err(check_error)?;
    let client = Client::new(cx, &params.llm)?;
    let mut requests = Vec::with_capacity(input.rows.len());
    for row in &input.rows {
        let text = template.render(row)?;
        let prompt = match params.mode {
            Mode::Completion => Prompt::Text(text),
            Mode::Chat => {
                let mut messages = Vec::new();
                if let Some(system) = &system {
                    messages.push(Message::new("system", system.render(row)?));
                }
                messages.push(Message::new("user", text));
                Prompt::Chat(messages)
            }
        };
        requests.push(Request { prompt, sampling: params.sampling.clone() });
    }
    client.seed_by_prompt(&mut requests);
    Ok((input, client, requests))
}

/// The input rows with the responses (one row per completion when `n` > 1).
fn output(params: &LlmGenerateParams, input: &Rows, responses: &[llm::Completion]) -> Result<RecordBatch, OpError> {
    let n = params.sampling.n.unwrap_or(1).max(1) as usize;
    let mut take = Vec::new();
    let (mut text, mut finish, mut model, mut pt, mut ct, mut choice, mut logprobs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, r) in responses.iter().enumerate() {
        for (k, c) in r.choices.iter().enumerate().take(n) {
            take.push(i as u32);
            text.push(c.text.clone());
            finish.push(c.finish_reason.clone());
            model.push(r.model.clone());
            pt.push(r.prompt_tokens);
            ct.push(r.completion_tokens);
            choice.push(k as u32);
            // As the server sent it (formats differ: llama.cpp gives chat-style `content` even
            // for completions); empty when it sent none.
            logprobs.push(c.logprobs.as_ref().map_or(String::new(), |l| l.to_string()));
        }
    }
    let mut extra: Vec<(Field, ArrayRef)> = vec![
        (Field::new("response", DataType::Utf8, false), Arc::new(StringArray::from(text))),
        (Field::new("finish_reason", DataType::Utf8, false), Arc::new(StringArray::from(finish))),
        (Field::new("model", DataType::Utf8, false), Arc::new(StringArray::from(model))),
        (Field::new("prompt_tokens", DataType::UInt64, false), Arc::new(UInt64Array::from(pt))),
        (Field::new("completion_tokens", DataType::UInt64, false), Arc::new(UInt64Array::from(ct))),
    ];
    if added("choice", &params.sampling) {
        extra.push((Field::new("choice", DataType::UInt32, false), Arc::new(UInt32Array::from(choice))));
    }
    if added("logprobs", &params.sampling) {
        extra.push((Field::new("logprobs", DataType::Utf8, false), Arc::new(StringArray::from(logprobs))));
    }
    extend(&input.batch, &take, extra)
}

fn check_error(e: CheckError) -> OpError {
    CheckErrors::from(e).into_op_error()
}
