//! The `ai_preference` op: SALMON's principle-driven synthetic preferences (Sun et al. 2023,
//! "SALMON: Self-Alignment with Instructable Reward Models", IBM/SALMON at commit 7392a56).
//!
//! Input `responses`: two responses per prompt, as SALMON's `instruction, input, output_1,
//! output_2` (names are params), or one response per row (`response_column`, e.g. what
//! `llm_generate` writes with `n: 2`), the first two rows of each prompt making its pair.
//! Pairs with a missing side, or a side shorter than `min_chars` (16, as SALMON), are skipped
//! and counted in the stage log.
//!
//! 1. For each pair and each principle of `dimensions` (from a principle collection in
//!    SALMON's JSON, `principles_file`, or inline `principles`), SALMON's synthetic-preference
//!    prompt (`prompt_file`) is filled in both orders and sent as a plain completion (it ends
//!    "... the more {Dimension} output is Output (") for one token with `top_logprobs`
//!    alternatives. s12 = logprob(a) - logprob(b) with output 1 shown as (a), s21 =
//!    logprob(b) - logprob(a) with it shown as (b): how the tokens are found, and what happens
//!    when one is missing or the server sends no logprobs (the answer's text is read, counted),
//!    is in `salmon::score`.
//! 2. SALMON's aggregation (`salmon::aggregate`), seeded by the stage's seed: `passes` over
//!    the pairs, k ~ Geometric(`geometric_p`) principles truncated at `max_principles`,
//!    scores over their variance, negation with `negation_prob`, the sign of the dominant
//!    dimension (0: skipped), the rules (`phrase` in one output; an output in another language
//!    than the instruction), flips (`noisy_ratio`, `rule_noisy_ratio`), the A/B order.
//!
//! Languages are detected with the `whatlang` crate (ISO 639-3 codes such as `eng`), where
//! SALMON uses fastText's `ftlangdetect` (ISO 639-1, `en`): the two disagree on short or mixed
//! texts, so the language rule labels some pairs differently from SALMON's; a text whatlang
//! cannot place reliably (often a short one) leaves the rule out for that pair, where
//! ftlangdetect always names a language.
//!
//! Output `out`: SALMON's columns under SALMON's names, `instruction, input, output_1,
//! output_2, preference` (1 or 2), `dimensions, negative_definitions, dimension_scores` (as
//! SALMON writes them, Python tuples), `doinate_dimension_idx` (SALMON's spelling), `flip,
//! lang, rule_flag`, plus `raw_votes`: every (principle, order) score of the pair as JSON,
//! oriented to the row (positive prefers the row's `output_1`), with how it was read. The pair
//! reader of `kit::pairs` reads it as SALMON's layout. Not deterministic (a model server);
//! every request goes through the memo, so a rerun sends nothing and a killed stage resumes.
//!
//! SALMON's prompt and principles are its data, CC BY-NC 4.0: this op embeds neither; the
//! pipeline names the files (copies in pipelines/data/salmon, with their SOURCE.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field};
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, Column, OpError, OpKit, PortType, Ports, RunCx, StageCx, Work, paths,
};
use serde::Deserialize;
use serde_json::json;

use crate::kit::draw::Draw;
use crate::kit::llm::template::{table as out_table, table_type, text_column};
use crate::kit::llm::{self, Client, Completion, Prompt, Request, Sampling};
use crate::kit::pairs::strings;
use crate::kit::pystr::py_strip;
use crate::kit::table;
use crate::text::salmon::aggregate::{Example, Knobs, Label, aggregate, variances};
use crate::text::salmon::principles::{Principle, PrincipleSpec, parse_file, validate};
use crate::text::salmon::repr::{py_float, py_str_tuple, py_tuple};
use crate::text::salmon::score::{self, Via};

/// The dimensions SALMON's aggregation uses (`ALL_DIMENSIONS`: the RM collection less
/// "Overall Helpful", "Natural and Fluent" and "Multilingual").
pub const SALMON_DIMENSIONS: [&str; 8] = [
    "Concise",
    "Honest and Accurate",
    "Ethical",
    "Specific",
    "Educational and Engaging",
    "Methodical",
    "Creative",
    "Comprehensive",
];

/// The fields SALMON's synthetic-preference prompt is filled with.
const FIELDS: [&str; 5] = ["{UserInstruction}", "{OutputA}", "{OutputB}", "{Dimension}", "{Definition}"];

