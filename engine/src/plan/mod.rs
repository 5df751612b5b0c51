//! `Plan`: the pipeline expanded (matrix), resolved (references), typed (ports checked by each
//! op) and ordered. Building a plan runs nothing and reads only small files.
//!
//! [`build`] runs the phases in turn over one `Draft` per stage expansion, each phase in its
//! own file: `expand` (matrix values, counted against [`MAX_EXPANSIONS`] before anything is
//! expanded), `resolve` (params interpolated, input references and deps resolved, then an order
//! without cycles), `check` (in that order, each op checks its params and input types and says
//! what comes out; `spans` locates what an op reports in the file). Every phase reports into one
//! [`Diags`], so a file's problems come out together. `explain` prints the result.

mod check;
mod expand;
mod explain;
mod resolve;
mod spans;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use check::accepts;
pub use explain::{ExplainedInput, ExplainedOutput, ExplainedStage};

use crate::diag::{Diags, PipelineErrors};
use crate::interp;
use crate::op::{Op, OpInfo, OpRegistry, PortType, SectionAt};
use crate::spec::{PipelineSpec, StageSpec};
use crate::yaml::{Node, Span};

/// A pipeline holds at most this many stages after matrix expansion, counted before anything
/// is expanded (a matrix of 1,000 x 1,000 x 1,000 values filled memory instead). Planning
/// 1,000,000 expansions of one `command` stage took 2.3 GiB and 71 s (debug build, 2 cores);
/// the benchmarks' largest pipeline has 100,000 stages.
pub const MAX_EXPANSIONS: u64 = 1_000_000;

/// A checked, expanded pipeline.
pub struct Plan {
    pub pipeline: String,
    pub file: PathBuf,
    pub dir: PathBuf,
    pub resources: BTreeMap<String, u64>,
    /// The declared top-level sections as JSON (`llms:`, each `{}` when absent), handed to ops.
    pub sections: Arc<BTreeMap<String, Value>>,
    pub nodes: Vec<PlanNode>,
    /// Node indices in an order where every node comes after its inputs.
    pub order: Vec<usize>,
    pub by_id: HashMap<String, usize>,
}

/// One stage expansion (a stage without `matrix` has exactly one).
pub struct PlanNode {
    /// `train` or `train[size=1]`.
    pub id: String,
    pub stage: String,
    /// Matrix values, axes in source order.
    pub matrix: Vec<(String, Value)>,
    pub op: Arc<dyn Op>,
    pub op_name: String,
    pub op_version: u32,
    /// The `with:` block, interpolated.
    pub params: Value,
    /// Pipeline params this stage read, and their values (explains changes; not in the key).
    pub used_params: BTreeMap<String, Value>,
    pub inputs: BTreeMap<String, InputEdge>,
    pub outputs: BTreeMap<String, PortType>,
    /// Per table output, the file format an op is asked to write.
    pub out_formats: BTreeMap<String, String>,
    /// Files whose content enters the key: the name the recipe gives it (a `deps:` entry's path
    /// normalised lexically, an op's file as written, or an op's label) and the path as written,
    /// relative to the pipeline directory or absolute (see [`crate::paths`]).
    pub deps: Vec<(String, String)>,
    /// What the op resolved at plan time beyond its params (see `Checked::context`).
    pub context: BTreeMap<String, Value>,
    pub retries: u32,
    pub timeout: Option<Duration>,
    pub resources: BTreeMap<String, u64>,
    pub seed: u64,
    pub span: Span,
    /// The stage's entries of declared sections (its `slurm:` settings), as written: for the
    /// part that owns each; never in the key.
    pub sections: BTreeMap<String, Value>,
    /// Which columns of which output table are metrics (`metrics:`), checked.
    pub metrics: Option<crate::metrics::Metrics>,
}

/// Where an input comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum InputEdge {
    One(Source),
    /// `stage[*]`.
    List(Vec<Source>),
}

impl InputEdge {
    pub fn sources(&self) -> &[Source] {
        match self {
            InputEdge::One(s) => std::slice::from_ref(s),
            InputEdge::List(v) => v,
        }
    }

    fn sources_mut(&mut self) -> &mut [Source] {
        match self {
            InputEdge::One(s) => std::slice::from_mut(s),
            InputEdge::List(v) => v,
        }
    }
}

