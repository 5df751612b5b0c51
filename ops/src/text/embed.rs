//! The `embed` op: sentence embeddings of a text column, computed inside drover with burn on
//! the run's `--device` (the CPU backend, or wgpu on a GPU).
//!
//! Input `table`; output `out`: the input's rows and columns plus `embedding` (or
//! `output_column`), a `FixedSizeList<Float32, D>` of unit length (D = the model's hidden size,
//! 384 for all-MiniLM-L6-v2). The model is `model: { pulled: minilm }` (the default, after
//! `drover models pull minilm`) or any local sentence-transformers BERT directory,
//! `model: { path: DIR }`; its files' content enters the stage's key. Texts longer than
//! `max_tokens` (default: the model's `max_seq_length`, 256 for MiniLM) are cut, as
//! sentence-transformers cuts them; the stage log and the run record say how many. A null text
//! gets a null embedding, counted in the log.
//!
//! Deterministic on one device: the same table gives the same bytes run after run and at any
//! thread count. Devices agree to a cosine of 0.99999, not bit for bit (a cached result from one
//! device is served on another; see `kit::encoder`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema};
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, Column, OpError, OpKit, PortType, Ports, RunCx, TableSchema, Work,
};
use serde::Deserialize;

use crate::kit::compute::{self, DeviceChoice};
use crate::kit::encoder::{ModelDir, ModelSpec, SentenceEncoder, resolve_model};
use crate::kit::table;

/// The `with:` block of an `embed` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedParams {
    /// The text column to embed.
    #[serde(default = "default_column")]
    pub column: String,
    /// The model. Default: `{ pulled: minilm }` (all-MiniLM-L6-v2).
    #[serde(default)]
    pub model: ModelSpec,
    /// Texts are cut to this many tokens, `[CLS]` and `[SEP]` included. Default: the model's
    /// `max_seq_length` (256 for MiniLM); at most its position embeddings (512).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Texts per forward pass (texts of similar length go together).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The name of the new column.
    #[serde(default = "default_output_column")]
    pub output_column: String,
}

fn default_column() -> String {
    "text".into()
}

fn default_batch_size() -> usize {
    32
}

fn default_output_column() -> String {
    "embedding".into()
}

/// Embeds a text column with a BERT sentence encoder.
pub struct Embed {
    pub device: DeviceChoice,
}

impl EmbedParams {
    fn max_tokens(&self, model: &ModelDir) -> Result<usize, CheckError> {
        let Some(n) = self.max_tokens else { return Ok(model.default_max_tokens()) };
        if n < 2 {
            return Err(CheckError::param(&["max_tokens"], format!("max_tokens must be at least 2, got {n}"))
                .help("a text is at least [CLS] and [SEP]"));
        }
        if n > model.positions() {
            return Err(CheckError::param(
                &["max_tokens"],
                format!(
                    "max_tokens {n} is more than the model's {} positions (max_position_embeddings in config.json)",
                    model.positions()
                ),
            )
            .help(format!("use at most {}: the model cannot read further; longer texts are cut", model.positions())));
        }
        Ok(n)
    }
}

/// The list's items: nullable, as pyarrow and most writers make them.
fn item_field() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Float32, true))
}

/// The type of the new column.
fn embedding_type(dim: usize) -> DataType {
    DataType::FixedSizeList(item_field(), dim as i32)
}

impl OpKit for Embed {
    type Params = EmbedParams;
    const NAME: &str = "embed";
    // 2: the encoder's GELU on the CPU is computed by drover's own vectorised kernel
    // (kit/encoder/gelu.rs), not libm's `erff`: the last bits of every CPU result differ from
    // version 1's.
    const VERSION: u32 = 2;
    const DOC: &str = "Adds sentence embeddings (unit vectors) of a text column, computed with a BERT \
                       sentence encoder (all-MiniLM-L6-v2 by default) on the run's device.";

