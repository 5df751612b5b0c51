//! End-to-end tests of `scaling_law_fit`: Epoch's Chinchilla replication on the CPU backend and
//! on wgpu (Mesa's lavapipe in CI), laws with known answers, and bad input.
//!
//! The expected Chinchilla values are published ones (Besiroglu et al. 2024, "Chinchilla
//! Scaling: A replication attempt", and the notebook of epoch-research/analyzing-chinchilla),
//! not outputs of this code. Data: pipelines/data/chinchilla_epoch (see its SOURCE.md).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Project;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A project holding the replication pipeline and its data, as shipped.
fn replication() -> Project {
    let p = Project::new();
    let yaml = std::fs::read_to_string(Path::new(REPO).join("pipelines/chinchilla_approach3.yaml")).unwrap();
    p.write("drover.yaml", &yaml);
    let csv = std::fs::read_to_string(Path::new(REPO).join("pipelines/data/chinchilla_epoch/svg_extracted_data.csv"))
        .unwrap();
    p.write("data/chinchilla_epoch/svg_extracted_data.csv", &csv);
    p
}

/// Reads an exported CSV into rows of (header -> cell).
fn csv_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<String> = split_csv(lines.next().unwrap());
    lines.map(|l| header.iter().cloned().zip(split_csv(l)).collect()).collect()
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// `param -> (estimate, ci_low, ci_high)` from the `params` table.
fn params_table(p: &Project, export_as: &str) -> BTreeMap<String, (f64, Option<f64>, Option<f64>)> {
    p.drover(&["export", "fit.params", export_as]).expect_code(0);
    let num = |s: &str| s.parse::<f64>().ok();
    csv_rows(&p.read(export_as))
        .into_iter()
        .map(|r| (r["param"].clone(), (num(&r["estimate"]).unwrap(), num(&r["ci_low"]), num(&r["ci_high"]))))
        .collect()
}

#[track_caller]
fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want} +- {tol}");
}

/// Epoch's grid fit (notebook cell 18; objective 1.0182740e-3) within the tolerances of the
/// issue: A and B lie in a flat valley, hence 1.5%.
#[track_caller]
fn assert_epoch_fit(t: &BTreeMap<String, (f64, Option<f64>, Option<f64>)>) {
    close("objective", t["objective"].0, 1.01827e-3, 1.01827e-3 * 1e-4);
    close("E", t["E"].0, 1.817, 0.002);
    close("alpha", t["alpha"].0, 0.3473, 0.001);
    close("beta", t["beta"].0, 0.3672, 0.001);
    close("A", t["A"].0, 478.5, 478.5 * 0.015);
    close("B", t["B"].0, 2143.0, 2143.0 * 0.015);
}

