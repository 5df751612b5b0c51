//! The merge plan: which output tensors there are, where each one's inputs come from, and the
//! parameters it is merged with, all decided (and every mismatch found) before any tensor is
//! read.
//!
//! Layers are found from tensor names, without a table of architectures: a name with a numeric
//! segment after `layers`, `h`, `blocks`, `block` or `layer` (`model.layers.3.mlp.up_proj.weight`)
//! belongs to that layer. As in mergekit's planner (`plan.py`, release 0.1.5), the tensors
//! outside the layers are merged from the first slice's sources when they come before the layers
//! (embeddings: names containing `embed`, or `wte`/`wpe`) and from the last slice's sources
//! otherwise (final norm, `lm_head`), both at t = 0 (releases before 0.1.5 read the last ones at
//! t = 1; drover follows the current release, against which users check their merges). The
//! layers of each slice are numbered on from the previous slice's, with t = i / (n - 1) for
//! layer i of an n-layer slice.

use std::collections::BTreeMap;

use super::config::{MergeConfig, Method, OutputSlice, Reader, Scalar};
use super::weights::{ModelWeights, WeightDtype};

/// One input model, opened.
pub struct Model {
    /// The name the config uses for it.
    pub reference: String,
    pub weights: ModelWeights,
    /// Its `config.json`.
    pub config: serde_json::Value,
}

impl Model {
    /// The layer count from `config.json` (`num_hidden_layers`, `n_layer` or `num_layers`), else
    /// one more than the highest layer index among the tensors.
    pub fn num_layers(&self) -> usize {
        for key in ["num_hidden_layers", "n_layer", "num_layers"] {
            if let Some(n) = self.config.get(key).and_then(serde_json::Value::as_u64) {
                return n as usize;
            }
        }
        self.weights.names().filter_map(|n| split_layer(n).map(|(_, i, _)| i + 1)).max().unwrap_or(0)
    }
}

/// `(prefix, index, suffix)` for a layer tensor's name.
pub fn split_layer(name: &str) -> Option<(&str, usize, &str)> {
    let mut offset: usize = 0;
    let mut previous = "";
    for seg in name.split('.') {
        if !seg.is_empty()
            && seg.bytes().all(|b| b.is_ascii_digit())
            && matches!(previous, "layers" | "h" | "blocks" | "block" | "layer")
        {
            let index = seg.parse().ok()?;
            let prefix = &name[..offset.saturating_sub(1)];
            let suffix = name.get(offset + seg.len() + 1..).unwrap_or("");
            return Some((prefix, index, suffix));
        }
        previous = seg;
        offset += seg.len() + 1;
    }
    None
}

/// The hint for models whose tensors do not line up.
const SAME_ARCH: &str = "merge models of one architecture and size (fine-tunes of the same base)";

fn layer_name(prefix: &str, index: usize, suffix: &str) -> String {
    if suffix.is_empty() { format!("{prefix}.{index}") } else { format!("{prefix}.{index}.{suffix}") }
}

/// Whether a tensor outside the layers comes before them.
fn is_pre(name: &str) -> bool {
    name.contains("embed") || name.split('.').any(|s| s == "wte" || s == "wpe")
}

/// The values of a method's per-tensor parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Global {
    pub normalize: bool,
    pub rescale: bool,
    pub lambda: f64,
    pub t: f64,
    pub filter_wise: bool,
}

/// The values of a method's per-model parameters, for one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct PerModel {
    pub weight: f64,
    pub density: f64,
    pub gamma: f64,
    pub epsilon: f64,
    pub scale: f64,
}

/// One input of an output tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// Index into the models.
    pub model: usize,
    /// The tensor's name in that model.
    pub name: String,
    pub params: PerModel,
}

/// One output tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub shape: Vec<usize>,
    pub sources: Vec<Source>,
    /// Which source is the base model's, for methods that have one.
    pub base: Option<usize>,
    pub global: Global,
}

