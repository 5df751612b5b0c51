//! `Plan`: the pipeline expanded (matrix), resolved (references), typed (ports checked by each
//! op) and ordered. Building a plan runs nothing and reads only small files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use petgraph::graphmap::DiGraphMap;
use serde_json::Value;

use crate::diag::{Diags, PipelineErrors, did_you_mean, list_names, thousands};
use crate::interp::{self, InterpCx};
use crate::op::{CheckCx, CheckLocation, Op, OpInfo, OpRegistry, PortDecl, PortType, Ports};
use crate::paths;
use crate::spec::{PipelineSpec, StageSpec};
use crate::yaml::{MAX_DEPTH, Node, Span};

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
    /// The `llms:` block as JSON (`{}` when absent), handed to ops at run time.
    pub llms: Arc<Value>,
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

/// Builds the plan, reporting every problem in the file at once.
pub fn build(spec: &PipelineSpec, ops: &OpRegistry) -> Result<Plan, PipelineErrors> {
    let mut d = Diags::new(spec.source.clone());
    d.extend(spec.errors.iter().cloned());
    report_non_finite(&mut d, None, &spec.params, |key| format!("param `{}`", key.unwrap_or("")));
    report_non_finite(&mut d, None, &spec.llms, |key| format!("`llms` setting `{}`", key.unwrap_or("")));
    let params = match spec.params.to_json() {
        Value::Null => Value::Object(Default::default()),
        v => v,
    };
    let no_ports = BTreeSet::new();
    let llms = match spec.llms.to_json() {
        Value::Null => Value::Object(Default::default()),
        v => v,
    };

    // 1. Expand every stage into nodes.
    struct Pending<'s> {
        spec: &'s StageSpec,
        op: Option<Arc<dyn Op>>,
        info: Option<Arc<OpInfo>>,
        matrix: Vec<(String, Value)>,
        /// Its `with:` holds a number an op cannot receive (reported): its op is not checked.
        broken: bool,
    }
    let mut pending: Vec<Pending<'_>> = Vec::new();
    let mut by_stage: HashMap<&str, Vec<usize>> = HashMap::new();
    // Stages after expansion so far, and whether that went over the limit.
    let mut expanded: u128 = 0;
    let mut too_many = false;
    for stage in &spec.stages {
        let st = Some(stage.name.as_str());
        let op = ops.get(&stage.op).cloned();
        let info = ops.info(&stage.op).cloned();
        if op.is_none() && !stage.op.is_empty() {
            let help =
                did_you_mean(&stage.op, ops.names()).unwrap_or_else(|| format!("ops: {}", list_names(ops.names())));
            d.error(st, stage.op_span, format!("unknown op `{}`", stage.op), "no such op", Some(help));
        }
        let broken = stage.with.as_ref().is_some_and(|with| {
            report_non_finite(&mut d, st, with, |key| key.map_or("a param".into(), |k| format!("`{k}`")))
        });
        let mut axes: Vec<(&String, Vec<Value>)> = Vec::new();
        for (axis, axis_span, values) in &stage.matrix {
            report_non_finite(&mut d, st, values, |_| format!("a value of matrix axis `{axis}`"));
            let cx = InterpCx { params: &params, matrix: None, in_ports: &no_ports, out_ports: &no_ports };
            let mut errs = Vec::new();
            let v = interp::interpolate(values, &cx, &mut BTreeMap::new(), &mut errs);
            for e in errs {
                d.error(st, reference_span(&spec.source.text, &e), e.message, "here", e.help);
            }
            let list = match v {
                Value::Array(items) if !items.is_empty() && items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                    items
                }
                _ => {
                    d.error(
                        st,
                        values.span,
                        format!("matrix axis `{axis}` must be a non-empty list of scalar values"),
                        "expected e.g. [1, 2, 4]",
                        None,
                    );
                    // One stand-in value keeps `${matrix.AXIS}` valid: one mistake, one error.
                    vec![Value::Null]
                }
            };
            if !crate::spec::valid_name(axis) {
                d.error(
                    st,
                    *axis_span,
                    format!("invalid matrix axis name `{axis}`"),
                    "invalid name",
                    Some("use letters, digits, `_` and `-`".into()),
                );
            }
            let mut seen = BTreeSet::new();
            let mut unique = Vec::with_capacity(list.len());
            for (i, v) in list.into_iter().enumerate() {
                if seen.insert(interp::render(&v)) {
                    unique.push(v);
                    continue;
                }
                let at = values.as_seq().and_then(|items| items.get(i)).map_or(values.span, |n| n.span);
                d.error(
                    st,
                    at,
                    format!("matrix axis `{axis}` lists `{}` twice", interp::render(&v)),
                    "duplicate value",
                    Some("each value makes one expansion; list it once".into()),
                );
            }
            axes.push((axis, unique));
        }
        // Counted before anything is expanded.
        let count = axes.iter().fold(1u128, |n, (_, values)| n.saturating_mul(values.len() as u128));
        // The pipeline's total is reported once; a stage too large by itself, each time.
        if let Some(message) = over_limit(count, if too_many { 0 } else { expanded }, !axes.is_empty()) {
            let sizes: Vec<String> = axes.iter().map(|(_, values)| thousands(values.len() as u128)).collect();
            let names = list_names(axes.iter().map(|(axis, _)| axis.as_str()));
            let (span, label) = match axes.is_empty() {
                true => (stage.name_span, "one stage too many".to_string()),
                false => (stage.matrix_span, format!("{} values of {names}", sizes.join(" x "))),
            };
            let help = "a pipeline holds at most that many stages after matrix expansion; sweep fewer values, or split the sweep across pipelines";
            d.error(st, span, message, label, Some(help.into()));
            too_many = true;
            continue;
        }
        expanded += count;
        let mut combos: Vec<Vec<(String, Value)>> = vec![vec![]];
        for (axis, list) in &axes {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    list.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push(((*axis).clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        for matrix in combos {
            by_stage.entry(stage.name.as_str()).or_default().push(pending.len());
            pending.push(Pending { spec: stage, op: op.clone(), info: info.clone(), matrix, broken });
        }
    }
    // References into a stage that was not expanded would each be another error.
    if too_many {
        return Err(d.finish().unwrap_err());
    }
    let ids: Vec<String> = pending.iter().map(|p| node_id(&p.spec.name, &p.matrix)).collect();

    // 2. Interpolate params, resolve inputs, check deps.
    let all_matrices: Vec<Vec<(String, Value)>> = pending.iter().map(|p| p.matrix.clone()).collect();
    struct Resolved {
        params: Value,
        used: BTreeMap<String, Value>,
        inputs: BTreeMap<String, (InputEdge, Span, Span)>,
        /// (name in the key, path as written).
        deps: Vec<(String, String)>,
    }
    let mut resolved: Vec<Option<Resolved>> = Vec::new();
    for p in &pending {
        let stage = p.spec;
        let st = Some(stage.name.as_str());
        let matrix_map: BTreeMap<String, Value> = p.matrix.iter().cloned().collect();
        let in_ports: BTreeSet<String> = stage.inputs.iter().map(|i| i.port.clone()).collect();
        let out_ports: BTreeSet<String> = match p.info.as_ref().map(|i| &i.outputs) {
            Some(Ports::Fixed(decls)) => decls.iter().map(|d| d.name.to_string()).collect(),
            _ => stage.outputs.iter().map(|o| o.port.clone()).collect(),
        };
        let cx = InterpCx {
            params: &params,
            matrix: (!stage.matrix.is_empty()).then_some(&matrix_map),
            in_ports: &in_ports,
            out_ports: &out_ports,
        };
        let mut used = BTreeMap::new();
        let mut errs = Vec::new();
        let empty = Node { span: stage.name_span, kind: crate::yaml::NodeKind::Map(vec![]) };
        let mut with = interp::interpolate(stage.with.as_ref().unwrap_or(&empty), &cx, &mut used, &mut errs);
        if with.is_null() {
            with = Value::Object(Default::default());
        }
        if json_height(&with) > MAX_DEPTH {
            d.error(
                st,
                stage.with.as_ref().map_or(stage.name_span, |w| w.span),
                format!("`with:` nests more than {MAX_DEPTH} levels deep once its `${{params...}}` are filled in"),
                "too deep",
                Some(format!("params and `with:` blocks nest at most {MAX_DEPTH} levels deep; flatten the param")),
            );
        }
        let templated = p.info.as_ref().is_some_and(|i| i.templated_params);
        if !templated {
            interp::unescape(&mut with);
        }
        let mut inputs = BTreeMap::new();
        for input in &stage.inputs {
            if !input.list.is_empty() {
                // `[a, b.out, c[*]]`: every item's artifacts, in order, as one list.
                let mut sources = Vec::new();
                for (item, span) in &input.list {
                    match resolve_ref(item, &p.matrix, &by_stage, &all_matrices) {
                        Ok(InputEdge::One(s)) => sources.push(s),
                        Ok(InputEdge::List(s)) => sources.extend(s),
                        Err((msg, help)) => {
                            d.error(st, *span, format!("input `{}`: {msg}", input.port), "bad reference", help)
                        }
                    }
                }
                inputs.insert(input.port.clone(), (InputEdge::List(sources), input.port_span, input.ref_span));
                continue;
            }
            let r = if input.reference.contains("${") {
                let node = Node { span: input.ref_span, kind: crate::yaml::NodeKind::Str(input.reference.clone()) };
                std::borrow::Cow::Owned(interp::render(&interp::interpolate(&node, &cx, &mut used, &mut errs)))
            } else {
                std::borrow::Cow::Borrowed(input.reference.as_str())
            };
            match resolve_ref(&r, &p.matrix, &by_stage, &all_matrices) {
                Ok(edge) => {
                    inputs.insert(input.port.clone(), (edge, input.port_span, input.ref_span));
                }
                Err((msg, help)) => {
                    d.error(st, input.ref_span, format!("input `{}`: {msg}", input.port), "bad reference", help)
                }
            }
        }
        for e in errs {
            d.error(st, reference_span(&spec.source.text, &e), e.message, "here", e.help);
        }
        let mut deps = Vec::new();
        for (dep, span) in &stage.deps {
            // Any path may be read (see `paths`); the key names it as normalised.
            let Some(name) = paths::dep_name(dep) else {
                d.error(
                    st,
                    *span,
                    format!("dep `{dep}` is the pipeline's directory itself"),
                    "the whole directory",
                    Some(
                        "it holds the store, which changes with every run: name the files or subdirectories the stage reads"
                            .into(),
                    ),
                );
                continue;
            };
            let file = paths::resolve(&spec.dir, dep);
            if !file.exists() {
                d.error(
                    st,
                    *span,
                    format!("dep file `{dep}` not found"),
                    "no such file",
                    Some(format!("looked for {}", file.display())),
                );
            }
            deps.push((name, dep.clone()));
        }
        resolved.push((!p.broken).then_some(Resolved { params: with, used, inputs, deps }));
    }

    // 3. Cycles.
    let mut graph: DiGraphMap<usize, ()> = DiGraphMap::new();
    for i in 0..pending.len() {
        graph.add_node(i);
    }
    for (i, r) in resolved.iter().enumerate() {
        for (edge, _, _) in r.as_ref().map(|r| r.inputs.values().collect::<Vec<_>>()).unwrap_or_default() {
            for s in edge.sources() {
                graph.add_edge(s.node, i, ());
            }
        }
    }
    // Both algorithms are iterative: a chain of 100,000 stages must not overflow the stack.
    let order: Vec<usize> = match petgraph::algo::toposort(&graph, None) {
        Ok(order) => order,
        Err(_) => {
            for scc in petgraph::algo::kosaraju_scc(&graph) {
                let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
                if scc.len() > 1 || self_loop {
                    let cycle = describe_cycle(&graph, &scc, &ids);
                    let first = *scc.iter().min().expect("scc is not empty");
                    d.error(
                        Some(&pending[first].spec.name),
                        pending[first].spec.name_span,
                        format!("dependency cycle: {cycle}"),
                        "part of a cycle",
                        Some("a stage cannot depend, directly or not, on its own output".into()),
                    );
                }
            }
            return Err(d.finish().unwrap_err());
        }
    };

    // 4. Types, in order: each op checks its params and inputs and says what comes out.
    let mut outputs: Vec<Option<BTreeMap<String, PortType>>> = vec![None; pending.len()];
    let mut extra_deps: Vec<Vec<(String, String)>> = vec![Vec::new(); pending.len()];
    let mut contexts: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new(); pending.len()];
    let mut out_formats: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); pending.len()];
    for &idx in &order {
        if let Some(r) = resolved[idx].as_mut() {
            for (edge, _, _) in r.inputs.values_mut() {
                for s in edge.sources_mut().iter_mut().filter(|s| s.port == UNNAMED_PORT) {
                    s.port = match outputs[s.node].as_ref() {
                        Some(outs) if !outs.contains_key("out") && outs.len() == 1 => {
                            outs.keys().next().expect("one output").clone()
                        }
                        _ => "out".to_string(),
                    };
                }
            }
        }
        let p = &pending[idx];
        let stage = p.spec;
        let st = Some(stage.name.as_str());
        let (Some(op), Some(info), Some(r)) = (&p.op, &p.info, &resolved[idx]) else { continue };
        // Input types from upstream outputs.
        let mut input_types = BTreeMap::new();
        for (port, (edge, _port_span, ref_span)) in &r.inputs {
            let mut types = Vec::new();
            for s in edge.sources() {
                match outputs[s.node].as_ref() {
                    None => {} // a broken upstream; its type stands in below
                    Some(outs) => match outs.get(&s.port) {
                        Some(t) => types.push(t.clone()),
                        None => {
                            let names: Vec<&str> = outs.keys().map(String::as_str).collect();
                            let help = did_you_mean(&s.port, names.iter().copied()).unwrap_or_else(|| {
                                format!(
                                    "stage `{}` has outputs {}",
                                    pending[s.node].spec.name,
                                    list_names(names.iter().copied())
                                )
                            });
                            d.error(
                                st,
                                *ref_span,
                                format!(
                                    "input `{port}`: stage `{}` has no output `{}`",
                                    pending[s.node].spec.name, s.port
                                ),
                                "no such output",
                                Some(help),
                            );
                        }
                    },
                }
            }
            if types.len() == edge.sources().len() {
                let t = match edge {
                    InputEdge::One(_) => types.pop().expect("one source"),
                    InputEdge::List(_) => {
                        PortType::List(Box::new(types.first().cloned().unwrap_or(PortType::any_table())))
                    }
                };
                input_types.insert(port.clone(), t);
            }
        }
        // Ports the op declares.
        let mut mismatched = Vec::new();
        if let Ports::Fixed(decls) = &info.inputs {
            for (port, (edge, port_span, ref_span)) in &r.inputs {
                match decls.iter().find(|d| d.name == port) {
                    None => {
                        let help = did_you_mean(port, decls.iter().map(|d| d.name)).unwrap_or_else(|| {
                            format!("op `{}` takes inputs {}", info.name, list_names(decls.iter().map(|d| d.name)))
                        });
                        d.error(
                            st,
                            *port_span,
                            format!("op `{}` has no input port `{port}`", info.name),
                            "unknown port",
                            Some(help),
                        );
                    }
                    Some(decl) => {
                        if let Some(got) = input_types.get(port)
                            && let Err(msg) = accepts(decl, got)
                        {
                            let from =
                                edge.sources().first().map(|s| pending[s.node].spec.name.as_str()).unwrap_or("?");
                            d.error(
                                st,
                                *ref_span,
                                format!("input `{port}` from stage `{from}`: {msg}"),
                                format!("`{from}` produces {got}"),
                                Some(format!("op `{}` expects {} on `{port}`", info.name, decl.ty)),
                            );
                            mismatched.push(port.clone());
                        }
                    }
                }
            }
            let unknown_port = stage.inputs.iter().any(|i| !decls.iter().any(|d| d.name == i.port));
            for decl in decls.iter().filter(|d| !d.optional) {
                // A misspelt port is one error (reported above), not also a missing one.
                if !unknown_port && !stage.inputs.iter().any(|i| i.port == decl.name) {
                    d.error(
                        st,
                        stage.name_span,
                        format!("op `{}` needs input `{}` ({})", info.name, decl.name, decl.doc),
                        "missing input",
                        Some(format!("add `in: {{ {}: STAGE }}`", decl.name)),
                    );
                }
            }
        }
        let declared: BTreeMap<String, PortType> =
            stage.outputs.iter().map(|o| (o.port.clone(), o.ty.clone())).collect();
        if let Ports::Fixed(decls) = &info.outputs {
            for o in &stage.outputs {
                if !decls.iter().any(|d| d.name == o.port) {
                    d.error(
                        st,
                        o.port_span,
                        format!("op `{}` has no output `{}`; its outputs are fixed", info.name, o.port),
                        "unknown output",
                        Some(format!("outputs: {}", list_names(decls.iter().map(|d| d.name)))),
                    );
                }
            }
        }
        for o in &stage.outputs {
            if matches!(o.ty, PortType::Table(_)) {
                out_formats[idx].insert(o.port.clone(), o.format.clone().unwrap_or_else(|| "parquet".into()));
            }
        }
        // Inputs whose type is unknown (a broken upstream, a mismatch reported above, a port
        // that did not resolve) are checked as the op declares them, with unknown columns, so
        // the op still checks its params and one mistake stays one error.
        for port in &mismatched {
            input_types.remove(port);
        }
        let mut check_inputs = input_types.clone();
        match &info.inputs {
            Ports::Fixed(decls) => {
                for decl in decls {
                    if !check_inputs.contains_key(decl.name)
                        && (!decl.optional || stage.inputs.iter().any(|i| i.port == decl.name))
                    {
                        check_inputs.insert(decl.name.to_string(), stand_in(&decl.ty));
                    }
                }
            }
            Ports::Declared(_) => {
                for i in &stage.inputs {
                    check_inputs.entry(i.port.clone()).or_insert_with(PortType::any_table);
                }
            }
        }
        let cx = CheckCx {
            stage: &ids[idx],
            params: &r.params,
            inputs: &check_inputs,
            declared_outputs: &declared,
            pipeline_dir: &spec.dir,
            llms: &llms,
        };
        match op.check(&cx) {
            Ok(checked) => {
                outputs[idx] = Some(checked.outputs);
                let path = |p: &std::path::Path| p.to_string_lossy().to_string();
                extra_deps[idx] = checked.file_deps.iter().map(|p| (path(p), path(p))).collect();
                extra_deps[idx].extend(checked.named_deps.iter().map(|(name, p)| (name.clone(), path(p))));
                contexts[idx] = checked.context;
            }
            Err(errors) => {
                for e in errors {
                    let span = match &e.at {
                        CheckLocation::Stage => stage.name_span,
                        CheckLocation::Param(path) => stage
                            .with
                            .as_ref()
                            .and_then(|w| deepest(w, path.as_slice()))
                            .map_or(stage.name_span, |n| n.span),
                        CheckLocation::ParamKey(path) => stage
                            .with
                            .as_ref()
                            .and_then(|w| param_key(w, path.as_slice()))
                            .map_or(stage.name_span, |n| n.span),
                        CheckLocation::Input(port) => {
                            stage.inputs.iter().find(|i| &i.port == port).map_or(stage.name_span, |i| i.ref_span)
                        }
                        CheckLocation::Output(port) => {
                            stage.outputs.iter().find(|o| &o.port == port).map_or(stage.name_span, |o| o.port_span)
                        }
                        CheckLocation::Llm(path) => deepest(&spec.llms, path.as_slice())
                            .filter(|n| n.span != Span::default())
                            .map_or(stage.name_span, |n| n.span),
                    };
                    let label = match &e.at {
                        CheckLocation::Param(path) | CheckLocation::ParamKey(path) if !path.is_empty() => {
                            format!("param `{}`", path.join("."))
                        }
                        _ => "here".into(),
                    };
                    // A column problem names the table it was looked for in.
                    let mut help = e.help;
                    if e.message.contains("column") {
                        let tables: Vec<String> = r
                            .inputs
                            .iter()
                            .filter_map(|(port, (edge, _, _))| {
                                let up = edge.sources().first()?;
                                let cols = match input_types.get(port)? {
                                    PortType::Table(t) => t.columns.as_ref()?,
                                    _ => return None,
                                };
                                let names = list_names(cols.iter().map(|c| c.name.as_str()));
                                Some(format!(
                                    "input `{port}` is stage `{}`, with columns {names}",
                                    pending[up.node].spec.name
                                ))
                            })
                            .collect();
                        if !tables.is_empty() {
                            let context = tables.join("; ");
                            help = Some(match help {
                                Some(h) => format!("{h} ({context})"),
                                None => context,
                            });
                        }
                    }
                    d.error(st, span, e.message, label, help);
                }
            }
        }
        for (res, n) in &stage.resources {
            if let Some(cap) = spec.resources.get(res)
                && n > cap
            {
                d.error(
                    st,
                    stage.name_span,
                    format!("needs {n} `{res}` but the pipeline has {cap}"),
                    "asks too much",
                    Some("raise the pipeline's `resources:` capacity or lower the stage's request".into()),
                );
            }
        }
    }
    d.finish()?;

    let mut nodes = Vec::with_capacity(pending.len());
    for (idx, (p, r)) in pending.into_iter().zip(resolved).enumerate() {
        let r = r.expect("resolved when there are no errors");
        let mut deps = r.deps;
        deps.extend(std::mem::take(&mut extra_deps[idx]));
        nodes.push(PlanNode {
            id: ids[idx].clone(),
            stage: p.spec.name.clone(),
            matrix: p.matrix,
            op_name: p.spec.op.clone(),
            op_version: p.info.as_ref().map_or(0, |i| i.version),
            op: p.op.expect("op exists when there are no errors"),
            params: r.params,
            used_params: r.used,
            inputs: r.inputs.into_iter().map(|(k, (e, _, _))| (k, e)).collect(),
            outputs: outputs[idx].take().unwrap_or_default(),
            out_formats: std::mem::take(&mut out_formats[idx]),
            deps,
            context: std::mem::take(&mut contexts[idx]),
            retries: p.spec.retries,
            timeout: p.spec.timeout,
            resources: p.spec.resources.clone(),
            seed: p.spec.seed.unwrap_or(spec.seed),
            span: p.spec.name_span,
        });
    }
    let by_id = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
    Ok(Plan {
        pipeline: spec.name.clone(),
        file: spec.file.clone(),
        dir: spec.dir.clone(),
        resources: spec.resources.clone(),
        llms: Arc::new(llms),
        nodes,
        order,
        by_id,
    })
}

