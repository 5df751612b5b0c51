//! Run records: one per `drover run`, for `drover runs` and for gc roots.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::CacheKey;

/// What happened to one stage in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageOutcome {
    /// Found in the store (or computed by a concurrent run while we waited).
    Cached,
    /// Computed by this run.
    Ran,
    Failed,
    /// Not run because something it needs failed.
    Skipped,
    /// Not run because the run was interrupted first.
    Interrupted,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunStage {
    pub stage: String,
    pub outcome: StageOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<CacheKey>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Path of the stage's log, relative to the store root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// What the op noted about how it ran, by name (`device`: the compute device it used). Never
    /// in a key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
    /// `device` as records before `notes` wrote it; read, never written (see [`RunStage::note`]).
    #[serde(default, rename = "device", skip_serializing)]
    pub legacy_device: Option<String>,
    #[serde(default)]
    pub attempts: u32,
}

impl RunStage {
    /// A note of the stage's op (`device`), also from records written before notes were a map.
    pub fn note(&self, name: &str) -> Option<&str> {
        self.notes
            .get(name)
            .map(String::as_str)
            .or_else(|| (name == "device").then_some(self.legacy_device.as_deref()).flatten())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// Sortable id: `YYYYmmddTHHMMSS-PID-TAG` (see [`RunRecord::new_id`]).
    pub id: String,
    pub pipeline: String,
    pub file: String,
    /// Unix seconds.
    pub started: u64,
    pub duration_ms: u64,
    /// `ok`, `failed` or `interrupted`.
    pub status: String,
    pub stages: Vec<RunStage>,
}

impl RunRecord {
    /// A sortable run id from a UTC time, unique among every process sharing a store, on
    /// any host: `YYYYmmddTHHMMSS-PID-TAG`, where TAG is the first 8 hex digits of this host's
    /// tag ([`crate::host`]), then `.N` for a process's later runs (a library running twice
    /// in one second). Ids sort by start time to the second, then by no meaningful order.
    pub fn new_id(at: std::time::SystemTime) -> String {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let secs = at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (days, rem) = (secs / 86400, secs % 86400);
        let (y, m, d) = civil_from_days(days as i64);
        let me = crate::host::me();
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let again = if n == 0 { String::new() } else { format!(".{n}") };
        format!(
            "{y:04}{m:02}{d:02}T{:02}{:02}{:02}-{}-{}{again}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            me.pid,
            &me.tag[..8]
        )
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, UTC).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_utc_timestamps() {
        // 2026-11-29T06:30:12Z = 1795933812 (date -u -d @1795933812).
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_933_812);
        let me = crate::host::me();
        let first = RunRecord::new_id(t);
        let second = RunRecord::new_id(t);
        assert!(first.starts_with(&format!("20261129T063012-{}-{}", me.pid, &me.tag[..8])), "{first}");
        assert_ne!(first, second, "two runs of one process in one second");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
