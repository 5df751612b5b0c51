//! The `rouge_dedup` op: drops rows whose text is too close, by ROUGE-L, to an earlier kept row
//! or to a pool of reference texts: Self-Instruct's diversity filter as its own op.
//!
//! Input `table` (the candidates, in order) and, optionally, `against` (texts that every
//! candidate is compared with, such as the seed tasks; they are not output). A candidate is kept
//! when its ROUGE-L F-measure with every text of the pool is at most `threshold` (Self-Instruct:
//! 0.7), and then joins the pool. ROUGE-L is `rouge_score`'s, without stemming (see `rouge`).
//! Output `out`: the kept rows with the input's columns; with `keep_rejected: true`, every row,
//! with `kept`, and for a dropped row the ROUGE-L of its closest pool text and that text
//! (`rouge_l`, `most_similar`). Deterministic.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, Column, OpError, OpKit, PortDecl, PortType, Ports, RunCx, TableSchema,
    Work,
};
use serde::Deserialize;

use crate::data::read_whole;
use crate::kit::rouge::{Filter, tokenize};
use crate::kit::table;

/// The `with:` block of a `rouge_dedup` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RougeDedupParams {
    /// The text column of `table`.
    pub column: String,
    /// The text column of `against`. Default: `column`.
    pub against_column: Option<String>,
    /// Rows whose ROUGE-L with a pool text is above this are dropped. Default: 0.7.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Output every row, with `kept`, `rouge_l` and `most_similar`. Default: false.
    #[serde(default)]
    pub keep_rejected: bool,
}

fn default_threshold() -> f64 {
    0.7
}

/// Drops near-duplicate texts by ROUGE-L.
pub struct RougeDedup;

const EXTRA: [(&str, &str); 3] = [("kept", "Boolean"), ("rouge_l", "Float64"), ("most_similar", "Utf8")];

/// The texts of a column (nulls as empty texts).
fn texts(batch: &RecordBatch, column: &str) -> Result<Vec<String>, OpError> {
    let index =
        batch.schema().index_of(column).map_err(|_| OpError::failed(format!("no column `{column}` in the input")))?;
    let strings = cast(batch.column(index), &DataType::Utf8)
        .map_err(|e| OpError::failed(format!("column `{column}` is not text: {e}")))?;
    let strings = strings.as_any().downcast_ref::<StringArray>().expect("cast to Utf8 gives a StringArray");
    Ok((0..strings.len())
        .map(|i| if strings.is_null(i) { String::new() } else { strings.value(i).to_string() })
        .collect())
}

impl OpKit for RougeDedup {
    type Params = RougeDedupParams;
    const NAME: &str = "rouge_dedup";
    const VERSION: u32 = 1;
    const DOC: &str =
        "Drops rows whose text has a ROUGE-L above a threshold with an earlier kept row or a reference text.";

    fn inputs() -> Ports {
        Ports::Fixed(vec![
            PortDecl::new("table", PortType::any_table(), "The candidate rows, in order."),
            PortDecl::new(
                "against",
                PortType::any_table(),
                "Reference texts every candidate is compared with (not output).",
            )
            .optional(),
        ])
    }

    fn outputs() -> Ports {
        Ports::one(
            "out",
            PortType::any_table(),
            "The kept rows (with `keep_rejected`: every row, with kept, rouge_l, most_similar).",
        )
    }

