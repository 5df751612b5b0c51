//! `drover run --executor slurm`: the driver. The engine's scheduler decides what runs (keys,
//! the cache, dependencies); this executor submits each stage it is handed as a Slurm job the
//! moment its inputs exist, and follows the jobs.
//!
//! - **Submitting**: one `sbatch` per stage, or one job array per batch of expansions of a
//!   matrix stage that became ready together with the same settings; at most `submit_rate`
//!   calls a second; at most `max_jobs` (or `-j`) in flight.
//! - **Following**: each job writes a status file beside its outputs; the driver reads those
//!   often (files cost the controller nothing) and asks `squeue` once per `poll` about every
//!   job still without one, to learn of ends that write no status: node failure, preemption,
//!   time limit, memory, cancellation. Jobs are submitted with `--requeue`, so Slurm itself
//!   puts a job that lost its node or was preempted back in the queue (the job counts its
//!   restarts against the stage's `retries`); other infrastructure ends are submitted again
//!   here while `retries` allow, and exit 3 once they do not.
//! - **Remembering**: every submission goes to the run's `jobs.jsonl` first. A driver started
//!   after one that was killed (`kill -9`) reads the jobs of that run, asks the queue which
//!   still run, and follows those instead of submitting their stages again.
//! - **Stopping**: Ctrl-C, or a failure under `--fail-fast`, cancels the jobs this driver
//!   follows, and only those.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_cache::{CacheKey, StageOutcome};
use drover_engine::exec::{Cancel, Dispatch, Event, Executor, Finished, RunScope};
use drover_engine::{BoxFuture, error::EngineError};

use crate::ctl::{JobId, Phase, Slurm};
use crate::rundir::{self, Driver, JobInput, RunDir, RunInfo, StageStatus, Submission};
use crate::settings::{self, DriverSettings, JobSettings};

/// How often status files are read (they cost the controller nothing).
const STATUS_EVERY: Duration = Duration::from_millis(200);

/// What the command line says about the run, for the jobs to rebuild its plan.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// The pipeline file as given.
    pub file: PathBuf,
    /// The pipeline's directory, absolute.
    pub dir: PathBuf,
    /// `--set` overrides, with the environment's section overrides first.
    pub sets: Vec<String>,
    pub params_files: Vec<PathBuf>,
    pub device: String,
    pub forced: Vec<String>,
    pub selected: Vec<String>,
    /// This drover (the nodes run the same path unless `slurm: { drover: ... }` says).
    pub drover: PathBuf,
}

/// What the driver did, for the summary and the benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Stages submitted (an array of N tasks counts N), resubmissions included.
    pub stages_submitted: u64,
    /// Jobs of an earlier, killed driver followed instead of submitting again.
    pub adopted: u64,
}

/// A stage in flight.
struct Flight {
    dispatch: Dispatch,
    job: JobId,
    /// Where its status appears (an adopted job's is in its own run's directory).
    status_at: PathBuf,
    /// Submissions by the driver (1, then 2 after one infrastructure failure, ...).
    attempt: u32,
    /// When the queue first said it ended with no status written yet: `squeue` and the
    /// status file may disagree for a moment (NFS, a requeue on its way).
    ended_seen: Option<(Instant, String)>,
}

/// A job of an earlier run whose driver is gone, still queued or running.
struct Orphan {
    job: JobId,
    status_at: PathBuf,
}

/// The Slurm executor.
pub struct SlurmExecutor {
    ctl: Arc<dyn Slurm>,
    launch: Launch,
    job: JobSettings,
    driver: DriverSettings,
    run: Option<RunDir>,
    /// The run's directory is written (at the first submission).
    prepared: bool,
    flights: BTreeMap<usize, Flight>,
    ended: VecDeque<Finished>,
    last_poll: Option<Instant>,
    failed_polls: u32,
    orphans: HashMap<CacheKey, Orphan>,
    next_submit: Instant,
    arrays: usize,
    /// How long the queue and a status file may disagree before the queue is believed: two
    /// polls, at least 5 s (a requeue passes through ended states; NFS shows a new file late).
    grace: Duration,
    pub stats: Stats,
}

