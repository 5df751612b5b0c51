//! mergekit's configuration schema: parsing, checking, and evaluating parameters per tensor.
//!
//! The schema is mergekit's `MergeConfiguration` (`mergekit/config.py`): `merge_method`,
//! `base_model`, exactly one of `models` or `slices`, top-level `parameters`, `dtype`,
//! `out_dtype`, `tokenizer_source`. A parameter is a scalar, a list of numbers (a gradient,
//! interpolated over the layers), a list of other scalars (one picked by layer), or a list of
//! `{filter, value}` (the first whose filter is absent, `*`, or a substring of the tensor name).
//! Lookup order follows mergekit: the slice source's parameters, then the slice's, then the
//! model's (folded into the sources when `models:` is used), then the top level.
//!
//! Unlike mergekit, a parameter the method does not know is an error rather than silently
//! ignored, and numeric ranges (`density`, `gamma`, `epsilon`, `t`) are checked before any
//! tensor is read.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use super::weights::WeightDtype;

/// A problem in a config: where (a path of keys and indices below the config's root) and what.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    pub path: Vec<String>,
    pub message: String,
    pub help: Option<String>,
}

impl ConfigError {
    fn at(path: &[&str], message: impl Into<String>) -> ConfigError {
        ConfigError { path: path.iter().map(|s| s.to_string()).collect(), message: message.into(), help: None }
    }

    fn at_owned(path: Vec<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { path, message: message.into(), help: None }
    }

    fn help(mut self, help: impl Into<String>) -> ConfigError {
        self.help = Some(help.into());
        self
    }
}

/// A merge method, with mergekit's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Linear,
    Slerp,
    TaskArithmetic,
    Ties,
    DareLinear,
    DareTies,
    Breadcrumbs,
    BreadcrumbsTies,
    Della,
    DellaLinear,
    ModelStock,
    Passthrough,
}

/// How a task-arithmetic method thins each task vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sparsify {
    /// Keep the `density` fraction of largest magnitudes (TIES).
    Magnitude,
    /// Keep each element with probability `density` (DARE).
    Random,
    /// Drop the `gamma` fraction of largest magnitudes and enough of the smallest (breadcrumbs).
    MagnitudeOutliers,
    /// Keep with a probability that grows with the magnitude's rank in its row (DELLA).
    DellaMagprune,
}

/// The shape of a generalised task-arithmetic method (mergekit's registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskArithmetic {
    pub sparsify: Option<Sparsify>,
    /// TIES sign consensus ("sum").
    pub consensus: bool,
    pub default_normalize: bool,
    pub default_rescale: bool,
}