/// The `with:` block of an `ai_preference` stage. Defaults are SALMON's
/// (`aggregate_synthetic_preference.py`'s and `synthetic_preference.py`'s).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiPreferenceParams {
    /// The endpoint of `llms:` that judges; it must serve plain completions (`/completions`),
    /// with logprobs for SALMON's scores.
    #[serde(default = "llm::default_llm")]
    pub llm: String,
    /// SALMON's synthetic-preference prompt, relative to the pipeline, with the fields
    /// `{UserInstruction}`, `{OutputA}`, `{OutputB}`, `{Dimension}`, `{Definition}`
    /// (pipelines/data/salmon/synthetic_preference_prompt.txt, CC BY-NC 4.0).
    pub prompt_file: String,
    /// A principle collection in SALMON's JSON, relative to the pipeline (e.g.
    /// pipelines/data/salmon/principle_collection_rm.json, CC BY-NC 4.0). Give this or
    /// `principles`.
    #[serde(default)]
    pub principles_file: Option<String>,
    /// The principles inline: `[{dimension, definition, negative_definition}, ...]`.
    #[serde(default)]
    pub principles: Option<Vec<PrincipleSpec>>,
    /// The dimensions judged and aggregated. Default: SALMON's eight (Concise, Honest and
    /// Accurate, Ethical, Specific, Educational and Engaging, Methodical, Creative,
    /// Comprehensive) when the collection has them all, else every principle of the collection.
    #[serde(default)]
    pub dimensions: Option<Vec<String>>,
    /// The prompt's column. Default `instruction`.
    #[serde(default = "default_instruction")]
    pub instruction_column: String,
    /// Extra context appended to the prompt after a blank line, as SALMON's `input`. Default:
    /// `input` when the table has it.
    #[serde(default)]
    pub input_column: Option<String>,
    /// The two responses' columns. Default `[output_1, output_2]`.
    #[serde(default = "default_outputs")]
    pub output_columns: [String; 2],
    /// One response per row instead (e.g. `response`, from `llm_generate` with `n: 2`): the
    /// first two rows of each prompt are its pair; `output_columns` is then not read.
    #[serde(default)]
    pub response_column: Option<String>,
    /// Skip a pair when a response has fewer characters. Default 16 (SALMON).
    #[serde(default = "default_min_chars")]
    pub min_chars: usize,
    /// Passes of the aggregation over the pairs, each drawing its own principles. Default 4.
    #[serde(default = "default_passes")]
    pub passes: usize,
    /// The most principles drawn for one label. Default 8.
    #[serde(default = "default_max_principles")]
    pub max_principles: usize,
    /// p of the Geometric(p) number of principles per label. Default 0.2.
    #[serde(default = "default_geometric_p")]
    pub geometric_p: f64,
    /// Probability that a drawn principle is negated. Default 0.5.
    #[serde(default = "default_half")]
    pub negation_prob: f64,
    /// Probability that a label is flipped. Default 0.1.
    #[serde(default = "default_noisy_ratio")]
    pub noisy_ratio: f64,
    /// Probability that a label set by a rule is flipped. Default 0.25 (SALMON's 2.5 x 0.1).
    #[serde(default = "default_rule_noisy_ratio")]
    pub rule_noisy_ratio: f64,
    /// A phrase that, in exactly one response, prefers the other. Default "As an AI language
    /// model"; empty: no phrase rule.
    #[serde(default = "default_phrase")]
    pub phrase: String,
    /// Probability that the phrase rule applies. Default 0.5.
    #[serde(default = "default_half")]
    pub phrase_prob: f64,
    /// Prefer the response in the instruction's language (skip when neither is). Default true.
    #[serde(default = "yes")]
    pub language_rule: bool,
    /// Alternatives asked for at the answer position. Default 20 (OpenAI's legacy completions
    /// allow at most 5); 0 asks for no logprobs, and the answer's text is read.
    #[serde(default = "default_top_logprobs")]
    pub top_logprobs: u32,
    /// Sampling for every request; unset fields take temperature 0 and max_tokens 1.
    #[serde(default)]
    pub sampling: Sampling,
}

fn default_instruction() -> String {
    "instruction".into()
}
fn default_outputs() -> [String; 2] {
    ["output_1".into(), "output_2".into()]
}
fn default_min_chars() -> usize {
    16
}
fn default_passes() -> usize {
    4
}
fn default_max_principles() -> usize {
    8
}
fn default_geometric_p() -> f64 {
    0.2
}
fn default_half() -> f64 {
    0.5
}
fn default_noisy_ratio() -> f64 {
    0.1
}
fn default_rule_noisy_ratio() -> f64 {
    0.25
}
fn default_phrase() -> String {
    "As an AI language model".into()
}
fn yes() -> bool {
    true
}
fn default_top_logprobs() -> u32 {
    20
}

impl AiPreferenceParams {
    fn knobs(&self) -> Knobs {
        Knobs {
            passes: self.passes,
            max_principles: self.max_principles,
            geometric_p: self.geometric_p,
            negation_prob: self.negation_prob,
            noisy_ratio: self.noisy_ratio,
            rule_noisy_ratio: self.rule_noisy_ratio,
            phrase_prob: if self.phrase.is_empty() { 0.0 } else { self.phrase_prob },
        }
    }

    fn sampling(&self) -> Sampling {
        let logprobs = (self.top_logprobs > 0).then_some(self.top_logprobs);
        self.sampling.or(Sampling { temperature: Some(0.0), max_tokens: Some(1), logprobs, ..Sampling::default() })
    }
}

/// Labels response pairs with SALMON's principle-driven synthetic preferences.
pub struct AiPreference;

const OUT: [(&str, &str); 13] = [
    ("instruction", "Utf8"),
    ("input", "Utf8"),
    ("output_1", "Utf8"),
    ("output_2", "Utf8"),
    ("preference", "Int64"),
    ("dimensions", "Utf8"),
    ("negative_definitions", "Utf8"),
    ("dimension_scores", "Utf8"),
    ("doinate_dimension_idx", "Int64"),
    ("flip", "Boolean"),
    ("lang", "Utf8"),
    ("rule_flag", "Boolean"),
    ("raw_votes", "Utf8"),
];

/// The draw stream of the aggregation.
const STREAM_AGGREGATE: u64 = 1;

impl OpKit for AiPreference {
    type Params = AiPreferenceParams;
    const NAME: &str = "ai_preference";
    const VERSION: u32 = 1;
    const DOC: &str = "SALMON's synthetic preferences: a model judges two responses under each principle in both \
                       orders (scores from logprobs), and SALMON's seeded aggregation turns the scores into \
                       preference labels.";
    const DETERMINISTIC: bool = false;

    fn inputs() -> Ports {
        Ports::one(
            "responses",
            PortType::any_table(),
            "Prompts with two responses: instruction, input, output_1, output_2; or one response per row.",
        )
    }

    fn outputs() -> Ports {
        Ports::one(
            "out",
            PortType::any_table(),
            "SALMON's labelled pairs: instruction, input, output_1, output_2, preference, ..., raw_votes.",
        )
    }

