//! Table I/O shared by the ops and the CLI: reading csv, jsonl and parquet, writing
//! deterministic parquet, exporting and previewing, and the small helpers that table ops
//! share (column lookups with "did you mean" hints, running CPU work off the async runtime).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use drover_engine::{CheckCx, CheckError, Column, OpError, PortType, TableSchema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

/// Records read to infer a csv or jsonl schema at plan time ([`read_schema`]).
pub const SCHEMA_SAMPLE_RECORDS: usize = 1000;

/// Rows per batch handed to the parquet writer. Fixed so that the bytes written depend on
/// the data alone, never on how the caller happened to split it into batches.
const WRITE_CHUNK_ROWS: usize = 8192;

/// Rows per parquet row group.
const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Written into every parquet footer instead of the parquet crate's version, so that
/// upgrading the crate does not change the bytes of an unchanged table.
const CREATED_BY: &str = "drover table v1";

/// A file format drover reads tables from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// Comma separated, with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl TableFormat {
    /// The format a file's extension names (`.csv`; `.jsonl`, `.ndjson`, `.json`; `.parquet`,
    /// `.pq`), case-insensitively; `None` when the extension says nothing.
    pub fn from_extension(path: &Path) -> Option<TableFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(TableFormat::Csv),
            "jsonl" | "ndjson" | "json" => Some(TableFormat::Jsonl),
            "parquet" | "pq" => Some(TableFormat::Parquet),
            _ => None,
        }
    }

    /// The format a file's content suggests: `PAR1` magic is parquet, a first non-blank `{`
    /// is jsonl, anything else is csv.
    pub fn sniff(path: &Path) -> Result<TableFormat, OpError> {
        let head = read_head(path)?;
        if head.starts_with(b"PAR1") {
            Ok(TableFormat::Parquet)
        } else if first_non_blank(&head) == Some(b'{') {
            Ok(TableFormat::Jsonl)
        } else {
            Ok(TableFormat::Csv)
        }
    }

    /// The format to read `path` with: `given`, else the extension's, else the content's.
    pub fn resolve(path: &Path, given: Option<TableFormat>) -> Result<TableFormat, OpError> {
        match given.or_else(|| TableFormat::from_extension(path)) {
            Some(format) => Ok(format),
            None => TableFormat::sniff(path),
        }
    }

    /// The name used in params and messages (`csv`, `jsonl`, `parquet`).
    pub fn name(self) -> &'static str {
        match self {
            TableFormat::Csv => "csv",
            TableFormat::Jsonl => "jsonl",
            TableFormat::Parquet => "parquet",
        }
    }
}

/// Reads a whole table. A csv or jsonl schema is inferred from every record, so that a
/// late float in an integer-looking column widens the type instead of failing the read.
pub fn read_table_file(path: &Path, format: Option<TableFormat>) -> Result<(SchemaRef, Vec<RecordBatch>), OpError> {
    let format = TableFormat::resolve(path, format)?;
    let failed = |e: ArrowError| arrow_error(path, format, e);
    match format {
        TableFormat::Csv => {
            let schema = infer_csv_schema(path, None)?;
            let reader = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_header(true)
                .build(BufReader::new(open(path)?))
                .map_err(failed)?;
            let batches = reader.collect::<Result<Vec<_>, _>>().map_err(failed)?;
            Ok((schema, batches))
        }
        TableFormat::Jsonl => {
            let schema = infer_jsonl_schema(path, None)?;
            let reader =
                arrow::json::ReaderBuilder::new(schema.clone()).build(BufReader::new(open(path)?)).map_err(failed)?;
            let batches = reader.collect::<Result<Vec<_>, _>>().map_err(failed)?;
            Ok((schema, batches))
        }
        TableFormat::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(|e| parquet_error(path, e))?;
            let schema = builder.schema().clone();
            let reader = builder.build().map_err(|e| parquet_error(path, e))?;
            let batches = reader.collect::<Result<Vec<_>, _>>().map_err(failed)?;
            Ok((schema, batches))
        }
    }
}

