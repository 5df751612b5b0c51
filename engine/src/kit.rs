//! The op kit: the one way to write an op. An op declares its typed params, name, version, doc
//! and ports once, and writes `check` and `run`; everything else an op used to repeat (parsing
//! params at plan and run time, collecting many plan errors, running CPU work on the blocking
//! pool with a panic caught, building [`OpInfo`]) is done here, once, by the blanket
//! `impl<T: OpKit> Op for T`.
//!
//! ```ignore
//! pub struct Sample;
//!
//! impl OpKit for Sample {
//!     type Params = SampleParams;
//!     const NAME: &str = "sample";
//!     const VERSION: u32 = 1;
//!     const DOC: &str = "Keeps a seeded random subset of a table's rows.";
//!
//!     fn inputs() -> Ports { Ports::one("table", PortType::any_table(), "The table to sample.") }
//!     fn outputs() -> Ports { Ports::one("out", PortType::any_table(), "The kept rows.") }
//!
//!     fn check(&self, p: &SampleParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
//!         Ok(Checked::default().output("out", ...))
//!     }
//!
//!     fn run(&self, p: SampleParams, cx: RunCx) -> Work {
//!         Work::blocking(move || { ... })
//!     }
//! }
//! ```

use std::future::Future;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::op::{
    BoxFuture, CheckCx, CheckError, Checked, Op, OpError, OpInfo, PortDecl, PortType, Ports, RunCx, StageCx,
    params_schema,
};

/// What an op writes: its params type and ports once, then `check` and `run`.
pub trait OpKit: Send + Sync + 'static {
    /// The `with:` block, `#[serde(deny_unknown_fields)]`, every field documented (the docs
    /// become `drover ops` and `drover schema`).
    type Params: DeserializeOwned + JsonSchema + Send + 'static;
    /// The name used in YAML (`op: NAME`), also the file's and the type's name.
    const NAME: &'static str;
    /// Bumped whenever the output could change for the same inputs. Enters every key.
    const VERSION: u32;
    /// One sentence for `drover ops`.
    const DOC: &'static str;
    /// Same inputs, params and seed always give the same output bytes.
    const DETERMINISTIC: bool = true;
    /// The op renders `${in.*}` and `${out.*}` in its params itself, at run time (`command`).
    const TEMPLATED_PARAMS: bool = false;

    fn inputs() -> Ports;
    fn outputs() -> Ports;

    /// Plan time: check the params against the inputs' types, say what comes out. No heavy
    /// work here. Report every problem found, not only the first.
    fn check(&self, params: &Self::Params, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors>;

    /// Run time: read inputs, write every output slot. CPU work goes in [`Work::blocking`].
    fn run(&self, params: Self::Params, cx: RunCx) -> Work;

    /// Plan time, for a stage that will run and whose inputs exist: how much of its work is
    /// already done, in words (see [`Op::work_left`]).
    fn work_left(&self, _params: &Self::Params, _cx: &StageCx) -> Option<String> {
        None
    }
}

/// An op's run: CPU work for the blocking pool, or a future (network, child processes).
pub enum Work {
    Blocking(Box<dyn FnOnce() -> Result<(), OpError> + Send + 'static>),
    Async(BoxFuture<'static, Result<(), OpError>>),
}

impl Work {
    /// CPU-bound work, run on tokio's blocking pool; a panic fails the stage, not the process.
    pub fn blocking(work: impl FnOnce() -> Result<(), OpError> + Send + 'static) -> Work {
        Work::Blocking(Box::new(work))
    }

    /// Work that waits (requests, child processes).
    pub fn future(work: impl Future<Output = Result<(), OpError>> + Send + 'static) -> Work {
        Work::Async(Box::pin(work))
    }

    /// Runs it to the end.
    pub async fn run(self) -> Result<(), OpError> {
        match self {
            Work::Async(future) => future.await,
            Work::Blocking(work) => run_blocking(work).await,
        }
    }
}

/// Runs CPU work on tokio's blocking pool; a panic fails the stage, not the process.
pub async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(OpError::failed(format!("the op panicked (a bug in drover): {text}")))
        }
        Err(e) => Err(OpError::environment(format!("the op's work was cancelled: {e}"))),
    }
}

