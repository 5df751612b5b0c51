//! The `principle_generate_responses` op: SELF-ALIGN's stage 2 (Dromedary, Sun et al. 2023),
//! principle-driven answers from a base model, with Dromedary's filters.
//!
//! Each instruction is appended to a prompt of principles and worked examples (the `prompt_file`,
//! e.g. Dromedary's `watson_self_align_prompt.txt`), as `generate_self_align_response.py` does:
//! `{prompt} {instruction}[\n\n{input}]\n\nWatson (internal thoughts):`, sampled with "Sorry"
//! banned (logit bias -100) at temperature 0.5, top_p 0.95, 256 tokens (the 65B script). The
//! answers then go through the filters of `merge_self_align_with_dummy.py` (commit 40f76d7), in
//! its order: the self-identification line, an answer after "\n\nWatson:", repeated-sentence
//! truncation, a cut at the next "\n\nUser:" (then at least 160 characters) or else dropping the
//! last partial word, the exemplar-leak blacklist, no apologetic start, the Watson -> Dromedary
//! rename (`rename_to`), and the Wikipedia-recitation prefix.
//!
//! Outputs: `out`, the kept rows as a fine-tune reads them (`instruction`, `input`, `output`);
//! `all`, every row with the model's raw text and why it was dropped (`kept`, `reason`).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::datatypes::{DataType, Field};
use drover_engine::{
    CheckCx, CheckErrors, Checked, OpError, OpKit, PortDecl, PortType, Ports, RunCx, StageCx, Work, paths,
};
use serde::Deserialize;

use crate::kit::llm::template::{
    Rows, check_no_clash, extend, extended_type, table as out_table, table_type, text_column,
};
use crate::kit::llm::{self, Client, Prompt, Request, Sampling};
use crate::kit::synth::check_prompt_file;
use crate::kit::table;

/// The `with:` block of a `principle_generate_responses` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
// The schema keeps the name it was published under (`drover schema` prints it as the title).
#[schemars(rename = "PrincipleParams")]
pub struct PrincipleGenerateResponsesParams {
    #[serde(default = "llm::default_llm")]
    pub llm: String,
    /// The principles and exemplars, ending where the user's turn begins (Dromedary's prompt
    /// ends with `User:`). Relative to the pipeline directory, or absolute.
    pub prompt_file: String,
    /// The instruction column. Default: `instruction`.
    #[serde(default = "default_instruction")]
    pub column: String,
    /// An optional column with the instruction's input (appended after a blank line).
    pub input_column: Option<String>,
    /// The assistant's name in the prompt. Default: `Watson`.
    #[serde(default = "default_name")]
    pub assistant: String,
    /// The name the kept answers use instead. Default: `Dromedary`.
    #[serde(default = "default_rename")]
    pub rename_to: String,
    /// Sampling; unset fields take Dromedary's values (temperature 0.5, top_p 0.95,
    /// max_tokens 256, logit_bias {"Sorry": -100}). llama.cpp's server resolves a text key of
    /// `logit_bias` to its tokens; other servers need token ids.
    #[serde(default)]
    pub sampling: Sampling,
}

fn default_instruction() -> String {
    "instruction".into()
}
fn default_name() -> String {
    "Watson".into()
}
fn default_rename() -> String {
    "Dromedary".into()
}

/// Dromedary's sampling (the 65B script), under what the stage sets.
fn default_sampling() -> Sampling {
    Sampling {
        temperature: Some(0.5),
        top_p: Some(0.95),
        max_tokens: Some(256),
        logit_bias: Some([("Sorry".to_string(), -100.0)].into()),
        ..Sampling::default()
    }
}

/// Generates principle-driven answers and filters them.
pub struct PrincipleGenerateResponses;

const ADDED: [(&str, &str); 4] = [("raw", "Utf8"), ("response", "Utf8"), ("kept", "Boolean"), ("reason", "Utf8")];

