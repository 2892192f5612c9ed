//! The consensus thread: owns the replica and the ledger, feeds them events
//! and ticks, and carries out their actions in order.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::safety_record::{Origin, SafetyRecord};
use cairn_consensus::{Action, Config, Input, Ledger, Replica, SafetyState};
use cairn_core::{Height, ValidatorIndex};

use crate::ledger::{now_ms, NodeLedger};
use crate::metrics::{CountGauge, Metrics};
use crate::p2p::{Wire, SYNC_BLOCKS_MAX};
use crate::{ConsensusStatus, Event, Node};

/// How often the replica is ticked.
const TICK: Duration = Duration::from_millis(10);
/// Without a commit for this long, ask the next peer whether it has blocks
/// we lack. An idle network exchanges no consensus messages, so this poll is
/// how a validator that restarted behind (or with a wiped data folder)
/// learns that it is behind; the reply is empty when it is not.
const IDLE_SYNC_POLL: Duration = Duration::from_millis(1_000);

/// The consensus thread's inbox. Peers' messages and sync replies wait in
/// one FIFO, bounded per peer in frames and in bytes, so one peer (however
/// much it sends) fills only its own share and never crowds out the
/// others' votes. API nudges do not queue: they set one flag, taken at
/// most every other event, so a flood of clients cannot crowd out votes
/// either.
pub struct EventQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    frames_per_peer_max: usize,
    bytes_per_peer_max: usize,
    gauges: QueueGauges,
}

/// The queue's depth as metrics (`cairn_consensus_events_queued` and
/// `_queued_bytes`), updated under the queue's lock.
#[derive(Default)]
pub struct QueueGauges {
    events: CountGauge,
    bytes: CountGauge,
}

impl QueueGauges {
    pub fn of(metrics: &Metrics) -> QueueGauges {
        QueueGauges {
            events: metrics.consensus_events_queued.clone(),
            bytes: metrics.consensus_events_queued_bytes.clone(),
        }
    }
}

struct QueueState {
    events: VecDeque<(usize, Event, usize)>,
    /// Frames and bytes waiting per peer.
    held: Vec<(usize, usize)>,
    nudged: bool,
    /// The last event taken was a nudge (the next one goes to peers).
    nudge_taken: bool,
    shutdown: bool,
}

impl EventQueue {
    pub fn new(
        peers: usize,
        frames_per_peer_max: usize,
        bytes_per_peer_max: usize,
        gauges: QueueGauges,
    ) -> EventQueue {
        EventQueue {
            state: Mutex::new(QueueState {
                events: VecDeque::new(),
                held: vec![(0, 0); peers],
                nudged: false,
                nudge_taken: false,
                shutdown: false,
            }),
            ready: Condvar::new(),
            frames_per_peer_max,
            bytes_per_peer_max,
            gauges,
        }
    }

    /// Queues an event from `peer` that arrived as `bytes` bytes; false
    /// (and dropped) when the peer's share is full.
    pub fn push(&self, peer: ValidatorIndex, event: Event, bytes: usize) -> bool {
        let mut state = self.state.lock().expect("event queue lock");
        let Some(held) = state.held.get_mut(peer.get()) else {
            return false;
        };
        if held.0 >= self.frames_per_peer_max
            || held.1.saturating_add(bytes) > self.bytes_per_peer_max
        {
            return false;
        }
        held.0 += 1;
        held.1 += bytes;
        state.events.push_back((peer.get(), event, bytes));
        self.gauges.events.inc();
        self.gauges.bytes.inc_by(bytes as u64);
        self.ready.notify_one();
        true
    }

    /// New transactions arrived: tick soon. Nudges coalesce into one.
    pub fn nudge(&self) {
        self.state.lock().expect("event queue lock").nudged = true;
        self.ready.notify_one();
    }

    pub fn shutdown(&self) {
        self.state.lock().expect("event queue lock").shutdown = true;
        self.ready.notify_one();
    }

