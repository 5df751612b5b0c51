//! `drover run --executor slurm` against a real Slurm: Debian's slurmctld, three slurmd and
//! munge on this machine, started by `tests/support/slurm-cluster.sh` (`.ci/run` starts it and
//! sets `DROVER_TEST_SLURM_CONF`). Without it these tests fail in CI (`CI` or
//! `DROVER_REQUIRE_SLURM` set) and say they did not run elsewhere.
//!
//! Each test has its own pipeline and store; they share the cluster and run at once. Node n3
//! (partition `flaky`) is taken down by the node-failure test only. `drover schedule`'s Slurm
//! backend is tested here too, on this cluster.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Output, Project, wait_for};

struct Cluster {
    conf: String,
}

/// The test cluster, or `None` (said on stderr) when there is none and none is required.
fn cluster() -> Option<Cluster> {
    match std::env::var("DROVER_TEST_SLURM_CONF") {
        Ok(conf) if !conf.is_empty() => Some(Cluster { conf }),
        _ if std::env::var_os("CI").is_some() || std::env::var_os("DROVER_REQUIRE_SLURM").is_some() => panic!(
            "these tests need a Slurm cluster and none is set up: DROVER_TEST_SLURM_CONF is unset \
             (.ci/run starts one with tests/support/slurm-cluster.sh start DIR)"
        ),
        _ => {
            eprintln!(
                "NOT RUN: no Slurm cluster (tests/support/slurm-cluster.sh start DIR; DROVER_TEST_SLURM_CONF=DIR/slurm.conf)"
            );
            None
        }
    }
}

impl Cluster {
    /// A Slurm command's stdout; fails the test if it fails.
    fn slurm(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).env("SLURM_CONF", &self.conf).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Brings a node taken down back. With `ReturnToService=2` its slurmd's next registration
    /// may have done it already, and Slurm then refuses `State=RESUME` (the node is not down):
    /// what counts is that it is up.
    fn resume(&self, node: &str) {
        let out = Command::new("scontrol")
            .args(["update", &format!("NodeName={node}"), "State=RESUME"])
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap();
        let state = self.slurm("sinfo", &["-h", "-N", "-n", node, "-o", "%T"]);
        assert!(
            out.status.success() || !state.starts_with("down"),
            "scontrol update NodeName={node} State=RESUME: {} (node {state})",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A job's state, as `squeue` says it.
    fn state(&self, job: &str) -> String {
        self.slurm("squeue", &["-h", "-t", "all", "-j", job, "-o", "%T"]).trim().to_string()
    }

    /// `drover ARGS` in the project, talking to this cluster.
    fn drover(&self, p: &Project, args: &[&str]) -> Output {
        let out = self.cmd(p, args).output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn cmd(&self, p: &Project, args: &[&str]) -> Command {
        let mut c = p.cmd(args);
        c.env("SLURM_CONF", &self.conf).env_remove("DROVER_EXECUTOR");
        c
    }
}

/// The newest run record of the project's store.
fn last_run(p: &Project) -> serde_json::Value {
    let mut runs: Vec<_> = std::fs::read_dir(p.join(".drover/runs")).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    serde_json::from_slice(&std::fs::read(runs.last().expect("a run record")).unwrap()).unwrap()
}

/// Each stage of a run record: (stage, outcome, error, the entry, whose notes are its fields).
fn stages(run: &serde_json::Value) -> Vec<(String, String, Option<String>, serde_json::Value)> {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["outcome"].as_str().unwrap().to_string(),
                s["error"].as_str().map(String::from),
                s.clone(),
            )
        })
        .collect()
}

/// The `slurm:` summary line of a driver's stderr, with the number of `squeue` calls (which
/// depends on timing) left out.
fn calls_line(stderr: &str) -> String {
    let line = stderr.lines().find(|l| l.starts_with("slurm: ")).unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    let (head, rest) = line.split_once(" sbatch, ").unwrap();
    let scancel = rest.split_once(" squeue, ").unwrap().1;
    format!("{head} sbatch, _ squeue, {scancel}")
}

#[test]
fn a_matrix_goes_as_one_job_array_and_a_rerun_submits_nothing() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
slurm: { poll: 1s }
stages:
  a: { op: command, with: { run: "echo A > ${out.out}" }, out: { out: blob } }
  t:
    op: command
    matrix: { n: [1, 2, 3] }
    in: { x: a }
    with: { run: "cat ${in.x} > ${out.out}; echo ${matrix.n} >> ${out.out}" }
    out: { out: blob }
  g: { op: command, in: { parts: "t[*]" }, with: { run: "cat ${in.parts}/* > ${out.out}" }, out: { out: blob } }
