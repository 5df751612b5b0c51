//! The `self_instruct` op: Self-Instruct's instruction bootstrapping (Wang et al. 2022, as
//! `self_instruct/bootstrap_instructions.py` of yizhongw/self-instruct does it) against a base
//! model, through the completion API.
//!
//! Input `seeds` (the human-written tasks; param `column`). It works in rounds: each round sends
//! `request_batch_size` prompts, each the header and `num_prompt_instructions` numbered tasks (up
//! to `num_machine_instructions` from those kept so far, the rest seeds, shuffled) ending in the
//! next number. A response cut at `max_tokens` is dropped whole; the rest is split into numbered
//! instructions, which are cleaned and filtered as the original does (4 to 150 words, no words
//! an LM cannot act on, no "Write a program", no punctuation or non-ASCII start). An instruction
//! is kept when its ROUGE-L with every seed and every instruction kept before is at most
//! `threshold`, and then joins that pool at once. Stops at `target` kept (exactly that many come
//! out) or once `max_requests` requests were sent.
//!
//! Output `out`, the kept instructions in the order kept: `instruction`, `most_similar` (JSON
//! text of the ten most similar pool texts and their ROUGE-L), `avg_similarity_score` (over the
//! whole pool) and `request_idx` (the round, as the original counts). Every draw comes from a
//! ChaCha8 stream per round seeded by the stage's seed, and each request carries its own seed,
//! so a rerun or a resume asks the same questions and is answered from the memo.
//!
//! Deviations, each marked where it is made: the split's `\d` is ASCII; the first letter is
//! upper-cased where Python title-cases it (`kit::pystr::capitalize`); `most_similar` orders ties
//! one fixed way (NumPy's is unspecified) and is compact JSON without ASCII escapes; the
//! original's `--use_clf_seed_tasks_only` is a filter upstream plus `prompt_header`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Float64Array, UInt64Array};
use arrow::datatypes::{DataType, Field};
use drover_engine::{CheckCx, CheckError, CheckErrors, Checked, OpError, OpKit, PortType, Ports, RunCx, StageCx, Work};
use serde::Deserialize;

use crate::kit::draw::Draw;
use crate::kit::llm::template::{Rows, table as out_table, table_type, text_column};
use crate::kit::llm::{self, Client, Completion, Sampling};
use crate::kit::pystr::{capitalize, collapse, has_word, py_space};
use crate::kit::rouge::{Filter, LcsScan, fmeasure, tokenize};
use crate::kit::synth::{Rounds, at_least_one, column_texts, rounds_left, run_rounds};
use crate::kit::table;

/// The `with:` block of a `self_instruct` stage.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfInstructParams {
    /// The endpoint under the pipeline's `llms:`. Default: `default`.
    #[serde(default = "llm::default_llm")]
    pub llm: String,
    /// The instruction column of `seeds`. Default: `instruction`.
    #[serde(default = "default_column")]
    pub column: String,
    /// How many instructions to keep (Self-Instruct: 50,000).
    pub target: u64,
    /// The most requests to send, whatever was kept by then.
    pub max_requests: u64,
    /// Prompts per round. Default: 5.
    #[serde(default = "default_batch")]
    pub request_batch_size: u64,
    /// Tasks listed in each prompt. Default: 8.
    #[serde(default = "default_prompt_instructions")]
    pub num_prompt_instructions: usize,
    /// Of those, at most this many generated ones (the rest are seeds). Default: 2.
    #[serde(default = "default_machine_instructions")]
    pub num_machine_instructions: usize,
    /// An instruction whose ROUGE-L with a pool text is above this is dropped. Default: 0.7.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// The first line of every prompt. Default: `"Come up with a series of tasks:\n"` (the
    /// original's classification variant: `"Come up with a series of classification tasks. Try
    /// to specify the possible output labels when possible.\n"`).
    #[serde(default = "default_header")]
    pub prompt_header: String,
    /// Sampling; unset fields take the original's values (temperature 0.7, top_p 0.5,
    /// max_tokens 1024, presence_penalty 2, stop `["\n\n", "\n16", "16.", "16 ."]`).
    #[serde(default)]
    pub sampling: Sampling,
}

