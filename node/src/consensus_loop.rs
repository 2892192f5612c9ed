//! The consensus thread: owns the replica and the ledger, feeds them events
//! and ticks, and carries out their actions in order.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::safety_record::SafetyRecord;
use cairn_consensus::{Action, Config, Input, Ledger, Replica, SafetyState};
use cairn_core::{Height, ValidatorIndex};

use crate::ledger::{now_ms, NodeLedger};
use crate::p2p::{Wire, SYNC_BLOCKS_MAX};
use crate::{ConsensusStatus, Event, Node};

/// How often the replica is ticked.
const TICK: Duration = Duration::from_millis(10);
/// Without a commit for this long, ask the next peer whether it has blocks
/// we lack. An idle network exchanges no consensus messages, so this poll is
/// how a validator that restarted behind (or with a wiped data folder)
/// learns that it is behind; the reply is empty when it is not.
const IDLE_SYNC_POLL: Duration = Duration::from_millis(1_000);

pub fn start(
    node: Arc<Node>,
    inbox: Receiver<Event>,
    record: SafetyRecord,
    safety: SafetyState,
) -> Result<std::thread::JoinHandle<()>, String> {
    let params = &node.genesis.genesis.params;
    let config = Config {
        chain_id: node.genesis.chain_id().to_string(),
        validators: node.genesis.validators.clone(),
        block_interval_ms: params.block_interval_ms,
        view_timeout_ms: params.view_timeout_ms,
        block_txs_max: params.block_txs_max,
    };
    let replica = Replica::new(config, node.key.clone(), safety);
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
    inbox: Receiver<Event>,
    record: SafetyRecord,
) {
    let mut next_tick = Instant::now();
    let mut poll = IdlePoll::new(node.genesis.validators.len(), node.me.get());
    loop {
        poll.maybe_ask(&node, &ledger);
        let timeout = next_tick.saturating_duration_since(Instant::now());
        let input = match inbox.recv_timeout(timeout) {
            Ok(Event::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Event::Message(message)) => Some(Input::Message(*message)),
            Ok(Event::SyncResponse { from, blocks }) => Some(Input::SyncResponse { from, blocks }),
            Ok(Event::Nudge) => Some(Input::Tick { now_ms: now_ms() }),
            Err(RecvTimeoutError::Timeout) => None,
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
    let actions = replica.handle(ledger, input);
    if let Some(error) = ledger.take_fatal() {
        // Nothing of this input may leave the node (it may assume the
        // block it could not store is committed).
        tracing::error!("{error}; stopping");
        std::process::exit(70);
    }
    for action in actions {
        execute(node, record, action);
    }
    ledger.carry_out_effects(now_ms());
    if replica.view() != view_before {
        node.metrics.view_changes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "view {} -> {} at height {} (primary now validator {})",
            view_before.0,
            replica.view().0,
            ledger.tip().0.next(),
            replica.primary().0
        );
    }
    let status = ConsensusStatus {
        view: replica.view(),
        leader: replica.primary(),
        syncing: replica.is_syncing(),
    };
    node.metrics.view.store(status.view.0, Ordering::Relaxed);
    *node.status.write().expect("status lock") = status;
}

fn execute(node: &Node, record: &SafetyRecord, action: Action) {
    match action {
        Action::PersistSafety(state) => {
            let started = Instant::now();
            let written = record.persist(state);
            let metrics = &node.metrics;
            metrics.safety_writes.fetch_add(1, Ordering::Relaxed);
            metrics
                .safety_write_us
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            if let Ok(bytes) = written {
                metrics
                    .safety_write_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
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
            tracing::info!("committed block {height} {hash}");
        }
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
