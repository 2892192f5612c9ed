//! The simulated network: seeded delay, reordering (independent delays),
//! duplication, loss and partitions; packets delivered in time order.

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

/// A partition: nodes talk only within their group while it lasts.
#[derive(Clone, Debug)]
pub struct Partition {
    pub start_ms: u64,
    pub end_ms: u64,
    pub groups: Vec<u8>,
}

pub struct Network {
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    packets: std::collections::BTreeMap<u64, Packet>,
    sequence: u64,
    pub loss: f64,
    pub duplicate: f64,
    pub delay_max_ms: u64,
    pub partitions: Vec<Partition>,
    /// Recent messages, for Byzantine replays.
    pub recent: Vec<SignedMessage>,
    pub sent: u64,
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
        }
    }

    fn cut(&self, from: usize, to: usize, now_ms: u64) -> bool {
        self.partitions
            .iter()
            .any(|p| (p.start_ms..p.end_ms).contains(&now_ms) && p.groups[from] != p.groups[to])
    }

    pub fn send(&mut self, rng: &mut StdRng, now_ms: u64, packet: Packet) {
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
            let at = now_ms + rng.gen_range(1..=self.delay_max_ms);
            self.sequence += 1;
            self.sent += 1;
            self.queue.push(Reverse((at, self.sequence)));
            self.packets.insert(self.sequence, packet.clone());
        }
    }

    pub fn next_time(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    pub fn pop(&mut self) -> Option<(u64, Packet)> {
        let Reverse((at, sequence)) = self.queue.pop()?;
        let packet = self.packets.remove(&sequence).expect("queued packet");
        Some((at, packet))
    }
}
