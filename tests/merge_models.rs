//! End-to-end tests of `merge_models`: every method against an f64 reference written here from
//! the published formulas, on tiny Llama-shaped checkpoints generated here (seeded, odd sizes);
//! sharded, bf16 and f16 inputs, slices, gradients and filters, mergekit's example configs, the
//! cache, and bad inputs.

mod common;

use std::collections::BTreeMap;

use common::Project;
use half::bf16;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::json;

/// The sizes of a tiny Llama.
#[derive(Clone, Copy)]
struct Shape {
    vocab: usize,
    hidden: usize,
    inter: usize,
    layers: usize,
    kv: usize,
}

const TINY: Shape = Shape { vocab: 67, hidden: 24, inter: 40, layers: 3, kv: 12 };

type Weights = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

fn tensor_shapes(s: Shape) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![
        ("model.embed_tokens.weight".to_string(), vec![s.vocab, s.hidden]),
        ("model.norm.weight".to_string(), vec![s.hidden]),
        ("lm_head.weight".to_string(), vec![s.vocab, s.hidden]),
    ];
    for i in 0..s.layers {
        let p = format!("model.layers.{i}");
        out.extend([
            (format!("{p}.input_layernorm.weight"), vec![s.hidden]),
            (format!("{p}.post_attention_layernorm.weight"), vec![s.hidden]),
            (format!("{p}.self_attn.q_proj.weight"), vec![s.hidden, s.hidden]),
            (format!("{p}.self_attn.k_proj.weight"), vec![s.kv, s.hidden]),
            (format!("{p}.self_attn.v_proj.weight"), vec![s.kv, s.hidden]),
            (format!("{p}.self_attn.o_proj.weight"), vec![s.hidden, s.hidden]),
            (format!("{p}.mlp.gate_proj.weight"), vec![s.inter, s.hidden]),
            (format!("{p}.mlp.up_proj.weight"), vec![s.inter, s.hidden]),
            (format!("{p}.mlp.down_proj.weight"), vec![s.hidden, s.inter]),
        ]);
    }
    out
}

/// Random weights, uniform in [-1, 1), rounded to f32 (what a checkpoint can hold).
fn random_model(shape: Shape, seed: u64) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    tensor_shapes(shape)
        .into_iter()
        .map(|(name, dims)| {
            let n: usize = dims.iter().product();
            let values = (0..n).map(|_| rng.random_range(-1.0f32..1.0) as f64).collect();
            (name, (dims, values))
        })
        .collect()
}

/// A fine-tune of `base`: base plus noise of the given scale.
fn finetune(base: &Weights, seed: u64, scale: f64) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    base.iter()
        .map(|(name, (dims, v))| {
            let values = v.iter().map(|x| (x + scale * rng.random_range(-1.0f64..1.0)) as f32 as f64).collect();
            (name.clone(), (dims.clone(), values))
        })
        .collect()
}

/// Rounds every value to what the dtype stores.
fn rounded(w: &Weights, dtype: Dtype) -> Weights {
    w.iter()
        .map(|(n, (d, v))| {
            let v = v
                .iter()
                .map(|x| match dtype {
                    Dtype::BF16 => bf16::from_f64(*x).to_f64(),
                    Dtype::F16 => half::f16::from_f64(*x).to_f64(),
                    _ => *x as f32 as f64,
                })
                .collect();
            (n.clone(), (d.clone(), v))
        })
        .collect()
}

/// Writes a model directory with the `safetensors` crate (not drover's writer): `shards` files
/// and an index when more than one.
fn write_model(p: &Project, dir: &str, w: &Weights, dtype: Dtype, shards: usize, layers: usize, tag: &str) {
    let root = p.join(dir);
    std::fs::create_dir_all(&root).unwrap();
    let config = json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers,
                        "torch_dtype": if dtype == Dtype::BF16 { "bfloat16" } else { "float32" }});
    std::fs::write(root.join("config.json"), config.to_string()).unwrap();
    std::fs::write(root.join("tokenizer.json"), format!("{{\"tokenizer of\": \"{tag}\"}}")).unwrap();
    let bytes: BTreeMap<&String, Vec<u8>> = w
        .iter()
        .map(|(n, (_, v))| {
            let b = match dtype {
                Dtype::BF16 => v.iter().flat_map(|x| bf16::from_f64(*x).to_le_bytes()).collect(),
                Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f64(*x).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
            };
            (n, b)
        })
        .collect();
    let names: Vec<&String> = w.keys().collect();
    let mut weight_map = serde_json::Map::new();
    for s in 0..shards {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", s + 1)
        };
        let views: Vec<(&String, TensorView)> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == s)
            .map(|(_, n)| (*n, TensorView::new(dtype, w[*n].0.clone(), &bytes[n]).unwrap()))
            .collect();
        for (n, _) in &views {
            weight_map.insert(n.to_string(), json!(file));
        }
        safetensors::serialize_to_file(views, None, &root.join(&file)).unwrap();
    }
    if shards > 1 {
        let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(root.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

/// Reads every tensor of an exported model directory as f64, with the dtype it was stored in.
fn read_model(p: &Project, dir: &str) -> (Weights, Dtype) {
    let mut out = Weights::new();
    let mut dtype = Dtype::F32;
    for entry in std::fs::read_dir(p.join(dir)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            dtype = view.dtype();
            let v: Vec<f64> = match view.dtype() {
                Dtype::F32 => {
                    view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
                }
                Dtype::BF16 => {
                    view.data().chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect()
                }
                Dtype::F16 => {
                    view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect()
                }
                other => panic!("unexpected dtype {other:?}"),
            };
            out.insert(name, (view.shape().to_vec(), v));
        }
    }
    (out, dtype)
}

// ---------------------------------------------------------------------------------------------
// The reference: plain f64 loops after mergekit's formulas (ops-anchors.md §f).

/// One task vector's parameters.
#[derive(Clone, Copy)]
struct P {
    weight: f64,
    density: f64,
}

/// The documented mask stream: ChaCha8 seeded with blake3("drover merge mask v1\0", seed LE,
/// tensor, "\0", model); element i gets the i-th 32-bit word, u = (w >> 8) / 2^24.
fn uniforms(seed: u64, tensor: &str, model: &str, n: usize) -> Vec<f32> {
    let mut h = blake3::Hasher::new();
    h.update(b"drover merge mask v1\0");
    h.update(&seed.to_le_bytes());
    h.update(tensor.as_bytes());
    h.update(b"\0");
    h.update(model.as_bytes());
    let mut rng = ChaCha8Rng::from_seed(*h.finalize().as_bytes());
    (0..n).map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32).collect()
}

