//! The signature-check bound of this machine, measured in the same run:
//! every validator must check every transaction's signature once, so with
//! `N` validators sharing `C` cores no network can commit more than
//! `best single-core batch-verification rate × C ÷ N` transactions a second.

use std::time::{Duration, Instant};

use cairn_core::SignedTransaction;

/// Batch sizes tried; the best rate counts.
pub const BATCH_SIZES: [usize; 5] = [64, 128, 256, 512, 1024];
/// How long each batch size is timed, per round.
const TIME_PER_SIZE: Duration = Duration::from_millis(300);
/// Rounds; the best round counts (other processes share the cores).
const ROUNDS: usize = 3;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Bound {
    /// Best single-core batch verification rate, signatures per second.
    pub batch_verify_per_s: f64,
    /// The batch size that reached it.
    pub best_batch: usize,
    /// Single (unbatched) verification rate on one core, per second.
    pub single_verify_per_s: f64,
    /// `std::thread::available_parallelism`.
    pub cores: usize,
    pub validators: usize,
    /// `batch_verify_per_s × cores ÷ validators`.
    pub bound_tps: f64,
}

/// Verifies `txs` in one batch the way admission does (message built per
/// transaction, ZIP-215 batch). Panics if any signature is bad: the
/// benchmark signs them itself.
pub fn verify_as_admission(txs: &[SignedTransaction]) {
    let messages: Vec<Vec<u8>> = txs.iter().map(|t| t.signed_message()).collect();
    let verdicts = cairn_core::verify_batch(
        txs.iter()
            .zip(messages)
            .map(|(t, m)| (&t.transfer.from, m, &t.signature)),
        rand_core::OsRng,
    );
    assert!(
        verdicts.iter().all(|v| v.is_ok()),
        "a benchmark signature failed"
    );
}

fn rate(mut work: impl FnMut() -> usize) -> f64 {
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < TIME_PER_SIZE {
        done += work();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Measures the bound on this thread with `sample` (at least 1024 distinct
/// signed transfers).
pub fn measure(sample: &[SignedTransaction], validators: usize) -> Bound {
    assert!(sample.len() >= *BATCH_SIZES.last().expect("sizes"));
    let mut best = (0.0, 0);
    let mut single = 0.0f64;
    for _ in 0..ROUNDS {
        for size in BATCH_SIZES {
            let r = rate(|| {
                verify_as_admission(&sample[..size]);
                size
            });
            if r > best.0 {
                best = (r, size);
            }
        }
        single = single.max(rate(|| {
            for tx in &sample[..64] {
                tx.verify_signature().expect("benchmark signature");
            }
            64
        }));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Bound {
        batch_verify_per_s: best.0,
        best_batch: best.1,
        single_verify_per_s: single,
        cores,
        validators,
        bound_tps: best.0 * cores as f64 / validators as f64,
    }
}
