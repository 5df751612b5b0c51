//! Stage keys are a promise: a store made by an earlier drover stays fully cached after a
//! refactor. This test runs the fixture in `tests/data/keys/` (table ops, a `command` with a file
//! dep and a directory dep, a matrix and its gather, `read_model` + `merge_models`,
//! `scaling_law_fit`) and compares every stage's key with the keys drover computed for it on
//! 2026-12-05 (commit a65952e, before the op-kit refactor; checked again after the integrity
//! work; `fit` re-pinned when scaling_law_fit became VERSION 2, burn's `simd` kernels changing
//! its last bits). A key that changes here means every user's cache is invalidated: bump the op's
//! `VERSION` on purpose, or find what changed the recipe by accident.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Project;

/// Stage -> key, as pinned.
const PINNED: &[(&str, &str)] = &[
    ("base", "52d9bfc05c13fc117cfa1702dbe71f02d1674a32ec6825ac7e8e441909a083a3"),
    ("count[min_words=1]", "0991ca3815a1e29a9c233f95b3b0f544d0bc33358a084f469b34d0d3b9c7e6ac"),
    ("count[min_words=2]", "5ddcd356e9cfa9fce7b0ba91af57f04c3ae594de6368e79a131ec766be086967"),
    ("fit", "f6bcaeb761060a1d864d39a892086c044ef0ac5b4803933ad9f8aee49fe74b9a"),
    ("gather", "6ec964459338a5209feffc3dffcd2fe7bec2f29d254985a432eab8611ed7b851"),
    ("math", "1e0fe9d3d5ba960bd6bc5238712cf122f0da941c90c22f42a66e3b50ee1c9ed6"),
    ("merged", "22573eca63eb603b9eda196284d7f44719092d23cef3214ae710b71c639560b9"),
    ("points", "8bf6ac8ae39c38cf0da5b06d3d44531fcaee37374cdbdee8d69e538d621fb617"),
    ("prompts", "bbdad806760e301ca58c9f8c3280f355d157a7c60a825c60ee806d7e7dc37843"),
    ("renamed", "1b328693970fd0df03ff827a8be799823d1bf13c48ee9cbe8ad460981c911952"),
    ("subset", "13fdf4e147d7dfaad9a5bf09323fd8fb35001eb1a88d8834d94596732df7675c"),
    ("unique", "a0ac871c755f1100cf3497947a8832b73cdd7adce42c5c7574244d94471e1dd4"),
];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn stage_keys_of_the_fixture_are_unchanged() {
    let p = Project::new();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keys"), p.path());
    p.drover(&["run", "--device", "cpu", "pipeline.yaml"]).expect_code(0);
    let runs: Vec<_> = std::fs::read_dir(p.join(".drover/runs")).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1);
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(runs[0].path()).unwrap()).unwrap();
    let keys: BTreeMap<String, String> = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap().to_string(), s["key"].as_str().unwrap().to_string()))
        .collect();
    let pinned: BTreeMap<String, String> = PINNED.iter().map(|(s, k)| (s.to_string(), k.to_string())).collect();
    if keys != pinned {
        let listing: String = keys.iter().map(|(s, k)| format!("    (\"{s}\", \"{k}\"),\n")).collect();
        panic!("stage keys changed; now:\n{listing}");
    }
}
