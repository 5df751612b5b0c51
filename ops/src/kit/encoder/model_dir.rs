//! What a sentence-transformers BERT directory holds, read and checked without loading a
//! weight: `config.json` (the architecture), `tokenizer.json`, the pooling config, and the
//! header of `model.safetensors` (every tensor the encoder needs, with the shape the config
//! implies). Cheap enough for plan time, so that a wrong directory is an error at its line in
//! the pipeline file rather than a failed stage.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A problem with a model directory: what is wrong, and what to do instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelProblem {
    pub message: String,
    pub help: String,
}

impl ModelProblem {
    fn new(message: impl Into<String>, help: impl Into<String>) -> ModelProblem {
        ModelProblem { message: message.into(), help: help.into() }
    }
}

/// The fields of a Hugging Face BERT `config.json` the encoder uses.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn two() -> usize {
    2
}

fn bert_eps() -> f64 {
    1e-12
}

fn gelu() -> String {
    "gelu".into()
}

/// A checked model directory.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDir {
    pub path: PathBuf,
    pub config: BertConfig,
    /// sentence-transformers' `max_seq_length` (`sentence_bert_config.json`), if it says one.
    pub max_seq_length: Option<usize>,
    /// Tensor names in `model.safetensors` start with this (`""` or `bert.`).
    pub prefix: String,
}

impl ModelDir {
    /// The length of an embedding.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// The longest input the model takes, in tokens (its position embeddings).
    pub fn positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// The default token limit: sentence-transformers' `max_seq_length`, else the positions.
    pub fn default_max_tokens(&self) -> usize {
        self.max_seq_length.unwrap_or(self.positions()).min(self.positions())
    }

    pub fn weights(&self) -> PathBuf {
        self.path.join("model.safetensors")
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.path.join("tokenizer.json")
    }

    /// Reads and checks the directory: every file the encoder needs is there, the config is a
    /// BERT the encoder can run, pooling is by mean, and the weights have the shapes the config
    /// implies.
    pub fn inspect(path: &Path) -> Result<ModelDir, ModelProblem> {
        const HELP: &str = "give a sentence-transformers BERT directory (config.json, tokenizer.json, \
                            model.safetensors), or `pulled: minilm`";
        if !path.is_dir() {
            return Err(ModelProblem::new(format!("no model directory at {}", path.display()), HELP));
        }
        for file in ["config.json", "model.safetensors"] {
            if !path.join(file).is_file() {
                return Err(ModelProblem::new(format!("{} has no {file}", path.display()), HELP));
            }
        }
        if !path.join("tokenizer.json").is_file() {
            return Err(ModelProblem::new(
                format!("{} has no tokenizer.json", path.display()),
                "the encoder reads the fast tokenizer's tokenizer.json (from `tokenizer.save_pretrained(DIR)` \
                 in Python); vocab.txt alone is not enough",
            ));
        }
        let config: BertConfig = read_json(&path.join("config.json"))?;
        check_config(&config, &path.join("config.json"))?;
        check_pooling(path)?;
        let max_seq_length = read_optional_json::<SentenceBertConfig>(&path.join("sentence_bert_config.json"))?
            .and_then(|c| c.max_seq_length);
        let prefix = check_weights(&config, &path.join("model.safetensors"))?;
        Ok(ModelDir { path: path.to_path_buf(), config, max_seq_length, prefix })
    }
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelProblem> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelProblem::new(format!("cannot read {}: {e}", path.display()), "check the file"))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelProblem::new(format!("{}: {e}", path.display()), "is this a Hugging Face BERT model?"))
}

fn read_optional_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ModelProblem> {
    if path.is_file() { read_json(path).map(Some) } else { Ok(None) }
}

fn check_config(c: &BertConfig, at: &Path) -> Result<(), ModelProblem> {
    let unsupported = |what: String| {
        ModelProblem::new(
            format!("{}: {what}", at.display()),
            "the encoder runs BERT-family models (absolute positions, exact GELU); use a `command` stage for others",
        )
    };
    if let Some(t) = c.model_type.as_deref().filter(|t| *t != "bert") {
        return Err(unsupported(format!("model_type is `{t}`, not `bert`")));
    }
    if c.hidden_act != "gelu" {
        return Err(unsupported(format!("hidden_act is `{}`, not `gelu`", c.hidden_act)));
    }
    if let Some(p) = c.position_embedding_type.as_deref().filter(|p| *p != "absolute") {
        return Err(unsupported(format!("position_embedding_type is `{p}`, not `absolute`")));
    }
    if c.hidden_size == 0 || c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
        return Err(unsupported(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            c.hidden_size, c.num_attention_heads
        )));
    }
    if c.max_position_embeddings < 2 || c.vocab_size == 0 || c.type_vocab_size == 0 {
        return Err(unsupported("max_position_embeddings, vocab_size or type_vocab_size is too small".into()));
    }
    Ok(())
}

