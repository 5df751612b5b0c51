//! ROUGE-L as Google's `rouge_score` computes it, and a diversity filter built on it (the one
//! Self-Instruct and Dromedary apply to generated instructions).
//!
//! Tokens follow `rouge_score`'s default tokenizer without stemming: lower-case, every run of
//! characters other than `a-z0-9` becomes a space, split on whitespace. ROUGE-L between a new
//! text (the target, m tokens) and an earlier one (the prediction, n tokens) is the F-measure
//! 2PR / (P + R) with P = lcs / n and R = lcs / m, 0 when either is empty, computed in f64 in
//! that order so that values at the threshold compare as Python's do.
//!
//! The filter keeps a text when its ROUGE-L with every text of the pool is at most the
//! threshold, and the kept text joins the pool. Comparing each new text with every earlier one
//! is quadratic; instead the pool is indexed by prefixes, a filter from set-similarity joins
//! that is exact: F > t needs an overlap of more than t·m/(2 − t) tokens, so two texts above the
//! threshold must share one of the rarest few tokens of each (tokens counted with repetition,
//! ordered by how many texts hold them). Only such candidates of a compatible length get a
//! longest common subsequence, computed bit-parallel (one word operation per token) when the
//! new text has at most 64 tokens, else by the O(m·n) table.

use std::collections::HashMap;

/// `rouge_score`'s default tokenisation (no stemming).
pub fn tokenize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let spaced: String =
        lower.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { ' ' }).collect();
    spaced.split_whitespace().map(String::from).collect()
}

/// The length of the longest common subsequence of two token sequences.
pub fn lcs<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut row = vec![0u32; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y { diagonal + 1 } else { above.max(row[j]) };
            diagonal = above;
        }
    }
    row[b.len()] as usize
}

/// The LCS of `a` (at most 64 tokens) and `b`, bit-parallel (Crochemore et al. 2001; Hyyrö
/// 2004): `masks[t]` has bit i set where `a[i] == t`; one word operation per token of `b`.
fn lcs_bits(m: usize, masks: &[u64], b: &[u32]) -> usize {
    debug_assert!(m <= 64);
    let mut v = u64::MAX;
    for &y in b {
        let u = v & masks.get(y as usize).copied().unwrap_or(0);
        v = v.wrapping_add(u) | (v - u);
    }
    let low = if m == 64 { u64::MAX } else { (1u64 << m) - 1 };
    (!v & low).count_ones() as usize
}

/// The LCS of one text with many others, as token ids: bit-parallel when the text has at most
/// 64 tokens, with a mask table kept between calls (only the text's own entries are touched).
/// Ids of `u32::MAX` match nothing.
#[derive(Default)]
pub struct LcsScan {
    masks: Vec<u64>,
}

impl LcsScan {
    /// Calls `each` with the LCS of `a` and every text of `others`, in order.
    pub fn scan<'o>(&mut self, a: &[u32], others: impl IntoIterator<Item = &'o [u32]>, mut each: impl FnMut(usize)) {
        if a.len() > 64 {
            others.into_iter().for_each(|b| each(lcs(a, b)));
            return;
        }
        for (i, &t) in a.iter().enumerate().filter(|(_, t)| **t != u32::MAX) {
            if self.masks.len() <= t as usize {
                self.masks.resize(t as usize + 1, 0);
            }
            self.masks[t as usize] |= 1 << i;
        }
        for b in others {
            each(lcs_bits(a.len(), &self.masks, b));
        }
        for &t in a.iter().filter(|t| **t != u32::MAX) {
            self.masks[t as usize] = 0;
        }
    }
}

/// ROUGE-L F-measure from the LCS and the lengths of the target (`m`) and prediction (`n`).
pub fn fmeasure(lcs: usize, m: usize, n: usize) -> f64 {
    if m == 0 || n == 0 {
        return 0.0;
    }
    let precision = lcs as f64 / n as f64;
    let recall = lcs as f64 / m as f64;
    if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 }
}

/// Why a text was dropped: the most similar pool text and their ROUGE-L.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// Index of the pool text (in the order texts joined the pool).
    pub pool_index: usize,
    pub rouge_l: f64,
}

