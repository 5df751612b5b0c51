//! Leases: "I am computing this key", so that another process (on this host or another one
//! sharing the store) waits for the result instead of computing it too.
//!
//! A lease is only a way to avoid duplicate work. Correctness never depends on it: records and
//! objects are created first-writer-wins ([`crate::Store::create_record`]), so two processes
//! that both compute a key (a lease broken too early, a filesystem that lost it) store one
//! answer, and the loser adopts it. That is why there is no `flock` here: Lustre and some NFS
//! setups keep `flock` per node, so it would not exclude anything across hosts anyway.
//!
//! How it works, with nothing but files and each process's own monotonic clock:
//! - taking: the lease is written to a scratch file and `link()`ed to `locks/NAME.lease`; the
//!   link fails if someone holds it.
//! - holding: a thread rewrites the lease every quarter of its time to live with a higher
//!   `beat`, so that waiters see it change.
//! - waiting: a waiter reads the lease (open, so that NFS revalidates it) and judges it stale
//!   when its owner ran on this host (same tag: same `/proc`) and has ended, or when its
//!   content has not changed for a whole time to live by the waiter's own clock. Clocks of
//!   different hosts, and mtimes written by them, are never compared.
//! - breaking a stale lease: it is renamed away (one breaker wins the rename) and, if what was
//!   renamed is not what was judged stale (a newer lease taken in between), put back.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{CacheError, IoContext, Result};
use crate::fsutil::{Created, link_new, unique_name, write_staged};
use crate::host;

/// A holder that stops renewing for this long is taken for dead by waiters on other hosts.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// What a lease file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Body {
    /// The holder's host name, for people.
    host: String,
    /// The holder's host tag and process (see [`crate::host`]).
    tag: String,
    pid: u32,
    start: u64,
    /// This hold's own name: two holds by one process are told apart.
    nonce: String,
    /// Bumped by every renewal.
    beat: u64,
    ttl_ms: u64,
}

/// A held lease; released when dropped.
pub struct Lease {
    path: PathBuf,
    nonce: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.path.display())
    }
}

/// Who holds a lease, as a waiter sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
}

impl Lease {
    /// Waits until the lease at `path` is ours. `tmp` is scratch on the same filesystem.
    pub(crate) fn acquire(tmp: &Path, path: &Path, ttl: Duration) -> Result<Lease> {
        let mut watch = Watch::default();
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(lease) = Lease::try_acquire_watching(tmp, path, ttl, &mut watch)? {
                return Ok(lease);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Takes the lease if nobody holds it (or its holder is known to be gone); `None` otherwise.
    pub(crate) fn try_acquire(tmp: &Path, path: &Path, ttl: Duration) -> Result<Option<Lease>> {
        Lease::try_acquire_watching(tmp, path, ttl, &mut Watch::default())
    }

    fn try_acquire_watching(tmp: &Path, path: &Path, ttl: Duration, watch: &mut Watch) -> Result<Option<Lease>> {
        let me = host::me();
        let body = Body {
            host: me.hostname.clone(),
            tag: me.tag.clone(),
            pid: me.pid,
            start: me.start,
            nonce: unique_name("lease"),
            beat: 0,
            ttl_ms: ttl.as_millis() as u64,
        };
        let staged = write_staged(tmp, "lease", &serde_json::to_vec(&body).expect("leases serialise"))?;
        let created = link_new(&staged, path);
        let _ = fs::remove_file(&staged);
        if created? == Created::Yes {
            return Ok(Some(Lease::hold(tmp, path, body)));
        }
        if watch.stale(path)? {
            break_lease(tmp, path, &watch.seen)?;
        }
        Ok(None)
    }

    fn hold(tmp: &Path, path: &Path, mut body: Body) -> Lease {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (tmp, path_) = (tmp.to_path_buf(), path.to_path_buf());
        let stop_ = stop.clone();
        let nonce = body.nonce.clone();
        let every = Duration::from_millis(body.ttl_ms / 4).max(Duration::from_millis(10));
        let renewer = std::thread::Builder::new()
            .name("drover-lease".into())
            .spawn(move || {
                let (lock, cv) = &*stop_;
                let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    // Checked under the mutex before each wait, so that a drop just after the
                    // lease was taken is not missed for a whole renewal period.
                    if *stopped {
                        return;
                    }
                    let (guard, _) = cv.wait_timeout(stopped, every).unwrap_or_else(|p| p.into_inner());
                    stopped = guard;
                    if *stopped {
                        return;
                    }
                    // Renew only a lease that is still ours (a waiter may have judged it stale).
                    if read_body(&path_).is_none_or(|b| b.nonce != body.nonce) {
                        return;
                    }
                    body.beat += 1;
                    let bytes = serde_json::to_vec(&body).expect("leases serialise");
                    if let Ok(staged) = write_staged(&tmp, "lease", &bytes)
                        && fs::rename(&staged, &path_).is_err()
                    {
                        let _ = fs::remove_file(&staged);
                    }
                }
            })
            .ok();
        Lease { path: path.to_path_buf(), nonce, stop, renewer }
    }

    /// Who holds the lease at `path` now, if anyone.
    pub(crate) fn holder(path: &Path) -> Option<Holder> {
        read_body(path).map(|b| Holder { host: b.host, pid: b.pid })
    }

    /// Whether the lease at `path` is held by a process of this host that has ended: safe to
    /// remove (what `gc` does). Leases of other hosts are never judged here.
    pub(crate) fn abandoned_here(path: &Path) -> bool {
        read_body(path).is_some_and(|b| host::alive(&b.tag, b.pid, b.start) == Some(false))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        if read_body(&self.path).is_some_and(|b| b.nonce == self.nonce) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn read_body(path: &Path) -> Option<Body> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// What a waiter has seen of a lease: its bytes, and since when (by the waiter's clock).
#[derive(Default)]
struct Watch {
    seen: Vec<u8>,
    since: Option<Instant>,
}

impl Watch {
    /// Whether the lease at `path` is stale: its owner, on this host, has ended; or its content
    /// has not changed for its time to live.
    fn stale(&mut self, path: &Path) -> Result<bool> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            // Released meanwhile (or replaced under an NFS reader): try again.
            Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESTALE) => return Ok(false),
            Err(e) => return Err(CacheError::Io { action: "read lease", path: path.to_path_buf(), source: e }),
        };
        if bytes != self.seen || self.since.is_none() {
            self.seen = bytes;
            self.since = Some(Instant::now());
        }
        let body: Option<Body> = serde_json::from_slice(&self.seen).ok();
        if let Some(b) = &body
            && host::alive(&b.tag, b.pid, b.start) == Some(false)
        {
            return Ok(true);
        }
        let ttl = body.map_or(DEFAULT_TTL, |b| Duration::from_millis(b.ttl_ms));
        Ok(self.since.is_some_and(|t| t.elapsed() > ttl))
    }
}

