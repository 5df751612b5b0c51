//! One entry of a pipeline's `llms:` block: where a language model is served and how hard to
//! use it, checked at plan time with errors that point into the block.
//!
//! What decides the text (the model id, or the GGUF file a local server loads) goes into the
//! stage's key through `Checked::context` and `Checked::named_deps`. Where it is served
//! (`base_url`), how fast (`max_concurrency`, `requests_per_minute`, `timeout`) and the name
//! of the variable holding the API key do not: the same requests give the same responses
//! wherever they are sent.

use std::path::PathBuf;
use std::time::Duration;

use drover_engine::op::parse_params;
use drover_engine::{CheckCx, CheckError, Checked};
use serde::Deserialize;

use super::mmproj;
use crate::kit::pulled;

/// The settings of one endpoint, as written under `llms: { NAME: ... }`.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// An OpenAI-compatible API, up to and including `/v1` (e.g. `http://127.0.0.1:8000/v1`).
    pub base_url: Option<String>,
    /// The model id sent with every request. Enters the keys.
    pub model: Option<String>,
    /// The environment variable holding the API key (sent as a bearer token). The key itself
    /// is never written anywhere.
    pub api_key_env: Option<String>,
    /// Requests in flight at once, across all stages using this endpoint. Default: 8 (4 for a
    /// local server).
    pub max_concurrency: Option<usize>,
    /// At most this many requests start per minute. Default: no limit.
    pub requests_per_minute: Option<u32>,
    /// How long one request may take, e.g. `60s` or `5m`. Default: 60s (10m for a local
    /// server, which answers one request at a time per slot on one thread).
    pub timeout: Option<String>,
    /// Retries of one request after a 429, a 5xx, a timeout or a lost connection, with
    /// exponential backoff and jitter (honouring `Retry-After`). Default: 8.
    pub max_retries: Option<u32>,
    /// Start a local llama.cpp server for this endpoint instead of using `base_url`.
    pub serve: Option<ServeSpec>,
}

/// `serve:` settings: a GGUF file served by llama.cpp's own server (PyPI `xllamacpp`), on
/// loopback, started on first use and stopped when drover exits.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeSpec {
    /// The model file, relative to the pipeline directory or absolute.
    pub gguf: Option<String>,
    /// A model fetched by `drover models pull NAME` (e.g. `smollm2`), instead of `gguf`.
    pub pulled: Option<String>,
    /// CPU threads of the server. Default: 1 (more is slower on a busy 2-core machine).
    pub threads: Option<u32>,
    /// Context length of each request slot, in tokens. Default: 2048.
    pub context: Option<u32>,
    /// A multimodal projector GGUF (llama.cpp's `--mmproj`), so that the model can see images
    /// sent as `image_url` parts: relative to the pipeline directory or absolute. Its content
    /// enters the key. `synthetic:colour` builds an untrained projector for the text model
    /// that only passes each image's colours through (for testing the image path offline;
    /// see the README's `recaption` section). Default: none (the server refuses images).
    pub mmproj: Option<String>,
}

/// An endpoint checked and resolved, as the client uses it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The name under `llms:`.
    pub name: String,
    pub target: Target,
    /// The model id sent in requests.
    pub model: String,
    pub api_key_env: Option<String>,
    pub max_concurrency: usize,
    pub requests_per_minute: Option<u32>,
    pub timeout: Duration,
    pub max_retries: u32,
}

/// Where requests go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Remote { base_url: String },
    Serve { gguf: PathBuf, threads: u32, context: u32, mmproj: Option<PathBuf> },
}

/// The alias a local server gives its model.
const SERVED_MODEL: &str = "local";

