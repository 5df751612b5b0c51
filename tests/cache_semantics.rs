//! End-to-end tests of what the cache promises: early cutoff, reasons in words, failed stages
//! store nothing, crash safety under `kill -9`, and two concurrent runs sharing one store.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Project;

/// Lines of a log file the pipeline's commands append to (side effects outside the store, so
/// a test can count which stages really ran).
fn calls(p: &Project) -> Vec<String> {
    std::fs::read_to_string(p.join("calls.log")).unwrap_or_default().lines().map(str::to_string).collect()
}

fn count(lines: &[String], what: &str) -> usize {
    lines.iter().filter(|l| *l == what).count()
}

/// salsa's test, with a logging command: x goes from 22 to 23, `half` yields 11 both times,
/// and `use_half` does not rerun.
#[test]
fn early_cutoff_keeps_downstream_cached_when_output_is_identical() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
pipeline: cutoff
params: { x: 22 }
stages:
  half:
    op: command
    with: { run: "echo half >> calls.log; echo $(( ${params.x} / 2 )) > ${out.out}" }
    out: { out: blob }
  use_half:
    op: command
    in: { h: half }
    with: { run: "echo use_half >> calls.log; cat ${in.h} > ${out.out}" }
    out: { out: blob }
"#,
    );
    p.drover(&["run"]).expect_code(0);
    assert_eq!(calls(&p), ["half", "use_half"]);

    let plan = p.plan(&["--set", "x=23"]);
    assert_eq!(plan[0].1, "run");
    assert_eq!(plan[0].2, ["param `x` changed from 22 to 23"]);

    let out = p.drover(&["run", "--set", "x=23"]);
    out.expect_code(0);
    assert_eq!(calls(&p), ["half", "use_half", "half"], "use_half must not rerun: its input is unchanged");
    assert!(out.stderr.contains("1 ran, 1 cached"), "{}", out.stderr);

    // A real change reaches downstream.
    p.drover(&["run", "--set", "x=30"]).expect_code(0);
    assert_eq!(calls(&p), ["half", "use_half", "half", "half", "use_half"]);
}

#[test]
fn plan_says_why_in_words() {
    let p = Project::new();
    p.write("scripts/step.sh", "echo step\n");
    p.write(
        "drover.yaml",
        r#"
pipeline: why
params: { p0001: 1, p0002: 2 }
stages:
  s0001:
    op: command
    with: { run: "echo ${params.p0001} > ${out.out}" }
    out: { out: blob }
  s0002:
    op: command
    in: { prev: s0001 }
    deps: [scripts/step.sh]
    with: { run: "cat ${in.prev} > ${out.out} && echo ${params.p0002} >> ${out.out}" }
    out: { out: blob }
"#,
    );
    let plan = p.plan(&[]);
    assert_eq!(plan[0], ("s0001".into(), "run".into(), vec!["never run".to_string()]));
    assert_eq!(plan[1].1, "run");
    assert!(plan[1].2[0].starts_with("upstream `s0001` will run first"), "{plan:?}");

    p.drover(&["run"]).expect_code(0);
    let plan = p.plan(&[]);
    assert!(plan.iter().all(|(_, action, reasons)| action == "cached" && reasons.is_empty()), "{plan:?}");

    p.write("scripts/step.sh", "echo step two\n");
    assert_eq!(p.plan(&[])[1].2, ["dep file `scripts/step.sh` changed"]);
    p.drover(&["run"]).expect_code(0);

    assert_eq!(p.plan(&["--force", "s0002"])[1].2, ["forced"]);
    assert_eq!(p.plan(&["--set", "p0002=3"])[1].2, ["param `p0002` changed from 2 to 3"]);

    // An input change is named as such once the upstream has rerun.
    p.drover(&["run", "--set", "p0001=5", "--target", "s0001"]).expect_code(0);
    let plan = p.plan(&["--set", "p0001=5"]);
    assert_eq!(plan[0].1, "cached");
    assert_eq!(plan[1].2, ["input `prev` changed"]);

    // The human-readable plan says the same.
    let out = p.drover(&["plan", "--set", "p0001=5"]);
    assert!(out.stdout.contains("run     s0002  input `prev` changed"), "{}", out.stdout);
    assert!(out.stdout.contains("1 to run, 1 cached"), "{}", out.stdout);
}

#[test]
fn a_failed_stage_stores_nothing_and_reruns() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
stages:
  flaky:
    op: command
    with: { run: "echo partial > ${out.out}; test -f ok" }
    out: { out: blob }