/// `train` or `train[size=1,lr=0.1]`.
pub fn node_id(stage: &str, matrix: &[(String, Value)]) -> String {
    if matrix.is_empty() {
        return stage.to_string();
    }
    let parts: Vec<String> = matrix.iter().map(|(k, v)| format!("{k}={}", interp::render(v))).collect();
    format!("{stage}[{}]", parts.join(","))
}

/// Resolves `stage`, `stage.port`, `stage[*]`, `stage[k=v,...]` (each optionally `.port`).
fn resolve_ref(
    r: &str,
    own: &[(String, Value)],
    by_stage: &HashMap<&str, Vec<usize>>,
    all: &[Vec<(String, Value)>],
) -> Result<InputEdge, (String, Option<String>)> {
    let (stage, selector, port) = split_ref(r).ok_or_else(|| {
        (
            format!("cannot parse reference `{r}`"),
            Some("write `stage`, `stage.port`, `stage[*]` or `stage[axis=value]`".into()),
        )
    })?;
    let Some(nodes) = by_stage.get(stage) else {
        let help = did_you_mean(stage, by_stage.keys().copied())
            .unwrap_or_else(|| "stages are the keys under `stages:`".into());
        return Err((format!("there is no stage `{stage}`"), Some(help)));
    };
    let port = port.unwrap_or(UNNAMED_PORT).to_string();
    if selector.is_none() && nodes.len() == 1 && all[nodes[0]].is_empty() {
        return Ok(InputEdge::One(Source { node: nodes[0], port }));
    }
    let matrices: Vec<Vec<(String, Value)>> = nodes.iter().map(|&n| all[n].clone()).collect();
    let src = |n: usize| Source { node: n, port: port.clone() };
    match selector {
        Some("*") => Ok(InputEdge::List(nodes.iter().map(|&n| src(n)).collect())),
        Some(sel) => {
            let mut wanted = Vec::new();
            for pair in sel.split(',') {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| (format!("bad selector `[{sel}]`"), Some("write `[axis=value]` or `[*]`".into())))?;
                wanted.push((k.trim(), v.trim()));
            }
            let hits: Vec<usize> = nodes
                .iter()
                .zip(&matrices)
                .filter(|(_, m)| {
                    wanted.iter().all(|(k, v)| m.iter().any(|(mk, mv)| mk == k && interp::render(mv) == *v))
                })
                .map(|(&n, _)| n)
                .collect();
            match hits.as_slice() {
                [one] => Ok(InputEdge::One(src(*one))),
                [] => Err((
                    format!("no expansion of `{stage}` matches `[{sel}]`"),
                    Some(format!("expansions: {}", expansions(stage, &matrices))),
                )),
                _ => Err((
                    format!("`[{sel}]` matches {} expansions of `{stage}`", hits.len()),
                    Some("name every axis, or use `[*]` for all of them".into()),
                )),
            }
        }
        None if nodes.len() == 1 && matrices[0].is_empty() => Ok(InputEdge::One(src(nodes[0]))),
        None => {
            // Same values on the axes both stages share.
            let shared: Vec<&(String, Value)> =
                own.iter().filter(|(k, _)| matrices[0].iter().any(|(mk, _)| mk == k)).collect();
            let hits: Vec<usize> = if shared.is_empty() {
                vec![]
            } else {
                nodes
                    .iter()
                    .zip(&matrices)
                    .filter(|(_, m)| shared.iter().all(|(k, v)| m.iter().any(|(mk, mv)| mk == k && mv == v)))
                    .map(|(&n, _)| n)
                    .collect()
            };
            match hits.as_slice() {
                [one] => Ok(InputEdge::One(src(*one))),
                _ => Err((
                    format!("stage `{stage}` has {} expansions; say which", nodes.len()),
                    Some(format!(
                        "use `{stage}[*]` for all of them as a list, or one of {}",
                        expansions(stage, &matrices)
                    )),
                )),
            }
        }
    }
}