impl Method {
    pub const ALL: [Method; 12] = [
        Method::Linear,
        Method::Slerp,
        Method::TaskArithmetic,
        Method::Ties,
        Method::DareLinear,
        Method::DareTies,
        Method::Breadcrumbs,
        Method::BreadcrumbsTies,
        Method::Della,
        Method::DellaLinear,
        Method::ModelStock,
        Method::Passthrough,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::Slerp => "slerp",
            Method::TaskArithmetic => "task_arithmetic",
            Method::Ties => "ties",
            Method::DareLinear => "dare_linear",
            Method::DareTies => "dare_ties",
            Method::Breadcrumbs => "breadcrumbs",
            Method::BreadcrumbsTies => "breadcrumbs_ties",
            Method::Della => "della",
            Method::DellaLinear => "della_linear",
            Method::ModelStock => "model_stock",
            Method::Passthrough => "passthrough",
        }
    }

    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The task-arithmetic family's settings, for the methods in it.
    pub fn task_arithmetic(self) -> Option<TaskArithmetic> {
        let ta = |sparsify, consensus, default_normalize, default_rescale| {
            Some(TaskArithmetic { sparsify, consensus, default_normalize, default_rescale })
        };
        match self {
            Method::TaskArithmetic => ta(None, false, false, false),
            Method::Ties => ta(Some(Sparsify::Magnitude), true, true, false),
            Method::DareTies => ta(Some(Sparsify::Random), true, false, true),
            Method::DareLinear => ta(Some(Sparsify::Random), false, false, true),
            Method::Breadcrumbs => ta(Some(Sparsify::MagnitudeOutliers), false, false, false),
            Method::BreadcrumbsTies => ta(Some(Sparsify::MagnitudeOutliers), true, false, false),
            Method::Della => ta(Some(Sparsify::DellaMagprune), true, true, true),
            Method::DellaLinear => ta(Some(Sparsify::DellaMagprune), false, false, true),
            _ => None,
        }
    }

    /// Whether the method needs `base_model`.
    pub fn needs_base(self) -> bool {
        self.task_arithmetic().is_some() || matches!(self, Method::Slerp | Method::ModelStock)
    }

    /// Parameters read once per tensor (mergekit's `parameters()`), with their defaults.
    pub fn global_params(self) -> Vec<(&'static str, Option<Scalar>)> {
        let b = |v| Some(Scalar::Bool(v));
        match self {
            Method::Linear => vec![("normalize", b(true))],
            Method::Slerp => vec![("t", None)],
            Method::ModelStock => vec![("filter_wise", b(false))],
            Method::Passthrough => vec![],
            m => {
                let ta = m.task_arithmetic().expect("the rest are task arithmetic");
                vec![
                    ("int8_mask", b(false)),
                    ("normalize", b(ta.default_normalize)),
                    ("rescale", b(ta.default_rescale)),
                    ("lambda", Some(Scalar::Num(1.0))),
                ]
            }
        }
    }

    /// Parameters read per model and tensor (mergekit's `tensor_parameters()`), with their
    /// defaults; `None` marks a required one (never required of the base model).
    pub fn model_params(self) -> Vec<(&'static str, Option<Scalar>)> {
        let n = |v| Some(Scalar::Num(v));
        match self {
            Method::Linear => vec![("weight", None)],
            Method::Passthrough => vec![("scale", n(1.0))],
            Method::Slerp | Method::ModelStock => vec![],
            m => {
                let ta = m.task_arithmetic().expect("the rest are task arithmetic");
                let mut p = vec![("weight", None), ("density", n(1.0))];
                match ta.sparsify {
                    Some(Sparsify::MagnitudeOutliers) => p.push(("gamma", n(0.01))),
                    Some(Sparsify::DellaMagprune) => p.push(("epsilon", n(0.15))),
                    _ => {}
                }
                p
            }
        }
    }

    fn knows(self, param: &str) -> bool {
        self.global_params().iter().chain(self.model_params().iter()).any(|(n, _)| *n == param)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value of a parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Num(f64),
    Bool(bool),
    Str(String),
}

impl Scalar {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Num(v) => Some(*v),
            Scalar::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Scalar::Str(s) => s.trim().parse().ok(),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Scalar::Bool(b) => Some(*b),
            Scalar::Num(v) => Some(*v != 0.0),
            Scalar::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Some(true),
                "false" | "no" | "0" => Some(false),
                _ => None,
            },
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Num(v) => write!(f, "{v}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A parameter's setting, as written.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Value(Scalar),
    /// Numbers interpolated over the layers of a slice.
    Gradient(Vec<f64>),
    /// Other scalars, one picked by position over the layers.
    Choices(Vec<Scalar>),
    /// `{filter, value}` entries; the first that matches the tensor's name applies.
    Conditional(Vec<(Option<String>, Setting)>),
}