/// Indices in ascending order of |x|, equal magnitudes by position.
fn ascending(x: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|a, b| x[*a].abs().partial_cmp(&x[*b].abs()).unwrap().then(a.cmp(b)));
    idx
}

fn l1(x: &[f64]) -> f64 {
    x.iter().map(|v| v.abs()).sum()
}

fn rescale(orig: &[f64], kept: &mut [f64]) {
    let (a, b) = (l1(orig), l1(kept));
    if a >= 1e-7 && b >= 1e-7 {
        kept.iter_mut().for_each(|v| *v *= a / b);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Thin {
    None,
    TopK,
    Bernoulli,
    Breadcrumbs(f64),
    Della(f64),
}

/// Generalised task arithmetic: thin each task vector, weight, optionally elect signs, sum,
/// optionally normalise, scale by lambda, add to the base.
#[allow(clippy::too_many_arguments)]
fn ref_task_arithmetic(
    base: &[f64],
    models: &[(&str, &[f64], P)],
    shape: &[usize],
    thin: Thin,
    consensus: bool,
    normalize: bool,
    do_rescale: bool,
    lambda: f64,
    tensor: &str,
    seed: u64,
) -> Vec<f64> {
    let n = base.len();
    let mut deltas = Vec::new();
    for (name, x, p) in models {
        let d: Vec<f64> = x.iter().zip(base).map(|(a, b)| a - b).collect();
        let mut kept = d.clone();
        if p.density < 1.0 {
            match thin {
                Thin::None => {}
                Thin::TopK => {
                    let k = (p.density * n as f64) as usize;
                    for &i in &ascending(&d)[..n - k] {
                        kept[i] = 0.0;
                    }
                }
                Thin::Breadcrumbs(gamma) => {
                    let target = (p.density * n as f64) as usize;
                    let mut top = (gamma * n as f64) as i64;
                    let mut bot = n as i64 - target as i64 - top;
                    if bot < 0 {
                        top += bot;
                        bot = 0;
                    }
                    let order = ascending(&d);
                    for (rank, &i) in order.iter().enumerate() {
                        if (rank as i64) < bot || rank as i64 >= n as i64 - top {
                            kept[i] = 0.0;
                        }
                    }
                }
                Thin::Bernoulli => {
                    let u = uniforms(seed, tensor, name, n);
                    for i in 0..n {
                        if u[i] >= p.density as f32 {
                            kept[i] = 0.0;
                        }
                    }
                }
                Thin::Della(eps) => {
                    let u = uniforms(seed, tensor, name, n);
                    let cols = *shape.last().unwrap();
                    for r in 0..n / cols {
                        let row = &d[r * cols..(r + 1) * cols];
                        for (rank, &i) in ascending(row).iter().enumerate() {
                            let keep_p = (p.density - eps) + 2.0 * eps * rank as f64 / (cols - 1) as f64;
                            if u[r * cols + i] >= keep_p as f32 {
                                kept[r * cols + i] = 0.0;
                            }
                        }
                    }
                }
            }
            if do_rescale {
                rescale(&d, &mut kept);
            }
        }
        deltas.push((kept, p.weight));
    }
    (0..n)
        .map(|e| {
            let (mut mixed, mut divisor) = (0.0, 0.0);
            if consensus {
                let total: f64 = deltas.iter().map(|(d, w)| w * d[e]).sum();
                let majority = if total >= 0.0 { 1.0 } else { -1.0 };
                for (d, w) in &deltas {
                    let wd = w * d[e];
                    if wd != 0.0 && wd.signum() == majority {
                        mixed += wd;
                        divisor += w;
                    }
                }
                if divisor == 0.0 {
                    divisor = 1.0;
                }
            } else {
                mixed = deltas.iter().map(|(d, w)| w * d[e]).sum();
                divisor = deltas.iter().map(|(_, w)| w).sum();
                if divisor.abs() < 1e-8 {
                    divisor = 1.0;
                }
            }
            if normalize {
                mixed /= divisor;
            }
            base[e] + lambda * mixed
        })
        .collect()
}

fn ref_slerp(t: f64, v0: &[f64], v1: &[f64]) -> Vec<f64> {
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let dot: f64 = v0.iter().zip(v1).map(|(a, b)| a * b).sum::<f64>() / (norm(v0) * norm(v1));
    if dot.abs() > 0.9995 {
        return v0.iter().zip(v1).map(|(a, b)| (1.0 - t) * a + t * b).collect();
    }
    let th = dot.acos();
    let (s0, s1) = (((1.0 - t) * th).sin() / th.sin(), (t * th).sin() / th.sin());
    v0.iter().zip(v1).map(|(a, b)| s0 * a + s1 * b).collect()
}

fn ref_model_stock(base: &[f64], others: &[&[f64]]) -> Vec<f64> {
    let offs: Vec<Vec<f64>> = others.iter().map(|x| x.iter().zip(base).map(|(a, b)| a - b).collect()).collect();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut cos = Vec::new();
    for i in 0..offs.len() {
        for j in i + 1..offs.len() {
            let dot: f64 = offs[i].iter().zip(&offs[j]).map(|(a, b)| a * b).sum();
            cos.push((dot / (norm(&offs[i]) * norm(&offs[j])).max(1e-6)).clamp(-1.0, 1.0));
        }
    }
    let c = cos.iter().sum::<f64>() / cos.len() as f64;
    let k = others.len() as f64;
    let t = k * c / (1.0 + (k - 1.0) * c);
    (0..base.len()).map(|e| t * others.iter().map(|x| x[e]).sum::<f64>() / k + (1.0 - t) * base[e]).collect()
}

/// Asserts that every tensor matches to 1e-5 of the tensor's largest magnitude.
#[track_caller]
fn assert_close(what: &str, got: &Weights, want: &Weights) {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: tensor names");
    for (name, (shape, w)) in want {
        let (gshape, g) = &got[name];
        assert_eq!(gshape, shape, "{what}: shape of {name}");
        let scale = w.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let err = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err <= 1e-5 * scale, "{what}: {name} differs by {err:e} (scale {scale:e})");
    }
}

fn map_tensors(w: &Weights, f: impl Fn(&str, &[usize]) -> Vec<f64>) -> Weights {
    w.iter().map(|(n, (d, _))| (n.clone(), (d.clone(), f(n, d)))).collect()
}

const READS: &str = "stages:
  base: { op: read_model, with: { path: models/base } }
  a: { op: read_model, with: { path: models/a } }
  b: { op: read_model, with: { path: models/b } }
  c: { op: read_model, with: { path: models/c } }
";

/// A base and three fine-tunes, written as f32; returned as the values the files hold.
fn four_models(p: &Project, dtype: Dtype) -> [Weights; 4] {
    let base = rounded(&random_model(TINY, 1), dtype);
    let a = rounded(&finetune(&base, 2, 0.05), dtype);
    let b = rounded(&finetune(&base, 3, 0.05), dtype);
    let c = rounded(&finetune(&base, 4, 0.08), dtype);
    for (dir, w) in [("models/base", &base), ("models/a", &a), ("models/b", &b), ("models/c", &c)] {
        write_model(p, dir, w, dtype, 1, TINY.layers, dir);
    }
    [base, a, b, c]
}

fn merge_stage(name: &str, ins: &str, with: &str) -> String {
    format!("  {name}:\n    op: merge_models\n    in: {{ {ins} }}\n    with: {with}\n")
}

const ALL: &str = "base: base, a: a, b: b, c: c";
const FINETUNES: &str = "a: a, b: b, c: c";

#[test]
fn every_method_matches_the_f64_reference() {
    let p = Project::new();
    let [base, a, b, c] = four_models(&p, Dtype::F32);
    let three = "[{model: a, parameters: {weight: 0.5, density: 0.6}}, {model: b, parameters: {weight: 0.3, density: 0.4}}, \
                 {model: c, parameters: {weight: -0.2, density: 0.75}}]";
    let stages: Vec<(&str, String)> = vec![
        ("linear", "{ merge_method: linear, models: [{model: a, parameters: {weight: 1.0}}, {model: b, parameters: {weight: 0.5}}, {model: c, parameters: {weight: 0.25}}], out_dtype: float32 }".to_string()),
        ("task_arithmetic", format!("{{ merge_method: task_arithmetic, base_model: base, models: {three}, parameters: {{lambda: 0.8}}, out_dtype: float32 }}")),
        ("ties", format!("{{ merge_method: ties, base_model: base, models: {three}, out_dtype: float32 }}")),
        ("dare_linear", format!("{{ merge_method: dare_linear, base_model: base, models: {three}, seed: 11, out_dtype: float32 }}")),
        ("dare_ties", format!("{{ merge_method: dare_ties, base_model: base, models: {three}, seed: 12, out_dtype: float32 }}")),
        ("breadcrumbs", format!("{{ merge_method: breadcrumbs, base_model: base, models: {three}, parameters: {{gamma: 0.05}}, out_dtype: float32 }}")),
        ("breadcrumbs_ties", format!("{{ merge_method: breadcrumbs_ties, base_model: base, models: {three}, parameters: {{gamma: 0.05, normalize: true}}, out_dtype: float32 }}")),
        ("della", format!("{{ merge_method: della, base_model: base, models: {three}, parameters: {{epsilon: 0.1}}, seed: 13, out_dtype: float32 }}")),
        ("della_linear", format!("{{ merge_method: della_linear, base_model: base, models: {three}, parameters: {{epsilon: 0.1}}, seed: 14, out_dtype: float32 }}")),
        // Nothing thinned: merged block by block from the stored bytes, with sign election.
        ("ties_dense", "{ merge_method: ties, base_model: base, models: [{model: a, parameters: {weight: 0.5}}, {model: b, parameters: {weight: 0.3}}, {model: c, parameters: {weight: -0.2}}], parameters: {lambda: 0.7}, out_dtype: float32 }".to_string()),
        ("model_stock", "{ merge_method: model_stock, base_model: base, models: [{model: a}, {model: b}, {model: c}], out_dtype: float32 }".to_string()),
    ];
    let mut yaml = READS.to_string();
    for (name, with) in &stages {
        yaml += &merge_stage(name, if *name == "linear" { FINETUNES } else { ALL }, with);
    }
    yaml += "  slerp:\n    op: merge_models\n    in: { base: base, a: a }\n    with: { merge_method: slerp, base_model: base, models: [{model: base}, {model: a}], parameters: {t: 0.3}, out_dtype: float32 }\n";
    p.write("drover.yaml", &yaml);
    // On the CPU; then, through burn on wgpu (lavapipe in CI), the methods that use a device:
    // sign election (combining task vectors: the `_ties` methods, della; dare_linear combines
    // without it) and slerp. The others stay on the CPU whatever the device (ops/src/merge/device.rs),
    // so running them on wgpu would test nothing. The device is never in a key, so the second
    // run needs a store of its own.
    p.drover(&["run", "--device", "cpu"]).expect_code(0);
    const ON_DEVICE: [&str; 6] = ["ties", "dare_ties", "dare_linear", "breadcrumbs_ties", "della", "slerp"];
    let mut wgpu_run = vec!["run", "--device", "wgpu", "--store", "wgpu-store"];
    wgpu_run.extend(ON_DEVICE.iter().flat_map(|stage| ["--target", stage]));
    p.drover(&wgpu_run).expect_code(0);
    // Each of them did run on the device (the run record names the device a stage used).
    let runs = p.drover(&["runs", "last", "--store", "wgpu-store"]);
    runs.expect_code(0);
    for stage in ON_DEVICE {
        let line = runs.stdout.lines().find(|l| l.split_whitespace().nth(1) == Some(stage));
        assert!(line.is_some_and(|l| l.contains(" on wgpu: ")), "{stage} did not run on wgpu:\n{}", runs.stdout);
    }

    let pw = |w: f64, d: f64| P { weight: w, density: d };
    let ps = [pw(0.5, 0.6), pw(0.3, 0.4), pw(-0.2, 0.75)];
    let get = |w: &Weights, n: &str| w[n].1.clone();
    let ta = |thin: Thin, consensus: bool, normalize: bool, resc: bool, lambda: f64, seed: u64| {
        map_tensors(&base, |n, shape| {
            let (xa, xb, xc) = (get(&a, n), get(&b, n), get(&c, n));
            let models = [("a", &xa[..], ps[0]), ("b", &xb[..], ps[1]), ("c", &xc[..], ps[2])];
            ref_task_arithmetic(&base[n].1, &models, shape, thin, consensus, normalize, resc, lambda, n, seed)
        })
    };
    let mut want: BTreeMap<&str, Weights> = BTreeMap::new();
    want.insert(
        "linear",
        map_tensors(&base, |n, _| {
            (0..base[n].1.len()).map(|e| (a[n].1[e] + 0.5 * b[n].1[e] + 0.25 * c[n].1[e]) / 1.75).collect()
        }),
    );
    want.insert("task_arithmetic", ta(Thin::None, false, false, false, 0.8, 0));
    want.insert("ties", ta(Thin::TopK, true, true, false, 1.0, 0));
    want.insert("dare_linear", ta(Thin::Bernoulli, false, false, true, 1.0, 11));
    want.insert("dare_ties", ta(Thin::Bernoulli, true, false, true, 1.0, 12));
    want.insert(
        "ties_dense",
        map_tensors(&base, |n, shape| {
            let (xa, xb, xc) = (get(&a, n), get(&b, n), get(&c, n));
            let dense = |w| P { weight: w, density: 1.0 };
            let models = [("a", &xa[..], dense(0.5)), ("b", &xb[..], dense(0.3)), ("c", &xc[..], dense(-0.2))];
            ref_task_arithmetic(&base[n].1, &models, shape, Thin::TopK, true, true, false, 0.7, n, 0)
        }),
    );
    want.insert("breadcrumbs", ta(Thin::Breadcrumbs(0.05), false, false, false, 1.0, 0));
    want.insert("breadcrumbs_ties", ta(Thin::Breadcrumbs(0.05), true, true, false, 1.0, 0));
    want.insert("della", ta(Thin::Della(0.1), true, true, true, 1.0, 13));
    want.insert("della_linear", ta(Thin::Della(0.1), false, false, true, 1.0, 14));
    want.insert("model_stock", map_tensors(&base, |n, _| ref_model_stock(&base[n].1, &[&a[n].1, &b[n].1, &c[n].1])));
    want.insert("slerp", map_tensors(&base, |n, _| ref_slerp(0.3, &base[n].1, &a[n].1)));
    for (stage, w) in &want {
        let dir = format!("out/{stage}");
        p.drover(&["export", &format!("{stage}.model"), &dir]).expect_code(0);
        let (got, dtype) = read_model(&p, &dir);
        assert_eq!(dtype, Dtype::F32, "{stage}");
        assert_close(stage, &got, w);
        if ON_DEVICE.contains(stage) {
            let dir = format!("out-wgpu/{stage}");
            p.drover(&["export", "--store", "wgpu-store", &format!("{stage}.model"), &dir]).expect_code(0);
            assert_close(&format!("{stage} on wgpu"), &read_model(&p, &dir).0, w);
        }
    }
    // Sparsifying methods did thin: some task-vector elements were dropped.
    let (ties, _) = read_model(&p, "out/ties");
    let (ta_out, _) = read_model(&p, "out/task_arithmetic");
    assert_ne!(ties["model.layers.1.mlp.up_proj.weight"].1, ta_out["model.layers.1.mlp.up_proj.weight"].1);
    // The merged model has the base's config and tokenizer.
    assert_eq!(p.read("out/ties/tokenizer.json"), p.read("models/base/tokenizer.json"));
    let cfg: serde_json::Value = serde_json::from_str(&p.read("out/ties/config.json")).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 3);
    assert_eq!(cfg["torch_dtype"], "float32");
    assert!(p.read("out/ties/mergekit_config.yml").contains("\"merge_method\": \"ties\""));
}

