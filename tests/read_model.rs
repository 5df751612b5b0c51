//! End-to-end tests of `read_model`: a model directory imported as a `dir` artifact, exported
//! back unchanged, rerun only when a file in it changes, and refused when it is not a model.

mod common;

use common::Project;

/// A stand-in model directory: the layout matters here, not the bytes.
fn model_dir(p: &Project) {
    p.write("models/tiny/config.json", "{\"model_type\": \"llama\", \"num_hidden_layers\": 2}\n");
    p.write("models/tiny/model.safetensors", "weights, version 1");
    p.write("models/tiny/tokenizer.json", "{}");
    p.write("models/tiny/extra/notes.txt", "nested files come along");
}

const PIPELINE: &str = "stages:\n  base:\n    op: read_model\n    with: { path: models/tiny }\n";

#[test]
fn a_model_directory_round_trips_and_reruns_only_when_a_file_changes() {
    let p = Project::new();
    model_dir(&p);
    p.write("drover.yaml", PIPELINE);
    p.drover(&["run"]).expect_code(0);
    p.drover(&["export", "base.model", "out"]).expect_code(0);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "extra/notes.txt"] {
        assert_eq!(p.read(&format!("out/{f}")), p.read(&format!("models/tiny/{f}")), "{f}");
    }
    assert_eq!(p.plan(&[]), vec![("base".to_string(), "cached".to_string(), vec![])]);

    p.write("models/tiny/model.safetensors", "weights, version 2");
    let plan = p.plan(&[]);
    assert_eq!(plan[0].1, "run", "{plan:?}");
    p.drover(&["run"]).expect_code(0);
    p.drover(&["export", "base.model", "out2"]).expect_code(0);
    assert_eq!(p.read("out2/model.safetensors"), "weights, version 2");
    // The user's files stay writable: the store never links to them.
    assert!(!std::fs::metadata(p.join("models/tiny/model.safetensors")).unwrap().permissions().readonly());
}

#[test]
fn a_directory_that_is_not_a_model_is_a_plan_error() {
    let p = Project::new();
    p.write("models/tiny/model.safetensors", "x");
    p.write("drover.yaml", PIPELINE);
    let out = p.drover(&["validate"]);
    out.expect_code(2);
    assert!(out.stderr.contains("no config.json in"), "{}", out.stderr);
    assert!(out.stderr.contains("Hugging Face layout"), "{}", out.stderr);

    p.write("drover.yaml", "stages:\n  base:\n    op: read_model\n    with: { path: models/missing }\n");
    let out = p.drover(&["validate"]);
    out.expect_code(2);
    assert!(out.stderr.contains("directory not found:"), "{}", out.stderr);
    assert!(out.stderr.contains("drover.yaml:4"), "{}", out.stderr);
}
