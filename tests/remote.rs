//! The team cache end to end: `remote:`, `drover push` and `drover pull` against a real
//! S3-compatible server (SeaweedFS on loopback from `tests/support/s3-server.sh start DIR`,
//! whose `export` lines set `DROVER_TEST_S3_*`). In CI (`CI` or `DROVER_REQUIRE_S3` set) the
//! tests that need the server fail without it; elsewhere they say they did not run. Each test
//! uses a prefix of its own in the one bucket.

mod common;

use common::Project;

const PIPELINE: &str = r#"
stages:
  gen:
    op: command
    with: { run: "echo gen >> calls.log; echo 'rows from gen' > ${out.out}" }
    out: { out: blob }
  double:
    op: command
    in: { x: gen }
    with: { run: "echo double >> calls.log; cat ${in.x} ${in.x} > ${out.out}" }
    out: { out: blob }
"#;

#[path = "support/s3_env.rs"]
mod s3_env;

use s3_env::TestS3 as S3;

fn server() -> Option<S3> {
    s3_env::test_s3()
}

trait Drover {
    fn remote(&self) -> String;
    fn drover(&self, p: &Project, remote: &str, secret: &str, args: &[&str]) -> common::Output;
}

impl Drover for S3 {
    /// `--remote` for a prefix of the test's own.
    fn remote(&self) -> String {
        self.fresh_remote("e2e").to_string()
    }