impl OpKit for PrincipleGenerateResponses {
    type Params = PrincipleGenerateResponsesParams;
    const NAME: &str = "principle_generate_responses";
    const VERSION: u32 = 1;
    const DOC: &str = "SELF-ALIGN stage 2: answers instructions under a prompt of principles and exemplars, with \
                       Dromedary's filters; `out` has the kept (instruction, input, output), `all` every row with \
                       raw, response, kept and reason.";
    const DETERMINISTIC: bool = false;

    fn inputs() -> Ports {
        Ports::one("table", PortType::any_table(), "The instructions (and optional inputs).")
    }

    fn outputs() -> Ports {
        Ports::Fixed(vec![
            PortDecl::new("out", PortType::any_table(), "Kept rows: instruction, input, output."),
            PortDecl::new("all", PortType::any_table(), "Every row with raw, response, kept, reason."),
        ])
    }

    fn check(&self, params: &PrincipleGenerateResponsesParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let columns = table::input_columns(cx, "table")?;
        let mut checked = Checked::default();
        let mut errors = CheckErrors::from(llm::check_one_choice(cx, &params.llm, &params.sampling, &mut checked));
        let help = "give the principles-and-exemplars prompt, relative to the pipeline (Dromedary's is in \
                    pipelines/data/dromedary)";
        errors.extend(check_prompt_file(cx, &params.prompt_file, help, &mut checked).err());
        errors.extend(table::check_text_column("table", Some("column"), &params.column, columns));
        if let Some(input) = &params.input_column {
            errors.extend(table::check_text_column("table", Some("input_column"), input, columns));
        }
        errors.extend(check_no_clash(columns, &ADDED).err());
        let out = table_type(&[("instruction", "Utf8"), ("input", "Utf8"), ("output", "Utf8")]);
        errors.or(checked.output("out", out).output("all", extended_type(columns, &ADDED)))
    }

    fn work_left(&self, params: &PrincipleGenerateResponsesParams, cx: &StageCx) -> Option<String> {
        let (.., client, requests) = requests(params, cx).ok()?;
        Some(llm::work_left(&client, &requests))
    }

    fn run(&self, params: PrincipleGenerateResponsesParams, cx: RunCx) -> Work {
        Work::future(async move {
            let (input, instructions, inputs, client, requests) = requests(&params, &cx)?;
            cx.progress.set_total(requests.len() as u64);
            let responses = llm::run_all(&client, requests, &cx.progress).await?;
            let filter = Filter { assistant: &params.assistant, rename_to: &params.rename_to };
            let (mut raw, mut answer, mut kept, mut reason) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut out_i, mut out_in, mut out_out) = (Vec::new(), Vec::new(), Vec::new());
            let mut dropped = std::collections::BTreeMap::<&'static str, usize>::new();
            for (k, r) in responses.iter().enumerate() {
                let text = r.text();
                raw.push(text.to_string());
                match filter.apply(text) {
                    Ok(a) => {
                        out_i.push(instructions[k].clone());
                        out_in.push(inputs[k].clone());
                        out_out.push(a.clone());
                        answer.push(a);
                        kept.push(true);
                        reason.push(String::new());
                    }
                    Err(why) => {
                        *dropped.entry(why).or_default() += 1;
                        answer.push(String::new());
                        kept.push(false);
                        reason.push(why.to_string());
                    }
                }
            }
            llm::append_log(&cx, &llm::summary(&client));
            llm::append_log(&cx, &format!("kept {} of {}; dropped: {dropped:?}", out_i.len(), responses.len()));
            let take: Vec<u32> = (0..responses.len() as u32).collect();
            let extra: Vec<(Field, ArrayRef)> = vec![
                text_column("raw", raw),
                text_column("response", answer),
                (Field::new("kept", DataType::Boolean, false), Arc::new(BooleanArray::from(kept))),
                text_column("reason", reason),
            ];
            let all = extend(&input.batch, &take, extra)?;
            table::write_parquet(&cx.output("all")?.path, &all.schema(), &[all])?;
            let (schema, out) = out_table(vec![
                text_column("instruction", out_i),
                text_column("input", out_in),
                text_column("output", out_out),
            ])?;
            table::write_parquet(&cx.output("out")?.path, &schema, &[out])
        })
    }
}