fn default_column() -> String {
    "instruction".into()
}
fn default_batch() -> u64 {
    5
}
fn default_prompt_instructions() -> usize {
    8
}
fn default_machine_instructions() -> usize {
    2
}
fn default_threshold() -> f64 {
    0.7
}
fn default_header() -> String {
    "Come up with a series of tasks:\n".into()
}

fn default_sampling() -> Sampling {
    Sampling {
        temperature: Some(0.7),
        top_p: Some(0.5),
        max_tokens: Some(1024),
        presence_penalty: Some(2.0),
        stop: Some(["\n\n", "\n16", "16.", "16 ."].map(String::from).to_vec()),
        ..Sampling::default()
    }
}

/// Bootstraps instructions from seed tasks.
pub struct SelfInstruct;

const OUT: [(&str, &str); 4] =
    [("instruction", "Utf8"), ("most_similar", "Utf8"), ("avg_similarity_score", "Float64"), ("request_idx", "UInt64")];

impl OpKit for SelfInstruct {
    type Params = SelfInstructParams;
    const NAME: &str = "self_instruct";
    const VERSION: u32 = 1;
    const DOC: &str = "Self-Instruct: bootstraps new instructions from seed tasks with a base model, keeping those \
                       whose ROUGE-L with every earlier one is at most a threshold; outputs instruction, \
                       most_similar, avg_similarity_score, request_idx.";
    const DETERMINISTIC: bool = false;

    fn inputs() -> Ports {
        Ports::one("seeds", PortType::any_table(), "The human-written seed tasks.")
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "The kept instructions, in the order kept.")
    }

    fn check(&self, p: &SelfInstructParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let columns = table::input_columns(cx, "seeds")?;
        let mut checked = Checked::default();
        let mut errors = CheckErrors::from(llm::check_one_choice(cx, &p.llm, &p.sampling, &mut checked));
        errors.extend(table::check_text_column("seeds", Some("column"), &p.column, columns));
        for (param, value, help) in [
            ("target", p.target, "ask for at least one instruction (Self-Instruct kept 50,000)"),
            ("max_requests", p.max_requests, "allow at least one request; it bounds the cost of the stage"),
            ("request_batch_size", p.request_batch_size, "send at least one prompt per round (default 5)"),
            ("num_prompt_instructions", p.num_prompt_instructions as u64, "list at least one task (default 8)"),
        ] {
            errors.extend(at_least_one(param, value, help));
        }
        if p.num_machine_instructions > p.num_prompt_instructions {
            errors.push(
                CheckError::param(
                    &["num_machine_instructions"],
                    format!(
                        "num_machine_instructions ({}) is more than num_prompt_instructions ({})",
                        p.num_machine_instructions, p.num_prompt_instructions
                    ),
                )
                .help("the generated tasks are part of the listed ones (defaults: 2 of 8)"),
            );
        }
        if !(0.0..=1.0).contains(&p.threshold) {
            errors.push(
                CheckError::param(&["threshold"], format!("threshold {} is outside [0, 1]", p.threshold))
                    .help("ROUGE-L lies in [0, 1]; Self-Instruct drops above 0.7"),
            );
        }
        errors.or(checked.output("out", table_type(&OUT)))
    }

    fn run(&self, p: SelfInstructParams, cx: RunCx) -> Work {
        Work::future(async move {
            let (client, sampling, run) = Bootstrap::start(p, &cx)?;
            let batch = run.p.request_batch_size as usize;
            let (run, sent) = run_rounds(&cx, &client, &sampling, run, batch).await?;
            llm::append_log(&cx, &llm::summary(&client));
            let reasons: Vec<String> =
                Reject::ALL.iter().map(|d| format!("{} {}", run.rejected[*d as usize], d.says())).collect();
            llm::append_log(
                &cx,
                &format!(
                    "self_instruct: {} rounds, {sent} requests, {} of {} instructions kept; dropped: {}",
                    run.rounds,
                    run.kept.len(),
                    run.p.target,
                    reasons.join(", ")
                ),
            );
            let kept = &run.kept;
            let (schema, batch) = out_table(vec![
                text_column("instruction", kept.iter().map(|k| k.instruction.clone())),
                text_column("most_similar", kept.iter().map(|k| k.most_similar.clone())),
                (
                    Field::new("avg_similarity_score", DataType::Float64, false),
                    Arc::new(Float64Array::from_iter_values(kept.iter().map(|k| k.avg))),
                ),
                (
                    Field::new("request_idx", DataType::UInt64, false),
                    Arc::new(UInt64Array::from_iter_values(kept.iter().map(|k| k.round))),
                ),
            ])?;
            table::write_parquet(&cx.output("out")?.path, &schema, &[batch])
        })
    }

    fn work_left(&self, p: &SelfInstructParams, cx: &StageCx) -> Option<String> {
        let (client, sampling, run) = Bootstrap::start(p.clone(), cx).ok()?;
        Some(rounds_left(&client, &sampling, run))
    }
}

