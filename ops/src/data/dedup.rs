//! The `dedup` op: drops rows that repeat earlier (or later) rows on some columns.
//!
//! Input `table`; output `out`, with the same columns. Two rows are duplicates when they are
//! exactly equal on the key columns (by default all of them; nulls equal nulls). Of each
//! group of duplicates, the first or the last row is kept, and the kept rows stay in their
//! original order. Rows are compared in arrow's row format, so any column type works.
//! Deterministic.

use std::collections::HashSet;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::row::{RowConverter, SortField};
use drover_engine::{CheckCx, CheckError, CheckErrors, Checked, OpError, OpKit, PortType, Ports, RunCx, Work};
use serde::Deserialize;

use crate::data::{column_names, field_names, read_whole, table_of};
use crate::kit::table;

/// The `with:` block of a `dedup` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupParams {
    /// The key columns: rows equal on all of them are duplicates. Default: every column.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Which row of a group of duplicates survives. Default: `first`.
    #[serde(default)]
    pub keep: Keep,
}

/// Which row of a group of duplicates survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The earliest row.
    #[default]
    First,
    /// The latest row.
    Last,
}

/// Drops duplicate rows.
pub struct Dedup;

impl OpKit for Dedup {
    type Params = DedupParams;
    const NAME: &str = "dedup";
    const VERSION: u32 = 1;
    const DOC: &str = "Drops rows that duplicate another row on the key columns.";

    fn inputs() -> Ports {
        Ports::one("table", PortType::any_table(), "The table to deduplicate.")
    }

    fn outputs() -> Ports {
        Ports::one(
            "out",
            PortType::any_table(),
            "One row per distinct key, in original order, with the input's columns.",
        )
    }

    fn check(&self, params: &DedupParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let columns = table::input_columns(cx, "table")?;
        check_columns(params, columns.map(column_names).as_deref())?;
        Ok(Checked::default().output("out", table_of(columns)))
    }

    fn run(&self, params: DedupParams, cx: RunCx) -> Work {
        Work::blocking(move || {
            let (schema, all) = read_whole(&cx.input("table")?.path, "cannot dedup")?;
            let mask = survivors(&params, &all)?;
            let out = filter_record_batch(&all, &mask).map_err(|e| OpError::failed(format!("cannot dedup: {e}")))?;
            table::write_parquet(&cx.output("out")?.path, &schema, &[out])
        })
    }
}

/// Checks the key columns against the input's columns, when those are known.
fn check_columns(params: &DedupParams, input: Option<&[&str]>) -> Result<(), CheckErrors> {
    let Some(columns) = &params.columns else {
        return Ok(());
    };
    if columns.is_empty() {
        return Err(CheckError::param(&["columns"], "no key columns")
            .about_columns("table")
            .help("list at least one column, or leave `columns` out to compare whole rows")
            .into());
    }
    let Some(input) = input else {
        return Ok(());
    };
    let errors: CheckErrors = columns
        .iter()
        .enumerate()
        .filter(|(_, name)| !input.contains(&name.as_str()))
        .map(|(i, name)| table::unknown_column("table", &["columns", &i.to_string()], name, input))
        .collect();
    errors.or(())
}

