//! The `reward_train` op: a Bradley-Terry reward model trained on preference pairs, inside
//! drover with burn on the run's `--device`.
//!
//! Inputs: `pairs`, a preference table in any layout the pair reader knows (TRL's `prompt,
//! chosen, rejected` with an optional per-row `margin`; SALMON's `output_1, output_2,
//! preference`; ICAI's; or a `columns:` mapping), and optionally `validation`, a table of the
//! same kind; without it a seeded `val_fraction` of the pairs is held out. With
//! `transcripts: true` each response is an Anthropic HH-RLHF transcript, split into prompt and
//! last assistant turn (`kit::reward::split_transcript`).
//!
//! Each (prompt, response) is laid out as `[CLS] prompt [SEP] response [SEP]` in `max_tokens`
//! tokens (the response kept whole, the prompt cut from the left; pairs whose two inputs become
//! identical are counted and dropped). Two encoders:
//! - `encoder: frozen` (default): the inputs are embedded once by the frozen MiniLM encoder
//!   (the forward `embed` uses; kept in the memo, so a second head on the same pairs embeds
//!   nothing), and a small MLP head is trained on the embeddings: seconds on a CPU.
//! - `encoder: finetune`: the whole encoder and a linear head on its unit-length sentence
//!   embedding (bias zero-init, as SALMON's reward head), trained with autodiff on the run's
//!   device; batches are padded on the right to their longest input, which mean pooling over
//!   the attention mask makes harmless (TRL#937's padding trouble is last-token pooling's). The
//!   model directory then holds the whole model (`model.safetensors`, burn's tensor names).
//!
//! Principle-conditioned mode (SALMON; `principles: { path: COLLECTION.json }`): each input
//! becomes `[CLS] principles [SEP] prompt [SEP] response [SEP]`, the principles being SALMON's
//! `{Dimensions}` lines (`- DEFINITION`, or the negative definition where a row's
//! `negative_definitions` says so), taken from `dimensions:`, from the row's own `dimensions`
//! column as SALMON writes it, or the collection's first `max_principles`. The response comes
//! first, then whole principles while they fit (the log counts those left out), then the
//! prompt's last tokens. `reward_score` scores such a model under any principle set.
//!
//! Training follows TRL's `RewardTrainer`: loss `-log sigmoid(r+ - r- - margin)` averaged over
//! the batch, plus `center_rewards_coefficient * mean((r+ + r-)^2)` when set (Eisenstein et al.
//! 2023); AdamW (β 0.9/0.999, ε 1e-8, weight decay 0, as Hugging Face's defaults), a linear or
//! cosine schedule with warmup (Hugging Face's `get_*_schedule_with_warmup`), gradient
//! clipping by global norm (`max_grad_norm`, 1.0); batches drawn in a seeded order each epoch;
//! early stopping after `patience` epochs without a lower validation loss, keeping the epoch
//! with the lowest.
//!
//! Outputs: `model` (a directory: `config.json` naming the encoder and its blake3, and
//! `head.safetensors` in PyTorch's layout, or `model.safetensors`), `metrics` (one row per
//! epoch, epoch 0 before any step: train and validation loss, accuracy with ties counted wrong
//! as TRL counts them, mean margin r+ - r-, min/mean/max reward, and which epoch was kept), and
//! the learning curve (`plot`, SVG; `plot_png`).
//!
//! A checkpoint after every epoch (the weights, the optimiser's state, the metrics so far) goes
//! into the memo under the stage's inputs, params, seed and backend, so a training killed in
//! any way resumes from its last finished epoch and ends with the bytes of one never stopped;
//! each replaces the one before, so the memo holds one per training (a fine-tuned MiniLM's is
//! about 360 MB), freed by `drover gc --memo`.
//!
//! Deterministic on one device: the same pairs, params and seed give the same bytes. Between
//! devices (a model trained on one is served from the cache on another) the embeddings agree to
//! a cosine of 0.99999 and training drifts with float order, so the bytes differ; the tolerance
//! is 1e-4 in every epoch's loss and 0.02 in its accuracy (a near-tie may flip). Measured on
//! tests/reward.rs's set, CPU against wgpu on lavapipe, after 4 epochs: 1.5e-6 in loss, no
//! accuracy difference. The memo keeps embeddings per backend, so a run on one device never
//! trains on another's embeddings.
//!
//! On the CPU a fine-tuning step computes two half-batches on two threads, each on a fork of
//! the model, and sums their weighted gradients (the same loss and gradient up to float order;
//! flex runs element-wise work on one core). Measured against the same training in PyTorch on
//! 2 cores (benches/reward/README.md): `frozen` end to end at parity, `finetune` 1.38x its time.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, Column, OpError, OpKit, PortDecl, PortType, Ports, RunCx, Work,
};
use serde::Deserialize;

use crate::kit::compute::{self, DeviceChoice};
use crate::kit::draw::Draw;
use crate::kit::encoder::{ModelDir, ModelSpec, SentenceEncoder, TokenBatch, resolve_model};
use crate::kit::pairs::{PairColumns, PairSchema, PairsRead};
use crate::kit::reward::{self, EncoderInfo, Head, Layout, RewardConfig};
use crate::kit::table;
use crate::scaling::plot;

/// How the encoder takes part in training.
#[derive(Clone, Copy, Debug, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EncoderMode {
    /// Embeddings from the frozen encoder, a small MLP head trained on them.
    #[default]
    Frozen,
    /// The whole encoder and a linear head (bias zero-init), trained with autodiff.
    Finetune,
}

/// The learning-rate schedule after warmup.
#[derive(Clone, Copy, Debug, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear decay to 0 (Hugging Face's default).
    #[default]
    Linear,
    /// Half a cosine down to 0.
    Cosine,
}

/// The `with:` block of a `reward_train` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardTrainParams {
    /// Which columns hold the pairs (default: recognised from the layout).
    #[serde(default)]
    pub columns: Option<PairColumns>,
    /// The responses are whole HH-RLHF transcripts ("\n\nHuman: ... \n\nAssistant: ..."): the
    /// prompt is everything up to the last "Assistant:" turn, the response that turn.
    #[serde(default)]
    pub transcripts: bool,
    /// Principle-conditioned mode (SALMON): `{ path: COLLECTION.json, dimensions: [..],
    /// max_principles: 5 }`. Each input then starts with the principles' definitions (or negative
    /// definitions), as SALMON's reward-model prompt lists them, so one model scores under any
    /// principle set; principles that do not fit are left out, counted in the log.
    #[serde(default)]
    pub principles: Option<reward::PrincipleSpec>,
    /// A per-row margin column (TRL's `margin`); default: `margin` when the table has one.
    #[serde(default)]
    pub margin_column: Option<String>,
    /// `frozen`: a head on the frozen encoder's embeddings; `finetune`: the whole encoder and a
    /// linear head.
    #[serde(default)]
    pub encoder: EncoderMode,
    /// The sentence encoder. Default: `{ pulled: minilm }`.
    #[serde(default)]
    pub model: ModelSpec,
    /// Tokens per input, `[CLS]` and `[SEP]`s included. Default: the model's `max_seq_length`
    /// (256 for MiniLM).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// The head's hidden width.
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Passes over the training pairs (fewer with early stopping).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Pairs per optimiser step.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The peak learning rate. Default: 1e-3 for `frozen` (a head alone), 5e-5 for `finetune`.
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// AdamW's decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// `linear` (default) or `cosine` decay after warmup.
    #[serde(default)]
    pub schedule: Schedule,
    /// The fraction of all steps spent warming up from 0.
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Gradients are scaled down to this global norm (null: no clipping).
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: Option<f64>,
    /// TRL's `center_rewards_coefficient` (recommended 0.01; default none).
    #[serde(default)]
    pub center_rewards_coefficient: Option<f64>,
    /// The fraction of pairs held out for validation when there is no `validation` input.
    /// Default 0.2.
    #[serde(default)]
    pub val_fraction: Option<f64>,
    /// Stop after this many epochs without a lower validation loss (null: never).
    #[serde(default = "default_patience")]
    pub patience: Option<usize>,
    /// Inputs per encoder forward pass when embedding or evaluating.
    #[serde(default = "default_embed_batch_size")]
    pub embed_batch_size: usize,
    /// The random seed (split, head initialisation, batch order). Default: the stage's seed.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_hidden() -> usize {
    256
}
fn default_epochs() -> usize {
    10
}
fn default_batch_size() -> usize {
    32
}
fn default_max_grad_norm() -> Option<f64> {
    Some(1.0)
}
fn default_patience() -> Option<usize> {
    Some(3)
}
fn default_embed_batch_size() -> usize {
    64
}

const DEFAULT_LR: f64 = 1e-3;
/// The whole encoder moves: the usual rate for fine-tuning a BERT.
const DEFAULT_FINETUNE_LR: f64 = 5e-5;
const DEFAULT_VAL_FRACTION: f64 = 0.2;

