//! End-to-end tests of the files a pipeline reads and writes: a dep may be any path (relative
//! to the pipeline's directory or absolute, inside the project or not, through symlinks) and
//! enters the key by content; a symlink loop is an error naming the link; `drover export` writes
//! whole files, never over one without `--force`, and never into a directory by accident.

mod common;

use common::Project;

/// A pipeline in `proj/` of the test's directory, whose one stage `s` depends on `deps` and
/// copies the first of them into its output.
fn pipeline(p: &Project, deps: &[&str]) {
    let list = deps.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", ");
    p.write(
        "proj/drover.yaml",
        &format!(
            "stages:\n  s:\n    op: command\n    deps: [{list}]\n    with: {{ run: \"cat '{}' > ${{out.out}}\" }}\n    out: {{ out: blob }}\n",
            deps[0]
        ),
    );
}

/// `drover plan --json` of `proj/drover.yaml`: the stage's action and reasons.
fn plan(p: &Project) -> (String, Vec<String>) {
    let mut stages = p.plan(&["proj/drover.yaml"]);
    assert_eq!(stages.len(), 1, "{stages:?}");
    let (_, action, reasons) = stages.remove(0);
    (action, reasons)
}

#[test]
fn deps_outside_the_pipeline_directory_and_absolute_ones_are_hashed_by_content() {
    let p = Project::new();
    p.write("shared.txt", "shared v1\n").write("datasets/corpus.txt", "corpus v1\n");
    let absolute = p.join("datasets/corpus.txt").to_string_lossy().into_owned();
    pipeline(&p, &["../shared.txt", &absolute]);
    p.drover(&["run", "proj/drover.yaml"]).expect_code(0);
    assert_eq!(p.drover(&["show", "s", "-f", "proj/drover.yaml"]).stdout.lines().nth(1), Some("shared v1"));
    assert_eq!(plan(&p), ("cached".to_string(), vec![]));

    p.write("shared.txt", "shared v2\n");
    assert_eq!(plan(&p), ("run".to_string(), vec!["dep file `../shared.txt` changed".to_string()]));
    p.drover(&["run", "proj/drover.yaml"]).expect_code(0);
    assert_eq!(plan(&p), ("cached".to_string(), vec![]));

    p.write("datasets/corpus.txt", "corpus v2\n");
    assert_eq!(plan(&p), ("run".to_string(), vec![format!("dep file `{absolute}` changed")]));
}

#[test]
fn a_dep_is_named_by_its_normalised_path_and_hashed_through_symlinks() {
    let p = Project::new();
    p.write("datasets/v1.txt", "one\n").write("datasets/v2.txt", "two\n");
    std::os::unix::fs::symlink("datasets/v1.txt", p.join("current.txt")).unwrap();
    // `./sub/../../current.txt` is `../current.txt` in the key.
    std::fs::create_dir_all(p.join("proj/sub")).unwrap();
    pipeline(&p, &["./sub/../../current.txt"]);
    p.drover(&["run", "proj/drover.yaml"]).expect_code(0);
    assert_eq!(plan(&p), ("cached".to_string(), vec![]));

    // The link now leads to other content: the stage reruns.
    std::fs::remove_file(p.join("current.txt")).unwrap();
    std::os::unix::fs::symlink("datasets/v2.txt", p.join("current.txt")).unwrap();
    assert_eq!(plan(&p), ("run".to_string(), vec!["dep file `../current.txt` changed".to_string()]));
    p.drover(&["run", "proj/drover.yaml"]).expect_code(0);
    assert_eq!(p.drover(&["show", "s", "-f", "proj/drover.yaml"]).stdout.lines().nth(1), Some("two"));

    // Editing what it leads to reruns the stage too.
    p.write("datasets/v2.txt", "two, edited\n");
    assert_eq!(plan(&p), ("run".to_string(), vec!["dep file `../current.txt` changed".to_string()]));
}

#[test]
fn a_symlink_loop_in_a_dep_directory_is_an_environment_error_naming_the_link() {
    let p = Project::new();
    p.write("proj/data/sub/a.txt", "a\n");
    // Followed blindly, a loop is walked 40 links deep (`sub/up/sub/up/...`) until the kernel
    // refuses the path, in an error that names neither end of the loop.
    std::os::unix::fs::symlink("..", p.join("proj/data/sub/up")).unwrap();
    std::os::unix::fs::symlink(".", p.join("proj/data/sub/here")).unwrap();
    pipeline(&p, &["data"]);
    let out = p.drover(&["plan", "proj/drover.yaml"]);
    out.expect_code(3);
    let data = std::fs::canonicalize(p.join("proj/data")).unwrap();
    let expected = format!(
        "error: stage `s`: cannot hash dep `data`: symlink loop: {} leads back to {}, a directory that contains it\n",
        data.join("sub/here").display(),
        data.join("sub").display()
    );
    assert_eq!(out.stderr, expected);
    p.drover(&["run", "proj/drover.yaml"]).expect_code(3);
}