impl TensorPlan {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Everything the merge will do.
#[derive(Debug)]
pub struct Plan {
    pub method: Method,
    pub tensors: Vec<TensorPlan>,
    /// Layers in the output.
    pub num_layers: usize,
    pub out_dtype: WeightDtype,
    /// The model whose `config.json` the output starts from.
    pub config_model: usize,
    /// The model whose tokenizer files are copied.
    pub tokenizer_model: usize,
}

impl Plan {
    pub fn largest_tensor(&self) -> usize {
        self.tensors.iter().map(TensorPlan::numel).max().unwrap_or(0)
    }
}

/// Plans a merge of `models` (every model the config references, in any order).
pub fn plan(config: &MergeConfig, models: &[Model]) -> Result<Plan, String> {
    let index_of = |reference: &str| -> Result<usize, String> {
        models
            .iter()
            .position(|m| m.reference == reference)
            .ok_or_else(|| format!("model `{reference}` is named in the config but was not given"))
    };
    // Resolve `models:`-style slices to each model's full layer range.
    let mut slices: Vec<OutputSlice> = config.slices.clone();
    for s in &mut slices {
        for src in &mut s.sources {
            if src.layer_range.is_none() {
                src.layer_range = Some((0, models[index_of(&src.model)?].num_layers()));
            }
        }
        let lens: Vec<(String, usize)> =
            s.sources.iter().map(|src| (src.model.clone(), src.layer_range.map(|(a, b)| b - a).unwrap_or(0))).collect();
        if lens.iter().any(|(_, l)| *l != lens[0].1) {
            let listed: Vec<String> = lens.iter().map(|(m, l)| format!("{m}: {l}")).collect();
            return Err(format!(
                "the models have different numbers of layers ({}); merge them with `slices:` and matching `layer_range`s",
                listed.join(", ")
            ));
        }
    }
    let mut tensors = Vec::new();
    let mut planner = Planner { config, models, tensors: &mut tensors, index_of: &index_of };

    // Tensors before the layers, from the first slice at t = 0.
    let first = &slices[0];
    for name in outside_names(first, models, &index_of, true)? {
        planner.tensor(first, 0.0, &name, |_| Ok(name.clone()))?;
    }
    let mut out_layer = 0;
    for s in &slices {
        let (start, end) = s.sources[0].layer_range.expect("resolved above");
        let n = end - start;
        let lead = index_of(&s.sources[0].model)?;
        for offset in 0..n {
            let t = if n > 1 { offset as f64 / (n - 1) as f64 } else { 1.0 };
            let in_index = start + offset;
            let mut names: Vec<(String, String)> = models[lead]
                .weights
                .names()
                .filter_map(split_layer)
                .filter(|(_, i, _)| *i == in_index)
                .map(|(p, _, s)| (p.to_string(), s.to_string()))
                .collect();
            if names.is_empty() {
                return Err(format!(
                    "model `{}` has no tensors for layer {in_index} (its layer_range is [{start}, {end}]); \
                     keep layer_range within the model's num_hidden_layers",
                    models[lead].reference
                ));
            }
            names.sort();
            for (prefix, suffix) in &names {
                let out_name = layer_name(prefix, out_layer, suffix);
                planner.tensor(s, t, &out_name, |src| {
                    let (a, _) = src_range(s, src);
                    Ok(layer_name(prefix, a + offset, suffix))
                })?;
            }
            // Every source must have the same tensors in the layer.
            for (j, src) in s.sources.iter().enumerate().skip(1) {
                let m = &models[index_of(&src.model)?];
                let (a, _) = src_range(s, j);
                let extra: Vec<&str> = m
                    .weights
                    .names()
                    .filter(|n| {
                        split_layer(n).is_some_and(|(p, i, suf)| {
                            i == a + offset && !names.iter().any(|(pp, ss)| pp == p && ss == suf)
                        })
                    })
                    .collect();
                if let Some(first_extra) = extra.first() {
                    return Err(format!(
                        "tensor `{first_extra}` of model `{}` has no counterpart in model `{}`: the models' layers differ",
                        src.model, s.sources[0].model
                    ));
                }
            }
            out_layer += 1;
        }
    }
    // Tensors after the layers, from the last slice, also at t = 0.
    let last = slices.last().expect("a config has at least one slice");
    for name in outside_names(last, models, &index_of, false)? {
        planner.tensor(last, 0.0, &name, |_| Ok(name.clone()))?;
    }

    let config_model = match &config.base_model {
        Some(b) => index_of(b)?,
        None => index_of(&slices[0].sources[0].model)?,
    };
    let tokenizer_model = match config.tokenizer_source.as_deref() {
        None | Some("base") => config_model,
        Some(other) => index_of(other)?,
    };
    let out_dtype = config.out_dtype.or(config.dtype).unwrap_or_else(|| {
        tensors
            .first()
            .and_then(|t| models[config_model].weights.entry(&t.sources[0].name).map(|e| e.dtype))
            .unwrap_or(WeightDtype::F32)
    });
    Ok(Plan { method: config.method, tensors, num_layers: out_layer, out_dtype, config_model, tokenizer_model })
}

fn src_range(s: &OutputSlice, j: usize) -> (usize, usize) {
    s.sources[j].layer_range.expect("resolved before planning")
}

/// The names outside the layers, before (`pre`) or after them, that a slice's sources hold.
/// Every source must hold the same ones.
fn outside_names(
    s: &OutputSlice,
    models: &[Model],
    index_of: &dyn Fn(&str) -> Result<usize, String>,
    pre: bool,
) -> Result<Vec<String>, String> {
    let lists: Vec<(String, Vec<String>)> = s
        .sources
        .iter()
        .map(|src| {
            let m = &models[index_of(&src.model)?];
            let names =
                m.weights.names().filter(|n| split_layer(n).is_none() && is_pre(n) == pre).map(String::from).collect();
            Ok((src.model.clone(), names))
        })
        .collect::<Result<_, String>>()?;
    let (lead, names) = &lists[0];
    for (model, other) in &lists[1..] {
        if let Some(missing) = names.iter().find(|n| !other.contains(n)) {
            return Err(format!("tensor `{missing}` is in model `{lead}` but not in model `{model}`; {SAME_ARCH}"));
        }
        if let Some(extra) = other.iter().find(|n| !names.contains(n)) {
            return Err(format!("tensor `{extra}` is in model `{model}` but not in model `{lead}`; {SAME_ARCH}"));
        }
    }
    Ok(names.clone())
}

struct Planner<'a> {
    config: &'a MergeConfig,
    models: &'a [Model],
    tensors: &'a mut Vec<TensorPlan>,
    index_of: &'a dyn Fn(&str) -> Result<usize, String>,
}

