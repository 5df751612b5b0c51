//! The laws `scaling_law_fit` knows: each is a formula for log L̂ over named data variables and
//! fitted parameters, a default grid of starts, and how to report the fitted values.
//!
//! `chinchilla` and `power` are fitted in the parametrisation of Hoffmann et al. (2022, App. D.2)
//! and Epoch's replication (Besiroglu et al. 2024): log L̂ = LSE(a − α log N, b − β log D, e) with
//! A = e^a, B = e^b, E = e^e, which keeps every term positive without bounds. A `custom` law is
//! fitted as log of the user's formula, in the user's own parameters.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::formula::{self, Expr};

/// Which law, as named in `with: { law: ... }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LawKind {
    /// L = E + A / N^alpha + B / D^beta (Chinchilla, Approach 3).
    #[default]
    Chinchilla,
    /// L = E + A / X^alpha, over one column.
    Power,
    /// Any formula over named columns and parameters (`formula` and `init`).
    Custom,
}

/// A law ready to fit.
#[derive(Clone, Debug)]
pub struct Law {
    pub kind: LawKind,
    /// Fitted parameters, in the order of the parameter vector.
    pub params: Vec<String>,
    /// Data variables the formula reads, in the order of the column tensors.
    pub vars: Vec<String>,
    /// log L̂ as a formula over `params` and `vars`.
    pub log_pred: Expr,
    /// Starting values per parameter; every combination is one start.
    pub grid: Vec<Vec<f64>>,
}

/// Epoch's grid (`data_analysis.ipynb`): 4,500 starts for the Chinchilla law.
fn chinchilla_grid() -> Vec<(&'static str, Vec<f64>)> {
    vec![
        ("a", steps(0.0, 25.0, 5.0)),
        ("b", steps(0.0, 25.0, 5.0)),
        ("e", steps(-1.0, 1.0, 0.5)),
        ("alpha", steps(0.0, 2.0, 0.5)),
        ("beta", steps(0.0, 2.0, 0.5)),
    ]
}

fn steps(from: f64, to: f64, by: f64) -> Vec<f64> {
    let n = ((to - from) / by).round() as usize;
    (0..=n).map(|i| from + by * i as f64).collect()
}

