//! Prometheus text-format metrics, kept in atomics so any thread can update
//! them without locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the block commit latency histogram buckets.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub struct Metrics {
    pub height: AtomicU64,
    pub view: AtomicU64,
    pub committed_transactions: AtomicU64,
    pub mempool_size: AtomicU64,
    pub mempool_ready: AtomicU64,
    pub mempool_parked: AtomicU64,
    /// Times this node moved to a new view (counted whatever the cause).
    pub view_changes: AtomicU64,
    pub peers_connected: AtomicU64,
    pub admitted_transactions: AtomicU64,
    pub rejected_transactions: AtomicU64,
    pub p2p_frames_dropped: AtomicU64,
    /// Peers' consensus frames dropped because the sender's share of the
    /// consensus thread's queue was full.
    pub consensus_events_dropped: AtomicU64,
    /// Inbound p2p connections closed at once: handshakes at their cap.
    pub p2p_handshakes_refused: AtomicU64,
    /// Peers disconnected and refused for a backoff after sending a
    /// provably bogus consensus message of their own.
    pub p2p_peers_punished: AtomicU64,
    /// Gossip frames received while the admission task was behind.
    pub p2p_gossip_dropped: AtomicU64,
    /// Safety record writes (`safety.json`, fsynced before a vote leaves)
    /// and the time they took.
    pub safety_writes: AtomicU64,
    pub safety_write_us: AtomicU64,
    pub safety_write_bytes: AtomicU64,
    /// 1 while the validator, started without a safety record, abstains
    /// from voting (`cairn_consensus` `abstain.rs`).
    pub abstaining: AtomicU64,
    /// When (ms since the epoch) this node last refused work for want of
    /// room: a full mempool, a client turned away as overloaded, or a
    /// gossip frame dropped. Not exported; see [`Metrics::overloaded_since`].
    overload_seen_ms: AtomicU64,
    /// HTTP answers by route template and status (both from small fixed
    /// sets: bounded).
    http_requests: std::sync::Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// Records that the node just refused work for want of room.
    pub fn saw_overload(&self) {
        self.overload_seen_ms
            .fetch_max(crate::ledger::now_ms(), Ordering::Relaxed);
    }

    /// Whether the node refused work for want of room in the `window_ms`
    /// before `now_ms`.
    pub fn overloaded_within(&self, window_ms: u64, now_ms: u64) -> bool {
        let seen = self.overload_seen_ms.load(Ordering::Relaxed);
        seen > 0 && now_ms.saturating_sub(seen) < window_ms
    }

    /// Counts one HTTP answer of `route` (a route template) with `status`.
    pub fn observe_http(&self, route: &'static str, status: u16) {
        let mut counts = self.http_requests.lock().expect("metrics lock");
        *counts.entry((route, status)).or_default() += 1;
    }

    /// Records the mempool's sizes (call with its lock held, after a change).
    pub fn observe_mempool(&self, mempool: &crate::mempool::Mempool) {
        self.mempool_size
            .store(mempool.len() as u64, Ordering::Relaxed);
        self.mempool_ready
            .store(mempool.ready_len() as u64, Ordering::Relaxed);
        self.mempool_parked
            .store(mempool.parked_len() as u64, Ordering::Relaxed);
    }

    /// Records the time from a block's proposal timestamp to its commit here.
    pub fn observe_commit_latency(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_S) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "cairn_height",
            "gauge",
            "Height of the last committed block.",
            get(&self.height),
        );
        metric(
            "cairn_view",
            "gauge",
            "Current consensus view.",
            get(&self.view),
        );
        metric(
            "cairn_abstaining",
            "gauge",
            "1 while this validator, started without a safety record, signs no votes.",
            get(&self.abstaining),
        );
        metric(
            "cairn_committed_transactions_total",
            "counter",
            "Transactions committed since this process started.",
            get(&self.committed_transactions),
        );
        metric(
            "cairn_mempool_size",
            "gauge",
            "Transactions waiting in the mempool.",
            get(&self.mempool_size),
        );
        metric(
            "cairn_mempool_ready",
            "gauge",
            "Mempool transactions a block could take now (no nonce gap before them).",
            get(&self.mempool_ready),
        );
        metric(
            "cairn_mempool_parked",
            "gauge",
            "Mempool transactions parked behind a nonce gap.",
            get(&self.mempool_parked),
        );
        metric(
            "cairn_view_changes_total",
            "counter",
            "Times this node moved to a new view since this process started.",
            get(&self.view_changes),
        );
        metric(
            "cairn_safety_writes_total",
            "counter",
            "Durable writes of the safety record (before votes leave).",
            get(&self.safety_writes),
        );
        metric(
            "cairn_safety_write_bytes_total",
            "counter",
            "Bytes written to the safety record.",
            get(&self.safety_write_bytes),
        );
        metric(
            "cairn_peers_connected",
            "gauge",
            "Validators connected over p2p.",
            get(&self.peers_connected),
        );
        metric(
            "cairn_admitted_transactions_total",
            "counter",
            "Transactions admitted into the mempool.",
            get(&self.admitted_transactions),
        );
        metric(
            "cairn_rejected_transactions_total",
            "counter",
            "Transactions refused at admission.",
            get(&self.rejected_transactions),
        );
        metric(
            "cairn_p2p_frames_dropped_total",
            "counter",
            "Outbound p2p frames dropped because a peer queue was full.",
            get(&self.p2p_frames_dropped),
        );
        metric(
            "cairn_consensus_events_dropped_total",
            "counter",
            "Peers' consensus frames dropped because the sender's share of the consensus queue was full.",
            get(&self.consensus_events_dropped),
        );
        metric(
            "cairn_p2p_handshakes_refused_total",
            "counter",
            "Inbound p2p connections closed at once because handshakes were at their cap.",
            get(&self.p2p_handshakes_refused),
        );
        metric(
            "cairn_p2p_peer_punished_total",
            "counter",
            "Peers disconnected and refused for a backoff after sending a bad signature or another provably bogus consensus message of their own.",
            get(&self.p2p_peers_punished),
        );
        metric(
            "cairn_p2p_gossip_dropped_total",
            "counter",
            "Received transaction gossip frames dropped because admission was behind.",
            get(&self.p2p_gossip_dropped),
        );
        let _ = writeln!(
            out,
            "# HELP cairn_safety_write_seconds_total Time spent writing and fsyncing the safety \
             record.\n# TYPE cairn_safety_write_seconds_total counter\n\
             cairn_safety_write_seconds_total {:.6}",
            get(&self.safety_write_us) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP cairn_http_requests_total HTTP answers by route and status.\n\
             # TYPE cairn_http_requests_total counter"
        );
        for ((route, status), count) in self.http_requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "cairn_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        let name = "cairn_block_commit_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a block's proposal timestamp to its commit on this node.\n# TYPE {name} histogram"
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_S) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", get(bucket));
        }
        let count = get(&self.latency_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", get(&self.latency_sum_us) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histogram_cumulatively() {
        let m = Metrics::default();
        m.observe_commit_latency(0.02);
        m.observe_commit_latency(3.0);
        m.height.store(7, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("cairn_height 7\n"));
        assert!(text.contains("cairn_block_commit_latency_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("cairn_block_commit_latency_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("cairn_block_commit_latency_seconds_count 2\n"));
    }
}
