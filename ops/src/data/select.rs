//! The `select` op: keeps some columns of a table, in a chosen order, and renames columns.
//!
//! Input `table`; output `out`: the chosen columns (by default all, in table order), renamed.
//! Column names are checked at plan time when the input's columns are known then, else at
//! run time; a misspelt name gets the nearest real one as a hint. Deterministic.

use std::collections::{BTreeMap, HashMap};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, Column, OpError, OpKit, PortType, Ports, RunCx, TableSchema, Work,
};
use serde::Deserialize;

use crate::data::{column_names, field_names};
use crate::kit::table;

/// The `with:` block of a `select` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectParams {
    /// The columns to keep, in this order. Default: every column, in table order.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// New names, from old name to new name. Default: none.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

/// Keeps and renames columns.
pub struct Select;

impl OpKit for Select {
    type Params = SelectParams;
    const NAME: &str = "select";
    const VERSION: u32 = 1;
    const DOC: &str = "Keeps some columns of a table, in a chosen order, and renames columns.";

    fn inputs() -> Ports {
        Ports::one("table", PortType::any_table(), "The table to take columns from.")
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "The chosen columns, renamed, with every row.")
    }

    fn check(&self, params: &SelectParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let columns = table::input_columns(cx, "table")?;
        let out = plan(params, columns.map(column_names).as_deref())?;
        let schema = match (out, columns) {
            (Some(out), Some(columns)) => TableSchema::with_columns(
                out.into_iter()
                    .filter_map(|(old, new)| {
                        let dtype = &columns.iter().find(|c| c.name == old)?.dtype;
                        Some(Column::new(new, dtype.clone()))
                    })
                    .collect(),
            ),
            _ => TableSchema::default(),
        };
        Ok(Checked::default().output("out", PortType::Table(schema)))
    }

    fn run(&self, params: SelectParams, cx: RunCx) -> Work {
        Work::blocking(move || {
            let (schema, batches) = table::read_input(&cx.input("table")?.path)?;
            let (out_schema, indices) = project(&params, &schema)?;
            let batches = batches
                .iter()
                .map(|batch| {
                    let columns = indices.iter().map(|i| batch.column(*i).clone()).collect();
                    RecordBatch::try_new(out_schema.clone(), columns)
                        .map_err(|e| OpError::failed(format!("cannot select: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            table::write_parquet(&cx.output("out")?.path, &out_schema, &batches)
        })
    }
}

/// The output columns, each as (input name, output name).
type Projection<'a> = Vec<(&'a str, &'a str)>;

/// The output columns; `None` when they depend on input columns not known yet. `input` is
/// the input's column names, when known.
fn plan<'a>(params: &'a SelectParams, input: Option<&[&'a str]>) -> Result<Option<Projection<'a>>, CheckErrors> {
    let mut errors = CheckErrors::new();
    let picked: Option<Vec<&str>> = match &params.columns {
        Some(columns) => {
            if columns.is_empty() {
                errors.push(
                    CheckError::param(&["columns"], "no columns to keep")
                        .about_columns("table")
                        .help("list at least one column, or leave `columns` out to keep all"),
                );
            }
            for (i, name) in columns.iter().enumerate() {
                let at = i.to_string();
                if columns[..i].contains(name) {
                    errors.push(
                        CheckError::param(&["columns", &at], format!("column `{name}` is listed twice"))
                            .about_columns("table"),
                    );
                } else if let Some(input) = input
                    && !input.contains(&name.as_str())
                {
                    errors.push(table::unknown_column("table", &["columns", &at], name, input));
                }
            }
            Some(columns.iter().map(String::as_str).collect())
        }
        None => input.map(<[&str]>::to_vec),
    };

    if let Some(picked) = &picked {
        for old in params.rename.keys() {
            if picked.contains(&old.as_str()) {
                continue;
            }
            match input {
                Some(input) if !input.contains(&old.as_str()) => {
                    errors.push(table::unknown_column("table", &["rename", old], old, input));
                }
                _ => errors.push(
                    CheckError::param(&["rename", old], format!("`{old}` is renamed but not kept"))
                        .help("add it to `columns`, or drop the rename"),
                ),
            }
        }
    }

    let out: Option<Projection> = picked.map(|picked| {
        picked.into_iter().map(|old| (old, params.rename.get(old).map_or(old, String::as_str))).collect()
    });
    // Two columns may not end up with one name: either both renamed to it, or one renamed onto
    // a kept column. Without the kept columns, only the first kind can be seen.
    let mut first_with_name: HashMap<&str, &str> = HashMap::new();
    let pairs: Projection = match &out {
        Some(out) => out.clone(),
        None => params.rename.iter().map(|(o, n)| (o.as_str(), n.as_str())).collect(),
    };
    for (old, new) in pairs {
        if let Some(other) = first_with_name.insert(new, old)
            && other != old
        {
            let renamed = if params.rename.contains_key(old) { old } else { other };
            errors.push(CheckError::param(
                &["rename", renamed],
                format!("`{other}` and `{old}` would both be named `{new}`"),
            ));
        }
    }

    errors.or(out)
}

/// The selected, renamed columns of `schema`, or why they cannot be taken.
fn project(params: &SelectParams, schema: &Schema) -> Result<(SchemaRef, Vec<usize>), OpError> {
    let names = field_names(schema);
    let out = plan(params, Some(&names)).map_err(CheckErrors::into_op_error)?.unwrap_or_default();
    let mut indices = Vec::with_capacity(out.len());
    let mut fields = Vec::with_capacity(out.len());
    for (old, new) in out {
        let index = schema.index_of(old).map_err(|e| OpError::failed(e.to_string()))?;
        indices.push(index);
        fields.push(schema.field(index).as_ref().clone().with_name(new));
    }
    Ok((SchemaRef::new(Schema::new_with_metadata(fields, schema.metadata().clone())), indices))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use drover_engine::CheckLocation;
    use serde_json::json;

    use super::*;
    use crate::kit::testing::{OpTest, batch, column, first_error, names};

    fn qa() -> RecordBatch {
        batch(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("prompt", Arc::new(StringArray::from(vec!["hi", "yo"]))),
            ("response", Arc::new(StringArray::from(vec!["hello", "hey"]))),
            ("score", Arc::new(Float64Array::from(vec![0.5, 0.25]))),
        ])
    }

    fn at(err: &CheckError) -> Vec<String> {
        match &err.at {
            CheckLocation::Param(path) => path.clone(),
            other => panic!("expected a param location, got {other:?}"),
        }
    }

    #[test]
    fn keeps_columns_in_the_given_order_and_renames() {
        let t = OpTest::new(json!({
            "columns": ["response", "id"],
            "rename": {"response": "answer"},
        }))
        .input("table", qa());
        assert_eq!(
            t.check(&Select).unwrap().outputs["out"],
            PortType::Table(TableSchema::with_columns(
                vec![Column::new("answer", "Utf8"), Column::new("id", "Int64"),]
            ))
        );
        let out = t.run(&Select).unwrap();
        assert_eq!(names(&out), ["answer", "id"]);
        assert_eq!(column(&out, "answer"), ["hello", "hey"]);
        assert_eq!(column(&out, "id"), ["1", "2"]);
    }

    #[test]
    fn no_columns_keeps_all_and_only_renames() {
        let t = OpTest::new(json!({"rename": {"score": "reward"}})).input("table", qa());
        let out = t.run(&Select).unwrap();
        assert_eq!(names(&out), ["id", "prompt", "response", "reward"]);
        assert_eq!(column(&out, "reward"), ["0.5", "0.25"]);
    }

    #[test]
    fn a_missing_with_block_keeps_everything() {
        let out = OpTest::new(json!(null)).input("table", qa()).run(&Select).unwrap();
        assert_eq!(out, qa());
    }

    #[test]
    fn an_unknown_column_is_a_plan_error_with_a_hint() {
        let t = OpTest::new(json!({"columns": ["id", "promt"]})).input("table", qa());
        let err = first_error(t.check(&Select));
        assert_eq!(err.message, "unknown column `promt`");
        assert_eq!(err.help.as_deref(), Some("did you mean `prompt`?"));
        assert_eq!(at(&err), ["columns", "1"]);
    }

    #[test]
    fn an_unknown_column_is_a_run_error_when_the_schema_was_unknown() {
        let t = OpTest::new(json!({"columns": ["id", "promt"]})).input("table", qa()).unknown_schemas();
        assert_eq!(t.check(&Select).unwrap().outputs["out"], PortType::any_table());
        let err = t.run(&Select).unwrap_err();
        assert_eq!(err.message, "unknown column `promt` (did you mean `prompt`?)");
    }

    #[test]
    fn an_unknown_rename_is_an_error_with_a_hint() {
        let t = OpTest::new(json!({"rename": {"scor": "s"}})).input("table", qa());
        let err = first_error(t.check(&Select));
        assert_eq!(err.message, "unknown column `scor`");
        assert_eq!(err.help.as_deref(), Some("did you mean `score`?"));
        assert_eq!(at(&err), ["rename", "scor"]);
    }

    #[test]
    fn renaming_a_column_that_is_not_kept_is_an_error() {
        let t = OpTest::new(json!({"columns": ["id"], "rename": {"score": "s"}})).input("table", qa());
        let err = first_error(t.check(&Select));
        assert_eq!(err.message, "`score` is renamed but not kept");
        assert_eq!(at(&err), ["rename", "score"]);
    }

    #[test]
    fn two_columns_with_one_name_are_an_error() {
        let t = OpTest::new(json!({"rename": {"prompt": "text", "response": "text"}})).input("table", qa());
        let err = first_error(t.check(&Select));
        assert_eq!(err.message, "`prompt` and `response` would both be named `text`");
        assert_eq!(at(&err), ["rename", "response"]);
        // Seen even before the columns are known.
        let err = first_error(t.unknown_schemas().check(&Select));
        assert_eq!(err.message, "`prompt` and `response` would both be named `text`");

        let t = OpTest::new(json!({"rename": {"prompt": "id"}})).input("table", qa());
        let err = first_error(t.check(&Select));
        assert_eq!(err.message, "`id` and `prompt` would both be named `id`");
        assert_eq!(at(&err), ["rename", "prompt"]);
        assert!(t.run(&Select).is_err());
    }

    #[test]
    fn a_column_listed_twice_or_none_listed_is_an_error() {
        let t = OpTest::new(json!({"columns": ["id", "id"]})).input("table", qa());
        let err = first_error(t.check(&Select));
        assert_eq!(err.message, "column `id` is listed twice");
        assert_eq!(at(&err), ["columns", "1"]);
        let t = OpTest::new(json!({"columns": []})).input("table", qa());
        assert_eq!(first_error(t.check(&Select)).message, "no columns to keep");
    }

    #[test]
    fn every_error_is_reported_not_only_the_first() {
        let t = OpTest::new(json!({"columns": ["idd", "promt"]})).input("table", qa());
        assert_eq!(t.check(&Select).unwrap_err().len(), 2);
    }
}
