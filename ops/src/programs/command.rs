//! `command`: runs any program through `sh -c` in the pipeline's directory.
//!
//! Ports are declared by the stage (`in:` and `out:`). `${in.PORT}` becomes the path of a
//! read-only input (a list input, `stage[*]`, is a directory of items), `${out.PORT}` a fresh
//! path to write (`dir` outputs: an empty directory). Table outputs may be written as Parquet,
//! CSV or JSONL (sniffed) and are stored as Parquet. stdout and stderr go to the stage's log.
//! A non-zero exit fails the stage, and nothing is stored.
//!
//! Deterministic only if the program is; drover cannot know. The whole process group is
//! killed on timeout, on Ctrl-C, and when drover itself dies (see `supervise`).
//!
//! Secrets reach the command through `secret_env` (names of drover's own environment variables),
//! never through params: their values enter no key or record, and are redacted from the log.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use drover_engine::interp::fill_ports;
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, Input, OpError, OpKit, PortType, Ports, RunCx, Work, run_blocking,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::kit::table::{self, TableFormat};
use crate::programs::secrets::{self, Redactor};
use crate::programs::supervise;

/// Params of `command`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The shell command (run with `sh -c` in the pipeline's directory). `${in.PORT}` and
    /// `${out.PORT}` are replaced with paths; `$${` is a literal `${`.
    pub run: String,
    /// Extra environment variables for the command. Their values enter the cache key and are
    /// recorded in the store: never put a secret here (use `secret_env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of variables passed from drover's own environment when the stage runs, for
    /// secrets (API tokens, passwords). Their values enter no key, record, log or message:
    /// where the command prints one, its log shows `***`. A name that is not set when the
    /// stage runs fails it (exit 3).
    #[serde(default)]
    pub secret_env: Vec<String>,
    /// Table inputs to hand over as CSV or JSONL instead of Parquet, by port
    /// (e.g. `{ prompts: csv }`), for tools that do not read Parquet.
    #[serde(default)]
    pub in_format: BTreeMap<String, TableFormat>,
}

/// Runs a shell command.
pub struct Command;

impl OpKit for Command {
    type Params = CommandParams;
    const NAME: &str = "command";
    const VERSION: u32 = 1;
    const DOC: &str =
        "Runs a shell command; declared inputs arrive as read-only files, declared outputs are files it writes.";
    const DETERMINISTIC: bool = false;
    const TEMPLATED_PARAMS: bool = true;

    fn inputs() -> Ports {
        Ports::Declared("any names, each `STAGE`, `STAGE.PORT` or `STAGE[*]`; `${in.NAME}` is its path")
    }

    fn outputs() -> Ports {
        Ports::Declared("declared under `out:` as table, blob or dir; `${out.NAME}` is where to write it")
    }

    fn check(&self, params: &CommandParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let mut errors = CheckErrors::new();
        if params.run.trim().is_empty() {
            errors.push(CheckError::param(&["run"], "`run` is empty").help("give the shell command to run"));
        }
        for (name, value) in &params.env {
            // Said of the name, or of the value's shape: the value itself is never printed.
            let why = if secrets::looks_secret(name) && !value.is_empty() {
                format!("`{name}` looks like a secret")
            } else if secrets::looks_like_token(value) {
                format!("the value of `{name}` looks like a credential (an API key or token)")
            } else {
                continue;
            };
            errors.push(
                CheckError::param(&["env", name], format!("{why}, and `env:` values are recorded in the store")).help(
                    format!(
                        "pass it from drover's environment instead: `secret_env: [{name}]`, with {name} exported \
                         before `drover run` (its value then enters no key, record or log)"
                    ),
                ),
            );
        }
        for (i, name) in params.secret_env.iter().enumerate() {
            let at = i.to_string();
            if !secrets::is_env_name(name) {
                errors.push(
                    CheckError::param(&["secret_env", &at], format!("`{name}` is not a variable name"))
                        .help("names are letters, digits and `_`, not starting with a digit"),
                );
            } else if params.env.contains_key(name) {
                errors.push(
                    CheckError::param(&["secret_env", &at], format!("`{name}` is also set under `env:`"))
                        .help("remove it from `env:`: a secret's value must not be written in the pipeline"),
                );
            }
        }
        errors.or(Checked { outputs: cx.declared_outputs.clone(), ..Checked::default() })
    }

