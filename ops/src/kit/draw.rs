//! Seeded draws written here, not taken from `rand`'s algorithms, so that no release of `rand`
//! can change which rows an op samples or which prompt it builds (and so a key or a memoised
//! response): a ChaCha8 stream per (seed, stream), Lemire's bounded integers, Fisher-Yates and
//! Floyd's sampling.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded stream of draws.
pub struct Draw(ChaCha8Rng);

impl Draw {
    /// The stream `round` of `seed` (each round of a stage draws from its own stream).
    pub fn new(seed: u64, round: u64) -> Draw {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(round);
        Draw(rng)
    }

    /// Uniform in `0..bound` (bound > 0): Lemire's multiply-and-reject.
    pub fn below(&mut self, bound: usize) -> usize {
        self.below_u64(bound as u64) as usize
    }

    /// Uniform in `0..bound` (bound > 0), for counts beyond `usize` on small targets.
    pub fn below_u64(&mut self, bound: u64) -> u64 {
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let wide = u128::from(self.0.next_u64()) * u128::from(bound);
            if (wide as u64) >= threshold {
                return (wide >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// `k` distinct indices of `0..n` (k <= n), every subset equally likely (Floyd's algorithm).
    pub fn pick(&mut self, n: usize, k: usize) -> impl Iterator<Item = usize> {
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        for j in n - k..n {
            let t = self.below(j + 1);
            chosen.push(if chosen.contains(&t) { j } else { t });
        }
        chosen.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_seeded_and_distinct() {
        let picks = |seed| Draw::new(seed, 3).pick(10, 4).collect::<Vec<_>>();
        assert_eq!(picks(7), picks(7));
        assert_ne!(picks(7), picks(8));
        let mut p = picks(7);
        p.sort();
        p.dedup();
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|i| *i < 10));
    }
}
