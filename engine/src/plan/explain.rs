//! What `drover plan --explain` prints: every stage of the checked plan with its op, its
//! params as resolved, the edges into it with the types they carry, and its outputs' types
//! (as DataFusion's EXPLAIN prints each node of a physical plan with its schema).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::{InputEdge, Plan};
use crate::op::PortType;

/// One stage of the explained plan; also one line of `drover plan --explain --json`.
#[derive(Clone, Debug, Serialize)]
pub struct ExplainedStage {
    /// `train` or `train[size=1]`.
    pub stage: String,
    pub op: String,
    pub version: u32,
    /// Matrix values by axis, in source order (empty without a matrix).
    pub matrix: serde_json::Map<String, Value>,
    /// The `with:` block with `${params...}` and `${matrix...}` filled in: what the op receives.
    pub params: Value,
    pub inputs: Vec<ExplainedInput>,
    pub outputs: Vec<ExplainedOutput>,
    /// Files whose content enters the key, by the name the key gives them.
    pub deps: Vec<String>,
    /// What the op resolved beyond its params that enters the key (a model id, say).
    pub context: BTreeMap<String, Value>,
}

/// An edge into a stage.
#[derive(Clone, Debug, Serialize)]
pub struct ExplainedInput {
    pub port: String,
    /// `stage.port` of each upstream artifact.
    pub from: Vec<String>,
    /// Every upstream artifact as one list input (`stage[*]`, or a YAML list).
    pub list: bool,
    /// The type the op was checked against: the upstream output's (`list<...>` of the first
    /// item's for a list).
    #[serde(rename = "type")]
    pub ty: PortType,
}

/// An output of a stage.
#[derive(Clone, Debug, Serialize)]
pub struct ExplainedOutput {
    pub port: String,
    #[serde(rename = "type")]
    pub ty: PortType,
    /// For a table, the file format the op writes (`parquet`, or `csv`/`jsonl` from `out:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

impl Plan {
    /// The selected nodes explained, in plan order (inputs before the stages that read them).
    pub fn explain(&self, selected: &BTreeSet<usize>) -> Vec<ExplainedStage> {
        self.order.iter().filter(|i| selected.contains(i)).map(|&i| self.explain_node(i)).collect()
    }

    fn explain_node(&self, idx: usize) -> ExplainedStage {
        let node = &self.nodes[idx];
        let upstream_type = |s: &super::Source| self.nodes[s.node].outputs.get(&s.port).cloned();
        let inputs = node
            .inputs
            .iter()
            .map(|(port, edge)| {
                let sources = edge.sources();
                // As the planner typed it for the op's check (see `check::input_types`).
                let first = sources.first().and_then(upstream_type).unwrap_or_else(PortType::any_table);
                let (list, ty) = match edge {
                    InputEdge::One(_) => (false, first),
                    InputEdge::List(_) => (true, PortType::List(Box::new(first))),
                };
                let from = sources.iter().map(|s| format!("{}.{}", self.nodes[s.node].id, s.port)).collect();
                ExplainedInput { port: port.clone(), from, list, ty }
            })
            .collect();
        let outputs = node
            .outputs
            .iter()
            .map(|(port, ty)| ExplainedOutput {
                port: port.clone(),
                ty: ty.clone(),
                format: node.out_formats.get(port).cloned().or_else(|| {
                    // An op's fixed table outputs are written as Parquet.
                    matches!(ty, PortType::Table(_)).then(|| "parquet".to_string())
                }),
            })
            .collect();
        ExplainedStage {
            stage: node.id.clone(),
            op: node.op_name.clone(),
            version: node.op_version,
            matrix: node.matrix.iter().cloned().collect(),
            params: node.params.clone(),
            inputs,
            outputs,
            deps: node.deps.iter().map(|(name, _)| name.clone()).collect(),
            context: node.context.clone(),
        }
    }
}

/// One stage as a block of lines: a header, then one line per fact, labels in a column.
impl fmt::Display for ExplainedStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} v{}", self.stage, self.op, self.version)?;
        if !self.matrix.is_empty() {
            let values: Vec<String> = self.matrix.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "  matrix   {}", values.join(", "))?;
        }
        writeln!(f, "  params   {}", self.params)?;
        for input in &self.inputs {
            let from = match input.list {
                true => format!("[{}]", input.from.join(", ")),
                false => input.from.join(", "),
            };
            writeln!(f, "  in       {} <- {from}: {}", input.port, input.ty)?;
        }
        for output in &self.outputs {
            let format = match output.format.as_deref() {
                Some(format) if format != "parquet" => format!(" as {format}"),
                _ => String::new(),
            };
            writeln!(f, "  out      {}: {}{format}", output.port, output.ty)?;
        }
        for dep in &self.deps {
            writeln!(f, "  dep      {dep}")?;
        }
        for (name, value) in &self.context {
            writeln!(f, "  context  {name} = {value}")?;
        }
        Ok(())
    }
}
