//! One function per subcommand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_cache::{CacheKey, OutputKind, OutputRef, RunRecord, StageOutcome, Store, Trigger};
use drover_engine::exec::{self, RunOptions, humanize};
use drover_engine::plan::{self, Plan};
use drover_engine::spec::{self, ParamOverrides, PipelineSpec};
use drover_engine::status::{Action, StageStatus, plan_status};
use drover_engine::{OpRegistry, SectionDecl, diag};

use crate::Failure;
use crate::cli::{
    CacheCommand, Cli, Command, DagFormat, ExecutorChoice, MetricsCommand, PipelineArgs, RunArgs, SelectArgs,
};
use crate::report::{TermReporter, summary};

pub fn dispatch(cli: Cli) -> Result<(), Failure> {
    // Only `run` computes; other commands never resolve the device (no adapter probing).
    let device = match &cli.command {
        Command::Run(args) => args.device,
        Command::Nightly(args) => args.run.device,
        _ => Default::default(),
    };
    if let Command::Job(args) = cli.command {
        return job(args);
    }
    let ops = registry(device);
    let store_override = cli.store.clone();
    let remote_flag = cli.remote.clone();
    match cli.command {
        Command::Run(args) => run(&ops, store_override, &remote_flag, args),
        Command::Job(_) => unreachable!("handled above"),
        Command::Submit(args) => submit(&ops, store_override, args),
        Command::Plan { select, json, explain: true } => explain(&ops, &select, json),
        Command::Plan { select, json, explain: false } => plan_cmd(&ops, store_override, &remote_flag, &select, json),
        Command::Dag { pipeline, format } => dag(&ops, &pipeline.resolved(), format),
        Command::Show { target, pipeline, rows } => show(&ops, store_override, &pipeline, &target, rows),
        Command::Export { target, path, pipeline, force } => {
            export(&ops, store_override, &pipeline, &target, &path, force)
        }
        Command::Validate { pipeline } => {
            let (_, plan) = load(&ops, &pipeline.resolved())?;
            println!(
                "{}: ok ({} stages, {} after matrix expansion)",
                plan.file.display(),
                plan.stage_names().len(),
                plan.nodes.len()
            );
            Ok(())
        }
        Command::Ops { json } => {
            crate::schema::print_ops(&ops, json);
            Ok(())
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::schema::pipeline_schema(&ops)).expect("schema serialises")
            );
            Ok(())
        }
        Command::Runs { id, log, limit, pipeline } => runs(store_override, &pipeline, id, log, limit),
        Command::Models { command } => models(command),
        Command::Gc { pipeline, dry_run, yes, grace, .. } if remote_flag.is_some() => {
            crate::remote::gc(&ops, &store_override, &remote_flag, &pipeline.resolved(), grace, yes && !dry_run)
        }
        Command::Gc { pipeline, dry_run, memo, keep_runs, keep_days, .. } => {
            let keep = Keep { runs: keep_runs, days: keep_days };
            gc(&ops, store_override, &pipeline.resolved(), dry_run, memo, keep)
        }
        Command::Nightly(args) => crate::nightly::nightly(&ops, &store_override, &remote_flag, args),
        Command::Metrics { command } => metrics_cmd(&ops, store_override, command),
        Command::Report { run, html, pipeline } => {
            let (store, pipeline_name) = store_and_pipeline(&ops, &store_override, &pipeline)?;
            crate::html::report(&store, pipeline_name.as_deref(), run.as_deref(), &html)
        }
        Command::Schedule { command } => crate::schedule::command(&ops, &store_override, command),
        Command::Push { file, targets } => {
            crate::remote::push(&ops, &store_override, &remote_flag, &SelectArgs { file, targets, force: Vec::new() })
        }
        Command::Pull { file, targets } => {
            crate::remote::pull(&ops, &store_override, &remote_flag, &SelectArgs { file, targets, force: Vec::new() })
        }
        Command::Cache { command: CacheCommand::Verify { pipeline } } => verify(store_override, &pipeline.resolved()),
    }
}

/// The ops, and the sections of the parts that own them: the ops' (`llms:`), the Slurm
/// executor's (`slurm:`), notifications' (`notify:`) and the team cache's (`remote:`).
fn registry(device: drover_ops::kit::compute::DeviceChoice) -> OpRegistry {
    let mut ops = drover_ops::registry(device);
    ops.register_section(drover_slurm::section());
    ops.register_section(crate::notify::section());
    ops.register_section(crate::remote::section());
    ops
}

/// The store of a pipeline file, and the pipeline's name when the file exists (its runs are the
/// ones a store shared by several pipelines holds under that name).
fn store_and_pipeline(
    ops: &OpRegistry,
    store_override: &Option<PathBuf>,
    args: &PipelineArgs,
) -> Result<(Store, Option<String>), Failure> {
    let file = pipeline_file(args);
    let store = open_store(store_override, &file)?;
    let name = match file.exists() {
        true => {
            let sections: Vec<SectionDecl> = ops.sections().cloned().collect();
            Some(spec::load(&file, &ParamOverrides::default(), &sections)?.name)
        }
        false => None,
    };
    Ok((store, name))
}

