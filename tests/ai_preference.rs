//! End-to-end tests of `ai_preference` (SALMON's synthetic preferences) against a real server:
//! llama.cpp serving SmolLM2-135M-Instruct behind the counting proxy (`tests/support`), with
//! SALMON's own judge prompt and principle collection (pipelines/data/salmon, CC BY-NC 4.0).
//!
//! A 135M model is a poor judge (it mostly answers by position), so the tests check structure,
//! counts and the memo, never which response wins.

mod common;
#[path = "support/llm_server.rs"]
mod llm_server;

use common::Project;
use llm_server::{Server, assert_resumed, kill_run_after, model, stage_log};

const PROMPT: &str = include_str!("../pipelines/data/salmon/synthetic_preference_prompt.txt");
const PRINCIPLES: &str = include_str!("../pipelines/data/salmon/principle_collection_rm.json");

/// Three pairs and one with a missing side (row 3).
const RESPONSES: &str = r#"{"instruction": "What is the capital of France?", "input": "", "output_1": "The capital of France is Paris, a city on the Seine.", "output_2": "Berlin Berlin Berlin banana Berlin. Potato. I do not know and I will not say anything useful."}
{"instruction": "Give one tip for sleeping better at night.", "input": "", "output_1": "Go to bed at the same time every night and keep your room dark.", "output_2": "Drink three cups of strong coffee right before going to bed."}
{"instruction": "How many legs does a spider have?", "input": "", "output_1": "A spider has eight legs.", "output_2": "As an AI language model, I cannot count legs, but spiders have six, or maybe ten, who knows, legs are hard to count and I refuse."}
{"instruction": "Name a primary colour.", "input": "", "output_1": "", "output_2": "Red is a primary colour."}
"#;

/// A project judging `responses.jsonl` on two of SALMON's principles, with `with` (YAML
/// block lines) added to the stage's params.
fn project(base_url: &str, llm: &str, with: &str) -> Project {
    let p = Project::new();
    p.write("synthetic_preference_prompt.txt", PROMPT)
        .write("principle_collection_rm.json", PRINCIPLES)
        .write("responses.jsonl", RESPONSES)
        .write(
            "drover.yaml",
            &format!(
                "pipeline: salmon\n\
                 llms:\n  default: {{ base_url: \"{base_url}\", model: smollm2{llm} }}\n\
                 stages:\n  responses:\n    op: read_table\n    with: {{ path: responses.jsonl }}\n\
                 \x20 label:\n    op: ai_preference\n    in: {{ responses: responses }}\n    with:\n\
                 \x20     prompt_file: synthetic_preference_prompt.txt\n\
                 \x20     principles_file: principle_collection_rm.json\n\
                 \x20     dimensions: [Concise, Honest and Accurate]\n{with}"
            ),
        );
    p
}

