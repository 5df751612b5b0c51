//! What the benchmarks that compare drover with a Python tool share: a venv made on first use,
//! and a child process's wall time and peak RSS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The Python of `venv`, made with `packages` from PyPI the first time.
pub fn python(venv: &Path, packages: &[&str]) -> PathBuf {
    let py = venv.join("bin/python");
    if !py.is_file() {
        eprintln!("making {} ({} from PyPI)", venv.display(), packages.join(", "));
        let ok = Command::new("python3").args(["-m", "venv"]).arg(venv).status().unwrap().success()
            && Command::new(&py).args(["-m", "pip", "install", "-q"]).args(packages).status().unwrap().success();
        assert!(ok, "could not make {}", venv.display());
    }
    py
}

/// Runs a command, returning its stdout, wall seconds and peak RSS in MB (of the child alone:
/// `/usr/bin/time -f %M`).
pub fn measured(cmd: &mut Command) -> (String, f64, f64) {
    let rss_file = tempfile::NamedTempFile::new().unwrap();
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-f").arg("%M").arg("-o").arg(rss_file.path()).arg(program).args(args);
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let started = Instant::now();
    let out = timed.output().unwrap();
    let wall = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "{:?} failed:\n{}", cmd, String::from_utf8_lossy(&out.stderr));
    let kb: f64 = std::fs::read_to_string(rss_file.path()).unwrap().trim().lines().last().unwrap().parse().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), wall, kb / 1024.0)
}
