//! The `reward_score` op: adds a `reward` column to a table of (prompt, response) rows, scored
//! by a reward model from `reward_train`.
//!
//! Inputs: `table` and `model` (a `reward_train` stage's `model` directory). Each row is laid
//! out as in training (`[CLS] prompt [SEP] response [SEP]`, the response kept whole and the
//! prompt cut from the left, in the model's `max_tokens`), embedded by the encoder the model
//! names (its blake3 must match the stage's `model_encoder`; embeddings are shared with
//! training through the memo) and scored by the head. A null or empty response gets a null
//! reward, counted in the log. With `transcripts: true` the response is an HH-RLHF transcript,
//! split as `reward_train` splits it.
//!
//! Deterministic on one device; between devices rewards agree to about 1e-3 (the embeddings
//! agree to a cosine of 0.99999).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema};
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, Column, OpError, OpKit, PortDecl, PortType, Ports, RunCx, TableSchema,
    Work,
};
use serde::Deserialize;

use crate::kit::compute::{self, DeviceChoice};
use crate::kit::encoder::{ModelSpec, SentenceEncoder, resolve_model};
use crate::kit::reward::{self, Head, Layout, RewardConfig, Tuned};
use crate::kit::table;

/// The `with:` block of a `reward_score` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardScoreParams {
    /// The response column.
    #[serde(default = "default_response")]
    pub response_column: String,
    /// The prompt column (default: `prompt` when the table has one; none: responses alone).
    #[serde(default)]
    pub prompt_column: Option<String>,
    /// Responses are whole HH-RLHF transcripts: the prompt is everything up to the last
    /// "Assistant:" turn.
    #[serde(default)]
    pub transcripts: bool,
    /// The principles to score under, for a principle-conditioned model: `{ path:
    /// COLLECTION.json, dimensions: [..], max_principles: 5 }` (as `reward_train` takes them).
    #[serde(default)]
    pub principles: Option<reward::PrincipleSpec>,
    /// The sentence encoder the model was trained on. Default: `{ pulled: minilm }`.
    #[serde(default)]
    pub model_encoder: ModelSpec,
    /// The name of the new column.
    #[serde(default = "default_output")]
    pub output_column: String,
    /// Inputs per encoder forward pass.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_response() -> String {
    "response".into()
}
fn default_output() -> String {
    "reward".into()
}
fn default_batch() -> usize {
    64
}

/// Scores (prompt, response) rows with a trained reward model.
pub struct RewardScore {
    pub device: DeviceChoice,
}

impl RewardScoreParams {
    /// The prompt column: the one named, or `prompt` when the table has it.
    fn prompt(&self, columns: &[Column]) -> Option<String> {
        self.prompt_column.clone().or_else(|| columns.iter().any(|c| c.name == "prompt").then(|| "prompt".into()))
    }
}

impl OpKit for RewardScore {
    type Params = RewardScoreParams;
    const NAME: &str = "reward_score";
    // 2: the encoder's GELU on the CPU is computed by drover's own vectorised kernel
    // (kit/encoder/gelu.rs), not libm's `erff`: the last bits of every CPU result differ from
    // version 1's.
    const VERSION: u32 = 2;
    const DOC: &str = "Adds a reward column to (prompt, response) rows, scored by a reward_train model.";

