//! A synthetic, untrained multimodal projector (`mmproj: synthetic:colour`), so that the image
//! path (an `image_url` part, llama.cpp's CLIP graph, the projector, the text model) can be
//! run and tested offline, where no trained vision model can be fetched.
//!
//! It is a LLaVA-style mmproj GGUF whose hand-set vision encoder passes each 16x16 patch's mean
//! red, green and blue to a projector that maps them onto mixtures of the text model's own token
//! embeddings for "red", "green", "blue", "dark" and "bright": a flat red image reaches the model
//! as tokens that look like "red". It says nothing true of a real photo. The idea and the values
//! are those of `shared/reference/synthetic-mmproj/make_mmproj.py` (written with PyPI `gguf`);
//! this is a Rust writer of the same tensors, so that nothing has to be installed. It copies the
//! text model's embeddings, so it is built per text model (in a few milliseconds, from the GGUF's
//! header and five rows of its embedding table) into the cache, named by its content.

use std::path::{Path, PathBuf};

/// The value of `mmproj:` that asks for this projector.
pub const SYNTHETIC: &str = "synthetic:colour";

/// The words whose embeddings the projector mixes, in the order of its detectors.
const WORDS: [&str; 5] = ["red", "green", "blue", "dark", "bright"];

/// Builds (or finds) the synthetic projector for text model `gguf`, in drover's cache.
pub fn ensure_synthetic(gguf: &Path) -> Result<PathBuf, String> {
    let bytes = build(gguf)?;
    let dir = crate::kit::pulled::cache_dir().join("models").join("synthetic-mmproj");
    let hash = blake3::hash(&bytes).to_hex();
    let path = dir.join(format!("colour-{}.gguf", &hash[..16]));
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| format!("write in {}: {e}", dir.display()))?;
    std::fs::write(tmp.path(), &bytes).map_err(|e| format!("write {}: {e}", tmp.path().display()))?;
    tmp.persist(&path).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// The projector's bytes for text model `gguf`.
pub fn build(gguf: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(gguf).map_err(|e| format!("open: {e}"))?;
    // SAFETY: read only; a model file changed while drover reads it is the user's race, as for
    // llama.cpp itself.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("map: {e}"))?;
    let text = read_text_model(&map)?;
    Ok(write(&projector(&text)))
}

/// What the projector needs of a text model: its embedding width and the rows of `WORDS`.
struct TextModel {
    n_embd: usize,
    words: Vec<Vec<f32>>,
}

/// A tensor to write: its dims in ggml order (fastest first) and its values.
struct Tensor {
    name: String,
    dims: Vec<u64>,
    data: Vec<f32>,
}

fn tensor(name: &str, numpy_shape: &[usize], data: Vec<f32>) -> Tensor {
    debug_assert_eq!(numpy_shape.iter().product::<usize>(), data.len());
    Tensor { name: name.to_string(), dims: numpy_shape.iter().rev().map(|&d| d as u64).collect(), data }
}

fn zeros(name: &str, shape: &[usize]) -> Tensor {
    tensor(name, shape, vec![0.0; shape.iter().product()])
}

const IMG: usize = 32;
const PATCH: usize = 16;
const HID: usize = 16;
const FF: usize = 32;
const LAYERS: usize = 2;
const HEADS: u32 = 2;

