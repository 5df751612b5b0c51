//! One store shared by processes that stand for separate hosts: each `drover run` in its own
//! UTS (host name), PID and mount namespace (`unshare`), so that pids collide (every one is
//! pid 1) and `/proc` shows none of the others, as on separate machines sharing NFS. Every key
//! is computed once (or adopted), nothing is torn, and every run keeps its own record.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use common::Project;

const PIPELINE: &str = r#"
stages:
  gen:
    op: command
    with: { run: "echo gen >> calls.log; head -c 16 /dev/urandom | od -An -tx1 > ${out.out}" }
    out: { out: blob }
  work:
    op: command
    matrix: { i: [1, 2, 3, 4, 5, 6, 7, 8] }
    in: { x: gen }
    with: { run: "echo work-${matrix.i} >> calls.log; sleep 0.2; cat ${in.x} > ${out.out}; echo ${matrix.i} >> ${out.out}" }
    out: { out: blob }
  gather:
    op: command
    in: { parts: "work[*]" }
    with: { run: "echo gather >> calls.log; cat ${in.parts}/* > ${out.out}" }
    out: { out: blob }
"#;

/// `drover run` as "host" `name`: in new UTS, PID and mount namespaces, started when `go`
/// appears so that every host starts at once.
fn host(p: &Project, name: &str) -> Child {
    let script = format!(
        "hostname {name} && while [ ! -e go ]; do sleep 0.01; done && exec {} run -j 4 --store shared",
        env!("CARGO_BIN_EXE_drover")
    );
    Command::new("unshare")
        .args(["--uts", "--pid", "--fork", "--mount", "--mount-proc", "sh", "-c", &script])
        .current_dir(p.path())
        .env("NO_COLOR", "1")
        .env_remove("DROVER_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs; the test needs root or user namespaces")
}

#[test]
fn hosts_racing_on_one_store_compute_each_key_once_and_agree_on_every_answer() {
    let p = Project::new();
    p.write("drover.yaml", PIPELINE);
    let hosts: Vec<Child> = (1..=4).map(|i| host(&p, &format!("host{i}"))).collect();
    p.write("go", "");
    for child in hosts {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "a host's run failed:\n{stderr}");
    }

    // Each stage ran once, on one host or another; the others waited and found it stored.
    let mut calls: Vec<String> = p.read("calls.log").lines().map(str::to_string).collect();
    calls.sort();
    let want: Vec<String> = ["gather", "gen"]
        .into_iter()
        .map(String::from)
        .chain((1..=8).map(|i| format!("work-{i}")))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(calls, want);

    // Four runs, four records (all four drovers were pid 1: run ids carry the host's tag).
    let runs: Vec<serde_json::Value> = std::fs::read_dir(p.join("shared/runs"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert_eq!(runs.len(), 4);
    // Every host saw one answer for `gen` (random bytes): the same key downstream.
    let mut gather_keys = std::collections::BTreeSet::new();
    let mut ran: BTreeMap<String, usize> = BTreeMap::new();
    for run in &runs {
        for s in run["stages"].as_array().unwrap() {
            let stage = s["stage"].as_str().unwrap().to_string();
            if stage == "gather" {
                gather_keys.insert(s["key"].as_str().unwrap().to_string());
            }
            assert!(["ran", "cached"].contains(&s["outcome"].as_str().unwrap()), "{s}");
            *ran.entry(stage).or_default() += usize::from(s["outcome"] == "ran");
        }
    }
    assert_eq!(gather_keys.len(), 1, "hosts disagree on an answer: {gather_keys:?}");
    assert_eq!(ran.len(), 10);
    assert!(ran.values().all(|n| *n == 1), "each stage ran on exactly one host: {ran:?}");

    // Nothing torn, nothing left behind.
    let verify = p.drover(&["cache", "verify", "--store", "shared"]);
    verify.expect_code(0);
    assert!(verify.stdout.ends_with("store is consistent\n"), "{}", verify.stdout);
    let left: Vec<_> = std::fs::read_dir(p.join("shared/tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "scratch left in the store: {left:?}");
    let leases: Vec<_> = std::fs::read_dir(p.join("shared/locks")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(leases.is_empty(), "leases left in the store: {leases:?}");
}
