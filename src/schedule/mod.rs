//! `drover schedule add|list|remove|next`: nightly runs through the schedulers people already
//! have (cron, a systemd timer, Slurm), never a daemon of drover's own.
//!
//! An entry runs `drover nightly NAME FILE --trigger BACKEND [ARGS]` and fixes everything a
//! scheduler's bare environment lacks: the working directory (where `schedule add` ran), PATH,
//! the drover binary's absolute path, secrets from an env file the user names (sourced when the
//! entry fires: its path is in the entry, its values never are), the time zone, and a log file.
//! `backends.rs` writes the three kinds of entry; `cron.rs` reads calendar expressions.
//!
//! What is installed is listed in `$XDG_CONFIG_HOME/drover/schedules/NAME.json` (default
//! `~/.config`), for `list` and `remove`; logs go to `$XDG_STATE_HOME/drover/schedules/NAME.log`
//! (default `~/.local/state`).

mod backends;
pub mod cron;

use std::path::{Path, PathBuf};

use clap::Parser;
use drover_engine::OpRegistry;
use serde::{Deserialize, Serialize};

use crate::Failure;
use crate::cli::{Backend, ScheduleAddArgs, ScheduleCommand};
use cron::Cron;

/// One installed schedule, as `list` and `remove` find it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    /// `cron`, `systemd` or `slurm`.
    pub backend: String,
    pub cron: String,
    pub zone: String,
    /// The pipeline file, absolute.
    pub file: PathBuf,
    /// Where the entry runs.
    pub dir: PathBuf,
    /// `--store`, when `schedule add` was given one.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// Arguments for `drover nightly` after the file.
    pub args: Vec<String>,
    #[serde(default)]
    pub env_file: Option<PathBuf>,
    pub drover: PathBuf,
    pub path: String,
    pub log: PathBuf,
}

impl Schedule {
    /// The command an entry runs: drover's absolute path, then its arguments.
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![self.drover.display().to_string()];
        if let Some(store) = &self.store {
            v.extend(["--store".to_string(), store.display().to_string()]);
        }
        v.extend(["nightly".to_string(), self.name.clone(), self.file.display().to_string()]);
        v.extend(["--trigger".to_string(), self.backend.clone()]);
        v.extend(self.args.iter().cloned());
        v
    }
}

pub fn command(ops: &OpRegistry, store_override: &Option<PathBuf>, command: ScheduleCommand) -> Result<(), Failure> {
    match command {
        ScheduleCommand::Add(args) => add(ops, store_override, args),
        ScheduleCommand::List => list(),
        ScheduleCommand::Remove { name } => remove(&name),
        ScheduleCommand::Next { name, cron, tz, count, from, format } => {
            let (expr, zone) = match name {
                Some(name) => {
                    let s = load(&name)?;
                    (s.cron, s.zone)
                }
                None => (cron.unwrap_or_default(), tz.unwrap_or_else(system_zone)),
            };
            let cron = parse_cron(&expr)?;
            check_zone(&zone)?;
            cron::use_zone(&zone);
            let mut t = match from {
                None => now(),
                Some(f) => f.strip_prefix('@').and_then(|s| s.parse().ok()).ok_or_else(|| {
                    Failure::User(miette::miette!(
                        help = "e.g. --from @1795933812",
                        "--from {f}: expected @UNIXSECONDS"
                    ))
                })?,
            };
            for _ in 0..count {
                let Some(next) = cron.next_after(t) else {
                    return Err(Failure::User(miette::miette!("`{expr}` never fires in the next eight years")));
                };
                let local = cron::local(next)
                    .ok_or_else(|| Failure::Environment("the C library cannot read the time".into()))?;
                println!("{}", if format == "slurm" { local.slurm() } else { local.display() });
                t = next;
            }
            Ok(())
        }
    }
}

fn user(message: String, help: impl Into<String>) -> Failure {
    Failure::User(miette::miette!(help = help.into(), "{message}"))
}

fn parse_cron(expr: &str) -> Result<Cron, Failure> {
    Cron::parse(expr).map_err(|e| user(format!("--cron: {e}"), cron::HELP))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The system's time zone, as cron and systemd read it: `TZ`, then /etc/timezone, then the
/// target of /etc/localtime; `UTC` when none says.
pub fn system_zone() -> String {
    if let Ok(tz) = std::env::var("TZ") {
        let tz = tz.trim_start_matches(':').to_string();
        if !tz.is_empty() {
            return tz;
        }
    }
    if let Ok(tz) = std::fs::read_to_string("/etc/timezone") {
        let tz = tz.trim().to_string();
        if !tz.is_empty() {
            return tz;
        }
    }
    std::fs::read_link("/etc/localtime")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.split_once("zoneinfo/")).map(|(_, z)| z.to_string()))
        .unwrap_or_else(|| "UTC".into())
}

