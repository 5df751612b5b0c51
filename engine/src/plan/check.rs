//! Phase 3 of planning: in an order where inputs come first, each draft's input types are taken
//! from its upstream outputs and matched against the ports its op declares, then the op checks
//! its params and inputs and says what comes out. So port types flow along edges, and an op's
//! errors are located in the file (see `spans`) and completed with what only the planner knows.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{Draft, InputEdge, UNNAMED_PORT, spans};
use crate::diag::{Diags, did_you_mean, list_names};
use crate::op::{CheckCx, Checked, OpInfo, PortDecl, PortType, Ports};
use crate::spec::PipelineSpec;

/// Checks every draft in `order`; each one's outputs are known before its dependents'.
pub(super) fn check(
    spec: &PipelineSpec,
    sections: &BTreeMap<String, Value>,
    drafts: &mut [Draft<'_>],
    order: &[usize],
    d: &mut Diags,
) {
    for &idx in order {
        if !drafts[idx].broken {
            name_unnamed_ports(drafts, idx);
        }
        let draft = &drafts[idx];
        let Some((op, info)) = draft.op.as_ref().filter(|_| !draft.broken) else { continue };
        let stage = draft.spec;
        let st = Some(stage.name.as_str());
        let mut input_types = input_types(drafts, idx, d);
        let mismatched = check_ports(drafts, idx, info, &input_types, d);
        let out_formats: BTreeMap<String, String> = stage
            .outputs
            .iter()
            .filter(|o| matches!(o.ty, PortType::Table(_)))
            .map(|o| (o.port.clone(), o.format.clone().unwrap_or_else(|| "parquet".into())))
            .collect();
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
        let declared: BTreeMap<String, PortType> =
            stage.outputs.iter().map(|o| (o.port.clone(), o.ty.clone())).collect();
        let cx = CheckCx {
            stage: &draft.id,
            params: &draft.params,
            inputs: &check_inputs,
            declared_outputs: &declared,
            pipeline_dir: &spec.dir,
            sections,
        };
        let checked = match op.check(&cx) {
            Ok(checked) => Some(checked),
            Err(errors) => {
                for e in errors {
                    let span = spans::locate(spec, stage, &e.at);
                    let label = spans::label(&e.at);
                    let table = e.subject_port().and_then(|port| table_origin(drafts, idx, &input_types, port));
                    let help = match (e.help, table) {
                        (Some(help), Some(table)) => Some(format!("{help} ({table})")),
                        (help, table) => help.or(table),
                    };
                    d.error(st, span, e.message, label, help);
                }
                None
            }
        };
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
        let draft = &mut drafts[idx];
        draft.out_formats = out_formats;
        if let Some(checked) = checked {
            draft.accept(checked);
        }
        if let Some(spec) = &stage.metrics {
            draft.metrics = crate::metrics::check(d, st, &draft.id, spec, draft.outputs.as_ref());
        }
    }
}

impl Draft<'_> {
    /// What its op said: its outputs, the files and the context that enter its key.
    fn accept(&mut self, checked: Checked) {
        let path = |p: &Path| p.to_string_lossy().to_string();
        self.deps.extend(checked.file_deps.iter().map(|p| (path(p), path(p))));
        self.deps.extend(checked.named_deps.iter().map(|(name, p)| (name.clone(), path(p))));
        self.outputs = Some(checked.outputs);
        self.context = checked.context;
    }
}

