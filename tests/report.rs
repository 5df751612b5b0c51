//! `drover report --html`: one self-contained page, opened in a real browser (Debian's headless
//! Chromium, with every host name made unresolvable so that a page that fetched anything would
//! show it), which must render without errors and show the run's key numbers.

mod common;

use std::process::Command;

use common::Project;

const PIPELINE: &str = r#"
pipeline: reported
params: { acc: 0.9, fail: 0 }
stages:
  data:
    op: command
    with: { run: "printf 'x\n1\n' > ${out.out}" }
    out: { out: { type: table, format: csv } }
  train:
    op: command
    in: { d: data }
    with:
      run: >-
        printf 'epoch,accuracy\n1,0.5\n2,${params.acc}\n' > ${out.metrics};
        printf '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="teal"/></svg>' > ${out.plot}
    out: { metrics: { type: table, format: csv }, plot: blob }
    metrics: { table: metrics, columns: [accuracy] }
  evaluate:
    op: command
    in: { m: train.metrics }
    with:
      run: >-
        echo 'loading the checkpoint'; echo 'evaluating 500 prompts';
        test ${params.fail} = 0 || { echo 'CUDA error: out of memory at step 7'; exit 3; };
        echo ok > ${out.out}
    out: { out: blob }
"#;

/// The text of the page as Chromium rendered it (its DOM after scripts ran).
fn render(p: &Project, page: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            // Nothing may be fetched: every host is unresolvable.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            // Time enough, in the browser's own virtual clock, for images to decode.
            "--virtual-time-budget=10000",
            &format!("--user-data-dir={}", p.join("chromium-profile").display()),
            "--dump-dom",
            &format!("file://{}", p.join(page).display()),
        ])
        .output()
        .expect("chromium (apt-get install chromium; .ci/run installs it)");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_html_report_is_self_contained_and_renders_in_chromium_with_the_key_numbers() {
    let p = Project::new();
    p.write("drover.yaml", PIPELINE);
    p.drover(&["run"]).expect_code(0);
    p.drover(&["run", "--set", "acc=0.8"]).expect_code(0);
    p.drover(&["run", "--set", "acc=0.85", "--set", "fail=1"]).expect_code(1);
    let out = p.drover(&["report", "--html", "report.html"]);
    out.expect_code(0);
    let html = p.read("report.html");

    // Self-contained: nothing refers to anything outside the page.
    for outside in ["http://", "https://", "<link", "@import", "url(", "src=\"/", "src=\"file:"] {
        assert!(!html.contains(outside), "the page refers outside itself ({outside})");
    }
    // The plot the stage wrote is embedded, and as an image (a script in it could not run).
    assert!(html.contains(
        "<figcaption><code>train.plot</code></figcaption><img alt=\"train.plot\" src=\"data:image/svg+xml;base64,"
    ));

    let dom = render(&p, "report.html");
    assert!(dom.contains("data-rendered=\"ok\""), "every image decoded:\n{dom}");
    assert!(!dom.contains("data-errors"), "a script error:\n{dom}");
    // The run failed, in `evaluate`, and the end of its log is on the page.
    assert!(dom.contains("<p class=\"status failed\" id=\"status\">failed</p>"));
    assert!(dom.contains("<h3><code>evaluate</code></h3><p class=\"error\">command exited with status 3"));
    assert!(dom.contains("evaluating 500 prompts\nCUDA error: out of memory at step 7</pre>"), "{dom}");
    // Why `train` ran: its param changed.
    assert!(dom.contains("param `acc` changed from 0.8 to 0.85"), "{dom}");
    // The metric beside the earlier runs: 0.85 now, +0.05 (+6.25%) against the last good run (0.8).
    assert!(
        dom.contains(
            "<td><code>train.accuracy</code></td><td class=\"num metric-value\">0.85</td><td class=\"num\">+0.05</td>\
             <td class=\"num\">+6.25%</td>"
        ),
        "{dom}"
    );
    assert!(dom.contains("this run beside 2 earlier runs of <code>reported</code>"));
    // Its line over the three runs: 0.9, 0.8, 0.85.
    assert!(dom.contains("<polyline points=\"0.0,3.0 80.0,25.0 160.0,14.0 \"></polyline>"), "{dom}");
    // The graph: three stages, two edges.
    assert_eq!(dom.matches("<g class=\"node ").count(), 3);
    assert_eq!(dom.matches("<path class=\"edge\"").count(), 2);
    // The timeline has the stages that ran (train and evaluate).
    assert!(dom.contains("<title>evaluate "), "{dom}");
}

#[test]
fn a_report_of_a_run_that_does_not_exist_is_a_user_error() {
    let p = Project::new();
    p.write("drover.yaml", PIPELINE);
    let out = p.drover(&["report", "--html", "r.html"]);
    out.expect_code(2);
    assert!(out.stderr.contains("no runs recorded yet"), "{}", out.stderr);
    p.drover(&["run"]).expect_code(0);
    let out = p.drover(&["report", "nope", "--html", "r.html"]);
    out.expect_code(2);
    assert!(out.stderr.contains("no run `nope`"), "{}", out.stderr);
    assert!(!p.join("r.html").exists());
}