/// The port of a reference that names none (`stage`), until the stage's outputs are known:
/// then it becomes `out`, or the stage's only output when it has one output of another name.
const UNNAMED_PORT: &str = "";

#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub node: usize,
    pub port: String,
}

impl Plan {
    /// Indices of the nodes each node reads from.
    pub fn upstream(&self, idx: usize) -> BTreeSet<usize> {
        self.nodes[idx].inputs.values().flat_map(|e| e.sources().iter().map(|s| s.node)).collect()
    }

    /// The nodes of these stage names or ids, and everything they need.
    pub fn closure(&self, targets: &[usize]) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(self.upstream(n));
            }
        }
        seen
    }

    /// Nodes named by a stage name (every expansion) or an exact id.
    pub fn select(&self, name: &str) -> Vec<usize> {
        if let Some(&i) = self.by_id.get(name) {
            return vec![i];
        }
        self.nodes.iter().enumerate().filter(|(_, n)| n.stage == name).map(|(i, _)| i).collect()
    }

    /// Stage names, for hints.
    pub fn stage_names(&self) -> BTreeSet<&str> {
        self.nodes.iter().map(|n| n.stage.as_str()).collect()
    }
}

/// One stage expansion while the plan is built: what each phase has learned about it. It
/// becomes a [`PlanNode`] once the whole file is free of errors.
struct Draft<'s> {
    spec: &'s StageSpec,
    /// The op and its info (computed once, at registration); `None` for an unknown op, which
    /// is reported.
    op: Option<(Arc<dyn Op>, Arc<OpInfo>)>,
    /// `train` or `train[size=1]`.
    id: String,
    matrix: Vec<(String, Value)>,
    /// Its `with:` holds a number an op cannot receive (reported): its edges are left out of
    /// the graph and its op does not check it.
    broken: bool,

    // What `resolve` finds.
    /// The `with:` block, interpolated.
    params: Value,
    /// Pipeline params it read, and their values.
    used_params: BTreeMap<String, Value>,
    inputs: BTreeMap<String, DraftInput>,
    /// (name in the key, path as written): `deps:` entries, then the op's files (`check`).
    deps: Vec<(String, String)>,

    // What `check` finds.
    /// Its output types, once its op has checked it; `None` while it has not, and for good when
    /// the check failed (downstream, its outputs' types stand in as unknown).
    outputs: Option<BTreeMap<String, PortType>>,
    out_formats: BTreeMap<String, String>,
    context: BTreeMap<String, Value>,
    /// `metrics:`, once checked against the outputs.
    metrics: Option<crate::metrics::Metrics>,
}

/// A resolved input of a draft, with the spans its errors point at.
struct DraftInput {
    edge: InputEdge,
    /// The port's name in `in:`.
    port_span: Span,
    /// The reference (`stage.port`).
    ref_span: Span,
}

