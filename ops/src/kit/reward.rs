//! What the reward ops share (`reward_train`, `reward_score`): how a (context, response) pair
//! becomes one encoder input, the embeddings of those inputs kept in the memo, the reward head,
//! and the reward model directory (`config.json` + `head.safetensors`).
//!
//! - [`split_transcript`]: Anthropic HH-RLHF rows are whole transcripts; the prompt is
//!   everything up to and including the last `"\n\nAssistant:"`, the response what follows
//!   (TRL's `extract_anthropic_prompt`, used by its HH-RLHF examples).
//! - [`Layout`]: `[CLS] context [SEP] response [SEP]` in at most `max_tokens` tokens. The
//!   response is kept whole and the context is cut from the left, because what decides a
//!   preference is the response and the last turns before it: in HH-RLHF 11% of pairs share a
//!   prefix longer than MiniLM's 256 tokens, so cutting from the right would make chosen and
//!   rejected the same input. A response longer than the window alone is cut at its end.
//! - [`embed_inputs`]: frozen-encoder embeddings (the forward `embed` uses: mean pooling, unit
//!   length), kept in the memo by the input's token ids, the encoder's hash and the backend,
//!   so that training another head on the same pairs does not re-embed them.
//! - [`Head`]: the reward head, `dim -> hidden -> 1` with ReLU, initialised as PyTorch's
//!   `nn.Linear` is (uniform in ±1/sqrt(fan_in)) but from a seeded [`Draw`].
//! - [`Tuned`]: the fine-tuned model, the whole encoder and a linear head (bias zero-init, as
//!   SALMON's reward head), in one burn module.
//! - [`RewardConfig`]: the model directory's `config.json`, which names the encoder and its
//!   hash, so that a model is never served with embeddings from another encoder.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use drover_engine::Memo;
use serde::{Deserialize, Serialize};

use crate::kit::draw::Draw;
use crate::kit::encoder::{Bert, BertConfig, SentenceEncoder, TokenBatch, length_batches};

/// What ends the prompt of an HH-RLHF transcript.
pub const ASSISTANT: &str = "\n\nAssistant:";

/// `(prompt, response)` of an HH-RLHF transcript: the prompt up to and including the last
/// `"\n\nAssistant:"`, the response the rest (with its leading space, as TRL keeps it).
/// `None` when the text has no assistant turn.
pub fn split_transcript(text: &str) -> Option<(&str, &str)> {
    let at = text.rfind(ASSISTANT)? + ASSISTANT.len();
    Some(text.split_at(at))
}

/// The encoder's input layout: special ids and the token limit.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub cls: u32,
    pub sep: u32,
    pub max_tokens: usize,
}

/// One laid-out input, and what was cut to fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Laid {
    pub ids: Vec<u32>,
    /// Context tokens left out (from the left).
    pub context_cut: bool,
    /// The response alone did not fit; its end was cut.
    pub response_cut: bool,
}

impl Layout {
    /// `[CLS] context [SEP] response [SEP]` (`[CLS] response [SEP]` without a context), at most
    /// `max_tokens` long: the response whole when it fits, the context's last tokens in what
    /// is left.
    pub fn lay_out(&self, context: &[u32], response: &[u32]) -> Laid {
        let room = self.max_tokens.saturating_sub(2);
        if response.len() >= room || context.is_empty() {
            let kept = &response[..response.len().min(room)];
            let ids = [&[self.cls], kept, &[self.sep]].concat();
            return Laid { ids, context_cut: !context.is_empty(), response_cut: response.len() > room };
        }
        // One more [SEP] between context and response.
        let left = room - response.len() - 1;
        if left == 0 {
            let ids = [&[self.cls], response, &[self.sep]].concat();
            return Laid { ids, context_cut: true, response_cut: false };
        }
        let start = context.len().saturating_sub(left);
        let ids = [&[self.cls], &context[start..], &[self.sep], response, &[self.sep]].concat();
        Laid { ids, context_cut: start > 0, response_cut: false }
    }
}

/// One principle of a SALMON principle collection (`principle_collection_rm.json`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Principle {
    pub dimension: String,
    pub definition: String,
    pub negative_definition: String,
}

