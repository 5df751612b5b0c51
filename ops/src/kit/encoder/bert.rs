//! The BERT encoder as a burn module, with sentence-transformers' mean pooling and L2
//! normalisation, and its loading from a Hugging Face `model.safetensors`.
//!
//! A plain burn 0.22 module: tensors are `Tensor<D>` on a run-time `Device`, so the same code
//! runs inference (a device without autodiff) and training (`device.autodiff()`: gradients flow
//! through [`Bert::embed`] to every weight; dropout is left out, as it is at inference).
//!
//! Field names follow the Hugging Face tensor names where Rust allows; the rest are remapped
//! when loading (`self` is a keyword, `LayerNorm` is not snake case, and burn-store's PyTorch
//! adapter transposes Linear weights and renames LayerNorm's `weight`/`bias` to
//! `gamma`/`beta`).

use burn::module::{Initializer, Module};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::gelu::gelu;
use super::model_dir::{BertConfig, ModelDir};

/// A batch of token ids, padded on the right to its longest row, on a device.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    /// `[batch, len]` token ids (padding: 0).
    pub ids: Tensor<2, Int>,
    /// `[batch, len]`: 1.0 at real tokens, 0.0 at padding.
    pub mask: Tensor<2>,
    /// `[batch, len]`: true at padding (what attention must not look at).
    pub padding: Tensor<2, Bool>,
}

impl TokenBatch {
    /// Pads `rows` (token ids, each non-empty) to the longest and moves them to `device`.
    pub fn new(rows: &[&[u32]], device: &Device) -> TokenBatch {
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; rows.len() * len];
        let mut mask = vec![0f32; rows.len() * len];
        for (r, row) in rows.iter().enumerate() {
            for (t, id) in row.iter().enumerate() {
                ids[r * len + t] = i64::from(*id);
                mask[r * len + t] = 1.0;
            }
        }
        let shape = [rows.len(), len];
        let mask = Tensor::<2>::from_data(TensorData::new(mask, shape), device);
        TokenBatch {
            ids: Tensor::<2, Int>::from_data(TensorData::new(ids, shape), device),
            padding: mask.clone().equal_elem(0.0),
            mask,
        }
    }
}

#[derive(Module, Debug)]
struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    norm: LayerNorm,
}

#[derive(Module, Debug)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    norm: LayerNorm,
    heads: usize,
}

#[derive(Module, Debug)]
struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
}

#[derive(Module, Debug)]
struct Encoder {
    layer: Vec<Layer>,
}

/// A BERT encoder (Hugging Face `BertModel` without its pooler).
#[derive(Module, Debug)]
pub struct Bert {
    embeddings: Embeddings,
    encoder: Encoder,
}

