//! The ops of Topic-Guided Red-Teaming Self-Instruct (Dromedary's SELF-ALIGN stage 1, Sun et
//! al. 2023): `tgrt_topics` grows a pool of topics per question type, `tgrt_questions` writes a
//! question for each (topic, question type). Both prompt a base model through the completion API,
//! as IBM/Dromedary's `generate_tgrt_topic.py`, `deduplicate_tgrt_topic.py`,
//! `generate_tgrt_question.py` and `merge_tgrt_question.py` do.
//!
//! `tgrt_topics`: input `seeds` (`topic`, `question_type`). Each epoch first de-duplicates each
//! type's topics (case-insensitively, first kept) and cuts every type to the smallest count; then
//! sends one prompt per topic of each type: the brainstorm prompt (`{}` the type) and a numbered
//! list of existing topics, one of them (in order) while the type has fewer than
//! 2 × `num_examples`, else `num_examples` after a shuffle. Of each response's first 20 lines, the
//! text after the first ". " is a new topic when it has at most 3 words, starts with A-Z and does
//! not end with punctuation. After the last epoch: the same de-duplication and balancing, and a
//! shuffle (as `deduplicate_tgrt_topic.py`). Output `out`: `topic`, `question_type`.
//!
//! `tgrt_questions`: inputs `topics` (`topic`, `question_type`) and `seeds` (`topic`,
//! `question_type`, `question`). The topics go `num_instructions_to_generate` to a prompt, after
//! `num_seed_examples` seeds drawn anew for each prompt: the question-generation prompt with its
//! first `{}` the numbered hints (`type: …, topic: …`, seeds first, "Questions" written
//! "Instructions") and its second the seeds as worked examples (`…, instruction: question`).
//! Every complete line of a response that starts with a hint gives a question for that hint.
//! Output `out`: `instruction`, `topic`, `question_type` (as parsed from the hint, so "Instructions
//! that …"), the first per (topic, question_type), in the order generated.
//!
//! Deviation from the originals: they banned the end-of-text token (logit bias -100), which
//! needs the model's token id; set `sampling.logit_bias` to do the same (e.g. `{"2": -100}` for
//! LLaMA). Draws come from ChaCha8 streams seeded by the stage's seed, not Python's `random`.

use std::collections::HashSet;

use drover_engine::StageCx;
use drover_engine::paths;
use drover_engine::{
    BoxFuture, CheckCx, CheckError, Checked, Column, Op, OpError, OpInfo, PortDecl, PortType, Ports, RunCx,
    TableSchema, params_schema,
};
use serde::Deserialize;

use crate::kit::draw::Draw;
use crate::kit::llm::template::{Rows, table as out_table, text_column};
use crate::kit::llm::{self, Client, Completion, Sampling};
use crate::kit::table;
use crate::text::self_instruct::{answered, column_texts, complete, left, py_space, py_strip, requests};

/// The `with:` block of a `tgrt_topics` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TgrtTopicsParams {
    /// The endpoint under the pipeline's `llms:`. Default: `default`.
    #[serde(default = "llm::default_llm")]
    pub llm: String,
    /// The topic brainstorm prompt, with one `{}` for the question type (Dromedary's
    /// `tgrt_self_instruct_topic_brainstorm_prompt.txt`). Relative to the pipeline directory, or absolute.
    pub prompt_file: String,
    /// Epochs of brainstorming. Dromedary used the topics after its sixth (`_epoch5`).
    pub epochs: u64,
    /// Topics listed in a prompt once a type has twice as many. Default: 5.
    #[serde(default = "default_five")]
    pub num_examples: usize,
    /// Prompts sent per batch (the original's GPU batch). The output does not depend on it.
    /// Default: 32.
    #[serde(default = "default_batch")]
    pub request_batch_size: usize,
    /// Sampling; unset fields take Dromedary's values (temperature 1.0, top_p 0.98,
    /// max_tokens 128).
    #[serde(default)]
    pub sampling: Sampling,
}

/// The `with:` block of a `tgrt_questions` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TgrtQuestionsParams {
    /// The endpoint under the pipeline's `llms:`. Default: `default`.
    #[serde(default = "llm::default_llm")]
    pub llm: String,
    /// The question-generation prompt, with two `{}`: the hints, then the examples (Dromedary's
    /// `tgrt_self_instruct_question_generation_prompt.txt`). Relative to the pipeline directory, or absolute.
    pub prompt_file: String,
    /// Topics per prompt. Default: 5.
    #[serde(default = "default_five")]
    pub num_instructions_to_generate: usize,
    /// Seed questions shown in each prompt. Default: 5.
    #[serde(default = "default_five")]
    pub num_seed_examples: usize,
    /// Sampling; unset fields take Dromedary's values (temperature 1.0, top_p 0.95,
    /// max_tokens 384).
    #[serde(default)]
    pub sampling: Sampling,
}

fn default_five() -> usize {
    5
}
fn default_batch() -> usize {
    32
}

fn sampling(temperature: f64, top_p: f64, max_tokens: u32) -> Sampling {
    Sampling { temperature: Some(temperature), top_p: Some(top_p), max_tokens: Some(max_tokens), ..Sampling::default() }
}

