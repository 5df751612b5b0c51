//! Votes (ICAI's `voting.py`): the model's answer for each numbered principle, mapped back
//! through the A/B order the pair was shown in, combined over seeds, and counted.

use std::collections::BTreeMap;

/// What the model answered for one principle, in the order it saw the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    A,
    B,
    Both,
    Neither,
    /// `"None"` (or `None`, `null`): the principle does not apply.
    NotApplicable,
    /// Anything else, or no answer for this principle.
    Invalid,
}

/// One principle's vote on one pair, relative to the annotator's preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vote {
    /// The principle picks the preferred response.
    For,
    /// The principle picks the rejected one.
    Against,
    /// It does not apply (or the seeds disagree).
    Abstain,
    Both,
    Neither,
    Invalid,
}

impl Vote {
    /// The word in the `votes` table.
    pub fn word(self) -> &'static str {
        match self {
            Vote::For => "for",
            Vote::Against => "against",
            Vote::Abstain => "abstain",
            Vote::Both => "both",
            Vote::Neither => "neither",
            Vote::Invalid => "invalid",
        }
    }
}

/// The model's answers to a voting prompt with `n` principles, `None` when nothing could be
/// read (every principle then counts as invalid, as ICAI counts a reply it cannot parse).
///
/// ICAI strips all spaces and newlines, normalises `true/false/both/neither/null`, unquotes
/// integer keys and reads the rest as a Python dict; a principle missing from the dict is
/// invalid, a key beyond `n` is ignored. This reads the same dicts and also tolerates text or
/// a code fence around the braces (the outermost `{...}` is read).
pub fn parse_answers(reply: &str, n: usize) -> Option<Vec<Answer>> {
    let start = reply.find('{')?;
    let end = reply.rfind('}')?;
    if end < start {
        return None;
    }
    let body = &reply[start + 1..end];
    let mut read: BTreeMap<usize, Answer> = BTreeMap::new();
    for entry in body.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (key, value) = entry.split_once(':')?;
        let key: usize = unquote(key).parse().ok()?;
        read.insert(key, answer(unquote(value)));
    }
    if read.is_empty() {
        return None;
    }
    Some((0..n).map(|i| read.get(&i).copied().unwrap_or(Answer::Invalid)).collect())
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')))
        .unwrap_or(s)
        .trim()
}

/// ICAI's valid values after its clean-up: `A`, `B`, `Both`/`both`, `Neither`/`neither`,
/// `None`/`null`.
fn answer(value: &str) -> Answer {
    match value {
        "A" => Answer::A,
        "B" => Answer::B,
        "Both" | "both" => Answer::Both,
        "Neither" | "neither" => Answer::Neither,
        "None" | "null" => Answer::NotApplicable,
        _ => Answer::Invalid,
    }
}

/// An answer as a vote. `flipped`: the pair was shown rejected first (as A), so `A` picks the
/// rejected response.
pub fn vote(answer: Answer, flipped: bool) -> Vote {
    match (answer, flipped) {
        (Answer::A, false) | (Answer::B, true) => Vote::For,
        (Answer::B, false) | (Answer::A, true) => Vote::Against,
        (Answer::Both, _) => Vote::Both,
        (Answer::Neither, _) => Vote::Neither,
        (Answer::NotApplicable, _) => Vote::Abstain,
        (Answer::Invalid, _) => Vote::Invalid,
    }
}

/// How the votes of several seeds on one (pair, principle) become one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Every seed must agree (ICAI's default).
    #[default]
    Unanimous,
    /// More than half of the seeds.
    Majority,
}

/// ICAI's `_get_cross_seed_votes`: the value that every seed (unanimous) or more than half
/// of them (majority) gave, else `Abstain` ("principle not applicable").
pub fn combine(seeds: &[Vote], how: Combine) -> Vote {
    let mut counts: BTreeMap<Vote, usize> = BTreeMap::new();
    for v in seeds {
        *counts.entry(*v).or_default() += 1;
    }
    let n = seeds.len();
    counts
        .into_iter()
        .find(|(_, c)| match how {
            Combine::Unanimous => *c == n,
            Combine::Majority => 2 * c > n,
        })
        .map_or(Vote::Abstain, |(v, _)| v)
}