/// A principle collection, in its file's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principles(pub Vec<Principle>);

impl Principles {
    /// Reads SALMON's JSON list of `{dimension, definition, negative_definition}`.
    pub fn read(path: &Path) -> Result<Principles, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let list: Vec<Principle> = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: not a principle collection (a JSON list of {{dimension, definition, negative_definition}}): {e}",
                path.display()
            )
        })?;
        if list.is_empty() {
            return Err(format!("{} has no principles", path.display()));
        }
        Ok(Principles(list))
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|p| p.dimension.as_str()).collect()
    }

    /// SALMON's `{Dimensions}` lines, `- DEFINITION` (or the negative definition), for
    /// `(dimension, negated)` pairs; an error names the first unknown dimension.
    pub fn bullets(&self, dims: &[(String, bool)]) -> Result<Vec<String>, String> {
        dims.iter()
            .map(|(d, neg)| {
                let p = self.0.iter().find(|p| &p.dimension == d).ok_or_else(|| d.clone())?;
                Ok(format!("- {}", if *neg { &p.negative_definition } else { &p.definition }))
            })
            .collect()
    }
}

/// The `principles:` param of the reward ops: principle-conditioned mode (SALMON).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrincipleSpec {
    /// A principle collection as SALMON writes it (a JSON list of `{dimension, definition,
    /// negative_definition}`, e.g. `principle_collection_rm.json`), relative to the pipeline.
    pub path: String,
    /// The dimensions every row is judged by. Default: a row's own `dimensions` (and
    /// `negative_definitions`) columns, as SALMON's tables have them, else the collection's
    /// first `max_principles` (as SALMON does).
    #[serde(default)]
    pub dimensions: Option<Vec<String>>,
    /// At most this many principles per row (SALMON's default, 5).
    #[serde(default = "default_max_principles")]
    pub max_principles: usize,
}

fn default_max_principles() -> usize {
    5
}

impl PrincipleSpec {
    /// Reads and checks the collection at plan time, errors at `principles`; the file enters the
    /// stage's key.
    pub fn check(
        &self,
        pipeline_dir: &Path,
        checked: &mut drover_engine::Checked,
    ) -> Result<Principles, drover_engine::CheckError> {
        use drover_engine::CheckError;
        let at = drover_engine::paths::resolve(pipeline_dir, &self.path);
        let set = Principles::read(&at).map_err(|e| CheckError::param(&["principles", "path"], e))?;
        checked.file_deps.push(std::path::PathBuf::from(&self.path));
        if self.max_principles == 0 {
            return Err(CheckError::param(&["principles", "max_principles"], "max_principles must be at least 1"));
        }
        for d in self.dimensions.iter().flatten() {
            if !set.names().contains(&d.as_str()) {
                return Err(CheckError::param(
                    &["principles", "dimensions"],
                    format!("unknown dimension `{d}`: {} has {}", self.path, set.names().join(", ")),
                )
                .help("name dimensions of the principle collection, as its `dimension` fields spell them"));
            }
        }
        Ok(set)
    }

    /// Each row's principle lines (SALMON's `- DEFINITION`), at most `max_principles`.
    pub fn per_row(&self, set: &Principles, batch: &arrow::array::RecordBatch) -> Result<Vec<Vec<String>>, String> {
        let column = |name: &str| -> Option<Vec<Option<String>>> {
            let array = batch.column_by_name(name)?;
            let utf8 = arrow::compute::cast(array, &arrow::datatypes::DataType::Utf8).ok()?;
            let utf8 = utf8.as_any().downcast_ref::<arrow::array::StringArray>()?;
            use arrow::array::Array;
            Some((0..utf8.len()).map(|i| utf8.is_valid(i).then(|| utf8.value(i).to_string())).collect())
        };
        let first: Vec<(String, bool)> =
            set.0.iter().take(self.max_principles).map(|p| (p.dimension.clone(), false)).collect();
        let fixed = self.dimensions.as_ref().map(|d| d.iter().map(|d| (d.clone(), false)).collect::<Vec<_>>());
        let (dims, negs) = (column("dimensions"), column("negative_definitions"));
        (0..batch.num_rows())
            .map(|row| {
                let mut wanted = match (&fixed, &dims) {
                    (Some(f), _) => f.clone(),
                    (None, Some(d)) => {
                        let names = d[row].as_deref().map(list_items).unwrap_or_default();
                        let flags = negs.as_ref().and_then(|n| n[row].as_deref()).map(list_items).unwrap_or_default();
                        names
                            .into_iter()
                            .enumerate()
                            .map(|(i, n)| {
                                (n, flags.get(i).is_some_and(|f| f != "0" && !f.eq_ignore_ascii_case("false")))
                            })
                            .collect()
                    }
                    (None, None) => first.clone(),
                };
                wanted.truncate(self.max_principles);
                set.bullets(&wanted).map_err(|d| {
                    format!("row {row}: dimension `{d}` is not in {} (it has {})", self.path, set.names().join(", "))
                })
            })
            .collect()
    }
}

