//! `drover submit`: fire and forget. The whole remaining DAG goes to Slurm at once, each job
//! held by `--dependency=afterok:` on the jobs of its inputs (`--kill-on-invalid-dep=yes`: a
//! job whose input failed is cancelled, and its dependents after it), expansions of a matrix
//! stage as one array, plus a last job (`afterany` on all of them) that writes the run record.
//! Nothing has to stay alive on the login node.
//!
//! What is already stored is settled here and never submitted: a stage whose inputs are all
//! stored and whose key has a record. A stage downstream of one that must run cannot know its
//! key before that one ran: it is submitted, and its job computes its key when its inputs
//! exist, so that if they came out as before (early cutoff) it ends in a second.

use std::collections::{BTreeMap, BTreeSet};

use drover_cache::{OutputRef, RunRecord, StageOutcome, Store};
use drover_engine::key::recipe_for;
use drover_engine::plan::Plan;

use crate::ctl::{JobId, Slurm};
use crate::driver::{Launch, base_args, script, shell_quote, write_run};
use crate::rundir::{RunDir, StageStatus, Submission};
use crate::settings::{self, JobSettings};

/// What `drover submit` did.
#[derive(Debug)]
pub struct Submitted {
    pub run_id: String,
    /// Stages submitted, and the jobs (array jobs once) they went in.
    pub stages: usize,
    pub jobs: Vec<JobId>,
    /// Stages stored already, settled without a job.
    pub cached: usize,
    /// The job that writes the run record (`None`: nothing to run, the record is written).
    pub finish: Option<JobId>,
}

