//! What a Slurm job runs on its node (`drover job`): one stage of a run, exactly as the local
//! executor runs it ([`drover_engine::exec::run_stage`]: under its key's lease, inputs
//! verified, outputs stored, record created first-writer-wins), then its status file.
//!
//! The job rebuilds the run's plan from the run directory and computes the stage's key from
//! its inputs' content there, so early cutoff holds on the cluster and a stage whose result is
//! stored meanwhile ends in a second without running.
//!
//! Signals: Slurm sends `SIGUSR1` some time before a time limit (`--signal`), when the job
//! makes what it wrote durable (the memo of language-model responses is written as answers
//! arrive; this syncs it); `SIGTERM` (time limit, preemption, `scancel`, a node taken down)
//! ends the job with an `interrupted` status, which the driver reads together with the queue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_cache::{RunRecord, RunStage, StageOutcome, Store};
use drover_engine::exec::{Dispatch, Event, Reporter, RunScope, job_inputs, run_stage};
use drover_engine::key::recipe_for;
use drover_engine::plan::{self, Plan};
use drover_engine::spec::{self, ParamOverrides};
use drover_engine::{OpRegistry, SectionDecl};

use crate::ctl::JobId;
use crate::rundir::{JobInput, RunDir, RunInfo, StageStatus};

/// Exit codes of a job: those of `drover run`.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_ENVIRONMENT: i32 = 3;
/// Stopped by SIGTERM.
pub const EXIT_TERMINATED: i32 = 143;
/// How long a job whose stage failed waits for a SIGTERM that may have caused the failure.
const SIGTERM_GRACE: Duration = Duration::from_millis(300);

/// The run's plan, rebuilt from its directory: the pipeline as it was when the run started,
/// with the same overrides.
pub fn load_plan(run: &RunDir, info: &RunInfo, ops: &OpRegistry) -> Result<Plan, String> {
    let text = std::fs::read_to_string(run.pipeline_copy())
        .map_err(|e| format!("cannot read {}: {e}", run.pipeline_copy().display()))?;
    let sections: Vec<SectionDecl> = ops.sections().cloned().collect();
    let overrides =
        ParamOverrides { files: (0..info.params_files).map(|i| run.params_copy(i)).collect(), sets: info.sets.clone() };
    let mut spec = spec::parse_str(&info.file, text, &overrides, &sections)
        .map_err(|e| format!("the run's pipeline does not parse any more: {e:?}"))?;
    spec.dir = info.dir.clone();
    plan::build(&spec, ops).map_err(|e| format!("the run's pipeline does not plan any more: {e:?}"))
}

/// Prints events as plain lines (they go to the job's output file).
struct Lines;

impl Reporter for Lines {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::StageStarted { stage, attempt } => println!("drover: {stage}: attempt {attempt} started"),
            Event::StageRetry { stage, attempt, error, delay } => {
                println!("drover: {stage}: attempt {attempt} failed: {error}; retrying in {delay:?}")
            }
            _ => {}
        }
    }
}

/// This job's id, from Slurm's environment (`123`, or `123_4` for an array task).
pub fn job_id_from_env() -> Option<JobId> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(array), Some(task)) => Some(JobId(format!("{array}_{task}"))),
        _ => var("SLURM_JOB_ID").map(JobId),
    }
}

/// The stage an array task runs: line `SLURM_ARRAY_TASK_ID` of its list.
pub fn stage_of_task(list: &str, task: &str) -> Result<String, String> {
    let i: usize = task.parse().map_err(|_| format!("SLURM_ARRAY_TASK_ID is {task:?}, not a task number"))?;
    list.lines().nth(i).map(str::to_string).ok_or_else(|| format!("the array list has no task {i}"))
}

