//! The `tgrt_questions` op: the question generation of Topic-Guided Red-Teaming Self-Instruct
//! (Dromedary's SELF-ALIGN stage 1, Sun et al. 2023): a question for each (topic, question type),
//! as IBM/Dromedary's `generate_tgrt_question.py` and `merge_tgrt_question.py` do it, prompting a
//! base model through the completion API.
//!
//! Inputs `topics` (`topic`, `question_type`, e.g. from `tgrt_topics`) and `seeds` (`topic`,
//! `question_type`, `question`). The topics go `num_instructions_to_generate` to a prompt, after
//! `num_seed_examples` seeds drawn anew for each prompt: the question-generation prompt with its
//! first `{}` the numbered hints (`type: …, topic: …`, seeds first, "Questions" written
//! "Instructions") and its second the seeds as worked examples (`…, instruction: question`).
//! Every complete line of a response that starts with a hint gives a question for that hint.
//! Output `out`: `instruction`, `topic`, `question_type` (as parsed from the hint, so "Instructions
//! that …"), the first per (topic, question_type), in the order generated. Not deterministic (a
//! model's sampling); the prompts are, so a rerun or a resume is answered from the memo.
//!
//! Deviation from the original: it banned the end-of-text token (logit bias -100), which needs
//! the model's token id; set `sampling.logit_bias` to do the same (e.g. `{"2": -100}` for
//! LLaMA). Draws come from ChaCha8 streams seeded by the stage's seed, not Python's `random`.

use std::collections::HashSet;

use drover_engine::{CheckCx, CheckErrors, Checked, OpError, OpKit, PortDecl, PortType, Ports, RunCx, StageCx, Work};
use serde::Deserialize;

use crate::kit::draw::Draw;
use crate::kit::llm::template::{Rows, table as out_table, table_type, text_column};
use crate::kit::llm::{self, Client, Sampling};
use crate::kit::pystr::{Format, after_last, py_strip};
use crate::kit::synth::{at_least_one, check_format_file, column_texts, complete, format_file, requests};
use crate::kit::table;

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

/// Writes a question per (topic, question type).
pub struct TgrtQuestions;

const OUT: [(&str, &str); 3] = [("instruction", "Utf8"), ("topic", "Utf8"), ("question_type", "Utf8")];

impl OpKit for TgrtQuestions {
    type Params = TgrtQuestionsParams;
    const NAME: &str = "tgrt_questions";
    const VERSION: u32 = 1;
    const DOC: &str = "TGRT Self-Instruct (Dromedary): writes a question for each (topic, question type) with a \
                       base model, from seed questions as examples; outputs instruction, topic, question_type.";
    const DETERMINISTIC: bool = false;

    fn inputs() -> Ports {
        Ports::Fixed(vec![
            PortDecl::new(
                "topics",
                PortType::any_table(),
                "The topics: topic, question_type (e.g. a tgrt_topics stage).",
            ),
            PortDecl::new("seeds", PortType::any_table(), "Seed questions: topic, question_type, question."),
        ])
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "One question per (topic, question_type).")
    }

    fn check(&self, p: &TgrtQuestionsParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let (topics, seeds) = (table::input_columns(cx, "topics")?, table::input_columns(cx, "seeds")?);
        let mut checked = Checked::default();
        let mut errors = CheckErrors::from(llm::check_one_choice(cx, &p.llm, &p.sampling, &mut checked));
        errors.extend(check_format_file(cx, &p.prompt_file, "the hints, the examples", 2, &mut checked));
        for name in ["topic", "question_type"] {
            errors.extend(table::check_text_column("topics", None, name, topics));
        }
        for name in ["topic", "question_type", "question"] {
            errors.extend(table::check_text_column("seeds", None, name, seeds));
        }
        errors.extend(at_least_one(
            "num_instructions_to_generate",
            p.num_instructions_to_generate as u64,
            "put at least one topic in each prompt (default 5)",
        ));
        errors.or(checked.output("out", table_type(&OUT)))
    }

    fn run(&self, p: TgrtQuestionsParams, cx: RunCx) -> Work {
        Work::future(async move {
            let plan = QuestionPlan::new(&p, &cx)?;
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

    fn work_left(&self, p: &TgrtQuestionsParams, cx: &StageCx) -> Option<String> {
        let plan = QuestionPlan::new(p, cx).ok()?;
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
    fn new(p: &TgrtQuestionsParams, cx: &StageCx) -> Result<QuestionPlan, OpError> {
        let meta = format_file(cx, &p.prompt_file)?;
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
        // Dromedary's sampling, under what the stage sets.
        let dromedary =
            Sampling { temperature: Some(1.0), top_p: Some(0.95), max_tokens: Some(384), ..Sampling::default() };
        Ok(QuestionPlan {
            client: Client::new(cx, &p.llm)?,
            sampling: p.sampling.clone().or(dromedary),
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
fn question_prompt(meta: &Format, seeds: &[&Seed], group: &[(String, String)]) -> (String, Vec<String>) {
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::kit::llm::mock::{MockLlm, nowhere};
    use crate::kit::testing::{OpTest, column, texts};

    const CULTURE: &str = "Questions that require cultural context";
    const SCIENCE: &str = "Questions that require scientific knowledge";

    fn seed(topic: &str, question_type: &str, question: &str) -> Seed {
        Seed { topic: topic.into(), question_type: question_type.into(), question: question.into() }
    }

    #[test]
    fn the_question_prompt_and_parsing_are_the_originals() {
        let meta = Format::parse("Hints:\n{}\n\nInstructions:\n{}").unwrap();
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

    #[test]
    fn the_prompt_file_needs_both_fields() {
        let t = OpTest::new(json!({"prompt_file": "q.txt"}))
            .llms(nowhere())
            .input("topics", texts(&[("topic", &["Mars"]), ("question_type", &[SCIENCE])]))
            .input("seeds", texts(&[("topic", &["Water"]), ("question_type", &[SCIENCE])]));
        std::fs::write(t.dir().join("q.txt"), "Hints: {}").unwrap();
        let errors = t.check(&TgrtQuestions).unwrap_err();
        assert_eq!(errors[0].message, "the prompt file has 1 `{}` field(s); this op fills 2");
        assert_eq!(errors[1].message, "`seeds` has no column `question`");
    }
}
