//! The `merge_models` op: mergekit-compatible model merging over safetensors, streamed tensor
//! by tensor.
//!
//! Inputs are model directories (`dir` artifacts, any port names); the `with:` block is a
//! mergekit config (or `config: FILE` names one), whose model references are the input ports
//! (or are mapped to them through `ports:`). Output `model`: a directory in Hugging Face
//! layout, with `config.json` and the tokenizer files of the base model (or of
//! `tokenizer_source`), and `mergekit_config.yml` recording the config that made it.
//!
//! The work is done by the parts in `merge/`: `config` parses and checks mergekit's schema,
//! `plan` lays out every output tensor with its sources and parameters (and finds every
//! mismatch) before anything is written, and `methods` does the arithmetic, one tensor at a
//! time, on buffers that are reused from tensor to tensor; `weights` reads memory-mapped inputs
//! and writes shards.
//!
//! Deterministic: random masks come from seeded streams (`seed`, else the stage's seed), read at
//! each element's position, and passes are cut in fixed chunks, so the same inputs give the same
//! bytes whatever the thread count; on a GPU (`--device wgpu`) sign election and slerp agree with
//! the CPU to f32 rounding (`merge/device.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use drover_engine::diag::line_col;
use drover_engine::{CheckCx, CheckError, CheckErrors, Checked, OpError, OpKit, PortType, Ports, RunCx, Work};
use serde::Deserialize;
use serde_json::Value;

use super::merge::config::{ConfigError, MergeConfig, SCHEMA_KEYS};
use super::merge::weights::{self, ModelWeights, PlannedTensor, ShardWriter};
use super::merge::{methods, par, plan};
use crate::kit::compute;

/// The `with:` block of a `merge_models` stage: mergekit's keys, and drover's own.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeModelsParams {
    /// A mergekit config file (YAML), relative to the pipeline's directory or absolute; instead of the
    /// mergekit keys below.
    pub config: Option<String>,
    /// Which input port holds each model the config names, when the names are not the ports'
    /// (e.g. `{"mistralai/Mistral-7B-v0.1": base}`).
    #[serde(default)]
    pub ports: BTreeMap<String, String>,
    /// The largest output shard in bytes (`5B`, `500M`, `2G` or a number). Default: 5B.
    pub out_shard_size: Option<Value>,
    /// Seed of the random masks of `dare_*` and `della*`. Default: the stage's seed.
    pub seed: Option<u64>,
    /// mergekit: the method (linear, slerp, task_arithmetic, ties, dare_linear, dare_ties,
    /// breadcrumbs, breadcrumbs_ties, della, della_linear, model_stock, passthrough).
    pub merge_method: Option<String>,
    /// mergekit: the model task vectors are taken against (slerp: the model at t = 0).
    pub base_model: Option<String>,
    /// mergekit: `[{model, parameters}]`.
    pub models: Option<Value>,
    /// mergekit: `[{sources: [{model, layer_range, parameters}], base_model, parameters}]`.
    pub slices: Option<Value>,
    /// mergekit: parameters for every model (scalars, gradients, or `{filter, value}` lists).
    pub parameters: Option<Value>,
    /// mergekit: the dtype written when `out_dtype` is not given (drover always computes in f32).
    pub dtype: Option<String>,
    /// mergekit: the dtype of the output's weights.
    pub out_dtype: Option<String>,
    /// mergekit: whose tokenizer the output gets: `base` or a model.
    pub tokenizer_source: Option<String>,
    /// mergekit: not supported (multi-module merges).
    pub modules: Option<Value>,
    /// mergekit: not supported (merged tokenizers).
    pub tokenizer: Option<Value>,
    /// mergekit: not supported.
    pub chat_template: Option<Value>,
}

/// Merges models, with sign election and slerp on the device the user chose.
pub struct MergeModels {
    pub device: compute::DeviceChoice,
}

impl OpKit for MergeModels {
    type Params = MergeModelsParams;
    const NAME: &str = "merge_models";
    const VERSION: u32 = 1;
    const DOC: &str = "Merges models (mergekit's config and methods), streaming safetensors tensor by tensor. \
                       Inputs: model directories, on ports named as the config names the models.";

    fn inputs() -> Ports {
        Ports::Declared("one `dir` input per model, named as the merge config names it (or mapped by `ports:`)")
    }

