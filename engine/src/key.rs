//! The cache key: blake3 over the canonical JSON of one named struct, [`Recipe`], that lists
//! every input of a stage. The hashing itself, and the encoding of arbitrary JSON inside the
//! recipe, are `drover_cache::hash`'s, as every other content hash is.

use std::collections::BTreeMap;
use std::path::Path;

use drover_cache::hash::{self, sorted_json, sorted_json_map};
use drover_cache::{CacheKey, OutputRef, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::plan::{InputEdge, Plan};

/// Bumped when the recipe's shape or encoding changes (every key changes with it).
pub const KEY_FORMAT: u32 = 1;

/// Everything a stage's output may depend on. Secrets, endpoints, store paths, resources,
/// retries, timeouts and the clock are deliberately absent.
///
/// Fields are declared in alphabetical order and every map is a `BTreeMap`, so serde writes
/// canonical JSON directly; `params` (arbitrary JSON) is written with sorted keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// What the op resolved beyond its params (an endpoint's model id). Absent when empty, so
    /// that keys of ops without context did not change when it was added.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", serialize_with = "sorted_json_map")]
    pub context: BTreeMap<String, Value>,
    /// Content hashes of dep files, by path as written (or by an op's label).
    pub deps: BTreeMap<String, String>,
    pub format: u32,
    /// Content hashes of the inputs, by port.
    pub inputs: BTreeMap<String, RecipeInput>,
    pub op: String,
    pub op_version: u32,
    /// Declared output ports and their types (`table`, `table:csv`, `blob`, `dir`).
    pub outputs: BTreeMap<String, String>,
    /// The interpolated `with:` block.
    #[serde(serialize_with = "sorted_json")]
    pub params: Value,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecipeInput {
    One(String),
    /// `stage[*]`: each expansion's matrix values (they can become data) and hash.
    List(Vec<ListItem>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListItem {
    pub hash: String,
    #[serde(serialize_with = "sorted_json_map")]
    pub matrix: BTreeMap<String, Value>,
}

impl Recipe {
    /// Canonical JSON: object keys sorted at every level, no whitespace.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("recipes serialise")
    }

    pub fn key(&self) -> CacheKey {
        hash::key(&self.canonical_bytes())
    }
}

/// The recipe of node `idx`, given the outputs of its upstream nodes. `None` when an upstream
/// output is not known yet (it has to run first).
pub fn recipe_for(
    plan: &Plan,
    idx: usize,
    store: &Store,
    upstream: &[Option<BTreeMap<String, OutputRef>>],
) -> Result<Option<Recipe>, EngineError> {
    let node = &plan.nodes[idx];
    let mut inputs = BTreeMap::new();
    for (port, edge) in &node.inputs {
        let hash_of = |s: &crate::plan::Source| -> Option<String> {
            upstream[s.node].as_ref()?.get(&s.port).map(|o| o.hash.to_string())
        };
        let input = match edge {
            InputEdge::One(s) => match hash_of(s) {
                Some(h) => RecipeInput::One(h),
                None => return Ok(None),
            },
            InputEdge::List(sources) => {
                let mut items = Vec::with_capacity(sources.len());
                for s in sources {
                    let Some(hash) = hash_of(s) else { return Ok(None) };
                    items.push(ListItem { matrix: plan.nodes[s.node].matrix.iter().cloned().collect(), hash });
                }
                RecipeInput::List(items)
            }
        };
        inputs.insert(port.clone(), input);
    }
    let mut deps = BTreeMap::new();
    for (name, dep) in &node.deps {
        let path = crate::paths::resolve(&plan.dir, dep);
        deps.insert(
            name.clone(),
            hash_dep(store, &path).map_err(|e| EngineError::Dep {
                stage: node.id.clone(),
                path: dep.clone(),
                detail: e.to_string(),
            })?,
        );
    }
    let outputs = node
        .outputs
        .iter()
        .map(|(port, ty)| {
            let kind = match node.out_formats.get(port) {
                Some(f) if f != "parquet" => format!("{}:{f}", ty.kind_name()),
                _ => ty.kind_name(),
            };
            (port.clone(), kind)
        })
        .collect();
    Ok(Some(Recipe {
        context: node.context.clone(),
        format: KEY_FORMAT,
        op: node.op_name.clone(),
        op_version: node.op_version,
        params: node.params.clone(),
        inputs,
        deps,
        outputs,
        seed: node.seed,
    }))
}

/// A file's content hash, or for a directory the hash of its sorted (path, hash) listing
/// ([`hash::dir_listing`]). Symlinks are followed (see [`crate::paths::files_below`]): a
/// listing names files by where they appear below `path` and hashes what they lead to.
fn hash_dep(store: &Store, path: &Path) -> Result<String, EngineError> {
    if !path.is_dir() {
        return Ok(store.hash_source_file(path)?.to_string());
    }
    let mut files = Vec::new();
    for (rel, file) in crate::paths::files_below(path)? {
        files.push((rel, store.hash_source_file(&file)?));
    }
    Ok(hash::dir_listing(files).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn recipe(params: Value) -> Recipe {
        Recipe {
            context: BTreeMap::new(),
            format: KEY_FORMAT,
            op: "command".into(),
            op_version: 1,
            params,
            inputs: BTreeMap::from([("prev".to_string(), RecipeInput::One("ab".repeat(32)))]),
            deps: BTreeMap::from([("scripts/step.sh".to_string(), "cd".repeat(32))]),
            outputs: BTreeMap::from([("out".to_string(), "blob".to_string())]),
            seed: 0,
        }
    }

    #[test]
    fn canonical_encoding_is_pinned() {
        let r = recipe(json!({"run": "echo 1 > ${out.out}", "b": [1, 2.5, null]}));
        let bytes = String::from_utf8(r.canonical_bytes()).unwrap();
        let expected = format!(
            r#"{{"deps":{{"scripts/step.sh":"{cd}"}},"format":1,"inputs":{{"prev":"{ab}"}},"op":"command","op_version":1,"outputs":{{"out":"blob"}},"params":{{"b":[1,2.5,null],"run":"echo 1 > ${{out.out}}"}},"seed":0}}"#,
            cd = "cd".repeat(32),
            ab = "ab".repeat(32)
        );
        assert_eq!(bytes, expected);
        // The key is blake3 of exactly those bytes.
        assert_eq!(r.key().as_str(), blake3::hash(expected.as_bytes()).to_hex().as_str());
        // Pinned: computed independently with the Python `blake3` package over the bytes above.
        assert_eq!(r.key().as_str(), "0ddc84b5726c1826062b44e39bf660bad64310f5908bd74ba5f902dd1a6a2751");
    }

    #[test]
    fn map_order_does_not_matter() {
        let a = recipe(json!({"x": 1, "y": {"p": 1, "q": 2}}));
        let b = recipe(serde_json::from_str(r#"{"y": {"q": 2, "p": 1}, "x": 1}"#).unwrap());
        assert_eq!(a.key(), b.key());
        let c = recipe(json!({"x": 2, "y": {"p": 1, "q": 2}}));
        assert_ne!(a.key(), c.key());
    }

    /// A store and a scratch directory beside it.
    fn scratch() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join(".drover")).unwrap();
        (d, store)
    }

    /// `root/b.txt` and `root/sub/a.txt`.
    fn small_tree(root: &Path) {
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("b.txt"), "b\n").unwrap();
        std::fs::write(root.join("sub/a.txt"), "a\n").unwrap();
    }

    #[test]
    fn a_directory_dep_hashes_its_sorted_listing() {
        let (d, store) = scratch();
        let dep = d.path().join("data");
        small_tree(&dep);
        // The bytes hashed since the first release: keys of existing pipelines depend on them.
        let (a, b) = (blake3::hash(b"a\n").to_hex(), blake3::hash(b"b\n").to_hex());
        let listing = format!(r#"[["b.txt","{b}"],["sub/a.txt","{a}"]]"#);
        assert_eq!(hash_dep(&store, &dep).unwrap(), blake3::hash(listing.as_bytes()).to_hex().as_str());
        // Pinned: the same listing written by hand and hashed with PyPI's `blake3` package.
        assert_eq!(hash_dep(&store, &dep).unwrap(), "126fc2ba0c25eb728a7d05d6784382555a8ec7ba67a05843b3c1a9f1b815aefb");
    }

    #[test]
    fn symlinks_in_a_directory_dep_are_hashed_as_what_they_lead_to() {
        let (d, store) = scratch();
        let (copy, linked, elsewhere) = (d.path().join("copy"), d.path().join("linked"), d.path().join("elsewhere"));
        small_tree(&copy);
        small_tree(&elsewhere);
        std::fs::create_dir_all(&linked).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("b.txt"), linked.join("b.txt")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("sub"), linked.join("sub")).unwrap();
        assert_eq!(hash_dep(&store, &linked).unwrap(), hash_dep(&store, &copy).unwrap());
    }

    #[test]
    fn a_symlink_loop_in_a_directory_dep_is_an_error() {
        let (d, store) = scratch();
        let dep = d.path().join("data");
        small_tree(&dep);
        // Followed blindly, either loop would be walked 40 links deep (`sub/up/sub/up/...`)
        // until the kernel refused the path, in an error that names neither end of the loop.
        std::os::unix::fs::symlink("..", dep.join("sub/up")).unwrap();
        std::os::unix::fs::symlink(".", dep.join("sub/here")).unwrap();
        let err = hash_dep(&store, &dep).unwrap_err().to_string();
        // Entries are walked in name order: `here` is met before `up`.
        let expected = format!(
            "symlink loop: {} leads back to {}, a directory that contains it",
            dep.join("sub/here").display(),
            dep.join("sub").display()
        );
        assert_eq!(err, expected);
    }
}
