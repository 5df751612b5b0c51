//! The executor: runs every ready stage as soon as its inputs exist, up to `jobs` at once and
//! within resource capacities; cached stages are settled without spawning anything. A failed
//! stage fails only its dependents. One lock per key means two processes never compute the
//! same key at once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_cache::{
    CacheError, CacheKey, Corruption, OutputKind, OutputRef, RunRecord, RunStage, Snapshot, StageOutcome, StageRecord,
    Store,
};
use serde_json::json;
use tokio::task::JoinSet;

use crate::error::EngineError;
use crate::key::{Recipe, recipe_for};
use crate::op::{
    Input, InputItem, NoProgress, OpErrorKind, OutputSlot, PortType, Progress, RunCx, StageCx, StageNotes,
};
use crate::plan::{InputEdge, Plan};

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub jobs: usize,
    /// Stop launching new stages after the first failure (default: independent branches finish).
    pub fail_fast: bool,
    /// Nodes to run (a target's closure); every node when empty.
    pub selected: BTreeSet<usize>,
    /// Nodes to rerun even if cached.
    pub forced: BTreeSet<usize>,
    /// Resource capacities, overriding the pipeline's `resources:`.
    pub resources: BTreeMap<String, u64>,
    /// The compute device chosen by the CLI (`auto`, `cpu`, `wgpu`), handed to ops; the device
    /// an op actually used is recorded in the run record, never in a key.
    pub device: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: 4,
            fail_fast: false,
            selected: BTreeSet::new(),
            forced: BTreeSet::new(),
            resources: BTreeMap::new(),
            device: "auto".into(),
        }
    }
}

/// Something that happened, for the terminal or a log.
#[derive(Debug)]
pub enum Event<'a> {
    Started {
        run_id: &'a str,
        stages: usize,
    },
    StageStarted {
        stage: &'a str,
        attempt: u32,
    },
    StageRetry {
        stage: &'a str,
        attempt: u32,
        error: &'a str,
        delay: Duration,
    },
    StageFinished {
        stage: &'a str,
        outcome: StageOutcome,
        duration: Duration,
        error: Option<&'a str>,
        log: Option<&'a Path>,
        /// The compute device the op used, if any.
        device: Option<&'a str>,
    },
}