    fn outputs() -> Ports {
        Ports::one("model", PortType::Dir, "The merged model, in Hugging Face layout.")
    }

    fn check(&self, params: &MergeModelsParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let mut errors = CheckErrors::new();
        for (port, ty) in cx.inputs {
            // Declared ports arrive as stand-in tables when their type is not yet known.
            if !matches!(ty, PortType::Dir) && *ty != PortType::any_table() {
                errors.push(
                    CheckError::input(port, format!("input `{port}` is a {}, not a model directory", ty.kind_name()))
                        .help("connect the `model` output of a `read_model` or `merge_models` stage"),
                );
            }
        }
        if let Some(port) = cx.declared_outputs.keys().find(|p| *p != "model") {
            errors.push(CheckError::stage(format!("`merge_models` has one output, `model`, not `{port}`")));
        }
        let inputs: Vec<String> = cx.inputs.keys().cloned().collect();
        match resolve(params, cx.params, cx.pipeline_dir, &inputs) {
            Ok(resolved) => {
                let checked = Checked { file_deps: resolved.file.into_iter().collect(), ..Default::default() };
                errors.or(checked.output("model", PortType::Dir))
            }
            Err(e) => {
                errors.push(e);
                Err(errors)
            }
        }
    }

    fn run(&self, params: MergeModelsParams, cx: RunCx) -> Work {
        let device = self.device;
        Work::blocking(move || run(&params, &cx, device))
    }
}

/// The config, where it came from, and the ports of its models.
struct Resolved {
    config: MergeConfig,
    /// The config as JSON, for `mergekit_config.yml`.
    json: Value,
    /// The config file, when `config:` names one (relative as written).
    file: Option<PathBuf>,
    /// model reference -> input port.
    ports: BTreeMap<String, String>,
    shard_bytes: usize,
}

/// Parses `5B`, `500M`, `2G`, `10K` (mergekit's `parse_kmb`; B and G both mean 10^9) or a number.
fn parse_size(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as usize),
        Value::String(s) => {
            let s = s.trim();
            let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
                'K' => (&s[..s.len() - 1], 1e3),
                'M' => (&s[..s.len() - 1], 1e6),
                'B' | 'G' => (&s[..s.len() - 1], 1e9),
                _ => (s, 1.0),
            };
            let x: f64 = num.trim().parse().ok()?;
            (x > 0.0).then_some((x * mult) as usize)
        }
        _ => None,
    }
}