impl Setting {
    fn parse(v: &Value, path: &[&str]) -> Result<Setting, ConfigError> {
        let scalar = |v: &Value| match v {
            Value::Number(n) => n.as_f64().map(Scalar::Num),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::String(s) => Some(Scalar::Str(s.clone())),
            _ => None,
        };
        if let Some(s) = scalar(v) {
            return Ok(Setting::Value(s));
        }
        let conditional = |v: &Value, path: &[&str]| -> Result<(Option<String>, Setting), ConfigError> {
            let Value::Object(map) = v else { unreachable!("checked by the caller") };
            if let Some(k) = map.keys().find(|k| *k != "filter" && *k != "value") {
                return Err(ConfigError::at(path, format!("unknown key `{k}` in a conditional parameter")).help(
                    "a conditional parameter is `{filter: SUBSTRING, value: V}`; leave out `filter` for the default",
                ));
            }
            let filter = match map.get("filter") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(ConfigError::at(path, format!("`filter` must be a string, not {other}")));
                }
            };
            let Some(value) = map.get("value") else {
                return Err(ConfigError::at(path, "a conditional parameter needs `value`"));
            };
            let mut inner_path = path.to_vec();
            inner_path.push("value");
            let value = Setting::parse(value, &inner_path)?;
            if matches!(value, Setting::Conditional(_)) {
                return Err(ConfigError::at(&inner_path, "conditional parameters do not nest"));
            }
            Ok((filter, value))
        };
        match v {
            Value::Object(_) => Ok(Setting::Conditional(vec![conditional(v, path)?])),
            Value::Array(items) if items.is_empty() => Err(ConfigError::at(path, "an empty list is not a setting")),
            Value::Array(items) => {
                if items.iter().all(|i| matches!(i, Value::Number(_))) {
                    return Ok(Setting::Gradient(items.iter().filter_map(Value::as_f64).collect()));
                }
                if let Some(all) = items.iter().map(scalar).collect::<Option<Vec<_>>>() {
                    return Ok(Setting::Choices(all));
                }
                if items.iter().all(Value::is_object) {
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let idx = i.to_string();
                        let mut p = path.to_vec();
                        p.push(&idx);
                        out.push(conditional(item, &p)?);
                    }
                    return Ok(Setting::Conditional(out));
                }
                Err(ConfigError::at(
                    path,
                    "a list setting must hold only numbers, only scalars, or only `{filter, value}` entries",
                ))
            }
            _ => Err(ConfigError::at(path, format!("expected a number, a list or `{{filter, value}}`, not {v}"))),
        }
    }

    /// The value for a tensor at position `t` in [0, 1] along its slice (mergekit's
    /// `evaluate_setting`); `None` when no conditional entry matches.
    pub fn evaluate(&self, tensor: &str, t: f64) -> Option<Scalar> {
        match self {
            Setting::Value(s) => Some(s.clone()),
            Setting::Gradient(v) => {
                let scaled = t * (v.len() - 1) as f64;
                let i0 = scaled as usize;
                let i1 = (i0 + 1).min(v.len() - 1);
                let frac = scaled - i0 as f64;
                Some(Scalar::Num((1.0 - frac) * v[i0] + frac * v[i1]))
            }
            Setting::Choices(v) => Some(v[(t * (v.len() - 1) as f64) as usize].clone()),
            Setting::Conditional(entries) => entries
                .iter()
                .find(|(filter, _)| match filter.as_deref() {
                    None | Some("*") => true,
                    Some(f) => tensor.contains(f),
                })
                .and_then(|(_, v)| v.evaluate(tensor, t)),
        }
    }

    /// Every number the setting can produce at a layer (gradients interpolate between these).
    fn numbers(&self) -> Vec<f64> {
        match self {
            Setting::Value(s) => s.as_f64().into_iter().collect(),
            Setting::Gradient(v) => v.clone(),
            Setting::Choices(v) => v.iter().filter_map(Scalar::as_f64).collect(),
            Setting::Conditional(entries) => entries.iter().flat_map(|(_, s)| s.numbers()).collect(),
        }
    }
}

pub type Params = BTreeMap<String, Setting>;

/// Whether a parameter's value is in its range.
type RangeCheck = fn(f64) -> bool;

