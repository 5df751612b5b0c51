//! The `tgrt_topics` op: the topic brainstorm of Topic-Guided Red-Teaming Self-Instruct
//! (Dromedary's SELF-ALIGN stage 1, Sun et al. 2023), as IBM/Dromedary's `generate_tgrt_topic.py`
//! and `deduplicate_tgrt_topic.py` do it, prompting a base model through the completion API.
//!
//! Input `seeds` (`topic`, `question_type`). Each epoch first de-duplicates each type's topics
//! (case-insensitively, first kept) and cuts every type to the smallest count; then sends one
//! prompt per topic of each type: the brainstorm prompt (`{}` the type) and a numbered list of
//! existing topics, one of them (in order) while the type has fewer than 2 × `num_examples`, else
//! `num_examples` after a shuffle. Of each response's first 20 lines, the text after the first
//! ". " is a new topic when it has at most 3 words, starts with A-Z and does not end with
//! punctuation. After the last epoch: the same de-duplication and balancing, and a shuffle (as
//! `deduplicate_tgrt_topic.py`). Output `out`: `topic`, `question_type`. Not deterministic (a
//! model's sampling); the prompts are, so a rerun or a resume is answered from the memo.
//!
//! Deviation from the original: it banned the end-of-text token (logit bias -100), which needs
//! the model's token id; set `sampling.logit_bias` to do the same (e.g. `{"2": -100}` for
//! LLaMA). Draws come from ChaCha8 streams seeded by the stage's seed, not Python's `random`.

use std::collections::HashSet;

use drover_engine::{CheckCx, CheckErrors, Checked, OpError, OpKit, PortType, Ports, RunCx, StageCx, Work};
use serde::Deserialize;

use crate::kit::draw::Draw;
use crate::kit::llm::template::{Rows, table as out_table, table_type, text_column};
use crate::kit::llm::{self, Client, Completion, Sampling};
use crate::kit::pystr::{Format, py_space, py_strip};
use crate::kit::synth::{Rounds, at_least_one, check_format_file, column_texts, format_file, rounds_left, run_rounds};
use crate::kit::table;

/// The `with:` block of a `tgrt_topics` stage.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
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

fn default_five() -> usize {
    5
}
fn default_batch() -> usize {
    32
}

/// Brainstorms topics per question type.
pub struct TgrtTopics;

const OUT: [(&str, &str); 2] = [("topic", "Utf8"), ("question_type", "Utf8")];

impl OpKit for TgrtTopics {
    type Params = TgrtTopicsParams;
    const NAME: &str = "tgrt_topics";
    const VERSION: u32 = 1;
    const DOC: &str = "TGRT Self-Instruct (Dromedary): brainstorms topics per question type with a base model for \
                       some epochs, de-duplicates them and balances the types; outputs topic, question_type.";
    const DETERMINISTIC: bool = false;

    fn inputs() -> Ports {
        Ports::one("seeds", PortType::any_table(), "Seed topics: topic, question_type.")
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "The topics, as many per type, shuffled.")
    }

    fn check(&self, p: &TgrtTopicsParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let columns = table::input_columns(cx, "seeds")?;
        let mut checked = Checked::default();
        let mut errors = CheckErrors::from(llm::check_one_choice(cx, &p.llm, &p.sampling, &mut checked));
        errors.extend(check_format_file(cx, &p.prompt_file, "the question type", 1, &mut checked));
        for name in ["topic", "question_type"] {
            errors.extend(table::check_text_column("seeds", None, name, columns));
        }
        for (param, value, help) in [
            ("epochs", p.epochs, "brainstorm for at least one epoch (Dromedary used 6)"),
            ("num_examples", p.num_examples as u64, "list at least one topic (default 5)"),
            ("request_batch_size", p.request_batch_size as u64, "send at least one prompt per batch (default 32)"),
        ] {
            errors.extend(at_least_one(param, value, help));
        }
        errors.or(checked.output("out", table_type(&OUT)))
    }

    fn run(&self, p: TgrtTopicsParams, cx: RunCx) -> Work {
        Work::future(async move {
            let (client, sampling, run) = Brainstorm::start(p, &cx)?;
            let batch = run.p.request_batch_size;
            let (run, sent) = run_rounds(&cx, &client, &sampling, run, batch).await?;
            let (epochs, added) = (run.p.epochs, run.added);
            let reasons: Vec<String> =
                TopicDrop::ALL.iter().map(|d| format!("{} {}", run.dropped[*d as usize], d.says())).collect();
            let rows = run.finish();
            llm::append_log(&cx, &llm::summary(&client));
            llm::append_log(
                &cx,
                &format!(
                    "tgrt_topics: {epochs} epochs, {sent} requests, {added} topics accepted (dropped: {}); {} out \
                     after de-duplication and balancing",
                    reasons.join(", "),
                    rows.len()
                ),
            );
            let (topics, types): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
            let (schema, batch) = out_table(vec![text_column("topic", topics), text_column("question_type", types)])?;
            table::write_parquet(&cx.output("out")?.path, &schema, &[batch])
        })
    }

    fn work_left(&self, p: &TgrtTopicsParams, cx: &StageCx) -> Option<String> {
        let (client, sampling, run) = Brainstorm::start(p.clone(), cx).ok()?;
        Some(rounds_left(&client, &sampling, run))
    }
}

