//! Every content hash and key drover computes, and the exact bytes each is computed over. No
//! other code feeds a hasher.
//!
//! These encodings are frozen: a store or a memo made by an earlier drover is answered only as
//! long as each one hashes the bytes it always did (the tests below pin them against hashes
//! computed outside Rust). All are blake3, as 64 lowercase hex digits:
//!
//! - a file or a blob: its bytes ([`file()`], [`bytes()`]);
//! - a directory a pipeline reads (a dep): the compact JSON list `[["rel/path","hash"],...]`
//!   sorted by path ([`dir_listing`]);
//! - a `dir` artifact: its manifest, `{"files":[{"path":..,"hash":..,"size":..}]}` sorted by
//!   path, with `"executable":true` only where set ([`manifest_bytes`]);
//! - a stage's key: its recipe's canonical JSON ([`key`]; [`sorted_json`] writes the arbitrary
//!   JSON inside a recipe with every object's keys sorted);
//! - a memo entry's key: `format`, a NUL byte, the model identity, a NUL byte, then the compact
//!   JSON of a typed request ([`memo_key`]);
//! - a run's params digest: the params' compact JSON with every object's keys sorted
//!   ([`params_digest`]).
//!
//! None depends on the order in which serde_json's maps keep their keys (the `preserve_order`
//! feature, which any crate in the build can turn on): recipes sort theirs, and a memo key is
//! written from a struct, whose fields serde writes in declaration order whatever the feature.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{CacheError, IoContext, Result};
use crate::object::{DirManifest, ObjectHash};
use crate::record::CacheKey;

/// The hash of `bytes`.
pub fn bytes(bytes: &[u8]) -> ObjectHash {
    ObjectHash::from_hash(blake3::hash(bytes))
}

/// The hash of a file's bytes. Large files are read in big blocks and hashed on every core (a
/// 2 GB input is verified before each stage that reads it). Reads, never maps: a file that is
/// truncated while it is hashed gives a wrong hash, where a map would crash the process.
pub fn file(path: &Path) -> Result<ObjectHash> {
    /// Below this a block is hashed on one thread (blake3's own advice: rayon pays from ~128 KiB).
    const PARALLEL_FROM: usize = 1 << 20;
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path).ctx("open", path)?;
    // Sized to the file (plus one byte, to see its end in one read), at most 8 MiB.
    let len = file.metadata().map_or(0, |m| m.len());
    let mut buf = vec![0u8; (len.saturating_add(1)).clamp(4096, 8 << 20) as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(CacheError::Io { action: "read", path: path.to_path_buf(), source: e }),
            }
        }
        if filled >= PARALLEL_FROM {
            hasher.update_rayon(&buf[..filled]);
        } else {
            hasher.update(&buf[..filled]);
        }
        if filled < buf.len() {
            return Ok(ObjectHash::from_hash(hasher.finalize()));
        }
    }
}

/// The hash of a directory a pipeline reads, from its files' paths (relative, `/` between
/// parts) and hashes: the listing sorted by path, as compact JSON pairs.
pub fn dir_listing(mut files: Vec<(String, ObjectHash)>) -> ObjectHash {
    files.sort();
    bytes(&serde_json::to_vec(&files).expect("a listing serialises"))
}

/// The bytes a `dir` artifact's manifest is stored as, and named by: entries sorted by path,
/// compact JSON.
pub fn manifest_bytes(manifest: &DirManifest) -> Vec<u8> {
    let mut sorted = manifest.clone();
    sorted.files.sort_by(|a, b| a.path.cmp(&b.path));
    serde_json::to_vec(&sorted).expect("a manifest always serialises")
}

/// A stage's key, from its recipe's canonical bytes (the recipe is the engine's; to the store
/// it is opaque JSON).
pub fn key(canonical: &[u8]) -> CacheKey {
    CacheKey::from_hash(blake3::hash(canonical))
}

