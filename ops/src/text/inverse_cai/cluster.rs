//! Clustering and deduplicating proposed principles (ICAI's `clustering.py`), and the final
//! re-clustering of the ranked principles (`main.py`, after filtering).
//!
//! ICAI clusters with `sklearn.cluster.KMeans(n_clusters=k)`: k-means++ seeding (greedy, with
//! `2 + ln k` candidates per centre), one initialisation (`n_init="auto"` with k-means++), then
//! Lloyd's iterations. [`kmeans`] does the same from a seeded [`Draw`], in `f64`, so the same
//! vectors and seed give the same clusters on every machine. When there are at least as many
//! clusters as distinct principles, ICAI skips the embedding and only merges identical strings;
//! so does [`cluster`].

use crate::kit::draw::Draw;

/// Lloyd's iterations at most (sklearn's `max_iter` default).
const MAX_ITER: usize = 300;

/// A uniform draw in `[0, 1)` with 53 random bits.
fn unit(draw: &mut Draw) -> f64 {
    draw.below_u64(1 << 53) as f64 / (1u64 << 53) as f64
}

fn dist2(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, c)| (f64::from(*x) - c).powi(2)).sum()
}

/// The index `i` where the running sum of `weights` first exceeds `target` (the last when
/// rounding leaves `target` beyond the total).
fn weighted_index(weights: &[f64], target: f64) -> usize {
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if acc > target {
            return i;
        }
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

/// Greedy k-means++ (sklearn's `_kmeans_plusplus`): the first centre uniformly, each next one
/// the best of `2 + ln k` candidates drawn with probability proportional to the squared
/// distance to the nearest centre, "best" being the one that leaves the smallest total.
fn plus_plus(points: &[&[f32]], k: usize, draw: &mut Draw) -> Vec<Vec<f64>> {
    let to_f64 = |p: &[f32]| p.iter().map(|x| f64::from(*x)).collect::<Vec<f64>>();
    let trials = 2 + (k as f64).ln() as usize;
    let mut centres = vec![to_f64(points[draw.below(points.len())])];
    let mut closest: Vec<f64> = points.iter().map(|p| dist2(p, &centres[0])).collect();
    while centres.len() < k {
        let total: f64 = closest.iter().sum();
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for _ in 0..trials {
            let candidate = weighted_index(&closest, unit(draw) * total);
            let c = to_f64(points[candidate]);
            let with: Vec<f64> = points.iter().zip(&closest).map(|(p, d)| d.min(dist2(p, &c))).collect();
            let potential: f64 = with.iter().sum();
            if best.as_ref().is_none_or(|(b, ..)| potential < *b) {
                best = Some((potential, candidate, with));
            }
        }
        let (_, candidate, with) = best.expect("at least two trials");
        closest = with;
        centres.push(to_f64(points[candidate]));
    }
    centres
}

/// The nearest centre of `p` (the lowest index on a tie) and its squared distance.
fn nearest(p: &[f32], centres: &[Vec<f64>]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (j, c) in centres.iter().enumerate() {
        let d = dist2(p, c);
        if d < best.1 {
            best = (j, d);
        }
    }
    best
}

/// K-means labels (`0..k`) of `points` (all of one length, `k <= points.len()`), seeded:
/// k-means++ then Lloyd's iterations until no label changes. A cluster left empty takes the
/// point farthest from its centre, as sklearn relocates empty clusters.
pub fn kmeans(points: &[&[f32]], k: usize, seed: u64) -> Vec<usize> {
    assert!(k >= 1 && k <= points.len(), "k-means with k = {k} of {} points", points.len());
    let mut draw = Draw::new(seed, 0);
    let mut centres = plus_plus(points, k, &mut draw);
    let dim = points[0].len();
    let mut labels: Vec<usize> = Vec::new();
    for _ in 0..MAX_ITER {
        let assigned: Vec<(usize, f64)> = points.iter().map(|p| nearest(p, &centres)).collect();
        let mut next: Vec<usize> = assigned.iter().map(|(j, _)| *j).collect();
        // Empty clusters take the farthest points, one each, farthest first.
        let mut sizes = vec![0usize; k];
        next.iter().for_each(|j| sizes[*j] += 1);
        let mut far: Vec<usize> = (0..points.len()).collect();
        far.sort_by(|a, b| assigned[*b].1.total_cmp(&assigned[*a].1).then(a.cmp(b)));
        let mut far = far.into_iter();
        for j in 0..k {
            if sizes[j] == 0 {
                // A donor must keep at least one point.
                let donor = far.by_ref().find(|&i| sizes[next[i]] > 1).expect("k <= number of points");
                sizes[next[donor]] -= 1;
                next[donor] = j;
                sizes[j] = 1;
            }
        }
        let converged = next == labels;
        labels = next;
        if converged {
            break;
        }
        centres = vec![vec![0.0; dim]; k];
        for (p, j) in points.iter().zip(&labels) {
            for (c, x) in centres[*j].iter_mut().zip(p.iter()) {
                *c += f64::from(*x);
            }
        }
        for (c, n) in centres.iter_mut().zip(&sizes) {
            c.iter_mut().for_each(|v| *v /= *n as f64);
        }
    }
    labels
}

/// Groups of principles: each cluster lists indices into the principles, ascending; clusters
/// are ordered by their first member (numbering that does not depend on k-means' labels).
pub type Clusters = Vec<Vec<usize>>;

/// ICAI's `cluster_principles`: when `k` is at least the number of distinct texts, identical
/// texts are merged and nothing is embedded (`embed` is not called); otherwise k-means over
/// the embeddings of every text (duplicates included, as ICAI embeds them), seeded.
pub fn cluster<E>(
    texts: &[String],
    k: usize,
    seed: u64,
    embed: impl FnOnce(&[&str]) -> Result<Vec<Vec<f32>>, E>,
) -> Result<Clusters, E> {
    let mut distinct: Vec<&str> = texts.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let labels: Vec<usize> = if k >= distinct.len() {
        texts.iter().map(|t| distinct.binary_search(&t.as_str()).expect("every text is listed")).collect()
    } else {
        let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = embed(&strs)?;
        let points: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        kmeans(&points, k, seed)
    };
    Ok(group(&labels))
}

/// Labels to clusters ordered by first member.
fn group(labels: &[usize]) -> Clusters {
    let mut order: Vec<usize> = Vec::new();
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        match order.iter().position(|l| l == label) {
            Some(c) => clusters[c].push(i),
            None => {
                order.push(*label);
                clusters.push(vec![i]);
            }
        }
    }
    clusters
}

