//! The three kinds of entry a schedule can be, written and installed:
//!
//! - **cron**: a marked block in the user's crontab (read with `crontab -l`, written back with
//!   `crontab -`; every other line is kept as it was, and `remove` takes out exactly the block).
//!   cron reads every entry in the system's time zone, which the block states.
//! - **systemd**: a oneshot service and a timer (`OnCalendar=` in the schedule's zone,
//!   `Persistent=true` so that a night missed while the machine was off runs at boot), as user
//!   units, enabled with `systemctl --user enable --now`. Exit 75 counts as success: a skipped
//!   night is not a failed unit.
//! - **slurm**: a batch script that first queues itself for the next firing (`--begin`), then
//!   runs the night; `--dependency=singleton` keeps the next one pending while one runs (it
//!   queues rather than skips, so the night's lease still decides).
//!
//! Each fixes the working directory, PATH and drover's absolute path, sources the env file
//! (values never written into the entry), and appends all output to the schedule's log.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::Schedule;
use super::cron::Cron;
use crate::Failure;
use crate::cli::Backend;

pub fn name(b: Backend) -> &'static str {
    match b {
        Backend::Cron => "cron",
        Backend::Systemd => "systemd",
        Backend::Slurm => "slurm",
    }
}

/// An entry: the files it is, with where each goes (a crontab block has no file of its own).
pub struct Entry {
    pub files: Vec<(Option<PathBuf>, String)>,
}