/// Every problem `check` found. One [`CheckError`] converts into it, so `?` works on either.
#[derive(Clone, Debug, Default)]
pub struct CheckErrors(pub Vec<CheckError>);

impl CheckErrors {
    pub fn new() -> CheckErrors {
        CheckErrors::default()
    }

    pub fn push(&mut self, e: CheckError) {
        self.0.push(e);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was found, else every error.
    pub fn or<T>(self, value: T) -> Result<T, CheckErrors> {
        if self.0.is_empty() { Ok(value) } else { Err(self) }
    }

    /// For the run-time re-check of params a plan already checked: one line with every message.
    pub fn into_op_error(self) -> OpError {
        let lines: Vec<String> = self
            .0
            .into_iter()
            .map(|e| match e.help {
                Some(help) => format!("{} ({help})", e.message),
                None => e.message,
            })
            .collect();
        OpError::failed(lines.join("; "))
    }
}

impl From<CheckError> for CheckErrors {
    fn from(e: CheckError) -> CheckErrors {
        CheckErrors(vec![e])
    }
}

impl From<Vec<CheckError>> for CheckErrors {
    fn from(errors: Vec<CheckError>) -> CheckErrors {
        CheckErrors(errors)
    }
}

impl Extend<CheckError> for CheckErrors {
    fn extend<I: IntoIterator<Item = CheckError>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl FromIterator<CheckError> for CheckErrors {
    fn from_iter<I: IntoIterator<Item = CheckError>>(iter: I) -> CheckErrors {
        CheckErrors(iter.into_iter().collect())
    }
}

impl Checked {
    /// Declares an output port's type.
    pub fn output(mut self, port: &str, ty: PortType) -> Checked {
        self.outputs.insert(port.to_string(), ty);
        self
    }
}

impl Ports {
    /// A single fixed port.
    pub fn one(name: &'static str, ty: PortType, doc: &'static str) -> Ports {
        Ports::Fixed(vec![PortDecl { name, ty, doc, optional: false }])
    }

    /// No ports.
    pub fn none() -> Ports {
        Ports::Fixed(Vec::new())
    }
}

impl PortDecl {
    pub fn new(name: &'static str, ty: PortType, doc: &'static str) -> PortDecl {
        PortDecl { name, ty, doc, optional: false }
    }

    /// An input the stage may leave unconnected.
    pub fn optional(mut self) -> PortDecl {
        self.optional = true;
        self
    }
}

/// Parses a `with:` block; a missing block counts as `{}`.
fn parse<P: DeserializeOwned>(value: &serde_json::Value) -> Result<P, CheckError> {
    match value {
        serde_json::Value::Null => crate::op::parse_params(&serde_json::Value::Object(Default::default())),
        v => crate::op::parse_params(v),
    }
}

impl<T: OpKit> Op for T {
    fn info(&self) -> OpInfo {
        OpInfo {
            name: T::NAME,
            version: T::VERSION,
            doc: T::DOC,
            inputs: T::inputs(),
            outputs: T::outputs(),
            params: params_schema::<T::Params>(),
            deterministic: T::DETERMINISTIC,
            templated_params: T::TEMPLATED_PARAMS,
        }
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<Checked, Vec<CheckError>> {
        let params: T::Params = parse(cx.params).map_err(|e| vec![e])?;
        OpKit::check(self, &params, cx).map_err(|e| e.0)
    }

    fn run(&self, cx: RunCx) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async move {
            let params: T::Params = parse(&cx.params).map_err(|e| OpError::failed(e.message))?;
            OpKit::run(self, params, cx).run().await
        })
    }

    fn work_left(&self, cx: &StageCx) -> Option<String> {
        let params: T::Params = parse(&cx.params).ok()?;
        OpKit::work_left(self, &params, cx)
    }
}
