//! The test S3 server that `tests/support/s3-server.sh start DIR` announces (`DROVER_TEST_S3_*`),
//! shared by drover's end-to-end tests and drover-remote's (`#[path]`-included by both).

/// Where the server is and the test key that may use it.
pub struct TestS3 {
    pub endpoint: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

/// The server, or `None` (after saying so) when none is set up outside CI. In CI (`CI` or
/// `DROVER_REQUIRE_S3` set) a missing server fails the test instead.
pub fn test_s3() -> Option<TestS3> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        var("DROVER_TEST_S3_ENDPOINT"),
        var("DROVER_TEST_S3_BUCKET"),
        var("DROVER_TEST_S3_ACCESS_KEY_ID"),
        var("DROVER_TEST_S3_SECRET_ACCESS_KEY"),
    ) {
        (Some(endpoint), Some(bucket), Some(key_id), Some(secret)) => Some(TestS3 { endpoint, bucket, key_id, secret }),
        _ if std::env::var_os("CI").is_some() || std::env::var_os("DROVER_REQUIRE_S3").is_some() => panic!(
            "these tests need an S3 server and none is set up: DROVER_TEST_S3_ENDPOINT etc. are unset \
             (eval \"$(tests/support/s3-server.sh start DIR)\")"
        ),
        _ => {
            eprintln!("NOT RUN: no S3 server (eval \"$(tests/support/s3-server.sh start DIR)\")");
            None
        }
    }
}

impl TestS3 {
    /// The mapping form of a remote under a prefix no other test (or earlier run) uses.
    pub fn fresh_remote(&self, area: &str) -> serde_json::Value {
        let nonce: u64 = rand::random();
        serde_json::json!({
            "url": format!("s3://{}/{area}/{nonce:016x}", self.bucket),
            "endpoint": self.endpoint,
            "allow_http": true,
        })
    }
}