impl Endpoint {
    /// Reads endpoint `name` from the `llms:` block. Errors point at the block, or at the
    /// stage's `llm` param when the name is not there.
    pub fn resolve(
        llms: &serde_json::Value,
        name: &str,
        pipeline_dir: &std::path::Path,
    ) -> Result<Endpoint, Vec<CheckError>> {
        let Some(value) = llms.get(name) else {
            let names: Vec<&str> = llms.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
            let help = match names.is_empty() {
                true => "add an `llms:` block, e.g. `llms: { default: { serve: { pulled: smollm2 } } }` (after \
                         `drover models pull smollm2`), or `{ base_url: http://127.0.0.1:8000/v1, model: NAME }`"
                    .to_string(),
                false => format!("the pipeline's endpoints: {}", names.join(", ")),
            };
            return Err(vec![CheckError::param(&["llm"], format!("no endpoint `{name}` under `llms:`")).help(help)]);
        };
        let spec: EndpointSpec = parse_params(value).map_err(|e| {
            let mut path = vec![name.to_string()];
            path.extend(match e.at {
                drover_engine::CheckLocation::Param(p) | drover_engine::CheckLocation::ParamKey(p) => p,
                _ => Vec::new(),
            });
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let mut err = super::section_error(&path, format!("llms.{name}: {}", e.message));
            err.help = e
                .help
                .map(|h| h.replace("`drover ops` lists every param and its type", "see the README's `llms:` section"));
            vec![err]
        })?;
        let at = |field: &str, message: String| super::section_error(&[name, field], format!("llms.{name}: {message}"));
        let mut errors = Vec::new();
        let target = match (&spec.base_url, &spec.serve) {
            (Some(_), Some(_)) => {
                errors.push(
                    at("serve", "both `base_url` and `serve` are set".into())
                        .help("use a running server (`base_url` and `model`) or let drover start one (`serve`)"),
                );
                None
            }
            (None, None) => {
                errors.push(
                    super::section_error(&[name], format!("llms.{name} has neither `base_url` nor `serve`"))
                        .help("add `base_url: http://HOST:PORT/v1` and `model: ID`, or `serve: { pulled: smollm2 }`"),
                );
                None
            }
            (Some(url), None) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    errors.push(
                        at("base_url", format!("`{url}` is not an http(s) URL"))
                            .help("e.g. `http://127.0.0.1:8000/v1` (the part before `/chat/completions`)"),
                    );
                }
                if spec.model.is_none() {
                    errors.push(
                        super::section_error(&[name], format!("llms.{name} has a `base_url` but no `model`"))
                            .help("name the model id the server serves (its `/v1/models` lists them)"),
                    );
                }
                Some(Target::Remote { base_url: url.trim_end_matches('/').to_string() })
            }
            (None, Some(serve)) => match serve_target(name, serve, pipeline_dir) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        };
        let timeout_default = if matches!(target, Some(Target::Serve { .. })) { "10m" } else { "60s" };
        let timeout = match drover_engine::spec::parse_duration_str(spec.timeout.as_deref().unwrap_or(timeout_default))
        {
            Some(t) if !t.is_zero() => t,
            _ => {
                errors.push(
                    at("timeout", format!("`{}` is not a duration", spec.timeout.as_deref().unwrap_or("")))
                        .help("e.g. `90s`, `5m`"),
                );
                Duration::from_secs(60)
            }
        };
        if spec.max_concurrency == Some(0) {
            errors.push(
                at("max_concurrency", "max_concurrency is 0: nothing could be sent".into()).help("use 1 or more"),
            );
        }
        if spec.requests_per_minute == Some(0) {
            errors.push(
                at("requests_per_minute", "requests_per_minute is 0".into()).help("use 1 or more, or leave it out"),
            );
        }
        if let Some(var) = &spec.api_key_env
            && (var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            errors.push(
                at("api_key_env", format!("`{var}` is not an environment variable name"))
                    .help("name the variable (e.g. `OPENAI_API_KEY`), never the key itself"),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let target = target.expect("a target when there are no errors");
        let serving = matches!(target, Target::Serve { .. });
        Ok(Endpoint {
            name: name.to_string(),
            model: spec.model.unwrap_or_else(|| SERVED_MODEL.to_string()),
            target,
            api_key_env: spec.api_key_env,
            max_concurrency: spec.max_concurrency.unwrap_or(if serving { 4 } else { 8 }),
            requests_per_minute: spec.requests_per_minute,
            timeout,
            max_retries: spec.max_retries.unwrap_or(8),
        })
    }

    /// Adds what decides this endpoint's text to a stage's key: the model id, or the content of
    /// the GGUF file a local server loads (under a name, not its path, which differs between
    /// machines).
    pub fn add_to_key(&self, checked: &mut Checked) {
        match &self.target {
            Target::Remote { .. } => {
                checked.context.insert(format!("llm `{}` model", self.name), self.model.clone().into());
            }
            Target::Serve { gguf, context, mmproj, .. } => {
                checked.named_deps.push((format!("llm `{}` gguf", self.name), gguf.clone()));
                // Only when set, so that the keys of text-only endpoints are as they were.
                if let Some(mmproj) = mmproj {
                    checked.named_deps.push((format!("llm `{}` mmproj", self.name), mmproj.clone()));
                }
                // The context length decides where long prompts are cut.
                checked.context.insert(format!("llm `{}` context", self.name), (*context).into());
            }
        }
    }
}

