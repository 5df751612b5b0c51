//! Talking to Slurm's controller: `sbatch`, `squeue` and `scancel`, each call counted (the
//! controller is shared by everyone on a cluster; the driver's whole point is to call it
//! rarely). `sacct` is never used: many clusters, and the test cluster, run without
//! accounting, where it answers nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use drover_engine::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A Slurm job or array task: `123`, or `123_4` (task 4 of array job 123).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// The job to name to `squeue -j` and `scancel`: the array job of a task.
    pub fn base(&self) -> &str {
        self.0.split('_').next().unwrap_or(&self.0)
    }

    pub fn task(base: &str, task: usize) -> JobId {
        JobId(format!("{base}_{task}"))
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job is, as `squeue` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Queued, running, or on its way back to the queue (requeued).
    Active,
    /// Ended by itself: its status file says how.
    Ended,
    /// Ended by the cluster (node failure, preemption, time limit, memory): trying again may
    /// help, and it is not the stage's own failure.
    Infrastructure,
    /// Cancelled (by `scancel`, or an invalid dependency).
    Cancelled,
}

/// One line of `squeue`: a job and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueLine {
    pub job: JobId,
    /// `PENDING`, `RUNNING`, `NODE_FAIL`, ...
    pub state: String,
    /// Slurm's reason (`Resources`, `BeginTime`, `DependencyNeverSatisfied`, ...).
    pub reason: String,
}

impl QueueLine {
    pub fn phase(&self) -> Phase {
        phase(&self.state)
    }
}

/// What a state means to drover.
pub fn phase(state: &str) -> Phase {
    match state {
        "COMPLETED" | "FAILED" => Phase::Ended,
        "NODE_FAIL" | "PREEMPTED" | "TIMEOUT" | "BOOT_FAIL" | "DEADLINE" | "OUT_OF_MEMORY" => Phase::Infrastructure,
        "CANCELLED" | "REVOKED" => Phase::Cancelled,
        // PENDING, RUNNING, CONFIGURING, COMPLETING, SUSPENDED, REQUEUED, REQUEUE_HOLD,
        // REQUEUE_FED, RESIZING, SIGNALING, STAGE_OUT, STOPPED, SPECIAL_EXIT, ... and any
        // state a later Slurm adds: still the queue's.
        _ => Phase::Active,
    }
}

/// A Slurm command that failed.
#[derive(Debug, thiserror::Error)]
#[error("{command}: {message}")]
pub struct CtlError {
    pub command: &'static str,
    pub message: String,
}

/// How many times each command was called.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Calls {
    pub sbatch: u64,
    pub squeue: u64,
    pub scancel: u64,
}

/// The controller's commands. [`Cli`] runs the real ones; tests may script their own.
pub trait Slurm: Send + Sync {
    /// Submits a batch script (given on stdin) with these arguments; the job's id.
    fn sbatch<'a>(&'a self, args: &'a [String], script: &'a str) -> BoxFuture<'a, Result<String, CtlError>>;
    /// The state of every job, or array task, of these jobs (array jobs expanded); a job
    /// Slurm no longer knows is absent.
    fn squeue<'a>(&'a self, jobs: &'a [String]) -> BoxFuture<'a, Result<Vec<QueueLine>, CtlError>>;
    fn scancel<'a>(&'a self, jobs: &'a [String]) -> BoxFuture<'a, Result<(), CtlError>>;
    fn calls(&self) -> Calls;
}

/// The real commands, from `PATH`, with the environment's `SLURM_CONF` if any.
#[derive(Default, Clone)]
pub struct Cli {
    counts: Arc<[AtomicU64; 3]>,
}

impl Cli {
    pub fn new() -> Cli {
        Cli::default()
    }

    fn count(&self, i: usize) {
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }
}

