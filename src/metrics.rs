//! Metrics over time: reading a run's metrics from the tables its stages' `metrics:` name (into
//! its record), `drover metrics show` and `drover metrics diff`, and the thresholds that turn a
//! change into a regression (exit code 4). What a metric is, and the threshold grammar, are the
//! engine's (`drover_engine::metrics`); everything here reads run records, never live state.

use std::collections::BTreeMap;

use drover_cache::{RunRecord, StageOutcome, Store};
use drover_engine::metrics::{THRESHOLD_HELP, Threshold};
use drover_engine::plan::Plan;

use crate::Failure;

/// The metrics of a finished run, read from the outputs of its stages that ran or were cached,
/// and the pipeline's thresholds with full names; plus a line per metric table that could not
/// be read (said, never fatal: the run itself is over).
pub fn collect(plan: &Plan, store: &Store, record: &RunRecord) -> (BTreeMap<String, f64>, Vec<String>, Vec<String>) {
    let (mut values, mut fail_if, mut problems) = (BTreeMap::new(), Vec::new(), Vec::new());
    let by_stage: BTreeMap<&str, _> = record.stages.iter().map(|s| (s.stage.as_str(), s)).collect();
    for node in &plan.nodes {
        let Some(m) = &node.metrics else { continue };
        fail_if.extend(m.fail_if.iter().map(Threshold::to_string));
        let Some(stage) = by_stage.get(node.id.as_str()) else { continue };
        if !matches!(stage.outcome, StageOutcome::Ran | StageOutcome::Cached) {
            continue;
        }
        let output = stage.key.as_ref().and_then(|k| store.get_record(k)).and_then(|r| r.outputs.get(&m.port).cloned());
        let Some(output) = output else {
            problems.push(format!("metrics of `{}`: its output `{}` is not in the store", node.id, m.port));
            continue;
        };
        match drover_ops::kit::table::metric_values(&store.object_path(&output.hash), m.key.as_deref(), &m.columns) {
            Ok(found) => {
                for (suffix, v) in found {
                    values.insert(format!("{}.{suffix}", node.id), v);
                }
            }
            Err(e) => problems.push(format!("metrics of `{}` (output `{}`): {e}", node.id, m.port)),
        }
    }
    (values, fail_if, problems)
}

/// Reads a run's metrics into its record and writes the record again; says what it could not read.
pub fn record(plan: &Plan, store: &Store, record: &mut RunRecord) -> Result<(), Failure> {
    let (values, fail_if, problems) = collect(plan, store, record);
    for p in problems {
        eprintln!("warning: {p}");
    }
    if values.is_empty() && fail_if.is_empty() {
        return Ok(());
    }
    record.metrics = values;
    record.fail_if = fail_if;
    store.put_run(record).map_err(|e| Failure::Environment(e.to_string()))
}

/// The run records of a pipeline (every pipeline's when `pipeline` is `None`), oldest first.
pub fn runs_of(store: &Store, pipeline: Option<&str>) -> Result<Vec<RunRecord>, Failure> {
    let all = store.runs().map_err(|e| Failure::Environment(e.to_string()))?;
    Ok(all.into_iter().filter(|r| pipeline.is_none_or(|p| r.pipeline == p)).collect())
}

/// `RUN` as the user gave it: an id, a unique prefix of one, or `last`; the last run when absent.
pub fn pick<'r>(runs: &'r [RunRecord], id: Option<&str>) -> Result<&'r RunRecord, Failure> {
    let none =
        || Failure::User(miette::miette!(help = "run the pipeline first: drover run FILE", "no runs recorded yet"));
    match id {
        None | Some("last") => runs.last().ok_or_else(none),
        Some(id) => {
            let hits: Vec<&RunRecord> = runs.iter().filter(|r| r.id == id || r.id.starts_with(id)).collect();
            match hits.as_slice() {
                [one] => Ok(one),
                [] => Err(Failure::User(miette::miette!(help = "`drover runs` lists them", "no run `{id}`"))),
                many => Err(Failure::User(miette::miette!(
                    help = format!(
                        "give more of the id: {}",
                        many.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    "`{id}` names {} runs",
                    many.len()
                ))),
            }
        }
    }
}

/// The last successful run before `this`: what a nightly run is compared with.
pub fn baseline<'r>(runs: &'r [RunRecord], this: &RunRecord) -> Option<&'r RunRecord> {
    runs.iter().rev().find(|r| r.id < this.id && r.status == "ok")
}

/// A threshold crossed: the metric, its two values, and the bound.
#[derive(Clone, Debug)]
pub struct Regression {
    pub threshold: Threshold,
    pub baseline: f64,
    pub current: f64,
}

