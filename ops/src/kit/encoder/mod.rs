//! Sentence embeddings from a BERT-family sentence-transformers model (all-MiniLM-L6-v2 by
//! default), on a burn `Device`: the tokenizer, the BERT forward, mean pooling and L2
//! normalisation, batched by length.
//!
//! Shared by every op that needs sentence vectors (`embed`; `icai` clusters principles with
//! them; `reward_train` fine-tunes the same encoder). The API is small:
//!
//! - [`ModelDir::inspect`]: reads and checks a model directory without loading weights (plan
//!   time): its hidden size, positions, tokenizer, pooling and the shape of every tensor.
//! - [`SentenceEncoder::load`]: tokenizer and weights, on a device.
//! - [`SentenceEncoder::encode`]: texts to unit vectors on the host, in input order, batched
//!   by token length so that little compute goes to padding.
//! - For training, the parts: [`SentenceEncoder::tokenize`], [`length_batches`],
//!   [`TokenBatch::new`] and [`Bert::embed`], which is differentiable when the device has
//!   autodiff (`device.autodiff()`); `Bert` is a burn `Module`, so optimisers step it as any
//!   other.
//!
//! Results agree with sentence-transformers (an independent numpy forward of the same files)
//! to a cosine of 0.99999 per sentence on the CPU and on wgpu; bytes differ between devices and
//! with the batch a sentence lands in (float sums in another order), never run to run.

mod bert;
mod gelu;
mod model_dir;
mod spec;

use std::path::Path;

use burn::tensor::Device;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

pub use bert::{Bert, TokenBatch};
pub use model_dir::{BertConfig, ModelDir, ModelProblem, expected_tensors};
pub use spec::{Dep, ModelSpec, resolve_model};

/// One text's tokens, `[CLS] ... [SEP]`, cut to the token limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// The text had more tokens than the limit; the end was cut off.
    pub truncated: bool,
}

/// Texts as unit vectors, in input order.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// The length of each vector.
    pub dim: usize,
    /// `texts.len() * dim` values, row after row.
    pub vectors: Vec<f32>,
    /// How many texts were cut at the token limit.
    pub truncated: usize,
    /// Tokens read, and tokens computed (with each batch's padding).
    pub tokens: usize,
    pub padded_tokens: usize,
}

impl Encoded {
    /// The vector of text `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }
}

/// A loaded encoder: tokenizer and BERT weights on one device.
#[derive(Debug)]
pub struct SentenceEncoder {
    pub model: ModelDir,
    pub bert: Bert,
    tokenizer: Tokenizer,
    device: Device,
}

impl SentenceEncoder {
    /// Loads a checked model directory onto `device` (give a device without autodiff for
    /// inference: autodiff would record every operation for a backward pass that never comes).
    pub fn load(model: &ModelDir, device: &Device) -> Result<SentenceEncoder, String> {
        let at = model.tokenizer();
        let mut tokenizer =
            Tokenizer::from_file(&at).map_err(|e| format!("cannot read the tokenizer {}: {e}", at.display()))?;
        // The file pads every text to 128 tokens (for fixed-shape exports): padding here is
        // per batch, to its longest text.
        tokenizer.with_padding(None);
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > model.config.vocab_size {
            return Err(format!(
                "{} has {vocab} tokens, more than the model's vocab_size {}: they are not the same model's",
                at.display(),
                model.config.vocab_size
            ));
        }
        let bert = Bert::load(model, device)?;
        Ok(SentenceEncoder { model: model.clone(), bert, tokenizer, device: device.clone() })
    }