/// Which rows of `batch` survive.
fn survivors(params: &DedupParams, batch: &RecordBatch) -> Result<BooleanArray, OpError> {
    let schema = batch.schema();
    let names = field_names(&schema);
    check_columns(params, Some(&names)).map_err(CheckErrors::into_op_error)?;
    let keys: Vec<usize> = match &params.columns {
        Some(columns) => columns.iter().filter_map(|c| names.iter().position(|n| n == c)).collect(),
        None => (0..names.len()).collect(),
    };
    let fields = keys.iter().map(|i| SortField::new(schema.field(*i).data_type().clone())).collect();
    let key_columns: Vec<ArrayRef> = keys.iter().map(|i| batch.column(*i).clone()).collect();
    let rows = RowConverter::new(fields)
        .and_then(|converter| converter.convert_columns(&key_columns))
        .map_err(|e| OpError::failed(format!("cannot compare rows: {e}")))?;

    let mut seen = HashSet::with_capacity(rows.num_rows());
    let mut keep = vec![false; rows.num_rows()];
    let order: Box<dyn Iterator<Item = usize>> = match params.keep {
        Keep::First => Box::new(0..rows.num_rows()),
        Keep::Last => Box::new((0..rows.num_rows()).rev()),
    };
    for i in order {
        keep[i] = seen.insert(rows.row(i));
    }
    Ok(BooleanArray::from(keep))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, ListArray, StringArray};
    use arrow::datatypes::Int64Type;
    use drover_engine::{CheckLocation, Column, TableSchema};
    use serde_json::json;

    use super::*;
    use crate::kit::testing::{OpTest, batch, column, first_error};

    /// Rows (id, prompt, score); prompts repeat, and rows 0 and 3 are entirely equal.
    fn answers() -> RecordBatch {
        batch(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3, 1, 4])) as ArrayRef),
            ("prompt", Arc::new(StringArray::from(vec![Some("a"), Some("b"), None, Some("a"), None]))),
            ("score", Arc::new(Float64Array::from(vec![0.5, 0.5, 0.1, 0.5, 0.2]))),
        ])
    }

    fn run(params: serde_json::Value) -> RecordBatch {
        OpTest::new(params).input("table", answers()).run(&Dedup).unwrap()
    }

    #[test]
    fn whole_rows_by_default() {
        let out = run(json!({}));
        assert_eq!(column(&out, "id"), ["1", "2", "3", "4"]);
        assert_eq!(column(&out, "prompt"), ["a", "b", "null", "null"]);
    }

    #[test]
    fn key_columns_keep_the_first_by_default() {
        // prompt groups: a = rows 0,3; b = row 1; null = rows 2,4.
        let out = run(json!({"columns": ["prompt"]}));
        assert_eq!(column(&out, "id"), ["1", "2", "3"]);
        assert_eq!(column(&out, "score"), ["0.5", "0.5", "0.1"]);
    }

    #[test]
    fn keep_last_keeps_the_last_of_each_group_in_original_order() {
        let out = run(json!({"columns": ["prompt"], "keep": "last"}));
        assert_eq!(column(&out, "id"), ["2", "1", "4"]);
        assert_eq!(column(&out, "score"), ["0.5", "0.5", "0.2"]);
    }

    #[test]
    fn several_key_columns() {
        // (prompt, score): (a,0.5) rows 0,3; (b,0.5) row 1; (null,0.1) row 2; (null,0.2) row 4.
        let out = run(json!({"columns": ["prompt", "score"], "keep": "last"}));
        assert_eq!(column(&out, "id"), ["2", "3", "1", "4"]);
    }

    #[test]
    fn nested_columns_compare_too() {
        let lists = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            Some(vec![Some(1)]),
            Some(vec![Some(1), Some(2)]),
        ]);
        let table =
            batch(vec![("tokens", Arc::new(lists) as ArrayRef), ("n", Arc::new(Int64Array::from(vec![10, 20, 30])))]);
        let t = OpTest::new(json!({"columns": ["tokens"]})).input("table", table);
        assert_eq!(column(&t.run(&Dedup).unwrap(), "n"), ["10", "20"]);
    }

    #[test]
    fn check_passes_the_schema_through() {
        let t = OpTest::new(json!({"columns": ["id"]})).input("table", answers());
        assert_eq!(
            t.check(&Dedup).unwrap().outputs["out"],
            PortType::Table(TableSchema::with_columns(vec![
                Column::new("id", "Int64"),
                Column::new("prompt", "Utf8"),
                Column::new("score", "Float64"),
            ]))
        );
    }

    #[test]
    fn an_unknown_column_is_an_error_with_a_hint() {
        let t = OpTest::new(json!({"columns": ["id", "promt"]})).input("table", answers());
        let err = first_error(t.check(&Dedup));
        assert_eq!(err.message, "unknown column `promt`");
        assert_eq!(err.help.as_deref(), Some("did you mean `prompt`?"));
        assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["columns", "1"]));

        let t = t.unknown_schemas();
        assert_eq!(t.check(&Dedup).unwrap().outputs["out"], PortType::any_table());
        let err = t.run(&Dedup).unwrap_err();
        assert_eq!(err.message, "unknown column `promt` (did you mean `prompt`?)");
    }

    #[test]
    fn bad_params_are_errors() {
        let t = OpTest::new(json!({"columns": []})).input("table", answers());
        assert_eq!(first_error(t.check(&Dedup)).message, "no key columns");
        let t = OpTest::new(json!({"keep": "middle"})).input("table", answers());
        assert!(first_error(t.check(&Dedup)).message.contains("middle"));
    }
}