/// The items of a Python list or tuple literal as SALMON (and `ai_preference`) writes
/// `dimensions` and `negative_definitions` (`"['Concise', 'Ethical']"`, `"('Concise',)"`,
/// `"(0, 1)"`, `"(False, True)"`), or a plain comma-separated list.
pub fn list_items(text: &str) -> Vec<String> {
    let inner = text.trim().trim_start_matches(['[', '(']).trim_end_matches([']', ')']);
    inner
        .split(',')
        .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Layout {
    /// `[CLS] principles [SEP] context [SEP] response [SEP]`: the response first (whole when it
    /// fits), then whole principles in order while they fit, then the context's last tokens.
    /// Returns the input and how many principles it holds.
    pub fn lay_out_conditioned(&self, principles: &[Vec<u32>], context: &[u32], response: &[u32]) -> (Laid, usize) {
        let room = self.max_tokens.saturating_sub(2);
        let response_len = response.len().min(room);
        // Room for the principles and their [SEP].
        let mut left = room - response_len;
        let mut kept = 0;
        let mut block: Vec<u32> = Vec::new();
        for p in principles {
            if block.len() + p.len() + 1 > left {
                break;
            }
            block.extend_from_slice(p);
            kept += 1;
        }
        if kept > 0 {
            block.push(self.sep);
            left -= block.len();
        }
        let inner = Layout { max_tokens: left + 2 + response_len, ..*self };
        let laid = inner.lay_out(context, response);
        let ids = [&[self.cls], block.as_slice(), &laid.ids[1..]].concat();
        (Laid { ids, ..laid }, kept)
    }
}

/// Embeddings of laid-out inputs, `inputs.len() * dim` values in input order, and how many
/// were computed (the rest came from the memo). `identity` names the encoder's weights and the
/// backend (see [`memo_identity`]); `done(n)` after each `n` inputs.
pub fn embed_inputs(
    encoder: &SentenceEncoder,
    inputs: &[Vec<u32>],
    memo: &Memo,
    identity: &str,
    batch_size: usize,
    mut done: impl FnMut(usize),
) -> Result<(Vec<f32>, usize), String> {
    let dim = encoder.dim();
    let mut out = vec![0f32; inputs.len() * dim];
    let keys: Vec<String> =
        inputs.iter().map(|ids| drover_engine::hash::memo_key("reward-embedding/2", identity, ids)).collect();
    let mut missing = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        match memo.get(key).filter(|v| v.len() == dim * 4) {
            Some(bytes) => {
                for (k, c) in bytes.chunks_exact(4).enumerate() {
                    out[i * dim + k] = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            None => missing.push(i),
        }
    }
    done(inputs.len() - missing.len());
    let lengths: Vec<usize> = missing.iter().map(|&i| inputs[i].len()).collect();
    let batches = length_batches(&lengths, batch_size);
    let ids: Vec<Vec<&[u32]>> =
        batches.iter().map(|rows| rows.iter().map(|&r| inputs[missing[r]].as_slice()).collect()).collect();
    let forward = |ids: &[&[u32]], device: &Device| encoder.bert.embed(&TokenBatch::new(ids, device));
    crate::kit::encoder::embed_batches(&ids, encoder.device(), forward, |b, vectors: &[f32]| {
        for (k, &r) in batches[b].iter().enumerate() {
            let i = missing[r];
            let v = &vectors[k * dim..(k + 1) * dim];
            out[i * dim..(i + 1) * dim].copy_from_slice(v);
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            memo.put(&keys[i], &bytes).map_err(|e| format!("cannot keep an embedding in the memo: {e}"))?;
        }
        done(batches[b].len());
        Ok(())
    })?;
    Ok((out, missing.len()))
}

/// What names the embeddings in the memo: the encoder's hash and the backend (devices agree to
/// a cosine of 0.99999, not bit for bit, and one device's run must give the same bytes whether
/// or not another device embedded the same texts before).
pub fn memo_identity(encoder_hash: &str, backend: &str, max_tokens: usize) -> String {
    format!("{encoder_hash} {backend} {max_tokens}")
}

/// The encoder's identity: blake3 of its config, tokenizer and weights (each hashed through the
/// memo's file-hash cache, so a model read before is not read again).
pub fn encoder_hash(memo: &Memo, model: &Path) -> Result<String, String> {
    let mut h = blake3::Hasher::new();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let path = model.join(file);
        let hash = memo.hash_source_file(&path).map_err(|e| format!("cannot hash {}: {e}", path.display()))?;
        h.update(file.as_bytes());
        h.update(hash.to_string().as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The reward head: `dim -> hidden -> 1` with ReLU.
#[derive(Module, Debug)]
pub struct Head {
    hidden: Linear,
    out: Linear,
}

/// `nn.Linear`'s default initialisation from `draw`: uniform in ±1/sqrt(fan_in), weight
/// `[d_in, d_out]` as burn stores it.
fn linear(draw: &mut Draw, d_in: usize, d_out: usize, device: &Device) -> Linear {
    let bound = 1.0 / (d_in as f64).sqrt();
    let mut uniform = |n: usize| -> Vec<f32> {
        (0..n).map(|_| ((draw.below_u64(1 << 24) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) * bound) as f32).collect()
    };
    let w = uniform(d_in * d_out);
    let b = uniform(d_out);
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device)),
        bias: Some(Param::from_tensor(Tensor::from_data(TensorData::new(b, [d_out]), device))),
    }
}

/// The tensors of a head file, PyTorch's names and layout (`weight` is `[out, in]`).
const TENSORS: [&str; 4] = ["hidden.weight", "hidden.bias", "out.weight", "out.bias"];

impl Head {
    /// A fresh head, its weights drawn from `seed`.
    pub fn new(dim: usize, hidden: usize, seed: u64, device: &Device) -> Head {
        let mut draw = Draw::new(seed, 0x6865_6164); // "head": a stream of its own
        Head { hidden: linear(&mut draw, dim, hidden, device), out: linear(&mut draw, hidden, 1, device) }
    }

    /// Rewards of `[n, dim]` embeddings, `[n]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<1> {
        let h = relu(self.hidden.forward(x));
        self.out.forward(h).squeeze_dim::<1>(1)
    }

    /// `(hidden, dim)`.
    pub fn shape(&self) -> (usize, usize) {
        let [dim, hidden] = self.hidden.weight.val().dims();
        (hidden, dim)
    }

    /// The weights as a safetensors file (f32, PyTorch's layout), the same bytes for the same
    /// weights.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, String> {
        let host = |t: Tensor<2>| -> Result<(Vec<f32>, Vec<usize>), String> {
            // burn keeps `[in, out]`; PyTorch `[out, in]`.
            let t = t.transpose();
            let shape = t.dims().to_vec();
            let data = t.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
            Ok((data, shape))
        };
        let bias = |l: &Linear| -> Result<(Vec<f32>, Vec<usize>), String> {
            let t = l.bias.as_ref().expect("the head's layers have biases").val();
            let shape = t.dims().to_vec();
            Ok((t.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?, shape))
        };
        let parts =
            [host(self.hidden.weight.val())?, bias(&self.hidden)?, host(self.out.weight.val())?, bias(&self.out)?];
        let bytes: Vec<Vec<u8>> = parts.iter().map(|(v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = TENSORS
            .iter()
            .zip(parts.iter().zip(&bytes))
            .map(|(name, ((_, shape), b))| {
                (*name, safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap())
            })
            .collect();
        safetensors::serialize(views, None).map_err(|e| format!("cannot write the head: {e}"))
    }

    /// Reads a head written by [`Head::to_safetensors`]; `what` names the file in errors.
    pub fn from_safetensors(bytes: &[u8], what: &str, device: &Device) -> Result<Head, String> {
        let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("{what}: {e}"))?;
        let read = |name: &str| -> Result<(Vec<f32>, Vec<usize>), String> {
            let t = file.tensor(name).map_err(|_| format!("{what} has no tensor `{name}`"))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(format!("{what}: `{name}` is {:?}, not F32", t.dtype()));
            }
            let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Ok((v, t.shape().to_vec()))
        };
        let layer = |(w, ws): (Vec<f32>, Vec<usize>), (b, bs): (Vec<f32>, Vec<usize>)| -> Result<Linear, String> {
            let [out, inp] = ws[..] else { return Err(format!("{what}: a weight of shape {ws:?}")) };
            if bs != [out] {
                return Err(format!("{what}: a bias of shape {bs:?} for a weight of shape {ws:?}"));
            }
            let w = Tensor::<2>::from_data(TensorData::new(w, [out, inp]), device).transpose();
            Ok(Linear {
                weight: Param::from_tensor(w),
                bias: Some(Param::from_tensor(Tensor::from_data(TensorData::new(b, [out]), device))),
            })
        };
        let hidden = layer(read(TENSORS[0])?, read(TENSORS[1])?)?;
        let out = layer(read(TENSORS[2])?, read(TENSORS[3])?)?;
        let head = Head { hidden, out };
        let [h_in, h_out] = head.hidden.weight.val().dims();
        let [o_in, o_out] = head.out.weight.val().dims();
        if o_in != h_out || o_out != 1 {
            return Err(format!("{what}: layers of [{h_in}, {h_out}] and [{o_in}, {o_out}] do not make a reward head"));
        }
        Ok(head)
    }
}