fn metrics_cmd(ops: &OpRegistry, store_override: Option<PathBuf>, command: MetricsCommand) -> Result<(), Failure> {
    use crate::metrics::{baseline, diff, parse_fail_if, pick, regressions, runs_of, show};
    match command {
        MetricsCommand::Show { run, pipeline } => {
            let (store, name) = store_and_pipeline(ops, &store_override, &pipeline)?;
            let runs = runs_of(&store, name.as_deref())?;
            print!("{}", show(pick(&runs, run.as_deref())?));
            Ok(())
        }
        MetricsCommand::Diff { a, b, fail_if, pipeline } => {
            let (store, name) = store_and_pipeline(ops, &store_override, &pipeline)?;
            let runs = runs_of(&store, name.as_deref())?;
            let current = pick(&runs, b.as_deref())?;
            let base = match a.as_deref() {
                Some(a) => pick(&runs, Some(a))?,
                None => match baseline(&runs, current) {
                    Some(base) => base,
                    None => {
                        println!("run {}: no earlier successful run to compare with", current.id);
                        print!("{}", show(current));
                        return Ok(());
                    }
                },
            };
            let known: Vec<&str> = base.metrics.keys().chain(current.metrics.keys()).map(String::as_str).collect();
            let extra = parse_fail_if(&fail_if, &known)?;
            print!("{}", diff(base, current));
            let crossed = regressions(base, current, &extra);
            for r in &crossed {
                println!("regression: {}", r.describe());
            }
            if crossed.is_empty() { Ok(()) } else { Err(Failure::Regression) }
        }
    }
}

pub fn pipeline_file(args: &PipelineArgs) -> PathBuf {
    args.file.clone().unwrap_or_else(|| PathBuf::from("drover.yaml"))
}

/// Parses and plans a pipeline; every problem in the file is a user error (exit 2).
pub fn load(ops: &OpRegistry, args: &PipelineArgs) -> Result<(PipelineSpec, Plan), Failure> {
    let file = pipeline_file(args);
    let sections: Vec<SectionDecl> = ops.sections().cloned().collect();
    let overrides = ParamOverrides { files: args.params.clone(), sets: with_section_env(&sections, &args.set) };
    let mut spec = spec::load(&file, &overrides, &sections)?;
    // `notify:` is the binary's own section: checked here, with the file's other problems.
    crate::notify::check(&mut spec);
    spec.dir = std::fs::canonicalize(&spec.dir)
        .map_err(|e| Failure::Environment(format!("cannot resolve {}: {e}", spec.dir.display())))?;
    let plan = plan::build(&spec, ops)?;
    Ok((spec, plan))
}

/// `DROVER_<ENV>_<ENTRY>=MAPPING` in the environment (`DROVER_LLM_DEFAULT`), for each section
/// that takes entries from it, as `--set SECTION.<entry>=MAPPING` before the command line's own
/// `--set`s (which therefore win).
fn with_section_env(sections: &[SectionDecl], sets: &[String]) -> Vec<String> {
    let mut all: Vec<String> = std::env::vars()
        .filter_map(|(k, v)| {
            sections.iter().find_map(|sec| {
                let entry = k.strip_prefix("DROVER_")?.strip_prefix(sec.env?)?.strip_prefix('_')?;
                (!entry.is_empty()).then(|| format!("{}.{}={v}", sec.name, entry.to_lowercase()))
            })
        })
        .collect();
    all.sort();
    all.extend(sets.iter().cloned());
    all
}

fn models(command: crate::cli::ModelsCommand) -> Result<(), Failure> {
    use drover_ops::kit::{llm::serve, pulled};
    match command {
        crate::cli::ModelsCommand::Pull { name } => {
            let say = |line: &str| eprintln!("{line}");
            let path = pulled::pull(&name, &say).map_err(Failure::Environment)?;
            if pulled::known(&name).is_ok_and(|m| m.needs_runtime) {
                serve::install_runtime(&say).map_err(Failure::Environment)?;
            }
            println!("{}", path.display());
            Ok(())
        }
        crate::cli::ModelsCommand::List => {
            for m in pulled::MODELS {
                let place = match pulled::pulled_model(m.name) {
                    Ok(path) => path.display().to_string(),
                    Err(_) => "not pulled".to_string(),
                };
                println!("{:<10} {} [{place}]", m.name, m.about);
            }
            Ok(())
        }
    }
}

fn store_root(store_override: &Option<PathBuf>, file: &Path) -> PathBuf {
    store_override.clone().unwrap_or_else(|| {
        file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join(".drover")
    })
}

pub fn open_store(store_override: &Option<PathBuf>, file: &Path) -> Result<Store, Failure> {
    let root = store_root(store_override, file);
    let root = std::path::absolute(&root).unwrap_or(root);
    // The store beside a pipeline is its owner's alone; one named with --store or DROVER_STORE
    // is shared on purpose and keeps its directory's permissions.
    let opened = if store_override.is_some() { Store::open(&root) } else { Store::open_private(&root) };
    opened.map_err(|e| Failure::Environment(format!("cannot open store {}: {e}", root.display())))
}

pub fn env<E: std::fmt::Display>(e: E) -> Failure {
    Failure::Environment(e.to_string())
}

