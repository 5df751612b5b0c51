//! A run's directory in the store, `exec/slurm/RUN/`: what the jobs of one run share with the
//! driver (or, for `drover submit`, with each other), on the filesystem every node sees.
//!
//! ```text
//! run.json            RunInfo: the pipeline, its overrides, the store, who drives the run
//! pipeline.yaml       the pipeline file as the run started (edits after that change nothing)
//! params-N.yaml       copies of `-p` files
//! inputs/STAGE.json   (driver) the upstream outputs a stage's job reads, with its key
//! status/STAGE.json   how a stage ended: written by its job beside its outputs
//! arrays/N.txt        the stage ids of array job N's tasks, one a line
//! jobs.jsonl          every submission, one JSON line each: the run's own memory of its jobs
//! out/JOB.out         what each job printed (Slurm's --output)
//! ```
//!
//! Every file is written whole (temporary file, rename), so a reader on another node sees the
//! old content or the new, never part.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use drover_cache::{CacheKey, OutputRef, StageOutcome, escape};
use serde::{Deserialize, Serialize};

use crate::ctl::JobId;

/// Everything a job needs to rebuild the run's plan on its node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub pipeline: String,
    /// The pipeline file as given (relative paths in it resolve against its directory).
    pub file: PathBuf,
    /// The pipeline's directory, absolute: where commands run.
    pub dir: PathBuf,
    /// The store, absolute.
    pub store: PathBuf,
    /// `--set` overrides, the environment's section overrides (`DROVER_LLM_*`) first.
    pub sets: Vec<String>,
    /// How many `-p` files were copied in (`params-0.yaml`, ...).
    pub params_files: usize,
    /// `--device` of numeric ops on the nodes.
    pub device: String,
    /// Stages to rerun even if stored (`--force`).
    pub forced: Vec<String>,
    /// The stages the run covers (`--target` and what they need); empty: every stage.
    pub selected: Vec<String>,
    /// Who submitted the run.
    pub driver: Driver,
    /// `drover submit`: no driver follows the jobs; they find their inputs in status files.
    pub detached: bool,
    /// Unix seconds.
    pub started: u64,
}

/// The process that drives a run, so that a later driver can tell whether it is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Driver {
    pub host: String,
    pub tag: String,
    pub pid: u32,
    pub start: u64,
}

impl Driver {
    pub fn me() -> Driver {
        let me = drover_cache::host::me();
        Driver { host: me.hostname.clone(), tag: me.tag.clone(), pid: me.pid, start: me.start }
    }

    /// Known to have ended (only a driver on this host can be judged).
    pub fn gone(&self) -> bool {
        drover_cache::host::alive(&self.tag, self.pid, self.start) == Some(false)
    }
}

/// How a stage ended, as its job (or a driver, for a stage it settled) wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageStatus {
    pub stage: String,
    pub outcome: StageOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<CacheKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<BTreeMap<String, OutputRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The environment's fault (exit 3), not the stage's.
    #[serde(default)]
    pub env: bool,
    pub attempts: u32,
    pub duration_ms: u64,
    /// The stage's log, relative to the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
    /// The job that wrote it (`None`: settled without a job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// `SLURM_RESTART_COUNT`: how often Slurm requeued the job before this end.
    #[serde(default)]
    pub restarts: u32,
    /// Why it ran, in words (a stage that ran or failed), for the run record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl StageStatus {
    /// A stage's end with nothing else known yet; writers fill in what they know with
    /// `StageStatus { key, outputs, .., ..StageStatus::new(stage, outcome) }`.
    pub fn new(stage: &str, outcome: StageOutcome) -> StageStatus {
        StageStatus {
            stage: stage.to_string(),
            outcome,
            key: None,
            outputs: None,
            error: None,
            env: false,
            attempts: 0,
            duration_ms: 0,
            log: None,
            notes: BTreeMap::new(),
            job: None,
            restarts: 0,
            reasons: Vec::new(),
        }
    }

    /// An end the driver may act on; `interrupted` is a job stopped by a signal, which Slurm
    /// may requeue, or whose end the queue tells better (a time limit).
    pub fn is_final(&self) -> bool {
        self.outcome != StageOutcome::Interrupted
    }
}

/// What a stage's job reads before it runs (driver mode): its inputs' producers' outputs and
/// the key the driver computed (the job computes it again; a dep edited meanwhile changes it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobInput {
    pub key: CacheKey,
    /// Upstream stage id -> its outputs (those this stage reads).
    pub upstream: BTreeMap<String, BTreeMap<String, OutputRef>>,
}

/// One line of `jobs.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub job: JobId,
    /// The stage of each task (one for a plain job), in task order.
    pub stages: Vec<String>,
    /// The key each stage had when submitted (`None` under `drover submit`, where a job finds
    /// its key when its inputs exist).
    pub keys: Vec<Option<CacheKey>>,
    /// The driver's attempt (1 unless it resubmitted after an infrastructure failure).
    pub attempt: u32,
}