impl Planner<'_> {
    /// Plans one output tensor of a slice; `input_name` gives the tensor's name in source `j`.
    fn tensor(
        &mut self,
        slice: &OutputSlice,
        t: f64,
        out_name: &str,
        input_name: impl Fn(usize) -> Result<String, String>,
    ) -> Result<(), String> {
        let method = self.config.method;
        let reader = Reader { config: self.config, slice, t };
        let base_ref = self.config.base_of(slice);
        let required = |name: &str, what: String| {
            format!("no value of `{name}` applies to {what}: its settings are all filtered to other tensors")
        };
        let global_value = |name: &str| -> Result<Scalar, String> {
            let default = method.global_params().into_iter().find(|(n, _)| *n == name).and_then(|(_, d)| d);
            reader.get(name, None, out_name).or(default).ok_or_else(|| required(name, format!("tensor `{out_name}`")))
        };
        let b = |name: &str| -> Result<bool, String> {
            match method.global_params().iter().any(|(n, _)| *n == name) {
                false => Ok(false),
                true => global_value(name)?.as_bool().ok_or_else(|| format!("`{name}` must be true or false")),
            }
        };
        let f = |name: &str, fallback: f64| -> Result<f64, String> {
            match method.global_params().iter().any(|(n, _)| *n == name) {
                false => Ok(fallback),
                true => global_value(name)?.as_f64().ok_or_else(|| format!("`{name}` must be a number")),
            }
        };
        let global = Global {
            normalize: b("normalize")?,
            rescale: b("rescale")?,
            lambda: f("lambda", 1.0)?,
            t: f("t", 0.0)?,
            filter_wise: b("filter_wise")?,
        };
        let mut sources = Vec::new();
        let mut base = None;
        let mut shape: Option<(String, Vec<usize>)> = None;
        for (j, src) in slice.sources.iter().enumerate() {
            let model = (self.index_of)(&src.model)?;
            let name = input_name(j)?;
            let Some(entry) = self.models[model].weights.entry(&name) else {
                return Err(format!("tensor `{name}` is missing from model `{}`; {SAME_ARCH}", src.model));
            };
            match &shape {
                None => shape = Some((src.model.clone(), entry.shape.clone())),
                Some((first, s)) if *s != entry.shape => {
                    let vocab = is_pre(&name) || name.contains("lm_head");
                    let what = if vocab && s.len() == entry.shape.len() && s[1..] == entry.shape[1..] {
                        format!(
                            "the vocabulary sizes differ: `{name}` has {} rows in model `{first}` and {} in model `{}`; \
                             drover does not merge vocabularies: merge models that share a tokenizer, or resize \
                             one model's embeddings first",
                            s[0], entry.shape[0], src.model
                        )
                    } else {
                        format!(
                            "tensor `{name}` has shape {s:?} in model `{first}` but {:?} in model `{}`; {SAME_ARCH}",
                            entry.shape, src.model
                        )
                    };
                    return Err(what);
                }
                Some(_) => {}
            }
            let is_base = Some(src.model.as_str()) == base_ref;
            if is_base {
                base = Some(j);
            }
            let mut values: BTreeMap<&str, f64> = BTreeMap::new();
            for (pname, default) in method.model_params() {
                let v = match reader.get(pname, Some(&src.model), &name).or(default) {
                    Some(v) => v.as_f64().ok_or_else(|| format!("`{pname}` must be a number"))?,
                    None if is_base && method != Method::Linear => 0.0,
                    None => return Err(required(pname, format!("tensor `{name}` of model `{}`", src.model))),
                };
                values.insert(pname, v);
            }
            let get = |n: &str, d: f64| values.get(n).copied().unwrap_or(d);
            let params = PerModel {
                weight: get("weight", 1.0),
                density: get("density", 1.0),
                gamma: get("gamma", 0.01),
                epsilon: get("epsilon", 0.15),
                scale: get("scale", 1.0),
            };
            // Thinning that cannot work is found here, before anything is written.
            let sparsify = method.task_arithmetic().and_then(|ta| ta.sparsify);
            if !is_base && params.density < 1.0 {
                let numel: usize = entry.shape.iter().product();
                let (d, eps) = (params.density, params.epsilon);
                if sparsify == Some(super::config::Sparsify::Magnitude) && (d * numel as f64) as usize == 0 {
                    return Err(format!(
                        "density {d} keeps none of the {numel} elements of tensor `{name}` of model `{}` \
                         (mergekit refuses this too); raise the density for this tensor, e.g. with a \
                         `{{filter, value}}` list",
                        src.model
                    ));
                }
                if sparsify == Some(super::config::Sparsify::DellaMagprune) && (d + eps >= 1.0 || d - eps <= 0.0) {
                    return Err(format!(
                        "density {d} ± epsilon {eps} leaves (0, 1) for tensor `{name}` of model `{}`; \
                         choose epsilon below both density and 1 - density",
                        src.model
                    ));
                }
            }
            sources.push(Source { model, name, params });
        }
        let (_, shape) = shape.expect("a slice has sources");
        self.tensors.push(TensorPlan { name: out_name.to_string(), shape, sources, base, global });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_split_at_the_index() {
        assert_eq!(split_layer("model.layers.12.mlp.up_proj.weight"), Some(("model.layers", 12, "mlp.up_proj.weight")));
        assert_eq!(split_layer("transformer.h.0.attn.c_attn.weight"), Some(("transformer.h", 0, "attn.c_attn.weight")));
        assert_eq!(split_layer("model.embed_tokens.weight"), None);
        assert_eq!(split_layer("lm_head.weight"), None);
        assert_eq!(layer_name("model.layers", 3, "mlp.up_proj.weight"), "model.layers.3.mlp.up_proj.weight");
    }

    #[test]
    fn embeddings_come_before_the_layers() {
        assert!(is_pre("model.embed_tokens.weight"));
        assert!(is_pre("transformer.wte.weight"));
        assert!(!is_pre("model.norm.weight"));
        assert!(!is_pre("lm_head.weight"));
    }
}