    /// `drover ARGS` with these credentials and `--remote REMOTE`.
    fn drover(&self, p: &Project, remote: &str, secret: &str, args: &[&str]) -> common::Output {
        let out = p
            .cmd(args)
            .args(["--remote", remote])
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .expect("run drover");
        common::Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A fresh remote and two checkouts of the pipeline ("two machines"), the first one run.
fn two_checkouts(s: &S3) -> (String, Project, Project) {
    let (a, b) = (Project::new(), Project::new());
    a.write("drover.yaml", PIPELINE);
    b.write("drover.yaml", PIPELINE);
    a.drover(&["run"]).expect_code(0);
    assert_eq!(a.read("calls.log"), "gen\ndouble\n");
    (s.remote(), a, b)
}

#[test]
fn stages_pushed_from_one_checkout_are_pulled_by_another_and_not_recomputed() {
    let Some(s) = server() else { return };
    let (remote, a, b) = two_checkouts(&s);

    let out = s.drover(&a, &remote, &s.secret, &["push"]);
    out.expect_code(0);
    assert!(out.stdout.contains("pushed 2 stages (2 objects, 42 bytes) to s3://"), "{}", out.stdout);
    let again = s.drover(&a, &remote, &s.secret, &["push"]);
    again.expect_code(0);
    assert!(again.stdout.contains("pushed 0 stages (0 objects, 0 bytes) to s3://"), "{}", again.stdout);
    assert!(again.stdout.ends_with("; 2 already there; 0 not computed here\n"), "{}", again.stdout);

    let pulled = s.drover(&b, &remote, &s.secret, &["pull"]);
    pulled.expect_code(0);
    assert!(
        pulled.stdout.contains("pulled gen: 1 objects, 14 bytes\npulled double: 1 objects, 28 bytes\n"),
        "{}",
        pulled.stdout
    );
    assert!(pulled.stdout.ends_with("; 0 not on the remote\n"), "{}", pulled.stdout);
    b.drover(&["run"]).expect_code(0);
    assert_eq!(b.read_opt("calls.log"), None, "a pulled stage ran again");
    let plan = b.plan(&[]);
    assert!(plan.iter().all(|(_, action, _)| action == "cached"), "{plan:?}");
}

#[test]
fn pull_with_a_target_brings_only_that_stage_and_what_it_needs() {
    let Some(s) = server() else { return };
    let (remote, a, b) = two_checkouts(&s);
    s.drover(&a, &remote, &s.secret, &["push"]).expect_code(0);
    let out = s.drover(&b, &remote, &s.secret, &["pull", "--target", "gen"]);
    out.expect_code(0);
    assert!(out.stdout.starts_with("pulled gen: 1 objects, 14 bytes\npulled 1 stages"), "{}", out.stdout);
    let plan = b.plan(&[]);
    let actions: Vec<(&str, &str)> = plan.iter().map(|(s, a, _)| (s.as_str(), a.as_str())).collect();
    assert_eq!(actions, [("gen", "cached"), ("double", "run")]);
}

#[test]
fn a_wrong_secret_fails_with_exit_3_and_is_never_printed() {
    let Some(s) = server() else { return };
    let p = Project::new();
    p.write("drover.yaml", PIPELINE);
    p.drover(&["run"]).expect_code(0);
    let secret = "not-the-secret-4d1f";
    let out = s.drover(&p, &s.remote(), secret, &["push"]);
    out.expect_code(3);
    assert!(out.stderr.contains("remote probe "), "{}", out.stderr);
    assert!(!out.all().contains(secret) && !out.all().contains(&s.secret), "{}", out.all());
}

#[test]
fn push_without_a_remote_says_how_to_configure_one() {
    let p = Project::new();
    p.write("drover.yaml", PIPELINE);
    let out = p.drover(&["push"]);
    out.expect_code(2);
    let text = out.unwrapped();
    assert!(text.contains("drover.yaml: no remote configured"), "{text}");
    assert!(
        text.contains(
            "help: add `remote: { url: s3://BUCKET/PREFIX }` to the pipeline, or pass `--remote s3://BUCKET/PREFIX`"
        ),
        "{text}"
    );
}

#[test]
fn a_malformed_remote_section_is_reported_in_the_file() {
    let p = Project::new();
    p.write("drover.yaml", &format!("remote: {{ url: gs://team/cache }}\n{PIPELINE}"));
    let out = p.drover(&["validate"]);
    out.expect_code(2);
    let text = out.unwrapped();
    assert!(text.contains("expected a URL that starts with `s3://`"), "{text}");
    p.write("drover.yaml", &format!("remote: {{ url: s3://team/cache, endpoint: http://10.0.0.5:8333 }}\n{PIPELINE}"));
    let text = p.drover(&["validate"]).expect_code(2).unwrapped();
    assert!(text.contains("a plain-HTTP endpoint sends objects unencrypted; it needs `allow_http: true`"), "{text}");
    p.write("drover.yaml", &format!("remote: {{ url: s3://team/cache, region: eu-west-1 }}\n{PIPELINE}"));
    p.drover(&["validate"]).expect_code(0);
    // The short form, a bare URL; and what is neither.
    p.write("drover.yaml", &format!("remote: s3://team/cache\n{PIPELINE}"));
    p.drover(&["validate"]).expect_code(0);
    p.write("drover.yaml", &format!("remote: gs://team/cache\n{PIPELINE}"));
    let text = p.drover(&["validate"]).expect_code(2).unwrapped();
    assert!(text.contains("expected a URL that starts with `s3://`"), "{text}");
    p.write("drover.yaml", &format!("remote: 42\n{PIPELINE}"));
    let text = p.drover(&["validate"]).expect_code(2).unwrapped();
    assert!(
        text.contains(
            "`remote` must be `s3://BUCKET/PREFIX`, or a mapping with `url:` and the server's settings; found"
        ),
        "{text}"
    );
}

#[test]
fn plan_says_which_stages_the_remote_has() {
    let Some(s) = server() else { return };
    let (remote, a, b) = two_checkouts(&s);
    s.drover(&a, &remote, &s.secret, &["push"]).expect_code(0);
    let url = serde_json::from_str::<serde_json::Value>(&remote).unwrap()["url"].as_str().unwrap().to_string();
    let out = s.drover(&b, &remote, &s.secret, &["plan"]);
    out.expect_code(0);
    // `double`'s key needs `gen`'s output, which only a fetch brings: it is not asked about.
    assert!(out.stdout.starts_with("remote  gen"), "{}", out.stdout);
    assert!(out.stdout.contains("\nrun     double"), "{}", out.stdout);
    assert!(
        out.stdout.ends_with(&format!("1 to run, 0 cached, 1 on remote {url} (`drover pull` or a run fetches them)\n")),
        "{}",
        out.stdout
    );
    let out = s.drover(&b, &remote, &s.secret, &["plan", "--json"]);
    let first: serde_json::Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["stage"].as_str(), first["action"].as_str(), first["remote"].as_bool()),
        (Some("gen"), Some("run"), Some(true))
    );
    assert_eq!(b.read_opt("calls.log"), None, "plan ran something");
}

