//! End-to-end tests of drover's integrity guarantees: a cached result is never wrong (inputs are
//! verified before a stage reads them, a stage that writes to an input is caught, a corrupt
//! object takes the records built from it along), files outside the store are never touched
//! (symlinked and hard-linked outputs), secrets are never stored, and a command dies with
//! drover.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Project;

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The path of a stage's stored blob, from the hash `drover show` prints.
fn object_of(p: &Project, stage: &str) -> PathBuf {
    let shown = p.drover(&["show", stage]);
    shown.expect_code(0);
    let hash = shown.stdout.split("blake3 ").nth(1).expect("show prints the hash")[..64].to_string();
    p.join(".drover/objects").join(&hash[..2]).join(&hash[2..])
}

/// Rewrites a read-only store object in place, as bit rot (or a careless process) would.
fn damage(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path, &bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).unwrap();
}

/// `a` writes 1000 lines; `b` reads them (as `x`) with `b_run`.
fn two_stages(b_run: &str) -> String {
    format!(
        r#"
params: {{ tag: v1 }}
stages:
  a:
    op: command
    with: {{ run: "seq 1 1000 > ${{out.out}}" }}
    out: {{ out: blob }}
  b:
    op: command
    in: {{ x: a }}
    with: {{ run: "{b_run}" }}
    out: {{ out: blob }}
"#
    )
}

/// `b` counts `a`'s lines under a `tag` param.
const COUNT: &str = "echo ${params.tag} $(wc -l < ${in.x}) > ${out.out}";

fn shown_line(p: &Project, stage: &str) -> String {
    let out = p.drover(&["show", stage]);
    out.expect_code(0);
    out.stdout.lines().nth(1).unwrap_or_default().to_string()
}

#[test]
fn a_corrupt_input_is_refused_before_its_consumer_reads_it() {
    // A truncation and a same-size flipped byte (real bit rot keeps size and mtime).
    type Edit = fn(&mut Vec<u8>);
    let edits: [(&str, Edit); 2] = [("truncated", |b| b.truncate(100)), ("flipped", |b| b[2000] ^= 0x01)];
    for (what, edit) in edits {
        let p = Project::new();
        p.write("drover.yaml", &two_stages(COUNT));
        p.drover(&["run"]).expect_code(0);
        let obj = object_of(&p, "a");
        let mtime = std::fs::metadata(&obj).unwrap().modified().unwrap();
        damage(&obj, edit);
        let file = std::fs::File::options().write(true).open(&obj);
        if let Ok(f) = file {
            f.set_modified(mtime).unwrap();
        }

        let out = p.drover(&["run", "--set", "tag=v2"]);
        out.expect_code(3);
        assert!(out.stderr.contains("input `x` (from `a`) is corrupt in the store: object "), "{what}: {}", out.stderr);
        assert!(out.stderr.contains("no longer matches its hash"), "{what}: {}", out.stderr);
        // Nothing was cached from the rotten bytes; the producer and its consumer run again.
        let plan = p.plan(&["--set", "tag=v2"]);
        assert_eq!(plan.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), ["run", "run"], "{what}: {plan:?}");
        p.drover(&["run", "--set", "tag=v2"]).expect_code(0);
        assert_eq!(shown_line(&p, "b"), "v2 1000", "{what}");
        // The record `b` made from the good bytes before the rot is gone too (it was built from
        // the object that rotted): it runs again, and gives the right answer.
        p.drover(&["run"]).expect_code(0);
        assert_eq!(shown_line(&p, "b"), "v1 1000", "{what}");
        p.drover(&["cache", "verify"]).expect_code(0);
    }
}

#[test]
fn cache_verify_removes_the_records_computed_from_a_corrupt_object() {
    let p = Project::new();
    p.write("drover.yaml", &two_stages(COUNT));
    p.drover(&["run"]).expect_code(0);
    damage(&object_of(&p, "a"), |b| b[10] ^= 0x20);

    let out = p.drover(&["cache", "verify"]);
    out.expect_code(1);
    assert!(out.stdout.contains("corrupt object "), "{}", out.stdout);
    assert!(
        out.stdout.contains("was computed from a corrupt object: removed (its stage will rerun)"),
        "{}",
        out.stdout
    );
    let plan = p.plan(&[]);
    assert_eq!(plan.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), ["run", "run"], "{plan:?}");
    p.drover(&["run"]).expect_code(0);
    assert_eq!(shown_line(&p, "b"), "v1 1000");
}

