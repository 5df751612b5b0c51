//! The executor's bookkeeping, apart from its tasks: which stages still wait for inputs, which
//! are ready (their key is next computed and looked up), which wait for a job slot or resources,
//! which run, what they hold, and how each one ended. Single-threaded: `run` calls it between
//! tasks finishing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use drover_cache::{CacheKey, OutputRef, RunStage, StageOutcome, Store};

use super::executor::{Dispatch, job_inputs};
use super::stage::Finished;
use super::{Event, Reporter, RunOptions};
use crate::error::EngineError;
use crate::key::{Recipe, recipe_for};
use crate::plan::Plan;

/// What a run did, once nothing runs any more.
pub(super) struct Ended {
    /// Every selected stage's entry, in plan order.
    pub stages: Vec<RunStage>,
    /// The key each completed stage now has, for explaining the next plan.
    pub state_updates: BTreeMap<String, CacheKey>,
    /// A stage failed or was skipped.
    pub failed: bool,
    pub environment_failure: bool,
}

pub(super) struct Scheduler<'a> {
    plan: &'a Plan,
    selected: &'a BTreeSet<usize>,
    forced: &'a BTreeSet<usize>,
    jobs: usize,
    fail_fast: bool,
    /// Capacity of each resource; a stage asking more than there is gets it all, alone.
    capacity: BTreeMap<String, u64>,
    in_use: BTreeMap<String, u64>,
    /// Per node: inputs not yet produced.
    remaining: Vec<usize>,
    /// Per node: the selected nodes that read it.
    dependents: Vec<Vec<usize>>,
    /// Inputs all produced: the key is computed next, and looked up.
    ready: VecDeque<usize>,
    /// Checked, not cached, waiting for a job slot or resources.
    waiting: VecDeque<usize>,
    /// Per node: already looked up in the run's cache tier (a miss there).
    looked_up: Vec<bool>,
    running: BTreeSet<usize>,
    keys: Vec<Option<CacheKey>>,
    /// The recipe of each waiting node, handed to its task.
    recipes: Vec<Option<Recipe>>,
    outputs: Vec<Option<BTreeMap<String, OutputRef>>>,
    /// How each settled node ended.
    results: BTreeMap<usize, RunStage>,
    state_updates: BTreeMap<String, CacheKey>,
    stop_launching: bool,
    environment_failure: bool,
    /// When the run started: the zero of its timeline.
    t0: Instant,
}

