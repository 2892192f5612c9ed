//! The simulated network: seeded delay, reordering (independent delays),
//! duplication, loss and partitions; packets delivered in time order.
//!
//! A partition cuts a link both ways for `start_ms..end_ms`: a packet sent
//! across it meanwhile is dropped at once, and a packet already in flight
//! across it when it starts (sent before `start_ms`, due at or after it) is
//! dropped when it comes due, as a cut cable loses what was on the wire.
//! Dropping never draws from the seeded generator, so runs replay exactly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use cairn_consensus::SignedMessage;
use cairn_core::{Block, Certificate, Height};
use rand::rngs::StdRng;
use rand::Rng;

/// What travels between simulated nodes.
#[derive(Clone, Debug)]
pub enum Payload {
    Message(Box<SignedMessage>),
    SyncRequest { from_height: Height },
    SyncResponse(Vec<(Block, Certificate)>),
}

#[derive(Clone, Debug)]
pub struct Packet {
    pub from: usize,
    pub to: usize,
    pub payload: Payload,
}

/// A partition: nodes talk only within their group while it lasts; what was
/// in flight between groups when it starts is lost.
#[derive(Clone, Debug)]
pub struct Partition {
    pub start_ms: u64,
    pub end_ms: u64,
    pub groups: Vec<u8>,
}

pub struct Network {
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    /// Queued packets by sequence number, with the time each was sent.
    packets: std::collections::BTreeMap<u64, (u64, Packet)>,
    sequence: u64,
    pub loss: f64,
    pub duplicate: f64,
    pub delay_max_ms: u64,
    pub partitions: Vec<Partition>,
    /// Recent messages, for Byzantine replays.
    pub recent: Vec<SignedMessage>,
    pub sent: u64,
    /// Packets that were in flight across a partition when it started.
    pub dropped_in_flight: u64,
}

const RECENT_MAX: usize = 256;

impl Network {
    pub fn new(loss: f64, duplicate: f64, delay_max_ms: u64, partitions: Vec<Partition>) -> Self {
        Network {
            queue: BinaryHeap::new(),
            packets: Default::default(),
            sequence: 0,
            loss,
            duplicate,
            delay_max_ms,
            partitions,
            recent: vec![],
            sent: 0,
            dropped_in_flight: 0,
        }
    }

    fn cut(&self, from: usize, to: usize, now_ms: u64) -> bool {
        self.partitions
            .iter()
            .any(|p| (p.start_ms..p.end_ms).contains(&now_ms) && p.groups[from] != p.groups[to])
    }

    /// Whether a partition between `from` and `to` started while a packet
    /// sent at `sent_ms` and due at `due_ms` was on the wire.
    fn cut_in_flight(&self, from: usize, to: usize, sent_ms: u64, due_ms: u64) -> bool {
        self.partitions.iter().any(|p| {
            p.groups[from] != p.groups[to]
                && p.start_ms > sent_ms
                && p.start_ms <= due_ms
                && p.end_ms > p.start_ms
        })
    }

    /// Ends every partition at `now_ms` (the heal), keeping them listed so
    /// a packet sent before one started and due after the heal is still
    /// judged by it.
    pub fn end_partitions(&mut self, now_ms: u64) {
        for p in &mut self.partitions {
            p.end_ms = p.end_ms.min(now_ms);
            p.start_ms = p.start_ms.min(p.end_ms);
        }
    }

    pub fn send(&mut self, rng: &mut StdRng, now_ms: u64, packet: Packet) {
        self.send_after(rng, now_ms, packet, 0);
    }

    /// Sends a packet that leaves `delay_ms` after `now_ms` (the partition
    /// and loss verdicts are those of `now_ms`).
    pub fn send_after(&mut self, rng: &mut StdRng, now_ms: u64, packet: Packet, delay_ms: u64) {
        if packet.from == packet.to || self.cut(packet.from, packet.to, now_ms) {
            return;
        }
        if self.loss > 0.0 && rng.gen_bool(self.loss) {
            return;
        }
        if let Payload::Message(m) = &packet.payload {
            if self.recent.len() >= RECENT_MAX {
                let i = rng.gen_range(0..RECENT_MAX);
                self.recent[i] = (**m).clone();
            } else {
                self.recent.push((**m).clone());
            }
        }
        let copies = if self.duplicate > 0.0 && rng.gen_bool(self.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = now_ms + delay_ms + rng.gen_range(1..=self.delay_max_ms);
            self.sequence += 1;
            self.sent += 1;
            self.queue.push(Reverse((at, self.sequence)));
            self.packets.insert(self.sequence, (now_ms, packet.clone()));
        }
    }

    pub fn next_time(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// The next packet due and its time; `None` in place of the packet
    /// when a partition that started while it was in flight drops it.
    pub fn pop(&mut self) -> Option<(u64, Option<Packet>)> {
        let Reverse((at, sequence)) = self.queue.pop()?;
        let (sent_ms, packet) = self.packets.remove(&sequence).expect("queued packet");
        if self.cut_in_flight(packet.from, packet.to, sent_ms, at) {
            self.dropped_in_flight += 1;
            return Some((at, None));
        }
        Some((at, Some(packet)))
    }
}
