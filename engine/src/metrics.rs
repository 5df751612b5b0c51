//! A stage's `metrics:`: which columns of which of its output tables are metrics, and the
//! thresholds that turn a change of one into a regression.
//!
//! ```yaml
//! metrics: [accuracy, loss]                  # columns of `out` (or the only table output)
//! metrics:
//!   table: params                            # the output port
//!   key: param                               # optional: one metric per row, named by this column
//!   columns: [estimate]                      # default: every numeric column (but the key)
//!   fail_if: ["alpha.estimate > 5%"]         # names relative to the stage
//! ```
//!
//! Without `key`, a metric is a column of the table's **last row** (a one-row table is its own
//! last row; a training log's last row is the final epoch), named `STAGE.COLUMN`. With `key`,
//! every row gives one metric per column, named `STAGE.KEYVALUE.COLUMN`. A matrix stage's names
//! start with its expansion id (`train[size=1].loss`).
//!
//! A threshold is `NAME OP VALUE` where OP is `<`, `<=`, `>` or `>=`, and it compares the
//! **change** of the metric since the baseline run (this run's value minus the baseline's) with
//! VALUE; `VALUE%` compares the change relative to the baseline's magnitude instead.
//! `accuracy < -0.01` is crossed when accuracy fell by more than 0.01; `loss > 5%` when loss
//! grew by more than 5%. The engine checks all of this at plan time; the values are read from
//! the stored tables after a run by the binary (the engine reads no tables).

use std::fmt;

use crate::diag::{Diags, did_you_mean, list_names};
use crate::op::PortType;
use crate::yaml::{Node, NodeKind, Span};

/// `metrics:` as written, with the spans its errors point at.
#[derive(Clone, Debug)]
pub struct MetricsSpec {
    /// The `metrics` key.
    pub span: Span,
    pub table: Option<(String, Span)>,
    pub key: Option<(String, Span)>,
    pub columns: Vec<(String, Span)>,
    pub fail_if: Vec<(String, Span)>,
}

/// `metrics:` once checked against the stage's outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// The output port whose table holds the metrics.
    pub port: String,
    pub key: Option<String>,
    /// The columns named; empty: every numeric column but the key, found when the table exists.
    pub columns: Vec<String>,
    /// Thresholds, with full metric names (the stage's id in front).
    pub fail_if: Vec<Threshold>,
}

impl Metrics {
    /// The metric's full name: `STAGE.COLUMN`, or with a key `STAGE.KEY.COLUMN`.
    pub fn name(stage: &str, key: Option<&str>, column: &str) -> String {
        match key {
            Some(k) => format!("{stage}.{k}.{column}"),
            None => format!("{stage}.{column}"),
        }
    }
}

/// Arrow type names a metric column may have.
pub fn numeric(dtype: &str) -> bool {
    dtype == "any"
        || dtype.starts_with("Int")
        || dtype.starts_with("UInt")
        || dtype.starts_with("Float")
        || dtype.starts_with("Decimal")
}

/// `<`, `<=`, `>`, `>=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }
}

/// `accuracy < -0.01` or `loss > 5%`: a bound on the change of a metric since a baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub metric: String,
    pub cmp: Cmp,
    pub value: f64,
    /// `VALUE%`: the change relative to the baseline's magnitude, in percent.
    pub percent: bool,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}{}", self.metric, self.cmp.symbol(), self.value, if self.percent { "%" } else { "" })
    }
}

/// The help every malformed threshold gets.
pub const THRESHOLD_HELP: &str = "write `METRIC OP CHANGE`, OP one of < <= > >=, CHANGE a number (the change since the \
                                  baseline) or a percentage: `accuracy < -0.01`, `loss > 5%`";

impl Threshold {
    /// Parses `NAME OP VALUE[%]`; the error says what is wrong (see [`THRESHOLD_HELP`]).
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let at = text.find(['<', '>']).ok_or_else(|| format!("`{text}` has no comparison (<, <=, > or >=)"))?;
        let metric = text[..at].trim();
        let rest = &text[at..];
        let (cmp, rest) = match rest.as_bytes() {
            [b'<', b'=', ..] => (Cmp::Le, &rest[2..]),
            [b'>', b'=', ..] => (Cmp::Ge, &rest[2..]),
            [b'<', ..] => (Cmp::Lt, &rest[1..]),
            _ => (Cmp::Gt, &rest[1..]),
        };
        if metric.is_empty() {
            return Err(format!("`{text}` names no metric before `{}`", cmp.symbol()));
        }
        let rest = rest.trim();
        let (number, percent) = match rest.strip_suffix('%') {
            Some(n) => (n.trim_end(), true),
            None => (rest, false),
        };
        let value: f64 = number
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("`{text}`: `{rest}` is not a number or a percentage"))?;
        Ok(Threshold { metric: metric.to_string(), cmp, value, percent })
    }

    /// The change it compares, from the baseline's value to this run's: `None` for a
    /// percentage of a zero baseline (no relative change exists).
    pub fn change(&self, baseline: f64, current: f64) -> Option<f64> {
        let delta = current - baseline;
        match self.percent {
            false => Some(delta),
            true if baseline == 0.0 => None,
            true => Some(delta / baseline.abs() * 100.0),
        }
    }

    /// Whether the change from `baseline` to `current` crosses it. A relative threshold on a
    /// zero baseline is crossed by any change in its direction.
    pub fn crossed(&self, baseline: f64, current: f64) -> bool {
        match self.change(baseline, current) {
            Some(change) => self.cmp.holds(change, self.value),
            None => self.cmp.holds(current - baseline, 0.0) && current != baseline,
        }
    }
}