#[test]
fn a_run_with_a_remote_pushes_what_it_computed_and_another_machine_s_run_recomputes_nothing() {
    let Some(s) = server() else { return };
    let remote = s.remote();
    let (a, b) = (Project::new(), Project::new());
    a.write("drover.yaml", PIPELINE);
    b.write("drover.yaml", PIPELINE);
    let out = s.drover(&a, &remote, &s.secret, &["run"]);
    out.expect_code(0);
    assert_eq!(a.read("calls.log"), "gen\ndouble\n");
    let url = serde_json::from_str::<serde_json::Value>(&remote).unwrap()["url"].as_str().unwrap().to_string();
    assert!(out.stderr.contains(&format!("remote {url}: 0 stage(s) fetched, 2 pushed\n")), "{}", out.stderr);
    let out = s.drover(&b, &remote, &s.secret, &["run"]);
    out.expect_code(0);
    assert_eq!(b.read_opt("calls.log"), None, "a stage on the remote ran again");
    assert!(out.stderr.contains("  cached  gen (remote)\n  cached  double (remote)\n"), "{}", out.stderr);
    assert!(out.stderr.contains("2 stages: 0 ran, 2 cached (2 remote)"), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("remote {url}: 2 stage(s) fetched, 0 pushed\n")), "{}", out.stderr);
    // Fetched, the outputs are this store's own: a run without the remote finds them cached.
    b.drover(&["run"]).expect_code(0);
    assert_eq!(b.read_opt("calls.log"), None);
}

/// A stage that must run here (its command changed) but makes the same bytes gives its
/// dependent the key someone else computed: found on the remote as the run reaches it, which
/// no pull before the run could know.
#[test]
fn a_stage_downstream_of_one_computed_here_is_still_found_on_the_remote() {
    let Some(s) = server() else { return };
    let remote = s.remote();
    let (a, b) = (Project::new(), Project::new());
    a.write("drover.yaml", PIPELINE);
    b.write("drover.yaml", &PIPELINE.replace("echo gen >> calls.log", "echo gen-v2 >> calls.log"));
    s.drover(&a, &remote, &s.secret, &["run"]).expect_code(0);
    let out = s.drover(&b, &remote, &s.secret, &["run"]);
    out.expect_code(0);
    assert_eq!(b.read("calls.log"), "gen-v2\n", "double ran here: {}", out.stderr);
    assert!(out.stderr.contains("  cached  double (remote)\n"), "{}", out.stderr);
    assert!(out.stderr.contains("2 stages: 1 ran, 1 cached (1 remote)"), "{}", out.stderr);
}

#[test]
fn remote_required_fails_with_exit_3_when_the_remote_cannot_be_used_and_2_when_there_is_none() {
    let Some(s) = server() else { return };
    let p = Project::new();
    p.write("drover.yaml", PIPELINE);
    let remote = r#"{"url": "s3://drover/e2e/nowhere", "endpoint": "http://127.0.0.1:9", "allow_http": true}"#;
    let out = s.drover(&p, remote, &s.secret, &["run", "--remote-required"]);
    out.expect_code(3);
    assert!(
        out.stderr.contains(
            "remote s3://drover/e2e/nowhere is required (--remote-required) and cannot be used: remote probe "
        ),
        "{}",
        out.stderr
    );
    assert_eq!(p.read_opt("calls.log"), None, "a stage ran although the remote was required");
    let out = p.drover(&["run", "--remote-required"]);
    out.expect_code(2);
    assert!(out.stderr.contains("--remote-required: "), "{}", out.stderr);
    assert!(out.stderr.contains("has no remote configured"), "{}", out.stderr);
    assert_eq!(p.read_opt("calls.log"), None);
}