/// Hugging Face names to this module's, applied in order (regex, replacement).
const RENAMES: &[(&str, &str)] = &[
    (r"^bert\.", ""),
    (r"^embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"\.attention\.self\.", ".attention."),
    (r"\.attention\.output\.dense\.", ".attention.output."),
    (r"\.attention\.output\.LayerNorm\.", ".attention.norm."),
    (r"\.intermediate\.dense\.", ".intermediate."),
    (r"(layer\.\d+)\.output\.dense\.", "$1.output."),
    (r"(layer\.\d+)\.output\.LayerNorm\.", "$1.norm."),
];

impl Bert {
    /// A BERT of `config`'s shape with zero weights (to be loaded).
    pub fn zeros(c: &BertConfig, device: &Device) -> Bert {
        let linear = |i, o| LinearConfig::new(i, o).with_initializer(Initializer::Zeros).init(device);
        let embedding = |n, d| EmbeddingConfig::new(n, d).with_initializer(Initializer::Zeros).init(device);
        let norm = || LayerNormConfig::new(c.hidden_size).with_epsilon(c.layer_norm_eps).init(device);
        let h = c.hidden_size;
        Bert {
            embeddings: Embeddings {
                word_embeddings: embedding(c.vocab_size, h),
                position_embeddings: embedding(c.max_position_embeddings, h),
                token_type_embeddings: embedding(c.type_vocab_size, h),
                norm: norm(),
            },
            encoder: Encoder {
                layer: (0..c.num_hidden_layers)
                    .map(|_| Layer {
                        attention: SelfAttention {
                            query: linear(h, h),
                            key: linear(h, h),
                            value: linear(h, h),
                            output: linear(h, h),
                            norm: norm(),
                            heads: c.num_attention_heads,
                        },
                        intermediate: linear(h, c.intermediate_size),
                        output: linear(c.intermediate_size, h),
                        norm: norm(),
                    })
                    .collect(),
            },
        }
    }

    /// Loads a checked model directory's weights onto `device`. Every weight of the model must
    /// come from the file (extra tensors, such as the pooler and `position_ids`, are ignored).
    pub fn load(model: &ModelDir, device: &Device) -> Result<Bert, String> {
        let mut bert = Bert::zeros(&model.config, device);
        let mut store = SafetensorsStore::from_file(model.weights())
            .with_from_adapter(PyTorchToBurnAdapter)
            .allow_partial(true)
            .validate(false);
        for (from, to) in RENAMES {
            store = store.with_key_remapping(*from, *to);
        }
        let at = model.weights();
        let result = bert.load_from(&mut store).map_err(|e| format!("cannot load {}: {e}", at.display()))?;
        if let Some(e) = result.errors.first() {
            return Err(format!("cannot load {}: {e}", at.display()));
        }
        if let Some((name, _)) = result.missing.first() {
            return Err(format!("cannot load {}: no tensor for `{name}`", at.display()));
        }
        Ok(bert)
    }

    /// The last hidden states, `[batch, len, hidden]`.
    pub fn forward(&self, batch: &TokenBatch) -> Tensor<3> {
        let [b, len] = batch.ids.dims();
        let device = batch.ids.device();
        let e = &self.embeddings;
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device).reshape([1, len]);
        let types = Tensor::<2, Int>::zeros([b, len], &device);
        let x = e.word_embeddings.forward(batch.ids.clone())
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(types);
        let mut x = e.norm.forward(x);
        for layer in &self.encoder.layer {
            x = layer.forward(x, &batch.padding);
        }
        x
    }

    /// Sentence embeddings, `[batch, hidden]`: the mean of the real tokens' hidden states,
    /// scaled to unit length (sentence-transformers' Pooling and Normalize modules).
    pub fn embed(&self, batch: &TokenBatch) -> Tensor<2> {
        let hidden = self.forward(batch);
        let mask = batch.mask.clone().unsqueeze_dim::<3>(2);
        let sum = (hidden * mask.clone()).sum_dim(1).squeeze_dim::<2>(1);
        // sentence-transformers clamps the count at 1e-9; a row always has [CLS] and [SEP].
        let count = mask.sum_dim(1).squeeze_dim::<2>(1).clamp_min(1e-9);
        let mean = sum / count;
        // torch.nn.functional.normalize: x / max(|x|, 1e-12).
        let norm = mean.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
        mean / norm
    }
}

impl Layer {
    fn forward(&self, x: Tensor<3>, padding: &Tensor<2, Bool>) -> Tensor<3> {
        let a = self.attention.forward(x, padding);
        let h = gelu(self.intermediate.forward(a.clone()));
        self.norm.forward(self.output.forward(h) + a)
    }
}

impl SelfAttention {
    fn forward(&self, x: Tensor<3>, padding: &Tensor<2, Bool>) -> Tensor<3> {
        let [b, len, hidden] = x.dims();
        let (heads, head_dim) = (self.heads, hidden / self.heads);
        let split = |t: Tensor<3>| t.reshape([b, len, heads, head_dim]).swap_dims(1, 2);
        let (q, k, v) = (
            split(self.query.forward(x.clone())),
            split(self.key.forward(x.clone())),
            split(self.value.forward(x.clone())),
        );
        // Every query may look at every real key: the mask is the padding of the keys, the
        // same for every head and query row.
        let mask = padding.clone().reshape([b, 1, 1, len]).expand([b, heads, len, len]);
        let context = attention(q, k, v, Some(mask), None, AttentionModuleOptions::default());
        let context = context.swap_dims(1, 2).reshape([b, len, hidden]);
        self.norm.forward(self.output.forward(context) + x)
    }
}

#[cfg(test)]
impl Bert {
    /// The gradient of the word embeddings, for tests of training.
    pub(crate) fn word_embeddings_grad(&self, grads: &burn::tensor::Gradients) -> Option<Tensor<2>> {
        self.embeddings.word_embeddings.weight.val().grad(grads)
    }
}