/// A model named in the config, with its parameters (`models:`).
#[derive(Clone, Debug)]
pub struct InputModel {
    pub model: String,
    pub parameters: Params,
}

/// A run of layers from one model (a slice source).
#[derive(Clone, Debug)]
pub struct SliceSource {
    pub model: String,
    /// `[start, end)`; `None` until the model's layer count is known (`models:` syntax).
    pub layer_range: Option<(usize, usize)>,
    pub parameters: Params,
}

/// One output slice: its sources are merged layer by layer.
#[derive(Clone, Debug)]
pub struct OutputSlice {
    pub sources: Vec<SliceSource>,
    pub base_model: Option<String>,
    pub parameters: Params,
}

/// A checked mergekit configuration.
#[derive(Clone, Debug)]
pub struct MergeConfig {
    pub method: Method,
    pub base_model: Option<String>,
    /// As given with `models:` (empty when `slices:` was used).
    pub models: Vec<InputModel>,
    /// As given with `slices:`, or one slice over every model (with the base added when it is
    /// not among them), as mergekit's planner normalises `models:`.
    pub slices: Vec<OutputSlice>,
    pub parameters: Params,
    pub dtype: Option<WeightDtype>,
    pub out_dtype: Option<WeightDtype>,
    pub tokenizer_source: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    merge_method: String,
    base_model: Option<String>,
    models: Option<Vec<RawModel>>,
    slices: Option<Vec<RawSlice>>,
    modules: Option<Value>,
    parameters: Option<serde_json::Map<String, Value>>,
    dtype: Option<String>,
    out_dtype: Option<String>,
    tokenizer_source: Option<String>,
    tokenizer: Option<Value>,
    chat_template: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    model: String,
    parameters: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlice {
    sources: Vec<RawSource>,
    base_model: Option<String>,
    residual_weight: Option<f64>,
    parameters: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    model: String,
    layer_range: (usize, usize),
    parameters: Option<serde_json::Map<String, Value>>,
}

/// The keys of mergekit's schema, for telling them apart from drover's own params.
pub const SCHEMA_KEYS: [&str; 11] = [
    "merge_method",
    "base_model",
    "models",
    "slices",
    "modules",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
];

impl MergeConfig {
    /// Parses and checks a config given as JSON (a `with:` block less drover's keys, or a
    /// mergekit YAML file).
    pub fn parse(value: &Value) -> Result<MergeConfig, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path: Vec<String> = e
                .path()
                .to_string()
                .split('.')
                .filter(|s| !s.is_empty() && *s != "?")
                .map(|s| s.trim_start_matches('[').trim_end_matches(']').to_string())
                .collect();
            let inner = e.into_inner().to_string();
            let help = if inner.starts_with("unknown field") {
                Some(format!("mergekit's keys are: {}", SCHEMA_KEYS.join(", ")))
            } else {
                None
            };
            ConfigError { path, message: inner, help }
        })?;
        let method = Method::parse(&raw.merge_method).ok_or_else(|| {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            let unsupported =
                ["nuslerp", "multislerp", "karcher", "sce", "ram", "ramplus_tl", "nearswap", "arcee_fusion", "lrp"];
            let msg = if unsupported.contains(&raw.merge_method.as_str()) {
                format!("merge method `{}` is one of mergekit's that drover does not implement", raw.merge_method)
            } else {
                format!("unknown merge method `{}`", raw.merge_method)
            };
            ConfigError::at(&["merge_method"], msg).help(format!("methods: {}", names.join(", ")))
        })?;
        for (key, present, why) in [
            ("modules", raw.modules.is_some(), "multi-module merges (vision towers and the like)"),
            ("tokenizer", raw.tokenizer.is_some(), "building a merged tokenizer"),
            ("chat_template", raw.chat_template.is_some(), "choosing a chat template"),
        ] {
            if present {
                return Err(ConfigError::at(&[key], format!("`{key}` is not supported: drover does not do {why} yet"))
                    .help("the tokenizer and its chat template are copied from the base model, or from `tokenizer_source`"));
            }
        }
        if raw.tokenizer_source.as_deref() == Some("union") {
            return Err(ConfigError::at(
                &["tokenizer_source"],
                "`tokenizer_source: union` is not supported: drover does not merge vocabularies",
            )
            .help("use `base` or one of the models; every model must then have the same vocabulary size"));
        }
        let dtype = |key: &str, v: &Option<String>| -> Result<Option<WeightDtype>, ConfigError> {
            v.as_deref()
                .map(|s| {
                    WeightDtype::parse(s).ok_or_else(|| {
                        ConfigError::at(&[key], format!("unknown dtype `{s}`"))
                            .help("dtypes: float32, float16, bfloat16")
                    })
                })
                .transpose()
        };
        let parameters = params(method, raw.parameters.as_ref(), &["parameters"])?;
        let (models, slices) = match (raw.models, raw.slices) {
            (Some(models), None) if !models.is_empty() => {
                let mut out = Vec::new();
                for (i, m) in models.iter().enumerate() {
                    let idx = i.to_string();
                    let p = params(method, m.parameters.as_ref(), &["models", &idx, "parameters"])?;
                    out.push(InputModel { model: m.model.clone(), parameters: p });
                }
                let mut sources: Vec<SliceSource> = out
                    .iter()
                    .map(|m| SliceSource {
                        model: m.model.clone(),
                        layer_range: None,
                        parameters: m.parameters.clone(),
                    })
                    .collect();
                if let Some(base) = &raw.base_model
                    && !sources.iter().any(|s| &s.model == base)
                {
                    sources.push(SliceSource { model: base.clone(), layer_range: None, parameters: Params::new() });
                }
                (out, vec![OutputSlice { sources, base_model: None, parameters: Params::new() }])
            }
            (None, Some(slices)) if !slices.is_empty() => {
                let mut out = Vec::new();
                for (i, s) in slices.iter().enumerate() {
                    let idx = i.to_string();
                    if s.residual_weight.is_some() {
                        return Err(ConfigError::at(
                            &["slices", &idx, "residual_weight"],
                            "`residual_weight` is not supported",
                        ));
                    }
                    if s.sources.is_empty() {
                        return Err(ConfigError::at(&["slices", &idx, "sources"], "a slice needs at least one source"));
                    }
                    let mut sources = Vec::new();
                    for (j, src) in s.sources.iter().enumerate() {
                        let jdx = j.to_string();
                        let (a, b) = src.layer_range;
                        if a >= b {
                            return Err(ConfigError::at(
                                &["slices", &idx, "sources", &jdx, "layer_range"],
                                format!("empty layer range [{a}, {b}]"),
                            )
                            .help("`layer_range: [start, end]` takes layers start..end-1"));
                        }
                        let p =
                            params(method, src.parameters.as_ref(), &["slices", &idx, "sources", &jdx, "parameters"])?;
                        sources.push(SliceSource {
                            model: src.model.clone(),
                            layer_range: Some((a, b)),
                            parameters: p,
                        });
                    }
                    let lens: Vec<usize> = sources.iter().filter_map(|s| s.layer_range.map(|(a, b)| b - a)).collect();
                    if lens.iter().any(|l| *l != lens[0]) {
                        return Err(ConfigError::at(
                            &["slices", &idx, "sources"],
                            format!("the sources of a slice must have the same number of layers, not {lens:?}"),
                        ));
                    }
                    let p = params(method, s.parameters.as_ref(), &["slices", &idx, "parameters"])?;
                    out.push(OutputSlice { sources, base_model: s.base_model.clone(), parameters: p });
                }
                (Vec::new(), out)
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::at(&["slices"], "give either `models` or `slices`, not both"));
            }
            _ => {
                return Err(ConfigError::at(&[], "the config names no models")
                    .help("add `models: [{model: NAME, parameters: {...}}, ...]` or `slices: [{sources: [...]}]`"));
            }
        };
        let config = MergeConfig {
            method,
            base_model: raw.base_model,
            models,
            slices,
            parameters,
            dtype: dtype("dtype", &raw.dtype)?,
            out_dtype: dtype("out_dtype", &raw.out_dtype)?,
            tokenizer_source: raw.tokenizer_source,
        };
        // mergekit's `model+lora` applies a LoRA before merging; drover would take the whole
        // string as a name and merge the model without it.
        if let Some(m) = config.referenced_models().into_iter().find(|m| m.contains('+')) {
            return Err(ConfigError::at(
                &[],
                format!("model `{m}` names a LoRA (`model+lora`), which drover does not apply"),
            )
            .help("merge the LoRA into its model first (e.g. with peft's merge_and_unload) and name that directory"));
        }
        config.check_method()?;
        Ok(config)
    }

    /// Every model the config names, in first-mention order.
    pub fn referenced_models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |m: &str| {
            if !out.iter().any(|o| o == m) {
                out.push(m.to_string());
            }
        };
        if let Some(b) = &self.base_model {
            add(b);
        }
        for s in &self.slices {
            if let Some(b) = &s.base_model {
                add(b);
            }
            for src in &s.sources {
                add(&src.model);
            }
        }
        if let Some(t) = &self.tokenizer_source
            && t != "base"
        {
            add(t);
        }
        out
    }

    /// The base model of a slice (the slice's own, else the config's).
    pub fn base_of<'a>(&'a self, slice: &'a OutputSlice) -> Option<&'a str> {
        slice.base_model.as_deref().or(self.base_model.as_deref())
    }

    /// Method-specific rules that need the whole config.
    fn check_method(&self) -> Result<(), ConfigError> {
        let m = self.method;
        for (i, s) in self.slices.iter().enumerate() {
            let idx = i.to_string();
            let at = |key: &'static str| -> Vec<String> {
                if self.models.is_empty() { vec!["slices".into(), idx.clone(), key.into()] } else { vec![key.into()] }
            };
            let base = self.base_of(s);
            if m.needs_base() {
                let Some(base) = base else {
                    return Err(ConfigError::at(&["base_model"], format!("merge method `{m}` needs `base_model`"))
                        .help("name the model the task vectors are taken against (for slerp: the model at t = 0)"));
                };
                if !self.models.is_empty() || s.sources.iter().any(|src| src.model == base) {
                    // fine: the base is merged with the rest
                } else {
                    return Err(ConfigError::at_owned(
                        at("sources"),
                        format!("base model `{base}` is not among the slice's sources"),
                    )
                    .help("add the base model to the slice's sources with the same layer range"));
                }
            }
            let n = s.sources.len();
            match m {
                Method::Slerp if n != 2 && n != 1 => {
                    return Err(ConfigError::at_owned(
                        at("sources"),
                        format!("slerp merges exactly two models (the base and one other), not {n}"),
                    ));
                }
                Method::Passthrough if n != 1 => {
                    return Err(ConfigError::at_owned(
                        at("sources"),
                        format!("passthrough takes exactly one model per slice, not {n}"),
                    )
                    .help("give each slice one source; use `linear` to average models"));
                }
                Method::ModelStock if n < 3 => {
                    return Err(ConfigError::at_owned(
                        at("sources"),
                        format!("model_stock needs the base and at least two other models, not {n} in all"),
                    ));
                }
                _ => {}
            }
            // Required parameters must resolve for every model that is not the base.
            for (name, default) in m.model_params() {
                if default.is_some() {
                    continue;
                }
                for src in &s.sources {
                    if Some(src.model.as_str()) == base && m != Method::Linear {
                        continue;
                    }
                    let found = src.parameters.contains_key(name)
                        || s.parameters.contains_key(name)
                        || self.parameters.contains_key(name);
                    if !found {
                        return Err(ConfigError::at_owned(at("sources"), format!("model `{}` has no `{name}` (merge method `{m}` needs one per model)", src.model))
                            .help(format!("add `parameters: {{{name}: 1.0}}` to the model, or a top-level `parameters: {{{name}: ...}}`")));
                    }
                }
            }
            if m == Method::Slerp && !s.parameters.contains_key("t") && !self.parameters.contains_key("t") {
                return Err(ConfigError::at(&["parameters"], "merge method `slerp` needs `t`")
                    .help("add `parameters: {t: 0.5}` (0 = the base model, 1 = the other)"));
            }
        }
        Ok(())
    }
}

