//! SALMON's aggregation of per-principle scores into preference labels
//! (`training/step2_rm_training/aggregate_synthetic_preference.py`), with every knob a param and
//! every draw from one seeded stream ([`Draw`], not numpy's and Python's generators, so the
//! draws are not SALMON's own; the distributions are).
//!
//! For each pass over the examples, and each example:
//! 1. shuffle the dimensions (one list, shuffled in place from pass to pass, as SALMON's);
//! 2. draw k ~ Geometric(p) on 1, 2, ..., drawing again while k > `max_principles` (numpy's
//!    `geometric` in a loop: the distribution truncated, not clipped), and take the first k
//!    (all of them when k is larger, as SALMON's slice `all_dimensions[:k]` does);
//! 3. score each: the mean of (s12, s21) over the dimension's variance (the population
//!    variance of every s12 and s21 of that dimension over the examples) when both have the
//!    same sign, else 0;
//! 4. negate each score with probability `negation_prob` (the reward model is then shown the
//!    `negative_definition`);
//! 5. label = the sign of the score largest in size (the first such, as `np.argmax`): positive
//!    prefers output 1; 0 skips the example (for this pass);
//! 6. draw the A/B order of the output row;
//! 7. rules: a phrase ("As an AI language model") in exactly one output prefers the other with
//!    probability `phrase_prob`; an output in another language than the instruction loses
//!    (both in another language: skipped); either sets `rule_flag`. The language rule comes
//!    last and overrides the phrase rule, as in SALMON;
//! 8. flip the label with probability `noisy_ratio` (`rule_noisy_ratio` for rule cases).

use crate::kit::draw::Draw;

/// The knobs, SALMON's defaults in `AiPreferenceParams`.
#[derive(Clone, Debug)]
pub struct Knobs {
    pub passes: usize,
    pub max_principles: usize,
    pub geometric_p: f64,
    pub negation_prob: f64,
    pub noisy_ratio: f64,
    pub rule_noisy_ratio: f64,
    pub phrase_prob: f64,
}

/// One pair's scores and what the rules look at.
#[derive(Clone, Debug, Default)]
pub struct Example {
    /// (s12, s21) for each dimension: s12 with output 1 shown as (a), s21 with it shown as
    /// (b); both oriented so that positive prefers output 1.
    pub scores: Vec<(f64, f64)>,
    /// The phrase is in output 1, in output 2.
    pub phrase: (bool, bool),
    /// The languages of the instruction, output 1 and output 2 (`None`: not detected; the
    /// language rule then does not apply).
    pub langs: [Option<String>; 3],
}

/// One label, as the output row shows it (after the A/B order is drawn).
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// The example it labels.
    pub example: usize,
    /// The row's output 1 is the example's output 2.
    pub swapped: bool,
    /// Indices of the dimensions drawn, in the order drawn.
    pub dimensions: Vec<usize>,
    /// Their scores after negation, oriented to the row (positive prefers the row's output 1).
    pub scores: Vec<f64>,
    pub negated: Vec<bool>,
    /// Index into `dimensions` of the dimension that decided (SALMON's `doinate_dimension_idx`).
    pub dominant: usize,
    /// 1 or 2: the row's preferred output.
    pub preference: u8,
    pub flip: bool,
    pub rule_flag: bool,
}

/// What the aggregation skipped and why, for the stage log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Every drawn score was 0.
    pub zero: usize,
    /// Both outputs in another language than the instruction.
    pub both_foreign: usize,
    /// Labels set by a rule.
    pub rule: usize,
    /// Labels decided by each dimension (not counting rule cases, as SALMON's `main_reasons`).
    pub reasons: Vec<usize>,
}

/// The population variance (numpy's `np.var`) of every s12 and s21 of each dimension.
pub fn variances(examples: &[Example], dimensions: usize) -> Vec<f64> {
    (0..dimensions)
        .map(|d| {
            let values: Vec<f64> = examples.iter().flat_map(|e| [e.scores[d].0, e.scores[d].1]).collect();
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n
        })
        .collect()
}