/// Trains a reward model on preference pairs.
pub struct RewardTrain {
    pub device: DeviceChoice,
}

/// The metrics table's columns, after `epoch`, `steps` and `learning_rate`.
const STATS: [&str; 6] = ["loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward"];

fn metrics_schema() -> Schema {
    let mut fields = vec![
        Field::new("epoch", DataType::Int64, false),
        Field::new("steps", DataType::Int64, false),
        Field::new("learning_rate", DataType::Float64, false),
    ];
    for split in ["train", "val"] {
        for s in STATS {
            fields.push(Field::new(format!("{split}_{s}"), DataType::Float64, true));
        }
    }
    fields.push(Field::new("kept", DataType::Boolean, false));
    Schema::new(fields)
}

impl RewardTrainParams {
    fn check_numbers(&self, has_validation: bool) -> Vec<CheckError> {
        let mut errors = Vec::new();
        let mut positive = |name: &str, v: usize| {
            if v == 0 {
                errors.push(CheckError::param(&[name], format!("{name} must be at least 1")));
            }
        };
        positive("hidden", self.hidden);
        positive("epochs", self.epochs);
        positive("batch_size", self.batch_size);
        positive("embed_batch_size", self.embed_batch_size);
        if let Some(lr) = self.learning_rate.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
            errors.push(CheckError::param(&["learning_rate"], format!("learning_rate must be above 0, got {lr}")));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            errors.push(CheckError::param(
                &["warmup_ratio"],
                format!("warmup_ratio must be in [0, 1), got {}", self.warmup_ratio),
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            errors.push(CheckError::param(&["weight_decay"], "weight_decay must be 0 or more"));
        }
        if let Some(n) = self.max_grad_norm.filter(|n| n.is_nan() || *n <= 0.0) {
            errors.push(
                CheckError::param(&["max_grad_norm"], format!("max_grad_norm must be above 0, got {n}"))
                    .help("write `max_grad_norm: null` for no clipping"),
            );
        }
        match (self.val_fraction, has_validation) {
            (Some(_), true) => errors.push(
                CheckError::param(&["val_fraction"], "val_fraction is set, but a `validation` input is given")
                    .help("validate on the `validation` input or on a held-out fraction, not both"),
            ),
            (Some(f), false) if !(0.0..1.0).contains(&f) => {
                errors.push(CheckError::param(&["val_fraction"], format!("val_fraction must be in [0, 1), got {f}")))
            }
            _ => {}
        }
        errors
    }

    fn max_tokens(&self, model: &ModelDir) -> Result<usize, CheckError> {
        let Some(n) = self.max_tokens else { return Ok(model.default_max_tokens()) };
        if n < 4 || n > model.positions() {
            return Err(CheckError::param(
                &["max_tokens"],
                format!("max_tokens must be in 4..={}, got {n}", model.positions()),
            )
            .help("an input is [CLS] prompt [SEP] response [SEP]; the model reads at most max_position_embeddings"));
        }
        Ok(n)
    }
}

impl OpKit for RewardTrain {
    type Params = RewardTrainParams;
    const NAME: &str = "reward_train";
    // 2: the encoder's GELU on the CPU is computed by drover's own vectorised kernel
    // (kit/encoder/gelu.rs), not libm's `erff`: the last bits of every CPU result differ from
    // version 1's; and a CPU fine-tuning step sums the gradients of two half-batches.
    const VERSION: u32 = 2;
    const DOC: &str = "Trains a Bradley-Terry reward model on preference pairs (a head on frozen MiniLM \
                       embeddings, or the whole encoder fine-tuned), with TRL's loss and metrics, on the \
                       run's device.";

    fn inputs() -> Ports {
        Ports::Fixed(vec![
            PortDecl::new("pairs", PortType::any_table(), "The preference pairs (TRL, SALMON or ICAI layout)."),
            PortDecl::new(
                "validation",
                PortType::any_table(),
                "Pairs to validate on, in the same layout (default: a seeded `val_fraction` of `pairs`).",
            )
            .optional(),
        ])
    }

    fn outputs() -> Ports {
        Ports::Fixed(vec![
            PortDecl::new("model", PortType::Dir, "config.json (the encoder and its hash) and head.safetensors."),
            PortDecl::new(
                "metrics",
                PortType::Table(table::table_schema(&metrics_schema())),
                "One row per epoch: train and validation loss, accuracy, margin, min/mean/max reward.",
            ),
            PortDecl::new("plot", PortType::Blob, "The learning curve, SVG."),
            PortDecl::new("plot_png", PortType::Blob, "The learning curve, PNG."),
        ])
    }

    fn check(&self, params: &RewardTrainParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let mut errors = CheckErrors::new();
        let has_validation = cx.inputs.contains_key("validation");
        for e in params.check_numbers(has_validation) {
            errors.push(e);
        }
        for port in ["pairs", "validation"] {
            if port == "validation" && !has_validation {
                continue;
            }
            let columns = table::input_columns(cx, port).map_err(|e| errors.push(e)).ok().flatten();
            if let Err(e) = PairSchema::resolve(port, &["columns"], columns, params.columns.as_ref()) {
                e.0.into_iter().for_each(|e| errors.push(e));
            }
            if let (Some(name), Some(columns)) = (&params.margin_column, columns)
                && let Some(e) = check_margin(port, name, columns)
            {
                errors.push(e);
            }
        }
        let mut checked = Checked::default();
        if let Some(spec) = &params.principles
            && let Err(e) = spec.check(cx.pipeline_dir, &mut checked)
        {
            errors.push(e);
        }
        match resolve_model(&params.model, cx.pipeline_dir, "model", "reward encoder") {
            Ok((model, dep)) => {
                if let Err(e) = params.max_tokens(&model) {
                    errors.push(e);
                }
                dep.declare(&model, &mut checked);
            }
            Err(e) => errors.push(e),
        }
        let checked = checked
            .output("model", PortType::Dir)
            .output("metrics", PortType::Table(table::table_schema(&metrics_schema())))
            .output("plot", PortType::Blob)
            .output("plot_png", PortType::Blob);
        errors.or(checked)
    }

    fn run(&self, params: RewardTrainParams, cx: RunCx) -> Work {
        let device = self.device;
        Work::blocking(move || train(params, device, cx))
    }
}

/// A margin column must be a number.
fn check_margin(port: &str, name: &str, columns: &[Column]) -> Option<CheckError> {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let Some(c) = columns.iter().find(|c| c.name == name) else {
        return Some(table::unknown_column(port, &["margin_column"], name, &names));
    };
    let numeric = c.dtype.starts_with("Int") || c.dtype.starts_with("UInt") || c.dtype.starts_with("Float");
    (!numeric).then(|| {
        CheckError::param(&["margin_column"], format!("column `{name}` of `{port}` is {}, not a number", c.dtype))
            .about_column(port, name)
    })
}

/// One side of a pair: what the encoder reads before the response, and the response.
#[derive(Clone, Debug)]
struct Side {
    context: String,
    response: String,
}

/// A pair ready to lay out.
#[derive(Clone, Debug)]
struct Example {
    chosen: Side,
    rejected: Side,
    margin: f64,
    /// SALMON's principle lines, in principle-conditioned mode.
    principles: Vec<String>,
}

/// What reading a table left out, for the log.
#[derive(Default)]
struct ReadCounts {
    rows: usize,
    skipped: Option<String>,
    not_transcripts: usize,
}

fn read_examples(cx: &RunCx, port: &str, params: &RewardTrainParams) -> Result<(Vec<Example>, ReadCounts), OpError> {
    let (schema, batches) = table::read_input(&cx.input(port)?.path)?;
    let batch = concat_batches(&schema, &batches).map_err(|e| OpError::failed(format!("reward_train: {e}")))?;
    let columns = table::table_schema(&schema).columns.unwrap_or_default();
    let pairs = PairSchema::resolve(port, &["columns"], Some(&columns), params.columns.as_ref())
        .map_err(CheckErrors::into_op_error)?
        .expect("known columns give a schema");
    let read: PairsRead = pairs.read(&batch)?;
    let principles = match &params.principles {
        Some(spec) => {
            let set = reward::Principles::read(&drover_engine::paths::resolve(&cx.stage_cx.pipeline_dir, &spec.path))
                .map_err(OpError::failed)?;
            Some(spec.per_row(&set, &batch).map_err(|e| OpError::failed(format!("`{port}` {e}")))?)
        }
        None => None,
    };
    let margins = margins(&batch, params.margin_column.as_deref().or(Some("margin")), params.margin_column.is_some())?;
    let mut counts = ReadCounts { rows: batch.num_rows(), skipped: read.summary(), ..Default::default() };
    let mut out = Vec::with_capacity(read.pairs.len());
    for pair in &read.pairs {
        let (chosen, rejected) = pair.chosen_rejected();
        let prompt = [pair.prompt.as_deref(), pair.context.as_deref()].into_iter().flatten().collect::<Vec<_>>();
        let prompt = prompt.join("\n\n");
        let side = |text: &str| -> Option<Side> {
            if params.transcripts {
                let (p, r) = reward::split_transcript(text)?;
                (!r.trim().is_empty()).then(|| Side { context: format!("{prompt}{p}"), response: r.to_string() })
            } else {
                Some(Side { context: prompt.clone(), response: text.to_string() })
            }
        };
        let (Some(chosen), Some(rejected)) = (side(chosen), side(rejected)) else {
            counts.not_transcripts += 1;
            continue;
        };
        let margin = margins.as_ref().map_or(0.0, |m| m[pair.row]);
        let principles = principles.as_ref().map(|p| p[pair.row].clone()).unwrap_or_default();
        out.push(Example { chosen, rejected, margin, principles });
    }
    Ok((out, counts))
}

/// The margin of every row (`None`: no margin column). A missing margin is 0.
fn margins(batch: &RecordBatch, name: Option<&str>, required: bool) -> Result<Option<Vec<f64>>, OpError> {
    let Some(name) = name else { return Ok(None) };
    let Some(array) = batch.column_by_name(name) else {
        return if required { Err(OpError::failed(format!("the input has no column `{name}`"))) } else { Ok(None) };
    };
    let values = cast(array, &DataType::Float64)
        .map_err(|e| OpError::failed(format!("column `{name}` is {}, not a number: {e}", array.data_type())))?;
    let values = values.as_any().downcast_ref::<Float64Array>().expect("cast to Float64");
    Ok(Some((0..values.len()).map(|i| if values.is_valid(i) { values.value(i) } else { 0.0 }).collect()))
}

/// A pair as indices into the embedded inputs.
#[derive(Clone, Copy, Debug)]
struct Indexed {
    chosen: usize,
    rejected: usize,
    margin: f32,
}

/// Per-split statistics, as TRL reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Stats {
    loss: f64,
    accuracy: f64,
    margin: f64,
    min_reward: f64,
    mean_reward: f64,
    max_reward: f64,
}