/// Parses a `parameters:` block, rejecting names the method does not know and numbers out of
/// range.
fn params(method: Method, raw: Option<&serde_json::Map<String, Value>>, path: &[&str]) -> Result<Params, ConfigError> {
    let mut out = Params::new();
    let Some(raw) = raw else { return Ok(out) };
    for (name, value) in raw {
        let mut p = path.to_vec();
        p.push(name);
        if !method.knows(name) {
            let known: Vec<&str> =
                method.global_params().iter().chain(method.model_params().iter()).map(|(n, _)| *n).collect();
            return Err(ConfigError::at(&p, format!("merge method `{method}` has no parameter `{name}`")).help(
                if known.is_empty() {
                    format!("`{method}` takes no parameters")
                } else {
                    format!("its parameters: {}", known.join(", "))
                },
            ));
        }
        let setting = Setting::parse(value, &p)?;
        let range: Option<(&str, RangeCheck)> = match name.as_str() {
            "density" => Some(("in (0, 1]", |v| v > 0.0 && v <= 1.0)),
            "gamma" => Some(("in [0, 1)", |v| (0.0..1.0).contains(&v))),
            "epsilon" => Some(("in [0, 1)", |v| (0.0..1.0).contains(&v))),
            "t" => Some(("in [0, 1]", |v| (0.0..=1.0).contains(&v))),
            _ => None,
        };
        if let Some((words, ok)) = range
            && let Some(bad) = setting.numbers().into_iter().find(|v| !ok(*v))
        {
            return Err(ConfigError::at(&p, format!("`{name}` must be {words}, not {bad}")));
        }
        out.insert(name.clone(), setting);
    }
    Ok(out)
}