#[test]
fn an_unreachable_remote_does_not_stop_a_run() {
    let Some(s) = server() else { return };
    let p = Project::new();
    p.write("drover.yaml", PIPELINE);
    // Port 9 (discard) on loopback: nothing listens there.
    let remote = r#"{"url": "s3://drover/e2e/nowhere", "endpoint": "http://127.0.0.1:9", "allow_http": true}"#;
    let out = s.drover(&p, remote, &s.secret, &["run"]);
    out.expect_code(0);
    assert_eq!(
        out.stderr.matches("note: remote s3://drover/e2e/nowhere not used: remote probe ").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("; running locally\n"), "{}", out.stderr);
    assert_eq!(p.read("calls.log"), "gen\ndouble\n");
}

/// `gc --remote` previews unless told `--yes`, keeps everything younger than `--grace` and
/// every record the store running it holds; what it deletes is gone for every machine, and
/// what it keeps still answers.
#[test]
fn gc_on_the_remote_previews_keeps_the_young_and_the_known_and_deletes_only_with_yes() {
    let Some(s) = server() else { return };
    let remote = s.remote();
    let url = serde_json::from_str::<serde_json::Value>(&remote).unwrap()["url"].as_str().unwrap().to_string();
    let other_pipeline = "stages:\n  other:\n    op: command\n    with: { run: \"echo other >> calls.log; echo other > ${out.out}\" }\n    out: { out: blob }\n";
    let (a, c) = (Project::new(), Project::new());
    a.write("drover.yaml", PIPELINE);
    c.write("drover.yaml", other_pipeline);
    s.drover(&a, &remote, &s.secret, &["run"]).expect_code(0);
    s.drover(&c, &remote, &s.secret, &["run"]).expect_code(0);

    let out = s.drover(&a, &remote, &s.secret, &["gc"]);
    out.expect_code(0);
    assert_eq!(
        out.stdout,
        format!(
            "would delete 0 records and 0 objects (0 bytes) from {url}; kept 3 records and 3 objects (younger than 7d, or known here)\n\
             nothing deleted: this was a preview; `drover gc --remote --yes` deletes\n"
        )
    );
    // Past the grace period, only `other` (which this store never held) would go.
    let out = s.drover(&a, &remote, &s.secret, &["gc", "--grace", "0s"]);
    out.expect_code(0);
    assert!(out.stdout.starts_with("would delete 1 records and 1 objects (6 bytes) from "), "{}", out.stdout);
    let d = Project::new();
    d.write("drover.yaml", other_pipeline);
    assert!(s.drover(&d, &remote, &s.secret, &["plan"]).stdout.starts_with("remote  other"), "the preview deleted");

    let out = s.drover(&a, &remote, &s.secret, &["gc", "--grace", "0s", "--yes"]);
    out.expect_code(0);
    assert!(out.stdout.starts_with("deleted 1 records and 1 objects (6 bytes) from "), "{}", out.stdout);
    assert!(!out.stdout.contains("preview"), "{}", out.stdout);
    let plan = s.drover(&d, &remote, &s.secret, &["plan"]);
    assert!(plan.stdout.starts_with("run     other"), "{}", plan.stdout);
    // What `a` holds stays, whole: another checkout of it computes nothing.
    let b = Project::new();
    b.write("drover.yaml", PIPELINE);
    let out = s.drover(&b, &remote, &s.secret, &["run"]);
    out.expect_code(0);
    assert_eq!(b.read_opt("calls.log"), None, "{}", out.stderr);
}