    fn inputs() -> Ports {
        Ports::Fixed(vec![
            PortDecl::new("table", PortType::any_table(), "The rows to score."),
            PortDecl::new("model", PortType::Dir, "A reward_train stage's `model`."),
        ])
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "The input's rows and columns plus the reward.")
    }

    fn check(&self, params: &RewardScoreParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let mut errors = CheckErrors::new();
        let columns = table::input_columns(cx, "table").map_err(|e| errors.push(e)).ok().flatten();
        if let Some(e) = table::check_text_column("table", Some("response_column"), &params.response_column, columns) {
            errors.push(e);
        }
        if let Some(name) = &params.prompt_column
            && let Some(e) = table::check_text_column("table", Some("prompt_column"), name, columns)
        {
            errors.push(e);
        }
        if columns.is_some_and(|c| c.iter().any(|c| c.name == params.output_column)) {
            errors.push(
                CheckError::param(
                    &["output_column"],
                    format!("the input already has a column `{}`", params.output_column),
                )
                .help("name the new column with `output_column`, or drop the old one with a `select` stage"),
            );
        }
        if params.batch_size == 0 {
            errors.push(CheckError::param(&["batch_size"], "batch_size must be at least 1"));
        }
        let mut checked = Checked::default();
        if let Some(spec) = &params.principles
            && let Err(e) = spec.check(cx.pipeline_dir, &mut checked)
        {
            errors.push(e);
        }
        match resolve_model(&params.model_encoder, cx.pipeline_dir, "model_encoder", "reward encoder") {
            Ok((model, dep)) => dep.declare(&model, &mut checked),
            Err(e) => errors.push(e),
        }
        let schema = match columns {
            Some(columns) => {
                let mut cols = columns.to_vec();
                cols.push(Column::new(&params.output_column, "Float64"));
                TableSchema::with_columns(cols)
            }
            None => TableSchema::default(),
        };
        errors.or(checked.output("out", PortType::Table(schema)))
    }

    fn run(&self, params: RewardScoreParams, cx: RunCx) -> Work {
        let device = self.device;
        Work::blocking(move || score(params, device, cx))
    }
}

fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, OpError> {
    let array =
        batch.column_by_name(name).ok_or_else(|| OpError::failed(format!("the input has no column `{name}`")))?;
    if !matches!(array.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return Err(OpError::failed(format!("column `{name}` is {}, not text", array.data_type())));
    }
    let utf8 = cast(array, &DataType::Utf8).map_err(|e| OpError::failed(format!("column `{name}`: {e}")))?;
    let utf8 = utf8.as_any().downcast_ref::<StringArray>().expect("cast to Utf8 gives a StringArray");
    Ok((0..utf8.len()).map(|i| utf8.is_valid(i).then(|| utf8.value(i).to_string())).collect())
}

