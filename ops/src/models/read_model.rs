//! The `read_model` op: imports a local model directory (Hugging Face layout) as a `dir` artifact.
//!
//! No inputs; output `model`, a directory. The directory must hold `config.json` and weights as
//! `*.safetensors` (one file, or shards with `model.safetensors.index.json`); everything in it
//! (tokenizer files included) is copied. Its content enters the key through the stat cache, as
//! `read_table`'s file does: editing any file reruns the stage, touching none reads nothing
//! again. Deterministic. Symlinks in the directory are followed, for the key and the copy
//! alike (`drover_engine::paths`). The files are copied, never linked, so that the store's
//! read-only objects can never alias the user's files.

use std::path::{Path, PathBuf};

use drover_engine::paths;
use drover_engine::{CheckCx, CheckError, CheckErrors, Checked, OpError, OpKit, PortType, Ports, RunCx, Work};
use serde::Deserialize;

/// The `with:` block of a `read_model` stage.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadModelParams {
    /// The model directory: relative to the pipeline file's directory, or absolute.
    pub path: String,
}

/// Imports a model directory.
pub struct ReadModel;

/// What is wrong with a directory as a model, if anything.
fn model_problem(dir: &Path) -> Option<String> {
    if !dir.join("config.json").is_file() {
        return Some(format!("no config.json in {}", dir.display()));
    }
    let has_weights = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == "safetensors")))
        .unwrap_or(false);
    if !has_weights {
        return Some(format!("no *.safetensors weights in {}", dir.display()));
    }
    None
}

impl OpKit for ReadModel {
    type Params = ReadModelParams;
    const NAME: &str = "read_model";
    const VERSION: u32 = 1;
    const DOC: &str =
        "Imports a local model directory (config.json, *.safetensors, tokenizer files) as a dir artifact.";

    fn inputs() -> Ports {
        Ports::none()
    }

    fn outputs() -> Ports {
        Ports::one("model", PortType::Dir, "A copy of the directory.")
    }

    fn check(&self, params: &ReadModelParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let dir = paths::resolve(cx.pipeline_dir, &params.path);
        let problem = if !dir.exists() {
            Some(format!("directory not found: {}", dir.display()))
        } else if !dir.is_dir() {
            Some(format!("not a directory: {}", dir.display()))
        } else {
            model_problem(&dir)
        };
        if let Some(message) = problem {
            return Err(CheckError::param(&["path"], message)
                .help(
                    "a model directory in Hugging Face layout holds config.json and *.safetensors (and tokenizer files); \
                     a relative path is read from the pipeline's directory",
                )
                .into());
        }
        Ok(Checked {
            file_deps: vec![PathBuf::from(&params.path)],
            ..Checked::default().output("model", PortType::Dir)
        })
    }

    fn run(&self, params: ReadModelParams, cx: RunCx) -> Work {
        Work::blocking(move || {
            let dir = paths::resolve(&cx.pipeline_dir, &params.path);
            if let Some(problem) = model_problem(&dir) {
                return Err(OpError::failed(problem));
            }
            copy_tree(&dir, &cx.output("model")?.path)
        })
    }
}

/// Copies every file below `from` to the same relative path below `to`, following symlinks as
/// the stage's key does (the same walk lists what is hashed and what is copied).
fn copy_tree(from: &Path, to: &Path) -> Result<(), OpError> {
    let files =
        paths::files_below(from).map_err(|e| OpError::environment(format!("cannot copy {}: {e}", from.display())))?;
    for (rel, src) in files {
        let dest = to.join(&rel);
        let parent = dest.parent().unwrap_or(to);
        std::fs::create_dir_all(parent).map_err(|e| OpError::io(format!("cannot create {}", parent.display()), e))?;
        std::fs::copy(&src, &dest).map_err(|e| OpError::io(format!("cannot copy {}", src.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_needs_a_config_and_safetensors() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(model_problem(d.path()), Some(format!("no config.json in {}", d.path().display())));
        std::fs::write(d.path().join("config.json"), "{}").unwrap();
        std::fs::write(d.path().join("pytorch_model.bin"), "x").unwrap();
        assert_eq!(model_problem(d.path()), Some(format!("no *.safetensors weights in {}", d.path().display())));
        std::fs::write(d.path().join("model-00001-of-00002.safetensors"), "x").unwrap();
        assert_eq!(model_problem(d.path()), None);
    }

    #[test]
    fn copy_tree_keeps_relative_paths_and_bytes() {
        let from = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("sub/deeper")).unwrap();
        std::fs::write(from.path().join("config.json"), "{\"a\": 1}").unwrap();
        std::fs::write(from.path().join("sub/deeper/t.bin"), [0u8, 1, 2, 255]).unwrap();
        let to = tempfile::tempdir().unwrap();
        copy_tree(from.path(), to.path()).unwrap();
        assert_eq!(std::fs::read(to.path().join("config.json")).unwrap(), b"{\"a\": 1}");
        assert_eq!(std::fs::read(to.path().join("sub/deeper/t.bin")).unwrap(), [0u8, 1, 2, 255]);
    }

    #[test]
    fn copy_tree_copies_what_symlinks_lead_to_and_refuses_a_loop() {
        let d = tempfile::tempdir().unwrap();
        let (from, elsewhere) = (d.path().join("from"), d.path().join("elsewhere"));
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(elsewhere.join("shards")).unwrap();
        std::fs::write(elsewhere.join("config.json"), "{}").unwrap();
        std::fs::write(elsewhere.join("shards/w.safetensors"), "w").unwrap();
        std::os::unix::fs::symlink(elsewhere.join("config.json"), from.join("config.json")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("shards"), from.join("shards")).unwrap();
        let to = d.path().join("to");
        copy_tree(&from, &to).unwrap();
        for f in ["config.json", "shards/w.safetensors"] {
            assert!(!std::fs::symlink_metadata(to.join(f)).unwrap().is_symlink(), "{f} is a copy, not a link");
        }
        assert_eq!(std::fs::read(to.join("shards/w.safetensors")).unwrap(), b"w");

        std::os::unix::fs::symlink("..", elsewhere.join("shards/up")).unwrap();
        let err = copy_tree(&from, &d.path().join("to2")).unwrap_err();
        assert_eq!(err.kind, drover_engine::OpErrorKind::Environment);
        assert_eq!(
            err.message,
            format!(
                "cannot copy {}: symlink loop: {} leads back to {}, a directory that contains it",
                from.display(),
                from.join("shards/up/shards").display(),
                from.join("shards").display()
            )
        );
    }
}
