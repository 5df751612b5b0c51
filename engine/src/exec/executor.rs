//! The executor seam: where a stage that must run actually runs. The scheduler decides what
//! runs and when (keys, the cache, dependencies, limits); an [`Executor`] only starts what it
//! is handed and says how each one ended.
//!
//! [`LocalExecutor`] runs each stage as a tokio task in this process. A cluster executor (the
//! Slurm one in `drover-slurm`) submits each stage as a job that runs [`run_stage`] on a node
//! and reports back through the store; a Kubernetes Jobs executor would do the same with a Job
//! per stage (see ARCHITECTURE.md). The engine knows none of them but the local one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use drover_cache::{CacheKey, OutputRef, StageOutcome, Store};
use tokio::task::JoinSet;

use super::Reporter;
use super::stage::{Finished, JobInputs, StageJob};
use crate::error::EngineError;
use crate::key::Recipe;
use crate::op::{BoxFuture, PortType, StageNotes};
use crate::plan::{InputEdge, Plan, Source};

/// What every executor call of one run shares.
#[derive(Clone)]
pub struct RunScope {
    pub run_id: String,
    pub plan: Arc<Plan>,
    pub store: Arc<Store>,
    pub reporter: Arc<dyn Reporter>,
}

/// A stage the scheduler decided to run now: not cached under its key (or forced), its inputs
/// all produced, within the run's limits.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub idx: usize,
    pub key: CacheKey,
    pub recipe: Recipe,
    pub inputs: JobInputs,
    /// `--force`: run even if the key is stored meanwhile, and replace its record.
    pub forced: bool,
    /// The stage's key in the last run that recorded one (the store's state), to say in the
    /// run record why it runs again.
    pub last_key: Option<CacheKey>,
}

/// Why in-flight stages are stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Ctrl-C: the run ends now; what was in flight is recorded as interrupted.
    Interrupt,
    /// A stage failed under `--fail-fast`. An executor may let what runs finish (the local one
    /// does: its stages are this process's own work) or stop it (a cluster's queued jobs may
    /// wait for hours).
    FailFast,
}

/// Where ready stages run. Methods are called from the run loop only, one at a time.
pub trait Executor: Send {
    /// `local`, `slurm`: for messages and run records.
    fn name(&self) -> &'static str;

    /// Whether the executor's own scheduler places resources (a cluster's `--gpus`), so that
    /// the run enforces only capacities declared on purpose (`resources:` at the top of the
    /// pipeline, `--resource`), not the implicit capacity of one stage's request.
    fn places_resources(&self) -> bool {
        false
    }

    /// Once, before anything is started.
    fn begin<'a>(&'a mut self, _scope: &'a RunScope) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }

    /// Starts these stages, in the order they became ready. A stage that cannot be started
    /// ends through [`Executor::next`] like any other.
    fn start<'a>(&'a mut self, scope: &'a RunScope, stages: Vec<Dispatch>) -> BoxFuture<'a, ()>;

    /// Waits for a started stage to end; `None` when none is in flight.
    fn next<'a>(&'a mut self, scope: &'a RunScope) -> BoxFuture<'a, Option<Finished>>;

    /// Stops stages in flight; returns how each one that was stopped ended (for
    /// [`Cancel::Interrupt`] the run records every stage in flight as interrupted itself).
    fn cancel<'a>(&'a mut self, scope: &'a RunScope, why: Cancel) -> BoxFuture<'a, Vec<Finished>>;
}

/// Each stage on its own tokio task in this process.
#[derive(Default)]
pub struct LocalExecutor {
    tasks: JoinSet<Finished>,
    /// The node of each task, for a task that ends without saying (it panicked outside the
    /// op, which the stage catches).
    nodes: HashMap<tokio::task::Id, usize>,
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start<'a>(&'a mut self, scope: &'a RunScope, stages: Vec<Dispatch>) -> BoxFuture<'a, ()> {
        for d in stages {
            let idx = d.idx;
            let handle = self.tasks.spawn(stage_job(scope, d).run());
            self.nodes.insert(handle.id(), idx);
        }
        Box::pin(async {})
    }

    fn next<'a>(&'a mut self, _scope: &'a RunScope) -> BoxFuture<'a, Option<Finished>> {
        Box::pin(async move {
            let joined = self.tasks.join_next_with_id().await?;
            Some(match joined {
                Ok((id, finished)) => {
                    self.nodes.remove(&id);
                    finished
                }
                Err(e) => {
                    let idx = self.nodes.remove(&e.id()).expect("every task's node is kept");
                    let why = format!("executor task failed (a bug in drover): {e}");
                    Finished { env: true, ..Finished::new(idx, StageOutcome::Failed, Some(why), 1) }
                }
            })
        })
    }

    fn cancel<'a>(&'a mut self, _scope: &'a RunScope, why: Cancel) -> BoxFuture<'a, Vec<Finished>> {
        Box::pin(async move {
            if why == Cancel::Interrupt {
                // Dropping a stage's task drops its op's future, which kills a command's
                // process group (its guard) and abandons the attempt before anything is stored.
                self.tasks.abort_all();
                while self.tasks.join_next().await.is_some() {}
                self.nodes.clear();
            }
            Vec::new()
        })
    }
}

fn stage_job(scope: &RunScope, d: Dispatch) -> StageJob {
    StageJob {
        plan: scope.plan.clone(),
        store: scope.store.clone(),
        idx: d.idx,
        key: d.key,
        recipe: d.recipe,
        inputs: d.inputs,
        run_id: scope.run_id.clone(),
        forced: d.forced,
        reporter: scope.reporter.clone(),
        notes: StageNotes::default(),
        last_key: d.last_key,
    }
}

/// Runs one stage here, as the local executor does: under its key's lease, looked up again
/// once the lease is held, with retries, its inputs verified, its outputs stored and its
/// record created (or another process's adopted). What a cluster job runs on its node.
pub async fn run_stage(scope: &RunScope, d: Dispatch) -> Finished {
    stage_job(scope, d).run().await
}

/// Every input artifact of node `idx`, given the outputs of its upstream nodes (`None` for
/// a node whose outputs are not known); `None` when one it needs is missing.
pub fn job_inputs(plan: &Plan, idx: usize, outputs: &[Option<BTreeMap<String, OutputRef>>]) -> Option<JobInputs> {
    let artifact = |s: &Source| {
        let out = outputs[s.node].as_ref()?.get(&s.port).cloned()?;
        let ty = plan.nodes[s.node].outputs.get(&s.port).cloned().unwrap_or(PortType::Blob);
        Some((s.node, ty, out))
    };
    let node = &plan.nodes[idx];
    node.inputs
        .iter()
        .map(|(port, edge)| {
            let items = match edge {
                InputEdge::One(s) => (false, vec![artifact(s)?]),
                InputEdge::List(v) => (true, v.iter().map(artifact).collect::<Option<Vec<_>>>()?),
            };
            Some((port.clone(), items))
        })
        .collect()
}
