//! End-to-end tests of unattended runs: `drover nightly` (its lease, `--if-changed`, what its
//! record says), metrics over time and their thresholds, notices received by a real local HTTP
//! server, and gc retention keeping exactly what the kept runs need.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use common::{HELD, Project, wait_for};
use serde_json::Value;

/// A pipeline with one command stage whose table's last row holds two metrics.
const METRICS: &str = r#"
pipeline: scores
params: { acc: 0.9, loss: 0.5 }
stages:
  m:
    op: command
    with: { run: "printf 'epoch,accuracy,loss\n1,0.5,0.9\n2,${params.acc},${params.loss}\n' > ${out.out}" }
    out: { out: { type: table, format: csv } }
    metrics: [accuracy, loss]
"#;

/// Every run record in the project's store, oldest first.
fn records(p: &Project) -> Vec<Value> {
    let mut paths: Vec<_> = std::fs::read_dir(p.join(".drover/runs")).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths.iter().map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()).collect()
}

fn tokens(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn metrics_diff_shows_the_change_and_a_crossed_threshold_exits_4() {
    let p = Project::new();
    p.write("drover.yaml", METRICS);
    p.drover(&["run"]).expect_code(0);
    p.drover(&["run", "--set", "acc=0.85", "--set", "loss=0.55"]).expect_code(0);
    let runs = records(&p);
    let (first, second) = (runs[0]["id"].as_str().unwrap(), runs[1]["id"].as_str().unwrap());
    assert_eq!(runs[1]["metrics"], serde_json::json!({"m.accuracy": 0.85, "m.loss": 0.55}));

    let show = p.drover(&["metrics", "show"]);
    show.expect_code(0);
    let lines: Vec<&str> = show.stdout.lines().collect();
    assert_eq!(tokens(lines[0])[..4], ["run", second, "scores", "ok"]);
    assert_eq!(
        lines[1..].iter().map(|l| tokens(l)).collect::<Vec<_>>(),
        [vec!["metric", "value"], vec!["m.accuracy", "0.85"], vec!["m.loss", "0.55"]]
    );

    // Defaults: the last successful run before the last one, against the last one.
    let diff = p.drover(&["metrics", "diff"]);
    diff.expect_code(0);
    assert_eq!(
        diff.stdout.lines().map(tokens).collect::<Vec<_>>(),
        [
            vec!["metric", first, second, "change", "change", "%"],
            vec!["m.accuracy", "0.9", "0.85", "-0.05", "-5.56%"],
            vec!["m.loss", "0.5", "0.55", "+0.05", "+10.00%"],
        ]
    );
    // Runs named the other way round: the change changes sign.
    let back = p.drover(&["metrics", "diff", second, first]);
    assert_eq!(tokens(back.stdout.lines().nth(1).unwrap()), ["m.accuracy", "0.85", "0.9", "+0.05", "+5.88%"]);

    let crossed = p.drover(&["metrics", "diff", "--fail-if", "m.accuracy < -0.01", "--fail-if", "m.loss > 20%"]);
    crossed.expect_code(4);
    assert_eq!(
        crossed.stdout.lines().last().unwrap(),
        "regression: m.accuracy changed by -0.05 (-5.56%), crossing `m.accuracy < -0.01`"
    );
    assert_eq!(crossed.stdout.matches("regression:").count(), 1, "loss rose 10%, under its 20% bound");
    p.drover(&["metrics", "diff", "--fail-if", "m.accuracy < -0.1", "--fail-if", "m.loss >= 10.5%"]).expect_code(0);

    let typo = p.drover(&["metrics", "diff", "--fail-if", "m.acuracy < 0"]);
    typo.expect_code(2);
    assert!(typo.stderr.contains("--fail-if: no metric `m.acuracy`"), "{}", typo.stderr);
    assert!(typo.stderr.contains("did you mean `m.accuracy`?"), "{}", typo.stderr);
    let bad = p.drover(&["metrics", "diff", "--fail-if", "m.accuracy = 1"]);
    bad.expect_code(2);
    assert!(bad.stderr.contains("--fail-if: `m.accuracy = 1` has no comparison (<, <=, > or >=)"), "{}", bad.stderr);
    let none = p.drover(&["metrics", "show", "nosuchrun"]);
    none.expect_code(2);
    assert!(none.stderr.contains("no run `nosuchrun`"), "{}", none.stderr);
}

#[test]
fn a_nightly_run_records_its_trigger_host_git_revision_and_params_digest() {
    let p = Project::new();
    p.write("drover.yaml", METRICS);
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .current_dir(p.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "drover.yaml"]);
    git(&["commit", "-q", "-m", "pipeline"]);
    let revision = git(&["rev-parse", "HEAD"]);

    p.drover(&["nightly", "every-night", "--set", "acc=0.8"]).expect_code(0);
    p.drover(&["run"]).expect_code(0);
    let runs = records(&p);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    assert_eq!(runs[0]["trigger"], serde_json::json!({"kind": "nightly", "schedule": "every-night"}));
    assert_eq!(runs[0]["host"], host.as_str());
    assert_eq!(runs[0]["git_revision"], revision.as_str());
    // blake3 of the params as sorted compact JSON, after `--set`.
    let digest = blake3::hash(br#"{"acc":0.8,"loss":0.5}"#).to_hex().to_string();
    assert_eq!(runs[0]["params_digest"], digest.as_str());
    assert_eq!(runs[1]["trigger"], serde_json::json!({"kind": "manual"}));
    assert_ne!(runs[1]["params_digest"], runs[0]["params_digest"]);
    // `drover runs ID` says so.
    let shown = p.drover(&["runs", runs[0]["id"].as_str().unwrap()]);
    assert_eq!(
        shown.stdout.lines().nth(1).unwrap(),
        format!(
            "  trigger nightly (schedule every-night), host {host}, git {}, params {}, 2 metrics (drover metrics show {})",
            &revision[..12],
            &digest[..12],
            runs[0]["id"].as_str().unwrap()
        )
    );
    // Why each stage ran, in the record.
    assert_eq!(runs[0]["stages"][0]["reasons"], serde_json::json!(["never run"]));
    assert_eq!(runs[1]["stages"][0]["reasons"], serde_json::json!(["param `acc` changed from 0.8 to 0.9"]));
}

#[test]
fn an_overlapping_nightly_run_is_skipped_with_exit_75() {
    let p = Project::new();
    p.write("drover.yaml", HELD);
    let mut first = p.cmd(&["nightly", "n"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for("the first run's stage to start", || p.read_opt("started"));

    let second = p.drover(&["nightly", "n"]);
    second.expect_code(75);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let expected =
        format!("skipped: the previous run of schedule `n` is still going (pid {} on {host} since ", first.id());
    assert!(second.stderr.starts_with(&expected), "{}", second.stderr);
    p.write("release", "");
    let mut err = String::new();
    let status = first.wait().unwrap();
    first.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(records(&p).len(), 1, "the skipped run records nothing");
    // The lease went with the process that held it.
    p.drover(&["nightly", "n"]).expect_code(0);
}

#[test]
fn if_changed_runs_nothing_when_every_stage_is_cached() {
    let p = Project::new();
    p.write("drover.yaml", METRICS);
    p.drover(&["nightly", "n", "--if-changed"]).expect_code(0);
    let unchanged = p.drover(&["nightly", "n", "--if-changed"]);
    unchanged.expect_code(0);
    assert!(unchanged.stderr.contains("unchanged: all 1 stages are cached; nothing ran"), "{}", unchanged.stderr);
    assert_eq!(records(&p).len(), 1);
    let changed = p.drover(&["nightly", "n", "--if-changed", "--set", "acc=0.7"]);
    changed.expect_code(0);
    assert!(changed.stderr.contains("1 stage: 1 ran, 0 cached"), "{}", changed.stderr);
    assert_eq!(records(&p).len(), 2);
}

/// What one request to the test's webhook carried.
struct Received {
    head: String,
    body: Value,
}

/// A real HTTP server on loopback that answers 200 to every request and hands each one over.
fn webhook_server() -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            // Handed over before answering: once drover has its answer, the test has the request.
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if tx.send(Received { head, body }).is_err() {
                return;
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, rx)
}

#[test]
fn nightly_notifies_failure_recovery_and_regression_by_webhook_and_command() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
pipeline: watched
params: { acc: 0.9, fail: 0 }
notify:
  webhook: { url_env: TEST_WEBHOOK_URL, headers_env: { X-Token: TEST_WEBHOOK_TOKEN } }
  command: cat > notice-$DROVER_NOTIFY_EVENT.json
stages:
  m:
    op: command
    with:
      run: "test ${params.fail} = 0 || { echo 'boom: the data is gone'; exit 1; }; printf 'accuracy\n${params.acc}\n' > ${out.out}"
    out: { out: { type: table, format: csv } }
    metrics: { columns: [accuracy], fail_if: ["accuracy < -0.01"] }
"#,
    );
    let (url, received) = webhook_server();
    let token = "tok-3f9a7c21e5";
    let nightly = |args: &[&str]| {
        let mut all = vec!["nightly", "n1"];
        all.extend_from_slice(args);
        let out = p.cmd(&all).env("TEST_WEBHOOK_URL", &url).env("TEST_WEBHOOK_TOKEN", token).output().unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();

    // A first good night says nothing.
    assert_eq!(nightly(&[]).0, 0);
    assert!(received.try_recv().is_err(), "nothing to notify");

    // A failure.
    let (code, stderr) = nightly(&["--set", "fail=1"]);
    assert_eq!(code, 1, "{stderr}");
    let failure = received.try_recv().expect("a failure notice");
    let run_id = records(&p)[1]["id"].as_str().unwrap().to_string();
    assert!(failure.head.starts_with("POST /hook HTTP/1.1\r\n"), "{}", failure.head);
    assert!(failure.head.to_ascii_lowercase().contains(&format!("x-token: {token}\r\n")), "{}", failure.head);
    assert!(failure.head.to_ascii_lowercase().contains("content-type: application/json\r\n"), "{}", failure.head);
    let text = failure.body["text"].as_str().unwrap();
    let head = format!(
        "drover: `watched` failed (nightly `n1` on {host}, run {run_id}): 1 of 1 stage failed: `m`: command exited with status 1"
    );
    assert!(text.starts_with(&head), "{text}");
    assert_eq!(failure.body["event"], "failure");
    assert_eq!(failure.body["run"]["status"], "failed");
    assert_eq!(failure.body["run"]["trigger"], "nightly");
    assert_eq!(failure.body["failed"][0]["stage"], "m");
    // The command got the same JSON.
    let by_command: Value = serde_json::from_str(&p.read("notice-failure.json")).unwrap();
    assert_eq!(by_command, failure.body);

    // The next good night is a recovery (m is cached from the first night: same metrics).
    let (code, stderr) = nightly(&[]);
    assert_eq!(code, 0, "{stderr}");
    let recovery = received.try_recv().expect("a recovery notice");
    let recovered_id = records(&p)[2]["id"].as_str().unwrap().to_string();
    assert_eq!(
        recovery.body["text"],
        format!(
            "drover: `watched` recovered (nightly `n1` on {host}, run {recovered_id}): all 1 stage ok after the failed run {run_id}"
        )
    );
    assert_eq!(recovery.body["previous_run"]["id"], run_id.as_str());
    assert!(received.try_recv().is_err(), "one notice");

    // A regression past the pipeline's own threshold: exit 4.
    let (code, stderr) = nightly(&["--set", "acc=0.8"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "regression: m.accuracy changed by -0.1 (-11.11%), crossing `m.accuracy < -0.01` (against run {recovered_id})"
        )),
        "{stderr}"
    );
    let regression = received.try_recv().expect("a regression notice");
    assert_eq!(regression.body["event"], "regression");
    assert_eq!(regression.body["regressions"][0]["metric"], "m.accuracy");
    assert_eq!(regression.body["regressions"][0]["baseline"], 0.9);
    assert_eq!(regression.body["regressions"][0]["current"], 0.8);
    assert!(
        regression.body["text"]
            .as_str()
            .unwrap()
            .ends_with("m.accuracy changed by -0.1 (-11.11%), crossing `m.accuracy < -0.01`")
    );
    assert!(p.read_opt("notice-regression.json").is_some());

    // Secrets went by name only: neither the URL nor the token is anywhere in the store.
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap().to_string();
    for entry in walk(&p.join(".drover")) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(token) && !text.contains(&format!("127.0.0.1:{port}")), "{}", entry.display());
    }
}