/// A zone must be in the zone database: the C library takes an unknown name for UTC silently.
fn check_zone(zone: &str) -> Result<(), Failure> {
    let known = zone == "UTC" || (!zone.contains("..") && Path::new("/usr/share/zoneinfo").join(zone).is_file());
    match known {
        true => Ok(()),
        false => Err(user(
            format!("unknown time zone `{zone}`"),
            "an IANA zone name, as in /usr/share/zoneinfo: Europe/Paris, America/New_York, UTC",
        )),
    }
}

fn home() -> Result<PathBuf, Failure> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| Failure::Environment("HOME is not set: drover keeps its schedules under it".into()))
}

/// `$XDG_CONFIG_HOME` (default `~/.config`): schedules, and systemd's user units.
pub fn config_home() -> Result<PathBuf, Failure> {
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(v) => Ok(PathBuf::from(v)),
        None => Ok(home()?.join(".config")),
    }
}

fn registry() -> Result<PathBuf, Failure> {
    Ok(config_home()?.join("drover/schedules"))
}

fn log_dir() -> Result<PathBuf, Failure> {
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => home()?.join(".local/state"),
    };
    Ok(state.join("drover/schedules"))
}

fn load(name: &str) -> Result<Schedule, Failure> {
    let path = registry()?.join(format!("{name}.json"));
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Environment(format!("{} is not a schedule drover wrote: {e}", path.display()))),
        Err(_) => {
            let names: Vec<String> = all()?.into_iter().map(|s| s.name).collect();
            let help =
                drover_engine::diag::did_you_mean(name, names.iter().map(String::as_str)).unwrap_or_else(
                    || match names.is_empty() {
                        true => "no schedules are installed (drover schedule add)".into(),
                        false => {
                            format!("schedules: {}", drover_engine::diag::list_names(names.iter().map(String::as_str)))
                        }
                    },
                );
            Err(user(format!("no schedule `{name}`"), help))
        }
    }
}