/// The tensors and settings of `make_mmproj.py`, value for value.
fn projector(text: &TextModel) -> (Vec<(&'static str, Kv)>, Vec<Tensor>) {
    let n_patch = (IMG / PATCH) * (IMG / PATCH);
    let kv = vec![
        ("general.architecture", Kv::Str("clip".into())),
        ("general.name", Kv::Str("synthetic-colour-mmproj (untrained, for plumbing tests)".into())),
        ("clip.has_vision_encoder", Kv::Bool(true)),
        ("clip.has_llava_projector", Kv::Bool(true)),
        ("clip.projector_type", Kv::Str("mlp".into())),
        ("clip.vision.image_size", Kv::U32(IMG as u32)),
        ("clip.vision.patch_size", Kv::U32(PATCH as u32)),
        ("clip.vision.embedding_length", Kv::U32(HID as u32)),
        ("clip.vision.feed_forward_length", Kv::U32(FF as u32)),
        ("clip.vision.projection_dim", Kv::U32(text.n_embd as u32)),
        ("clip.vision.block_count", Kv::U32(LAYERS as u32)),
        ("clip.vision.attention.head_count", Kv::U32(HEADS)),
        ("clip.vision.attention.layer_norm_epsilon", Kv::F32(1e-5)),
        ("clip.vision.image_mean", Kv::F32s(vec![0.5; 3])),
        ("clip.vision.image_std", Kv::F32s(vec![0.5; 3])),
        ("clip.use_gelu", Kv::Bool(true)),
    ];
    // Patch embedding (HID, 3, P, P): feature c is the mean of channel c over the patch.
    let mut pk = vec![0.0; HID * 3 * PATCH * PATCH];
    for c in 0..3 {
        let start = (c * 3 + c) * PATCH * PATCH;
        pk[start..start + PATCH * PATCH].fill(1.0 / (PATCH * PATCH) as f32);
    }
    let mut tensors = vec![
        tensor("v.patch_embd.weight", &[HID, 3, PATCH, PATCH], pk),
        zeros("v.class_embd", &[HID]),
        zeros("v.position_embd.weight", &[n_patch + 1, HID]),
    ];
    for i in 0..LAYERS {
        let p = format!("v.blk.{i}.");
        // The attention and feed-forward branches add nothing: the residual stream carries the
        // colours through.
        for n in ["attn_q", "attn_k", "attn_v", "attn_out"] {
            tensors.push(zeros(&format!("{p}{n}.weight"), &[HID, HID]));
            tensors.push(zeros(&format!("{p}{n}.bias"), &[HID]));
        }
        for n in ["ln1", "ln2"] {
            tensors.push(tensor(&format!("{p}{n}.weight"), &[HID], vec![1.0; HID]));
            tensors.push(zeros(&format!("{p}{n}.bias"), &[HID]));
        }
        tensors.push(zeros(&format!("{p}ffn_up.weight"), &[FF, HID]));
        tensors.push(zeros(&format!("{p}ffn_up.bias"), &[FF]));
        tensors.push(zeros(&format!("{p}ffn_down.weight"), &[HID, FF]));
        tensors.push(zeros(&format!("{p}ffn_down.bias"), &[HID]));
    }
    // Projector: (r, g, b) in [-1, 1] -> five detectors -> the colour words' embeddings.
    let detectors: [[f32; 3]; 5] = [
        [1.0, -0.5, -0.5],
        [-0.5, 1.0, -0.5],
        [-0.5, -0.5, 1.0],
        [-1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0],
        [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
    ];
    let mut m0 = vec![0.0; 8 * HID];
    for (row, d) in detectors.iter().enumerate() {
        m0[row * HID..row * HID + 3].copy_from_slice(d);
    }
    let mut m2 = vec![0.0; text.n_embd * 8];
    for (j, word) in text.words.iter().enumerate() {
        for (e, v) in word.iter().enumerate() {
            m2[e * 8 + j] = *v;
        }
    }
    tensors.push(tensor("mm.0.weight", &[8, HID], m0));
    tensors.push(zeros("mm.0.bias", &[8]));
    tensors.push(tensor("mm.2.weight", &[text.n_embd, 8], m2));
    tensors.push(zeros("mm.2.bias", &[text.n_embd]));
    (kv, tensors)
}

/// A metadata value, of the types this writer needs.
enum Kv {
    Str(String),
    Bool(bool),
    U32(u32),
    F32(f32),
    F32s(Vec<f32>),
}

const ALIGN: usize = 32;

/// GGUF v3, little-endian, every tensor F32.
fn write((kv, tensors): &(Vec<(&'static str, Kv)>, Vec<Tensor>)) -> Vec<u8> {
    let mut out = Vec::new();
    let str_ = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (key, value) in kv {
        str_(&mut out, key);
        match value {
            Kv::Str(s) => {
                out.extend(8u32.to_le_bytes());
                str_(&mut out, s);
            }
            Kv::Bool(b) => {
                out.extend(7u32.to_le_bytes());
                out.push(*b as u8);
            }
            Kv::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Kv::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Kv::F32s(vs) => {
                out.extend(9u32.to_le_bytes());
                out.extend(6u32.to_le_bytes());
                out.extend((vs.len() as u64).to_le_bytes());
                vs.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
        }
    }
    let mut offset = 0usize;
    for t in tensors {
        str_(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(0u32.to_le_bytes()); // GGML_TYPE_F32
        out.extend((offset as u64).to_le_bytes());
        offset += (t.data.len() * 4).next_multiple_of(ALIGN);
    }
    out.resize(out.len().next_multiple_of(ALIGN), 0);
    for t in tensors {
        t.data.iter().for_each(|v| out.extend(v.to_le_bytes()));
        out.resize(out.len().next_multiple_of(ALIGN), 0);
    }
    out
}

/// A cursor over a GGUF file's header.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("the file ends inside its header")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Result<&'a [u8], String> {
        let n = self.u64()?;
        self.take(usize::try_from(n).map_err(|_| "a string longer than memory")?)
    }
    /// Skips one value of type `ty`, or returns it when it is a string array (the token list).
    fn value(&mut self, ty: u32, keep: bool) -> Result<Option<Vec<&'a [u8]>>, String> {
        let fixed = |ty: u32| -> Option<u64> {
            match ty {
                0 | 1 | 7 => Some(1),
                2 | 3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            }
        };
        match ty {
            8 => {
                self.str()?;
            }
            9 => {
                let inner = self.u32()?;
                let n = self.u64()?;
                if let Some(size) = fixed(inner) {
                    self.take(usize::try_from(n * size).map_err(|_| "an array longer than memory")?)?;
                } else if inner == 8 {
                    let mut all = Vec::new();
                    for _ in 0..n {
                        let s = self.str()?;
                        if keep {
                            all.push(s);
                        }
                    }
                    return Ok(keep.then_some(all));
                } else {
                    return Err(format!("an array of type {inner}, which this reader does not know"));
                }
            }
            t => {
                let size = fixed(t).ok_or_else(|| format!("a value of type {t}, which this reader does not know"))?;
                self.take(size as usize)?;
            }
        }
        Ok(None)
    }
}

/// The embedding width and the embeddings of `WORDS` (a GPT-2 style BPE token with its
/// leading-space marker when there is one, else the bare word).
fn read_text_model(bytes: &[u8]) -> Result<TextModel, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != b"GGUF" {
        return Err("not a GGUF file".into());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version}; this reader knows 2 and 3"));
    }
    let (n_tensors, n_kv) = (r.u64()?, r.u64()?);
    let (mut tokens, mut align) = (None, ALIGN as u64);
    for _ in 0..n_kv {
        let key = r.str()?;
        let ty = r.u32()?;
        if key == b"general.alignment" && ty == 4 {
            align = r.u32()? as u64;
            continue;
        }
        if let Some(list) = r.value(ty, key == b"tokenizer.ggml.tokens")? {
            tokens = Some(list);
        }
    }
    let tokens = tokens.ok_or("no `tokenizer.ggml.tokens`")?;
    let mut embd = None;
    for _ in 0..n_tensors {
        let name = r.str()?;
        let n_dims = r.u32()?;
        let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        let ty = r.u32()?;
        let offset = r.u64()?;
        if name == b"token_embd.weight" {
            embd = Some((dims, ty, offset));
        }
    }
    let (dims, ty, offset) = embd.ok_or("no `token_embd.weight` tensor")?;
    let data_start = (r.at as u64).next_multiple_of(align.max(1));
    let n_embd = *dims.first().ok_or("`token_embd.weight` has no dims")? as usize;
    // (block elements, block bytes) of each type this reader dequantizes.
    let (block, block_bytes) = match ty {
        0 => (1, 4),
        1 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        8 => (32, 34),
        t => return Err(format!("`token_embd.weight` is of ggml type {t}")),
    };
    if !n_embd.is_multiple_of(block) {
        return Err(format!("an embedding width of {n_embd} is not a whole number of blocks"));
    }
    let row_bytes = n_embd / block * block_bytes;
    let mut words = Vec::new();
    for word in WORDS {
        let spaced = format!("\u{120}{word}");
        let id = tokens
            .iter()
            .position(|t| *t == spaced.as_bytes())
            .or_else(|| tokens.iter().position(|t| *t == word.as_bytes()))
            .ok_or_else(|| format!("no token for `{word}` in the model's vocabulary"))?;
        let start = usize::try_from(data_start + offset).map_err(|_| "an offset past memory")? + id * row_bytes;
        let row = bytes.get(start..start + row_bytes).ok_or("the file ends inside `token_embd.weight`")?;
        words.push(dequantize(row, ty));
    }
    Ok(TextModel { n_embd, words })
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// One row of a tensor of ggml type `ty` (F32, F16, Q4_0, Q4_1, Q8_0), as llama.cpp reads it.
fn dequantize(row: &[u8], ty: u32) -> Vec<f32> {
    match ty {
        0 => row.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
        1 => row.chunks_exact(2).map(f16).collect(),
        2 | 3 => {
            let size = if ty == 2 { 18 } else { 20 };
            let mut out = Vec::with_capacity(row.len() / size * 32);
            for b in row.chunks_exact(size) {
                let d = f16(&b[0..2]);
                let (min, qs) = if ty == 2 { (-8.0 * d, &b[2..18]) } else { (f16(&b[2..4]), &b[4..20]) };
                let mut block = [0f32; 32];
                for (j, q) in qs.iter().enumerate() {
                    block[j] = (q & 0x0f) as f32 * d + min;
                    block[j + 16] = (q >> 4) as f32 * d + min;
                }
                out.extend(block);
            }
            out
        }
        _ => row
            .chunks_exact(34)
            .flat_map(|b| {
                let d = f16(&b[0..2]);
                b[2..34].iter().map(move |&q| q as i8 as f32 * d)
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q4_1 and Q4_0 blocks as ggml lays them out: low nibbles are the first 16 values.
    #[test]
    fn quantized_rows_dequantize_as_ggml_does() {
        let mut q41 = Vec::new();
        q41.extend(half::f16::from_f32(0.5).to_le_bytes());
        q41.extend(half::f16::from_f32(-1.0).to_le_bytes());
        q41.extend((0u8..16).map(|j| j | (15 - j) << 4));
        let v = dequantize(&q41, 3);
        assert_eq!((v[0], v[1], v[15], v[16], v[31]), (-1.0, -0.5, 6.5, 6.5, -1.0));
        let mut q40 = vec![0u8; 18];
        q40[..2].copy_from_slice(&half::f16::from_f32(2.0).to_le_bytes());
        q40[2] = 0x9f; // low 15 -> (15-8)*2 = 14, high 9 -> 2
        let v = dequantize(&q40, 2);
        assert_eq!((v[0], v[16], v[1]), (14.0, 2.0, -16.0));
    }

    /// A written projector reads back: its tensors are where the header says, each aligned.
    #[test]
    fn the_written_projector_is_well_formed() {
        let text = TextModel { n_embd: 64, words: (0..5).map(|i| vec![i as f32; 64]).collect() };
        let bytes = write(&projector(&text));
        let mut r = Reader { bytes: &bytes, at: 4 };
        assert_eq!(r.u32().unwrap(), 3);
        let (n_tensors, n_kv) = (r.u64().unwrap(), r.u64().unwrap());
        assert_eq!((n_tensors, n_kv), (3 + LAYERS as u64 * 16 + 4, 16));
        for _ in 0..n_kv {
            r.str().unwrap();
            let ty = r.u32().unwrap();
            r.value(ty, false).unwrap();
        }
        let mut last = None;
        for _ in 0..n_tensors {
            let name = String::from_utf8(r.str().unwrap().to_vec()).unwrap();
            let dims: Vec<u64> = (0..r.u32().unwrap()).map(|_| r.u64().unwrap()).collect();
            assert_eq!(r.u32().unwrap(), 0);
            let offset = r.u64().unwrap();
            assert_eq!(offset % ALIGN as u64, 0);
            last = Some((name, dims, offset));
        }
        let (name, dims, offset) = last.unwrap();
        assert_eq!((name.as_str(), dims), ("mm.2.bias", vec![64]));
        let start = r.at.next_multiple_of(ALIGN) + offset as usize;
        assert_eq!(bytes.len(), start + 64 * 4, "the last tensor ends the file (64 floats, aligned)");
    }
}