/// Reads only a table's schema, cheaply: the parquet footer, or the first
/// [`SCHEMA_SAMPLE_RECORDS`] records of a csv or jsonl file.
pub fn read_schema(path: &Path, format: Option<TableFormat>) -> Result<SchemaRef, OpError> {
    match TableFormat::resolve(path, format)? {
        TableFormat::Csv => infer_csv_schema(path, Some(SCHEMA_SAMPLE_RECORDS)),
        TableFormat::Jsonl => infer_jsonl_schema(path, Some(SCHEMA_SAMPLE_RECORDS)),
        TableFormat::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(|e| parquet_error(path, e))?;
            Ok(builder.schema().clone())
        }
    }
}

fn infer_csv_schema(path: &Path, max_records: Option<usize>) -> Result<SchemaRef, OpError> {
    let (schema, _) = arrow::csv::reader::Format::default()
        .with_header(true)
        .infer_schema(BufReader::new(open(path)?), max_records)
        .map_err(|e| arrow_error(path, TableFormat::Csv, e))?;
    Ok(SchemaRef::new(schema))
}

fn infer_jsonl_schema(path: &Path, max_records: Option<usize>) -> Result<SchemaRef, OpError> {
    // A JSON array is the one mistake worth its own message: arrow's is cryptic.
    if first_non_blank(&read_head(path)?) == Some(b'[') {
        return Err(OpError::failed(format!(
            "cannot read {} as jsonl: it holds a JSON array; write one object per line",
            path.display()
        )));
    }
    let (schema, _) = arrow::json::reader::infer_json_schema(BufReader::new(open(path)?), max_records)
        .map_err(|e| arrow_error(path, TableFormat::Jsonl, e))?;
    Ok(SchemaRef::new(schema))
}

/// The first few KiB of a file, enough to tell formats apart.
fn read_head(path: &Path) -> Result<Vec<u8>, OpError> {
    let mut head = Vec::with_capacity(4096);
    open(path)?
        .take(4096)
        .read_to_end(&mut head)
        .map_err(|e| OpError::io(format!("cannot read {}", path.display()), e))?;
    Ok(head)
}

fn first_non_blank(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// The writer settings of every table drover stores. Each one is spelled out, so that a
/// change of the parquet crate's defaults cannot change the bytes of an unchanged table.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_created_by(CREATED_BY.to_string())
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(true)
        .set_dictionary_page_size_limit(1024 * 1024)
        .set_data_page_size_limit(1024 * 1024)
        .set_data_page_row_count_limit(20_000)
        .set_write_batch_size(1024)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(None)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_write_page_header_statistics(false)
        .set_statistics_truncate_length(Some(64))
        .set_column_index_truncate_length(Some(64))
        .set_offset_index_disabled(false)
        .set_bloom_filter_enabled(false)
        .set_content_defined_chunking(None)
        .set_key_value_metadata(None)
        .set_sorting_columns(None)
        .build()
}

/// Writes a table as parquet at `path`, deterministically: the same schema and rows give
/// byte-identical files, however the rows are split into batches. Snappy compressed; an
/// empty table is written with its schema and no rows.
pub fn write_parquet(path: &Path, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(), OpError> {
    let file = File::create(path).map_err(|e| OpError::io(format!("cannot create {}", path.display()), e))?;
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(writer_properties())).map_err(|e| parquet_error(path, e))?;
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    let mut flush = |pending: &mut Vec<RecordBatch>| -> Result<(), OpError> {
        let chunk = match pending.as_slice() {
            [one] => one.clone(),
            many => concat_batches(schema, many.iter())
                .map_err(|e| OpError::failed(format!("cannot write {}: {e}", path.display())))?,
        };
        pending.clear();
        writer.write(&chunk).map_err(|e| parquet_error(path, e))
    };
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (WRITE_CHUNK_ROWS - pending_rows).min(batch.num_rows() - offset);
            pending.push(batch.slice(offset, take));
            pending_rows += take;
            offset += take;
            if pending_rows == WRITE_CHUNK_ROWS {
                flush(&mut pending)?;
                pending_rows = 0;
            }
        }
    }
    if pending_rows > 0 {
        flush(&mut pending)?;
    }
    writer.close().map_err(|e| parquet_error(path, e))?;
    Ok(())
}