    fn check(&self, params: &RougeDedupParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let mut errors = CheckErrors::new();
        if !(0.0..=1.0).contains(&params.threshold) {
            errors.push(
                CheckError::param(&["threshold"], format!("threshold {} is outside [0, 1]", params.threshold))
                    .help("ROUGE-L lies in [0, 1]; Self-Instruct drops above 0.7"),
            );
        }
        let columns = table::input_columns(cx, "table")?;
        errors.extend(table::check_text_column("table", Some("column"), &params.column, columns));
        if cx.inputs.contains_key("against") {
            let against = table::input_columns(cx, "against")?;
            let name = params.against_column.as_deref().unwrap_or(&params.column);
            let param = if params.against_column.is_some() { "against_column" } else { "column" };
            errors.extend(table::check_text_column("against", Some(param), name, against));
        } else if params.against_column.is_some() {
            errors.push(
                CheckError::param(&["against_column"], "`against_column` is set but no `against` input is connected")
                    .help("connect the reference texts with `in: { against: STAGE }`, or drop `against_column`"),
            );
        }
        if let Some(cols) = columns
            && params.keep_rejected
            && let Some((clash, _)) = EXTRA.iter().find(|(n, _)| cols.iter().any(|c| c.name == *n))
        {
            errors.push(
                CheckError::param(&["keep_rejected"], format!("the input already has a column `{clash}`"))
                    .about_column("table", clash)
                    .help("rename it (a `select` stage) before this one"),
            );
        }
        let schema = columns.map_or_else(TableSchema::default, |c| {
            let mut cols = c.to_vec();
            if params.keep_rejected {
                cols.extend(EXTRA.iter().map(|(n, t)| Column::new(*n, *t)));
            }
            TableSchema::with_columns(cols)
        });
        errors.or(Checked::default().output("out", PortType::Table(schema)))
    }