#[test]
fn dare_keeps_about_density_of_each_task_vector_and_is_seeded() {
    let p = Project::new();
    let [base, a, _, _] = four_models(&p, Dtype::F32);
    let with = |seed: u64| {
        format!(
            "{{ merge_method: dare_linear, base_model: base, models: [{{model: a, parameters: {{weight: 1.0, density: 0.3}}}}], parameters: {{rescale: false}}, seed: {seed}, out_dtype: float32 }}"
        )
    };
    let yaml = format!(
        "stages:\n  base: {{ op: read_model, with: {{ path: models/base }} }}\n  a: {{ op: read_model, with: {{ path: models/a }} }}\n  \
         m1:\n    op: merge_models\n    in: {{ base: base, a: a }}\n    with: {}\n  \
         m2:\n    op: merge_models\n    in: {{ base: base, a: a }}\n    with: {}\n",
        with(5),
        with(6)
    );
    p.write("drover.yaml", &yaml);
    p.drover(&["run"]).expect_code(0);
    p.drover(&["export", "m1.model", "m1"]).expect_code(0);
    p.drover(&["export", "m2.model", "m2"]).expect_code(0);
    let (m1, _) = read_model(&p, "m1");
    let (m2, _) = read_model(&p, "m2");
    let name = "model.layers.2.mlp.down_proj.weight";
    let kept = |m: &Weights| m[name].1.iter().zip(&base[name].1).filter(|(x, b)| *x != *b).count();
    let n = base[name].1.len();
    for m in [&m1, &m2] {
        let frac = kept(m) as f64 / n as f64;
        // 960 Bernoulli(0.3) draws: 0.3 ± 5 standard deviations (0.074).
        assert!((frac - 0.3).abs() < 0.075, "kept {frac}");
        // What is kept is exactly the fine-tune's value (no rescale).
        for ((x, b), f) in m[name].1.iter().zip(&base[name].1).zip(&a[name].1) {
            assert!((x - b).abs() < 1e-6 || (x - f).abs() < 1e-6, "{x} is neither {b} nor {f}");
        }
    }
    assert_ne!(m1[name].1, m2[name].1, "different seeds give different masks");
}