type Prepared = (Rows, Vec<String>, Vec<String>, Client, Vec<Request>);

/// The stage's requests, one per instruction, as `run` sends them.
fn requests(params: &PrincipleGenerateResponsesParams, cx: &StageCx) -> Result<Prepared, OpError> {
    let path = paths::resolve(&cx.pipeline_dir, &params.prompt_file);
    let meta = std::fs::read_to_string(&path).map_err(|e| OpError::io(format!("read {}", path.display()), e))?;
    // As the original: the file's lines joined, then stripped.
    let meta = meta.trim();
    let input = Rows::read(&cx.input("table")?.path)?;
    let instructions = input.texts(&params.column)?;
    let inputs = match &params.input_column {
        Some(c) => input.texts(c)?,
        None => vec![String::new(); instructions.len()],
    };
    let client = Client::new(cx, &params.llm)?;
    let sampling = params.sampling.or(default_sampling());
    let mut requests: Vec<Request> = instructions
        .iter()
        .zip(&inputs)
        .map(|(instruction, extra)| Request {
            prompt: Prompt::Text(prompt(meta, instruction, extra, &params.assistant)),
            sampling: sampling.clone(),
        })
        .collect();
    client.seed_by_prompt(&mut requests);
    Ok((input, instructions, inputs, client, requests))
}

/// The prompt of `generate_self_align_response.py`.
fn prompt(meta: &str, instruction: &str, input: &str, assistant: &str) -> String {
    let (instruction, input) = (instruction.trim(), input.trim());
    match input.is_empty() {
        true => format!("{meta} {instruction}\n\n{assistant} (internal thoughts):"),
        false => format!("{meta} {instruction}\n\n{input}\n\n{assistant} (internal thoughts):"),
    }
}

/// Dromedary's filters (`merge_self_align_with_dummy.py`).
struct Filter<'a> {
    assistant: &'a str,
    rename_to: &'a str,
}

/// Phrases that show the model copying the prompt's exemplars (and the exemplar names).
const BLACKLIST: [&str; 11] = [
    "User:",
    "Good job! Clear context",
    "Watson (auto reply):",
    "Could you please provide more details or context so I can try to assist you better?",
    "president",
    "President",
    "Zhiqing",
    "1, 1, 4",
    "weather",
    "or by watching the news or checking your local",
    "alpaca",
];
const SELF_ID: &str = "I am a helpful, ethical, and reliable assistant.";
const WIKI: &str = "According to my knowledge from Wikipedia, here";

impl Filter<'_> {
    /// The cleaned answer, or which rule dropped it.
    fn apply(&self, raw: &str) -> Result<String, &'static str> {
        // The original reads text generated right after "(internal thoughts):"; servers return
        // it with the leading space that llama's tokenizer folds into the first token.
        let raw = raw.trim_start();
        if !raw.starts_with(SELF_ID) {
            return Err("no self-identification");
        }
        let marker = format!("\n\n{}:", self.assistant);
        let Some((_, answer)) = raw.split_once(&marker) else { return Err("only internal thoughts") };
        let mut answer = dedup(answer.trim());
        if let Some((head, _)) = answer.split_once("\n\nUser:") {
            answer = format!("{}\n\n### User\n", head.trim());
            if answer.chars().count() < 160 {
                return Err("too short");
            }
        } else {
            answer = match answer.rsplit_once(' ') {
                Some((head, _)) => head.to_string(),
                None => answer,
            };
        }
        let assistant_reply = format!("{} (auto reply):", self.assistant);
        if BLACKLIST.iter().any(|w| answer.contains(w))
            || answer.contains("Alpaca")
            || answer.contains(&assistant_reply)
        {
            return Err("copies the exemplars");
        }
        if answer.starts_with("I'm sorry") || answer.starts_with("I am sorry") {
            return Err("apologises");
        }
        if answer.is_empty() {
            return Err("empty");
        }
        let mut answer = answer.replace(self.assistant, self.rename_to);
        if let Some(rest) = answer.strip_prefix(WIKI) {
            answer = format!("Here{rest}");
        }
        Ok(answer)
    }
}

