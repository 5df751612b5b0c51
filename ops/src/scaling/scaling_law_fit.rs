//! The `scaling_law_fit` op: fits a scaling law to (size, data, loss) points as Chinchilla's
//! Approach 3 and Epoch AI's replication do, with bootstrap intervals, the compute-optimal
//! allocation and a figure.
//!
//! Input `points` (a table). Outputs `params` (`param, estimate, ci_low, ci_high`), `predictions`
//! (the input rows with `predicted_loss`, `residual` and `used`), `allocation` (`C, N_opt, D_opt,
//! predicted_loss` for each of `compute_budgets`), `plot` (SVG) and `plot_png` (PNG).
//!
//! The objective is the *sum* of Huber losses (δ = `delta`, 1e-3 by default) of log-space
//! residuals, minimised by L-BFGS from every start of a grid (Epoch's 4,500 for `chinchilla`),
//! all starts advancing together as one batched computation on the compute device. Bootstrap
//! resamples (`bootstrap: {resamples, seed}`) are refitted from the best fit, again as one batch.
//!
//! Precision: the device computes in f32, which finds every basin but cannot resolve the last
//! digits: along Chinchilla's flat A-B valley the objective changes by ~1e-10 of itself, below
//! f32's resolution. So the best 8 grid results, and every bootstrap refit, are finished in f64
//! on the CPU (wgpu's f64 is not reliable: a WGSL `exp` on f64 returned 0 on lavapipe). The
//! answer therefore does not depend on the device: CPU and wgpu agree to ~1e-8.
//!
//! Stopping: scipy's default test, `(f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= 2.2e-9`, is not
//! scale-free. With an objective near 1e-3 it stops runs far from their optimum (the "local
//! optimum" at 1.108e-3 from the start [0, 0, -1, 0, 0] is one), and it leaves bootstrap refits
//! near their start, which shrinks the intervals to almost nothing. Here a problem stops when an
//! iteration gains less than a fixed share of the objective itself (1e-8 in f32, 1e-15 in f64),
//! or when the line search finds no decrease (the precision floor).
//!
//! Deterministic: the same points and params give the same tables on any device, up to float
//! rounding in the last digits; resampling uses its own seeded ChaCha8 stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use burn::tensor::DType;
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, Column, OpError, OpKit, PortDecl, PortType, Ports, Progress, RunCx,
    TableSchema, Work,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::law::{Law, LawKind, chinchilla_allocation};
use super::lbfgs::{self, Options, Solution, Status};
use super::objective::HuberObjective;
use super::{formula, plot};
use crate::kit::compute::{self, Compute};
use crate::kit::table;

/// The `with:` block of a `scaling_law_fit` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalingLawFitParams {
    /// `chinchilla` (L = E + A/N^alpha + B/D^beta), `power` (L = E + A/X^alpha) or `custom`.
    #[serde(default)]
    pub law: LawKind,
    /// For `law: custom`: the loss as a formula over columns and the parameters named in `init`,
    /// e.g. `E + A / N^alpha + B / D^beta`. Operators `+ - * / ^`, functions `exp`, `log`,
    /// `sqrt`, `lse`.
    #[serde(default)]
    pub formula: Option<String>,
    /// Starting values per parameter; every combination is one start. Chinchilla's parameters
    /// are `a, b, e, alpha, beta` (A = exp(a), B = exp(b), E = exp(e)) and default to Epoch's
    /// grid; `power`'s are `a, e, alpha`. Required for `custom`, where its keys name the
    /// parameters.
    #[serde(default)]
    pub init: BTreeMap<String, Vec<f64>>,
    /// Column of model sizes N (chinchilla).
    #[serde(default = "default_n_col")]
    pub n_col: String,
    /// Column of training tokens D (chinchilla); or give `c_col` with `d_from_flops: true`.
    #[serde(default)]
    pub d_col: Option<String>,
    /// Column of training compute C in FLOPs (for `d_from_flops`).
    #[serde(default)]
    pub c_col: Option<String>,
    /// Derive tokens as D = C / (6 N) from `c_col` and `n_col`.
    #[serde(default)]
    pub d_from_flops: bool,
    /// Column of the variable X (power).
    #[serde(default)]
    pub x_col: Option<String>,
    /// Column of the final loss.
    #[serde(default = "default_loss_col")]
    pub loss_col: String,
    /// For `custom`: formula variable -> column, where the names differ.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Huber threshold on log-loss residuals.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Leave out this many points with the highest loss (Epoch leaves out 5).
    #[serde(default)]
    pub drop_highest_loss: usize,
    /// Percentile bootstrap over the points.
    #[serde(default)]
    pub bootstrap: Option<BootstrapParams>,
    /// Budgets in FLOPs for the `allocation` table (chinchilla).
    #[serde(default)]
    pub compute_budgets: Vec<f64>,
    /// Title of the figure.
    #[serde(default)]
    pub title: Option<String>,
    /// Iteration limit per start.
    #[serde(default = "default_max_iter")]
    pub max_iter: usize,
}

