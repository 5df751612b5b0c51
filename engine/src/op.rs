//! The `Op` trait: what every op declares (ports, params, version) and how it runs.
//!
//! The engine knows this trait and never a concrete op (as ripgrep's searcher knows only
//! `Matcher`). Ops are registered by the CLI into an [`OpRegistry`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A boxed future, so that `Op` stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The type of an artifact flowing along an edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortType {
    /// A table, stored as Parquet.
    Table(TableSchema),
    /// An opaque file.
    Blob,
    /// A directory, stored as a manifest of content-addressed files.
    Dir,
    /// Every expansion of a matrix stage, as one input (`stage[*]`).
    List(Box<PortType>),
}

impl PortType {
    /// A table whose columns are not known before it is computed.
    pub fn any_table() -> PortType {
        PortType::Table(TableSchema::default())
    }

    /// The short name used in YAML (`table`, `blob`, `dir`, `list<table>`).
    pub fn kind_name(&self) -> String {
        match self {
            PortType::Table(_) => "table".into(),
            PortType::Blob => "blob".into(),
            PortType::Dir => "dir".into(),
            PortType::List(inner) => format!("list<{}>", inner.kind_name()),
        }
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortType::Table(TableSchema { columns: Some(cols) }) => {
                write!(f, "table(")?;
                for (i, c) in cols.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}: {}", c.name, c.dtype)?;
                }
                write!(f, ")")
            }
            other => f.write_str(&other.kind_name()),
        }
    }
}

/// Columns of a table, when known at plan time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableSchema {
    /// `None`: the columns are only known once the table exists.
    pub columns: Option<Vec<Column>>,
}

impl TableSchema {
    /// A schema with these columns.
    pub fn with_columns(columns: Vec<Column>) -> TableSchema {
        TableSchema { columns: Some(columns) }
    }

    /// The column of this name, when the schema is known.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.as_ref()?.iter().find(|c| c.name == name)
    }
}

/// One column: a name and an Arrow type name as Arrow prints it (`Utf8`, `Int64`, `Float64`),
/// or `any` in a requirement that accepts every type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    pub dtype: String,
}

impl Column {
    pub fn new(name: impl Into<String>, dtype: impl Into<String>) -> Column {
        Column { name: name.into(), dtype: dtype.into() }
    }
}

/// A port as an op declares it.
#[derive(Clone, Debug, Serialize)]
pub struct PortDecl {
    pub name: &'static str,
    /// For an input: what it accepts (a table's columns are the required ones, `any` dtype
    /// matches every type). For an output: what it produces.
    pub ty: PortType,
    pub doc: &'static str,
    pub optional: bool,
}

/// The ports on one side of an op.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ports {
    /// Exactly these ports.
    Fixed(Vec<PortDecl>),
    /// Any port names, declared by the stage (the `command` op); the string documents them.
    Declared(&'static str),
}

/// What an op says about itself; `drover ops` and `drover schema` print it.
#[derive(Clone, Debug, Serialize)]
pub struct OpInfo {
    pub name: &'static str,
    /// Bumped whenever the output could change for the same inputs. Enters every key.
    pub version: u32,
    pub doc: &'static str,
    pub inputs: Ports,
    pub outputs: Ports,
    /// JSON Schema of the `with:` block.
    pub params: serde_json::Value,
    /// Same inputs, params and seed always give the same output bytes.
    pub deterministic: bool,
    /// The op renders `${in.*}` and `${out.*}` in its params itself, at run time (`command`):
    /// the planner leaves those references, and `$${` escapes, for it.
    #[serde(skip)]
    pub templated_params: bool,
}

/// A problem an op finds at plan time. The engine attaches the YAML location.
#[derive(Clone, Debug)]
pub struct CheckError {
    pub message: String,
    pub at: CheckLocation,
    pub help: Option<String>,
    /// What the problem is about, when the planner knows more about it than the op does (which
    /// stage a table came from, and its columns): the planner's help comes from this, never from
    /// the words of `message`. Boxed: errors travel in `Result`s, and most have none.
    pub subject: Option<Box<CheckSubject>>,
}

