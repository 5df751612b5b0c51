//! Object names (blake3 hashes) and directory manifests.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The blake3 hash of an object's bytes, as 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ObjectHash(String);

impl ObjectHash {
    /// Only [`crate::hash`] names objects.
    pub(crate) fn from_hash(hash: blake3::Hash) -> ObjectHash {
        ObjectHash(hash.to_hex().to_string())
    }

    /// Parses a hex name; `None` unless it is 64 lowercase hex digits.
    pub fn parse(hex: &str) -> Option<ObjectHash> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| ObjectHash(hex.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for ObjectHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `dir` artifact: its files, each stored as an object. The manifest itself is an object
/// (canonical JSON, entries sorted by path: [`crate::hash::manifest_bytes`]), and its hash is
/// the artifact's hash.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirManifest {
    pub files: Vec<DirEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Relative path with `/` separators.
    pub path: String,
    pub hash: ObjectHash,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

impl DirManifest {
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}
