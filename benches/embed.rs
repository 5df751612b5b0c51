//! Speed of `embed` on the CPU: 10,000 short sentences through the release `drover` (a
//! read_table -> embed pipeline) at batch 32 and 256, beside an independent numpy float32
//! forward of the same model on the same sentences with the same length bucketing
//! (`embed/numpy_forward.py`), and beside the matmul FLOP rate burn's CPU backend and numpy
//! reach on this machine. Peak RSS of both.
//!
//! `cargo bench --bench embed` (add `--no-default-features` to leave wgpu out of the build).
//! It pulls MiniLM (`drover models pull minilm`), makes `benches/.venv-embed` with numpy, scipy,
//! tokenizers and threadpoolctl from PyPI the first time, runs numpy with OPENBLAS_CORETYPE and
//! OPENBLAS_L2_SIZE unset (set on these machines, they slow a current OpenBLAS), and writes
//! `benches/results/embed.json`. `SENTENCES=N` changes the count.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use serde_json::{Value, json};
use support::{measured, python};

const DROVER: &str = env!("CARGO_BIN_EXE_drover");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Short sentences, like a table of principles or captions: 8 to 20 words, from a fixed mix of
/// parts (no randomness, so every run embeds the same text).
fn sentences(n: usize) -> Vec<String> {
    const WHO: [&str; 8] = [
        "The model",
        "A careful reviewer",
        "The assistant",
        "Our annotator",
        "The user",
        "A chatbot",
        "The tutor",
        "This reply",
    ];
    const DOES: [&str; 8] =
        ["explains", "refuses to discuss", "summarises", "answers", "questions", "rewrites", "compares", "praises"];
    const WHAT: [&str; 8] = [
        "the main idea",
        "a recipe for bread",
        "the safety concerns of the request",
        "two historical events in detail",
        "the steps of a proof",
        "a short poem about the sea",
        "the weather forecast for tomorrow",
        "an email to a colleague",
    ];
    const HOW: [&str; 6] = [
        ".",
        " clearly and concisely.",
        " with a friendly tone and one example.",
        " without making anything up.",
        " in plain words that a child could follow.",
        ", citing its sources and saying what it does not know.",
    ];
    (0..n).map(|i| format!("{} {} {}{}", WHO[i % 8], DOES[(i / 8) % 8], WHAT[(i / 64) % 8], HOW[(i / 7) % 6])).collect()
}

/// burn's CPU backend on a [4096x384]x[384x1536] matmul (MiniLM's feed-forward shape at 4,096
/// tokens), best of 5, in GFLOP/s.
fn burn_matmul_gflops() -> f64 {
    let device = Device::flex();
    let a = Tensor::<2>::ones([4096, 384], &device);
    let w = Tensor::<2>::ones([384, 1536], &device);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let c = a.clone().matmul(w.clone());
        let _ = c.into_data();
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * 4096.0 * 384.0 * 1536.0 / best / 1e9
}

