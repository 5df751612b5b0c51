//! End-to-end tests of the files a pipeline reads: a dep may be any path (relative to the
//! pipeline's directory or absolute, inside the project or not, through symlinks) and enters
//! the key by content; a symlink loop is an error naming the link.

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