"#,
    );
    let out = c.drover(&p, &["run", "--executor", "slurm"]);
    out.expect_code(0);
    assert_eq!(
        calls_line(&out.stderr),
        "slurm: 5 stage(s) submitted, 0 followed from a stopped driver; 3 sbatch, _ squeue, 0 scancel call(s)"
    );
    let run = last_run(&p);
    let jobs: Vec<(String, String)> =
        stages(&run).into_iter().map(|(s, o, _, n)| (s, format!("{o} {}", n["slurm_job"].as_str().unwrap()))).collect();
    let array = jobs[1].1.trim_start_matches("ran ").split('_').next().unwrap().to_string();
    assert_eq!(
        jobs[1..4].iter().map(|(s, j)| format!("{s} {j}")).collect::<Vec<_>>(),
        [format!("t[n=1] ran {array}_0"), format!("t[n=2] ran {array}_1"), format!("t[n=3] ran {array}_2"),]
    );
    let show = c.drover(&p, &["show", "g"]);
    assert!(show.stdout.ends_with("\nA\n1\nA\n2\nA\n3\n"), "{}", show.stdout);
    // Jobs' output goes to the store, never as Slurm's default slurm-JOB.out into the directory
    // a job starts in (the pipeline's).
    let strays: Vec<String> = std::fs::read_dir(p.join("."))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("slurm-"))
        .collect();
    assert_eq!(strays, Vec::<String>::new());

    let again = c.drover(&p, &["run", "--executor", "slurm"]);
    again.expect_code(0);
    assert!(again.stderr.contains("5 stages: 0 ran, 5 cached"), "{}", again.stderr);
    assert!(
        again.stderr.contains(
            "slurm: 0 stage(s) submitted, 0 followed from a stopped driver; 0 sbatch, 0 squeue, 0 scancel call(s)"
        ),
        "{}",
        again.stderr
    );
}

#[test]
fn a_failed_stage_skips_its_dependents_which_are_never_submitted() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
slurm: { poll: 1s }
stages:
  a: { op: command, with: { run: "echo about to fail; exit 4" }, out: { out: blob } }
  b: { op: command, in: { x: a }, with: { run: "cat ${in.x} > ${out.out}" }, out: { out: blob } }
  c: { op: command, with: { run: "echo C > ${out.out}" }, out: { out: blob } }
"#,
    );
    let out = c.drover(&p, &["run", "--executor", "slurm"]);
    out.expect_code(1);
    assert_eq!(
        calls_line(&out.stderr),
        "slurm: 2 stage(s) submitted, 0 followed from a stopped driver; 2 sbatch, _ squeue, 0 scancel call(s)"
    );
    let got: Vec<(String, String, Option<String>)> =
        stages(&last_run(&p)).into_iter().map(|(s, o, e, _)| (s, o, e)).collect();
    let mut got = got;
    got.sort();
    assert_eq!(
        got,
        [
            (
                "a".into(),
                "failed".into(),
                Some("command exited with status 4; last lines of its output:\n  about to fail".into())
            ),
            ("b".into(), "skipped".into(), Some("`a` failed".into())),
            ("c".into(), "ran".into(), None),
        ]
    );
    // The stage's log, then what its job printed.
    let log = c.drover(&p, &["runs", "--log", "a"]);
    log.expect_code(0);
    let lines: Vec<&str> = log.stdout.lines().collect();
    assert_eq!(lines[0], "about to fail");
    assert!(lines[1].starts_with("--- Slurm job ") && lines[1].ends_with(".out) ---"), "{}", log.stdout);
    assert_eq!(lines[2], "drover: a: attempt 1 started");
    assert!(lines[3].starts_with("drover: a: Failed after "), "{}", log.stdout);
}

