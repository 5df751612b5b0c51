//! The `slurm:` section, at the top of a pipeline and in a stage: what each job asks Slurm for
//! (partition, time, memory, CPUs, GPUs, ...) and, at the top only, how the driver behaves
//! (poll interval, jobs in flight, submission rate, array throttle). A stage's settings win
//! over the pipeline's, field by field. None of it enters a key: the same stage run here or on
//! the cluster is one result.
//!
//! `resources:` map onto Slurm where the meaning is plain: `gpu: N` asks `--gpus=N` and
//! `cpu: N` asks `--cpus-per-task=N`, unless the stage's `slurm:` says otherwise.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_engine::diag::{did_you_mean, list_names};
use drover_engine::spec::parse_duration_str;
use drover_engine::{SectionAt, SectionDecl, SectionProblem};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The section's name in pipeline files.
pub const SECTION: &str = "slurm";

/// What a job asks for. Two stages with equal settings may share a job array.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobSettings {
    pub partition: Option<String>,
    /// Slurm's `--time` value (`D-HH:MM:SS`).
    pub time: Option<String>,
    pub mem: Option<String>,
    pub cpus: Option<u64>,
    pub gpus: Option<String>,
    pub gres: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub constraint: Option<String>,
    /// More `sbatch` arguments, as given.
    pub sbatch_args: Vec<String>,
}

/// How the driver behaves; pipeline-wide only.
#[derive(Clone, Debug, PartialEq)]
pub struct DriverSettings {
    /// Between two `squeue` calls (each covers every job in flight).
    pub poll: Duration,
    /// Jobs in flight at once, unless `-j` says otherwise.
    pub max_jobs: usize,
    /// `sbatch` calls per second at most.
    pub submit_rate: f64,
    /// `%K` of `--array=0-N%K`: tasks of one array running at once.
    pub array_limit: Option<u64>,
    /// The `drover` the nodes run (default: this one's path; nodes share the filesystem).
    pub drover: Option<String>,
    /// Warning signal before the time limit: `USR1` this long before it.
    pub warn_before: Duration,
}

impl Default for DriverSettings {
    fn default() -> Self {
        DriverSettings {
            poll: Duration::from_secs(10),
            max_jobs: 1000,
            submit_rate: 20.0,
            array_limit: None,
            drover: None,
            warn_before: Duration::from_secs(60),
        }
    }
}

/// Fields both places take.
const JOB_FIELDS: &[&str] =
    &["partition", "time", "mem", "cpus", "gpus", "gres", "account", "qos", "constraint", "sbatch_args"];
/// Fields only the top of the pipeline takes.
const DRIVER_FIELDS: &[&str] = &["poll", "max_jobs", "submit_rate", "array_limit", "drover", "warn_before"];

/// The declaration the engine carries: `slurm:` at the top and in stages.
pub fn section() -> SectionDecl {
    let job = job_schema();
    let mut top = job.clone();
    if let Some(props) = top["properties"].as_object_mut() {
        props.insert("poll".into(), json!({"type": "string", "description": "time between two squeue calls (default 10s); status files are read more often"}));
        props.insert("max_jobs".into(), json!({"type": "integer", "minimum": 1, "description": "jobs in flight at once (default 1000; -j overrides)"}));
        props.insert("submit_rate".into(), json!({"type": "number", "exclusiveMinimum": 0, "description": "sbatch calls per second at most (default 20)"}));
        props.insert("array_limit".into(), json!({"type": "integer", "minimum": 1, "description": "tasks of one job array running at once (--array=...%K)"}));
        props.insert(
            "drover".into(),
            json!({"type": "string", "description": "path of drover on the nodes (default: this drover's path)"}),
        );
        props.insert(
            "warn_before".into(),
            json!({"type": "string", "description": "SIGUSR1 this long before the time limit (default 60s)"}),
        );
    }
    top["description"] =
        json!("Slurm settings of every job, and of the driver (`drover run --executor slurm`, `drover submit`)");
    let mut stage = job;
    stage["description"] = json!("Slurm settings of this stage's jobs, over the pipeline's `slurm:`; not in the key");
    SectionDecl {
        name: SECTION,
        holds: "a mapping of Slurm settings",
        example: "slurm: { partition: gpu, time: 2h, mem: 16G, gpus: 1 }",
        schema: top,
        env: None,
        stage_schema: Some(stage),
        check: Some(check),
        scalar: false,
    }
}