/// Brainstorms topics per question type.
pub struct TgrtTopics;

/// Writes a question per (topic, question type).
pub struct TgrtQuestions;

impl TgrtTopics {
    pub const NAME: &str = "tgrt_topics";
    pub const VERSION: u32 = 1;
}

impl TgrtQuestions {
    pub const NAME: &str = "tgrt_questions";
    pub const VERSION: u32 = 1;
}

fn port(name: &'static str, doc: &'static str) -> PortDecl {
    PortDecl { name, ty: PortType::any_table(), doc, optional: false }
}

fn text_schema(names: &[&str]) -> PortType {
    PortType::Table(TableSchema::with_columns(names.iter().map(|n| Column::new(*n, "Utf8")).collect()))
}

/// A prompt file as the originals read it (universal newlines, then stripped), split around its
/// `{}` fields.
struct PromptFile {
    pieces: Vec<String>,
}

impl PromptFile {
    fn read(path: &std::path::Path) -> Result<PromptFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        Self::parse(py_strip(&text))
    }

    /// Python's `str.format` syntax, for templates whose only fields are `{}`.
    fn parse(template: &str) -> Result<PromptFile, String> {
        let mut pieces = vec![String::new()];
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('{', Some('{')) | ('}', Some('}')) => {
                    chars.next();
                    pieces.last_mut().expect("one piece at least").push(c);
                }
                ('{', Some('}')) => {
                    chars.next();
                    pieces.push(String::new());
                }
                ('{' | '}', _) => return Err(format!("it has a `{c}` that is neither a `{{}}` field nor doubled")),
                _ => pieces.last_mut().expect("one piece at least").push(c),
            }
        }
        Ok(PromptFile { pieces })
    }

    fn fields(&self) -> usize {
        self.pieces.len() - 1
    }

    /// `template.format(*args)`, with as many args as fields.
    fn format(&self, args: &[&str]) -> String {
        let mut out = self.pieces[0].clone();
        for (arg, piece) in args.iter().zip(&self.pieces[1..]) {
            out += arg;
            out += piece;
        }
        out
    }

    /// At plan time: the file exists (it then enters the key) and has `wanted` fields, which
    /// are `what`.
    fn check(cx: &CheckCx<'_>, file: &str, what: &str, wanted: usize, checked: &mut Checked) -> Option<CheckError> {
        let at = |message: String| CheckError::param(&["prompt_file"], message);
        let path = paths::resolve(cx.pipeline_dir, file);
        if !path.is_file() {
            return Some(at(format!("no prompt file at {}", path.display())).help(
                "give the path relative to the pipeline's directory (Dromedary's prompts are under \
                 pipelines/data/dromedary)",
            ));
        }
        checked.file_deps.push(file.into());
        match Self::read(&path) {
            Err(why) => {
                Some(at(format!("the prompt file cannot be used: {why}")).help(
                    "fields are `{}`, filled in order (Python's str.format); write a literal brace as `{{` or `}}`",
                ))
            }
            Ok(p) if p.fields() != wanted => Some(
                at(format!("the prompt file has {} `{{}}` field(s); this op fills {wanted}", p.fields()))
                    .help(format!("put a `{{}}` where each of these goes, in this order: {what}")),
            ),
            Ok(_) => None,
        }
    }
}

fn read_prompt(cx: &StageCx, file: &str) -> Result<PromptFile, OpError> {
    PromptFile::read(&paths::resolve(&cx.pipeline_dir, file)).map_err(|e| OpError::failed(format!("prompt file: {e}")))
}