/// MiniLM's FLOPs for `tokens` tokens in rows of `len`: per layer, 2·(4·H² + 2·H·I) per token
/// for the projections and 2·2·len·H per token for attention.
fn flops(tokens: f64, len: f64) -> f64 {
    let (h, i, layers) = (384.0, 1536.0, 6.0);
    layers * tokens * (2.0 * (4.0 * h * h + 2.0 * h * i) + 4.0 * len * h)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("SENTENCES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let results = Path::new(MANIFEST_DIR).join("benches/results");
    std::fs::create_dir_all(&results).unwrap();
    let pull = Command::new(DROVER).args(["models", "pull", "minilm"]).output().unwrap();
    assert!(pull.status.success(), "{}", String::from_utf8_lossy(&pull.stderr));
    let model = String::from_utf8_lossy(&pull.stdout).trim().to_string();
    let py = python(
        &Path::new(MANIFEST_DIR).join("benches/.venv-embed"),
        &["numpy", "scipy", "tokenizers", "threadpoolctl"],
    );

    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = sentences(n).iter().map(|s| json!({ "sentence": s }).to_string()).collect();
    let data = dir.path().join("sentences.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();

    let burn_gflops = burn_matmul_gflops();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("{n} sentences; {threads} cores; burn flex matmul [4096x384]x[384x1536]: {burn_gflops:.0} GFLOP/s");
    let mut rows = Vec::new();
    for batch in [32, 256] {
        let project = tempfile::tempdir().unwrap();
        std::fs::copy(&data, project.path().join("sentences.jsonl")).unwrap();
        let yaml = format!(
            "stages:\n  s: {{ op: read_table, with: {{ path: sentences.jsonl }} }}\n  \
             e: {{ op: embed, in: {{ table: s }}, with: {{ column: sentence, batch_size: {batch} }} }}\n"
        );
        std::fs::write(project.path().join("drover.yaml"), yaml).unwrap();
        let (_, wall, rss) =
            measured(Command::new(DROVER).args(["run", "--device", "cpu"]).current_dir(project.path()));
        let log = Command::new(DROVER).args(["runs", "--log", "e"]).current_dir(project.path()).output().unwrap();
        let log = String::from_utf8_lossy(&log.stdout).into_owned();
        let line =
            log.lines().find(|l| l.contains("encoded ")).unwrap_or_else(|| panic!("no timing in the log:\n{log}"));
        // "encoded N texts (T tokens, P with padding, batches of B) in S s: R texts/s"
        let num = |after: &str| -> f64 {
            let rest = &line[line.find(after).unwrap() + after.len()..];
            rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap().parse().unwrap()
        };
        let (tokens, padded, seconds) = (num("texts ("), num("tokens, "), num(") in "));
        let (np_out, _, np_rss) = measured(
            Command::new(&py)
                .arg(Path::new(MANIFEST_DIR).join("benches/embed/numpy_forward.py"))
                .arg(&model)
                .args(["--bench", data.to_str().unwrap(), "--batch", &batch.to_string()])
                .env_remove("OPENBLAS_CORETYPE")
                .env_remove("OPENBLAS_L2_SIZE"),
        );
        let np: Value = serde_json::from_str(np_out.lines().last().unwrap()).unwrap();
        let np_seconds = np["seconds"].as_f64().unwrap();
        let mean_len = padded / n as f64;
        let row = json!({
            "batch": batch,
            "drover": {
                "sentences_per_s": n as f64 / seconds, "encode_seconds": seconds, "run_seconds": wall,
                "tokens": tokens, "padded_tokens": padded, "gflops": flops(padded, mean_len) / seconds / 1e9,
                "peak_rss_mb": rss,
            },
            "numpy": {
                "sentences_per_s": np["sentences_per_s"], "seconds": np_seconds,
                "gflops": flops(np["padded_tokens"].as_f64().unwrap(), mean_len) / np_seconds / 1e9,
                "peak_rss_mb": np_rss, "matmul_gflops": np["matmul_gflops"], "blas": np["blas"],
            },
            "ratio": (n as f64 / seconds) / np["sentences_per_s"].as_f64().unwrap(),
        });
        println!(
            "batch {batch:>3}: drover {:>7.0} sentences/s ({:.2} s encode, {:.2} s whole run, {:.0} GFLOP/s, peak RSS {:.0} MB) | \
             numpy {:>7.0} sentences/s ({:.0} GFLOP/s, peak RSS {:.0} MB, its matmul {:.0} GFLOP/s) | drover/numpy {:.2}",
            n as f64 / seconds,
            seconds,
            wall,
            row["drover"]["gflops"].as_f64().unwrap(),
            rss,
            np["sentences_per_s"].as_f64().unwrap(),
            row["numpy"]["gflops"].as_f64().unwrap(),
            np_rss,
            np["matmul_gflops"].as_f64().unwrap(),
            row["ratio"].as_f64().unwrap(),
        );
        rows.push(row);
    }
    let out = json!({ "sentences": n, "cores": threads, "burn_matmul_gflops": burn_gflops, "runs": rows });
    std::fs::write(results.join("embed.json"), serde_json::to_string_pretty(&out).unwrap()).unwrap();
}