/// A fine-tuned reward model: the encoder's unit-length sentence embedding, then a linear head.
#[derive(Module, Debug)]
pub struct Tuned {
    pub bert: Bert,
    pub head: Linear,
}

impl Tuned {
    /// `bert` with a fresh head: weight drawn from `seed` as `nn.Linear` draws it, bias 0.
    pub fn new(bert: Bert, dim: usize, seed: u64, device: &Device) -> Tuned {
        let mut draw = Draw::new(seed, 0x6865_6164);
        let mut head = linear(&mut draw, dim, 1, device);
        head.bias = Some(Param::from_tensor(Tensor::zeros([1], device)));
        Tuned { bert, head }
    }

    /// Rewards of a batch of inputs, `[batch]`.
    pub fn forward(&self, batch: &TokenBatch) -> Tensor<1> {
        self.head.forward(self.bert.embed(batch)).squeeze_dim::<1>(1)
    }

    /// The reward of each laid-out input on `device` (a model without autodiff), in input
    /// order, `batch_size` inputs of similar length at a time; `done(n)` after each `n`.
    pub fn rewards(
        &self,
        inputs: &[Vec<u32>],
        batch_size: usize,
        device: &Device,
        mut done: impl FnMut(usize),
    ) -> Result<Vec<f32>, String> {
        let lengths: Vec<usize> = inputs.iter().map(Vec::len).collect();
        let batches = length_batches(&lengths, batch_size);
        let ids: Vec<Vec<&[u32]>> =
            batches.iter().map(|rows| rows.iter().map(|&r| inputs[r].as_slice()).collect()).collect();
        let forward = |ids: &[&[u32]], device: &Device| self.forward(&TokenBatch::new(ids, device)).unsqueeze_dim(1);
        let mut out = vec![0f32; inputs.len()];
        crate::kit::encoder::embed_batches(&ids, device, forward, |b, rewards: &[f32]| {
            for (k, &v) in rewards.iter().enumerate() {
                out[batches[b][k]] = v;
            }
            done(rewards.len());
            Ok(())
        })?;
        Ok(out)
    }

