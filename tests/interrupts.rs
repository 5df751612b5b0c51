//! Ctrl-C and environment failures: an interrupted run keeps finished stages and kills running
//! commands (exit 130); a command that cannot be spawned is an environment failure (exit 3).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Project;

#[test]
fn ctrl_c_stops_the_run_keeps_finished_stages_and_kills_commands() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
stages:
  fast: { op: command, with: { run: "echo fast >> calls.log; echo 1 > ${out.out}" }, out: { out: blob } }
  slow:
    op: command
    in: { x: fast }
    with: { run: "echo $$ > pid; sleep 60; cat ${in.x} > ${out.out}" }
    out: { out: blob }
"#,
    );
    let child = p.cmd(&["run"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = common::wait_for("the slow command's pid file", || {
        std::fs::read_to_string(p.join("pid")).unwrap_or_default().trim().parse::<i32>().ok()
    });
    common::signal(child.id() as i32, common::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    // The command's process group is gone (give the kernel a moment to reap it).
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
    });
    assert!(gone, "the interrupted command is still running");
    let runs = p.drover(&["runs", "last"]);
    assert!(runs.stdout.contains("interrupted"), "{}", runs.stdout);
    let plan = p.plan(&[]);
    assert_eq!((plan[0].1.as_str(), plan[1].1.as_str()), ("cached", "run"));
}

#[test]
fn a_command_that_cannot_be_spawned_is_an_environment_failure() {
    let p = Project::new();
    p.write("drover.yaml", "stages:\n  a: { op: command, with: { run: \"true\" }, out: { out: blob } }\n");
    let out = p.cmd(&["run"]).env("PATH", "/nonexistent").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("cannot start `sh`"), "{stderr}");
}

#[test]
fn an_unwritable_store_is_an_environment_failure() {
    let p = Project::new();
    p.write("drover.yaml", "stages:\n  a: { op: command, with: { run: \"true\" }, out: { out: blob } }\n");
    p.write("blocker", "a file where the store's directory should be");
    let out = p.drover(&["run", "--store", "blocker/store"]);
    out.expect_code(3);
    assert!(out.stderr.contains("cannot open store"), "{}", out.stderr);
}