/// Receives events; `progress` hands an op a sink for its own progress.
pub trait Reporter: Send + Sync {
    fn event(&self, event: Event<'_>);
    fn progress(&self, _stage: &str) -> Arc<dyn Progress> {
        Arc::new(NoProgress)
    }
}

/// What a run did.
#[derive(Debug)]
pub struct RunSummary {
    pub record: RunRecord,
    /// Some stage failed because of the environment (exit code 3 rather than 1).
    pub environment_failure: bool,
    pub interrupted: bool,
    /// What the store found wrong and repaired during the run (a blocked object path, say).
    pub repairs: Vec<String>,
}

impl RunSummary {
    pub fn count(&self, outcome: StageOutcome) -> usize {
        self.record.stages.iter().filter(|s| s.outcome == outcome).count()
    }
}

struct Finished {
    idx: usize,
    outcome: StageOutcome,
    outputs: Option<BTreeMap<String, OutputRef>>,
    error: Option<String>,
    env: bool,
    attempts: u32,
    duration: Duration,
    log: Option<String>,
    /// The device the op computed on, if it used one.
    device: Option<String>,
}

/// Runs the selected part of a plan.
pub async fn run(
    plan: Arc<Plan>,
    store: Arc<Store>,
    opts: RunOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<RunSummary, EngineError> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let run_id = RunRecord::new_id(started);
    store.clean_stale_tmp();
    let n = plan.nodes.len();
    let selected: BTreeSet<usize> = if opts.selected.is_empty() { (0..n).collect() } else { opts.selected.clone() };
    reporter.event(Event::Started { run_id: &run_id, stages: selected.len() });

    let mut capacity = plan.resources.clone();
    capacity.extend(opts.resources.clone());
    for node in &plan.nodes {
        for (r, want) in &node.resources {
            let cap = capacity.entry(r.clone()).or_insert(*want);
            *cap = (*cap).max(*want);
        }
    }
    let mut in_use: BTreeMap<String, u64> = BTreeMap::new();

    let mut remaining = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &i in &selected {
        for u in plan.upstream(i) {
            remaining[i] += 1;
            dependents[u].push(i);
        }
    }
    let mut ready: VecDeque<usize> =
        plan.order.iter().copied().filter(|i| selected.contains(i) && remaining[*i] == 0).collect();
    let mut outputs: Vec<Option<BTreeMap<String, OutputRef>>> = vec![None; n];
    let mut results: BTreeMap<usize, RunStage> = BTreeMap::new();
    let mut keys: Vec<Option<CacheKey>> = vec![None; n];
    let mut recipes: Vec<Option<Recipe>> = vec![None; n];
    // Checked, not cached, waiting for a job slot or resources.
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let mut state_updates: BTreeMap<String, CacheKey> = BTreeMap::new();
    let mut tasks: JoinSet<Finished> = JoinSet::new();
    let mut running: BTreeSet<usize> = BTreeSet::new();
    let mut stop_launching = false;
    let mut environment_failure = false;
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        // Settle cached stages: each ready stage's key is computed and looked up once.
        while let Some(idx) = ready.pop_front() {
            let node = &plan.nodes[idx];
            let recipe = recipe_for(&plan, idx, &store, &outputs)?
                .ok_or_else(|| EngineError::Other(format!("inputs of `{}` are not ready", node.id)))?;
            let key = recipe.key();
            keys[idx] = Some(key.clone());
            if !opts.forced.contains(&idx)
                && let Some(cached) = store.cached_outputs(&key)
            {
                outputs[idx] = Some(cached);
                state_updates.insert(node.id.clone(), key.clone());
                results.insert(
                    idx,
                    RunStage {
                        stage: node.id.clone(),
                        outcome: StageOutcome::Cached,
                        key: Some(key),
                        duration_ms: 0,
                        error: None,
                        log: None,
                        device: None,
                        attempts: 0,
                    },
                );
                reporter.event(Event::StageFinished {
                    stage: &node.id,
                    outcome: StageOutcome::Cached,
                    duration: Duration::ZERO,
                    error: None,
                    log: None,
                    device: None,
                });
                release_dependents(idx, &dependents, &mut remaining, &mut ready);
                continue;
            }
            recipes[idx] = Some(recipe);
            waiting.push_back(idx);
        }
        // Launch what fits. Past the job limit nothing more can start, so the scan stops there
        // (a join over 10,000 ready stages must not cost 10,000 steps per finished stage).
        let mut blocked = VecDeque::new();
        while let Some(idx) = waiting.pop_front() {
            let node = &plan.nodes[idx];
            if stop_launching || running.len() >= opts.jobs.max(1) {
                blocked.push_back(idx);
                blocked.append(&mut waiting);
                break;
            }
            let fits = node.resources.iter().all(|(r, want)| in_use.get(r).copied().unwrap_or(0) + want <= capacity[r]);
            if !fits {
                blocked.push_back(idx);
                continue;
            }
            for (r, want) in &node.resources {
                *in_use.entry(r.clone()).or_default() += want;
            }
            running.insert(idx);
            let inputs = node
                .inputs
                .iter()
                .map(|(port, edge)| {
                    let artifact = |s: &crate::plan::Source| {
                        let out =
                            outputs[s.node].as_ref().and_then(|o| o.get(&s.port)).cloned().expect("inputs are done");
                        let ty = plan.nodes[s.node].outputs.get(&s.port).cloned().unwrap_or(PortType::Blob);
                        (s.node, ty, out)
                    };
                    let items = match edge {
                        InputEdge::One(s) => (false, vec![artifact(s)]),
                        InputEdge::List(v) => (true, v.iter().map(artifact).collect()),
                    };
                    (port.clone(), items)
                })
                .collect();
            let job = StageJob {
                plan: plan.clone(),
                store: store.clone(),
                idx,
                key: keys[idx].clone().expect("computed when ready"),
                recipe: recipes[idx].take().expect("computed when ready"),
                inputs,
                run_id: run_id.clone(),
                forced: opts.forced.contains(&idx),
                reporter: reporter.clone(),
                device: opts.device.clone(),
                notes: StageNotes::default(),
            };
            tasks.spawn(job.run());
        }
        waiting = blocked;
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                let f = match joined {
                    Ok(f) => f,
                    Err(e) => return Err(EngineError::Other(format!("executor task failed: {e}"))),
                };
                let idx = f.idx;
                let node = &plan.nodes[idx];
                running.remove(&idx);
                for (r, want) in &node.resources {
                    *in_use.entry(r.clone()).or_default() -= want;
                }
                let key = keys[idx].clone();
                reporter.event(Event::StageFinished {
                    stage: &node.id,
                    outcome: f.outcome,
                    duration: f.duration,
                    error: f.error.as_deref(),
                    log: f.log.as_ref().map(|l| store.root().join(l)).as_deref(),
                    device: f.device.as_deref(),
                });
                match f.outputs {
                    Some(outs) => {
                        outputs[idx] = Some(outs);
                        if let Some(k) = &key {
                            state_updates.insert(node.id.clone(), k.clone());
                        }
                        release_dependents(idx, &dependents, &mut remaining, &mut ready);
                    }
                    None => {
                        environment_failure |= f.env;
                        stop_launching |= opts.fail_fast;
                        skip_dependents(idx, &plan, &dependents, &mut results);
                    }
                }
                results.insert(idx, RunStage {
                    stage: node.id.clone(),
                    outcome: f.outcome,
                    key,
                    duration_ms: f.duration.as_millis() as u64,
                    error: f.error,
                    log: f.log,
                    device: f.device,
                    attempts: f.attempts,
                });
            }
            _ = &mut ctrl_c => {
                interrupted = true;
                tasks.abort_all();
                for &idx in &running {
                    results.insert(idx, RunStage { stage: plan.nodes[idx].id.clone(), outcome: StageOutcome::Interrupted, key: keys[idx].clone(), duration_ms: 0, error: Some("interrupted".into()), log: None, device: None, attempts: 1 });
                }
                break;
            }
        }
    }
    while tasks.join_next().await.is_some() {}

    // Stages never reached (fail-fast or interrupt) are recorded as such.
    for &idx in plan.order.iter().filter(|i| selected.contains(i)) {
        results.entry(idx).or_insert_with(|| RunStage {
            stage: plan.nodes[idx].id.clone(),
            outcome: if interrupted { StageOutcome::Interrupted } else { StageOutcome::Skipped },
            key: None,
            duration_ms: 0,
            error: None,
            log: None,
            device: None,
            attempts: 0,
        });
    }
    store.update_state(&plan.pipeline, &state_updates)?;
    store.flush();
    let failed = results.values().any(|r| matches!(r.outcome, StageOutcome::Failed | StageOutcome::Skipped));
    let stages: Vec<RunStage> = plan.order.iter().filter_map(|i| results.remove(i)).collect();
    let record = RunRecord {
        id: run_id,
        pipeline: plan.pipeline.clone(),
        file: plan.file.display().to_string(),
        started: started.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        duration_ms: t0.elapsed().as_millis() as u64,
        status: if interrupted {
            "interrupted"
        } else if failed {
            "failed"
        } else {
            "ok"
        }
        .into(),
        stages,
    };
    store.put_run(&record)?;
    Ok(RunSummary { record, environment_failure, interrupted, repairs: store.take_repairs() })
}