/// `bootstrap:` settings.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapParams {
    /// Resamples of the points, drawn with replacement (0 turns the bootstrap off).
    #[serde(default = "default_resamples")]
    pub resamples: usize,
    /// Seed of the resampling (ChaCha8).
    #[serde(default = "default_boot_seed")]
    pub seed: u64,
    /// Coverage of the percentile interval.
    #[serde(default = "default_confidence")]
    pub confidence: f64,
}

fn default_n_col() -> String {
    "N".into()
}
fn default_loss_col() -> String {
    "loss".into()
}
fn default_delta() -> f64 {
    1e-3
}
fn default_max_iter() -> usize {
    2000
}
fn default_resamples() -> usize {
    4000
}
fn default_boot_seed() -> u64 {
    42
}
fn default_confidence() -> f64 {
    0.95
}

impl ScalingLawFitParams {
    /// The law, and where each of its variables comes from.
    fn plan(&self) -> Result<(Law, Vec<Source>), CheckErrors> {
        let (law, sources, errors) = self.plan_all();
        match law {
            Some(law) if errors.is_empty() => Ok((law, sources)),
            _ => Err(errors),
        }
    }

    /// The law (when it is valid), the sources of its variables (as far as they can be known),
    /// and every problem found, so that plan time reports them all at once.
    fn plan_all(&self) -> (Option<Law>, Vec<Source>, CheckErrors) {
        let mut errors = CheckErrors::new();
        let law = Law::new(self.law, self.formula.as_deref(), &self.init)
            .map_err(|(path, msg)| errors.push(CheckError::param(&path, msg)))
            .ok();
        if !(self.delta > 0.0 && self.delta.is_finite()) {
            errors.push(CheckError::param(&["delta"], format!("delta must be positive, got {}", self.delta)));
        }
        if let Some(b) = &self.bootstrap
            && !(b.confidence > 0.0 && b.confidence < 1.0)
        {
            errors.push(CheckError::param(&["bootstrap", "confidence"], "confidence must be in (0, 1), e.g. 0.95"));
        }
        if !self.compute_budgets.is_empty() && self.law != LawKind::Chinchilla {
            errors
                .push(CheckError::param(&["compute_budgets"], "the allocation is defined for `law: chinchilla` only"));
        }
        if let Some(bad) = self.compute_budgets.iter().find(|c| !(**c > 0.0 && c.is_finite())) {
            errors
                .push(CheckError::param(&["compute_budgets"], format!("budgets are positive FLOP counts, got {bad}")));
        }
        let sources = match self.law {
            LawKind::Chinchilla => {
                let d = match (&self.d_col, &self.c_col, self.d_from_flops) {
                    (Some(d), None, false) => Some(Source::Column(d.clone(), vec!["d_col"])),
                    (None, Some(c), true) => Some(Source::TokensFromFlops { c: c.clone(), n: self.n_col.clone() }),
                    (None, _, true) => {
                        errors.push(
                            CheckError::param(&["c_col"], "`d_from_flops: true` needs `c_col`, the FLOPs column")
                                .about_columns("points"),
                        );
                        None
                    }
                    (Some(_), _, true) => {
                        errors.push(CheckError::param(&["d_col"], "give `d_col` or `d_from_flops: true`, not both"));
                        None
                    }
                    (_, Some(_), false) => {
                        errors.push(
                            CheckError::param(&["c_col"], "`c_col` is only read with `d_from_flops: true`")
                                .help("add `d_from_flops: true` to derive D = C / (6 N)"),
                        );
                        None
                    }
                    (None, None, false) => {
                        errors.push(
                            CheckError::stage(
                                "the chinchilla law needs tokens: `d_col`, or `c_col` with `d_from_flops: true`",
                            )
                            .help("e.g. `with: {n_col: params, d_col: tokens, loss_col: loss}`"),
                        );
                        None
                    }
                };
                d.map(|d| vec![Source::Column(self.n_col.clone(), vec!["n_col"]), d]).unwrap_or_default()
            }
            LawKind::Power => match &self.x_col {
                Some(x) => vec![Source::Column(x.clone(), vec!["x_col"])],
                None => {
                    errors.push(
                        CheckError::param(&["x_col"], "the power law needs `x_col`, the column of X")
                            .about_columns("points"),
                    );
                    Vec::new()
                }
            },
            LawKind::Custom => law
                .iter()
                .flat_map(|law| &law.vars)
                .map(|v| Source::Column(self.columns.get(v).cloned().unwrap_or_else(|| v.clone()), vec!["formula"]))
                .collect(),
        };
        (law, sources, errors)
    }
}

