//! End-to-end tests of the language-model ops against a real server: llama.cpp's own server
//! (PyPI `xllamacpp`) serving SmolLM2-135M-Instruct, behind a request-counting proxy
//! (`tests/support/llm_proxy.py`) that can also inject 500s and 429s.
//!
//! The model and runtime come from `drover models pull smollm2`, which the first test runs (it
//! needs python3 with pip, and PyPI).
//! Text from a 135M model is not asserted word for word: tests check structure, counts of
//! requests seen by the server, and what is stored.

mod common;
#[path = "support/llm_server.rs"]
mod llm_server;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Project, SIGKILL, signal};
use llm_server::{Server, assert_resumed, kill_run_after, model, stage_log};

fn questions(n: usize) -> String {
    let topics = ["France", "Japan", "Kenya", "Peru", "Norway", "Egypt", "Canada", "India", "Chile", "Spain"];
    (0..n).map(|i| format!("{{\"q\": \"Name one city in {}.\", \"n\": {i}}}\n", topics[i % topics.len()])).collect()
}

fn pipeline(base_url: &str, extra_llm: &str, max_tokens: u32) -> String {
    format!(
        "pipeline: llm\n\
         llms:\n  default: {{ base_url: \"{base_url}\", model: smollm2{extra_llm} }}\n\
         stages:\n  questions:\n    op: read_table\n    with: {{ path: q.jsonl }}\n\
         \x20 answers:\n    op: llm_generate\n    in: {{ table: questions }}\n    with:\n\
         \x20     template: \"Answer with one word. {{{{ q }}}}\"\n\
         \x20     sampling: {{ temperature: 0.7, max_tokens: {max_tokens} }}\n"
    )
}

