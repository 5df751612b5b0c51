//! Credentials for a remote: the `AWS_*` environment variables, else a profile of the shared
//! credentials file (`~/.aws/credentials`), read here rather than through the AWS SDK (which
//! would build aws-lc). Kept in memory only: never stored, and `Debug` hides the secrets.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{RemoteError, Result};

/// An access key and its secret (and a session token for temporary credentials).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &"<hidden>")
            .field("secret_access_key", &"<hidden>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

const HINT: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add the profile to ~/.aws/credentials \
                    (AWS_PROFILE picks a profile, AWS_SHARED_CREDENTIALS_FILE another file)";

impl Credentials {
    /// From this process's environment and home directory.
    pub fn from_env() -> Result<Credentials> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Credentials::resolve(|name| std::env::var(name).ok().filter(|v| !v.is_empty()), home.as_deref())
    }

    /// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`) when both are set;
    /// else the profile `AWS_PROFILE` (default `default`) of `AWS_SHARED_CREDENTIALS_FILE` (default
    /// `~/.aws/credentials`). `env` answers a variable's value (tests pass their own).
    pub fn resolve(env: impl Fn(&str) -> Option<String>, home: Option<&Path>) -> Result<Credentials> {
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => {
                return Ok(Credentials { access_key_id, secret_access_key, session_token: env("AWS_SESSION_TOKEN") });
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(RemoteError::Credentials {
                    detail: "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set".into(),
                    hint: HINT,
                });
            }
            (None, None) => {}
        }
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let file = match env("AWS_SHARED_CREDENTIALS_FILE") {
            Some(f) => PathBuf::from(f),
            None => match home {
                Some(home) => home.join(".aws").join("credentials"),
                None => {
                    return Err(RemoteError::Credentials {
                        detail: "no AWS_* variables and no home directory to find ~/.aws/credentials in".into(),
                        hint: HINT,
                    });
                }
            },
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RemoteError::Credentials {
                    detail: format!("no AWS_* variables, and {} does not exist", file.display()),
                    hint: HINT,
                });
            }
            Err(e) => {
                return Err(RemoteError::Credentials { detail: format!("read {}: {e}", file.display()), hint: HINT });
            }
        };
        from_profile(&text, &profile, &file)
    }
}

/// One profile of a credentials file (INI: `[name]` sections of `key = value` lines, `#` and
/// `;` comments). Errors name the file, line and key, never a value.
fn from_profile(text: &str, profile: &str, file: &Path) -> Result<Credentials> {
    let mut section: Option<&str> = None;
    let (mut id, mut secret, mut token) = (None, None, None);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(RemoteError::Credentials {
                detail: format!("{}:{}: expected `key = value` or `[profile]`", file.display(), n + 1),
                hint: HINT,
            });
        };
        if section != Some(profile) {
            continue;
        }
        let value = Some(value.trim().to_string());
        match key.trim() {
            "aws_access_key_id" => id = value,
            "aws_secret_access_key" => secret = value,
            "aws_session_token" => token = value,
            _ => {}
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Ok(Credentials { access_key_id, secret_access_key, session_token: token })
        }
        _ => Err(RemoteError::Credentials {
            detail: format!(
                "profile `{profile}` of {} has no aws_access_key_id and aws_secret_access_key",
                file.display()
            ),
            hint: HINT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    const FILE: &str = "# team keys\n[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s3cr3t-default\n\n\
                        [ci]\naws_access_key_id=AKIACI\naws_secret_access_key=s3cr3t-ci\naws_session_token = tok\n";

    #[test]
    fn environment_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(dir.path().join(".aws/credentials"), FILE).unwrap();
        let c = Credentials::resolve(
            env(&[("AWS_ACCESS_KEY_ID", "AKIAENV"), ("AWS_SECRET_ACCESS_KEY", "env-secret")]),
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("AKIAENV", "env-secret"));
        let d = Credentials::resolve(env(&[]), Some(dir.path())).unwrap();
        assert_eq!((d.access_key_id.as_str(), d.session_token), ("AKIADEFAULT", None));
        let ci = Credentials::resolve(env(&[("AWS_PROFILE", "ci")]), Some(dir.path())).unwrap();
        assert_eq!((ci.access_key_id.as_str(), ci.session_token.as_deref()), ("AKIACI", Some("tok")));
    }

    #[test]
    fn errors_and_debug_never_show_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        std::fs::write(&file, FILE).unwrap();
        let path = file.to_str().unwrap();
        let e = Credentials::resolve(env(&[("AWS_SHARED_CREDENTIALS_FILE", path), ("AWS_PROFILE", "prod")]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("profile `prod` of {path} has no aws_access_key_id")), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        std::fs::write(&file, "[default]\naws_secret_access_key s3cr3t-line\n").unwrap();
        let e = Credentials::resolve(env(&[("AWS_SHARED_CREDENTIALS_FILE", path)]), None).unwrap_err().to_string();
        assert!(e.contains(&format!("{path}:2: expected `key = value` or `[profile]`")), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let c =
            Credentials::resolve(env(&[("AWS_ACCESS_KEY_ID", "AKIAENV"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t")]), None)
                .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("AKIAENV"), "{shown}");
        let e = Credentials::resolve(env(&[("AWS_ACCESS_KEY_ID", "AKIAENV")]), None).unwrap_err().to_string();
        assert!(e.contains("only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set"), "{e}");
    }
}