/// Resolves `--target` and `--force` names to nodes; unknown names are user errors.
pub fn selection(plan: &Plan, select: &SelectArgs) -> Result<(BTreeSet<usize>, BTreeSet<usize>), Failure> {
    let resolve = |names: &[String], flag: &str| -> Result<Vec<usize>, Failure> {
        let mut out = Vec::new();
        for name in names {
            let hits = plan.select(name);
            if hits.is_empty() {
                let hint = diag::did_you_mean(name, plan.stage_names())
                    .unwrap_or_else(|| format!("stages: {}", diag::list_names(plan.stage_names())));
                return Err(Failure::User(miette::miette!(
                    help = hint,
                    "{flag} {name}: no such stage in {}",
                    plan.file.display()
                )));
            }
            out.extend(hits);
        }
        Ok(out)
    };
    let targets = resolve(&select.targets, "--target")?;
    let selected = if targets.is_empty() { (0..plan.nodes.len()).collect() } else { plan.closure(&targets) };
    let forced = resolve(&select.force, "--force")?.into_iter().collect();
    Ok((selected, forced))
}

fn parse_resources(specs: &[String]) -> Result<BTreeMap<String, u64>, Failure> {
    let mut out = BTreeMap::new();
    for s in specs {
        let parsed = s.split_once('=').and_then(|(k, v)| Some((k.trim().to_string(), v.trim().parse::<u64>().ok()?)));
        match parsed {
            Some((k, v)) => out.insert(k, v),
            None => {
                return Err(Failure::User(miette::miette!(
                    help = "e.g. --resource gpu=2",
                    "--resource {s}: expected NAME=COUNT"
                )));
            }
        };
    }
    Ok(out)
}

/// A pipeline loaded for a run: its spec (params, sections), checked plan, the stages selected
/// and forced, and its store.
pub struct Loaded {
    pub spec: PipelineSpec,
    pub plan: Plan,
    pub selected: BTreeSet<usize>,
    pub forced: BTreeSet<usize>,
    pub store: Arc<Store>,
    /// The team cache (`remote:`, `--remote`), if one is configured.
    pub remote: Option<drover_remote::RemoteConfig>,
}

/// Loads and plans what `args` name, and opens the store.
pub fn prepare(
    ops: &OpRegistry,
    store_override: &Option<PathBuf>,
    remote_flag: &Option<String>,
    args: &RunArgs,
) -> Result<Loaded, Failure> {
    let pargs = args.select.file.resolved();
    let (spec, plan) = load(ops, &pargs)?;
    let (selected, forced) = selection(&plan, &args.select)?;
    let store = Arc::new(open_store(store_override, &pipeline_file(&pargs))?);
    let remote = crate::remote::config(remote_flag, &spec)?;
    if remote.is_none() && args.remote_required {
        return Err(crate::remote::no_remote(format!(
            "--remote-required: {} has no remote configured",
            plan.file.display()
        )));
    }
    Ok(Loaded { spec, plan, selected, forced, store, remote })
}

/// What a run did: its record (metrics included) and how it ended, as an exit status.
pub struct Executed {
    pub record: RunRecord,
    pub outcome: Result<(), Failure>,
}

