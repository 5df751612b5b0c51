//! The embedded default: llama.cpp's own OpenAI-compatible server (PyPI's prebuilt `xllamacpp`
//! wheel, no compiler needed) started on loopback for `serve:` endpoints, and its installation
//! from PyPI into the user's cache (the models themselves: `kit::pulled`).
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

use crate::kit::pulled::{cache_dir, python, run_python};

/// The server runtime: llama.cpp's HTTP server in a prebuilt wheel. Pinned, because text at a
/// fixed seed depends on the build.
pub const RUNTIME: &str = "xllamacpp==2026.10.11549";

fn runtime_dir() -> PathBuf {
    cache_dir().join("runtime").join(RUNTIME.replace("==", "-"))
}

/// Installs the server runtime from PyPI into the cache, unless it is there already.
pub fn install_runtime(say: &dyn Fn(&str)) -> Result<(), String> {
    let runtime = runtime_dir();
    if runtime.join("xllamacpp").is_dir() {
        say(&format!("runtime: already in {}", runtime.display()));
        return Ok(());
    }
    say(&format!("runtime: installing {RUNTIME} from PyPI"));
    let staging = runtime.with_extension("part");
    let _ = std::fs::remove_dir_all(&staging);
    let staging_s = staging.to_string_lossy().to_string();
    let args = ["-m", "pip", "install", "--no-deps", "--quiet", "--disable-pip-version-check", "--target", &staging_s];
    run_python(&[&args[..], &[RUNTIME]].concat(), "pip install")?;
    std::fs::rename(&staging, &runtime).map_err(|e| format!("move into {}: {e}", runtime.display()))?;
    say(&format!("runtime: {}", runtime.display()));
    Ok(())
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
if cfg["mmproj"]:
    p.mmproj.path = cfg["mmproj"]
    p.mmproj_use_gpu = False
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

type Servers = Mutex<HashMap<(PathBuf, Option<PathBuf>, u32, u32), Arc<tokio::sync::OnceCell<Arc<Served>>>>>;
static SERVERS: std::sync::OnceLock<Servers> = std::sync::OnceLock::new();

/// The local server for this model file (and projector) and settings, started (once per
/// process) if needed.
pub async fn ensure(
    gguf: &Path,
    mmproj: Option<&Path>,
    threads: u32,
    context: u32,
    parallel: usize,
    alias: &str,
) -> Result<Arc<Served>, String> {
    let cell = {
        let mut servers = SERVERS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        servers.entry((gguf.to_path_buf(), mmproj.map(Path::to_path_buf), threads, context)).or_default().clone()
    };
    let (gguf, mmproj, alias) = (gguf.to_path_buf(), mmproj.map(Path::to_path_buf), alias.to_string());
    cell.get_or_try_init(|| async move {
        tokio::task::spawn_blocking(move || start(&gguf, mmproj.as_deref(), threads, context, parallel, &alias))
            .await
            .map_err(|e| e.to_string())?
    })
    .await
    .cloned()
}

fn start(
    gguf: &Path,
    mmproj: Option<&Path>,
    threads: u32,
    context: u32,
    parallel: usize,
    alias: &str,
) -> Result<Arc<Served>, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free loopback port: {e}"))?
        .port();
    let runtime = runtime_dir();
    let cfg = serde_json::json!({
        "runtime": if runtime.is_dir() { runtime.to_string_lossy().to_string() } else { String::new() },
        "gguf": gguf, "mmproj": mmproj, "threads": threads, "context": context, "parallel": parallel, "port": port, "alias": alias,
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
