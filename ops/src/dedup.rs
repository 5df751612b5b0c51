//! The `dedup` op: drops rows that repeat earlier (or later) rows on some columns.
//!
//! Input `table`; output `out`, with the same columns. Two rows are duplicates when they are
//! exactly equal on the key columns (by default all of them; nulls equal nulls). Of each
//! group of duplicates, the first or the last row is kept, and the kept rows stay in their
//! original order. Rows are compared in arrow's row format, so any column type works.
//! Deterministic.

use std::collections::HashSet;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::Schema;
use arrow::row::{RowConverter, SortField};
use drover_engine::{
    BoxFuture, CheckCx, CheckError, Checked, Op, OpError, OpInfo, PortDecl, PortType, Ports, RunCx, TableSchema,
    params_schema,
};
use serde::Deserialize;

use crate::table;

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

impl Dedup {
    pub const NAME: &str = "dedup";
    pub const VERSION: u32 = 1;
    const DOC: &str = "Drops rows that duplicate another row on the key columns.";

    fn inputs() -> Vec<PortDecl> {
        vec![PortDecl { name: "table", ty: PortType::any_table(), doc: "The table to deduplicate.", optional: false }]
    }

    fn outputs() -> Vec<PortDecl> {
        vec![PortDecl {
            name: "out",
            ty: PortType::any_table(),
            doc: "One row per distinct key, in original order, with the input's columns.",
            optional: false,
        }]
    }
}

/// Checks the key columns against the input's columns, when those are known.
fn check_columns(params: &DedupParams, input: Option<&[&str]>) -> Vec<CheckError> {
    let Some(columns) = &params.columns else {
        return Vec::new();
    };
    if columns.is_empty() {
        return vec![
            CheckError::param(&["columns"], "no key columns")
                .about_columns("table")
                .help("list at least one column, or leave `columns` out to compare whole rows"),
        ];
    }
    let Some(input) = input else {
        return Vec::new();
    };
    columns
        .iter()
        .enumerate()
        .filter(|(_, name)| !input.contains(&name.as_str()))
        .map(|(i, name)| table::unknown_column("table", &["columns", &i.to_string()], name, input))
        .collect()
}

/// Which rows of `batch` survive.
fn survivors(params: &DedupParams, batch: &RecordBatch) -> Result<BooleanArray, OpError> {
    let schema = batch.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let errors = check_columns(params, Some(&names));
    if !errors.is_empty() {
        return Err(table::check_errors_to_op_error(errors));
    }
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

fn dedup(params: &DedupParams, schema: &Schema, batches: &[RecordBatch]) -> Result<RecordBatch, OpError> {
    let failed = |e: arrow::error::ArrowError| OpError::failed(format!("cannot dedup: {e}"));
    // One batch, so that one set of rows compares across the whole table.
    let all = concat_batches(&schema.clone().into(), batches).map_err(failed)?;
    let mask = survivors(params, &all)?;
    filter_record_batch(&all, &mask).map_err(failed)
}

impl Op for Dedup {
    fn info(&self) -> OpInfo {
        OpInfo {
            name: Self::NAME,
            version: Self::VERSION,
            doc: Self::DOC,
            inputs: Ports::Fixed(Self::inputs()),
            outputs: Ports::Fixed(Self::outputs()),
            params: params_schema::<DedupParams>(),
            deterministic: true,
            templated_params: false,
        }
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<Checked, Vec<CheckError>> {
        let params: DedupParams = table::check_params(cx)?;
        let columns = table::input_columns(cx, "table").map_err(|e| vec![e])?;
        let names: Option<Vec<&str>> = columns.map(|c| c.iter().map(|c| c.name.as_str()).collect());
        let errors = check_columns(&params, names.as_deref());
        if !errors.is_empty() {
            return Err(errors);
        }
        let schema = columns.map_or_else(TableSchema::default, |c| TableSchema::with_columns(c.to_vec()));
        Ok(Checked {
            outputs: [("out".to_string(), PortType::Table(schema))].into(),
            file_deps: Vec::new(),
            ..Default::default()
        })
    }

    fn run(&self, cx: RunCx) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async move {
            table::run_blocking(move || {
                let params: DedupParams = table::run_params(&cx)?;
                let (schema, batches) = table::read_input(&cx.input("table")?.path)?;
                let out = dedup(&params, &schema, &batches)?;
                table::write_parquet(&cx.output("out")?.path, &schema, &[out])
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, ListArray, StringArray};
    use arrow::datatypes::Int64Type;
    use drover_engine::{CheckLocation, Column};
    use serde_json::json;

    use super::*;
    use crate::table::testing::{OpTest, batch, column, first_error};

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