/// The epochs without their I/O: each epoch's prompts, then their responses folded in.
struct Brainstorm {
    p: TgrtTopicsParams,
    meta: Format,
    seed: u64,
    groups: Groups,
    /// The question type of each prompt of the epoch under way.
    types: Vec<String>,
    epoch: u64,
    added: u64,
    dropped: [u64; TopicDrop::ALL.len()],
}

impl Brainstorm {
    fn start(p: TgrtTopicsParams, cx: &StageCx) -> Result<(Client, Sampling, Brainstorm), OpError> {
        let seeds = Rows::read(&cx.input("seeds")?.path)?;
        let mut groups = Groups::default();
        let types = column_texts(&seeds, "seeds", "question_type")?;
        for (topic, question_type) in column_texts(&seeds, "seeds", "topic")?.into_iter().zip(types) {
            groups.add(&question_type, topic);
        }
        let meta = format_file(cx, &p.prompt_file)?;
        let client = Client::new(cx, &p.llm)?;
        // Dromedary's sampling, under what the stage sets.
        let dromedary =
            Sampling { temperature: Some(1.0), top_p: Some(0.98), max_tokens: Some(128), ..Sampling::default() };
        let sampling = p.sampling.clone().or(dromedary);
        let run = Brainstorm { p, meta, seed: cx.seed, groups, types: Vec::new(), epoch: 0, added: 0, dropped: [0; 4] };
        Ok((client, sampling, run))
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

impl Rounds for Brainstorm {
    /// The next epoch's prompts; `None` after the last epoch.
    fn next(&mut self, _sent: u64) -> Option<Vec<String>> {
        if self.epoch == self.p.epochs {
            return None;
        }
        self.groups.balance();
        let prompts = self.groups.prompts(&self.meta, self.p.num_examples, &mut Draw::new(self.seed, self.epoch));
        self.epoch += 1;
        let texts;
        (self.types, texts) = prompts.into_iter().unzip();
        Some(texts)
    }

    fn fold(&mut self, responses: &[Completion]) {
        for (question_type, response) in self.types.iter().zip(responses) {
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
    fn prompts(&mut self, meta: &Format, examples: usize, draw: &mut Draw) -> Vec<(String, String)> {
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

fn topic_prompt(meta: &Format, question_type: &str, topics: &[impl AsRef<str>]) -> String {
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

#[cfg(test)]
mod tests {
    use drover_engine::CheckLocation;
    use serde_json::{Value, json};

    use super::*;
    use crate::kit::llm::mock::{MockLlm, nowhere};
    use crate::kit::testing::{OpTest, column, first_error, texts};

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
        let meta = Format::parse(TOPIC_PROMPT).unwrap();
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
        let meta = Format::parse("Type: {}.").unwrap();
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

    #[test]
    fn prompt_files_must_exist_and_have_their_fields() {
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
}
