//! Secrets a stage uses but drover must never keep: which variable names look like one, and a
//! redactor that takes their values out of a command's output before it reaches the log.
//!
//! A secret reaches a command only through `secret_env: [NAME, ...]`, read from drover's own
//! environment when the stage runs. Its value enters no key, record, log or message: params
//! (and so keys and records) hold the names alone, and the command's stdout and stderr pass
//! through [`Redactor`] on their way to the stage's log.

/// True when an environment variable's name says it holds a secret (`HF_TOKEN`,
/// `WANDB_API_KEY`, `DB_PASSWORD`, `AWS_SECRET_ACCESS_KEY`), judged on whole `_`-separated
/// words, so that `TOKENIZERS_PARALLELISM` or `MAX_TOKENS` are not.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let words: Vec<&str> = upper.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
    words.iter().enumerate().any(|(i, w)| match *w {
        "TOKEN" | "SECRET" | "PASSWORD" | "PASSWD" | "PASSPHRASE" | "CREDENTIAL" | "CREDENTIALS" | "APIKEY" => true,
        "KEY" => i > 0 && matches!(words[i - 1], "API" | "ACCESS" | "PRIVATE" | "SECRET" | "SIGNING" | "AUTH"),
        _ => false,
    })
}

/// True when a value has the shape of a well-known credential (OpenAI, Anthropic, Hugging Face,
/// GitHub, GitLab, Slack, AWS access key ids): such a value must not sit in a recorded param.
pub fn looks_like_token(value: &str) -> bool {
    let v = value.trim();
    let rest_is_key = |prefix: &str, min: usize| {
        v.strip_prefix(prefix).is_some_and(|rest| {
            rest.len() >= min && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    rest_is_key("sk-", 20)
        || rest_is_key("hf_", 30)
        || ["ghp_", "gho_", "ghs_", "ghu_", "github_pat_", "glpat-"].iter().any(|p| rest_is_key(p, 20))
        || ["xoxb-", "xoxp-", "xoxa-", "xoxs-"].iter().any(|p| rest_is_key(p, 10))
        || (v.len() == 20 && v.starts_with("AKIA") && v.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
}

/// True for a name a shell can export: letters, digits and `_`, not starting with a digit.
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Replaces every occurrence of the secrets in a byte stream with `***`, whatever the chunking
/// (a secret split across two reads is still found).
pub struct Redactor {
    secrets: Vec<Vec<u8>>,
    /// Bytes held back at the end of the input: a secret may start there.
    keep: usize,
    pending: Vec<u8>,
}

impl Redactor {
    /// A redactor for these values (empty ones are ignored: they would match everywhere).
    pub fn new<I: IntoIterator<Item = Vec<u8>>>(secrets: I) -> Redactor {
        let mut secrets: Vec<Vec<u8>> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // Longest first, so that a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let keep = secrets.iter().map(|s| s.len() - 1).max().unwrap_or(0);
        Redactor { secrets, keep, pending: Vec::new() }
    }

    /// True when there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Takes the next bytes of the stream; returns what can be written out now.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        self.drain(false)
    }

    /// The end of the stream: everything held back.
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    fn drain(&mut self, last: bool) -> Vec<u8> {
        let p = &self.pending;
        // A match may start before `limit` and be complete in `p`; past it, only at the end.
        let limit = if last { p.len() } else { p.len().saturating_sub(self.keep) };
        let mut out = Vec::with_capacity(p.len());
        let mut i = 0;
        while i < limit {
            match self.secrets.iter().find(|s| p[i..].starts_with(s)) {
                Some(s) => {
                    out.extend_from_slice(b"***");
                    i += s.len();
                }
                None => {
                    out.push(p[i]);
                    i += 1;
                }
            }
        }
        self.pending.drain(..i.min(self.pending.len()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_judged_on_whole_words() {
        for name in ["HF_TOKEN", "WANDB_API_KEY", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "github_token", "APIKEY"] {
            assert!(looks_secret(name), "{name}");
        }
        for name in ["TOKENIZERS_PARALLELISM", "MAX_TOKENS", "KEY", "SORT_KEY", "CUDA_VISIBLE_DEVICES", "PASS_RATE"] {
            assert!(!looks_secret(name), "{name}");
        }
    }

    #[test]
    fn credential_shaped_values_are_recognised() {
        for v in ["sk-proj-abcdefghijklmnopqrstuvwx", "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", "AKIAIOSFODNN7EXAMPLE"] {
            assert!(looks_like_token(v), "{v}");
        }
        for v in ["sk-short", "hello world", "false", "AKIA", "/data/hf_cache", "sk-this has spaces in it ok"] {
            assert!(!looks_like_token(v), "{v}");
        }
    }

    #[test]
    fn a_secret_split_across_chunks_is_still_redacted() {
        let secret = b"sk-abcdef123456".to_vec();
        let text = b"token=sk-abcdef123456; again sk-abcdef123456.\nsk-abc is not it";
        // Every way of cutting the stream in two.
        for cut in 0..text.len() {
            let mut r = Redactor::new([secret.clone(), b"other".to_vec()]);
            let mut out = r.feed(&text[..cut]);
            out.extend(r.feed(&text[cut..]));
            out.extend(r.finish());
            assert_eq!(String::from_utf8(out).unwrap(), "token=***; again ***.\nsk-abc is not it", "cut at {cut}");
        }
        // Byte by byte.
        let mut r = Redactor::new([secret]);
        let mut out = Vec::new();
        for b in text {
            out.extend(r.feed(&[*b]));
        }
        out.extend(r.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "token=***; again ***.\nsk-abc is not it");
    }

    #[test]
    fn the_longer_of_two_overlapping_secrets_wins() {
        let mut r = Redactor::new([b"abc".to_vec(), b"abcdef".to_vec(), Vec::new()]);
        let mut out = r.feed(b"xabcdefx abcx");
        out.extend(r.finish());
        assert_eq!(out, b"x***x ***x");
    }
}