/// Where in the stage a [`CheckError`] points.
#[derive(Clone, Debug)]
pub enum CheckLocation {
    /// The stage as a whole.
    Stage,
    /// A param, by path inside `with:` (e.g. `["columns", "1"]`).
    Param(Vec<String>),
    /// A param's name rather than its value (an unknown param).
    ParamKey(Vec<String>),
    /// An input port (points at its `in:` entry).
    Input(String),
    /// An output port (points at its `out:` entry).
    Output(String),
    /// A top-level section of the pipeline (one a part outside the engine declared, such as
    /// `llms:`): its name, then a path inside it.
    Section(String, Vec<String>),
}

/// What a [`CheckError`] is about, as distinct from where it points: a param can name a column
/// that is missing from an input's table. The planner adds the table's origin and columns to the
/// error's help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckSubject {
    /// Column `column` of the table on input `port`: missing, of the wrong type, or clashing
    /// with a column the op adds.
    Column { port: String, column: String },
    /// Which columns of the table on input `port` to use (none chosen, one chosen twice, a
    /// param that must name one is missing).
    Columns { port: String },
}

impl CheckError {
    fn new(at: CheckLocation, message: impl Into<String>) -> CheckError {
        CheckError { message: message.into(), at, help: None, subject: None }
    }
    pub fn stage(message: impl Into<String>) -> CheckError {
        CheckError::new(CheckLocation::Stage, message)
    }
    pub fn param(path: &[&str], message: impl Into<String>) -> CheckError {
        CheckError::new(CheckLocation::Param(path.iter().map(|s| s.to_string()).collect()), message)
    }
    pub fn input(port: &str, message: impl Into<String>) -> CheckError {
        CheckError::new(CheckLocation::Input(port.into()), message)
    }
    /// A problem inside a top-level section (`section("llms", &["default", "model"], ..)`).
    pub fn section(name: &str, path: &[&str], message: impl Into<String>) -> CheckError {
        CheckError::new(CheckLocation::Section(name.to_string(), path.iter().map(|s| s.to_string()).collect()), message)
    }
    pub fn help(mut self, help: impl Into<String>) -> CheckError {
        self.help = Some(help.into());
        self
    }
    /// The error is about column `column` of the table on input `port` (see [`CheckSubject`]).
    pub fn about_column(mut self, port: &str, column: &str) -> CheckError {
        self.subject = Some(Box::new(CheckSubject::Column { port: port.into(), column: column.into() }));
        self
    }
    /// The error is about which columns of the table on input `port` to use.
    pub fn about_columns(mut self, port: &str) -> CheckError {
        self.subject = Some(Box::new(CheckSubject::Columns { port: port.into() }));
        self
    }
    /// The input port whose table this error is about, if any.
    pub fn subject_port(&self) -> Option<&str> {
        match self.subject.as_deref()? {
            CheckSubject::Column { port, .. } | CheckSubject::Columns { port } => Some(port),
        }
    }
}

/// What an op learns about a stage at plan time.
pub struct CheckCx<'a> {
    pub stage: &'a str,
    /// The `with:` block, interpolated.
    pub params: &'a serde_json::Value,
    /// Types of the connected inputs, by port.
    pub inputs: &'a BTreeMap<String, PortType>,
    /// The stage's `out:` block (used by ops with declared ports).
    pub declared_outputs: &'a BTreeMap<String, PortType>,
    pub pipeline_dir: &'a Path,
    /// The pipeline's top-level sections declared by parts outside the engine (`llms:`), by
    /// name, overrides applied; see [`CheckCx::section`].
    pub sections: &'a BTreeMap<String, serde_json::Value>,
}

impl CheckCx<'_> {
    /// Deserialises the `with:` block, turning a serde error into a located [`CheckError`].
    pub fn params<P: DeserializeOwned>(&self) -> Result<P, CheckError> {
        parse_params(self.params)
    }
}

/// Deserialises params, with the path of the offending field in the error.
pub fn parse_params<P: DeserializeOwned>(value: &serde_json::Value) -> Result<P, CheckError> {
    serde_path_to_error::deserialize::<_, P>(value).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        explain_serde_error(&e.into_inner().to_string(), path)
    })
}