fn release_dependents(idx: usize, dependents: &[Vec<usize>], remaining: &mut [usize], ready: &mut VecDeque<usize>) {
    for &d in &dependents[idx] {
        remaining[d] -= 1;
        if remaining[d] == 0 {
            ready.push_back(d);
        }
    }
}

fn skip_dependents(idx: usize, plan: &Plan, dependents: &[Vec<usize>], results: &mut BTreeMap<usize, RunStage>) {
    let mut stack = dependents[idx].clone();
    while let Some(d) = stack.pop() {
        if results.contains_key(&d) {
            continue;
        }
        results.insert(
            d,
            RunStage {
                stage: plan.nodes[d].id.clone(),
                outcome: StageOutcome::Skipped,
                key: None,
                duration_ms: 0,
                error: Some(format!("`{}` failed", plan.nodes[idx].id)),
                log: None,
                device: None,
                attempts: 0,
            },
        );
        stack.extend(dependents[d].iter().copied());
    }
}

/// An upstream artifact: its node, type and stored output.
type Upstream = (usize, PortType, OutputRef);

/// One stage's work, moved into its task.
struct StageJob {
    plan: Arc<Plan>,
    store: Arc<Store>,
    idx: usize,
    key: CacheKey,
    recipe: Recipe,
    /// Port -> (is a list, [(upstream node, type, artifact)]).
    inputs: BTreeMap<String, (bool, Vec<Upstream>)>,
    run_id: String,
    forced: bool,
    reporter: Arc<dyn Reporter>,
    device: String,
    notes: StageNotes,
}