async fn output(command: &'static str, args: &[String], stdin: Option<&str>) -> Result<String, CtlError> {
    let fail = |message: String| CtlError { command, message };
    let mut cmd = Command::new(command);
    cmd.args(args).kill_on_drop(true).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    let mut child = cmd.spawn().map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound => format!("not found on PATH ({e}); is this a Slurm login node?"),
            _ => format!("cannot start it: {e}"),
        })
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(|e| fail(format!("writing its input: {e}")))?;
    }
    let out = child.wait_with_output().await.map_err(|e| fail(format!("waiting for it: {e}")))?;
    // Slurm's commands start their messages with their own name, as CtlError does.
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stderr = stderr.strip_prefix(&format!("{command}: ")).map(str::to_string).unwrap_or(stderr);
    if !out.status.success() {
        let status = out.status.code().map_or_else(|| "a signal".to_string(), |c| format!("exit {c}"));
        return Err(fail(if stderr.is_empty() { format!("failed ({status})") } else { stderr }));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Slurm for Cli {
    fn sbatch<'a>(&'a self, args: &'a [String], script: &'a str) -> BoxFuture<'a, Result<String, CtlError>> {
        Box::pin(async move {
            self.count(0);
            let mut all = vec!["--parsable".to_string()];
            all.extend(args.iter().cloned());
            let out = output("sbatch", &all, Some(script)).await?;
            // `--parsable` prints `ID` or `ID;CLUSTER`.
            let id = out.trim().split(';').next().unwrap_or("").to_string();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CtlError { command: "sbatch", message: format!("unexpected answer {:?}", out.trim()) });
            }
            Ok(id)
        })
    }

    fn squeue<'a>(&'a self, jobs: &'a [String]) -> BoxFuture<'a, Result<Vec<QueueLine>, CtlError>> {
        Box::pin(async move {
            if jobs.is_empty() {
                return Ok(Vec::new());
            }
            self.count(1);
            let args: Vec<String> = ["-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j"]
                .into_iter()
                .map(String::from)
                .chain([jobs.join(",")])
                .collect();
            match output("squeue", &args, None).await {
                Ok(out) => Ok(parse_squeue(&out)),
                // Every job named is gone from the controller (older than MinJobAge).
                Err(e) if e.message.contains("Invalid job id") => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        })
    }

    fn scancel<'a>(&'a self, jobs: &'a [String]) -> BoxFuture<'a, Result<(), CtlError>> {
        Box::pin(async move {
            if jobs.is_empty() {
                return Ok(());
            }
            self.count(2);
            output("scancel", jobs, None).await.map(|_| ())
        })
    }

    fn calls(&self) -> Calls {
        let n = |i: usize| self.counts[i].load(Ordering::Relaxed);
        Calls { sbatch: n(0), squeue: n(1), scancel: n(2) }
    }
}

/// `%i|%T|%r` lines; a pending array's line (`12_[3-9%2]`, printed without `-r`) is skipped.
pub fn parse_squeue(out: &str) -> Vec<QueueLine> {
    out.lines()
        .filter_map(|line| {
            let mut parts = line.trim().splitn(3, '|');
            let job = parts.next()?.trim();
            let state = parts.next()?.trim();
            let reason = parts.next().unwrap_or("").trim();
            let ok = !job.is_empty() && job.bytes().all(|b| b.is_ascii_digit() || b == b'_');
            ok.then(|| QueueLine { job: JobId(job.to_string()), state: state.to_string(), reason: reason.to_string() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_become_jobs_and_states() {
        let lines = parse_squeue("4_0|RUNNING|None\n4_[1-3%2]|PENDING|JobArrayTaskLimit\n7|NODE_FAIL|None\n");
        let got: Vec<(&str, &str, Phase)> =
            lines.iter().map(|l| (l.job.0.as_str(), l.state.as_str(), l.phase())).collect();
        assert_eq!(got, [("4_0", "RUNNING", Phase::Active), ("7", "NODE_FAIL", Phase::Infrastructure)]);
        assert_eq!(JobId("4_0".into()).base(), "4");
        assert_eq!(phase("TIMEOUT"), Phase::Infrastructure);
        assert_eq!(phase("REQUEUED"), Phase::Active);
        assert_eq!(phase("CANCELLED"), Phase::Cancelled);
        assert_eq!(phase("FAILED"), Phase::Ended);
    }
}