    /// Frames and bytes waiting from `peer`.
    #[cfg(test)]
    fn held_by(&self, peer: ValidatorIndex) -> (usize, usize) {
        let state = self.state.lock().expect("event queue lock");
        state.held.get(peer.get()).copied().unwrap_or((0, 0))
    }

    /// The next event, waiting at most `timeout`; `None` when none came.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().expect("event queue lock");
        loop {
            if state.shutdown {
                return Some(Event::Shutdown);
            }
            let nudge_turn = state.nudged && (!state.nudge_taken || state.events.is_empty());
            if nudge_turn {
                state.nudged = false;
                state.nudge_taken = true;
                return Some(Event::Nudge);
            }
            if let Some((peer, event, bytes)) = state.events.pop_front() {
                let held = &mut state.held[peer];
                held.0 -= 1;
                held.1 -= bytes;
                state.nudge_taken = false;
                self.gauges.events.dec();
                self.gauges.bytes.dec_by(bytes as u64);
                return Some(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .ready
                .wait_timeout(state, left)
                .expect("event queue lock")
                .0;
        }
    }
}

pub fn start(
    node: Arc<Node>,
    inbox: Arc<EventQueue>,
    record: SafetyRecord,
    safety: SafetyState,
    origin: Origin,
) -> Result<std::thread::JoinHandle<()>, String> {
    let params = &node.genesis.genesis.params;
    let config = Config {
        chain_id: node.genesis.chain_id().to_string(),
        validators: node.genesis.validators.clone(),
        block_interval_ms: params.block_interval_ms,
        view_timeout_ms: params.view_timeout_ms,
        block_txs_max: params.block_txs_max,
    };
    let replica = if origin.abstains() {
        Replica::new_fresh(config, node.key.clone(), safety)
    } else {
        Replica::new(config, node.key.clone(), safety)
    };
    if replica.is_abstaining() {
        node.metrics.abstaining.set(1);
        tracing::warn!(
            "abstaining: this validator has no record of the votes it may have signed, so it \
             signs nothing until it has committed past the heights its peers report"
        );
    }
    let ledger = NodeLedger::new(node.clone())?;
    std::thread::Builder::new()
        .name("consensus".into())
        .spawn(move || run(node, replica, ledger, inbox, record))
        .map_err(|e| e.to_string())
}

fn run(
    node: Arc<Node>,
    mut replica: Replica,
    mut ledger: NodeLedger,
    inbox: Arc<EventQueue>,
    record: SafetyRecord,
) {
    let mut next_tick = Instant::now();
    let mut poll = IdlePoll::new(node.genesis.validators.len(), node.me.get());
    loop {
        poll.maybe_ask(&node, &ledger);
        let timeout = next_tick.saturating_duration_since(Instant::now());
        let input = match inbox.recv_timeout(timeout) {
            Some(Event::Shutdown) => return,
            Some(Event::Message { peer, message }) => Some(Input::PeerMessage {
                peer,
                message: *message,
            }),
            Some(Event::SyncResponse { from, blocks }) => {
                Some(Input::SyncResponse { from, blocks })
            }
            Some(Event::Nudge) => Some(Input::Tick { now_ms: now_ms() }),
            None => None,
        };
        if let Some(input) = input {
            step(&node, &record, &mut replica, &mut ledger, input);
        }
        if Instant::now() >= next_tick {
            step(
                &node,
                &record,
                &mut replica,
                &mut ledger,
                Input::Tick { now_ms: now_ms() },
            );
            ledger.regossip_if_idle(now_ms(), replica.primary());
            next_tick = Instant::now() + TICK;
        }
    }
}

fn step(
    node: &Node,
    record: &SafetyRecord,
    replica: &mut Replica,
    ledger: &mut NodeLedger,
    input: Input,
) {
    let view_before = replica.view();
    let syncing_before = replica.is_syncing();
    let tip_before = ledger.tip().0;
    let sync_reply = matches!(input, Input::SyncResponse { .. });
    let abstaining_before = replica.is_abstaining();
    let actions = replica.handle(ledger, input);
    if let Some(error) = ledger.take_fatal() {
        // Nothing of this input may leave the node (it may assume the
        // block it could not store is committed).
        tracing::error!("{error}; stopping");
        std::process::exit(70);
    }
    let abstaining = replica.is_abstaining();
    record.set_abstaining(abstaining);
    if abstaining != abstaining_before {
        node.metrics.abstaining.set(abstaining as u64);
        if abstaining {
            tracing::warn!(
                event = "abstain_start",
                height = replica.height().0,
                "abstaining again at height {}",
                replica.height()
            );
        } else {
            tracing::info!(
                event = "abstain_end",
                height = replica.height().0,
                "stopped abstaining at height {}: committed past height {} its peers reported; \
                 voting again",
                replica.height(),
                replica.abstain_target().map_or(0, |h| h.0)
            );
        }
    }
    for action in actions {
        execute(node, record, action);
    }
    ledger.carry_out_effects(now_ms(), replica.primary());
    if replica.view() != view_before {
        node.metrics.view_changes.inc();
        tracing::info!(
            event = "view_change",
            from_view = view_before.0,
            to_view = replica.view().0,
            height = ledger.tip().0.next().0,
            primary = replica.primary().0,
            "view {} -> {} at height {} (primary now validator {})",
            view_before.0,
            replica.view().0,
            ledger.tip().0.next(),
            replica.primary().0
        );
    }
    observe_sync(&node.metrics, replica, ledger);
    let (tip, syncing) = (ledger.tip().0, replica.is_syncing());
    // Caught up in one step from a reply to the idle poll (a quiet chain
    // shows no votes above our height, so the replica never knew it was
    // behind): still a catch-up, counted and logged.
    let at_once = sync_reply && tip > tip_before && !syncing_before && !syncing;
    if (syncing && !syncing_before) || at_once {
        node.metrics.syncs.inc();
        let from = tip_before.0;
        tracing::info!(
            event = "sync_start",
            height = from,
            "catching up from height {from}"
        );
    }
    if (!syncing && syncing_before) || at_once {
        tracing::info!(
            event = "sync_end",
            height = tip.0,
            "caught up at height {}",
            tip.0
        );
    }
    let status = ConsensusStatus {
        view: replica.view(),
        leader: replica.primary(),
        syncing: replica.is_syncing(),
    };
    node.metrics.view.set(status.view.0);
    *node.status.write().expect("status lock") = status;
}

/// Sync progress as metrics: whether catching up, and to which height (the
/// local tip when not behind, so the gap reads as zero).
fn observe_sync(metrics: &Metrics, replica: &Replica, ledger: &NodeLedger) {
    let tip = ledger.tip().0;
    let target = replica.sync_target().map_or(tip, |target| target.max(tip));
    metrics.syncing.set(replica.is_syncing() as u64);
    metrics.sync_target_height.set(target.0);
}

fn execute(node: &Node, record: &SafetyRecord, action: Action) {
    match action {
        Action::PersistSafety(state) => {
            let started = Instant::now();
            let written = record.persist(state);
            let metrics = &node.metrics;
            metrics.safety_writes.inc();
            metrics
                .safety_write_seconds
                .inc_by(started.elapsed().as_secs_f64());
            if let Ok(bytes) = written {
                metrics.safety_write_bytes.inc_by(bytes);
            }
            if let Err(e) = written {
                // Voting without a durable record could equivocate after a
                // restart: stop instead.
                tracing::error!("cannot persist the safety state: {e}; stopping");
                std::process::exit(70);
            }
        }
        Action::Broadcast(message) => node.network.broadcast(&Wire::Consensus(Box::new(message))),
        Action::Send { to, message } => node.network.send(to, &Wire::Consensus(Box::new(message))),
        Action::RequestSync { to, from_height } => node.network.send(
            to,
            &Wire::SyncRequest {
                from_height,
                max_blocks: SYNC_BLOCKS_MAX,
            },
        ),
        Action::Committed { height, hash } => {
            tracing::info!(
                event = "commit",
                height = height.0,
                hash = %hash,
                "committed block {height} {hash}"
            );
        }
        Action::Punish { peer, offence } => node.network.punish(peer, offence),
    }
}

/// The idle sync poll: rotates through the peers, at most one request per
/// [`IDLE_SYNC_POLL`], only while the tip stands still.
struct IdlePoll {
    peers: Vec<usize>,
    turn: usize,
    last_tip: Height,
    since: Instant,
}

impl IdlePoll {
    fn new(n: usize, me: usize) -> IdlePoll {
        IdlePoll {
            peers: (0..n).filter(|&i| i != me).collect(),
            turn: 0,
            last_tip: Height(0),
            since: Instant::now(),
        }
    }