#[test]
fn sharded_bf16_and_f16_inputs_and_sharded_output() {
    let p = Project::new();
    let base = rounded(&random_model(TINY, 21), Dtype::BF16);
    let a = rounded(&finetune(&base, 22, 0.05), Dtype::BF16);
    let b = rounded(&finetune(&base, 23, 0.05), Dtype::F16);
    write_model(&p, "models/base", &base, Dtype::BF16, 3, TINY.layers, "base");
    write_model(&p, "models/a", &a, Dtype::BF16, 1, TINY.layers, "a");
    write_model(&p, "models/b", &b, Dtype::F16, 2, TINY.layers, "b");
    let yaml = "stages:
  base: { op: read_model, with: { path: models/base } }
  a: { op: read_model, with: { path: models/a } }
  b: { op: read_model, with: { path: models/b } }
  m:
    op: merge_models
    in: { base: base, a: a, b: b }
    with:
      merge_method: ties
      base_model: base
      models:
        - { model: a, parameters: { weight: 0.7, density: 0.5 } }
        - { model: b, parameters: { weight: 0.3, density: 0.5 } }
      out_dtype: float32
      out_shard_size: 4000
      tokenizer_source: b
";
    p.write("drover.yaml", yaml);
    p.drover(&["run"]).expect_code(0);
    p.drover(&["export", "m.model", "out"]).expect_code(0);
    let index: serde_json::Value = serde_json::from_str(&p.read("out/model.safetensors.index.json")).unwrap();
    let files: std::collections::BTreeSet<&str> =
        index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    assert!(files.len() > 3, "a 4 kB shard limit gives many shards: {files:?}");
    assert_eq!(index["weight_map"].as_object().unwrap().len(), base.len());
    assert_eq!(p.read("out/tokenizer.json"), p.read("models/b/tokenizer.json"));
    let (got, _) = read_model(&p, "out");
    let pw = |w: f64, d: f64| P { weight: w, density: d };
    let want = map_tensors(&base, |n, shape| {
        let models = [("a", &a[n].1[..], pw(0.7, 0.5)), ("b", &b[n].1[..], pw(0.3, 0.5))];
        ref_task_arithmetic(&base[n].1, &models, shape, Thin::TopK, true, true, false, 1.0, n, 0)
    });
    assert_close("bf16 + f16 + sharded", &got, &want);
}