#[test]
fn a_command_that_writes_to_its_input_fails_and_the_store_is_not_changed() {
    let p = Project::new();
    let tamper = "chmod u+w ${in.x}; echo tampered >> ${in.x}; ";
    p.write("drover.yaml", &two_stages(&format!("{tamper}wc -l < ${{in.x}} > ${{out.out}}")));
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains("the stage wrote to its input `x` (from `a`)"), "{}", out.stderr);
    assert!(out.stderr.contains("Inputs are shared with the store and must never be written"), "{}", out.stderr);
    // No stored object holds the tampered bytes, and nothing serves them.
    for obj in walk(&p.join(".drover/objects")) {
        assert!(!std::fs::read_to_string(&obj).unwrap_or_default().contains("tampered"), "{}", obj.display());
    }
    let plan = p.plan(&[]);
    assert_eq!(plan[0].1, "run", "the producer reruns: {plan:?}");
    // Once the command leaves its input alone, both stages run and `b` sees 1000 lines.
    p.write("drover.yaml", &p.read("drover.yaml").replace(tamper, ""));
    p.drover(&["run"]).expect_code(0);
    assert_eq!(shown_line(&p, "b"), "1000");
    p.drover(&["cache", "verify"]).expect_code(0);
}

#[test]
fn an_object_path_blocked_by_a_directory_is_repaired_once() {
    let p = Project::new();
    p.write("drover.yaml", &two_stages(COUNT));
    p.drover(&["run"]).expect_code(0);
    let obj = object_of(&p, "a");
    std::fs::remove_file(&obj).unwrap();
    std::fs::create_dir_all(obj.join("junk")).unwrap();

    let out = p.drover(&["run"]);
    out.expect_code(0);
    assert!(out.stderr.contains("was blocked by a directory"), "{}", out.stderr);
    assert!(out.stderr.contains("moved to quarantine/ and stored again"), "{}", out.stderr);
    assert!(std::fs::symlink_metadata(&obj).unwrap().is_file());
    // Stays repaired: the next run finds everything cached.
    let again = p.drover(&["run"]);
    again.expect_code(0);
    assert!(again.stderr.contains("0 ran, 2 cached"), "{}", again.stderr);
}

#[test]
fn cache_verify_reports_what_blocks_an_object_path() {
    let p = Project::new();
    p.write("drover.yaml", &two_stages(COUNT));
    p.drover(&["run"]).expect_code(0);
    let obj = object_of(&p, "a");
    std::fs::remove_file(&obj).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &obj).unwrap();
    let out = p.drover(&["cache", "verify"]);
    out.expect_code(1);
    assert!(
        out.stdout.contains(&format!("not an object at {}: moved to quarantine/", obj.display())),
        "{}",
        out.stdout
    );
    assert!(std::fs::symlink_metadata(&obj).is_err());
    p.drover(&["run"]).expect_code(0);
    p.drover(&["cache", "verify"]).expect_code(0);
}

fn one_stage(run: &str, out: &str) -> String {
    format!("stages:\n  s:\n    op: command\n    with: {{ run: {run:?} }}\n    out: {{ out: {out} }}\n")
}

#[test]
fn a_symlinked_blob_output_is_refused_and_its_target_left_alone() {
    let p = Project::new();
    p.write("user.txt", "mine\n");
    std::fs::set_permissions(p.join("user.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    p.write("drover.yaml", &one_stage("ln -s $PWD/user.txt ${out.out}", "blob"));
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains("output `out`: "), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("is a symbolic link (to {}/user.txt)", p.path().display())), "{}", out.stderr);
    assert_eq!(std::fs::metadata(p.join("user.txt")).unwrap().permissions().mode() & 0o777, 0o640);
    assert_eq!(p.read("user.txt"), "mine\n");
    for obj in walk(&p.join(".drover/objects")) {
        assert!(!std::fs::symlink_metadata(&obj).unwrap().is_symlink(), "{}", obj.display());
    }
}