#[test]
fn early_cutoff_holds_on_the_cluster() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    let pipeline = |v: u32| {
        format!(
            r#"
slurm: {{ poll: 1s }}
stages:
  a: {{ op: command, with: {{ run: "echo a >> calls.log; echo same > ${{out.out}} # v{v}" }}, out: {{ out: blob }} }}
  b: {{ op: command, in: {{ x: a }}, with: {{ run: "echo b >> calls.log; cat ${{in.x}} > ${{out.out}}" }}, out: {{ out: blob }} }}
"#
        )
    };
    p.write("drover.yaml", &pipeline(1));
    c.drover(&p, &["run", "--executor", "slurm"]).expect_code(0);
    p.write("drover.yaml", &pipeline(2));
    let out = c.drover(&p, &["run", "--executor", "slurm"]);
    out.expect_code(0);
    // `a` ran again on the cluster and made the same bytes: `b` was never submitted.
    assert_eq!(p.read("calls.log"), "a\nb\na\n");
    let got: Vec<(String, String)> = stages(&last_run(&p)).into_iter().map(|(s, o, _, _)| (s, o)).collect();
    assert_eq!(got, [("a".into(), "ran".into()), ("b".into(), "cached".into())]);
    assert_eq!(
        calls_line(&out.stderr),
        "slurm: 1 stage(s) submitted, 0 followed from a stopped driver; 1 sbatch, _ squeue, 0 scancel call(s)"
    );
}

#[test]
fn a_node_failure_is_requeued_by_slurm_and_counted_as_an_attempt() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
slurm: { poll: 1s, partition: flaky }
stages:
  a:
    op: command
    retries: 1
    with: { run: "echo $SLURM_JOB_ID >> starts.log; while [ ! -e go ]; do sleep 0.1; done; echo done > ${out.out}" }
    out: { out: blob }
"#,
    );
    let driver =
        c.cmd(&p, &["run", "--executor", "slurm"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let job = wait_for("the stage to start on n3", || p.read_opt("starts.log").filter(|s| s.ends_with('\n')));
    let job = job.trim().to_string();
    c.slurm("scontrol", &["update", "NodeName=n3", "State=DOWN", "Reason=drover-test"]);
    // Slurm kills the job and, as it was submitted with --requeue, queues it again.
    wait_for("the job to be requeued", || (c.state(&job) == "PENDING").then_some(()));
    p.write("go", "");
    c.resume("n3");
    let out = driver.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(p.read("starts.log"), format!("{job}\n{job}\n"), "the same job ran twice");
    let run = last_run(&p);
    assert_eq!(run["stages"][0]["attempts"], 2);
    assert_eq!(run["stages"][0]["slurm_job"], job.as_str());
}

#[test]
fn a_job_past_its_time_limit_is_the_environments_failure() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
slurm: { poll: 1s }
stages:
  slow:
    op: command
    slurm: { time: 1m }
    with: { run: "echo $SLURM_JOB_ID > job; sleep 600; echo never > ${out.out}" }
    out: { out: blob }
"#,
    );
    let out = c.drover(&p, &["run", "--executor", "slurm"]);
    out.expect_code(3);
    let job = p.read("job").trim().to_string();
    let (_, outcome, error, _) = stages(&last_run(&p)).remove(0);
    assert_eq!(outcome, "failed");
    let error = error.unwrap();
    assert!(
        error.starts_with(&format!(
            "Slurm job {job} ended TIMEOUT (the cluster's doing: time limit, node failure, preemption or memory), \
             after 1 attempt(s); `retries:` allows 0; its output ("
        )),
        "{error}"
    );
    assert_eq!(c.state(&job), "TIMEOUT");
}

#[test]
fn ctrl_c_cancels_the_runs_jobs_and_only_those() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    let other = c.slurm("sbatch", &["--parsable", "--job-name=not-drovers", "-o", "/dev/null", "--wrap", "sleep 300"]);
    let other = other.trim();
    p.write(
        "drover.yaml",
        r#"
slurm: { poll: 1s }
stages:
  wait: { op: command, with: { run: "echo $SLURM_JOB_ID > job; sleep 600" }, out: { out: blob } }
"#,
    );
    let driver =
        c.cmd(&p, &["run", "--executor", "slurm"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let job = wait_for("the stage's job to start", || p.read_opt("job").filter(|s| s.ends_with('\n')));
    let job = job.trim();
    common::signal(driver.id() as i32, common::SIGINT);
    let out = driver.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("0 followed from a stopped driver; 1 sbatch, "), "{stderr}");
    assert!(stderr.contains(" squeue, 1 scancel call(s)"), "{stderr}");
    wait_for("the run's job to be cancelled", || (c.state(job) == "CANCELLED").then_some(()));
    let still = c.state(other);
    c.slurm("scancel", &[other]);
    assert!(["PENDING", "RUNNING"].contains(&still.as_str()), "a job drover did not submit was touched: {still}");
}