    fn run(&self, params: CommandParams, cx: RunCx) -> Work {
        Work::future(run(params, cx))
    }
}

async fn run(params: CommandParams, cx: RunCx) -> Result<(), OpError> {
    let mut inputs = BTreeMap::new();
    for (port, input) in &cx.inputs {
        let path = match (input, params.in_format.get(port)) {
            (Input::One(item), Some(&format)) if format != TableFormat::Parquet => {
                let converted = cx.work_dir.join(format!("{port}.{}", format.name()));
                let (src, dest) = (item.path.clone(), converted.clone());
                run_blocking(move || table::export_table(&src, &dest)).await?;
                converted
            }
            (Input::One(item), _) => item.path.clone(),
            (Input::List(items), _) => {
                items.first().and_then(|i| i.path.parent()).map(Path::to_path_buf).unwrap_or_default()
            }
        };
        inputs.insert(port.clone(), shell_path(&cx.pipeline_dir, &path));
    }
    let outputs: BTreeMap<String, String> =
        cx.outputs.iter().map(|(p, slot)| (p.clone(), shell_path(&cx.pipeline_dir, &slot.path))).collect();
    let script = fill_ports(&params.run, &inputs, &outputs).map_err(OpError::failed)?;

    // Secrets come from drover's environment now, and go nowhere but the command's.
    let mut extra: Vec<(OsString, OsString)> = Vec::new();
    let mut secrets = Vec::new();
    for name in &params.secret_env {
        let value = std::env::var_os(name).ok_or_else(|| {
            OpError::environment(format!(
                "`secret_env` names {name}, which is not set in drover's environment; export it before `drover run`"
            ))
        })?;
        secrets.push(value.as_bytes().to_vec());
        extra.push((name.into(), value));
    }
    extra.extend(params.env.iter().map(|(k, v)| (k.into(), v.into())));
    extra.push(("DROVER_STAGE".into(), cx.stage.clone().into()));
    extra.push(("DROVER_SEED".into(), cx.seed.to_string().into()));
    extra.push(("DROVER_SCRATCH".into(), cx.work_dir.clone().into()));
    let mut args: Vec<OsString> = Vec::new();
    if script.len() <= MAX_INLINE_SCRIPT {
        args.extend(["-c".into(), script.clone().into()]);
    } else {
        // Linux caps one argument at 128 KiB (a join over 10,000 inputs is longer): such a
        // script goes to a file that `sh` reads.
        let file = cx.work_dir.join("command.sh");
        std::fs::write(&file, &script).map_err(|e| OpError::io(format!("write {}", file.display()), e))?;
        args.push(file.into());
    }

    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cx.log_path)
        .map_err(|e| OpError::io(format!("open log {}", cx.log_path.display()), e))?;
    let redactor = Redactor::new(secrets);
    // Output goes straight to the log, or through a pipe that drover redacts when there are
    // secrets to keep out of it.
    let (stdout, stderr, redacting) = if redactor.is_empty() {
        let err = log.try_clone().map_err(|e| OpError::io("open log", e))?;
        (OwnedFd::from(log.try_clone().map_err(|e| OpError::io("open log", e))?), OwnedFd::from(err), None)
    } else {
        let (read, write) = std::io::pipe().map_err(|e| OpError::io("create a pipe", e))?;
        let err = write.try_clone().map_err(|e| OpError::io("create a pipe", e))?;
        (OwnedFd::from(write), OwnedFd::from(err), Some(read))
    };
    let program = supervise::shell().map_err(|e| OpError::environment(format!("cannot start `sh`: {e}")))?;
    // The command runs in its own process group under a supervisor that kills the group if
    // drover dies; dropping `child` (timeout, Ctrl-C) kills it too.
    let mut child = supervise::spawn(supervise::Command {
        program,
        args,
        env: supervise::environment(&extra),
        cwd: cx.pipeline_dir.clone(),
        stdout,
        stderr,
    })
    .map_err(|e| OpError::environment(format!("cannot start `sh`: {e}")))?;
    let (exited, on_exit) = tokio::sync::oneshot::channel();
    let copier = redacting.map(|read| tokio::spawn(copy_redacted(read, log, redactor, on_exit)));
    let status = child.wait().await.map_err(|e| OpError::environment(format!("waiting for the command: {e}")))?;
    let _ = exited.send(());
    if let Some(copier) = copier {
        copier.await.map_err(|e| OpError::environment(format!("copying the command's output: {e}")))??;
    }
    if !status.success() {
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => "was killed by a signal".to_string(),
        };
        return Err(OpError::failed(format!("command {how}{}", log_tail(&cx.log_path))));
    }
    // Tables may be written in any supported format; store them as Parquet.
    let tables: Vec<(String, std::path::PathBuf)> = cx
        .outputs
        .iter()
        .filter(|(_, s)| matches!(s.ty, PortType::Table(_)))
        .map(|(p, s)| (p.clone(), s.path.clone()))
        .collect();
    let scratch = cx.work_dir.clone();
    run_blocking(move || {
        for (port, path) in tables {
            // A missing output, or a link in its place, is reported by the engine; a link is
            // never followed, and never written through.
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let format = TableFormat::sniff(&path)?;
            let (schema, batches) = table::read_table_file(&path, Some(format))
                .map_err(|e| OpError::failed(format!("output `{port}`: {}", e.message)))?;
            // Written beside, then renamed over: the command may have left a hard link to a
            // file of the user's at `path`, which must not be rewritten in place.
            let converted = scratch.join(format!("{port}.converted.parquet"));
            table::write_parquet(&converted, &schema, &batches)?;
            std::fs::rename(&converted, &path)
                .map_err(|e| OpError::io(format!("rename {} over {}", converted.display(), path.display()), e))?;
        }
        Ok(())
    })
    .await
}