impl SlurmExecutor {
    pub fn new(ctl: Arc<dyn Slurm>, launch: Launch, sections: &BTreeMap<String, serde_json::Value>) -> SlurmExecutor {
        let (job, driver) = settings::pipeline(sections);
        let grace = (driver.poll * 2).max(Duration::from_secs(5));
        SlurmExecutor {
            ctl,
            launch,
            job,
            driver,
            run: None,
            prepared: false,
            flights: BTreeMap::new(),
            ended: VecDeque::new(),
            last_poll: None,
            failed_polls: 0,
            orphans: HashMap::new(),
            next_submit: Instant::now(),
            arrays: 0,
            grace,
            stats: Stats::default(),
        }
    }

    /// The driver's settings (`max_jobs` is the default `-j`).
    pub fn driver_settings(&self) -> &DriverSettings {
        &self.driver
    }

    /// The controller calls made so far.
    pub fn calls(&self) -> crate::ctl::Calls {
        self.ctl.calls()
    }

    fn run(&self) -> &RunDir {
        self.run.as_ref().expect("begin() made the run directory")
    }

    /// How long the queue and the status file may disagree before the queue is believed.
    fn grace(&self) -> Duration {
        self.grace
    }

    /// Jobs of earlier runs of this pipeline whose driver is known to be gone and whose run
    /// has no record (it never finished), that the queue still holds: followed, not
    /// submitted again.
    async fn find_orphans(&mut self, scope: &RunScope) {
        let root = rundir::runs_root(scope.store.root());
        let Ok(entries) = std::fs::read_dir(&root) else { return };
        let mut candidates: Vec<(CacheKey, JobId, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let old = RunDir { path: entry.path() };
            let Ok(info) = old.read_info() else { continue };
            let finished = scope.store.root().join("runs").join(format!("{}.json", info.run_id)).exists();
            if info.run_id == scope.run_id
                || info.detached
                || info.pipeline != scope.plan.pipeline
                || finished
                || !info.driver.gone()
            {
                continue;
            }
            for sub in old.submissions() {
                for (stage, job, key) in sub.jobs() {
                    let done = old.read_status(&stage).is_some_and(|s| s.is_final() && s.job.as_ref() == Some(&job));
                    if let (Some(key), false) = (key, done) {
                        candidates.push((key, job, old.status_path(&stage)));
                    }
                }
            }
        }
        if candidates.is_empty() {
            return;
        }
        let bases: BTreeSet<String> = candidates.iter().map(|(_, j, _)| j.base().to_string()).collect();
        let Ok(lines) = self.ctl.squeue(&bases.into_iter().collect::<Vec<_>>()).await else { return };
        let active: BTreeSet<JobId> = lines.into_iter().filter(|l| l.phase() == Phase::Active).map(|l| l.job).collect();
        for (key, job, status_at) in candidates {
            if active.contains(&job) {
                self.orphans.insert(key, Orphan { job, status_at });
            }
        }
    }

