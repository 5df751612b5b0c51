//! End-to-end tests of the informational commands: dag, ops, schema, runs, validate, and the
//! stat cache behind `read_table` and deps.

mod common;

use common::Project;

const TWO_STAGES: &str = r#"
pipeline: two
stages:
  raw:
    op: read_table
    with: { path: data.csv }
  uniq:
    op: dedup
    in: { table: raw }
"#;

fn project() -> Project {
    let p = Project::new();
    p.write("drover.yaml", TWO_STAGES).write("data.csv", "a,b\n1,x\n1,x\n2,y\n");
    p
}

#[test]
fn dag_prints_dot_and_mermaid_edges() {
    let p = project();
    let dot = p.drover(&["dag"]);
    dot.expect_code(0);
    assert!(dot.stdout.starts_with("digraph \"two\" {"), "{}", dot.stdout);
    assert!(dot.stdout.contains("n0 [label=\"raw\\n(read_table)\"];"), "{}", dot.stdout);
    assert!(dot.stdout.contains("n0 -> n1 [label=\"table\"];"), "{}", dot.stdout);
    let mermaid = p.drover(&["dag", "--format", "mermaid"]);
    assert!(mermaid.stdout.starts_with("flowchart LR\n"), "{}", mermaid.stdout);
    assert!(mermaid.stdout.contains("n0 -->|table| n1"), "{}", mermaid.stdout);
}

#[test]
fn ops_lists_every_op_with_typed_ports_and_params() {
    let p = Project::new();
    let out = p.drover(&["ops", "--json"]);
    out.expect_code(0);
    let ops: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = ops.iter().map(|o| o["name"].as_str().unwrap()).collect();
    for name in ["command", "concat", "dedup", "read_table", "sample", "select"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let sample = ops.iter().find(|o| o["name"] == "sample").unwrap();
    assert_eq!(sample["inputs"]["fixed"][0]["name"], "table");
    assert!(sample["params"]["properties"]["fraction"].is_object(), "{sample}");
    let text = p.drover(&["ops"]);
    assert!(text.stdout.contains("sample (v1)"), "{}", text.stdout);
    assert!(text.stdout.contains("keep: first|last"), "{}", text.stdout);
}

#[test]
fn schema_is_json_schema_with_every_ops_params() {
    let p = Project::new();
    let out = p.drover(&["schema"]);
    out.expect_code(0);
    let schema: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(schema["required"], serde_json::json!(["stages"]));
    let stage = &schema["$defs"]["stage"];
    let ops: Vec<&str> =
        stage["properties"]["op"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(ops.contains(&"command") && ops.contains(&"read_table"), "{ops:?}");
    let per_op = stage["allOf"].as_array().unwrap();
    let command = per_op.iter().find(|c| c["if"]["properties"]["op"]["const"] == "command").unwrap();
    assert_eq!(command["then"]["properties"]["with"]["required"], serde_json::json!(["run"]));
}

#[test]
fn runs_lists_history_and_shows_logs() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        "stages:\n  say: { op: command, with: { run: \"echo hello from the stage; echo done > ${out.out}\" }, out: { out: blob } }\n",
    );
    p.drover(&["run"]).expect_code(0);
    p.drover(&["run"]).expect_code(0);
    let list = p.drover(&["runs"]);
    list.expect_code(0);
    let rows: Vec<&str> = list.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{}", list.stdout);
    // Newest first: the second run found everything cached.
    let cols = |row: &str| row.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(&cols(rows[0])[2..5], ["ok", "0", "1"]);
    assert_eq!(&cols(rows[1])[2..5], ["ok", "1", "0"]);
    let first_id = cols(rows[1])[0].clone();
    let log = p.drover(&["runs", &first_id, "--log", "say"]);
    log.expect_code(0);
    assert_eq!(log.stdout, "hello from the stage\n");
}

#[test]
fn validate_reports_the_expanded_size() {
    let p = project();
    let out = p.drover(&["validate"]);
    out.expect_code(0);
    assert!(out.stdout.ends_with("ok (2 stages, 2 after matrix expansion)\n"), "{}", out.stdout);
}

/// Sets a file's mtime to an hour ago, so that the stat cache may trust it.
fn age(p: &Project, rel: &str) {
    let status =
        std::process::Command::new("touch").args(["-d", "2020-01-01 00:00:00", rel]).current_dir(p.path()).status();
    assert!(status.unwrap().success());
}