/// sentence-transformers' pooling, when `modules.json` says: only mean pooling is what this
/// encoder computes, so any other is an error rather than silently different vectors.
fn check_pooling(dir: &Path) -> Result<(), ModelProblem> {
    let Some(modules) = read_optional_json::<Vec<ModuleEntry>>(&dir.join("modules.json"))? else {
        return Ok(());
    };
    let Some(pooling) = modules.iter().find(|m| m.kind.ends_with(".Pooling")) else {
        return Ok(());
    };
    let at = dir.join(&pooling.path).join("config.json");
    let Some(p) = read_optional_json::<PoolingConfig>(&at)? else {
        return Ok(());
    };
    let others = [
        (p.pooling_mode_cls_token, "cls_token"),
        (p.pooling_mode_max_tokens, "max_tokens"),
        (p.pooling_mode_mean_sqrt_len_tokens, "mean_sqrt_len_tokens"),
    ];
    if let Some((_, mode)) = others.iter().find(|(on, _)| *on) {
        return Err(ModelProblem::new(
            format!("{}: pooling_mode_{mode} is on; the encoder pools by mean only", at.display()),
            "use a model that pools by mean (most sentence-transformers BERT models do)",
        ));
    }
    if !p.pooling_mode_mean_tokens {
        return Err(ModelProblem::new(
            format!("{}: pooling_mode_mean_tokens is off; the encoder pools by mean only", at.display()),
            "use a model that pools by mean",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
}

/// Every tensor the encoder loads, by its Hugging Face name (without a prefix), with the shape
/// the config implies.
pub fn expected_tensors(c: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut out = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![c.vocab_size, h]),
        ("embeddings.position_embeddings.weight".into(), vec![c.max_position_embeddings, h]),
        ("embeddings.token_type_embeddings.weight".into(), vec![c.type_vocab_size, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for (name, shape) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![i, h]),
            ("intermediate.dense.bias", vec![i]),
            ("output.dense.weight", vec![h, i]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            out.push((format!("{p}.{name}"), shape));
        }
    }
    out
}

/// Reads the safetensors header (not the data) and checks every tensor the encoder needs.
/// Returns the prefix the names carry (`bert.` in checkpoints saved from a task model).
fn check_weights(c: &BertConfig, at: &Path) -> Result<String, ModelProblem> {
    let header = read_header(at)?;
    let prefix = if header.contains_key("embeddings.word_embeddings.weight") { "" } else { "bert." };
    for (name, shape) in expected_tensors(c) {
        let Some(entry) = header.get(&format!("{prefix}{name}")) else {
            return Err(ModelProblem::new(
                format!("{} has no tensor `{name}`", at.display()),
                "is this a BERT model saved by transformers (BertModel)?",
            ));
        };
        if entry.dtype != "F32" {
            return Err(ModelProblem::new(
                format!("{}: `{name}` is {}; the encoder reads F32 weights", at.display(), entry.dtype),
                "save the model in float32 (`model.float().save_pretrained(DIR)`)",
            ));
        }
        if entry.shape != shape {
            return Err(ModelProblem::new(
                format!(
                    "{}: `{name}` is {:?}, but config.json (hidden_size {}, intermediate_size {}) implies {:?}",
                    at.display(),
                    entry.shape,
                    c.hidden_size,
                    c.intermediate_size,
                    shape
                ),
                "config.json and model.safetensors come from different models",
            ));
        }
    }
    Ok(prefix.to_string())
}

fn read_header(at: &Path) -> Result<BTreeMap<String, HeaderEntry>, ModelProblem> {
    let bad = |why: String| ModelProblem::new(format!("{}: {why}", at.display()), "is this a safetensors file?");
    let mut file = std::fs::File::open(at).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(format!("cannot read its header: {e}")))?;
    let len = u64::from_le_bytes(len);
    // safetensors caps headers at 100 MB; a larger length is not a safetensors file.
    if len > 100_000_000 {
        return Err(bad(format!("a header of {len} bytes")));
    }
    let mut json = vec![0u8; len as usize];
    file.read_exact(&mut json).map_err(|e| bad(format!("cannot read its header: {e}")))?;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|e| bad(format!("its header is not JSON: {e}")))?;
    header.remove("__metadata__");
    header
        .into_iter()
        .map(|(name, v)| {
            let entry: HeaderEntry =
                serde_json::from_value(v).map_err(|e| bad(format!("header entry `{name}`: {e}")))?;
            Ok((name, entry))
        })
        .collect()
}
