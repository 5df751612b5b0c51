//! The merge methods on one tensor, in f32, following mergekit's formulas
//! (`merge_methods/*.py`, `sparsify.py`; see `shared/reference/ops-anchors.md` §f).
//!
//! The inputs arrive as f32 buffers (`sources`, in the slice's order) and are consumed: task
//! vectors are formed in place, so a merge holds the inputs and the output, never more. Passes over the elements are split across threads in fixed chunks, so results do
//! not depend on the thread count. Random masks (DARE, DELLA) come from a ChaCha8 stream per
//! tensor and model, seeded from the merge seed, the tensor's name and the model's, and read
//! at the element's position: the same seed gives the same merge on any machine.
//!
//! Where mergekit leaves a choice to chance (which of several equal magnitudes a top-k keeps),
//! the earlier element wins, so that results are reproducible.

use std::ops::Range;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use super::config::{Method, Sparsify};
use super::par::{PARALLEL_MIN, par_chunks, par_chunks_sum, par_runs, par_sum, threads};
use super::plan::TensorPlan;
use super::weights::{WeightDtype, decode, encode};

/// The sum of |x| in f64, with eight running sums so that it vectorises (a single running sum
/// waits on each add).
fn abs_sum(x: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v.abs() as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|v| v.abs() as f64).sum();
    lanes.iter().sum::<f64>() + tail
}

/// The seed of the random stream of one tensor of one model.
pub fn stream_seed(seed: u64, tensor: &str, model: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"drover merge mask v1\0");
    h.update(&seed.to_le_bytes());
    h.update(tensor.as_bytes());
    h.update(b"\0");
    h.update(model.as_bytes());
    *h.finalize().as_bytes()
}

/// A uniform draw in [0, 1) for each element of `range`, from the stream `seed`: element `i`
/// always gets the stream's `i`-th word, whichever thread asks.
fn uniforms(seed: &[u8; 32], range: Range<usize>, mut f: impl FnMut(usize, f32)) {
    let mut rng = stream_at(seed, range.start);
    let mut words = [0u32; 1024];
    let mut start = range.start;
    while start < range.end {
        let n = (range.end - start).min(words.len());
        rng.fill(&mut words[..n]);
        for (k, w) in words[..n].iter().enumerate() {
            f(start + k, (w >> 8) as f32 * (1.0 / (1u32 << 24) as f32));
        }
        start += n;
    }
}

/// The stream `seed`, positioned at word `start`. Filling a slice of words from it gives the
/// same words as drawing them one by one.
fn stream_at(seed: &[u8; 32], start: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::from_seed(*seed);
    rng.set_word_pos(start as u128);
    rng
}

/// Why a tensor cannot be merged.
pub type MergeError = String;

/// Merges one tensor whose method does not [`stream`](streams). `sources` holds each source's
/// values (consumed), `names` the models' names (for random streams and messages); the result
/// is written to `out`.
pub fn merge(
    method: Method,
    plan: &TensorPlan,
    sources: &mut [Vec<f32>],
    names: &[&str],
    seed: u64,
    device: Option<&burn::tensor::Device>,
    out: &mut Vec<f32>,
) -> Result<(), MergeError> {
    let n = plan.numel();
    out.clear();
    out.resize(n, 0.0);
    match method {
        Method::Linear | Method::Passthrough => {
            unreachable!("{method} is merged block by block from the stored bytes (`streams`)")
        }
        Method::Slerp => {
            if sources.len() == 1 {
                out.copy_from_slice(&sources[0]);
                return Ok(());
            }
            let b = plan.base.expect("slerp has a base (checked by the config)");
            let (v0, v1) = (&sources[b], &sources[1 - b]);
            match device {
                Some(d) => out.copy_from_slice(&super::device::slerp(d, v0, v1, |n0, n1, dot| {
                    slerp_coefficients(plan.global.t, n0, n1, dot)
                })?),
                None => slerp(plan.global.t, v0, v1, out),
            }
            Ok(())
        }
        Method::ModelStock => model_stock(plan, sources, out),
        m => {
            let ta = m.task_arithmetic().expect("every other method is task arithmetic");
            task_arithmetic(plan, ta.sparsify, ta.consensus, sources, names, seed, device, out)
        }
    }
}