/// Reads the `answers` table as JSON rows (exported again each time, over the last export).
fn answers(p: &Project) -> Vec<serde_json::Value> {
    let out = p.drover(&["export", "answers", "answers.jsonl", "--force"]);
    out.expect_code(0);
    p.read("answers.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_rerun_sends_nothing_and_new_rows_send_only_theirs() {
    let server = Server::start(&[]);
    let p = Project::new();
    p.write("q.jsonl", &questions(4)).write("drover.yaml", &pipeline(&server.base_url(), "", 8));
    p.drover(&["run"]).expect_code(0);
    assert_eq!(server.forwarded(), 4);
    let rows = answers(&p);
    assert_eq!(rows.len(), 4);
    for row in &rows {
        assert!(["stop", "length"].contains(&row["finish_reason"].as_str().unwrap()), "{row}");
        assert!(row["completion_tokens"].as_u64().unwrap() >= 1);
        assert!(row["prompt_tokens"].as_u64().unwrap() > 5);
        assert_eq!(row["model"], "smollm2");
        assert!(row["q"].as_str().unwrap().starts_with("Name one city"));
    }

    // Rerun: all cached, and the server sees nothing.
    let out = p.drover(&["run"]);
    out.expect_code(0);
    assert!(out.all().contains("0 ran, 2 cached"), "{}", out.all());
    assert_eq!(server.forwarded(), 4);

    // Two more rows: the stage reruns (its input changed), but only the new rows are sent.
    p.write("q.jsonl", &questions(6));
    p.drover(&["run"]).expect_code(0);
    assert_eq!(server.forwarded(), 6);
    assert_eq!(server.stats()["max_per_body"], 1);
    let again = answers(&p);
    assert_eq!(&again[..4], &rows[..], "the first rows' responses come from the memo, unchanged");

    // Where the server is (base_url, concurrency) is not in the key.
    let other = pipeline(&format!("{}/", server.base_url()), ", max_concurrency: 2", 8);
    p.write("drover.yaml", &other);
    let out = p.drover(&["run"]);
    out.expect_code(0);
    assert!(out.all().contains("0 ran, 2 cached"), "{}", out.all());
    // `gc --memo` drops the responses: finished stages stay cached, new work asks again.
    let out = p.drover(&["gc", "--memo"]);
    out.expect_code(0);
    assert!(out.stdout.contains("removed the memo: 6 responses"), "{}", out.all());
    assert!(p.plan(&[]).iter().all(|(_, action, _)| action == "cached"));
    p.write("q.jsonl", &questions(7));
    p.drover(&["run"]).expect_code(0);
    assert_eq!(server.forwarded(), 6 + 7);
}

#[test]
fn a_killed_stage_resumes_without_asking_twice() {
    let server = Server::start(&[]);
    let p = Project::new();
    p.write("q.jsonl", &questions(10)).write("drover.yaml", &pipeline(&server.base_url(), ", max_concurrency: 1", 24));
    kill_run_after(&p, &server, 4);
    let before = server.stats();
    assert!(before["forwarded"].as_u64().unwrap() < 10, "killed too late to test a resume: {before}");
    // `drover plan` counts what the memo already holds.
    let plan = p.drover(&["plan"]);
    plan.expect_code(0);
    assert!(plan.stdout.contains(" of 10 requests already answered, "), "{}", plan.all());

    p.drover(&["run"]).expect_code(0);
    assert_resumed(&server, 10);
    assert_eq!(answers(&p).len(), 10);
}

#[test]
fn server_errors_and_rate_limits_are_retried() {
    let server = Server::start(&["--fail", "4", "--fail-statuses", "500,429,503", "--retry-after", "1"]);
    let p = Project::new();
    p.write("q.jsonl", &questions(3)).write("drover.yaml", &pipeline(&server.base_url(), ", max_concurrency: 1", 4));
    let out = p.drover(&["run"]);
    out.expect_code(0);
    let stats = server.stats();
    assert_eq!(stats["faulted"], 4);
    assert_eq!(stats["forwarded"], 3);
    assert_eq!(answers(&p).len(), 3);
    let log = p.drover(&["runs", "--log", "answers"]);
    assert!(log.stdout.contains("4 retries"), "{}", log.all());
}

#[test]
fn retries_give_up_with_an_environment_error_and_nothing_is_stored() {
    let server = Server::start(&["--fail", "1000", "--fail-statuses", "500"]);
    let p = Project::new();
    p.write("q.jsonl", &questions(1))
        .write("drover.yaml", &pipeline(&server.base_url(), ", max_retries: 2, max_concurrency: 1", 4));
    let out = p.drover(&["run"]);
    out.expect_code(3);
    assert!(out.all().contains("gave up after 3 attempts: HTTP 500"), "{}", out.all());
    assert_eq!(server.stats()["faulted"], 3, "one request, three attempts, then the stage stops");
    let plan = p.plan(&[]);
    assert!(plan.iter().any(|(s, action, _)| s == "answers" && action == "run"), "{plan:?}");
}

#[test]
fn an_unknown_model_is_an_environment_error() {
    let server = Server::start(&[]);
    let p = Project::new();
    p.write("q.jsonl", &questions(2))
        .write("drover.yaml", &pipeline(&server.base_url(), "", 4).replace("model: smollm2", "model: gpt-17"));
    let out = p.drover(&["run"]);
    out.expect_code(3);
    assert!(out.all().contains("does not serve model `gpt-17`; it serves: smollm2"), "{}", out.all());
    assert_eq!(server.forwarded(), 0);
}

#[test]
fn an_api_key_is_sent_but_never_stored() {
    let server = Server::start(&[]);
    let p = Project::new();
    let secret = "sk-drover-test-0123456789";
    p.write("q.jsonl", &questions(2))
        .write("drover.yaml", &pipeline(&server.base_url(), ", api_key_env: DROVER_TEST_KEY", 4));
    let out = p.cmd(&["run"]).env("DROVER_TEST_KEY", secret).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    // Sent: every request the server saw carried the key as a bearer token.
    let stats = server.stats();
    assert_eq!(stats["forwarded"], 2, "{stats}");
    let seen: Vec<&String> = stats["authorization"].as_object().unwrap().keys().collect();
    assert_eq!(seen, [&format!("Bearer {secret}")], "{stats}");
    for entry in walk(&p.join(".drover")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the key is in {}", entry.display());
    }
    // Without the variable the stage cannot run: an environment error, not a silent anonymous call.
    p.write("q.jsonl", &questions(3));
    let out = p.cmd(&["run"]).env_remove("DROVER_TEST_KEY").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("$DROVER_TEST_KEY, which is not set"));
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn an_unreachable_server_is_an_environment_error() {
    let p = Project::new();
    p.write("q.jsonl", &questions(2)).write("drover.yaml", &pipeline("http://127.0.0.1:9/v1", "", 4));
    let out = p.drover(&["run"]);
    out.expect_code(3);
    assert!(out.all().contains("cannot reach the server at http://127.0.0.1:9/v1"), "{}", out.all());
    assert!(out.all().contains("--set llms.default.base_url=URL"), "{}", out.all());
    // The command line can point the endpoint elsewhere; that does not change the key.
    let out = p.drover(&["plan", "--set", "llms.default.base_url=http://127.0.0.1:10/v1"]);
    out.expect_code(0);
}

#[test]
fn bad_templates_and_endpoints_are_plan_errors_with_the_line() {
    let p = Project::new();
    p.write("q.jsonl", &questions(2));
    let good = pipeline("http://127.0.0.1:9/v1", "", 4);
    p.write("drover.yaml", &good.replace("{{ q }}", "{{ question }}"));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    let all = out.all();
    assert!(all.contains("stage `answers`: the template reads `question`"), "{all}");
    assert!(all.contains("drover.yaml:12:17"), "{all}");
    assert!(all.contains("the input's columns are: q, n"), "{all}");

    p.write("drover.yaml", &good.replace("{{ q }}", "{% if q %}"));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    assert!(out.all().contains("the template does not parse (line 1 of the template)"), "{}", out.all());

    p.write("drover.yaml", &good.replace("model: smollm2", "model: smollm2, max_concurency: 2"));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    assert!(out.all().contains("llms.default: unknown param `max_concurency`"), "{}", out.all());
    assert!(out.all().contains("drover.yaml:3"), "{}", out.all());

    p.write("drover.yaml", &good.replace("template:", "llm: judge\n      template:"));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    assert!(out.all().contains("no endpoint `judge` under `llms:`"), "{}", out.all());
}

#[test]
fn a_serve_endpoint_starts_llama_cpp_and_stops_it_with_drover() {
    let (gguf, _) = model();
    let p = Project::new();
    // Through a link in the project, so that this test's server is the one with this path.
    std::os::unix::fs::symlink(&gguf, p.join("model.gguf")).unwrap();
    p.write("q.jsonl", &questions(2)).write(
        "drover.yaml",
        &pipeline("unused", "", 8)
            .replace("default: { base_url: \"unused\", model: smollm2 }", "default: { serve: { gguf: model.gguf } }"),
    );
    p.drover(&["run"]).expect_code(0);
    let rows = answers(&p);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["completion_tokens"].as_u64().unwrap() >= 1));
    // The server was a child of drover; it exits when drover does (its stdin closes).
    let ours = p.join("model.gguf").to_string_lossy().to_string();
    let running = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(&ours))
            .count()
    };
    let started = Instant::now();
    while running() > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "a llama.cpp server started by drover outlived it");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The model file's content is in the key, not its path: a link elsewhere keeps the cache.
    std::fs::rename(p.join("model.gguf"), p.join("renamed.gguf")).unwrap();
    p.write("drover.yaml", &p.read("drover.yaml").replace("gguf: model.gguf", "gguf: renamed.gguf"));
    let plan = p.plan(&[]);
    assert!(plan.iter().all(|(_, action, _)| action == "cached"), "{plan:?}");
}

