//! Prompt templates (minijinja) over a table's rows, and the row and column plumbing that
//! text ops share: rows as JSON objects for templates, and output tables that keep the input's
//! columns and add their own.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use drover_engine::{CheckError, Column, OpError, PortType, TableSchema};
use minijinja::{Environment, UndefinedBehavior};

/// A checked template. Undefined variables are errors when rendering, as they are at plan time.
pub struct Template {
    env: Environment<'static>,
}

impl Template {
    /// Compiles `source`. `param` names the param it came from, for errors. With known
    /// `columns`, every variable the template reads must be one of them (or `row`, the whole
    /// row as a mapping).
    pub fn check(source: &str, param: &str, columns: Option<&[Column]>) -> Result<Template, CheckError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.add_template_owned("prompt", source.to_string()).map_err(|e| {
            let line = e.line().map(|l| format!(" (line {l} of the template)")).unwrap_or_default();
            CheckError::param(
                &[param],
                format!("the template does not parse{line}: {}", e.detail().unwrap_or(&e.to_string())),
            )
            .help("templates are Jinja (minijinja): `{{ column }}`, `{% if column %}...{% endif %}`")
        })?;
        if let Some(columns) = columns {
            let template = env.get_template("prompt").expect("added above");
            let mut used: Vec<String> = template.undeclared_variables(false).into_iter().collect();
            used.sort();
            for name in used {
                if name != "row" && !columns.iter().any(|c| c.name == name) {
                    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                    // Text ops read their rows from input `table`.
                    let err = CheckError::param(
                        &[param],
                        format!("the template reads `{name}`, which is not a column of the input"),
                    )
                    .about_column("table", &name);
                    return Err(match drover_engine::diag::nearest(&name, names.iter().copied()) {
                        Some(near) => err.help(format!("did you mean `{near}`? (columns: {})", names.join(", "))),
                        None => err.help(format!("the input's columns are: {}", names.join(", "))),
                    });
                }
            }
        }
        Ok(Template { env })
    }

    /// Renders the template over one row.
    pub fn render(&self, row: &serde_json::Map<String, serde_json::Value>) -> Result<String, OpError> {
        let template = self.env.get_template("prompt").expect("added in check");
        let mut cx = row.clone();
        cx.insert("row".into(), serde_json::Value::Object(row.clone()));
        template.render(&cx).map_err(|e| OpError::failed(format!("cannot render the template: {e:#}")))
    }
}

/// An input table: its batches as one, and its rows as JSON objects.
pub struct Rows {
    pub batch: RecordBatch,
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl Rows {
    pub fn read(path: &std::path::Path) -> Result<Rows, OpError> {
        let (schema, batches) = crate::kit::table::read_input(path)?;
        let batch =
            concat_batches(&schema, &batches).map_err(|e| OpError::failed(format!("cannot read the input: {e}")))?;
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        writer.write(&batch).map_err(|e| OpError::failed(format!("cannot read rows: {e}")))?;
        writer.finish().map_err(|e| OpError::failed(format!("cannot read rows: {e}")))?;
        let bytes = writer.into_inner();
        let rows: Vec<serde_json::Map<String, serde_json::Value>> = if batch.num_rows() == 0 {
            Vec::new()
        } else {
            serde_json::from_slice(&bytes).map_err(|e| OpError::failed(e.to_string()))?
        };
        Ok(Rows { batch, rows })
    }

    /// The text of `column` in every row (null as empty).
    pub fn texts(&self, column: &str) -> Result<Vec<String>, OpError> {
        self.rows
            .iter()
            .map(|r| match r.get(column) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                None | Some(serde_json::Value::Null) => Ok(String::new()),
                Some(other) => Ok(other.to_string()),
            })
            .collect()
    }
}

/// The input rows at `take` (in that order, repeats allowed), with `extra` columns appended.
pub fn extend(input: &RecordBatch, take: &[u32], extra: Vec<(Field, ArrayRef)>) -> Result<RecordBatch, OpError> {
    let failed = |e: arrow::error::ArrowError| OpError::failed(format!("cannot build the output: {e}"));
    let base = take_record_batch(input, &UInt32Array::from(take.to_vec())).map_err(failed)?;
    let mut fields: Vec<Arc<Field>> = base.schema().fields().iter().cloned().collect();
    let mut columns = base.columns().to_vec();
    for (field, column) in extra {
        fields.push(Arc::new(field));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(failed)
}

/// A non-null text column.
pub fn text_column(name: &str, values: impl IntoIterator<Item = String>) -> (Field, ArrayRef) {
    (Field::new(name, arrow::datatypes::DataType::Utf8, false), Arc::new(StringArray::from_iter_values(values)))
}

/// A table with only these columns.
pub fn table(columns: Vec<(Field, ArrayRef)>) -> Result<(SchemaRef, RecordBatch), OpError> {
    let schema: SchemaRef = Arc::new(Schema::new(columns.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, c)| c).collect())
        .map_err(|e| OpError::failed(format!("cannot build the output: {e}")))?;
    Ok((schema, batch))
}

/// At plan time, the type of a [`table`] with these (name, Arrow type) columns.
pub fn table_type(columns: &[(&str, &str)]) -> PortType {
    PortType::Table(TableSchema::with_columns(columns.iter().map(|(n, t)| Column::new(*n, *t)).collect()))
}

/// At plan time, the type of an [`extend`]ed input: its columns (unknown when the input's are)
/// and the (name, Arrow type) columns `added`.
pub fn extended_type<'a>(
    input: Option<&[Column]>,
    added: impl IntoIterator<Item = &'a (&'a str, &'a str)>,
) -> PortType {
    PortType::Table(input.map_or_else(TableSchema::default, |c| {
        let mut columns = c.to_vec();
        columns.extend(added.into_iter().map(|(n, t)| Column::new(*n, *t)));
        TableSchema::with_columns(columns)
    }))
}

/// Errors when an input already has one of the columns an op adds.
pub fn check_no_clash(columns: Option<&[Column]>, added: &[(&str, &str)]) -> Result<(), CheckError> {
    let Some(columns) = columns else { return Ok(()) };
    match added.iter().find(|(n, _)| columns.iter().any(|c| c.name == *n)) {
        Some((name, _)) => {
            Err(CheckError::input("table", format!("the input already has a column `{name}`, which this op adds"))
                .about_column("table", name)
                .help("rename it with a `select` stage before this one"))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_must_read_existing_columns() {
        let cols = vec![Column::new("instruction", "Utf8"), Column::new("input", "Utf8")];
        assert!(
            Template::check("Do: {{ instruction }}{% if input %}\n{{ input }}{% endif %}", "template", Some(&cols))
                .is_ok()
        );
        let err = Template::check("Do: {{ instruction }} {{ inptu }}", "template", Some(&cols)).err().unwrap();
        assert_eq!(err.message, "the template reads `inptu`, which is not a column of the input");
        assert!(err.help.unwrap().contains("did you mean `input`?"));
        let err = Template::check("{% if x %}", "template", None).err().unwrap();
        assert!(err.message.contains("does not parse (line 1"), "{}", err.message);
        // Unknown columns at plan time: checked when rendering instead.
        let t = Template::check("{{ nope }}", "template", None).unwrap();
        assert!(t.render(&serde_json::Map::new()).is_err());
    }
}