"#,
    );
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains("FAILED  flaky"), "{}", out.stderr);
    let records = walk(&p.join(".drover/records"));
    assert!(records.is_empty(), "a failed stage wrote a record: {records:?}");
    assert_eq!(p.plan(&[])[0].2, ["never run"]);
    p.write("ok", "");
    p.drover(&["run"]).expect_code(0);
    assert_eq!(walk(&p.join(".drover/records")).len(), 1);
}

/// Every file under a directory.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn chain(n: usize, body: &str) -> String {
    let mut y = String::from("pipeline: chain\nstages:\n");
    for i in 1..=n {
        let input = if i > 1 { format!("    in: {{ prev: s{:02} }}\n", i - 1) } else { String::new() };
        let prev = if i > 1 { "cat ${in.prev} > ${out.out}; " } else { "" };
        let body = body.replace("NAME", &format!("s{i:02}"));
        y.push_str(&format!(
            "  s{i:02}:\n    op: command\n{input}    with: {{ run: \"{prev}{body}; echo s{i:02} >> ${{out.out}}\" }}\n    out: {{ out: blob }}\n"
        ));
    }
    y
}

/// When a `kill -9` comes: a time after the start, or once the log shows that N commands began
/// (stage N begins only after stages 1..N-1 are recorded, so N-1 stages have finished).
#[derive(Clone, Copy, Debug)]
enum KillAt {
    Ms(u64),
    Began(usize),
}