impl StageJob {
    async fn run(self) -> Finished {
        let t0 = Instant::now();
        let idx = self.idx;
        let mut finished = match self.run_inner().await {
            Ok(f) => f,
            Err(e) => Finished {
                idx,
                outcome: StageOutcome::Failed,
                outputs: None,
                error: Some(e.to_string()),
                env: true,
                attempts: 1,
                duration: Duration::ZERO,
                log: None,
                device: None,
            },
        };
        finished.duration = t0.elapsed();
        finished
    }

    async fn run_inner(&self) -> Result<Finished, EngineError> {
        let node = &self.plan.nodes[self.idx];
        let store = self.store.clone();
        let key = self.key.clone();
        // Wait for any other process computing this key, then look again.
        let lock = tokio::task::spawn_blocking(move || store.lock_key(&key))
            .await
            .map_err(|e| EngineError::Other(e.to_string()))??;
        if !self.forced
            && let Some(cached) = self.store.cached_outputs(&self.key)
        {
            drop(lock);
            return Ok(self.done(StageOutcome::Cached, Some(cached), None, false, 0, None));
        }
        let (log_abs, log_rel) = self.store.log_path(&self.run_id, &node.id);
        if let Some(parent) = log_abs.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| EngineError::Other(format!("create {}: {e}", parent.display())))?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.reporter.event(Event::StageStarted { stage: &node.id, attempt });
            let t0 = Instant::now();
            let work = self.store.new_work_dir(&node.id)?;
            let result = self.attempt(&work, &log_abs).await;
            let log = log_abs.exists().then(|| log_rel.clone());
            match result {
                Ok(outputs) => {
                    let record = StageRecord {
                        key: self.key.clone(),
                        stage: node.id.clone(),
                        recipe: serde_json::to_value(&self.recipe).expect("recipes serialise"),
                        provenance: json!({ "params": node.used_params }),
                        outputs: outputs.clone(),
                        created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                        duration_ms: t0.elapsed().as_millis() as u64,
                    };
                    self.store.put_record(&record)?;
                    let _ = std::fs::remove_dir_all(&work);
                    drop(lock);
                    return Ok(self.done(StageOutcome::Ran, Some(outputs), None, false, attempt, log));
                }
                Err(failure) => {
                    let _ = std::fs::remove_dir_all(&work);
                    if attempt <= node.retries && !failure.final_ {
                        let delay = Duration::from_millis(500u64.saturating_mul(1 << (attempt - 1).min(6)));
                        self.reporter.event(Event::StageRetry {
                            stage: &node.id,
                            attempt,
                            error: &failure.message,
                            delay,
                        });
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Ok(self.done(StageOutcome::Failed, None, Some(failure.message), failure.env, attempt, log));
                }
            }
        }
    }

    fn done(
        &self,
        outcome: StageOutcome,
        outputs: Option<BTreeMap<String, OutputRef>>,
        error: Option<String>,
        env: bool,
        attempts: u32,
        log: Option<String>,
    ) -> Finished {
        let device = self.notes.device();
        Finished { idx: self.idx, outcome, outputs, error, env, attempts, duration: Duration::ZERO, log, device }
    }

    /// One try: materialise and verify inputs, run the op (panic- and timeout-safe), check that
    /// it left its inputs alone, store its outputs.
    async fn attempt(&self, work: &Path, log: &Path) -> Result<BTreeMap<String, OutputRef>, AttemptFailure> {
        let node = &self.plan.nodes[self.idx];
        // Hashing a large input takes a while: off the async workers.
        let (store, plan, wanted, in_dir) =
            (self.store.clone(), self.plan.clone(), self.inputs.clone(), work.join("in"));
        let (inputs, guards) = tokio::task::spawn_blocking(move || prepare_inputs(&store, &plan, &wanted, &in_dir))
            .await
            .map_err(|e| AttemptFailure::env(e.to_string()))??;
        let out_dir = work.join("out");
        std::fs::create_dir_all(&out_dir)
            .map_err(|e| AttemptFailure::env(format!("create {}: {e}", out_dir.display())))?;
        let mut slots = BTreeMap::new();
        for (port, ty) in &node.outputs {
            let path = match ty {
                PortType::Table(_) => {
                    out_dir.join(format!("{port}.{}", node.out_formats.get(port).map_or("parquet", String::as_str)))
                }
                _ => out_dir.join(port),
            };
            if *ty == PortType::Dir {
                std::fs::create_dir_all(&path)
                    .map_err(|e| AttemptFailure::env(format!("create {}: {e}", path.display())))?;
            }
            slots.insert(port.clone(), OutputSlot { path, ty: ty.clone() });
        }
        let scratch = work.join("scratch");
        let _ = std::fs::create_dir_all(&scratch);
        let cx = RunCx {
            stage_cx: StageCx {
                stage: node.id.clone(),
                params: node.params.clone(),
                inputs,
                pipeline_dir: self.plan.dir.clone(),
                seed: node.seed,
                llms: self.plan.llms.clone(),
                memo: self.store.memo(),
            },
            outputs: slots.clone(),
            work_dir: scratch,
            log_path: log.to_path_buf(),
            progress: self.reporter.progress(&node.id),
            device: self.device.clone(),
            notes: self.notes.clone(),
        };
        let op = node.op.clone();
        let task = tokio::spawn(async move { op.run(cx).await });
        let abort = task.abort_handle();
        let joined = match node.timeout {
            Some(limit) => match tokio::time::timeout(limit, task).await {
                Ok(j) => Some(j),
                Err(_) => {
                    abort.abort();
                    None
                }
            },
            None => Some(task.await),
        };
        // Whatever the op did, it must not have written to its inputs (they are the store's).
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || check_inputs_untouched(&store, &guards))
            .await
            .map_err(|e| AttemptFailure::env(e.to_string()))??;
        let Some(joined) = joined else {
            let limit = node.timeout.expect("only a timeout ends without a result");
            return Err(AttemptFailure::stage(format!("timed out after {}", humanize(limit))));
        };
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(AttemptFailure {
                    message: e.message,
                    env: e.kind == OpErrorKind::Environment,
                    final_: false,
                });
            }
            Err(e) if e.is_panic() => {
                let msg = e.into_panic();
                let text = msg
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| msg.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Err(AttemptFailure::stage(format!("op `{}` panicked (a bug in drover): {text}", node.op_name)));
            }
            Err(e) => return Err(AttemptFailure::env(format!("stage task ended: {e}"))),
        }
        // Store every declared output; the record is written only after all are durable.
        let store = self.store.clone();
        let slots_vec: Vec<(String, OutputSlot)> = slots.into_iter().collect();
        tokio::task::spawn_blocking(move || commit_outputs(&store, slots_vec))
            .await
            .map_err(|e| AttemptFailure::env(e.to_string()))?
    }
}