impl Op for TgrtTopics {
    fn info(&self) -> OpInfo {
        OpInfo {
            name: Self::NAME,
            version: Self::VERSION,
            doc: "TGRT Self-Instruct (Dromedary): brainstorms topics per question type with a base model for some \
                  epochs, de-duplicates them and balances the types; outputs topic, question_type.",
            inputs: Ports::Fixed(vec![port("seeds", "Seed topics: topic, question_type.")]),
            outputs: Ports::Fixed(vec![port("out", "The topics, as many per type, shuffled.")]),
            params: params_schema::<TgrtTopicsParams>(),
            deterministic: false,
            templated_params: false,
        }
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<Checked, Vec<CheckError>> {
        let p: TgrtTopicsParams = table::check_params(cx)?;
        let mut checked = Checked::default();
        let mut errors = llm::check_one_choice(cx, &p.llm, &p.sampling, &mut checked);
        errors.extend(PromptFile::check(cx, &p.prompt_file, "the question type", 1, &mut checked));
        let columns = table::input_columns(cx, "seeds").map_err(|e| vec![e])?;
        for name in ["topic", "question_type"] {
            errors.extend(table::check_text_column("seeds", None, name, columns));
        }
        for (param, value, help) in [
            ("epochs", p.epochs as usize, "brainstorm for at least one epoch (Dromedary used 6)"),
            ("num_examples", p.num_examples, "list at least one topic (default 5)"),
            ("request_batch_size", p.request_batch_size, "send at least one prompt per batch (default 32)"),
        ] {
            if value == 0 {
                errors.push(CheckError::param(&[param], format!("{param} is 0")).help(help));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        checked.outputs.insert("out".into(), text_schema(&["topic", "question_type"]));
        Ok(checked)
    }

    fn run(&self, cx: RunCx) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async move {
            let (p, client, sampling, mut run) = Brainstorm::start(&cx)?;
            let mut sent = 0;
            while let Some(prompts) = run.prompts(&p) {
                for batch in prompts.chunks(p.request_batch_size) {
                    let texts = batch.iter().map(|(_, prompt)| prompt.clone()).collect();
                    let responses = complete(&cx, &client, &sampling, texts, &mut sent).await?;
                    run.fold(batch, &responses);
                }
            }
            let added = run.added;
            let reasons: Vec<String> =
                TopicDrop::ALL.iter().map(|d| format!("{} {}", run.dropped[*d as usize], d.says())).collect();
            let rows = run.finish();
            llm::append_log(&cx, &llm::summary(&client));
            llm::append_log(
                &cx,
                &format!(
                    "tgrt_topics: {} epochs, {sent} requests, {added} topics accepted (dropped: {}); {} out after \
                     de-duplication and balancing",
                    p.epochs,
                    reasons.join(", "),
                    rows.len()
                ),
            );
            let (topics, types): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
            let (schema, batch) = out_table(vec![text_column("topic", topics), text_column("question_type", types)])?;
            table::write_parquet(&cx.output("out")?.path, &schema, &[batch])
        })
    }

    fn work_left(&self, cx: &StageCx) -> Option<String> {
        let (p, client, sampling, mut run) = Brainstorm::start(cx).ok()?;
        let mut sent = 0;
        while let Some(prompts) = run.prompts(&p) {
            let texts = prompts.iter().map(|(_, prompt)| prompt.clone()).collect();
            match answered(&client, requests(&client, &sampling, texts, sent)) {
                Ok(responses) => {
                    sent += responses.len() as u64;
                    run.fold(&prompts, &responses);
                }
                Err(cached) => return Some(left(sent + cached)),
            }
        }
        Some(format!("all {sent} requests already answered"))
    }
}

/// The epochs without their I/O: each epoch's prompts, then their responses folded in.
struct Brainstorm {
    meta: PromptFile,
    seed: u64,
    groups: Groups,
    epoch: u64,
    added: u64,
    dropped: [u64; TopicDrop::ALL.len()],
}

impl Brainstorm {
    fn start(cx: &StageCx) -> Result<(TgrtTopicsParams, Client, Sampling, Brainstorm), OpError> {
        let p: TgrtTopicsParams = table::run_params(cx)?;
        let seeds = Rows::read(&cx.input("seeds")?.path)?;
        let mut groups = Groups::default();
        let types = column_texts(&seeds, "seeds", "question_type")?;
        for (topic, question_type) in column_texts(&seeds, "seeds", "topic")?.into_iter().zip(types) {
            groups.add(&question_type, topic);
        }
        let meta = read_prompt(cx, &p.prompt_file)?;
        let client = Client::new(cx, &p.llm)?;
        let sampling = p.sampling.or(sampling(1.0, 0.98, 128));
        let run = Brainstorm { meta, seed: cx.seed, groups, epoch: 0, added: 0, dropped: [0; 4] };
        Ok((p, client, sampling, run))
    }

    /// The next epoch's prompts, each with its question type; `None` after the last epoch.
    fn prompts(&mut self, p: &TgrtTopicsParams) -> Option<Vec<(String, String)>> {
        if self.epoch == p.epochs {
            return None;
        }
        self.groups.balance();
        let prompts = self.groups.prompts(&self.meta, p.num_examples, &mut Draw::new(self.seed, self.epoch));
        self.epoch += 1;
        Some(prompts)
    }

    fn fold(&mut self, prompts: &[(String, String)], responses: &[Completion]) {
        for ((question_type, _), response) in prompts.iter().zip(responses) {
            for topic in parse_topics(response.text()) {
                match topic {
                    Ok(topic) => {
                        self.groups.add(question_type, topic);
                        self.added += 1;
                    }
                    Err(why) => self.dropped[why as usize] += 1,
                }
            }
        }
    }

    /// `deduplicate_tgrt_topic.py`: de-duplicated, balanced, shuffled (topic, question_type).
    fn finish(mut self) -> Vec<(String, String)> {
        self.groups.balance();
        let mut rows: Vec<(String, String)> = (self.groups.0.into_iter())
            .flat_map(|(ty, topics)| topics.into_iter().map(move |t| (t, ty.clone())))
            .collect();
        Draw::new(self.seed, self.epoch).shuffle(&mut rows);
        rows
    }
}

/// Topics per question type, types in order of first appearance (a Python dict's order).
#[derive(Default)]
struct Groups(Vec<(String, Vec<String>)>);

impl Groups {
    fn add(&mut self, question_type: &str, topic: String) {
        match self.0.iter_mut().find(|(t, _)| t == question_type) {
            Some((_, topics)) => topics.push(topic),
            None => self.0.push((question_type.to_string(), vec![topic])),
        }
    }