/// Whether `merge` hands a method's arithmetic to the device when it is given one.
pub fn uses_device(method: Method) -> bool {
    method == Method::Slerp || method.task_arithmetic().is_some()
}

/// The weights of a linear merge and what the weighted sum is divided by.
fn linear_weights(plan: &TensorPlan) -> Result<(Vec<f32>, f32), MergeError> {
    let w: Vec<f32> = plan.sources.iter().map(|s| s.params.weight as f32).collect();
    let total: f32 = w.iter().sum();
    if !plan.global.normalize {
        return Ok((w, 1.0));
    }
    if total == 0.0 {
        return Err(format!("the weights of tensor `{}` sum to zero, and `normalize` divides by their sum", plan.name));
    }
    Ok((w, total))
}

/// Spherical interpolation between `v0` (t = 0) and `v1` (t = 1), treating each tensor as one
/// vector; nearly parallel vectors (|cos| > 0.9995) are interpolated linearly.
fn slerp(t: f64, v0: &[f32], v1: &[f32], out: &mut [f32]) {
    let n = v0.len();
    let n0 = par_sum(n, |r| v0[r].iter().map(|x| (*x as f64) * (*x as f64)).sum()).sqrt();
    let n1 = par_sum(n, |r| v1[r].iter().map(|x| (*x as f64) * (*x as f64)).sum()).sqrt();
    let dot = par_sum(n, |r| r.map(|i| v0[i] as f64 * v1[i] as f64).sum());
    let (c0, c1) = slerp_coefficients(t, n0, n1, dot);
    par_chunks(out, |o, c| c.iter_mut().enumerate().for_each(|(i, v)| *v = c0 * v0[o + i] + c1 * v1[o + i]));
}

/// The coefficients of v0 and v1 in slerp at `t`, from the vectors' norms and dot product
/// (mergekit: each vector normalised unless its norm is <= 1e-8; lerp when |cos| > 0.9995).
pub fn slerp_coefficients(t: f64, n0: f64, n1: f64, dot: f64) -> (f32, f32) {
    let eps = 1e-8;
    let (s0n, s1n) = (if n0 > eps { n0 } else { 1.0 }, if n1 > eps { n1 } else { 1.0 });
    let cos = dot / (s0n * s1n);
    let (c0, c1) = if cos.abs() > 0.9995 {
        (1.0 - t, t)
    } else {
        let theta0 = cos.acos();
        let sin0 = theta0.sin();
        (((1.0 - t) * theta0).sin() / sin0, (t * theta0).sin() / sin0)
    };
    (c0 as f32, c1 as f32)
}

/// Rows for row-wise methods: all leading dimensions by the last (a vector is one row).
fn rows(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        _ => {
            let cols = *shape.last().expect("non-empty");
            (shape.iter().product::<usize>() / cols.max(1), cols)
        }
    }
}