/// `kill -9` at several moments of a run: each time `cache verify` accepts the store, and the
/// next run finishes the work, redoing no stage that had finished.
#[test]
fn kill_9_at_any_moment_leaves_a_store_that_verifies_and_resumes() {
    const STAGES: usize = 12;
    let moments = [0, 15, 40, 80, 150, 300].map(KillAt::Ms).into_iter().chain([2, 6, 11].map(KillAt::Began));
    // How many stages each kill found finished.
    let mut finished_at_kill = Vec::new();
    for at in moments {
        let p = Project::new();
        p.write("drover.yaml", &chain(STAGES, "echo NAME >> calls.log; sleep 0.02"));
        let mut child = p.cmd(&["run", "-j", "2"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        match at {
            KillAt::Ms(ms) => std::thread::sleep(Duration::from_millis(ms)),
            KillAt::Began(n) => {
                common::wait_for(&format!("{n} commands to begin"), || (calls(&p).len() >= n).then_some(()))
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let verify = p.drover(&["cache", "verify"]);
        verify.expect_code(0);
        assert!(verify.stdout.contains("store is consistent"), "{}", verify.stdout);

        let before = calls(&p);
        let plan = p.plan(&[]);
        let cached: Vec<&String> = plan.iter().filter(|s| s.1 == "cached").map(|s| &s.0).collect();
        if let KillAt::Began(n) = at {
            assert!(cached.len() >= n - 1, "{n} commands had begun, so {} stages had finished: {plan:?}", n - 1);
        }
        finished_at_kill.push(cached.len());
        p.drover(&["run"]).expect_code(0);
        let after = calls(&p);
        // Stages recorded as done before the kill are not run again.
        for stage in &cached {
            assert_eq!(count(&after, stage), count(&before, stage), "{stage} reran after kill at {at:?}");
        }
        let last = p.drover(&["show", "s12"]);
        last.expect_code(0);
        assert!(last.stdout.contains("s01") && last.stdout.contains("s12"), "{}", last.stdout);
    }
    // Not vacuous: some kill came after a stage had finished (so "not run again" was checked),
    // and some came before the end (so the next run had work left).
    assert!(finished_at_kill.iter().any(|&n| n > 0), "no kill came after a stage finished: {finished_at_kill:?}");
    assert!(finished_at_kill.iter().any(|&n| n < STAGES), "every kill came after the run: {finished_at_kill:?}");
}

/// A stage killed mid-command: its partial output is never presented as done.
#[test]
fn kill_9_during_a_stage_does_not_store_its_partial_output() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
stages:
  slow:
    op: command
    with: { run: "echo partial > ${out.out}; echo $$ > started; sleep 30; echo done >> ${out.out}" }
    out: { out: blob }
"#,
    );
    let mut child = p.cmd(&["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    common::wait_for("the command's `started` file", || p.join("started").exists().then_some(()));
    // The file exists once `echo` has run; give `sh` a moment to finish writing the pid.
    let pid = common::wait_for("the command's pid in `started`", || p.read("started").trim().parse::<i32>().ok());
    child.kill().unwrap();
    child.wait().unwrap();
    // The command dies with drover (its supervisor kills the group).
    common::wait_for("the command to die with drover", || (!common::alive(pid)).then_some(()));
    p.drover(&["cache", "verify"]).expect_code(0);
    assert_eq!(p.plan(&[])[0].1, "run");
    assert!(walk(&p.join(".drover/records")).is_empty());
}

/// Two `drover run`s on the same pipeline and store at once: both succeed, and no key is
/// computed twice.
#[test]
fn two_concurrent_runs_share_the_store_and_never_compute_a_key_twice() {
    let p = Project::new();
    let mut y = String::from("pipeline: both\nstages:\n");
    for i in 0..8 {
        y.push_str(&format!(
            "  w{i}:\n    op: command\n    with: {{ run: \"echo w{i} >> calls.log; sleep 0.1; echo {i} > ${{out.out}}\" }}\n    out: {{ out: blob }}\n"
        ));
    }
    y.push_str("  join:\n    op: command\n    in: {");
    y.push_str(&(0..8).map(|i| format!(" i{i}: w{i}")).collect::<Vec<_>>().join(","));
    y.push_str(" }\n    with: { run: \"echo join >> calls.log; cat ");
    y.push_str(&(0..8).map(|i| format!("${{in.i{i}}}")).collect::<Vec<_>>().join(" "));
    y.push_str(" > ${out.out}\" }\n    out: { out: blob }\n");
    p.write("drover.yaml", &y);
    let a = p.cmd(&["run", "-j", "3"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let b = p.cmd(&["run", "-j", "3"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let lines = calls(&p);
    for name in (0..8).map(|i| format!("w{i}")).chain(["join".to_string()]) {
        assert_eq!(count(&lines, &name), 1, "{name} computed {} times: {lines:?}", count(&lines, &name));
    }
    let shown = p.drover(&["show", "join"]);
    assert!(shown.stdout.contains('7'), "{}", shown.stdout);
}

#[test]
fn corrupt_objects_are_quarantined_and_their_stage_reruns() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        "stages:\n  a:\n    op: command\n    with: { run: \"echo hello > ${out.out}\" }\n    out: { out: blob }\n",
    );
    p.drover(&["run"]).expect_code(0);
    let objects = walk(&p.join(".drover/objects"));
    assert_eq!(objects.len(), 1);
    let obj = &objects[0];
    let mut perms = std::fs::metadata(obj).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(obj, perms).unwrap();
    std::fs::write(obj, "bitrot\n").unwrap();

    let out = p.drover(&["cache", "verify"]);
    out.expect_code(1);
    assert!(out.stdout.contains("corrupt object"), "{}", out.stdout);
    assert_eq!(walk(&p.join(".drover/quarantine")).len(), 1);
    assert!(p.plan(&[])[0].2[0].contains("missing from the store"), "{:?}", p.plan(&[]));
    p.drover(&["run"]).expect_code(0);
    assert!(p.drover(&["show", "a"]).stdout.contains("hello"));
    p.drover(&["cache", "verify"]).expect_code(0);
}

#[test]
fn gc_removes_only_unreferenced_objects() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        "stages:\n  a:\n    op: command\n    with: { run: \"echo hello > ${out.out}\" }\n    out: { out: blob }\n",
    );
    p.drover(&["run"]).expect_code(0);
    // An object nothing references, as a crash between storing and recording would leave.
    let stray = p.join(".drover/objects/ff/".to_string().as_str()).join("f".repeat(62));
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, "stray").unwrap();

    let dry = p.drover(&["gc", "--dry-run"]);
    dry.expect_code(0);
    assert!(dry.stdout.contains("would remove 1 objects"), "{}", dry.stdout);
    assert!(stray.exists());
    p.drover(&["gc"]).expect_code(0);
    assert!(!stray.exists());
    assert_eq!(p.plan(&[])[0].1, "cached", "gc must keep what the pipeline uses");
}

#[test]
fn timeouts_kill_the_command_and_retries_retry() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
stages:
  stuck:
    op: command
    timeout: 1s
    with: { run: "echo $$ > pid; sleep 60; echo > ${out.out}" }
    out: { out: blob }
  second_try:
    op: command
    retries: 2
    with: { run: "echo try >> tries; test $(wc -l < tries) -ge 2 && echo ok > ${out.out}" }
    out: { out: blob }
"#,
    );
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains("timed out after 1.0s"), "{}", out.stderr);
    let pid = p.read("pid").trim().to_string();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the timed-out command is still running");
    assert_eq!(p.read("tries").lines().count(), 2);
    let runs = p.drover(&["runs", "last"]);
    assert!(runs.stdout.contains("ran") && runs.stdout.contains("second_try"), "{}", runs.stdout);
    assert!(runs.stdout.contains("failed") && runs.stdout.contains("timed out"), "{}", runs.stdout);
}