/// Dromedary's `dedup`: split after each of `\n.?!;:,`, keep pieces until one repeats.
fn dedup(text: &str) -> String {
    let mut pieces: Vec<&str> = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if "\n.?!;:,".contains(c) {
            pieces.push(&text[start..i + c.len_utf8()]);
            start = i + c.len_utf8();
        }
    }
    pieces.push(&text[start..]);
    let mut kept: Vec<&str> = Vec::new();
    for piece in pieces {
        if !kept.contains(&piece) || piece.is_empty() || "\n.?!;:,".contains(piece) {
            kept.push(piece);
        } else {
            break;
        }
    }
    kept.concat().trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(raw: &str) -> Result<String, &'static str> {
        Filter { assistant: "Watson", rename_to: "Dromedary" }.apply(raw)
    }

    #[test]
    fn the_prompt_is_dromedarys() {
        assert_eq!(
            prompt("RULES\n\nUser:", " Hi? ", "", "Watson"),
            "RULES\n\nUser: Hi?\n\nWatson (internal thoughts):"
        );
        assert_eq!(prompt("M", "Do", "this", "Watson"), "M Do\n\nthis\n\nWatson (internal thoughts):");
    }

    // Expected values: the output of `dedup` and the filter loop of Dromedary's
    // merge_self_align_with_dummy.py (commit 40f76d7), run on the same strings.
    #[test]
    fn dromedarys_filters() {
        let thoughts = " I am a helpful, ethical, and reliable assistant. The user asks X. I should follow rules 2.";
        let with = |answer: &str| filter(&format!("{thoughts}\n\nWatson: {answer}"));
        assert_eq!(filter("Sure, here it is."), Err("no self-identification"));
        assert_eq!(filter(thoughts), Err("only internal thoughts"));
        assert_eq!(with("Watson says the sky is blu").unwrap(), "Dromedary says the sky is");
        let repeated = "Paris is the capital of France. ".repeat(3)
            + "It lies on the Seine and is known for its museums, its cafes and its long history as a centre of art.";
        assert_eq!(
            with(&format!("{repeated}\n\nUser: thanks")).unwrap(),
            "Paris is the capital of France. Paris is the capital of"
        );
        let long = "Paris is the capital of France, and it lies on the Seine. It is known for its museums, its cafes and \
                    its long history as a centre of art and of science; many visit it every year.";
        assert_eq!(with(&format!("{long}\n\nUser: thanks")).unwrap(), format!("{long}\n\n### User\n"));
        assert_eq!(with("Paris.\n\nUser: ok"), Err("too short"));
        assert_eq!(with("Ask the President about it now"), Err("copies the exemplars"));
        assert_eq!(with("I'm sorry, I cannot help with it"), Err("apologises"));
        assert_eq!(
            with("According to my knowledge from Wikipedia, here is what I know about it").unwrap(),
            "Here is what I know about"
        );
    }

    #[test]
    fn dedup_stops_at_the_first_repeated_piece() {
        assert_eq!(dedup("A b. A b. A b. C."), "A b. A b.");
        assert_eq!(dedup("x.\n\nx.\n\ny"), "x.");
        assert_eq!(dedup("One, two, two, two, three"), "One, two,");
        assert_eq!(dedup("A b. C d. A b. E."), "A b. C d. A b. E.");
    }
}
