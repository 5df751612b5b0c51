//! `drover nightly NAME`: a run with the guards an unattended schedule needs.
//!
//! 1. The pipeline is loaded and planned first: a bad file is exit 2 before anything else.
//! 2. The schedule's lease (`.drover/leases/NAME.lock`): while the previous run of `NAME` still
//!    holds it, this one runs nothing and exits 75 ("skipped"), as Argo's `concurrencyPolicy:
//!    Forbid` does. The OS drops the lease when its holder exits, however it exits.
//! 3. `--if-changed`: when every selected stage is cached, exit 0 having run nothing (no record).
//! 4. The run, recorded with its trigger (`cron`, `systemd`, `slurm`, or `nightly` by hand),
//!    host, git revision, params digest and metrics.
//! 5. Metrics against the last successful run of the pipeline: a threshold crossed (the
//!    pipeline's `fail_if:` or `--fail-if`) is exit 4.
//! 6. `notify:` on failure, on recovery (ok after a failed run) and on regression.

use drover_cache::Trigger;
use drover_engine::OpRegistry;
use drover_engine::status::{Action, plan_status};

use crate::Failure;
use crate::cli::NightlyArgs;
use crate::commands::{env, execute, prepare};
use crate::metrics::{baseline, parse_fail_if, regressions, runs_of};
use crate::notify::{self, Event};

pub fn nightly(
    ops: &OpRegistry,
    store_override: &Option<std::path::PathBuf>,
    remote_flag: &Option<String>,
    args: NightlyArgs,
) -> Result<(), Failure> {
    if !drover_engine::spec::valid_name(&args.name) {
        return Err(Failure::User(miette::miette!(
            help = "use letters, digits, `_` and `-`",
            "invalid schedule name `{}`",
            args.name
        )));
    }
    let loaded = prepare(ops, store_override, remote_flag, &args.run)?;
    let holder = format!(
        "pid {} on {} since {}",
        std::process::id(),
        crate::provenance::host().unwrap_or_else(|| "?".into()),
        drover_cache::utc(now())
    );
    let _lease = match loaded.store.try_lease(&args.name, &holder).map_err(env)? {
        Ok(lease) => lease,
        Err(other) => {
            return Err(Failure::Skipped(format!(
                "the previous run of schedule `{}` is still going ({other})",
                args.name
            )));
        }
    };
    if args.if_changed {
        let statuses = plan_status(&loaded.plan, &loaded.store, &loaded.selected, &loaded.forced).map_err(env)?;
        if statuses.iter().all(|s| s.action == Action::Cached) {
            eprintln!("unchanged: all {} stages are cached; nothing ran", statuses.len());
            return Ok(());
        }
    }
    let dir = loaded.spec.dir.clone();
    let pipeline = loaded.plan.pipeline.clone();
    let settings = notify::settings(&loaded.spec);
    let store = loaded.store.clone();
    let trigger = Trigger { kind: args.trigger.clone(), schedule: Some(args.name.clone()) };
    let done = execute(ops, loaded, &args.run, trigger)?;

    let runs = runs_of(&store, Some(&pipeline))?;
    let run = &done.record;
    let previous = runs.iter().rev().find(|r| r.id < run.id);
    let mut events: Vec<(Event, Vec<crate::metrics::Regression>)> = Vec::new();
    let mut outcome = done.outcome;
    match &outcome {
        Err(Failure::Stages | Failure::Environment(_)) => events.push((Event::Failure, Vec::new())),
        Err(_) => {}
        Ok(()) => {
            if previous.is_some_and(|p| p.status == "failed") {
                events.push((Event::Recovery, Vec::new()));
            }
            if let Some(base) = baseline(&runs, run) {
                let known: Vec<&str> = base.metrics.keys().chain(run.metrics.keys()).map(String::as_str).collect();
                let crossed = regressions(base, run, &parse_fail_if(&args.fail_if, &known)?);
                for r in &crossed {
                    eprintln!("regression: {} (against run {})", r.describe(), base.id);
                }
                if !crossed.is_empty() {
                    events.push((Event::Regression, crossed));
                    outcome = Err(Failure::Regression);
                }
            }
        }
    }
    if let Some(settings) = settings {
        for (event, crossed) in &events {
            let notice = notify::notice(*event, run, &args.name, previous, crossed);
            for problem in notify::send(&settings, &dir, &notice) {
                eprintln!("warning: notify ({}): {problem}", event.name());
            }
        }
    }
    outcome
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
