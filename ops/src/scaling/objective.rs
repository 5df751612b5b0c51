//! The fitting objective on the device: the sum of Huber losses of log-space residuals, for many
//! parameter vectors at once, with its gradient from burn's autodiff.
//!
//! Parameters arrive as one `[S, P]` tensor (one row per start or resample), data columns as
//! `[1, n]` tensors; the formula broadcasts them to `[S, n]` residuals. Bootstrap resamples are
//! per-point weights (how many times each point was drawn), one row per resample.

use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};

use super::formula::Bound;
use super::lbfgs::Objective;

/// Huber loss: `r²/2` for `|r| <= delta`, `delta (|r| - delta/2)` beyond.
pub fn huber(r: f64, delta: f64) -> f64 {
    let a = r.abs();
    if a <= delta { 0.5 * a * a } else { delta * (a - 0.5 * delta) }
}

/// Sum over points of `weight * huber(log_prediction - log_y)`, batched.
pub struct HuberObjective {
    device: Device,
    dtype: DType,
    formula: Bound,
    dim: usize,
    columns: Vec<Tensor<2>>,
    log_y: Tensor<2>,
    delta: f64,
    /// `[R, n]` weights, one row per problem id; none: every point weighs 1.
    weights: Option<Tensor<2>>,
    /// Batched evaluations so far.
    pub evaluations: usize,
    /// Parameter vectors evaluated so far, over all batches.
    pub rows: usize,
}

impl HuberObjective {
    /// `formula` computes log L̂ from `dim` parameters and the `columns` (each of length n);
    /// `log_y` is the observed log loss. `dtype` is the float type on the device (`F32`
    /// everywhere; `F64` on the CPU for the final refinement).
    pub fn new(
        device: &Device,
        dtype: DType,
        formula: Bound,
        dim: usize,
        columns: &[Vec<f64>],
        log_y: &[f64],
        delta: f64,
    ) -> HuberObjective {
        let row = |v: &[f64]| tensor(device, dtype, v, [1, v.len()]);
        HuberObjective {
            device: device.clone(),
            dtype,
            formula,
            dim,
            columns: columns.iter().map(|c| row(c)).collect(),
            log_y: row(log_y),
            delta,
            weights: None,
            evaluations: 0,
            rows: 0,
        }
    }

    /// Weights per problem id: `weights[id]` has one entry per point.
    pub fn with_weights(mut self, weights: &[Vec<f64>]) -> HuberObjective {
        let n = self.log_y.dims()[1];
        let flat: Vec<f64> = weights.iter().flatten().copied().collect();
        self.weights = Some(tensor(&self.device, self.dtype, &flat, [weights.len(), n]));
        self
    }
}

fn tensor(device: &Device, dtype: DType, values: &[f64], shape: [usize; 2]) -> Tensor<2> {
    let options = TensorCreationOptions::new(device.clone()).with_dtype(dtype);
    let data = match dtype {
        DType::F64 => TensorData::new(values.to_vec(), shape),
        _ => TensorData::new(values.iter().map(|v| *v as f32).collect::<Vec<f32>>(), shape),
    };
    Tensor::from_data(data, options)
}

fn to_f64(t: Tensor<2>) -> Result<Vec<f64>, String> {
    t.into_data().convert::<f64>().try_into_vec::<f64>().map_err(|e| format!("cannot read a tensor back: {e:?}"))
}

impl Objective for HuberObjective {
    fn dim(&self) -> usize {
        self.dim
    }

