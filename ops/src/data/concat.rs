//! The `concat` op: stacks tables with the same columns, one after the other.
//!
//! Input `parts`: a list of tables (`stage[*]`) or a single table. Output `out`: every row of
//! every part, in part order. Each part's matrix values become extra columns after the data
//! columns (an integer gives `Int64`, a float `Float64`, a bool `Boolean`, anything else
//! `Utf8`; integers mixed with floats give `Float64`), so the rows stay attributable.
//! Deterministic.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, InputItem, OpError, OpKit, PortType, Ports, RunCx, Work,
};
use serde::Deserialize;
use serde_json::Value;

use crate::kit::table;

/// The `with:` block of a `concat` stage: it takes no params.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcatParams {}

/// Stacks tables.
pub struct Concat;

impl OpKit for Concat {
    type Params = ConcatParams;
    const NAME: &str = "concat";
    const VERSION: u32 = 1;
    const DOC: &str = "Stacks tables with the same columns; matrix values become columns.";

    fn inputs() -> Ports {
        Ports::one(
            "parts",
            PortType::List(Box::new(PortType::any_table())),
            "The tables to stack (`stage[*]`, or a single table).",
        )
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "Every row of every part, then one column per matrix key.")
    }

    fn check(&self, _: &ConcatParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        match cx.inputs.get("parts") {
            Some(PortType::Table(_)) => {}
            Some(PortType::List(inner)) if matches!(**inner, PortType::Table(_)) => {}
            Some(other) => {
                return Err(CheckError::input("parts", format!("expected a list of tables, got {other}")).into());
            }
            None => return Err(CheckError::stage("input `parts` is not connected").into()),
        }
        // The matrix columns are only known at run time, so the output columns are too.
        Ok(Checked::default().output("out", PortType::any_table()))
    }

    fn run(&self, _: ConcatParams, cx: RunCx) -> Work {
        Work::blocking(move || {
            let items =
                cx.inputs.get("parts").ok_or_else(|| OpError::failed("input `parts` is not connected"))?.items();
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                let (schema, batches) = table::read_input(&item.path)?;
                parts.push(Part { item, schema, batches });
            }
            let (schema, batches) = concat(&parts)?;
            table::write_parquet(&cx.output("out")?.path, &schema, &batches)
        })
    }
}

/// One input table and where it came from.
struct Part<'a> {
    item: &'a InputItem,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

/// The type of a matrix column, widened over the values of every part.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Bool,
    Text,
}

impl Kind {
    fn of(value: &Value) -> Option<Kind> {
        match value {
            Value::Null => None,
            Value::Bool(_) => Some(Kind::Bool),
            Value::Number(n) if n.is_i64() => Some(Kind::Int),
            Value::Number(_) => Some(Kind::Float),
            _ => Some(Kind::Text),
        }
    }

    fn widen(self, other: Kind) -> Kind {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            _ => Kind::Text,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Bool => DataType::Boolean,
            Kind::Text => DataType::Utf8,
        }
    }

    /// `len` copies of `value` (null when the part has no such key).
    fn constant(self, value: Option<&Value>, len: usize) -> ArrayRef {
        let value = value.filter(|v| !v.is_null());
        match self {
            Kind::Int => Arc::new(Int64Array::from(vec![value.and_then(Value::as_i64); len])),
            Kind::Float => Arc::new(Float64Array::from(vec![value.and_then(Value::as_f64); len])),
            Kind::Bool => Arc::new(BooleanArray::from(vec![value.and_then(Value::as_bool); len])),
            Kind::Text => {
                let text = value.map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                Arc::new(StringArray::from(vec![text; len]))
            }
        }
    }
}

/// How a part is named in messages: its stage, and its matrix values if any.
fn describe(item: &InputItem) -> String {
    if item.matrix.is_empty() {
        return format!("`{}`", item.stage);
    }
    let values: Vec<String> = item.matrix.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("`{}` [{}]", item.stage, values.join(", "))
}

fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields()).all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