impl<'s> Draft<'s> {
    fn new(spec: &'s StageSpec, op: Option<(Arc<dyn Op>, Arc<OpInfo>)>, matrix: Vec<(String, Value)>) -> Draft<'s> {
        Draft {
            spec,
            op,
            id: node_id(&spec.name, &matrix),
            matrix,
            broken: false,
            params: Value::Null,
            used_params: BTreeMap::new(),
            inputs: BTreeMap::new(),
            deps: Vec::new(),
            outputs: None,
            out_formats: BTreeMap::new(),
            context: BTreeMap::new(),
            metrics: None,
        }
    }

    fn info(&self) -> Option<&OpInfo> {
        self.op.as_ref().map(|(_, info)| &**info)
    }

    /// The checked node; only called when the file has no errors, so every op exists.
    fn into_node(self, default_seed: u64) -> PlanNode {
        let (op, info) = self.op.expect("op exists when there are no errors");
        PlanNode {
            id: self.id,
            stage: self.spec.name.clone(),
            matrix: self.matrix,
            op_name: self.spec.op.clone(),
            op_version: info.version,
            op,
            params: self.params,
            used_params: self.used_params,
            inputs: self.inputs.into_iter().map(|(port, input)| (port, input.edge)).collect(),
            outputs: self.outputs.unwrap_or_default(),
            out_formats: self.out_formats,
            deps: self.deps,
            context: self.context,
            retries: self.spec.retries,
            timeout: self.spec.timeout,
            resources: self.spec.resources.clone(),
            seed: self.spec.seed.unwrap_or(default_seed),
            span: self.spec.name_span,
            sections: self.spec.sections.iter().map(|(name, node)| (name.clone(), node.to_json())).collect(),
            metrics: self.metrics,
        }
    }
}

/// Builds the plan, reporting every problem in the file at once.
pub fn build(spec: &PipelineSpec, ops: &OpRegistry) -> Result<Plan, PipelineErrors> {
    let mut d = Diags::new(spec.source.clone());
    d.extend(spec.errors.iter().cloned());
    report_non_finite(&mut d, None, &spec.params, |key| format!("param `{}`", key.unwrap_or("")));
    for (name, node) in &spec.sections {
        report_non_finite(&mut d, None, node, |key| format!("`{name}` setting `{}`", key.unwrap_or("")));
    }
    check_sections(spec, ops, &mut d);
    let params = object_or_empty(spec.params.to_json());
    let sections: BTreeMap<String, Value> =
        spec.sections.iter().map(|(name, node)| (name.clone(), object_or_empty(node.to_json()))).collect();

    // References into a stage that was not expanded would each be another error.
    let Some(mut drafts) = expand::expand(spec, ops, &params, &mut d) else {
        return Err(d.finish().unwrap_err());
    };
    resolve::resolve(spec, &params, &mut drafts, &mut d);
    let Some(order) = resolve::order(&drafts, &mut d) else {
        return Err(d.finish().unwrap_err());
    };
    check::check(spec, &sections, &mut drafts, &order, &mut d);
    d.finish()?;

    let nodes: Vec<PlanNode> = drafts.into_iter().map(|draft| draft.into_node(spec.seed)).collect();
    let by_id = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
    Ok(Plan {
        pipeline: spec.name.clone(),
        file: spec.file.clone(),
        dir: spec.dir.clone(),
        resources: spec.resources.clone(),
        sections: Arc::new(sections),
        nodes,
        order,
        by_id,
    })
}

/// Runs each declared section's own check on the section at the top of the file and in every
/// stage, reporting each problem at its place.
fn check_sections(spec: &PipelineSpec, ops: &OpRegistry, d: &mut Diags) {
    for decl in ops.sections() {
        let Some(check) = decl.check else { continue };
        let mut report = |stage: Option<&str>, node: &Node, at: SectionAt| {
            for p in check(&node.to_json(), at) {
                let span = spans::deepest(node, &p.path)
                    .map(|n| n.span)
                    .filter(|s| *s != Span::default())
                    .unwrap_or(node.span);
                let label = if p.path.is_empty() { decl.name.to_string() } else { p.path.join(".") };
                d.error(stage, span, format!("`{}`: {}", decl.name, p.message), label, p.help);
            }
        };
        if let Some(node) = spec.sections.get(decl.name) {
            report(None, node, SectionAt::Pipeline);
        }
        for stage in &spec.stages {
            if let Some(node) = stage.sections.get(decl.name) {
                report(Some(&stage.name), node, SectionAt::Stage);
            }
        }
    }
}

/// An absent block (`params:`, a section) reads as an empty mapping.
fn object_or_empty(v: Value) -> Value {
    match v {
        Value::Null => Value::Object(Default::default()),
        v => v,
    }
}

/// `train` or `train[size=1,lr=0.1]`.
pub fn node_id(stage: &str, matrix: &[(String, Value)]) -> String {
    if matrix.is_empty() {
        return stage.to_string();
    }
    let parts: Vec<String> = matrix.iter().map(|(k, v)| format!("{k}={}", interp::render(v))).collect();
    format!("{stage}[{}]", parts.join(","))
}

/// Reports every NaN or infinity under `node`, naming it by the key it is under: JSON, which
/// ops receive, has no such numbers (they would arrive as null, and an op would say that the
/// param is missing). Whether there was one.
fn report_non_finite(d: &mut Diags, st: Option<&str>, node: &Node, name: impl Fn(Option<&str>) -> String) -> bool {
    let found = node.non_finite();
    for (key, n) in &found {
        d.error(
            st,
            n.span,
            format!("{} must be a finite number; found {}", name(key.as_deref()), n.describe()),
            "not a finite number",
            Some("ops receive params as JSON, which has no NaN or infinity; write a finite number".into()),
        );
    }
    !found.is_empty()
}