    fn check(&self, p: &AiPreferenceParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let mut errors = CheckErrors::new();
        let mut checked = Checked::default();
        errors.extend(llm::check_one_choice(cx, &p.llm, &p.sampling, &mut checked));
        errors.extend(check_prompt_file(cx.pipeline_dir, &p.prompt_file).err());
        checked.file_deps.push(PathBuf::from(&p.prompt_file));
        match load_principles(p, cx.pipeline_dir) {
            Ok(principles) => errors.extend(dimensions(p, &principles).err().into_iter().flatten()),
            Err(e) => errors.extend(e),
        }
        if let Some(file) = &p.principles_file {
            checked.file_deps.push(PathBuf::from(file));
        }
        match table::input_columns(cx, "responses") {
            Ok(columns) => errors.extend(check_columns(p, columns)),
            Err(e) => errors.push(e),
        }
        for (name, value) in [("passes", p.passes), ("max_principles", p.max_principles)] {
            if value == 0 {
                errors.push(CheckError::param(&[name], format!("{name} must be at least 1")));
            }
        }
        if !(p.geometric_p > 0.0 && p.geometric_p <= 1.0) {
            errors.push(
                CheckError::param(&["geometric_p"], format!("geometric_p {} is outside (0, 1]", p.geometric_p))
                    .help("SALMON draws the number of principles from Geometric(0.2)"),
            );
        }
        for (name, value) in [
            ("negation_prob", p.negation_prob),
            ("noisy_ratio", p.noisy_ratio),
            ("rule_noisy_ratio", p.rule_noisy_ratio),
            ("phrase_prob", p.phrase_prob),
        ] {
            if !(0.0..=1.0).contains(&value) {
                errors.push(CheckError::param(&[name], format!("{name} {value} is outside [0, 1]")));
            }
        }
        errors.or(checked.output("out", table_type(&OUT)))
    }

    fn work_left(&self, p: &AiPreferenceParams, cx: &StageCx) -> Option<String> {
        let prepared = prepare(p, cx, &mut Vec::new()).ok()?;
        Some(llm::work_left(&prepared.client, &prepared.requests))
    }

    fn run(&self, p: AiPreferenceParams, cx: RunCx) -> Work {
        Work::future(async move { run(p, cx).await })
    }
}

/// At plan time: the prompt file exists and has SALMON's five fields.
fn check_prompt_file(dir: &Path, file: &str) -> Result<String, CheckError> {
    let path = paths::resolve(dir, file);
    let at = |message: String| CheckError::param(&["prompt_file"], message);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        at(format!("cannot read the prompt file {}: {e}", path.display()))
            .help("give SALMON's synthetic-preference prompt relative to the pipeline (pipelines/data/salmon)")
    })?;
    let missing: Vec<&str> = FIELDS.iter().copied().filter(|f| !text.contains(f)).collect();
    if !missing.is_empty() {
        return Err(at(format!("the prompt file {} has no {}", path.display(), missing.join(", "))).help(
            "the judge prompt is filled with {UserInstruction}, {OutputA}, {OutputB}, {Dimension} and {Definition}, \
             as SALMON's synthetic_preference_prompt.txt",
        ));
    }
    // As SALMON: `f.read().strip()`.
    Ok(py_strip(&text).to_string())
}

/// The principle collection, checked; errors located at the param, and at the file's line.
fn load_principles(p: &AiPreferenceParams, dir: &Path) -> Result<Vec<Principle>, Vec<CheckError>> {
    let need_negative = p.negation_prob > 0.0;
    match (&p.principles_file, &p.principles) {
        (Some(_), Some(_)) => Err(vec![
            CheckError::param(&["principles"], "give `principles_file` or `principles`, not both")
                .help("`principles_file` names a JSON collection; `principles` lists them inline"),
        ]),
        (None, None) => Err(vec![
            CheckError::stage("`ai_preference` needs a principle collection")
                .help("e.g. `principles_file: data/salmon/principle_collection_rm.json` (SALMON's, CC BY-NC 4.0)"),
        ]),
        (None, Some(specs)) => validate(specs, need_negative).map_err(|problems| {
            problems
                .into_iter()
                .map(|pr| {
                    let index = pr.index.map(|i| i.to_string());
                    let mut path = vec!["principles"];
                    path.extend(index.as_deref());
                    path.extend(pr.field);
                    CheckError::param(&path, pr.message).help(pr.help)
                })
                .collect()
        }),
        (Some(file), None) => {
            let path = paths::resolve(dir, file);
            let at = |message: String| CheckError::param(&["principles_file"], message);
            let text =
                std::fs::read_to_string(&path).map_err(|e| {
                    vec![at(format!("cannot read the principle collection {}: {e}", path.display())).help(
                        "give the path relative to the pipeline (SALMON's collections are in pipelines/data/salmon)",
                    )]
                })?;
            let shown = path.display();
            let (specs, lines) = parse_file(&text).map_err(|why| vec![at(format!("{shown}:{why}"))])?;
            validate(&specs, need_negative).map_err(|problems| {
                problems
                    .into_iter()
                    .map(|pr| {
                        let line = pr.index.and_then(|i| lines.get(i).copied()).unwrap_or(1);
                        at(format!("{shown}:{line}: {}", pr.message)).help(pr.help)
                    })
                    .collect()
            })
        }
    }
}

/// The principles judged, in the order given: `dimensions`, else SALMON's eight when the
/// collection has them, else all.
fn dimensions(p: &AiPreferenceParams, all: &[Principle]) -> Result<Vec<Principle>, Vec<CheckError>> {
    let find = |name: &str| all.iter().find(|pr| pr.dimension == name).cloned();
    let Some(wanted) = &p.dimensions else {
        let salmon: Option<Vec<Principle>> = SALMON_DIMENSIONS.iter().map(|d| find(d)).collect();
        return Ok(salmon.unwrap_or_else(|| all.to_vec()));
    };
    if wanted.is_empty() {
        return Err(vec![CheckError::param(&["dimensions"], "`dimensions` is empty").help("leave it out to use all")]);
    }
    let names: Vec<&str> = all.iter().map(|pr| pr.dimension.as_str()).collect();
    let mut errors = Vec::new();
    let mut chosen = Vec::new();
    for (i, name) in wanted.iter().enumerate() {
        match find(name) {
            Some(pr) => chosen.push(pr),
            None => {
                let err = CheckError::param(&["dimensions", &i.to_string()], format!("unknown dimension `{name}`"));
                errors.push(match drover_engine::diag::nearest(name, names.iter().copied()) {
                    Some(near) => err.help(format!("did you mean `{near}`?")),
                    None => err.help(format!("the collection's dimensions are: {}", names.join(", "))),
                });
            }
        }
    }
    if errors.is_empty() { Ok(chosen) } else { Err(errors) }
}