#[test]
fn two_drivers_on_one_store_compute_each_stage_once() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
slurm: { poll: 1s }
stages:
  a: { op: command, with: { run: "echo a >> calls.log; while [ ! -e go ]; do sleep 0.1; done; echo A > ${out.out}" }, out: { out: blob } }
  b: { op: command, in: { x: a }, with: { run: "echo b >> calls.log; cat ${in.x} > ${out.out}" }, out: { out: blob } }
"#,
    );
    let spawn =
        || c.cmd(&p, &["run", "--executor", "slurm"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let first = spawn();
    wait_for("the first driver's stage to start", || p.read_opt("calls.log").filter(|s| s == "a\n"));
    let second = spawn();
    // The second driver's job for `a` waits on the first one's lease; then `a` may finish.
    wait_for("the second driver to submit", || {
        let runs = std::fs::read_dir(p.join(".drover/exec/slurm")).ok()?.count();
        (runs == 2).then_some(())
    });
    p.write("go", "");
    for driver in [first, second] {
        let out = driver.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(p.read("calls.log"), "a\nb\n", "each stage ran once");
}

#[test]
fn a_driver_restarted_after_kill_9_follows_its_jobs_instead_of_submitting_again() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
slurm: { poll: 1s }
stages:
  a: { op: command, with: { run: "echo $SLURM_JOB_ID >> starts.log; while [ ! -e go ]; do sleep 0.1; done; echo A > ${out.out}" }, out: { out: blob } }
"#,
    );
    let mut first =
        c.cmd(&p, &["run", "--executor", "slurm"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let job = wait_for("the stage's job to start", || p.read_opt("starts.log").filter(|s| s.ends_with('\n')));
    let job = job.trim().to_string();
    common::signal(first.id() as i32, common::SIGKILL);
    first.wait().unwrap();
    assert_eq!(c.state(&job), "RUNNING", "a killed driver leaves its jobs alone");

    let mut second =
        c.cmd(&p, &["run", "--executor", "slurm"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(second.stderr.take().unwrap());
    let mut said = String::new();
    stderr.read_line(&mut said).unwrap();
    assert_eq!(said, format!("following Slurm job {job} for `a` (submitted by a driver that is gone)\n"));
    p.write("go", "");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(second.wait().unwrap().code(), Some(0), "{rest}");
    assert_eq!(
        calls_line(&rest),
        "slurm: 0 stage(s) submitted, 1 followed from a stopped driver; 0 sbatch, _ squeue, 0 scancel call(s)"
    );
    assert_eq!(p.read("starts.log"), format!("{job}\n"), "the stage ran once, in the first driver's job");
    assert_eq!(last_run(&p)["stages"][0]["slurm_job"], job.as_str());
}

#[test]
fn gpus_requested_by_resources_reach_the_job_and_an_impossible_request_is_refused() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
slurm: { poll: 1s }
stages:
  one: { op: command, resources: { gpu: 1 }, with: { run: "echo $CUDA_VISIBLE_DEVICES > ${out.out} # one" }, out: { out: blob } }
  two: { op: command, slurm: { gpus: 2 }, with: { run: "echo $CUDA_VISIBLE_DEVICES > ${out.out} # two" }, out: { out: blob } }
  many: { op: command, slurm: { gpus: 3 }, with: { run: "true" }, out: { out: blob } }
"#,
    );
    let out = c.drover(&p, &["run", "--executor", "slurm"]);
    out.expect_code(3);
    assert_eq!(c.drover(&p, &["show", "one"]).stdout.lines().last(), Some("0"));
    assert_eq!(c.drover(&p, &["show", "two"]).stdout.lines().last(), Some("0,1"));
    let (_, outcome, error, _) = stages(&last_run(&p)).into_iter().find(|s| s.0 == "many").unwrap();
    assert_eq!(outcome, "failed");
    let error = error.unwrap();
    assert!(
        error.starts_with(
            "Slurm refused the job: sbatch: error: Batch job submission failed: Requested node configuration is not available (sbatch "
        ),
        "{error}"
    );
}

#[test]
fn submit_sends_the_whole_dag_at_once_and_its_last_job_writes_the_record() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
stages:
  a: { op: command, with: { run: "while [ ! -e go ]; do sleep 0.1; done; echo A > ${out.out}" }, out: { out: blob } }
  t:
    op: command
    matrix: { n: [1, 2] }
    in: { x: a }
    with: { run: "cat ${in.x} > ${out.out}; echo ${matrix.n} >> ${out.out}" }
    out: { out: blob }
  g: { op: command, in: { parts: "t[*]" }, with: { run: "cat ${in.parts}/* > ${out.out}" }, out: { out: blob } }
  f: { op: command, in: { x: a }, with: { run: "exit 3" }, out: { out: blob } }
  d: { op: command, in: { x: f }, with: { run: "cat ${in.x} > ${out.out}" }, out: { out: blob } }
"#,
    );
    let out = c.drover(&p, &["submit"]);
    out.expect_code(0);
    assert_eq!(out.stderr, "slurm: 6 sbatch, 0 squeue, 0 scancel call(s)\n");
    let run_id = out.stdout.split(':').next().unwrap().trim_start_matches("run ").to_string();
    let jobs: Vec<String> = std::fs::read_to_string(p.join(&format!(".drover/exec/slurm/{run_id}/jobs.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["job"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(jobs.len(), 5, "a, the array of t, g, f, d");
    let finish: u64 = jobs.last().unwrap().parse::<u64>().unwrap() + 1;
    assert_eq!(
        out.stdout,
        format!(
            "run {run_id}: 6 stage(s) submitted in 5 job(s) ({}), 0 stored already; job {finish} writes the run record \
             when they end (drover runs {run_id})\n",
            jobs.join(" ")
        )
    );

    // In flight: nothing has ended, and nothing stays alive here.
    let flying = c.drover(&p, &["runs", &run_id]);
    flying.expect_code(0);
    let lines: Vec<String> =
        flying.stdout.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        lines,
        [
            format!("run {run_id} pipeline drover running (submitted to Slurm)"),
            "not ended a".into(),
            "not ended t[n=1]".into(),
            "not ended t[n=2]".into(),
            "not ended g".into(),
            "not ended f".into(),
            "not ended d".into(),
        ]
    );

    p.write("go", "");
    let record = wait_for("the run record", || p.read_opt(&format!(".drover/runs/{run_id}.json")));
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["status"], "failed");
    let got: Vec<(String, String, Option<String>)> =
        stages(&record).into_iter().map(|(s, o, e, _)| (s, o, e)).collect();
    assert_eq!(
        got,
        [
            ("a".into(), "ran".into(), None),
            ("t[n=1]".into(), "ran".into(), None),
            ("t[n=2]".into(), "ran".into(), None),
            ("g".into(), "ran".into(), None),
            ("f".into(), "failed".into(), Some("command exited with status 3".into())),
            (
                "d".into(),
                "skipped".into(),
                Some("its job did not run: a stage it needs failed, or it was cancelled".into())
            ),
        ]
    );
    // `d` waited on `f` with afterok: Slurm cancelled it when `f` failed.
    assert_eq!(
        c.slurm("squeue", &["-h", "-t", "all", "-j", &jobs[4], "-o", "%T %r"]).trim(),
        "CANCELLED DependencyNeverSatisfied"
    );

    // Again: what is stored is settled here and never submitted.
    let again = c.drover(&p, &["submit"]);
    again.expect_code(0);
    assert_eq!(again.stderr, "slurm: 3 sbatch, 0 squeue, 0 scancel call(s)\n");
    assert!(again.stdout.contains(": 2 stage(s) submitted in 2 job(s) ("), "{}", again.stdout);
    assert!(again.stdout.contains("), 4 stored already; job "), "{}", again.stdout);
    let again_id = again.stdout.split(':').next().unwrap().trim_start_matches("run ").to_string();
    let record = wait_for("the second run's record", || p.read_opt(&format!(".drover/runs/{again_id}.json")));
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    let got: Vec<(String, String)> = stages(&record).into_iter().map(|(s, o, _, _)| (s, o)).collect();
    assert_eq!(
        got,
        [
            ("a".into(), "cached".into()),
            ("t[n=1]".into(), "cached".into()),
            ("t[n=2]".into(), "cached".into()),
            ("g".into(), "cached".into()),
            ("f".into(), "failed".into()),
            ("d".into(), "skipped".into()),
        ]
    );
}

/// Cancels every job named `name` of this user when dropped: a failed test leaves no job
/// pending until next year.
struct CancelOnDrop<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        let _ = Command::new("scancel")
            // SAFETY: getuid cannot fail and touches no memory of ours.
            .args([format!("--name={}", self.name), format!("--user={}", unsafe { libc::getuid() })])
            .env("SLURM_CONF", &self.cluster.conf)
            .output();
    }
}

