//! Element passes split across threads in fixed chunks, for every step of a merge that touches
//! all of a tensor (decoding, arithmetic, encoding). Chunks are cut by position and partial sums
//! are added in chunk order, so that results do not depend on the thread count. Knows nothing
//! else of merging.

use std::ops::Range;

/// Elements below which a pass runs on one thread.
pub const PARALLEL_MIN: usize = 1 << 16;

/// The number of worker threads for element passes.
pub fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16)
}

/// Splits `items` into one run per thread, cut at multiples of `unit` items, and returns
/// `f(offset, run)` for each run in order, `offset` counted in units. Fewer than
/// `PARALLEL_MIN` units run on the calling thread.
pub fn par_runs<T: Send, R: Send>(items: &mut [T], unit: usize, f: impl Fn(usize, &mut [T]) -> R + Sync) -> Vec<R> {
    let n = items.len() / unit;
    let t = threads();
    if n < PARALLEL_MIN || t == 1 {
        return vec![f(0, items)];
    }
    let per = n.div_ceil(t);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks_mut(per * unit)
            .enumerate()
            .map(|(i, c)| {
                let f = &f;
                scope.spawn(move || f(i * per, c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a worker panicked")).collect()
    })
}

/// Runs `f` over `out` in chunks, on up to `threads()` threads; `f` gets each chunk's offset.
pub fn par_chunks(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    par_runs(out, 1, f);
}

/// [`par_chunks`] whose chunks each return a partial sum; the partials are added in chunk order.
pub fn par_chunks_sum(out: &mut [f32], f: impl Fn(usize, &mut [f32]) -> f64 + Sync) -> f64 {
    par_runs(out, 1, f).into_iter().sum()
}

/// Sums `f(range)` over chunks of `0..n`, in parallel, adding the partial sums in chunk order.
pub fn par_sum(n: usize, f: impl Fn(Range<usize>) -> f64 + Sync) -> f64 {
    let t = threads();
    if n < PARALLEL_MIN || t == 1 {
        return f(0..n);
    }
    let chunk = n.div_ceil(t);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let f = &f;
                scope.spawn(move || f(start..(start + chunk).min(n)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a sum worker panicked")).sum()
    })
}