/// The format a table is exported as: from `dest`'s extension.
pub fn export_format(dest: &Path) -> Result<TableFormat, OpError> {
    TableFormat::from_extension(dest).ok_or_else(|| {
        OpError::failed(format!(
            "cannot export to {}: unknown extension; use .csv, .jsonl (or .ndjson, .json) \
             or .parquet (or .pq)",
            dest.display()
        ))
    })
}

/// Writes a stored parquet table to `dest` as csv (with a header), jsonl or parquet, by
/// `dest`'s extension.
pub fn export_table(src_parquet: &Path, dest: &Path) -> Result<(), OpError> {
    let format = export_format(dest)?;
    if format == TableFormat::Parquet {
        // Stored tables are already written the one deterministic way.
        return std::fs::copy(src_parquet, dest).map(drop).map_err(|e| {
            let context = format!("cannot copy {} to {}", src_parquet.display(), dest.display());
            OpError::io(context, e)
        });
    }
    let file = File::create(dest).map_err(|e| OpError::io(format!("cannot create {}", dest.display()), e))?;
    write_table_as(src_parquet, format, file, dest)
}

/// Writes a stored parquet table to `out` as `format` (csv with a header, jsonl or parquet);
/// errors name `dest`, the file the bytes are for.
pub fn write_table_as(src_parquet: &Path, format: TableFormat, out: impl Write, dest: &Path) -> Result<(), OpError> {
    let mut out = BufWriter::new(out);
    let written = |e: std::io::Error| OpError::io(format!("cannot write {}", dest.display()), e);
    if format == TableFormat::Parquet {
        // Stored tables are already written the one deterministic way.
        std::io::copy(&mut open(src_parquet)?, &mut out).map_err(written)?;
        return out.flush().map_err(written);
    }
    let (schema, mut batches) = read_table_file(src_parquet, Some(TableFormat::Parquet))?;
    if batches.is_empty() {
        // The csv writer writes its header with the first batch, even an empty one.
        batches.push(RecordBatch::new_empty(schema));
    }
    let failed = |e: ArrowError| arrow_error(dest, format, e);
    if format == TableFormat::Csv {
        let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
        for batch in &batches {
            writer.write(batch).map_err(failed)?;
        }
    } else {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
        for batch in &batches {
            writer.write(batch).map_err(failed)?;
        }
        writer.finish().map_err(failed)?;
    }
    out.flush().map_err(written)
}

/// The first `rows` rows of a table, pretty-printed, then a line `N rows x M columns`.
pub fn preview(path: &Path, rows: usize) -> Result<String, OpError> {
    let format = TableFormat::resolve(path, None)?;
    let (schema, batches, total) = if format == TableFormat::Parquet {
        // Only the rows shown are decoded; the count comes from the footer.
        let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(|e| parquet_error(path, e))?;
        let total = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let schema = builder.schema().clone();
        let reader = builder.with_limit(rows).build().map_err(|e| parquet_error(path, e))?;
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| arrow_error(path, format, e))?;
        (schema, batches, total)
    } else {
        let (schema, batches) = read_table_file(path, Some(format))?;
        let total = batches.iter().map(RecordBatch::num_rows).sum();
        (schema, batches, total)
    };
    let mut shown = Vec::new();
    let mut left = rows;
    for batch in &batches {
        if left == 0 {
            break;
        }
        let take = left.min(batch.num_rows());
        shown.push(batch.slice(0, take));
        left -= take;
    }
    let table = arrow::util::pretty::pretty_format_batches_with_schema(schema.clone(), &shown)
        .map_err(|e| arrow_error(path, format, e))?;
    let columns = schema.fields().len();
    Ok(format!("{table}\n{} x {}\n", plural(total, "row"), plural(columns, "column")))
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// An arrow schema as the engine's plan-time [`TableSchema`].
pub fn table_schema(schema: &Schema) -> TableSchema {
    TableSchema::with_columns(
        schema.fields().iter().map(|f| Column::new(f.name(), format!("{}", f.data_type()))).collect(),
    )
}

