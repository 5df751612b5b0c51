//! Memo entries (language-model responses) on the remote, packed: one object holds every entry
//! a run added, so sharing 10,000 responses costs one upload, not 10,000, and a machine that
//! joins later answers those requests without sending them.
//!
//! A pack is `memo/<blake3 of the pack>.pack`: entries one after another, each `KEY\nLEN\n`
//! then LEN bytes of value. Packs are created once and never changed, so a download is
//! verified by its name. What this machine already knows is kept beside the store
//! (`remote/<id>/memo-known`: keys known to be on the remote, `packs-seen`: packs read), so a
//! run lists the packs (one request) and reads only new ones, and pushes only new entries.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use drover_cache::{CacheError, Store};
use object_store::{PutMode, PutOptions, PutPayload};

use crate::error::{RemoteError, Result};
use crate::remote::Remote;

/// What this machine knows of one remote's memo packs.
struct Known {
    dir: PathBuf,
}

impl Known {
    fn lines(&self, name: &str) -> BTreeSet<String> {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default().lines().map(str::to_string).collect()
    }

    fn append<'a>(&self, name: &str, lines: impl IntoIterator<Item = &'a String>) -> Result<()> {
        let path = self.dir.join(name);
        let io = |source| RemoteError::Local(CacheError::Io { action: "write", path: path.clone(), source });
        fs::create_dir_all(&self.dir).map_err(io)?;
        let mut text = String::new();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        let mut file = fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)
    }
}

/// Packs `entries` into one object's bytes.
fn pack(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in entries {
        out.extend_from_slice(format!("{key}\n{}\n", value.len()).as_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The entries of a pack; `None` when it is not one (truncated, or not a pack).
fn unpack(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut entries = Vec::new();
    let mut rest = bytes;
    let line = |rest: &mut &[u8]| -> Option<String> {
        let end = rest.iter().position(|&b| b == b'\n')?;
        let text = std::str::from_utf8(&rest[..end]).ok()?.to_string();
        *rest = &rest[end + 1..];
        Some(text)
    };
    while !rest.is_empty() {
        let key = line(&mut rest)?;
        let len: usize = line(&mut rest)?.parse().ok()?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) || rest.len() < len {
            return None;
        }
        entries.push((key, rest[..len].to_vec()));
        rest = &rest[len..];
    }
    Some(entries)
}

/// What a memo sync moved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MemoSync {
    pub packs: usize,
    pub entries: usize,
}

impl Remote {
    fn known(&self, store: &Store) -> Known {
        Known { dir: self.state_dir(store) }
    }

    /// Where this machine keeps what it knows of this remote, inside the store.
    pub fn state_dir(&self, store: &Store) -> PathBuf {
        let id = blake3::hash(
            format!("{}\0{}", self.config().url, self.config().endpoint.as_deref().unwrap_or("")).as_bytes(),
        )
        .to_hex();
        store.root().join("remote").join(&id[..16])
    }

    /// Reads the packs this machine has not read (one listing, one download each) into the
    /// local memo; entries already here are kept (the first answer stays).
    pub async fn pull_memo(&self, store: &Store) -> Result<MemoSync> {
        let known = self.known(store);
        let seen = known.lines("packs-seen");
        let listed = self.list_all("memo").await?;
        let memo = store.memo();
        let mut sync = MemoSync::default();
        let (mut new_packs, mut new_keys) = (Vec::new(), Vec::new());
        for meta in listed {
            let Some(name) = meta.location.filename().map(str::to_string) else { continue };
            let Some(hash) = name.strip_suffix(".pack") else { continue };
            if seen.contains(&name) {
                continue;
            }
            let Some(bytes) = self.fetch_bytes("download", &meta.location).await? else { continue };
            let corrupt = |detail: String| RemoteError::Corrupt {
                what: "memo pack",
                location: meta.location.to_string(),
                detail,
            };
            if blake3::hash(&bytes).to_hex().as_str() != hash {
                return Err(corrupt(format!("its {} bytes do not hash to its name", bytes.len())));
            }
            let entries = unpack(&bytes).ok_or_else(|| corrupt("it is not a memo pack".into()))?;
            for (key, value) in entries {
                if memo.get(&key).is_none() {
                    memo.put(&key, &value)?;
                    sync.entries += 1;
                }
                new_keys.push(key);
            }
            sync.packs += 1;
            new_packs.push(name);
        }
        memo.sync();
        known.append("memo-known", &new_keys)?;
        known.append("packs-seen", &new_packs)?;
        Ok(sync)
    }

    /// Sends, as one pack, every memo entry here that the remote is not known to have.
    pub async fn push_memo(&self, store: &Store) -> Result<MemoSync> {
        self.writable()?;
        let known = self.known(store);
        let on_remote = known.lines("memo-known");
        let memo = store.memo();
        let mut entries: Vec<(String, Vec<u8>)> = memo
            .keys()
            .into_iter()
            .filter(|k| !on_remote.contains(k))
            .filter_map(|k| memo.get(&k).map(|v| (k, v)))
            .collect();
        if entries.is_empty() {
            return Ok(MemoSync::default());
        }
        entries.sort();
        let bytes = pack(&entries);
        let name = format!("{}.pack", blake3::hash(&bytes).to_hex());
        let location = object_store::path::Path::from(self.config().key(&format!("memo/{name}")));
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store().put_opts(&location, PutPayload::from(Bytes::from(bytes)), opts).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(source) => {
                return Err(RemoteError::Request { action: "upload", location: location.to_string(), source });
            }
        }
        let keys: Vec<String> = entries.into_iter().map(|(k, _)| k).collect();
        known.append("memo-known", &keys)?;
        known.append("packs-seen", [&name])?;
        Ok(MemoSync { packs: 1, entries: keys.len() })
    }
}

/// The pack format, alone.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_reads_back_as_its_entries_and_a_cut_one_is_refused() {
        let entries = vec![("ab01".to_string(), b"first\nvalue".to_vec()), ("cd02".to_string(), Vec::new())];
        let bytes = pack(&entries);
        assert_eq!(unpack(&bytes), Some(entries));
        assert_eq!(unpack(&bytes[..bytes.len() - 12]), None);
        assert_eq!(unpack(b"not hex\n1\nx"), None);
    }
}