/// Runs a loaded pipeline (here, or on Slurm with `--executor slurm`), prints its progress and
/// summary, and writes its record with the trigger, host, git revision, params digest and
/// metrics.
pub fn execute(ops: &OpRegistry, loaded: Loaded, args: &RunArgs, trigger: Trigger) -> Result<Executed, Failure> {
    let t0 = Instant::now();
    let Loaded { spec, plan, selected, forced, store, remote } = loaded;
    let mut slurm = match args.executor {
        ExecutorChoice::Local => None,
        ExecutorChoice::Slurm => {
            let pargs = args.select.file.resolved();
            let launch = launch(ops, &pargs, &spec, &plan, &selected, &forced, args.device)?;
            Some(drover_slurm::SlurmExecutor::new(Arc::new(drover_slurm::ctl::Cli::new()), launch, &plan.sections))
        }
    };
    let jobs = match (&slurm, args.jobs) {
        (_, Some(n)) => n,
        (Some(s), None) => s.driver_settings().max_jobs,
        (None, None) => crate::cli::default_jobs(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(env)?;
    let tier = match remote {
        Some(config) => runtime.block_on(crate::remote::open_tier(config, &store, args.remote_required))?,
        None => None,
    };
    let opts = RunOptions {
        jobs,
        fail_fast: args.fail_fast,
        selected,
        forced,
        resources: parse_resources(&args.resources)?,
        meta: crate::provenance::meta(&spec, trigger),
        tier: tier.clone().map(|t| t as Arc<dyn exec::Tier>),
    };
    let plan = Arc::new(plan);
    let reporter = Arc::new(TermReporter::new(args.verbose));
    let ran = match slurm.as_mut() {
        Some(executor) => runtime.block_on(exec::run_on(plan.clone(), store.clone(), opts, reporter.clone(), executor)),
        None => runtime.block_on(exec::run(plan.clone(), store.clone(), opts, reporter.clone())),
    };
    let summary_ = ran.map_err(env)?;
    if let Some(tier) = tier {
        runtime.block_on(crate::remote::close_tier(tier, &store));
    }
    // After Ctrl-C an op's blocking work (a numeric fit, say) may still be running, and dropping
    // the runtime would wait for it to end. Shutting down drops every task first (so that a
    // command's process group is killed by its guard), then waits a bounded time for blocking
    // work: nothing that work does can reach the store any more.
    runtime.shutdown_timeout(Duration::from_secs(2));
    reporter.finish();
    for repair in &summary_.repairs {
        eprintln!("repaired: {repair}");
    }
    let mut record = summary_.record;
    crate::metrics::record(&plan, &store, &mut record)?;
    let count = |o: StageOutcome| record.stages.iter().filter(|s| s.outcome == o).count();
    let failed = count(StageOutcome::Failed);
    eprintln!(
        "{}",
        summary(
            count(StageOutcome::Ran),
            count(StageOutcome::Cached),
            record.stages.iter().filter(|s| s.note("remote").is_some()).count(),
            failed,
            count(StageOutcome::Skipped) + count(StageOutcome::Interrupted),
            t0.elapsed()
        )
    );
    if let Some(s) = &slurm {
        let calls = s.calls();
        eprintln!(
            "slurm: {} stage(s) submitted, {} followed from a stopped driver; {} sbatch, {} squeue, {} scancel call(s)",
            s.stats.stages_submitted, s.stats.adopted, calls.sbatch, calls.squeue, calls.scancel
        );
    }
    let outcome = if summary_.interrupted {
        eprintln!("interrupted: finished stages are stored; the next run continues from them");
        Err(Failure::Interrupted)
    } else if failed > 0 {
        for s in record.stages.iter().filter(|s| s.outcome == StageOutcome::Failed) {
            eprintln!("failed: {}", s.stage);
        }
        Err(if summary_.environment_failure {
            Failure::Environment("a stage failed because of the environment (see above)".into())
        } else {
            Failure::Stages
        })
    } else {
        Ok(())
    };
    Ok(Executed { record, outcome })
}

fn run(
    ops: &OpRegistry,
    store_override: Option<PathBuf>,
    remote_flag: &Option<String>,
    args: RunArgs,
) -> Result<(), Failure> {
    let loaded = prepare(ops, &store_override, remote_flag, &args)?;
    execute(ops, loaded, &args, Trigger { kind: "manual".into(), schedule: None })?.outcome
}

/// What the jobs of a Slurm run need to rebuild its plan on their nodes.
fn launch(
    ops: &OpRegistry,
    args: &PipelineArgs,
    spec: &PipelineSpec,
    plan: &Plan,
    selected: &BTreeSet<usize>,
    forced: &BTreeSet<usize>,
    device: drover_ops::kit::compute::DeviceChoice,
) -> Result<drover_slurm::Launch, Failure> {
    let sections: Vec<SectionDecl> = ops.sections().cloned().collect();
    let file = pipeline_file(args);
    let file = std::path::absolute(&file).unwrap_or(file);
    let drover = std::env::current_exe().map_err(|e| env(format!("cannot find this drover's path: {e}")))?;
    let ids = |set: &BTreeSet<usize>| set.iter().map(|i| plan.nodes[*i].id.clone()).collect::<Vec<_>>();
    Ok(drover_slurm::Launch {
        file,
        dir: spec.dir.clone(),
        sets: with_section_env(&sections, &args.set),
        params_files: args.params.clone(),
        device: device.to_string(),
        forced: ids(forced),
        selected: if selected.len() == plan.nodes.len() { Vec::new() } else { ids(selected) },
        drover,
    })
}

/// `drover submit`: the remaining DAG to Slurm at once, then exit.
fn submit(ops: &OpRegistry, store_override: Option<PathBuf>, args: crate::cli::SubmitArgs) -> Result<(), Failure> {
    let pargs = args.select.file.resolved();
    let (spec, plan) = load(ops, &pargs)?;
    let (selected, forced) = selection(&plan, &args.select)?;
    let store = open_store(&store_override, &pipeline_file(&pargs))?;
    let launch = launch(ops, &pargs, &spec, &plan, &selected, &forced, args.device)?;
    let ctl = drover_slurm::ctl::Cli::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(env)?;
    let done = runtime
        .block_on(drover_slurm::submit::submit(&ctl, &plan, &store, &launch, &selected, &forced))
        .map_err(Failure::Environment)?;
    store.flush();
    match &done.finish {
        None => println!("run {}: nothing to submit, all {} stage(s) are stored", done.run_id, done.cached),
        Some(finish) => {
            let jobs: Vec<&str> = done.jobs.iter().map(|j| j.0.as_str()).collect();
            println!(
                "run {}: {} stage(s) submitted in {} job(s) ({}), {} stored already; job {finish} writes the run record \
                 when they end (drover runs {})",
                done.run_id,
                done.stages,
                jobs.len(),
                jobs.join(" "),
                done.cached,
                done.run_id
            );
        }
    }
    let calls = drover_slurm::ctl::Slurm::calls(&ctl);
    eprintln!("slurm: {} sbatch, {} squeue, {} scancel call(s)", calls.sbatch, calls.squeue, calls.scancel);
    Ok(())
}

/// `drover job`: one stage of a Slurm run, on the node Slurm chose.
fn job(args: crate::cli::JobArgs) -> Result<(), Failure> {
    use drover_slurm::{job, rundir::RunDir};
    let run = RunDir { path: args.run_dir.clone() };
    let info = run.read_info().map_err(|e| env(format!("cannot read {}: {e}", run.info_path().display())))?;
    let device = info.device.parse().map_err(env)?;
    let ops = registry(device);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(env)?;
    if args.finish {
        // This job succeeds when the record is written, whatever the run's stages did.
        let record = job::finish_run(&run, &info, &ops).map_err(env)?;
        println!("drover: run {} {}", record.id, record.status);
        return Ok(());
    }
    let stage = match (&args.stage, &args.array_list) {
        (Some(stage), _) => stage.clone(),
        (None, Some(list)) => {
            let text =
                std::fs::read_to_string(list).map_err(|e| env(format!("cannot read {}: {e}", list.display())))?;
            let task = std::env::var("SLURM_ARRAY_TASK_ID").unwrap_or_default();
            job::stage_of_task(&text, &task).map_err(env)?
        }
        (None, None) => {
            return Err(Failure::User(miette::miette!(
                help = "drover submits its jobs itself: see `drover run --executor slurm`",
                "drover job: give --stage, --array-list or --finish"
            )));
        }
    };
    let code = runtime.block_on(job::run_job(&run, &info, &ops, &stage));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match code {
        0 => Ok(()),
        code => Err(Failure::Exit(code.clamp(1, 255) as u8)),
    }
}

fn plan_cmd(
    ops: &OpRegistry,
    store_override: Option<PathBuf>,
    remote_flag: &Option<String>,
    select: &SelectArgs,
    json: bool,
) -> Result<(), Failure> {
    let pargs = select.file.resolved();
    let (spec, plan) = load(ops, &pargs)?;
    let (selected, forced) = selection(&plan, select)?;
    let store = open_store(&store_override, &pipeline_file(&pargs))?;
    let statuses = plan_status(&plan, &store, &selected, &forced).map_err(env)?;
    store.flush();
    // With a remote: which of the stages to run someone already computed.
    let remote = crate::remote::config(remote_flag, &spec)?
        .and_then(|config| crate::remote::on_remote(config, &statuses, &forced, &plan));
    let on_remote = |s: &StageStatus| remote.as_ref().is_some_and(|(_, names)| names.contains(&s.stage));
    let mut out = String::new();
    if json {
        for s in &statuses {
            let mut line = serde_json::to_value(s).expect("status serialises");
            if on_remote(s) {
                line["remote"] = serde_json::Value::Bool(true);
            }
            out.push_str(&line.to_string());
            out.push('\n');
        }
    } else {
        let width = statuses.iter().map(|s| s.stage.len()).max().unwrap_or(0);
        for s in &statuses {
            let action = match s.action {
                Action::Cached => "cached",
                Action::Run if on_remote(s) => "remote",
                Action::Run => "run   ",
            };
            let mut why = if s.reasons.is_empty() { String::new() } else { format!("  {}", s.reasons.join("; ")) };
            if let Some(work) = &s.work {
                why.push_str(&format!(" ({work})"));
            }
            out.push_str(&format!("{action}  {:width$}{why}\n", s.stage));
        }
        let to_run = statuses.iter().filter(|s| s.action == Action::Run).count();
        let cached = statuses.len() - to_run;
        match &remote {
            Some((url, names)) => out.push_str(&format!(
                "{} to run, {cached} cached, {} on remote {url} (`drover pull` or a run fetches them)\n",
                to_run - names.len(),
                names.len()
            )),
            None => out.push_str(&format!("{to_run} to run, {cached} cached\n")),
        }
    }
    print!("{out}");
    Ok(())
}

/// `drover plan --explain`: the checked plan, stage by stage, in plan order.
fn explain(ops: &OpRegistry, select: &SelectArgs, json: bool) -> Result<(), Failure> {
    let (_, plan) = load(ops, &select.file.resolved())?;
    let (selected, _) = selection(&plan, select)?;
    let mut out = String::new();
    for stage in plan.explain(&selected) {
        if json {
            out.push_str(&serde_json::to_string(&stage).expect("an explained stage serialises"));
            out.push('\n');
        } else {
            out.push_str(&stage.to_string());
        }
    }
    print!("{out}");
    Ok(())
}

fn dag(ops: &OpRegistry, args: &PipelineArgs, format: DagFormat) -> Result<(), Failure> {
    let (_, plan) = load(ops, args)?;
    let mut out = String::new();
    let name = |i: usize| format!("n{i}");
    match format {
        DagFormat::Dot => {
            out.push_str(&format!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n", plan.pipeline));
            for (i, n) in plan.nodes.iter().enumerate() {
                out.push_str(&format!("  {} [label=\"{}\\n({})\"];\n", name(i), n.id.replace('"', "\\\""), n.op_name));
            }
            for (i, n) in plan.nodes.iter().enumerate() {
                for (port, edge) in &n.inputs {
                    for s in edge.sources() {
                        out.push_str(&format!("  {} -> {} [label=\"{port}\"];\n", name(s.node), name(i)));
                    }
                }
            }
            out.push_str("}\n");
        }
        DagFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for (i, n) in plan.nodes.iter().enumerate() {
                out.push_str(&format!("  {}[\"{}<br/>{}\"]\n", name(i), n.id.replace('"', "#quot;"), n.op_name));
            }
            for (i, n) in plan.nodes.iter().enumerate() {
                for (port, edge) in &n.inputs {
                    for s in edge.sources() {
                        out.push_str(&format!("  {} -->|{port}| {}\n", name(s.node), name(i)));
                    }
                }
            }
        }
    }
    print!("{out}");
    Ok(())
}

/// The stored output of `STAGE[.PORT]` for the pipeline as it is now (or, if the stage's
/// inputs changed since, its last stored output, said so).
fn find_output(
    ops: &OpRegistry,
    store_override: &Option<PathBuf>,
    args: &PipelineArgs,
    target: &str,
) -> Result<(Store, String, String, OutputRef), Failure> {
    let (_, plan) = load(ops, args)?;
    let (stage, port) = split_target(&plan, target);
    let hits = plan.select(&stage);
    let idx = match hits.as_slice() {
        [one] => *one,
        [] => {
            let hint = diag::did_you_mean(&stage, plan.stage_names())
                .unwrap_or_else(|| format!("stages: {}", diag::list_names(plan.stage_names())));
            return Err(Failure::User(miette::miette!(help = hint, "no stage `{stage}` in {}", plan.file.display())));
        }
        many => {
            let ids: Vec<&str> = many.iter().take(5).map(|&i| plan.nodes[i].id.as_str()).collect();
            return Err(Failure::User(miette::miette!(
                help = format!("name one expansion, e.g. `{}`", ids[0]),
                "stage `{stage}` has {} expansions",
                many.len()
            )));
        }
    };
    let node = &plan.nodes[idx];
    let port = port.unwrap_or_else(|| {
        if node.outputs.contains_key("out") || node.outputs.len() != 1 {
            "out".into()
        } else {
            node.outputs.keys().next().cloned().unwrap_or_default()
        }
    });
    if !node.outputs.contains_key(&port) {
        let names: Vec<&str> = node.outputs.keys().map(String::as_str).collect();
        return Err(Failure::User(miette::miette!(
            help = format!("outputs: {}", diag::list_names(names.iter().copied())),
            "stage `{}` has no output `{port}`",
            node.id
        )));
    }
    let store = open_store(store_override, &pipeline_file(args))?;
    let statuses = plan_status(&plan, &store, &plan.closure(&[idx]), &BTreeSet::new()).map_err(env)?;
    let current = statuses
        .iter()
        .find(|s| s.stage == node.id)
        .and_then(|s| (s.action == Action::Cached).then(|| s.key.clone()).flatten());
    let key: CacheKey = match current {
        Some(k) => k,
        None => match store.load_state(&plan.pipeline).get(&node.id) {
            Some(k) if store.get_record(k).is_some() => {
                eprintln!(
                    "note: `{}` is out of date; showing its last stored output (run the pipeline to refresh it)",
                    node.id
                );
                k.clone()
            }
            _ => {
                return Err(Failure::User(miette::miette!(
                    help =
                        format!("run it first: drover run {} --target {}", pipeline_file(args).display(), node.stage),
                    "stage `{}` has no stored output yet",
                    node.id
                )));
            }
        },
    };
    let record = store.get_record(&key).ok_or_else(|| env(format!("record {key} vanished")))?;
    let out = record.outputs.get(&port).cloned().ok_or_else(|| env(format!("record {key} has no output `{port}`")))?;
    // Never hand out bytes that are not the ones the record names.
    if let Some(bad) = store.check_artifact(&out).map_err(env)? {
        let done = store.invalidate(&BTreeSet::from([bad.object.clone()])).map_err(env)?;
        return Err(Failure::Environment(format!(
            "the stored output of `{}` is corrupt (object {} no longer matches its hash): moved to quarantine/, \
             {} record(s) removed; run the pipeline again to recompute it",
            node.id,
            bad.object.short(),
            done.records.len()
        )));
    }
    Ok((store, node.id.clone(), port, out))
}

/// `train[size=1].metrics` -> (`train[size=1]`, `metrics`); `a.b` -> (`a`, `b`).
fn split_target(plan: &Plan, target: &str) -> (String, Option<String>) {
    if plan.by_id.contains_key(target) {
        return (target.to_string(), None);
    }
    match target.rfind(']').map_or_else(|| target.rfind('.'), |close| target[close..].find('.').map(|i| close + i)) {
        Some(dot) => (target[..dot].to_string(), Some(target[dot + 1..].to_string())),
        None => (target.to_string(), None),
    }
}

fn show(
    ops: &OpRegistry,
    store_override: Option<PathBuf>,
    args: &PipelineArgs,
    target: &str,
    rows: usize,
) -> Result<(), Failure> {
    let (store, stage, port, out) = find_output(ops, &store_override, args, target)?;
    let path = store.object_path(&out.hash);
    match out.kind {
        OutputKind::Table => {
            println!("{stage}.{port}: table, {} bytes, blake3 {}", out.size, out.hash);
            print!("{}", drover_ops::kit::table::preview(&path, rows).map_err(|e| env(e.message))?);
        }
        OutputKind::Blob => {
            println!("{stage}.{port}: blob, {} bytes, blake3 {}", out.size, out.hash);
            let bytes = std::fs::read(&path).map_err(env)?;
            let head = &bytes[..bytes.len().min(4096)];
            if head.contains(&0) {
                println!("(binary; `drover export {stage}.{port} FILE` writes it out)");
            } else {
                let text = String::from_utf8_lossy(head);
                let lines: Vec<&str> = text.lines().take(rows).collect();
                println!("{}", lines.join("\n"));
            }
        }
        OutputKind::Dir => {
            let m = store.read_manifest(&out.hash).map_err(env)?;
            println!(
                "{stage}.{port}: dir, {} files, {} bytes, manifest blake3 {}",
                m.files.len(),
                m.total_size(),
                out.hash
            );
            for f in m.files.iter().take(rows.max(20)) {
                println!("  {:>12}  {}", f.size, f.path);
            }
        }
    }
    Ok(())
}

fn export(
    ops: &OpRegistry,
    store_override: Option<PathBuf>,
    args: &PipelineArgs,
    target: &str,
    dest: &Path,
    force: bool,
) -> Result<(), Failure> {
    let (store, stage, port, out) = find_output(ops, &store_override, args, target)?;
    crate::export::export(&store, &port, &out, dest, force)?;
    eprintln!("wrote {stage}.{port} to {}", dest.display());
    Ok(())
}

fn runs(
    store_override: Option<PathBuf>,
    args: &PipelineArgs,
    id: Option<String>,
    log: Option<String>,
    limit: usize,
) -> Result<(), Failure> {
    let store = open_store(&store_override, &pipeline_file(args))?;
    let all = store.runs().map_err(env)?;
    // Runs submitted with `drover submit` whose record is not written yet.
    let flying = drover_slurm::job::in_flight(store.root());
    if let (Some(want), None) = (&id, &log)
        && let Some(run) = flying.iter().find(|r| r.run_id == *want || r.run_id.starts_with(want.as_str()))
    {
        println!("run {}  pipeline {}  running (submitted to Slurm)", run.run_id, run.pipeline);
        for (stage, status) in &run.stages {
            let (outcome, took) = match status {
                Some(s) => (format!("{:?}", s.outcome).to_lowercase(), humanize(Duration::from_millis(s.duration_ms))),
                None => ("not ended".to_string(), String::new()),
            };
            println!("  {outcome:<11} {stage:<30} {took:>8}");
        }
        return Ok(());
    }
    if all.is_empty() && flying.is_empty() {
        println!("no runs yet in {}", store.root().display());
        return Ok(());
    }
    let pick = |id: &Option<String>| -> Result<&drover_cache::RunRecord, Failure> {
        match id.as_deref() {
            None | Some("last") => all.last().ok_or_else(|| {
                Failure::User(miette::miette!(help = "`drover runs` lists the runs in flight", "no run has ended yet"))
            }),
            Some(id) => all
                .iter()
                .find(|r| r.id == id || r.id.starts_with(id))
                .ok_or_else(|| Failure::User(miette::miette!(help = "`drover runs` lists them", "no run `{id}`"))),
        }
    };
    if let Some(stage) = log {
        let run = pick(&id)?;
        let Some(s) = run.stages.iter().find(|s| s.stage == stage) else {
            return Err(Failure::User(miette::miette!("run {} has no stage `{stage}`", run.id)));
        };
        match &s.log {
            Some(rel) => print!("{}", std::fs::read_to_string(store.root().join(rel)).map_err(env)?),
            None => println!("stage `{stage}` wrote no log in run {} ({:?})", run.id, s.outcome),
        }
        // A stage that ran as a Slurm job: what the job printed too.
        if let (Some(job), Some(rel)) = (s.note("slurm_job"), s.note("slurm_output")) {
            println!("--- Slurm job {job} ({rel}) ---");
            match std::fs::read_to_string(store.root().join(rel)) {
                Ok(text) => print!("{text}"),
                Err(e) => println!("(cannot read it: {e})"),
            }
        }
        return Ok(());
    }
    if id.is_some() {
        let run = pick(&id)?;
        println!(
            "run {}  pipeline {}  {}  {}",
            run.id,
            run.pipeline,
            run.status,
            humanize(Duration::from_millis(run.duration_ms))
        );
        // Where it started, for records that say (written since triggers were recorded).
        let mut facts = Vec::new();
        if let Some(t) = &run.trigger {
            facts.push(match &t.schedule {
                Some(s) => format!("trigger {} (schedule {s})", t.kind),
                None => format!("trigger {}", t.kind),
            });
        }
        let short = |s: &str| s.chars().take(12).collect::<String>();
        facts.extend(run.host.as_ref().map(|h| format!("host {h}")));
        facts.extend(run.git_revision.as_ref().map(|g| format!("git {}", short(g))));
        facts.extend(run.params_digest.as_ref().map(|d| format!("params {}", short(d))));
        if !run.metrics.is_empty() {
            facts.push(format!("{} metrics (drover metrics show {})", run.metrics.len(), run.id));
        }
        if !facts.is_empty() {
            println!("  {}", facts.join(", "));
        }
        for s in &run.stages {
            let err = s.error.as_deref().map(|e| format!("  {}", e.lines().next().unwrap_or(""))).unwrap_or_default();
            let device = s.note("device").map(|d| format!("  on {d}")).unwrap_or_default();
            println!(
                "  {:<11} {:<30} {:>8}{device}{err}",
                format!("{:?}", s.outcome).to_lowercase(),
                s.stage,
                humanize(Duration::from_millis(s.duration_ms))
            );
        }
        return Ok(());
    }
    println!(
        "{:<36} {:<16} {:<11} {:>5} {:>6} {:>6} {:>9}",
        "run", "pipeline", "status", "ran", "cached", "failed", "time"
    );
    for run in flying.iter().rev() {
        let count =
            |o: StageOutcome| run.stages.iter().filter(|(_, s)| s.as_ref().is_some_and(|s| s.outcome == o)).count();
        println!(
            "{:<36} {:<16} {:<11} {:>5} {:>6} {:>6} {:>9}",
            run.run_id,
            run.pipeline,
            "running",
            count(StageOutcome::Ran),
            count(StageOutcome::Cached),
            count(StageOutcome::Failed),
            "-"
        );
    }
    for run in all.iter().rev().take(limit) {
        let count = |o: StageOutcome| run.stages.iter().filter(|s| s.outcome == o).count();
        println!(
            "{:<36} {:<16} {:<11} {:>5} {:>6} {:>6} {:>9}",
            run.id,
            run.pipeline,
            run.status,
            count(StageOutcome::Ran),
            count(StageOutcome::Cached),
            count(StageOutcome::Failed),
            humanize(Duration::from_millis(run.duration_ms))
        );
    }
    Ok(())
}

/// Which run records `gc` keeps: the `runs` most recent of each pipeline and those younger than
/// `days` (either rule keeps a record; with neither, every record is kept).
#[derive(Clone, Copy, Debug)]
struct Keep {
    runs: Option<usize>,
    days: Option<u64>,
}

impl Keep {
    /// The records to keep, from every record, oldest first.
    fn select(self, all: &[RunRecord], now_secs: u64) -> Vec<bool> {
        if self.runs.is_none() && self.days.is_none() {
            return vec![true; all.len()];
        }
        let mut kept = vec![false; all.len()];
        if let Some(n) = self.runs {
            let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, r) in all.iter().enumerate().rev() {
                let count = seen.entry(r.pipeline.as_str()).or_default();
                if *count < n {
                    kept[i] = true;
                    *count += 1;
                }
            }
        }
        if let Some(days) = self.days {
            let since = now_secs.saturating_sub(days.saturating_mul(86_400));
            for (i, r) in all.iter().enumerate() {
                kept[i] |= r.started >= since;
            }
        }
        kept
    }
}

fn gc(
    ops: &OpRegistry,
    store_override: Option<PathBuf>,
    args: &PipelineArgs,
    dry_run: bool,
    memo: bool,
    keep: Keep,
) -> Result<(), Failure> {
    let file = pipeline_file(args);
    let store = open_store(&store_override, &file)?;
    let all = store.runs().map_err(env)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let kept = keep.select(&all, now);
    let (mut pruned_runs, mut kept_runs) = (Vec::new(), Vec::new());
    for (run, keep) in all.into_iter().zip(kept) {
        if keep { kept_runs.push(run) } else { pruned_runs.push(run.id) }
    }
    let pruned_logs = store.prune_runs(&pruned_runs, dry_run).map_err(env)?;
    let mut roots: BTreeSet<CacheKey> =
        kept_runs.into_iter().flat_map(|r| r.stages.into_iter().filter_map(|s| s.key)).collect();
    if file.exists() {
        let (_, plan) = load(ops, args)?;
        let all: BTreeSet<usize> = (0..plan.nodes.len()).collect();
        roots
            .extend(plan_status(&plan, &store, &all, &BTreeSet::new()).map_err(env)?.into_iter().filter_map(|s| s.key));
        roots.extend(store.load_state(&plan.pipeline).into_values());
    }
    let report = store.gc(&roots, dry_run).map_err(env)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    if keep.runs.is_some() || keep.days.is_some() {
        println!("{verb} {} run records and {pruned_logs} run logs", pruned_runs.len());
    }
    let (entries, bytes) = if memo { store.memo().clear(dry_run).map_err(env)? } else { store.memo().usage() };
    println!(
        "{verb} {} objects ({} bytes), {} records, {} scratch entries, {} unused lock files; kept {} objects",
        report.objects_removed,
        report.bytes_freed,
        report.records_removed,
        report.tmp_removed,
        report.locks_removed,
        report.objects_kept
    );
    match memo {
        true => println!("{verb} the memo: {entries} responses ({bytes} bytes)"),
        false if entries > 0 => println!("kept the memo: {entries} responses ({bytes} bytes); `--memo` empties it"),
        false => {}
    }
    Ok(())
}

fn verify(store_override: Option<PathBuf>, args: &PipelineArgs) -> Result<(), Failure> {
    let store = open_store(&store_override, &pipeline_file(args))?;
    let report = store.verify().map_err(env)?;
    println!("checked {} objects and {} records", report.objects_checked, report.records_checked);
    for h in &report.corrupt_objects {
        println!("corrupt object {h}: moved to quarantine/");
    }
    for p in &report.blocked_objects {
        println!("not an object at {}: moved to quarantine/", p.display());
    }
    for p in &report.corrupt_records {
        println!("unreadable record {}: moved to quarantine/", p.display());
    }
    for k in &report.dangling_records {
        println!("record {} named a missing object: removed (its stage will rerun)", k.short());
    }
    for k in &report.tainted_records {
        println!("record {} was computed from a corrupt object: removed (its stage will rerun)", k.short());
    }
    if report.is_clean() {
        println!("store is consistent");
        Ok(())
    } else {
        Err(Failure::Stages)
    }
}