/// The known columns of a table input at plan time; `Ok(None)` when they are only known at
/// run time, an error when the port carries something other than a table.
pub fn input_columns<'a>(cx: &'a CheckCx<'_>, port: &str) -> Result<Option<&'a [Column]>, CheckError> {
    match cx.inputs.get(port) {
        Some(PortType::Table(schema)) => Ok(schema.columns.as_deref()),
        Some(other) => Err(CheckError::input(port, format!("expected a table, got {other}"))),
        None => Err(CheckError::stage(format!("input `{port}` is not connected"))),
    }
}

/// The error for a column name that is not in the table on input `port`, with the nearest name
/// as help.
pub fn unknown_column(port: &str, at: &[&str], name: &str, available: &[&str]) -> CheckError {
    let err = CheckError::param(at, format!("unknown column `{name}`")).about_column(port, name);
    match drover_engine::diag::nearest(name, available.iter().copied()) {
        Some(near) => err.help(format!("did you mean `{near}`?")),
        None if available.is_empty() => err.help("the table has no columns"),
        None => err.help(format!("the columns are: {}", available.join(", "))),
    }
}

/// The error when column `name` of input `port` is missing or is not text, if it is. `param`
/// names the param that chose the column (the error points at it), or `None` when the op needs
/// that column by name (the error points at the input).
pub fn check_text_column(
    port: &str,
    param: Option<&str>,
    name: &str,
    columns: Option<&[Column]>,
) -> Option<CheckError> {
    let columns = columns?;
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let Some(c) = columns.iter().find(|c| c.name == name) else {
        return Some(match param {
            Some(param) => unknown_column(port, &[param], name, &names),
            None => CheckError::input(port, format!("`{port}` has no column `{name}`"))
                .about_column(port, name)
                .help(format!("its columns are: {}; rename one with a `select` stage", names.join(", "))),
        });
    };
    if matches!(c.dtype.as_str(), "Utf8" | "LargeUtf8" | "Utf8View") {
        return None;
    }
    let message = format!("column `{name}` of `{port}` is {}, not text", c.dtype);
    let err = match param {
        Some(param) => CheckError::param(&[param], message),
        None => CheckError::input(port, message),
    };
    Some(err.about_column(port, name).help("this op reads text: choose or cast a text column"))
}