/// The labelled rows, exported as JSON lines.
fn labels(p: &Project) -> Vec<serde_json::Value> {
    p.drover(&["export", "label", "labels.jsonl", "--force"]).expect_code(0);
    p.read("labels.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The number before `word` in `line`.
fn number_before(line: &str, word: &str) -> usize {
    let at = line.find(word).unwrap_or_else(|| panic!("no {word:?} in {line}"));
    line[..at].trim_end().rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn labels_come_from_logprobs_and_a_rerun_sends_nothing() {
    let server = Server::start(&[]);
    // One request at a time: llama.cpp batches concurrent requests together, which moves the
    // logprobs a little, and SmolLM2's near-ties then flipped from run to run (seen: a run where
    // every score tied and no label was made). Alone, each request gets the same logprobs, and
    // with RESPONSES' wrong answers made blatant, both orders agree on some pair (3 runs of 3).
    let p = project(&server.base_url(), ", max_concurrency: 1", "      passes: 8\n");
    p.drover(&["run"]).expect_code(0);
    // 3 pairs (the fourth has a missing side) x 2 principles x 2 orders.
    assert_eq!(server.forwarded(), 12);
    let log = stage_log(&p, "label");
    assert!(
        log.starts_with(
            "1 pair skipped: 1 with a missing prompt or response (rows 3)\n3 pairs, judged on 2 principles in both \
             orders\nvotes: 12 read from logprobs, 0 bounded (a or b not among the top 20 logprobs), 0 from the \
             answer's text (no usable logprobs: the text fallback), 0 unreadable (scored 0)\n"
        ),
        "{log}"
    );
    let line = log.lines().find(|l| l.starts_with("labels: ")).unwrap();
    let (made, zero, foreign) =
        (number_before(line, "over"), number_before(line, "with every"), number_before(line, "with both"));
    // Each of 8 passes over 3 pairs gives a label or a counted skip.
    assert_eq!(made + zero + foreign, 24, "{line}");
    let rows = labels(&p);
    assert_eq!(rows.len(), made);
    assert!(made > 0, "{log}");
    for row in &rows {
        assert!(row["preference"] == 1 || row["preference"] == 2, "{row}");
        let votes: serde_json::Value = serde_json::from_str(row["raw_votes"].as_str().unwrap()).unwrap();
        let votes = votes.as_array().unwrap();
        assert_eq!(votes.len(), 4, "{row}");
        assert!(votes.iter().all(|v| v["via"] == "logprobs"), "{row}");
        // The dominant dimension's score has the label's sign, unless a rule or a flip decided.
        let scores: Vec<f64> = row["dimension_scores"]
            .as_str()
            .unwrap()
            .trim_matches(|c| c == '(' || c == ')')
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect();
        let dominant = &scores[row["doinate_dimension_idx"].as_u64().unwrap() as usize];
        if row["rule_flag"] == false && row["flip"] == false {
            assert_eq!(*dominant > 0.0, row["preference"] == 1, "{row}");
        }
    }
    assert!(log.contains("llm `default`: 12 requests sent, 0 answered from the memo"), "{log}");

    // Rerun: cached, nothing sent.
    let out = p.drover(&["run"]);
    out.expect_code(0);
    assert!(out.all().contains("0 ran, 2 cached"), "{}", out.all());
    // Other aggregation knobs rerun the stage from the memo; `drover plan` says so first.
    p.write("drover.yaml", &p.read("drover.yaml").replace("passes: 8", "passes: 2"));
    let plan = p.drover(&["plan"]);
    plan.expect_code(0);
    assert!(plan.stdout.contains("(all 12 requests already answered)"), "{}", plan.all());
    p.drover(&["run"]).expect_code(0);
    assert_eq!(server.forwarded(), 12);
    assert!(stage_log(&p, "label").contains("llm `default`: 0 requests sent, 12 answered from the memo"));
}

#[test]
fn a_killed_stage_resumes_without_asking_twice() {
    let server = Server::start(&[]);
    let p = project(&server.base_url(), ", max_concurrency: 1", "");
    kill_run_after(&p, &server, 4);
    let before = server.stats();
    assert!(before["forwarded"].as_u64().unwrap() < 12, "killed too late to test a resume: {before}");
    let plan = p.drover(&["plan"]);
    plan.expect_code(0);
    assert!(plan.stdout.contains(" of 12 requests already answered, "), "{}", plan.all());

    p.drover(&["run"]).expect_code(0);
    assert_resumed(&server, 12);
}

#[test]
fn a_server_without_logprobs_falls_back_to_the_answer_text() {
    // The proxy drops `logprobs` from every answer: a mock of a server that sends none.
    let server = Server::start(&["--strip-logprobs"]);
    let p = project(&server.base_url(), "", "");
    p.write("responses.jsonl", RESPONSES.lines().next().unwrap());
    p.write("drover.yaml", &p.read("drover.yaml").replace("[Concise, Honest and Accurate]", "[Concise]"));
    p.drover(&["run"]).expect_code(0);
    assert_eq!(server.forwarded(), 2);
    let log = stage_log(&p, "label");
    let line = log.lines().find(|l| l.starts_with("votes: ")).unwrap();
    assert!(
        line.starts_with("votes: 0 read from logprobs, 0 bounded (a or b not among the top 20 logprobs), "),
        "{log}"
    );
    // Both votes went through the counted fallback: read from the text, or unreadable.
    assert_eq!(number_before(line, "from the answer's text") + number_before(line, "unreadable"), 2, "{log}");
}

#[test]
fn bad_principles_and_pairs_are_reported() {
    let p = project("http://127.0.0.1:9/v1", "", "");
    // An empty collection: a plan error with the file and line.
    p.write("principle_collection_rm.json", "[]\n");
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    assert!(
        out.unwrapped().contains("principle_collection_rm.json:1: the principle collection is empty"),
        "{}",
        out.all()
    );
    // A principle without a definition: the line where it starts.
    p.write(
        "principle_collection_rm.json",
        "[\n  {\"dimension\": \"Concise\", \"definition\": \"Brief.\", \"negative_definition\": \"Long.\"},\n  \
         {\"dimension\": \"Honest and Accurate\",\n   \"negative_definition\": \"Lies.\"}\n]\n",
    );
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    assert!(
        out.unwrapped()
            .contains("principle_collection_rm.json:3: principle 2 (`Honest and Accurate`) has no `definition`"),
        "{}",
        out.all()
    );
    // A dimension the collection does not have.
    p.write("principle_collection_rm.json", PRINCIPLES);
    p.write("drover.yaml", &p.read("drover.yaml").replace("[Concise, Honest", "[Concice, Honest"));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    assert!(out.unwrapped().contains("unknown dimension `Concice`"), "{}", out.all());
    assert!(out.unwrapped().contains("did you mean `Concise`?"), "{}", out.all());
    // Only pairs with a missing side: the stage fails before any request, saying why.
    p.write("drover.yaml", &p.read("drover.yaml").replace("[Concice, Honest", "[Concise, Honest"));
    p.write("responses.jsonl", RESPONSES.lines().nth(3).unwrap());
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(
        out.unwrapped().contains(
            "`responses` has no pair of responses to label: 1 pair skipped: 1 with a missing prompt or response \
             (rows 0)"
        ),
        "{}",
        out.all()
    );
}

#[test]
fn the_salmon_pipeline_plans() {
    // Its `serve:` endpoint names the pulled SmolLM2, whose content enters the key.
    model();
    let p = Project::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    p.write("pipelines/salmon.yaml", &std::fs::read_to_string(root.join("pipelines/salmon.yaml")).unwrap());
    for file in [
        "salmon/synthetic_preference_prompt.txt",
        "salmon/principle_collection_rm.json",
        "dromedary/tgrt_self_instruct_seed_questions.jsonl",
    ] {
        let text = std::fs::read_to_string(root.join("pipelines/data").join(file)).unwrap();
        p.write(&format!("pipelines/data/{file}"), &text);
    }
    let out = p.drover(&["plan", "-f", "pipelines/salmon.yaml"]);
    out.expect_code(0);
    assert!(out.stdout.contains("4 to run, 0 cached"), "{}", out.all());
}