/// Where one data variable of the law comes from.
#[derive(Clone, Debug)]
enum Source {
    /// A column, and the param that named it (for errors).
    Column(String, Vec<&'static str>),
    /// D = C / (6 N).
    TokensFromFlops { c: String, n: String },
}

impl Source {
    fn columns(&self) -> Vec<(String, Vec<&'static str>)> {
        match self {
            Source::Column(c, at) => vec![(c.clone(), at.clone())],
            Source::TokensFromFlops { c, n } => vec![(c.clone(), vec!["c_col"]), (n.clone(), vec!["n_col"])],
        }
    }
}

/// Fits scaling laws, on the device the user chose.
pub struct ScalingLawFit {
    pub device: compute::DeviceChoice,
}

impl OpKit for ScalingLawFit {
    type Params = ScalingLawFitParams;
    const NAME: &str = "scaling_law_fit";
    // 2: burn's `simd` feature changed the CPU kernels, and with them the last bits of the
    // fitted values (~1e-8 relative on the quickstart): results cached by version 1 are not
    // what this build computes.
    const VERSION: u32 = 2;
    const DOC: &str = "Fits a scaling law (Chinchilla Approach 3, a power law, or a formula) by Huber-loss L-BFGS \
                       from a grid of starts, batched on the compute device; bootstrap intervals, compute-optimal \
                       allocation, and a figure.";

    fn inputs() -> Ports {
        Ports::one("points", PortType::any_table(), "One row per training run: size, tokens or compute, final loss.")
    }

    fn outputs() -> Ports {
        Ports::Fixed(vec![
            PortDecl::new(
                "params",
                params_type(),
                "One row per fitted value (chinchilla: E, A, B, alpha, beta, n_exponent = beta/(alpha+beta), \
                 d_exponent), then `objective`; bootstrap interval in ci_low, ci_high.",
            ),
            PortDecl::new(
                "predictions",
                PortType::any_table(),
                "The input rows with predicted_loss, residual (loss - predicted) and used.",
            ),
            PortDecl::new("allocation", allocation_type(), "C, N_opt, D_opt, predicted_loss per compute budget."),
            PortDecl::new("plot", PortType::Blob, "The figure, SVG."),
            PortDecl::new("plot_png", PortType::Blob, "The figure, PNG."),
        ])
    }

    fn check(&self, params: &ScalingLawFitParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let (_, sources, mut errors) = params.plan_all();
        let mut predictions = TableSchema::default();
        if let Some(columns) = table::input_columns(cx, "points")? {
            let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
            let mut wanted: Vec<(String, Vec<&str>)> = sources.iter().flat_map(Source::columns).collect();
            wanted.push((params.loss_col.clone(), vec!["loss_col"]));
            for (name, at) in wanted {
                match columns.iter().find(|c| c.name == name) {
                    None => errors.push(table::unknown_column("points", &at, &name, &names)),
                    Some(c) if !NUMERIC.contains(&c.dtype.as_str()) => errors.push(
                        CheckError::param(&at, format!("column `{name}` holds {}, expected numbers", c.dtype))
                            .about_column("points", &name),
                    ),
                    Some(_) => {}
                }
            }
            let mut cols = columns.to_vec();
            cols.extend([f64_col("predicted_loss"), f64_col("residual"), Column::new("used", "Boolean")]);
            predictions = TableSchema::with_columns(cols);
        }
        errors.or(Checked::default()
            .output("params", params_type())
            .output("predictions", PortType::Table(predictions))
            .output("allocation", allocation_type())
            .output("plot", PortType::Blob)
            .output("plot_png", PortType::Blob))
    }