impl Entry {
    /// What `--print` shows: one file as it is; several each under a `==> PATH <==` line.
    pub fn text(&self) -> String {
        match self.files.as_slice() {
            [(_, one)] => one.clone(),
            many => many
                .iter()
                .map(|(path, text)| {
                    format!("==> {} <==\n{text}", path.as_ref().map_or(String::new(), |p| p.display().to_string()))
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// A word for `sh`: single-quoted.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A word for a systemd unit's command line or setting: double-quoted, C escapes, `%` and `$`
/// doubled (systemd expands specifiers and variables in both).
fn unit_word(s: &str) -> String {
    format!("\"{}\"", unit_text(&s.replace('\\', r"\\").replace('"', "\\\"")))
}

fn unit_text(s: &str) -> String {
    s.replace('%', "%%").replace('$', "$$")
}

fn marker_begin(name: &str) -> String {
    format!("# >>> drover schedule {name}: `drover schedule remove {name}` takes this block out")
}

fn marker_end(name: &str) -> String {
    format!("# <<< drover schedule {name}")
}

pub fn render(s: &Schedule, cron: &Cron) -> Result<Entry, Failure> {
    let argv: Vec<String> = s.argv().iter().map(|a| sh(a)).collect();
    let env = s.env_file.as_ref().map(|e| format!("set -a && . {} && set +a && ", sh(&e.display().to_string())));
    let files = match s.backend.as_str() {
        "cron" => {
            let command = format!(
                "{{ cd {} && export PATH={} && {}exec {}; }} >> {} 2>&1",
                sh(&s.dir.display().to_string()),
                sh(&s.path),
                env.unwrap_or_default(),
                argv.join(" "),
                sh(&s.log.display().to_string())
            );
            // cron turns an unescaped `%` into a newline.
            let command = command.replace('%', r"\%");
            let text = format!(
                "{}\n# fires at `{}` in the system's time zone, {} (cron reads every entry in it)\n{} {command}\n{}\n",
                marker_begin(&s.name),
                cron.text,
                s.zone,
                cron.text,
                marker_end(&s.name)
            );
            vec![(None, text)]
        }
        "systemd" => {
            let dir = super::config_home()?.join("systemd/user");
            let unit = format!("drover-{}", s.name);
            let exec: Vec<String> = s.argv().iter().map(|a| unit_word(a)).collect();
            let env_file =
                s.env_file.as_ref().map(|e| format!("EnvironmentFile={}\n", unit_text(&e.display().to_string())));
            let service = format!(
                "# drover schedule {name}: `drover nightly {name}` for {file} (`drover schedule remove {name}` removes it)\n\
                 [Unit]\nDescription=drover nightly {name}\n\n\
                 [Service]\nType=oneshot\nWorkingDirectory={dir}\nEnvironment={path}\n{env}ExecStart={exec}\n\
                 # 75: skipped, the previous run was still going; not a failure of the unit\nSuccessExitStatus=75\n\
                 StandardOutput=append:{log}\nStandardError=append:{log}\n",
                name = s.name,
                file = s.file.display(),
                dir = unit_text(&s.dir.display().to_string()),
                path = unit_word(&format!("PATH={}", s.path)),
                env = env_file.unwrap_or_default(),
                exec = exec.join(" "),
                log = unit_text(&s.log.display().to_string()),
            );
            let calendars: String = cron.on_calendar(&s.zone).iter().map(|c| format!("OnCalendar={c}\n")).collect();
            let timer = format!(
                "# drover schedule {name}: `{expr}` in {zone}\n[Unit]\nDescription=drover nightly {name} at `{expr}` ({zone})\n\n\
                 [Timer]\n{calendars}Persistent=true\nUnit={unit}.service\n\n[Install]\nWantedBy=timers.target\n",
                name = s.name,
                expr = cron.text,
                zone = s.zone,
            );
            vec![(Some(dir.join(format!("{unit}.service"))), service), (Some(dir.join(format!("{unit}.timer"))), timer)]
        }
        _ => {
            let script = super::registry()?.join(format!("{}.sbatch", s.name));
            let drover = sh(&s.drover.display().to_string());
            let text = format!(
                "#!/bin/bash\n\
                 # drover schedule {name}: `drover nightly {name}` for {file} at `{expr}` ({zone}),\n\
                 # queueing itself for the next firing; `drover schedule remove {name}` cancels it.\n\
                 #SBATCH --job-name=drover-nightly-{name}\n\
                 #SBATCH --dependency=singleton\n\
                 #SBATCH --output={log}\n\
                 #SBATCH --open-mode=append\n\
                 #SBATCH --chdir={dir}\n\
                 export TZ={zone_q}\n\
                 export PATH={path}\n\
                 {env}\
                 # The next night is queued before this one runs, so that a failure tonight does not end the\n\
                 # schedule; singleton holds it pending while this job runs.\n\
                 next=$({drover} schedule next --cron {expr_q} --tz {zone_q} --format slurm)\n\
                 sbatch --begin=\"$next\" {script_q}\n\
                 exec {argv}\n",
                name = s.name,
                file = s.file.display(),
                expr = cron.text,
                zone = s.zone,
                log = s.log.display(),
                dir = s.dir.display(),
                zone_q = sh(&s.zone),
                path = sh(&s.path),
                env = s
                    .env_file
                    .as_ref()
                    .map(|e| format!("set -a; . {}; set +a\n", sh(&e.display().to_string())))
                    .unwrap_or_default(),
                expr_q = sh(&cron.text),
                script_q = sh(&script.display().to_string()),
                argv = argv.join(" "),
            );
            vec![(Some(script), text)]
        }
    };
    Ok(Entry { files })
}

/// Runs a helper program; its failure (or absence) is the environment's.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(format!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
    }
}

/// The user's crontab (empty when they have none).
fn read_crontab() -> Result<String, Failure> {
    let out = Command::new("crontab")
        .arg("-l")
        .output()
        .map_err(|e| Failure::Environment(format!("cannot run crontab: {e} (install cron: apt-get install cron)")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false if stderr.contains("no crontab for") => Ok(String::new()),
        false => Err(Failure::Environment(format!("crontab -l failed: {}", stderr.trim()))),
    }
}

fn write_crontab(text: &str) -> Result<(), Failure> {
    // A crontab with nothing left in it is removed, as it was before drover added to it.
    let result = match text.trim().is_empty() {
        true => run("crontab", &["-r"], None),
        false => run("crontab", &["-"], Some(text)),
    };
    result.map(|_| ()).map_err(Failure::Environment)
}

/// The crontab without the schedule's block.
fn without_block(crontab: &str, name: &str) -> (String, bool) {
    let (begin, end) = (marker_begin(name), marker_end(name));
    let mut out = String::new();
    let (mut inside, mut found) = (false, false);
    for line in crontab.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if bare == begin {
            inside = true;
            found = true;
        } else if inside && bare == end {
            inside = false;
        } else if !inside {
            out.push_str(line);
        }
    }
    (out, found)
}

/// Installs an entry; says what it did.
pub fn install(s: &Schedule, entry: &Entry) -> Result<String, Failure> {
    match s.backend.as_str() {
        "cron" => {
            let mut crontab = read_crontab()?;
            let (rest, found) = without_block(&crontab, &s.name);
            if found {
                crontab = rest;
            }
            if !crontab.is_empty() && !crontab.ends_with('\n') {
                crontab.push('\n');
            }
            crontab.push_str(&entry.files[0].1);
            write_crontab(&crontab)?;
            Ok("its block is in your crontab (crontab -l)".into())
        }
        "systemd" => {
            for (path, text) in &entry.files {
                let path = path.as_ref().expect("units have paths");
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Failure::Environment(format!("cannot create {}: {e}", dir.display())))?;
                }
                std::fs::write(path, text)
                    .map_err(|e| Failure::Environment(format!("cannot write {}: {e}", path.display())))?;
            }
            let timer = format!("drover-{}.timer", s.name);
            run("systemctl", &["--user", "daemon-reload"], None)
                .and_then(|_| run("systemctl", &["--user", "enable", "--now", &timer], None))
                .map_err(|e| {
                    Failure::Environment(format!(
                        "the units are written ({}), but enabling them failed: {e}. Where a systemd user manager runs: \
                         systemctl --user daemon-reload && systemctl --user enable --now {timer} \
                         (and loginctl enable-linger, for timers that fire while you are logged out)",
                        entry
                            .files
                            .iter()
                            .filter_map(|(p, _)| p.as_ref().map(|p| p.display().to_string()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            Ok(format!("{timer} is enabled (systemctl --user list-timers)"))
        }
        _ => {
            let (path, text) = &entry.files[0];
            let path = path.as_ref().expect("a script has a path");
            std::fs::write(path, text)
                .map_err(|e| Failure::Environment(format!("cannot write {}: {e}", path.display())))?;
            let script = path.display().to_string();
            let begin = super::cron::Cron::parse(&s.cron)
                .ok()
                .and_then(|c| c.next_after(super::now()))
                .and_then(super::cron::local)
                .map(|l| l.slurm())
                .ok_or_else(|| Failure::Environment(format!("`{}` never fires", s.cron)))?;
            let out = run("sbatch", &[&format!("--begin={begin}"), &script], None).map_err(Failure::Environment)?;
            Ok(format!("{} (squeue --name drover-nightly-{})", out.trim(), s.name))
        }
    }
}

/// Takes an entry out; says what it did. What is already gone is not an error.
pub fn uninstall(s: &Schedule) -> Result<String, Failure> {
    match s.backend.as_str() {
        "cron" => {
            let (rest, found) = without_block(&read_crontab()?, &s.name);
            if !found {
                return Ok("its block was no longer in your crontab".into());
            }
            write_crontab(&rest)?;
            Ok("its block is out of your crontab".into())
        }
        "systemd" => {
            let timer = format!("drover-{}.timer", s.name);
            let stopped = run("systemctl", &["--user", "disable", "--now", &timer], None);
            let dir = super::config_home()?.join("systemd/user");
            for ext in ["timer", "service"] {
                let path = dir.join(format!("drover-{}.{ext}", s.name));
                if path.exists() {
                    std::fs::remove_file(&path)
                        .map_err(|e| Failure::Environment(format!("cannot remove {}: {e}", path.display())))?;
                }
            }
            let _ = run("systemctl", &["--user", "daemon-reload"], None);
            Ok(match stopped {
                Ok(_) => format!("{timer} is stopped and its units removed"),
                Err(e) => format!("its units are removed ({e})"),
            })
        }
        _ => {
            let script = super::registry()?.join(format!("{}.sbatch", s.name));
            let _ = std::fs::remove_file(&script);
            let job = format!("--name=drover-nightly-{}", s.name);
            // Only this user's job of that name: by uid, since `USER` may be unset (cron, a
            // batch job) and scancel without `--user` cancels every user's job of the name
            // when root runs it.
            // SAFETY: getuid cannot fail and touches no memory of ours.
            let user = format!("--user={}", unsafe { libc::getuid() });
            Ok(match run("scancel", &[job.as_str(), user.as_str()], None) {
                Ok(_) => format!("its queued job is cancelled and {} removed", script.display()),
                Err(e) => format!("{} removed; cancelling its job failed: {e}", script.display()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_sh_and_for_systemd() {
        assert_eq!(sh("it's 100%"), r"'it'\''s 100%'");
        assert_eq!(unit_word(r#"a "b" $HOME 50% c:\d"#), r#""a \"b\" $$HOME 50%% c:\\d""#);
    }

    #[test]
    fn only_the_schedules_block_leaves_the_crontab() {
        let block = |n: &str| format!("{}\n0 2 * * * true\n{}\n", marker_begin(n), marker_end(n));
        let crontab = format!("MAILTO=me\n{}# mine\n{}", block("a"), block("b"));
        assert_eq!(without_block(&crontab, "a"), (format!("MAILTO=me\n# mine\n{}", block("b")), true));
        assert_eq!(without_block(&crontab, "c"), (crontab.clone(), false));
    }
}