impl Stats {
    fn values(&self) -> [f64; 6] {
        [self.loss, self.accuracy, self.margin, self.min_reward, self.mean_reward, self.max_reward]
    }
}

/// `log sigmoid(x)` without overflow.
fn log_sigmoid_f64(x: f64) -> f64 {
    -((-x).max(0.0) + (-x.abs()).exp().ln_1p())
}

/// TRL's loss and metrics of `pairs` under `rewards` (one per embedded input).
fn stats(pairs: &[Indexed], rewards: &[f32], center: Option<f64>) -> Option<Stats> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let (mut loss, mut correct, mut margin, mut centre) = (0.0, 0usize, 0.0, 0.0);
    let (mut min, mut max, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
    for p in pairs {
        let (rc, rr) = (f64::from(rewards[p.chosen]), f64::from(rewards[p.rejected]));
        loss -= log_sigmoid_f64(rc - rr - f64::from(p.margin));
        // Strictly greater: a tie counts as wrong (TRL).
        correct += usize::from(rc > rr);
        margin += rc - rr;
        centre += (rc + rr).powi(2);
        min = min.min(rc.min(rr));
        max = max.max(rc.max(rr));
        sum += rc + rr;
    }
    let loss = loss / n + center.map_or(0.0, |c| c * centre / n);
    Some(Stats {
        loss,
        accuracy: correct as f64 / n,
        margin: margin / n,
        min_reward: min,
        mean_reward: sum / (2.0 * n),
        max_reward: max,
    })
}

/// Hugging Face's `get_linear_schedule_with_warmup` / `get_cosine_schedule_with_warmup`
/// multiplier at `step` (0-based).
fn schedule_factor(schedule: Schedule, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    match schedule {
        Schedule::Linear => ((total - step) as f64 / (total - warmup).max(1) as f64).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

/// The gradient's global norm, then (second pass) scales every gradient by `factor`.
struct GlobalNorm<'a> {
    grads: &'a mut GradientsParams,
    sum_squares: f64,
    factor: Option<f64>,
}

impl ModuleVisitor for GlobalNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let id: ParamId = param.id;
        match self.factor {
            None => {
                if let Some(g) = self.grads.get::<D>(id) {
                    let s: f32 = g.powi_scalar(2).sum().into_scalar();
                    self.sum_squares += f64::from(s);
                }
            }
            Some(f) => {
                if let Some(g) = self.grads.remove::<D>(id) {
                    self.grads.register(id, g.mul_scalar(f));
                }
            }
        }
    }
}

/// Clips `grads` to global norm `max` as `torch.nn.utils.clip_grad_norm_` does
/// (`max / (norm + 1e-6)`, when below 1); returns the norm before clipping.
fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max: f64) -> f64 {
    let mut v = GlobalNorm { grads, sum_squares: 0.0, factor: None };
    module.visit(&mut v);
    let norm = v.sum_squares.sqrt();
    let factor = max / (norm + 1e-6);
    if factor < 1.0 {
        let mut v = GlobalNorm { grads, sum_squares: 0.0, factor: Some(factor) };
        module.visit(&mut v);
    }
    norm
}

/// What is trained: a head on fixed embeddings, or the whole model on token ids. One value
/// lives per training, moved from step to step: boxing the larger variant would save nothing.
#[allow(clippy::large_enum_variant)]
enum Trainee {
    Frozen { head: Head, embeddings: Vec<f32> },
    Tuned { model: reward::Tuned, inputs: Vec<Vec<u32>> },
}

/// TRL's loss of a batch of pairs from their rewards.
struct Loss {
    /// Some pair has a margin.
    margins: bool,
    /// The centering coefficient.
    center: Option<f64>,
}

impl Loss {
    /// The inputs of `pairs` in forward order: chosen then rejected, one forward (TRL batches
    /// them together too).
    fn rows(pairs: &[&Indexed]) -> Vec<usize> {
        pairs.iter().map(|p| p.chosen).chain(pairs.iter().map(|p| p.rejected)).collect()
    }

    /// `weight` times the mean of `-log sigmoid(r+ - r- - margin)` (plus the centering term)
    /// over `pairs`, whose rewards `r` are in [`Loss::rows`] order.
    fn of(&self, r: Tensor<1>, pairs: &[&Indexed], weight: f64, device: &Device) -> Tensor<1> {
        let b = pairs.len();
        let (rc, rr) = (r.clone().narrow(0, 0, b), r.narrow(0, b, b));
        let mut diff = rc.clone() - rr.clone();
        if self.margins {
            let m: Vec<f32> = pairs.iter().map(|p| p.margin).collect();
            diff = diff - Tensor::<1>::from_data(TensorData::new(m, [b]), device);
        }
        let mut loss = log_sigmoid(diff).mean().neg();
        if let Some(c) = self.center {
            loss = loss + (rc + rr).powi_scalar(2).mean().mul_scalar(c);
        }
        if weight == 1.0 { loss } else { loss.mul_scalar(weight) }
    }
}

impl Trainee {
    /// The loss of `pairs` (its value) and its gradients.
    ///
    /// On the CPU a fine-tuning batch is computed as two halves on two threads, each on its own
    /// fork of the model (the same weights, its own autodiff graph), and their gradients are
    /// summed, each half's loss weighted by its share of the batch: the same loss and gradient
    /// as one forward of the whole batch (up to float order), with both cores busy. flex runs
    /// element-wise steps and their backward on one core, so one batch at a time left a 2-core
    /// machine a third idle. The halves are fixed and summed in order: the same bytes every run.
    fn gradients(&self, pairs: &[&Indexed], loss: &Loss, dim: usize, device: &Device) -> (f32, GradientsParams) {
        match self {
            Trainee::Frozen { head, embeddings } => {
                let rows = Loss::rows(pairs);
                let mut x = Vec::with_capacity(rows.len() * dim);
                for &r in &rows {
                    x.extend_from_slice(&embeddings[r * dim..(r + 1) * dim]);
                }
                let r = head.forward(Tensor::<2>::from_data(TensorData::new(x, [rows.len(), dim]), device));
                let l = loss.of(r, pairs, 1.0, device);
                let value: f32 = l.clone().into_scalar();
                (value, GradientsParams::from_grads(l.backward(), head))
            }
            Trainee::Tuned { model, inputs } => {
                let half = pairs.len() / 2;
                let split = half > 0 && crate::kit::compute::is_cpu(device);
                let parts: Vec<&[&Indexed]> = if split { vec![&pairs[..half], &pairs[half..]] } else { vec![pairs] };
                let one = |part: &[&Indexed]| {
                    let fork = model.clone().fork(device);
                    // Padded on the right to the batch's longest: with the attention mask and
                    // mean pooling over real tokens, padding changes no reward (TRL#937's
                    // padding-side trouble comes from last-token pooling).
                    let ids: Vec<&[u32]> = Loss::rows(part).iter().map(|&r| inputs[r].as_slice()).collect();
                    let r = fork.forward(&TokenBatch::new(&ids, device));
                    let l = loss.of(r, part, part.len() as f64 / pairs.len() as f64, device);
                    let value: f32 = l.clone().into_scalar();
                    (value, GradientsParams::from_grads(l.backward(), &fork))
                };
                let results = crate::kit::compute::on_threads(&parts, |part| one(part));
                let mut value = 0f32;
                let mut sum = burn::optim::GradientsAccumulator::new();
                for (v, grads) in results {
                    value += v;
                    sum.accumulate(model, grads);
                }
                (value, sum.grads())
            }
        }
    }