/// One pooled text: its token ids in order, and its (token, occurrence) elements sorted rarest
/// first.
struct Entry {
    tokens: Vec<u32>,
}

/// The diversity filter: an online pool of texts, indexed by prefixes.
pub struct Filter {
    threshold: f64,
    ids: HashMap<String, u32>,
    /// How many texts hold each token (over everything the filter will see), for the order.
    rank: Vec<u64>,
    pool: Vec<Entry>,
    /// (token id, occurrence) -> pool texts whose prefix holds it.
    index: HashMap<(u32, u32), Vec<u32>>,
    /// Candidate marks, stamped per probe.
    stamp: Vec<u32>,
    /// Per token id, the positions where the probing text holds it (zero between probes).
    masks: Vec<u64>,
    probe: u32,
    /// LCS computations done (for the stage log).
    pub comparisons: u64,
}

impl Filter {
    /// A filter for texts given up front (the pool seeds and the candidates, already
    /// tokenised): their token frequencies fix the prefix order.
    pub fn new(threshold: f64, all_texts: &[&[String]]) -> Filter {
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut df: Vec<u64> = Vec::new();
        for tokens in all_texts {
            let mut seen: Vec<u32> = Vec::with_capacity(tokens.len());
            for t in tokens.iter() {
                let next = ids.len() as u32;
                let id = *ids.entry(t.clone()).or_insert(next);
                if id as usize == df.len() {
                    df.push(0);
                }
                if !seen.contains(&id) {
                    seen.push(id);
                    df[id as usize] += 1;
                }
            }
        }
        Filter {
            threshold,
            ids,
            rank: df,
            pool: Vec::new(),
            index: HashMap::new(),
            stamp: Vec::new(),
            masks: Vec::new(),
            probe: 0,
            comparisons: 0,
        }
    }

    fn ids_of(&mut self, tokens: &[String]) -> Vec<u32> {
        tokens
            .iter()
            .map(|t| {
                let next = self.ids.len() as u32;
                let id = *self.ids.entry(t.clone()).or_insert(next);
                if id as usize >= self.rank.len() {
                    self.rank.resize(id as usize + 1, 0);
                }
                id
            })
            .collect()
    }

    /// The elements (token, occurrence) of a text, rarest first, cut to its prefix: the ones
    /// that any text above the threshold must share with it.
    fn prefix(&self, tokens: &[u32]) -> Vec<(u32, u32)> {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        let mut elements: Vec<(u32, u32)> = tokens
            .iter()
            .map(|t| {
                let c = counts.entry(*t).or_insert(0);
                *c += 1;
                (*t, *c - 1)
            })
            .collect();
        elements.sort_by_key(|(t, occurrence)| (self.rank[*t as usize], *t, *occurrence));
        let m = tokens.len() as f64;
        let t = self.threshold.clamp(0.0, 1.0);
        // Overlap needed, at least, by any text above the threshold (rounded down: a longer
        // prefix only adds candidates, never loses one).
        let alpha = ((t * m / (2.0 - t)).floor() as usize).max(1);
        elements.truncate(tokens.len().saturating_sub(alpha) + 1);
        elements
    }

    /// Adds a text to the pool unconditionally (a seed).
    pub fn add(&mut self, tokens: &[String]) {
        let ids = self.ids_of(tokens);
        self.insert(ids);
    }

    fn insert(&mut self, ids: Vec<u32>) {
        let at = self.pool.len() as u32;
        for element in self.prefix(&ids) {
            self.index.entry(element).or_default().push(at);
        }
        self.pool.push(Entry { tokens: ids });
        self.stamp.push(0);
    }