fn serve_target(name: &str, serve: &ServeSpec, pipeline_dir: &std::path::Path) -> Result<Target, CheckError> {
    let at = |field: &str, message: String| {
        super::section_error(&[name, "serve", field], format!("llms.{name}.serve: {message}"))
    };
    let gguf = match (&serve.gguf, &serve.pulled) {
        (Some(_), Some(_)) => {
            return Err(at("pulled", "both `gguf` and `pulled` are set".into()).help("name one model"));
        }
        (None, None) => {
            return Err(super::section_error(&[name, "serve"], format!("llms.{name}.serve names no model"))
                .help("add `pulled: smollm2` (after `drover models pull smollm2`) or `gguf: PATH`"));
        }
        (Some(path), None) => {
            let path = drover_engine::paths::resolve(pipeline_dir, path);
            if !path.is_file() {
                return Err(at("gguf", format!("no model file at {}", path.display()))
                    .help("give the path of a .gguf file, relative to the pipeline or absolute"));
            }
            path
        }
        (None, Some(pulled)) => {
            if pulled::known(pulled).is_ok_and(|m| !m.needs_runtime) {
                return Err(at("pulled", format!("`{pulled}` is not a language model llama.cpp can serve"))
                    .help("name a GGUF model, e.g. `pulled: smollm2`"));
            }
            pulled::pulled_model(pulled).map_err(|message| {
                let mut e = at("pulled", message);
                e.help = Some(format!("run `drover models pull {pulled}` once (it needs PyPI), or give `gguf: PATH`"));
                e
            })?
        }
    };
    if serve.threads == Some(0) || serve.context.is_some_and(|c| c < 128) {
        return Err(at("threads", "threads must be at least 1 and context at least 128 tokens".into()));
    }
    let mmproj = match serve.mmproj.as_deref() {
        None => None,
        Some(mmproj::SYNTHETIC) => Some(mmproj::ensure_synthetic(&gguf).map_err(|message| {
            at("mmproj", format!("cannot build the synthetic projector for {}: {message}", gguf.display())).help(
                "`synthetic:colour` needs a GGUF text model with a `token_embd.weight` in F32, F16, Q4_0, Q4_1 or Q8_0",
            )
        })?),
        Some(path) if path.starts_with("synthetic:") => {
            return Err(at("mmproj", format!("unknown synthetic projector `{path}`"))
                .help(format!("the one built in is `{}`; otherwise give a path", mmproj::SYNTHETIC)));
        }
        Some(path) => {
            let path = drover_engine::paths::resolve(pipeline_dir, path);
            if !path.is_file() {
                return Err(at("mmproj", format!("no projector file at {}", path.display())).help(
                    "give the path of the model's mmproj .gguf (published beside a vision model's GGUF), relative \
                     to the pipeline or absolute",
                ));
            }
            Some(path)
        }
    };
    Ok(Target::Serve { gguf, threads: serve.threads.unwrap_or(1), context: serve.context.unwrap_or(2048), mmproj })
}

/// The stage param every language-model op takes: which endpoint of `llms:` to use.
pub fn check_endpoint(cx: &CheckCx<'_>, name: &str, checked: &mut Checked) -> Result<Endpoint, Vec<CheckError>> {
    let endpoint = Endpoint::resolve(cx.section(super::SECTION), name, cx.pipeline_dir)?;
    endpoint.add_to_key(checked);
    Ok(endpoint)
}