/// Reads a stage's `metrics:` value; problems go to `d`.
pub(crate) fn parse_spec(d: &mut Diags, st: Option<&str>, key_span: Span, v: &Node) -> Option<MetricsSpec> {
    let mut spec = MetricsSpec { span: key_span, table: None, key: None, columns: Vec::new(), fail_if: Vec::new() };
    let strings = |d: &mut Diags, v: &Node, what: &str| -> Vec<(String, Span)> {
        match v.as_seq() {
            Some(items) => items
                .iter()
                .filter_map(|item| match item.as_str() {
                    Some(s) => Some((s.to_string(), item.span)),
                    None => {
                        d.error(
                            st,
                            item.span,
                            format!("{what}: expected a string; found {}", item.type_name()),
                            "expected a string",
                            None,
                        );
                        None
                    }
                })
                .collect(),
            None => {
                d.error(st, v.span, format!("{what} must be a list; found {}", v.type_name()), "expected a list", None);
                Vec::new()
            }
        }
    };
    match &v.kind {
        NodeKind::Seq(_) => spec.columns = strings(d, v, "`metrics`"),
        NodeKind::Map(entries) => {
            for (k, val) in entries {
                let name = k.key_text();
                let one = |d: &mut Diags| match val.as_str() {
                    Some(s) => Some((s.to_string(), val.span)),
                    None => {
                        d.error(
                            st,
                            val.span,
                            format!("`metrics.{name}` must be a name; found {}", val.type_name()),
                            "expected a name",
                            None,
                        );
                        None
                    }
                };
                match name.as_str() {
                    "table" => spec.table = one(d),
                    "key" => spec.key = one(d),
                    "columns" => spec.columns = strings(d, val, "`metrics.columns`"),
                    "fail_if" => spec.fail_if = strings(d, val, "`metrics.fail_if`"),
                    other => {
                        let keys = ["table", "key", "columns", "fail_if"];
                        d.error(
                            st,
                            k.span,
                            format!("unknown key `{other}` in `metrics`"),
                            "unknown key",
                            Some(
                                did_you_mean(other, keys)
                                    .unwrap_or_else(|| format!("valid keys: {}", list_names(keys))),
                            ),
                        )
                    }
                }
            }
        }
        _ => {
            d.error(
                st,
                v.span,
                format!("`metrics` must be a list of columns or a mapping; found {}", v.type_name()),
                "expected a list or a mapping",
                Some(
                    "e.g. `metrics: [accuracy]` or `metrics: { table: params, key: param, columns: [estimate] }`"
                        .into(),
                ),
            );
            return None;
        }
    }
    Some(spec)
}