    /// `deduplicate_strings` per type (case-insensitive, first kept), then every type cut to the
    /// smallest count.
    fn balance(&mut self) {
        for (_, topics) in &mut self.0 {
            let mut seen = HashSet::new();
            topics.retain(|t| seen.insert(t.to_lowercase()));
        }
        let fewest = self.0.iter().map(|(_, topics)| topics.len()).min().unwrap_or(0);
        for (_, topics) in &mut self.0 {
            topics.truncate(fewest);
        }
    }

    /// One prompt per topic of each type, with that prompt's (stripped) type. The original
    /// shuffles the type's topics in place before each prompt and lists the first
    /// `examples`, which is O(n²); this draws a random ordered subset per prompt and shuffles the
    /// topics once after, the same distributions in O(n). That order decides what balancing keeps
    /// in the next epoch.
    fn prompts(&mut self, meta: &PromptFile, examples: usize, draw: &mut Draw) -> Vec<(String, String)> {
        let mut prompts = Vec::new();
        for (question_type, topics) in &mut self.0 {
            let question_type = py_strip(question_type);
            if topics.len() < examples * 2 {
                for topic in topics.iter() {
                    prompts.push((question_type.to_string(), topic_prompt(meta, question_type, &[topic])));
                }
            } else {
                for _ in 0..topics.len() {
                    let mut listed: Vec<&String> = draw.pick(topics.len(), examples).map(|i| &topics[i]).collect();
                    draw.shuffle(&mut listed);
                    prompts.push((question_type.to_string(), topic_prompt(meta, question_type, &listed)));
                }
                draw.shuffle(topics);
            }
        }
        prompts
    }
}

fn topic_prompt(meta: &PromptFile, question_type: &str, topics: &[impl AsRef<str>]) -> String {
    let mut prompt = meta.format(&[question_type]) + "\n\n";
    for (i, topic) in topics.iter().enumerate() {
        prompt += &format!("{}. {}\n", i + 1, topic.as_ref());
    }
    prompt
}

/// Why a brainstormed line is not a topic, in the order the original checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopicDrop {
    Long,
    Empty,
    NotCapitalized,
    Punctuation,
}

impl TopicDrop {
    const ALL: [TopicDrop; 4] = [TopicDrop::Long, TopicDrop::Empty, TopicDrop::NotCapitalized, TopicDrop::Punctuation];

    fn says(self) -> &'static str {
        match self {
            TopicDrop::Long => "over 3 words",
            TopicDrop::Empty => "empty",
            TopicDrop::NotCapitalized => "not starting with A-Z",
            TopicDrop::Punctuation => "ending with punctuation",
        }
    }
}

/// `brainstorm_topics`' parsing: the first 20 lines, each after its first ". ", unstripped.
fn parse_topics(text: &str) -> Vec<Result<String, TopicDrop>> {
    text.split('\n')
        .take(20)
        .map(|line| {
            let topic = line.split_once(". ").map_or(line, |(_, rest)| rest);
            if topic.split(py_space).filter(|w| !w.is_empty()).count() > 3 {
                Err(TopicDrop::Long)
            } else if py_strip(topic).is_empty() {
                Err(TopicDrop::Empty)
            } else if !topic.starts_with(|c: char| c.is_ascii_uppercase()) {
                Err(TopicDrop::NotCapitalized)
            } else if topic.ends_with(|c: char| c.is_ascii_punctuation()) {
                Err(TopicDrop::Punctuation)
            } else {
                Ok(topic.to_string())
            }
        })
        .collect()
}