/// JSON Schema of one `llms:` entry, for `drover schema`.
pub fn schema() -> serde_json::Value {
    drover_engine::params_schema::<EndpointSpec>()
}

pub fn default_llm() -> String {
    "default".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_point_into_the_llms_block() {
        let dir = std::path::Path::new(".");
        let llms = json!({"default": {"base_url": "localhost:8000", "modle": "x"}});
        let errs = Endpoint::resolve(&llms, "default", dir).unwrap_err();
        assert!(errs[0].message.contains("unknown param `modle`"), "{}", errs[0].message);
        assert!(
            matches!(&errs[0].at, drover_engine::CheckLocation::Section(s, p) if s == "llms" && p == &["default", "modle"])
        );

        let llms = json!({"default": {"base_url": "localhost:8000", "model": "x"}});
        let errs = Endpoint::resolve(&llms, "default", dir).unwrap_err();
        assert!(errs[0].message.contains("not an http(s) URL"));

        let errs = Endpoint::resolve(&llms, "judge", dir).unwrap_err();
        assert_eq!(errs[0].message, "no endpoint `judge` under `llms:`");
        assert!(errs[0].help.as_deref().unwrap().contains("default"));
    }

    #[test]
    fn only_the_model_enters_the_key() {
        let dir = std::path::Path::new(".");
        let a =
            json!({"default": {"base_url": "http://a:1/v1", "model": "m", "max_concurrency": 2, "api_key_env": "K"}});
        let b = json!({"default": {"base_url": "http://b:2/v1/", "model": "m", "timeout": "5m"}});
        let key = |llms: &serde_json::Value| {
            let mut checked = Checked::default();
            Endpoint::resolve(llms, "default", dir).unwrap().add_to_key(&mut checked);
            (checked.context, checked.named_deps)
        };
        assert_eq!(key(&a), key(&b));
        let c = json!({"default": {"base_url": "http://a:1/v1", "model": "other"}});
        assert_ne!(key(&a), key(&c));
    }

    /// A projector enters the key (by content, under a name) only when it is set, so that the
    /// keys of text-only `serve:` endpoints are what they were before `mmproj` existed.
    #[test]
    fn a_projector_enters_the_key_only_when_set() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("m.gguf"), "GGUF").unwrap();
        std::fs::write(d.path().join("p.gguf"), "GGUF mmproj").unwrap();
        let key = |llms: serde_json::Value| {
            let mut checked = Checked::default();
            Endpoint::resolve(&llms, "default", d.path()).unwrap().add_to_key(&mut checked);
            checked.named_deps
        };
        let plain = key(json!({"default": {"serve": {"gguf": "m.gguf"}}}));
        assert_eq!(plain, [("llm `default` gguf".to_string(), d.path().join("m.gguf"))]);
        let seeing = key(json!({"default": {"serve": {"gguf": "m.gguf", "mmproj": "p.gguf"}}}));
        assert_eq!(seeing[1], ("llm `default` mmproj".to_string(), d.path().join("p.gguf")));

        let missing = json!({"default": {"serve": {"gguf": "m.gguf", "mmproj": "nope.gguf"}}});
        let errs = Endpoint::resolve(&missing, "default", d.path()).unwrap_err();
        assert_eq!(
            errs[0].message,
            format!("llms.default.serve: no projector file at {}", d.path().join("nope.gguf").display())
        );
        let unknown = json!({"default": {"serve": {"gguf": "m.gguf", "mmproj": "synthetic:shapes"}}});
        let errs = Endpoint::resolve(&unknown, "default", d.path()).unwrap_err();
        assert_eq!(errs[0].message, "llms.default.serve: unknown synthetic projector `synthetic:shapes`");
        let not_a_model = json!({"default": {"serve": {"gguf": "m.gguf", "mmproj": "synthetic:colour"}}});
        let errs = Endpoint::resolve(&not_a_model, "default", d.path()).unwrap_err();
        assert!(errs[0].message.ends_with("m.gguf: the file ends inside its header"), "{}", errs[0].message);
    }
}