/// Checks `metrics:` against the stage's outputs (`None` when its op failed its own check, then
/// nothing more is said); `id` is the expansion's id, which names its metrics.
pub(crate) fn check(
    d: &mut Diags,
    st: Option<&str>,
    id: &str,
    spec: &MetricsSpec,
    outputs: Option<&std::collections::BTreeMap<String, PortType>>,
) -> Option<Metrics> {
    let mut ok = true;
    let mut fail_if = Vec::new();
    for (text, span) in &spec.fail_if {
        match Threshold::parse(text) {
            Ok(mut t) => {
                let column = t.metric.rsplit('.').next().unwrap_or_default();
                if !spec.columns.is_empty() && !spec.columns.iter().any(|(c, _)| c == column) {
                    let names = spec.columns.iter().map(|(c, _)| c.as_str());
                    let what = match &spec.key {
                        Some(_) => format!("`{}` names no metric column (write `KEY.COLUMN`)", t.metric),
                        None => format!("`{}` names no metric column", t.metric),
                    };
                    d.error(
                        st,
                        *span,
                        format!("metrics.fail_if: {what}"),
                        "unknown metric",
                        Some(
                            did_you_mean(column, names.clone())
                                .unwrap_or_else(|| format!("metric columns: {}", list_names(names))),
                        ),
                    );
                    ok = false;
                }
                t.metric = format!("{id}.{}", t.metric);
                fail_if.push(t);
            }
            Err(e) => {
                d.error(st, *span, format!("metrics.fail_if: {e}"), "bad threshold", Some(THRESHOLD_HELP.into()));
                ok = false;
            }
        }
    }
    let outputs = outputs?;
    let tables: Vec<&str> =
        outputs.iter().filter(|(_, t)| matches!(t, PortType::Table(_))).map(|(p, _)| p.as_str()).collect();
    let port = match &spec.table {
        Some((port, span)) => match outputs.get(port) {
            Some(PortType::Table(_)) => port.clone(),
            Some(other) => {
                d.error(
                    st,
                    *span,
                    format!("metrics: output `{port}` is a {}, not a table", other.kind_name()),
                    "not a table",
                    Some(format!("table outputs: {}", list_names(tables.iter().copied()))),
                );
                return None;
            }
            None => {
                d.error(
                    st,
                    *span,
                    format!("metrics: the stage has no output `{port}`"),
                    "unknown output",
                    Some(
                        did_you_mean(port, tables.iter().copied())
                            .unwrap_or_else(|| format!("table outputs: {}", list_names(tables.iter().copied()))),
                    ),
                );
                return None;
            }
        },
        None if outputs.get("out").is_some_and(|t| matches!(t, PortType::Table(_))) => "out".to_string(),
        None if tables.len() == 1 => tables[0].to_string(),
        None => {
            let help = match tables.is_empty() {
                true => "metrics are read from a table output; this stage has none".to_string(),
                false => format!("name one: `metrics: {{ table: {}, columns: [...] }}`", tables[0]),
            };
            d.error(
                st,
                spec.span,
                format!("metrics: which output table? the stage has {} table outputs", tables.len()),
                "which table?",
                Some(help),
            );
            return None;
        }
    };
    let PortType::Table(schema) = &outputs[&port] else { return None };
    if let Some(columns) = &schema.columns {
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let mut wanted: Vec<&(String, Span)> = spec.columns.iter().collect();
        wanted.extend(spec.key.iter());
        for (name, span) in wanted {
            match columns.iter().find(|c| &c.name == name) {
                None => {
                    d.error(
                        st,
                        *span,
                        format!("metrics: output `{port}` has no column `{name}`"),
                        "unknown column",
                        Some(
                            did_you_mean(name, names.iter().copied())
                                .unwrap_or_else(|| format!("columns: {}", list_names(names.iter().copied()))),
                        ),
                    );
                    ok = false;
                }
                Some(c) if !numeric(&c.dtype) && spec.key.as_ref().is_none_or(|(k, _)| k != name) => {
                    d.error(
                        st,
                        *span,
                        format!("metrics: column `{name}` of `{port}` holds {}, not numbers", c.dtype),
                        "not numeric",
                        Some("a metric is a number; name it with `key:` to have one metric per row".into()),
                    );
                    ok = false;
                }
                Some(_) => {}
            }
        }
    }
    ok.then(|| Metrics {
        port,
        key: spec.key.as_ref().map(|(k, _)| k.clone()),
        columns: spec.columns.iter().map(|(c, _)| c.clone()).collect(),
        fail_if,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_compare_the_change() {
        let t = Threshold::parse("accuracy < -0.01").unwrap();
        assert_eq!((t.metric.as_str(), t.cmp, t.value, t.percent), ("accuracy", Cmp::Lt, -0.01, false));
        assert!(t.crossed(0.90, 0.88));
        assert!(!t.crossed(0.90, 0.895));
        assert!(!t.crossed(0.90, 0.95));

        let t = Threshold::parse("train[size=1].loss>=5%").unwrap();
        assert_eq!((t.metric.as_str(), t.cmp, t.value, t.percent), ("train[size=1].loss", Cmp::Ge, 5.0, true));
        assert_eq!(t.change(2.0, 2.1).map(|c| (c * 1e9).round() / 1e9), Some(5.0));
        assert!(t.crossed(2.0, 2.1));
        assert!(!t.crossed(2.0, 2.09));
        // Relative to a negative baseline's magnitude: -2 -> -1.8 is +10%.
        assert!(t.crossed(-2.0, -1.8));
        // A zero baseline has no relative change: any rise crosses `>`.
        assert!(t.crossed(0.0, 1e-9));
        assert!(!t.crossed(0.0, 0.0));
        assert_eq!(t.to_string(), "train[size=1].loss >= 5%");
    }

    #[test]
    fn malformed_thresholds_say_what_is_wrong() {
        assert_eq!(Threshold::parse("accuracy = 1").unwrap_err(), "`accuracy = 1` has no comparison (<, <=, > or >=)");
        assert_eq!(Threshold::parse(" < 1").unwrap_err(), "` < 1` names no metric before `<`");
        assert_eq!(
            Threshold::parse("loss > five").unwrap_err(),
            "`loss > five`: `five` is not a number or a percentage"
        );
        assert_eq!(Threshold::parse("loss > inf").unwrap_err(), "`loss > inf`: `inf` is not a number or a percentage");
    }

    #[test]
    fn names_are_stage_then_key_then_column() {
        assert_eq!(Metrics::name("fit", Some("alpha"), "estimate"), "fit.alpha.estimate");
        assert_eq!(Metrics::name("train[size=1]", None, "loss"), "train[size=1].loss");
    }
}