#[test]
fn a_symlinked_dir_output_is_refused_and_the_user_directory_keeps_its_files() {
    let p = Project::new();
    p.write("mine/a.txt", "a\n").write("mine/sub/b.txt", "b\n");
    p.write("drover.yaml", &one_stage("rmdir ${out.out} && ln -s $PWD/mine ${out.out}", "dir"));
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains(&format!("is a symbolic link (to {}/mine)", p.path().display())), "{}", out.stderr);
    assert_eq!(p.read("mine/a.txt"), "a\n");
    assert_eq!(p.read("mine/sub/b.txt"), "b\n");
    assert_eq!(std::fs::metadata(p.join("mine/a.txt")).unwrap().permissions().mode() & 0o200, 0o200);
}

#[test]
fn a_symlink_inside_a_dir_output_is_the_stages_fault() {
    let p = Project::new();
    p.write("mine.txt", "mine\n");
    p.write("drover.yaml", &one_stage("echo x > ${out.out}/real && ln -s $PWD/mine.txt ${out.out}/link", "dir"));
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains("/link: is a symbolic link (to "), "{}", out.stderr);
    assert_eq!(std::fs::metadata(p.join("mine.txt")).unwrap().permissions().mode() & 0o200, 0o200);
}

#[test]
fn a_symlinked_table_output_is_not_written_through() {
    let p = Project::new();
    p.write("data.csv", "a,b\n1,2\n");
    p.write(
        "drover.yaml",
        "stages:\n  s:\n    op: command\n    with: { run: \"ln -s $PWD/data.csv ${out.t}\" }\n    out: { t: table }\n",
    );
    let out = p.drover(&["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains("output `t`: "), "{}", out.stderr);
    assert!(out.stderr.contains("is a symbolic link"), "{}", out.stderr);
    assert_eq!(p.read("data.csv"), "a,b\n1,2\n", "the user's CSV must not be converted in place");
}

#[test]
fn a_hard_linked_output_is_stored_as_a_copy() {
    let p = Project::new();
    p.write("user.txt", "mine\n");
    p.write("data.csv", "a,b\n1,2\n");
    p.write(
        "drover.yaml",
        r#"
stages:
  s:
    op: command
    with: { run: "ln $PWD/user.txt ${out.out}" }
    out: { out: blob }
  t:
    op: command
    with: { run: "ln $PWD/data.csv ${out.t}" }
    out: { t: table }
"#,
    );
    p.drover(&["run"]).expect_code(0);
    let user = std::fs::metadata(p.join("user.txt")).unwrap();
    assert_eq!(user.permissions().mode() & 0o777, 0o644, "the user's file was not made read-only");
    assert_eq!(user.nlink(), 1, "the store holds its own copy, not a link to the user's file");
    assert_eq!(p.read("data.csv"), "a,b\n1,2\n", "the user's CSV was not converted in place");
    // The user edits their file: the stored result does not change under its hash.
    p.write("user.txt", "edited\n");
    assert_eq!(shown_line(&p, "s"), "mine");
    p.drover(&["cache", "verify"]).expect_code(0);
}

#[test]
fn a_secret_in_env_is_refused_at_plan_time() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        "stages:\n  s:\n    op: command\n    with:\n      run: \"echo > ${out.out}\"\n      env: { HF_TOKEN: hf_abc, TOKENIZERS_PARALLELISM: \"false\" }\n    out: { out: blob }\n",
    );
    let out = p.drover(&["run"]);
    out.expect_code(2);
    // miette wraps long lines: look at the words one line holds.
    assert!(out.stderr.contains("`HF_TOKEN` looks like a secret, and `env:` values are recorded"), "{}", out.stderr);
    assert!(out.stderr.contains("`secret_env: [HF_TOKEN]`"), "{}", out.stderr);
    assert!(out.stderr.contains("drover.yaml:6:24"), "{}", out.stderr);
    assert!(out.stderr.contains("1 error in drover.yaml"), "TOKENIZERS_PARALLELISM is no secret: {}", out.stderr);
}

