//! Model weights on disk: safetensors files, single or sharded, read one tensor at a time from
//! memory maps and written in shards as tensors arrive, so that neither side ever holds a whole
//! model in memory.
//!
//! Reading parses headers with the `safetensors` crate and slices tensors out of `memmap2` maps.
//! Writing is done here, because the crate serialises whole files from memory: a shard's header
//! is computed up front from the names and shapes of everything that goes into it (known before
//! any tensor is merged), written first, and each tensor's bytes are then appended in order.
//! The layout matches Hugging Face's: `model.safetensors`, or `model-0000i-of-0000n.safetensors`
//! with `model.safetensors.index.json` (`metadata.total_size`, `weight_map`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::{Advice, Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};

use super::par::{par_chunks, par_runs};

/// The element types drover reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl WeightDtype {
    /// `float32`, `float16`, `bfloat16` (mergekit's names), also `f32`, `fp16`, `bf16`.
    pub fn parse(name: &str) -> Option<WeightDtype> {
        match name.to_ascii_lowercase().as_str() {
            "float32" | "f32" | "fp32" => Some(WeightDtype::F32),
            "float16" | "f16" | "fp16" | "half" => Some(WeightDtype::F16),
            "bfloat16" | "bf16" => Some(WeightDtype::Bf16),
            _ => None,
        }
    }

    pub fn size(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 | WeightDtype::Bf16 => 2,
        }
    }

    fn safetensors_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "F32",
            WeightDtype::F16 => "F16",
            WeightDtype::Bf16 => "BF16",
        }
    }

    fn from_safetensors(d: Dtype) -> Option<WeightDtype> {
        match d {
            Dtype::F32 => Some(WeightDtype::F32),
            Dtype::F16 => Some(WeightDtype::F16),
            Dtype::BF16 => Some(WeightDtype::Bf16),
            _ => None,
        }
    }
}

/// Where a tensor lives.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub dtype: WeightDtype,
    pub shape: Vec<usize>,
    file: usize,
    /// Byte range in the file.
    start: usize,
    end: usize,
}

/// A model's weights, opened for reading.
#[derive(Debug)]
pub struct ModelWeights {
    dir: PathBuf,
    maps: Vec<Mmap>,
    files: Vec<PathBuf>,
    tensors: BTreeMap<String, TensorEntry>,
}