    fn run(&self, params: RougeDedupParams, cx: RunCx) -> Work {
        Work::blocking(move || {
            let failed = |e: arrow::error::ArrowError| OpError::failed(format!("cannot filter: {e}"));
            let (schema, all) = read_whole(&cx.input("table")?.path, "cannot filter")?;
            let candidates = texts(&all, &params.column)?;
            let seeds = match cx.inputs.contains_key("against") {
                true => {
                    let (_, against) = read_whole(&cx.input("against")?.path, "cannot filter")?;
                    texts(&against, params.against_column.as_deref().unwrap_or(&params.column))?
                }
                false => Vec::new(),
            };
            let started = std::time::Instant::now();
            let seed_tokens: Vec<Vec<String>> = seeds.iter().map(|t| tokenize(t)).collect();
            let tokens: Vec<Vec<String>> = candidates.iter().map(|t| tokenize(t)).collect();
            let everything: Vec<&[String]> = seed_tokens.iter().chain(&tokens).map(Vec::as_slice).collect();
            let mut filter = Filter::new(params.threshold, &everything);
            // Pool texts in the order they joined: seeds, then kept candidates.
            let mut pool: Vec<&str> = seeds.iter().map(String::as_str).collect();
            for t in &seed_tokens {
                filter.add(t);
            }
            cx.progress.set_total(tokens.len() as u64);
            let mut kept = Vec::with_capacity(tokens.len());
            let mut rouge_l = Vec::with_capacity(tokens.len());
            let mut most_similar = Vec::with_capacity(tokens.len());
            for (i, t) in tokens.iter().enumerate() {
                match filter.admit(t) {
                    None => {
                        pool.push(&candidates[i]);
                        kept.push(true);
                        rouge_l.push(None);
                        most_similar.push(None);
                    }
                    Some(r) => {
                        kept.push(false);
                        rouge_l.push(Some(r.rouge_l));
                        most_similar.push(Some(pool[r.pool_index].to_string()));
                    }
                }
                if i % 1024 == 1023 {
                    cx.progress.advance(1024);
                }
            }
            let log = format!(
                "{} of {} rows kept (threshold {}, {} reference texts); {} ROUGE-L computations in {:.3}s\n",
                kept.iter().filter(|k| **k).count(),
                kept.len(),
                params.threshold,
                seeds.len(),
                filter.comparisons,
                started.elapsed().as_secs_f64(),
            );
            let _ = std::fs::write(&cx.log_path, log);
            let out = if params.keep_rejected {
                let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(Field::new("kept", DataType::Boolean, false));
                fields.push(Field::new("rouge_l", DataType::Float64, true));
                fields.push(Field::new("most_similar", DataType::Utf8, true));
                let mut columns: Vec<ArrayRef> = all.columns().to_vec();
                columns.push(Arc::new(BooleanArray::from(kept)));
                columns.push(Arc::new(Float64Array::from(rouge_l)));
                columns.push(Arc::new(StringArray::from(most_similar)));
                RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(failed)?
            } else {
                filter_record_batch(&all, &BooleanArray::from(kept)).map_err(failed)?
            };
            table::write_parquet(&cx.output("out")?.path, &out.schema(), &[out])
        })
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use serde_json::json;

    use super::*;
    use crate::kit::testing::{OpTest, batch, column, first_error};

    fn rows(texts: &[&str]) -> RecordBatch {
        batch(vec![
            ("id", Arc::new(Int64Array::from((0..texts.len() as i64).collect::<Vec<_>>())) as ArrayRef),
            ("instruction", Arc::new(StringArray::from(texts.to_vec()))),
        ])
    }

    #[test]
    fn near_duplicates_of_kept_rows_and_of_references_are_dropped() {
        let table = rows(&[
            "Write a poem about the sea.",
            "write a poem about the sea",           // identical tokens: 1.0
            "Give three tips for staying healthy.", // the reference, reworded by one word
            "Explain how a bicycle works.",
            "Write a short poem about the sea.", // 2*6/(7+6) = 0.923
        ]);
        let against = rows(&["Give three tips for staying fit."]);
        let t = OpTest::new(json!({"column": "instruction", "keep_rejected": true}))
            .input("table", table)
            .input("against", against);
        let out = t.run(&RougeDedup).unwrap();
        assert_eq!(column(&out, "kept"), ["true", "false", "false", "true", "false"]);
        assert_eq!(column(&out, "most_similar")[1], "Write a poem about the sea.");
        assert_eq!(column(&out, "most_similar")[2], "Give three tips for staying fit.");
        // 5 of 6 tokens in common.
        assert_eq!(column(&out, "rouge_l")[2], fmeasure_ref(5, 6, 6).to_string());
        // "write a short poem about the sea" (7) against "write a poem about the sea" (6): LCS 6.
        assert_eq!(column(&out, "rouge_l")[4], fmeasure_ref(6, 7, 6).to_string());
    }

    fn fmeasure_ref(lcs: usize, m: usize, n: usize) -> f64 {
        let (p, r) = (lcs as f64 / n as f64, lcs as f64 / m as f64);
        2.0 * p * r / (p + r)
    }

    #[test]
    fn without_keep_rejected_only_kept_rows_come_out_with_the_input_columns() {
        let t = OpTest::new(json!({"column": "instruction", "threshold": 0.5}))
            .input("table", rows(&["a b c d", "a b c e", "w x y z"]));
        let out = t.run(&RougeDedup).unwrap();
        assert_eq!(column(&out, "id"), ["0", "2"]);
        assert_eq!(out.num_columns(), 2);
    }

    #[test]
    fn bad_params_are_plan_errors() {
        let t = OpTest::new(json!({"column": "instructoin"})).input("table", rows(&["x"]));
        let e = first_error(t.check(&RougeDedup));
        assert_eq!(e.message, "unknown column `instructoin`");
        let t = OpTest::new(json!({"column": "id"})).input("table", rows(&["x"]));
        assert_eq!(first_error(t.check(&RougeDedup)).message, "column `id` of `table` is Int64, not text");
        let t = OpTest::new(json!({"column": "instruction", "threshold": 1.5})).input("table", rows(&["x"]));
        assert_eq!(first_error(t.check(&RougeDedup)).message, "threshold 1.5 is outside [0, 1]");
        let t = OpTest::new(json!({"column": "instruction", "against_column": "x"})).input("table", rows(&["x"]));
        assert!(first_error(t.check(&RougeDedup)).message.contains("no `against` input"));
    }
}
