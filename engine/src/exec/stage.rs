//! One stage's work in its own task: wait for its key's lock (another process may be computing
//! it), then attempt it up to `retries` more times: inputs materialised and verified against
//! their hashes, the op run (panic- and timeout-safe), inputs checked untouched, outputs stored,
//! and only then the record that names them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_cache::{
    CacheError, CacheKey, Corruption, OutputKind, OutputRef, Placed, Provenance, RunStage, Snapshot, StageOutcome,
    StageRecord, Store,
};

use super::{Event, Reporter, humanize};
use crate::error::EngineError;
use crate::key::Recipe;
use crate::op::{Input, InputItem, OpErrorKind, OutputSlot, PortType, RunCx, StageCx, StageNotes};
use crate::plan::Plan;

/// How a stage ended: reported by its executor, or settled by the scheduler without one
/// (cached without running, skipped after a failure upstream, interrupted).
#[derive(Clone, Debug)]
pub struct Finished {
    pub idx: usize,
    pub outcome: StageOutcome,
    pub outputs: Option<BTreeMap<String, OutputRef>>,
    pub error: Option<String>,
    /// The environment's fault (exit code 3), not the stage's.
    pub env: bool,
    pub attempts: u32,
    pub duration: Duration,
    /// The stage's log, relative to the store root.
    pub log: Option<String>,
    /// What the op noted about how it ran (the device it computed on), for the run record.
    pub notes: BTreeMap<String, String>,
    /// When its task started (stages that were launched), for the run's timeline.
    pub started: Option<Instant>,
    /// Why it ran, in words (stages that ran or failed).
    pub reasons: Vec<String>,
}

impl Finished {
    /// An end with no outputs, log or notes (yet): a failure before the op ran, or a stage the
    /// scheduler settles itself.
    pub fn new(idx: usize, outcome: StageOutcome, error: Option<String>, attempts: u32) -> Finished {
        Finished {
            idx,
            outcome,
            outputs: None,
            error,
            env: false,
            attempts,
            duration: Duration::ZERO,
            log: None,
            notes: BTreeMap::new(),
            started: None,
            reasons: Vec::new(),
        }
    }

    /// Its entry in the run record (the one place one is made), under `key` if it has one;
    /// `run_started` is when the run started (its timeline's zero).
    pub fn into_run_stage(self, plan: &Plan, key: Option<CacheKey>, run_started: Instant) -> RunStage {
        let mut inputs: Vec<String> = plan.upstream(self.idx).into_iter().map(|u| plan.nodes[u].id.clone()).collect();
        inputs.sort();
        inputs.dedup();
        RunStage {
            stage: plan.nodes[self.idx].id.clone(),
            outcome: self.outcome,
            key,
            duration_ms: self.duration.as_millis() as u64,
            error: self.error,
            log: self.log,
            notes: self.notes.into_iter().map(|(k, v)| (k, v.into())).collect(),
            attempts: self.attempts,
            started_ms: self.started.map(|t| t.saturating_duration_since(run_started).as_millis() as u64),
            inputs,
            reasons: self.reasons,
        }
    }
}

/// An upstream artifact: its node, type and stored output.
pub type Upstream = (usize, PortType, OutputRef);

/// Port -> (is a list, [(upstream node, type, artifact)]).
pub type JobInputs = BTreeMap<String, (bool, Vec<Upstream>)>;

/// One stage's work, moved into its task.
pub(super) struct StageJob {
    pub plan: Arc<Plan>,
    pub store: Arc<Store>,
    pub idx: usize,
    pub key: CacheKey,
    pub recipe: Recipe,
    pub inputs: JobInputs,
    pub run_id: String,
    pub forced: bool,
    pub reporter: Arc<dyn Reporter>,
    pub notes: StageNotes,
    /// The stage's key in the last run that recorded one (the store's state), to say why it runs.
    pub last_key: Option<CacheKey>,
}