    /// Submits one stage, or several expansions of one stage as an array.
    async fn submit(&mut self, scope: &RunScope, group: Vec<Dispatch>, settings: &JobSettings, attempt: u32) {
        let run = self.run().clone();
        if !self.prepared {
            if let Err(e) =
                write_run(&run, &self.launch, &scope.plan.pipeline, scope.store.root(), &scope.run_id, false)
            {
                self.fail_all(group, e);
                return;
            }
            self.prepared = true;
        }
        let plan = &scope.plan;
        for d in &group {
            // Each input's artifacts come in the order of its edge's sources.
            let mut upstream: BTreeMap<String, BTreeMap<String, drover_cache::OutputRef>> = BTreeMap::new();
            for (port, edge) in &plan.nodes[d.idx].inputs {
                let Some((_, items)) = d.inputs.get(port) else { continue };
                for (s, (_, _, out)) in edge.sources().iter().zip(items) {
                    upstream.entry(plan.nodes[s.node].id.clone()).or_default().insert(s.port.clone(), out.clone());
                }
            }
            let input = JobInput { key: d.key.clone(), upstream };
            if let Err(e) = run.write_json(&run.input_path(&plan.nodes[d.idx].id), &input) {
                self.fail_all(group, format!("cannot write the job's inputs in {}: {e}", run.path.display()));
                return;
            }
        }
        let stage_ids: Vec<String> = group.iter().map(|d| plan.nodes[d.idx].id.clone()).collect();
        let array = group.len() > 1;
        let mut args =
            base_args(&run, &self.launch, &self.driver, &plan.pipeline, &plan.nodes[group[0].idx].stage, array);
        let which = if array {
            let list = run.array_path(self.arrays);
            self.arrays += 1;
            if let Err(e) = run.write(&list, stage_ids.join("\n").as_bytes()) {
                self.fail_all(group, format!("cannot write the array's list in {}: {e}", run.path.display()));
                return;
            }
            let limit = self.driver.array_limit.map(|k| format!("%{k}")).unwrap_or_default();
            args.push(format!("--array=0-{}{limit}", group.len() - 1));
            format!("--array-list {}", shell_quote(&list.display().to_string()))
        } else {
            format!("--stage {}", shell_quote(&stage_ids[0]))
        };
        args.extend(settings.sbatch_args());
        let script = script(&self.launch, &self.driver, &run, &which);
        // At most `submit_rate` calls a second, whatever is ready.
        let now = Instant::now();
        if self.next_submit > now {
            tokio::time::sleep(self.next_submit - now).await;
        }
        self.next_submit = Instant::now() + Duration::from_secs_f64(1.0 / self.driver.submit_rate);
        let base = match self.ctl.sbatch(&args, &script).await {
            Ok(id) => id,
            Err(e) => {
                self.fail_all(
                    group,
                    format!(
                        "Slurm refused the job: {e} (sbatch {}); check the stage's `slurm:` settings",
                        args.join(" ")
                    ),
                );
                return;
            }
        };
        let sub = Submission {
            job: JobId(base.clone()),
            stages: stage_ids.clone(),
            keys: group.iter().map(|d| Some(d.key.clone())).collect(),
            attempt,
        };
        if let Err(e) = run.log_submission(&sub) {
            // The job runs anyway; only a restarted driver would not know it.
            eprintln!("warning: cannot note job {base} in {}: {e}", run.ledger_path().display());
        }
        self.stats.stages_submitted += group.len() as u64;
        for ((stage, job, _), d) in sub.jobs().into_iter().zip(group) {
            scope.reporter.event(Event::StageStarted { stage: &stage, attempt });
            self.flights.insert(
                d.idx,
                Flight { dispatch: d, job, status_at: run.status_path(&stage), attempt, ended_seen: None },
            );
        }
    }

    fn fail_all(&mut self, group: Vec<Dispatch>, message: String) {
        for d in group {
            self.ended.push_back(Finished {
                env: true,
                ..Finished::new(d.idx, StageOutcome::Failed, Some(message.clone()), 1)
            });
        }
    }

    /// Moves every in-flight stage whose job wrote its final status to `ended`.
    fn read_statuses(&mut self) {
        let done: Vec<(usize, StageStatus)> = self
            .flights
            .iter()
            .filter_map(|(idx, f)| {
                let s = rundir::read_status_at(&f.status_at)?;
                (s.is_final() && s.job.as_ref() == Some(&f.job)).then_some((*idx, s))
            })
            .collect();
        for (idx, s) in done {
            let f = self.flights.remove(&idx).expect("in flight");
            self.ended.push_back(finished_from(idx, s, f.attempt));
        }
    }