/// The stat cache: a source file whose size, mtime and inode are unchanged is not read again
/// (as git's index does); any change to them makes drover hash it again.
#[test]
fn unchanged_source_files_are_not_rehashed() {
    let p = project();
    age(&p, "data.csv");
    p.drover(&["run"]).expect_code(0);
    // One stat cache per host (a shared store's hosts see different files under one path).
    let caches: Vec<_> = std::fs::read_dir(p.join(".drover"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("statcache-") && n.ends_with(".json"))
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    let cache = p.read(&format!(".drover/{}", caches[0]));
    assert!(cache.contains("data.csv"), "{cache}");

    // Same size, same mtime (restored), same inode, different bytes: the stat cache trusts it.
    std::fs::write(p.join("data.csv"), "a,b\n1,x\n1,x\n3,y\n").unwrap();
    age(&p, "data.csv");
    assert_eq!(p.plan(&[])[0].1, "cached");

    // A different size is noticed.
    std::fs::write(p.join("data.csv"), "a,b\n1,x\n1,x\n2,y\n4,z\n").unwrap();
    age(&p, "data.csv");
    let plan = p.plan(&[]);
    assert_eq!(plan[0].1, "run");
    assert_eq!(plan[0].2, ["dep file `data.csv` changed"]);
}

#[test]
fn a_list_of_references_is_one_list_input() {
    let p = Project::new();
    p.write("a.csv", "text\nalpha\nbeta\n").write("b.csv", "text\ngamma\n").write(
        "drover.yaml",
        "stages:\n  a:\n    op: read_table\n    with: { path: a.csv }\n  b:\n    op: read_table\n    with: { path: b.csv }\n\
         \x20 both:\n    op: concat\n    in: { parts: [b, a.out] }\n",
    );
    p.drover(&["run"]).expect_code(0);
    p.drover(&["export", "both", "both.csv"]).expect_code(0);
    assert_eq!(p.read("both.csv"), "text\ngamma\nalpha\nbeta\n");
    p.write("drover.yaml", &p.read("drover.yaml").replace("[b, a.out]", "[b, c]"));
    let out = p.drover(&["plan"]);
    out.expect_code(2);
    assert!(out.all().contains("input `parts`: there is no stage `c`"), "{}", out.all());
}

#[test]
fn plan_explain_prints_each_stage_with_its_op_params_and_typed_edges() {
    let p = project();
    let out = p.drover(&["plan", "--explain"]);
    out.expect_code(0);
    assert_eq!(
        out.stdout,
        "raw: read_table v1\n\
         \x20 params   {\"path\":\"data.csv\"}\n\
         \x20 out      out: table(a: Int64, b: Utf8)\n\
         \x20 dep      data.csv\n\
         uniq: dedup v1\n\
         \x20 params   {}\n\
         \x20 in       table <- raw.out: table(a: Int64, b: Utf8)\n\
         \x20 out      out: table(a: Int64, b: Utf8)\n"
    );
    // It explains the file, not the cache: nothing is read from or written to a store.
    assert!(!p.join(".drover").exists());

    let json = p.drover(&["plan", "--explain", "--json", "--target", "raw"]);
    json.expect_code(0);
    let lines: Vec<serde_json::Value> = json.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        lines,
        [serde_json::json!({
            "stage": "raw", "op": "read_table", "version": 1, "matrix": {}, "params": {"path": "data.csv"},
            "inputs": [],
            "outputs": [{"port": "out", "format": "parquet", "type": {"table": {"columns": [
                {"name": "a", "dtype": "Int64"}, {"name": "b", "dtype": "Utf8"}]}}}],
            "deps": ["data.csv"], "context": {}
        })]
    );

    // A pipeline with a mistake has no plan to explain: exit 2, as for `plan`.
    p.write("drover.yaml", &TWO_STAGES.replace("in: { table: raw }", "in: { table: rwa }"));
    let bad = p.drover(&["plan", "--explain"]);
    bad.expect_code(2);
    assert!(bad.stderr.contains("input `table`: there is no stage `rwa`"), "{}", bad.stderr);
    assert_eq!(bad.stdout, "");
}

/// `drover ops | head -1`: the reader goes away before drover has printed. A command that only
/// prints ends quietly on the closed pipe (SIGPIPE, as `cat` would), never with Rust's
/// "failed printing to stdout" panic.
#[test]
fn a_printing_command_ends_quietly_when_its_reader_goes_away() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let p = project();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just returned by pipe() and are owned by nothing else.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader); // every write to `writer` now fails with EPIPE
    for args in [&["ops"][..], &["dag"], &["schema"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(args)
            .current_dir(p.path())
            .stdout(std::process::Stdio::from(writer.try_clone().unwrap()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {:?} {stderr}", out.status);
        assert_eq!(stderr, "", "{args:?}");
    }
}
