//! Architecture invariants as tests: dependencies point one way (cli -> ops | slurm -> engine ->
//! cache, and cli -> remote -> cache).

use std::process::Command;

#[test]
fn dependencies_point_one_way() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Each crate may depend only on crates of a later layer: the CLI on the ops and the Slurm
    // executor, which never depend on each other, both on the engine, the engine on the cache;
    // the remote tier beside them, on the cache alone.
    let layers: [&[&str]; 4] =
        [&["drover"], &["drover-ops", "drover-slurm", "drover-remote"], &["drover-engine"], &["drover-cache"]];
    let layer_of = |name: &str| layers.iter().position(|l| l.contains(&name));
    let mut seen = 0;
    for pkg in meta["packages"].as_array().unwrap() {
        let name = pkg["name"].as_str().unwrap();
        let Some(level) = layer_of(name) else { continue };
        seen += 1;
        for dep in pkg["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            if let Some(dep_level) = layer_of(dep_name) {
                assert!(
                    dep_level > level,
                    "`{name}` must not depend on `{dep_name}` (cli -> ops | slurm -> engine -> cache)"
                );
            }
        }
        let forbidden: &[&str] = match name {
            "drover-engine" => &["arrow", "parquet", "burn", "clap"],
            // The store is synchronous and used on every compute node: no HTTP stack.
            "drover-cache" => &["arrow", "parquet", "burn", "clap", "yaml-rust2", "tokio", "object_store", "reqwest"],
            // Keys, records and objects only: it knows no plan and no op.
            "drover-remote" => &["arrow", "parquet", "burn", "clap", "yaml-rust2", "drover-engine"],
            "drover-slurm" => &["arrow", "parquet", "burn", "clap"],
            _ => &[],
        };
        for dep in pkg["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            assert!(!forbidden.contains(&dep_name), "`{name}` must not depend on `{dep_name}`");
        }
    }
    assert_eq!(seen, layers.iter().map(|l| l.len()).sum::<usize>(), "every crate was checked");
}