#[test]
fn table_and_dir_outputs_round_trip() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
stages:
  make:
    op: command
    with: { run: "printf 'a,b\n1,x\n2,y\n' > ${out.t}; mkdir -p ${out.d}/sub; echo one > ${out.d}/one.txt; echo two > ${out.d}/sub/two.txt" }
    out: { t: { type: table, format: csv }, d: dir }
  use:
    op: command
    in: { d: make.d, t: make.t }
    with: { run: "cat ${in.d}/one.txt ${in.d}/sub/two.txt > ${out.out}; test -s ${in.t}" }
    out: { out: blob }
"#,
    );
    p.drover(&["run"]).expect_code(0);
    let shown = p.drover(&["show", "make.t"]);
    assert!(shown.stdout.contains("2 rows x 2 columns"), "{}", shown.stdout);
    p.drover(&["export", "make.t", "t.jsonl"]).expect_code(0);
    assert_eq!(p.read("t.jsonl"), "{\"a\":1,\"b\":\"x\"}\n{\"a\":2,\"b\":\"y\"}\n");
    p.drover(&["export", "make.d", "exported"]).expect_code(0);
    assert_eq!(p.read("exported/sub/two.txt"), "two\n");
    assert_eq!(p.drover(&["show", "use"]).stdout.lines().skip(1).collect::<Vec<_>>(), ["one", "two"]);
}

#[test]
fn target_runs_only_what_the_stage_needs() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
stages:
  a: { op: command, with: { run: "echo a >> calls.log; echo a > ${out.out}" }, out: { out: blob } }
  b: { op: command, in: { x: a }, with: { run: "echo b >> calls.log; cat ${in.x} > ${out.out}" }, out: { out: blob } }
  c: { op: command, with: { run: "echo c >> calls.log; echo c > ${out.out}" }, out: { out: blob } }
"#,
    );
    p.drover(&["run", "--target", "b"]).expect_code(0);
    assert_eq!(calls(&p), ["a", "b"]);
}

/// Copies files of this repository into the test's project, at the same relative paths.
fn copy_from_repo(p: &Project, paths: &[&str]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for rel in paths {
        std::fs::create_dir_all(p.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(root.join(rel), p.join(rel)).unwrap();
    }
}

/// Runs an example twice, as the README says to: the first run runs all `stages`, the second
/// finds every one cached. The first runs as a scheduler or a container would, with no display
/// server, and prints nothing that reads as an error (Mesa's Vulkan device-select layer made
/// libwayland print "error: XDG_RUNTIME_DIR is invalid..." on each adapter probe).
fn runs_then_all_cached(p: &Project, file: &str, stages: usize) {
    let mut headless = p.cmd(&["run", file]);
    headless.env_remove("XDG_RUNTIME_DIR").env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
    let out = headless.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert!(stderr.contains(&format!("{stages} stages: {stages} ran, 0 cached")), "{stderr}");
    let second = p.drover(&["run", file]);
    second.expect_code(0);
    assert!(second.stderr.contains(&format!("{stages} stages: 0 ran, {stages} cached")), "{}", second.stderr);
}

/// The README's quickstart, as the README runs it: a scaling-law fit and a model merge, offline;
/// the second run reports everything cached, and the fit's parameters are the run's metrics.
#[test]
fn quickstart_runs_and_its_second_run_is_all_cached() {
    let p = Project::new();
    let mut files = vec!["examples/quickstart.yaml", "pipelines/data/chinchilla_epoch/svg_extracted_data.csv"];
    let models = ["base", "math", "code"]
        .map(|m| ["config.json", "model.safetensors", "tokenizer.json"].map(|f| format!("examples/models/{m}/{f}")));
    files.extend(models.iter().flatten().map(String::as_str));
    copy_from_repo(&p, &files);
    runs_then_all_cached(&p, "examples/quickstart.yaml", 7);

    // The fit's estimates, one metric each (`metrics: { table: params, key: param, ... }`):
    // Chinchilla's law refitted on 200 of Epoch's 245 points is close to Epoch's full fit
    // (E 1.817, alpha 0.348, beta 0.366: pipelines/README.md).
    let shown = p.drover(&["metrics", "show", "-f", "examples/quickstart.yaml"]);
    shown.expect_code(0);
    let metrics: std::collections::BTreeMap<String, f64> = shown
        .stdout
        .lines()
        .skip(2)
        .map(|l| {
            let (name, value) = l.split_once(' ').unwrap();
            (name.to_string(), value.trim().parse().unwrap())
        })
        .collect();
    let names: Vec<&str> = metrics.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "fit.A.estimate",
            "fit.B.estimate",
            "fit.E.estimate",
            "fit.alpha.estimate",
            "fit.beta.estimate",
            "fit.d_exponent.estimate",
            "fit.n_exponent.estimate",
            "fit.objective.estimate"
        ]
    );
    for (name, expected) in
        [("fit.E.estimate", 1.8227), ("fit.alpha.estimate", 0.354908), ("fit.beta.estimate", 0.365501)]
    {
        assert!((metrics[name] - expected).abs() < 1e-4, "{name} = {} (expected {expected})", metrics[name]);
    }

    // The merged model is a model directory; the fit's figure is an SVG.
    let merged = p.drover(&["show", "merged", "-f", "examples/quickstart.yaml"]);
    merged.expect_code(0);
    assert!(merged.stdout.contains("model.safetensors") && merged.stdout.contains("config.json"), "{}", merged.stdout);
    p.drover(&["export", "fit.plot", "fit.svg", "-f", "examples/quickstart.yaml"]).expect_code(0);
    assert!(p.read("fit.svg").contains("<svg"));

    // The report embeds that figure and the metrics.
    p.drover(&["report", "--html", "report.html", "-f", "examples/quickstart.yaml"]).expect_code(0);
    let html = p.read("report.html");
    assert!(html.contains(
        "<figcaption><code>fit.plot</code></figcaption><img alt=\"fit.plot\" src=\"data:image/svg+xml;base64,"
    ));
    assert!(html.contains("<code>fit.alpha.estimate</code>"));
}