/// Submits the selected part of `plan`.
pub async fn submit(
    ctl: &dyn Slurm,
    plan: &Plan,
    store: &Store,
    launch: &Launch,
    selected: &BTreeSet<usize>,
    forced: &BTreeSet<usize>,
) -> Result<Submitted, String> {
    let run_id = RunRecord::new_id(std::time::SystemTime::now());
    let run = RunDir::new(store.root(), &run_id);
    write_run(&run, launch, &plan.pipeline, store.root(), &run_id, true)?;
    let (job_settings, driver) = settings::pipeline(&plan.sections);

    // Settle what is stored, in order; everything downstream of a stage that must run runs too.
    let mut outputs: Vec<Option<BTreeMap<String, OutputRef>>> = vec![None; plan.nodes.len()];
    let mut to_run: Vec<usize> = Vec::new();
    let mut cached = 0;
    for &idx in plan.order.iter().filter(|i| selected.contains(i)) {
        let known = plan.upstream(idx).into_iter().all(|u| outputs[u].is_some());
        if known && !forced.contains(&idx) {
            let recipe = recipe_for(plan, idx, store, &outputs).map_err(|e| e.to_string())?;
            if let Some(recipe) = recipe {
                let key = recipe.key();
                if let Some(stored) = store.cached_outputs(&key) {
                    let status = StageStatus {
                        key: Some(key),
                        outputs: Some(stored.clone()),
                        ..StageStatus::new(&plan.nodes[idx].id, StageOutcome::Cached)
                    };
                    run.write_json(&run.status_path(&plan.nodes[idx].id), &status)
                        .map_err(|e| format!("cannot write into {}: {e}", run.path.display()))?;
                    outputs[idx] = Some(stored);
                    cached += 1;
                    continue;
                }
            }
        }
        to_run.push(idx);
    }

    let mut done = Submitted { run_id: run_id.clone(), stages: to_run.len(), jobs: Vec::new(), cached, finish: None };
    if to_run.is_empty() {
        let info = run.read_info().map_err(|e| format!("cannot read {}: {e}", run.info_path().display()))?;
        crate::job::write_record(&run, &info, plan, store)?;
        return Ok(done);
    }

    // Groups: the expansions of one matrix stage with the same settings go as one array.
    let settings_of = |idx: usize| {
        let node = &plan.nodes[idx];
        settings::for_stage(&job_settings, &node.sections, &node.resources)
    };
    let mut groups: Vec<(JobSettings, Vec<usize>)> = Vec::new();
    let mut group_of: BTreeMap<(String, JobSettings), usize> = BTreeMap::new();
    for &idx in &to_run {
        let node = &plan.nodes[idx];
        let s = settings_of(idx);
        if node.matrix.is_empty() {
            groups.push((s, vec![idx]));
            continue;
        }
        match group_of.get(&(node.stage.clone(), s.clone())) {
            Some(&g) => groups[g].1.push(idx),
            None => {
                group_of.insert((node.stage.clone(), s.clone()), groups.len());
                groups.push((s, vec![idx]));
            }
        }
    }

    // Submit a group once the jobs of all its members' inputs are submitted. A group that
    // never becomes ready (its expansions and another stage read each other) goes one
    // expansion at a time, which always can, in plan order.
    let pending_set: BTreeSet<usize> = to_run.iter().copied().collect();
    let mut job_of: BTreeMap<usize, JobId> = BTreeMap::new();
    let mut pending = groups;
    let mut next_submit = std::time::Instant::now();
    let mut arrays = 0;
    while !pending.is_empty() {
        let ready = pending.iter().position(|(_, members)| {
            members
                .iter()
                .all(|&m| plan.upstream(m).into_iter().all(|u| !pending_set.contains(&u) || job_of.contains_key(&u)))
        });
        let Some(g) = ready else {
            let (s, members) = pending.remove(0);
            for (i, m) in members.into_iter().enumerate() {
                pending.insert(i, (s.clone(), vec![m]));
            }
            continue;
        };
        let (s, members) = pending.remove(g);
        let deps: BTreeSet<String> = members
            .iter()
            .flat_map(|&m| plan.upstream(m))
            .filter_map(|u| job_of.get(&u).map(|j| j.0.clone()))
            .collect();
        let array = members.len() > 1;
        let stage_ids: Vec<String> = members.iter().map(|&m| plan.nodes[m].id.clone()).collect();
        let mut args = base_args(&run, launch, &driver, &plan.pipeline, &plan.nodes[members[0]].stage, array);
        if !deps.is_empty() {
            args.push(format!("--dependency=afterok:{}", deps.into_iter().collect::<Vec<_>>().join(":")));
            args.push("--kill-on-invalid-dep=yes".into());
        }
        let which = if array {
            let list = run.array_path(arrays);
            arrays += 1;
            run.write(&list, stage_ids.join("\n").as_bytes())
                .map_err(|e| format!("cannot write into {}: {e}", run.path.display()))?;
            let limit = driver.array_limit.map(|k| format!("%{k}")).unwrap_or_default();
            args.push(format!("--array=0-{}{limit}", members.len() - 1));
            format!("--array-list {}", shell_quote(&list.display().to_string()))
        } else {
            format!("--stage {}", shell_quote(&stage_ids[0]))
        };
        args.extend(s.sbatch_args());
        let now = std::time::Instant::now();
        if next_submit > now {
            tokio::time::sleep(next_submit - now).await;
        }
        next_submit = std::time::Instant::now() + std::time::Duration::from_secs_f64(1.0 / driver.submit_rate);
        let base = ctl.sbatch(&args, &script(launch, &driver, &run, &which)).await.map_err(|e| {
            cancel_note(&done, format!("Slurm refused the job of `{}`: {e} (sbatch {})", stage_ids[0], args.join(" ")))
        })?;
        let sub =
            Submission { job: JobId(base.clone()), stages: stage_ids, keys: vec![None; members.len()], attempt: 1 };
        run.log_submission(&sub).map_err(|e| format!("cannot write {}: {e}", run.ledger_path().display()))?;
        for ((_, job, _), m) in sub.jobs().into_iter().zip(&members) {
            job_of.insert(*m, job);
        }
        done.jobs.push(JobId(base));
    }

    // The last job: the run record, once every other job ended however it ended.
    let mut args = base_args(&run, launch, &driver, &plan.pipeline, "finish", false);
    args.retain(|a| a != "--requeue" && !a.starts_with("--signal="));
    args.push(format!(
        "--dependency=afterany:{}",
        done.jobs.iter().map(|j| j.0.as_str()).collect::<Vec<_>>().join(":")
    ));
    args.extend(job_settings.partition.iter().map(|p| format!("--partition={p}")));
    args.extend(job_settings.account.iter().map(|a| format!("--account={a}")));
    let finish = ctl
        .sbatch(&args, &script(launch, &driver, &run, "--finish"))
        .await
        .map_err(|e| cancel_note(&done, format!("Slurm refused the run's last job: {e}")))?;
    done.finish = Some(JobId(finish));
    Ok(done)
}

/// An error after some jobs went in: say which, so that they can be cancelled.
fn cancel_note(done: &Submitted, message: String) -> String {
    if done.jobs.is_empty() {
        return message;
    }
    let ids: Vec<&str> = done.jobs.iter().map(|j| j.0.as_str()).collect();
    format!(
        "{message}; jobs already submitted for run {}: {} (scancel {} to stop them)",
        done.run_id,
        ids.join(" "),
        ids.join(" ")
    )
}