impl Submission {
    /// Each stage with its job (a task of an array job).
    pub fn jobs(&self) -> Vec<(String, JobId, Option<CacheKey>)> {
        let array = self.stages.len() > 1 || self.job.0.contains('_');
        self.stages
            .iter()
            .enumerate()
            .map(|(i, stage)| {
                let job = if array { JobId::task(self.job.base(), i) } else { self.job.clone() };
                (stage.clone(), job, self.keys.get(i).cloned().flatten())
            })
            .collect()
    }
}

/// The directory of one run.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

/// Where every run's directory lives in a store.
pub fn runs_root(store: &Path) -> PathBuf {
    store.join("exec").join("slurm")
}

impl RunDir {
    pub fn new(store: &Path, run_id: &str) -> RunDir {
        RunDir { path: runs_root(store).join(run_id) }
    }

    /// Makes the directory and its parts.
    pub fn create(&self) -> std::io::Result<()> {
        for sub in ["inputs", "status", "arrays", "out", "tmp"] {
            std::fs::create_dir_all(self.path.join(sub))?;
        }
        Ok(())
    }

    pub fn info_path(&self) -> PathBuf {
        self.path.join("run.json")
    }

    pub fn read_info(&self) -> std::io::Result<RunInfo> {
        let bytes = std::fs::read(self.info_path())?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    pub fn pipeline_copy(&self) -> PathBuf {
        self.path.join("pipeline.yaml")
    }

    pub fn params_copy(&self, i: usize) -> PathBuf {
        self.path.join(format!("params-{i}.yaml"))
    }

    pub fn status_path(&self, stage: &str) -> PathBuf {
        self.path.join("status").join(format!("{}.json", escape(stage)))
    }

    pub fn input_path(&self, stage: &str) -> PathBuf {
        self.path.join("inputs").join(format!("{}.json", escape(stage)))
    }

    pub fn array_path(&self, n: usize) -> PathBuf {
        self.path.join("arrays").join(format!("{n}.txt"))
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.path.join("jobs.jsonl")
    }

    /// Slurm's `--output` pattern for a plain job or an array's tasks.
    pub fn output_pattern(&self, array: bool) -> PathBuf {
        self.path.join("out").join(if array { "%A_%a.out" } else { "%j.out" })
    }

    /// Where a job's output is, once it ran.
    pub fn output_path(&self, job: &JobId) -> PathBuf {
        self.path.join("out").join(format!("{job}.out"))
    }

    /// Writes `value` as JSON at `path`, whole or not at all.
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> std::io::Result<()> {
        self.write(path, &serde_json::to_vec_pretty(value).expect("run files serialise"))
    }

    /// Writes bytes at `path`, whole or not at all.
    pub fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let me = drover_cache::host::me();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = self.path.join("tmp").join(format!("{name}.{}.{}", me.tag, me.pid));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    }

    /// A stage's status, if its job (or the driver) wrote one that parses.
    pub fn read_status(&self, stage: &str) -> Option<StageStatus> {
        read_status_at(&self.status_path(stage))
    }

    /// Appends a submission to the ledger (one `write` of one line: whole lines on local
    /// filesystems and NFS alike for lines this short, and only one driver appends).
    pub fn log_submission(&self, s: &Submission) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(s).expect("submissions serialise");
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.ledger_path())?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Every submission of the run (a torn last line, from a driver killed mid-write, is
    /// skipped).
    pub fn submissions(&self) -> Vec<Submission> {
        let text = std::fs::read_to_string(self.ledger_path()).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// A status file, if it parses.
pub fn read_status_at(path: &Path) -> Option<StageStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_names_each_stage_with_its_job() {
        let array = Submission {
            job: JobId("12".into()),
            stages: vec!["t[n=1]".into(), "t[n=2]".into()],
            keys: vec![None, None],
            attempt: 1,
        };
        let jobs: Vec<(String, String)> = array.jobs().into_iter().map(|(s, j, _)| (s, j.0)).collect();
        assert_eq!(jobs, [("t[n=1]".to_string(), "12_0".to_string()), ("t[n=2]".into(), "12_1".into())]);
        let one = Submission { job: JobId("13".into()), stages: vec!["a".into()], keys: vec![None], attempt: 1 };
        assert_eq!(one.jobs()[0].1, JobId("13".into()));
        assert_eq!(escape("t[n=1]"), "t%5Bn%3D1%5D");
    }

    #[test]
    fn a_torn_last_line_of_the_ledger_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir { path: d.path().to_path_buf() };
        run.create().unwrap();
        let s = Submission { job: JobId("5".into()), stages: vec!["a".into()], keys: vec![None], attempt: 1 };
        run.log_submission(&s).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(run.ledger_path()).unwrap();
        f.write_all(b"{\"job\":\"6\",\"sta").unwrap();
        assert_eq!(run.submissions(), [s]);
    }
}
