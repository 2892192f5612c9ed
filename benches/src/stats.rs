//! Latency percentiles, and the least-squares growth of a sampled figure.

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

/// The least-squares slope of `samples` (`(seconds, MiB)` pairs), in MiB per
/// minute. `None` with fewer than two samples or when every sample has the
/// same time (no line is defined).
pub fn slope_per_min(samples: &[(f64, f64)]) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|(t, _)| t).sum::<f64>() / n;
    let mean_y = samples.iter().map(|(_, y)| y).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for (t, y) in samples {
        covariance += (t - mean_t) * (y - mean_y);
        variance += (t - mean_t) * (t - mean_t);
    }
    (variance > 0.0).then(|| covariance / variance * 60.0)
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

    #[test]
    fn slope_of_a_line_noise_and_edge_cases() {
        // 2 MiB per second is 120 MiB per minute.
        let line: Vec<(f64, f64)> = (0..10).map(|s| (s as f64, 50.0 + 2.0 * s as f64)).collect();
        assert!((slope_per_min(&line).unwrap() - 120.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|s| (150.0 + s as f64, 80.0)).collect();
        assert_eq!(slope_per_min(&flat), Some(0.0));
        // Symmetric noise around a flat line does not tilt it.
        let noisy: Vec<(f64, f64)> = (0..10)
            .map(|s| (s as f64, if s % 2 == 0 { 81.0 } else { 79.0 }))
            .chain((0..10).map(|s| (s as f64, if s % 2 == 0 { 79.0 } else { 81.0 })))
            .collect();
        assert!(slope_per_min(&noisy).unwrap().abs() < 1e-9);
        // Least squares, not end points: (0,0) (1,0) (2,3) has slope 1.5/s.
        let fit = slope_per_min(&[(0.0, 0.0), (1.0, 0.0), (2.0, 3.0)]).unwrap();
        assert!((fit - 90.0).abs() < 1e-9);
        // Falling memory gives a negative slope.
        assert!(slope_per_min(&[(0.0, 10.0), (60.0, 5.0)]).unwrap() < 0.0);
        assert_eq!(slope_per_min(&[]), None);
        assert_eq!(slope_per_min(&[(1.0, 5.0)]), None);
        assert_eq!(slope_per_min(&[(1.0, 5.0), (1.0, 9.0)]), None);
    }
}
