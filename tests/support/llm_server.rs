//! A real language-model server for end-to-end tests: llama.cpp's own server (PyPI `xllamacpp`)
//! serving SmolLM2-135M-Instruct, behind the request-counting proxy `tests/support/llm_proxy.py`,
//! with the helpers the tests of its ops share (kill a run part-way, check a resume, read a
//! stage log). `#[path]`-included by tests/llm.rs and tests/ai_preference.rs.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Project, SIGKILL, signal};

/// drover's cache directory, as `drover models pull` uses it.
fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DROVER_CACHE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("drover");
    }
    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/drover")
}

/// SmolLM2 and the llama.cpp runtime, pulled by `drover models pull smollm2` once per test
/// process (later runs find them in the cache).
pub fn model() -> (PathBuf, PathBuf) {
    crate::common::pull_model("smollm2");
    let gguf = cache_dir().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let runtime = cache_dir().join("runtime/xllamacpp-2026.10.11549");
    assert!(gguf.is_file() && runtime.is_dir(), "the pull did not leave {} and {}", gguf.display(), runtime.display());
    (gguf, runtime)
}

/// The proxy, with its own llama.cpp server behind it. Stops both when dropped.
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts one; `extra` are more arguments of the proxy (`--strip-logprobs`, `--fail N`).
    pub fn start(extra: &[&str]) -> Server {
        let (gguf, runtime) = model();
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/llm_proxy.py");
        let child = Command::new("python3")
            .arg(script)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--serve-gguf")
            .arg(&gguf)
            .arg("--runtime")
            .arg(&runtime)
            .args(["--parallel", "4"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the proxy (python3)");
        let mut server = Server { child, port: 0 };
        let started = Instant::now();
        while server.port == 0 {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                server.port = text.trim().parse().unwrap_or(0);
            }
            assert!(server.child.try_wait().unwrap().is_none(), "the proxy exited before it was ready");
            assert!(started.elapsed() < Duration::from_secs(180), "the proxy was not ready after 180 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The proxy's counters.
    pub fn stats(&self) -> serde_json::Value {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(b"GET /_proxy/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body).unwrap()
    }

    /// Completion requests sent on to the server.
    pub fn forwarded(&self) -> u64 {
        self.stats()["forwarded"].as_u64().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `drover run` in `p` and kills it (SIGKILL) once `server` has forwarded `n` requests.
pub fn kill_run_after(p: &Project, server: &Server, n: u64) {
    let mut child = p.cmd(&["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while server.forwarded() < n {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id() as i32, SIGKILL);
    child.wait().unwrap();
}

/// After a killed run and a rerun of `total` distinct requests: every answered request came from
/// the memo; at most the one in flight at the kill was sent again.
pub fn assert_resumed(server: &Server, total: u64) {
    let after = server.stats();
    assert_eq!(after["resent_after_answer"], 0, "{after}");
    assert!(after["forwarded"].as_u64().unwrap() <= total + 1, "{after}");
    assert_eq!(after["by_body"].as_object().unwrap().len() as u64, total, "{after}");
}

/// The stage log of the last run of `stage`.
pub fn stage_log(p: &Project, stage: &str) -> String {
    let logs = p.join(".drover/logs");
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    let path = runs.iter().rev().map(|r| r.join(format!("{stage}.log"))).find(|l| l.is_file()).unwrap();
    std::fs::read_to_string(path).unwrap()
}