fn model_stock(plan: &TensorPlan, sources: &mut [Vec<f32>], out: &mut [f32]) -> Result<(), MergeError> {
    let b = plan.base.expect("model_stock has a base (checked by the config)");
    let base = std::mem::take(&mut sources[b]);
    let others: Vec<&mut Vec<f32>> = sources.iter_mut().enumerate().filter(|(j, _)| *j != b).map(|(_, s)| s).collect();
    let k = others.len();
    let (nrows, cols) = if plan.global.filter_wise { rows(&plan.shape) } else { (1, plan.numel()) };
    // Offsets from the base, in place.
    let mut offsets: Vec<&mut Vec<f32>> = others;
    for x in offsets.iter_mut() {
        par_chunks(x, |o, c| c.iter_mut().enumerate().for_each(|(i, v)| *v -= base[o + i]));
    }
    let mut t_row = vec![0f32; nrows];
    for (r, t_out) in t_row.iter_mut().enumerate() {
        let range = r * cols..(r + 1) * cols;
        let norms: Vec<f64> = offsets
            .iter()
            .map(|d| {
                par_sum(cols, |q| {
                    d[range.start + q.start..range.start + q.end].iter().map(|x| (*x as f64).powi(2)).sum()
                })
                .sqrt()
            })
            .collect();
        let mut cos_sum = 0.0;
        let mut pairs = 0;
        for i in 0..k {
            for j in i + 1..k {
                let (a, bb) = (&offsets[i], &offsets[j]);
                let dot = par_sum(cols, |q| {
                    (q.start..q.end).map(|e| a[range.start + e] as f64 * bb[range.start + e] as f64).sum()
                });
                cos_sum += (dot / (norms[i] * norms[j]).max(1e-6)).clamp(-1.0, 1.0);
                pairs += 1;
            }
        }
        let cos = cos_sum / pairs as f64;
        let nn = k as f64;
        *t_out = (nn * cos / (1.0 + (nn - 1.0) * cos)) as f32;
    }
    let inv_k = 1.0 / k as f32;
    par_chunks(out, |o, c| {
        for (i, v) in c.iter_mut().enumerate() {
            let e = o + i;
            let t = t_row[e / cols];
            let w0 = base[e];
            // mean of the models = base + mean of the offsets
            let mean_offset: f32 = offsets.iter().map(|d| d[e]).sum::<f32>() * inv_k;
            *v = t * (w0 + mean_offset) + (1.0 - t) * w0;
        }
    });
    drop(offsets);
    sources[b] = base;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn task_arithmetic(
    plan: &TensorPlan,
    sparsify: Option<Sparsify>,
    consensus: bool,
    sources: &mut [Vec<f32>],
    names: &[&str],
    seed: u64,
    device: Option<&burn::tensor::Device>,
    out: &mut [f32],
) -> Result<(), MergeError> {
    let b = plan.base.expect("task arithmetic has a base (checked by the config)");
    let base = std::mem::take(&mut sources[b]);
    let mut deltas: Vec<&mut Vec<f32>> = Vec::new();
    let mut scales = Vec::new();
    for (j, x) in sources.iter_mut().enumerate() {
        if j == b {
            continue;
        }
        let p = &plan.sources[j].params;
        let thinning = sparsify.filter(|_| p.density < 1.0);
        let want_l1 = thinning.is_some() && plan.global.rescale;
        // The task vector, in place; with its L1 norm in the same pass when a rescale needs it.
        let l1 = par_chunks_sum(x, |o, c| {
            let mut sum = 0.0f64;
            // Cache-sized blocks: the norm reads what the subtraction just wrote.
            for (k, block) in c.chunks_mut(4096).enumerate() {
                let start = o + k * 4096;
                let n = block.len();
                block.iter_mut().zip(&base[start..start + n]).for_each(|(v, b)| *v -= b);
                if want_l1 {
                    sum += abs_sum(block);
                }
            }
            sum
        });
        let mut scale = 1.0;
        if let Some(method) = thinning {
            let stream = stream_seed(seed, &plan.name, names[j]);
            scale = thin(method, x, &plan.shape, p.density, p.gamma, p.epsilon, want_l1.then_some(l1), &stream);
        }
        scales.push(scale);
        deltas.push(x);
    }
    if deltas.is_empty() {
        out.copy_from_slice(&base);
        sources[b] = base;
        return Ok(());
    }
    let combine = Combine::new(plan, consensus, scales);
    let deltas: Vec<&Vec<f32>> = deltas.into_iter().map(|d| &*d).collect();
    if let Some(device) = device {
        let views: Vec<&[f32]> = deltas.iter().map(|d| d.as_slice()).collect();
        let spec = super::device::CombineSpec {
            weights: &combine.weights,
            factors: &combine.factors,
            consensus: combine.consensus,
            normalize: combine.normalize,
            plain_divisor: combine.plain_divisor,
            lambda: combine.lambda,
        };
        out.copy_from_slice(&super::device::combine(device, &base, &views, &spec)?);
        sources[b] = base;
        return Ok(());
    }
    par_chunks(out, |o, c| {
        let ds: Vec<&[f32]> = deltas.iter().map(|d| &d[o..o + c.len()]).collect();
        combine.block(&base[o..o + c.len()], &ds, c);
    });
    // The buffer goes back for the next tensor: reallocating it would fault in fresh pages.
    sources[b] = base;
    Ok(())
}

/// The last step of task arithmetic, element by element: weight the task vectors, elect a
/// sign (TIES), sum, normalise, scale by lambda, add to the base.
struct Combine {
    /// The weights of the task vectors (every source but the base), in source order.
    weights: Vec<f32>,
    /// Each weight times its task vector's rescale factor: what the task vector is multiplied
    /// by (the divisors sum the plain weights).
    factors: Vec<f32>,
    consensus: bool,
    normalize: bool,
    /// The divisor without sign election: the sum of the weights (1 when it is ~0).
    plain_divisor: f32,
    lambda: f32,
}

impl Combine {
    fn new(plan: &TensorPlan, consensus: bool, scales: Vec<f32>) -> Combine {
        let b = plan.base.expect("task arithmetic has a base");
        let weights: Vec<f32> =
            plan.sources.iter().enumerate().filter(|(j, _)| *j != b).map(|(_, s)| s.params.weight as f32).collect();
        let s: f32 = weights.iter().sum();
        Combine {
            factors: weights.iter().zip(&scales).map(|(w, s)| w * s).collect(),
            weights,
            consensus,
            normalize: plan.global.normalize,
            plain_divisor: if s.abs() < 1e-8 { 1.0 } else { s },
            lambda: plan.global.lambda as f32,
        }
    }

    /// Merges a block: `base` and each task vector's values (`deltas[k]`) for the same
    /// elements, into `out`. Each step is one pass over the block per task vector, summed in
    /// task-vector order, so that it vectorises and every path adds in the same order.
    fn block(&self, base: &[f32], deltas: &[&[f32]], out: &mut [f32]) {
        const BLOCK: usize = 1024;
        let mut total = [0f32; BLOCK];
        let mut divisor = [0f32; BLOCK];
        for (o, start) in out.chunks_mut(BLOCK).zip((0..).step_by(BLOCK)) {
            let len = o.len();
            let base = &base[start..start + len];
            // `o` holds the weighted sum of the task vectors (TIES: of those that agree).
            if self.consensus {
                let total = &mut total[..len];
                total.fill(0.0);
                for (d, f) in deltas.iter().zip(&self.factors) {
                    total.iter_mut().zip(&d[start..start + len]).for_each(|(t, d)| *t += f * d);
                }
                let divisor = &mut divisor[..len];
                o.fill(0.0);
                divisor.fill(0.0);
                for ((d, &f), &w) in deltas.iter().zip(&self.factors).zip(&self.weights) {
                    for (((m, dv), t), d) in
                        o.iter_mut().zip(divisor.iter_mut()).zip(total.iter()).zip(&d[start..start + len])
                    {
                        let wd = f * d;
                        // The majority sign is + when the sum is >= 0; zeros never agree.
                        let agrees = if *t >= 0.0 { wd > 0.0 } else { wd < 0.0 };
                        *m += if agrees { wd } else { 0.0 };
                        *dv += if agrees { w } else { 0.0 };
                    }
                }
                if self.normalize {
                    o.iter_mut().zip(divisor.iter()).for_each(|(m, d)| *m /= if *d == 0.0 { 1.0 } else { *d });
                }
            } else {
                o.fill(0.0);
                for (d, f) in deltas.iter().zip(&self.factors) {
                    o.iter_mut().zip(&d[start..start + len]).for_each(|(m, d)| *m += f * d);
                }
                if self.normalize {
                    o.iter_mut().for_each(|m| *m /= self.plain_divisor);
                }
            }
            o.iter_mut().zip(base).for_each(|(m, b)| *m = b + *m * self.lambda);
        }
    }
}

/// Whether a tensor's merge is element by element, so that it can run block by block straight
/// from the stored bytes ([`merge_streamed`]): linear, passthrough, and task arithmetic when
/// no task vector is thinned.
pub fn streams(method: Method, plan: &TensorPlan) -> bool {
    match method {
        Method::Linear | Method::Passthrough => true,
        m => m.task_arithmetic().is_some_and(|ta| {
            ta.sparsify.is_none()
                || plan.sources.iter().enumerate().all(|(j, s)| Some(j) == plan.base || s.params.density >= 1.0)
        }),
    }
}

/// Merges an element-by-element tensor (see [`streams`]) from the inputs' stored bytes into
/// `out`, encoded as `out_dtype`: each thread decodes a few thousand elements of every input
/// at a time, merges them and encodes the result, so no input is ever held as f32 and memory
/// is read once.
pub fn merge_streamed(
    method: Method,
    plan: &TensorPlan,
    inputs: &[(&[u8], WeightDtype)],
    out_dtype: WeightDtype,
    out: &mut Vec<u8>,
) -> Result<(), MergeError> {
    match method {
        Method::Linear => {
            let (w, divisor) = linear_weights(plan)?;
            // One pass per model over a cache-sized block (vectorises), summed in model order as
            // the element-wise loop of the in-memory path does.
            stream_blocks(plan.numel(), inputs, out_dtype, out, |xs, o| {
                o.iter_mut().zip(xs[0]).for_each(|(v, x)| *v = w[0] * x);
                for (x, w) in xs.iter().zip(&w).skip(1) {
                    o.iter_mut().zip(*x).for_each(|(v, x)| *v += w * x);
                }
                if divisor != 1.0 {
                    o.iter_mut().for_each(|v| *v /= divisor);
                }
            });
        }
        Method::Passthrough => {
            let scale = plan.sources[0].params.scale as f32;
            stream_blocks(plan.numel(), inputs, out_dtype, out, |xs, o| {
                o.iter_mut().zip(xs[0]).for_each(|(v, x)| *v = x * scale)
            });
        }
        m => {
            let ta = m.task_arithmetic().expect("streams() admits only task arithmetic besides these");
            let b = plan.base.expect("task arithmetic has a base");
            let others: Vec<usize> = (0..plan.sources.len()).filter(|j| *j != b).collect();
            if others.is_empty() {
                stream_blocks(plan.numel(), inputs, out_dtype, out, |xs, o| o.copy_from_slice(xs[b]));
                return Ok(());
            }
            let combine = Combine::new(plan, ta.consensus, vec![1.0; others.len()]);
            stream_blocks(plan.numel(), inputs, out_dtype, out, |xs, o| {
                // Task vectors of the block, then the same combination as in memory.
                let deltas: Vec<Vec<f32>> =
                    others.iter().map(|&j| xs[j].iter().zip(xs[b]).map(|(x, base)| x - base).collect()).collect();
                let views: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
                combine.block(xs[b], &views, o);
            });
        }
    }
    Ok(())
}

/// Runs `kernel` over blocks of every input, decoded to f32, and encodes its output.
fn stream_blocks(
    n: usize,
    inputs: &[(&[u8], WeightDtype)],
    out_dtype: WeightDtype,
    out: &mut Vec<u8>,
    kernel: impl Fn(&[&[f32]], &mut [f32]) + Sync,
) {
    const BLOCK: usize = 1 << 13;
    let size = out_dtype.size();
    out.resize(n * size, 0);
    par_runs(out, size, |offset, bytes| {
        let mut decoded: Vec<Vec<f32>> = vec![vec![0.0; BLOCK]; inputs.len()];
        let mut result = vec![0f32; BLOCK];
        let count = bytes.len() / size;
        let mut done = 0;
        while done < count {
            let len = BLOCK.min(count - done);
            let e0 = offset + done;
            for (buf, (b, dtype)) in decoded.iter_mut().zip(inputs) {
                decode(*dtype, &b[e0 * dtype.size()..(e0 + len) * dtype.size()], &mut buf[..len]);
            }
            let views: Vec<&[f32]> = decoded.iter().map(|d| &d[..len]).collect();
            kernel(&views, &mut result[..len]);
            encode(out_dtype, &result[..len], &mut bytes[done * size..(done + len) * size]);
            done += len;
        }
    });
}

/// Thins a task vector in place (mergekit's `sparsify`). The plan has checked that `density`
/// keeps at least one element and that DELLA's density ± epsilon stays in (0, 1). With
/// `rescale` (the task vector's L1
/// norm before thinning), returns the factor that brings what is left back to that norm, for the
/// combination to apply (one pass fewer than scaling here); else 1.
#[allow(clippy::too_many_arguments)]
pub fn thin(
    method: Sparsify,
    delta: &mut [f32],
    shape: &[usize],
    density: f64,
    gamma: f64,
    epsilon: f64,
    rescale: Option<f64>,
    stream: &[u8; 32],
) -> f32 {
    let n = delta.len();
    match method {
        Sparsify::Magnitude => {
            let k = (density * n as f64) as usize;
            keep_ranks(delta, n - k..n);
        }
        Sparsify::MagnitudeOutliers => {
            let target = (density * n as f64) as usize;
            let mut n_top = (gamma * n as f64) as isize;
            let mut n_bot = n as isize - target as isize - n_top;
            if n_bot < 0 {
                n_top += n_bot;
                n_bot = 0;
            }
            keep_ranks(delta, n_bot as usize..n - n_top.max(0) as usize);
        }
        Sparsify::Random => {
            // u = (w >> 8) / 2^24 >= density  <=>  (w >> 8) >= ceil(density * 2^24): the same
            // test as on the f32 draw (both sides are exact), on integers, which vectorises.
            let cut = ((density as f32) as f64 * (1u64 << 24) as f64).ceil() as u32;
            par_chunks(delta, |o, c| {
                let mut rng = stream_at(stream, o);
                let mut words = [0u32; 1024];
                for block in c.chunks_mut(words.len()) {
                    let words = &mut words[..block.len()];
                    rng.fill(&mut words[..]);
                    block.iter_mut().zip(words.iter()).for_each(|(v, w)| {
                        if (w >> 8) >= cut {
                            *v = 0.0;
                        }
                    });
                }
            });
        }
        Sparsify::DellaMagprune => {
            let (nrows, cols) = rows(shape);
            let lo = density - epsilon;
            let span = 2.0 * epsilon;
            // One row per task; rows are independent, and each element's draw is fixed by its
            // position, so any split of the rows gives the same mask.
            let per_thread = nrows.div_ceil(threads()).max(1);
            std::thread::scope(|scope| {
                for (ci, block) in delta.chunks_mut(per_thread * cols).enumerate() {
                    scope.spawn(move || {
                        let mut order: Vec<u32> = Vec::with_capacity(cols);
                        for (ri, row) in block.chunks_mut(cols).enumerate() {
                            let start = (ci * per_thread + ri) * cols;
                            order.clear();
                            order.extend(0..row.len() as u32);
                            order.sort_by(|a, b| {
                                row[*a as usize].abs().total_cmp(&row[*b as usize].abs()).then(a.cmp(b))
                            });
                            let mut keep_p = vec![0f32; row.len()];
                            let denom = (row.len().max(2) - 1) as f64;
                            for (rank, idx) in order.iter().enumerate() {
                                keep_p[*idx as usize] = (lo + span * rank as f64 / denom) as f32;
                            }
                            uniforms(stream, start..start + row.len(), |i, u| {
                                if u >= keep_p[i - start] {
                                    row[i - start] = 0.0;
                                }
                            });
                        }
                    });
                }
            });
        }
    }
    let Some(before) = rescale else { return 1.0 };
    let after = par_sum(n, |r| abs_sum(&delta[r]));
    if before >= 1e-7 && after >= 1e-7 { (before / after) as f32 } else { 1.0 }
}

/// Zeroes every element whose rank by magnitude (ascending; equal magnitudes ranked by
/// position) falls outside `keep`.
///
/// The magnitudes at the two cuts are found by a radix select on the bits of |x| (for
/// non-negative floats the bits order as the values do): a histogram of the top 16 bits, then
/// of the low 16 bits within the bucket that holds the rank, each one parallel pass. Equal
/// magnitudes at a cut are split by position, with each chunk told how many equal elements
/// come before it, so the mask is exact whatever the thread count.
fn keep_ranks(delta: &mut [f32], keep: Range<usize>) {
    let n = delta.len();
    if keep.start == 0 && keep.end >= n {
        return;
    }
    if keep.start >= keep.end {
        delta.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let lo = (keep.start > 0).then(|| rank_cut(delta, keep.start));
    let hi = (keep.end < n).then(|| rank_cut(delta, keep.end));
    let bits = |x: f32| x.to_bits() & 0x7fff_ffff;
    // Elements equal to each cut's magnitude, per chunk, for the chunks' starting counts.
    let chunk = n.div_ceil(threads()).max(PARALLEL_MIN);
    let equal_counts: Vec<(usize, usize)> = {
        let d: &[f32] = delta;
        std::thread::scope(|scope| {
            let handles: Vec<_> = d
                .chunks(chunk)
                .map(|c| {
                    scope.spawn(move || {
                        let count = |cut: Option<Cut>| {
                            cut.map(|cut| c.iter().filter(|x| bits(**x) == cut.value).count()).unwrap_or(0)
                        };
                        (count(lo), count(hi))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a counting worker panicked")).collect()
        })
    };
    std::thread::scope(|scope| {
        let (mut seen_lo, mut seen_hi) = (0usize, 0usize);
        for (c, (eq_lo, eq_hi)) in delta.chunks_mut(chunk).zip(equal_counts) {
            let (start_lo, start_hi) = (seen_lo, seen_hi);
            seen_lo += eq_lo;
            seen_hi += eq_hi;
            scope.spawn(move || {
                let (mut seen_lo, mut seen_hi) = (start_lo, start_hi);
                for x in c.iter_mut() {
                    let b = bits(*x);
                    // rank(x) < cut  <=>  |x| below the cut's magnitude, or equal to it and
                    // among the first `equal_below` such elements.
                    let below = |cut: Option<Cut>, seen: &mut usize, none: bool| match cut {
                        None => none,
                        Some(cut) if b < cut.value => true,
                        Some(cut) if b > cut.value => false,
                        Some(cut) => {
                            *seen += 1;
                            *seen <= cut.equal_below
                        }
                    };
                    let below_lo = below(lo, &mut seen_lo, false);
                    let below_hi = below(hi, &mut seen_hi, true);
                    if below_lo || !below_hi {
                        *x = 0.0;
                    }
                }
            });
        }
    });
}

/// Where rank `r` falls: the magnitude (as bits) of the element of rank `r`, and how many
/// elements of that magnitude rank below `r`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cut {
    value: u32,
    equal_below: usize,
}

/// Counts the magnitudes of `x` (as bits) into 2^16 buckets chosen by `pick`, in parallel.
fn histogram(x: &[f32], pick: impl Fn(u32) -> Option<usize> + Sync) -> Vec<usize> {
    let chunk = x.len().div_ceil(threads()).max(PARALLEL_MIN);
    std::thread::scope(|scope| {
        let handles: Vec<_> = x
            .chunks(chunk)
            .map(|c| {
                let pick = &pick;
                scope.spawn(move || {
                    let mut h = vec![0usize; 1 << 16];
                    for v in c {
                        if let Some(bucket) = pick(v.to_bits() & 0x7fff_ffff) {
                            h[bucket] += 1;
                        }
                    }
                    h
                })
            })
            .collect();
        let mut total = vec![0usize; 1 << 16];
        for h in handles {
            for (t, v) in total.iter_mut().zip(h.join().expect("a histogram worker panicked")) {
                *t += v;
            }
        }
        total
    })
}

/// Radix select of rank `r` (0-based, ascending) among the magnitudes of `x`.
fn rank_cut(x: &[f32], r: usize) -> Cut {
    // The bucket holding rank `r`, and how many elements lie in the buckets before it.
    let find = |h: &[usize], r: usize| -> (usize, usize) {
        let mut before = 0;
        for (bucket, count) in h.iter().enumerate() {
            if before + count > r {
                return (bucket, before);
            }
            before += count;
        }
        unreachable!("rank {r} is below the element count")
    };
    let (high, below_high) = find(&histogram(x, |b| Some((b >> 16) as usize)), r);
    let (low, below_low) =
        find(&histogram(x, |b| ((b >> 16) as usize == high).then_some((b & 0xffff) as usize)), r - below_high);
    Cut { value: ((high as u32) << 16) | low as u32, equal_below: r - below_high - below_low }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_ranks_keeps_exactly_the_range_with_ties_by_position() {
        let mut d = vec![0.5, -0.5, 0.1, 0.5, -0.9, 0.2];
        // ascending |d| with position: 0.1(2) 0.2(5) 0.5(0) 0.5(1) 0.5(3) 0.9(4)
        keep_ranks(&mut d, 3..6);
        assert_eq!(d, vec![0.0, -0.5, 0.0, 0.5, -0.9, 0.0]);
        let mut d = vec![0.5, -0.5, 0.1, 0.5, -0.9, 0.2];
        keep_ranks(&mut d, 1..4);
        assert_eq!(d, vec![0.5, -0.5, 0.0, 0.0, 0.0, 0.2]);
    }

    #[test]
    fn keep_ranks_splits_ties_by_position_across_chunks() {
        // Many equal magnitudes, in more elements than one thread's chunk.
        let n = 300_001;
        let values: Vec<f32> =
            (0..n).map(|i| ((i * 7919) % 37) as f32 * 0.25 * if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|a, b| values[*a].abs().total_cmp(&values[*b].abs()).then(a.cmp(b)));
        for keep in [n / 2..n, 1234..n - 5678, 0..n / 3, n - 1..n] {
            let mut want = vec![0.0; n];
            for &i in &order[keep.clone()] {
                want[i] = values[i];
            }
            let mut got = values.clone();
            keep_ranks(&mut got, keep.clone());
            assert!(got == want, "{keep:?}");
        }
    }

    #[test]
    fn random_draws_do_not_depend_on_the_split() {
        let seed = stream_seed(7, "t", "m");
        let mut whole = Vec::new();
        uniforms(&seed, 0..100, |_, u| whole.push(u));
        let mut parts = Vec::new();
        uniforms(&seed, 0..37, |_, u| parts.push(u));
        uniforms(&seed, 37..100, |_, u| parts.push(u));
        assert_eq!(whole, parts);
        assert!(whole.iter().all(|u| (0.0..1.0).contains(u)));
    }
}