/// The bootstrapping loop without its I/O: each round's prompts, then its responses folded in.
struct Bootstrap {
    p: SelfInstructParams,
    seed: u64,
    pool: Pool,
    kept: Vec<Kept>,
    rejected: [u64; Reject::ALL.len()],
    rounds: u64,
}

impl Bootstrap {
    fn start(p: SelfInstructParams, cx: &StageCx) -> Result<(Client, Sampling, Bootstrap), OpError> {
        let seeds = column_texts(&Rows::read(&cx.input("seeds")?.path)?, "seeds", &p.column)?;
        if seeds.len() < p.num_prompt_instructions {
            return Err(OpError::failed(format!(
                "`seeds` has {} instructions, fewer than num_prompt_instructions ({}): each prompt lists that \
                 many, all seeds in the first round",
                seeds.len(),
                p.num_prompt_instructions
            )));
        }
        let client = Client::new(cx, &p.llm)?;
        let sampling = p.sampling.clone().or(default_sampling());
        let pool = Pool::new(&seeds, p.threshold);
        Ok((client, sampling, Bootstrap { p, seed: cx.seed, pool, kept: Vec::new(), rejected: [0; 7], rounds: 0 }))
    }
}

impl Rounds for Bootstrap {
    /// The next round's prompts; `None` once `target` instructions are kept or `max_requests`
    /// were sent.
    fn next(&mut self, sent: u64) -> Option<Vec<String>> {
        let p = &self.p;
        if self.kept.len() as u64 >= p.target || sent >= p.max_requests {
            return None;
        }
        let mut draw = Draw::new(self.seed, self.rounds);
        let n = p.request_batch_size.min(p.max_requests - sent);
        Some((0..n).map(|_| self.pool.prompt(&mut draw, p)).collect())
    }

    /// Takes the round's instructions in order until `target` are kept.
    fn fold(&mut self, responses: &[Completion]) {
        let round = self.rounds;
        self.rounds += 1;
        for candidate in responses.iter().flat_map(post_process) {
            if self.kept.len() as u64 == self.p.target {
                return;
            }
            match candidate.and_then(|inst| self.pool.admit(inst)) {
                Ok((instruction, most_similar, avg)) => self.kept.push(Kept { instruction, most_similar, avg, round }),
                Err(why) => self.rejected[why as usize] += 1,
            }
        }
    }
}

struct Kept {
    instruction: String,
    most_similar: String,
    avg: f64,
    round: u64,
}

/// Why a generated instruction was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reject {
    /// The whole response: it hit `max_tokens`.
    Length,
    Words,
    Blacklist,
    Program,
    Punctuation,
    NonAscii,
    Similar,
}

impl Reject {
    const ALL: [Reject; 7] = [
        Reject::Length,
        Reject::Words,
        Reject::Blacklist,
        Reject::Program,
        Reject::Punctuation,
        Reject::NonAscii,
        Reject::Similar,
    ];