/// At plan time, when the input's columns are known: the text columns the params name.
fn check_columns(p: &AiPreferenceParams, columns: Option<&[Column]>) -> Vec<CheckError> {
    let mut errors = Vec::new();
    let mut text = |param: &str, name: &str| {
        errors.extend(table::check_text_column("responses", Some(param), name, columns));
    };
    text("instruction_column", &p.instruction_column);
    if let Some(input) = &p.input_column {
        text("input_column", input);
    }
    match &p.response_column {
        Some(response) => text("response_column", response),
        None => {
            text("output_columns", &p.output_columns[0]);
            text("output_columns", &p.output_columns[1]);
        }
    }
    errors
}

/// One pair to judge.
#[derive(Clone, Debug)]
struct Item {
    instruction: String,
    input: String,
    outputs: [String; 2],
}

/// Everything `run` and `work_left` share: the pairs, the principles, the requests.
struct Prepared {
    items: Vec<Item>,
    principles: Vec<Principle>,
    client: Client,
    /// Per item, per principle: order (1, 2) then (2, 1).
    requests: Vec<Request>,
}

fn prepare(p: &AiPreferenceParams, cx: &StageCx, log: &mut Vec<String>) -> Result<Prepared, OpError> {
    let plan_error = |e: Vec<CheckError>| CheckErrors::from(e).into_op_error();
    let prompt = check_prompt_file(&cx.pipeline_dir, &p.prompt_file).map_err(|e| plan_error(vec![e]))?;
    let principles = load_principles(p, &cx.pipeline_dir).map_err(plan_error)?;
    let principles = dimensions(p, &principles).map_err(plan_error)?;
    let items = read_items(p, &cx.input("responses")?.path, log)?;
    log.push(format!("{} pairs, judged on {} principles in both orders", items.len(), principles.len()));
    let client = Client::new(cx, &p.llm)?;
    let sampling = p.sampling();
    let mut requests = Vec::with_capacity(items.len() * principles.len() * 2);
    for item in &items {
        let instruction = match item.input.is_empty() {
            true => item.instruction.clone(),
            false => format!("{}\n\n{}", item.instruction, item.input),
        };
        for principle in &principles {
            for (a, b) in [(&item.outputs[0], &item.outputs[1]), (&item.outputs[1], &item.outputs[0])] {
                let text = fill(&prompt, &[&instruction, a, b, &principle.dimension, &principle.definition]);
                requests.push(Request { prompt: Prompt::Text(text), sampling: sampling.clone() });
            }
        }
    }
    client.seed_by_prompt(&mut requests);
    Ok(Prepared { items, principles, client, requests })
}

/// SALMON's `PREFERENCE_META_PROMPT.format(...)`, each field replaced in one pass (a value
/// holding a field's name is left as it is).
fn fill(prompt: &str, values: &[&str; 5]) -> String {
    let mut out = String::with_capacity(prompt.len() + values.iter().map(|v| v.len()).sum::<usize>());
    let mut rest = prompt;
    'scan: while let Some(open) = rest.find('{') {
        for (field, value) in FIELDS.iter().zip(values) {
            if rest[open..].starts_with(field) {
                out.push_str(&rest[..open]);
                out.push_str(value);
                rest = &rest[open + field.len()..];
                continue 'scan;
            }
        }
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
    }
    out.push_str(rest);
    out
}

/// A pair before its checks: its rows, instruction, input and two responses.
type Raw = ([usize; 2], String, String, [Option<String>; 2]);

/// The pairs of the input; the rows skipped go to the log.
fn read_items(p: &AiPreferenceParams, path: &Path, log: &mut Vec<String>) -> Result<Vec<Item>, OpError> {
    let (schema, batches) = table::read_input(path)?;
    let batch: RecordBatch =
        concat_batches(&schema, &batches).map_err(|e| OpError::failed(format!("ai_preference: {e}")))?;
    let has = |name: &str| schema.field_with_name(name).is_ok();
    let instructions = strings(&batch, &p.instruction_column)?;
    let input_column = p.input_column.clone().or_else(|| has("input").then(|| "input".to_string()));
    let inputs = match &input_column {
        Some(c) => strings(&batch, c)?,
        None => vec![None; batch.num_rows()],
    };
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut raw: Vec<Raw> = Vec::new();
    let mut extra = 0;
    match &p.response_column {
        None => {
            let (one, two) = (strings(&batch, &p.output_columns[0])?, strings(&batch, &p.output_columns[1])?);
            for row in 0..batch.num_rows() {
                let outputs = [one[row].clone(), two[row].clone()];
                raw.push(([row, row], value(&instructions[row]), value(&inputs[row]), outputs));
            }
        }
        Some(column) => {
            let responses = strings(&batch, column)?;
            let mut at = BTreeMap::<(String, String), usize>::new();
            for row in 0..batch.num_rows() {
                let key = (value(&instructions[row]), value(&inputs[row]));
                match at.get(&key) {
                    None => {
                        at.insert(key.clone(), raw.len());
                        raw.push(([row, row], key.0, key.1, [responses[row].clone(), None]));
                    }
                    // The prompt's second response: its pair's second row is not set yet.
                    Some(&k) if raw[k].0[0] == raw[k].0[1] => {
                        raw[k].0[1] = row;
                        raw[k].3[1] = responses[row].clone();
                    }
                    Some(_) => extra += 1,
                }
            }
        }
    }
    let (mut missing, mut short) = (Vec::new(), Vec::new());
    let mut items = Vec::new();
    for (rows, instruction, input, outputs) in raw {
        let [Some(one), Some(two)] = outputs.clone() else {
            missing.push(rows[0]);
            continue;
        };
        if one.trim().is_empty() || two.trim().is_empty() || instruction.trim().is_empty() {
            missing.push(rows[0]);
        } else if one.chars().count() < p.min_chars || two.chars().count() < p.min_chars {
            short.push(rows[0]);
        } else {
            items.push(Item { instruction, input, outputs: [one, two] });
        }
    }
    let listed = |rows: &[usize]| {
        let shown: Vec<String> = rows.iter().take(5).map(|r| r.to_string()).collect();
        format!("rows {}{}", shown.join(", "), if rows.len() > 5 { ", ..." } else { "" })
    };
    let mut skipped = Vec::new();
    if !missing.is_empty() {
        skipped.push(format!("{} with a missing prompt or response ({})", missing.len(), listed(&missing)));
    }
    if !short.is_empty() {
        skipped.push(format!(
            "{} with a response shorter than {} characters ({})",
            short.len(),
            p.min_chars,
            listed(&short)
        ));
    }
    let total = missing.len() + short.len();
    if total > 0 {
        log.push(format!("{total} {} skipped: {}", if total == 1 { "pair" } else { "pairs" }, skipped.join("; ")));
    }
    if extra > 0 {
        log.push(format!("responses past the first two of their prompt, left out: {extra}"));
    }
    if items.is_empty() {
        let why = log.first().cloned().unwrap_or_else(|| "it has no rows".to_string());
        return Err(OpError::failed(format!("`responses` has no pair of responses to label: {why}")));
    }
    Ok(items)
}