/// Turns serde's wording into the words `drover ops` uses, with a hint.
fn explain_serde_error(raw: &str, path: Vec<String>) -> CheckError {
    let field = path.last().cloned().unwrap_or_default();
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or("").to_string();
        // serde lists the valid names in backticks after "expected".
        let valid: Vec<&str> = raw.split("expected").nth(1).unwrap_or("").split('`').skip(1).step_by(2).collect();
        let help = crate::diag::did_you_mean(&name, valid.iter().copied())
            .unwrap_or_else(|| format!("params: {}", crate::diag::list_names(valid.iter().copied())));
        return CheckError::new(CheckLocation::ParamKey(path), format!("unknown param `{name}`")).help(help);
    }
    let words = [
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a mapping"),
    ];
    let mut message = raw.to_string();
    for (from, to) in words {
        if let Some(i) = message.find(from)
            && !message[i + from.len()..].starts_with(|c: char| c.is_alphanumeric())
        {
            message.replace_range(i..i + from.len(), to);
        }
    }
    let help = (!field.is_empty())
        .then(|| format!("fix the value of `{field}` (`drover ops` lists every param and its type)"));
    CheckError { help, ..CheckError::new(CheckLocation::Param(path), message) }
}

/// What an op's check returns: the types of its outputs and the files its result depends on.
#[derive(Clone, Debug, Default)]
pub struct Checked {
    pub outputs: BTreeMap<String, PortType>,
    /// Files (relative to the pipeline directory, or absolute) whose content enters the key,
    /// e.g. the file `read_table` reads.
    pub file_deps: Vec<PathBuf>,
    /// Files whose content enters the key under a name rather than their path, for files whose
    /// place differs between machines (a model in a user cache): `("llm default: gguf", path)`.
    pub named_deps: Vec<(String, PathBuf)>,
    /// What the op resolved from outside its params that decides its output (the model id of
    /// the endpoint a stage uses). Enters the key; endpoints and secrets must not.
    pub context: BTreeMap<String, serde_json::Value>,
}

/// One input artifact, materialised as a read-only path.
#[derive(Clone, Debug)]
pub struct InputItem {
    /// A file (table: a `.parquet` file; blob: the bytes) or a directory.
    pub path: PathBuf,
    pub ty: PortType,
    /// Content hash (hex blake3).
    pub hash: String,
    /// The upstream stage id.
    pub stage: String,
    /// The upstream stage's matrix values (empty when it has no matrix).
    pub matrix: BTreeMap<String, serde_json::Value>,
}

/// An input port's artifact(s).
#[derive(Clone, Debug)]
pub enum Input {
    One(InputItem),
    /// `stage[*]`: every expansion, in matrix order.
    List(Vec<InputItem>),
}

impl Input {
    /// Every item (one for a single input).
    pub fn items(&self) -> &[InputItem] {
        match self {
            Input::One(item) => std::slice::from_ref(item),
            Input::List(items) => items,
        }
    }
}

/// Where an op writes one output. Tables must be written as Parquet files at `path`.
#[derive(Clone, Debug)]
pub struct OutputSlot {
    pub path: PathBuf,
    pub ty: PortType,
}

/// Progress an op reports while it runs (rows, requests, epochs).
pub trait Progress: Send + Sync {
    fn set_total(&self, total: u64);
    fn advance(&self, n: u64);
    fn message(&self, msg: &str);
}

/// A progress sink that drops everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn message(&self, _: &str) {}
}

/// What an op may read about a stage: its params, inputs, seed and the pipeline's context. The
/// part of [`RunCx`] that exists before the stage runs, so that `drover plan` can hand it to
/// [`OpKit::work_left`](crate::kit::OpKit::work_left) with inputs read in place in the store (read only).
pub struct StageCx {
    pub stage: String,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, Input>,
    pub pipeline_dir: PathBuf,
    pub seed: u64,
    /// The pipeline's declared top-level sections, as [`CheckCx::sections`]. Endpoints and key
    /// variable names live in `llms:`, never in `params`, so they stay out of keys.
    pub sections: Arc<BTreeMap<String, serde_json::Value>>,
    /// Values the op keeps by key across attempts (responses already received), so a stage that
    /// dies resumes its work. Not part of the stage's output.
    pub memo: drover_cache::Memo,
}

/// `null` for a section the pipeline does not have.
static NO_SECTION: serde_json::Value = serde_json::Value::Null;