/// Reads the config from `with:` or from its file, and maps its models to input ports.
/// Errors are located in `with:` or, for a file, by `file:line:col` in the message. The inline
/// mergekit keys are taken from the `with:` block as written (`raw`), so that
/// `mergekit_config.yml` records them in the user's order.
fn resolve(
    params: &MergeModelsParams,
    raw: &Value,
    pipeline_dir: &Path,
    inputs: &[String],
) -> Result<Resolved, CheckError> {
    let inline: serde_json::Map<String, Value> = raw
        .as_object()
        .map(|m| {
            m.iter().filter(|(k, _)| SCHEMA_KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
        })
        .unwrap_or_default();
    let (json, file) = match &params.config {
        Some(path) => {
            if let Some(k) = inline.keys().next() {
                return Err(CheckError::param(
                    &[k],
                    format!("`{k}` is given both here and in the config file `{path}`"),
                )
                .help("keep the mergekit keys in one place: the file, or this `with:` block"));
            }
            let full = drover_engine::paths::resolve(pipeline_dir, path);
            let text = std::fs::read_to_string(&full).map_err(|e| {
                CheckError::param(&["config"], format!("cannot read {}: {e}", full.display()))
                    .help("a relative path is read from the pipeline's directory")
            })?;
            let node = drover_engine::yaml::parse(&text).map_err(|errs| {
                let e = &errs[0];
                let (l, c) = line_col(&text, e.span.offset);
                CheckError::param(&["config"], format!("{path}:{l}:{c}: {}", e.message))
            })?;
            let json = node.to_json();
            if let Err(e) = MergeConfig::parse(&json) {
                let offset = node.at_path(&e.path).map(|n| n.span.offset).unwrap_or(0);
                let (l, c) = line_col(&text, offset);
                let mut err = CheckError::param(&["config"], format!("{path}:{l}:{c}: {}", e.message));
                err.help = e.help;
                return Err(err);
            }
            (json, Some(PathBuf::from(path)))
        }
        None => (Value::Object(inline), None),
    };
    let config = MergeConfig::parse(&json).map_err(|e: ConfigError| {
        let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
        let mut err = if path.is_empty() { CheckError::stage(e.message) } else { CheckError::param(&path, e.message) };
        err.help = e.help;
        err
    })?;
    let mut ports = BTreeMap::new();
    for model in config.referenced_models() {
        let port = params.ports.get(&model).cloned().unwrap_or_else(|| model.clone());
        if !inputs.contains(&port) {
            let listed = if inputs.is_empty() { "none".to_string() } else { inputs.join(", ") };
            return Err(CheckError::stage(format!("model `{model}` of the merge config is not an input of this stage"))
                .help(if model.contains('/') || model.contains(' ') {
                    format!("connect it with `in: {{ NAME: STAGE }}` and map it with `ports: {{\"{model}\": NAME}}` (inputs: {listed})")
                } else {
                    format!("connect it with `in: {{ {model}: STAGE }}`, or map it to an input with `ports:` (inputs: {listed})")
                }));
        }
        ports.insert(model, port);
    }
    for (model, port) in &params.ports {
        if !ports.contains_key(model) {
            return Err(CheckError::param(&["ports", model], format!("the merge config names no model `{model}`")));
        }
        if !inputs.contains(port) {
            return Err(CheckError::param(&["ports", model], format!("no input port `{port}`")));
        }
    }
    for port in inputs {
        if !ports.values().any(|p| p == port) {
            return Err(CheckError::input(port, format!("input `{port}` is not a model of the merge config"))
                .help("name it in `models:`, `slices:`, `base_model` or `tokenizer_source`, or remove it"));
        }
    }
    let shard_bytes = match &params.out_shard_size {
        None => 5_000_000_000,
        Some(v) => parse_size(v).ok_or_else(|| {
            CheckError::param(&["out_shard_size"], format!("cannot read {v} as a size"))
                .help("a number of bytes, or with a suffix: `500M`, `5B` (B and G are 10^9)")
        })?,
    };
    Ok(Resolved { config, json, file, ports, shard_bytes })
}

fn run(params: &MergeModelsParams, cx: &RunCx, device: compute::DeviceChoice) -> Result<(), OpError> {
    let started = Instant::now();
    let inputs: Vec<String> = cx.inputs.keys().cloned().collect();
    let resolved = resolve(params, &cx.params, &cx.pipeline_dir, &inputs).map_err(|e| OpError::failed(e.message))?;
    let seed = params.seed.unwrap_or(cx.seed);
    let config = &resolved.config;

    let mut models = Vec::new();
    for (reference, port) in &resolved.ports {
        let dir = cx.input(port)?.path.clone();
        let weights = ModelWeights::open(&dir).map_err(|e| OpError::failed(format!("model `{reference}`: {e}")))?;
        let config_path = dir.join("config.json");
        let config_json: Value = std::fs::read_to_string(&config_path)
            .map_err(|e| OpError::failed(format!("model `{reference}`: cannot read {}: {e}", config_path.display())))
            .and_then(|t| {
                serde_json::from_str(&t).map_err(|e| {
                    OpError::failed(format!("model `{reference}`: {} is not JSON: {e}", config_path.display()))
                })
            })?;
        models.push(plan::Model { reference: reference.clone(), weights, config: config_json });
    }
    let plan = plan::plan(config, &models).map_err(OpError::failed)?;
    // A GPU takes the arithmetic-heavy steps (see `device`); the CPU is the fallback.
    let compute = compute::resolve(device)?;
    let on_device = (compute.backend == compute::Backend::Wgpu).then_some(&compute.device);

    let out_dir = cx.output("model")?.path.clone();
    std::fs::create_dir_all(&out_dir).map_err(|e| OpError::io(format!("cannot create {}", out_dir.display()), e))?;
    let planned: Vec<PlannedTensor> =
        plan.tensors.iter().map(|t| PlannedTensor { name: t.name.clone(), shape: t.shape.clone() }).collect();
    let mut writer = ShardWriter::new(&out_dir, plan.out_dtype, &planned, resolved.shard_bytes);

    let total_elements: usize = plan.tensors.iter().map(|t| t.numel()).sum();
    cx.progress.set_total(total_elements as u64);
    cx.progress.message(&format!("{} merge of {} tensors", plan.method, plan.tensors.len()));
    let names: Vec<&str> = models.iter().map(|m| m.reference.as_str()).collect();
    let out_dtype = plan.out_dtype;
    let mut buffers: Vec<Vec<f32>> = Vec::new();
    let mut out = Vec::new();
    let mut bytes_read = 0usize;
    // Seconds spent reading (and converting) inputs and merging; writing is timed by the writer.
    let mut phases = [0f64; 2];
    // Tensors merged straight from the stored bytes, and tensors whose arithmetic ran on the
    // compute device.
    let mut streamed = 0usize;
    let mut device_tensors = 0usize;
    // Shards are written on their own thread, one tensor behind the merge: disk writes overlap
    // the next tensor's arithmetic. The rendezvous channel keeps two encoded tensors alive at
    // most (one being written, one being filled); written buffers come back for reuse.
    let (to_writer, from_merge) = std::sync::mpsc::sync_channel::<(String, Vec<u8>)>(0);
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    let (merged, written) = std::thread::scope(|scope| {
        let writer_thread = scope.spawn(move || -> Result<(Vec<String>, f64), String> {
            let mut secs = 0.0;
            for (name, bytes) in from_merge {
                let t = Instant::now();
                writer.write_bytes(&name, &bytes)?;
                secs += t.elapsed().as_secs_f64();
                let _ = recycle.send(bytes);
            }
            Ok((writer.finish()?, secs))
        });
        let merged = (|| -> Result<(), OpError> {
            for (i, t) in plan.tensors.iter().enumerate() {
                // Let the kernel read the next tensor from disk while this one is merged.
                for src in plan.tensors.get(i + 1).map(|n| &n.sources[..]).unwrap_or_default() {
                    models[src.model].weights.prefetch(&src.name);
                }
                let mut out_bytes = recycled.try_recv().unwrap_or_default();
                let t0 = Instant::now();
                if methods::streams(plan.method, t) {
                    let inputs = t
                        .sources
                        .iter()
                        .map(|s| models[s.model].weights.bytes(&s.name))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(OpError::failed)?;
                    bytes_read += inputs.iter().map(|(b, _)| b.len()).sum::<usize>();
                    methods::merge_streamed(plan.method, t, &inputs, out_dtype, &mut out_bytes)
                        .map_err(OpError::failed)?;
                    for s in &t.sources {
                        models[s.model].weights.release(&s.name);
                    }
                    streamed += 1;
                    phases[1] += t0.elapsed().as_secs_f64();
                } else {
                    buffers.resize_with(t.sources.len(), Vec::new);
                    let mut source_names = Vec::with_capacity(t.sources.len());
                    for (buf, src) in buffers.iter_mut().zip(&t.sources) {
                        let m = &models[src.model];
                        m.weights.read_f32(&src.name, buf).map_err(OpError::failed)?;
                        bytes_read += m.weights.entry(&src.name).map(|e| e.dtype.size() * t.numel()).unwrap_or(0);
                        source_names.push(names[src.model]);
                    }
                    let t1 = Instant::now();
                    phases[0] += (t1 - t0).as_secs_f64();
                    methods::merge(plan.method, t, &mut buffers, &source_names, seed, on_device, &mut out)
                        .map_err(OpError::failed)?;
                    if on_device.is_some() && methods::uses_device(plan.method) {
                        device_tensors += 1;
                    }
                    weights::encode_all(out_dtype, &out, &mut out_bytes);
                    phases[1] += t1.elapsed().as_secs_f64();
                }
                if to_writer.send((t.name.clone(), out_bytes)).is_err() {
                    // The writer stopped on an error; joining it below reports it.
                    break;
                }
                cx.progress.advance(t.numel() as u64);
            }
            Ok(())
        })();
        drop(to_writer);
        let written = writer_thread.join().unwrap_or_else(|_| Err("the shard writer panicked".into()));
        (merged, written)
    });
    let (shards, write_secs) = written.map_err(OpError::failed)?;
    merged?;
    let device = if device_tensors > 0 {
        format!("{} for {device_tensors} of the tensors, the CPU for the rest", compute.describe())
    } else {
        format!("cpu ({} threads)", par::threads())
    };
    cx.notes.set(compute::NOTE, if device_tensors > 0 { compute.describe() } else { "cpu".to_string() });

    write_config(&models[plan.config_model], &plan, &out_dir)?;
    copy_tokenizer(cx, &resolved, &models[plan.tokenizer_model], &out_dir)?;
    let record = serde_json::to_string_pretty(&resolved.json).expect("JSON values serialise");
    std::fs::write(out_dir.join("mergekit_config.yml"), record + "\n")
        .map_err(|e| OpError::io("cannot write mergekit_config.yml", e))?;

    let secs = started.elapsed().as_secs_f64();
    let log = format!(
        "{} merge: {} tensors ({} layers) from {} models, {:.1} MB read, {:.1} MB written in {} shard(s) as {:?}, \
         {:.2}s ({:.2} GB/s of input)\nphases: read {:.2}s, merge {:.2}s, write {:.2}s (on its own thread, overlapping the others; \
         {streamed} of the tensors merged block by block from the stored bytes, their reading counted as merging)\n\
         device: {device}; largest tensor: {} elements; seed: {seed}\n",
        plan.method,
        plan.tensors.len(),
        plan.num_layers,
        models.len(),
        bytes_read as f64 / 1e6,
        (total_elements * plan.out_dtype.size()) as f64 / 1e6,
        shards.len(),
        plan.out_dtype,
        secs,
        bytes_read as f64 / 1e9 / secs.max(1e-9),
        phases[0],
        phases[1],
        write_secs,
        plan.largest_tensor(),
    );
    std::fs::write(&cx.log_path, log).map_err(|e| OpError::io(format!("cannot write {}", cx.log_path.display()), e))?;
    Ok(())
}

/// Writes the output's `config.json`: the config model's, with the layer count and dtype of
/// the merge.
fn write_config(model: &plan::Model, plan: &plan::Plan, out_dir: &Path) -> Result<(), OpError> {
    let mut config = model.config.clone();
    if let Some(obj) = config.as_object_mut() {
        for key in ["num_hidden_layers", "n_layer", "num_layers"] {
            if obj.contains_key(key) {
                obj.insert(key.to_string(), Value::from(plan.num_layers));
                break;
            }
        }
        let dtype = match plan.out_dtype {
            weights::WeightDtype::F32 => "float32",
            weights::WeightDtype::F16 => "float16",
            weights::WeightDtype::Bf16 => "bfloat16",
        };
        for key in ["torch_dtype", "dtype"] {
            if obj.contains_key(key) {
                obj.insert(key.to_string(), Value::from(dtype));
            }
        }
    }
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
    std::fs::write(out_dir.join("config.json"), text + "\n").map_err(|e| OpError::io("cannot write config.json", e))
}

/// Copies the tokenizer (every file of the model directory that is not weights, an index,
/// `config.json`, a README or an earlier merge's record).
fn copy_tokenizer(cx: &RunCx, resolved: &Resolved, model: &plan::Model, out_dir: &Path) -> Result<(), OpError> {
    let port = &resolved.ports[&model.reference];
    let dir = &cx.input(port)?.path;
    let entries = std::fs::read_dir(dir).map_err(|e| OpError::io(format!("cannot read {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let weights = [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json"];
        let skip = !path.is_file()
            || weights.iter().any(|w| name.ends_with(w))
            || ["config.json", "README.md", "mergekit_config.yml"].contains(&name.as_str());
        if !skip {
            std::fs::copy(&path, out_dir.join(&name))
                .map_err(|e| OpError::io(format!("cannot copy {}", path.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_mergekit() {
        assert_eq!(parse_size(&Value::from("5B")), Some(5_000_000_000));
        assert_eq!(parse_size(&Value::from("500M")), Some(500_000_000));
        assert_eq!(parse_size(&Value::from("1.5k")), Some(1500));
        assert_eq!(parse_size(&Value::from(4096)), Some(4096));
        assert_eq!(parse_size(&Value::from("lots")), None);
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        assert_eq!(line_col("a: 1\nbb: 2\n", 5), (2, 1));
        assert_eq!(line_col("a: 1\nbb: 2\n", 9), (2, 5));
    }
}
