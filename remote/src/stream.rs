//! Large objects, moved without holding them in memory: up in parts (a multipart upload, which
//! the server shows only once it is complete, so a half-sent object is never visible), down as
//! a stream into the store's scratch. Both are hashed on the way and refused on a mismatch.

use std::io::{Read, Write};
use std::path::Path;

use drover_cache::{CacheError, ObjectHash, Store};
use futures::StreamExt;
use object_store::WriteMultipart;

use crate::error::{RemoteError, Result};
use crate::remote::Remote;

/// Objects at least this large are streamed; smaller ones go in one request.
pub const STREAM_FROM: u64 = 64 << 20;

/// The size of an upload's parts (S3 takes 5 MiB to 5 GiB, and at most 10,000 parts: 160 GB).
const PART: usize = 16 << 20;

/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RemoteError + 'a {
    move |source| RemoteError::Local(CacheError::Io { action, path: path.to_path_buf(), source })
}

impl Remote {
    /// Uploads the file at `path` in parts as object `hash`. The bytes read are hashed as they
    /// go; if they are not `hash` (the file changed), the upload is aborted and nothing appears.
    pub(crate) async fn put_object_streamed(&self, hash: &ObjectHash, path: &Path) -> Result<()> {
        self.writable()?;
        let location = self.object_path(hash);
        let fail = |source| RemoteError::Request { action: "upload", location: location.to_string(), source };
        let upload = self.store().put_multipart(&location).await.map_err(fail)?;
        let mut write = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut file = std::fs::File::open(path).map_err(io("open", path))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; PART];
        loop {
            let n = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = write.abort().await;
                    return Err(io("read", path)(e));
                }
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if let Err(source) = write.wait_for_capacity(PARTS_IN_FLIGHT).await {
                return Err(fail(source));
            }
            write.write(&buf[..n]);
        }
        let actual = ObjectHash::parse(&hasher.finalize().to_hex()).expect("blake3 gives 64 hex digits");
        if &actual != hash {
            let _ = write.abort().await;
            return Err(RemoteError::Corrupt {
                what: "upload of object",
                location: location.to_string(),
                detail: format!("the local file {} now hashes to {actual}", path.display()),
            });
        }
        write.finish().await.map_err(fail)?;
        Ok(())
    }

    /// Downloads object `hash` into the store, verified against its name before it is stored:
    /// a small one in one piece, a large one as a stream through the store's scratch. Returns
    /// its size, or `None` when the remote lacks it.
    pub(crate) async fn get_object_into(&self, store: &Store, hash: &ObjectHash) -> Result<Option<u64>> {
        let location = self.object_path(hash);
        let fail = |source| RemoteError::Request { action: "download", location: location.to_string(), source };
        let got = match self.store().get(&location).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(fail(source)),
        };
        let corrupt = |size: u64, actual: &ObjectHash| RemoteError::Corrupt {
            what: "object",
            location: location.to_string(),
            detail: format!("its {size} bytes hash to {actual}, not to its name"),
        };
        if got.meta.size < STREAM_FROM {
            let bytes = got.bytes().await.map_err(fail)?;
            let actual = drover_cache::hash::bytes(&bytes);
            if &actual != hash {
                return Err(corrupt(bytes.len() as u64, &actual));
            }
            store.put_bytes(&bytes)?;
            return Ok(Some(bytes.len() as u64));
        }
        let dir = store.new_work_dir("download")?;
        let result = async {
            let path = dir.join("object");
            let mut file = std::fs::File::create(&path).map_err(io("create", &path))?;
            let mut hasher = blake3::Hasher::new();
            let mut size = 0u64;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(fail)?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk).map_err(io("write", &path))?;
            }
            drop(file);
            let actual = ObjectHash::parse(&hasher.finalize().to_hex()).expect("blake3 gives 64 hex digits");
            if &actual != hash {
                return Err(corrupt(size, &actual));
            }
            store.put_file(&path)?;
            Ok(Some(size))
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}