#[test]
fn chinchilla_approach3_reproduces_epochs_fit_on_cpu_and_wgpu() {
    let p = replication();
    // Fewer resamples than the pipeline's 4,000 keep the test short; the benchmark runs them all.
    let run = p.drover(&["run", "--device", "cpu", "--set", "resamples=200"]);
    run.expect_code(0);
    assert!(run.stderr.contains("device  cpu (flex)"), "the device is announced:\n{}", run.stderr);
    // The run record names the device of the stage that used one, and only of that stage.
    let runs: Vec<_> = std::fs::read_dir(p.join(".drover/runs")).unwrap().map(|e| e.unwrap().path()).collect();
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&runs[0]).unwrap()).unwrap();
    let device = |stage: &str| {
        record["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage).unwrap()["device"].clone()
    };
    assert_eq!(device("fit"), "cpu (flex) (--device cpu)");
    assert!(device("points").is_null());
    let id = runs[0].file_stem().unwrap().to_str().unwrap();
    let shown = p.drover(&["runs", id]);
    assert!(shown.stdout.contains("on cpu (flex) (--device cpu)"), "{}", shown.stdout);
    let cpu = params_table(&p, "cpu.csv");
    assert_epoch_fit(&cpu);
    // The allocation exponent a = beta / (alpha + beta): Epoch reports 0.513.
    close("n_exponent", cpu["n_exponent"].0, 0.514, 0.002);
    // Percentile intervals bracket the estimates and resemble Epoch's 95% bootstrap intervals
    // (E 1.769-1.871, alpha 0.317-0.373, beta 0.331-0.415) at 200 resamples.
    for name in ["E", "A", "B", "alpha", "beta"] {
        let (est, lo, hi) = cpu[name];
        let (lo, hi) = (lo.unwrap(), hi.unwrap());
        assert!(lo < est && est < hi, "{name}: {lo} < {est} < {hi}");
    }
    let (_, lo, hi) = cpu["E"];
    assert!(
        lo.unwrap() > 1.72 && lo.unwrap() < 1.80 && hi.unwrap() > 1.84 && hi.unwrap() < 1.92,
        "E CI {lo:?}..{hi:?}"
    );
    let (_, lo, hi) = cpu["alpha"];
    assert!(
        lo.unwrap() > 0.29 && lo.unwrap() < 0.34 && hi.unwrap() > 0.355 && hi.unwrap() < 0.40,
        "alpha CI {lo:?}..{hi:?}"
    );
    assert!(cpu["objective"].1.is_none());

    // The device is not in the key: a rerun on another device is a cache hit unless forced.
    let again = p.drover(&["run", "--device", "wgpu", "--set", "resamples=200"]);
    again.expect_code(0);
    assert!(again.stderr.contains("0 ran"), "{}", again.stderr);

    let gpu = p.drover(&["run", "--device", "wgpu", "--set", "resamples=200", "--force", "fit"]);
    gpu.expect_code(0);
    assert!(gpu.stderr.contains("device  wgpu:"), "the wgpu device is announced:\n{}", gpu.stderr);
    let wgpu = params_table(&p, "wgpu.csv");
    assert_epoch_fit(&wgpu);
    // Both devices reach the same optimum: the f64 refinement makes the estimates agree far
    // more closely than the published tolerances.
    for name in ["E", "A", "B", "alpha", "beta", "objective"] {
        let (a, b) = (cpu[name].0, wgpu[name].0);
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{name}: cpu {a} vs wgpu {b}");
    }
    // Bootstrap refits run in f32 on each device: intervals agree to a few percent.
    for name in ["E", "alpha", "beta"] {
        let (c, w) = (cpu[name], wgpu[name]);
        let width = c.2.unwrap() - c.1.unwrap();
        assert!((c.1.unwrap() - w.1.unwrap()).abs() < 0.05 * width, "{name} low: {c:?} vs {w:?}");
        assert!((c.2.unwrap() - w.2.unwrap()).abs() < 0.05 * width, "{name} high: {c:?} vs {w:?}");
    }

    // The other outputs: 245 predictions (5 not used), the allocation, and both figures.
    p.drover(&["export", "fit.predictions", "pred.csv"]).expect_code(0);
    let pred = csv_rows(&p.read("pred.csv"));
    assert_eq!(pred.len(), 245);
    assert_eq!(pred.iter().filter(|r| r["used"] == "false").count(), 5);
    let max_unused = pred.iter().filter(|r| r["used"] == "false").map(|r| r["loss"].parse::<f64>().unwrap());
    let max_used = pred.iter().filter(|r| r["used"] == "true").map(|r| r["loss"].parse::<f64>().unwrap());
    assert!(
        max_unused.fold(f64::INFINITY, f64::min) >= max_used.fold(0.0, f64::max),
        "the highest losses are left out"
    );
    p.drover(&["export", "fit.allocation", "alloc.csv"]).expect_code(0);
    let alloc = csv_rows(&p.read("alloc.csv"));
    assert_eq!(alloc.len(), 3);
    let (c, n, d): (f64, f64, f64) =
        (alloc[0]["C"].parse().unwrap(), alloc[0]["N_opt"].parse().unwrap(), alloc[0]["D_opt"].parse().unwrap());
    close("C = 6 N D", 6.0 * n * d / c, 1.0, 1e-9);
    p.drover(&["export", "fit.plot", "fit.svg"]).expect_code(0);
    assert!(p.read("fit.svg").contains("<svg"));
    p.drover(&["export", "fit.plot_png", "fit.png"]).expect_code(0);
    assert_eq!(&std::fs::read(p.join("fit.png")).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
}

/// Points on an exact power law, L = 1.5 + 300 / X^0.4: the fit must find it.
fn power_points(p: &Project) {
    let mut csv = String::from("x,loss\n");
    for i in 0..12 {
        let x = 1e6 * 3f64.powi(i);
        csv.push_str(&format!("{x},{}\n", 1.5 + 300.0 / x.powf(0.4)));
    }
    p.write("points.csv", &csv);
}

#[test]
fn power_and_custom_laws_recover_a_known_curve() {
    let p = Project::new();
    power_points(&p);
    p.write(
        "drover.yaml",
        r#"
stages:
  points: { op: read_table, with: { path: points.csv } }
  fit:
    op: scaling_law_fit
    in: { points: points }
    with: { law: power, x_col: x }
  custom:
    op: scaling_law_fit
    in: { points: points }
    with:
      law: custom
      formula: E + A / X^alpha
      columns: { X: x }
      init: { E: [0.5, 2], A: [10, 1000], alpha: [0.1, 1] }
"#,
    );
    // `auto` says which device it took and why (CI has no GPU, only lavapipe or nothing).
    let run = p.drover(&["run", "--device", "auto"]);
    run.expect_code(0);
    assert!(run.stderr.contains("device  ") && run.stderr.contains("(auto: "), "{}", run.stderr);
    let t = params_table(&p, "power.csv");
    close("E", t["E"].0, 1.5, 1e-4);
    close("A", t["A"].0, 300.0, 300.0 * 1e-3);
    close("alpha", t["alpha"].0, 0.4, 1e-5);
    assert!(t["objective"].0 < 1e-12, "{:?}", t["objective"]);
    p.drover(&["export", "custom.params", "custom.csv"]).expect_code(0);
    let rows = csv_rows(&p.read("custom.csv"));
    let get = |name: &str| rows.iter().find(|r| r["param"] == name).unwrap()["estimate"].parse::<f64>().unwrap();
    close("custom E", get("E"), 1.5, 1e-4);
    close("custom alpha", get("alpha"), 0.4, 1e-5);
}

#[test]
fn bad_params_are_plan_errors_naming_the_stage_and_line() {
    let p = Project::new();
    power_points(&p);
    p.write(
        "drover.yaml",
        r#"stages:
  points: { op: read_table, with: { path: points.csv } }
  fit:
    op: scaling_law_fit
    in: { points: points }
    with:
      law: custom
      formula: E + A / X^^alpha
      init: { E: [1], A: [1], alpha: [1] }
"#,
    );
    let out = p.drover(&["validate"]);
    out.expect_code(2);
    assert!(out.stderr.contains("formula: unexpected `^` (at column 11)"), "{}", out.stderr);
    assert!(out.stderr.contains("drover.yaml:8:16"), "{}", out.stderr);

    p.write(
        "drover.yaml",
        r#"stages:
  points: { op: read_table, with: { path: points.csv } }
  fit:
    op: scaling_law_fit
    in: { points: points }
    with: { law: power, x_col: X, compute_budgets: [1e20] }
"#,
    );
    let out = p.drover(&["validate"]);
    out.expect_code(2);
    assert!(out.stderr.contains("unknown column `X`"), "{}", out.stderr);
    assert!(out.stderr.contains("did you mean `x`?"), "{}", out.stderr);
    assert!(out.stderr.contains("the allocation is defined for `law: chinchilla` only"), "{}", out.stderr);
    assert!(out.stderr.contains("fit"), "{}", out.stderr);
}

#[test]
fn a_non_positive_loss_fails_the_stage_naming_the_row_and_stores_nothing() {
    let p = Project::new();
    p.write("points.csv", "x,loss\n1e6,3.0\n1e7,2.5\n1e8,0\n1e9,2.1\n");
    p.write(
        "drover.yaml",
        "stages:\n  points: { op: read_table, with: { path: points.csv } }\n  fit:\n    op: scaling_law_fit\n    in: { points: points }\n    with: { law: power, x_col: x }\n",
    );
    let out = p.drover(&["run", "--device", "cpu"]);
    out.expect_code(1);
    assert!(out.stderr.contains("column `loss`, row 3: 0 is not a positive number"), "{}", out.stderr);
    assert!(!out.all().contains("panicked"));
    let plan = p.plan(&[]);
    assert!(plan.iter().any(|(s, a, _)| s == "fit" && a == "run"), "{plan:?}");
}

#[test]
fn an_unknown_device_is_a_usage_error() {
    let p = Project::new();
    power_points(&p);
    p.write("drover.yaml", "stages:\n  points: { op: read_table, with: { path: points.csv } }\n");
    let out = p.drover(&["run", "--device", "tpu"]);
    out.expect_code(2);
    assert!(out.stderr.contains("unknown device `tpu`: expected auto, cpu or wgpu"), "{}", out.stderr);
}
