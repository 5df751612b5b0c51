//! Speed of `reward_train` on the CPU: training pairs/s for `encoder: frozen` (embedding and
//! head, and the head alone) and `encoder: finetune`, through the release `drover`, beside the
//! same model, loss, optimiser and per-epoch work in PyTorch on the same pairs in the same run
//! (`reward/torch_train.py`); peak RSS of both.
//!
//! `cargo bench --bench reward` (add `--no-default-features` to leave wgpu out of the build).
//! It pulls MiniLM (`drover models pull minilm`), makes `benches/.venv-reward` with torch,
//! safetensors and tokenizers from PyPI the first time (torch from PyPI is large: about 3 GB with
//! its CUDA libraries), and writes `benches/results/reward.json`. `PAIRS=N` (default 2,000) sets
//! the pairs for `frozen` (10 epochs), `FINETUNE_PAIRS=N` (default 320) those for `finetune`
//! (1 epoch).

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::{measured, python};

const DROVER: &str = env!("CARGO_BIN_EXE_drover");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// `n` preference pairs `{prompt, chosen, rejected}` of a few sentences each (about 90 tokens
/// per laid-out input), from a fixed mix of parts: no randomness, every run trains on the same
/// text. The chosen response answers the request, the rejected one refuses or rambles.
fn pairs(n: usize) -> Vec<Value> {
    const TOPIC: [&str; 8] = [
        "a recipe for bread",
        "the causes of the First World War",
        "how vaccines train the immune system",
        "a polite email declining a meeting",
        "the rules of chess for a beginner",
        "how to fix a leaking tap",
        "the plot of a novel about the sea",
        "why the sky is blue",
    ];
    const ASK: [&str; 4] = [
        "Could you explain {} to me?",
        "I need help with {} for a school project.",
        "Please write a short answer about {}.",
        "My friend asked me about {} and I did not know what to say.",
    ];
    const GOOD: [&str; 4] = [
        "Here is a clear answer about {}, step by step, with one example that makes the main idea easy to follow.",
        "Sure. The short version about {} is below, and after it a few details you may want to check yourself.",
        "Happy to help with {}. I will keep it simple, say what is certain, and mark what is only likely.",
        "Let me walk you through {} in three parts: what it is, why it matters, and what to do next.",
    ];
    const BAD: [&str; 4] = [
        "I would rather not talk about {}. You should look it up somewhere else.",
        "That is a strange thing to ask about. Anyway, {} is something everyone already knows.",
        "Well, {} could mean many things, and there are many opinions, and it depends, and it is hard to say.",
        "No. Ask someone else about {}.",
    ];
    const MORE: &str = " It also helps to know the background and the words people use for it, and where to read more.";
    (0..n)
        .map(|i| {
            let topic = TOPIC[i % 8];
            let fill = |t: &str| t.replace("{}", topic);
            let prompt = format!("{} {}", fill(ASK[(i / 8) % 4]), fill(ASK[(i / 32) % 4]));
            let chosen = format!("{}{}", fill(GOOD[(i / 4) % 4]), MORE.repeat(1 + i % 3));
            let rejected = format!("{}{}", fill(BAD[(i / 16) % 4]), MORE.repeat(i % 2));
            // Distinct pairs: a counter in the prompt.
            json!({ "prompt": format!("Question {i}. {prompt}"), "chosen": chosen, "rejected": rejected })
        })
        .collect()
}