#[test]
fn slices_passthrough_renumbers_layers_and_copies_them_exactly() {
    let p = Project::new();
    let shape = Shape { layers: 4, ..TINY };
    let x = rounded(&random_model(shape, 31), Dtype::BF16);
    let y = rounded(&random_model(shape, 32), Dtype::BF16);
    write_model(&p, "models/x", &x, Dtype::BF16, 1, 4, "x");
    write_model(&p, "models/y", &y, Dtype::BF16, 2, 4, "y");
    let yaml = "stages:
  x: { op: read_model, with: { path: models/x } }
  y: { op: read_model, with: { path: models/y } }
  frank:
    op: merge_models
    in: { x: x, y: y }
    with:
      slices:
        - sources: [{ model: x, layer_range: [0, 3] }]
        - sources: [{ model: y, layer_range: [1, 4], parameters: { scale: 0.5 } }]
      merge_method: passthrough
";
    p.write("drover.yaml", yaml);
    p.drover(&["run"]).expect_code(0);
    p.drover(&["export", "frank.model", "out"]).expect_code(0);
    let (got, dtype) = read_model(&p, "out");
    assert_eq!(dtype, Dtype::BF16, "the output keeps the inputs' dtype");
    let cfg: serde_json::Value = serde_json::from_str(&p.read("out/config.json")).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 6);
    let layer = |i: usize| format!("model.layers.{i}.mlp.up_proj.weight");
    assert_eq!(got[&layer(0)].1, x[&layer(0)].1);
    assert_eq!(got[&layer(2)].1, x[&layer(2)].1);
    // Output layer 3 is y's layer 1, scaled by 0.5 (exact in bf16).
    let halved: Vec<f64> = y[&layer(1)].1.iter().map(|v| v * 0.5).collect();
    assert_eq!(got[&layer(3)].1, halved);
    let halved: Vec<f64> = y[&layer(3)].1.iter().map(|v| v * 0.5).collect();
    assert_eq!(got[&layer(5)].1, halved);
    assert!(!got.contains_key(&layer(6)));
    // Embeddings from the first slice's model, the final norm and head from the last slice's.
    assert_eq!(got["model.embed_tokens.weight"].1, x["model.embed_tokens.weight"].1);
    let head: Vec<f64> = y["lm_head.weight"].1.iter().map(|v| v * 0.5).collect();
    assert_eq!(got["lm_head.weight"].1, head);
    assert_eq!(got.len(), 3 + 6 * 9);
}