/// Why one attempt of a stage failed.
struct AttemptFailure {
    message: String,
    /// The environment's fault (exit 3), not the stage's (exit 1).
    env: bool,
    /// Trying again cannot help (an input is corrupt, or the stage wrote to one).
    final_: bool,
}

impl AttemptFailure {
    fn env(message: impl Into<String>) -> AttemptFailure {
        AttemptFailure { message: message.into(), env: true, final_: false }
    }

    fn stage(message: impl Into<String>) -> AttemptFailure {
        AttemptFailure { message: message.into(), env: false, final_: false }
    }
}

/// An input as a stage received it, to check afterwards that the stage left it alone.
struct InputGuard {
    /// `port`, or `port` item `i` for a list input.
    what: String,
    /// The upstream stage that produced it.
    stage: String,
    out: OutputRef,
    snapshot: Snapshot,
}

/// Materialises a stage's inputs under `dir` and checks that each one's bytes are the bytes its
/// hash names (the hash the stage's key was computed from), before the op may read them.
fn prepare_inputs(
    store: &Store,
    plan: &Plan,
    wanted: &BTreeMap<String, (bool, Vec<Upstream>)>,
    dir: &Path,
) -> Result<(BTreeMap<String, Input>, Vec<InputGuard>), AttemptFailure> {
    let mut inputs = BTreeMap::new();
    let mut guards = Vec::new();
    for (port, (is_list, items)) in wanted {
        let mut mats = Vec::new();
        for (i, (src, ty, out)) in items.iter().enumerate() {
            let up = &plan.nodes[*src];
            let what = if *is_list { format!("`{port}` (item {i})") } else { format!("`{port}`") };
            let name = if *is_list { format!("{port}/{i}") } else { port.clone() };
            let path = dir.join(match out.kind {
                OutputKind::Table => format!("{name}.parquet"),
                _ => name,
            });
            let missing = |e: CacheError| match e {
                CacheError::MissingObject(h) => AttemptFailure {
                    message: format!(
                        "input {what} (from `{}`): its stored object {} is gone (quarantined as corrupt, or removed \
                         by another process's gc); run again to recompute `{}`",
                        up.id,
                        &h[..12],
                        up.id
                    ),
                    env: true,
                    final_: true,
                },
                e => AttemptFailure::env(format!("input {what} (from `{}`): {e}", up.id)),
            };
            match out.kind {
                OutputKind::Dir => store.materialize_dir(&out.hash, &path).map_err(missing)?,
                _ => store.materialize(&out.hash, &path).map_err(missing)?,
            }
            // Noted before hashing, so that a write at any moment after is seen.
            let snapshot = store.snapshot(out).map_err(missing)?;
            if let Some(bad) = store.check_artifact(out).map_err(missing)? {
                return Err(corrupt_input(store, &what, &up.id, &bad, false));
            }
            guards.push(InputGuard { what, stage: up.id.clone(), out: out.clone(), snapshot });
            mats.push(InputItem {
                path,
                ty: ty.clone(),
                hash: out.hash.to_string(),
                stage: up.id.clone(),
                matrix: up.matrix.iter().cloned().collect(),
            });
        }
        let input = if *is_list { Input::List(mats) } else { Input::One(mats.pop().expect("one item")) };
        inputs.insert(port.clone(), input);
    }
    Ok((inputs, guards))
}