fn expansions(stage: &str, matrices: &[Vec<(String, Value)>]) -> String {
    let ids: Vec<String> = matrices.iter().take(5).map(|m| format!("`{}`", node_id(stage, m))).collect();
    let more = if matrices.len() > 5 { format!(" and {} more", matrices.len() - 5) } else { String::new() };
    format!("{}{more}", ids.join(", "))
}

/// `(stage, selector, port)`.
fn split_ref(r: &str) -> Option<(&str, Option<&str>, Option<&str>)> {
    let r = r.trim();
    if let Some(open) = r.find('[') {
        let close = r[open..].find(']')? + open;
        let rest = &r[close + 1..];
        let port = match rest {
            "" => None,
            p => Some(p.strip_prefix('.')?),
        };
        return Some((&r[..open], Some(&r[open + 1..close]), port));
    }
    match r.split_once('.') {
        Some((s, p)) => Some((s, None, Some(p))),
        None => Some((r, None, None)),
    }
}

/// Does an input port declared as `decl` accept an artifact of type `got`?
pub fn accepts(decl: &PortDecl, got: &PortType) -> Result<(), String> {
    fn check(want: &PortType, got: &PortType) -> Result<(), String> {
        match (want, got) {
            (PortType::Table(req), PortType::Table(have)) => {
                let (Some(req), Some(have_cols)) = (&req.columns, &have.columns) else { return Ok(()) };
                for col in req {
                    match have.column(&col.name) {
                        None => {
                            let names: Vec<&str> = have_cols.iter().map(|c| c.name.as_str()).collect();
                            let hint = did_you_mean(&col.name, names.iter().copied())
                                .map(|h| format!(" ({h})"))
                                .unwrap_or_default();
                            return Err(format!(
                                "needs column `{}`, which is missing (columns: {}){hint}",
                                col.name,
                                list_names(names.iter().copied())
                            ));
                        }
                        Some(c) if col.dtype != "any" && c.dtype != col.dtype => {
                            return Err(format!("column `{}` is {} but must be {}", col.name, c.dtype, col.dtype));
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            (PortType::List(w), PortType::List(g)) => check(w, g),
            (PortType::List(w), g) => check(w, g),
            (PortType::Blob, PortType::Blob) | (PortType::Dir, PortType::Dir) => Ok(()),
            (w, g) => Err(format!("expected {}, got {}", w.kind_name(), g.kind_name())),
        }
    }
    check(&decl.ty, got)
}

/// A type standing in for an input whose real type is unknown: as declared, columns unknown.
fn stand_in(declared: &PortType) -> PortType {
    match declared {
        PortType::Table(_) => PortType::any_table(),
        PortType::List(inner) => PortType::List(Box::new(stand_in(inner))),
        other => other.clone(),
    }
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

/// Why `count` more stages after matrix expansion, with `before` already planned, are too many
/// (see [`MAX_EXPANSIONS`]); `matrix`: the stage has one.
fn over_limit(count: u128, before: u128, matrix: bool) -> Option<String> {
    let limit = u128::from(MAX_EXPANSIONS);
    // The count saturates: say so rather than print u128::MAX as if it were exact.
    let shown = |n: u128| if n == u128::MAX { format!("more than {}", thousands(n)) } else { thousands(n) };
    match (count > limit, matrix) {
        (true, _) => Some(format!("`matrix` expands to {} stages; at most {}", shown(count), thousands(limit))),
        _ if before + count <= limit => None,
        (false, true) => Some(format!(
            "`matrix` expands to {} stages, which makes {} in the pipeline; at most {}",
            thousands(count),
            thousands(before + count),
            thousands(limit)
        )),
        (false, false) => {
            Some(format!("the pipeline has more than {} stages after matrix expansion", thousands(limit)))
        }
    }
}

/// How many arrays and objects deep a value nests (0 for a scalar).
fn json_height(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(json_height).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(json_height).max().unwrap_or(0),
        _ => 0,
    }
}

/// The key node of the param at `path` (for an unknown param, the name is what is wrong).
fn param_key<'n>(root: &'n Node, path: &[String]) -> Option<&'n Node> {
    let (name, parent) = path.split_last()?;
    root.at_path(parent)?.as_map()?.iter().find(|(k, _)| k.key_text() == *name).map(|(k, _)| k)
}

/// The deepest node along a param path (a missing field points at its parent).
fn deepest<'n>(root: &'n Node, path: &[String]) -> Option<&'n Node> {
    (0..=path.len()).rev().find_map(|i| root.at_path(&path[..i]))
}