fn all() -> Result<Vec<Schedule>, Failure> {
    let dir = registry()?;
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut out: Vec<Schedule> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn env_error(e: impl std::fmt::Display) -> Failure {
    Failure::Environment(e.to_string())
}

/// A path an entry names: no newline (it would end the entry) and valid UTF-8.
fn entry_path(p: &Path, what: &str) -> Result<(), Failure> {
    match p.to_str() {
        Some(s) if !s.contains('\n') => Ok(()),
        _ => {
            Err(user(format!("{what} {} cannot go into a schedule entry", p.display()), "use a path without newlines"))
        }
    }
}

fn add(ops: &OpRegistry, store_override: &Option<PathBuf>, a: ScheduleAddArgs) -> Result<(), Failure> {
    if !drover_engine::spec::valid_name(&a.name) {
        return Err(user(format!("invalid schedule name `{}`", a.name), "use letters, digits, `_` and `-`"));
    }
    let cron = parse_cron(&a.cron)?;
    let system = system_zone();
    let zone = a.tz.clone().unwrap_or_else(|| system.clone());
    check_zone(&zone)?;
    if a.backend == Backend::Cron && zone != system {
        return Err(user(
            format!("--tz {zone}: cron reads every entry in the system's time zone, {system}"),
            "leave --tz out, or use --backend systemd, whose timers take a zone",
        ));
    }
    // The pipeline must be sound now, not at 2 a.m.
    let file = a.file.clone().unwrap_or_else(|| PathBuf::from("drover.yaml"));
    let pargs = crate::cli::PipelineArgs { file: Some(file.clone()), params: Vec::new(), set: Vec::new() };
    crate::commands::load(ops, &pargs)?;
    let file = std::fs::canonicalize(&file).map_err(env_error)?;
    // So must the arguments of `drover nightly` (the entry says which scheduler started it).
    if a.args.iter().any(|x| x == "--trigger" || x.starts_with("--trigger=")) {
        return Err(user(
            "the arguments after `--` give `--trigger`".into(),
            "leave it out: the entry passes its backend",
        ));
    }
    let mut probe = vec!["drover".to_string(), "nightly".into(), a.name.clone(), file.display().to_string()];
    probe.extend(a.args.iter().cloned());
    if let Err(e) = crate::cli::Cli::try_parse_from(&probe) {
        let first = e.to_string().lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
        return Err(user(
            format!("the arguments after `--` are not `drover nightly`'s: {first}"),
            "see drover nightly --help",
        ));
    }
    let env_file = match &a.env_file {
        None => None,
        Some(p) => {
            let abs = std::fs::canonicalize(p)
                .map_err(|e| user(format!("--env-file {}: {e}", p.display()), "a file of KEY=VALUE lines"))?;
            warn_if_readable_by_others(&abs);
            Some(abs)
        }
    };
    let store = match store_override {
        Some(s) => Some(std::path::absolute(s).map_err(env_error)?),
        None => None,
    };
    let drover = std::fs::canonicalize(std::env::current_exe().map_err(env_error)?).map_err(env_error)?;
    let schedule = Schedule {
        name: a.name.clone(),
        backend: backends::name(a.backend).to_string(),
        cron: cron.text.clone(),
        zone: zone.clone(),
        file,
        dir: std::env::current_dir().map_err(env_error)?,
        store,
        args: a.args.clone(),
        env_file,
        drover,
        path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        log: log_dir()?.join(format!("{}.log", a.name)),
    };
    for (p, what) in [(&schedule.file, "the pipeline"), (&schedule.dir, "the directory"), (&schedule.log, "the log")] {
        entry_path(p, what)?;
    }
    if let Some(e) = &schedule.env_file {
        entry_path(e, "--env-file")?;
    }
    let entry = backends::render(&schedule, &cron)?;
    cron::use_zone(&zone);
    let next =
        cron.next_after(now()).and_then(cron::local).map_or_else(|| "never (in eight years)".into(), |l| l.display());
    if a.print {
        print!("{}", entry.text());
        eprintln!("next: {next}");
        return Ok(());
    }
    let json = registry()?.join(format!("{}.json", a.name));
    if json.exists() {
        return Err(user(
            format!("schedule `{}` exists", a.name),
            format!("remove it first (drover schedule remove {}), or choose another name", a.name),
        ));
    }
    for dir in [registry()?, log_dir()?] {
        std::fs::create_dir_all(&dir).map_err(|e| env_error(format!("cannot create {}: {e}", dir.display())))?;
    }
    // Listed before it is installed: a failed install leaves what `remove` needs to clean up.
    let bytes = serde_json::to_vec_pretty(&schedule).expect("a schedule serialises");
    std::fs::write(&json, bytes).map_err(|e| env_error(format!("cannot write {}: {e}", json.display())))?;
    let done = backends::install(&schedule, &entry)?;
    println!(
        "installed schedule `{}` ({}): `drover nightly {}` for {} at `{}` ({zone}); {done}",
        a.name,
        schedule.backend,
        a.name,
        schedule.file.display(),
        cron.text
    );
    println!("next: {next}");
    println!("log: {}", schedule.log.display());
    Ok(())
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} holds secrets and others may read it (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

fn list() -> Result<(), Failure> {
    let schedules = all()?;
    if schedules.is_empty() {
        println!("no schedules (drover schedule add NAME --cron \"0 2 * * *\" FILE)");
        return Ok(());
    }
    let mut rows = vec![["name", "backend", "when", "next", "pipeline"].map(String::from).to_vec()];
    for s in &schedules {
        cron::use_zone(&s.zone);
        let next = Cron::parse(&s.cron)
            .ok()
            .and_then(|c| c.next_after(now()))
            .and_then(cron::local)
            .map_or_else(|| "-".into(), |l| l.display());
        rows.push(vec![
            s.name.clone(),
            s.backend.clone(),
            format!("{} ({})", s.cron, s.zone),
            next,
            s.file.display().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(())
}

fn remove(name: &str) -> Result<(), Failure> {
    let schedule = load(name)?;
    let what = backends::uninstall(&schedule)?;
    let json = registry()?.join(format!("{name}.json"));
    std::fs::remove_file(&json).map_err(|e| env_error(format!("cannot remove {}: {e}", json.display())))?;
    println!("removed schedule `{name}` ({}): {what}", schedule.backend);
    Ok(())
}