impl StageJob {
    pub async fn run(self) -> Finished {
        let t0 = Instant::now();
        let idx = self.idx;
        let mut finished = match self.run_inner().await {
            Ok(f) => f,
            Err(e) => Finished { env: true, ..Finished::new(idx, StageOutcome::Failed, Some(e.to_string()), 1) },
        };
        finished.duration = t0.elapsed();
        finished.started = Some(t0);
        if matches!(finished.outcome, StageOutcome::Ran | StageOutcome::Failed) {
            // Compared with the key of its last run, as `drover plan` does (that record is
            // still in the store: a run adds records, never replaces one).
            finished.reasons = match self.forced {
                true => vec!["forced".to_string()],
                false => crate::status::explain(
                    &self.store,
                    &self.plan.nodes[idx],
                    &self.recipe,
                    &self.key,
                    self.last_key.as_ref(),
                ),
            };
        }
        finished
    }

    async fn run_inner(&self) -> Result<Finished, EngineError> {
        let node = &self.plan.nodes[self.idx];
        let store = self.store.clone();
        let key = self.key.clone();
        // Wait for any other process computing this key (on any host), then look again.
        let lock = tokio::task::spawn_blocking(move || store.lease_key(&key))
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
                        provenance: Provenance { params: Some(node.used_params.clone()) },
                        outputs: outputs.clone(),
                        created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                        duration_ms: t0.elapsed().as_millis() as u64,
                    };
                    // First writer wins: a process that stored this key meanwhile (its lease
                    // lost, on a filesystem shared by hosts) gave the answer everyone uses.
                    let outputs = if self.forced {
                        self.store.put_record(&record)?;
                        outputs
                    } else {
                        match self.store.create_record(&record)? {
                            Placed::Created => outputs,
                            Placed::Adopted(winner) => {
                                self.notes.set(
                                    "adopted",
                                    format!(
                                        "another process stored key {} first; its outputs are used",
                                        self.key.short()
                                    ),
                                );
                                winner.outputs
                            }
                        }
                    };
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
        Finished { outputs, env, log, notes: self.notes.all(), ..Finished::new(self.idx, outcome, error, attempts) }
    }

    /// One try: materialise and verify inputs, run the op (panic- and timeout-safe), check that
    /// it left its inputs alone, store its outputs.
    async fn attempt(&self, work: &Path, log: &Path) -> Result<BTreeMap<String, OutputRef>, AttemptFailure> {
        let node = &self.plan.nodes[self.idx];
        // Hashing a large input takes a while: off the async workers.
        // Hashing a large input takes a while: off the async workers. Small ones (most stages
        // of a long pipeline) are checked in place, which saves two thread hand-offs a stage.
        let input_bytes: u64 = self.inputs.values().flat_map(|(_, items)| items.iter().map(|(_, _, o)| o.size)).sum();
        let on_pool = input_bytes > INLINE_CHECK_BYTES;
        let (store, plan, wanted, in_dir) =
            (self.store.clone(), self.plan.clone(), self.inputs.clone(), work.join("in"));
        let (inputs, guards) = blocking(on_pool, move || prepare_inputs(&store, &plan, &wanted, &in_dir)).await?;
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
                sections: self.plan.sections.clone(),
                memo: self.store.memo(),
            },
            outputs: slots.clone(),
            work_dir: scratch,
            log_path: log.to_path_buf(),
            progress: self.reporter.progress(&node.id),
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
        blocking(on_pool, move || check_inputs_untouched(&store, &guards)).await?;
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

/// Inputs up to this many bytes in all are hashed on the async worker itself (a millisecond at
/// most); larger ones on the blocking pool.
const INLINE_CHECK_BYTES: u64 = 1 << 20;

/// Runs `work` on the blocking pool, or here when it is short.
async fn blocking<T: Send + 'static>(
    on_pool: bool,
    work: impl FnOnce() -> Result<T, AttemptFailure> + Send + 'static,
) -> Result<T, AttemptFailure> {
    if !on_pool {
        return work();
    }
    tokio::task::spawn_blocking(work).await.map_err(|e| AttemptFailure::env(e.to_string()))?
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
    wanted: &JobInputs,
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