    /// One optimiser step with `grads`, clipped to `max_norm`.
    fn step(
        self,
        optim: &mut burn::optim::ModuleOptimizer,
        mut grads: GradientsParams,
        lr: f64,
        max_norm: Option<f64>,
    ) -> Trainee {
        match self {
            Trainee::Frozen { head, embeddings } => {
                if let Some(max) = max_norm {
                    clip_global_norm(&head, &mut grads, max);
                }
                Trainee::Frozen { head: optim.step(lr, head, grads), embeddings }
            }
            Trainee::Tuned { model, inputs } => {
                if let Some(max) = max_norm {
                    clip_global_norm(&model, &mut grads, max);
                }
                Trainee::Tuned { model: optim.step(lr, model, grads), inputs }
            }
        }
    }

    /// Rewards of every input, without autodiff, on `plain`.
    fn rewards(&self, dim: usize, plain: &Device, batch_size: usize) -> Result<Vec<f32>, OpError> {
        let read = |t: Tensor<1>| -> Result<Vec<f32>, OpError> {
            t.into_data().try_to_vec::<f32>().map_err(|e| OpError::failed(format!("cannot read rewards back: {e:?}")))
        };
        match self {
            Trainee::Frozen { head, embeddings } => {
                let head = head.valid();
                let mut out = Vec::with_capacity(embeddings.len() / dim);
                for chunk in embeddings.chunks(4096 * dim) {
                    let x = Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [chunk.len() / dim, dim]), plain);
                    out.extend(read(head.forward(x))?);
                }
                Ok(out)
            }
            Trainee::Tuned { model, inputs } => {
                model.valid().rewards(inputs, batch_size, plain, |_| {}).map_err(OpError::failed)
            }
        }
    }

    fn to_safetensors(&self) -> Result<Vec<u8>, String> {
        match self {
            Trainee::Frozen { head, .. } => head.to_safetensors(),
            Trainee::Tuned { model, .. } => model.to_safetensors(),
        }
    }
}

/// Gives a module's parameters the ids 1, 2, ... in visiting order. The optimiser keeps its
/// state by parameter id, and a fresh module gets random ids: numbered, a module rebuilt from
/// a checkpoint in another process finds its optimiser state again.
struct Renumber(u64);

impl ModuleMapper for Renumber {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (_, tensor, mapper) = param.consume();
        self.0 += 1;
        Param::from_mapped_value(ParamId::from(self.0), tensor, mapper)
    }
}

/// What training has done by the end of an epoch, with the weights, kept in the memo so that a
/// killed stage resumes from its last epoch.
/// Floats as their bits: JSON would round them, and a resumed training must end with the
/// same bytes as one never stopped.
#[derive(serde::Serialize, Deserialize)]
struct Checkpoint {
    epoch: usize,
    step: usize,
    seen: usize,
    last_lr: u64,
    rows: Vec<RowBits>,
    /// The lowest validation loss so far (infinite without validation) and its epoch.
    best_loss: u64,
    best_epoch: usize,
    stopped: Option<usize>,
}

/// A metrics row: epoch, steps, learning rate, train stats, validation stats.
type Row = (usize, usize, f64, Stats, Option<Stats>);
/// A [`Row`] with its floats as bits.
type RowBits = (usize, usize, u64, [u64; 6], Option<[u64; 6]>);

fn row_bits(r: &Row) -> RowBits {
    (r.0, r.1, r.2.to_bits(), r.3.values().map(f64::to_bits), r.4.map(|v| v.values().map(f64::to_bits)))
}

fn row_from_bits(r: &RowBits) -> Row {
    let stats = |v: &[u64; 6]| {
        let f = v.map(f64::from_bits);
        Stats { loss: f[0], accuracy: f[1], margin: f[2], min_reward: f[3], mean_reward: f[4], max_reward: f[5] }
    };
    (r.0, r.1, f64::from_bits(r.2), stats(&r.3), r.4.as_ref().map(stats))
}

/// `[len][json]` then `[len][bytes]` for each blob.
fn pack(header: &Checkpoint, blobs: &[&[u8]]) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("a checkpoint serialises");
    let mut out = Vec::new();
    for part in std::iter::once(json.as_slice()).chain(blobs.iter().copied()) {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn unpack(bytes: &[u8]) -> Option<(Checkpoint, Vec<Vec<u8>>)> {
    let mut parts = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?) as usize;
        parts.push(bytes.get(at + 8..at + 8 + len)?.to_vec());
        at += 8 + len;
    }
    let header = serde_json::from_slice(parts.first()?).ok()?;
    Some((header, parts.split_off(1)))
}

impl Trainee {
    fn renumbered(self) -> Trainee {
        match self {
            Trainee::Frozen { head, embeddings } => Trainee::Frozen { head: head.map(&mut Renumber(0)), embeddings },
            Trainee::Tuned { model, inputs } => Trainee::Tuned { model: model.map(&mut Renumber(0)), inputs },
        }
    }

    /// The same kind of trainee with the weights of `bytes` ([`Trainee::to_safetensors`]).
    fn with_weights(
        self,
        bytes: Vec<u8>,
        config: &crate::kit::encoder::BertConfig,
        device: &Device,
    ) -> Result<Trainee, String> {
        let t = match self {
            Trainee::Frozen { embeddings, .. } => {
                Trainee::Frozen { head: Head::from_safetensors(&bytes, "the checkpoint", device)?, embeddings }
            }
            Trainee::Tuned { inputs, .. } => Trainee::Tuned {
                model: reward::Tuned::from_safetensors(bytes, config, "the checkpoint", device)?,
                inputs,
            },
        };
        Ok(t.renumbered())
    }
}

/// The optimiser's state as bytes (through a file: burn writes its records to files).
fn optimizer_bytes(optim: &burn::optim::ModuleOptimizer, dir: &std::path::Path) -> Result<Vec<u8>, String> {
    let path = dir.join("optimizer.bin");
    optim.save(&path).map_err(|e| format!("cannot save the optimiser's state: {e}"))?;
    std::fs::read(&path).map_err(|e| format!("cannot read the optimiser's state: {e}"))
}

fn load_optimizer(
    optim: burn::optim::ModuleOptimizer,
    bytes: &[u8],
    dir: &std::path::Path,
) -> Result<burn::optim::ModuleOptimizer, String> {
    let path = dir.join("optimizer.bin");
    std::fs::write(&path, bytes).map_err(|e| format!("cannot write the optimiser's state: {e}"))?;
    optim.load(&path).map_err(|e| format!("cannot load the optimiser's state: {e}"))
}

fn failed(e: impl std::fmt::Display) -> OpError {
    OpError::failed(format!("reward_train: {e}"))
}