/// mergekit's `evaluate_setting` for a numeric gradient, written again for the reference.
fn interp(values: &[f64], t: f64) -> f64 {
    let scaled = t * (values.len() - 1) as f64;
    let i0 = scaled.floor() as usize;
    let i1 = (i0 + 1).min(values.len() - 1);
    let frac = scaled - i0 as f64;
    (1.0 - frac) * values[i0] + frac * values[i1]
}

#[test]
fn gradients_and_filters_follow_the_layers() {
    let p = Project::new();
    let [base, a, b, c] = four_models(&p, Dtype::F32);
    // mergekit's examples/ties.yml, on three layers.
    let yaml = format!(
        "{READS}  m:
    op: merge_models
    in: {{ base: base, a: a, b: b, c: c }}
    with:
      models:
        - model: a
          parameters: {{ density: [1, 0.7, 0.1], weight: 1.0 }}
        - model: b
          parameters: {{ density: 0.5, weight: [0, 0.3, 0.7, 1] }}
        - model: c
          parameters:
            density: 0.33
            weight: [{{ filter: mlp, value: 0.5 }}, {{ value: 0 }}]
      merge_method: ties
      base_model: base
      parameters: {{ normalize: true, int8_mask: true }}
      out_dtype: float32
"
    );
    p.write("drover.yaml", &yaml);
    p.drover(&["run"]).expect_code(0);
    p.drover(&["export", "m.model", "out"]).expect_code(0);
    let (got, _) = read_model(&p, "out");
    let want = map_tensors(&base, |n, shape| {
        let t = match n.split('.').nth(2).and_then(|s| s.parse::<f64>().ok()) {
            Some(layer) if n.starts_with("model.layers.") => layer / (TINY.layers - 1) as f64,
            // Outside the layers, mergekit 0.1.5 reads every gradient at t = 0.
            _ => 0.0,
        };
        let pa = P { weight: 1.0, density: interp(&[1.0, 0.7, 0.1], t) };
        let pb = P { weight: interp(&[0.0, 0.3, 0.7, 1.0], t), density: 0.5 };
        let pc = P { weight: if n.contains("mlp") { 0.5 } else { 0.0 }, density: 0.33 };
        let models = [("a", &a[n].1[..], pa), ("b", &b[n].1[..], pb), ("c", &c[n].1[..], pc)];
        ref_task_arithmetic(&base[n].1, &models, shape, Thin::TopK, true, true, false, 1.0, n, 0)
    });
    assert_close("gradients", &got, &want);
}