/// Reads parameters for one tensor, in mergekit's order of precedence.
pub struct Reader<'a> {
    pub config: &'a MergeConfig,
    pub slice: &'a OutputSlice,
    pub t: f64,
}

impl Reader<'_> {
    /// The value of `name` for `tensor`, from the source of `model` (when given), the slice,
    /// the model's own block, then the top level; `None` when nothing sets it.
    pub fn get(&self, name: &str, model: Option<&str>, tensor: &str) -> Option<Scalar> {
        if let Some(model) = model {
            for src in self.slice.sources.iter().filter(|s| s.model == model) {
                if let Some(v) = src.parameters.get(name).and_then(|s| s.evaluate(tensor, self.t)) {
                    return Some(v);
                }
            }
        }
        if let Some(v) = self.slice.parameters.get(name).and_then(|s| s.evaluate(tensor, self.t)) {
            return Some(v);
        }
        self.config.parameters.get(name).and_then(|s| s.evaluate(tensor, self.t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gradients_interpolate_over_layers_like_mergekit() {
        let s = Setting::parse(&json!([0.0, 0.5, 0.3, 0.7, 1.0]), &[]).unwrap();
        let at = |t| s.evaluate("x", t).unwrap().as_f64().unwrap();
        assert_eq!(at(0.0), 0.0);
        assert_eq!(at(1.0), 1.0);
        // t = 0.5 -> scaled 2.0 -> exactly the third entry.
        assert!((at(0.5) - 0.3).abs() < 1e-12);
        // t = 1/3 of 4 gaps = 1.333.. -> 0.5 + 0.333.. * (0.3 - 0.5)
        assert!((at(1.0 / 3.0) - (0.5 + (4.0 / 3.0 - 1.0) * (0.3 - 0.5))).abs() < 1e-12);
    }

    #[test]
    fn filters_take_the_first_matching_entry() {
        let s = Setting::parse(&json!([{"filter": "mlp", "value": 0.5}, {"value": 0}]), &[]).unwrap();
        assert_eq!(s.evaluate("model.layers.0.mlp.up_proj.weight", 0.0), Some(Scalar::Num(0.5)));
        assert_eq!(s.evaluate("model.layers.0.self_attn.q_proj.weight", 0.0), Some(Scalar::Num(0.0)));
        let only = Setting::parse(&json!([{"filter": "mlp", "value": 0.5}]), &[]).unwrap();
        assert_eq!(only.evaluate("model.norm.weight", 0.0), None);
    }

    #[test]
    fn unknown_parameters_and_out_of_range_densities_are_errors() {
        let base = json!({"merge_method": "ties", "base_model": "b", "models": [
            {"model": "a", "parameters": {"weight": 1, "densty": 0.5}}]});
        let e = MergeConfig::parse(&base).unwrap_err();
        assert_eq!(e.path, ["models", "0", "parameters", "densty"]);
        assert!(e.message.contains("no parameter `densty`"), "{e:?}");
        let bad = json!({"merge_method": "ties", "base_model": "b", "models": [
            {"model": "a", "parameters": {"weight": 1, "density": [1, 1.5]}}]});
        let e = MergeConfig::parse(&bad).unwrap_err();
        assert_eq!(e.message, "`density` must be in (0, 1], not 1.5");
    }

    #[test]
    fn methods_that_need_a_base_say_so() {
        let c = json!({"merge_method": "ties", "models": [{"model": "a", "parameters": {"weight": 1}}]});
        let e = MergeConfig::parse(&c).unwrap_err();
        assert_eq!(e.path, ["base_model"]);
        let c = json!({"merge_method": "task_arithmetic", "base_model": "b", "models": [{"model": "a"}]});
        let e = MergeConfig::parse(&c).unwrap_err();
        assert!(e.message.contains("model `a` has no `weight`"), "{e:?}");
    }

    #[test]
    fn lora_references_are_refused_rather_than_merged_without_the_lora() {
        let c = json!({"merge_method": "linear", "models": [
            {"model": "base+adapter", "parameters": {"weight": 1}}, {"model": "b", "parameters": {"weight": 1}}]});
        let e = MergeConfig::parse(&c).unwrap_err();
        assert!(e.message.contains("names a LoRA"), "{e:?}");
    }

    #[test]
    fn models_syntax_adds_the_base_as_a_source() {
        let c =
            json!({"merge_method": "ties", "base_model": "b", "models": [{"model": "a", "parameters": {"weight": 1}}]});
        let c = MergeConfig::parse(&c).unwrap();
        let names: Vec<&str> = c.slices[0].sources.iter().map(|s| s.model.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.referenced_models(), ["b", "a"]);
    }

    #[test]
    fn precedence_is_source_then_slice_then_top_level() {
        let c = json!({"merge_method": "linear", "parameters": {"weight": 3},
            "slices": [{"sources": [{"model": "a", "layer_range": [0, 2], "parameters": {"weight": 1}},
                                    {"model": "b", "layer_range": [0, 2]}],
                        "parameters": {"normalize": false}}]});
        let c = MergeConfig::parse(&c).unwrap();
        let r = Reader { config: &c, slice: &c.slices[0], t: 0.0 };
        assert_eq!(r.get("weight", Some("a"), "x"), Some(Scalar::Num(1.0)));
        assert_eq!(r.get("weight", Some("b"), "x"), Some(Scalar::Num(3.0)));
        assert_eq!(r.get("normalize", None, "x"), Some(Scalar::Bool(false)));
    }
}