/// Removes a stale lease whose bytes are `seen`, unless it changed meanwhile.
fn break_lease(tmp: &Path, path: &Path, seen: &[u8]) -> Result<()> {
    let moved = tmp.join(unique_name("broken-lease"));
    match fs::rename(path, &moved) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CacheError::Io { action: "break lease", path: path.to_path_buf(), source: e }),
    }
    if fs::read(&moved).ctx("read lease", &moved)? != seen {
        // A lease taken after ours was judged stale: give it back (unless yet another one was
        // taken since, which then keeps the place; at worst a key is computed twice).
        let _ = link_new(&moved, path);
    }
    let _ = fs::remove_file(&moved);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let path = d.path().join("k.lease");
        (d, tmp, path)
    }

    #[test]
    fn a_held_lease_excludes_others_until_dropped() {
        let (_d, tmp, path) = dirs();
        let held = Lease::try_acquire(&tmp, &path, DEFAULT_TTL).unwrap().expect("free");
        assert_eq!(Lease::holder(&path), Some(Holder { host: host::me().hostname.clone(), pid: std::process::id() }));
        assert!(Lease::try_acquire(&tmp, &path, DEFAULT_TTL).unwrap().is_none(), "held by a live process");
        drop(held);
        assert!(!path.exists(), "released");
        assert!(Lease::try_acquire(&tmp, &path, DEFAULT_TTL).unwrap().is_some());
    }

    #[test]
    fn a_lease_of_an_ended_process_of_this_host_is_broken_at_once() {
        let (_d, tmp, path) = dirs();
        let me = host::me();
        let dead = Body {
            host: me.hostname.clone(),
            tag: me.tag.clone(),
            pid: me.pid,
            start: me.start + 1, // this pid, another process: the owner has ended
            nonce: "lease-1-1-x".into(),
            beat: 3,
            ttl_ms: 3_600_000,
        };
        fs::write(&path, serde_json::to_vec(&dead).unwrap()).unwrap();
        assert!(Lease::abandoned_here(&path));
        let mut watch = Watch::default();
        let lease = Lease::try_acquire_watching(&tmp, &path, DEFAULT_TTL, &mut watch).unwrap();
        assert!(lease.is_none(), "the first look breaks it");
        let lease = Lease::try_acquire_watching(&tmp, &path, DEFAULT_TTL, &mut watch).unwrap();
        assert!(lease.is_some(), "the second takes it, without waiting for its hour to live");
    }

    #[test]
    fn another_hosts_lease_is_stale_only_after_it_stops_changing_for_its_time_to_live() {
        let (_d, tmp, path) = dirs();
        let mut other = Body {
            host: "node-7".into(),
            tag: "0123456789abcdef".into(),
            pid: 1,
            start: 1,
            nonce: "lease-1-1-0123456789abcdef".into(),
            beat: 0,
            ttl_ms: 30_000,
        };
        fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        assert!(!Lease::abandoned_here(&path), "pid 1 of another host is not judged by our /proc");
        let mut watch = Watch::default();
        assert!(!watch.stale(&path).unwrap(), "just seen");
        // The waiter's own clock says a whole time to live has passed since the content last
        // changed (no sleeping: the watch is wound back).
        let wind_back = |w: &mut Watch| w.since = Some(Instant::now() - Duration::from_millis(30_001));
        wind_back(&mut watch);
        assert!(watch.stale(&path).unwrap(), "unchanged for its time to live");
        // A renewal changes the content: alive again, for another time to live.
        other.beat += 1;
        fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        assert!(!watch.stale(&path).unwrap(), "renewed");
        wind_back(&mut watch);
        assert!(Lease::try_acquire_watching(&tmp, &path, DEFAULT_TTL, &mut watch).unwrap().is_none(), "broken");
        let lease = Lease::try_acquire(&tmp, &path, DEFAULT_TTL).unwrap().expect("free after the break");
        assert_eq!(read_body(&path).unwrap().tag, host::me().tag);
        drop(lease);
    }

    #[test]
    fn a_holder_renews_so_that_waiters_see_it_alive() {
        let (_d, tmp, path) = dirs();
        let held = Lease::try_acquire(&tmp, &path, Duration::from_millis(80)).unwrap().unwrap();
        let first = read_body(&path).unwrap().beat;
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_body(&path).unwrap().beat == first {
            assert!(Instant::now() < deadline, "the lease was never renewed");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(held);
    }
}