fn concat(parts: &[Part<'_>]) -> Result<(SchemaRef, Vec<RecordBatch>), OpError> {
    let Some(first) = parts.first() else {
        return Ok((SchemaRef::new(Schema::empty()), Vec::new()));
    };
    for part in &parts[1..] {
        if !same_columns(&first.schema, &part.schema) {
            return Err(OpError::failed(format!(
                "parts have different columns: {} has {} but {} has {}",
                describe(first.item),
                PortType::Table(table::table_schema(&first.schema)),
                describe(part.item),
                PortType::Table(table::table_schema(&part.schema)),
            )));
        }
    }

    let mut fields: Vec<Field> = first
        .schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let nullable = parts.iter().any(|p| p.schema.field(i).is_nullable());
            f.as_ref().clone().with_nullable(nullable)
        })
        .collect();

    let keys: BTreeSet<&String> = parts.iter().flat_map(|p| p.item.matrix.keys()).collect();
    let mut matrix_columns: Vec<(&String, Kind)> = Vec::with_capacity(keys.len());
    for key in keys {
        if first.schema.field_with_name(key).is_ok() {
            let part = parts.iter().find(|p| p.item.matrix.contains_key(key)).unwrap_or(first);
            return Err(OpError::failed(format!(
                "matrix key `{key}` of {} is also a column of its table; rename the column \
                 (with `select`) or the matrix key",
                describe(part.item)
            )));
        }
        let kind = parts
            .iter()
            .filter_map(|p| p.item.matrix.get(key).and_then(Kind::of))
            .reduce(Kind::widen)
            .unwrap_or(Kind::Text);
        let nullable = parts.iter().any(|p| p.item.matrix.get(key).is_none_or(Value::is_null));
        fields.push(Field::new(key.as_str(), kind.data_type(), nullable));
        matrix_columns.push((key, kind));
    }
    let schema = SchemaRef::new(Schema::new_with_metadata(fields, first.schema.metadata().clone()));

    let mut batches = Vec::new();
    for part in parts {
        for batch in &part.batches {
            let mut columns = batch.columns().to_vec();
            for (key, kind) in &matrix_columns {
                columns.push(kind.constant(part.item.matrix.get(*key), batch.num_rows()));
            }
            let batch = RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| OpError::failed(format!("cannot stack {}: {e}", describe(part.item))))?;
            batches.push(batch);
        }
    }
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use drover_engine::Op;
    use serde_json::json;

    use super::*;
    use crate::kit::testing::{OpTest, TestItem, batch, column, item, names};

    fn rows(ids: Vec<i64>, texts: Vec<&str>) -> RecordBatch {
        batch(vec![("id", Arc::new(Int64Array::from(ids)) as ArrayRef), ("text", Arc::new(StringArray::from(texts)))])
    }

    fn with_matrix(stage: &str, batch: RecordBatch, matrix: Value) -> TestItem {
        let Value::Object(map) = matrix else { panic!("matrix must be an object") };
        TestItem { stage: stage.into(), matrix: map.into_iter().collect::<BTreeMap<_, _>>(), batch }
    }

    #[test]
    fn stacks_parts_in_order_with_matrix_columns() {
        let t = OpTest::new(json!({})).list(
            "parts",
            vec![
                with_matrix(
                    "gen[0]",
                    rows(vec![1, 2], vec!["a", "b"]),
                    json!({"lr": 0.5, "model": "small", "n": 3, "greedy": true}),
                ),
                with_matrix(
                    "gen[1]",
                    rows(vec![3], vec!["c"]),
                    json!({"lr": 1, "model": "big", "n": 4, "greedy": false}),
                ),
            ],
        );
        let out = t.run(&Concat).unwrap();
        assert_eq!(names(&out), ["id", "text", "greedy", "lr", "model", "n"]);
        assert_eq!(column(&out, "id"), ["1", "2", "3"]);
        assert_eq!(column(&out, "text"), ["a", "b", "c"]);
        assert_eq!(column(&out, "lr"), ["0.5", "0.5", "1.0"]);
        assert_eq!(column(&out, "model"), ["small", "small", "big"]);
        assert_eq!(column(&out, "n"), ["3", "3", "4"]);
        assert_eq!(column(&out, "greedy"), ["true", "true", "false"]);
        let schema = out.schema();
        assert_eq!(schema.field_with_name("lr").unwrap().data_type(), &DataType::Float64);
        assert_eq!(schema.field_with_name("n").unwrap().data_type(), &DataType::Int64);
        assert_eq!(schema.field_with_name("greedy").unwrap().data_type(), &DataType::Boolean);
        assert_eq!(schema.field_with_name("model").unwrap().data_type(), &DataType::Utf8);
    }

    #[test]
    fn a_single_table_passes_through() {
        let t = OpTest::new(json!({})).input("parts", rows(vec![7, 8], vec!["x", "y"]));
        let out = t.run(&Concat).unwrap();
        assert_eq!(names(&out), ["id", "text"]);
        assert_eq!(column(&out, "id"), ["7", "8"]);
        assert_eq!(column(&out, "text"), ["x", "y"]);
    }

    #[test]
    fn a_missing_key_in_one_part_gives_nulls() {
        let t = OpTest::new(json!(null)).list(
            "parts",
            vec![with_matrix("a", rows(vec![1], vec!["p"]), json!({"k": "v"})), item("b", rows(vec![2], vec!["q"]))],
        );
        let out = t.run(&Concat).unwrap();
        assert_eq!(column(&out, "k"), ["v", "null"]);
    }

    #[test]
    fn parts_with_different_columns_fail_naming_both_stages() {
        let other = batch(vec![
            ("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("text", Arc::new(Int64Array::from(vec![5]))),
        ]);
        let t =
            OpTest::new(json!({})).list("parts", vec![item("left", rows(vec![1], vec!["a"])), item("right", other)]);
        let err = t.run(&Concat).unwrap_err();
        assert_eq!(
            err.message,
            "parts have different columns: `left` has table(id: Int64, text: Utf8) \
             but `right` has table(id: Int64, text: Int64)"
        );
    }

    #[test]
    fn a_matrix_key_colliding_with_a_column_fails() {
        let t =
            OpTest::new(json!({})).list("parts", vec![with_matrix("gen", rows(vec![1], vec!["a"]), json!({"id": 1}))]);
        let err = t.run(&Concat).unwrap_err();
        assert!(err.message.starts_with("matrix key `id` of `gen` [id=1]"), "{}", err.message);
    }

    #[test]
    fn check_accepts_tables_and_rejects_params_and_blobs() {
        let t = OpTest::new(json!({})).list("parts", vec![item("a", rows(vec![1], vec!["a"]))]);
        assert_eq!(t.check(&Concat).unwrap().outputs["out"], PortType::any_table());
        let t = OpTest::new(json!({"sort": true})).input("parts", rows(vec![1], vec!["a"]));
        assert!(t.check(&Concat).is_err());

        let inputs = BTreeMap::from([("parts".to_string(), PortType::Blob)]);
        let (params, declared) = (json!({}), BTreeMap::new());
        let dir = tempfile::tempdir().unwrap();
        let cx = CheckCx {
            stage: "s",
            params: &params,
            inputs: &inputs,
            declared_outputs: &declared,
            pipeline_dir: dir.path(),
            sections: &Default::default(),
        };
        let errors = Op::check(&Concat, &cx).unwrap_err();
        assert_eq!(errors[0].message, "expected a list of tables, got blob");
    }
}