#[test]
fn rerunning_is_a_cache_hit_and_a_changed_weight_reruns_only_the_merge() {
    let p = Project::new();
    four_models(&p, Dtype::F32);
    let stage = |w: f64| {
        format!(
            "{READS}{}",
            merge_stage(
                "m",
                FINETUNES,
                &format!(
                    "{{ merge_method: linear, models: [{{model: a, parameters: {{weight: {w}}}}}, {{model: b, parameters: {{weight: 1}}}}, {{model: c, parameters: {{weight: 1}}}}] }}"
                )
            )
        )
    };
    p.write("drover.yaml", &stage(1.0));
    p.drover(&["run"]).expect_code(0);
    assert!(p.plan(&[]).iter().all(|(_, action, _)| action == "cached"));
    p.write("drover.yaml", &stage(2.0));
    let plan = p.plan(&[]);
    let running: Vec<&str> = plan.iter().filter(|(_, a, _)| a != "cached").map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(running, ["m"], "{plan:?}");
    p.drover(&["run"]).expect_code(0);
}

#[test]
fn mergekits_example_configs_parse_plan_and_merge() {
    let p = Project::new();
    // Wide enough that the smallest density (0.1) keeps an element of every tensor, as mergekit
    // also requires.
    let shape = Shape { vocab: 11, hidden: 16, inter: 12, layers: 40, kv: 8 };
    let mut yaml = "stages:\n".to_string();
    for (i, name) in ["s1", "s2", "s3", "s4"].iter().enumerate() {
        let w = random_model(shape, 40 + i as u64);
        write_model(&p, &format!("models/{name}"), &w, Dtype::F32, 1, 40, name);
        yaml += &format!("  {name}: {{ op: read_model, with: {{ path: models/{name} }} }}\n");
    }
    let dir = env!("CARGO_MANIFEST_DIR");
    let cases = [
        (
            "linear",
            r#"{ "psmathur/orca_mini_v3_13b": s1, "WizardLM/WizardLM-13B-V1.2": s2, "garage-bAInd/Platypus2-13B": s3 }"#,
            "s1, s2, s3",
            40,
        ),
        (
            "ties",
            r#"{ "psmathur/orca_mini_v3_13b": s1, "garage-bAInd/Platypus2-13B": s2, "WizardLM/WizardMath-13B-V1.0": s3, "TheBloke/Llama-2-13B-fp16": s4 }"#,
            "s1, s2, s3, s4",
            40,
        ),
        ("gradient-slerp", r#"{ "psmathur/orca_mini_v3_13b": s1, "garage-bAInd/Platypus2-13B": s2 }"#, "s1, s2", 40),
        (
            "bio-merge",
            r#"{ "mistralai/Mistral-7B-Instruct-v0.2": s1, "BioMistral/BioMistral-7B": s2, "mistralai/Mistral-7B-v0.1": s3 }"#,
            "s1, s2, s3",
            40,
        ),
        (
            "orcamini-platy-44layer",
            r#"{ "psmathur/orca_mini_v3_13b": s1, "garage-bAInd/Platypus2-13B": s2 }"#,
            "s1, s2",
            44,
        ),
    ];
    for (name, ports, inputs, _) in &cases {
        std::fs::copy(format!("{dir}/tests/data/mergekit_configs/{name}.yml"), p.join(&format!("{name}.yml"))).unwrap();
        let ins: Vec<String> = inputs.split(", ").map(|s| format!("{s}: {s}")).collect();
        yaml += &format!(
            "  {}:\n    op: merge_models\n    in: {{ {} }}\n    with: {{ config: {name}.yml, ports: {ports} }}\n",
            name.replace('-', "_"),
            ins.join(", ")
        );
    }
    p.write("drover.yaml", &yaml);
    p.drover(&["run"]).expect_code(0);
    for (name, _, _, layers) in &cases {
        let dir = format!("out/{name}");
        p.drover(&["export", &format!("{}.model", name.replace('-', "_")), &dir]).expect_code(0);
        let (got, dtype) = read_model(&p, &dir);
        assert_eq!(dtype, Dtype::F16, "{name}: `dtype: float16` is the output dtype");
        assert_eq!(got.len(), 3 + layers * 9, "{name}");
        let cfg: serde_json::Value = serde_json::from_str(&p.read(&format!("{dir}/config.json"))).unwrap();
        assert_eq!(cfg["num_hidden_layers"], *layers, "{name}");
    }
}

/// Stage `m` of the project has no stored output, so exporting it writes nothing.
#[track_caller]
fn nothing_stored(p: &Project) {
    let out = p.drover(&["export", "m.model", "nothing"]);
    out.expect_code(2);
    assert!(out.stderr.contains("stage `m` has no stored output yet"), "{}", out.stderr);
    assert!(!p.join("nothing").exists());
}

#[test]
fn bad_inputs_are_clear_errors_and_write_nothing() {
    let p = Project::new();
    let [base, ..] = four_models(&p, Dtype::F32);
    // A model whose MLP is wider, and one with a larger vocabulary.
    let wide = random_model(Shape { inter: 41, ..TINY }, 9);
    write_model(&p, "models/wide", &wide, Dtype::F32, 1, TINY.layers, "wide");
    let vocab = random_model(Shape { vocab: 68, ..TINY }, 10);
    write_model(&p, "models/vocab", &vocab, Dtype::F32, 1, TINY.layers, "vocab");
    let _ = base;
    let pipeline = |model_dir: &str, with: &str| {
        format!(
            "stages:\n  base: {{ op: read_model, with: {{ path: models/base }} }}\n  other: {{ op: read_model, with: {{ path: {model_dir} }} }}\n  \
             m:\n    op: merge_models\n    in: {{ base: base, other: other }}\n    with: {with}\n"
        )
    };
    let ties =
        "{ merge_method: ties, base_model: base, models: [{model: other, parameters: {weight: 1, density: 0.5}}] }";

    p.write("drover.yaml", &pipeline("models/wide", ties));
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains(
            "tensor `model.layers.0.mlp.down_proj.weight` has shape [24, 41] in model `other` but [24, 40] in model `base`"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("fine-tunes of the same base"), "a hint: {}", out.stderr);
    nothing_stored(&p);

    p.write("drover.yaml", &pipeline("models/vocab", ties));
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains("the vocabulary sizes differ: `model.embed_tokens.weight` has 68 rows in model `other` and 67 in model `base`"), "{}", out.stderr);
    assert!(out.stderr.contains("does not merge vocabularies"), "a hint: {}", out.stderr);

    // A model without a tensor the others have (tied embeddings: no lm_head).
    let mut tied = random_model(TINY, 11);
    tied.remove("lm_head.weight");
    write_model(&p, "models/tied", &tied, Dtype::F32, 1, TINY.layers, "tied");
    p.write("drover.yaml", &pipeline("models/tied", ties));
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains("tensor `lm_head.weight` is in model"), "{}", out.stderr);

    // Thinning that would keep nothing of a small tensor, found before anything is written.
    p.write("drover.yaml", &pipeline("models/a", "{ merge_method: ties, base_model: base, models: [{model: other, parameters: {weight: 1, density: 0.04}}] }"));
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains("density 0.04 keeps none of the 24 elements of tensor"), "{}", out.stderr);
    nothing_stored(&p);

    // Plan-time errors: located in the pipeline file, before anything runs.
    let cases = [
        (
            "{ merge_method: ties, models: [{model: other, parameters: {weight: 1}}] }",
            "merge method `ties` needs `base_model`",
        ),
        (
            "{ merge_method: ties, base_model: base, models: [{model: other, parameters: {weight: 1, density: 1.5}}] }",
            "`density` must be in (0, 1], not 1.5",
        ),
        (
            "{ merge_method: ties, base_model: base, models: [{model: other, parameters: {wieght: 1}}] }",
            "merge method `ties` has no parameter `wieght`",
        ),
        (
            "{ merge_method: frobnicate, base_model: base, models: [{model: other}] }",
            "unknown merge method `frobnicate`",
        ),
        (
            "{ merge_method: linear, models: [{model: other, parameters: {weight: 1}}, {model: missing, parameters: {weight: 1}}] }",
            "model `missing` of the merge config",
        ),
        (
            "{ merge_method: slerp, base_model: base, models: [{model: base}, {model: other}] }",
            "merge method `slerp` needs `t`",
        ),
    ];
    for (with, message) in cases {
        p.write("drover.yaml", &pipeline("models/a", with));
        let out = p.drover(&["validate"]);
        out.expect_code(2);
        assert!(out.stderr.contains(message), "{with}\n{}", out.stderr);
        assert!(out.stderr.contains("drover.yaml:"), "{}", out.stderr);
    }
    // A config file's errors point into the file.
    p.write("bad.yml", "merge_method: ties\nbase_model: base\nmodels:\n  - model: other\n    parameters:\n      weight: 1\n      density: 0\n");
    p.write("drover.yaml", &pipeline("models/a", "{ config: bad.yml }"));
    let out = p.drover(&["validate"]);
    out.expect_code(2);
    assert!(out.stderr.contains("bad.yml:7:16: `density` must be in (0, 1], not 0"), "{}", out.stderr);
}

