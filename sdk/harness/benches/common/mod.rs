//! What the benchmarks share.

use std::time::Instant;

/// Best of five rounds of `n` iterations, in ns per iteration.
pub fn best_of(n: u32, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .fold(f64::INFINITY, f64::min)
}