fn job_schema() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "partition": s("--partition"),
            "time": s("--time: a duration (90m, 2h, 1d12h) or Slurm's form (HH:MM:SS, D-HH:MM)"),
            "mem": s("--mem, e.g. 16G or 500M"),
            "cpus": {"type": "integer", "minimum": 1, "description": "--cpus-per-task"},
            "gpus": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string"}], "description": "--gpus, e.g. 2 or a100:2"},
            "gres": s("--gres, e.g. gpu:a100:2"),
            "account": s("--account"),
            "qos": s("--qos"),
            "constraint": s("--constraint"),
            "sbatch_args": {"type": "array", "items": {"type": "string"}, "description": "more sbatch arguments, e.g. [--exclusive]"}
        }
    })
}

/// The engine's hook: every problem of a `slurm:` mapping.
fn check(v: &Value, at: SectionAt) -> Vec<SectionProblem> {
    let mut problems = Vec::new();
    parse(v, at, &mut problems);
    problems
}

/// Parses a `slurm:` mapping (top or stage), noting every problem.
fn parse(v: &Value, at: SectionAt, problems: &mut Vec<SectionProblem>) -> (JobSettings, DriverSettings) {
    let mut job = JobSettings::default();
    let mut driver = DriverSettings::default();
    let Some(map) = v.as_object() else { return (job, driver) };
    let fields = || JOB_FIELDS.iter().chain(if at == SectionAt::Pipeline { DRIVER_FIELDS } else { &[] }).copied();
    for (name, value) in map {
        let mut bad = |what: &str, help: &str| {
            problems.push(SectionProblem::new(&[name], format!("`{name}` must be {what}; found {value}")).help(help))
        };
        let text = |bad: &mut dyn FnMut(&str, &str)| match value {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            _ => {
                bad("a non-empty string", "e.g. `partition: gpu`");
                None
            }
        };
        match name.as_str() {
            "partition" => job.partition = text(&mut bad),
            "account" => job.account = text(&mut bad),
            "qos" => job.qos = text(&mut bad),
            "constraint" => job.constraint = text(&mut bad),
            "gres" => job.gres = text(&mut bad),
            "mem" => match value.as_str().map(str::trim).filter(|m| valid_mem(m)) {
                Some(m) => job.mem = Some(m.to_string()),
                None => bad("an amount of memory", "e.g. `mem: 16G`, `mem: 500M` (Slurm's --mem)"),
            },
            "time" => match value.as_str().and_then(slurm_time) {
                Some(t) => job.time = Some(t),
                None => bad(
                    "a duration",
                    "e.g. `time: 90m`, `time: 2h`, `time: 1d12h`, or Slurm's `HH:MM:SS` or `D-HH:MM` (a bare number is ambiguous: write its unit)",
                ),
            },
            "cpus" => match value.as_u64().filter(|n| *n >= 1) {
                Some(n) => job.cpus = Some(n),
                None => bad("a positive integer", "e.g. `cpus: 8` (--cpus-per-task)"),
            },
            "gpus" => match value {
                Value::Number(n) if n.as_u64().is_some_and(|n| n >= 1) => job.gpus = Some(n.to_string()),
                Value::String(s) if !s.trim().is_empty() => job.gpus = Some(s.trim().to_string()),
                _ => bad("a positive integer or a Slurm GPU spec", "e.g. `gpus: 2` or `gpus: a100:2` (--gpus)"),
            },
            "sbatch_args" => {
                match value.as_array().and_then(|a| a.iter().map(|x| x.as_str().map(String::from)).collect()) {
                    Some(args) => job.sbatch_args = args,
                    None => bad("a list of strings", "e.g. `sbatch_args: [--exclusive, --nice=10]`"),
                }
            }
            "poll" | "warn_before" if at == SectionAt::Pipeline => {
                match value.as_str().and_then(parse_duration_str).filter(|d| *d >= Duration::from_millis(100)) {
                    Some(d) if name == "poll" => driver.poll = d,
                    Some(d) => driver.warn_before = d,
                    None => bad("a duration of at least 0.1s", "e.g. `poll: 10s`"),
                }
            }
            "max_jobs" if at == SectionAt::Pipeline => match value.as_u64().filter(|n| *n >= 1) {
                Some(n) => driver.max_jobs = n as usize,
                None => bad("a positive integer", "e.g. `max_jobs: 500`"),
            },
            "submit_rate" if at == SectionAt::Pipeline => match value.as_f64().filter(|r| *r > 0.0 && r.is_finite()) {
                Some(r) => driver.submit_rate = r,
                None => bad("a positive number", "e.g. `submit_rate: 10` (sbatch calls per second)"),
            },
            "array_limit" if at == SectionAt::Pipeline => match value.as_u64().filter(|n| *n >= 1) {
                Some(n) => driver.array_limit = Some(n),
                None => bad("a positive integer", "e.g. `array_limit: 50`"),
            },
            "drover" if at == SectionAt::Pipeline => driver.drover = text(&mut bad),
            other if DRIVER_FIELDS.contains(&other) => problems.push(
                SectionProblem::new(&[other], format!("`{other}` is a setting of the whole pipeline")).help(format!(
                    "move it to the top-level `slurm:` (a stage takes {})",
                    list_names(JOB_FIELDS.iter().copied())
                )),
            ),
            other => {
                problems.push(SectionProblem::new(&[other], format!("unknown setting `{other}`")).help(
                    did_you_mean(other, fields()).unwrap_or_else(|| format!("settings: {}", list_names(fields()))),
                ))
            }
        }
    }
    (job, driver)
}