fn train(params: RewardTrainParams, choice: DeviceChoice, cx: RunCx) -> Result<(), OpError> {
    let started = Instant::now();
    let seed = params.seed.unwrap_or(cx.seed);
    let (model, _) = resolve_model(&params.model, &cx.stage_cx.pipeline_dir, "model", "reward encoder")
        .map_err(|e| CheckErrors::from(e).into_op_error())?;
    let max_tokens = params.max_tokens(&model).map_err(|e| CheckErrors::from(e).into_op_error())?;
    let mut log = Vec::new();

    // Pairs, split.
    let (mut train_ex, counts) = read_examples(&cx, "pairs", &params)?;
    let has_validation = cx.inputs.contains_key("validation");
    note_read(&mut log, "pairs", &counts, params.transcripts);
    let mut val_ex = if has_validation {
        let (v, counts) = read_examples(&cx, "validation", &params)?;
        note_read(&mut log, "validation", &counts, params.transcripts);
        v
    } else {
        Vec::new()
    };
    if train_ex.is_empty() {
        return Err(OpError::failed(format!(
            "`pairs` has no preference pairs to train on ({} rows{})",
            counts.rows,
            counts.skipped.as_deref().map(|s| format!("; {s}")).unwrap_or_default()
        )));
    }
    if !has_validation {
        let fraction = params.val_fraction.unwrap_or(DEFAULT_VAL_FRACTION);
        let n = train_ex.len();
        let n_val =
            if fraction > 0.0 { ((fraction * n as f64).round() as usize).clamp(1, n.saturating_sub(1)) } else { 0 };
        if fraction > 0.0 && n < 2 {
            return Err(OpError::failed(format!(
                "`pairs` has {n} preference pair: too few to hold out {fraction} for validation (set `val_fraction: 0` or give a `validation` input)"
            )));
        }
        // A seeded permutation; the first n_val are validation, the rest train in input order.
        let mut order: Vec<usize> = (0..n).collect();
        Draw::new(seed, 0x73706c69).shuffle(&mut order); // "spli"
        let mut is_val = vec![false; n];
        order[..n_val].iter().for_each(|&i| is_val[i] = true);
        let all = std::mem::take(&mut train_ex);
        for (i, ex) in all.into_iter().enumerate() {
            if is_val[i] { val_ex.push(ex) } else { train_ex.push(ex) }
        }
    }

    // Encoder and layout.
    let compute = compute::resolve(choice)?;
    cx.notes.set(compute::NOTE, compute.describe());
    log.push(format!("device: {}", compute.describe()));
    let plain = compute.device.clone().without_autodiff();
    let encoder = SentenceEncoder::load(&model, &plain).map_err(OpError::failed)?;
    let (cls, sep) = encoder.special_ids().map_err(failed)?;
    let layout = Layout { cls, sep, max_tokens };
    let hash = reward::encoder_hash(&cx.memo, &model.path).map_err(OpError::failed)?;
    let backend = match compute.backend {
        compute::Backend::Cpu => "cpu",
        compute::Backend::Wgpu => "wgpu",
    };

    let mut inputs: Vec<Vec<u32>> = Vec::new();
    let mut index = std::collections::HashMap::<Vec<u32>, usize>::new();
    let (mut context_cut, mut response_cut, mut identical) = (0usize, 0usize, 0usize);
    let (mut principles_cut, mut principles_left_out) = (0usize, 0usize);
    let mut lay = |examples: &[Example]| -> Result<Vec<Indexed>, OpError> {
        let mut texts: Vec<&str> = Vec::with_capacity(examples.len() * 4);
        for e in examples {
            texts.extend([e.chosen.context.as_str(), e.chosen.response.as_str()]);
            texts.extend([e.rejected.context.as_str(), e.rejected.response.as_str()]);
            texts.extend(e.principles.iter().map(String::as_str));
        }
        let tokens = encoder.tokenize_plain(&texts).map_err(failed)?;
        let mut out = Vec::with_capacity(examples.len());
        let mut at = 0;
        for e in examples {
            let t = &tokens[at..at + 4 + e.principles.len()];
            at += t.len();
            let (c, r) = if e.principles.is_empty() {
                (layout.lay_out(&t[0], &t[1]), layout.lay_out(&t[2], &t[3]))
            } else {
                let ((c, kc), (r, kr)) = (
                    layout.lay_out_conditioned(&t[4..], &t[0], &t[1]),
                    layout.lay_out_conditioned(&t[4..], &t[2], &t[3]),
                );
                let kept = kc.min(kr);
                principles_cut += usize::from(kept < e.principles.len());
                principles_left_out += e.principles.len() - kept;
                (c, r)
            };
            context_cut += usize::from(c.context_cut) + usize::from(r.context_cut);
            response_cut += usize::from(c.response_cut) + usize::from(r.response_cut);
            if c.ids == r.ids {
                identical += 1;
                continue;
            }
            let mut id = |ids: Vec<u32>| {
                let next = index.len();
                *index.entry(ids.clone()).or_insert_with(|| {
                    inputs.push(ids);
                    next
                })
            };
            out.push(Indexed { chosen: id(c.ids), rejected: id(r.ids), margin: e.margin as f32 });
        }
        Ok(out)
    };
    let train_pairs = lay(&train_ex)?;
    let val_pairs = lay(&val_ex)?;
    if params.principles.is_some() {
        log.push(format!(
            "principle-conditioned: {principles_cut} pairs had principles left out to fit ({principles_left_out} \
             principle lines in all)"
        ));
    }
    log.push(format!(
        "{} train and {} validation pairs; inputs of at most {max_tokens} tokens: {context_cut} prompts cut from the left, \
         {response_cut} responses cut at the end, {identical} pairs dropped as identical after cutting",
        train_pairs.len(),
        val_pairs.len()
    ));
    if train_pairs.is_empty() {
        return Err(OpError::failed(format!(
            "no training pairs are left: {identical} became identical after cutting to {max_tokens} tokens"
        )));
    }

    let dim = encoder.dim();
    let device = compute.device.clone();
    let mut trainee = match params.encoder {
        EncoderMode::Frozen => {
            // Embeddings, from the memo when an earlier stage computed them.
            cx.progress.set_total(inputs.len() as u64);
            cx.progress.message("embedding");
            let identity = reward::memo_identity(&hash, backend, max_tokens);
            let embed_started = Instant::now();
            let (embeddings, computed) =
                reward::embed_inputs(&encoder, &inputs, &cx.memo, &identity, params.embed_batch_size, |n| {
                    cx.progress.advance(n as u64)
                })
                .map_err(OpError::failed)?;
            log.push(format!(
                "embedded {} inputs ({computed} computed, {} from the memo) in {:.2} s",
                inputs.len(),
                inputs.len() - computed,
                embed_started.elapsed().as_secs_f64()
            ));
            Trainee::Frozen { head: Head::new(dim, params.hidden, seed, &device), embeddings }
        }
        EncoderMode::Finetune => {
            let bert = crate::kit::encoder::Bert::load(&model, &device).map_err(OpError::failed)?;
            Trainee::Tuned { model: reward::Tuned::new(bert, dim, seed, &device), inputs: inputs.clone() }
        }
    };
    drop(encoder);

    let mut optim = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(params.weight_decay as f32).init();
    let lr = params.learning_rate.unwrap_or(match params.encoder {
        EncoderMode::Frozen => DEFAULT_LR,
        EncoderMode::Finetune => DEFAULT_FINETUNE_LR,
    });
    let steps_per_epoch = train_pairs.len().div_ceil(params.batch_size);
    let total = steps_per_epoch * params.epochs;
    let warmup = (params.warmup_ratio * total as f64).ceil() as usize;
    let center = params.center_rewards_coefficient;
    let batch_size = params.embed_batch_size;

    let mut rows: Vec<Row> = Vec::new();
    let evaluate = |t: &Trainee| -> Result<(Stats, Option<Stats>), OpError> {
        let r = t.rewards(dim, &plain, batch_size)?;
        Ok((stats(&train_pairs, &r, center).expect("training pairs"), stats(&val_pairs, &r, center)))
    };
    // A checkpoint per epoch, in the memo under everything that decides the training.
    let inputs_hashes: Vec<String> =
        ["pairs", "validation"].iter().filter_map(|p| cx.input(p).ok().map(|i| i.hash.clone())).collect();
    let checkpoint_key = |epoch: usize| {
        drover_engine::hash::memo_key(
            "reward-checkpoint/1",
            backend,
            &serde_json::json!({
                "version": <RewardTrain as OpKit>::VERSION, "params": cx.params, "seed": seed,
                "inputs": inputs_hashes, "epoch": epoch,
            }),
        )
    };
    let resumed = (1..=params.epochs).rev().find_map(|e| {
        cx.memo.get(&checkpoint_key(e)).and_then(|b| unpack(&b)).filter(|(c, b)| c.epoch == e && b.len() == 3)
    });
    trainee = trainee.renumbered();
    let mut step = 0usize;
    let mut seen = 0usize;
    let mut last_lr = 0.0;
    let mut stopped = None;
    let mut first_epoch = 1;
    let mut best;
    match resumed {
        Some((c, mut blobs)) => {
            let optim_state = blobs.pop().expect("three blobs");
            let best_bytes = blobs.pop().expect("three blobs");
            let weights = blobs.pop().expect("three blobs");
            trainee = trainee.with_weights(weights, &model.config, &device).map_err(failed)?;
            optim = load_optimizer(optim, &optim_state, &cx.work_dir).map_err(failed)?;
            (step, seen, last_lr, stopped, first_epoch) =
                (c.step, c.seen, f64::from_bits(c.last_lr), c.stopped, c.epoch + 1);
            rows = c.rows.iter().map(row_from_bits).collect();
            best = (f64::from_bits(c.best_loss), c.best_epoch, best_bytes);
            log.push(format!("resumed from the checkpoint of epoch {}", c.epoch));
            cx.progress.message(&format!("resumed after epoch {}", c.epoch));
        }
        None => {
            let (t, v) = evaluate(&trainee)?;
            rows.push((0, 0, 0.0, t, v));
            best = (v.map_or(f64::INFINITY, |v| v.loss), 0usize, trainee.to_safetensors().map_err(failed)?);
        }
    }
    cx.progress.set_total(total as u64);
    cx.progress.advance(step as u64);
    let train_started = Instant::now();
    // Pairs/s counts this process's pairs only (a resumed run's earlier epochs took no time here).
    let seen_before = seen;
    // The optimiser steps alone, without the per-epoch evaluation and checkpoint.
    let mut step_seconds = 0f64;
    let loss = Loss { margins: train_pairs.iter().any(|p| p.margin != 0.0), center };
    let epochs = if stopped.is_some() { first_epoch..=0 } else { first_epoch..=params.epochs };
    for epoch in epochs {
        let mut order: Vec<usize> = (0..train_pairs.len()).collect();
        Draw::new(seed, epoch as u64).shuffle(&mut order);
        for batch in order.chunks(params.batch_size) {
            let step_started = Instant::now();
            let b = batch.len();
            let pairs: Vec<&Indexed> = batch.iter().map(|&i| &train_pairs[i]).collect();
            let (value, grads) = trainee.gradients(&pairs, &loss, dim, &device);
            last_lr = lr * schedule_factor(params.schedule, step, warmup, total);
            trainee = trainee.step(&mut optim, grads, last_lr, params.max_grad_norm);
            step_seconds += step_started.elapsed().as_secs_f64();
            step += 1;
            seen += b;
            cx.progress.advance(1);
            let seconds = train_started.elapsed().as_secs_f64().max(1e-9);
            cx.progress.message(&format!(
                "epoch {epoch}/{}, step {step}/{total}, loss {value:.4}, {} pairs/s",
                params.epochs,
                rate((seen - seen_before) as f64 / seconds)
            ));
        }
        let (t, v) = evaluate(&trainee)?;
        rows.push((epoch, step, last_lr, t, v));
        let weights = trainee.to_safetensors().map_err(failed)?;
        if let Some(v) = v {
            if v.loss < best.0 {
                best = (v.loss, epoch, weights.clone());
            } else if params.patience.is_some_and(|p| epoch - best.1 >= p) {
                stopped = Some(epoch);
            }
        } else {
            best = (f64::INFINITY, epoch, weights.clone());
        }
        let header = Checkpoint {
            epoch,
            step,
            seen,
            last_lr: last_lr.to_bits(),
            rows: rows.iter().map(row_bits).collect(),
            best_loss: best.0.to_bits(),
            best_epoch: best.1,
            stopped,
        };
        let state = optimizer_bytes(&optim, &cx.work_dir).map_err(failed)?;
        cx.memo.put(&checkpoint_key(epoch), &pack(&header, &[&weights, &best.2, &state])).map_err(failed)?;
        cx.memo.sync();
        // Only the last epoch's is needed to resume: the memo keeps one checkpoint per
        // training, not one per epoch (a fine-tuned MiniLM's is about 360 MB).
        if epoch > 1 {
            cx.memo.remove(&checkpoint_key(epoch - 1)).map_err(failed)?;
        }
        crate::kit::llm::append_log(&cx, &format!("checkpoint: epoch {epoch}"));
        if stopped.is_some() {
            break;
        }
    }
    let seconds = train_started.elapsed().as_secs_f64();
    let pairs = (seen - seen_before) as f64;
    log.push(format!(
        "trained {step} steps in {seconds:.2} s ({} pairs/s; the steps alone {step_seconds:.2} s, {} pairs/s, \
         the rest evaluating and checkpointing each epoch); kept epoch {}{}",
        rate(pairs / seconds.max(1e-9)),
        rate(pairs / step_seconds.max(1e-9)),
        best.1,
        stopped.map(|e| format!("; stopped early after epoch {e}")).unwrap_or_default()
    ));
    for (epoch, _, _, t, v) in &rows {
        log.push(format!(
            "epoch {epoch}: train loss {:.4} accuracy {:.4}{}",
            t.loss,
            t.accuracy,
            v.map(|v| format!(", validation loss {:.4} accuracy {:.4}", v.loss, v.accuracy)).unwrap_or_default()
        ));
    }

    // Outputs.
    let kept = rows.iter().find(|r| r.0 == best.1).map(|r| (r.3, r.4)).expect("the kept epoch has a row");
    let config = RewardConfig {
        format: reward::FORMAT.into(),
        version: 1,
        encoder_mode: match params.encoder {
            EncoderMode::Frozen => "frozen".into(),
            EncoderMode::Finetune => "finetune".into(),
        },
        encoder: EncoderInfo { name: encoder_name(&params.model), blake3: hash, dim, max_tokens },
        hidden: params.hidden,
        trained: serde_json::json!({
            "epochs": rows.len() - 1,
            "kept_epoch": best.1,
            "train_pairs": train_pairs.len(),
            "val_pairs": val_pairs.len(),
            "train_accuracy": kept.0.accuracy,
            "val_accuracy": kept.1.map(|v| v.accuracy),
            "seed": seed,
        }),
        conditioned: params.principles.is_some(),
    };
    config.write(&cx.output("model")?.path, &best.2).map_err(OpError::failed)?;
    let batch = metrics_batch(&rows, best.1)?;
    table::write_parquet(&cx.output("metrics")?.path, &batch.schema(), &[batch])?;
    let figure = learning_curve(&rows);
    plot::write_svg(&figure, &cx.output("plot")?.path).map_err(|e| OpError::failed(format!("plot: {e}")))?;
    // plotters picks the PNG encoder by extension; the output slot has none.
    let png = cx.work_dir.join("plot.png");
    plot::write_png(&figure, &png).map_err(|e| OpError::failed(format!("plot: {e}")))?;
    let slot = &cx.output("plot_png")?.path;
    std::fs::rename(&png, slot).map_err(|e| OpError::io(format!("cannot move the PNG to {}", slot.display()), e))?;
    log.push(format!("done in {:.2} s", started.elapsed().as_secs_f64()));
    crate::kit::llm::append_log(&cx, &log.join("\n"));
    Ok(())
}

