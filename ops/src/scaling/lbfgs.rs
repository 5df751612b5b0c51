//! Batched L-BFGS: thousands of independent minimisations advanced in lock step, so that every
//! objective evaluation is one batched computation on the device.
//!
//! The optimiser's own arithmetic (two-loop recursion, line search, stopping tests) is tiny and
//! runs here in `f64`; only the objective, over all points for all live problems at once, goes
//! to the device. Problems that have stopped leave the batch, so late rounds cost little.
//!
//! Stopping tests follow scipy's L-BFGS-B defaults, which Chinchilla's Approach 3 and Epoch's
//! replication used: relative reduction of the objective `(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1)
//! <= ftol` with `ftol = 2.22e-9`, or largest gradient component `<= gtol = 1e-5`. The line search
//! is a backtracking Armijo search with safeguarded quadratic interpolation; curvature pairs with
//! `s·y <= 0` are skipped, which keeps the inverse-Hessian estimate positive definite.

use std::collections::VecDeque;

/// Evaluates the objective and its gradient for a batch of problems.
pub trait Objective {
    /// Number of parameters of each problem.
    fn dim(&self) -> usize;

    /// For each `ids[k]` (the problem's id, e.g. its bootstrap resample) at parameters
    /// `x[k*dim..(k+1)*dim]`, writes the objective to `f[k]` and its gradient to
    /// `g[k*dim..(k+1)*dim]`. A non-finite value means the point is outside the domain.
    fn eval(&mut self, ids: &[usize], x: &[f64], f: &mut [f64], g: &mut [f64]) -> Result<(), String>;
}

/// Optimiser settings; the defaults are scipy's L-BFGS-B defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// Curvature pairs kept (scipy's `maxcor`).
    pub memory: usize,
    pub max_iter: usize,
    /// Relative reduction of the objective below which a problem stops (scipy's `ftol`).
    pub ftol: f64,
    /// Largest gradient component below which a problem stops (scipy's `gtol`).
    pub gtol: f64,
    /// Scale-free variant of `ftol`: stop when `(f_k - f_k+1) / max(|f_k|, |f_k+1|)` is at most
    /// this (0: off).
    pub rel_ftol: f64,
    /// Step halvings before the line search gives up.
    pub max_backtracks: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            memory: 10,
            max_iter: 15_000,
            ftol: 2.220_446_049_250_313e-9,
            gtol: 1e-5,
            rel_ftol: 0.0,
            max_backtracks: 40,
        }
    }
}

/// Why a problem stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    /// A stopping test passed: a successful run.
    Converged,
    /// The line search found no decrease (often: already at the optimum to working precision).
    NoProgress,
    /// The objective was not finite at the start.
    NonFinite,
    MaxIter,
}

/// The end state of one problem.
#[derive(Clone, Debug)]
pub struct Solution {
    pub x: Vec<f64>,
    pub f: f64,
    pub status: Status,
    pub iterations: usize,
}

struct Problem {
    id: usize,
    x: Vec<f64>,
    f: f64,
    g: Vec<f64>,
    history: VecDeque<Pair>,
    status: Status,
    iterations: usize,
}

struct Pair {
    s: Vec<f64>,
    y: Vec<f64>,
    rho: f64,
}

/// A line search in progress for one problem.
struct Search {
    problem: usize,
    d: Vec<f64>,
    slope: f64,
    t: f64,
    backtracks: usize,
}