    fn run(&self, params: ScalingLawFitParams, cx: RunCx) -> Work {
        let device = self.device;
        Work::blocking(move || {
            let (law, sources) = params.plan().map_err(CheckErrors::into_op_error)?;
            let points = read_points(&cx, &params, &sources)?;
            let compute = compute::resolve(device)?;
            cx.notes.set(compute::NOTE, compute.describe());

            let mut log = Log::open(&cx.log_path)?;
            log.line(format!("device: {}", compute.describe()));
            let fit = fit(&law, &points, &params, &compute, cx.progress.as_ref(), &mut log)?;
            write_outputs(&cx, &law, &points, &params, &fit)
        })
    }
}

fn f64_col(name: &str) -> Column {
    Column::new(name, "Float64")
}

fn params_type() -> PortType {
    PortType::Table(TableSchema::with_columns(vec![
        Column::new("param", "Utf8"),
        f64_col("estimate"),
        f64_col("ci_low"),
        f64_col("ci_high"),
    ]))
}

fn allocation_type() -> PortType {
    PortType::Table(TableSchema::with_columns(vec![
        f64_col("C"),
        f64_col("N_opt"),
        f64_col("D_opt"),
        f64_col("predicted_loss"),
    ]))
}

const NUMERIC: [&str; 10] =
    ["Float64", "Float32", "Float16", "Int64", "Int32", "Int16", "Int8", "UInt64", "UInt32", "UInt16"];

/// The points, as read from the table.
struct Points {
    schema: SchemaRef,
    batch: RecordBatch,
    /// Per law variable, one value per row.
    vars: Vec<Vec<f64>>,
    loss: Vec<f64>,
    /// Rows that take part in the fit.
    used: Vec<bool>,
}

fn read_points(cx: &RunCx, params: &ScalingLawFitParams, sources: &[Source]) -> Result<Points, OpError> {
    let (schema, batches) = table::read_input(&cx.input("points")?.path)?;
    let batch = concat_batches(&schema, &batches).map_err(|e| OpError::failed(format!("cannot read points: {e}")))?;
    let column = |name: &str| -> Result<Vec<f64>, OpError> {
        let array = batch.column_by_name(name).ok_or_else(|| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            OpError::failed(format!("the points have no column `{name}` (columns: {})", names.join(", ")))
        })?;
        let values = cast(array, &DataType::Float64)
            .map_err(|e| OpError::failed(format!("column `{name}` is not numeric: {e}")))?;
        let values = values.as_any().downcast_ref::<Float64Array>().expect("cast to Float64");
        let mut out = Vec::with_capacity(values.len());
        for (row, v) in values.iter().enumerate() {
            match v {
                Some(v) if v.is_finite() && v > 0.0 => out.push(v),
                Some(v) => {
                    return Err(OpError::failed(format!(
                        "column `{name}`, row {}: {v} is not a positive number (every scaling-law quantity is)",
                        row + 1
                    )));
                }
                None => return Err(OpError::failed(format!("column `{name}`, row {}: missing value", row + 1))),
            }
        }
        Ok(out)
    };
    let mut vars = Vec::new();
    for s in sources {
        vars.push(match s {
            Source::Column(c, _) => column(c)?,
            Source::TokensFromFlops { c, n } => column(c)?.iter().zip(column(n)?).map(|(c, n)| c / (6.0 * n)).collect(),
        });
    }
    let loss = column(&params.loss_col)?;
    let mut used = vec![true; loss.len()];
    let mut order: Vec<usize> = (0..loss.len()).collect();
    order.sort_by(|&a, &b| loss[b].total_cmp(&loss[a]).then(a.cmp(&b)));
    for &i in order.iter().take(params.drop_highest_loss) {
        used[i] = false;
    }
    let kept = used.iter().filter(|u| **u).count();
    if kept < 2 {
        return Err(OpError::failed(format!(
            "{kept} point(s) left to fit (of {}, after dropping {} with the highest loss)",
            loss.len(),
            params.drop_highest_loss
        )));
    }
    Ok(Points { schema, batch, vars, loss, used })
}

/// What the fit found.
struct Fit {
    x: Vec<f64>,
    objective: f64,
    /// Per reported parameter: (low, high) of the bootstrap interval.
    intervals: Option<BTreeMap<String, (f64, f64)>>,
}

/// The stage log: what each phase did, for `drover runs ID --log fit`.
struct Log(std::fs::File);

impl Log {
    fn open(path: &std::path::Path) -> Result<Log, OpError> {
        std::fs::File::create(path).map(Log).map_err(|e| OpError::io(format!("cannot create {}", path.display()), e))
    }

    fn line(&mut self, text: String) {
        use std::io::Write;
        let _ = writeln!(self.0, "{text}");
    }