    fn inputs() -> Ports {
        Ports::one("table", PortType::any_table(), "The table with the text column.")
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "The input's rows and columns plus the embedding column.")
    }

    fn check(&self, params: &EmbedParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let mut errors = CheckErrors::new();
        let columns = table::input_columns(cx, "table").map_err(|e| errors.push(e)).ok().flatten();
        if let Some(e) = table::check_text_column("table", Some("column"), &params.column, columns) {
            errors.push(e);
        }
        if columns.is_some_and(|c| c.iter().any(|c| c.name == params.output_column)) {
            errors.push(
                CheckError::param(
                    &["output_column"],
                    format!("the input already has a column `{}`", params.output_column),
                )
                .about_column("table", &params.output_column)
                .help("name the new column with `output_column`, or drop the old one with a `select` stage"),
            );
        }
        if params.batch_size == 0 {
            errors.push(CheckError::param(&["batch_size"], "batch_size must be at least 1"));
        }
        let mut checked = Checked::default();
        let mut dim = None;
        match resolve_model(&params.model, cx.pipeline_dir, "model", "embed model") {
            Ok((model, dep)) => {
                if let Err(e) = params.max_tokens(&model) {
                    errors.push(e);
                }
                dep.declare(&model, &mut checked);
                dim = Some(model.dim());
            }
            Err(e) => errors.push(e),
        }
        let schema = match (columns, dim) {
            (Some(columns), Some(dim)) => {
                let mut cols = columns.to_vec();
                cols.push(Column::new(&params.output_column, embedding_type(dim).to_string()));
                TableSchema::with_columns(cols)
            }
            _ => TableSchema::default(),
        };
        errors.or(checked.output("out", PortType::Table(schema)))
    }

    fn run(&self, params: EmbedParams, cx: RunCx) -> Work {
        let device = self.device;
        Work::blocking(move || {
            let (model, _) = resolve_model(&params.model, &cx.stage_cx.pipeline_dir, "model", "embed model")
                .map_err(|e| CheckErrors::from(e).into_op_error())?;
            let max_tokens = params.max_tokens(&model).map_err(|e| CheckErrors::from(e).into_op_error())?;
            let (schema, batches) = table::read_input(&cx.input("table")?.path)?;
            let input = concat_batches(&schema, &batches).map_err(|e| OpError::failed(format!("embed: {e}")))?;
            let texts = text_column(&input, &params.column)?;
            let rows: Vec<usize> = (0..texts.len()).filter(|&i| texts.is_valid(i)).collect();
            let nulls = texts.len() - rows.len();
            let dim = model.dim();
            let mut log = vec![format!("model: {} ({} dims, max_tokens {max_tokens})", model.path.display(), dim)];
            let mut values = vec![0f32; texts.len() * dim];
            if !rows.is_empty() {
                let compute = compute::resolve(device)?;
                cx.notes.set(compute::NOTE, compute.describe());
                log.push(format!("device: {}", compute.describe()));
                // Inference: autodiff would record every operation for a backward pass that
                // never comes.
                let device = compute.device.clone().without_autodiff();
                let encoder = SentenceEncoder::load(&model, &device).map_err(OpError::failed)?;
                let strings: Vec<&str> = rows.iter().map(|&i| texts.value(i)).collect();
                cx.progress.set_total(rows.len() as u64);
                let started = std::time::Instant::now();
                let encoded = encoder
                    .encode(&strings, max_tokens, params.batch_size, |n| cx.progress.advance(n as u64))
                    .map_err(OpError::failed)?;
                for (k, &row) in rows.iter().enumerate() {
                    values[row * dim..(row + 1) * dim].copy_from_slice(encoded.row(k));
                }
                let seconds = started.elapsed().as_secs_f64();
                cx.notes.set("truncated", encoded.truncated.to_string());
                // Speed, for benches/embed: the log is not an output, so a time in it changes
                // no key and no bytes.
                log.push(format!(
                    "encoded {} texts ({} tokens, {} with padding, batches of {}) in {seconds:.3} s: {:.1} texts/s",
                    rows.len(),
                    encoded.tokens,
                    encoded.padded_tokens,
                    params.batch_size,
                    rows.len() as f64 / seconds.max(1e-9)
                ));
                log.push(format!("{} rows embedded; {} cut at max_tokens {max_tokens}", rows.len(), encoded.truncated));
            }
            if nulls > 0 {
                log.push(format!("{nulls} rows with a null `{}`: their embedding is null", params.column));
            }
            crate::kit::llm::append_log(&cx, &log.join("\n"));
            let out = with_embeddings(&input, &params.output_column, dim, values, texts.nulls().cloned())?;
            table::write_parquet(&cx.output("out")?.path, &out.schema(), &[out])
        })
    }
}