fn describe_cycle(graph: &DiGraphMap<usize, ()>, scc: &[usize], ids: &[String]) -> String {
    let members: BTreeSet<usize> = scc.iter().copied().collect();
    let start = *members.iter().next().expect("non-empty");
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = graph.neighbors(cur).filter(|n| members.contains(n)).min().expect("a cycle continues");
        if next == start || path.contains(&next) {
            path.push(next);
            break;
        }
        path.push(next);
        cur = next;
    }
    path.iter().map(|&i| ids[i].as_str()).collect::<Vec<_>>().join(" -> ")
}

/// The span of the bad `${...}` itself inside its string, when the string is written on one line
/// (plain or quoted, without escapes before it); otherwise the whole string.
fn reference_span(source: &str, e: &crate::interp::InterpError) -> Span {
    let Some((offset, len)) = e.at else { return e.span };
    let quote = matches!(source.as_bytes().get(e.span.offset), Some(b'"' | b'\''));
    let start = e.span.offset + usize::from(quote) + offset;
    match source.get(start..start + len) {
        Some(text) if text.starts_with("${") && !text.contains('\n') => Span::new(start, len),
        _ => e.span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansions_past_the_limit_are_refused_per_stage_and_per_pipeline() {
        assert_eq!(over_limit(1_000_000, 0, true), None);
        assert_eq!(over_limit(1, 999_999, false), None);
        assert_eq!(
            over_limit(1_000_000_000, 0, true).as_deref(),
            Some("`matrix` expands to 1,000,000,000 stages; at most 1,000,000")
        );
        assert_eq!(
            over_limit(u128::MAX, 0, true).as_deref(),
            Some(
                "`matrix` expands to more than 340,282,366,920,938,463,463,374,607,431,768,211,455 stages; at most 1,000,000"
            )
        );
        assert_eq!(
            over_limit(600_000, 600_000, true).as_deref(),
            Some("`matrix` expands to 600,000 stages, which makes 1,200,000 in the pipeline; at most 1,000,000")
        );
        assert_eq!(
            over_limit(1, 1_000_000, false).as_deref(),
            Some("the pipeline has more than 1,000,000 stages after matrix expansion")
        );
    }
}