impl<'a> Scheduler<'a> {
    /// `places_resources`: the executor places resources itself (a cluster), so that only
    /// capacities declared on purpose (the pipeline's `resources:`, `--resource`) are enforced
    /// here; a resource no one declared is not limited.
    pub fn new(
        plan: &'a Plan,
        opts: &'a RunOptions,
        selected: &'a BTreeSet<usize>,
        places_resources: bool,
    ) -> Scheduler<'a> {
        let n = plan.nodes.len();
        let mut capacity = plan.resources.clone();
        capacity.extend(opts.resources.clone());
        for node in &plan.nodes {
            for (r, want) in &node.resources {
                let implicit = if places_resources { u64::MAX } else { *want };
                let cap = capacity.entry(r.clone()).or_insert(implicit);
                *cap = (*cap).max(*want);
            }
        }
        let mut remaining = vec![0usize; n];
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &i in selected {
            for u in plan.upstream(i) {
                remaining[i] += 1;
                dependents[u].push(i);
            }
        }
        let ready = plan.order.iter().copied().filter(|i| selected.contains(i) && remaining[*i] == 0).collect();
        Scheduler {
            plan,
            selected,
            forced: &opts.forced,
            jobs: opts.jobs.max(1),
            fail_fast: opts.fail_fast,
            capacity,
            in_use: BTreeMap::new(),
            remaining,
            dependents,
            ready,
            waiting: VecDeque::new(),
            looked_up: vec![false; n],
            running: BTreeSet::new(),
            keys: vec![None; n],
            recipes: vec![None; n],
            outputs: vec![None; n],
            results: BTreeMap::new(),
            state_updates: BTreeMap::new(),
            stop_launching: false,
            environment_failure: false,
            t0: Instant::now(),
        }
    }

    /// Computes each ready stage's key once: a cached one is settled here (and may make its
    /// dependents ready in turn), the others wait for a slot.
    pub fn settle_ready(&mut self, store: &Store, reporter: &dyn Reporter) -> Result<(), EngineError> {
        while let Some(idx) = self.ready.pop_front() {
            let recipe = recipe_for(self.plan, idx, store, &self.outputs)?
                .ok_or_else(|| EngineError::Other(format!("inputs of `{}` are not ready", self.plan.nodes[idx].id)))?;
            let key = recipe.key();
            self.keys[idx] = Some(key.clone());
            if !self.forced.contains(&idx)
                && let Some(cached) = store.cached_outputs(&key)
            {
                let finished = Finished { outputs: Some(cached), ..Finished::new(idx, StageOutcome::Cached, None, 0) };
                self.finish(finished, store, reporter);
                continue;
            }
            self.recipes[idx] = Some(recipe);
            self.waiting.push_back(idx);
        }
        Ok(())
    }

    /// The waiting stages not yet looked up in the cache tier, with their keys (forced ones
    /// never are); each is marked as looked up.
    pub fn take_lookups(&mut self) -> Vec<(usize, CacheKey)> {
        let mut asked = Vec::new();
        for &idx in &self.waiting {
            if !self.looked_up[idx] && !self.forced.contains(&idx) {
                self.looked_up[idx] = true;
                asked.push((idx, self.keys[idx].clone().expect("computed when ready")));
            }
        }
        asked
    }

    /// A waiting stage the cache tier had: it ends as cached, with `note` (where it came from).
    pub fn settle_from_tier(
        &mut self,
        idx: usize,
        outputs: BTreeMap<String, OutputRef>,
        note: (&str, &str),
        store: &Store,
        reporter: &dyn Reporter,
    ) {
        self.waiting.retain(|&w| w != idx);
        self.recipes[idx] = None;
        let mut finished = Finished { outputs: Some(outputs), ..Finished::new(idx, StageOutcome::Cached, None, 0) };
        finished.notes.insert(note.0.to_string(), note.1.to_string());
        self.finish(finished, store, reporter);
    }

    /// The waiting stages that may start now, in the order they became ready: within the job
    /// limit and the resources free. Each is counted as running, holding its resources.
    pub fn launch(&mut self) -> Vec<Dispatch> {
        let mut launched = Vec::new();
        let mut blocked = VecDeque::new();
        while let Some(idx) = self.waiting.pop_front() {
            // Past the job limit nothing more can start, so the scan stops there (a join over
            // 10,000 ready stages must not cost 10,000 steps per finished stage).
            if self.stop_launching || self.running.len() >= self.jobs {
                blocked.push_back(idx);
                blocked.append(&mut self.waiting);
                break;
            }
            let wants = &self.plan.nodes[idx].resources;
            if !wants
                .iter()
                .all(|(r, want)| self.in_use.get(r).copied().unwrap_or(0).saturating_add(*want) <= self.capacity[r])
            {
                blocked.push_back(idx);
                continue;
            }
            for (r, want) in wants {
                *self.in_use.entry(r.clone()).or_default() += want;
            }
            self.running.insert(idx);
            launched.push(Dispatch {
                idx,
                key: self.keys[idx].clone().expect("computed when ready"),
                recipe: self.recipes[idx].take().expect("computed when ready"),
                inputs: job_inputs(self.plan, idx, &self.outputs).expect("inputs are done"),
                forced: self.forced.contains(&idx),
                last_key: None,
            });
        }
        self.waiting = blocked;
        launched
    }

    /// The stage's key, once it was ready.
    pub fn key(&self, idx: usize) -> Option<&CacheKey> {
        self.keys.get(idx).and_then(Option::as_ref)
    }

    /// Nothing runs: a run with nothing waiting either is over.
    pub fn nothing_running(&self) -> bool {
        self.running.is_empty()
    }

    /// A stage ended (a task's, or a cached stage settled in [`Scheduler::settle_ready`]): its
    /// resources are freed, the end is reported, and its dependents become ready or are skipped.
    pub fn finish(&mut self, mut f: Finished, store: &Store, reporter: &dyn Reporter) {
        let idx = f.idx;
        let node = &self.plan.nodes[idx];
        if self.running.remove(&idx) {
            for (r, want) in &node.resources {
                *self.in_use.entry(r.clone()).or_default() -= want;
            }
        }
        let log = f.log.as_ref().map(|l| store.root().join(l));
        reporter.event(Event::StageFinished {
            stage: &node.id,
            outcome: f.outcome,
            duration: f.duration,
            error: f.error.as_deref(),
            log: log.as_deref(),
            notes: &f.notes,
        });
        match f.outputs.take() {
            Some(outs) => {
                self.outputs[idx] = Some(outs);
                if let Some(k) = &self.keys[idx] {
                    self.state_updates.insert(node.id.clone(), k.clone());
                }
                self.release_dependents(idx);
            }
            None => {
                self.environment_failure |= f.env;
                self.stop_launching |= self.fail_fast;
                self.skip_dependents(idx);
            }
        }
        let key = self.keys[idx].clone();
        self.results.insert(idx, f.into_run_stage(self.plan, key, self.t0));
    }

    fn release_dependents(&mut self, idx: usize) {
        for &d in &self.dependents[idx] {
            self.remaining[d] -= 1;
            if self.remaining[d] == 0 {
                self.ready.push_back(d);
            }
        }
    }

    /// Everything downstream of a failed stage, transitively, is skipped (and never ready).
    fn skip_dependents(&mut self, idx: usize) {
        let mut stack = self.dependents[idx].clone();
        while let Some(d) = stack.pop() {
            if self.results.contains_key(&d) {
                continue;
            }
            let why = format!("`{}` failed", self.plan.nodes[idx].id);
            let skipped = Finished::new(d, StageOutcome::Skipped, Some(why), 0);
            self.results.insert(d, skipped.into_run_stage(self.plan, None, self.t0));
            stack.extend(self.dependents[d].iter().copied());
        }
    }

    /// Ctrl-C: every running stage is recorded as interrupted (their tasks are aborted).
    pub fn interrupt_running(&mut self) {
        for &idx in &self.running {
            let f = Finished::new(idx, StageOutcome::Interrupted, Some("interrupted".into()), 1);
            self.results.insert(idx, f.into_run_stage(self.plan, self.keys[idx].clone(), self.t0));
        }
    }

    /// The run's outcome; stages never reached (after a fail-fast stop or an interrupt) are
    /// recorded as skipped or interrupted.
    pub fn end(mut self, interrupted: bool) -> Ended {
        let unreached = if interrupted { StageOutcome::Interrupted } else { StageOutcome::Skipped };
        for &idx in self.plan.order.iter().filter(|i| self.selected.contains(i)) {
            if !self.results.contains_key(&idx) {
                let f = Finished::new(idx, unreached, None, 0);
                self.results.insert(idx, f.into_run_stage(self.plan, None, self.t0));
            }
        }
        let failed = self.results.values().any(|r| matches!(r.outcome, StageOutcome::Failed | StageOutcome::Skipped));
        let stages = self.plan.order.iter().filter_map(|i| self.results.remove(i)).collect();
        Ended { stages, state_updates: self.state_updates, failed, environment_failure: self.environment_failure }
    }
}

