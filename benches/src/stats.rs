//! Latency percentiles.

/// Summary of a set of latencies, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Percentiles of `samples_us` (microseconds) by the nearest-rank method.
/// Sorts the slice in place. All zero when there are no samples.
pub fn percentiles(samples_us: &mut [u64]) -> Percentiles {
    if samples_us.is_empty() {
        return Percentiles::default();
    }
    samples_us.sort_unstable();
    let rank = |p: f64| {
        let index = ((p / 100.0) * samples_us.len() as f64).ceil() as usize;
        samples_us[index.clamp(1, samples_us.len()) - 1] as f64 / 1000.0
    };
    let sum: u128 = samples_us.iter().map(|&s| s as u128).sum();
    Percentiles {
        count: samples_us.len(),
        p50_ms: rank(50.0),
        p95_ms: rank(95.0),
        p99_ms: rank(99.0),
        max_ms: *samples_us.last().expect("not empty") as f64 / 1000.0,
        mean_ms: sum as f64 / samples_us.len() as f64 / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut samples: Vec<u64> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let p = percentiles(&mut samples);
        assert_eq!(
            (p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(p.count, 100);
        assert_eq!(p.mean_ms, 50.5);
        assert_eq!(percentiles(&mut []), Percentiles::default());
        assert_eq!(percentiles(&mut [7000]).p99_ms, 7.0);
    }
}