/// `16G`, `500M`, `1024` (megabytes), `2T`, `100K`.
fn valid_mem(m: &str) -> bool {
    let digits = m.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    !digits.is_empty() && digits.len() + 1 >= m.len() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A drover duration (`90m`, `2h`, `1d12h`, `45s`) as Slurm's `D-HH:MM:SS`, or Slurm's own
/// form passed through (`HH:MM:SS`, `MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`).
fn slurm_time(s: &str) -> Option<String> {
    let s = s.trim();
    if s.contains(':') || s.contains('-') {
        let ok = s.split(['-', ':']).all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        return ok.then(|| s.to_string());
    }
    // A bare number would be minutes to Slurm and seconds to drover's `timeout:`: refused.
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let d = parse_duration_str(s)?;
    // Slurm counts whole minutes at least: round up.
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let secs = secs.max(60);
    Some(format!("{}-{:02}:{:02}:{:02}", secs / 86400, secs % 86400 / 3600, secs % 3600 / 60, secs % 60))
}

/// The pipeline's `slurm:` settings (checked at plan time: problems here are ignored).
pub fn pipeline(sections: &BTreeMap<String, Value>) -> (JobSettings, DriverSettings) {
    parse(sections.get(SECTION).unwrap_or(&Value::Null), SectionAt::Pipeline, &mut Vec::new())
}

/// What one stage's jobs ask for: its own `slurm:` over the pipeline's, then `resources:`
/// where the stage says nothing of its own.
pub fn for_stage(
    pipeline: &JobSettings,
    stage: &BTreeMap<String, Value>,
    resources: &BTreeMap<String, u64>,
) -> JobSettings {
    let (own, _) = parse(stage.get(SECTION).unwrap_or(&Value::Null), SectionAt::Stage, &mut Vec::new());
    let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
    let mut s = JobSettings {
        partition: pick(&own.partition, &pipeline.partition),
        time: pick(&own.time, &pipeline.time),
        mem: pick(&own.mem, &pipeline.mem),
        cpus: own.cpus.or(pipeline.cpus),
        gpus: pick(&own.gpus, &pipeline.gpus),
        gres: pick(&own.gres, &pipeline.gres),
        account: pick(&own.account, &pipeline.account),
        qos: pick(&own.qos, &pipeline.qos),
        constraint: pick(&own.constraint, &pipeline.constraint),
        sbatch_args: pipeline.sbatch_args.iter().chain(&own.sbatch_args).cloned().collect(),
    };
    if own.gpus.is_none()
        && own.gres.is_none()
        && let Some(n) = resources.get("gpu").filter(|n| **n > 0)
    {
        s.gpus = Some(n.to_string());
        s.gres = None;
    }
    if own.cpus.is_none()
        && let Some(n) = resources.get("cpu").or_else(|| resources.get("cpus")).filter(|n| **n > 0)
    {
        s.cpus = Some(*n);
    }
    s
}

impl JobSettings {
    /// The `sbatch` arguments these settings make.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut opt = |flag: &str, v: &Option<String>| {
            if let Some(v) = v {
                args.push(format!("--{flag}={v}"));
            }
        };
        opt("partition", &self.partition);
        opt("time", &self.time);
        opt("mem", &self.mem);
        opt("cpus-per-task", &self.cpus.map(|c| c.to_string()));
        opt("gpus", &self.gpus);
        opt("gres", &self.gres);
        opt("account", &self.account);
        opt("qos", &self.qos);
        opt("constraint", &self.constraint);
        args.extend(self.sbatch_args.iter().cloned());
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(v: Value, at: SectionAt) -> Vec<(Vec<String>, String, Option<String>)> {
        let mut found: Vec<_> = check(&v, at).into_iter().map(|p| (p.path, p.message, p.help)).collect();
        found.sort();
        found
    }

    #[test]
    fn every_bad_setting_is_reported_with_what_to_write() {
        let found = problems(
            json!({"time": "90", "mem": "lots", "cpus": 0, "partiton": "gpu", "poll": "5s", "gpus": true}),
            SectionAt::Stage,
        );
        let s = |x: &str| x.to_string();
        assert_eq!(
            found,
            [
                (
                    vec![s("cpus")],
                    s("`cpus` must be a positive integer; found 0"),
                    Some(s("e.g. `cpus: 8` (--cpus-per-task)"))
                ),
                (
                    vec![s("gpus")],
                    s("`gpus` must be a positive integer or a Slurm GPU spec; found true"),
                    Some(s("e.g. `gpus: 2` or `gpus: a100:2` (--gpus)"))
                ),
                (
                    vec![s("mem")],
                    s("`mem` must be an amount of memory; found \"lots\""),
                    Some(s("e.g. `mem: 16G`, `mem: 500M` (Slurm's --mem)"))
                ),
                (vec![s("partiton")], s("unknown setting `partiton`"), Some(s("did you mean `partition`?"))),
                (
                    vec![s("poll")],
                    s("`poll` is a setting of the whole pipeline"),
                    Some(s(
                        "move it to the top-level `slurm:` (a stage takes `partition`, `time`, `mem`, `cpus`, `gpus`, `gres`, `account`, `qos`, `constraint`, `sbatch_args`)"
                    ))
                ),
                (
                    vec![s("time")],
                    s("`time` must be a duration; found \"90\""),
                    Some(s(
                        "e.g. `time: 90m`, `time: 2h`, `time: 1d12h`, or Slurm's `HH:MM:SS` or `D-HH:MM` (a bare number is ambiguous: write its unit)"
                    ))
                ),
            ]
        );
        assert!(problems(json!({"poll": "5s", "max_jobs": 10, "array_limit": 4}), SectionAt::Pipeline).is_empty());
    }

    #[test]
    fn durations_become_slurm_times_and_slurm_forms_pass_through() {
        assert_eq!(slurm_time("90m").as_deref(), Some("0-01:30:00"));
        assert_eq!(slurm_time("1d12h").as_deref(), Some("1-12:00:00"));
        assert_eq!(slurm_time("20s").as_deref(), Some("0-00:01:00"), "Slurm counts whole minutes");
        assert_eq!(slurm_time("2-00:30").as_deref(), Some("2-00:30"));
        assert_eq!(slurm_time("10:00").as_deref(), Some("10:00"));
        assert_eq!(slurm_time("10"), None);
        assert_eq!(slurm_time("1:x"), None);
    }

    #[test]
    fn a_stage_wins_field_by_field_and_resources_map_where_plain() {
        let (top, driver) = pipeline(
            &[(
                SECTION.to_string(),
                json!({"partition": "cpu", "mem": "4G", "sbatch_args": ["--nice=5"], "poll": "2s"}),
            )]
            .into(),
        );
        assert_eq!(driver.poll, Duration::from_secs(2));
        let stage = [(SECTION.to_string(), json!({"partition": "gpu", "sbatch_args": ["--exclusive"]}))].into();
        let resources = [("gpu".to_string(), 2), ("cpu".to_string(), 4), ("llm".to_string(), 8)].into();
        let s = for_stage(&top, &stage, &resources);
        assert_eq!(
            s.sbatch_args(),
            ["--partition=gpu", "--mem=4G", "--cpus-per-task=4", "--gpus=2", "--nice=5", "--exclusive"]
        );
        // The stage's own GPU spec wins over `resources:`.
        let stage = [(SECTION.to_string(), json!({"gres": "gpu:a100:1"}))].into();
        assert_eq!(
            for_stage(&top, &stage, &resources).sbatch_args()[3..5],
            ["--gres=gpu:a100:1".to_string(), "--nice=5".into()]
        );
    }
}