    fn says(self) -> &'static str {
        match self {
            Reject::Length => "responses cut at max_tokens",
            Reject::Words => "with <= 3 or > 150 words",
            Reject::Blacklist => "with a blacklisted word",
            Reject::Program => "starting \"Write a program\"",
            Reject::Punctuation => "starting with punctuation",
            Reject::NonAscii => "starting with a non-ASCII character",
            Reject::Similar => "too similar to the pool",
        }
    }
}

/// `encode_prompt`: the header, each task numbered (whitespace collapsed, trailing colons
/// dropped), then the next number.
fn encode_prompt(header: &str, instructions: &[&str]) -> String {
    let mut prompt = header.to_string();
    for (i, instruction) in instructions.iter().enumerate() {
        prompt += &format!("{}. {}\n", i + 1, collapse(instruction).trim_end_matches(':'));
    }
    prompt + &format!("{}.", instructions.len() + 1)
}

/// `re.split(r"\n\d+\s?\. ", text)`. Deviation: `\d` is ASCII digits here, every decimal digit
/// in Python.
fn split_numbered(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut from) = (0, 0);
    while let Some(nl) = text[from..].find('\n').map(|i| from + i) {
        let rest = &text[nl + 1..];
        let after = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        let digits = rest.len() - after.len();
        let space = after.chars().next().filter(|c| py_space(*c)).map_or(0, char::len_utf8);
        // `\s?` is greedy: with the space first, then without.
        match [space, 0].into_iter().find(|s| digits > 0 && after[*s..].starts_with(". ")) {
            Some(s) => {
                pieces.push(&text[start..nl]);
                start = nl + 1 + digits + s + 2;
                from = start;
            }
            None => from = nl + 1,
        }
    }
    pieces.push(&text[start..]);
    pieces
}

const BLACKLIST: [&str; 13] = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw", "plot",
    "go to",
];

/// `post_process_gpt3_response`: the instructions of one response (or why each was dropped),
/// empty pieces left out.
fn post_process(response: &Completion) -> Vec<Result<String, Reject>> {
    if response.finish_reason() == "length" {
        return vec![Err(Reject::Length)];
    }
    split_numbered(response.text()).into_iter().filter_map(clean).collect()
}

/// One piece of a response, normalised and filtered as the original does, in its order.
fn clean(raw: &str) -> Option<Result<String, Reject>> {
    let inst = capitalize(&collapse(raw));
    let first = inst.chars().next()?;
    let words = inst.split(' ').count();
    Some(if words <= 3 || words > 150 {
        Err(Reject::Words)
    } else if BLACKLIST.iter().any(|w| has_word(&inst, w)) {
        Err(Reject::Blacklist)
    } else if inst.starts_with("Write a program") {
        Err(Reject::Program)
    } else if first.is_ascii_punctuation() {
        Err(Reject::Punctuation)
    } else if !first.is_ascii() {
        Err(Reject::NonAscii)
    } else {
        Ok(inst)
    })
}

/// The seeds and the kept instructions, with the ROUGE-L filter over them.
struct Pool {
    seeds: usize,
    texts: Vec<String>,
    tokens: Vec<Vec<String>>,
    /// The tokens as ids, for the full scan of a kept instruction.
    ids: Vec<Vec<u32>>,
    interner: HashMap<String, u32>,
    threshold: f64,
    filter: Filter,
    scan: LcsScan,
    /// The pool size when `filter` was built: rebuilt when the pool doubles, so that its prefix
    /// order (rarest tokens first) follows the pool. Tokens it has not seen count as rarest,
    /// which keeps it exact between rebuilds.
    built_at: usize,
}