    fn phase(&mut self, name: &str, t0: Instant, obj: &HuberObjective, sols: &[Solution]) {
        let count = |st: Status| sols.iter().filter(|s| s.status == st).count();
        let iterations: usize = sols.iter().map(|s| s.iterations).sum();
        self.line(format!(
            "{name}: {} problems in {:.2}s; {} batched evaluations of {} parameter vectors; {iterations} iterations; \
             stopped: {} converged, {} at the precision floor, {} at the iteration limit, {} not finite",
            sols.len(),
            t0.elapsed().as_secs_f64(),
            obj.evaluations,
            obj.rows,
            count(Status::Converged),
            count(Status::NoProgress),
            count(Status::MaxIter),
            count(Status::NonFinite),
        ));
    }
}

fn fit(
    law: &Law,
    points: &Points,
    params: &ScalingLawFitParams,
    compute: &Compute,
    progress: &dyn Progress,
    log: &mut Log,
) -> Result<Fit, OpError> {
    let used: Vec<usize> = (0..points.loss.len()).filter(|&i| points.used[i]).collect();
    let vars: Vec<Vec<f64>> = points.vars.iter().map(|v| used.iter().map(|&i| v[i]).collect()).collect();
    let log_y: Vec<f64> = used.iter().map(|&i| points.loss[i].ln()).collect();
    let formula = law_formula(law)?;
    let dim = law.params.len();
    let resamples = params.bootstrap.as_ref().map_or(0, |b| b.resamples);
    let starts = law.starts();
    let n_starts = law.start_count();
    progress.set_total((n_starts + resamples) as u64);
    let failed = |e: String| OpError::failed(format!("fit: {e}"));

    // 1. Every start of the grid, batched on the device.
    // On the device, in f32: stop when an iteration gains less than 1e-8 of the objective, or
    // the line search finds nothing within 15 halvings (f32's precision floor).
    let options = Options {
        ftol: 0.0,
        gtol: 0.0,
        rel_ftol: 1e-8,
        max_backtracks: 15,
        max_iter: params.max_iter,
        ..Options::default()
    };
    // On the CPU, in f64, close to the precision floor of f64.
    let refine_options =
        Options { ftol: 0.0, gtol: 1e-14, rel_ftol: 1e-15, max_iter: 10_000, max_backtracks: 40, ..Options::default() };
    let bootstrap_options = Options { gtol: 1e-12, rel_ftol: 1e-13, max_iter: 5_000, ..refine_options.clone() };
    let mut device_obj =
        HuberObjective::new(&compute.device, DType::F32, formula.clone(), dim, &vars, &log_y, params.delta);
    let mut tick = ticker(progress);
    let ids: Vec<usize> = (0..n_starts).collect();
    let t0 = Instant::now();
    let grid = lbfgs::minimize(&mut device_obj, &ids, &starts, &options, &mut tick).map_err(failed)?;
    log.phase("grid", t0, &device_obj, &grid);
    let mut its: Vec<usize> = grid.iter().map(|s| s.iterations).collect();
    its.sort();
    let q = |p: f64| its[((its.len() - 1) as f64 * p) as usize];
    log.line(format!("grid iterations: median {}, 90% {}, 99% {}, max {}", q(0.5), q(0.9), q(0.99), q(1.0)));

    // 2. The best 8 results, refined in f64 on the CPU.
    let mut best: Vec<&Solution> = grid.iter().filter(|s| s.f.is_finite()).collect();
    if best.is_empty() {
        return Err(OpError::failed(
            "fit: the objective is not finite at any start (are the losses and sizes positive, and the init grid sensible?)",
        ));
    }
    best.sort_by(|a, b| a.f.total_cmp(&b.f));
    best.truncate(8);
    let refine_starts: Vec<f64> = best.iter().flat_map(|s| s.x.iter().copied()).collect();
    let cpu = Compute::cpu("refinement");
    let mut cpu_obj = HuberObjective::new(&cpu.device, DType::F64, formula.clone(), dim, &vars, &log_y, params.delta);
    let t0 = Instant::now();
    let refined = lbfgs::minimize(&mut cpu_obj, &vec![0; best.len()], &refine_starts, &refine_options, &mut |_| {})
        .map_err(failed)?;
    log.phase("refinement (f64, cpu)", t0, &cpu_obj, &refined);
    let winner = refined
        .into_iter()
        .filter(|s| s.f.is_finite())
        .min_by(|a, b| a.f.total_cmp(&b.f))
        .ok_or_else(|| OpError::failed("fit: refinement lost every candidate"))?;

    // 3. Bootstrap: each resample refitted from the best fit, batched.
    let intervals = match &params.bootstrap {
        Some(b) if b.resamples > 0 => {
            let weights = resample_weights(used.len(), b.resamples, b.seed);
            let mut boot_obj =
                HuberObjective::new(&compute.device, DType::F32, formula.clone(), dim, &vars, &log_y, params.delta)
                    .with_weights(&weights);
            let starts: Vec<f64> = (0..b.resamples).flat_map(|_| winner.x.iter().copied()).collect();
            let ids: Vec<usize> = (0..b.resamples).collect();
            let mut tick = ticker(progress);
            let t0 = Instant::now();
            let rough = lbfgs::minimize(&mut boot_obj, &ids, &starts, &options, &mut |_| {}).map_err(failed)?;
            log.phase("bootstrap (f32, device)", t0, &boot_obj, &rough);
            // Along the flat A-B valley the objective changes by ~1e-10 of itself, below f32's
            // resolution: each refit is finished in f64 on the CPU.
            let t0 = Instant::now();
            let mut fine_obj = HuberObjective::new(&cpu.device, DType::F64, formula, dim, &vars, &log_y, params.delta)
                .with_weights(&weights);
            let starts: Vec<f64> = rough.iter().flat_map(|s| s.x.iter().copied()).collect();
            let fits = lbfgs::minimize(&mut fine_obj, &ids, &starts, &bootstrap_options, &mut tick).map_err(failed)?;
            log.phase("bootstrap (f64, cpu)", t0, &fine_obj, &fits);
            Some(percentile_intervals(law, &fits, b.confidence))
        }
        _ => None,
    };
    log.line(format!("best: objective {:.10e} at {:?}", winner.f, law.report(&winner.x)));
    Ok(Fit { x: winner.x, objective: winner.f, intervals })
}