/// Minimises every problem from its start. `ids[k]` is handed to the objective with problem
/// `k`; `starts` holds one parameter vector per problem, concatenated. `progress` is told how
/// many problems have stopped after each round.
pub fn minimize(
    objective: &mut dyn Objective,
    ids: &[usize],
    starts: &[f64],
    options: &Options,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Solution>, String> {
    let dim = objective.dim();
    assert_eq!(starts.len(), ids.len() * dim, "one start per problem");
    let mut f = vec![0.0; ids.len()];
    let mut g = vec![0.0; starts.len()];
    objective.eval(ids, starts, &mut f, &mut g)?;
    let mut problems: Vec<Problem> = ids
        .iter()
        .enumerate()
        .map(|(k, &id)| {
            let gk = g[k * dim..(k + 1) * dim].to_vec();
            let status = if !f[k].is_finite() || gk.iter().any(|v| !v.is_finite()) {
                Status::NonFinite
            } else if max_abs(&gk) <= options.gtol {
                Status::Converged
            } else {
                Status::Running
            };
            Problem {
                id,
                x: starts[k * dim..(k + 1) * dim].to_vec(),
                f: f[k],
                g: gk,
                history: VecDeque::new(),
                status,
                iterations: 0,
            }
        })
        .collect();
    let mut stopped = problems.iter().filter(|p| p.status != Status::Running).count();
    progress(stopped);

    let mut xs = Vec::new();
    let mut trial_ids = Vec::new();
    while stopped < problems.len() {
        let mut searches: Vec<Search> = Vec::new();
        for (k, p) in problems.iter_mut().enumerate() {
            if p.status != Status::Running {
                continue;
            }
            let mut d = direction(&p.g, &p.history);
            let mut slope = dot(&p.g, &d);
            if slope >= 0.0 || !slope.is_finite() {
                // Not a descent direction: forget the curvature estimate.
                p.history.clear();
                d = p.g.iter().map(|v| -v).collect();
                slope = dot(&p.g, &d);
            }
            let t = if p.history.is_empty() { (1.0 / norm(&p.g)).min(1.0) } else { 1.0 };
            searches.push(Search { problem: k, d, slope, t, backtracks: 0 });
        }

        // All line searches advance together: one batched evaluation per trial step.
        while !searches.is_empty() {
            xs.clear();
            trial_ids.clear();
            for s in &searches {
                let p = &problems[s.problem];
                xs.extend(p.x.iter().zip(&s.d).map(|(x, d)| x + s.t * d));
                trial_ids.push(p.id);
            }
            let mut ft = vec![0.0; searches.len()];
            let mut gt = vec![0.0; xs.len()];
            objective.eval(&trial_ids, &xs, &mut ft, &mut gt)?;
            let mut still = Vec::new();
            for (k, mut s) in searches.into_iter().enumerate() {
                let p = &mut problems[s.problem];
                let (f_new, g_new) = (ft[k], &gt[k * dim..(k + 1) * dim]);
                let finite = f_new.is_finite() && g_new.iter().all(|v| v.is_finite());
                if finite && f_new <= p.f + 1e-4 * s.t * s.slope {
                    let x_new = &xs[k * dim..(k + 1) * dim];
                    accept(p, x_new, f_new, g_new, options);
                    continue;
                }
                s.backtracks += 1;
                if s.backtracks > options.max_backtracks {
                    p.status = Status::NoProgress;
                    continue;
                }
                // Minimiser of the quadratic through f(0), f'(0) and f(t), kept within [t/10, t/2].
                let quad = if finite { -s.slope * s.t * s.t / (2.0 * (f_new - p.f - s.slope * s.t)) } else { f64::NAN };
                s.t = if quad.is_finite() { quad.clamp(0.1 * s.t, 0.5 * s.t) } else { 0.5 * s.t };
                still.push(s);
            }
            searches = still;
        }
        stopped = problems.iter().filter(|p| p.status != Status::Running).count();
        progress(stopped);
    }
    Ok(problems.into_iter().map(|p| Solution { x: p.x, f: p.f, status: p.status, iterations: p.iterations }).collect())
}

fn accept(p: &mut Problem, x_new: &[f64], f_new: f64, g_new: &[f64], options: &Options) {
    let s: Vec<f64> = x_new.iter().zip(&p.x).map(|(a, b)| a - b).collect();
    let y: Vec<f64> = g_new.iter().zip(&p.g).map(|(a, b)| a - b).collect();
    let sy = dot(&s, &y);
    if sy > f64::EPSILON * dot(&y, &y) {
        if p.history.len() == options.memory {
            p.history.pop_front();
        }
        p.history.push_back(Pair { s, y, rho: 1.0 / sy });
    }
    let scale = p.f.abs().max(f_new.abs());
    let reduction = (p.f - f_new) / scale.max(1.0);
    let relative = (p.f - f_new) / scale;
    p.x.copy_from_slice(x_new);
    p.f = f_new;
    p.g.copy_from_slice(g_new);
    p.iterations += 1;
    if reduction <= options.ftol || relative <= options.rel_ftol || max_abs(&p.g) <= options.gtol {
        p.status = Status::Converged;
    } else if p.iterations >= options.max_iter {
        p.status = Status::MaxIter;
    }
}

/// The two-loop recursion: -H g, with H the L-BFGS inverse-Hessian estimate scaled by
/// s·y / y·y of the newest pair.
fn direction(g: &[f64], history: &VecDeque<Pair>) -> Vec<f64> {
    let mut q: Vec<f64> = g.to_vec();
    let mut alphas = Vec::with_capacity(history.len());
    for pair in history.iter().rev() {
        let a = pair.rho * dot(&pair.s, &q);
        q.iter_mut().zip(&pair.y).for_each(|(q, y)| *q -= a * y);
        alphas.push(a);
    }
    if let Some(newest) = history.back() {
        let gamma = 1.0 / (newest.rho * dot(&newest.y, &newest.y));
        q.iter_mut().for_each(|q| *q *= gamma);
    }
    for (pair, a) in history.iter().zip(alphas.iter().rev()) {
        let b = pair.rho * dot(&pair.y, &q);
        q.iter_mut().zip(&pair.s).for_each(|(q, s)| *q += (a - b) * s);
    }
    q.iter_mut().for_each(|q| *q = -*q);
    q
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rosenbrock's function, moved per problem id so that batched problems differ.
    struct Rosenbrock {
        evaluations: usize,
    }

    impl Objective for Rosenbrock {
        fn dim(&self) -> usize {
            2
        }
        fn eval(&mut self, ids: &[usize], x: &[f64], f: &mut [f64], g: &mut [f64]) -> Result<(), String> {
            self.evaluations += 1;
            for (k, &id) in ids.iter().enumerate() {
                let c = 1.0 + id as f64;
                // (c - x0)² + 100 (x1 - x0²)²: minimum at (c, c²).
                let (x0, x1) = (x[2 * k], x[2 * k + 1]);
                f[k] = (c - x0).powi(2) + 100.0 * (x1 - x0 * x0).powi(2);
                g[2 * k] = -2.0 * (c - x0) - 400.0 * x0 * (x1 - x0 * x0);
                g[2 * k + 1] = 200.0 * (x1 - x0 * x0);
            }
            Ok(())
        }
    }

    #[test]
    fn batched_problems_each_reach_their_own_minimum() {
        let ids = [0, 1, 2, 3];
        let starts = [-1.2, 1.0, 0.0, 0.0, 5.0, 5.0, 3.0, -2.0];
        let mut obj = Rosenbrock { evaluations: 0 };
        let options = Options { gtol: 1e-8, ftol: 0.0, ..Options::default() };
        let sols = minimize(&mut obj, &ids, &starts, &options, &mut |_| {}).unwrap();
        for (id, sol) in ids.iter().zip(&sols) {
            let c = 1.0 + *id as f64;
            assert_eq!(sol.status, Status::Converged, "{sol:?}");
            assert!((sol.x[0] - c).abs() < 1e-5 && (sol.x[1] - c * c).abs() < 1e-4, "problem {id}: {sol:?}");
        }
        // Lock-step: the number of batched calls is about the slowest problem's, not the sum.
        let slowest = sols.iter().map(|s| s.iterations).max().unwrap();
        let total: usize = sols.iter().map(|s| s.iterations).sum();
        assert!(obj.evaluations < total, "{} batched calls for {total} iterations", obj.evaluations);
        assert!(obj.evaluations >= slowest);
    }

    /// A quadratic with a known minimum, to check the stopping rules.
    struct Bowl;

    impl Objective for Bowl {
        fn dim(&self) -> usize {
            3
        }
        fn eval(&mut self, _: &[usize], x: &[f64], f: &mut [f64], g: &mut [f64]) -> Result<(), String> {
            let scale = [1.0, 10.0, 100.0];
            for k in 0..f.len() {
                f[k] = (0..3).map(|i| scale[i] * (x[3 * k + i] - i as f64).powi(2)).sum();
                for i in 0..3 {
                    g[3 * k + i] = 2.0 * scale[i] * (x[3 * k + i] - i as f64);
                }
            }
            Ok(())
        }
    }

    #[test]
    fn a_quadratic_converges_and_a_start_at_the_minimum_stops_at_once() {
        let sols =
            minimize(&mut Bowl, &[0, 0], &[5.0, 5.0, 5.0, 0.0, 1.0, 2.0], &Options::default(), &mut |_| {}).unwrap();
        assert_eq!(sols[0].status, Status::Converged);
        for (i, v) in sols[0].x.iter().enumerate() {
            assert!((v - i as f64).abs() < 1e-4, "{:?}", sols[0].x);
        }
        assert_eq!(sols[1].status, Status::Converged);
        assert_eq!(sols[1].iterations, 0);
    }

    struct Nan;

    impl Objective for Nan {
        fn dim(&self) -> usize {
            1
        }
        fn eval(&mut self, _: &[usize], x: &[f64], f: &mut [f64], g: &mut [f64]) -> Result<(), String> {
            for k in 0..f.len() {
                // Defined only for x > 0: log-barrier-like, minimum at x = 1.
                f[k] = if x[k] > 0.0 { x[k] - x[k].ln() } else { f64::NAN };
                g[k] = 1.0 - 1.0 / x[k];
            }
            Ok(())
        }
    }

    #[test]
    fn steps_outside_the_domain_are_backtracked_and_bad_starts_reported() {
        let sols = minimize(&mut Nan, &[0, 0], &[0.05, -1.0], &Options::default(), &mut |_| {}).unwrap();
        assert_eq!(sols[0].status, Status::Converged, "{:?}", sols[0]);
        assert!((sols[0].x[0] - 1.0).abs() < 1e-3, "{:?}", sols[0]);
        assert_eq!(sols[1].status, Status::NonFinite);
    }
}