/// After the op: an input whose files changed is hashed again; if its bytes are no longer its
/// hash's, the stage wrote to it (through its hard link into the store).
fn check_inputs_untouched(store: &Store, guards: &[InputGuard]) -> Result<(), AttemptFailure> {
    for g in guards.iter().filter(|g| store.changed_since(&g.snapshot)) {
        match store.check_artifact(&g.out) {
            Ok(None) => {}
            Ok(Some(bad)) => return Err(corrupt_input(store, &g.what, &g.stage, &bad, true)),
            Err(e) => {
                return Err(AttemptFailure {
                    message: format!(
                        "input {} (from `{}`) was removed or replaced while the stage ran: {e}",
                        g.what, g.stage
                    ),
                    env: false,
                    final_: true,
                });
            }
        }
    }
    Ok(())
}

/// Quarantines a corrupt input and drops the records built from it; the failure to report.
/// `by_stage`: found after the op ran, so the stage itself wrote to it.
fn corrupt_input(store: &Store, what: &str, stage: &str, bad: &Corruption, by_stage: bool) -> AttemptFailure {
    let object = match &bad.file {
        Some(file) => format!("file `{file}` (object {})", bad.object.short()),
        None => format!("object {}", bad.object.short()),
    };
    let cleanup = match store.invalidate(&BTreeSet::from([bad.object.clone()])) {
        Ok(done) => format!(
            "drover moved it to quarantine/ and removed {} record(s) built from it, so `{stage}` reruns next time",
            done.records.len()
        ),
        Err(e) => format!("quarantining it failed ({e}); run `drover cache verify`"),
    };
    let message = if by_stage {
        format!(
            "the stage wrote to its input {what} (from `{stage}`): {object} no longer matches its hash. Inputs are \
             shared with the store and must never be written; copy one to change it (e.g. into $DROVER_SCRATCH). \
             {cleanup}"
        )
    } else {
        format!(
            "input {what} (from `{stage}`) is corrupt in the store: {object} no longer matches its hash (the disk, \
             or a process outside drover, changed it). {cleanup}; run again"
        )
    };
    AttemptFailure { message, env: !by_stage, final_: true }
}