/// The key of a memo entry: what a request's answer depends on, `format` (bumped when the
/// request or the stored answer changes shape), the model `identity`, and the request itself.
///
/// `request` must serialise the same bytes for the same request in every build: a struct (or
/// `BTreeMap`s) whose fields are in a fixed order, never a `serde_json::Value` object, whose key
/// order depends on the `preserve_order` feature.
pub fn memo_key<T: Serialize + ?Sized>(format: &str, identity: &str, request: &T) -> String {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(format.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(identity.as_bytes());
    bytes.push(0);
    serde_json::to_writer(&mut bytes, request).expect("a request serialises");
    blake3::hash(&bytes).to_hex().to_string()
}

/// The digest a run record keeps of the params it ran with (after `-p` and `--set`): blake3 of
/// their compact JSON, every object's keys sorted, so that equal params give equal digests
/// whatever order they were written in.
pub fn params_digest(params: &Value) -> String {
    let bytes = serde_json::to_vec(&Sorted(params)).expect("params serialise");
    blake3::hash(&bytes).to_hex().to_string()
}

/// Serialises arbitrary JSON with every object's keys sorted, at every level (for
/// `#[serde(serialize_with)]` on a recipe's JSON fields).
pub fn sorted_json<S: serde::Serializer>(value: &Value, serializer: S) -> Result<S::Ok, S::Error> {
    Sorted(value).serialize(serializer)
}

/// [`sorted_json`] for a map of JSON values.
pub fn sorted_json_map<S: serde::Serializer>(map: &BTreeMap<String, Value>, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut out = serializer.serialize_map(Some(map.len()))?;
    for (k, v) in map {
        out.serialize_entry(k, &Sorted(v))?;
    }
    out.end()
}

struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    out.serialize_entry(k, &Sorted(v))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Sorted(item))?;
                }
                out.end()
            }
            scalar => scalar.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every expected hash here was computed outside Rust: the bytes written by hand and hashed
    //! with PyPI's `blake3` package (`pip install blake3`).

    use super::*;
    use crate::object::DirEntry;

    fn h(hex: &str) -> ObjectHash {
        ObjectHash::parse(hex).unwrap()
    }

    const A: &str = "81c4b7f7e0549f1514e9cae97cf40cf133920418d3dc71bedbf60ec9bd6148cb"; // b"a\n"
    const B: &str = "9d902f9864f3043dca97e40698eee07a2fe6771591c687ed129cde8f6fcc4a79"; // b"b\n"
    const RUN: &str = "4b694fa6468140836e2f43625aca1150ec72032dc23a12e13416ca026c647ef3"; // b"#!/bin/sh\necho hi\n"

    #[test]
    fn files_and_bytes_hash_their_bytes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "a\n").unwrap();
        std::fs::write(d.path().join("empty"), "").unwrap();
        assert_eq!(file(&d.path().join("a")).unwrap(), h(A));
        assert_eq!(bytes(b"b\n"), h(B));
        assert_eq!(
            file(&d.path().join("empty")).unwrap(),
            h("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
        );
        // Across the block size, where hashing turns parallel.
        let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.path().join("big"), &big).unwrap();
        assert_eq!(file(&d.path().join("big")).unwrap(), bytes(&big));
    }

    #[test]
    fn a_dep_directory_hashes_its_listing_sorted_by_path() {
        // `[["b.txt","<B>"],["sub/a.txt","<A>"]]`
        let listing = vec![("sub/a.txt".to_string(), h(A)), ("b.txt".to_string(), h(B))];
        assert_eq!(dir_listing(listing), h("126fc2ba0c25eb728a7d05d6784382555a8ec7ba67a05843b3c1a9f1b815aefb"));
    }

    #[test]
    fn a_manifest_is_sorted_and_names_the_executable_bit_only_where_set() {
        let manifest = DirManifest {
            files: vec![
                DirEntry { path: "sub/a.txt".into(), hash: h(A), size: 2, executable: false },
                DirEntry { path: "run.sh".into(), hash: h(RUN), size: 18, executable: true },
            ],
        };
        let expected = format!(
            r#"{{"files":[{{"path":"run.sh","hash":"{RUN}","size":18,"executable":true}},{{"path":"sub/a.txt","hash":"{A}","size":2}}]}}"#
        );
        assert_eq!(String::from_utf8(manifest_bytes(&manifest)).unwrap(), expected);
        assert_eq!(
            bytes(&manifest_bytes(&manifest)),
            h("9d6a287478ef9789abee16962396a531650c58029f2ab4c400a3c1defbb05146")
        );
    }

    #[test]
    fn sorted_json_sorts_every_level_whatever_the_insertion_order() {
        #[derive(Serialize)]
        struct Recipe<'a> {
            #[serde(serialize_with = "sorted_json")]
            params: &'a Value,
        }
        let params: Value = serde_json::from_str(r#"{"z":{"y":1,"x":[{"b":2,"a":1}]},"a":null}"#).unwrap();
        let canonical = serde_json::to_vec(&Recipe { params: &params }).unwrap();
        let text = r#"{"params":{"a":null,"z":{"x":[{"a":1,"b":2}],"y":1}}}"#;
        assert_eq!(String::from_utf8(canonical.clone()).unwrap(), text);
        assert_eq!(key(&canonical).as_str(), "17879a151ec5573bfab98df82efe409fd7b848ca49b35ffd966a729842c278bf");
    }

    #[test]
    fn a_params_digest_hashes_sorted_compact_json() {
        // b'{"a":[1,2],"b":{"c":"x","d":null}}'
        let params: Value = serde_json::from_str(r#"{"b":{"d":null,"c":"x"},"a":[1,2]}"#).unwrap();
        assert_eq!(params_digest(&params), "f9c852ae0ce60a799b24f2d70f1a5d68d69dc393e2c165356f930e76585b50f1");
    }

    #[test]
    fn a_memo_key_is_format_identity_and_request_separated_by_nul() {
        #[derive(Serialize)]
        struct Request {
            prompt: &'static str,
            max_tokens: u32,
        }
        // b"f\0model m\0{\"prompt\":\"hi\",\"max_tokens\":8}"
        let key = memo_key("f", "model m", &Request { prompt: "hi", max_tokens: 8 });
        assert_eq!(key, "efe7bb15d56bf1fbe79ff0b94dbaca726ba74af5e7c8f3d90f373681c132592c");
    }
}