/// The number after `after` on the first log line that contains it.
fn number(log: &str, after: &str) -> f64 {
    let line = log.lines().find(|l| l.contains(after)).unwrap_or_else(|| panic!("no {after:?} in the log:\n{log}"));
    let rest = &line[line.find(after).unwrap() + after.len()..];
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap().parse().unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let count = |var: &str, default: usize| std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let results = Path::new(MANIFEST_DIR).join("benches/results");
    std::fs::create_dir_all(&results).unwrap();
    let pull = Command::new(DROVER).args(["models", "pull", "minilm"]).output().unwrap();
    assert!(pull.status.success(), "{}", String::from_utf8_lossy(&pull.stderr));
    let model = String::from_utf8_lossy(&pull.stdout).trim().to_string();
    let py =
        python(&Path::new(MANIFEST_DIR).join("benches/.venv-reward"), &["torch", "numpy", "safetensors", "tokenizers"]);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let mut runs = Vec::new();
    for (mode, n, epochs) in [("frozen", count("PAIRS", 2000), 10), ("finetune", count("FINETUNE_PAIRS", 320), 1)] {
        let project = tempfile::tempdir().unwrap();
        let lines: Vec<String> = pairs(n).iter().map(Value::to_string).collect();
        let data = project.path().join("pairs.jsonl");
        std::fs::write(&data, lines.join("\n") + "\n").unwrap();
        let yaml = format!(
            "stages:\n  p: {{ op: read_table, with: {{ path: pairs.jsonl }} }}\n  \
             t: {{ op: reward_train, in: {{ pairs: p }}, with: {{ encoder: {mode}, epochs: {epochs}, patience: null, \
             val_fraction: 0.2, seed: 42 }} }}\n"
        );
        std::fs::write(project.path().join("drover.yaml"), yaml).unwrap();
        let (_, wall, rss) =
            measured(Command::new(DROVER).args(["run", "--device", "cpu"]).current_dir(project.path()));
        let log = Command::new(DROVER).args(["runs", "--log", "t"]).current_dir(project.path()).output().unwrap();
        let log = String::from_utf8_lossy(&log.stdout).into_owned();
        // "N train and M validation pairs", "embedded K inputs (...) in S s",
        // "trained X steps in T s (P pairs/s; the steps alone U s, Q pairs/s, ...)", "done in D s"
        let train_pairs: f64 = log
            .lines()
            .find_map(|l| l.split_once(" train and ").and_then(|(n, _)| n.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no pair counts in the log:\n{log}"));
        let (train_s, step_s, done_s) =
            (number(&log, "steps in "), number(&log, "the steps alone "), number(&log, "done in "));
        let embed_s = if mode == "frozen" { number(&log, "from the memo) in ") } else { 0.0 };
        let trained = train_pairs * epochs as f64;

        let (out, torch_wall, torch_rss) = measured(
            Command::new(&py)
                .arg(Path::new(MANIFEST_DIR).join("benches/reward/torch_train.py"))
                .arg(&model)
                .arg(&data)
                .args(["--mode", mode, "--epochs", &epochs.to_string()]),
        );
        let torch: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let t = |k: &str| torch[k].as_f64().unwrap();
        let row = json!({
            "mode": mode, "pairs": n, "epochs": epochs,
            "drover": {
                "train_pairs": train_pairs, "embed_seconds": embed_s, "train_seconds": train_s, "step_seconds": step_s,
                "pairs_per_s": trained / train_s, "step_pairs_per_s": trained / step_s,
                "end_to_end_pairs_per_s": trained / (embed_s + train_s),
                "stage_seconds": done_s, "run_seconds": wall, "peak_rss_mb": rss,
            },
            "torch": {
                "train_pairs": torch["train_pairs"], "embed_seconds": t("embed_seconds"), "train_seconds": t("train_seconds"),
                "step_seconds": t("step_seconds"), "pairs_per_s": t("pairs_per_s"), "step_pairs_per_s": t("step_pairs_per_s"),
                "end_to_end_pairs_per_s": trained / (t("embed_seconds") + t("train_seconds")),
                "script_seconds": t("whole_seconds"), "run_seconds": torch_wall, "peak_rss_mb": torch_rss,
                "version": torch["torch"], "threads": torch["threads"], "last_epoch": torch["last_epoch"],
            },
        });
        let d = &row["drover"];
        let p = &row["torch"];
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
        println!(
            "{mode:>8}: {n} pairs ({train_pairs} train) x {epochs} epochs | drover: embed {:.1} s, train {:.1} s \
             ({:.0} pairs/s; steps alone {:.0} pairs/s), end to end {:.0} pairs/s, run {:.1} s, peak RSS {:.0} MB | \
             torch: embed {:.1} s, train {:.1} s ({:.0} pairs/s; steps alone {:.0} pairs/s), end to end {:.0} pairs/s, \
             peak RSS {:.0} MB | time drover/torch: train {:.2}, steps {:.2}, end to end {:.2}",
            f(d, "embed_seconds"),
            f(d, "train_seconds"),
            f(d, "pairs_per_s"),
            f(d, "step_pairs_per_s"),
            f(d, "end_to_end_pairs_per_s"),
            wall,
            rss,
            f(p, "embed_seconds"),
            f(p, "train_seconds"),
            f(p, "pairs_per_s"),
            f(p, "step_pairs_per_s"),
            f(p, "end_to_end_pairs_per_s"),
            torch_rss,
            f(d, "train_seconds") / f(p, "train_seconds"),
            f(d, "step_seconds") / f(p, "step_seconds"),
            (f(d, "embed_seconds") + f(d, "train_seconds")) / (f(p, "embed_seconds") + f(p, "train_seconds")),
        );
        runs.push(row);
    }
    let out = json!({ "cores": threads, "runs": runs });
    std::fs::write(results.join("reward.json"), serde_json::to_string_pretty(&out).unwrap()).unwrap();
}