/// Turns a count of stopped problems into progress steps.
fn ticker(progress: &dyn Progress) -> impl FnMut(usize) + '_ {
    let mut reported = 0;
    move |done: usize| {
        progress.advance((done - reported) as u64);
        reported = done;
    }
}

fn law_formula(law: &Law) -> Result<formula::Bound, OpError> {
    law.log_pred.bind(&law.params, &law.vars).map_err(OpError::failed)
}

/// Counts of each point in `resamples` draws of `n` points with replacement (ChaCha8, seeded).
fn resample_weights(n: usize, resamples: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..resamples)
        .map(|_| {
            let mut w = vec![0.0; n];
            for _ in 0..n {
                // Lemire's multiply-shift: uniform in 0..n without modulo bias worth noting at n < 2^32.
                let i = ((u64::from(rng.next_u32()) * n as u64) >> 32) as usize;
                w[i] += 1.0;
            }
            w
        })
        .collect()
}

/// Percentile intervals of each reported parameter over the resamples that converged.
fn percentile_intervals(law: &Law, fits: &[Solution], confidence: f64) -> BTreeMap<String, (f64, f64)> {
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in fits.iter().filter(|s| s.f.is_finite()) {
        for (name, v) in law.report(&s.x) {
            if v.is_finite() {
                values.entry(name).or_default().push(v);
            }
        }
    }
    let tail = (1.0 - confidence) / 2.0;
    values
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(f64::total_cmp);
            (name, (quantile(&v, tail), quantile(&v, 1.0 - tail)))
        })
        .collect()
}

/// Linear interpolation between order statistics (numpy's default `linear` method).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// A reported value by name; NaN when the law does not report it.
fn reported(report: &[(String, f64)], name: &str) -> f64 {
    report.iter().find(|(n, _)| n == name).map_or(f64::NAN, |(_, v)| *v)
}

/// N_opt, D_opt and the predicted loss at a budget of `c` FLOPs, from a Chinchilla report.
fn allocation(report: &[(String, f64)], c: f64) -> (f64, f64, f64) {
    let get = |name: &str| reported(report, name);
    chinchilla_allocation(get("E"), get("A"), get("B"), get("alpha"), get("beta"), c)
}