/// The metrics a stored table holds, as a stage's `metrics:` names them (see
/// `drover_engine::metrics`): without `key`, the named columns (default: every numeric column)
/// of the last row, as (`COLUMN`, value); with `key`, every row's, as (`KEYVALUE.COLUMN`,
/// value). Nulls, NaNs and infinities are left out (a record holds finite numbers only); an
/// empty table has none. Errors name the column and say why.
pub fn metric_values(path: &Path, key: Option<&str>, columns: &[String]) -> Result<Vec<(String, f64)>, String> {
    use arrow::array::{Array, Float64Array};
    use arrow::datatypes::DataType;
    let (schema, batches) = read_input(path).map_err(|e| e.message)?;
    let batch = concat_batches(&schema, &batches).map_err(|e| e.to_string())?;
    let numeric = |t: &DataType| t.is_numeric();
    let names: Vec<String> = match columns.is_empty() {
        true => schema
            .fields()
            .iter()
            .filter(|f| numeric(f.data_type()) && Some(f.name().as_str()) != key)
            .map(|f| f.name().clone())
            .collect(),
        false => columns.to_vec(),
    };
    let column = |name: &str| {
        batch.column_by_name(name).cloned().ok_or_else(|| {
            let all: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            format!("the table has no column `{name}` (columns: {})", all.join(", "))
        })
    };
    let values: Vec<(String, Float64Array)> = names
        .iter()
        .map(|name| {
            let col = column(name)?;
            if !numeric(col.data_type()) {
                return Err(format!("column `{name}` holds {}, not numbers", col.data_type()));
            }
            let cast = arrow::compute::cast(&col, &DataType::Float64).map_err(|e| format!("column `{name}`: {e}"))?;
            let floats = cast.as_any().downcast_ref::<Float64Array>().cloned().expect("cast to Float64");
            Ok((name.clone(), floats))
        })
        .collect::<Result<_, String>>()?;
    let finite = |a: &Float64Array, row: usize| (a.is_valid(row) && a.value(row).is_finite()).then(|| a.value(row));
    let mut out = Vec::new();
    match key {
        None => {
            if let Some(last) = batch.num_rows().checked_sub(1) {
                out.extend(values.iter().filter_map(|(name, a)| Some((name.clone(), finite(a, last)?))));
            }
        }
        Some(key) => {
            let keys =
                arrow::compute::cast(&column(key)?, &DataType::Utf8).map_err(|e| format!("column `{key}`: {e}"))?;
            let keys = keys.as_any().downcast_ref::<arrow::array::StringArray>().cloned().expect("cast to Utf8");
            for row in 0..batch.num_rows() {
                if keys.is_null(row) {
                    continue;
                }
                for (name, a) in &values {
                    if let Some(v) = finite(a, row) {
                        out.push((format!("{}.{name}", keys.value(row)), v));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Reads a table input that the engine materialised as parquet.
pub fn read_input(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>), OpError> {
    read_table_file(path, Some(TableFormat::Parquet))
}

fn open(path: &Path) -> Result<File, OpError> {
    File::open(path).map_err(|e| OpError::io(format!("cannot open {}", path.display()), e))
}

fn arrow_error(path: &Path, format: TableFormat, e: ArrowError) -> OpError {
    let context = format!("{} ({})", path.display(), format.name());
    match e {
        ArrowError::IoError(msg, err) => OpError::io(format!("{context}: {msg}"), err),
        other => OpError::failed(format!("{context}: {other}")),
    }
}

fn parquet_error(path: &Path, e: ParquetError) -> OpError {
    let context = format!("{} (parquet)", path.display());
    match e {
        ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
            Ok(io) => OpError::io(context, *io),
            Err(other) => OpError::failed(format!("{context}: {other}")),
        },
        other => OpError::failed(format!("{context}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    use super::*;
    use crate::kit::testing::{batch, column, names};

    fn people() -> RecordBatch {
        batch(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            ("name", Arc::new(StringArray::from(vec![Some("ann"), None, Some("cy")]))),
            ("score", Arc::new(Float64Array::from(vec![0.5, 1.25, -2.0]))),
            ("ok", Arc::new(BooleanArray::from(vec![true, false, true]))),
        ])
    }

    fn read_one(path: &Path, format: Option<TableFormat>) -> RecordBatch {
        let (schema, batches) = read_table_file(path, format).unwrap();
        concat_batches(&schema, &batches).unwrap()
    }

    #[test]
    fn metrics_are_the_last_row_or_one_per_keyed_row() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("t.parquet");
        let b = people();
        write_parquet(&path, &b.schema(), std::slice::from_ref(&b)).unwrap();
        // The last row's numeric columns: id and score (not the text or the booleans).
        assert_eq!(metric_values(&path, None, &[]).unwrap(), [("id".to_string(), 3.0), ("score".to_string(), -2.0)]);
        assert_eq!(metric_values(&path, None, &["score".into()]).unwrap(), [("score".to_string(), -2.0)]);
        // Keyed by `name`: the row whose key is null gives none.
        assert_eq!(
            metric_values(&path, Some("name"), &["score".into()]).unwrap(),
            [("ann.score".to_string(), 0.5), ("cy.score".to_string(), -2.0)]
        );
        // Keyed by a number: every numeric column but the key.
        assert_eq!(
            metric_values(&path, Some("id"), &[]).unwrap(),
            [("1.score".to_string(), 0.5), ("2.score".to_string(), 1.25), ("3.score".to_string(), -2.0)]
        );
        assert_eq!(
            metric_values(&path, None, &["scor".into()]).unwrap_err(),
            "the table has no column `scor` (columns: id, name, score, ok)"
        );
        assert_eq!(metric_values(&path, None, &["name".into()]).unwrap_err(), "column `name` holds Utf8, not numbers");
    }

    #[test]
    fn csv_is_read_with_inferred_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "id,name,score\n1,ann,0.5\n2,bob,1\n3,,2.5\n").unwrap();
        let t = read_one(&path, None);
        assert_eq!(names(&t), ["id", "name", "score"]);
        assert_eq!(t.schema().field(0).data_type(), &DataType::Int64);
        assert_eq!(t.schema().field(1).data_type(), &DataType::Utf8);
        assert_eq!(t.schema().field(2).data_type(), &DataType::Float64);
        assert_eq!(column(&t, "id"), ["1", "2", "3"]);
        assert_eq!(column(&t, "name"), ["ann", "bob", "null"]);
        assert_eq!(column(&t, "score"), ["0.5", "1.0", "2.5"]);
    }

    #[test]
    fn jsonl_is_read_with_inferred_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, "{\"a\": 1, \"b\": \"x\"}\n{\"a\": 2}\n\n{\"a\": 3, \"b\": \"z\"}\n").unwrap();
        let t = read_one(&path, None);
        assert_eq!(names(&t), ["a", "b"]);
        assert_eq!(t.schema().field(0).data_type(), &DataType::Int64);
        assert_eq!(column(&t, "a"), ["1", "2", "3"]);
        assert_eq!(column(&t, "b"), ["x", "null", "z"]);
    }

    #[test]
    fn a_json_array_gets_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, "  [{\"a\": 1}]").unwrap();
        let err = read_table_file(&path, None).unwrap_err();
        assert!(err.message.contains("one object per line"), "{}", err.message);
    }

    #[test]
    fn parquet_round_trips_every_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let t = people();
        write_parquet(&path, &t.schema(), std::slice::from_ref(&t)).unwrap();
        let back = read_one(&path, None);
        assert_eq!(back, t);
    }

    #[test]
    fn formats_are_sniffed_when_the_extension_says_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pq = dir.path().join("a.data");
        let t = people();
        write_parquet(&pq, &t.schema(), std::slice::from_ref(&t)).unwrap();
        let jsonl = dir.path().join("b.data");
        std::fs::write(&jsonl, "\n  {\"x\": 1}\n{\"x\": 2}\n").unwrap();
        let csv = dir.path().join("c");
        std::fs::write(&csv, "x,y\n1,2\n").unwrap();

        assert_eq!(TableFormat::sniff(&pq).unwrap(), TableFormat::Parquet);
        assert_eq!(TableFormat::sniff(&jsonl).unwrap(), TableFormat::Jsonl);
        assert_eq!(TableFormat::sniff(&csv).unwrap(), TableFormat::Csv);
        assert_eq!(read_one(&pq, None), t);
        assert_eq!(column(&read_one(&jsonl, None), "x"), ["1", "2"]);
        assert_eq!(column(&read_one(&csv, None), "y"), ["2"]);
    }

    #[test]
    fn extensions_name_formats() {
        let f = |p: &str| TableFormat::from_extension(Path::new(p));
        assert_eq!(f("a.csv"), Some(TableFormat::Csv));
        assert_eq!(f("a.CSV"), Some(TableFormat::Csv));
        assert_eq!(f("a.jsonl"), Some(TableFormat::Jsonl));
        assert_eq!(f("a.ndjson"), Some(TableFormat::Jsonl));
        assert_eq!(f("a.json"), Some(TableFormat::Jsonl));
        assert_eq!(f("a.parquet"), Some(TableFormat::Parquet));
        assert_eq!(f("a.pq"), Some(TableFormat::Parquet));
        assert_eq!(f("a.txt"), None);
        assert_eq!(f("a"), None);
    }

    #[test]
    fn an_explicit_format_wins_over_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "{\"a\": 7}\n").unwrap();
        assert_eq!(column(&read_one(&path, Some(TableFormat::Jsonl)), "a"), ["7"]);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = read_table_file(Path::new("/nonexistent/t.csv"), None).unwrap_err();
        assert!(err.message.contains("/nonexistent/t.csv"), "{}", err.message);
    }

    #[test]
    fn bad_csv_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, "a,b\n1,2\n3\n").unwrap();
        let err = read_table_file(&path, None).unwrap_err();
        assert_eq!(err.kind, drover_engine::OpErrorKind::Failed);
        assert!(err.message.contains("bad.csv"), "{}", err.message);
    }

    #[test]
    fn read_schema_reads_the_parquet_footer_and_a_csv_sample() {
        let dir = tempfile::tempdir().unwrap();
        let pq = dir.path().join("t.parquet");
        let t = people();
        write_parquet(&pq, &t.schema(), std::slice::from_ref(&t)).unwrap();
        assert_eq!(read_schema(&pq, None).unwrap(), t.schema());

        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, "a,b\n1,x\n").unwrap();
        let schema = read_schema(&csv, None).unwrap();
        assert_eq!(
            table_schema(&schema),
            TableSchema::with_columns(vec![Column::new("a", "Int64"), Column::new("b", "Utf8")])
        );
    }

    #[test]
    fn write_parquet_is_byte_deterministic_whatever_the_batching() {
        let dir = tempfile::tempdir().unwrap();
        let t = people();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        write_parquet(&a, &t.schema(), std::slice::from_ref(&t)).unwrap();
        write_parquet(&b, &t.schema(), std::slice::from_ref(&t)).unwrap();
        write_parquet(&c, &t.schema(), &[t.slice(0, 1), t.slice(1, 0), t.slice(1, 2)]).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());
        assert_eq!(bytes, std::fs::read(&c).unwrap());
        assert!(bytes.windows(CREATED_BY.len()).any(|w| w == CREATED_BY.as_bytes()));
    }

    #[test]
    fn write_parquet_chunks_large_tables_the_same_way_however_split() {
        // Big enough that page boundaries would follow the caller's batches if they could.
        let dir = tempfile::tempdir().unwrap();
        let n = 300_000i64;
        let t = batch(vec![("x", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef)]);
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_parquet(&a, &t.schema(), std::slice::from_ref(&t)).unwrap();
        let pieces = [t.slice(0, 7), t.slice(7, 9000), t.slice(9007, 290_993)];
        write_parquet(&b, &t.schema(), &pieces).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(read_one(&b, None), t);
    }

    #[test]
    fn an_empty_table_keeps_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.parquet");
        let schema = SchemaRef::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        write_parquet(&path, &schema, &[]).unwrap();
        let (back, batches) = read_table_file(&path, None).unwrap();
        assert_eq!(back, schema);
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
    }

    #[test]
    fn export_writes_csv_jsonl_and_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.parquet");
        let t = batch(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("name", Arc::new(StringArray::from(vec![Some("ann"), None]))),
        ]);
        write_parquet(&src, &t.schema(), std::slice::from_ref(&t)).unwrap();

        let csv = dir.path().join("out.csv");
        export_table(&src, &csv).unwrap();
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), "id,name\n1,ann\n2,\n");

        let jsonl = dir.path().join("out.jsonl");
        export_table(&src, &jsonl).unwrap();
        assert_eq!(std::fs::read_to_string(&jsonl).unwrap(), "{\"id\":1,\"name\":\"ann\"}\n{\"id\":2}\n");

        let pq = dir.path().join("out.pq");
        export_table(&src, &pq).unwrap();
        assert_eq!(read_one(&pq, None), t);
    }

    #[test]
    fn csv_and_jsonl_round_trip_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let stored = dir.path().join("stored.parquet");
        for (name, text) in [
            ("t.csv", "id,name,score\n1,ann,0.5\n2,,1.25\n"),
            ("t.jsonl", "{\"a\":1,\"b\":\"x\"}\n{\"a\":2}\n{\"a\":3,\"b\":\"z\"}\n"),
        ] {
            let original = dir.path().join(name);
            std::fs::write(&original, text).unwrap();
            let (schema, batches) = read_table_file(&original, None).unwrap();
            write_parquet(&stored, &schema, &batches).unwrap();
            let exported = dir.path().join(format!("back-{name}"));
            export_table(&stored, &exported).unwrap();
            assert_eq!(std::fs::read_to_string(&exported).unwrap(), text);
        }
    }

    #[test]
    fn export_of_an_empty_table_to_csv_writes_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.parquet");
        let schema = SchemaRef::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        write_parquet(&src, &schema, &[]).unwrap();
        let csv = dir.path().join("out.csv");
        export_table(&src, &csv).unwrap();
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), "a,b\n");
    }

    #[test]
    fn export_to_an_unknown_extension_lists_the_valid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.parquet");
        let t = people();
        write_parquet(&src, &t.schema(), std::slice::from_ref(&t)).unwrap();
        let err = export_table(&src, &dir.path().join("out.xlsx")).unwrap_err();
        assert!(err.message.contains("out.xlsx"), "{}", err.message);
        for ext in [".csv", ".jsonl", ".parquet"] {
            assert!(err.message.contains(ext), "{}", err.message);
        }
    }

    #[test]
    fn preview_shows_the_first_rows_and_the_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let t = batch(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            ("name", Arc::new(StringArray::from(vec!["ann", "bob", "cy"]))),
        ]);
        write_parquet(&path, &t.schema(), std::slice::from_ref(&t)).unwrap();
        let expected = "\
+----+------+
| id | name |
+----+------+
| 1  | ann  |
| 2  | bob  |
+----+------+
3 rows x 2 columns
";
        assert_eq!(preview(&path, 2).unwrap(), expected);
    }

    #[test]
    fn preview_of_a_csv_with_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "a\n5\n").unwrap();
        let expected = "\
+---+
| a |
+---+
| 5 |
+---+
1 row x 1 column
";
        assert_eq!(preview(&path, 10).unwrap(), expected);
    }

    #[test]
    fn table_schema_uses_arrow_type_names() {
        let schema = people().schema();
        assert_eq!(
            table_schema(&schema),
            TableSchema::with_columns(vec![
                Column::new("id", "Int64"),
                Column::new("name", "Utf8"),
                Column::new("score", "Float64"),
                Column::new("ok", "Boolean"),
            ])
        );
    }

    #[test]
    fn unknown_column_hints_the_nearest_or_lists_all() {
        let e = unknown_column("table", &["columns", "1"], "promt", &["prompt", "id"]);
        assert_eq!(e.message, "unknown column `promt`");
        assert_eq!(e.help.as_deref(), Some("did you mean `prompt`?"));
        let e = unknown_column("table", &["columns", "0"], "zzzzzz", &["prompt", "id"]);
        assert_eq!(e.help.as_deref(), Some("the columns are: prompt, id"));
    }
}
