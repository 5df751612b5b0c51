//! The executor: runs every ready stage as soon as its inputs exist, up to `jobs` at once and
//! within resource capacities; cached stages are settled without starting anything. A failed
//! stage fails only its dependents. A lease per key means two processes (on any hosts sharing
//! the store) rarely compute the same key at once, and never store two answers for it.
//!
//! [`run_on`] is the loop: the `Scheduler` (`scheduler.rs`) owns what waits, what is ready, what
//! runs and what it holds; an [`Executor`] (`executor.rs`) starts what the scheduler hands it,
//! where it runs: [`LocalExecutor`] as tasks of this process, each one a `StageJob`
//! (`stage.rs`); a cluster executor as jobs that run [`run_stage`] on a node.

mod executor;
mod scheduler;
mod stage;
mod tier;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_cache::{CacheKey, OutputRef, RunRecord, StageOutcome, Store, Trigger};

use crate::error::EngineError;
use crate::op::{NoProgress, Progress};
use crate::plan::Plan;
pub use executor::{Cancel, Dispatch, Executor, LocalExecutor, RunScope, job_inputs, run_stage};
use scheduler::Scheduler;
pub use stage::{Finished, JobInputs, Upstream};
pub use tier::Tier;

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
    /// A cache tier behind the store (a team cache): looked in before a stage is computed,
    /// and sent what this run computes.
    pub tier: Option<Arc<dyn Tier>>,
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
            tier: None,
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

/// Runs the selected part of a plan in this process.
pub async fn run(
    plan: Arc<Plan>,
    store: Arc<Store>,
    opts: RunOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<RunSummary, EngineError> {
    run_on(plan, store, opts, reporter, &mut LocalExecutor::default()).await
}

/// Runs the selected part of a plan, starting stages on `executor`.
pub async fn run_on(
    plan: Arc<Plan>,
    store: Arc<Store>,
    opts: RunOptions,
    reporter: Arc<dyn Reporter>,
    executor: &mut dyn Executor,
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
    let scope =
        RunScope { run_id: run_id.clone(), plan: plan.clone(), store: store.clone(), reporter: reporter.clone() };
    executor.begin(&scope).await?;
    let mut sched = Scheduler::new(&plan, &opts, &selected, executor.places_resources());
    let mut interrupted = false;
    // Stages this run computed, on their way to the tier.
    let mut pushes = tokio::task::JoinSet::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        sched.settle_ready(&store, &*reporter)?;
        // Stages to compute are looked up in the tier first, all that wait (not only those a
        // job slot lets start): a lookup costs a request, not a slot.
        if let Some(tier) = &opts.tier {
            let asked = sched.take_lookups();
            if !asked.is_empty() {
                let found = look_up(tier, &store, asked).await;
                let hits = found.len();
                for (idx, outputs) in found {
                    sched.settle_from_tier(idx, outputs, ("remote", tier.location()), &store, &*reporter);
                }
                if hits > 0 {
                    // Their dependents may be ready now.
                    continue;
                }
            }
        }
        let mut dispatched = sched.launch();
        if !dispatched.is_empty() {
            for d in &mut dispatched {
                d.last_key = last_keys.get(&plan.nodes[d.idx].id).cloned();
            }
            executor.start(&scope, dispatched).await;
        }
        if sched.nothing_running() {
            break;
        }
        tokio::select! {
            ended = executor.next(&scope) => {
                let Some(finished) = ended else {
                    return Err(EngineError::Other(format!(
                        "the {} executor has no stage in flight, but the run waits for one (a bug in drover)",
                        executor.name()
                    )));
                };
                let failed = finished.outputs.is_none();
                if let (Some(tier), StageOutcome::Ran, Some(key)) =
                    (&opts.tier, finished.outcome, sched.key(finished.idx))
                {
                    let (tier, store, key) = (tier.clone(), store.clone(), key.clone());
                    pushes.spawn(async move { tier.push(&store, &key).await });
                }
                sched.finish(finished, &store, &*reporter);
                if failed && opts.fail_fast {
                    for stopped in executor.cancel(&scope, Cancel::FailFast).await {
                        sched.finish(stopped, &store, &*reporter);
                    }
                }
            }
            _ = &mut ctrl_c => {
                interrupted = true;
                executor.cancel(&scope, Cancel::Interrupt).await;
                sched.interrupt_running();
                break;
            }
        }
    }

    // Interrupted: what was not sent is sent by the next run (the tier keeps the list).
    if interrupted {
        pushes.abort_all();
    }
    while pushes.join_next().await.is_some() {}
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

/// Looks stages up in the tier, at most [`tier::CONCURRENT_LOOKUPS`] at a time; returns the
/// hits with their outputs (now in the store).
async fn look_up(
    tier: &Arc<dyn Tier>,
    store: &Arc<Store>,
    asked: Vec<(usize, CacheKey)>,
) -> Vec<(usize, BTreeMap<String, OutputRef>)> {
    let permits = Arc::new(tokio::sync::Semaphore::new(tier::CONCURRENT_LOOKUPS));
    let mut set = tokio::task::JoinSet::new();
    for (idx, key) in asked {
        let (tier, store, permits) = (tier.clone(), store.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (idx, tier.fetch(&store, &key).await)
        });
    }
    let mut found = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((idx, Some(outputs))) = joined {
            found.push((idx, outputs));
        }
    }
    // Settled in node order, so that the terminal says them in a stable order.
    found.sort_by_key(|(idx, _)| *idx);
    found
}

/// `1.5s`, `2m 03s`.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 { format!("{s:.1}s") } else { format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60) }
}