    /// Every weight as one safetensors file (burn's tensor names), the same bytes for the same
    /// weights: burn-store writes its metadata from a hash map, in another order each time, so
    /// the file is written again without it.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, String> {
        use burn::store::{ModuleSnapshot, SafetensorsStore};
        let mut store = SafetensorsStore::from_bytes(None);
        self.save_into(&mut store).map_err(|e| format!("cannot write the model: {e}"))?;
        let bytes = store.get_bytes().map_err(|e| format!("cannot write the model: {e}"))?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("cannot write the model: {e}"))?;
        let mut tensors = file.tensors();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        safetensors::serialize(tensors, None).map_err(|e| format!("cannot write the model: {e}"))
    }

    /// Reads a file written by [`Tuned::to_safetensors`] for an encoder shaped as `config`.
    pub fn from_safetensors(bytes: Vec<u8>, config: &BertConfig, what: &str, device: &Device) -> Result<Tuned, String> {
        use burn::store::{ModuleSnapshot, SafetensorsStore};
        let mut tuned = Tuned::new(Bert::zeros(config, device), config.hidden_size, 0, device);
        let mut store = SafetensorsStore::from_bytes(Some(bytes)).validate(false);
        let result = tuned.load_from(&mut store).map_err(|e| format!("cannot load {what}: {e}"))?;
        if let Some(e) = result.errors.first() {
            return Err(format!("cannot load {what}: {e}"));
        }
        if let Some((name, _)) = result.missing.first() {
            return Err(format!("cannot load {what}: no tensor for `{name}`"));
        }
        Ok(tuned)
    }
}