fn write_outputs(
    cx: &RunCx,
    law: &Law,
    points: &Points,
    params: &ScalingLawFitParams,
    fit: &Fit,
) -> Result<(), OpError> {
    let report = law.report(&fit.x);

    // params
    let mut names: Vec<String> = report.iter().map(|(n, _)| n.clone()).collect();
    let mut estimates: Vec<f64> = report.iter().map(|(_, v)| *v).collect();
    let ci = |n: &str, low: bool| fit.intervals.as_ref().and_then(|m| m.get(n)).map(|(l, h)| if low { *l } else { *h });
    let mut lows: Vec<Option<f64>> = names.iter().map(|n| ci(n, true)).collect();
    let mut highs: Vec<Option<f64>> = names.iter().map(|n| ci(n, false)).collect();
    names.push("objective".into());
    estimates.push(fit.objective);
    lows.push(None);
    highs.push(None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("param", DataType::Utf8, false),
        Field::new("estimate", DataType::Float64, false),
        Field::new("ci_low", DataType::Float64, true),
        Field::new("ci_high", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(names)) as ArrayRef,
            Arc::new(Float64Array::from(estimates)),
            Arc::new(Float64Array::from(lows)),
            Arc::new(Float64Array::from(highs)),
        ],
    )
    .map_err(|e| OpError::failed(format!("params table: {e}")))?;
    table::write_parquet(&cx.output("params")?.path, &schema, &[batch])?;

    // predictions
    let formula = law_formula(law)?;
    let predicted: Vec<f64> = (0..points.loss.len())
        .map(|i| {
            let row: Vec<f64> = points.vars.iter().map(|v| v[i]).collect();
            formula.eval(&fit.x, &row).exp()
        })
        .collect();
    let mut fields: Vec<Arc<Field>> = points.schema.fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = points.batch.columns().to_vec();
    for (name, values) in [
        ("predicted_loss", predicted.clone()),
        ("residual", points.loss.iter().zip(&predicted).map(|(l, p)| l - p).collect()),
    ] {
        fields.push(Arc::new(Field::new(name, DataType::Float64, false)));
        columns.push(Arc::new(Float64Array::from(values)));
    }
    fields.push(Arc::new(Field::new("used", DataType::Boolean, false)));
    columns.push(Arc::new(BooleanArray::from(points.used.clone())));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| OpError::failed(format!("predictions table: {e}")))?;
    table::write_parquet(&cx.output("predictions")?.path, &schema, &[batch])?;

    // allocation
    let budgets: &[f64] = if law.kind == LawKind::Chinchilla { &params.compute_budgets } else { &[] };
    let mut columns: [Vec<f64>; 4] = Default::default();
    for &c in budgets {
        let (n, d, l) = allocation(&report, c);
        for (column, v) in columns.iter_mut().zip([c, n, d, l]) {
            column.push(v);
        }
    }
    let schema = Arc::new(Schema::new(
        ["C", "N_opt", "D_opt", "predicted_loss"].map(|n| Field::new(n, DataType::Float64, false)).to_vec(),
    ));
    let arrays: Vec<ArrayRef> = columns.into_iter().map(|c| Arc::new(Float64Array::from(c)) as ArrayRef).collect();
    let batch =
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| OpError::failed(format!("allocation table: {e}")))?;
    table::write_parquet(&cx.output("allocation")?.path, &schema, &[batch])?;

    // figure
    let figure = figure(law, points, params, &fit.x, &predicted);
    plot::write_svg(&figure, &cx.output("plot")?.path).map_err(|e| OpError::failed(format!("plot: {e}")))?;
    // plotters picks the PNG encoder by extension; the output slot has none.
    let png = cx.work_dir.join("plot.png");
    plot::write_png(&figure, &png).map_err(|e| OpError::failed(format!("plot: {e}")))?;
    let slot = &cx.output("plot_png")?.path;
    std::fs::rename(&png, slot).map_err(|e| OpError::io(format!("cannot move the PNG to {}", slot.display()), e))?;
    Ok(())
}