#[test]
fn a_credential_set_into_env_is_refused_and_never_printed() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        "params: { token: none }\nstages:\n  s:\n    op: command\n    with:\n      run: \"echo > ${out.out}\"\n      env: { AUTH: \"${params.token}\" }\n    out: { out: blob }\n",
    );
    p.drover(&["run"]).expect_code(0);
    let secret = "sk-proj-0123456789abcdefghij";
    let out = p.drover(&["plan", "--set", &format!("token={secret}")]);
    out.expect_code(2);
    assert!(out.stderr.contains("the value of `AUTH` looks like a credential"), "{}", out.stderr);
    assert!(!out.all().contains(secret), "{}", out.all());
}

#[test]
fn secret_env_values_reach_the_command_and_nothing_else() {
    let p = Project::new();
    let secret = "sk-drover-secret-0123456789";
    p.write(
        "drover.yaml",
        r#"
stages:
  s:
    op: command
    with:
      run: "echo token is $DROVER_TEST_SECRET; echo length $${#DROVER_TEST_SECRET} > ${out.out}"
      secret_env: [DROVER_TEST_SECRET]
    out: { out: blob }
"#,
    );
    let out = p.cmd(&["run"]).env("DROVER_TEST_SECRET", secret).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(shown_line(&p, "s"), format!("length {}", secret.len()), "the command received the value");
    let log = p.drover(&["runs", "--log", "s"]);
    assert!(log.stdout.contains("token is ***"), "{}", log.stdout);
    for file in walk(&p.join(".drover")) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the secret is in {}", file.display());
    }
    // The value is in no key: another value is the same stage, cached.
    let again = p.cmd(&["run"]).env("DROVER_TEST_SECRET", "sk-another-value-99").output().unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 ran, 1 cached"));
    // Unset when the stage must run: an environment failure naming the variable.
    let out = p.cmd(&["run", "--force", "s"]).env_remove("DROVER_TEST_SECRET").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("`secret_env` names DROVER_TEST_SECRET, which is not set in drover's environment"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_store_beside_the_pipeline_is_private_and_a_shared_one_keeps_its_mode() {
    let p = Project::new();
    p.write("drover.yaml", &one_stage("echo > ${out.out}", "blob"));
    p.drover(&["run"]).expect_code(0);
    assert_eq!(std::fs::metadata(p.join(".drover")).unwrap().permissions().mode() & 0o777, 0o700);

    std::fs::create_dir(p.join("team")).unwrap();
    std::fs::set_permissions(p.join("team"), std::fs::Permissions::from_mode(0o2770)).unwrap();
    p.drover(&["run", "--store", "team"]).expect_code(0);
    assert_eq!(std::fs::metadata(p.join("team")).unwrap().permissions().mode() & 0o7777, 0o2770);
    assert_eq!(std::fs::metadata(p.join("team/records")).unwrap().permissions().mode() & 0o777, 0o770);
}

/// Waits for a file to hold a pid.
fn wait_for_pid(p: &Project, file: &str) -> i32 {
    common::wait_for(&format!("a pid in {file}"), || p.read_opt(file)?.trim().parse::<i32>().ok())
}

#[test]
fn kill_9_of_drover_kills_the_command_and_its_children() {
    let p = Project::new();
    p.write(
        "drover.yaml",
        &one_stage("sleep 300 & echo $! > grandchild.tmp; mv grandchild.tmp grandchild; echo $$ > shell.tmp; mv shell.tmp shell; wait", "blob"),
    );
    let mut child =
        p.cmd(&["run"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let grandchild = wait_for_pid(&p, "grandchild");
    let shell = wait_for_pid(&p, "shell");
    assert!(common::alive(grandchild) && common::alive(shell));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while [shell, grandchild].into_iter().any(common::alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survivors: Vec<i32> = [shell, grandchild].into_iter().filter(|&pid| common::alive(pid)).collect();
    for &pid in &survivors {
        common::signal(pid, common::SIGKILL);
    }
    assert!(survivors.is_empty(), "still running after drover was killed: {survivors:?}");
}