    /// The length of an embedding.
    pub fn dim(&self) -> usize {
        self.model.dim()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Tokenizes `texts` with `[CLS]`/`[SEP]`, each cut to `max_tokens` tokens (specials
    /// included). `max_tokens` must be at least 2 and at most the model's positions.
    pub fn tokenize(&self, texts: &[&str], max_tokens: usize) -> Result<Vec<Tokens>, String> {
        if max_tokens < 2 || max_tokens > self.model.positions() {
            return Err(format!("max_tokens must be in 2..={}, got {max_tokens}", self.model.positions()));
        }
        let mut tokenizer = self.tokenizer.clone();
        let truncation = TruncationParams {
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        };
        tokenizer.with_truncation(Some(truncation)).map_err(|e| format!("tokenizer: {e}"))?;
        let encodings = tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| format!("tokenizer: {e}"))?;
        Ok(encodings
            .iter()
            .map(|e| Tokens { ids: e.get_ids().to_vec(), truncated: !e.get_overflowing().is_empty() })
            .collect())
    }

    /// Each text's token ids without `[CLS]`/`[SEP]` and without a length limit, for callers
    /// that lay several texts out in one input themselves (`reward_train` keeps a response
    /// whole and cuts its context from the left); [`SentenceEncoder::special_ids`] gives the
    /// ids to put around them.
    pub fn tokenize_plain(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, String> {
        let mut tokenizer = self.tokenizer.clone();
        tokenizer.with_truncation(None).map_err(|e| format!("tokenizer: {e}"))?;
        let encodings = tokenizer.encode_batch(texts.to_vec(), false).map_err(|e| format!("tokenizer: {e}"))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The ids of `[CLS]` and `[SEP]`.
    pub fn special_ids(&self) -> Result<(u32, u32), String> {
        let id = |t: &str| self.tokenizer.token_to_id(t).ok_or_else(|| format!("the tokenizer has no `{t}` token"));
        Ok((id("[CLS]")?, id("[SEP]")?))
    }

    /// Embeds `texts` (unit vectors, input order), `batch_size` texts of similar length at a
    /// time; `done(n)` after each batch of `n`.
    pub fn encode(
        &self,
        texts: &[&str],
        max_tokens: usize,
        batch_size: usize,
        mut done: impl FnMut(usize),
    ) -> Result<Encoded, String> {
        let tokens = self.tokenize(texts, max_tokens)?;
        let dim = self.dim();
        let mut vectors = vec![0f32; texts.len() * dim];
        let lengths: Vec<usize> = tokens.iter().map(|t| t.ids.len()).collect();
        let batches = length_batches(&lengths, batch_size);
        let ids: Vec<Vec<&[u32]>> =
            batches.iter().map(|rows| rows.iter().map(|&r| tokens[r].ids.as_slice()).collect()).collect();
        let padded_tokens = ids.iter().map(|b| b.len() * b.iter().map(|r| r.len()).max().unwrap_or(0)).sum();
        embed_batches(
            &ids,
            &self.device,
            |ids, device| self.bert.embed(&TokenBatch::new(ids, device)),
            |b, out| {
                for (k, &r) in batches[b].iter().enumerate() {
                    vectors[r * dim..(r + 1) * dim].copy_from_slice(&out[k * dim..(k + 1) * dim]);
                }
                done(batches[b].len());
                Ok(())
            },
        )?;
        Ok(Encoded {
            dim,
            vectors,
            truncated: tokens.iter().filter(|t| t.truncated).count(),
            tokens: tokens.iter().map(|t| t.ids.len()).sum(),
            padded_tokens,
        })
    }
}

/// Row indices in batches of at most `batch_size`, rows of similar token length together
/// (sorted by `lengths`, each row's token count, ties in input order), so that a batch pads
/// little. The same lengths always give the same batches.
pub fn length_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    order.chunks(batch_size.max(1)).map(|c| c.to_vec()).collect()
}

/// Runs `forward` on each batch of token ids and hands `each(b, values)` batch `b`'s output
/// read back to the host, in batch order. On the CPU two batches are computed at once: the
/// matmuls use every core either way, but flex runs the element-wise steps (softmax,
/// LayerNorm, the copies between layouts) on one core, so one batch at a time left a 2-core
/// machine 35% idle while embedding. A GPU takes one batch at a time. Each batch's values do
/// not depend on the other.
pub fn embed_batches<'a, T: burn::tensor::Element>(
    batches: &[Vec<&'a [u32]>],
    device: &Device,
    forward: impl Fn(&[&'a [u32]], &Device) -> burn::tensor::Tensor<2> + Sync,
    mut each: impl FnMut(usize, &[T]) -> Result<(), String>,
) -> Result<(), String>
where
    Vec<T>: Send,
{
    let one = |ids: &[&'a [u32]]| -> Result<Vec<T>, String> {
        forward(ids, device)
            .into_data()
            .try_into_vec::<T>()
            .map_err(|e| format!("cannot read results back from the device: {e:?}"))
    };
    let width = if crate::kit::compute::is_cpu(device) { 2 } else { 1 };
    for (g, group) in batches.chunks(width).enumerate() {
        let outs = crate::kit::compute::on_threads(group, |ids| one(ids));
        for (k, out) in outs.into_iter().enumerate() {
            each(g * width + k, &out?)?;
        }
    }
    Ok(())
}

/// Reads the model directory at `path` and loads it (for callers that have not inspected it).
pub fn load_dir(path: &Path, device: &Device) -> Result<SentenceEncoder, String> {
    let model = ModelDir::inspect(path).map_err(|p| format!("{} ({})", p.message, p.help))?;
    SentenceEncoder::load(&model, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::testing::minilm;

    /// Reference vectors from independent numpy forwards (each file's `provenance` says how):
    /// the three sentences shared with the issue, then accented/CJK text and a text of 762
    /// tokens (cut at 256).
    fn references() -> Vec<(String, Vec<u32>, bool, Vec<f32>)> {
        let mut out = Vec::new();
        for text in [include_str!("testdata/minilm-reference.json"), include_str!("testdata/minilm-extra.json")] {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            for (k, s) in v["sentences"].as_array().unwrap().iter().enumerate() {
                let t = &v["tokenization"][k];
                let ids = t["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
                let e = v["embeddings"][k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
                out.push((s.as_str().unwrap().to_string(), ids, t["truncated"].as_bool().unwrap_or(false), e));
            }
        }
        out
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    }

    fn cpu_encoder() -> SentenceEncoder {
        load_dir(&minilm(), &Device::flex()).unwrap()
    }

    #[test]
    fn minilm_matches_the_numpy_reference_on_the_cpu() {
        let encoder = cpu_encoder();
        let refs = references();
        let texts: Vec<&str> = refs.iter().map(|r| r.0.as_str()).collect();
        // Token ids as Python's `tokenizers` makes them, the long text cut at 256.
        let tokens = encoder.tokenize(&texts, 256).unwrap();
        for (t, r) in tokens.iter().zip(&refs) {
            assert_eq!((&t.ids, t.truncated), (&r.1, r.2), "{}", r.0);
        }
        // All in one padded batch (lengths 8 to 256), and each alone: both match.
        for batch_size in [32, 1] {
            let encoded = encoder.encode(&texts, 256, batch_size, |_| {}).unwrap();
            assert_eq!((encoded.dim, encoded.truncated), (384, 1));
            for (i, r) in refs.iter().enumerate() {
                let c = cosine(encoded.row(i), &r.3);
                assert!(c >= 0.99999, "batch {batch_size}, {:?}: cosine {c}", r.0);
                let norm = encoded.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
            }
        }
    }

    #[test]
    fn the_sentence_transformers_similarities_are_reproduced() {
        // The README of sentence-transformers prints these for its example (the issue's
        // 0.6660, 0.1046, 0.1411): cosine of the first sentence with the other three.
        let texts = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."];
        let e = cpu_encoder().encode(&texts, 256, 32, |_| {}).unwrap();
        let got = [cosine(e.row(0), e.row(1)), cosine(e.row(0), e.row(2)), cosine(e.row(1), e.row(2))];
        for (g, want) in got.iter().zip([0.6660, 0.1046, 0.1411]) {
            assert!((g - want).abs() < 1e-4, "{got:?}");
        }
    }

    #[test]
    fn batches_group_rows_of_similar_length_and_keep_ties_in_order() {
        let lengths = [5, 3, 9, 3, 4];
        assert_eq!(length_batches(&lengths, 2), [vec![1, 3], vec![4, 0], vec![2]]);
        assert_eq!(length_batches(&lengths, 0), [vec![1], vec![3], vec![4], vec![0], vec![2]]);
        assert_eq!(length_batches(&[], 4), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn the_same_texts_give_the_same_bytes() {
        let encoder = cpu_encoder();
        let texts = ["one", "two words", "a third, longer sentence"];
        let a = encoder.encode(&texts, 256, 2, |_| {}).unwrap();
        let b = encoder.encode(&texts, 256, 2, |_| {}).unwrap();
        assert_eq!(
            a.vectors.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.vectors.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn gradients_flow_through_the_encoder_on_an_autodiff_device() {
        // What reward_train does: the same module on an autodiff device, a loss on the
        // embeddings, and a gradient for the weights.
        let device = Device::flex().autodiff();
        let encoder = load_dir(&minilm(), &device).unwrap();
        let tokens = encoder.tokenize(&["good answer", "bad answer"], 16).unwrap();
        let rows: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
        let e = encoder.bert.embed(&TokenBatch::new(&rows, &device));
        let similarity = (e.clone().narrow(0, 0, 1) * e.narrow(0, 1, 1)).sum();
        let grads = similarity.backward();
        let grad = encoder.bert.word_embeddings_grad(&grads).expect("a gradient for the word embeddings");
        let grad = grad.into_data();
        let grad = grad.as_slice::<f32>().unwrap();
        assert!(grad.iter().all(|g| g.is_finite()));
        assert!(grad.iter().any(|g| *g != 0.0));
    }

    #[test]
    fn max_tokens_outside_the_positions_is_an_error() {
        let encoder = cpu_encoder();
        assert_eq!(encoder.tokenize(&["x"], 513).unwrap_err(), "max_tokens must be in 2..=512, got 513");
        assert_eq!(encoder.tokenize(&["x"], 1).unwrap_err(), "max_tokens must be in 2..=512, got 1");
    }
}
