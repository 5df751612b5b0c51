//! Phase 1 of planning: every stage expanded into one [`Draft`] per combination of its matrix
//! values. Matrix values are interpolated and checked (a non-empty list of distinct scalars),
//! and the expansions are counted before any is made, against [`MAX_EXPANSIONS`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Draft, MAX_EXPANSIONS, report_non_finite};
use crate::diag::{Diags, did_you_mean, list_names, thousands};
use crate::interp::{self, InterpCx};
use crate::op::OpRegistry;
use crate::spec::{PipelineSpec, StageSpec};

/// The drafts of every stage, in file order (a matrix stage's expansions in matrix order).
/// `None` when the pipeline expands past [`MAX_EXPANSIONS`] (reported).
pub(super) fn expand<'s>(
    spec: &'s PipelineSpec,
    ops: &OpRegistry,
    params: &Value,
    d: &mut Diags,
) -> Option<Vec<Draft<'s>>> {
    let mut drafts = Vec::new();
    // Stages after expansion so far, and whether that went over the limit.
    let mut expanded: u128 = 0;
    let mut too_many = false;
    for stage in &spec.stages {
        let st = Some(stage.name.as_str());
        let op = ops.get(&stage.op).cloned().zip(ops.info(&stage.op).cloned());
        if op.is_none() && !stage.op.is_empty() {
            let help =
                did_you_mean(&stage.op, ops.names()).unwrap_or_else(|| format!("ops: {}", list_names(ops.names())));
            d.error(st, stage.op_span, format!("unknown op `{}`", stage.op), "no such op", Some(help));
        }
        let broken = stage.with.as_ref().is_some_and(|with| {
            report_non_finite(d, st, with, |key| key.map_or("a param".into(), |k| format!("`{k}`")))
        });
        let axes = axes(stage, params, &spec.source.text, d);
        // Counted before anything is expanded.
        let count = axes.iter().fold(1u128, |n, (_, values)| n.saturating_mul(values.len() as u128));
        // The pipeline's total is reported once; a stage too large by itself, each time.
        if let Some(message) = over_limit(count, if too_many { 0 } else { expanded }, !axes.is_empty()) {
            let sizes: Vec<String> = axes.iter().map(|(_, values)| thousands(values.len() as u128)).collect();
            let names = list_names(axes.iter().map(|(axis, _)| axis.as_str()));
            let (span, label) = match axes.is_empty() {
                true => (stage.name_span, "one stage too many".to_string()),
                false => (stage.matrix_span, format!("{} values of {names}", sizes.join(" x "))),
            };
            let help = "a pipeline holds at most that many stages after matrix expansion; sweep fewer values, or split the sweep across pipelines";
            d.error(st, span, message, label, Some(help.into()));
            too_many = true;
            continue;
        }
        expanded += count;
        for matrix in combinations(&axes) {
            let mut draft = Draft::new(stage, op.clone(), matrix);
            draft.broken = broken;
            drafts.push(draft);
        }
    }
    (!too_many).then_some(drafts)
}

/// The stage's matrix axes in source order, each with its values interpolated, checked and
/// made distinct. An axis that is not a list of scalars (reported) keeps one stand-in value.
fn axes<'s>(stage: &'s StageSpec, params: &Value, source: &str, d: &mut Diags) -> Vec<(&'s String, Vec<Value>)> {
    let st = Some(stage.name.as_str());
    let no_ports = BTreeSet::new();
    let mut axes = Vec::new();
    for (axis, axis_span, values) in &stage.matrix {
        report_non_finite(d, st, values, |_| format!("a value of matrix axis `{axis}`"));
        let cx = InterpCx { params, matrix: None, in_ports: &no_ports, out_ports: &no_ports };
        let mut errs = Vec::new();
        let v = interp::interpolate(values, &cx, &mut BTreeMap::new(), &mut errs);
        for e in errs {
            d.error(st, super::spans::reference_span(source, &e), e.message, "here", e.help);
        }
        let list = match v {
            Value::Array(items) if !items.is_empty() && items.iter().all(|i| !i.is_object() && !i.is_array()) => items,
            _ => {
                d.error(
                    st,
                    values.span,
                    format!("matrix axis `{axis}` must be a non-empty list of scalar values"),
                    "expected e.g. [1, 2, 4]",
                    None,
                );
                // One stand-in value keeps `${matrix.AXIS}` valid: one mistake, one error.
                vec![Value::Null]
            }
        };
        if !crate::spec::valid_name(axis) {
            d.error(
                st,
                *axis_span,
                format!("invalid matrix axis name `{axis}`"),
                "invalid name",
                Some("use letters, digits, `_` and `-`".into()),
            );
        }
        let mut seen = BTreeSet::new();
        let mut unique = Vec::with_capacity(list.len());
        for (i, v) in list.into_iter().enumerate() {
            if seen.insert(interp::render(&v)) {
                unique.push(v);
                continue;
            }
            let at = values.as_seq().and_then(|items| items.get(i)).map_or(values.span, |n| n.span);
            d.error(
                st,
                at,
                format!("matrix axis `{axis}` lists `{}` twice", interp::render(&v)),
                "duplicate value",
                Some("each value makes one expansion; list it once".into()),
            );
        }
        axes.push((axis, unique));
    }
    axes
}

/// Every combination of the axes' values, the first axis slowest (one empty combination for a
/// stage without a matrix).
fn combinations(axes: &[(&String, Vec<Value>)]) -> Vec<Vec<(String, Value)>> {
    let mut combos: Vec<Vec<(String, Value)>> = vec![vec![]];
    for (axis, list) in axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                list.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push(((*axis).clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    combos
}

/// Why `count` more stages after matrix expansion, with `before` already planned, are too many
/// (see [`MAX_EXPANSIONS`]); `matrix`: the stage has one.
fn over_limit(count: u128, before: u128, matrix: bool) -> Option<String> {
    let limit = u128::from(MAX_EXPANSIONS);
    // The count saturates: say so rather than print u128::MAX as if it were exact.
    let shown = |n: u128| if n == u128::MAX { format!("more than {}", thousands(n)) } else { thousands(n) };
    match (count > limit, matrix) {
        (true, _) => Some(format!("`matrix` expands to {} stages; at most {}", shown(count), thousands(limit))),
        _ if before + count <= limit => None,
        (false, true) => Some(format!(
            "`matrix` expands to {} stages, which makes {} in the pipeline; at most {}",
            thousands(count),
            thousands(before + count),
            thousands(limit)
        )),
        (false, false) => {
            Some(format!("the pipeline has more than {} stages after matrix expansion", thousands(limit)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansions_past_the_limit_are_refused_per_stage_and_per_pipeline() {
        assert_eq!(over_limit(1_000_000, 0, true), None);
        assert_eq!(over_limit(1, 999_999, false), None);
        assert_eq!(
            over_limit(1_000_000_000, 0, true).as_deref(),
            Some("`matrix` expands to 1,000,000,000 stages; at most 1,000,000")
        );
        assert_eq!(
            over_limit(u128::MAX, 0, true).as_deref(),
            Some(
                "`matrix` expands to more than 340,282,366,920,938,463,463,374,607,431,768,211,455 stages; at most 1,000,000"
            )
        );
        assert_eq!(
            over_limit(600_000, 600_000, true).as_deref(),
            Some("`matrix` expands to 600,000 stages, which makes 1,200,000 in the pipeline; at most 1,000,000")
        );
        assert_eq!(
            over_limit(1, 1_000_000, false).as_deref(),
            Some("the pipeline has more than 1,000,000 stages after matrix expansion")
        );
    }
}
