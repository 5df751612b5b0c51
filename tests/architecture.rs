//! Architecture invariants as tests: dependencies point one way (cli -> ops -> engine -> cache).

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
    // Each crate may depend only on crates to its right.
    let layers = ["drover", "drover-ops", "drover-engine", "drover-cache"];
    let mut seen = 0;
    for pkg in meta["packages"].as_array().unwrap() {
        let name = pkg["name"].as_str().unwrap();
        let Some(level) = layers.iter().position(|l| *l == name) else { continue };
        seen += 1;
        for dep in pkg["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            if let Some(dep_level) = layers.iter().position(|l| *l == dep_name) {
                assert!(dep_level > level, "`{name}` must not depend on `{dep_name}` (cli -> ops -> engine -> cache)");
            }
        }
        let forbidden: &[&str] = match name {
            "drover-engine" => &["arrow", "parquet", "burn", "clap"],
            "drover-cache" => &["arrow", "parquet", "burn", "clap", "yaml-rust2", "tokio"],
            _ => &[],
        };
        for dep in pkg["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            assert!(!forbidden.contains(&dep_name), "`{name}` must not depend on `{dep_name}`");
        }
    }
    assert_eq!(seen, layers.len(), "every layer was checked");
}