/// A reference that names no port (`stage`) reads the upstream's `out`, or its only output
/// when it has one output of another name (`read_model`'s `model`).
fn name_unnamed_ports(drafts: &mut [Draft<'_>], idx: usize) {
    let named: Vec<(String, usize, String)> = drafts[idx]
        .inputs
        .iter()
        .flat_map(|(port, input)| input.edge.sources().iter().enumerate().map(move |(i, s)| (port, i, s)))
        .filter(|(_, _, s)| s.port == UNNAMED_PORT)
        .map(|(port, i, s)| {
            let name = match drafts[s.node].outputs.as_ref() {
                Some(outs) if !outs.contains_key("out") && outs.len() == 1 => {
                    outs.keys().next().expect("one output").clone()
                }
                _ => "out".to_string(),
            };
            (port.clone(), i, name)
        })
        .collect();
    for (port, i, name) in named {
        let input = drafts[idx].inputs.get_mut(&port).expect("named above");
        input.edge.sources_mut()[i].port = name;
    }
}

/// The type arriving on each input port, from the upstream outputs; a port with a broken
/// upstream is left out (its declared type stands in). A reference to an output the upstream
/// does not have is reported here.
fn input_types(drafts: &[Draft<'_>], idx: usize, d: &mut Diags) -> BTreeMap<String, PortType> {
    let draft = &drafts[idx];
    let st = Some(draft.spec.name.as_str());
    let mut input_types = BTreeMap::new();
    for (port, input) in &draft.inputs {
        let edge = &input.edge;
        let mut types = Vec::new();
        for s in edge.sources() {
            let up = &drafts[s.node];
            let Some(outs) = up.outputs.as_ref() else { continue }; // a broken upstream
            match outs.get(&s.port) {
                Some(t) => types.push(t.clone()),
                None => {
                    let names: Vec<&str> = outs.keys().map(String::as_str).collect();
                    let help = did_you_mean(&s.port, names.iter().copied()).unwrap_or_else(|| {
                        format!("stage `{}` has outputs {}", up.spec.name, list_names(names.iter().copied()))
                    });
                    d.error(
                        st,
                        input.ref_span,
                        format!("input `{port}`: stage `{}` has no output `{}`", up.spec.name, s.port),
                        "no such output",
                        Some(help),
                    );
                }
            }
        }
        if types.len() == edge.sources().len() {
            let t = match edge {
                InputEdge::One(_) => types.pop().expect("one source"),
                InputEdge::List(_) => PortType::List(Box::new(types.first().cloned().unwrap_or(PortType::any_table()))),
            };
            input_types.insert(port.clone(), t);
        }
    }
    input_types
}

/// Checks the stage's `in:` and `out:` against the ports its op declares: unknown ports,
/// required inputs left out, and input types the port does not accept (those ports returned).
fn check_ports(
    drafts: &[Draft<'_>],
    idx: usize,
    info: &OpInfo,
    input_types: &BTreeMap<String, PortType>,
    d: &mut Diags,
) -> Vec<String> {
    let draft = &drafts[idx];
    let stage = draft.spec;
    let st = Some(stage.name.as_str());
    let mut mismatched = Vec::new();
    if let Ports::Fixed(decls) = &info.inputs {
        for (port, input) in &draft.inputs {
            match decls.iter().find(|d| d.name == port) {
                None => {
                    let help = did_you_mean(port, decls.iter().map(|d| d.name)).unwrap_or_else(|| {
                        format!("op `{}` takes inputs {}", info.name, list_names(decls.iter().map(|d| d.name)))
                    });
                    d.error(
                        st,
                        input.port_span,
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
                            input.edge.sources().first().map(|s| drafts[s.node].spec.name.as_str()).unwrap_or("?");
                        d.error(
                            st,
                            input.ref_span,
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
    mismatched
}

/// For an op's error about the table on input `port` (its [`crate::op::CheckSubject`]): which stage
/// that table comes from and its columns, when they are known. The op sees types, never stages.
fn table_origin(
    drafts: &[Draft<'_>],
    idx: usize,
    input_types: &BTreeMap<String, PortType>,
    port: &str,
) -> Option<String> {
    let up = drafts[idx].inputs.get(port)?.edge.sources().first()?;
    let cols = match input_types.get(port)? {
        PortType::Table(t) => t.columns.as_ref()?,
        _ => return None,
    };
    let names = list_names(cols.iter().map(|c| c.name.as_str()));
    Some(format!("input `{port}` is stage `{}`, with columns {names}", drafts[up.node].spec.name))
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