/// One principle's votes over every pair (ICAI's `combine_votes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub for_: u64,
    pub against: u64,
    pub abstain: u64,
    pub both: u64,
    pub neither: u64,
    pub invalid: u64,
}

impl Counts {
    pub fn add(&mut self, v: Vote) {
        let slot = match v {
            Vote::For => &mut self.for_,
            Vote::Against => &mut self.against,
            Vote::Abstain => &mut self.abstain,
            Vote::Both => &mut self.both,
            // ICAI's `combine_votes` adds "Neither" to `both`; counted apart here (the
            // filters read only the total of the two).
            Vote::Neither => &mut self.neither,
            Vote::Invalid => &mut self.invalid,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u64 {
        self.for_ + self.against + self.abstain + self.both + self.neither + self.invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_as_icai_reads_them() {
        use Answer::*;
        assert_eq!(
            parse_answers("{0: \"A\", 1: \"B\", 2: \"None\", 3: \"Both\"}", 4),
            Some(vec![A, B, NotApplicable, Both])
        );
        // Quoted keys, single quotes, newlines, lower-case both/neither, null.
        assert_eq!(
            parse_answers("{\n  \"0\": 'B',\n  '1': \"neither\", \"2\": null, 3: both\n}", 4),
            Some(vec![B, Neither, NotApplicable, Both])
        );
        // A missing principle and an unknown value are invalid; a key beyond n is ignored;
        // lower-case a is not a valid answer in ICAI either.
        assert_eq!(
            parse_answers("{0: \"A\", 2: \"maybe\", 7: \"B\", 1: \"a\"}", 4),
            Some(vec![A, Invalid, Invalid, Invalid])
        );
        // Text or a fence around the dict is tolerated.
        assert_eq!(parse_answers("Sure!\n```json\n{0: \"B\"}\n```", 1), Some(vec![B]));
        // Nothing readable.
        assert_eq!(parse_answers("I think A is better.", 2), None);
        assert_eq!(parse_answers("{}", 2), None);
        assert_eq!(parse_answers("{A: B}", 2), None);
    }

    #[test]
    fn a_flipped_pair_maps_a_and_b_back() {
        use Answer::*;
        // Not flipped: A is the preferred response.
        let straight: Vec<Vote> =
            [A, B, Both, Neither, NotApplicable, Invalid].iter().map(|a| vote(*a, false)).collect();
        assert_eq!(straight, [Vote::For, Vote::Against, Vote::Both, Vote::Neither, Vote::Abstain, Vote::Invalid]);
        // Flipped: A is the rejected response; the rest do not depend on the order.
        let flipped: Vec<Vote> = [A, B, Both, Neither, NotApplicable, Invalid].iter().map(|a| vote(*a, true)).collect();
        assert_eq!(flipped, [Vote::Against, Vote::For, Vote::Both, Vote::Neither, Vote::Abstain, Vote::Invalid]);
    }

    #[test]
    fn seeds_combine_unanimously_or_by_majority() {
        use Vote::*;
        assert_eq!(combine(&[For, For, For], Combine::Unanimous), For);
        assert_eq!(combine(&[For, For, Against], Combine::Unanimous), Abstain);
        assert_eq!(combine(&[For, For, Against], Combine::Majority), For);
        // Half is not a majority.
        assert_eq!(combine(&[For, Against], Combine::Majority), Abstain);
        assert_eq!(combine(&[For, Against, Invalid], Combine::Majority), Abstain);
        // Unanimously invalid stays invalid.
        assert_eq!(combine(&[Invalid, Invalid, Invalid], Combine::Unanimous), Invalid);
        assert_eq!(combine(&[Against], Combine::Unanimous), Against);
    }

    #[test]
    fn counts_add_up() {
        let mut c = Counts::default();
        for v in [Vote::For, Vote::For, Vote::Against, Vote::Abstain, Vote::Both, Vote::Neither, Vote::Invalid] {
            c.add(v);
        }
        assert_eq!(c, Counts { for_: 2, against: 1, abstain: 1, both: 1, neither: 1, invalid: 1 });
        assert_eq!(c.total(), 7);
    }
}