impl CheckCx<'_> {
    /// A declared top-level section of the pipeline (`llms`), `null` when the file has none.
    pub fn section(&self, name: &str) -> &serde_json::Value {
        self.sections.get(name).unwrap_or(&NO_SECTION)
    }
}

impl StageCx {
    /// A declared top-level section of the pipeline (`llms`), `null` when the file has none.
    pub fn section(&self, name: &str) -> &serde_json::Value {
        self.sections.get(name).unwrap_or(&NO_SECTION)
    }

    /// The single input of this port.
    pub fn input(&self, port: &str) -> Result<&InputItem, OpError> {
        match self.inputs.get(port) {
            Some(Input::One(item)) => Ok(item),
            Some(Input::List(_)) => Err(OpError::failed(format!("input `{port}` is a list"))),
            None => Err(OpError::failed(format!("input `{port}` is not connected"))),
        }
    }
}

/// Everything an op may read and write while it runs: nothing else (no environment, clock or
/// global random state). Derefs to the [`StageCx`] it extends.
pub struct RunCx {
    pub stage_cx: StageCx,
    pub outputs: BTreeMap<String, OutputSlot>,
    /// A fresh scratch directory, removed after the stage.
    pub work_dir: PathBuf,
    /// Where the op's own log (e.g. a child's stdout and stderr) goes.
    pub log_path: PathBuf,
    pub progress: Arc<dyn Progress>,
    /// What the op reports about how it ran (the device it computed on), for the run record.
    pub notes: StageNotes,
}

impl std::ops::Deref for RunCx {
    type Target = StageCx;
    fn deref(&self) -> &StageCx {
        &self.stage_cx
    }
}

/// Facts about how a stage ran that belong in its run record but not in its key, by name
/// (`device`: the compute device a numeric op used, e.g. `cpu (flex)`).
#[derive(Clone, Debug, Default)]
pub struct StageNotes(Arc<std::sync::Mutex<BTreeMap<String, String>>>);

impl StageNotes {
    /// Sets a note, replacing an earlier one of the same name.
    pub fn set(&self, name: &str, value: impl Into<String>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), value.into());
    }

    /// Every note set so far.
    pub fn all(&self) -> BTreeMap<String, String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl RunCx {
    /// Deserialises the params (already checked at plan time).
    pub fn params<P: DeserializeOwned>(&self) -> Result<P, OpError> {
        parse_params(&self.params).map_err(|e| OpError::failed(e.message))
    }

    /// The slot of this output port.
    pub fn output(&self, port: &str) -> Result<&OutputSlot, OpError> {
        self.outputs.get(port).ok_or_else(|| OpError::failed(format!("no output port `{port}`")))
    }
}

/// Why an op failed. The tier decides the exit code; nothing is cached either way.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    pub kind: OpErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpErrorKind {
    /// The stage's own work failed (non-zero exit, bad data): exit code 1.
    Failed,
    /// The environment failed (cannot spawn, disk full, server down): exit code 3.
    Environment,
}

impl OpError {
    pub fn failed(message: impl Into<String>) -> OpError {
        OpError { kind: OpErrorKind::Failed, message: message.into() }
    }
    pub fn environment(message: impl Into<String>) -> OpError {
        OpError { kind: OpErrorKind::Environment, message: message.into() }
    }
    /// An I/O error: disk full and permission problems are environment failures.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> OpError {
        OpError::environment(format!("{context}: {err}"))
    }
}

/// An op: a named, versioned, typed transformation.
pub trait Op: Send + Sync + 'static {
    fn info(&self) -> OpInfo;

    /// Plan time: validate params and input types, say what comes out. No heavy work here.
    fn check(&self, cx: &CheckCx<'_>) -> Result<Checked, Vec<CheckError>>;

    /// Run time: read inputs, write every output slot.
    fn run(&self, cx: RunCx) -> BoxFuture<'_, Result<(), OpError>>;

    /// Plan time, for a stage that will run and whose inputs all exist: how much of its work is
    /// already done, in words, e.g. `12 of 20 requests answered, 8 to send`. The context's
    /// inputs point into the store: read, never write.
    fn work_left(&self, _cx: &StageCx) -> Option<String> {
        None
    }
}