#[test]
fn the_merge_example_runs_offline_from_models_its_script_writes() {
    let p = Project::new();
    let repo = env!("CARGO_MANIFEST_DIR");
    // The committed stand-in models are exactly what the script writes.
    let script = format!("{repo}/examples/scripts/make_tiny_models.py");
    let status = std::process::Command::new("python3").arg(&script).arg(p.join("fresh")).status().unwrap();
    assert!(status.success());
    for m in ["base", "math", "code"] {
        let committed = std::fs::read(format!("{repo}/examples/models/{m}/model.safetensors")).unwrap();
        assert_eq!(std::fs::read(p.join(&format!("fresh/{m}/model.safetensors"))).unwrap(), committed, "{m}");
    }
    let example = format!("{repo}/examples/merge.yaml");
    let store = p.join("store").display().to_string();
    p.drover(&["run", &example, "--store", &store]).expect_code(0);
    p.drover(&["export", "soft.model", "out", "-f", &example, "--store", &store]).expect_code(0);
    let (got, dtype) = read_model(&p, "out");
    assert_eq!(dtype, Dtype::BF16);
    assert_eq!(got.len(), 3 + 2 * 9);
    let (base, _) = read_model(&p, "fresh/base");
    let name = "model.layers.1.mlp.up_proj.weight";
    assert!(got[name].1.iter().all(|v| v.is_finite()));
    assert_ne!(got[name].1, base[name].1, "the merge moved the weights");
    // A second run is all cached.
    let out = p.drover(&["run", &example, "--store", &store]);
    assert!(out.stderr.contains("0 ran, 5 cached"), "{}", out.stderr);
}