/// A dimension's score: mean(s12, s21) / variance when both agree in sign, else 0. A variance
/// of 0 (every score the same) or not finite divides by 1 instead of failing.
pub fn normalised((s12, s21): (f64, f64), variance: f64) -> f64 {
    let variance = if variance > 0.0 && variance.is_finite() { variance } else { 1.0 };
    if (s12 > 0.0 && s21 > 0.0) || (s12 < 0.0 && s21 < 0.0) { (s12 + s21) / 2.0 / variance } else { 0.0 }
}

/// The index of the score largest in size (the first on ties) and the preference it gives:
/// 1 when positive, 2 when negative; `None` when it is 0.
pub fn dominant(scores: &[f64]) -> Option<(usize, u8)> {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if s.abs() > scores[best].abs() {
            best = i;
        }
    }
    let s = *scores.get(best)?;
    if s > 0.0 {
        Some((best, 1))
    } else if s < 0.0 {
        Some((best, 2))
    } else {
        None
    }
}

/// Uniform in [0, 1), 53 bits.
pub fn unit(draw: &mut Draw) -> f64 {
    draw.below_u64(1 << 53) as f64 / (1u64 << 53) as f64
}

/// k ~ Geometric(p) on 1, 2, ... (trials until the first success), drawn again while above
/// `max` (`max` >= 1, `p` in (0, 1]).
pub fn truncated_geometric(draw: &mut Draw, p: f64, max: usize) -> usize {
    loop {
        let mut k = 1;
        while unit(draw) >= p && k <= max {
            k += 1;
        }
        // Stopping at max + 1 trials is the same as drawing on: either way k > max is redrawn.
        if k <= max {
            return k;
        }
    }
}