impl Op for TgrtQuestions {
    fn info(&self) -> OpInfo {
        OpInfo {
            name: Self::NAME,
            version: Self::VERSION,
            doc: "TGRT Self-Instruct (Dromedary): writes a question for each (topic, question type) with a base \
                  model, from seed questions as examples; outputs instruction, topic, question_type.",
            inputs: Ports::Fixed(vec![
                port("topics", "The topics: topic, question_type (e.g. a tgrt_topics stage)."),
                port("seeds", "Seed questions: topic, question_type, question."),
            ]),
            outputs: Ports::Fixed(vec![port("out", "One question per (topic, question_type).")]),
            params: params_schema::<TgrtQuestionsParams>(),
            deterministic: false,
            templated_params: false,
        }
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<Checked, Vec<CheckError>> {
        let p: TgrtQuestionsParams = table::check_params(cx)?;
        let mut checked = Checked::default();
        let mut errors = llm::check_one_choice(cx, &p.llm, &p.sampling, &mut checked);
        errors.extend(PromptFile::check(cx, &p.prompt_file, "the hints, the examples", 2, &mut checked));
        let topics = table::input_columns(cx, "topics").map_err(|e| vec![e])?;
        let seeds = table::input_columns(cx, "seeds").map_err(|e| vec![e])?;
        for name in ["topic", "question_type"] {
            errors.extend(table::check_text_column("topics", None, name, topics));
        }
        for name in ["topic", "question_type", "question"] {
            errors.extend(table::check_text_column("seeds", None, name, seeds));
        }
        if p.num_instructions_to_generate == 0 {
            errors.push(
                CheckError::param(&["num_instructions_to_generate"], "num_instructions_to_generate is 0")
                    .help("put at least one topic in each prompt (default 5)"),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        checked.outputs.insert("out".into(), text_schema(&["instruction", "topic", "question_type"]));
        Ok(checked)
    }

    fn run(&self, cx: RunCx) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async move {
            let plan = QuestionPlan::new(&cx)?;
            let mut sent = 0;
            let responses = complete(&cx, &plan.client, &plan.sampling, plan.prompts, &mut sent).await?;
            let mut seen = HashSet::new();
            let (mut parsed, mut out) = (0, Vec::new());
            for (prefixes, response) in plan.hints.iter().zip(&responses) {
                for q in parse_questions(response.text(), prefixes) {
                    parsed += 1;
                    if seen.insert((q.topic.clone(), q.question_type.clone())) {
                        out.push(q);
                    }
                }
            }
            llm::append_log(&cx, &llm::summary(&plan.client));
            llm::append_log(
                &cx,
                &format!(
                    "tgrt_questions: {} topics, {sent} requests, {parsed} questions parsed, {} kept (one per topic \
                     and question type)",
                    plan.topics,
                    out.len()
                ),
            );
            let (schema, batch) = out_table(vec![
                text_column("instruction", out.iter().map(|q| q.instruction.clone())),
                text_column("topic", out.iter().map(|q| q.topic.clone())),
                text_column("question_type", out.into_iter().map(|q| q.question_type)),
            ])?;
            table::write_parquet(&cx.output("out")?.path, &schema, &[batch])
        })
    }

    fn work_left(&self, cx: &StageCx) -> Option<String> {
        let plan = QuestionPlan::new(cx).ok()?;
        Some(llm::work_left(&plan.client, &requests(&plan.client, &plan.sampling, plan.prompts, 0)))
    }
}

/// `tgrt_questions`' requests, as `run` sends them.
struct QuestionPlan {
    client: Client,
    sampling: Sampling,
    prompts: Vec<String>,
    /// Each prompt's hints.
    hints: Vec<Vec<String>>,
    topics: usize,
}

impl QuestionPlan {
    fn new(cx: &StageCx) -> Result<QuestionPlan, OpError> {
        let p: TgrtQuestionsParams = table::run_params(cx)?;
        let meta = read_prompt(cx, &p.prompt_file)?;
        let rows = Rows::read(&cx.input("topics")?.path)?;
        let types = column_texts(&rows, "topics", "question_type")?;
        let topics: Vec<(String, String)> = column_texts(&rows, "topics", "topic")?.into_iter().zip(types).collect();
        let rows = Rows::read(&cx.input("seeds")?.path)?;
        let seeds: Vec<Seed> = column_texts(&rows, "seeds", "topic")?
            .into_iter()
            .zip(column_texts(&rows, "seeds", "question_type")?)
            .zip(column_texts(&rows, "seeds", "question")?)
            .map(|((topic, question_type), question)| Seed { topic, question_type, question })
            .collect();
        // The original shuffles one list of seeds again for every prompt; so does this.
        let mut draw = Draw::new(cx.seed, 0);
        let mut order: Vec<usize> = (0..seeds.len()).collect();
        let (mut prompts, mut hints) = (Vec::new(), Vec::new());
        for group in topics.chunks(p.num_instructions_to_generate) {
            draw.shuffle(&mut order);
            let shown: Vec<&Seed> = order.iter().take(p.num_seed_examples).map(|i| &seeds[*i]).collect();
            let (prompt, prefixes) = question_prompt(&meta, &shown, group);
            prompts.push(prompt);
            hints.push(prefixes);
        }
        Ok(QuestionPlan {
            client: Client::new(cx, &p.llm)?,
            sampling: p.sampling.or(sampling(1.0, 0.95, 384)),
            prompts,
            hints,
            topics: topics.len(),
        })
    }
}

struct Seed {
    topic: String,
    question_type: String,
    question: String,
}

#[derive(Debug, PartialEq)]
struct Question {
    instruction: String,
    topic: String,
    question_type: String,
}

/// `topic_guided_question_generation`'s prompt for the seeds shown and a group of
/// (topic, question_type), and the hints a response's lines are matched against.
fn question_prompt(meta: &PromptFile, seeds: &[&Seed], group: &[(String, String)]) -> (String, Vec<String>) {
    let kind = |question_type: &str| question_type.replace("Questions", "Instructions");
    let pairs = seeds.iter().map(|s| (&s.question_type, &s.topic)).chain(group.iter().map(|(topic, ty)| (ty, topic)));
    let hints: Vec<String> =
        pairs.enumerate().map(|(i, (ty, topic))| format!("{}. type: {}, topic: {topic}", i + 1, kind(ty))).collect();
    let examples: Vec<String> = seeds
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!("{}. type: {}, topic: {}, instruction: {}", i + 1, kind(&s.question_type), s.topic, s.question)
        })
        .collect();
    let prompt = meta.format(&[&format!("\n{}", hints.join("\n")), &format!("\n{}", examples.join("\n"))]) + "\n";
    (prompt, hints)
}

