//! What `drover plan` says: for every stage, cached or to run, and why, in words.

use std::collections::{BTreeMap, BTreeSet};

use drover_cache::{CacheKey, OutputRef, StageRecord, Store};
use serde::Serialize;
use serde_json::Value;

use crate::error::EngineError;
use crate::key::{Recipe, RecipeInput, recipe_for};
use crate::plan::{Plan, PlanNode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Cached,
    Run,
}

/// One line of `drover plan --json`: `{"stage", "action", "reasons"}` (a stable contract).
#[derive(Clone, Debug, Serialize)]
pub struct StageStatus {
    pub stage: String,
    pub action: Action,
    pub reasons: Vec<String>,
    /// For a stage that will run: how much of its work is already done (the op says, e.g.
    /// language-model requests already answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work: Option<String>,
    #[serde(skip)]
    pub key: Option<CacheKey>,
}

/// The status of every selected node, in plan order. Reads the store; runs nothing.
pub fn plan_status(
    plan: &Plan,
    store: &Store,
    selected: &BTreeSet<usize>,
    forced: &BTreeSet<usize>,
) -> Result<Vec<StageStatus>, EngineError> {
    let state = store.load_state(&plan.pipeline);
    let mut outputs: Vec<Option<BTreeMap<String, OutputRef>>> = vec![None; plan.nodes.len()];
    let mut will_run = vec![false; plan.nodes.len()];
    let mut out = Vec::new();
    for &idx in plan.order.iter().filter(|i| selected.contains(i)) {
        let node = &plan.nodes[idx];
        let recipe = recipe_for(plan, idx, store, &outputs)?;
        let Some(recipe) = recipe else {
            let pending: Vec<String> = plan
                .upstream(idx)
                .into_iter()
                .filter(|&u| will_run[u])
                .map(|u| format!("`{}`", plan.nodes[u].id))
                .collect();
            will_run[idx] = true;
            out.push(StageStatus {
                stage: node.id.clone(),
                action: Action::Run,
                reasons: vec![format!(
                    "upstream {} will run first (this stage stays cached if that output is unchanged)",
                    pending.join(", ")
                )],
                work: None,
                key: None,
            });
            continue;
        };
        let key = recipe.key();
        let record = store.cached_outputs(&key);
        let (action, reasons) = match (&record, forced.contains(&idx)) {
            (_, true) => (Action::Run, vec!["forced".to_string()]),
            (Some(cached), false) => {
                outputs[idx] = Some(cached.clone());
                (Action::Cached, vec![])
            }
            (None, false) => (Action::Run, explain(store, node, &recipe, &key, state.get(&node.id))),
        };
        will_run[idx] = action == Action::Run;
        let work = if action == Action::Run { work_left(plan, idx, store, &outputs) } else { None };
        out.push(StageStatus { stage: node.id.clone(), action, reasons, work, key: Some(key) });
    }
    Ok(out)
}

/// Asks the op how much of a stage's work is done, with its inputs read in place in the store.
fn work_left(
    plan: &Plan,
    idx: usize,
    store: &Store,
    outputs: &[Option<BTreeMap<String, OutputRef>>],
) -> Option<String> {
    use crate::op::{Input, InputItem, StageCx};
    use crate::plan::InputEdge;
    let node = &plan.nodes[idx];
    let mut inputs = BTreeMap::new();
    for (port, edge) in &node.inputs {
        let sources = match edge {
            InputEdge::One(s) => std::slice::from_ref(s),
            InputEdge::List(s) => s.as_slice(),
        };
        let mut items = Vec::new();
        for s in sources {
            let out = outputs[s.node].as_ref()?.get(&s.port)?;
            if out.kind == drover_cache::OutputKind::Dir {
                return None; // a manifest, not the directory: not readable in place
            }
            let up = &plan.nodes[s.node];
            items.push(InputItem {
                path: store.object_path(&out.hash),
                ty: up.outputs.get(&s.port)?.clone(),
                hash: out.hash.to_string(),
                stage: up.id.clone(),
                matrix: up.matrix.iter().cloned().collect(),
            });
        }
        let input = match edge {
            InputEdge::One(_) => Input::One(items.pop()?),
            InputEdge::List(_) => Input::List(items),
        };
        inputs.insert(port.clone(), input);
    }
    let cx = StageCx {
        stage: node.id.clone(),
        params: node.params.clone(),
        inputs,
        pipeline_dir: plan.dir.clone(),
        seed: node.seed,
        sections: plan.sections.clone(),
        memo: store.memo(),
    };
    node.op.work_left(&cx)
}