impl Regression {
    /// `fit.E.estimate changed by +0.0073 (+0.40%), crossing `fit.E.estimate > 0.1%``.
    pub fn describe(&self) -> String {
        format!(
            "{} changed by {} ({}), crossing `{}`",
            self.threshold.metric,
            signed(self.current - self.baseline),
            percent(self.baseline, self.current),
            self.threshold
        )
    }
}

/// Parses `--fail-if` expressions; each must name a metric of `known` (the runs compared), or it
/// is a user error with the nearest name.
pub fn parse_fail_if(texts: &[String], known: &[&str]) -> Result<Vec<Threshold>, Failure> {
    texts
        .iter()
        .map(|text| {
            let t = Threshold::parse(text)
                .map_err(|e| Failure::User(miette::miette!(help = THRESHOLD_HELP, "--fail-if: {e}")))?;
            if !known.contains(&t.metric.as_str()) {
                let help = drover_engine::diag::did_you_mean(&t.metric, known.iter().copied())
                    .unwrap_or_else(|| format!("metrics: {}", drover_engine::diag::list_names(known.iter().copied())));
                return Err(Failure::User(miette::miette!(help = help, "--fail-if: no metric `{}`", t.metric)));
            }
            Ok(t)
        })
        .collect()
}

/// The thresholds `current` crosses against `base`: those its pipeline declared (in the record)
/// and `extra`. A threshold whose metric either run lacks is not judged.
pub fn regressions(base: &RunRecord, current: &RunRecord, extra: &[Threshold]) -> Vec<Regression> {
    let declared = current.fail_if.iter().filter_map(|t| Threshold::parse(t).ok());
    declared
        .chain(extra.iter().cloned())
        .filter_map(|threshold| {
            let (b, c) = (*base.metrics.get(&threshold.metric)?, *current.metrics.get(&threshold.metric)?);
            threshold.crossed(b, c).then_some(Regression { threshold, baseline: b, current: c })
        })
        .collect()
}

/// `drover metrics show`: one line per metric of a run.
pub fn show(run: &RunRecord) -> String {
    let mut out = format!("run {}  {}  {}  {}\n", run.id, run.pipeline, run.status, run.started_utc());
    if run.metrics.is_empty() {
        out.push_str("no metrics recorded (name them with `metrics:` on a stage)\n");
        return out;
    }
    let rows: Vec<Vec<String>> = run.metrics.iter().map(|(k, v)| vec![k.clone(), num(*v)]).collect();
    out.push_str(&table(&["metric", "value"], &rows, &[false, true]));
    out
}

/// `drover metrics diff`: each metric of either run, both values, the change and the relative
/// change.
pub fn diff(base: &RunRecord, current: &RunRecord) -> String {
    let mut names: Vec<&String> = base.metrics.keys().chain(current.metrics.keys()).collect();
    names.sort();
    names.dedup();
    let rows: Vec<Vec<String>> = names
        .into_iter()
        .map(|name| {
            let (b, c) = (base.metrics.get(name).copied(), current.metrics.get(name).copied());
            let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), num);
            let (change, rel) = match (b, c) {
                (Some(b), Some(c)) => (signed(c - b), percent(b, c)),
                _ => ("-".to_string(), "-".to_string()),
            };
            vec![name.clone(), show(b), show(c), change, rel]
        })
        .collect();
    table(&["metric", &base.id, &current.id, "change", "change %"], &rows, &[false, true, true, true, true])
}

/// Columns padded to their widest cell, numbers right-aligned.
fn table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .zip(right)
            .map(|((c, w), r)| if *r { format!("{c:>w$}") } else { format!("{c:<w$}") })
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A number to six significant digits, trailing zeros dropped; very large and very small ones in
/// scientific notation.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-4..1e7).contains(&a) {
        return format!("{v:.5e}");
    }
    let decimals = (5 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// A change, with its sign always written.
pub fn signed(d: f64) -> String {
    if d >= 0.0 { format!("+{}", num(d)) } else { num(d) }
}

/// The change relative to the baseline's magnitude, `+0.40%`; `-` for a zero baseline.
pub fn percent(base: f64, current: f64) -> String {
    if base == 0.0 {
        return "-".into();
    }
    let p = (current - base) / base.abs() * 100.0;
    if p >= 0.0 { format!("+{p:.2}%") } else { format!("{p:.2}%") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_to_six_significant_digits() {
        assert_eq!(num(543.0287303191208), "543.029");
        assert_eq!(num(1.8226988), "1.8227");
        assert_eq!(num(0.0008696715772230401), "0.000869672");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(-0.5), "-0.5");
        assert_eq!(num(67835655992.266426), "6.78357e10");
        assert_eq!(num(0.0), "0");
        assert_eq!(signed(0.25), "+0.25");
        assert_eq!(signed(-0.25), "-0.25");
        assert_eq!(percent(2.0, 2.1), "+5.00%");
        assert_eq!(percent(-2.0, -2.1), "-5.00%");
        assert_eq!(percent(0.0, 1.0), "-");
    }
}