/// The figure: for Chinchilla, loss against compute with one fitted curve per model size and
/// the compute-optimal frontier (Hoffmann et al.'s Figure 4 layout); for a power law, loss
/// against X with the fitted curve; for a custom law, observed against predicted.
fn figure(law: &Law, points: &Points, params: &ScalingLawFitParams, x: &[f64], predicted: &[f64]) -> plot::Figure {
    let report = law.report(x);
    let get = |name: &str| reported(&report, name);
    let formula = law_formula(law).ok();
    let predict = |row: &[f64]| formula.as_ref().map_or(f64::NAN, |f| f.eval(x, row).exp());
    // Curves stop a little above the highest observed loss, so that the data keep the frame.
    let ceiling = 1.25 * range(&points.loss).1;
    let curve = |label: String, style, color, pts: Vec<(f64, f64)>| {
        series(label, style, color, pts.into_iter().filter(|(_, y)| *y <= ceiling).collect())
    };
    let mut out = Vec::new();
    // The fitted points, then those left out, in grey.
    let mut observed = |label: &str, color, xs: &dyn Fn(usize) -> f64, colors: Vec<(u8, u8, u8)>| {
        let pick = |used: bool| -> Vec<(f64, f64)> {
            (0..points.loss.len()).filter(|&i| points.used[i] == used).map(|i| (xs(i), points.loss[i])).collect()
        };
        out.push(plot::Series {
            point_colors: colors,
            ..series(label.into(), plot::SeriesStyle::Points, color, pick(true))
        });
        let dropped = pick(false);
        if !dropped.is_empty() {
            out.push(series("left out".into(), plot::SeriesStyle::Points, (170, 170, 170), dropped));
        }
    };
    let blue = (31, 119, 180);
    let (title, x_label, y_label, log) = match law.kind {
        LawKind::Chinchilla => {
            let (n, d) = (&points.vars[0], &points.vars[1]);
            let log_n: Vec<f64> = n.iter().map(|v| v.log10()).collect();
            let (lo, hi) = range(&log_n);
            let shade = |ln: f64| plot::viridis(if hi > lo { (ln - lo) / (hi - lo) } else { 0.5 });
            let colors = (0..points.loss.len()).filter(|&i| points.used[i]).map(|i| shade(log_n[i])).collect();
            observed("training runs", shade(0.5 * (lo + hi)), &|i| 6.0 * n[i] * d[i], colors);
            let c: Vec<f64> = n.iter().zip(d).map(|(n, d)| 6.0 * n * d).collect();
            let (c_lo, c_hi) = range(&c);
            let budgets = log_grid(c_lo / 3.0, c_hi * 3.0, 120);
            for k in 0..5 {
                let ln = lo + (hi - lo) * k as f64 / 4.0;
                let size = 10f64.powf(ln);
                let pts = budgets.iter().map(|&c| (c, predict(&[size, c / (6.0 * size)]))).collect();
                out.push(curve(format!("fit, N = {}", si(size)), plot::SeriesStyle::Line, shade(ln), pts));
            }
            let frontier = budgets.iter().map(|&c| (c, allocation(&report, c).2)).collect();
            out.push(curve("compute-optimal frontier".into(), plot::SeriesStyle::DashedLine, (0, 0, 0), frontier));
            let title = format!(
                "L = {:.3} + {:.1}/N^{:.3} + {:.1}/D^{:.3}",
                get("E"),
                get("A"),
                get("alpha"),
                get("B"),
                get("beta")
            );
            (title, "training compute C = 6ND (FLOPs)".to_string(), "final loss".to_string(), true)
        }
        LawKind::Power => {
            let xs = &points.vars[0];
            observed("observed", blue, &|i| xs[i], Vec::new());
            let (x_lo, x_hi) = range(xs);
            let fit = log_grid(x_lo, x_hi, 120).into_iter().map(|v| (v, predict(&[v]))).collect();
            out.push(curve("fit".into(), plot::SeriesStyle::Line, (214, 39, 40), fit));
            let title = format!("L = {:.3} + {:.3}/X^{:.3}", get("E"), get("A"), get("alpha"));
            (title, params.x_col.clone().unwrap_or_default(), params.loss_col.clone(), true)
        }
        LawKind::Custom => {
            observed("points", blue, &|i| predicted[i], Vec::new());
            let (lo, hi) = range(&[predicted, &points.loss].concat());
            out.push(series(
                "predicted = observed".into(),
                plot::SeriesStyle::DashedLine,
                (0, 0, 0),
                vec![(lo, lo), (hi, hi)],
            ));
            let title = format!("L = {}", params.formula.clone().unwrap_or_default());
            (title, "predicted loss".to_string(), "observed loss".to_string(), false)
        }
    };
    plot::Figure { title: params.title.clone().unwrap_or(title), x_label, y_label, log_x: log, log_y: log, series: out }
}

fn series(label: String, style: plot::SeriesStyle, color: (u8, u8, u8), points: Vec<(f64, f64)>) -> plot::Series {
    plot::Series { label: Some(label), style, color, point_colors: Vec::new(), points }
}

/// The smallest and largest finite values.
fn range(values: &[f64]) -> (f64, f64) {
    values.iter().filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)))
}

/// `count` points spaced evenly in log between `lo` and `hi`.
fn log_grid(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    if !(lo > 0.0 && hi > lo) {
        return vec![lo, hi];
    }
    let (a, b) = (lo.ln(), hi.ln());
    (0..count).map(|i| (a + (b - a) * i as f64 / (count - 1) as f64).exp()).collect()
}

/// `70M`, `1.3B`.
fn si(v: f64) -> String {
    for (scale, suffix) in [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")] {
        if v >= scale {
            let x = v / scale;
            return if x >= 10.0 { format!("{x:.0}{suffix}") } else { format!("{x:.1}{suffix}") };
        }
    }
    format!("{v:.0}")
}