/// Parameter names, variable names, log L̂, and the default grid.
type Parts = (Vec<String>, Vec<String>, Expr, Vec<(&'static str, Vec<f64>)>);

impl Law {
    /// Builds a law. `init` overrides the default grid per parameter (and is required for
    /// `custom`, where its keys name the parameters). Errors are `(param path, message)`.
    pub fn new(
        kind: LawKind,
        formula_text: Option<&str>,
        init: &BTreeMap<String, Vec<f64>>,
    ) -> Result<Law, (Vec<&'static str>, String)> {
        let (params, vars, log_pred, defaults): Parts = match kind {
            LawKind::Chinchilla => {
                let f = formula::parse("lse(a - alpha * log(N), b - beta * log(D), e)").expect("a valid formula");
                let grid = chinchilla_grid();
                (grid.iter().map(|(n, _)| n.to_string()).collect(), vec!["N".into(), "D".into()], f, grid)
            }
            LawKind::Power => {
                let f = formula::parse("lse(a - alpha * log(X), e)").expect("a valid formula");
                let grid =
                    vec![("a", steps(0.0, 25.0, 5.0)), ("e", steps(-1.0, 1.0, 0.5)), ("alpha", steps(0.0, 2.0, 0.5))];
                (grid.iter().map(|(n, _)| n.to_string()).collect(), vec!["X".into()], f, grid)
            }
            LawKind::Custom => {
                let Some(text) = formula_text else {
                    return Err((vec!["formula"], "`law: custom` needs a `formula`, e.g. `E + A / N^alpha`".into()));
                };
                let expr = formula::parse(text).map_err(|e| (vec!["formula"], format!("formula: {e}")))?;
                if init.is_empty() {
                    return Err((
                        vec!["init"],
                        "`law: custom` needs `init`: starting values for each fitted parameter, e.g. `{E: [1, 2], alpha: [0.3]}`".into(),
                    ));
                }
                let names = expr.names();
                let params: Vec<String> = names.iter().filter(|n| init.contains_key(*n)).cloned().collect();
                let vars: Vec<String> = names.iter().filter(|n| !init.contains_key(*n)).cloned().collect();
                if let Some(unused) = init.keys().find(|k| !names.contains(k)) {
                    return Err((vec!["init"], format!("`{unused}` is in `init` but not in the formula")));
                }
                (params, vars, expr.log(), Vec::new())
            }
        };
        if kind != LawKind::Custom
            && let Some(unknown) = init.keys().find(|k| !params.contains(k))
        {
            return Err((
                vec!["init"],
                format!("`{unknown}` is not a parameter of the {kind:?} law (its parameters: {})", params.join(", ")),
            ));
        }
        let mut grid = Vec::new();
        for p in &params {
            let values = match init.get(p) {
                Some(v) => v.clone(),
                None => defaults.iter().find(|(n, _)| n == p).map(|(_, v)| v.clone()).unwrap_or_default(),
            };
            if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
                return Err((vec!["init"], format!("`init.{p}` needs at least one finite starting value")));
            }
            grid.push(values);
        }
        Ok(Law { kind, params, vars, log_pred, grid })
    }

    /// Every combination of the grid, as concatenated parameter vectors (first parameter
    /// slowest).
    pub fn starts(&self) -> Vec<f64> {
        let mut out = Vec::new();
        let mut idx = vec![0usize; self.grid.len()];
        loop {
            out.extend(idx.iter().zip(&self.grid).map(|(i, g)| g[*i]));
            let mut k = self.grid.len();
            loop {
                if k == 0 {
                    return out;
                }
                k -= 1;
                idx[k] += 1;
                if idx[k] < self.grid[k].len() {
                    break;
                }
                idx[k] = 0;
            }
        }
    }

    pub fn start_count(&self) -> usize {
        self.grid.iter().map(Vec::len).product()
    }

    /// The values reported for a parameter vector, by name: the law's natural parameters
    /// (E, A, B, alpha, beta for Chinchilla) and what follows from them.
    pub fn report(&self, x: &[f64]) -> Vec<(String, f64)> {
        let get = |name: &str| self.params.iter().position(|p| p == name).map(|i| x[i]).unwrap_or(f64::NAN);
        match self.kind {
            LawKind::Chinchilla => {
                let (alpha, beta) = (get("alpha"), get("beta"));
                vec![
                    ("E".into(), get("e").exp()),
                    ("A".into(), get("a").exp()),
                    ("B".into(), get("b").exp()),
                    ("alpha".into(), alpha),
                    ("beta".into(), beta),
                    // N_opt ∝ C^(beta/(alpha+beta)), D_opt ∝ C^(alpha/(alpha+beta)).
                    ("n_exponent".into(), beta / (alpha + beta)),
                    ("d_exponent".into(), alpha / (alpha + beta)),
                ]
            }
            LawKind::Power => {
                vec![("E".into(), get("e").exp()), ("A".into(), get("a").exp()), ("alpha".into(), get("alpha"))]
            }
            LawKind::Custom => self.params.iter().cloned().zip(x.iter().copied()).collect(),
        }
    }
}

/// The compute-optimal allocation of the Chinchilla law for a budget of C FLOPs (C ≈ 6 N D):
/// G = (αA / (βB))^(1/(α+β)), N_opt = G (C/6)^(β/(α+β)), D_opt = G⁻¹ (C/6)^(α/(α+β)).
pub fn chinchilla_allocation(e: f64, a: f64, b: f64, alpha: f64, beta: f64, c: f64) -> (f64, f64, f64) {
    let g = (alpha * a / (beta * b)).powf(1.0 / (alpha + beta));
    let n = g * (c / 6.0).powf(beta / (alpha + beta));
    let d = (c / 6.0).powf(alpha / (alpha + beta)) / g;
    (n, d, e + a / n.powf(alpha) + b / d.powf(beta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_chinchilla_grid_is_epochs_4500_starts() {
        let law = Law::new(LawKind::Chinchilla, None, &BTreeMap::new()).unwrap();
        assert_eq!(law.start_count(), 4500);
        let starts = law.starts();
        assert_eq!(starts.len(), 4500 * 5);
        assert_eq!(&starts[..5], &[0.0, 0.0, -1.0, 0.0, 0.0]);
        assert_eq!(&starts[5..10], &[0.0, 0.0, -1.0, 0.0, 0.5]);
        assert_eq!(&starts[starts.len() - 5..], &[25.0, 25.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn custom_laws_take_their_parameters_from_init() {
        let init = BTreeMap::from([
            ("E".to_string(), vec![1.0, 2.0]),
            ("A".into(), vec![10.0]),
            ("alpha".into(), vec![0.3, 0.5]),
        ]);
        let law = Law::new(LawKind::Custom, Some("E + A / N^alpha"), &init).unwrap();
        assert_eq!(law.params, ["E", "A", "alpha"]);
        assert_eq!(law.vars, ["N"]);
        assert_eq!(law.start_count(), 4);
        let err = Law::new(LawKind::Custom, Some("E + A / N^alpha"), &BTreeMap::new()).unwrap_err();
        assert_eq!(err.0, ["init"]);
        let bad = BTreeMap::from([("Q".to_string(), vec![1.0])]);
        assert_eq!(
            Law::new(LawKind::Custom, Some("E + A / N"), &bad).unwrap_err().1,
            "`Q` is in `init` but not in the formula"
        );
        assert_eq!(
            Law::new(LawKind::Chinchilla, None, &bad).unwrap_err().1,
            "`Q` is not a parameter of the Chinchilla law (its parameters: a, b, e, alpha, beta)"
        );
    }

    #[test]
    fn allocation_spends_the_budget_and_follows_the_exponents() {
        // Epoch's fit (Besiroglu et al. 2024, Table 1 replication values).
        let (e, a, b, alpha, beta) = (1.8172, 482.01, 2085.43, 0.3478, 0.3658);
        for c in [1e20, 1e22, 1e24] {
            let (n, d, l) = chinchilla_allocation(e, a, b, alpha, beta, c);
            assert!((6.0 * n * d / c - 1.0).abs() < 1e-9, "C = 6 N D");
            assert!(l > e);
            // At the optimum the marginal returns balance: alpha A / N^alpha = beta B / D^beta.
            let (gn, gd) = (alpha * a / n.powf(alpha), beta * b / d.powf(beta));
            assert!((gn / gd - 1.0).abs() < 1e-9, "{gn} vs {gd}");
        }
    }
}