/// The language whatlang detects (ISO 639-3), or `None` when it cannot tell reliably: on a
/// short text it often guesses (it takes "As an AI language model, I cannot count legs, but
/// spiders have six." for Catalan), and a guess would decide the label by the language rule.
fn language(text: &str) -> Option<String> {
    whatlang::detect(&text.replace('\n', " "))
        .filter(|info| info.is_reliable())
        .map(|info| info.lang().code().to_string())
}

async fn run(p: AiPreferenceParams, cx: RunCx) -> Result<(), OpError> {
    let mut log = Vec::new();
    let prepared = prepare(&p, &cx, &mut log)?;
    let Prepared { items, principles, client, requests } = prepared;
    cx.progress.set_total(requests.len() as u64);
    let replies: Vec<Completion> = llm::run_all(&client, requests, &cx.progress).await?;

    // Scores: replies[(item * principles + d) * 2 + order].
    let n = principles.len();
    let mut counts = BTreeMap::<&'static str, usize>::new();
    let mut reads = Vec::with_capacity(replies.len());
    for reply in &replies {
        let choice = reply.choices.first();
        let (s, via) = score::read(reply.text(), choice.and_then(|c| c.logprobs.as_ref()));
        *counts.entry(via.word()).or_default() += 1;
        reads.push((s, via));
    }
    let phrase = |text: &str| !p.phrase.is_empty() && text.contains(&p.phrase);
    let examples: Vec<Example> = items
        .iter()
        .enumerate()
        .map(|(i, item)| Example {
            scores: (0..n)
                .map(|d| {
                    let k = (i * n + d) * 2;
                    // s12 = lp(a) - lp(b) with output 1 as (a); s21 = lp(b) - lp(a) with it as (b).
                    (reads[k].0, -reads[k + 1].0)
                })
                .collect(),
            phrase: (phrase(&item.outputs[0]), phrase(&item.outputs[1])),
            langs: match p.language_rule {
                true => [language(&item.instruction), language(&item.outputs[0]), language(&item.outputs[1])],
                false => [None, None, None],
            },
        })
        .collect();
    let variances = variances(&examples, n);
    let mut draw = Draw::new(cx.seed, STREAM_AGGREGATE);
    let (labels, tally) = aggregate(&examples, &variances, &p.knobs(), &mut draw);

    let count = |via: Via| counts.get(via.word()).copied().unwrap_or(0);
    log.push(format!(
        "votes: {} read from logprobs, {} bounded (a or b not among the top {} logprobs), {} from the answer's \
         text (no usable logprobs: the text fallback), {} unreadable (scored 0)",
        count(Via::Logprobs),
        count(Via::Bound),
        p.sampling().logprobs.unwrap_or(0),
        count(Via::Text),
        count(Via::Unreadable)
    ));
    let shown: Vec<String> =
        principles.iter().zip(&variances).map(|(pr, v)| format!("{} {}", pr.dimension, py_float(*v))).collect();
    log.push(format!("variances: {}", shown.join(", ")));
    let reasons: Vec<String> =
        principles.iter().zip(&tally.reasons).map(|(pr, c)| format!("{} {c}", pr.dimension)).collect();
    log.push(format!(
        "labels: {} over {} passes ({} by a rule); skipped: {} with every drawn score 0, {} with both responses in \
         another language than the instruction; decided by: {}",
        labels.len(),
        p.passes,
        tally.rule,
        tally.zero,
        tally.both_foreign,
        reasons.join(", ")
    ));
    log.push(llm::summary(&client));
    llm::append_log(&cx, &log.join("\n"));
    write(&cx, &items, &principles, &examples, &reads, &labels)
}

