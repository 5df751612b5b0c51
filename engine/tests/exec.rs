//! Engine tests with ops written for the test: op versions in keys, panics failing one stage,
//! environment failures told apart, and a salsa-style early-cutoff check through the library.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use drover_cache::{StageOutcome, Store};
use drover_engine::exec::{self, Event, Reporter, RunOptions};
use drover_engine::spec::{self, ParamOverrides};
use drover_engine::status::{Action, plan_status};
use drover_engine::{
    BoxFuture, CheckCx, CheckError, Checked, Op, OpError, OpInfo, OpRegistry, PortDecl, PortType, Ports, RunCx,
    params_schema, plan,
};
use serde::Deserialize;

/// Halves its `x` param (integer division) or its input's number, and logs every call.
struct Halve {
    version: u32,
    calls: Arc<Mutex<Vec<String>>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct HalveParams {
    #[serde(default)]
    x: Option<i64>,
    #[serde(default)]
    panic: bool,
    #[serde(default)]
    environment_failure: bool,
}

impl Op for Halve {
    fn info(&self) -> OpInfo {
        let blob = |name, optional| PortDecl { name, ty: PortType::Blob, doc: "a number", optional };
        OpInfo {
            name: "halve",
            version: self.version,
            doc: "halves a number",
            inputs: Ports::Fixed(vec![blob("in", true)]),
            outputs: Ports::Fixed(vec![blob("out", false)]),
            params: params_schema::<HalveParams>(),
            deterministic: true,
            templated_params: false,
        }
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<Checked, Vec<CheckError>> {
        cx.params::<HalveParams>().map_err(|e| vec![e])?;
        Ok(Checked { outputs: [("out".to_string(), PortType::Blob)].into(), ..Default::default() })
    }

    fn run(&self, cx: RunCx) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async move {
            let p: HalveParams = cx.params()?;
            self.calls.lock().unwrap().push(cx.stage.clone());
            if p.panic {
                panic!("deliberate panic in a test op");
            }
            if p.environment_failure {
                return Err(OpError::environment("the test op's server is down"));
            }
            let x = match p.x {
                Some(x) => x,
                None => std::fs::read_to_string(&cx.input("in")?.path).unwrap().trim().parse().unwrap(),
            };
            std::fs::write(&cx.output("out")?.path, (x / 2).to_string()).map_err(|e| OpError::io("write", e))
        })
    }
}

struct Quiet;
impl Reporter for Quiet {
    fn event(&self, _: Event<'_>) {}
}

struct Harness {
    dir: tempfile::TempDir,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Harness {
    fn new() -> Harness {
        Harness { dir: tempfile::tempdir().unwrap(), calls: Arc::default() }
    }

    fn ops(&self, version: u32) -> OpRegistry {
        let mut ops = OpRegistry::new();
        ops.register(Halve { version, calls: self.calls.clone() });
        ops
    }

    fn plan(&self, yaml: &str, sets: &[&str], version: u32) -> plan::Plan {
        let path = self.dir.path().join("p.yaml");
        let overrides = ParamOverrides { files: vec![], sets: sets.iter().map(|s| s.to_string()).collect() };
        let spec = spec::parse_str(&path, yaml.to_string(), &overrides, &[]).unwrap();
        plan::build(&spec, &self.ops(version)).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn store(&self) -> Arc<Store> {
        Arc::new(Store::open(&self.dir.path().join(".drover")).unwrap())
    }

    fn run(&self, yaml: &str, sets: &[&str], version: u32) -> exec::RunSummary {
        let plan = Arc::new(self.plan(yaml, sets, version));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(exec::run(plan, self.store(), RunOptions::default(), Arc::new(Quiet))).unwrap()
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn reasons(&self, yaml: &str, sets: &[&str], version: u32) -> Vec<(String, Action, Vec<String>)> {
        let plan = self.plan(yaml, sets, version);
        let all: BTreeSet<usize> = (0..plan.nodes.len()).collect();
        plan_status(&plan, &self.store(), &all, &BTreeSet::new())
            .unwrap()
            .into_iter()
            .map(|s| (s.stage, s.action, s.reasons))
            .collect()
    }
}

const CHAIN: &str = r#"
pipeline: halving
params: { x: 22 }
stages:
  half: { op: halve, with: { x: "${params.x}" } }
  quarter: { op: halve, in: { in: half } }
"#;

#[test]
fn early_cutoff_through_the_library() {
    let h = Harness::new();
    h.run(CHAIN, &[], 1);
    assert_eq!(h.calls(), ["half", "quarter"]);
    let s = h.run(CHAIN, &["x=23"], 1);
    assert_eq!(h.calls(), ["half", "quarter", "half"], "22/2 == 23/2, so quarter stays cached");
    assert_eq!((s.count(StageOutcome::Ran), s.count(StageOutcome::Cached)), (1, 1));
}

#[test]
fn op_version_is_in_the_key_and_the_reason_says_so() {
    let h = Harness::new();
    h.run(CHAIN, &[], 1);
    let plan = h.reasons(CHAIN, &[], 2);
    assert_eq!(plan[0].1, Action::Run);
    assert_eq!(plan[0].2, ["op `halve` version changed from 1 to 2"]);
    h.run(CHAIN, &[], 2);
    assert_eq!(h.calls(), ["half", "quarter", "half", "quarter"], "both stages run op `halve`, whose version changed");
}

#[test]
fn a_panicking_op_fails_its_stage_not_the_process() {
    let h = Harness::new();
    let yaml = r#"
stages:
  boom: { op: halve, with: { x: 1, panic: true } }
  after: { op: halve, in: { in: boom } }
  other: { op: halve, with: { x: 8 } }
"#;
    let s = h.run(yaml, &[], 1);
    let by_stage = |name: &str| s.record.stages.iter().find(|r| r.stage == name).unwrap().clone();
    assert_eq!(by_stage("boom").outcome, StageOutcome::Failed);
    assert!(by_stage("boom").error.unwrap().contains("deliberate panic"));
    assert_eq!(by_stage("after").outcome, StageOutcome::Skipped);
    assert_eq!(by_stage("other").outcome, StageOutcome::Ran);
    assert!(!s.environment_failure);
    assert_eq!(s.record.status, "failed");
}

#[test]
fn environment_failures_are_told_apart_and_not_cached() {
    let h = Harness::new();
    let yaml = "stages:\n  down: { op: halve, with: { x: 1, environment_failure: true } }\n";
    let s = h.run(yaml, &[], 1);
    assert!(s.environment_failure);
    assert_eq!(s.count(StageOutcome::Failed), 1);
    h.run(yaml, &[], 1);
    assert_eq!(h.calls(), ["down", "down"], "a failure is never cached");
}

#[test]
fn store_paths_do_not_enter_keys() {
    let (a, b) = (Harness::new(), Harness::new());
    let plan_a = a.plan(CHAIN, &[], 1);
    let plan_b = b.plan(CHAIN, &[], 1);
    assert_ne!(plan_a.dir, plan_b.dir);
    let all: BTreeSet<usize> = [0].into();
    let ka = plan_status(&plan_a, &a.store(), &all, &BTreeSet::new()).unwrap()[0].key.clone();
    let kb = plan_status(&plan_b, &b.store(), &all, &BTreeSet::new()).unwrap()[0].key.clone();
    assert!(ka.is_some());
    assert_eq!(ka, kb);
}