/// The format name in a reward model's `config.json`.
pub const FORMAT: &str = "drover reward model";

/// A reward model directory's `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RewardConfig {
    /// Always [`FORMAT`].
    pub format: String,
    pub version: u32,
    /// `frozen`: a head on the frozen encoder's embeddings (`head.safetensors`); `finetune`:
    /// the whole encoder and a linear head (`model.safetensors`).
    pub encoder_mode: String,
    pub encoder: EncoderInfo,
    /// The head's hidden width.
    pub hidden: usize,
    /// What training reported (epochs, the epoch kept, validation accuracy), for people.
    pub trained: serde_json::Value,
    /// Trained with principles in its inputs (SALMON): it scores under a principle set.
    #[serde(default)]
    pub conditioned: bool,
}

/// Which encoder a reward model reads embeddings of.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncoderInfo {
    /// `pulled: minilm` or the path as the stage gave it.
    pub name: String,
    /// [`encoder_hash`] of its files.
    pub blake3: String,
    pub dim: usize,
    pub max_tokens: usize,
}

/// The files of a reward model directory.
pub const CONFIG_FILE: &str = "config.json";
pub const HEAD_FILE: &str = "head.safetensors";
pub const TUNED_FILE: &str = "model.safetensors";

impl RewardConfig {
    /// Reads `dir/config.json`; an error that says what the directory is not.
    pub fn read(dir: &Path) -> Result<RewardConfig, String> {
        let path = dir.join(CONFIG_FILE);
        let not = |why: String| {
            format!(
                "{} is not a reward model: {why} (a reward model is the `model` output of a `reward_train` stage)",
                dir.display()
            )
        };
        let text = std::fs::read_to_string(&path).map_err(|e| not(format!("cannot read {CONFIG_FILE}: {e}")))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| not(format!("{CONFIG_FILE} is not JSON: {e}")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(not(format!("its {CONFIG_FILE} has no `\"format\": \"{FORMAT}\"`")));
        }
        let config: RewardConfig = serde_json::from_value(value).map_err(|e| not(format!("{CONFIG_FILE}: {e}")))?;
        if config.version != 1 || !["frozen", "finetune"].contains(&config.encoder_mode.as_str()) {
            return Err(not(format!(
                "version {} with encoder `{}` is not one this drover reads (version 1, frozen or finetune)",
                config.version, config.encoder_mode
            )));
        }
        let file = config.weights_file();
        if !dir.join(file).is_file() {
            return Err(not(format!("it has no {file}")));
        }
        Ok(config)
    }

