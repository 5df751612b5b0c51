//! Stage records: what a successful stage produced, keyed by its cache key.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::object::ObjectHash;

/// A stage's cache key: blake3 of its canonical recipe, 64 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CacheKey(String);

impl CacheKey {
    /// Only [`crate::hash`] makes keys.
    pub(crate) fn from_hash(hash: blake3::Hash) -> CacheKey {
        CacheKey(hash.to_hex().to_string())
    }

    pub fn parse(hex: &str) -> Option<CacheKey> {
        ObjectHash::parse(hex).map(|h| CacheKey(h.as_str().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an output is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// A Parquet file.
    Table,
    /// An opaque file.
    Blob,
    /// A [`crate::DirManifest`] object.
    Dir,
}

/// One output of a stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRef {
    pub kind: OutputKind,
    pub hash: ObjectHash,
    pub size: u64,
}

/// What explains a record's recipe without entering its key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The pipeline params the stage used (`${params.x}`) and their values, so that a later plan
    /// can say "param `x` changed from 22 to 23" rather than "`with.run` changed". `None` in a
    /// record older than this field.
    #[serde(default)]
    pub params: Option<BTreeMap<String, serde_json::Value>>,
}

/// `null` (as very old records hold) reads as the default.
fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Written after every output object is durable; its presence means "this key is done".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: CacheKey,
    /// The stage id that first produced this key (informational).
    pub stage: String,
    /// The canonical recipe, kept so that a later plan can say what changed.
    pub recipe: serde_json::Value,
    /// What explains the recipe without entering the key.
    #[serde(default, deserialize_with = "null_as_default")]
    pub provenance: Provenance,
    pub outputs: BTreeMap<String, OutputRef>,
    /// Unix seconds.
    pub created: u64,
    pub duration_ms: u64,
}