fn commit_outputs(
    store: &Store,
    slots: Vec<(String, OutputSlot)>,
) -> Result<BTreeMap<String, OutputRef>, AttemptFailure> {
    let stored = |port: &str, e: CacheError| AttemptFailure {
        env: !e.is_stage_fault(),
        message: format!("output `{port}`: {e}"),
        final_: false,
    };
    let mut out = BTreeMap::new();
    for (port, slot) in slots {
        // Never follow a link the stage left: what it points at is not the stage's to store.
        let Ok(meta) = std::fs::symlink_metadata(&slot.path) else {
            return Err(AttemptFailure::stage(format!(
                "output `{port}` was not written (expected {} at {})",
                slot.ty.kind_name(),
                slot.path.display()
            )));
        };
        let (kind, (hash, size)) = match &slot.ty {
            PortType::Dir => (OutputKind::Dir, store.put_dir(&slot.path).map_err(|e| stored(&port, e))?),
            ty => {
                let kind = if matches!(ty, PortType::Table(_)) { OutputKind::Table } else { OutputKind::Blob };
                if kind == OutputKind::Table && meta.is_file() && !is_parquet(&slot.path) {
                    return Err(AttemptFailure::stage(format!(
                        "output `{port}` is not a Parquet file (the op must write tables as Parquet)"
                    )));
                }
                (kind, store.put_file(&slot.path).map_err(|e| stored(&port, e))?)
            }
        };
        out.insert(port, OutputRef { kind, hash, size });
    }
    Ok(out)
}

fn is_parquet(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut head = [0u8; 4];
    let mut tail = [0u8; 4];
    f.read_exact(&mut head).is_ok()
        && f.seek(SeekFrom::End(-4)).is_ok()
        && f.read_exact(&mut tail).is_ok()
        && &head == b"PAR1"
        && &tail == b"PAR1"
}

/// `1.5s`, `2m 03s`.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 { format!("{s:.1}s") } else { format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60) }
}