fn write(
    cx: &RunCx,
    items: &[Item],
    principles: &[Principle],
    examples: &[Example],
    reads: &[(f64, Via)],
    labels: &[Label],
) -> Result<(), OpError> {
    let n = principles.len();
    let mut columns: [Vec<String>; 9] = Default::default();
    let (mut preference, mut dominant, mut flip, mut rule) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for label in labels {
        let (item, example) = (&items[label.example], &examples[label.example]);
        let (one, two) = if label.swapped { (1, 0) } else { (0, 1) };
        let langs: Vec<String> = [&example.langs[0], &example.langs[one + 1], &example.langs[two + 1]]
            .iter()
            .map(|l| l.as_deref().map_or("None".to_string(), crate::kit::pystr::py_repr))
            .collect();
        let names: Vec<&str> = label.dimensions.iter().map(|&d| principles[d].dimension.as_str()).collect();
        let mut votes = Vec::with_capacity(2 * n);
        for (d, principle) in principles.iter().enumerate() {
            let k = (label.example * n + d) * 2;
            // Oriented to the row: (s12, s21) of the row's output 1; swapped, the example's
            // order (1, 2) shows the row's output 1 as (b).
            let (s12, s21, via12, via21) = match label.swapped {
                false => (reads[k].0, -reads[k + 1].0, reads[k].1, reads[k + 1].1),
                true => (reads[k + 1].0, -reads[k].0, reads[k + 1].1, reads[k].1),
            };
            for (order, s, via) in [("12", s12, via12), ("21", s21, via21)] {
                votes.push(json!({"dimension": principle.dimension, "order": order, "score": s, "via": via.word()}));
            }
        }
        let values = [
            item.instruction.clone(),
            item.input.clone(),
            item.outputs[one].clone(),
            item.outputs[two].clone(),
            py_str_tuple(&names),
            py_tuple(&label.negated.iter().map(|&b| u8::from(b).to_string()).collect::<Vec<_>>()),
            py_tuple(&label.scores.iter().map(|&s| py_float(s)).collect::<Vec<_>>()),
            py_tuple(&langs),
            serde_json::Value::Array(votes).to_string(),
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
        preference.push(i64::from(label.preference));
        dominant.push(label.dominant as i64);
        flip.push(label.flip);
        rule.push(label.rule_flag);
    }
    let [instruction, input, output_1, output_2, dimensions, negative, scores, lang, raw_votes] = columns;
    let int =
        |name: &str, v: Vec<i64>| (Field::new(name, DataType::Int64, false), Arc::new(Int64Array::from(v)) as ArrayRef);
    let boolean = |name: &str, v: Vec<bool>| {
        (Field::new(name, DataType::Boolean, false), Arc::new(BooleanArray::from(v)) as ArrayRef)
    };
    let (schema, batch) = out_table(vec![
        text_column("instruction", instruction),
        text_column("input", input),
        text_column("output_1", output_1),
        text_column("output_2", output_2),
        int("preference", preference),
        text_column("dimensions", dimensions),
        text_column("negative_definitions", negative),
        text_column("dimension_scores", scores),
        int("doinate_dimension_idx", dominant),
        boolean("flip", flip),
        text_column("lang", lang),
        boolean("rule_flag", rule),
        text_column("raw_votes", raw_votes),
    ])?;
    table::write_parquet(&cx.output("out")?.path, &schema, &[batch])
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::kit::llm::mock::{MockLlm, nowhere};
    use crate::kit::pairs::{PairSchema, Side};
    use crate::kit::testing::{OpTest, column, names, texts};

    /// A judge prompt with SALMON's fields (not SALMON's text, which is CC BY-NC data).
    const PROMPT: &str = "Instruction: {UserInstruction}\nOutput (a): {OutputA}\nOutput (b): {OutputB}\n\
                          {Dimension}: {Definition}\nThe more {Dimension} output is Output (\n";

    fn principles() -> Value {
        json!([
            {"dimension": "Concise", "definition": "Brief.", "negative_definition": "Long."},
            {"dimension": "Honest", "definition": "True.", "negative_definition": "False."}
        ])
    }

    /// Knobs that leave only the A/B order and the principles drawn to chance.
    fn params(extra: Value) -> Value {
        let mut p = json!({
            "prompt_file": "prompt.txt", "principles": principles(), "negation_prob": 0.0, "noisy_ratio": 0.0,
            "rule_noisy_ratio": 0.0, "language_rule": false, "min_chars": 1
        });
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        p
    }

    /// A judge that prefers the shorter output, answering with the letter only.
    fn shorter(body: &Value) -> String {
        let prompt = body["prompt"].as_str().unwrap();
        let between = |from: &str, to: &str| {
            let rest = &prompt[prompt.find(from).unwrap() + from.len()..];
            rest[..rest.find(to).unwrap()].to_string()
        };
        let (a, b) = (between("Output (a): ", "\nOutput (b)"), between("Output (b): ", "\n"));
        if a.len() < b.len() { "a".into() } else { "b".into() }
    }

    fn test(p: Value, input: RecordBatch, server: &MockLlm) -> OpTest {
        let t = OpTest::new(p).llms(server.llms()).input("responses", input);
        std::fs::write(t.dir().join("prompt.txt"), PROMPT).unwrap();
        t
    }

    fn run(t: &OpTest) -> Result<RecordBatch, OpError> {
        t.check(&AiPreference).map_err(|e| OpError::failed(format!("{e:?}")))?;
        t.run(&AiPreference)
    }

    fn log(t: &OpTest) -> String {
        std::fs::read_to_string(t.dir().join("log.txt")).unwrap()
    }

    fn three_pairs() -> RecordBatch {
        texts(&[
            ("instruction", &["Say hi.", "Name a colour.", "Count to three."]),
            ("output_1", &["hi", "a colour I like a lot is blue", "one two three"]),
            ("output_2", &["hello there, how are you?", "red", "one, two and then three, done"]),
        ])
    }

    #[test]
    fn scripted_judgements_give_salmons_columns_and_a_rerun_sends_nothing() {
        let server = MockLlm::start(shorter);
        let t = test(params(json!({})), three_pairs(), &server);
        let out = run(&t).unwrap();
        // 3 pairs x 2 principles x 2 orders, as plain completions of one token.
        assert_eq!(server.sent(), 12);
        let body = server.bodies.lock().unwrap()[0].clone();
        assert!(body["prompt"].as_str().unwrap().ends_with("The more Concise output is Output ("), "{body}");
        assert_eq!(
            (body["max_tokens"].clone(), body["temperature"].clone(), body["logprobs"].clone()),
            (json!(1), json!(0.0), json!(20))
        );
        assert_eq!(
            names(&out),
            [
                "instruction",
                "input",
                "output_1",
                "output_2",
                "preference",
                "dimensions",
                "negative_definitions",
                "dimension_scores",
                "doinate_dimension_idx",
                "flip",
                "lang",
                "rule_flag",
                "raw_votes"
            ]
        );
        // Four passes over three pairs, none skipped: every score is 1 or -1 in both orders.
        assert_eq!(out.num_rows(), 12);
        let (one, two, pref) = (column(&out, "output_1"), column(&out, "output_2"), column(&out, "preference"));
        for r in 0..12 {
            let (chosen, other) = if pref[r] == "1" { (&one[r], &two[r]) } else { (&two[r], &one[r]) };
            assert!(chosen.len() < other.len(), "row {r}: {chosen:?} over {other:?}");
        }
        // Both orders of the rows were drawn.
        assert!(one.contains(&"hi".to_string()) && two.contains(&"hi".to_string()), "{one:?}");
        assert_eq!(column(&out, "flip"), ["false"; 12]);
        assert_eq!(column(&out, "lang"), ["(None, None, None)"; 12]);
        // The dominant dimension's score has the sign of the label.
        let scores = column(&out, "dimension_scores");
        let dims = column(&out, "dimensions");
        let dominant = column(&out, "doinate_dimension_idx");
        for r in 0..12 {
            let parts: Vec<&str> = scores[r].trim_matches(|c| c == '(' || c == ')').split(',').collect();
            let parts: Vec<f64> =
                parts.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
            let d: usize = dominant[r].parse().unwrap();
            assert_eq!(parts[d] > 0.0, pref[r] == "1", "row {r}: {} {}", scores[r], pref[r]);
            assert_eq!(dims[r].matches('\'').count(), 2 * parts.len(), "{}", dims[r]);
        }
        // Raw votes: every principle in both orders, oriented to the row's output 1.
        let votes: Value = serde_json::from_str(&column(&out, "raw_votes")[0]).unwrap();
        assert_eq!(votes.as_array().unwrap().len(), 4);
        let prefers_one = one[0].len() < two[0].len();
        for v in votes.as_array().unwrap() {
            assert_eq!(v["via"], "text");
            assert_eq!(v["score"].as_f64().unwrap() > 0.0, prefers_one, "{v}");
        }
        assert!(
            log(&t).contains(
                "3 pairs, judged on 2 principles in both orders\nvotes: 0 read from logprobs, 0 bounded (a or b not \
                 among the top 20 logprobs), 12 from the answer's text (no usable logprobs: the text fallback), 0 \
                 unreadable (scored 0)\n"
            ),
            "{}",
            log(&t)
        );
        // The shared pair reader reads it as SALMON's layout, the shorter one preferred.
        let columns = crate::kit::table::table_schema(&out.schema()).columns;
        let schema = PairSchema::resolve("pairs", &["columns"], columns.as_deref(), None).unwrap().unwrap();
        let pairs = schema.read(&out).unwrap().pairs;
        assert_eq!(pairs.len(), 12);
        assert!(pairs.iter().all(|p| p.prompt.is_some() && (p.preferred == Side::A) == (p.a.len() < p.b.len())));

        assert_eq!(t.work_left(&AiPreference).unwrap(), "all 12 requests already answered");
        let again = run(&t).unwrap();
        assert_eq!(server.sent(), 12);
        assert_eq!(again, out);
        // Another seed draws other rows from the same replies.
        let t2 = test(params(json!({})), three_pairs(), &server);
        let t2 = t2.seed(9);
        std::fs::write(t2.dir().join("prompt.txt"), PROMPT).unwrap();
        assert_ne!(run(&t2).unwrap(), out);
    }

    #[test]
    fn the_language_rule_prefers_the_instructions_language() {
        // The judge prefers the shorter output, the French one; the rule overrides it.
        let server = MockLlm::start(shorter);
        let input = texts(&[
            ("instruction", &["Please describe what the weather is usually like in the summer months."]),
            ("output_1", &["In the summer months the weather is usually warm and sunny, with long days."]),
            ("output_2", &["En été, il fait chaud et le soleil brille."]),
        ]);
        let t = test(params(json!({"language_rule": true, "passes": 6})), input, &server);
        let out = run(&t).unwrap();
        let (one, pref, lang) = (column(&out, "output_1"), column(&out, "preference"), column(&out, "lang"));
        assert_eq!(out.num_rows(), 6);
        for r in 0..6 {
            let english_first = one[r].starts_with("In the summer");
            assert_eq!(pref[r], if english_first { "1" } else { "2" });
            let expected = if english_first { "('eng', 'eng', 'fra')" } else { "('eng', 'fra', 'eng')" };
            assert_eq!(lang[r], expected);
        }
        assert_eq!(column(&out, "rule_flag"), ["true"; 6]);
        assert!(log(&t).contains("labels: 6 over 6 passes (6 by a rule)"), "{}", log(&t));
    }

    #[test]
    fn one_response_per_row_pairs_the_first_two_of_each_prompt() {
        let server = MockLlm::start(shorter);
        let input = texts(&[
            ("instruction", &["Say hi.", "Name a colour.", "Say hi.", "Name a colour.", "Say hi.", "Alone."]),
            ("response", &["hi", "blue, like the sky", "hello there, friend", "red", "hey", "only one"]),
        ]);
        let t = test(params(json!({"response_column": "response", "passes": 1})), input, &server);
        let out = run(&t).unwrap();
        assert_eq!(out.num_rows(), 2);
        assert_eq!(server.sent(), 8);
        let mut pairs: Vec<(String, String)> =
            column(&out, "output_1").into_iter().zip(column(&out, "output_2")).collect();
        for p in &mut pairs {
            if p.0 > p.1 {
                std::mem::swap(&mut p.0, &mut p.1);
            }
        }
        pairs.sort();
        assert_eq!(pairs, [("blue, like the sky".into(), "red".into()), ("hello there, friend".into(), "hi".into())]);
        assert!(
            log(&t).starts_with(
                "1 pair skipped: 1 with a missing prompt or response (rows 5)\nresponses past the first two of \
                 their prompt, left out: 1\n2 pairs"
            ),
            "{}",
            log(&t)
        );
    }

    #[test]
    fn missing_and_short_responses_are_counted_skips_and_no_pair_fails() {
        let server = MockLlm::start(shorter);
        let input = arrow::array::RecordBatch::try_from_iter(vec![
            (
                "instruction",
                Arc::new(arrow::array::StringArray::from(vec![Some("a"), Some("b"), Some("c"), Some("d")])) as ArrayRef,
            ),
            (
                "output_1",
                Arc::new(arrow::array::StringArray::from(vec![Some("a fine answer"), None, Some(""), Some("ok")]))
                    as ArrayRef,
            ),
            (
                "output_2",
                Arc::new(arrow::array::StringArray::from(vec![
                    Some("another one"),
                    Some("x y z"),
                    Some("w v"),
                    Some("a longer one"),
                ])) as ArrayRef,
            ),
        ])
        .unwrap();
        let t = test(params(json!({"min_chars": 4, "passes": 1})), input.clone(), &server);
        run(&t).unwrap();
        assert!(
            log(&t).starts_with(
                "3 pairs skipped: 2 with a missing prompt or response (rows 1, 2); 1 with a response shorter than 4 \
                 characters (rows 3)\n1 pairs"
            ),
            "{}",
            log(&t)
        );
        let t = test(params(json!({"min_chars": 4})), input.slice(1, 3), &server);
        assert_eq!(
            run(&t).unwrap_err().message,
            "`responses` has no pair of responses to label: 3 pairs skipped: 2 with a missing prompt or response \
             (rows 0, 1); 1 with a response shorter than 4 characters (rows 2)"
        );
    }

    #[test]
    fn bad_principles_dimensions_and_columns_are_plan_errors() {
        let check = |extra: Value, files: &[(&str, &str)]| {
            let shown = extra.to_string();
            let t = OpTest::new(params(extra)).llms(nowhere()).input("responses", three_pairs());
            std::fs::write(t.dir().join("prompt.txt"), PROMPT).unwrap();
            for (name, text) in files {
                std::fs::write(t.dir().join(name), text).unwrap();
            }
            let errors = t.check(&AiPreference).err().unwrap_or_else(|| panic!("no error for {shown}"));
            (errors[0].clone(), t.dir().to_path_buf())
        };
        let (e, _) = check(json!({"principles": []}), &[]);
        assert_eq!(e.message, "the principle collection is empty");
        assert!(e.help.unwrap().contains("principle_collection_rm.json"));
        let (e, _) = check(json!({"principles": [{"dimension": "Concise", "negative_definition": "x"}]}), &[]);
        assert_eq!(e.message, "principle 1 (`Concise`) has no `definition`");
        assert!(
            matches!(&e.at, drover_engine::CheckLocation::Param(p) if p == &["principles", "0", "definition"]),
            "{:?}",
            e.at
        );
        let file = "[\n  {\"dimension\": \"A\", \"definition\": \"x\", \"negative_definition\": \"y\"},\n  {\"dimension\": \"B\",\n   \"negative_definition\": \"y\"}\n]\n";
        let (e, dir) = check(json!({"principles": null, "principles_file": "p.json"}), &[("p.json", file)]);
        assert_eq!(e.message, format!("{}:3: principle 2 (`B`) has no `definition`", dir.join("p.json").display()));
        let (e, dir) = check(json!({"principles": null, "principles_file": "p.json"}), &[("p.json", "[]")]);
        assert_eq!(e.message, format!("{}:1: the principle collection is empty", dir.join("p.json").display()));
        let (e, _) = check(json!({"principles": null}), &[]);
        assert_eq!(e.message, "`ai_preference` needs a principle collection");
        let (e, _) = check(json!({"dimensions": ["Concice"]}), &[]);
        assert_eq!(
            (e.message.as_str(), e.help.as_deref()),
            ("unknown dimension `Concice`", Some("did you mean `Concise`?"))
        );
        let (e, _) = check(json!({"principles": [{"dimension": "A", "definition": "x"}], "negation_prob": 0.5}), &[]);
        assert_eq!(e.message, "principle 1 (`A`) has no `negative_definition`");
        let (e, _) = check(json!({"output_columns": ["output_1", "output_3"]}), &[]);
        assert_eq!(
            (e.message.as_str(), e.help.as_deref()),
            ("unknown column `output_3`", Some("did you mean `output_1`?"))
        );
        let (e, _) = check(json!({"prompt_file": "nope.txt"}), &[]);
        assert!(e.message.starts_with("cannot read the prompt file "), "{}", e.message);
        let (e, _) = check(json!({"prompt_file": "p.txt"}), &[("p.txt", "{UserInstruction} {OutputA}")]);
        assert!(e.message.ends_with("p.txt has no {OutputB}, {Dimension}, {Definition}"), "{}", e.message);
        let (e, _) = check(json!({"geometric_p": 0.0}), &[]);
        assert_eq!(e.message, "geometric_p 0 is outside (0, 1]");
        let (e, _) = check(json!({"negation_prob": 2.0}), &[]);
        assert_eq!(e.message, "negation_prob 2 is outside [0, 1]");
        // Several problems are reported together.
        let t = OpTest::new(params(json!({"passes": 0, "principles": []})))
            .llms(nowhere())
            .input("responses", three_pairs());
        let errors = t.check(&AiPreference).unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert!(
            messages.contains(&"the principle collection is empty") && messages.contains(&"passes must be at least 1"),
            "{messages:?}"
        );
    }

    #[test]
    fn fields_are_filled_once_each() {
        let filled = fill(
            "{UserInstruction}|{OutputA}|{OutputB}|{Dimension}: {Definition} {x}",
            &["i {OutputB}", "a", "b", "D", "def"],
        );
        assert_eq!(filled, "i {OutputB}|a|b|D: def {x}");
    }

    #[test]
    fn salmons_eight_dimensions_are_the_default_when_the_collection_has_them() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../pipelines/data/salmon/principle_collection_rm.json"
        ))
        .unwrap();
        let all = validate(&parse_file(&text).unwrap().0, true).unwrap();
        let p: AiPreferenceParams = serde_json::from_value(json!({"prompt_file": "x"})).unwrap();
        let chosen: Vec<String> = dimensions(&p, &all).unwrap().into_iter().map(|pr| pr.dimension).collect();
        assert_eq!(chosen, SALMON_DIMENSIONS);
        let chosen = dimensions(&p, &all[..2]).unwrap();
        assert_eq!(chosen.len(), 2);
    }
}