    /// One `squeue` about every job without a status; ends the queue reports without one are
    /// acted on once they last longer than the grace period.
    async fn poll_queue(&mut self, scope: &RunScope) {
        self.last_poll = Some(Instant::now());
        let bases: BTreeSet<String> = self.flights.values().map(|f| f.job.base().to_string()).collect();
        let lines = match self.ctl.squeue(&bases.into_iter().collect::<Vec<_>>()).await {
            Ok(lines) => {
                self.failed_polls = 0;
                lines
            }
            Err(e) => {
                self.failed_polls += 1;
                // Never wait forever on a controller that does not answer (Snakemake's plugin
                // hangs when sacct does): after ten failed polls, the jobs count as lost.
                if self.failed_polls >= 10 {
                    let lost: Vec<usize> = self.flights.keys().copied().collect();
                    for idx in lost {
                        let f = self.flights.remove(&idx).expect("in flight");
                        let why = format!(
                            "squeue failed {} times in a row ({e}); job {} is left as it is",
                            self.failed_polls, f.job
                        );
                        self.ended.push_back(Finished {
                            env: true,
                            ..Finished::new(idx, StageOutcome::Failed, Some(why), f.attempt)
                        });
                    }
                }
                return;
            }
        };
        let by_job: HashMap<&JobId, &crate::ctl::QueueLine> = lines.iter().map(|l| (&l.job, l)).collect();
        let now = Instant::now();
        let grace = self.grace();
        let mut act: Vec<(usize, String, Phase)> = Vec::new();
        for (idx, f) in self.flights.iter_mut() {
            let (state, phase) = match by_job.get(&f.job) {
                Some(l) => (l.state.clone(), l.phase()),
                None => ("gone from the queue".to_string(), Phase::Ended),
            };
            if phase == Phase::Active {
                f.ended_seen = None;
                continue;
            }
            let since = f.ended_seen.get_or_insert((now, state.clone())).0;
            if now.duration_since(since) >= grace {
                act.push((*idx, state, phase));
            }
        }
        for (idx, state, phase) in act {
            // One last look: the status may have landed since the last read.
            if let Some(s) = rundir::read_status_at(&self.flights[&idx].status_at)
                && s.is_final()
                && s.job.as_ref() == Some(&self.flights[&idx].job)
            {
                let f = self.flights.remove(&idx).expect("in flight");
                self.ended.push_back(finished_from(idx, s, f.attempt));
                continue;
            }
            let f = self.flights.remove(&idx).expect("in flight");
            let node = &scope.plan.nodes[idx];
            let output = self.run().output_path(&f.job);
            let tail = output_tail(&output);
            match phase {
                Phase::Infrastructure if f.attempt <= node.retries => {
                    let why = format!("Slurm job {} ended {state}", f.job);
                    scope.reporter.event(Event::StageRetry {
                        stage: &node.id,
                        attempt: f.attempt,
                        error: &why,
                        delay: Duration::ZERO,
                    });
                    let settings = settings::for_stage(&self.job, &node.sections, &node.resources);
                    self.submit(scope, vec![f.dispatch], &settings, f.attempt + 1).await;
                }
                Phase::Infrastructure => {
                    let why = format!(
                        "Slurm job {} ended {state} (the cluster's doing: time limit, node failure, preemption or \
                         memory), after {} attempt(s); `retries:` allows {}{tail}",
                        f.job, f.attempt, node.retries
                    );
                    self.ended.push_back(Finished {
                        env: true,
                        ..Finished::new(idx, StageOutcome::Failed, Some(why), f.attempt)
                    });
                }
                Phase::Cancelled => {
                    let why = format!("Slurm job {} was cancelled outside this drover ({state}){tail}", f.job);
                    self.ended.push_back(Finished {
                        env: true,
                        ..Finished::new(idx, StageOutcome::Failed, Some(why), f.attempt)
                    });
                }
                Phase::Ended | Phase::Active => {
                    let why = format!(
                        "Slurm job {} ended ({state}) without writing its status {}: drover could not run on the node \
                         (is `{}` there?){tail}",
                        f.job,
                        f.status_at.display(),
                        self.driver.drover.clone().unwrap_or_else(|| self.launch.drover.display().to_string())
                    );
                    self.ended.push_back(Finished {
                        env: true,
                        ..Finished::new(idx, StageOutcome::Failed, Some(why), f.attempt)
                    });
                }
            }
        }
    }
}

/// Writes a run's directory: the pipeline as it is now, its overrides, who submitted it.
pub(crate) fn write_run(
    run: &RunDir,
    launch: &Launch,
    pipeline: &str,
    store: &std::path::Path,
    run_id: &str,
    detached: bool,
) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", run.path.display());
    run.create().map_err(|e| fail("cannot create", e))?;
    let text =
        std::fs::read(&launch.file).map_err(|e| format!("cannot read the pipeline {}: {e}", launch.file.display()))?;
    run.write(&run.pipeline_copy(), &text).map_err(|e| fail("cannot write into", e))?;
    for (i, p) in launch.params_files.iter().enumerate() {
        let bytes = std::fs::read(p).map_err(|e| format!("cannot read params file {}: {e}", p.display()))?;
        run.write(&run.params_copy(i), &bytes).map_err(|e| fail("cannot write into", e))?;
    }
    let info = RunInfo {
        run_id: run_id.to_string(),
        pipeline: pipeline.to_string(),
        file: launch.file.clone(),
        dir: launch.dir.clone(),
        store: store.to_path_buf(),
        sets: launch.sets.clone(),
        params_files: launch.params_files.len(),
        device: launch.device.clone(),
        forced: launch.forced.clone(),
        selected: launch.selected.clone(),
        driver: Driver::me(),
        detached,
        started: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    };
    run.write_json(&run.info_path(), &info).map_err(|e| fail("cannot write into", e))
}

