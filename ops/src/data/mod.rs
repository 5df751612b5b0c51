//! Table ops: read, filter, reshape and combine tables; and the few lines they share that no
//! other family needs.

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{Schema, SchemaRef};
use drover_engine::{Column, OpError, PortType, TableSchema};

use crate::kit::table;

pub mod concat;
pub mod dedup;
pub mod read_table;
pub mod rouge_dedup;
pub mod sample;
pub mod select;

/// The type of a table with the input's columns, or of any table while those are unknown.
fn table_of(columns: Option<&[Column]>) -> PortType {
    PortType::Table(columns.map_or_else(TableSchema::default, |c| TableSchema::with_columns(c.to_vec())))
}

/// The names of a table's columns as known at plan time.
fn column_names(columns: &[Column]) -> Vec<&str> {
    columns.iter().map(|c| c.name.as_str()).collect()
}

/// The names of a table's columns as read at run time.
fn field_names(schema: &Schema) -> Vec<&str> {
    schema.fields().iter().map(|f| f.name().as_str()).collect()
}

/// Reads a table input as one batch, for ops that compare rows across the whole table; an
/// error says `failing` (such as "cannot dedup") first.
fn read_whole(path: &Path, failing: &str) -> Result<(SchemaRef, RecordBatch), OpError> {
    let (schema, batches) = table::read_input(path)?;
    let all = concat_batches(&schema, &batches).map_err(|e| OpError::failed(format!("{failing}: {e}")))?;
    Ok((schema, all))
}