impl Pool {
    fn new(seeds: &[String], threshold: f64) -> Pool {
        let mut pool = Pool {
            seeds: seeds.len(),
            texts: Vec::new(),
            tokens: Vec::new(),
            ids: Vec::new(),
            interner: HashMap::new(),
            scan: LcsScan::default(),
            threshold,
            filter: Filter::new(threshold, &[]),
            built_at: 0,
        };
        for seed in seeds {
            pool.push(seed.clone(), tokenize(seed));
        }
        pool.rebuild();
        pool
    }

    fn push(&mut self, text: String, tokens: Vec<String>) {
        let ids = tokens
            .iter()
            .map(|t| {
                let next = self.interner.len() as u32;
                *self.interner.entry(t.clone()).or_insert(next)
            })
            .collect();
        self.texts.push(text);
        self.tokens.push(tokens);
        self.ids.push(ids);
    }

    fn rebuild(&mut self) {
        let all: Vec<&[String]> = self.tokens.iter().map(Vec::as_slice).collect();
        self.filter = Filter::new(self.threshold, &all);
        for tokens in &self.tokens {
            self.filter.add(tokens);
        }
        self.built_at = self.texts.len();
    }

    /// A prompt: generated tasks (when there are any), then seeds, shuffled.
    fn prompt(&self, draw: &mut Draw, p: &SelfInstructParams) -> String {
        let machine = &self.texts[self.seeds..];
        let from_machine = p.num_machine_instructions.min(machine.len());
        let mut chosen: Vec<&str> = draw.pick(machine.len(), from_machine).map(|i| machine[i].as_str()).collect();
        chosen.extend(draw.pick(self.seeds, p.num_prompt_instructions - from_machine).map(|i| self.texts[i].as_str()));
        draw.shuffle(&mut chosen);
        encode_prompt(&p.prompt_header, &chosen)
    }

    /// Keeps `inst` when its ROUGE-L with every pool text is at most the threshold: then the
    /// instruction, the JSON of its ten most similar pool texts, its mean ROUGE-L over the pool.
    fn admit(&mut self, inst: String) -> Result<(String, String, f64), Reject> {
        let tokens = tokenize(&inst);
        if self.filter.admit(&tokens).is_some() {
            return Err(Reject::Similar);
        }
        let mine: Vec<u32> = tokens.iter().map(|t| self.interner.get(t).copied().unwrap_or(u32::MAX)).collect();
        let mut scores = Vec::with_capacity(self.ids.len());
        let lengths = self.ids.iter().map(Vec::len);
        let mut lengths = lengths.into_iter();
        self.scan.scan(&mine, self.ids.iter().map(Vec::as_slice), |common| {
            scores.push(fmeasure(common, mine.len(), lengths.next().expect("one length per text")))
        });
        let most_similar = top_ten(&scores, &self.texts);
        let avg = pairwise_sum(&scores) / scores.len() as f64;
        self.push(inst.clone(), tokens);
        if self.texts.len() >= 2 * self.built_at {
            self.rebuild();
        }
        Ok((inst, most_similar, avg))
    }
}

/// `{all_instructions[i]: rouge_scores[i] for i in np.argsort(rouge_scores)[-10:][::-1]}` as
/// JSON text: the ten highest scores, highest first. Ties: NumPy's default argsort is not
/// stable (its order among equal scores depends on the NumPy version and the CPU); here the
/// later pool text comes first, as a stable sort reversed gives. A text in the pool twice is one
/// key, at its first place, as in a Python dict.
fn top_ten(scores: &[f64], texts: &[String]) -> String {
    let mut best: Vec<(f64, usize)> = Vec::with_capacity(11);
    for (i, s) in scores.iter().enumerate() {
        let at = best.partition_point(|(b, j)| (*b, *j) > (*s, i));
        if at < 10 {
            best.insert(at, (*s, i));
            best.truncate(10);
        }
    }
    let mut map = serde_json::Map::new();
    for (s, i) in best {
        map.insert(texts[i].clone(), s.into());
    }
    serde_json::Value::Object(map).to_string()
}

