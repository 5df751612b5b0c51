//! The `read_table` op: reads a csv, jsonl or parquet file (relative to the pipeline's
//! directory, or absolute) into a table.
//!
//! No inputs; one output, `out` (the table). The file is a dependency of the stage, so its
//! content enters the cache key. Deterministic: the same file gives the same table.
//! Plan time reads only the file's schema (a parquet footer, or the first records of a csv or
//! jsonl file); run time infers csv and jsonl types from the whole file.

use std::path::PathBuf;

use drover_engine::paths;
use drover_engine::{CheckCx, CheckError, CheckErrors, Checked, OpKit, PortType, Ports, RunCx, Work};
use serde::Deserialize;

use crate::kit::table::{self, TableFormat};

/// The `with:` block of a `read_table` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadTableParams {
    /// The file to read: relative to the pipeline file's directory, or absolute.
    pub path: String,
    /// The file's format. Default: from the extension (`.csv`; `.jsonl`, `.ndjson`, `.json`;
    /// `.parquet`, `.pq`), else from the content.
    #[serde(default)]
    pub format: Option<TableFormat>,
}

/// Reads a table from a file.
pub struct ReadTable;

impl OpKit for ReadTable {
    type Params = ReadTableParams;
    const NAME: &str = "read_table";
    const VERSION: u32 = 1;
    const DOC: &str = "Reads a csv, jsonl or parquet file into a table.";

    fn inputs() -> Ports {
        Ports::none()
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "The file's rows.")
    }

    fn check(&self, params: &ReadTableParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let file = paths::resolve(cx.pipeline_dir, &params.path);
        if !file.exists() {
            return Err(CheckError::param(&["path"], format!("file not found: {}", file.display()))
                .help(format!("a relative path is read from the pipeline's directory, {}", cx.pipeline_dir.display()))
                .into());
        }
        if !file.is_file() {
            return Err(CheckError::param(&["path"], format!("not a file: {}", file.display())).into());
        }
        let schema = table::read_schema(&file, params.format).map_err(|e| {
            CheckError::param(&["path"], e.message)
                .help("set `format:` (csv, jsonl or parquet) if the file's format was guessed wrong")
        })?;
        Ok(Checked {
            file_deps: vec![PathBuf::from(&params.path)],
            ..Checked::default().output("out", PortType::Table(table::table_schema(&schema)))
        })
    }

    fn run(&self, params: ReadTableParams, cx: RunCx) -> Work {
        Work::blocking(move || {
            let file = paths::resolve(&cx.pipeline_dir, &params.path);
            let (schema, batches) = table::read_table_file(&file, params.format)?;
            table::write_parquet(&cx.output("out")?.path, &schema, &batches)
        })
    }
}

#[cfg(test)]
mod tests {
    use drover_engine::{CheckLocation, Column, TableSchema};
    use serde_json::json;

    use super::*;
    use crate::kit::testing::{OpTest, column, first_error, names};

    #[test]
    fn reads_a_csv_relative_to_the_pipeline() {
        let t = OpTest::new(json!({"path": "data/t.csv"}));
        std::fs::create_dir(t.dir().join("data")).unwrap();
        std::fs::write(t.dir().join("data/t.csv"), "q,n\nhi,1\nyo,2\n").unwrap();

        let checked = t.check(&ReadTable).unwrap();
        assert_eq!(
            checked.outputs["out"],
            PortType::Table(TableSchema::with_columns(vec![Column::new("q", "Utf8"), Column::new("n", "Int64"),]))
        );
        assert_eq!(checked.file_deps, vec![PathBuf::from("data/t.csv")]);

        let out = t.run(&ReadTable).unwrap();
        assert_eq!(names(&out), ["q", "n"]);
        assert_eq!(column(&out, "q"), ["hi", "yo"]);
        assert_eq!(column(&out, "n"), ["1", "2"]);
    }

    #[test]
    fn reads_an_absolute_path_with_an_explicit_format() {
        let elsewhere = tempfile::tempdir().unwrap();
        let file = elsewhere.path().join("rows.txt");
        std::fs::write(&file, "{\"a\": true}\n{\"a\": false}\n").unwrap();
        let t = OpTest::new(json!({"path": file.to_str().unwrap(), "format": "jsonl"}));
        let out = t.run(&ReadTable).unwrap();
        assert_eq!(column(&out, "a"), ["true", "false"]);
    }

    #[test]
    fn a_missing_file_is_a_plan_error_on_path() {
        let t = OpTest::new(json!({"path": "nope.csv"}));
        let err = first_error(t.check(&ReadTable));
        let expected = format!("file not found: {}", t.dir().join("nope.csv").display());
        assert_eq!(err.message, expected);
        assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["path"]));
        assert!(err.help.is_some());
    }

    #[test]
    fn unknown_params_and_formats_are_rejected() {
        let t = OpTest::new(json!({"path": "a.csv", "sep": ";"}));
        assert!(first_error(t.check(&ReadTable)).message.contains("sep"));
        let t = OpTest::new(json!({"path": "a.csv", "format": "xlsx"}));
        assert!(first_error(t.check(&ReadTable)).message.contains("xlsx"));
        let t = OpTest::new(json!({}));
        assert!(first_error(t.check(&ReadTable)).message.contains("path"));
    }
}