/// Runs one stage of the run in `run` and writes its status; the process's exit code.
pub async fn run_job(run: &RunDir, info: &RunInfo, ops: &OpRegistry, stage: &str) -> i32 {
    let job = job_id_from_env();
    let restarts: u32 = std::env::var("SLURM_RESTART_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let node = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| drover_cache::host::me().hostname.clone());
    let t0 = Instant::now();
    let base = |outcome, error: Option<String>, env| StageStatus {
        error,
        env,
        duration_ms: t0.elapsed().as_millis() as u64,
        job: job.clone(),
        restarts,
        ..StageStatus::new(stage, outcome)
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut warn = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    let work = run_one(run, info, ops, stage, restarts);
    tokio::pin!(work);
    let mut status = loop {
        tokio::select! {
            status = &mut work => {
                let status = status.unwrap_or_else(|e| base(StageOutcome::Failed, Some(e), true));
                // Slurm signals every process of a job at once: a command killed by the SIGTERM
                // of a time limit or a cancel fails the stage a moment before this process
                // sees its own. That end is the cluster's, not the stage's: the queue says why.
                if status.outcome == StageOutcome::Failed
                    && let Ok(Some(())) = tokio::time::timeout(SIGTERM_GRACE, recv(&mut terminate)).await
                {
                    println!("drover: {stage}: SIGTERM (time limit, preemption, scancel or a node going down): stopped");
                    break base(StageOutcome::Interrupted, Some("stopped by SIGTERM".into()), true);
                }
                break status;
            }
            Some(()) = recv(&mut terminate) => {
                println!("drover: {stage}: SIGTERM (time limit, preemption, scancel or a node going down): stopping");
                break base(StageOutcome::Interrupted, Some("stopped by SIGTERM".into()), true);
            }
            Some(()) = recv(&mut warn) => {
                println!("drover: {stage}: Slurm warns that the time limit is near; syncing what was written");
                if let Ok(store) = Store::open(&info.store) {
                    store.memo().sync();
                }
            }
        }
    };
    status.job = job.clone();
    status.restarts = restarts;
    status.duration_ms = status.duration_ms.max(t0.elapsed().as_millis() as u64);
    status.notes.insert("node".into(), node);
    if let Some(job) = &job {
        status.notes.insert("slurm_job".into(), job.to_string());
        let out = run.output_path(job);
        if let Ok(rel) = out.strip_prefix(&info.store) {
            status.notes.insert("slurm_output".into(), rel.display().to_string());
        }
    }
    let code = match (status.outcome, status.env) {
        (StageOutcome::Ran | StageOutcome::Cached, _) => EXIT_OK,
        (StageOutcome::Interrupted, _) => EXIT_TERMINATED,
        (_, true) => EXIT_ENVIRONMENT,
        (_, false) => EXIT_FAILED,
    };
    let why = status.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    println!("drover: {stage}: {:?} after {:?}{why}", status.outcome, Duration::from_millis(status.duration_ms));
    if let Err(e) = run.write_json(&run.status_path(stage), &status) {
        eprintln!("drover: {stage}: cannot write its status: {e}");
        return EXIT_ENVIRONMENT;
    }
    code
}

async fn recv(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn run_one(
    run: &RunDir,
    info: &RunInfo,
    ops: &OpRegistry,
    stage: &str,
    restarts: u32,
) -> Result<StageStatus, String> {
    let plan = Arc::new(load_plan(run, info, ops)?);
    let idx = *plan.by_id.get(stage).ok_or_else(|| format!("the run's plan has no stage `{stage}`"))?;
    let store =
        Arc::new(Store::open(&info.store).map_err(|e| format!("cannot open store {}: {e}", info.store.display()))?);
    let node = &plan.nodes[idx];
    if restarts > node.retries {
        return Err(format!(
            "Slurm requeued this job {restarts} time(s) (node failure or preemption), more than the stage's `retries: {}`",
            node.retries
        ));
    }
    let outputs = upstream_outputs(run, info, &plan, idx)?;
    let recipe = recipe_for(&plan, idx, &store, &outputs)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the inputs of `{stage}` are not all known"))?;
    let key = recipe.key();
    let forced = info.forced.iter().any(|f| f == stage);
    let status = |outcome, outputs, f: Option<drover_engine::exec::Finished>| {
        let mut s = StageStatus { key: Some(key.clone()), outputs, restarts, ..StageStatus::new(stage, outcome) };
        if let Some(f) = f {
            s.error = f.error;
            s.env = f.env;
            s.attempts = f.attempts;
            s.duration_ms = f.duration.as_millis() as u64;
            s.log = f.log;
            s.notes = f.notes;
            s.reasons = f.reasons;
        }
        s
    };
    if !forced && let Some(cached) = store.cached_outputs(&key) {
        println!("drover: {stage}: stored under key {} already", key.short());
        return Ok(status(StageOutcome::Cached, Some(cached), None));
    }
    let inputs =
        job_inputs(&plan, idx, &outputs).ok_or_else(|| format!("the inputs of `{stage}` are not all known"))?;
    let scope =
        RunScope { run_id: info.run_id.clone(), plan: plan.clone(), store: store.clone(), reporter: Arc::new(Lines) };
    let last_key = store.load_state(&plan.pipeline).remove(stage);
    let finished = run_stage(&scope, Dispatch { idx, key: key.clone(), recipe, inputs, forced, last_key }).await;
    store.flush();
    let (outcome, outputs) = (finished.outcome, finished.outputs.clone());
    Ok(status(outcome, outputs, Some(finished)))
}

/// The outputs of the stage's upstream stages, by node: from the driver's inputs file, or (a
/// detached run) from their jobs' status files.
fn upstream_outputs(
    run: &RunDir,
    info: &RunInfo,
    plan: &Plan,
    idx: usize,
) -> Result<Vec<Option<BTreeMap<String, drover_cache::OutputRef>>>, String> {
    let mut outputs = vec![None; plan.nodes.len()];
    let stage = &plan.nodes[idx].id;
    if !info.detached {
        let path = run.input_path(stage);
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let input: JobInput =
            serde_json::from_slice(&bytes).map_err(|e| format!("{} does not parse: {e}", path.display()))?;
        for (id, outs) in input.upstream {
            let u = *plan.by_id.get(&id).ok_or_else(|| format!("{}: no stage `{id}` in the plan", path.display()))?;
            outputs[u] = Some(outs);
        }
        return Ok(outputs);
    }
    for u in plan.upstream(idx) {
        let id = &plan.nodes[u].id;
        let status = run.read_status(id).filter(StageStatus::is_final);
        match status.and_then(|s| s.outputs) {
            Some(outs) => outputs[u] = Some(outs),
            None => return Err(format!("input stage `{id}` has no outputs in this run (its job did not succeed)")),
        }
    }
    Ok(outputs)
}

/// The last job of a detached run (`drover submit`), after every other one ended: the run
/// record, from the status files, and the stage state `plan` explains changes with.
pub fn finish_run(run: &RunDir, info: &RunInfo, ops: &OpRegistry) -> Result<RunRecord, String> {
    let plan = load_plan(run, info, ops)?;
    let store = Store::open(&info.store).map_err(|e| format!("cannot open store {}: {e}", info.store.display()))?;
    write_record(run, info, &plan, &store)
}

/// Writes a detached run's record from its status files, and the stage state.
pub fn write_record(run: &RunDir, info: &RunInfo, plan: &Plan, store: &Store) -> Result<RunRecord, String> {
    let record = record_from_statuses(run, info, plan);
    let updates: BTreeMap<String, drover_cache::CacheKey> = record
        .stages
        .iter()
        .filter(|s| matches!(s.outcome, StageOutcome::Ran | StageOutcome::Cached))
        .filter_map(|s| Some((s.stage.clone(), s.key.clone()?)))
        .collect();
    store.update_state(&plan.pipeline, &updates).map_err(|e| e.to_string())?;
    store.put_run(&record).map_err(|e| e.to_string())?;
    Ok(record)
}

/// A detached run (`drover submit`) whose last job has not written its record yet.
#[derive(Debug)]
pub struct InFlight {
    pub run_id: String,
    pub pipeline: String,
    /// Unix seconds.
    pub started: u64,
    /// Every stage of the run, in submission order (stored ones first), with its status once
    /// its job wrote one.
    pub stages: Vec<(String, Option<StageStatus>)>,
}

/// The detached runs in a store that are still in flight, oldest first.
pub fn in_flight(store: &std::path::Path) -> Vec<InFlight> {
    let Ok(entries) = std::fs::read_dir(crate::rundir::runs_root(store)) else { return Vec::new() };
    let mut runs: Vec<InFlight> = entries
        .flatten()
        .filter_map(|e| {
            let run = RunDir { path: e.path() };
            let info = run.read_info().ok().filter(|i| i.detached)?;
            if store.join("runs").join(format!("{}.json", info.run_id)).exists() {
                return None;
            }
            let mut names: Vec<String> = std::fs::read_dir(run.path.join("status"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| crate::rundir::read_status_at(&e.path()).map(|s| s.stage))
                .filter(|s| !run.submissions().iter().any(|sub| sub.stages.contains(s)))
                .collect();
            names.sort();
            names.extend(run.submissions().into_iter().flat_map(|s| s.stages));
            let stages =
                names.into_iter().map(|s| (s.clone(), run.read_status(&s).filter(StageStatus::is_final))).collect();
            Some(InFlight { run_id: info.run_id, pipeline: info.pipeline, started: info.started, stages })
        })
        .collect();
    runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    runs
}

/// The run record of a detached run as its status files say now (while it runs, too): a
/// stage without a status is still `running` (reported as interrupted until it ends) or, once
/// the run is over, never ran because something it needs failed.
pub fn record_from_statuses(run: &RunDir, info: &RunInfo, plan: &Plan) -> RunRecord {
    let want = &info.selected;
    let selected: Vec<usize> =
        plan.order.iter().copied().filter(|i| want.is_empty() || want.contains(&plan.nodes[*i].id)).collect();
    let inputs = |idx: usize| {
        let mut ids: Vec<String> = plan.upstream(idx).into_iter().map(|u| plan.nodes[u].id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let mut stages = Vec::new();
    let mut failed = false;
    for idx in selected {
        let id = &plan.nodes[idx].id;
        let s = match run.read_status(id).filter(StageStatus::is_final) {
            Some(s) => RunStage {
                stage: id.clone(),
                outcome: s.outcome,
                key: s.key,
                duration_ms: s.duration_ms,
                error: s.error,
                log: s.log,
                notes: s.notes.into_iter().map(|(k, v)| (k, v.into())).collect(),
                attempts: s.attempts.max(s.restarts + 1),
                started_ms: None,
                inputs: inputs(idx),
                reasons: s.reasons,
            },
            None => RunStage {
                stage: id.clone(),
                outcome: StageOutcome::Skipped,
                key: None,
                duration_ms: 0,
                error: Some("its job did not run: a stage it needs failed, or it was cancelled".into()),
                log: None,
                notes: BTreeMap::new(),
                attempts: 0,
                started_ms: None,
                inputs: inputs(idx),
                reasons: Vec::new(),
            },
        };
        failed |= matches!(s.outcome, StageOutcome::Failed | StageOutcome::Skipped | StageOutcome::Interrupted);
        stages.push(s);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    RunRecord {
        id: info.run_id.clone(),
        pipeline: plan.pipeline.clone(),
        file: info.file.display().to_string(),
        started: info.started,
        duration_ms: Duration::from_secs(now.saturating_sub(info.started)).as_millis() as u64,
        status: if failed { "failed" } else { "ok" }.into(),
        stages,
        // A detached run's record is written by its last job, which knows only the run's
        // directory: who started it and from which revision is not recorded (yet).
        trigger: None,
        host: None,
        git_revision: None,
        params_digest: None,
        metrics: BTreeMap::new(),
        fail_if: Vec::new(),
    }
}