#[test]
fn a_webhook_that_cannot_be_reached_is_a_warning_and_the_exit_code_stays_the_runs() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
notify: { webhook: { url_env: TEST_WEBHOOK_URL } }
stages:
  m: { op: command, with: { run: "exit 1" }, out: { out: blob } }
"#,
    );
    // A port nothing listens on: bind one, then let it go.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = p.cmd(&["nightly", "n"]).env("TEST_WEBHOOK_URL", format!("http://127.0.0.1:{port}/")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("warning: notify (failure): webhook: POST to $TEST_WEBHOOK_URL failed: "), "{stderr}");
    assert!(!stderr.contains(&port.to_string()), "the URL is a secret: {stderr}");
    let unset = p.cmd(&["nightly", "n"]).env_remove("TEST_WEBHOOK_URL").output().unwrap();
    let stderr = String::from_utf8_lossy(&unset.stderr);
    assert!(
        stderr.contains("warning: notify (failure): webhook: $TEST_WEBHOOK_URL is not set (export it, or put it in the schedule's --env-file)"),
        "{stderr}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn gc_keep_runs_keeps_exactly_what_the_kept_runs_need() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
params: { x: 3 }
stages:
  a:
    op: command
    with: { run: "echo ${params.x} > ${out.out}" }
    out: { out: blob }
"#,
    );
    for x in ["1", "2", "3"] {
        p.drover(&["run", "--set", &format!("x={x}")]).expect_code(0);
    }
    let ids: Vec<String> = records(&p).iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert!(p.join(&format!(".drover/logs/{}", ids[0])).is_dir());

    let dry = p.drover(&["gc", "--keep-runs", "2", "--dry-run"]);
    dry.expect_code(0);
    assert!(dry.stdout.starts_with("would remove 1 run records and 1 run logs\n"), "{}", dry.stdout);
    assert_eq!(records(&p).len(), 3);

    let gc = p.drover(&["gc", "--keep-runs", "2"]);
    gc.expect_code(0);
    let lines: Vec<&str> = gc.stdout.lines().collect();
    assert_eq!(lines[0], "removed 1 run records and 1 run logs");
    // Key leases are removed by their holders when released: none is left to collect.
    assert_eq!(
        lines[1],
        "removed 1 objects (2 bytes), 1 records, 0 scratch entries, 0 unused lock files; kept 2 objects"
    );
    let kept: Vec<String> = records(&p).iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(kept, ids[1..]);
    assert!(!p.join(&format!(".drover/logs/{}", ids[0])).exists());
    // What the kept runs made is still cached; what only the pruned run made is not.
    assert_eq!(p.plan(&["--set", "x=2"])[0].1, "cached");
    assert_eq!(p.plan(&["--set", "x=3"])[0].1, "cached");
    assert_eq!(p.plan(&["--set", "x=1"])[0], ("a".into(), "run".into(), vec!["param `x` changed from 3 to 1".into()]));

    // Days: every run is younger than a day, so all are kept.
    let days = p.drover(&["gc", "--keep-days", "1"]);
    assert!(days.stdout.starts_with("removed 0 run records and 0 run logs\n"), "{}", days.stdout);
    let bad = p.drover(&["gc", "--keep-runs", "two"]);
    bad.expect_code(2);
}
