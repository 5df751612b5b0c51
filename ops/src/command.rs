//! `command`: runs any program through `sh -c` in the pipeline's directory.
//!
//! Ports are declared by the stage (`in:` and `out:`). `${in.PORT}` becomes the path of a
//! read-only input (a list input, `stage[*]`, is a directory of items), `${out.PORT}` a fresh
//! path to write (`dir` outputs: an empty directory). Table outputs may be written as Parquet,
//! CSV or JSONL (sniffed) and are stored as Parquet. stdout and stderr go to the stage's log.
//! A non-zero exit fails the stage, and nothing is stored.
//!
//! Deterministic only if the program is; drover cannot know. The whole process group is
//! killed on timeout or Ctrl-C.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use drover_engine::interp::fill_ports;
use drover_engine::{
    BoxFuture, CheckCx, CheckError, Checked, Input, Op, OpError, OpInfo, PortType, Ports, RunCx, params_schema,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::table::{self, TableFormat};

/// Params of `command`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The shell command (run with `sh -c` in the pipeline's directory). `${in.PORT}` and
    /// `${out.PORT}` are replaced with paths; `$${` is a literal `${`.
    pub run: String,
    /// Extra environment variables for the command (they enter the cache key).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Table inputs to hand over as CSV or JSONL instead of Parquet, by port
    /// (e.g. `{ prompts: csv }`), for tools that do not read Parquet.
    #[serde(default)]
    pub in_format: BTreeMap<String, TableFormat>,
}

pub struct Command;

impl Op for Command {
    fn info(&self) -> OpInfo {
        OpInfo {
            name: "command",
            version: 1,
            doc: "Runs a shell command; declared inputs arrive as read-only files, declared outputs are files it writes.",
            inputs: Ports::Declared("any names, each `STAGE`, `STAGE.PORT` or `STAGE[*]`; `${in.NAME}` is its path"),
            outputs: Ports::Declared("declared under `out:` as table, blob or dir; `${out.NAME}` is where to write it"),
            params: params_schema::<CommandParams>(),
            deterministic: false,
            templated_params: true,
        }
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<Checked, Vec<CheckError>> {
        let params: CommandParams = table::check_params(cx)?;
        if params.run.trim().is_empty() {
            return Err(vec![CheckError::param(&["run"], "`run` is empty").help("give the shell command to run")]);
        }
        Ok(Checked { outputs: cx.declared_outputs.clone(), file_deps: vec![], ..Default::default() })
    }

    fn run(&self, cx: RunCx) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(run(cx))
    }
}

async fn run(cx: RunCx) -> Result<(), OpError> {
    let params: CommandParams = table::run_params(&cx)?;
    let mut inputs = BTreeMap::new();
    for (port, input) in &cx.inputs {
        let path = match (input, params.in_format.get(port)) {
            (Input::One(item), Some(&format)) if format != TableFormat::Parquet => {
                let converted = cx.work_dir.join(format!("{port}.{}", format.name()));
                let (src, dest) = (item.path.clone(), converted.clone());
                table::run_blocking(move || table::export_table(&src, &dest)).await?;
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

    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cx.log_path)
        .map_err(|e| OpError::io(format!("open log {}", cx.log_path.display()), e))?;
    let log_err = log.try_clone().map_err(|e| OpError::io("open log", e))?;
    let mut command = tokio::process::Command::new("sh");
    if script.len() <= MAX_INLINE_SCRIPT {
        command.arg("-c").arg(&script);
    } else {
        // Linux caps one argument at 128 KiB (a join over 10,000 inputs is longer): such a
        // script goes to a file that `sh` reads.
        let file = cx.work_dir.join("command.sh");
        std::fs::write(&file, &script).map_err(|e| OpError::io(format!("write {}", file.display()), e))?;
        command.arg(&file);
    }
    command
        .current_dir(&cx.pipeline_dir)
        .envs(&params.env)
        .env("DROVER_STAGE", &cx.stage)
        .env("DROVER_SEED", cx.seed.to_string())
        .env("DROVER_SCRATCH", &cx.work_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| OpError::environment(format!("cannot start `sh`: {e}")))?;
    // If this future is dropped (timeout, Ctrl-C), kill the whole group, not only `sh`.
    let group = child.id().map(|pid| KillGroup(pid as i32));
    let status = child.wait().await.map_err(|e| OpError::environment(format!("waiting for the command: {e}")))?;
    if let Some(mut g) = group {
        g.disarm();
    }
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
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
    table::run_blocking(move || {
        for (port, path) in tables {
            if !path.is_file() {
                continue; // the engine reports the missing output
            }
            let format = TableFormat::sniff(&path)?;
            let (schema, batches) = table::read_table_file(&path, Some(format))
                .map_err(|e| OpError::failed(format!("output `{port}`: {}", e.message)))?;
            table::write_parquet(&path, &schema, &batches)?;
        }
        Ok(())
    })
    .await
}

/// Longest script passed as `sh -c SCRIPT`; Linux's limit on one argument is 128 KiB.
const MAX_INLINE_SCRIPT: usize = 100 * 1024;

/// Kills a process group when dropped, unless disarmed.
struct KillGroup(i32);

impl KillGroup {
    fn disarm(&mut self) {
        self.0 = 0;
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
            unsafe {
                libc::kill(-self.0, libc::SIGKILL);
            }
        }
    }
}

/// A path for the shell: relative to the pipeline directory when inside it, quoted if needed.
fn shell_path(base: &Path, path: &Path) -> String {
    let shown = path.strip_prefix(base).unwrap_or(path).to_string_lossy().to_string();
    let safe = shown.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=%,:@".contains(&b));
    if safe && !shown.is_empty() { shown } else { format!("'{}'", shown.replace('\'', r"'\''")) }
}

/// The last lines of a log, for an error message.
fn log_tail(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else { return String::new() };
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