/// Copies the command's output from `read` to the log, with every secret replaced by `***`.
/// Ends when the pipe ends or, once `exited` fires, when no more output is waiting (a
/// background process the command left must not keep the stage open).
async fn copy_redacted(
    read: std::io::PipeReader,
    log: std::fs::File,
    mut redactor: Redactor,
    mut exited: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), OpError> {
    use std::io::Write;
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(read))
        .map_err(|e| OpError::io("read the command's output", e))?;
    let mut log = log;
    let mut buf = vec![0u8; 64 * 1024];
    let mut write = |data: &[u8], log: &mut std::fs::File| {
        log.write_all(&redactor.feed(data)).map_err(|e| OpError::io("write the stage's log", e))
    };
    let mut after_exit = false;
    loop {
        if after_exit {
            // Whatever the command wrote before it exited is in the pipe already.
            match pipe.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => write(&buf[..n], &mut log)?,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(OpError::io("read the command's output", e)),
            }
            continue;
        }
        tokio::select! {
            ready = pipe.readable() => {
                ready.map_err(|e| OpError::io("read the command's output", e))?;
                match pipe.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => write(&buf[..n], &mut log)?,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(OpError::io("read the command's output", e)),
                }
            }
            _ = &mut exited => after_exit = true,
        }
    }
    log.write_all(&redactor.finish()).map_err(|e| OpError::io("write the stage's log", e))
}

/// Longest script passed as `sh -c SCRIPT`; Linux's limit on one argument is 128 KiB.
const MAX_INLINE_SCRIPT: usize = 100 * 1024;

/// A path for the shell: relative to the pipeline directory when inside it, quoted if needed.
fn shell_path(base: &Path, path: &Path) -> String {
    let shown = path.strip_prefix(base).unwrap_or(path).to_string_lossy().to_string();
    let safe = shown.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=%,:@".contains(&b));
    if safe && !shown.is_empty() { shown } else { format!("'{}'", shown.replace('\'', r"'\''")) }
}

/// The last lines of a log, for an error message (read from its last 16 KiB: a log may be huge).
fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let len = file.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024))).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    if tail.is_empty() { String::new() } else { format!("; last lines of its output:\n  {}", tail.join("\n  ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_paths_are_relative_and_quoted() {
        let base = Path::new("/p");
        assert_eq!(shell_path(base, Path::new("/p/.drover/tmp/x/out/o")), ".drover/tmp/x/out/o");
        assert_eq!(shell_path(base, Path::new("/q/a b")), "'/q/a b'");
        assert_eq!(shell_path(base, Path::new("/q/it's")), r"'/q/it'\''s'");
    }
}