    fn eval(&mut self, ids: &[usize], x: &[f64], f: &mut [f64], g: &mut [f64]) -> Result<(), String> {
        self.evaluations += 1;
        self.rows += ids.len();
        let s = ids.len();
        let params = tensor(&self.device, self.dtype, x, [s, self.dim]).require_grad();
        let log_pred = self.formula.eval_tensor(&params, &self.columns).into_tensor(&params);
        let r = log_pred.sub(self.log_y.clone());
        let a = r.abs();
        let c = a.clone().clamp_max(self.delta);
        let mut h = c.clone().mul(a.sub(c.mul_scalar(0.5)));
        if let Some(w) = &self.weights {
            let index: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            let index = Tensor::<1, Int>::from_data(TensorData::new(index, [s]), &self.device);
            h = h.mul(w.clone().select(0, index));
        }
        // A formula that does not depend on every parameter or point still gives one row each.
        let n = self.log_y.dims()[1];
        let h = h.expand([s, n]);
        let rows = h.sum_dim(1);
        let grads = rows.clone().sum().backward();
        let grad = params.grad(&grads).unwrap_or_else(|| params.zeros_like());
        f.copy_from_slice(&to_f64(rows.detach())?);
        g.copy_from_slice(&to_f64(grad)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::compute::Compute;
    use crate::scaling::formula::parse;

    #[test]
    fn huber_is_quadratic_then_linear_and_continuous() {
        assert_eq!(huber(0.5e-3, 1e-3), 0.125e-6);
        assert!((huber(3e-3, 1e-3) - 1e-3 * 2.5e-3).abs() < 1e-18);
        assert!((huber(-1e-3, 1e-3) - 0.5e-6).abs() < 1e-18);
    }

    /// Value and gradient from the device against a direct f64 computation and central
    /// differences, for two parameter vectors at once.
    #[test]
    fn value_and_gradient_match_finite_differences() {
        let names: Vec<String> = ["a", "b", "e", "alpha", "beta"].map(String::from).to_vec();
        let cols = vec!["N".to_string(), "D".to_string()];
        let formula = parse("lse(a - alpha*log(N), b - beta*log(D), e)").unwrap().bind(&names, &cols).unwrap();
        let n: Vec<f64> = vec![1e8, 4e8, 1e9, 3e9, 1e10];
        let d: Vec<f64> = vec![2e9, 8e9, 2e10, 6e10, 2e11];
        let y: Vec<f64> = vec![3.1, 2.8, 2.5, 2.3, 2.1];
        let log_y: Vec<f64> = y.iter().map(|v| v.ln()).collect();
        let cpu = Compute::cpu("");
        let mut obj =
            HuberObjective::new(&cpu.device, DType::F64, formula.clone(), 5, &[n.clone(), d.clone()], &log_y, 1e-3);
        let x = [6.0, 7.0, 0.5, 0.34, 0.28, 5.0, 8.0, 0.6, 0.3, 0.35];
        let (mut f, mut g) = (vec![0.0; 2], vec![0.0; 10]);
        obj.eval(&[0, 1], &x, &mut f, &mut g).unwrap();
        let direct =
            |p: &[f64]| -> f64 { (0..n.len()).map(|i| huber(formula.eval(p, &[n[i], d[i]]) - log_y[i], 1e-3)).sum() };
        for k in 0..2 {
            let p = &x[5 * k..5 * k + 5];
            assert!((f[k] - direct(p)).abs() < 1e-12, "value {k}: {} vs {}", f[k], direct(p));
            for j in 0..5 {
                let h = 1e-6;
                let (mut up, mut down) = (p.to_vec(), p.to_vec());
                up[j] += h;
                down[j] -= h;
                let fd = (direct(&up) - direct(&down)) / (2.0 * h);
                assert!(
                    (g[5 * k + j] - fd).abs() < 1e-6 * fd.abs().max(1e-3),
                    "grad {k},{j}: {} vs {fd}",
                    g[5 * k + j]
                );
            }
        }
    }

    /// The same batch in f32 on wgpu (lavapipe in CI) and in f64 on the CPU: equal to f32's
    /// precision. This is the code path `--device wgpu` takes for every grid start.
    #[cfg(feature = "wgpu")]
    #[test]
    fn wgpu_in_f32_agrees_with_the_cpu_in_f64() {
        let names: Vec<String> = ["a", "b", "e", "alpha", "beta"].map(String::from).to_vec();
        let cols = vec!["N".to_string(), "D".to_string()];
        let formula = parse("lse(a - alpha*log(N), b - beta*log(D), e)").unwrap().bind(&names, &cols).unwrap();
        let n: Vec<f64> = (0..40).map(|i| 1e8 * 1.2f64.powi(i)).collect();
        let d: Vec<f64> = n.iter().map(|n| 20.0 * n).collect();
        let log_y: Vec<f64> =
            n.iter().zip(&d).map(|(n, d)| (1.8 + 480.0 / n.powf(0.35) + 2100.0 / d.powf(0.37)).ln() + 2e-3).collect();
        let x: Vec<f64> =
            [[6.17, 7.67, 0.597, 0.347, 0.367], [5.0, 8.0, 0.6, 0.3, 0.35], [0.0, 25.0, -1.0, 2.0, 0.0]].concat();
        let weights: Vec<Vec<f64>> = (0..3).map(|k| (0..40).map(|i| ((i + k) % 3) as f64).collect()).collect();
        let run = |compute: &Compute, dtype| {
            let mut obj =
                HuberObjective::new(&compute.device, dtype, formula.clone(), 5, &[n.clone(), d.clone()], &log_y, 1e-3)
                    .with_weights(&weights);
            let (mut f, mut g) = (vec![0.0; 3], vec![0.0; 15]);
            obj.eval(&[2, 0, 1], &x, &mut f, &mut g).unwrap();
            (f, g)
        };
        let gpu = crate::kit::compute::resolve(crate::kit::compute::DeviceChoice::Wgpu)
            .expect("a wgpu adapter (CI installs lavapipe)");
        let (f32_f, f32_g) = run(&gpu, DType::F32);
        let (f64_f, f64_g) = run(&Compute::cpu(""), DType::F64);
        for k in 0..3 {
            assert!((f32_f[k] - f64_f[k]).abs() <= 1e-4 * f64_f[k].abs(), "value {k}: {} vs {}", f32_f[k], f64_f[k]);
        }
        let scale = f64_g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (a, b) in f32_g.iter().zip(&f64_g) {
            assert!((a - b).abs() <= 1e-3 * scale, "gradient {a} vs {b} (scale {scale})");
        }
    }

    #[test]
    fn weights_select_rows_by_problem_id() {
        let names = vec!["c".to_string()];
        let formula = parse("c").unwrap().bind(&names, &[]).unwrap();
        let log_y = [0.0, 0.0, 0.0];
        let cpu = Compute::cpu("");
        let mut obj = HuberObjective::new(&cpu.device, DType::F64, formula, 1, &[], &log_y, 1.0)
            .with_weights(&[vec![1.0, 0.0, 0.0], vec![0.0, 2.0, 1.0]]);
        let (mut f, mut g) = (vec![0.0; 2], vec![0.0; 2]);
        // Problem 1 first: its weights sum to 3; problem 0's to 1. huber(0.5, 1) = 0.125.
        obj.eval(&[1, 0], &[0.5, 0.5], &mut f, &mut g).unwrap();
        assert!((f[0] - 0.375).abs() < 1e-12 && (f[1] - 0.125).abs() < 1e-12, "{f:?}");
        assert!((g[0] - 1.5).abs() < 1e-12 && (g[1] - 0.5).abs() < 1e-12, "{g:?}");
    }
}
