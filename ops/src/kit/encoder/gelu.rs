//! GELU for the BERT encoder: one vectorised pass on the CPU backend, burn's own elsewhere.
//!
//! burn-flex computes `gelu` and its backward element by element through libm's scalar `erff`
//! (and `expf`), on one core: 15-20% of a MiniLM forward or training step on this project's
//! 2-core machines (perf, December 2026). Here the normal CDF Φ(x) and x·φ(x) come from
//! Abramowitz and Stegun's 7.1.26 rational approximation of erf (absolute error at most
//! 1.5e-7, the float32 resolution of values near 1) and a Cephes-style `exp`, written so that
//! the compiler vectorises the loop, and the slices are split across rayon's threads.
//!
//! Inference (no autodiff graph) gets `x·Φ(x)` in one pass. Training needs the gradient too:
//! with `g = x·Φ(x)` and `g' = Φ(x) + x·φ(x)` (GELU's derivative) computed in the same pass as
//! constants, `(x - detach(x)) * g' + g` has the value `g` exactly (the first factor is `x - x`,
//! zero) and autodiff differentiates it to `g'`, through a subtraction, a multiplication and
//! an addition burn already knows. On any other backend (wgpu: its kernels are vectorised
//! already) this is burn's `gelu`.

use burn::tensor::activation;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// `x·Φ(x)`, with `Φ` the standard normal CDF (the exact GELU, not the tanh approximation).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if !crate::kit::compute::is_cpu(&device) || x.dtype() != DType::F32 {
        return activation::gelu(x);
    }
    let shape = x.shape();
    let tensor = |v: Vec<f32>| Tensor::<D>::from_data(TensorData::new(v, shape.clone()), &device);
    let tracked = x.is_tracked();
    let source = if tracked { x.clone().detach() } else { x.clone() };
    let Ok(mut value) = source.into_data().try_into_vec::<f32>() else {
        return activation::gelu(x);
    };
    if !tracked {
        value.par_chunks_mut(CHUNK).for_each(|v| widest(v, None));
        return tensor(value);
    }
    let mut derivative = vec![0f32; value.len()];
    value.par_chunks_mut(CHUNK).zip(derivative.par_chunks_mut(CHUNK)).for_each(|(v, d)| widest(v, Some(d)));
    (x.clone() - x.detach()) * tensor(derivative) + tensor(value)
}

/// Elements per rayon task: large enough that splitting costs nothing next to the work.
const CHUNK: usize = 1 << 16;

/// Each `x` of `v` becomes `x·Φ(x)`; with `d`, its place there GELU's derivative
/// `Φ(x) + x·φ(x)`.
#[inline(always)]
fn kernel(v: &mut [f32], d: Option<&mut [f32]>) {
    match d {
        None => {
            for x in v {
                *x *= cdf_and_slope(*x).0;
            }
        }
        Some(d) => {
            for (x, d) in v.iter_mut().zip(d) {
                let (cdf, slope) = cdf_and_slope(*x);
                (*x, *d) = (*x * cdf, cdf + slope);
            }
        }
    }
}

/// The kernel compiled for wider vectors. The same operations in the same order (no fused
/// multiply-adds), so every CPU gets the same bits, only sooner.
#[cfg(target_arch = "x86_64")]
mod wide {
    #[target_feature(enable = "avx512f")]
    pub fn avx512(v: &mut [f32], d: Option<&mut [f32]>) {
        super::kernel(v, d)
    }

    #[target_feature(enable = "avx2")]
    pub fn avx2(v: &mut [f32], d: Option<&mut [f32]>) {
        super::kernel(v, d)
    }
}

/// [`kernel`] with the widest vectors this CPU has.
fn widest(v: &mut [f32], d: Option<&mut [f32]>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { wide::avx512(v, d) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { wide::avx2(v, d) };
        }
    }
    kernel(v, d)
}

/// `(Φ(x), x·φ(x))`, the two terms of GELU's derivative, of which the first also gives GELU.
#[inline(always)]
fn cdf_and_slope(x: f32) -> (f32, f32) {
    // Abramowitz and Stegun 7.1.26: erf(a) = 1 - (a1 t + ... + a5 t^5) exp(-a^2),
    // t = 1 / (1 + p a), a >= 0.
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z.abs());
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let gauss = exp_non_positive(-z * z); // exp(-x^2 / 2)
    let tail = 0.5 * poly * gauss; // P(N > |x|) = erfc(|z|) / 2
    let cdf = if x >= 0.0 { 1.0 - tail } else { tail };
    (cdf, x * INV_SQRT_2PI * gauss)
}

