//! The node's Prometheus metrics, kept by the `prometheus-client` crate and
//! served at `GET /metrics` in the Prometheus text format (version 0.0.4).
//!
//! Counters and gauges are atomics any thread updates without a lock; the
//! histogram keeps its buckets, count and sum under one lock, so a scrape
//! never reads them out of step. Every label set is bounded: routes and
//! statuses come from small fixed sets, peers are the genesis validators.
//! The registry prefixes every name with `cairn_` and appends `_total` to
//! counters itself, so counters are registered without that suffix.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{
    prometheus_text, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of a scrape: Prometheus text, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the block commit latency histogram buckets.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A gauge of a count that is never negative.
pub type CountGauge = Gauge<u64, AtomicU64>;
/// A counter of (fractions of) seconds.
pub type SecondsCounter = Counter<f64, AtomicU64>;

/// Labels of `cairn_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    status: u16,
}

/// Labels of `cairn_mempool_removed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Labels of `cairn_gossip_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// Which way p2p traffic went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Direction {
    Sent,
    Received,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        })
    }
}

/// Labels of the per-peer p2p series: the peer's validator index in genesis
/// and the direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: u16,
    direction: Direction,
}

/// A per-peer p2p series: one counter per peer and direction.
type PeerFamily = Family<PeerLabels, Counter>;

/// The per-peer p2p counters of one validator, created up front so the hot
/// path only adds to atomics (no label look-up, no lock).
struct PeerTraffic {
    bytes_sent: Counter,
    bytes_received: Counter,
    frames_sent: Counter,
    frames_received: Counter,
}

pub struct Metrics {
    pub height: CountGauge,
    pub view: CountGauge,
    pub committed_transactions: Counter,
    pub mempool_size: CountGauge,
    pub mempool_ready: CountGauge,
    pub mempool_parked: CountGauge,
    /// Admitted transactions that left the mempool without a block, by
    /// reason (`evicted`, `expired`, `nonce_used`, `unaffordable`).
    mempool_removed: Family<ReasonLabels, Counter>,
    /// Times this node moved to a new view (counted whatever the cause).
    pub view_changes: Counter,
    pub peers_connected: CountGauge,
    pub admitted_transactions: Counter,
    pub rejected_transactions: Counter,
    /// Transactions peers gossiped that admission refused, by error code:
    /// what a primary lacks that other validators hold.
    gossip_refused: Family<CodeLabels, Counter>,
    pub p2p_frames_dropped: Counter,
    /// Peers' consensus frames dropped because the sender's share of the
    /// consensus thread's queue was full.
    pub consensus_events_dropped: Counter,
    /// Peers' consensus frames and sync replies waiting for the consensus
    /// thread, and their bytes (kept by the queue, under its lock).
    pub consensus_events_queued: CountGauge,
    pub consensus_events_queued_bytes: CountGauge,
    /// Inbound p2p connections closed at once: handshakes at their cap.
    pub p2p_handshakes_refused: Counter,
    /// Peers disconnected and refused for a backoff after sending a
    /// provably bogus consensus message of their own.
    pub p2p_peers_punished: Counter,
    /// Gossip frames received while the admission task was behind.
    pub p2p_gossip_dropped: Counter,
    /// Safety record writes (`safety.json`, fsynced before a vote leaves),
    /// the time they took and their bytes.
    pub safety_writes: Counter,
    pub safety_write_seconds: SecondsCounter,
    pub safety_write_bytes: Counter,
    /// 1 while the validator, started without a safety record, abstains
    /// from voting (`cairn_consensus` `abstain.rs`).
    pub abstaining: CountGauge,
    /// 1 while the replica knows it is behind and fetches blocks.
    pub syncing: CountGauge,
    /// The height being caught up to; the local height when not behind.
    pub sync_target_height: CountGauge,
    /// Times this node started catching up.
    pub syncs: Counter,
    /// When (ms since the epoch) this node last refused work for want of
    /// room: a full mempool, a client turned away as overloaded, or a
    /// gossip frame dropped. Not exported; see [`Metrics::overloaded_within`].
    overload_seen_ms: AtomicU64,
    /// HTTP answers by route template and status.
    http_requests: Family<HttpLabels, Counter>,
    /// Indexed by validator; `None` for this node itself.
    peers: Vec<Option<PeerTraffic>>,
    commit_latency: Histogram,
    registry: Registry,
}