    fn maybe_ask(&mut self, node: &Node, ledger: &NodeLedger) {
        use cairn_consensus::Ledger;
        let (tip, _) = ledger.tip();
        if tip != self.last_tip {
            self.last_tip = tip;
            self.since = Instant::now();
            return;
        }
        if self.peers.is_empty() || self.since.elapsed() < IDLE_SYNC_POLL {
            return;
        }
        self.since = Instant::now();
        self.turn = (self.turn + 1) % self.peers.len();
        let peer = ValidatorIndex(self.peers[self.turn] as u16);
        node.network.send(
            peer,
            &Wire::SyncRequest {
                from_height: tip.next(),
                max_blocks: SYNC_BLOCKS_MAX,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Event {
        Event::Nudge
    }

    /// One peer flooding fills only its own share, in frames and in bytes;
    /// another peer's frame still gets in; nudges coalesce and take at
    /// most every other turn (issue 10: one queue of 16,384 events shared
    /// by every peer and the API).
    #[test]
    fn the_event_queue_is_bounded_per_peer_and_nudges_coalesce() {
        let frame = 8 * 1024 * 1024;
        let gauges = QueueGauges::default();
        let (events, bytes) = (gauges.events.clone(), gauges.bytes.clone());
        let queue = EventQueue::new(3, 100, 4 * frame, gauges);
        let flooded = (0..10)
            .filter(|_| queue.push(ValidatorIndex(1), message(), frame))
            .count();
        assert_eq!(flooded, 4, "bytes bound the flooding peer");
        assert_eq!(queue.held_by(ValidatorIndex(1)), (4, 4 * frame));
        assert_eq!((events.get(), bytes.get()), (4, 4 * frame as u64));
        let small = (0..1_000)
            .filter(|_| queue.push(ValidatorIndex(2), message(), 10))
            .count();
        assert_eq!(small, 100, "frames bound it too");
        assert!(!queue.push(ValidatorIndex(9), message(), 1), "no such peer");
        assert_eq!(events.get(), 104, "the depth gauge follows the queue");
        for _ in 0..10_000 {
            queue.nudge();
        }
        let mut nudges = 0;
        let mut taken = 0;
        while let Some(event) = queue.recv_timeout(Duration::ZERO) {
            taken += 1;
            if matches!(event, Event::Nudge) {
                nudges += 1;
            }
        }
        // The test's peer events are nudges too: 104 of them, plus one
        // coalesced API nudge.
        assert_eq!((taken, nudges), (105, 105));
        assert_eq!(queue.held_by(ValidatorIndex(1)), (0, 0));
        assert_eq!((events.get(), bytes.get()), (0, 0), "drained");
        assert!(
            queue.push(ValidatorIndex(1), message(), frame),
            "room again"
        );
        queue.shutdown();
        assert!(matches!(
            queue.recv_timeout(Duration::ZERO),
            Some(Event::Shutdown)
        ));
    }
}
