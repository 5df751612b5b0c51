//! Reading the model's replies: proposed principles (ICAI asks for `{"principles": [...]}`),
//! and an annotator's pick in the evaluation (`Output (a)` or `Output (b)`).

use super::vote::{Answer, Vote, vote};

/// How a proposal reply was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Valid JSON with a `principles` list, as asked.
    Clean,
    /// Read after a repair: a code fence or text around the object, Python quotes, or a reply
    /// cut short (its complete strings kept).
    Recovered,
    /// Nothing could be read (ICAI logs the error and goes on without principles from that
    /// pair; so does the op, counting it).
    Failed,
}

/// The principles of a proposal reply, trimmed, empty ones dropped, and how they were read.
/// ICAI strips a code fence and reads the rest as a Python literal; this also recovers the
/// complete strings of a truncated or garbled reply.
pub fn parse_principles(reply: &str) -> (Vec<String>, Read) {
    let clean = |v: Vec<String>| v.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if let Some(list) = json_principles(reply.trim()) {
        return (clean(list), Read::Clean);
    }
    let inner = match (reply.find('{'), reply.rfind('}')) {
        (Some(a), Some(b)) if a < b => Some(&reply[a..=b]),
        _ => None,
    };
    if let Some(list) = inner.and_then(|t| json_principles(t).or_else(|| json_principles(&t.replace('\'', "\"")))) {
        return (clean(list), Read::Recovered);
    }
    // The strings of the list after `principles`, or of the whole reply without one.
    let list = reply.split_once("principles").and_then(|(_, rest)| rest.split_once('[')).map_or(reply, |(_, l)| l);
    let strings = quoted_strings(list);
    let strings: Vec<String> = clean(strings);
    if strings.is_empty() { (strings, Read::Failed) } else { (strings, Read::Recovered) }
}

fn json_principles(text: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let list = value.get("principles")?.as_array()?;
    list.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

/// The complete double-quoted strings of `text`, JSON escapes read, skipping the key
/// `principles` and anything cut off before its closing quote.
fn quoted_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut escaped = false;
        let mut end = None;
        for (i, c) in chars.by_ref() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        let literal = &text[start..=end];
        if let Ok(s) = serde_json::from_str::<String>(literal)
            && s != "principles"
        {
            out.push(s);
        }
    }
    out
}

/// The output an annotator picked: `Output (a)` or `Output (b)`, whichever it names first
/// (any case); then a bare `(a)` or `(b)`; else nothing.
pub fn parse_pick(reply: &str) -> Option<Answer> {
    let lower = reply.to_lowercase();
    let first = |a: &str, b: &str| match (lower.find(a), lower.find(b)) {
        (Some(i), Some(j)) => Some(if i < j { Answer::A } else { Answer::B }),
        (Some(_), None) => Some(Answer::A),
        (None, Some(_)) => Some(Answer::B),
        (None, None) => None,
    };
    first("output (a)", "output (b)").or_else(|| first("(a)", "(b)"))
}

/// Agreement of an annotator with the original labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Agreement {
    /// Pairs annotated.
    pub n: u64,
    /// Picks that match the original preference.
    pub agree: u64,
    /// Replies that named neither output (they count as disagreeing).
    pub invalid: u64,
}

impl Agreement {
    /// Adds one pair: the reply's pick, and whether the preferred response was shown second.
    pub fn add(&mut self, pick: Option<Answer>, flipped: bool) {
        self.n += 1;
        match pick.map(|a| vote(a, flipped)) {
            Some(Vote::For) => self.agree += 1,
            Some(_) => {}
            None => self.invalid += 1,
        }
    }

    /// `agree / n` (0 with no pairs).
    pub fn rate(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.agree as f64 / self.n as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn proposals_read_clean_and_recovered() {
        let want = strings(&["Select the response that is short.", "Select the response that rhymes."]);
        let json = "{\"principles\": [\"Select the response that is short.\", \" Select the response that rhymes. \"]}";
        assert_eq!(parse_principles(json), (want.clone(), Read::Clean));
        // A code fence (ICAI strips it too), or text around the object.
        assert_eq!(parse_principles(&format!("```json\n{json}\n```")), (want.clone(), Read::Recovered));
        assert_eq!(parse_principles(&format!("Here you go: {json} Hope it helps.")), (want.clone(), Read::Recovered));
        // Python quotes, as ast.literal_eval reads them.
        let py = "{'principles': ['Select the response that is short.', 'Select the response that rhymes.']}";
        assert_eq!(parse_principles(py), (want.clone(), Read::Recovered));
        // Cut short: the complete strings are kept.
        let cut =
            "{\"principles\": [\"Select the response that is short.\", \"Select the response that rhymes.\", \"Sel";
        assert_eq!(parse_principles(cut), (want, Read::Recovered));
        // An escaped quote inside a string.
        assert_eq!(
            parse_principles("{\"principles\": [\"Select the \\\"funny\\\" one\""),
            (strings(&["Select the \"funny\" one"]), Read::Recovered)
        );
    }

    #[test]
    fn garbled_proposals_fail_with_nothing() {
        assert_eq!(parse_principles("I cannot help with that."), (vec![], Read::Failed));
        assert_eq!(parse_principles("{\"principles\": []}"), (vec![], Read::Clean));
        assert_eq!(parse_principles("{\"principles\": [\"  \"]}"), (vec![], Read::Clean));
        assert_eq!(parse_principles(""), (vec![], Read::Failed));
    }

    #[test]
    fn picks_read_the_first_output_named() {
        assert_eq!(parse_pick("Output (a)"), Some(Answer::A));
        assert_eq!(parse_pick("output (B) is better than Output (a)"), Some(Answer::B));
        assert_eq!(parse_pick("I pick (b)."), Some(Answer::B));
        assert_eq!(parse_pick("Neither."), None);
    }

    #[test]
    fn agreement_maps_picks_through_the_shown_order() {
        let mut a = Agreement::default();
        a.add(Some(Answer::A), false); // preferred shown first and picked: agrees
        a.add(Some(Answer::A), true); // rejected shown first and picked: disagrees
        a.add(Some(Answer::B), true); // preferred shown second and picked: agrees
        a.add(None, false); // unreadable: counted, disagrees
        assert_eq!(a, Agreement { n: 4, agree: 2, invalid: 1 });
        assert_eq!(a.rate(), 0.5);
        assert_eq!(Agreement::default().rate(), 0.0);
    }
}