impl ModelWeights {
    /// Opens every `*.safetensors` file of a model directory (all shards, whether or not an index
    /// lists them; an index, when present, must agree). Errors name the file.
    pub fn open(dir: &Path) -> Result<ModelWeights, String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("no *.safetensors files in {}", dir.display()));
        }
        let mut maps = Vec::new();
        let mut tensors = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            // SAFETY: the map is read-only; a file changed underneath would give wrong numbers,
            // not memory unsafety in this process beyond what any mmap reader accepts. Inputs
            // are objects of the store, which are read-only.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot map {}: {e}", path.display()))?;
            let (header, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| format!("{} is not a valid safetensors file: {e}", path.display()))?;
            let base = 8 + header;
            for (name, info) in meta.tensors() {
                let dtype = WeightDtype::from_safetensors(info.dtype).ok_or_else(|| {
                    format!(
                        "{}: tensor `{name}` is {:?}; only F32, F16 and BF16 are supported",
                        path.display(),
                        info.dtype
                    )
                })?;
                let entry = TensorEntry {
                    dtype,
                    shape: info.shape.clone(),
                    file: i,
                    start: base + info.data_offsets.0,
                    end: base + info.data_offsets.1,
                };
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(format!("tensor `{name}` appears in more than one shard of {}", dir.display()));
                }
            }
            maps.push(map);
        }
        let weights = ModelWeights { dir: dir.to_path_buf(), maps, files, tensors };
        weights.check_index()?;
        Ok(weights)
    }

    /// An index file, if present, must map every tensor to the shard that holds it.
    fn check_index(&self) -> Result<(), String> {
        let index = self.dir.join("model.safetensors.index.json");
        let Ok(text) = std::fs::read_to_string(&index) else { return Ok(()) };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(format!("{}: no `weight_map`", index.display()));
        };
        for (name, file) in map {
            let entry = self
                .tensors
                .get(name)
                .ok_or_else(|| format!("{} lists `{name}`, which no shard holds", index.display()))?;
            let holder = self.files[entry.file].file_name().and_then(|f| f.to_str()).unwrap_or_default();
            if Some(holder) != file.as_str() {
                return Err(format!("{} puts `{name}` in {file}, but it is in {holder}", index.display()));
            }
        }
        Ok(())
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// A tensor's stored bytes and their dtype, straight from the map.
    pub fn bytes(&self, name: &str) -> Result<(&[u8], WeightDtype), String> {
        let entry = self.tensors.get(name).ok_or_else(|| format!("no tensor `{name}` in {}", self.dir.display()))?;
        Ok((&self.maps[entry.file][entry.start..entry.end], entry.dtype))
    }

    /// Reads a tensor into `out` as f32 (resized to fit), converting on several threads, then
    /// [`release`](Self::release)s its pages.
    pub fn read_f32(&self, name: &str, out: &mut Vec<f32>) -> Result<(), String> {
        let (bytes, dtype) = self.bytes(name)?;
        // Growing fills only the new part; shrinking is free. No pass over the old values.
        out.resize(bytes.len() / dtype.size(), 0.0);
        par_chunks(out, |offset, chunk| {
            decode(dtype, &bytes[offset * dtype.size()..(offset + chunk.len()) * dtype.size()], chunk)
        });
        self.release(name);
        Ok(())
    }

    /// Drops a tensor's pages from this process's mapping once it has been read (they stay in
    /// the page cache), so that the resident size of a merge stays near its buffers rather than
    /// growing to the size of the models.
    pub fn release(&self, name: &str) {
        if let Some(entry) = self.tensors.get(name) {
            // SAFETY: the map is a read-only, shared file mapping: a dropped page is read from
            // the file again if touched (here, a page shared with the next tensor).
            let _ = unsafe {
                self.maps[entry.file].unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    entry.start,
                    entry.end - entry.start,
                )
            };
        }
    }

    /// Asks the kernel to start reading a tensor from disk, ahead of `read_f32`.
    pub fn prefetch(&self, name: &str) {
        if let Some(entry) = self.tensors.get(name) {
            let _ = self.maps[entry.file].advise_range(Advice::WillNeed, entry.start, entry.end - entry.start);
        }
    }
}

/// Converts stored little-endian values to f32 (`values.len()` of them).
pub fn decode(dtype: WeightDtype, bytes: &[u8], values: &mut [f32]) {
    match dtype {
        WeightDtype::F32 => values
            .iter_mut()
            .zip(bytes.chunks_exact(4))
            .for_each(|(v, b)| *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        WeightDtype::F16 => values
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(v, b)| *v = f16::from_le_bytes([b[0], b[1]]).to_f32()),
        // bf16 is the top half of an f32: widening is a shift (which vectorises).
        WeightDtype::Bf16 => values
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(v, b)| *v = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)),
    }
}

/// Converts f32 values to stored little-endian bytes (rounding to nearest even).
pub fn encode(dtype: WeightDtype, values: &[f32], bytes: &mut [u8]) {
    match dtype {
        WeightDtype::F32 => {
            bytes.chunks_exact_mut(4).zip(values).for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes()))
        }
        WeightDtype::F16 => {
            bytes.chunks_exact_mut(2).zip(values).for_each(|(o, v)| o.copy_from_slice(&f16::from_f32(*v).to_le_bytes()))
        }
        WeightDtype::Bf16 => bytes
            .chunks_exact_mut(2)
            .zip(values)
            .for_each(|(o, v)| o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes())),
    }
}

/// Encodes all of `values` into `bytes` (resized to fit), on several threads.
pub fn encode_all(dtype: WeightDtype, values: &[f32], bytes: &mut Vec<u8>) {
    let size = dtype.size();
    bytes.resize(values.len() * size, 0);
    par_runs(bytes, size, |offset, b| encode(dtype, &values[offset..offset + b.len() / size], b));
}

/// What goes into the output, decided before any tensor is computed.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub name: String,
    pub shape: Vec<usize>,
}

/// One output file: its name and the tensors it holds, in order.
#[derive(Clone, Debug)]
struct Shard {
    file: String,
    tensors: Vec<PlannedTensor>,
}

/// Writes tensors, in the planned order, into shards of at most `max_shard_bytes` (a tensor
/// larger than that gets a shard of its own). Nothing is buffered beyond one tensor.
pub struct ShardWriter {
    dir: PathBuf,
    dtype: WeightDtype,
    shards: Vec<Shard>,
    /// The shard being written and how many of its tensors are done.
    shard: usize,
    done: usize,
    out: Option<BufWriter<File>>,
}