/// The questions of a response: each stripped line but the last (which may be cut off) that
/// starts with a hint; the question is the text after its last "instruction: " (the whole line
/// when there is none), topic and type come from the hint, as the original parses them.
fn parse_questions(text: &str, hints: &[String]) -> Vec<Question> {
    let lines: Vec<&str> = py_strip(text).split('\n').collect();
    lines[..lines.len() - 1]
        .iter()
        .map(|line| py_strip(line))
        .filter(|line| !line.is_empty())
        .filter_map(|line| {
            let hint = hints.iter().find(|h| line.starts_with(h.as_str()))?;
            Some(Question {
                instruction: py_strip(after_last(line, "instruction: ")).to_string(),
                topic: py_strip(after_last(hint, "topic: ")).to_string(),
                question_type: py_strip(after_last(hint, "type: ").split(',').next().unwrap_or("")).to_string(),
            })
        })
        .collect()
}

/// Python's `s.split(sep)[-1]`.
fn after_last<'a>(s: &'a str, sep: &str) -> &'a str {
    s.rsplit_once(sep).map_or(s, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use drover_engine::CheckLocation;
    use serde_json::{Value, json};

    use super::*;
    use crate::kit::testing::{OpTest, column, first_error};
    use crate::text::self_instruct::tests::{MockLlm, nowhere, texts};

    /// Dromedary's `prompts/tgrt_self_instruct_topic_brainstorm_prompt.txt`.
    const TOPIC_PROMPT: &str = "You are asked to come up with a set of 10 diverse topics for a specific question type.\n\n\
        Here are the requirements:\n\n1. Try not to repeat the words for each topic to maximize diversity.\n\
        2. Each topic should contain up to three words.\n\
        3. Each topic should be a noun phrase, its first word should be capitalized.\n\
        4. The topics should be closely related to the given question type: {}.\n\nList of 10 topics:";

    const CULTURE: &str = "Questions that require cultural context";
    const SCIENCE: &str = "Questions that require scientific knowledge";

    #[test]
    fn the_topic_prompt_is_brainstorm_topics() {
        // What the original builds for this type and these topics.
        let meta = PromptFile::parse(TOPIC_PROMPT).unwrap();
        let prompt =
            topic_prompt(&meta, py_strip(" Questions that require cultural context "), &["Wedding", "Music festival"]);
        assert_eq!(
            prompt,
            "You are asked to come up with a set of 10 diverse topics for a specific question type.\n\nHere are the \
             requirements:\n\n1. Try not to repeat the words for each topic to maximize diversity.\n2. Each topic \
             should contain up to three words.\n3. Each topic should be a noun phrase, its first word should be \
             capitalized.\n4. The topics should be closely related to the given question type: Questions that \
             require cultural context.\n\nList of 10 topics:\n\n1. Wedding\n2. Music festival\n"
        );
    }

    #[test]
    fn topic_lines_are_accepted_as_the_original() {
        let mut text =
            "2. Funeral rites\n3. Tea ceremony etiquette rules\n4. greetings\n5. Gift giving.\n6. \n7.Harvest\n\
                        Hanami\n8. Dress code. Formal attire\n9.  Leading space\n10. Trailing space \n"
                .to_string();
        text += &(11..25).map(|i| format!("{i}. Topic {i}")).collect::<Vec<_>>().join("\n");
        let (kept, dropped): (Vec<_>, Vec<_>) = parse_topics(&text).into_iter().partition(Result::is_ok);
        // The original's brainstorm_topics on the same text.
        let mut expected = vec!["Funeral rites".to_string(), "Hanami".into(), "Trailing space ".into()];
        expected.extend((11..=20).map(|i| format!("Topic {i}")));
        assert_eq!(kept.into_iter().map(Result::unwrap).collect::<Vec<_>>(), expected);
        use TopicDrop::*;
        assert_eq!(
            dropped.into_iter().map(Result::unwrap_err).collect::<Vec<_>>(),
            [Long, NotCapitalized, Punctuation, Empty, NotCapitalized, Long, NotCapitalized]
        );
    }

    #[test]
    fn balancing_deduplicates_case_insensitively_and_cuts_to_the_fewest() {
        let mut groups = Groups::default();
        for t in ["Art", "art", "ART deco", "Art Deco", "Music"] {
            groups.add(CULTURE, t.into());
        }
        for t in ["Water", "Fire", "Ice", "Steam"] {
            groups.add(SCIENCE, t.into());
        }
        groups.balance();
        assert_eq!(groups.0[0], (CULTURE.to_string(), vec!["Art".into(), "ART deco".into(), "Music".into()]));
        assert_eq!(groups.0[1], (SCIENCE.to_string(), vec!["Water".into(), "Fire".into(), "Ice".into()]));
    }

    #[test]
    fn a_type_lists_one_topic_until_it_has_twice_num_examples() {
        let meta = PromptFile::parse("Type: {}.").unwrap();
        let mut groups = Groups::default();
        (0..3).for_each(|i| groups.add(CULTURE, format!("C{i}")));
        (0..10).for_each(|i| groups.add(SCIENCE, format!("S{i}")));
        let prompts = groups.prompts(&meta, 5, &mut Draw::new(0, 0));
        assert_eq!(prompts.len(), 13);
        let culture: Vec<&str> = prompts[..3].iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(culture, [0, 1, 2].map(|i| format!("Type: {CULTURE}.\n\n1. C{i}\n")));
        for (ty, prompt) in &prompts[3..] {
            assert_eq!(ty, SCIENCE);
            assert!(prompt.contains("\n5. S") && !prompt.contains("\n6. "), "{prompt}");
        }
        // Shuffled, as the original's random.shuffle(topics) leaves them.
        let mut science = groups.0[1].1.clone();
        assert_ne!(science, (0..10).map(|i| format!("S{i}")).collect::<Vec<_>>());
        science.sort();
        assert_eq!(science, (0..10).map(|i| format!("S{i}")).collect::<Vec<_>>());
    }

    fn seed(topic: &str, question_type: &str, question: &str) -> Seed {
        Seed { topic: topic.into(), question_type: question_type.into(), question: question.into() }
    }

    #[test]
    fn the_question_prompt_and_parsing_are_the_originals() {
        let meta = PromptFile::parse("Hints:\n{}\n\nInstructions:\n{}").unwrap();
        let seeds = [
            seed("Wedding", CULTURE, "How should I celebrate weddings?"),
            seed("Water", SCIENCE, "What is the chemical formula of water?"),
        ];
        let group = [
            ("Tea ceremony".to_string(), CULTURE.to_string()),
            ("Mars".to_string(), "Questions about Questions, in general".to_string()),
        ];
        let (prompt, hints) = question_prompt(&meta, &[&seeds[0], &seeds[1]], &group);
        // What topic_guided_question_generation builds from the same seeds and topics.
        assert_eq!(
            prompt,
            "Hints:\n\n1. type: Instructions that require cultural context, topic: Wedding\n2. type: Instructions \
             that require scientific knowledge, topic: Water\n3. type: Instructions that require cultural context, \
             topic: Tea ceremony\n4. type: Instructions about Instructions, in general, topic: Mars\n\n\
             Instructions:\n\n1. type: Instructions that require cultural context, topic: Wedding, instruction: How \
             should I celebrate weddings?\n2. type: Instructions that require scientific knowledge, topic: Water, \
             instruction: What is the chemical formula of water?\n"
        );
        assert_eq!(hints.len(), 4);
        let response = "3. type: Instructions that require cultural context, topic: Tea ceremony, instruction: How do \
                        I bow in a tea room?\n  4. type: Instructions about Instructions, in general, topic: Mars, \
                        instruction: Name the instruction: of Mars.  \n\n4. type: Instructions about Instructions, in \
                        general, topic: Mars\n5. type: Instructions about nothing, topic: Venus, instruction: Hi\n3. \
                        type: Instructions that require cultural context, topic: Tea ceremony, instruction: A second \
                        one\n4. type: Instructions about Instructions, in general, topic: Mars, instruction: cut off at \
                        the";
        let q = |instruction: &str, topic: &str, question_type: &str| Question {
            instruction: instruction.into(),
            topic: topic.into(),
            question_type: question_type.into(),
        };
        // What the original parses from the same response.
        assert_eq!(
            parse_questions(response, &hints),
            [
                q("How do I bow in a tea room?", "Tea ceremony", "Instructions that require cultural context"),
                q("of Mars.", "Mars", "Instructions about Instructions"),
                q(
                    "4. type: Instructions about Instructions, in general, topic: Mars",
                    "Mars",
                    "Instructions about Instructions"
                ),
                q("A second one", "Tea ceremony", "Instructions that require cultural context"),
            ]
        );
    }

    #[test]
    fn prompt_files_must_exist_and_have_their_fields() {
        let p = PromptFile::parse("a {} b {{c}} {}").unwrap();
        assert_eq!((p.fields(), p.format(&["X", "Y"])), (2, "a X b {c} Y".to_string()));
        for bad in ["a { b", "a } b", "{0}", "{}}"] {
            assert!(PromptFile::parse(bad).is_err(), "{bad}");
        }
        let seeds = texts(&[("topic", &["Wedding"]), ("question_type", &[CULTURE])]);
        let t = OpTest::new(json!({"prompt_file": "topics.txt", "epochs": 1})).llms(nowhere()).input("seeds", seeds);
        let e = first_error(t.check(&TgrtTopics));
        assert!(e.message.starts_with("no prompt file at"), "{}", e.message);
        assert!(matches!(&e.at, CheckLocation::Param(p) if p == &["prompt_file"]));
        std::fs::write(t.dir().join("topics.txt"), "No field here.\r\n").unwrap();
        assert_eq!(first_error(t.check(&TgrtTopics)).message, "the prompt file has 0 `{}` field(s); this op fills 1");
        std::fs::write(t.dir().join("topics.txt"), TOPIC_PROMPT).unwrap();
        let checked = t.check(&TgrtTopics).unwrap();
        assert_eq!(checked.file_deps, [std::path::PathBuf::from("topics.txt")]);
        // Missing columns and zero counts.
        let t = OpTest::new(json!({"prompt_file": "topics.txt", "epochs": 0}))
            .llms(nowhere())
            .input("seeds", texts(&[("topic", &["Wedding"])]));
        std::fs::write(t.dir().join("topics.txt"), TOPIC_PROMPT).unwrap();
        let errors = t.check(&TgrtTopics).unwrap_err();
        assert_eq!(errors[0].message, "`seeds` has no column `question_type`");
        assert!(matches!(&errors[0].at, CheckLocation::Input(p) if p == "seeds"));
        assert_eq!(errors[1].message, "epochs is 0");
        let t = OpTest::new(json!({"prompt_file": "q.txt"}))
            .llms(nowhere())
            .input("topics", texts(&[("topic", &["Mars"]), ("question_type", &[SCIENCE])]))
            .input("seeds", texts(&[("topic", &["Water"]), ("question_type", &[SCIENCE])]));
        std::fs::write(t.dir().join("q.txt"), "Hints: {}").unwrap();
        let errors = t.check(&TgrtQuestions).unwrap_err();
        assert_eq!(errors[0].message, "the prompt file has 1 `{}` field(s); this op fills 2");
        assert_eq!(errors[1].message, "`seeds` has no column `question`");
    }

    /// Three acceptable topics per response (named after the request's seed), and two lines that
    /// are not.
    fn brainstorm(body: &Value) -> String {
        let s = body["seed"].as_u64().unwrap();
        format!("2. Alpha {s}\n3. Beta {s}\n4. lower case\n5. Gamma {s}\n6. Far too many words here\n")
    }

    #[test]
    fn epochs_grow_balanced_topics_whatever_the_batch_size() {
        let run = |batch: usize| {
            let server = MockLlm::start(brainstorm);
            let seeds =
                texts(&[("topic", &["Wedding", "wedding", "Water"]), ("question_type", &[CULTURE, CULTURE, SCIENCE])]);
            let params = json!({"prompt_file": "topics.txt", "epochs": 2, "request_batch_size": batch});
            let t = OpTest::new(params).llms(server.llms()).input("seeds", seeds);
            std::fs::write(t.dir().join("topics.txt"), TOPIC_PROMPT).unwrap();
            let out = t.run(&TgrtTopics).unwrap();
            (out, server)
        };
        let (out, server) = run(32);
        // Epoch 0: one prompt per type (1 topic each after de-duplication), 3 new topics each;
        // epoch 1: one per topic, 4 per type. 1 + 3 + 4·3 = 16 per type.
        assert_eq!(server.sent(), 2 + 8);
        let types = column(&out, "question_type");
        assert_eq!((types.len(), types.iter().filter(|t| *t == CULTURE).count()), (32, 16));
        let bodies = server.bodies.lock().unwrap();
        assert!(bodies.iter().all(|b| b["prompt"].as_str().unwrap().contains("List of 10 topics:\n\n1. ")));
        assert_eq!((bodies[0]["temperature"].as_f64(), bodies[0]["top_p"].as_f64()), (Some(1.0), Some(0.98)));
        assert_eq!(run(3).0, out);
    }

    /// A question for every hint after the two seeds shown, then a line cut off.
    fn ask(body: &Value) -> String {
        let prompt = body["prompt"].as_str().unwrap();
        let hints = prompt.lines().filter(|l| l.contains(", topic: ") && !l.contains("instruction: ")).skip(2);
        let questions: String =
            hints.map(|h| format!("{h}, instruction: What about {}?\n", h.rsplit_once("topic: ").unwrap().1)).collect();
        questions + "99. type: cut"
    }

    #[test]
    fn questions_come_one_per_topic_and_type() {
        let server = MockLlm::start(ask);
        let topics = ["Tea ceremony", "Mars", "Tea ceremony", "Rain", "Jazz", "Chess", "Mars"];
        let types = [CULTURE, SCIENCE, CULTURE, SCIENCE, CULTURE, CULTURE, SCIENCE];
        let t = OpTest::new(json!({"prompt_file": "q.txt", "num_seed_examples": 2}))
            .llms(server.llms())
            .input("topics", texts(&[("topic", &topics), ("question_type", &types)]))
            .input(
                "seeds",
                texts(&[
                    ("topic", &["Wedding", "Water", "Moon"]),
                    ("question_type", &[CULTURE, SCIENCE, SCIENCE]),
                    ("question", &["How should I celebrate weddings?", "What is water?", "How far is the Moon?"]),
                ]),
            );
        std::fs::write(t.dir().join("q.txt"), "Hints:\n{}\n\nInstructions:\n{}").unwrap();
        let out = t.run(&TgrtQuestions).unwrap();
        assert_eq!(server.sent(), 2);
        assert_eq!(column(&out, "topic"), ["Tea ceremony", "Mars", "Rain", "Jazz", "Chess"]);
        assert_eq!(column(&out, "instruction")[1], "What about Mars?");
        assert_eq!(column(&out, "question_type")[1], "Instructions that require scientific knowledge");
        let bodies = server.bodies.lock().unwrap();
        assert_eq!((bodies[0]["top_p"].as_f64(), bodies[0]["max_tokens"].as_u64()), (Some(0.95), Some(384)));
    }
}