    /// The weights' file: the head alone, or the whole fine-tuned model.
    pub fn weights_file(&self) -> &'static str {
        if self.encoder_mode == "finetune" { TUNED_FILE } else { HEAD_FILE }
    }

    /// Writes the directory: `config.json` and the weights ([`RewardConfig::weights_file`]).
    pub fn write(&self, dir: &Path, weights: &[u8]) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut text = serde_json::to_string_pretty(self).expect("a config serialises");
        text.push('\n');
        std::fs::write(dir.join(CONFIG_FILE), text).map_err(|e| format!("cannot write {CONFIG_FILE}: {e}"))?;
        let file = self.weights_file();
        std::fs::write(dir.join(file), weights).map_err(|e| format!("cannot write {file}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Layout = Layout { cls: 101, sep: 102, max_tokens: 8 };

    #[test]
    fn the_response_is_kept_whole_and_the_context_cut_from_the_left() {
        // Room for 8: [CLS] + 2 context + [SEP] + 3 response + [SEP].
        let laid = L.lay_out(&[1, 2, 3, 4, 5], &[7, 8, 9]);
        assert_eq!(laid, Laid { ids: vec![101, 4, 5, 102, 7, 8, 9, 102], context_cut: true, response_cut: false });
        let laid = L.lay_out(&[1], &[7, 8]);
        assert_eq!(laid, Laid { ids: vec![101, 1, 102, 7, 8, 102], context_cut: false, response_cut: false });
        // No room for any context: the response alone.
        let laid = L.lay_out(&[1, 2], &[3, 4, 5, 6, 7]);
        assert_eq!(laid, Laid { ids: vec![101, 3, 4, 5, 6, 7, 102], context_cut: true, response_cut: false });
        // A response longer than the window: its end is cut.
        let laid = L.lay_out(&[], &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(laid, Laid { ids: vec![101, 1, 2, 3, 4, 5, 6, 102], context_cut: false, response_cut: true });
    }

    #[test]
    fn principles_come_first_whole_and_capped_to_what_fits() {
        let l = Layout { cls: 101, sep: 102, max_tokens: 11 };
        // Response 3, so 6 left: principles [1, 2] and [3, 4, 5] fit with their [SEP], [6] not.
        let (laid, kept) = l.lay_out_conditioned(&[vec![1, 2], vec![3, 4, 5], vec![6]], &[8, 9], &[7, 7, 7]);
        assert_eq!(kept, 2);
        assert_eq!(laid.ids, [101, 1, 2, 3, 4, 5, 102, 7, 7, 7, 102]);
        assert!(laid.context_cut);
        let (laid, kept) = l.lay_out_conditioned(&[vec![1]], &[8, 9], &[7]);
        assert_eq!((kept, laid.ids), (1, vec![101, 1, 102, 8, 9, 102, 7, 102]));
        assert_eq!(list_items("['Concise', \"Ethical\"]"), ["Concise", "Ethical"]);
        assert_eq!(list_items("[0, 1]"), ["0", "1"]);
        assert_eq!(list_items("('Concise',)"), ["Concise"]);
        assert_eq!(list_items("(False, True)"), ["False", "True"]);
    }

    #[test]
    fn a_transcript_splits_at_the_last_assistant_turn() {
        let t = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this";
        assert_eq!(
            split_transcript(t),
            Some(("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:", " like this"))
        );
        assert_eq!(split_transcript("no turns"), None);
    }

    #[test]
    fn a_head_survives_its_file_bit_for_bit() {
        let device = Device::flex();
        let head = Head::new(6, 4, 7, &device);
        let bytes = head.to_safetensors().unwrap();
        let back = Head::from_safetensors(&bytes, "head", &device).unwrap();
        assert_eq!(back.to_safetensors().unwrap(), bytes);
        assert_eq!(back.shape(), (4, 6));
        let x = Tensor::<2>::from_data(TensorData::new(vec![0.5f32; 12], [2, 6]), &device);
        assert_eq!(
            head.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap(),
            back.forward(x).into_data().try_to_vec::<f32>().unwrap()
        );
        // Another seed, other weights.
        assert_ne!(Head::new(6, 4, 8, &device).to_safetensors().unwrap(), bytes);
    }
}