/// The text column as UTF-8 strings; an error naming the column when it is missing or not text
/// (possible when its type was unknown at plan time).
fn text_column(input: &RecordBatch, name: &str) -> Result<StringArray, OpError> {
    let Some(array) = input.column_by_name(name) else {
        return Err(OpError::failed(format!("the input has no column `{name}`")));
    };
    if !matches!(array.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return Err(OpError::failed(format!("column `{name}` is {}, not text", array.data_type())));
    }
    let strings = cast(array, &DataType::Utf8).map_err(|e| OpError::failed(format!("column `{name}`: {e}")))?;
    Ok(strings.as_any().downcast_ref::<StringArray>().expect("cast to Utf8 gives a StringArray").clone())
}

fn with_embeddings(
    input: &RecordBatch,
    name: &str,
    dim: usize,
    values: Vec<f32>,
    nulls: Option<arrow::buffer::NullBuffer>,
) -> Result<RecordBatch, OpError> {
    let list = FixedSizeListArray::try_new(item_field(), dim as i32, Arc::new(Float32Array::from(values)), nulls)
        .map_err(|e| OpError::failed(format!("embed: {e}")))?;
    let mut fields: Vec<Field> = input.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    // Nullable whatever the rows: a null text has a null embedding, and the schema must not
    // depend on the data.
    fields.push(Field::new(name, embedding_type(dim), true));
    let mut columns: Vec<ArrayRef> = input.columns().to_vec();
    columns.push(Arc::new(list));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| OpError::failed(format!("embed: {e}")))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::Int64Array;
    use drover_engine::CheckLocation;
    use serde_json::json;

    use super::*;
    use crate::kit::testing::{OpTest, batch, first_error, minilm, names, texts};

    const CPU: Embed = Embed { device: DeviceChoice::Cpu };

    fn vectors(out: &RecordBatch, column: &str) -> Vec<Option<Vec<f32>>> {
        let list = out.column_by_name(column).unwrap().as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        (0..list.len())
            .map(|i| {
                list.is_valid(i).then(|| {
                    let v = list.value(i);
                    v.as_any().downcast_ref::<Float32Array>().unwrap().values().to_vec()
                })
            })
            .collect()
    }

    fn log(t: &OpTest) -> String {
        std::fs::read_to_string(t.dir().join("log.txt")).unwrap_or_default()
    }

    /// A copy of MiniLM's directory (its big files linked) with some files edited or removed.
    fn edited_minilm(dir: &Path, edit: impl FnOnce(&Path)) -> String {
        let model = dir.join("model");
        std::fs::create_dir_all(model.join("1_Pooling")).unwrap();
        for (file, _) in crate::kit::pulled::known("minilm").unwrap().files {
            std::os::unix::fs::symlink(minilm().join(file), model.join(file)).unwrap();
        }
        edit(&model);
        model.to_string_lossy().into_owned()
    }

    #[test]
    fn embeddings_are_added_in_row_order_with_the_input_columns() {
        minilm();
        let input = batch(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                "text",
                Arc::new(StringArray::from(vec![
                    Some("A man is eating food."),
                    None,
                    Some("The new movie is awesome!"),
                ])),
            ),
        ]);
        let t = OpTest::new(json!({})).input("table", input);
        let checked = t.check(&CPU).unwrap();
        let PortType::Table(schema) = &checked.outputs["out"] else { panic!() };
        let declared: Vec<(&str, &str)> =
            schema.columns.as_ref().unwrap().iter().map(|c| (c.name.as_str(), c.dtype.as_str())).collect();
        assert_eq!(declared, [("id", "Int64"), ("text", "Utf8"), ("embedding", "FixedSizeList(384 x Float32)")]);
        assert_eq!(checked.named_deps, [("embed model `minilm`".to_string(), minilm())]);

        let out = t.run(&CPU).unwrap();
        assert_eq!(names(&out), ["id", "text", "embedding"]);
        assert_eq!(table::table_schema(&out.schema()), schema.clone());
        let v = vectors(&out, "embedding");
        // The reference vectors' first components (testdata/minilm-reference.json).
        assert!((v[0].as_ref().unwrap()[0] - 0.033_241_6).abs() < 1e-5);
        assert_eq!(v[1], None);
        assert_eq!(v[2].as_ref().unwrap().len(), 384);
        let log = log(&t);
        assert!(log.contains("2 rows embedded; 0 cut at max_tokens 256"), "{log}");
        assert!(log.contains("1 rows with a null `text`: their embedding is null"), "{log}");
    }

    #[test]
    fn text_longer_than_the_model_is_cut_and_counted() {
        minilm();
        let long = "word ".repeat(1000);
        let input = texts(&[("text", &[long.as_str(), "short"])]);
        let t = OpTest::new(json!({"max_tokens": 512, "output_column": "v"})).input("table", input);
        let out = t.run(&CPU).unwrap();
        assert_eq!(vectors(&out, "v").iter().filter(|v| v.is_some()).count(), 2);
        assert!(log(&t).contains("2 rows embedded; 1 cut at max_tokens 512"), "{}", log(&t));
    }

    #[test]
    fn an_empty_table_gives_an_empty_table_with_the_column() {
        minilm();
        let t = OpTest::new(json!({})).input("table", texts(&[("text", &[])]));
        let out = t.run(&CPU).unwrap();
        assert_eq!(out.num_rows(), 0);
        assert_eq!(names(&out), ["text", "embedding"]);
    }

    #[test]
    fn the_same_table_gives_the_same_bytes() {
        minilm();
        let rows = ["one", "two words", "three words here", "a much longer fourth sentence, with a comma"];
        let run = || {
            let t = OpTest::new(json!({"batch_size": 2})).input("table", texts(&[("text", &rows)]));
            t.run(&CPU).unwrap();
            std::fs::read(t.dir().join("out.parquet")).unwrap()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn a_column_that_is_not_text_is_a_plan_error() {
        minilm();
        let input = batch(vec![("n", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]);
        let err = first_error(OpTest::new(json!({"column": "n"})).input("table", input).check(&CPU));
        assert_eq!(err.message, "column `n` of `table` is Int64, not text");
        assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["column"]));
        let err =
            first_error(OpTest::new(json!({"column": "txt"})).input("table", texts(&[("text", &["a"])])).check(&CPU));
        assert_eq!((err.message.as_str(), err.help.as_deref()), ("unknown column `txt`", Some("did you mean `text`?")));
    }

    #[test]
    fn a_column_that_is_not_text_fails_the_stage_when_known_only_at_run_time() {
        minilm();
        let input = batch(vec![("text", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]);
        let err = OpTest::new(json!({})).input("table", input).unknown_schemas().run(&CPU).unwrap_err();
        assert_eq!(err.message, "column `text` is Int64, not text");
    }

    #[test]
    fn params_out_of_range_are_plan_errors() {
        minilm();
        let t = |params| OpTest::new(params).input("table", texts(&[("text", &["a"]), ("embedding", &["x"])]));
        let err = first_error(
            OpTest::new(json!({"max_tokens": 1000})).input("table", texts(&[("text", &["a"])])).check(&CPU),
        );
        assert_eq!(
            err.message,
            "max_tokens 1000 is more than the model's 512 positions (max_position_embeddings in config.json)"
        );
        assert_eq!(err.help.as_deref(), Some("use at most 512: the model cannot read further; longer texts are cut"));
        let errors = t(json!({"batch_size": 0, "max_tokens": 1})).check(&CPU).unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "the input already has a column `embedding`",
                "batch_size must be at least 1",
                "max_tokens must be at least 2, got 1"
            ]
        );
    }

    #[test]
    fn model_choices_that_name_no_encoder_are_plan_errors() {
        let t = |model| OpTest::new(json!({"model": model})).input("table", texts(&[("text", &["a"])]));
        let err = first_error(t(json!({"pulled": "smollm2"})).check(&CPU));
        assert_eq!(err.message, "`smollm2` is not a sentence encoder");
        assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["model", "pulled"]));
        let err = first_error(t(json!({"pulled": "minilm", "path": "m"})).check(&CPU));
        assert_eq!(err.message, "both `pulled` and `path` are set");
        let err = first_error(t(json!({"path": "no/such/dir"})).check(&CPU));
        assert!(
            err.message.starts_with("no model directory at ") && err.message.ends_with("no/such/dir"),
            "{}",
            err.message
        );
        assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["model", "path"]));
    }

    #[test]
    fn a_model_directory_without_a_tokenizer_is_a_plan_error() {
        let dir = tempfile::tempdir().unwrap();
        let model = edited_minilm(dir.path(), |m| std::fs::remove_file(m.join("tokenizer.json")).unwrap());
        let t = OpTest::new(json!({"model": {"path": model}})).input("table", texts(&[("text", &["a"])]));
        let err = first_error(t.check(&CPU));
        assert_eq!(err.message, format!("{model} has no tokenizer.json"));
        assert!(err.help.unwrap().contains("tokenizer.save_pretrained(DIR)"));
    }

    #[test]
    fn a_model_directory_with_another_hidden_size_is_a_plan_error() {
        // MiniLM's weights with a config.json that claims hidden_size 768 (a stand-in for a
        // config and weights from two different models).
        let dir = tempfile::tempdir().unwrap();
        let model = edited_minilm(dir.path(), |m| {
            let config = std::fs::read_to_string(m.join("config.json")).unwrap();
            std::fs::remove_file(m.join("config.json")).unwrap();
            std::fs::write(m.join("config.json"), config.replace("\"hidden_size\": 384", "\"hidden_size\": 768"))
                .unwrap();
        });
        let t = OpTest::new(json!({"model": {"path": &model}})).input("table", texts(&[("text", &["a"])]));
        let err = first_error(t.check(&CPU));
        assert_eq!(
            err.message,
            format!(
                "{model}/model.safetensors: `embeddings.word_embeddings.weight` is [30522, 384], but config.json \
                 (hidden_size 768, intermediate_size 1536) implies [30522, 768]"
            )
        );
        assert_eq!(err.help.as_deref(), Some("config.json and model.safetensors come from different models"));
    }

    #[test]
    fn a_model_that_pools_otherwise_is_a_plan_error() {
        let dir = tempfile::tempdir().unwrap();
        let model = edited_minilm(dir.path(), |m| {
            let pooling = m.join("1_Pooling/config.json");
            let text = std::fs::read_to_string(&pooling).unwrap();
            std::fs::remove_file(&pooling).unwrap();
            std::fs::write(
                &pooling,
                text.replace("\"pooling_mode_cls_token\": false", "\"pooling_mode_cls_token\": true"),
            )
            .unwrap();
        });
        let t = OpTest::new(json!({"model": {"path": &model}})).input("table", texts(&[("text", &["a"])]));
        let err = first_error(t.check(&CPU));
        assert_eq!(
            err.message,
            format!("{model}/1_Pooling/config.json: pooling_mode_cls_token is on; the encoder pools by mean only")
        );
    }

    #[test]
    fn a_local_model_directory_enters_the_key_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let model = edited_minilm(dir.path(), |_| {});
        let t = OpTest::new(json!({"model": {"path": &model}})).input("table", texts(&[("text", &["a"])]));
        let checked = t.check(&CPU).unwrap();
        assert_eq!(checked.file_deps, [std::path::PathBuf::from(&model)]);
        assert!(checked.named_deps.is_empty());
    }
}
