//! The executor: runs every ready stage as soon as its inputs exist, up to `jobs` at once and
//! within resource capacities; cached stages are settled without spawning anything. A failed
//! stage fails only its dependents. One lock per key means two processes never compute the
//! same key at once.
//!
//! [`run`] is the loop: the `Scheduler` (`scheduler.rs`) owns what waits, what is ready, what
//! runs and what it holds, and each launched stage is a `StageJob` (`stage.rs`) on its own task.

mod scheduler;
mod stage;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_cache::{RunRecord, StageOutcome, Store, Trigger};
use tokio::task::JoinSet;

use crate::error::EngineError;
use crate::op::{NoProgress, Progress, StageNotes};
use crate::plan::Plan;
use scheduler::Scheduler;
use stage::{Finished, StageJob};

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
    /// What the run record says of how and where the run started.
    pub meta: RunMeta,
}

/// How and where a run started, copied into its record as given (the engine reads none of it).
#[derive(Clone, Debug, Default)]
pub struct RunMeta {
    pub trigger: Option<Trigger>,
    pub host: Option<String>,
    pub git_revision: Option<String>,
    pub params_digest: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: 4,
            fail_fast: false,
            selected: BTreeSet::new(),
            forced: BTreeSet::new(),
            resources: BTreeMap::new(),
            meta: RunMeta::default(),
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
        /// What the op noted about how it ran (`device`: the compute device it used).
        notes: &'a BTreeMap<String, String>,
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
    let selected: BTreeSet<usize> =
        if opts.selected.is_empty() { (0..plan.nodes.len()).collect() } else { opts.selected.clone() };
    reporter.event(Event::Started { run_id: &run_id, stages: selected.len() });

    // Each stage's key in its last run, to say in the record why it runs again.
    let last_keys = store.load_state(&plan.pipeline);
    let mut sched = Scheduler::new(&plan, &opts, &selected);
    let mut tasks: JoinSet<Finished> = JoinSet::new();
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        sched.settle_ready(&store, &*reporter)?;
        for launch in sched.launch() {
            let job = StageJob {
                plan: plan.clone(),
                store: store.clone(),
                idx: launch.idx,
                key: launch.key,
                recipe: launch.recipe,
                inputs: launch.inputs,
                run_id: run_id.clone(),
                forced: opts.forced.contains(&launch.idx),
                reporter: reporter.clone(),
                notes: StageNotes::default(),
                last_key: last_keys.get(&plan.nodes[launch.idx].id).cloned(),
            };
            tasks.spawn(job.run());
        }
        if sched.nothing_running() {
            break;
        }
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                let finished = joined.map_err(|e| EngineError::Other(format!("executor task failed: {e}")))?;
                sched.finish(finished, &store, &*reporter);
            }
            _ = &mut ctrl_c => {
                interrupted = true;
                tasks.abort_all();
                sched.interrupt_running();
                break;
            }
        }
    }
    while tasks.join_next().await.is_some() {}

    let done = sched.end(interrupted);
    store.update_state(&plan.pipeline, &done.state_updates)?;
    store.flush();
    let record = RunRecord {
        id: run_id,
        pipeline: plan.pipeline.clone(),
        file: plan.file.display().to_string(),
        started: started.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        duration_ms: t0.elapsed().as_millis() as u64,
        status: if interrupted {
            "interrupted"
        } else if done.failed {
            "failed"
        } else {
            "ok"
        }
        .into(),
        stages: done.stages,
        trigger: opts.meta.trigger.clone(),
        host: opts.meta.host.clone(),
        git_revision: opts.meta.git_revision.clone(),
        params_digest: opts.meta.params_digest.clone(),
        metrics: BTreeMap::new(),
        fail_if: Vec::new(),
    };
    store.put_run(&record)?;
    Ok(RunSummary { record, environment_failure: done.environment_failure, interrupted, repairs: store.take_repairs() })
}

/// `1.5s`, `2m 03s`.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 { format!("{s:.1}s") } else { format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60) }
}