impl ShardWriter {
    pub fn new(dir: &Path, dtype: WeightDtype, plan: &[PlannedTensor], max_shard_bytes: usize) -> ShardWriter {
        let mut groups: Vec<(Vec<PlannedTensor>, usize)> = Vec::new();
        for t in plan {
            let bytes = t.shape.iter().product::<usize>() * dtype.size();
            match groups.last_mut() {
                Some((tensors, used)) if *used + bytes <= max_shard_bytes => {
                    tensors.push(t.clone());
                    *used += bytes;
                }
                _ => groups.push((vec![t.clone()], bytes)),
            }
        }
        let n = groups.len();
        let shards = groups
            .into_iter()
            .enumerate()
            .map(|(i, (tensors, _))| Shard {
                file: if n == 1 {
                    "model.safetensors".to_string()
                } else {
                    format!("model-{:05}-of-{n:05}.safetensors", i + 1)
                },
                tensors,
            })
            .collect();
        ShardWriter { dir: dir.to_path_buf(), dtype, shards, shard: 0, done: 0, out: None }
    }

    /// Appends the next planned tensor, encoded in the writer's dtype ([`encode_all`]). `name`
    /// must be the next one in the plan and `bytes` hold exactly its elements.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let Some(shard) = self.shards.get(self.shard) else {
            return Err(format!("tensor `{name}` is not in the output plan (every planned tensor is written)"));
        };
        let planned = &shard.tensors[self.done];
        if planned.name != name {
            return Err(format!("tensor `{name}` written out of order: `{}` comes next", planned.name));
        }
        let count: usize = planned.shape.iter().product();
        if bytes.len() != count * self.dtype.size() {
            return Err(format!(
                "tensor `{name}`: {} bytes for shape {:?} ({count} values)",
                bytes.len(),
                planned.shape
            ));
        }
        if self.out.is_none() {
            let path = self.dir.join(&shard.file);
            let file = File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            out.write_all(&header(shard, self.dtype)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            self.out = Some(out);
        }
        let out = self.out.as_mut().expect("opened above");
        out.write_all(bytes).map_err(|e| format!("cannot write {}: {e}", shard.file))?;
        self.done += 1;
        if self.done == shard.tensors.len() {
            // Durability is the store's: it syncs each file as it takes it in.
            let out = self.out.take().expect("open");
            out.into_inner().map_err(|e| format!("cannot write {}: {}", shard.file, e.error()))?;
            self.shard += 1;
            self.done = 0;
        }
        Ok(())
    }

    /// Checks that every planned tensor was written, and writes the index when there are shards.
    /// Returns the files written.
    pub fn finish(self) -> Result<Vec<String>, String> {
        if let Some(shard) = self.shards.get(self.shard) {
            return Err(format!("tensor `{}` was never written", shard.tensors[self.done].name));
        }
        let files: Vec<String> = self.shards.iter().map(|s| s.file.clone()).collect();
        if self.shards.len() > 1 {
            let total: usize = self
                .shards
                .iter()
                .flat_map(|s| &s.tensors)
                .map(|t| t.shape.iter().product::<usize>() * self.dtype.size())
                .sum();
            let mut weight_map = BTreeMap::new();
            for s in &self.shards {
                for t in &s.tensors {
                    weight_map.insert(t.name.clone(), s.file.clone());
                }
            }
            let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            let path = self.dir.join("model.safetensors.index.json");
            let text = serde_json::to_string_pretty(&index).expect("an index serialises");
            std::fs::write(&path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(files)
    }
}

/// A safetensors header: 8-byte little-endian length, then JSON padded with spaces to a
/// multiple of 8 (as the format asks, so that data starts aligned).
fn header(shard: &Shard, dtype: WeightDtype) -> Vec<u8> {
    let mut json = serde_json::Map::new();
    json.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0;
    for t in &shard.tensors {
        let bytes = t.shape.iter().product::<usize>() * dtype.size();
        json.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype.safetensors_name(), "shape": t.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_vec(&json).expect("a header serialises");
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(tensors: &[(&str, &[usize])]) -> Vec<PlannedTensor> {
        tensors.iter().map(|(n, s)| PlannedTensor { name: n.to_string(), shape: s.to_vec() }).collect()
    }

    /// Encodes and appends a tensor, as the merge does.
    fn write(w: &mut ShardWriter, name: &str, data: &[f32]) -> Result<(), String> {
        let mut bytes = Vec::new();
        encode_all(w.dtype, data, &mut bytes);
        w.write_bytes(name, &bytes)
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + seed).sin() * 3.0).collect()
    }

    #[test]
    fn sharded_bf16_output_reads_back_with_an_agreeing_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(&[("a.weight", &[3, 5]), ("b.weight", &[7]), ("c.weight", &[2, 2, 2])]);
        // 30 + 14 bytes fit in 48; the third tensor opens a second shard.
        let mut w = ShardWriter::new(dir.path(), WeightDtype::Bf16, &p, 48);
        let data: Vec<Vec<f32>> = vec![values(15, 0.1), values(7, 0.2), values(8, 0.3)];
        for (t, d) in p.iter().zip(&data) {
            write(&mut w, &t.name, d).unwrap();
        }
        let files = w.finish().unwrap();
        assert_eq!(files, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap())
                .unwrap();
        assert_eq!(index["metadata"]["total_size"], 60);
        assert_eq!(index["weight_map"]["c.weight"], "model-00002-of-00002.safetensors");

        let m = ModelWeights::open(dir.path()).unwrap();
        assert_eq!(m.names().collect::<Vec<_>>(), ["a.weight", "b.weight", "c.weight"]);
        let mut out = Vec::new();
        for (t, d) in p.iter().zip(&data) {
            let e = m.entry(&t.name).unwrap();
            assert_eq!((e.dtype, &e.shape), (WeightDtype::Bf16, &t.shape));
            m.read_f32(&t.name, &mut out).unwrap();
            let rounded: Vec<f32> = d.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
            assert_eq!(out, rounded);
        }
    }

    #[test]
    fn one_shard_is_model_safetensors_and_f32_and_f16_round_trip() {
        for (dtype, round) in
            [(WeightDtype::F32, (|v: f32| v) as fn(f32) -> f32), (WeightDtype::F16, |v| f16::from_f32(v).to_f32())]
        {
            let dir = tempfile::tempdir().unwrap();
            let p = plan(&[("x", &[4, 3])]);
            let mut w = ShardWriter::new(dir.path(), dtype, &p, 1 << 30);
            let d = values(12, 1.0);
            write(&mut w, "x", &d).unwrap();
            assert_eq!(w.finish().unwrap(), ["model.safetensors"]);
            assert!(!dir.path().join("model.safetensors.index.json").exists());
            // The file parses with the safetensors crate itself.
            let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(st.tensor("x").unwrap().shape(), [4, 3]);
            let mut out = Vec::new();
            ModelWeights::open(dir.path()).unwrap().read_f32("x", &mut out).unwrap();
            assert_eq!(out, d.iter().map(|v| round(*v)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn writing_out_of_order_or_short_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(&[("a", &[2]), ("b", &[2])]);
        let mut w = ShardWriter::new(dir.path(), WeightDtype::F32, &p, 1 << 20);
        assert_eq!(write(&mut w, "b", &[1.0, 2.0]).unwrap_err(), "tensor `b` written out of order: `a` comes next");
        assert_eq!(write(&mut w, "a", &[1.0]).unwrap_err(), "tensor `a`: 4 bytes for shape [2] (2 values)");
        write(&mut w, "a", &[1.0, 2.0]).unwrap();
        assert_eq!(w.finish().unwrap_err(), "tensor `b` was never written");
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ModelWeights::open(dir.path()).unwrap_err().starts_with("no *.safetensors files in"));
        std::fs::write(dir.path().join("model.safetensors"), b"not a safetensors file").unwrap();
        let err = ModelWeights::open(dir.path()).unwrap_err();
        assert!(err.contains("model.safetensors is not a valid safetensors file"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(dir.path(), WeightDtype::F32, &plan(&[("a", &[1])]), 64);
        write(&mut w, "a", &[1.0]).unwrap();
        w.finish().unwrap();
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model.safetensors", "gone": "model.safetensors"}}"#,
        )
        .unwrap();
        let err = ModelWeights::open(dir.path()).unwrap_err();
        assert!(err.ends_with("lists `gone`, which no shard holds"), "{err}");
    }
}