/// A top-level section of pipeline files that a part outside the engine owns (the ops own
/// `llms:`; an executor, a remote store or nightly runs may own theirs). The engine parses it as
/// YAML with spans, applies `--set NAME.a.b=V` and `DROVER_<ENV>_<ENTRY>` overrides to it, hands
/// it to ops as JSON ([`CheckCx::section`]) and points errors into it
/// ([`CheckLocation::Section`]); what it means is its owner's business.
#[derive(Clone, Debug)]
pub struct SectionDecl {
    pub name: &'static str,
    /// What the section holds, for messages: "a mapping of endpoint name to its settings".
    pub holds: &'static str,
    /// An example of the section, for the help of a malformed one.
    pub example: &'static str,
    /// JSON Schema of the section, for `drover schema`.
    pub schema: serde_json::Value,
    /// `DROVER_<env>_<ENTRY>=MAPPING` in the environment replaces the section's entry `<entry>`
    /// (lower-cased), before `--set`: `Some("LLM")` gives `DROVER_LLM_DEFAULT`.
    pub env: Option<&'static str>,
    /// JSON Schema of the section's per-stage form, when a stage may carry one too (a stage's
    /// `slurm:` settings over the pipeline's); `None` for a top-level section only. Like
    /// `retries`, a stage's entry never enters its key: it says where or how a stage runs, not
    /// what it computes. Ops see it as [`crate::plan::PlanNode::sections`].
    pub stage_schema: Option<serde_json::Value>,
    /// Checks the section as written, at the top and in each stage; every problem is reported
    /// at its place in the file with the file's other errors (exit 2), by `validate`, `plan`
    /// and `run` alike.
    pub check: Option<fn(&serde_json::Value, SectionAt) -> Vec<SectionProblem>>,
    /// The section may also be written as one string (`remote: s3://bucket/prefix`), which
    /// the section's own `check` and reader take; otherwise it must be a mapping.
    pub scalar: bool,
}

/// Where a section being checked was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionAt {
    /// At the top of the file (or made by `--set`).
    Pipeline,
    /// In a stage.
    Stage,
}

/// A problem a section's owner found in it: at `path` inside the section (a missing field
/// points at its parent), with a hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionProblem {
    pub path: Vec<String>,
    pub message: String,
    pub help: Option<String>,
}

impl SectionProblem {
    pub fn new(path: &[&str], message: impl Into<String>) -> SectionProblem {
        SectionProblem { path: path.iter().map(|s| s.to_string()).collect(), message: message.into(), help: None }
    }

    pub fn help(mut self, help: impl Into<String>) -> SectionProblem {
        self.help = Some(help.into());
        self
    }
}

/// The ops a pipeline may name, and the top-level sections their owners declared.
#[derive(Default, Clone)]
pub struct OpRegistry {
    /// Each op with its info, computed once (an info holds a generated JSON Schema).
    ops: BTreeMap<&'static str, (Arc<dyn Op>, Arc<OpInfo>)>,
    sections: BTreeMap<&'static str, SectionDecl>,
}

impl OpRegistry {
    pub fn new() -> OpRegistry {
        OpRegistry::default()
    }

    pub fn register(&mut self, op: impl Op) {
        let info = op.info();
        self.ops.insert(info.name, (Arc::new(op), Arc::new(info)));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Op>> {
        self.ops.get(name).map(|(op, _)| op)
    }

    /// The op's info, computed once at registration.
    pub fn info(&self, name: &str) -> Option<&Arc<OpInfo>> {
        self.ops.get(name).map(|(_, info)| info)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.ops.keys().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Op>> + '_ {
        self.ops.values().map(|(op, _)| op)
    }

    pub fn infos(&self) -> impl Iterator<Item = &Arc<OpInfo>> + '_ {
        self.ops.values().map(|(_, info)| info)
    }

    /// Declares a top-level section of pipeline files.
    pub fn register_section(&mut self, section: SectionDecl) {
        self.sections.insert(section.name, section);
    }

    /// The declared sections, by name.
    pub fn sections(&self) -> impl Iterator<Item = &SectionDecl> + '_ {
        self.sections.values()
    }
}

/// JSON Schema of a params type, for [`OpInfo::params`].
pub fn params_schema<P: schemars::JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(P)).unwrap_or(serde_json::Value::Null)
}