fn score(params: RewardScoreParams, choice: DeviceChoice, cx: RunCx) -> Result<(), OpError> {
    let dir = cx.input("model")?.path.clone();
    let config = RewardConfig::read(&dir).map_err(OpError::failed)?;
    let (model, _) = resolve_model(&params.model_encoder, &cx.stage_cx.pipeline_dir, "model_encoder", "reward encoder")
        .map_err(|e| CheckErrors::from(e).into_op_error())?;
    let hash = reward::encoder_hash(&cx.memo, &model.path).map_err(OpError::failed)?;
    if hash != config.encoder.blake3 {
        return Err(OpError::failed(format!(
            "the reward model was trained on the encoder `{}` (blake3 {}), but `model_encoder` names {} (blake3 {hash}): \
             its embeddings would mean nothing to the head",
            config.encoder.name,
            config.encoder.blake3,
            model.path.display()
        )));
    }
    if config.conditioned != params.principles.is_some() {
        return Err(OpError::failed(if config.conditioned {
            "the reward model was trained with principles in its inputs: give `principles:` to score under a principle set".to_string()
        } else {
            "the reward model was trained without principles: leave `principles:` out".to_string()
        }));
    }
    let (schema, batches) = table::read_input(&cx.input("table")?.path)?;
    let input = concat_batches(&schema, &batches).map_err(|e| OpError::failed(format!("reward_score: {e}")))?;
    let columns = table::table_schema(&schema).columns.unwrap_or_default();
    let responses = strings(&input, &params.response_column)?;
    let prompts = params.prompt(&columns).map(|p| strings(&input, &p)).transpose()?;

    let compute = compute::resolve(choice)?;
    cx.notes.set(compute::NOTE, compute.describe());
    let plain = compute.device.clone().without_autodiff();
    let encoder = SentenceEncoder::load(&model, &plain).map_err(OpError::failed)?;
    let (cls, sep) = encoder.special_ids().map_err(OpError::failed)?;
    let layout = Layout { cls, sep, max_tokens: config.encoder.max_tokens };

    let principles = match &params.principles {
        Some(spec) => {
            let set = reward::Principles::read(&drover_engine::paths::resolve(&cx.stage_cx.pipeline_dir, &spec.path))
                .map_err(OpError::failed)?;
            spec.per_row(&set, &input).map_err(|e| OpError::failed(format!("`table` {e}")))?
        }
        None => vec![Vec::new(); input.num_rows()],
    };
    // (row, context, response) of every row with a response.
    let mut rows = Vec::new();
    let mut unscored = 0usize;
    for (i, r) in responses.iter().enumerate() {
        let prompt = prompts.as_ref().and_then(|p| p[i].clone()).unwrap_or_default();
        let side = r.as_deref().filter(|r| !r.is_empty()).and_then(|r| {
            if params.transcripts {
                reward::split_transcript(r).map(|(p, r)| (format!("{prompt}{p}"), r.to_string()))
            } else {
                Some((prompt, r.to_string()))
            }
        });
        match side {
            Some((c, r)) => rows.push((i, c, r)),
            None => unscored += 1,
        }
    }
    let mut texts: Vec<&str> = Vec::new();
    for (row, c, r) in &rows {
        texts.extend([c.as_str(), r.as_str()]);
        texts.extend(principles[*row].iter().map(String::as_str));
    }
    let tokens = encoder.tokenize_plain(&texts).map_err(OpError::failed)?;
    let mut inputs: Vec<Vec<u32>> = Vec::with_capacity(rows.len());
    let mut at = 0;
    for (row, _, _) in &rows {
        let t = &tokens[at..at + 2 + principles[*row].len()];
        at += t.len();
        inputs.push(if principles[*row].is_empty() {
            layout.lay_out(&t[0], &t[1]).ids
        } else {
            layout.lay_out_conditioned(&t[2..], &t[0], &t[1]).0.ids
        });
    }
    let backend = match compute.backend {
        compute::Backend::Cpu => "cpu",
        compute::Backend::Wgpu => "wgpu",
    };
    cx.progress.set_total(inputs.len() as u64);
    let weights = dir.join(config.weights_file());
    let bytes = std::fs::read(&weights).map_err(|e| OpError::io(format!("cannot read {}", weights.display()), e))?;
    let what = weights.display().to_string();
    let read = |t: burn::tensor::Tensor<1>| -> Result<Vec<f32>, OpError> {
        t.into_data().try_to_vec::<f32>().map_err(|e| OpError::failed(format!("cannot read rewards back: {e:?}")))
    };
    let (rewards, computed) = if config.encoder_mode == "finetune" {
        // The encoder's weights are the model's own: nothing to share with other stages.
        let tuned = Tuned::from_safetensors(bytes, &model.config, &what, &plain).map_err(OpError::failed)?;
        let rewards = tuned
            .rewards(&inputs, params.batch_size, &plain, |n| cx.progress.advance(n as u64))
            .map_err(OpError::failed)?;
        (rewards, inputs.len())
    } else {
        let identity = reward::memo_identity(&hash, backend, config.encoder.max_tokens);
        let (embeddings, computed) =
            reward::embed_inputs(&encoder, &inputs, &cx.memo, &identity, params.batch_size, |n| {
                cx.progress.advance(n as u64)
            })
            .map_err(OpError::failed)?;
        let head = Head::from_safetensors(&bytes, &what, &plain).map_err(OpError::failed)?;
        let dim = config.encoder.dim;
        let rewards = if inputs.is_empty() {
            Vec::new()
        } else {
            let x = burn::tensor::Tensor::<2>::from_data(
                burn::tensor::TensorData::new(embeddings, [inputs.len(), dim]),
                &plain,
            );
            read(head.forward(x))?
        };
        (rewards, computed)
    };
    let mut values: Vec<Option<f64>> = vec![None; input.num_rows()];
    for ((row, _, _), v) in rows.iter().zip(rewards) {
        values[*row] = Some(f64::from(v));
    }
    let mut log = vec![format!(
        "scored {} rows ({computed} inputs encoded, {} from the memo) on {}",
        rows.len(),
        rows.len() - computed,
        compute.describe()
    )];
    if unscored > 0 {
        log.push(format!("{unscored} rows without a response (or transcript turn): their reward is null"));
    }
    crate::kit::llm::append_log(&cx, &log.join("\n"));
    let mut fields: Vec<Field> = input.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(&params.output_column, DataType::Float64, true));
    let mut columns: Vec<ArrayRef> = input.columns().to_vec();
    columns.push(Arc::new(Float64Array::from(values)));
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| OpError::failed(format!("reward_score: {e}")))?;
    table::write_parquet(&cx.output("out")?.path, &out.schema(), &[out])
}