/// A project with a stored table `t` (two rows), blob `b` and dir `d`.
fn stored() -> Project {
    let p = Project::new();
    p.write(
        "drover.yaml",
        r#"
stages:
  make:
    op: command
    with: { run: "printf 'a,b\n1,x\n2,y\n' > ${out.t}; echo blob > ${out.b}; mkdir -p ${out.d}/sub; echo one > ${out.d}/sub/one.txt" }
    out: { t: { type: table, format: csv }, b: blob, d: dir }
"#,
    );
    p.drover(&["run"]).expect_code(0);
    p
}

/// The names in a directory, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn export_replaces_an_existing_file_only_with_force() {
    let p = stored();
    p.write("out/t.csv", "mine\n").write("out/b.bin", "mine too\n");
    for (target, dest) in [("make.t", "out/t.csv"), ("make.b", "out/b.bin")] {
        let out = p.drover(&["export", target, dest]);
        out.expect_code(2);
        assert!(out.stderr.contains(&format!("{dest} already exists; pass --force to overwrite it")), "{}", out.stderr);
    }
    assert_eq!((p.read("out/t.csv"), p.read("out/b.bin")), ("mine\n".to_string(), "mine too\n".to_string()));

    p.drover(&["export", "make.t", "out/t.csv", "--force"]).expect_code(0);
    p.drover(&["export", "make.b", "out/b.bin", "--force"]).expect_code(0);
    assert_eq!((p.read("out/t.csv"), p.read("out/b.bin")), ("a,b\n1,x\n2,y\n".to_string(), "blob\n".to_string()));
    // Written beside the destination and renamed: nothing else is left in the directory, and
    // the file is the user's to edit (not a read-only store object).
    assert_eq!(names(&p.join("out")), ["b.bin", "t.csv"]);
    for f in ["out/t.csv", "out/b.bin"] {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(p.join(f)).unwrap().permissions().mode() & 0o777, 0o644, "{f}");
    }
    // A new file needs no flag, and its directory is made.
    p.drover(&["export", "make.t", "new/dir/t.parquet"]).expect_code(0);
    assert_eq!(&std::fs::read(p.join("new/dir/t.parquet")).unwrap()[..4], b"PAR1");
}

#[test]
fn export_onto_a_directory_names_it_and_writes_nothing() {
    let p = stored();
    std::fs::create_dir_all(p.join("outdir.csv")).unwrap();
    std::fs::create_dir_all(p.join("outdir")).unwrap();
    let out = p.drover(&["export", "make.t", "outdir.csv", "--force"]);
    out.expect_code(2);
    assert!(out.stderr.contains("outdir.csv is a directory; a table is exported to a file"), "{}", out.stderr);
    assert!(out.stderr.contains("name a file, e.g. outdir.csv/t.csv"), "{}", out.stderr);
    let out = p.drover(&["export", "make.b", "outdir"]);
    out.expect_code(2);
    assert!(out.stderr.contains("outdir is a directory; a blob is exported to a file"), "{}", out.stderr);
    assert!(out.stderr.contains("name a file, e.g. outdir/b"), "{}", out.stderr);
    assert!(names(&p.join("outdir.csv")).is_empty() && names(&p.join("outdir")).is_empty());
}

#[test]
fn a_dir_output_is_exported_only_to_a_new_or_empty_directory() {
    let p = stored();
    p.write("file.txt", "mine\n");
    let out = p.drover(&["export", "make.d", "file.txt", "--force"]);
    out.expect_code(2);
    assert!(out.stderr.contains("file.txt is a file"), "{}", out.stderr);
    assert!(out.stderr.contains("a dir output is exported to a new or empty directory"), "{}", out.stderr);
    assert_eq!(p.read("file.txt"), "mine\n");

    std::fs::create_dir(p.join("outdir")).unwrap();
    p.drover(&["export", "make.d", "outdir"]).expect_code(0);
    assert_eq!(p.read("outdir/sub/one.txt"), "one\n");
    let out = p.drover(&["export", "make.d", "outdir", "--force"]);
    out.expect_code(2);
    assert!(out.stderr.contains("outdir exists and is not empty"), "{}", out.stderr);
    // Assembled beside the destination and renamed: nothing else is left.
    assert_eq!(names(p.path()), [".drover", "drover.yaml", "file.txt", "outdir"]);
}

#[test]
fn an_export_that_fails_half_way_leaves_the_file_it_would_replace() {
    let p = Project::new();
    // A list column: Parquet holds it, CSV cannot.
    p.write(
        "drover.yaml",
        "stages:\n  make:\n    op: command\n    with: { run: \"echo '{\\\"a\\\": 1, \\\"l\\\": [1, 2]}' > ${out.t}\" }\n    out: { t: { type: table, format: jsonl } }\n",
    );
    p.drover(&["run"]).expect_code(0);
    p.write("t.csv", "mine\n");
    let out = p.drover(&["export", "make.t", "t.csv", "--force"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("t.csv (csv): Csv error: Nested type List(Int64) is not supported in CSV"),
        "{}",
        out.stderr
    );
    assert_eq!(p.read("t.csv"), "mine\n");
    assert_eq!(names(p.path()), [".drover", "drover.yaml", "t.csv"]);
}