#[cfg(test)]
mod tests {
    use drover_cache::{ObjectHash, OutputKind};

    use super::*;
    use crate::op::{
        BoxFuture, CheckCx, CheckError, Checked, Op, OpError, OpInfo, OpRegistry, PortDecl, PortType, Ports, RunCx,
    };
    use crate::spec::{self, ParamOverrides};

    /// `step`: an optional blob in, a blob out. The scheduler never runs it: the tests play
    /// the tasks' part by calling `finish`.
    struct Step;

    impl Op for Step {
        fn info(&self) -> OpInfo {
            let blob = |name, optional| PortDecl { name, ty: PortType::Blob, doc: "a blob", optional };
            OpInfo {
                name: "step",
                version: 1,
                doc: "a test op",
                inputs: Ports::Fixed(vec![blob("in", true)]),
                outputs: Ports::Fixed(vec![blob("out", false)]),
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

    struct Quiet;
    impl Reporter for Quiet {
        fn event(&self, _: Event<'_>) {}
    }

    struct Setup {
        _dir: tempfile::TempDir,
        plan: Plan,
        store: Store,
        /// Every node.
        all: BTreeSet<usize>,
    }

    fn setup(yaml: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mut ops = OpRegistry::new();
        ops.register(Step);
        let spec = spec::parse_str(&dir.path().join("p.yaml"), yaml.into(), &ParamOverrides::default(), &[]).unwrap();
        let plan = crate::plan::build(&spec, &ops).unwrap_or_else(|e| panic!("{e:?}"));
        let store = Store::open(&dir.path().join(".drover")).unwrap();
        let all = (0..plan.nodes.len()).collect();
        Setup { _dir: dir, plan, store, all }
    }

    fn options(jobs: usize, fail_fast: bool) -> RunOptions {
        RunOptions { jobs, fail_fast, ..RunOptions::default() }
    }

    /// What a task reports for a stage that ran (with an output of its own) or failed.
    fn ended(idx: usize, ok: bool) -> Finished {
        if !ok {
            return Finished::new(idx, StageOutcome::Failed, Some("it broke".into()), 1);
        }
        let hash = ObjectHash::parse(&format!("{idx:064x}")).unwrap();
        let out = OutputRef { kind: OutputKind::Blob, hash, size: 1 };
        Finished { outputs: Some([("out".to_string(), out)].into()), ..Finished::new(idx, StageOutcome::Ran, None, 1) }
    }

    fn ids(plan: &Plan, launched: &[Dispatch]) -> Vec<String> {
        let mut ids: Vec<String> = launched.iter().map(|l| plan.nodes[l.idx].id.clone()).collect();
        ids.sort();
        ids
    }

    fn outcomes(plan: &Plan, ended: &Ended) -> Vec<(String, StageOutcome, Option<String>)> {
        let mut all: Vec<_> = ended.stages.iter().map(|s| (s.stage.clone(), s.outcome, s.error.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all.len(), plan.nodes.len());
        all
    }

    #[test]
    fn never_more_than_the_job_limit_or_a_resources_capacity_at_once() {
        let s = setup(
            "resources: { gpu: 1 }\nstages:\n  g1: { op: step, resources: { gpu: 1 } }\n  g2: { op: step, resources: { gpu: 1 } }\n  c1: { op: step }\n  c2: { op: step }\n  c3: { op: step }\n",
        );
        let opts = options(2, false);
        let mut sched = Scheduler::new(&s.plan, &opts, &s.all, false);
        let (mut started, mut most, mut running) = (Vec::new(), 0, VecDeque::new());
        loop {
            sched.settle_ready(&s.store, &Quiet).unwrap();
            let launched = sched.launch();
            started.extend(ids(&s.plan, &launched));
            running.extend(launched.iter().map(|l| l.idx));
            assert!(sched.running.len() <= 2, "job limit: {:?}", sched.running);
            assert!(sched.in_use.get("gpu").copied().unwrap_or(0) <= 1, "gpu: {:?}", sched.in_use);
            most = most.max(sched.running.len());
            let Some(idx) = running.pop_front() else { break };
            sched.finish(ended(idx, true), &s.store, &Quiet);
        }
        started.sort();
        assert_eq!(started, ["c1", "c2", "c3", "g1", "g2"], "each stage started once");
        assert_eq!(most, 2, "two ran at once");
        let done = sched.end(false);
        assert!(!done.failed);
        assert_eq!(done.state_updates.len(), 5, "every stage's key is kept for the next plan");
    }

    #[test]
    fn a_failed_stage_skips_everything_downstream_and_nothing_else() {
        let s = setup(
            "stages:\n  a: { op: step }\n  b: { op: step, in: { in: a } }\n  c: { op: step, in: { in: b } }\n  d: { op: step }\n",
        );
        let opts = options(4, false);
        let mut sched = Scheduler::new(&s.plan, &opts, &s.all, false);
        sched.settle_ready(&s.store, &Quiet).unwrap();
        let launched = sched.launch();
        assert_eq!(ids(&s.plan, &launched), ["a", "d"]);
        let idx = |id: &str| s.plan.by_id[id];
        sched.finish(ended(idx("a"), false), &s.store, &Quiet);
        sched.finish(ended(idx("d"), true), &s.store, &Quiet);
        sched.settle_ready(&s.store, &Quiet).unwrap();
        assert!(sched.launch().is_empty());
        assert!(sched.nothing_running());
        let done = sched.end(false);
        assert!(done.failed);
        let failed = Some("`a` failed".to_string());
        assert_eq!(
            outcomes(&s.plan, &done),
            [
                ("a".into(), StageOutcome::Failed, Some("it broke".into())),
                ("b".into(), StageOutcome::Skipped, failed.clone()),
                ("c".into(), StageOutcome::Skipped, failed),
                ("d".into(), StageOutcome::Ran, None),
            ]
        );
    }

    #[test]
    fn fail_fast_launches_nothing_after_a_failure_and_records_the_rest_as_skipped() {
        let s = setup("stages:\n  a: { op: step }\n  b: { op: step }\n  c: { op: step }\n");
        let opts = options(1, true);
        let mut sched = Scheduler::new(&s.plan, &opts, &s.all, false);
        sched.settle_ready(&s.store, &Quiet).unwrap();
        let launched = sched.launch();
        assert_eq!(launched.len(), 1, "one job slot");
        sched.finish(ended(launched[0].idx, false), &s.store, &Quiet);
        sched.settle_ready(&s.store, &Quiet).unwrap();
        assert!(sched.launch().is_empty(), "fail-fast: nothing more starts");
        let done = sched.end(false);
        let mut seen: Vec<(StageOutcome, Option<String>)> =
            done.stages.iter().map(|s| (s.outcome, s.error.clone())).collect();
        seen.sort_by_key(|(o, _)| *o == StageOutcome::Skipped);
        assert_eq!(
            seen,
            [
                (StageOutcome::Failed, Some("it broke".into())),
                (StageOutcome::Skipped, None),
                (StageOutcome::Skipped, None)
            ]
        );
    }

    #[test]
    fn an_interrupt_records_running_stages_with_their_keys_and_the_rest_as_interrupted() {
        let s = setup("stages:\n  a: { op: step }\n  b: { op: step }\n");
        let opts = options(1, false);
        let mut sched = Scheduler::new(&s.plan, &opts, &s.all, false);
        sched.settle_ready(&s.store, &Quiet).unwrap();
        let launched = sched.launch();
        let running = s.plan.nodes[launched[0].idx].id.clone();
        sched.interrupt_running();
        let done = sched.end(true);
        let mut by_stage: Vec<&RunStage> = done.stages.iter().collect();
        by_stage.sort_by_key(|s| s.stage != running);
        let seen: Vec<_> = by_stage.iter().map(|s| (s.outcome, s.error.clone(), s.key.is_some(), s.attempts)).collect();
        assert_eq!(
            seen,
            [
                (StageOutcome::Interrupted, Some("interrupted".into()), true, 1),
                (StageOutcome::Interrupted, None, false, 0)
            ]
        );
    }
}