/// NumPy's pairwise summation (8 accumulators over blocks of up to 128), so that the mean is
/// `np.mean`'s to the last bit.
fn pairwise_sum(a: &[f64]) -> f64 {
    if a.len() < 8 {
        a.iter().fold(0.0, |s, x| s + x)
    } else if a.len() <= 128 {
        let mut r: [f64; 8] = a[..8].try_into().expect("8 values");
        let whole = a.len() - a.len() % 8;
        for block in a[8..whole].chunks_exact(8) {
            for (r, x) in r.iter_mut().zip(block) {
                *r += x;
            }
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for x in &a[whole..] {
            sum += x;
        }
        sum
    } else {
        let half = a.len() / 2;
        let half = half - half % 8;
        pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
    }
}

#[cfg(test)]
mod tests {
    use drover_engine::{CheckLocation, Column, TableSchema};
    use serde_json::{Value, json};

    use super::*;
    use crate::kit::llm::client::Choice;
    use crate::kit::llm::mock::{MockLlm, nowhere};
    use crate::kit::testing::{OpTest, column, first_error, texts};

    const SEEDS: [&str; 10] = [
        "Give me three tips for staying healthy today.",
        "Suggest a name for a new coffee shop.",
        "Translate the sentence into French.",
        "Summarize the plot of a famous novel.",
        "Classify the sentiment of this review.",
        "Write a haiku about the first snow.",
        "Explain how vaccines train the immune system.",
        "List five countries in South America.",
        "Rewrite this paragraph in a formal tone.",
        "Find the grammatical error in the sentence.",
    ];

    fn completion(text: &str, finish_reason: &str) -> Completion {
        Completion {
            choices: vec![Choice { text: text.into(), finish_reason: finish_reason.into(), logprobs: None }],
            model: "m".into(),
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    fn kept(text: &str) -> Vec<String> {
        post_process(&completion(text, "stop")).into_iter().filter_map(Result::ok).collect()
    }

    #[test]
    fn the_prompt_is_encode_prompts() {
        // From the original's encode_prompt on the same three tasks.
        let p = encode_prompt(
            "Come up with a series of tasks:\n",
            &["Give me a  list\nof fruits:", " Sort these numbers. :", "Name three\tcolours::"],
        );
        assert_eq!(
            p,
            "Come up with a series of tasks:\n1. Give me a list of fruits\n2. Sort these numbers. \n3. Name three colours\n4."
        );
    }

    #[test]
    fn responses_are_split_cleaned_and_filtered_as_the_original() {
        let text = " Write a Poem about the SEA.\n10. Write a program that sorts a list of numbers.\n11 . Tell me a joke.\
                    \n12. Draw a map of your town.\n13. List the images in this album, please.\n14. \"Quote\" a famous \
                    person today.\n15. ¿Qué hora es ahora mismo?\n16x. Describe   your favourite\tbook in detail.\
                    \n17. Explain the filesystem layout of Linux.\n18.Explain why going to bed early helps.\n19  . Name a \
                    plot_twist in a film.\n\n20 \n. Give an   example of irony\n21\u{2003}. Summarise the news for me";
        // What the original's re.split and post_process_gpt3_response give for this text.
        assert_eq!(split_numbered(text).len(), 9);
        assert_eq!(
            post_process(&completion(text, "stop")),
            vec![
                Ok("Write a poem about the sea.".to_string()),
                Err(Reject::Program),
                Ok("Tell me a joke.".to_string()),
                Err(Reject::Blacklist),
                Err(Reject::Blacklist),
                Err(Reject::Punctuation),
                Err(Reject::NonAscii),
                Ok("Explain the filesystem layout of linux. 18.explain why going to bed early helps. 19 . name a \
                    plot_twist in a film. 20 . give an example of irony"
                    .to_string()),
                Ok("Summarise the news for me".to_string()),
            ]
        );
        assert_eq!(post_process(&completion(text, "length")), vec![Err(Reject::Length)]);
        assert_eq!(
            kept("\n1. Tell a joke.\n2. Write a haiku about autumn leaves"),
            ["Write a haiku about autumn leaves"]
        );
        assert_eq!(kept(&format!("{}words", "many ".repeat(150))), Vec::<String>::new());
        assert_eq!(kept(&format!("{}words", "many ".repeat(149))).len(), 1);
    }

    #[test]
    fn blacklisted_words_match_as_python_re_does() {
        for (text, hit) in [
            ("GO TO the shop now", true),
            ("Go  to", false),
            ("a Maps b", true),
            ("a ımage b", true),
            ("mapping things out", false),
            ("re_map x", false),
            ("x-map y", true),
            ("x map_y", false),
        ] {
            assert_eq!(BLACKLIST.iter().any(|w| has_word(text, w)), hit, "{text}");
        }
    }

    #[test]
    fn bad_params_are_plan_errors() {
        let check = |params: Value| {
            first_error(
                OpTest::new(params)
                    .llms(nowhere())
                    .input("seeds", texts(&[("instruction", &SEEDS)]))
                    .check(&SelfInstruct),
            )
        };
        let e = check(json!({"column": "instructoin", "target": 5, "max_requests": 10}));
        assert_eq!(e.message, "unknown column `instructoin`");
        assert!(matches!(&e.at, CheckLocation::Param(p) if p == &["column"]));
        assert_eq!(check(json!({"target": 0, "max_requests": 10})).message, "target is 0");
        assert_eq!(check(json!({"target": 5, "max_requests": 0})).message, "max_requests is 0");
        assert_eq!(
            check(json!({"target": 5, "max_requests": 9, "threshold": 1.5})).message,
            "threshold 1.5 is outside [0, 1]"
        );
        assert!(
            check(json!({"target": 5, "max_requests": 9, "num_machine_instructions": 9})).message.contains("more than")
        );
        assert_eq!(
            check(json!({"target": 5, "max_requests": 9, "sampling": {"n": 2}})).message,
            "this op reads one completion per request"
        );
        let ok = OpTest::new(json!({"target": 5, "max_requests": 9}))
            .llms(nowhere())
            .input("seeds", texts(&[("instruction", &SEEDS)]))
            .check(&SelfInstruct)
            .unwrap();
        assert_eq!(
            ok.outputs["out"],
            PortType::Table(TableSchema::with_columns(OUT.iter().map(|(n, t)| Column::new(*n, *t)).collect()))
        );
    }

    /// Each response: a new instruction made of the request's seed, one the filters drop and a
    /// copy of a seed (too similar).
    fn answer(body: &Value) -> String {
        let s = body["seed"].as_u64().unwrap();
        format!(" Describe the a{s} b{s} c{s} of d{s}\n10. Write a program that prints {s}\n11. {}", SEEDS[0])
    }

    #[test]
    fn rounds_keep_exactly_the_target_and_a_rerun_sends_nothing() {
        let server = MockLlm::start(answer);
        let t = OpTest::new(json!({"target": 7, "max_requests": 100}))
            .llms(server.llms())
            .input("seeds", texts(&[("instruction", &SEEDS)]));
        let out = t.run(&SelfInstruct).unwrap();
        assert_eq!(column(&out, "request_idx"), ["0", "0", "0", "0", "0", "1", "1"]);
        assert!(column(&out, "instruction").iter().all(|i| i.starts_with("Describe the a")));
        // Two rounds of five; the second lists two of the first round's instructions.
        let bodies = server.bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 10);
        let machine = |b: &Value| b["prompt"].as_str().unwrap().matches(". Describe the a").count();
        let mut per_prompt: Vec<usize> = bodies.iter().map(machine).collect();
        per_prompt.sort();
        assert_eq!(per_prompt, [0, 0, 0, 0, 0, 2, 2, 2, 2, 2]);
        for b in &bodies {
            let prompt = b["prompt"].as_str().unwrap();
            assert!(prompt.starts_with("Come up with a series of tasks:\n1. ") && prompt.ends_with("\n9."), "{prompt}");
            assert_eq!(
                (b["temperature"].as_f64(), b["top_p"].as_f64(), b["max_tokens"].as_u64()),
                (Some(0.7), Some(0.5), Some(1024))
            );
        }
        // The first kept one is compared with the ten seeds only.
        let similar: serde_json::Map<String, Value> = serde_json::from_str(&column(&out, "most_similar")[0]).unwrap();
        assert_eq!(similar.len(), 10);
        let scores: Vec<f64> = similar.values().map(|v| v.as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]) && scores[0] <= 0.7);
        let again = t.run(&SelfInstruct).unwrap();
        assert_eq!(server.sent(), 10);
        assert_eq!(again, out);
    }

    #[test]
    fn plan_replays_the_rounds_the_memo_answers() {
        let server = MockLlm::start(answer);
        let t = OpTest::new(json!({"target": 7, "max_requests": 5}))
            .llms(server.llms())
            .input("seeds", texts(&[("instruction", &SEEDS)]));
        let left = |t: &OpTest| t.work_left(&SelfInstruct).unwrap();
        assert_eq!(left(&t), "requests to send");
        t.run(&SelfInstruct).unwrap();
        assert_eq!(left(&t), "all 5 requests already answered");
        // The first round asks the same whatever max_requests; the second depends on its answers.
        let t = t.params(json!({"target": 7, "max_requests": 100}));
        assert_eq!(left(&t), "5 requests already answered, more to send");
        t.run(&SelfInstruct).unwrap();
        assert_eq!(left(&t), "all 10 requests already answered");
        assert_eq!(server.sent(), 10);
    }

    #[test]
    fn max_requests_is_a_hard_cap() {
        let server = MockLlm::start(answer);
        let t = OpTest::new(json!({"target": 100, "max_requests": 3}))
            .llms(server.llms())
            .input("seeds", texts(&[("instruction", &SEEDS)]));
        assert_eq!(t.run(&SelfInstruct).unwrap().num_rows(), 3);
        assert_eq!(server.sent(), 3);
    }

    #[test]
    fn the_pool_keeps_what_is_at_most_the_threshold_and_adds_it_at_once() {
        let seeds: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
        let mut pool = Pool::new(&seeds, 0.7);
        // A seed again: ROUGE-L 1.0 with itself.
        assert_eq!(pool.admit(SEEDS[3].to_string()), Err(Reject::Similar));
        let (_, most_similar, avg) = pool.admit("Give me three tips for a calm morning.".into()).unwrap();
        // 5 tokens in common with the first seed, both of 8: F = 2·5/(8+8) = 0.625.
        let first: Value = serde_json::from_str(&most_similar).unwrap();
        assert_eq!(first.as_object().unwrap().iter().next().unwrap(), (&SEEDS[0].to_string(), &json!(0.625)));
        assert!(avg > 0.0 && avg < 0.625);
        // Now in the pool: its near copy is dropped.
        assert_eq!(pool.admit("Give me three tips for a CALM morning!".into()), Err(Reject::Similar));
    }

    #[test]
    fn ties_put_the_later_pool_text_first_and_the_mean_is_numpys() {
        let texts: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
        let scores = [0.1, 0.5, 0.5, 0.0, 0.2, 0.2, 0.2, 0.3, 0.0, 0.0, 0.1, 0.4];
        assert_eq!(
            top_ten(&scores, &texts),
            r#"{"t2":0.5,"t1":0.5,"t11":0.4,"t7":0.3,"t6":0.2,"t5":0.2,"t4":0.2,"t10":0.1,"t0":0.1,"t9":0.0}"#
        );
        // np.mean of these lists (NumPy 2.4), where a running sum differs in the last digits.
        let mean = |a: &[f64]| pairwise_sum(a) / a.len() as f64;
        assert_eq!(mean(&[0.1; 1000]), 0.10000000000000002);
        let cycle: Vec<f64> = (1..=1000).map(|i| (i % 13) as f64 / 7.0).collect();
        assert_eq!(mean(&cycle), 0.858);
        assert_eq!(mean(&cycle[..300]), 0.8547619047619046);
    }
}
