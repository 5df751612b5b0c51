//! Phase 2 of planning: each draft's `with:` interpolated, its input references resolved to
//! the drafts they name, and its deps checked; then an order in which every draft comes after
//! its inputs, or the cycles that prevent one.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::graphmap::DiGraphMap;
use serde_json::Value;

use super::spans::reference_span;
use super::{Draft, DraftInput, InputEdge, Source, UNNAMED_PORT, node_id};
use crate::diag::{Diags, did_you_mean};
use crate::interp::{self, InterpCx};
use crate::op::Ports;
use crate::paths;
use crate::spec::PipelineSpec;
use crate::yaml::{MAX_DEPTH, Node, NodeKind};

/// What [`resolve_one`] finds for one draft.
struct Resolved {
    params: Value,
    used_params: BTreeMap<String, Value>,
    inputs: BTreeMap<String, DraftInput>,
    deps: Vec<(String, String)>,
}

/// Fills in every draft's params, inputs and deps.
pub(super) fn resolve(spec: &PipelineSpec, params: &Value, drafts: &mut [Draft<'_>], d: &mut Diags) {
    let mut by_stage: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, draft) in drafts.iter().enumerate() {
        by_stage.entry(draft.spec.name.as_str()).or_default().push(i);
    }
    for i in 0..drafts.len() {
        let r = resolve_one(spec, params, &drafts[i], drafts, &by_stage, d);
        let draft = &mut drafts[i];
        draft.params = r.params;
        draft.used_params = r.used_params;
        draft.inputs = r.inputs;
        draft.deps = r.deps;
    }
}

fn resolve_one(
    spec: &PipelineSpec,
    params: &Value,
    draft: &Draft<'_>,
    all: &[Draft<'_>],
    by_stage: &HashMap<&str, Vec<usize>>,
    d: &mut Diags,
) -> Resolved {
    let stage = draft.spec;
    let st = Some(stage.name.as_str());
    let matrix_map: BTreeMap<String, Value> = draft.matrix.iter().cloned().collect();
    let in_ports: BTreeSet<String> = stage.inputs.iter().map(|i| i.port.clone()).collect();
    let out_ports: BTreeSet<String> = match draft.info().map(|i| &i.outputs) {
        Some(Ports::Fixed(decls)) => decls.iter().map(|d| d.name.to_string()).collect(),
        _ => stage.outputs.iter().map(|o| o.port.clone()).collect(),
    };
    let cx = InterpCx {
        params,
        matrix: (!stage.matrix.is_empty()).then_some(&matrix_map),
        in_ports: &in_ports,
        out_ports: &out_ports,
    };
    let mut used = BTreeMap::new();
    let mut errs = Vec::new();
    let empty = Node { span: stage.name_span, kind: NodeKind::Map(vec![]) };
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
    if !draft.info().is_some_and(|i| i.templated_params) {
        interp::unescape(&mut with);
    }
    let mut inputs = BTreeMap::new();
    for input in &stage.inputs {
        let (port_span, ref_span) = (input.port_span, input.ref_span);
        if !input.list.is_empty() {
            // `[a, b.out, c[*]]`: every item's artifacts, in order, as one list.
            let mut sources = Vec::new();
            for (item, span) in &input.list {
                match resolve_ref(item, &draft.matrix, by_stage, all) {
                    Ok(InputEdge::One(s)) => sources.push(s),
                    Ok(InputEdge::List(s)) => sources.extend(s),
                    Err((msg, help)) => {
                        d.error(st, *span, format!("input `{}`: {msg}", input.port), "bad reference", help)
                    }
                }
            }
            inputs.insert(input.port.clone(), DraftInput { edge: InputEdge::List(sources), port_span, ref_span });
            continue;
        }
        let r = if input.reference.contains("${") {
            let node = Node { span: input.ref_span, kind: NodeKind::Str(input.reference.clone()) };
            Cow::Owned(interp::render(&interp::interpolate(&node, &cx, &mut used, &mut errs)))
        } else {
            Cow::Borrowed(input.reference.as_str())
        };
        match resolve_ref(&r, &draft.matrix, by_stage, all) {
            Ok(edge) => {
                inputs.insert(input.port.clone(), DraftInput { edge, port_span, ref_span });
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
    Resolved { params: with, used_params: used, inputs, deps }
}

/// Indices of the drafts in an order where each comes after its inputs; `None` when there is
/// a cycle (each reported once, at its first stage). A broken draft's edges are left out.
pub(super) fn order(drafts: &[Draft<'_>], d: &mut Diags) -> Option<Vec<usize>> {
    let mut graph: DiGraphMap<usize, ()> = DiGraphMap::new();
    for i in 0..drafts.len() {
        graph.add_node(i);
    }
    for (i, draft) in drafts.iter().enumerate().filter(|(_, draft)| !draft.broken) {
        for input in draft.inputs.values() {
            for s in input.edge.sources() {
                graph.add_edge(s.node, i, ());
            }
        }
    }
    // Both algorithms are iterative: a chain of 100,000 stages must not overflow the stack.
    if let Ok(order) = petgraph::algo::toposort(&graph, None) {
        return Some(order);
    }
    for scc in petgraph::algo::kosaraju_scc(&graph) {
        let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
        if scc.len() > 1 || self_loop {
            let cycle = describe_cycle(&graph, &scc, drafts);
            let first = &drafts[*scc.iter().min().expect("scc is not empty")];
            d.error(
                Some(&first.spec.name),
                first.spec.name_span,
                format!("dependency cycle: {cycle}"),
                "part of a cycle",
                Some("a stage cannot depend, directly or not, on its own output".into()),
            );
        }
    }
    None
}

fn describe_cycle(graph: &DiGraphMap<usize, ()>, scc: &[usize], drafts: &[Draft<'_>]) -> String {
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
    path.iter().map(|&i| drafts[i].id.as_str()).collect::<Vec<_>>().join(" -> ")
}

/// Resolves `stage`, `stage.port`, `stage[*]`, `stage[k=v,...]` (each optionally `.port`),
/// read by a draft whose matrix values are `own`.
fn resolve_ref(
    r: &str,
    own: &[(String, Value)],
    by_stage: &HashMap<&str, Vec<usize>>,
    all: &[Draft<'_>],
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
    if selector.is_none() && nodes.len() == 1 && all[nodes[0]].matrix.is_empty() {
        return Ok(InputEdge::One(Source { node: nodes[0], port }));
    }
    let matrices: Vec<&[(String, Value)]> = nodes.iter().map(|&n| all[n].matrix.as_slice()).collect();
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

/// The first few expansion ids of a stage, for a hint.
fn expansions(stage: &str, matrices: &[&[(String, Value)]]) -> String {
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

/// How many arrays and objects deep a value nests (0 for a scalar).
fn json_height(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(json_height).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(json_height).max().unwrap_or(0),
        _ => 0,
    }
}
