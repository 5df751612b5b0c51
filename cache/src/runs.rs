//! Run records: one per `drover run` or `drover nightly`, for `drover runs`, metrics over time,
//! reports and gc roots. Every field added after the first release is optional, so records
//! written by an earlier drover keep reading.

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
    /// What the op noted about how it ran, by name (`device`: the compute device it used), each a
    /// field of the stage's entry (so `"device": ...` reads as it did before notes were a map).
    /// Never in a key. A field a later drover adds reads as a note here rather than failing.
    #[serde(flatten)]
    pub notes: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub attempts: u32,
    /// When it started, in milliseconds after the run started (stages that ran; a report's
    /// timeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// The stages it read from (expansion ids), so that a report can draw the graph from the
    /// record alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Why it ran, in words, as `drover plan` says it (`param `x` changed from 22 to 23`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl RunStage {
    /// A text note of the stage's op (`device`).
    pub fn note(&self, name: &str) -> Option<&str> {
        self.notes.get(name).and_then(serde_json::Value::as_str)
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
    /// `ok`, `failed`, `interrupted`, or `skipped` (a scheduled run that found the previous one
    /// still going, and ran nothing).
    pub status: String,
    pub stages: Vec<RunStage>,
    /// How the run started; absent in records written before triggers were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// The machine it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The git commit checked out in the pipeline's repository (absent outside one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_revision: Option<String>,
    /// blake3 of the pipeline's params after overrides (`-p`, `--set`), as sorted compact JSON
    /// ([`crate::hash::params_digest`]): two runs with one digest ran with the same params.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_digest: Option<String>,
    /// Metric values by name (`fit.alpha.estimate`), read from the outputs the stages'
    /// `metrics:` name once the run ended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Regression thresholds the pipeline declared (`fit.alpha.estimate > 5%`), as written
    /// with full metric names, so that `drover metrics diff` needs no pipeline file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fail_if: Vec<String>,
}

/// How a run started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// `manual` (a person), `cron`, `systemd` or `slurm` (a schedule's entry), or `nightly`
    /// (`drover nightly` run by hand).
    pub kind: String,
    /// The schedule's name, for a nightly run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

impl RunRecord {
    /// A sortable run id from a UTC time, unique among every process sharing a store, on
    /// any host: `YYYYmmddTHHMMSS.mmm-PID-TAG`, where TAG is the first 8 hex digits of this
    /// host's tag ([`crate::host`]), then `.N` for a process's later runs (a library running
    /// twice in one millisecond). The milliseconds order runs started in the same second (a
    /// nightly run and the one it compares with, in tests; two runs on one store): ids of the
    /// older form, `YYYYmmddTHHMMSS-PID`, sort before them within their second, since `-` sorts
    /// before `.`.
    pub fn new_id(at: std::time::SystemTime) -> String {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let (secs, ms) = (since.as_secs(), since.subsec_millis());
        let (days, rem) = (secs / 86400, secs % 86400);
        let (y, m, d) = civil_from_days(days as i64);
        let me = crate::host::me();
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let again = if n == 0 { String::new() } else { format!(".{n}") };
        format!(
            "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{ms:03}-{}-{}{again}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            me.pid,
            &me.tag[..8]
        )
    }

    /// `2026-11-29 06:30:12 UTC`, from `started`.
    pub fn started_utc(&self) -> String {
        utc(self.started)
    }

    /// The trigger's kind, `manual` for records from before triggers were recorded.
    pub fn trigger_kind(&self) -> &str {
        self.trigger.as_ref().map_or("manual", |t| t.kind.as_str())
    }
}

/// `YYYY-mm-dd HH:MM:SS UTC` for Unix seconds.
pub fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
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
        assert!(first.starts_with(&format!("20261129T063012.000-{}-{}", me.pid, &me.tag[..8])), "{first}");
        assert_ne!(first, second, "two runs of one process in one millisecond");
        let later = t + std::time::Duration::from_millis(45);
        assert!(RunRecord::new_id(later).starts_with("20261129T063012.045-"));
        // An id of the older form sorts before every new one of its second.
        assert!("20261129T063012-99999" < RunRecord::new_id(t).as_str());
        assert_eq!(utc(1_795_933_812), "2026-11-29 06:30:12 UTC");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    /// A record written before triggers, metrics and timelines were recorded still reads.
    #[test]
    fn records_from_earlier_releases_still_read() {
        let old = r#"{"id":"20261129T063012-7","pipeline":"p","file":"p.yaml","started":1795933812,
            "duration_ms":5,"status":"ok","stages":[{"stage":"a","outcome":"ran","duration_ms":3,
            "device":"cpu","attempts":1}]}"#;
        let r: RunRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.trigger, None);
        assert_eq!(r.trigger_kind(), "manual");
        assert!(r.metrics.is_empty() && r.fail_if.is_empty() && r.host.is_none());
        assert_eq!(r.stages[0].started_ms, None);
        assert_eq!(r.stages[0].note("device"), Some("cpu"));
        assert!(r.stages[0].inputs.is_empty() && r.stages[0].reasons.is_empty());
    }
}