/// `exp(w)` for `w <= 0` (0 below -87), to about one ulp: `2^n · exp(r)` with `n` the nearest
/// integer to `w / ln 2` and Cephes' degree-6 polynomial for `exp(r)`, `|r| <= ln 2 / 2`.
#[inline(always)]
fn exp_non_positive(w: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to the nearest integer without a call, and leaves that integer
    // in the low bits of the sum (no float-to-int conversion, which does not vectorise).
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: u32 = 0x4B40_0000;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let w = w.max(-87.0);
    let k = w * std::f32::consts::LOG2_E + ROUND;
    let n = k - ROUND;
    let r = w - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // n >= -126: 2^n is a normal float, built from its exponent bits, n + 127.
    e * f32::from_bits(k.to_bits().wrapping_sub(ROUND_BITS).wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    /// Φ(x) and x·φ(x) in f64 from libm's `erf`, the reference.
    fn reference(x: f32) -> (f64, f64) {
        let x = f64::from(x);
        let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        (cdf, x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt())
    }

    #[test]
    fn cdf_and_slope_agree_with_libm_to_float32_resolution() {
        let mut worst = (0f64, 0f64);
        for i in -2_000_000..=2_000_000 {
            let x = i as f32 * 1e-5 * 6.0; // [-12, 12], steps of 6e-5
            let (cdf, slope) = cdf_and_slope(x);
            let (c, s) = reference(x);
            worst.0 = worst.0.max((f64::from(cdf) - c).abs());
            worst.1 = worst.1.max((f64::from(slope) - s).abs());
        }
        // A&S 7.1.26's bound is 1.5e-7 on erf (7.5e-8 on Φ); float32 arithmetic adds the rest
        // (measured: 3.0e-7, about 2.5 float32 ulps of values near 1).
        assert!(worst.0 < 3.5e-7, "Φ: worst absolute error {}", worst.0);
        assert!(worst.1 < 1.0e-7, "x·φ(x): worst absolute error {}", worst.1);
    }

    #[test]
    fn exp_non_positive_is_within_two_ulps_and_zero_far_below() {
        for i in 0..=870_000 {
            let w = -(i as f32) * 1e-4;
            let (got, want) = (exp_non_positive(w), f64::from(w).exp());
            assert!(
                (f64::from(got) - want).abs() <= 2.0 * want * f64::from(f32::EPSILON),
                "exp({w}) = {got}, not {want}"
            );
        }
        assert!(exp_non_positive(-1e4) < 1e-37);
        assert_eq!(exp_non_positive(0.0), 1.0);
    }

    #[test]
    fn values_and_gradients_match_burns_gelu_on_the_cpu() {
        let device = Device::flex().autodiff();
        let values: Vec<f32> = (0..4096).map(|i| ((i * 7919) % 4096) as f32 / 256.0 - 8.0).collect();
        let input = || Tensor::<2>::from_data(TensorData::new(values.clone(), [64, 64]), &device).require_grad();
        let w: Vec<f32> = (0..4096).map(|i| (i % 13) as f32 - 6.0).collect();
        let weights = Tensor::<2>::from_data(TensorData::new(w.clone(), [64, 64]), &device);
        let run = |f: fn(Tensor<2>) -> Tensor<2>| {
            let x = input();
            let y = f(x.clone());
            let grads = (y.clone() * weights.clone()).sum().backward();
            let grad = x.grad(&grads).unwrap().into_data().try_into_vec::<f32>().unwrap();
            (y.into_data().try_into_vec::<f32>().unwrap(), grad)
        };
        let (ours, burns) = (run(gelu), run(activation::gelu));
        let close = |a: &[f32], b: &[f32], what: &str| {
            for (k, (a, b)) in a.iter().zip(b).enumerate() {
                let scale = values[k].abs().max(1.0) * w[k].abs().max(1.0);
                assert!((a - b).abs() <= 3e-7 * scale, "{what} at x = {}: {a} against burn's {b}", values[k]);
            }
        };
        close(&ours.0, &burns.0, "value");
        close(&ours.1, &burns.1, "gradient");
        // Without a graph: the same values, one pass.
        let plain = gelu(Tensor::<2>::from_data(TensorData::new(values.clone(), [64, 64]), &device));
        assert_eq!(plain.into_data().try_into_vec::<f32>().unwrap(), ours.0);
    }
}