/// A rate with three significant digits at most and no fewer than needed: a fine-tuning on a
/// CPU trains well under one pair a second, which `{:.0}` shows as 0.
fn rate(per_second: f64) -> String {
    match per_second {
        r if r >= 100.0 => format!("{r:.0}"),
        r if r >= 10.0 => format!("{r:.1}"),
        r if r >= 1.0 => format!("{r:.2}"),
        r => format!("{r:.3}"),
    }
}

fn note_read(log: &mut Vec<String>, port: &str, counts: &ReadCounts, transcripts: bool) {
    log.push(format!("`{port}`: {} rows", counts.rows));
    if let Some(s) = &counts.skipped {
        log.push(format!("`{port}`: {s}"));
    }
    if transcripts && counts.not_transcripts > 0 {
        log.push(format!(
            "`{port}`: {} pairs skipped: a response with no \"\\n\\nAssistant:\" turn or an empty last turn",
            counts.not_transcripts
        ));
    }
}

fn encoder_name(spec: &ModelSpec) -> String {
    match (&spec.pulled, &spec.path) {
        (Some(name), _) => format!("pulled: {name}"),
        (None, Some(path)) => format!("path: {path}"),
        (None, None) => String::new(),
    }
}

fn metrics_batch(rows: &[Row], kept: usize) -> Result<RecordBatch, OpError> {
    let schema = Arc::new(metrics_schema());
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(rows.iter().map(|r| r.0 as i64).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(rows.iter().map(|r| r.1 as i64).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
    ];
    for k in 0..STATS.len() {
        columns.push(Arc::new(Float64Array::from(rows.iter().map(|r| Some(r.3.values()[k])).collect::<Vec<_>>())));
    }
    for k in 0..STATS.len() {
        columns.push(Arc::new(Float64Array::from(rows.iter().map(|r| r.4.map(|v| v.values()[k])).collect::<Vec<_>>())));
    }
    columns.push(Arc::new(BooleanArray::from(rows.iter().map(|r| r.0 == kept).collect::<Vec<_>>())));
    RecordBatch::try_new(schema, columns).map_err(failed)
}

fn learning_curve(rows: &[Row]) -> plot::Figure {
    let line = |label: &str, color, points: Vec<(f64, f64)>| plot::Series {
        label: Some(label.into()),
        style: plot::SeriesStyle::Line,
        color,
        point_colors: Vec::new(),
        points,
    };
    let mut series = vec![line("train loss", (31, 119, 180), rows.iter().map(|r| (r.0 as f64, r.3.loss)).collect())];
    let val: Vec<(f64, f64)> = rows.iter().filter_map(|r| r.4.map(|v| (r.0 as f64, v.loss))).collect();
    if !val.is_empty() {
        series.push(line("validation loss", (214, 39, 40), val));
    }
    plot::Figure {
        title: "reward_train: Bradley-Terry loss per epoch".into(),
        x_label: "epoch".into(),
        y_label: "loss".into(),
        log_x: false,
        log_y: false,
        series,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use arrow::array::StringArray;
    use drover_engine::{CheckLocation, TableSchema};
    use serde_json::json;

    use super::*;
    use crate::kit::testing::{OpTest, batch, first_error, minilm, texts};

    const CPU: RewardTrain = RewardTrain { device: DeviceChoice::Cpu };

    const TOPICS: [&str; 20] = [
        "baking bread",
        "tying a bowline knot",
        "planting tomatoes",
        "changing a bike tyre",
        "brewing green tea",
        "learning the guitar",
        "saving for retirement",
        "training a puppy",
        "painting a fence",
        "writing a cover letter",
        "cleaning a cast iron pan",
        "reading a bus timetable",
        "sorting recycling",
        "folding a fitted sheet",
        "studying for an exam",
        "repotting a cactus",
        "setting up a tent",
        "making a budget",
        "ironing a shirt",
        "choosing running shoes",
    ];

    /// A preference set a head on sentence embeddings can separate: the chosen answer helps,
    /// the rejected one refuses; `shuffled` swaps the two in a seeded half of the rows.
    pub(super) fn synthetic(shuffled: bool) -> RecordBatch {
        let helpful = [
            "Sure, here is a careful step-by-step guide to {t}, with the common mistakes to avoid.",
            "Happy to help with {t}: start with the basics, then practise each step slowly.",
            "Great question about {t}. The key idea is preparation; here is how to do it well.",
            "Here is a friendly explanation of {t}, with tips that make it easier.",
            "For {t}, gather what you need first, then follow these clear instructions.",
            "Let me walk you through {t} so that it works the first time.",
        ];
        let refusing = [
            "No. I will not talk about {t}.",
            "That is a stupid question about {t}; figure it out yourself.",
            "Whatever. {t} is boring and I do not care.",
            "I refuse to answer anything about {t}.",
            "Go away, nobody wants to hear about {t}.",
            "Not my problem. Ask someone else about {t}.",
        ];
        let mut draw = Draw::new(99, 1);
        let (mut prompt, mut chosen, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
        for (i, t) in TOPICS.iter().enumerate() {
            for k in 0..6 {
                let good = helpful[(i + k) % 6].replace("{t}", t);
                let bad = refusing[(i * 5 + k) % 6].replace("{t}", t);
                let swap = shuffled && draw.below(2) == 1;
                prompt.push(format!("How do I get better at {t}?"));
                chosen.push(if swap { bad.clone() } else { good.clone() });
                rejected.push(if swap { good } else { bad });
            }
        }
        let col = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
        batch(vec![("prompt", col(prompt)), ("chosen", col(chosen)), ("rejected", col(rejected))])
    }

    fn ports() -> Vec<(&'static str, PortType)> {
        vec![
            ("model", PortType::Dir),
            ("metrics", PortType::Table(TableSchema::default())),
            ("plot", PortType::Blob),
            ("plot_png", PortType::Blob),
        ]
    }

    fn run(t: &OpTest) -> Result<BTreeMap<String, PathBuf>, OpError> {
        t.run_ports(&CPU, &ports())
    }

    fn metrics(path: &std::path::Path) -> RecordBatch {
        let (schema, batches) = table::read_input(path).unwrap();
        concat_batches(&schema, &batches).unwrap()
    }

    fn last(batch: &RecordBatch, column: &str) -> f64 {
        let kept = batch.column_by_name("kept").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
        let row = (0..kept.len()).find(|&i| kept.value(i)).unwrap();
        batch.column_by_name(column).unwrap().as_any().downcast_ref::<Float64Array>().unwrap().value(row)
    }

    fn log(t: &OpTest) -> String {
        std::fs::read_to_string(t.dir().join("log.txt")).unwrap_or_default()
    }

    #[test]
    fn rates_below_one_pair_a_second_are_not_shown_as_zero() {
        assert_eq!(rate(0.37), "0.370");
        assert_eq!(rate(2.5), "2.50");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(32653.2), "32653");
    }

    #[test]
    fn a_separable_set_is_learnt_and_shuffled_labels_are_not() {
        minilm();
        let params = json!({"epochs": 8, "patience": null, "seed": 3});
        let t = OpTest::new(params.clone()).input("pairs", synthetic(false));
        t.check(&CPU).unwrap();
        let out = run(&t).unwrap();
        let m = metrics(&out["metrics"]);
        assert_eq!(m.num_rows(), 9, "epoch 0 and 8 epochs");
        assert!(last(&m, "val_accuracy") >= 0.95, "{}", log(&t));
        assert!(last(&m, "val_margin") > 0.0);
        let l = log(&t);
        assert!(l.contains("96 train and 24 validation pairs"), "{l}");

        let t = OpTest::new(params).input("pairs", synthetic(true));
        let out = run(&t).unwrap();
        let m = metrics(&out["metrics"]);
        // The last epoch's head (the kept one is the untrained head of epoch 0, whose
        // validation loss no epoch beat): it fits the training labels a little and no more.
        let acc = m.column_by_name("val_accuracy").unwrap().as_any().downcast_ref::<Float64Array>().unwrap().value(8);
        assert!((0.25..=0.75).contains(&acc), "val accuracy {acc} on shuffled labels: {}", log(&t));
    }

    #[test]
    fn the_whole_encoder_fine_tunes_and_its_model_reloads() {
        minilm();
        // 24 pairs (4 topics), 18 to train on in 3 steps: a debug build trains MiniLM slowly.
        let params = json!({
            "encoder": "finetune", "epochs": 1, "max_tokens": 24, "batch_size": 6, "learning_rate": 1e-4,
            "val_fraction": 0.25, "patience": null, "seed": 3
        });
        let t = OpTest::new(params).input("pairs", synthetic(false).slice(0, 24));
        let out = run(&t).unwrap();
        let m = metrics(&out["metrics"]);
        let val = m.column_by_name("val_accuracy").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        assert!(val.value(1) > val.value(0) && val.value(1) >= 0.8, "{}", log(&t));
        let config = RewardConfig::read(&out["model"]).unwrap();
        assert_eq!(config.encoder_mode, "finetune");
        // The saved model gives the trained rewards back.
        let bytes = std::fs::read(out["model"].join("model.safetensors")).unwrap();
        let model = crate::kit::encoder::ModelDir::inspect(&minilm()).unwrap();
        let device = Device::flex();
        let tuned = reward::Tuned::from_safetensors(bytes.clone(), &model.config, "model", &device).unwrap();
        let again = tuned.to_safetensors().unwrap();
        assert!(again == bytes, "saving the loaded model gave other bytes");
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_a_new_head_embeds_nothing() {
        minilm();
        let bytes = |out: &BTreeMap<String, PathBuf>| {
            (std::fs::read(&out["metrics"]).unwrap(), std::fs::read(out["model"].join("head.safetensors")).unwrap())
        };
        // Two stores: the second trains from scratch, no checkpoint of the first to resume.
        let params = json!({"epochs": 2, "hidden": 16});
        let t = OpTest::new(params.clone()).input("pairs", synthetic(false));
        let first = bytes(&run(&t).unwrap());
        assert!(log(&t).contains("embedded 240 inputs (240 computed, 0 from the memo)"), "{}", log(&t));
        let other = OpTest::new(params).input("pairs", synthetic(false));
        let out = run(&other).unwrap();
        assert!(first == bytes(&out), "the same seed gave other bytes");
        assert!(!log(&other).contains("resumed"), "{}", log(&other));
        let config = RewardConfig::read(&out["model"]).unwrap();
        assert_eq!((config.encoder.name.as_str(), config.encoder.dim, config.hidden), ("pulled: minilm", 384, 16));
        assert!(std::fs::read_to_string(&out["plot"]).unwrap().starts_with("<svg"));
        assert!(std::fs::read(&out["plot_png"]).unwrap().starts_with(b"\x89PNG"));
        // Another head in the first store: trained anew, on embeddings from the memo.
        let t = t.params(json!({"epochs": 2, "hidden": 8}));
        let out = run(&t).unwrap();
        assert!(log(&t).contains("embedded 240 inputs (0 computed, 240 from the memo)"), "{}", log(&t));
        assert_eq!(RewardConfig::read(&out["model"]).unwrap().hidden, 8);
        // One checkpoint per training, whatever the epochs: a 4-epoch training adds one entry.
        let memo = t.dir().join(".drover");
        let entries = || drover_engine::Memo::new(&memo).usage().0;
        let before = entries();
        let t = t.params(json!({"epochs": 4, "hidden": 8}));
        run(&t).unwrap();
        assert_eq!(entries(), before + 1, "older epochs' checkpoints are kept");
    }

    #[test]
    fn pairs_identical_after_cutting_are_counted_and_dropped() {
        minilm();
        // The two responses differ only past the 16-token window.
        let long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen";
        let a = format!("{long} good");
        let b = format!("{long} bad");
        let input =
            texts(&[("chosen", &[a.as_str(), "yes please", "fine"]), ("rejected", &[b.as_str(), "no", "fine"])]);
        let t = OpTest::new(json!({"max_tokens": 16, "epochs": 1, "val_fraction": 0})).input("pairs", input);
        run(&t).unwrap();
        let l = log(&t);
        assert!(l.contains("`pairs`: 1 row skipped: 1 with two identical responses (rows 2)"), "{l}");
        assert!(l.contains("1 train and 0 validation pairs"), "{l}");
        assert!(l.contains("1 pairs dropped as identical after cutting"), "{l}");
    }

    #[test]
    fn transcripts_are_split_at_the_last_assistant_turn_and_others_counted() {
        minilm();
        let t1 = "\n\nHuman: Can you help me bake bread?\n\nAssistant: Yes, start with flour, water and yeast.";
        let t2 = "\n\nHuman: Can you help me bake bread?\n\nAssistant: No.";
        let t3 = "\n\nHuman: What is a good first plant?\n\nAssistant: A pothos is hard to kill.";
        let t4 = "\n\nHuman: What is a good first plant?\n\nAssistant: Plants are boring.";
        let input = texts(&[("chosen", &[t1, t3, "no turns here"]), ("rejected", &[t2, t4, "nor here"])]);
        let t = OpTest::new(json!({"transcripts": true, "epochs": 1, "val_fraction": 0})).input("pairs", input);
        run(&t).unwrap();
        let l = log(&t);
        assert!(
            l.contains("`pairs`: 1 pairs skipped: a response with no \"\\n\\nAssistant:\" turn or an empty last turn"),
            "{l}"
        );
        assert!(l.contains("2 train and 0 validation pairs"), "{l}");
        // Four distinct inputs: each side with its own prompt.
        assert!(l.contains("embedded 4 inputs"), "{l}");
    }

    const PRINCIPLES: &str = r#"[
        {"dimension": "Concise", "definition": "The response should be brief and clear.",
         "negative_definition": "The response should avoid being brief."},
        {"dimension": "Ethical", "definition": "The AI should not produce harmful content.",
         "negative_definition": "The AI should avoid being harmless."}
    ]"#;

    #[test]
    fn principles_enter_the_inputs_and_are_capped_to_what_fits() {
        minilm();
        let t = OpTest::new(json!({
            "principles": {"path": "p.json"}, "epochs": 1, "val_fraction": 0, "max_tokens": 40
        }))
        .input("pairs", synthetic(false).slice(0, 6));
        std::fs::write(t.dir().join("p.json"), PRINCIPLES).unwrap();
        assert_eq!(t.check(&CPU).unwrap().file_deps, [PathBuf::from("p.json")]);
        let out = run(&t).unwrap();
        let l = log(&t);
        // 40 tokens hold a response (14 to 22 tokens) and the first principle (10 tokens), and the
        // second one too beside the shorter responses only.
        assert!(
            l.contains("principle-conditioned: 3 pairs had principles left out to fit (3 principle lines in all)"),
            "{l}"
        );
        assert!(RewardConfig::read(&out["model"]).unwrap().conditioned);
        // SALMON's own columns name each row's principles; an unknown one fails the stage.
        let salmon = texts(&[
            ("output_1", &["Sure, here is how.", "No."]),
            ("output_2", &["No.", "Sure, here is how."]),
            ("preference", &["1", "2"]),
            ("dimensions", &["['Ethical', 'Concise']", "['Funny']"]),
            ("negative_definitions", &["[0, 1]", "[0]"]),
        ]);
        let t = t.params(json!({"principles": {"path": "p.json"}, "val_fraction": 0})).input("pairs", salmon);
        let err = run(&t).unwrap_err();
        assert_eq!(err.message, "`pairs` row 1: dimension `Funny` is not in p.json (it has Concise, Ethical)");
    }

    #[test]
    fn a_principle_set_naming_an_unknown_dimension_is_a_plan_error() {
        let t = OpTest::new(json!({"principles": {"path": "p.json", "dimensions": ["Concise", "Funny"]}}))
            .input("pairs", texts(&[("chosen", &["a"]), ("rejected", &["b"])]));
        std::fs::write(t.dir().join("p.json"), PRINCIPLES).unwrap();
        let err = first_error(t.check(&CPU));
        assert_eq!(err.message, "unknown dimension `Funny`: p.json has Concise, Ethical");
        assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["principles", "dimensions"]));
        std::fs::write(t.dir().join("p.json"), "{}").unwrap();
        let err = first_error(t.check(&CPU));
        assert!(err.message.contains("p.json: not a principle collection"), "{}", err.message);
    }

    #[test]
    fn a_table_without_pairs_fails_the_stage() {
        minilm();
        let t = OpTest::new(json!({})).input("pairs", texts(&[("chosen", &[]), ("rejected", &[])]));
        let err = run(&t).unwrap_err();
        assert_eq!(err.message, "`pairs` has no preference pairs to train on (0 rows)");
        let t = OpTest::new(json!({})).input("pairs", texts(&[("chosen", &["same"]), ("rejected", &["same"])]));
        let err = run(&t).unwrap_err();
        assert_eq!(
            err.message,
            "`pairs` has no preference pairs to train on (1 rows; 1 row skipped: 1 with two identical responses (rows 0))"
        );
    }

    #[test]
    fn bad_inputs_and_params_are_plan_errors() {
        minilm();
        let err = first_error(
            OpTest::new(json!({})).input("pairs", texts(&[("output_1", &["a"]), ("output_2", &["b"])])).check(&CPU),
        );
        assert_eq!(err.message, "`pairs` looks like SALMON's `output_1, output_2, preference` but has no `preference`");
        let input = batch(vec![
            ("chosen", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("rejected", Arc::new(StringArray::from(vec!["b"])) as ArrayRef),
        ]);
        let err = first_error(OpTest::new(json!({})).input("pairs", input).check(&CPU));
        assert_eq!(err.message, "column `chosen` of `pairs` is Int64, not text");
        let pairs = || texts(&[("chosen", &["a"]), ("rejected", &["b"])]);
        let err = first_error(
            OpTest::new(json!({"val_fraction": 0.1})).input("pairs", pairs()).input("validation", pairs()).check(&CPU),
        );
        assert_eq!(err.message, "val_fraction is set, but a `validation` input is given");
        assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["val_fraction"]));
        let errors = OpTest::new(json!({"epochs": 0, "warmup_ratio": 1.5, "max_grad_norm": 0, "max_tokens": 600}))
            .input("pairs", pairs())
            .check(&CPU)
            .unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "epochs must be at least 1",
                "warmup_ratio must be in [0, 1), got 1.5",
                "max_grad_norm must be above 0, got 0",
                "max_tokens must be in 4..=512, got 600"
            ]
        );
        let err = first_error(OpTest::new(json!({"margin_column": "m"})).input("pairs", pairs()).check(&CPU));
        assert_eq!(err.message, "unknown column `m`");
    }

    #[test]
    fn schedules_match_hugging_face() {
        // get_linear_schedule_with_warmup(warmup 2, total 10): 0, .5, then (10-s)/8.
        let lin: Vec<f64> = (0..10).map(|s| schedule_factor(Schedule::Linear, s, 2, 10)).collect();
        assert_eq!(lin, [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]);
        let cos: Vec<f64> = (0..10).map(|s| schedule_factor(Schedule::Cosine, s, 2, 10)).collect();
        assert_eq!(cos[..3], [0.0, 0.5, 1.0]);
        assert!((cos[6] - 0.5).abs() < 1e-12, "{cos:?}");
    }

    #[test]
    fn stats_count_ties_as_wrong_and_add_the_centering_term() {
        let pairs = [
            Indexed { chosen: 0, rejected: 1, margin: 0.0 },
            Indexed { chosen: 2, rejected: 3, margin: 0.0 },
            Indexed { chosen: 4, rejected: 5, margin: 1.0 },
        ];
        let r = [2.0f32, 1.0, 0.5, 0.5, -1.0, 0.0];
        let s = stats(&pairs, &r, None).unwrap();
        assert!((s.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.margin - 0.0).abs() < 1e-12);
        assert_eq!((s.min_reward, s.max_reward), (-1.0, 2.0));
        assert!((s.mean_reward - 0.5).abs() < 1e-12);
        let want = -(log_sigmoid_f64(1.0) + log_sigmoid_f64(0.0) + log_sigmoid_f64(-2.0)) / 3.0;
        assert!((s.loss - want).abs() < 1e-12);
        let c = stats(&pairs, &r, Some(0.01)).unwrap();
        assert!((c.loss - (want + 0.01 * (9.0 + 1.0 + 1.0) / 3.0)).abs() < 1e-12);
        assert_eq!(stats(&[], &r, None), None);
        assert!((log_sigmoid_f64(-800.0) + 800.0).abs() < 1e-9);
    }
}
