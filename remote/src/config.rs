//! Where a remote is: `remote: s3://bucket/prefix`, or the mapping form for S3-compatible
//! servers, from the pipeline, `--remote` or `DROVER_REMOTE`.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{RemoteError, Result};

/// A remote's place and how to reach it. Holds no credential: those are read from the
/// environment each time ([`crate::Credentials`]), so nothing here can leak one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `s3://bucket/prefix` as written, for messages.
    pub url: String,
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    /// An S3-compatible server's address (`http://127.0.0.1:8333`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1` (what S3-compatible servers
    /// expect in the signature when they care at all).
    pub region: Option<String>,
    /// `http://endpoint/bucket/key` rather than `http://bucket.endpoint/key`: what most
    /// S3-compatible servers (SeaweedFS, MinIO, Ceph) need. Default: true with an endpoint.
    pub path_style: bool,
    /// Allow plain HTTP (a server on loopback or a private network).
    pub allow_http: bool,
}

/// The mapping form as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    url: String,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    path_style: Option<bool>,
    #[serde(default)]
    allow_http: Option<bool>,
}

const URL_HINT: &str = "write `remote: s3://BUCKET/PREFIX` (the prefix may be empty)";
const MAPPING_HINT: &str = "write `remote: s3://BUCKET/PREFIX` or `remote: { url: s3://BUCKET/PREFIX, endpoint: http://HOST:PORT, \
     region: REGION, path_style: true, allow_http: true }`";

impl RemoteConfig {
    /// `s3://bucket/prefix`.
    pub fn parse_url(url: &str) -> Result<RemoteConfig> {
        let bad =
            |detail: &str| RemoteError::Config { value: url.to_string(), detail: detail.to_string(), hint: URL_HINT };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("expected a URL that starts with `s3://`"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is empty"));
        }
        // S3's own rule for new buckets: 3-63 of lowercase letters, digits, `-` and `.`.
        let valid = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(bad(&format!(
                "`{bucket}` is not a bucket name (3 to 63 lowercase letters, digits, `-` and `.`)"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == "." || part == "..") || prefix.contains("//") {
            return Err(bad("the prefix has an empty, `.` or `..` part"));
        }
        Ok(RemoteConfig {
            url: url.to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: None,
            region: None,
            path_style: false,
            allow_http: false,
        })
    }

    /// The section's value: a URL string or the mapping form.
    pub fn from_value(value: &Value) -> Result<RemoteConfig> {
        if let Value::String(url) = value {
            return RemoteConfig::parse_url(url);
        }
        let spec: Spec = serde_json::from_value(value.clone()).map_err(|e| RemoteError::Config {
            value: value.to_string(),
            detail: e.to_string(),
            hint: MAPPING_HINT,
        })?;
        let mut config = RemoteConfig::parse_url(&spec.url)?;
        if let Some(endpoint) =
            spec.endpoint.as_ref().filter(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err(RemoteError::Config {
                value: endpoint.clone(),
                detail: "`endpoint` must start with `http://` or `https://`".into(),
                hint: MAPPING_HINT,
            });
        }
        config.path_style = spec.path_style.unwrap_or(spec.endpoint.is_some());
        config.allow_http = spec.allow_http.unwrap_or(false);
        if spec.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")) && !config.allow_http {
            return Err(RemoteError::Config {
                value: spec.endpoint.clone().unwrap_or_default(),
                detail: "a plain-HTTP endpoint sends objects unencrypted; it needs `allow_http: true`".into(),
                hint: MAPPING_HINT,
            });
        }
        config.endpoint = spec.endpoint;
        config.region = spec.region;
        Ok(config)
    }

    /// An object's name in the bucket: `<prefix>/<rest>`.
    pub(crate) fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() { rest.to_string() } else { format!("{}/{rest}", self.prefix) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn url_gives_bucket_and_prefix() {
        let c = RemoteConfig::parse_url("s3://team-cache/drover/proj/").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("team-cache", "drover/proj"));
        assert_eq!(c.key("objects/ab/x"), "drover/proj/objects/ab/x");
        let root = RemoteConfig::parse_url("s3://team-cache").unwrap();
        assert_eq!(root.key("records/ab/k.json"), "records/ab/k.json");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let e = RemoteConfig::parse_url("gs://b/p").unwrap_err().to_string();
        assert!(e.contains("remote \"gs://b/p\": expected a URL that starts with `s3://`"), "{e}");
        assert!(e.contains("hint: write `remote: s3://BUCKET/PREFIX`"), "{e}");
        let e = RemoteConfig::parse_url("s3://Team_Cache/p").unwrap_err().to_string();
        assert!(e.contains("`Team_Cache` is not a bucket name"), "{e}");
        let e = RemoteConfig::parse_url("s3://bucket/a/../b").unwrap_err().to_string();
        assert!(e.contains("the prefix has an empty, `.` or `..` part"), "{e}");
    }

    #[test]
    fn mapping_form_defaults_path_style_with_an_endpoint() {
        let c = RemoteConfig::from_value(&json!({
            "url": "s3://drover/ci", "endpoint": "http://127.0.0.1:8333", "allow_http": true
        }))
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert!(c.path_style && c.allow_http);
        assert_eq!(c.region, None);
        let aws = RemoteConfig::from_value(&json!("s3://drover/ci")).unwrap();
        assert!(!aws.path_style && !aws.allow_http);
    }

    #[test]
    fn mapping_form_refuses_unknown_keys_and_silent_plain_http() {
        let e = RemoteConfig::from_value(&json!({"url": "s3://drover", "bucket": "x"})).unwrap_err().to_string();
        assert!(e.contains("unknown field `bucket`"), "{e}");
        let e =
            RemoteConfig::from_value(&json!({"url": "s3://drover", "endpoint": "http://h:1"})).unwrap_err().to_string();
        assert!(e.contains("a plain-HTTP endpoint sends objects unencrypted; it needs `allow_http: true`"), "{e}");
    }
}
