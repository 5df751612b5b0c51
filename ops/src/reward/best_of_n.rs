//! The `best_of_n` op: keeps the highest-scoring response per prompt (best-of-n sampling's
//! selection step), from a table that `reward_score` (or anything else) scored.
//!
//! Input `table`; output `out`: one row per prompt, the input's columns, in the order prompts
//! first appear. The row kept is the one with the highest `score_column`; ties go to the first
//! row. Rows with a null or NaN score never win; a prompt whose rows all have one is left out,
//! counted in the log. Deterministic.

use arrow::array::{Array, UInt32Array};
use arrow::compute::{cast, concat_batches, take_record_batch};
use arrow::datatypes::DataType;
use drover_engine::{CheckCx, CheckError, CheckErrors, Checked, OpError, OpKit, PortType, Ports, RunCx, Work};
use serde::Deserialize;

use crate::kit::table;

/// The `with:` block of a `best_of_n` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BestOfNParams {
    /// The column that groups rows (one kept per value).
    #[serde(default = "default_prompt")]
    pub prompt_column: String,
    /// The score to maximise.
    #[serde(default = "default_score")]
    pub score_column: String,
}

fn default_prompt() -> String {
    "prompt".into()
}
fn default_score() -> String {
    "reward".into()
}

/// Keeps the best-scoring row per prompt.
pub struct BestOfN;

const NUMERIC: &[&str] =
    &["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32", "Float64"];

impl OpKit for BestOfN {
    type Params = BestOfNParams;
    const NAME: &str = "best_of_n";
    const VERSION: u32 = 1;
    const DOC: &str = "Keeps the highest-scoring row per prompt (ties: the first).";

    fn inputs() -> Ports {
        Ports::one("table", PortType::any_table(), "Scored rows, several per prompt.")
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "One row per prompt, in first-appearance order.")
    }

    fn check(&self, params: &BestOfNParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let mut errors = CheckErrors::new();
        let columns = table::input_columns(cx, "table").map_err(|e| errors.push(e)).ok().flatten();
        if let Some(columns) = columns {
            let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
            for (param, name) in [("prompt_column", &params.prompt_column), ("score_column", &params.score_column)] {
                match columns.iter().find(|c| &c.name == name) {
                    None => errors.push(table::unknown_column("table", &[param], name, &names)),
                    Some(c) if param == "score_column" && !NUMERIC.contains(&c.dtype.as_str()) => errors.push(
                        CheckError::param(&[param], format!("column `{name}` of `table` is {}, not a number", c.dtype))
                            .about_column("table", name)
                            .help("score the rows first, e.g. with a `reward_score` stage"),
                    ),
                    Some(_) => {}
                }
            }
        }
        let schema = columns.map(|c| drover_engine::TableSchema::with_columns(c.to_vec())).unwrap_or_default();
        errors.or(Checked::default().output("out", PortType::Table(schema)))
    }

    fn run(&self, params: BestOfNParams, cx: RunCx) -> Work {
        Work::blocking(move || {
            let (schema, batches) = table::read_input(&cx.input("table")?.path)?;
            let input = concat_batches(&schema, &batches).map_err(|e| OpError::failed(format!("best_of_n: {e}")))?;
            let column = |name: &str| {
                input.column_by_name(name).ok_or_else(|| OpError::failed(format!("the input has no column `{name}`")))
            };
            let prompts = cast(column(&params.prompt_column)?, &DataType::Utf8)
                .map_err(|e| OpError::failed(format!("column `{}`: {e}", params.prompt_column)))?;
            let prompts = prompts.as_any().downcast_ref::<arrow::array::StringArray>().expect("Utf8");
            let scores = cast(column(&params.score_column)?, &DataType::Float64)
                .map_err(|e| OpError::failed(format!("column `{}` is not a number: {e}", params.score_column)))?;
            let scores = scores.as_any().downcast_ref::<arrow::array::Float64Array>().expect("Float64");
            let (keep, unscored) = best_rows(
                (0..input.num_rows()).map(|i| prompts.is_valid(i).then(|| prompts.value(i))),
                (0..input.num_rows()).map(|i| if scores.is_valid(i) { scores.value(i) } else { f64::NAN }),
            );
            let indices = UInt32Array::from(keep.iter().map(|&i| i as u32).collect::<Vec<_>>());
            let out = take_record_batch(&input, &indices).map_err(|e| OpError::failed(format!("best_of_n: {e}")))?;
            let mut log = format!("{} rows, {} prompts kept", input.num_rows(), keep.len());
            if unscored > 0 {
                log.push_str(&format!("; {unscored} prompts left out: none of their rows has a score"));
            }
            crate::kit::llm::append_log(&cx, &log);
            table::write_parquet(&cx.output("out")?.path, &out.schema(), &[out])
        })
    }
}

/// The row kept per prompt (a null prompt is a prompt of its own), in first-appearance order,
/// and how many prompts had no score at all.
fn best_rows<'a>(
    prompts: impl Iterator<Item = Option<&'a str>>,
    scores: impl Iterator<Item = f64>,
) -> (Vec<usize>, usize) {
    let mut order: Vec<Option<&str>> = Vec::new();
    let mut best: std::collections::HashMap<Option<&str>, Option<(usize, f64)>> = Default::default();
    for (i, (p, s)) in prompts.zip(scores).enumerate() {
        let entry = best.entry(p).or_insert_with(|| {
            order.push(p);
            None
        });
        // Strictly greater: a tie keeps the earlier row.
        if !s.is_nan() && entry.is_none_or(|(_, b)| s > b) {
            *entry = Some((i, s));
        }
    }
    let kept: Vec<usize> = order.iter().filter_map(|p| best[p].map(|(i, _)| i)).collect();
    let unscored = order.len() - kept.len();
    (kept, unscored)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, StringArray};
    use serde_json::json;

    use super::*;
    use crate::kit::testing::{OpTest, batch, column, first_error, texts};

    #[test]
    fn the_best_row_per_prompt_is_kept_ties_first() {
        let input = batch(vec![
            ("prompt", Arc::new(StringArray::from(vec!["p", "q", "p", "p", "q", "r"])) as ArrayRef),
            ("response", Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e", "f"])) as ArrayRef),
            ("reward", Arc::new(Float64Array::from(vec![Some(1.0), Some(0.5), Some(2.0), Some(2.0), Some(0.5), None]))),
        ]);
        let t = OpTest::new(json!({})).input("table", input);
        t.check(&BestOfN).unwrap();
        let out = t.run(&BestOfN).unwrap();
        assert_eq!(column(&out, "response"), ["c", "b"]);
        let log = std::fs::read_to_string(t.dir().join("log.txt")).unwrap();
        assert_eq!(log.trim(), "6 rows, 2 prompts kept; 1 prompts left out: none of their rows has a score");
    }

    #[test]
    fn a_score_that_is_not_a_number_is_a_plan_error() {
        let t = OpTest::new(json!({})).input("table", texts(&[("prompt", &["p"]), ("reward", &["high"])]));
        let err = first_error(t.check(&BestOfN));
        assert_eq!(err.message, "column `reward` of `table` is Utf8, not a number");
        let t = OpTest::new(json!({"score_column": "rewrd"}))
            .input("table", texts(&[("prompt", &["p"]), ("reward", &["1"])]));
        assert_eq!(first_error(t.check(&BestOfN)).message, "unknown column `rewrd`");
    }
}
