//! The arithmetic-heavy steps of a merge on a burn device (wgpu, on a GPU): the sign election
//! and combination of task arithmetic, and spherical interpolation.
//!
//! Used when `--device` resolves to wgpu; the CPU path (`methods`) is the fallback and the
//! reference. What stays on the CPU in every case, and why:
//! - thinning a task vector (top-k, breadcrumbs, DARE and DELLA masks): its exact cut and its
//!   seeded random draws are defined element by element in `methods`, so that a merge gives the
//!   same mask on any device (cache keys do not name the device);
//! - merges that are one weighted sum per element (linear, passthrough, task arithmetic
//!   without thinning): they read each input once, so sending them to a GPU and back would
//!   cost more memory traffic than the sum itself;
//! - model_stock's per-row cosines (a few reductions per tensor).
//!
//! Results agree with the CPU path to f32 rounding (sums are ordered differently on a GPU).

use burn::tensor::{Device, Tensor, TensorData};

/// Combination settings, as in `methods::Combine`.
pub struct CombineSpec<'a> {
    /// The weights (summed by the divisors).
    pub weights: &'a [f32],
    /// Each weight times its task vector's rescale factor (what the task vector is multiplied by).
    pub factors: &'a [f32],
    pub consensus: bool,
    pub normalize: bool,
    pub plain_divisor: f32,
    pub lambda: f32,
}

fn upload(device: &Device, values: &[f32]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), [1, values.len()]), device)
}

fn download(t: Tensor<2>) -> Result<Vec<f32>, String> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| format!("cannot read a tensor back from the device: {e:?}"))
}

/// `base + lambda * combine(deltas)`, element by element, on the device.
pub fn combine(device: &Device, base: &[f32], deltas: &[&[f32]], spec: &CombineSpec) -> Result<Vec<f32>, String> {
    let k = deltas.len();
    let n = base.len();
    let d: Tensor<2> = Tensor::cat(deltas.iter().map(|x| upload(device, x)).collect(), 0);
    let w: Tensor<2> = Tensor::from_data(TensorData::new(spec.weights.to_vec(), [k, 1]), device);
    let f: Tensor<2> = Tensor::from_data(TensorData::new(spec.factors.to_vec(), [k, 1]), device);
    let wd = d.mul(f);
    let mixed = if spec.consensus {
        let total = wd.clone().sum_dim(0);
        // The majority sign: +1 where the weighted sum is >= 0, else -1. sign(0) = 0 agrees
        // with neither, as on the CPU.
        let majority = total.greater_equal_elem(0.0).float().mul_scalar(2.0).sub_scalar(1.0);
        let agrees = wd.clone().sign().equal(majority.expand([k, n])).float();
        let mixed = wd.mul(agrees.clone()).sum_dim(0);
        if spec.normalize {
            let divisor = w.mul(agrees).sum_dim(0);
            let divisor = divisor.clone().mask_fill(divisor.equal_elem(0.0), 1.0);
            mixed.div(divisor)
        } else {
            mixed
        }
    } else {
        let mixed = wd.sum_dim(0);
        if spec.normalize { mixed.div_scalar(spec.plain_divisor) } else { mixed }
    };
    download(upload(device, base).add(mixed.mul_scalar(spec.lambda)))
}

/// Spherical interpolation of two tensors (each as one vector) on the device: the norms and
/// the dot product are reduced there, and `coefficients(n0, n1, dot)` turns them, in f64 on the
/// host, into the weights of v0 and v1. The caller passes mergekit's formula
/// (`methods::slerp_coefficients`), which the CPU path uses too: this module imports nothing
/// from the rest of the merge.
pub fn slerp(
    device: &Device,
    v0: &[f32],
    v1: &[f32],
    coefficients: impl FnOnce(f64, f64, f64) -> (f32, f32),
) -> Result<Vec<f32>, String> {
    let (a, b) = (upload(device, v0), upload(device, v1));
    let scalar = |x: Tensor<1>| -> Result<f64, String> {
        let v = x.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        Ok(v[0] as f64)
    };
    let n0 = scalar(a.clone().powi_scalar(2).sum())?.sqrt();
    let n1 = scalar(b.clone().powi_scalar(2).sum())?.sqrt();
    let dot = scalar(a.clone().mul(b.clone()).sum())?;
    let (c0, c1) = coefficients(n0, n1, dot);
    download(a.mul_scalar(c0).add(b.mul_scalar(c1)))
}