/// `drover schedule add --backend slurm` on the real Slurm: the job it queues waits for the
/// next firing under the schedule's name; started early (instead of waiting for the date), it
/// queues the next night as a singleton behind itself and runs `drover nightly`; `drover
/// schedule remove` cancels the pending job, and only this user's.
#[test]
fn a_slurm_schedule_queues_the_night_runs_it_queues_the_next_and_is_cancelled_by_remove() {
    let Some(c) = cluster() else { return };
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
pipeline: nightly
stages:
  m:
    op: command
    with: { run: "echo $SLURM_JOB_ID >> nights.log; while [ ! -e go ]; do sleep 0.1; done; echo ok > ${out.out}" }
    out: { out: blob }
"#,
    );
    // Unique per test process: singleton and scancel go by name.
    let name = format!("t{}", std::process::id());
    let job_name = format!("drover-nightly-{name}");
    let _cancel = CancelOnDrop { cluster: &c, name: job_name.clone() };
    let schedule = |args: &[&str]| {
        let out = c
            .cmd(&p, args)
            .env("XDG_CONFIG_HOME", p.join("config"))
            .env("XDG_STATE_HOME", p.join("state"))
            .output()
            .unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    // Times as squeue prints them, in UTC like the schedule.
    let queue = |job: &str, format: &str| {
        let out = Command::new("squeue")
            .args(["-h", "-t", "all", "-j", job, "-o", format])
            .env("SLURM_CONF", &c.conf)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let next = schedule(&["schedule", "next", "--cron", "0 3 1 1 *", "--tz", "UTC", "--format", "slurm"]);
    next.expect_code(0);
    let next = next.stdout.trim().to_string();

    let add = schedule(&["schedule", "add", &name, "--cron", "0 3 1 1 *", "--tz", "UTC", "--backend", "slurm"]);
    add.expect_code(0);
    let first = add
        .stdout
        .split_once("Submitted batch job ")
        .and_then(|(_, rest)| rest.split_once(&format!(" (squeue --name {job_name})")))
        .unwrap_or_else(|| panic!("no job in: {}", add.stdout))
        .0
        .to_string();
    assert_eq!(queue(&first, "%T|%r|%j|%S"), format!("PENDING|BeginTime|{job_name}|{next}"));

    // The night, started now rather than on January 1st.
    c.slurm("scontrol", &["update", &format!("JobId={first}"), "StartTime=now"]);
    wait_for("the night to start", || p.read_opt("nights.log").filter(|s| s.ends_with('\n')));
    assert_eq!(p.read("nights.log"), format!("{first}\n"));
    // It queued the next night first, held behind it by singleton.
    let queued = || {
        c.slurm("squeue", &["-h", "-t", "all", "-n", &job_name, "-o", "%i"])
            .lines()
            .map(str::to_string)
            .find(|j| *j != first)
    };
    let second = wait_for("the next night to be queued", queued);
    assert_eq!(queue(&second, "%T|%j|%S|%E"), format!("PENDING|{job_name}|{next}|singleton(unfulfilled)"));

    p.write("go", "");
    wait_for("the night to end", || (queue(&first, "%T") == "COMPLETED").then_some(()));
    let run = last_run(&p);
    assert_eq!(run["status"], "ok");
    assert_eq!(run["trigger"], serde_json::json!({ "kind": "slurm", "schedule": name }));
    assert_eq!(stages(&run)[0].1, "ran");
    // The next night waits for its date now, and for nothing else (once the controller has
    // looked at its dependency again).
    let waiting = format!("PENDING|BeginTime|{next}|(null)");
    wait_for("the singleton to be released", || (queue(&second, "%T|%r|%S|%E") == waiting).then_some(()));

    // Another user's job of the same name is not the schedule's to cancel.
    let other = c.slurm(
        "sbatch",
        &[
            "--parsable",
            "--uid=nobody",
            &format!("--job-name={job_name}"),
            "-o",
            "/dev/null",
            "--begin=now+1hour",
            "--wrap",
            "true",
        ],
    );
    let other = other.trim().to_string();
    let removed = schedule(&["schedule", "remove", &name]);
    removed.expect_code(0);
    assert!(removed.stdout.contains("its queued job is cancelled"), "{}", removed.stdout);
    assert_eq!(queue(&second, "%T"), "CANCELLED");
    assert_eq!(queue(&other, "%T|%u"), "PENDING|nobody");
    c.slurm("scancel", &[&other]);
    assert!(!p.join(&format!("config/drover/schedules/{name}.sbatch")).exists());
}