    /// Checks a text against the pool: `None` and the text joins the pool when its ROUGE-L
    /// with every pooled text is at most the threshold; otherwise why it was rejected.
    pub fn admit(&mut self, tokens: &[String]) -> Option<Rejection> {
        let ids = self.ids_of(tokens);
        let m = ids.len();
        if m == 0 || self.threshold >= 1.0 {
            self.insert(ids);
            return None;
        }
        self.probe += 1;
        // The new text's match masks, for the bit-parallel LCS (texts of up to 64 tokens).
        let bits = m <= 64;
        if bits {
            if self.masks.len() < self.ids.len() {
                self.masks.resize(self.ids.len(), 0);
            }
            for (i, t) in ids.iter().enumerate() {
                self.masks[*t as usize] |= 1 << i;
            }
        }
        let mut best: Option<Rejection> = None;
        for element in self.prefix(&ids) {
            let Some(hits) = self.index.get(&element) else { continue };
            for &p in hits {
                if self.stamp[p as usize] == self.probe {
                    continue;
                }
                self.stamp[p as usize] = self.probe;
                let other = &self.pool[p as usize].tokens;
                let n = other.len();
                // Even a full overlap of the shorter text cannot pass.
                if fmeasure(m.min(n), m, n) <= self.threshold {
                    continue;
                }
                self.comparisons += 1;
                let common = if bits { lcs_bits(m, &self.masks, other) } else { lcs(&ids, other) };
                let f = fmeasure(common, m, n);
                if f > self.threshold && best.as_ref().is_none_or(|b| f > b.rouge_l) {
                    best = Some(Rejection { pool_index: p as usize, rouge_l: f });
                }
            }
        }
        if bits {
            for t in &ids {
                self.masks[*t as usize] = 0;
            }
        }
        if best.is_none() {
            self.insert(ids);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_lowercase_alphanumeric_runs() {
        assert_eq!(
            tokenize("Write a HAIKU about C++ (in 3 lines)!"),
            ["write", "a", "haiku", "about", "c", "in", "3", "lines"]
        );
        assert_eq!(tokenize("naïve café"), ["na", "ve", "caf"]);
        assert!(tokenize(" ... ").is_empty());
    }

    #[test]
    fn lcs_and_fmeasure_by_hand() {
        let a = tokenize("the cat sat on the mat");
        let b = tokenize("the cat lay on a mat");
        // the, cat, on, mat
        assert_eq!(lcs(&a, &b), 4);
        assert!((fmeasure(4, 6, 6) - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(fmeasure(0, 0, 5), 0.0);
    }

    #[test]
    fn the_bit_parallel_lcs_agrees_with_the_table() {
        let mut state = 99u64;
        let mut next = |k: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % k) as u32
        };
        for _ in 0..2000 {
            let m = 1 + next(64) as usize;
            let a: Vec<u32> = (0..m).map(|_| next(6)).collect();
            let b: Vec<u32> = (0..1 + next(80) as usize).map(|_| next(7)).collect();
            let mut masks = vec![0u64; 8];
            for (i, t) in a.iter().enumerate() {
                masks[*t as usize] |= 1 << i;
            }
            assert_eq!(lcs_bits(m, &masks, &b), lcs(&a, &b), "{a:?} {b:?}");
            let mut scan = LcsScan::default();
            let mut got = Vec::new();
            scan.scan(&a, [b.as_slice(), a.as_slice()], |l| got.push(l));
            assert_eq!(got, [lcs(&a, &b), a.len()]);
        }
    }

    /// The filter against a plain all-pairs scan, on texts built to be near each other.
    #[test]
    fn the_prefix_index_finds_everything_a_full_scan_finds() {
        let words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "the", "a", "of"];
        let mut texts = Vec::new();
        let mut state = 12345u64;
        for _ in 0..400 {
            let mut next = || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as usize
            };
            let len = 3 + next() % 9;
            let text: Vec<&str> = (0..len).map(|_| words[next() % words.len()]).collect();
            texts.push(text.join(" "));
        }
        let tokens: Vec<Vec<String>> = texts.iter().map(|t| tokenize(t)).collect();
        for threshold in [0.3, 0.5, 0.7, 0.9] {
            let refs: Vec<&[String]> = tokens.iter().map(Vec::as_slice).collect();
            let mut filter = Filter::new(threshold, &refs);
            let mut pool: Vec<&Vec<String>> = Vec::new();
            for t in &tokens {
                let full = pool.iter().map(|p| fmeasure(lcs(t, p), t.len(), p.len())).fold(0.0, f64::max);
                let got = filter.admit(t);
                assert_eq!(got.is_none(), full <= threshold, "{t:?} at {threshold}: scan max {full}");
                if let Some(r) = got {
                    assert_eq!(r.rouge_l, full);
                } else {
                    pool.push(t);
                }
            }
        }
    }
}