/// The job script: the run's drover, for one stage, an array's list, or `--finish`.
pub(crate) fn script(launch: &Launch, driver: &DriverSettings, run: &RunDir, which: &str) -> String {
    let drover = driver.drover.clone().map(PathBuf::from).unwrap_or_else(|| launch.drover.clone());
    format!(
        "#!/bin/sh\n# drover run {}\nexec {} job --run-dir {} {which}\n",
        run.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        shell_quote(&drover.display().to_string()),
        shell_quote(&run.path.display().to_string()),
    )
}

/// What every job of a run is submitted with: its name, output, directory, `--requeue` (Slurm
/// puts a job that lost its node or was preempted back in the queue) and a warning signal
/// before the time limit.
pub(crate) fn base_args(
    run: &RunDir,
    launch: &Launch,
    driver: &DriverSettings,
    pipeline: &str,
    stage: &str,
    array: bool,
) -> Vec<String> {
    vec![
        format!("--job-name=drover-{pipeline}-{stage}"),
        format!("--output={}", run.output_pattern(array).display()),
        "--open-mode=append".to_string(),
        format!("--chdir={}", launch.dir.display()),
        "--requeue".to_string(),
        format!("--signal=B:USR1@{}", driver.warn_before.as_secs().max(1)),
    ]
}

/// The last lines a job printed, for a message.
fn output_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its output ({}) ends with:\n  {}", path.display(), lines.join("\n  "))
    }
}

/// A job's final status as the run records it.
fn finished_from(idx: usize, s: StageStatus, driver_attempt: u32) -> Finished {
    let attempts = s.attempts.max(1) + s.restarts + (driver_attempt - 1);
    Finished {
        idx,
        outcome: s.outcome,
        outputs: if matches!(s.outcome, StageOutcome::Ran | StageOutcome::Cached) { s.outputs } else { None },
        error: s.error,
        env: s.env,
        attempts,
        duration: Duration::from_millis(s.duration_ms),
        log: s.log,
        notes: s.notes,
        // When the job started is the node's clock's business; the run's timeline has the
        // stages that ran in this process only.
        started: None,
        reasons: s.reasons,
    }
}