impl Metrics {
    /// The metrics of validator `me` among `validators` genesis validators
    /// (the per-peer series are created for each of the others).
    pub fn new(validators: usize, me: usize) -> Metrics {
        let mut registry = Registry::with_prefix("cairn");
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = CountGauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let r = &mut registry;
        let height = gauge(r, "height", "Height of the last committed block");
        let view = gauge(r, "view", "Current consensus view");
        let abstaining = gauge(
            r,
            "abstaining",
            "1 while this validator, started without a safety record, signs no votes",
        );
        let committed_transactions = counter(
            r,
            "committed_transactions",
            "Transactions committed since this process started",
        );
        let mempool_size = gauge(r, "mempool_size", "Transactions waiting in the mempool");
        let mempool_ready = gauge(
            r,
            "mempool_ready",
            "Mempool transactions a block could take now (no nonce gap before them)",
        );
        let mempool_parked = gauge(
            r,
            "mempool_parked",
            "Mempool transactions parked behind a nonce gap",
        );
        let mempool_removed = Family::<ReasonLabels, Counter>::default();
        r.register(
            "mempool_removed",
            "Admitted transactions that left the mempool without a block, by reason",
            mempool_removed.clone(),
        );
        for reason in crate::mempool::RemovedReason::ALL {
            let _ = mempool_removed.get_or_create(&ReasonLabels {
                reason: reason.label(),
            });
        }
        let view_changes = counter(
            r,
            "view_changes",
            "Times this node moved to a new view since this process started",
        );
        let safety_writes = counter(
            r,
            "safety_writes",
            "Durable writes of the safety record (before votes leave)",
        );
        let safety_write_bytes = counter(
            r,
            "safety_write_bytes",
            "Bytes written to the safety record",
        );
        let peers_connected = gauge(r, "peers_connected", "Validators connected over p2p");
        let admitted_transactions = counter(
            r,
            "admitted_transactions",
            "Transactions admitted into the mempool",
        );
        let rejected_transactions = counter(
            r,
            "rejected_transactions",
            "Transactions refused at admission",
        );
        let gossip_refused = Family::<CodeLabels, Counter>::default();
        r.register(
            "gossip_refused",
            "Transactions gossiped by other validators that admission refused, by error code",
            gossip_refused.clone(),
        );
        let p2p_frames_dropped = counter(
            r,
            "p2p_frames_dropped",
            "Outbound p2p frames dropped because a peer queue was full",
        );
        let consensus_events_dropped = counter(
            r,
            "consensus_events_dropped",
            "Peers' consensus frames dropped because the sender's share of the consensus queue \
             was full",
        );
        let consensus_events_queued = gauge(
            r,
            "consensus_events_queued",
            "Peers' consensus frames and sync replies waiting for the consensus thread",
        );
        let consensus_events_queued_bytes = gauge(
            r,
            "consensus_events_queued_bytes",
            "Bytes of the peers' frames waiting for the consensus thread",
        );
        let p2p_handshakes_refused = counter(
            r,
            "p2p_handshakes_refused",
            "Inbound p2p connections closed at once because handshakes were at their cap",
        );
        let p2p_peers_punished = counter(
            r,
            "p2p_peer_punished",
            "Peers disconnected and refused for a backoff after sending a bad signature or \
             another provably bogus consensus message of their own",
        );
        let p2p_gossip_dropped = counter(
            r,
            "p2p_gossip_dropped",
            "Received transaction gossip frames dropped because admission was behind",
        );
        let safety_write_seconds = SecondsCounter::default();
        r.register(
            "safety_write_seconds",
            "Time spent writing and fsyncing the safety record",
            safety_write_seconds.clone(),
        );
        let syncing = gauge(
            r,
            "syncing",
            "1 while this node knows it is behind and fetches committed blocks from peers",
        );
        let sync_target_height = gauge(
            r,
            "sync_target_height",
            "Height this node is catching up to: the highest height proven committed, or that \
             f+1 validators' signed messages show them past; cairn_height when not behind",
        );
        let syncs = counter(r, "syncs", "Times this node started catching up");
        let http_requests = Family::<HttpLabels, Counter>::default();
        r.register(
            "http_requests",
            "HTTP answers by route and status",
            http_requests.clone(),
        );
        let (peers, bytes, frames) = peer_traffic(validators, me);
        r.register(
            "p2p_bytes",
            "Bytes to and from each validator over p2p after the handshake, framing and \
             encryption included",
            bytes,
        );
        r.register(
            "p2p_frames",
            "Frames (messages) sent to and received from each validator over p2p",
            frames,
        );
        let commit_latency = Histogram::new(LATENCY_BUCKETS_S);
        r.register(
            "block_commit_latency_seconds",
            "Time from a block's proposal timestamp to its commit on this node",
            commit_latency.clone(),
        );
        Metrics {
            height,
            view,
            committed_transactions,
            mempool_size,
            mempool_ready,
            mempool_parked,
            mempool_removed,
            view_changes,
            peers_connected,
            admitted_transactions,
            rejected_transactions,
            gossip_refused,
            p2p_frames_dropped,
            consensus_events_dropped,
            consensus_events_queued,
            consensus_events_queued_bytes,
            p2p_handshakes_refused,
            p2p_peers_punished,
            p2p_gossip_dropped,
            safety_writes,
            safety_write_seconds,
            safety_write_bytes,
            abstaining,
            syncing,
            sync_target_height,
            syncs,
            overload_seen_ms: AtomicU64::new(0),
            http_requests,
            peers,
            commit_latency,
            registry,
        }
    }

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
        self.http_requests
            .get_or_create(&HttpLabels { route, status })
            .inc();
    }

    /// Counts one frame of `bytes` bytes (on the wire) written to `peer`.
    pub fn observe_sent(&self, peer: usize, bytes: usize) {
        if let Some(Some(traffic)) = self.peers.get(peer) {
            traffic.frames_sent.inc();
            traffic.bytes_sent.inc_by(bytes as u64);
        }
    }

    /// Counts `bytes` bytes read from `peer`'s connection.
    pub fn observe_received_bytes(&self, peer: usize, bytes: usize) {
        if let Some(Some(traffic)) = self.peers.get(peer) {
            traffic.bytes_received.inc_by(bytes as u64);
        }
    }

    /// Counts one whole frame read from `peer`.
    pub fn observe_received_frame(&self, peer: usize) {
        if let Some(Some(traffic)) = self.peers.get(peer) {
            traffic.frames_received.inc();
        }
    }

    /// Records the mempool's sizes (call with its lock held, after a change).
    /// `count` transactions a peer gossiped were refused with `code`.
    pub fn gossip_refused(&self, code: &'static str, count: u64) {
        self.gossip_refused
            .get_or_create(&CodeLabels { code })
            .inc_by(count);
    }

    pub fn observe_mempool(&self, mempool: &crate::mempool::Mempool) {
        self.mempool_size.set(mempool.len() as u64);
        self.mempool_ready.set(mempool.ready_len() as u64);
        self.mempool_parked.set(mempool.parked_len() as u64);
        // The pool counts; the counters catch up (always under the
        // mempool lock, so never past it).
        for reason in crate::mempool::RemovedReason::ALL {
            let counter = self.mempool_removed.get_or_create(&ReasonLabels {
                reason: reason.label(),
            });
            let total = mempool.removed(reason);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Records the time from a block's proposal timestamp to its commit here.
    pub fn observe_commit_latency(&self, seconds: f64) {
        self.commit_latency.observe(seconds.max(0.0));
    }

    /// The Prometheus text exposition (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// The per-peer counters of every validator but `me`, and the two families
/// (bytes, frames) they belong to.
fn peer_traffic(
    validators: usize,
    me: usize,
) -> (Vec<Option<PeerTraffic>>, PeerFamily, PeerFamily) {
    let bytes = PeerFamily::default();
    let frames = PeerFamily::default();
    let peers = (0..validators)
        .map(|peer| {
            (peer != me).then(|| {
                let labels = |direction| PeerLabels {
                    peer: peer as u16,
                    direction,
                };
                PeerTraffic {
                    bytes_sent: bytes.get_or_create_owned(&labels(Direction::Sent)),
                    bytes_received: bytes.get_or_create_owned(&labels(Direction::Received)),
                    frames_sent: frames.get_or_create_owned(&labels(Direction::Sent)),
                    frames_received: frames.get_or_create_owned(&labels(Direction::Received)),
                }
            })
        })
        .collect();
    (peers, bytes, frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name and labels) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn renders_histogram_cumulatively() {
        let m = Metrics::new(1, 0);
        m.observe_commit_latency(0.02);
        m.observe_commit_latency(3.0);
        m.height.set(7);
        let text = m.render();
        assert!(text.contains("cairn_height 7\n"), "{text}");
        assert!(
            text.contains("cairn_block_commit_latency_seconds_bucket{le=\"0.025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("cairn_block_commit_latency_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("cairn_block_commit_latency_seconds_count 2\n"));
        assert!(text.contains("cairn_block_commit_latency_seconds_sum 3.02\n"));
    }

    /// Issue 12: the hand-written histogram could be read with its buckets
    /// and count out of step (seen: `le="0.05"` at 636691 above `+Inf` and
    /// `_count` at 636689). Scraped while two threads observe, every
    /// rendered histogram is cumulative and its `+Inf` bucket equals its
    /// count.
    #[test]
    fn the_inf_bucket_equals_the_count_while_observing() {
        let m = std::sync::Arc::new(Metrics::new(1, 0));
        let observations = 200_000;
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..observations {
                        m.observe_commit_latency(f64::from(i % 50) / 1000.0);
                    }
                })
            })
            .collect();
        let name = "cairn_block_commit_latency_seconds";
        let mut scrapes = 0;
        while scrapes < 5 || !writers.iter().all(|w| w.is_finished()) {
            let text = m.render();
            let buckets: Vec<f64> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
                .map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap())
                .collect();
            assert_eq!(buckets.len(), LATENCY_BUCKETS_S.len() + 1, "{text}");
            assert!(
                buckets.windows(2).all(|w| w[0] <= w[1]),
                "buckets are cumulative: {buckets:?}"
            );
            let inf = sample(&text, &format!("{name}_bucket{{le=\"+Inf\"}}"));
            let count = sample(&text, &format!("{name}_count"));
            assert!(inf.is_some() && inf == count, "{inf:?} vs {count:?}");
            scrapes += 1;
        }
        for writer in writers {
            writer.join().unwrap();
        }
        let text = m.render();
        let total = f64::from(2 * observations);
        assert_eq!(sample(&text, &format!("{name}_count")), Some(total));
    }

    /// Every name the dashboard, the benchmark, the tests and INTERFACE.md
    /// read keeps its exact name and type, with no OpenMetrics-only lines.
    #[test]
    fn names_and_types_are_kept() {
        let m = Metrics::new(4, 1);
        m.observe_http("/v1/status", 200);
        m.safety_write_seconds.inc_by(0.25);
        let text = m.render();
        for (name, kind) in [
            ("cairn_height", "gauge"),
            ("cairn_view", "gauge"),
            ("cairn_abstaining", "gauge"),
            ("cairn_committed_transactions_total", "counter"),
            ("cairn_mempool_size", "gauge"),
            ("cairn_mempool_ready", "gauge"),
            ("cairn_mempool_parked", "gauge"),
            ("cairn_mempool_removed_total", "counter"),
            ("cairn_view_changes_total", "counter"),
            ("cairn_safety_writes_total", "counter"),
            ("cairn_safety_write_bytes_total", "counter"),
            ("cairn_safety_write_seconds_total", "counter"),
            ("cairn_peers_connected", "gauge"),
            ("cairn_admitted_transactions_total", "counter"),
            ("cairn_rejected_transactions_total", "counter"),
            ("cairn_p2p_frames_dropped_total", "counter"),
            ("cairn_consensus_events_dropped_total", "counter"),
            ("cairn_consensus_events_queued", "gauge"),
            ("cairn_consensus_events_queued_bytes", "gauge"),
            ("cairn_p2p_handshakes_refused_total", "counter"),
            ("cairn_p2p_peer_punished_total", "counter"),
            ("cairn_p2p_gossip_dropped_total", "counter"),
            ("cairn_http_requests_total", "counter"),
            ("cairn_p2p_bytes_total", "counter"),
            ("cairn_p2p_frames_total", "counter"),
            ("cairn_syncing", "gauge"),
            ("cairn_sync_target_height", "gauge"),
            ("cairn_syncs_total", "counter"),
            ("cairn_block_commit_latency_seconds", "histogram"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind} in:\n{text}"
            );
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(!text.contains("_total_total"), "{text}");
        assert!(text.contains(
            "# HELP cairn_height Height of the last committed block.\n\
             # TYPE cairn_height gauge\ncairn_height 0\n"
        ));
        assert!(
            text.contains("cairn_http_requests_total{route=\"/v1/status\",status=\"200\"} 1\n"),
            "{text}"
        );
        assert_eq!(
            sample(&text, "cairn_safety_write_seconds_total"),
            Some(0.25)
        );
    }

    /// Every series the Grafana dashboard in docs/ queries is one the node
    /// exports (a histogram's `_bucket` series by its family's name).
    #[test]
    fn the_dashboard_queries_only_exported_series() {
        let dashboard = include_str!("../../docs/grafana/cairn-dashboard.json");
        let metrics = Metrics::new(4, 0);
        // A family without samples is left out of a scrape entirely.
        metrics.observe_http("/metrics", 200);
        let text = metrics.render();
        let mut names = 0;
        for (at, _) in dashboard.match_indices("cairn_") {
            let name: String = dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {name}, which /metrics lacks"
            );
            names += 1;
        }
        assert!(names >= 20, "{names} queried names found");
    }

    /// Per-peer series exist for every other genesis validator and only
    /// them, in both directions, and count what they are told.
    #[test]
    fn per_peer_series_are_bounded_to_the_other_validators() {
        let m = Metrics::new(3, 1);
        m.observe_sent(0, 100);
        m.observe_sent(0, 50);
        m.observe_received_bytes(2, 70);
        m.observe_received_frame(2);
        m.observe_sent(1, 9); // this node: no series
        m.observe_sent(7, 9); // no such validator: ignored
        let text = m.render();
        let at = |name: &str, peer: u16, direction: &str| {
            sample(
                &text,
                &format!("{name}{{peer=\"{peer}\",direction=\"{direction}\"}}"),
            )
        };
        assert_eq!(at("cairn_p2p_bytes_total", 0, "sent"), Some(150.0));
        assert_eq!(at("cairn_p2p_frames_total", 0, "sent"), Some(2.0));
        assert_eq!(at("cairn_p2p_bytes_total", 2, "received"), Some(70.0));
        assert_eq!(at("cairn_p2p_frames_total", 2, "received"), Some(1.0));
        assert_eq!(at("cairn_p2p_bytes_total", 0, "received"), Some(0.0));
        assert_eq!(at("cairn_p2p_bytes_total", 1, "sent"), None);
        let peer_samples = text
            .lines()
            .filter(|l| l.starts_with("cairn_p2p_bytes_total{"))
            .count();
        assert_eq!(peer_samples, 4, "two peers, two directions:\n{text}");
    }
}