/// Why a stage with this recipe is not cached, compared with the last time it ran.
pub fn explain(
    store: &Store,
    node: &PlanNode,
    recipe: &Recipe,
    key: &CacheKey,
    last: Option<&CacheKey>,
) -> Vec<String> {
    let Some(last) = last else { return vec!["never run".into()] };
    if last == key {
        return vec!["its output is missing from the store (removed by gc, or quarantined by `cache verify`)".into()];
    }
    let Some(prev) = store.get_record(last) else {
        return vec!["changed since the last run (whose record is no longer in the store)".into()];
    };
    match serde_json::from_value::<Recipe>(prev.recipe.clone()) {
        Ok(prev_recipe) => diff(node, &prev, &prev_recipe, recipe),
        Err(_) => vec!["the cache key format changed".into()],
    }
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 { format!("{}...", s.chars().take(57).collect::<String>()) } else { s }
}

fn diff(node: &PlanNode, prev: &StageRecord, old: &Recipe, new: &Recipe) -> Vec<String> {
    let mut reasons = Vec::new();
    if old.format != new.format {
        reasons.push(format!("cache key format changed from {} to {}", old.format, new.format));
    }
    if old.op != new.op {
        reasons.push(format!("op changed from `{}` to `{}`", old.op, new.op));
    } else if old.op_version != new.op_version {
        reasons.push(format!("op `{}` version changed from {} to {}", new.op, old.op_version, new.op_version));
    }
    if old.params != new.params {
        let old_used = prev.provenance.params.as_ref();
        let mut explained = false;
        for (name, value) in &node.used_params {
            match old_used.and_then(|m| m.get(name)) {
                Some(before) if before != value => {
                    reasons.push(format!("param `{name}` changed from {} to {}", show(before), show(value)));
                    explained = true;
                }
                None if old_used.is_some() => {
                    reasons.push(format!("now uses param `{name}` = {}", show(value)));
                    explained = true;
                }
                _ => {}
            }
        }
        if !explained {
            let empty = serde_json::Map::new();
            let (o, n) = (old.params.as_object().unwrap_or(&empty), new.params.as_object().unwrap_or(&empty));
            let fields: BTreeSet<&String> = o.keys().chain(n.keys()).filter(|k| o.get(*k) != n.get(*k)).collect();
            for f in fields {
                match (o.get(f), n.get(f)) {
                    (Some(a), Some(b)) => reasons.push(format!("`with.{f}` changed from {} to {}", show(a), show(b))),
                    (None, Some(b)) => reasons.push(format!("`with.{f}` added: {}", show(b))),
                    (Some(_), None) => reasons.push(format!("`with.{f}` removed")),
                    (None, None) => {}
                }
            }
        }
    }
    let ports: BTreeSet<&String> = old.inputs.keys().chain(new.inputs.keys()).collect();
    for port in ports {
        match (old.inputs.get(port), new.inputs.get(port)) {
            (Some(a), Some(b)) if a != b => {
                let detail = match (a, b) {
                    (RecipeInput::List(x), RecipeInput::List(y)) if x.len() != y.len() => {
                        format!(" (now {} items, was {})", y.len(), x.len())
                    }
                    _ => String::new(),
                };
                reasons.push(format!("input `{port}` changed{detail}"));
            }
            (None, Some(_)) => reasons.push(format!("input `{port}` added")),
            (Some(_), None) => reasons.push(format!("input `{port}` removed")),
            _ => {}
        }
    }
    let deps: BTreeSet<&String> = old.deps.keys().chain(new.deps.keys()).collect();
    for dep in deps {
        match (old.deps.get(dep), new.deps.get(dep)) {
            (Some(a), Some(b)) if a != b => reasons.push(format!("dep file `{dep}` changed")),
            (None, Some(_)) => reasons.push(format!("dep `{dep}` added")),
            (Some(_), None) => reasons.push(format!("dep `{dep}` removed")),
            _ => {}
        }
    }
    let context: BTreeSet<&String> = old.context.keys().chain(new.context.keys()).collect();
    for name in context {
        match (old.context.get(name), new.context.get(name)) {
            (Some(a), Some(b)) if a != b => reasons.push(format!("{name} changed from {a} to {b}")),
            (None, Some(b)) => reasons.push(format!("{name} is now {b}")),
            (Some(_), None) => reasons.push(format!("{name} removed")),
            _ => {}
        }
    }
    if old.outputs != new.outputs {
        reasons.push("declared outputs changed".into());
    }
    if old.seed != new.seed {
        reasons.push(format!("seed changed from {} to {}", old.seed, new.seed));
    }
    if reasons.is_empty() {
        reasons.push("recipe changed".into());
    }
    reasons
}
