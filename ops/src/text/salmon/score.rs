//! Reading the judge's answer to SALMON's prompt, which ends "... the more {Dimension} output
//! is Output (": how much more likely the next token is `a` than `b`.
//!
//! SALMON reads the model's last-position logits of the tokens that `"\n (a"` and `"\n (b"`
//! end with, i.e. `a` and `b` right after `(`, and takes `logit(a) - logit(b)`. A difference of
//! logits equals the difference of log probabilities (the softmax's normaliser cancels), so
//! from a completions endpoint asked for one token with `logprobs` the same number is
//! `logprob(a) - logprob(b)` at the first generated position. The tokens are found in that
//! position's top alternatives by their text, exactly `a` and `b` (a token ` a` or `A` is
//! another token, as in SALMON). Servers send that list in one of two shapes, both read:
//! llama.cpp's (and OpenAI chat's) `{"content": [{"top_logprobs": [{"token", "logprob"}]}]}`
//! and OpenAI's legacy completions `{"top_logprobs": [{"a": -0.1, ...}]}`.
//!
//! When only one of the two is among the alternatives, the other's log probability is at
//! most the smallest one listed, so that value stands in for it: the score keeps its sign and
//! is a lower bound of its size (`Via::Bound`, counted). When neither is listed, or the server
//! sent no logprobs, the generated text is read instead: `a` scores +1, `b` -1 (`Via::Text`, a
//! vote without a margin, counted); anything else scores 0 (`Via::Unreadable`).

use serde_json::Value;

/// How a score was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Both tokens among the top logprobs: SALMON's number.
    Logprobs,
    /// One token listed, the other bounded by the smallest listed logprob.
    Bound,
    /// No usable logprobs: the answer's text, as a vote of +1 or -1.
    Text,
    /// Neither logprobs nor a readable answer: 0.
    Unreadable,
}

impl Via {
    pub fn word(self) -> &'static str {
        match self {
            Via::Logprobs => "logprobs",
            Via::Bound => "bound",
            Via::Text => "text",
            Via::Unreadable => "unreadable",
        }
    }
}

/// `logprob(a) - logprob(b)` at the answer position (positive: output (a) preferred), and how
/// it was read.
pub fn read(text: &str, logprobs: Option<&Value>) -> (f64, Via) {
    if let Some(top) = logprobs.and_then(first_position) {
        let find = |token: &str| top.iter().find(|(t, _)| t == token).map(|(_, lp)| *lp);
        let floor = top.iter().map(|(_, lp)| *lp).fold(f64::INFINITY, f64::min);
        match (find("a"), find("b")) {
            (Some(a), Some(b)) => return (a - b, Via::Logprobs),
            (Some(a), None) => return (a - floor, Via::Bound),
            (None, Some(b)) => return (floor - b, Via::Bound),
            (None, None) => {}
        }
    }
    match text.trim_start().chars().next() {
        Some('a' | 'A') => (1.0, Via::Text),
        Some('b' | 'B') => (-1.0, Via::Text),
        _ => (0.0, Via::Unreadable),
    }
}

/// The (token, logprob) alternatives at the first generated position, in either shape.
fn first_position(logprobs: &Value) -> Option<Vec<(String, f64)>> {
    if let Some(first) = logprobs.get("content").and_then(|c| c.get(0)) {
        let top = first.get("top_logprobs")?.as_array()?;
        let pairs: Vec<(String, f64)> = top
            .iter()
            .filter_map(|t| Some((t.get("token")?.as_str()?.to_string(), t.get("logprob")?.as_f64()?)))
            .collect();
        return (!pairs.is_empty()).then_some(pairs);
    }
    let first = logprobs.get("top_logprobs")?.get(0)?.as_object()?;
    let pairs: Vec<(String, f64)> = first.iter().filter_map(|(t, lp)| Some((t.clone(), lp.as_f64()?))).collect();
    (!pairs.is_empty()).then_some(pairs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn llama(top: &[(&str, f64)]) -> Value {
        let top: Vec<Value> = top.iter().map(|(t, lp)| json!({"token": t, "logprob": lp})).collect();
        json!({"content": [{"token": "x", "logprob": -1.0, "top_logprobs": top}]})
    }

    #[test]
    fn both_tokens_give_the_difference_in_either_shape() {
        let (s, via) = read("c", Some(&llama(&[("c", -1.18), ("b", -1.19), ("a", -1.20), (" a", -0.1)])));
        assert!((s - (-1.20 + 1.19)).abs() < 1e-12, "{s}");
        assert_eq!(via, Via::Logprobs);
        let legacy = json!({"tokens": ["a"], "top_logprobs": [{"a": -0.5, "b": -2.0}]});
        assert_eq!(read("a", Some(&legacy)), (1.5, Via::Logprobs));
    }

    #[test]
    fn a_missing_token_is_bounded_by_the_smallest_listed() {
        // b is not listed, so logprob(b) <= -3: the score is at least -0.5 - (-3) = 2.5.
        assert_eq!(read("a", Some(&llama(&[("a", -0.5), ("c", -1.0), ("d", -3.0)]))), (2.5, Via::Bound));
        assert_eq!(read("b", Some(&llama(&[("b", -0.25), ("d", -4.0)]))), (-3.75, Via::Bound));
    }

    #[test]
    fn without_usable_logprobs_the_text_is_read() {
        assert_eq!(read(" a)", None), (1.0, Via::Text));
        assert_eq!(read("B", Some(&json!({"content": []}))), (-1.0, Via::Text));
        assert_eq!(read("b", Some(&llama(&[("c", -0.1)]))), (-1.0, Via::Text));
        assert_eq!(read("c", None), (0.0, Via::Unreadable));
        assert_eq!(read("", None), (0.0, Via::Unreadable));
    }
}