/// Every pipeline the project ships (`pipelines/*.yaml`, `examples/*.yaml`, found by listing, so
/// a new one is covered without editing this test) plans without an error from a copy of the
/// two directories, the models they name pulled: a pipeline that an op's change broke fails here
/// rather than in a user's hands (`reward_hh.yaml` had no test that read it).
#[test]
fn every_shipped_pipeline_plans() {
    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let (src, dst) = (entry.path(), to.join(entry.file_name()));
            if src.is_dir() { copy_dir(&src, &dst) } else { std::fs::copy(&src, &dst).map(|_| ()).unwrap() }
        }
    }
    common::pull_model("minilm");
    common::pull_model("smollm2");
    let p = Project::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut planned = Vec::new();
    for dir in ["pipelines", "examples"] {
        copy_dir(&root.join(dir), &p.join(dir));
        let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml"))
            .map(|name| format!("{dir}/{name}"))
            .collect();
        files.sort();
        for file in files {
            let out = p.drover(&["plan", "-f", &file]);
            assert_eq!(out.code, 0, "`drover plan -f {file}` failed:\n{}", out.all());
            assert!(out.stdout.trim_end().ends_with(" to run, 0 cached"), "{file}:\n{}", out.stdout);
            planned.push(file);
        }
    }
    // The README's quickstart and the seed papers' replications are among them.
    for file in ["examples/quickstart.yaml", "pipelines/reward_hh.yaml", "pipelines/salmon.yaml", "pipelines/icai.yaml"]
    {
        assert!(planned.iter().any(|f| f == file), "{file} was not planned: {planned:?}");
    }
}

/// The `command` example: a shell command per matrix value, gathered into one table.
#[test]
fn the_command_example_runs_and_its_second_run_is_all_cached() {
    let p = Project::new();
    copy_from_repo(&p, &["examples/commands.yaml", "examples/data/prompts.csv", "examples/scripts/count_long.sh"]);
    runs_then_all_cached(&p, "examples/commands.yaml", 7);
    let shown = p.drover(&["show", "gather", "-f", "examples/commands.yaml"]);
    shown.expect_code(0);
    // 20 prompts, one duplicate: sampling 12 of the 19 unique ones.
    assert!(shown.stdout.contains("3 rows x 3 columns"), "{}", shown.stdout);
    for m in ["| 12      ", "min_words", "| 3         |", "| 7         |"] {
        assert!(shown.stdout.contains(m), "missing {m:?} in\n{}", shown.stdout);
    }
}

/// A join over thousands of inputs makes a script longer than Linux allows for one argument
/// (128 KiB); it must still run.
#[test]
fn scripts_longer_than_one_argument_still_run() {
    let p = Project::new();
    let padding = "x".repeat(200 * 1024);
    p.write(
        "drover.yaml",
        &format!("stages:\n  long:\n    op: command\n    with: {{ run: \"echo ok > ${{out.out}} # {padding}\" }}\n    out: {{ out: blob }}\n"),
    );
    p.drover(&["run"]).expect_code(0);
    assert!(p.drover(&["show", "long"]).stdout.ends_with("ok\n"));
}
