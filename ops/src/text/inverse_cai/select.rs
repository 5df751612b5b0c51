//! Filtering and ranking principles by their votes (ICAI's `filter.py`).

use super::vote::Counts;

/// How principles are ordered after filtering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderBy {
    /// `for - against`, most first (ICAI's default).
    #[default]
    ForMinusAgainst,
    /// `for`, most first.
    For,
}

/// ICAI's filters (`filter_according_to_votes`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Filters {
    /// Keep only when `for > against`.
    pub majority_true: bool,
    /// Keep only when `for > abstain`.
    pub majority_relevant: bool,
    /// Keep only when `invalid < for + against + abstain`.
    pub majority_valid: bool,
    /// Keep only when `for >= min_relevance * total` (0: off, as ICAI treats a falsy value).
    pub min_relevance: f64,
}

impl Filters {
    /// Whether a principle with these votes is kept.
    pub fn keep(&self, c: &Counts) -> bool {
        !(self.majority_true && c.for_ <= c.against
            || self.majority_relevant && c.for_ <= c.abstain
            || self.min_relevance != 0.0 && (c.for_ as f64) < c.total() as f64 * self.min_relevance
            || self.majority_valid && c.invalid >= c.for_ + c.against + c.abstain)
    }
}

/// The principles kept (indices into `counts`), best first, at most `limit`: a stable sort,
/// so equal scores keep their order, as Python's `sorted` does.
pub fn rank(counts: &[Counts], filters: &Filters, order: OrderBy, limit: Option<usize>) -> Vec<usize> {
    let mut kept: Vec<usize> = (0..counts.len()).filter(|&i| filters.keep(&counts[i])).collect();
    let score = |c: &Counts| match order {
        OrderBy::ForMinusAgainst => c.for_ as i64 - c.against as i64,
        OrderBy::For => c.for_ as i64,
    };
    kept.sort_by_key(|&i| std::cmp::Reverse(score(&counts[i])));
    if let Some(limit) = limit {
        kept.truncate(limit);
    }
    kept
}

/// How many principles go on to the final re-clustering: ICAI's
/// `int(max_principles * ratio_of_max_principles_to_cluster_again)` (ratio 1.5).
pub fn keep_before_reclustering(max_principles: usize, ratio: f64) -> usize {
    (max_principles as f64 * ratio) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(for_: u64, against: u64, abstain: u64, invalid: u64) -> Counts {
        Counts { for_, against, abstain, invalid, ..Counts::default() }
    }

    const ICAI: Filters =
        Filters { majority_true: true, majority_relevant: false, majority_valid: true, min_relevance: 0.1 };

    #[test]
    fn icais_default_filters() {
        // for > against.
        assert!(ICAI.keep(&c(3, 2, 0, 0)));
        assert!(!ICAI.keep(&c(2, 2, 0, 0)));
        // for >= 0.1 * total: 1 of 10 is kept, 1 of 11 is not.
        assert!(ICAI.keep(&c(1, 0, 9, 0)));
        assert!(!ICAI.keep(&c(1, 0, 10, 0)));
        // invalid < for + against + abstain.
        assert!(ICAI.keep(&c(2, 0, 0, 1)));
        assert!(!ICAI.keep(&c(2, 0, 0, 2)));
        // for > abstain is off by default; on, it drops a mostly abstaining principle.
        assert!(ICAI.keep(&c(2, 0, 3, 0)));
        assert!(!Filters { majority_relevant: true, ..ICAI }.keep(&c(2, 0, 3, 0)));
        // A relevance of 0 is off.
        assert!(Filters { min_relevance: 0.0, ..ICAI }.keep(&c(1, 0, 100, 0)));
    }

    #[test]
    fn ranking_is_by_for_minus_against_and_stable() {
        // Scores: 0 -> 3 (5-2), 1 -> dropped (for <= against), 2 -> 4 (4-0), 3 -> 3 (3-0), 4 -> 1.
        let counts = [c(5, 2, 0, 0), c(1, 1, 0, 0), c(4, 0, 0, 0), c(3, 0, 0, 0), c(2, 1, 0, 0)];
        assert_eq!(rank(&counts, &ICAI, OrderBy::ForMinusAgainst, None), [2, 0, 3, 4]);
        assert_eq!(rank(&counts, &ICAI, OrderBy::For, None), [0, 2, 3, 4]);
        assert_eq!(rank(&counts, &ICAI, OrderBy::ForMinusAgainst, Some(2)), [2, 0]);
        assert_eq!(keep_before_reclustering(5, 1.5), 7);
        assert_eq!(keep_before_reclustering(3, 1.5), 4);
    }
}