/// ICAI's summary by sampling (`s2_sample_cluster_instead_of_rewrite`, the default): one
/// member of each cluster drawn uniformly (so a text proposed twice is twice as likely); a
/// cluster of one is its member. Returns an index into the texts per cluster.
pub fn sample_members(clusters: &Clusters, seed: u64) -> Vec<usize> {
    let mut draw = Draw::new(seed, 1);
    clusters
        .iter()
        .map(|members| match members.len() {
            1 => members[0],
            n => members[draw.below(n)],
        })
        .collect()
}

/// ICAI's final step: the ranked principles (best first) clustered into `max` clusters, and
/// the best-ranked member of each kept, in rank order. With `max` or fewer, all are kept.
/// Returns positions in `ranked`.
pub fn final_selection<E>(
    ranked: &[String],
    max: usize,
    seed: u64,
    embed: impl FnOnce(&[&str]) -> Result<Vec<Vec<f32>>, E>,
) -> Result<Vec<usize>, E> {
    if ranked.len() <= max {
        return Ok((0..ranked.len()).collect());
    }
    let clusters = cluster(ranked, max, seed, embed)?;
    // Members are ascending, so the first is the best-ranked.
    let mut kept: Vec<usize> = clusters.iter().map(|members| members[0]).collect();
    kept.sort_unstable();
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    type NoErr = std::convert::Infallible;

    fn line(xs: &[f32]) -> Vec<Vec<f32>> {
        xs.iter().map(|x| vec![*x, 0.0]).collect()
    }

    fn labels_of(points: &[Vec<f32>], k: usize, seed: u64) -> Vec<usize> {
        let refs: Vec<&[f32]> = points.iter().map(Vec::as_slice).collect();
        kmeans(&refs, k, seed)
    }

    #[test]
    fn kmeans_finds_well_separated_groups_from_any_seed() {
        // Three groups far apart: every seeding ends in the same partition.
        let points = line(&[0.0, 0.1, 0.2, 10.0, 10.1, 20.0]);
        for seed in 0..20 {
            assert_eq!(group(&labels_of(&points, 3, seed)), vec![vec![0, 1, 2], vec![3, 4], vec![5]], "seed {seed}");
        }
    }

    #[test]
    fn kmeans_is_seeded() {
        // Eight points on a circle, four clusters: the split depends on the seeding, and the
        // same seed always gives the same one.
        let points: Vec<Vec<f32>> = (0..8)
            .map(|i| {
                let a = i as f32 * std::f32::consts::PI / 4.0;
                vec![a.cos(), a.sin()]
            })
            .collect();
        let runs: Vec<Vec<usize>> = (0..10).map(|s| labels_of(&points, 4, s)).collect();
        assert_eq!(runs, (0..10).map(|s| labels_of(&points, 4, s)).collect::<Vec<_>>());
        let mut partitions: Vec<Clusters> = runs.iter().map(|l| group(l)).collect();
        assert!(partitions.iter().all(|c| c.len() == 4));
        partitions.sort();
        partitions.dedup();
        assert!(partitions.len() > 1, "every seed gave {partitions:?}");
    }

    #[test]
    fn lloyd_moves_a_point_to_the_nearer_mean() {
        // Worked by hand: whatever the seeding picks, k-means on 0, 1, 2, 9 with k = 2 ends at
        // means 1 and 9 (0, 1, 2 | 9): 2 is 1 from the mean 1 and 7 from 9.
        let points = line(&[0.0, 1.0, 2.0, 9.0]);
        for seed in 0..10 {
            assert_eq!(group(&labels_of(&points, 2, seed)), vec![vec![0, 1, 2], vec![3]], "seed {seed}");
        }
    }

    #[test]
    fn an_empty_cluster_takes_the_farthest_point() {
        // Four copies of one point and one other, k = 2: k-means++ must pick the other point
        // as the second centre (the copies have distance 0), so no cluster is empty and the
        // odd one is alone.
        let points = line(&[1.0, 1.0, 1.0, 1.0, 5.0]);
        assert_eq!(group(&labels_of(&points, 2, 3)), vec![vec![0, 1, 2, 3], vec![4]]);
    }

    #[test]
    fn identical_vectors_from_different_texts_do_not_break_kmeans() {
        // MiniLM is uncased: "Select X" and "select x" embed the same. Three identical points
        // and k = 2: k-means++ can only repeat the centre; the empty cluster takes a point.
        let points = line(&[2.0, 2.0, 2.0]);
        for seed in 0..5 {
            let clusters = group(&labels_of(&points, 2, seed));
            assert_eq!(clusters.len(), 2, "seed {seed}");
            assert_eq!(clusters.iter().map(Vec::len).sum::<usize>(), 3);
        }
    }

    #[test]
    fn enough_clusters_only_merge_identical_texts_without_embedding() {
        let texts: Vec<String> = ["b", "a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let clusters = cluster(&texts, 3, 0, |_| -> Result<Vec<Vec<f32>>, &str> { Err("must not embed") }).unwrap();
        assert_eq!(clusters, vec![vec![0, 2], vec![1], vec![3]]);
        // Fewer clusters than distinct texts: embedded (a at 0, b at 1, c at 100) and clustered;
        // from any seeding Lloyd ends at {a, b, b} and {c}.
        let at = |s: &str| match s {
            "a" => 0.0,
            "b" => 1.0,
            _ => 100.0,
        };
        for seed in 0..10 {
            let embed = |t: &[&str]| -> Result<_, NoErr> { Ok(t.iter().map(|s| vec![at(s)]).collect()) };
            assert_eq!(cluster(&texts, 2, seed, embed).unwrap(), vec![vec![0, 1, 2], vec![3]]);
        }
    }

    #[test]
    fn summaries_sample_a_member_seeded() {
        let clusters = vec![vec![0, 1, 2, 3], vec![4]];
        let a = sample_members(&clusters, 7);
        assert_eq!(a, sample_members(&clusters, 7));
        assert!(clusters[0].contains(&a[0]));
        assert_eq!(a[1], 4);
        // Over seeds, every member of the big cluster is drawn.
        let mut seen: Vec<usize> = (0..64).map(|s| sample_members(&clusters, s)[0]).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, [0, 1, 2, 3]);
    }

    #[test]
    fn the_final_selection_keeps_the_best_ranked_member_of_each_cluster() {
        // Ranked best first: r0 and r2 are near each other, as are r1 and r3; r4 is alone.
        let ranked: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
        let at = [0.0f32, 10.0, 0.1, 10.1, 20.0];
        let embed = |t: &[&str]| -> Result<_, NoErr> {
            Ok(t.iter().map(|s| vec![at[s[1..].parse::<usize>().unwrap()]]).collect())
        };
        assert_eq!(final_selection(&ranked, 3, 0, embed).unwrap(), [0, 1, 4]);
        // No more than max: all kept, nothing embedded.
        let none = |_: &[&str]| -> Result<Vec<Vec<f32>>, &str> { Err("must not embed") };
        assert_eq!(final_selection(&ranked, 5, 0, none).unwrap(), [0, 1, 2, 3, 4]);
    }
}