/// `DROVER_REMOTE` in the environment never turns a local `gc` into one on the shared remote:
/// that takes `--remote` on the command line.
#[test]
fn gc_with_drover_remote_in_the_environment_stays_local_and_a_bad_grace_is_refused() {
    let Some(s) = server() else { return };
    let p = Project::new();
    p.write("drover.yaml", PIPELINE);
    p.drover(&["run"]).expect_code(0);
    let out = p
        .cmd(&["gc", "--dry-run"])
        .env("DROVER_REMOTE", s.remote())
        .env("AWS_ACCESS_KEY_ID", &s.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s.secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("would remove 0 objects (0 bytes), 0 records"), "{stdout}");
    let out = p.drover(&["gc", "--remote", "--grace", "a week"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("`a week` is not an age: write a number and a unit, d, h, m or s (`7d`, `36h`)"),
        "{}",
        out.stderr
    );
}

/// `tests/support/s3_proxy.py` in front of the test server: counts requests, and answers the
/// first `fail` with 503 SlowDown (a fault of the server's, injected: a mock, named so).
struct Proxy {
    child: std::process::Child,
    port: u16,
}

impl Proxy {
    fn start(s: &S3, fail: u32) -> Proxy {
        Proxy::start_with(s, fail, &[])
    }

    fn start_with(s: &S3, fail: u32, extra: &[&str]) -> Proxy {
        Proxy::start_on(s, 0, fail, extra)
    }

    fn start_on(s: &S3, port: u16, fail: u32, extra: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/s3_proxy.py");
        let child = std::process::Command::new("python3")
            .args([script, "--upstream", &s.endpoint, "--port-file"])
            .arg(&port_file)
            .args(["--fail", &fail.to_string(), "--port", &port.to_string()])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("start python3");
        let port = (0..200)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse().ok())
            })
            .expect("the proxy did not start");
        Proxy { child, port }
    }

    /// `--remote` through the proxy, for `remote`'s prefix.
    fn remote(&self, remote: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(remote).unwrap();
        v["endpoint"] = format!("http://127.0.0.1:{}", self.port).into();
        v.to_string()
    }

    /// The counters so far; `reset` zeroes them after.
    fn stats(&self, reset: bool) -> serde_json::Value {
        let path = if reset { "/_proxy/reset" } else { "/_proxy/stats" };
        let method = if reset { "POST" } else { "GET" };
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        use std::io::{Read, Write};
        write!(stream, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 503s from the server are retried with backoff: a run through a server that refuses its
/// first requests still pushes everything, and another machine's run finds it all with one
/// GET per record and one per object (and one listing of memo packs), nothing more.
#[test]
fn server_errors_are_retried_and_a_cold_fetch_costs_one_get_per_record_and_object() {
    let Some(s) = server() else { return };
    let proxy = Proxy::start(&s, 3);
    let remote = proxy.remote(&s.remote());
    let (a, b) = (Project::new(), Project::new());
    a.write("drover.yaml", PIPELINE);
    b.write("drover.yaml", PIPELINE);
    let out = s.drover(&a, &remote, &s.secret, &["run"]);
    out.expect_code(0);
    assert!(out.stderr.contains(" 0 stage(s) fetched, 2 pushed\n"), "{}", out.stderr);
    assert_eq!(proxy.stats(false)["faulted"], 3);
    proxy.stats(true);
    let out = s.drover(&b, &remote, &s.secret, &["run"]);
    out.expect_code(0);
    assert!(out.stderr.contains("2 stages: 0 ran, 2 cached (2 remote)"), "{}", out.stderr);
    assert_eq!(b.read_opt("calls.log"), None);
    // The connect probe is one HEAD, two PUTs and a DELETE; then one listing and four GETs.
    let stats = proxy.stats(false);
    assert_eq!(stats["by_method"]["GET"], 5, "{stats}");
    assert_eq!(stats["requests"], 9, "{stats}");
}

/// `plan` and `pull` only read: no probe, no write; and a cold pull costs exactly one GET per
/// record and one per object.
#[test]
fn plan_and_pull_only_read_and_a_cold_pull_costs_one_get_per_record_and_object() {
    let Some(s) = server() else { return };
    let (remote, a, b) = two_checkouts(&s);
    s.drover(&a, &remote, &s.secret, &["push"]).expect_code(0);
    let proxy = Proxy::start(&s, 0);
    let through = proxy.remote(&remote);
    s.drover(&b, &through, &s.secret, &["plan"]).expect_code(0);
    // One HEAD: `gen`'s record (`double`'s key needs `gen`'s output, so it is not asked about).
    let stats = proxy.stats(true);
    assert_eq!(stats["by_method"], serde_json::json!({"HEAD": 1}), "{stats}");
    let out = s.drover(&b, &through, &s.secret, &["pull"]);
    out.expect_code(0);
    assert!(out.stdout.contains("pulled 2 stages (2 objects, 42 bytes)"), "{}", out.stdout);
    let stats = proxy.stats(false);
    assert_eq!(stats["by_method"], serde_json::json!({"GET": 4}), "{stats}");
}

/// A server that ignores `If-None-Match` (here the proxy turns its 412s into 200s: a mock of
/// such a server, named so) could let two machines both store a record for one key: drover finds out at
/// connect time, says so once, and only reads from it; the run itself goes on.
#[test]
fn a_server_that_ignores_conditional_creates_is_only_read_from() {
    let Some(s) = server() else { return };
    let proxy = Proxy::start_with(&s, 0, &["--ignore-conditions"]);
    let remote = s.remote();
    let through = proxy.remote(&remote);
    let p = Project::new();
    p.write("drover.yaml", PIPELINE);
    let out = s.drover(&p, &through, &s.secret, &["run"]);
    out.expect_code(0);
    assert_eq!(
        out.stderr.matches("is read-only: the server does not honour conditional creates").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(": 0 stage(s) fetched, 0 pushed\n"), "{}", out.stderr);
    assert_eq!(p.read("calls.log"), "gen\ndouble\n");
    // Nothing reached the remote: another machine finds nothing there.
    let q = Project::new();
    q.write("drover.yaml", PIPELINE);
    assert!(s.drover(&q, &remote, &s.secret, &["plan"]).stdout.starts_with("run     gen"));
}

/// A push that fails (the remote went away while the run went on) never fails the stage, and
/// the next run sends what was left: the proxy is killed by the first stage's own command, with
/// SIGKILL (on SIGTERM it would go on serving for up to half a second while it shuts down, long
/// enough to take the pushes the test expects to fail).
#[test]
fn stages_a_run_could_not_push_are_pushed_by_the_next_run() {
    let Some(s) = server() else { return };
    let proxy = Proxy::start(&s, 0);
    let remote = s.remote();
    let through = proxy.remote(&remote);
    let port = proxy.port;
    let kill = format!("kill -9 {}", proxy.child.id());
    let p = Project::new();
    p.write("drover.yaml", &PIPELINE.replace("echo gen >> calls.log;", &format!("echo gen >> calls.log; {kill};")));
    let out = s.drover(&p, &through, &s.secret, &["run"]);
    out.expect_code(0);
    assert!(out.stderr.contains(": 0 stage(s) fetched, 0 pushed\n"), "{}", out.stderr);
    assert!(out.stderr.contains("note: a push to remote "), "{}", out.stderr);
    assert!(out.stderr.contains("; the next run (or `drover push`) sends it\n"), "{}", out.stderr);
    assert_eq!(p.read("calls.log"), "gen\ndouble\n");
    drop(proxy);

    // The remote is back (the same endpoint): the next run, with nothing to compute, sends both.
    let _back = Proxy::start_on(&s, port, 0, &[]);
    let out = s.drover(&p, &through, &s.secret, &["run"]);
    out.expect_code(0);
    assert!(out.stderr.contains("note: pushed 2 stage(s) an earlier run left unpushed\n"), "{}", out.stderr);
    let q = Project::new();
    q.write("drover.yaml", &p.read("drover.yaml"));
    let out = s.drover(&q, &remote, &s.secret, &["run"]);
    out.expect_code(0);
    assert!(out.stderr.contains("2 stages: 0 ran, 2 cached (2 remote)"), "{}", out.stderr);
}