/// The project's `examples/quickstart_llm.yaml` with the data it reads, in a fresh directory.
fn llm_quickstart() -> Project {
    let p = Project::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(p.join("examples")).unwrap();
    std::fs::copy(root.join("examples/quickstart_llm.yaml"), p.join("examples/quickstart_llm.yaml")).unwrap();
    for dir in ["dromedary", "self_instruct"] {
        let to = p.join(&format!("pipelines/data/{dir}"));
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(root.join("pipelines/data").join(dir)).unwrap().flatten() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    p
}

#[test]
fn the_llm_quickstart_resumes_after_a_kill_and_reruns_without_requests() {
    let server = Server::start(&[]);
    let p = llm_quickstart();
    // The example starts its own server; here it goes through the counting proxy instead.
    let endpoint = format!("{{ base_url: \"{}\", model: smollm2 }}", server.base_url());
    let run = |p: &Project| {
        let mut cmd = p.cmd(&["run", "examples/quickstart_llm.yaml"]);
        cmd.env("DROVER_LLM_DEFAULT", &endpoint);
        cmd
    };
    let mut child = run(&p).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while server.forwarded() < 12 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(child.id() as i32, SIGKILL);
    child.wait().unwrap();

    let out = run(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats = server.stats();
    assert_eq!(stats["resent_after_answer"], 0, "a request answered before the kill was sent again: {stats}");

    // Stage 2's table: one row per prompt, each kept or dropped by a named Dromedary rule.
    p.drover(&["export", "aligned.all", "all.jsonl", "-f", "examples/quickstart_llm.yaml"]).expect_code(0);
    let rows: Vec<serde_json::Value> = p.read("all.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 20);
    let rules = [
        "",
        "no self-identification",
        "only internal thoughts",
        "too short",
        "copies the exemplars",
        "apologises",
        "empty",
    ];
    for row in &rows {
        let (kept, reason) = (row["kept"].as_bool().unwrap(), row["reason"].as_str().unwrap());
        assert!(rules.contains(&reason), "{row}");
        assert_eq!(kept, reason.is_empty(), "{row}");
        assert_eq!(kept, !row["response"].as_str().unwrap().is_empty(), "{row}");
        assert!(!row["raw"].as_str().unwrap().is_empty(), "{row}");
    }
    p.drover(&["export", "aligned", "aligned.jsonl", "-f", "examples/quickstart_llm.yaml"]).expect_code(0);
    let kept = p.read("aligned.jsonl").lines().count();
    assert_eq!(kept, rows.iter().filter(|r| r["kept"] == true).count());

    // A rerun of the finished pipeline: every stage cached, and the server sees nothing.
    let forwarded = server.forwarded();
    let out = run(&p).output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 ran, 11 cached"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.forwarded(), forwarded);
}

#[test]
fn logprobs_come_back_as_the_server_sent_them() {
    let server = Server::start(&[]);
    let p = Project::new();
    p.write("q.jsonl", &questions(1)).write(
        "drover.yaml",
        &pipeline(&server.base_url(), "", 3).replace("max_tokens: 3", "max_tokens: 3, logprobs: 2"),
    );
    p.drover(&["run"]).expect_code(0);
    let rows = answers(&p);
    let logprobs: serde_json::Value = serde_json::from_str(rows[0]["logprobs"].as_str().unwrap()).unwrap();
    // llama.cpp's chat format: one entry per generated token, each with its alternatives.
    let tokens = logprobs["content"].as_array().unwrap();
    assert_eq!(tokens.len() as u64, rows[0]["completion_tokens"].as_u64().unwrap());
    for t in tokens {
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn n_completions_give_one_row_each() {
    let server = Server::start(&[]);
    let p = Project::new();
    p.write("q.jsonl", &questions(2))
        .write("drover.yaml", &pipeline(&server.base_url(), "", 4).replace("max_tokens: 4", "max_tokens: 4, n: 2"));
    p.drover(&["run"]).expect_code(0);
    assert_eq!(server.forwarded(), 2, "one request per row, however many completions");
    let rows = answers(&p);
    let seen: Vec<(u64, u64)> =
        rows.iter().map(|r| (r["n"].as_u64().unwrap(), r["choice"].as_u64().unwrap())).collect();
    assert_eq!(seen, [(0, 0), (0, 1), (1, 0), (1, 1)]);
}

/// Three pairs of ICAI's synthetic set (tests/data/icai_pairs.SOURCE.md), and an `icai` stage
/// on them with `with` (YAML flow-mapping entries) beside one voting seed, short replies and
/// one added principle. SmolLM2-135M does not answer the proposal prompt in JSON (it repeats
/// words), so the added principle is what is voted on: the test checks the algorithm's
/// structure and the memo, not what the model proposes.
fn icai_project(base_url: &str, with: &str) -> Project {
    let p = Project::new();
    let pairs = include_str!("data/icai_pairs.jsonl");
    p.write("pairs.jsonl", pairs).write(
        "drover.yaml",
        &format!(
            "pipeline: icai\n\
             llms:\n  default: {{ base_url: \"{base_url}\", model: smollm2 }}\n\
             stages:\n  pairs:\n    op: read_table\n    with: {{ path: pairs.jsonl }}\n\
             \x20 learn:\n    op: icai\n    in: {{ pairs: pairs }}\n\
             \x20   with: {{ seeds: 1, sampling: {{ max_tokens: 96 }}, added_principles: [\"{CAT}\"]{with} }}\n"
        ),
    );
    p
}

const CAT: &str = "Select the response about a cat.";

#[test]
fn icai_learns_a_constitution_and_a_rerun_sends_nothing() {
    let server = Server::start(&[]);
    let p = icai_project(&server.base_url(), "");
    let out = p.drover(&["run"]);
    out.expect_code(0);
    // 3 proposals, 3 voting prompts (one seed, one prompt of at most 40 principles each),
    // 3 x 2 annotations.
    assert_eq!(server.forwarded(), 3 + 3 + 6);
    let log = stage_log(&p, "learn");
    assert!(log.contains("3 pairs\nproposals: 3 replies, "), "{log}");
    assert!(log.contains("llm `default`: 12 requests sent, 0 answered from the memo"), "{log}");

    p.drover(&["export", "learn.principles", "principles.jsonl"]).expect_code(0);
    let principles: Vec<serde_json::Value> =
        p.read("principles.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let added: Vec<&serde_json::Value> = principles.iter().filter(|r| r["text"] == CAT).collect();
    assert_eq!(added.len(), 1, "{principles:?}");
    assert_eq!(added[0]["members"], 0);
    for row in &principles {
        // Every principle is voted on by every pair once (one seed).
        let total: u64 =
            ["for", "against", "abstain", "both", "neither", "invalid"].iter().map(|k| row[k].as_u64().unwrap()).sum();
        assert_eq!(total, 3, "{row}");
    }
    p.drover(&["export", "learn.votes", "votes.jsonl"]).expect_code(0);
    assert_eq!(p.read("votes.jsonl").lines().count(), 3 * principles.len());
    p.drover(&["export", "learn.evaluation", "evaluation.jsonl"]).expect_code(0);
    let evaluation: serde_json::Value = serde_json::from_str(p.read("evaluation.jsonl").trim()).unwrap();
    assert_eq!(evaluation["n"], 3);
    let in_constitution = principles.iter().filter(|r| !r["rank"].is_null()).count();
    p.drover(&["export", "learn.constitution", "constitution.txt"]).expect_code(0);
    let constitution = p.read("constitution.txt");
    assert_eq!(constitution.lines().filter(|l| !l.is_empty()).count().min(in_constitution), in_constitution);
    if in_constitution > 0 {
        assert!(constitution.starts_with("1. "), "{constitution}");
    }

    // Rerun: cached, nothing sent.
    let out = p.drover(&["run"]);
    out.expect_code(0);
    assert!(out.all().contains("0 ran, 2 cached"), "{}", out.all());
    assert_eq!(server.forwarded(), 12);
    // Another order of the kept principles reruns the stage (its key changed), and every
    // request is answered from the memo.
    let p2 = p.read("drover.yaml").replace("seeds: 1,", "seeds: 1, order_by: for,");
    p.write("drover.yaml", &p2);
    p.drover(&["run"]).expect_code(0);
    assert_eq!(server.forwarded(), 12);
    assert!(stage_log(&p, "learn").contains("llm `default`: 0 requests sent, 12 answered from the memo"));
}

#[test]
fn a_killed_icai_stage_resumes_without_asking_twice() {
    let server = Server::start(&[]);
    let p = icai_project(&server.base_url(), "");
    p.write("drover.yaml", &p.read("drover.yaml").replace("model: smollm2 }", "model: smollm2, max_concurrency: 1 }"));
    // Past the 3 proposals, into the votes.
    kill_run_after(&p, &server, 5);
    let before = server.stats();
    assert!(before["forwarded"].as_u64().unwrap() < 12, "killed too late to test a resume: {before}");
    let plan = p.drover(&["plan"]);
    plan.expect_code(0);
    assert!(
        plan.stdout
            .contains("proposals: all 3 requests already answered (votes and evaluation follow from the replies)"),
        "{}",
        plan.all()
    );

    p.drover(&["run"]).expect_code(0);
    assert_resumed(&server, 12);
}

#[test]
fn icai_skips_rows_that_are_not_pairs_and_fails_on_a_table_without_pairs() {
    let server = Server::start(&[]);
    let p = icai_project(&server.base_url(), ", evaluate: false");
    let first = include_str!("data/icai_pairs.jsonl").lines().next().unwrap();
    let bad = [
        r#"{"text_a": "", "text_b": "b", "preferred_text": "text_a"}"#,
        r#"{"text_a": "a", "text_b": "b", "preferred_text": "text_c"}"#,
        r#"{"text_a": "same", "text_b": "same", "preferred_text": "text_b"}"#,
    ];
    p.write("pairs.jsonl", &format!("{first}\n{}\n", bad.join("\n")));
    p.drover(&["run"]).expect_code(0);
    let log = stage_log(&p, "learn");
    assert!(
        log.starts_with(
            "3 rows skipped: 1 with a missing response (rows 1); 1 with a preference that names neither response \
             (rows 2); 1 with two identical responses (rows 3)\n1 pairs\n"
        ),
        "{log}"
    );

    // Only rows that are not pairs: the stage fails, saying why.
    p.write("pairs.jsonl", &format!("{}\n", bad.join("\n")));
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(
        out.all().contains(
            "`pairs` has no preference pair to learn from: 3 rows skipped: 1 with a missing response (rows 0); 1 \
             with a preference that names neither response (rows 1); 1 with two identical responses (rows 2)"
        ),
        "{}",
        out.all()
    );
    // An empty table: a CSV with only its header has columns of type Null, which the pair
    // reader refuses at plan time (an empty table of text columns fails the stage with "it has
    // no rows": the op's unit tests).
    p.write("pairs.csv", "text_a,text_b,preferred_text\n");
    p.write("drover.yaml", &p.read("drover.yaml").replace("pairs.jsonl", "pairs.csv"));
    let out = p.drover(&["run"]);
    out.expect_code(2);
    assert!(out.unwrapped().contains("stage `learn`: column `text_a` of `pairs` is Null, not text"), "{}", out.all());
}

#[test]
fn icai_without_a_preference_column_is_a_plan_error() {
    let p = icai_project("http://127.0.0.1:9/v1", "");
    p.write("pairs.jsonl", "{\"text_a\": \"a\", \"text_b\": \"b\"}\n");
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    assert!(
        out.unwrapped().contains(
            "stage `learn`: `pairs` looks like ICAI's `text_a, text_b, preferred_text` but has no `preferred_text`"
        ),
        "{}",
        out.all()
    );
}