/// SALMON's labels from the examples' scores; `variances` from [`variances`].
pub fn aggregate(examples: &[Example], variances: &[f64], knobs: &Knobs, draw: &mut Draw) -> (Vec<Label>, Tally) {
    let n = variances.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut labels = Vec::new();
    let mut tally = Tally { reasons: vec![0; n], ..Tally::default() };
    for _ in 0..knobs.passes {
        for (e, example) in examples.iter().enumerate() {
            draw.shuffle(&mut order);
            let k = truncated_geometric(draw, knobs.geometric_p, knobs.max_principles).min(n);
            let dimensions = order[..k].to_vec();
            let negated: Vec<bool> = (0..k).map(|_| unit(draw) < knobs.negation_prob).collect();
            let scores: Vec<f64> = dimensions
                .iter()
                .zip(&negated)
                .map(|(&d, &neg)| {
                    let s = normalised(example.scores[d], variances[d]);
                    if neg { -s } else { s }
                })
                .collect();
            let Some((dominant, mut preference)) = self::dominant(&scores) else {
                tally.zero += 1;
                continue;
            };
            let swapped = draw.below(2) == 1;
            let mut rule_flag = false;
            match example.phrase {
                (true, false) if unit(draw) < knobs.phrase_prob => (preference, rule_flag) = (2, true),
                (false, true) if unit(draw) < knobs.phrase_prob => (preference, rule_flag) = (1, true),
                _ => {}
            }
            if let [Some(instruction), Some(one), Some(two)] = &example.langs {
                match (one != instruction, two != instruction) {
                    (true, true) => {
                        tally.both_foreign += 1;
                        continue;
                    }
                    (true, false) => (preference, rule_flag) = (2, true),
                    (false, true) => (preference, rule_flag) = (1, true),
                    (false, false) => {}
                }
            }
            let flip = unit(draw) < if rule_flag { knobs.rule_noisy_ratio } else { knobs.noisy_ratio };
            if rule_flag {
                tally.rule += 1;
            } else {
                tally.reasons[dimensions[dominant]] += 1;
            }
            if flip {
                preference = 3 - preference;
            }
            let (scores, preference) = match swapped {
                false => (scores, preference),
                true => (scores.iter().map(|s| -s).collect(), 3 - preference),
            };
            labels.push(Label {
                example: e,
                swapped,
                dimensions,
                scores,
                negated,
                dominant,
                preference,
                flip,
                rule_flag,
            });
        }
    }
    (labels, tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Knobs that leave nothing to chance but the order and the shuffle: one principle, no
    /// negation, no flips, the phrase rule always applied.
    fn certain() -> Knobs {
        Knobs {
            passes: 1,
            max_principles: 1,
            geometric_p: 0.2,
            negation_prob: 0.0,
            noisy_ratio: 0.0,
            rule_noisy_ratio: 0.0,
            phrase_prob: 1.0,
        }
    }

    fn example(scores: &[(f64, f64)]) -> Example {
        Example { scores: scores.to_vec(), ..Example::default() }
    }

    /// The preferred output of the example, whatever the row's order: 1 or 2.
    fn preferred(l: &Label) -> u8 {
        if l.swapped { 3 - l.preference } else { l.preference }
    }

    #[test]
    fn variance_and_normalisation_follow_salmons_formulas() {
        // Dimension 0's scores are 1, 3, -1, 1: mean 1, squared deviations 0, 4, 4, 0, np.var 2.
        // Dimension 1's are 2, 2, 2, 2: variance 0.
        let examples = [example(&[(1.0, 3.0), (2.0, 2.0)]), example(&[(-1.0, 1.0), (2.0, 2.0)])];
        assert_eq!(variances(&examples, 2), [2.0, 0.0]);
        // mean(1, 3) / 2 = 1; signs disagree: 0; mean(-2, -4) / 4 = -0.75; variance 0: / 1.
        assert_eq!(normalised((1.0, 3.0), 2.0), 1.0);
        assert_eq!(normalised((-1.0, 1.0), 2.0), 0.0);
        assert_eq!(normalised((0.0, 1.0), 2.0), 0.0);
        assert_eq!(normalised((-2.0, -4.0), 4.0), -0.75);
        assert_eq!(normalised((2.0, 2.0), 0.0), 2.0);
    }

    #[test]
    fn the_largest_score_in_size_decides_the_first_on_ties() {
        assert_eq!(dominant(&[0.5, -2.0, 1.0]), Some((1, 2)));
        assert_eq!(dominant(&[1.0, -1.0]), Some((0, 1)));
        assert_eq!(dominant(&[0.0, 0.0]), None);
        assert_eq!(dominant(&[]), None);
    }

    #[test]
    fn k_follows_the_truncated_geometric_distribution() {
        // P(k) = 0.2 * 0.8^(k-1) for k = 1..8, over the mass 1 - 0.8^8 = 0.83222784: the mean is
        // 2.81896192 / 0.83222784 = 3.38725, P(k = 1) = 0.2 / 0.83222784 = 0.24032.
        let mut draw = Draw::new(7, 1);
        let n = 200_000;
        let ks: Vec<usize> = (0..n).map(|_| truncated_geometric(&mut draw, 0.2, 8)).collect();
        assert!(ks.iter().all(|&k| (1..=8).contains(&k)));
        let mean = ks.iter().sum::<usize>() as f64 / n as f64;
        assert!((mean - 3.38725).abs() < 0.02, "{mean}");
        let ones = ks.iter().filter(|&&k| k == 1).count() as f64 / n as f64;
        assert!((ones - 0.24032).abs() < 0.005, "{ones}");
        let mut draw = Draw::new(7, 1);
        assert!((0..100).all(|_| truncated_geometric(&mut draw, 1.0, 3) == 1));
    }

    #[test]
    fn labels_follow_the_sign_the_negation_and_the_order() {
        // Output 1 preferred on the only dimension: mean(2, 4) / var > 0.
        let examples = vec![example(&[(2.0, 4.0)]), example(&[(1.0, -1.0)])];
        let vars = variances(&examples, 1);
        let mut draw = Draw::new(1, 0);
        let knobs = Knobs { passes: 50, ..certain() };
        let (labels, tally) = aggregate(&examples, &vars, &knobs, &mut draw);
        // The second example's signs disagree: 0, skipped in every pass.
        assert_eq!((labels.len(), tally.zero), (50, 50));
        assert!(labels.iter().all(|l| l.example == 0 && preferred(l) == 1 && !l.flip && !l.rule_flag));
        assert!(labels.iter().any(|l| l.swapped) && labels.iter().any(|l| !l.swapped));
        for l in &labels {
            // The row's score is oriented to the row: negative when output 1 is the example's 2.
            assert_eq!(l.scores[0] > 0.0, !l.swapped);
            assert_eq!(l.preference, if l.swapped { 2 } else { 1 });
        }
        assert_eq!(tally.reasons, [50]);
        // Always negated: output 2 preferred.
        let knobs = Knobs { negation_prob: 1.0, ..certain() };
        let (labels, _) = aggregate(&examples[..1], &vars, &knobs, &mut draw);
        assert_eq!((preferred(&labels[0]), labels[0].negated.clone()), (2, vec![true]));
        // Always flipped.
        let knobs = Knobs { noisy_ratio: 1.0, ..certain() };
        let (labels, _) = aggregate(&examples[..1], &vars, &knobs, &mut draw);
        assert_eq!((preferred(&labels[0]), labels[0].flip), (2, true));
    }

    #[test]
    fn rules_override_the_scores_and_flip_at_their_own_rate() {
        let langs = |a: &str, b: &str, c: &str| [Some(a.to_string()), Some(b.to_string()), Some(c.to_string())];
        let mut draw = Draw::new(3, 0);
        let vars = [1.0];
        let run = |e: Example, knobs: &Knobs, draw: &mut Draw| aggregate(&[e], &vars, knobs, draw);
        // The phrase in output 1 only: output 2 preferred despite the score.
        let e = Example { phrase: (true, false), ..example(&[(2.0, 2.0)]) };
        let (labels, tally) = run(e.clone(), &certain(), &mut draw);
        assert_eq!((preferred(&labels[0]), labels[0].rule_flag, tally.rule), (2, true, 1));
        assert_eq!(tally.reasons, [0]);
        // In both: no rule.
        let both = Example { phrase: (true, true), ..example(&[(2.0, 2.0)]) };
        let (labels, _) = run(both, &certain(), &mut draw);
        assert_eq!((preferred(&labels[0]), labels[0].rule_flag), (1, false));
        // With probability 0: no rule.
        let knobs = Knobs { phrase_prob: 0.0, ..certain() };
        assert_eq!(preferred(&run(e.clone(), &knobs, &mut draw).0[0]), 1);
        // Rule cases flip at rule_noisy_ratio, not noisy_ratio.
        let knobs = Knobs { rule_noisy_ratio: 1.0, ..certain() };
        let (labels, _) = run(e, &knobs, &mut draw);
        assert_eq!((preferred(&labels[0]), labels[0].flip), (1, true));
        // Output 1 in another language than the instruction: output 2, even against the score.
        let e = Example { langs: langs("eng", "fra", "eng"), ..example(&[(2.0, 2.0)]) };
        let (labels, _) = run(e, &certain(), &mut draw);
        assert_eq!((preferred(&labels[0]), labels[0].rule_flag), (2, true));
        // The language rule overrides the phrase rule.
        let e = Example { phrase: (false, true), langs: langs("eng", "fra", "eng"), ..example(&[(2.0, 2.0)]) };
        assert_eq!(preferred(&run(e, &certain(), &mut draw).0[0]), 2);
        // Both in another language: skipped. Undetected: no rule.
        let e = Example { langs: langs("eng", "fra", "deu"), ..example(&[(2.0, 2.0)]) };
        let (labels, tally) = run(e, &certain(), &mut draw);
        assert_eq!((labels.len(), tally.both_foreign), (0, 1));
        let e = Example { langs: [Some("eng".into()), None, Some("fra".into())], ..example(&[(2.0, 2.0)]) };
        assert_eq!(preferred(&run(e, &certain(), &mut draw).0[0]), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_labels() {
        let examples: Vec<Example> =
            (0..20).map(|i| example(&[(i as f64 - 9.5, i as f64 - 9.0), (1.0, 2.0), (-3.0, -1.0)])).collect();
        let vars = variances(&examples, 3);
        let knobs = Knobs { passes: 4, max_principles: 8, negation_prob: 0.5, noisy_ratio: 0.1, ..certain() };
        let a = aggregate(&examples, &vars, &knobs, &mut Draw::new(5, 0));
        let b = aggregate(&examples, &vars, &knobs, &mut Draw::new(5, 0));
        assert_eq!(a, b);
        assert!(a.0.iter().any(|l| l.dimensions.len() > 1));
        assert_ne!(a, aggregate(&examples, &vars, &knobs, &mut Draw::new(6, 0)));
    }
}