/// `'...'` for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Executor for SlurmExecutor {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn places_resources(&self) -> bool {
        true
    }

    fn begin<'a>(&'a mut self, scope: &'a RunScope) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            // The run's directory is written when the first job is submitted: a rerun with
            // everything stored leaves nothing behind.
            self.run = Some(RunDir::new(scope.store.root(), &scope.run_id));
            self.find_orphans(scope).await;
            Ok(())
        })
    }

    fn start<'a>(&'a mut self, scope: &'a RunScope, stages: Vec<Dispatch>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // Groups in the order stages became ready: expansions of one matrix stage with the
            // same settings go as one array.
            let mut groups: Vec<(JobSettings, Vec<Dispatch>)> = Vec::new();
            let mut array_of: HashMap<(String, JobSettings), usize> = HashMap::new();
            for d in stages {
                if let Some(orphan) = self.orphans.remove(&d.key) {
                    let stage = scope.plan.nodes[d.idx].id.clone();
                    eprintln!("following Slurm job {} for `{stage}` (submitted by a driver that is gone)", orphan.job);
                    scope.reporter.event(Event::StageStarted { stage: &stage, attempt: 1 });
                    self.stats.adopted += 1;
                    let flight = Flight {
                        dispatch: d,
                        job: orphan.job,
                        status_at: orphan.status_at,
                        attempt: 1,
                        ended_seen: None,
                    };
                    self.flights.insert(flight.dispatch.idx, flight);
                    continue;
                }
                let node = &scope.plan.nodes[d.idx];
                let settings = settings::for_stage(&self.job, &node.sections, &node.resources);
                if node.matrix.is_empty() {
                    groups.push((settings, vec![d]));
                    continue;
                }
                match array_of.get(&(node.stage.clone(), settings.clone())) {
                    Some(&g) => groups[g].1.push(d),
                    None => {
                        array_of.insert((node.stage.clone(), settings.clone()), groups.len());
                        groups.push((settings, vec![d]));
                    }
                }
            }
            for (settings, group) in groups {
                self.submit(scope, group, &settings, 1).await;
            }
        })
    }

    fn next<'a>(&'a mut self, scope: &'a RunScope) -> BoxFuture<'a, Option<Finished>> {
        Box::pin(async move {
            loop {
                if let Some(f) = self.ended.pop_front() {
                    return Some(f);
                }
                if self.flights.is_empty() {
                    return None;
                }
                self.read_statuses();
                if !self.ended.is_empty() {
                    continue;
                }
                if self.last_poll.is_none_or(|t| t.elapsed() >= self.driver.poll) {
                    self.poll_queue(scope).await;
                    if !self.ended.is_empty() {
                        continue;
                    }
                }
                tokio::time::sleep(STATUS_EVERY).await;
            }
        })
    }

    fn cancel<'a>(&'a mut self, _scope: &'a RunScope, why: Cancel) -> BoxFuture<'a, Vec<Finished>> {
        Box::pin(async move {
            let jobs: Vec<String> = self.flights.values().map(|f| f.job.0.clone()).collect();
            if let Err(e) = self.ctl.scancel(&jobs).await {
                eprintln!("warning: cancelling jobs {}: {e}", jobs.join(" "));
            }
            let flights = std::mem::take(&mut self.flights);
            match why {
                Cancel::Interrupt => Vec::new(),
                Cancel::FailFast => flights
                    .into_iter()
                    .map(|(idx, f)| {
                        let why = format!("cancelled (Slurm job {}): a stage failed and --fail-fast is set", f.job);
                        Finished::new(idx, StageOutcome::Interrupted, Some(why), f.attempt)
                    })
                    .collect(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    //! The driver against a scripted Slurm: the ends a real cluster gives rarely or slowly
    //! (a time limit with retries left, a controller that stops answering, a job that dies
    //! before it can write its status, --fail-fast), each with the exact message it gives.

    use std::sync::Mutex;

    use drover_cache::{ObjectHash, OutputKind, OutputRef, Store};
    use drover_engine::exec::{self, RunOptions, RunSummary};
    use drover_engine::spec::{self, ParamOverrides};
    use drover_engine::{
        CheckCx, CheckError, Checked, Op, OpError, OpInfo, OpRegistry, PortDecl, PortType, Ports, RunCx, plan,
    };

    use super::*;
    use crate::ctl::{Calls, CtlError, QueueLine};

    /// `step`: a blob out. Never run here: the scripted jobs write its statuses.
    struct Step;

    impl Op for Step {
        fn info(&self) -> OpInfo {
            OpInfo {
                name: "step",
                version: 1,
                doc: "a test op",
                inputs: Ports::Fixed(vec![]),
                outputs: Ports::Fixed(vec![PortDecl {
                    name: "out",
                    ty: PortType::Blob,
                    doc: "a blob",
                    optional: false,
                }]),
                params: serde_json::json!({}),
                deterministic: true,
                templated_params: false,
            }
        }

        fn check(&self, _: &CheckCx<'_>) -> Result<Checked, Vec<CheckError>> {
            Ok(Checked { outputs: [("out".to_string(), PortType::Blob)].into(), ..Default::default() })
        }

        fn run(&self, _: RunCx) -> BoxFuture<'_, Result<(), OpError>> {
            Box::pin(async { Err(OpError::failed("never run")) })
        }
    }

    /// What a scripted job does: the status it writes (if any) and the state the queue shows.
    type Behaviour = fn(job: u64, stage: &str) -> (Option<StageOutcome>, &'static str);

    struct Fake {
        behaviour: Behaviour,
        squeue_fails: bool,
        next: Mutex<u64>,
        queue: Mutex<BTreeMap<String, String>>,
        submitted: Mutex<Vec<String>>,
        cancelled: Mutex<Vec<String>>,
        calls: Mutex<Calls>,
    }

    impl Fake {
        fn new(behaviour: Behaviour, squeue_fails: bool) -> Arc<Fake> {
            Arc::new(Fake {
                behaviour,
                squeue_fails,
                next: Mutex::new(0),
                queue: Mutex::default(),
                submitted: Mutex::default(),
                cancelled: Mutex::default(),
                calls: Mutex::default(),
            })
        }
    }

    /// The quoted value after `flag` in a job script.
    fn arg(script: &str, flag: &str) -> String {
        let rest = &script[script.find(flag).expect("flag in script") + flag.len() + 2..];
        rest[..rest.find('\'').unwrap()].to_string()
    }

    impl Slurm for Fake {
        fn sbatch<'a>(&'a self, _args: &'a [String], script: &'a str) -> BoxFuture<'a, Result<String, CtlError>> {
            Box::pin(async move {
                self.calls.lock().unwrap().sbatch += 1;
                let n = {
                    let mut next = self.next.lock().unwrap();
                    *next += 1;
                    *next
                };
                let (run, stage) = (RunDir { path: arg(script, "--run-dir").into() }, arg(script, "--stage"));
                let (outcome, state) = (self.behaviour)(n, &stage);
                if let Some(outcome) = outcome {
                    let out = OutputRef {
                        kind: OutputKind::Blob,
                        hash: ObjectHash::parse(&format!("{n:064x}")).unwrap(),
                        size: 1,
                    };
                    let ok = outcome == StageOutcome::Ran;
                    let status = StageStatus {
                        outputs: ok.then(|| [("out".to_string(), out)].into()),
                        error: (!ok).then(|| "it broke".to_string()),
                        attempts: 1,
                        duration_ms: 5,
                        job: Some(JobId(n.to_string())),
                        ..StageStatus::new(&stage, outcome)
                    };
                    run.write_json(&run.status_path(&stage), &status).unwrap();
                }
                self.queue.lock().unwrap().insert(n.to_string(), state.to_string());
                self.submitted.lock().unwrap().push(format!("{n}:{stage}"));
                Ok(n.to_string())
            })
        }

        fn squeue<'a>(&'a self, jobs: &'a [String]) -> BoxFuture<'a, Result<Vec<QueueLine>, CtlError>> {
            Box::pin(async move {
                self.calls.lock().unwrap().squeue += 1;
                if self.squeue_fails {
                    return Err(CtlError {
                        command: "squeue",
                        message: "Socket timed out on send/recv operation".into(),
                    });
                }
                let queue = self.queue.lock().unwrap();
                Ok(jobs
                    .iter()
                    .filter_map(|j| {
                        let state = queue.get(j)?.clone();
                        Some(QueueLine { job: JobId(j.clone()), state, reason: "None".into() })
                    })
                    .collect())
            })
        }

        fn scancel<'a>(&'a self, jobs: &'a [String]) -> BoxFuture<'a, Result<(), CtlError>> {
            Box::pin(async move {
                self.calls.lock().unwrap().scancel += 1;
                self.cancelled.lock().unwrap().extend(jobs.iter().cloned());
                Ok(())
            })
        }

        fn calls(&self) -> Calls {
            *self.calls.lock().unwrap()
        }
    }

    struct Quiet(Mutex<Vec<String>>);
    impl exec::Reporter for Quiet {
        fn event(&self, event: Event<'_>) {
            if let Event::StageRetry { stage, error, .. } = event {
                self.0.lock().unwrap().push(format!("{stage}: {error}"));
            }
        }
    }

    /// Runs `yaml` through the driver against `fake`; the summary and the retries reported.
    fn drive(yaml: &str, fake: Arc<Fake>, fail_fast: bool) -> (RunSummary, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, yaml).unwrap();
        let mut ops = OpRegistry::new();
        ops.register(Step);
        ops.register_section(crate::section());
        let sections: Vec<_> = ops.sections().cloned().collect();
        let spec = spec::parse_str(&file, yaml.into(), &ParamOverrides::default(), &sections).unwrap();
        let plan = Arc::new(plan::build(&spec, &ops).unwrap_or_else(|e| panic!("{e:?}")));
        let store = Arc::new(Store::open(&dir.path().join(".drover")).unwrap());
        let launch = Launch { file, dir: dir.path().to_path_buf(), drover: "/opt/drover".into(), ..Launch::default() };
        let mut slurm = SlurmExecutor::new(fake, launch, &plan.sections);
        slurm.grace = Duration::from_millis(300);
        let reporter = Arc::new(Quiet(Mutex::default()));
        let opts = RunOptions { jobs: 10, fail_fast, ..RunOptions::default() };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let summary = rt.block_on(exec::run_on(plan, store, opts, reporter.clone(), &mut slurm)).unwrap();
        let retries = reporter.0.lock().unwrap().clone();
        (summary, retries)
    }

    fn ends(summary: &RunSummary) -> Vec<(String, StageOutcome, Option<String>, u32)> {
        summary.record.stages.iter().map(|s| (s.stage.clone(), s.outcome, s.error.clone(), s.attempts)).collect()
    }

    #[test]
    fn a_time_limit_with_retries_left_is_submitted_again() {
        let fake = Fake::new(
            |job, _| if job == 1 { (None, "TIMEOUT") } else { (Some(StageOutcome::Ran), "COMPLETED") },
            false,
        );
        let yaml = "slurm: { poll: 0.1s }\nstages:\n  a: { op: step, retries: 1 }\n";
        let (summary, retries) = drive(yaml, fake.clone(), false);
        assert_eq!(ends(&summary), [("a".to_string(), StageOutcome::Ran, None, 2)]);
        assert!(!summary.environment_failure);
        assert_eq!(retries, ["a: Slurm job 1 ended TIMEOUT"]);
        assert_eq!(*fake.submitted.lock().unwrap(), ["1:a", "2:a"]);
    }

    #[test]
    fn a_controller_that_stops_answering_fails_the_stage_instead_of_hanging() {
        let fake = Fake::new(|_, _| (None, "RUNNING"), true);
        let (summary, _) = drive("slurm: { poll: 0.1s }\nstages:\n  a: { op: step }\n", fake.clone(), false);
        assert!(summary.environment_failure);
        assert_eq!(ends(&summary), [(
            "a".to_string(),
            StageOutcome::Failed,
            Some("squeue failed 10 times in a row (squeue: Socket timed out on send/recv operation); job 1 is left as it is".into()),
            1
        )]);
        assert_eq!(fake.calls().squeue, 10);
    }

    #[test]
    fn a_job_that_ends_without_its_status_says_drover_could_not_run_there() {
        let fake = Fake::new(|_, _| (None, "COMPLETED"), false);
        let (summary, _) = drive("slurm: { poll: 0.1s }\nstages:\n  a: { op: step }\n", fake, false);
        assert!(summary.environment_failure);
        let (_, outcome, error, _) = ends(&summary).remove(0);
        assert_eq!(outcome, StageOutcome::Failed);
        let error = error.unwrap();
        assert!(error.starts_with("Slurm job 1 ended (COMPLETED) without writing its status "), "{error}");
        assert!(
            error.ends_with("/status/a.json: drover could not run on the node (is `/opt/drover` there?)"),
            "{error}"
        );
    }

    #[test]
    fn fail_fast_cancels_the_jobs_in_flight_and_only_those() {
        let fake = Fake::new(
            |_, stage| if stage == "a" { (Some(StageOutcome::Failed), "FAILED") } else { (None, "RUNNING") },
            false,
        );
        let yaml = "slurm: { poll: 0.1s }\nstages:\n  a: { op: step }\n  b: { op: step }\n";
        let (summary, _) = drive(yaml, fake.clone(), true);
        let b = fake.submitted.lock().unwrap().iter().find_map(|s| s.strip_suffix(":b").map(String::from)).unwrap();
        let mut ends = ends(&summary);
        ends.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            ends,
            [
                ("a".to_string(), StageOutcome::Failed, Some("it broke".to_string()), 1),
                (
                    "b".to_string(),
                    StageOutcome::Interrupted,
                    Some(format!("cancelled (Slurm job {b}): a stage failed and --fail-fast is set")),
                    1
                ),
            ]
        );
        assert_eq!(*fake.cancelled.lock().unwrap(), [b]);
    }
}
