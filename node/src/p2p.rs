//! Validator-to-validator transport: TCP, authenticated and encrypted with
//! the Noise protocol (`snow`, pattern XX), framed messages in the one codec.
//!
//! Handshake: Noise XX with a fresh X25519 static key per process. The second
//! and third handshake messages carry, encrypted, a [`Hello`]: the sender's
//! validator key and its ed25519 signature over the genesis hash and the
//! sender's Noise static key. A peer is accepted only if that key is in the
//! genesis validator set, is not ours, and the signature binds it to the
//! Noise key the handshake authenticated. Nothing else is read before that.
//!
//! Framing: a logical frame is `u32 length || codec(Wire)`, at most
//! [`FRAME_BYTES_MAX`]; the byte stream of frames is cut into Noise messages
//! of at most 65535 bytes, each sent as `u16 length || ciphertext`. A frame
//! that is too large, does not decrypt or does not decode closes the
//! connection.
//!
//! Topology: every pair of validators shares one connection, dialed by the
//! lower index and accepted by the higher, redialed with backoff. Each peer
//! has one bounded outbound queue; a full queue drops the frame (consensus
//! tolerates loss; catch-up repairs it).
//!
//! Gossip flow control: a peer is sent at most [`GOSSIP_WINDOW_FRAMES`]
//! gossip frames ([`GOSSIP_WINDOW_TXS`] transactions) it has not yet
//! credited back ([`Wire::GossipCredit`], sent once its admission is done
//! with a frame, admitted or not). Beyond the window, gossip waits in the
//! sender's queue, where the backlog turns the sender's clients away
//! ([`Network::gossip_held_back`]) instead of being dropped in the
//! receiver's inbox, which left the receiver behind a nonce gap of each
//! sender in the frame (at twice the peak, the primary's pool filled with
//! transactions parked behind such gaps, issue 8).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use cairn_consensus::SignedMessage;
use cairn_core::{
    codec, Block, Certificate, Hash, Height, PublicKey, Signature, SignedTransaction,
    ValidatorIndex,
};

use crate::{Event, Node};

/// Domain tag of the handshake identity signature.
pub const P2P_DOMAIN: &[u8] = b"cairn/p2p/v1\0";
const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
const NOISE_MESSAGE_BYTES_MAX: usize = 65_535;
const NOISE_TAG_BYTES: usize = 16;
const CHUNK_PLAINTEXT_BYTES_MAX: usize = NOISE_MESSAGE_BYTES_MAX - NOISE_TAG_BYTES;
/// Largest logical frame (a sync response or a full block).
pub const FRAME_BYTES_MAX: usize = cairn_core::limits::P2P_FRAME_BYTES_MAX;
/// Frames queued for one peer before new ones are dropped.
pub const PEER_QUEUE_FRAMES_MAX: usize = 8_192;
/// Bytes queued for one peer before new frames are dropped: the frame count
/// alone would let a down peer's queue of large gossip frames grow to
/// gigabytes.
pub const PEER_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes of transaction gossip waiting for one peer (its own lane).
pub const GOSSIP_QUEUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Gossip frames one peer may have sent and not yet had credited back
/// (the window of gossip flow control, with [`GOSSIP_WINDOW_TXS`]). Large
/// enough that small frames (an open-loop client's) are held back by the
/// transactions' bound, not by this: with 4, frames of 50 transactions
/// left a peer 200 in flight, and the network committed 4,200 tx/s
/// offered 4,467, half its closed-loop peak.
pub const GOSSIP_WINDOW_FRAMES: usize = 64;
/// Transactions one peer may have been sent in gossip and not yet had
/// credited back; a frame goes out while fewer are outstanding (so one
/// frame larger than this still goes, alone).
pub const GOSSIP_WINDOW_TXS: usize = 4_096;
/// Bytes of gossip waiting (unsent, for want of window) for one peer above
/// which that peer counts as held back: about 3,000 transfers, a fraction of a
/// second of a validator's admission, well under a view timeout.
pub const GOSSIP_HELD_BACK_BYTES: usize = 512 * 1024;
/// If a peer credits nothing for this long while its window is full, the
/// window is opened again (a credit lost with a full consensus queue must not
/// stop gossip to that peer for good).
pub const GOSSIP_CREDIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Gossip frames to one peer whose enqueue times are remembered until the
/// peer credits them (what its queue and window can hold together; older
/// ones beyond it count as received).
const GOSSIP_UNCONFIRMED_MAX: usize = PEER_QUEUE_FRAMES_MAX + GOSSIP_WINDOW_FRAMES;
/// Credited gossip frames to one peer remembered with their times: some
/// tens of seconds of gossip under load.
const GOSSIP_CONFIRMED_MAX: usize = 4_096;
/// Most transactions in one gossip frame.
pub const GOSSIP_TXS_MAX: usize = cairn_core::limits::HTTP_BATCH_TXS_MAX;
/// Most gossiped transactions admitted in one go: frames that wait in the
/// inbox are joined up to this many (the last one taken may pass it by
/// up to one frame).
pub const GOSSIP_ADMIT_TXS: usize = 1_024;
/// Most blocks in one sync response: as many as the replica applies from
/// one reply.
pub const SYNC_BLOCKS_MAX: u32 = cairn_consensus::limits::SYNC_BLOCKS_MAX as u32;
/// Most bytes of blocks in one sync response.
pub const SYNC_BYTES_MAX: usize = 16 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A punished peer (see [`Network::punish`]) is first refused this long;
/// each repeat offence doubles it, up to [`PUNISH_BACKOFF_MAX`].
pub const PUNISH_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest a punished peer is refused.
pub const PUNISH_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Each this long without an offence, once a refusal is over, takes one
/// doubling off the next refusal.
pub const PUNISH_DECAY: Duration = Duration::from_secs(60);

const _: () = assert!(PUNISH_BACKOFF_MIN.as_millis() <= PUNISH_BACKOFF_MAX.as_millis());
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(5);

const _: () = assert!(SYNC_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= cairn_core::limits::CODEC_BYTES_MAX);

/// Everything validators say to each other.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Wire {
    Consensus(Box<SignedMessage>),
    Transactions(Vec<SignedTransaction>),
    SyncRequest {
        from_height: Height,
        max_blocks: u32,
    },
    SyncResponse(Vec<(Block, Certificate)>),
    /// The receiver's admission is done with one gossip frame of `txs`
    /// transactions from us (admitted, refused or dropped): room again in
    /// our window to it.
    GossipCredit {
        txs: u32,
    },
}

/// The identity proof inside the handshake.
#[derive(Serialize, Deserialize)]
struct Hello {
    genesis_hash: Hash,
    validator: PublicKey,
    signature: Signature,
}

fn hello_message(genesis_hash: &Hash, noise_static: &[u8]) -> Vec<u8> {
    let mut bytes = genesis_hash.0.to_vec();
    bytes.extend_from_slice(noise_static);
    bytes
}

type Frame = Arc<Vec<u8>>;
/// A frame in a peer's queue, with the transactions it gossips (0 for the
/// consensus lane).
type Queued = (Frame, u32);

/// How a peer stands after its offences: refused until a time, for a
/// backoff that doubles per offence (from [`PUNISH_BACKOFF_MIN`] to
/// [`PUNISH_BACKOFF_MAX`]) and decays by one doubling per
/// [`PUNISH_DECAY`] of good behaviour after the refusal ended.
#[derive(Debug, Default)]
pub struct Penalty {
    /// Doublings of the next refusal.
    level: u32,
    /// The end of the current or last refusal.
    until: Option<Instant>,
}

impl Penalty {
    /// Records an offence at `now` and returns how long the peer is
    /// refused; `None` while it is refused already (the offence is in a
    /// frame it sent before it was cut off, and does not count again).
    pub fn punish(&mut self, now: Instant) -> Option<Duration> {
        if self.refused_for(now).is_some() {
            return None;
        }
        if let Some(until) = self.until {
            let good = now.saturating_duration_since(until).as_millis();
            let decay = (good / PUNISH_DECAY.as_millis()).min(u32::MAX as u128) as u32;
            self.level = self.level.saturating_sub(decay);
        }
        let backoff = PUNISH_BACKOFF_MIN
            .saturating_mul(1 << self.level.min(16))
            .min(PUNISH_BACKOFF_MAX);
        if backoff < PUNISH_BACKOFF_MAX {
            self.level += 1;
        }
        self.until = Some(now + backoff);
        Some(backoff)
    }

    /// How much longer the peer is refused at `now`, if at all.
    pub fn refused_for(&self, now: Instant) -> Option<Duration> {
        self.until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }
}

/// Who we are on the p2p network and who we accept: our validator key, the
/// chain's genesis hash and the genesis validator set.
pub struct Identity {
    pub key: cairn_core::Keypair,
    pub genesis_hash: Hash,
    pub validators: Vec<PublicKey>,
}

impl Identity {
    fn of(node: &Node) -> Identity {
        Identity {
            key: node.key.clone(),
            genesis_hash: node.genesis.hash,
            validators: node.genesis.validators.clone(),
        }
    }
}

/// An authenticated, encrypted connection to validator `peer`.
struct Connection {
    peer: usize,
    stream: TcpStream,
    transport: snow::StatelessTransportState,
}

/// Which of a peer's two queues a frame waits in. Consensus frames go
/// first: under load, transaction gossip must never hold up a vote or a
/// proposal (it waits, and is dropped first when its smaller queue fills).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Consensus = 0,
    Gossip = 1,
}

/// Bytes each lane of a peer's queue may hold.
const LANE_BYTES_MAX: [usize; 2] = [PEER_QUEUE_BYTES_MAX, GOSSIP_QUEUE_BYTES_MAX];

/// The sending side of the p2p layer: two bounded queues per peer
/// (consensus, gossip), and the inbox of gossiped transactions waiting for
/// admission.
pub struct Network {
    me: usize,
    queues: Vec<Option<[mpsc::Sender<Queued>; 2]>>,
    /// Bytes waiting in each peer's queues (taken off when written).
    queued_bytes: Vec<[std::sync::atomic::AtomicUsize; 2]>,
    /// Each peer's gossip window: what it was sent and has not credited.
    windows: Vec<std::sync::Mutex<GossipWindow>>,
    /// Wakes a peer's connection task when that peer credits gossip.
    credited: Vec<tokio::sync::Notify>,
    /// Gossiped transactions from peers (and who sent them), admitted by
    /// one task off the read loops (so checking their signatures never
    /// delays a consensus frame read after them). Honest peers keep to
    /// their windows, which together fill half of it; beyond that a frame
    /// is dropped (and credited).
    gossip_inbox: mpsc::Sender<GossipFrame>,
    gossip_inbox_frames: usize,
    /// Transactions in the inbox, at most [`gossip_inbox_txs`].
    gossip_inbox_txs: std::sync::atomic::AtomicUsize,
    validators: usize,
    metrics: Arc<crate::metrics::Metrics>,
    /// Each peer's standing after its offences.
    penalties: Vec<std::sync::Mutex<Penalty>>,
    /// Wakes a peer's connection task to close the connection of a peer
    /// just punished.
    cut: Vec<tokio::sync::Notify>,
}

/// The receiving ends of the per-peer queues and of the gossip inbox,
/// consumed by [`start`].
pub struct Queues(
    Vec<Option<[mpsc::Receiver<Queued>; 2]>>,
    mpsc::Receiver<GossipFrame>,
);

/// Whether our gossip waits for the other validators' windows (see
/// [`Network::gossip_held_back`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldBack {
    Not,
    /// f + 1 peers are behind: the network is at its limit.
    ByPeers,
    /// The primary alone is behind; `draining` if it credited gossip
    /// lately (slow, not silent).
    ByPrimary {
        draining: bool,
    },
}

/// Gossip sent to one peer on the current connection and not yet
/// credited back.
#[derive(Debug, Default)]
struct GossipWindow {
    frames: usize,
    txs: usize,
    /// When the window last moved (a frame sent or credited).
    moved: Option<Instant>,
    /// When the peer last credited a frame (kept across connections).
    credited: Option<Instant>,
    /// When each frame queued or sent to the peer and not yet credited was
    /// queued (ms, the ledger's clock), oldest first: frames are sent in
    /// order and credited in order, so the front is the oldest one the
    /// peer may not have yet (see [`Network::gossip_unconfirmed_since_ms`]).
    unconfirmed: std::collections::VecDeque<u64>,
    /// The last [`GOSSIP_CONFIRMED_MAX`] frames the peer credited: when
    /// each was queued and when its credit came (ms), oldest first (see
    /// [`Network::gossip_delivered_ms`]).
    confirmed: std::collections::VecDeque<(u64, u64)>,
}

impl GossipWindow {
    /// Whether one more frame may go now. A window that stayed full for
    /// [`GOSSIP_CREDIT_TIMEOUT`] is opened again: its credits were lost.
    fn open(&mut self, now: Instant) -> bool {
        if self.frames < GOSSIP_WINDOW_FRAMES && self.txs < GOSSIP_WINDOW_TXS {
            return true;
        }
        if self
            .moved
            .is_some_and(|at| now.duration_since(at) >= GOSSIP_CREDIT_TIMEOUT)
        {
            self.reset();
            return true;
        }
        false
    }

    /// The window starts empty; the frames sent on the lost connection
    /// will never be credited, so they leave `unconfirmed` too (those still
    /// queued stay: the next connection sends them).
    fn reset(&mut self) {
        let lost = self.frames.min(self.unconfirmed.len());
        self.unconfirmed.drain(..lost);
        (self.frames, self.txs, self.moved) = (0, 0, None);
    }

    /// When the oldest frame not credited and not given up on (queued
    /// within [`GOSSIP_CREDIT_TIMEOUT`] of `now_ms`) was queued.
    fn unconfirmed_since(&self, now_ms: u64) -> Option<u64> {
        let given_up = now_ms.saturating_sub(GOSSIP_CREDIT_TIMEOUT.as_millis() as u64);
        self.unconfirmed
            .iter()
            .find(|&&queued_ms| queued_ms > given_up)
            .copied()
    }

    /// When the peer had credited every frame queued at or before
    /// `queued_by_ms`, as of `now_ms`; `None` while one of them is in
    /// flight. A frame uncredited for [`GOSSIP_CREDIT_TIMEOUT`] counts as
    /// taken then; frames older than those remembered, when queued.
    fn delivered_ms(&self, queued_by_ms: u64, now_ms: u64) -> Option<u64> {
        let timeout_ms = GOSSIP_CREDIT_TIMEOUT.as_millis() as u64;
        let mut given_up = None;
        for &queued in self.unconfirmed.iter().take_while(|&&q| q <= queued_by_ms) {
            if queued + timeout_ms > now_ms {
                return None;
            }
            given_up = Some(queued + timeout_ms);
        }
        let last = self
            .confirmed
            .partition_point(|&(queued, _)| queued <= queued_by_ms);
        let credited = last
            .checked_sub(1)
            .and_then(|i| self.confirmed.get(i))
            .map(|&(_, credited)| credited);
        Some(given_up.max(credited).unwrap_or(queued_by_ms))
    }

    /// A gossip frame was queued for the peer at `now_ms`.
    fn queued(&mut self, now_ms: u64) {
        if self.unconfirmed.len() >= GOSSIP_UNCONFIRMED_MAX {
            self.unconfirmed.pop_front();
        }
        self.unconfirmed.push_back(now_ms);
    }

    fn sent(&mut self, txs: usize, now: Instant) {
        self.frames += 1;
        self.txs += txs;
        self.moved = Some(now);
    }

    /// Credits beyond what was sent (a lying peer, or frames of an older
    /// connection) only empty the window.
    fn credit(&mut self, txs: usize, now: Instant, now_ms: u64) {
        if let Some(queued) = self.unconfirmed.pop_front() {
            if self.confirmed.len() >= GOSSIP_CONFIRMED_MAX {
                self.confirmed.pop_front();
            }
            self.confirmed.push_back((queued, now_ms));
        }
        self.frames = self.frames.saturating_sub(1);
        self.txs = self.txs.saturating_sub(txs);
        self.moved = Some(now);
        self.credited = Some(now);
    }
}

/// Gossip frames the inbox holds: twice what the other validators' windows
/// allow together (at least 16).
pub fn gossip_inbox_frames(validators: usize) -> usize {
    (2 * validators.saturating_sub(1) * GOSSIP_WINDOW_FRAMES).max(16)
}

/// Transactions the inbox holds: twice what the other validators' windows
/// allow together (a window's worth, plus the one frame that may go over
/// it), whatever a faulty peer sends.
pub fn gossip_inbox_txs(validators: usize) -> usize {
    2 * validators.saturating_sub(1).max(1) * (GOSSIP_WINDOW_TXS + GOSSIP_TXS_MAX)
}

impl Network {
    pub fn new(
        validators: usize,
        me: usize,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> (Network, Queues) {
        let mut queues = Vec::new();
        let mut receivers = Vec::new();
        for j in 0..validators {
            if j == me {
                queues.push(None);
                receivers.push(None);
            } else {
                let (consensus_tx, consensus_rx) = mpsc::channel::<Queued>(PEER_QUEUE_FRAMES_MAX);
                let (gossip_tx, gossip_rx) = mpsc::channel::<Queued>(PEER_QUEUE_FRAMES_MAX);
                queues.push(Some([consensus_tx, gossip_tx]));
                receivers.push(Some([consensus_rx, gossip_rx]));
            }
        }
        let gossip_inbox_frames = gossip_inbox_frames(validators);
        let (gossip_inbox, gossip_rx) = mpsc::channel(gossip_inbox_frames);
        (
            Network {
                me,
                queued_bytes: (0..validators).map(|_| Default::default()).collect(),
                windows: (0..validators).map(|_| Default::default()).collect(),
                credited: (0..validators).map(|_| Default::default()).collect(),
                queues,
                gossip_inbox,
                gossip_inbox_frames,
                gossip_inbox_txs: Default::default(),
                validators,
                metrics,
                penalties: (0..validators).map(|_| Default::default()).collect(),
                cut: (0..validators).map(|_| Default::default()).collect(),
            },
            Queues(receivers, gossip_rx),
        )
    }

    /// Queues `frame` (gossiping `txs` transactions) for `peer`, or drops
    /// it if that lane is full.
    fn enqueue(&self, peer: usize, frame: &Frame, txs: u32, lane: Lane) {
        let Some(Some(queues)) = self.queues.get(peer) else {
            return;
        };
        let queued = &self.queued_bytes[peer][lane as usize];
        let fits = queued.load(Ordering::Relaxed) + frame.len() <= LANE_BYTES_MAX[lane as usize];
        if fits && queues[lane as usize].try_send((frame.clone(), txs)).is_ok() {
            queued.fetch_add(frame.len(), Ordering::Relaxed);
            if lane == Lane::Gossip {
                self.windows[peer]
                    .lock()
                    .expect("window lock")
                    .queued(crate::ledger::now_ms());
            }
        } else {
            self.metrics.p2p_frames_dropped.inc();
        }
    }

    /// A frame for `peer` left its queue.
    fn dequeued(&self, peer: usize, frame: &Frame, lane: Lane) {
        self.queued_bytes[peer][lane as usize].fetch_sub(frame.len(), Ordering::Relaxed);
    }

    pub fn send(&self, peer: ValidatorIndex, wire: &Wire) {
        if peer.get() != self.me {
            self.enqueue(
                peer.get(),
                &Arc::new(codec::encode(wire)),
                0,
                Lane::Consensus,
            );
        }
    }

    pub fn broadcast(&self, wire: &Wire) {
        self.broadcast_on(wire, Lane::Consensus);
    }

    fn broadcast_on(&self, wire: &Wire, lane: Lane) {
        if self.queues.len() <= 1 {
            return;
        }
        let txs = match wire {
            Wire::Transactions(txs) => txs.len() as u32,
            _ => 0,
        };
        let frame = Arc::new(codec::encode(wire));
        for peer in 0..self.queues.len() {
            self.enqueue(peer, &frame, txs, lane);
        }
    }

    pub fn gossip_transactions(&self, txs: Vec<SignedTransaction>) {
        for chunk in txs.chunks(GOSSIP_TXS_MAX) {
            self.broadcast_on(&Wire::Transactions(chunk.to_vec()), Lane::Gossip);
        }
    }

    /// Gossip frames received and not yet admitted: the node's own measure
    /// of being behind.
    pub fn gossip_backlog(&self) -> usize {
        self.gossip_inbox.max_capacity() - self.gossip_inbox.capacity()
    }

    /// Whether this node is behind on its peers' gossip: its inbox holds
    /// as many frames, or transactions, as their windows together allow.
    pub fn gossip_inbox_busy(&self) -> bool {
        self.gossip_backlog() >= self.gossip_inbox_frames / 2
            || self.gossip_inbox_txs.load(Ordering::Relaxed)
                >= self.validators.saturating_sub(1).max(1) * GOSSIP_WINDOW_TXS
    }

    /// The admission thread took `txs` transactions out of the inbox.
    fn gossip_taken(&self, txs: usize) {
        self.gossip_inbox_txs.fetch_sub(txs, Ordering::Relaxed);
    }

    /// Whether our gossip to the other validators is held back by their
    /// windows, so that new clients should wait: `quorum_gap` (f + 1)
    /// peers have not taken what we sent them ([`GOSSIP_HELD_BACK_BYTES`]
    /// wait for each), so at least one honest validator is behind; or the
    /// primary (`primary`) has not. Fewer than f + 1 others may be faulty
    /// peers that credit nothing; a faulty primary that does so gets voted
    /// out, since what we admitted before waits ready in our pool (see
    /// [`HeldBack::ByPrimary`]).
    pub fn gossip_held_back(
        &self,
        primary: ValidatorIndex,
        quorum_gap: usize,
        credited_within: Duration,
    ) -> HeldBack {
        let held = |peer: usize| {
            self.queues.get(peer).is_some_and(Option::is_some)
                && self.queued_bytes[peer][Lane::Gossip as usize].load(Ordering::Relaxed)
                    > GOSSIP_HELD_BACK_BYTES
        };
        if (0..self.queues.len()).filter(|&peer| held(peer)).count() >= quorum_gap.max(1) {
            return HeldBack::ByPeers;
        }
        if primary.get() != self.me && held(primary.get()) {
            let draining = self.windows[primary.get()]
                .lock()
                .expect("window lock")
                .credited
                .is_some_and(|at| at.elapsed() < credited_within);
            return HeldBack::ByPrimary { draining };
        }
        HeldBack::Not
    }

    /// When the oldest gossip frame queued for `peer` that it has not
    /// credited yet was queued (ms, the ledger's clock), as of `now_ms`:
    /// what we gossiped before that time, the peer has taken (admitted or
    /// refused). Frames uncredited for [`GOSSIP_CREDIT_TIMEOUT`] count as
    /// taken, so a peer that credits nothing can not make this look
    /// forever in flight. `None` when nothing is in flight.
    pub fn gossip_unconfirmed_since_ms(&self, peer: ValidatorIndex, now_ms: u64) -> Option<u64> {
        self.windows
            .get(peer.get())?
            .lock()
            .expect("window lock")
            .unconfirmed_since(now_ms)
    }

    /// When `peer` had taken (credited) every gossip frame we queued for
    /// it at or before `queued_by_ms` (ms, the ledger's clock), as of
    /// `now_ms`: from then on it had what those frames carried. `None`
    /// while one of them is in flight (queued, sent, or being admitted
    /// there). A frame uncredited for [`GOSSIP_CREDIT_TIMEOUT`] counts as
    /// taken then, so a peer that credits nothing can not look forever
    /// behind.
    pub fn gossip_delivered_ms(
        &self,
        peer: ValidatorIndex,
        queued_by_ms: u64,
        now_ms: u64,
    ) -> Option<u64> {
        self.windows
            .get(peer.get())?
            .lock()
            .expect("window lock")
            .delivered_ms(queued_by_ms, now_ms)
    }

    /// A new connection to `peer`: what the old one carried is lost or
    /// will be credited late, so its window starts empty.
    fn reset_window(&self, peer: usize) {
        self.windows[peer].lock().expect("window lock").reset();
    }

    /// `peer` credited one gossip frame of `txs` transactions.
    fn credited(&self, peer: usize, txs: u32) {
        if let Some(window) = self.windows.get(peer) {
            window.lock().expect("window lock").credit(
                txs as usize,
                Instant::now(),
                crate::ledger::now_ms(),
            );
            self.credited[peer].notify_one();
        }
    }

    /// Tells `peer` we are done with one gossip frame of `txs` it sent.
    fn credit(&self, peer: usize, txs: u32) {
        self.send(ValidatorIndex(peer as u16), &Wire::GossipCredit { txs });
    }

    /// `peer` sent, on its own connection, a consensus message of its own
    /// that no honest validator sends (`offence`, found by the replica):
    /// close its connection and refuse it for a backoff that doubles on
    /// repeat offences (see [`Penalty`]). Counted and logged.
    pub fn punish(&self, peer: ValidatorIndex, offence: impl std::fmt::Display) {
        let Some(penalty) = self.penalties.get(peer.get()) else {
            return;
        };
        if peer.get() == self.me {
            return;
        }
        let refused = penalty.lock().expect("penalty lock").punish(Instant::now());
        let Some(backoff) = refused else {
            tracing::debug!("validator {peer} sent {offence} while already refused");
            return;
        };
        self.metrics.p2p_peers_punished.inc();
        tracing::warn!(
            "punished validator {peer} for sending {offence}: disconnected and refused for {} ms",
            backoff.as_millis()
        );
        self.cut[peer.get()].notify_one();
    }

    /// How much longer `peer` is refused, if it is.
    fn refused_for(&self, peer: usize) -> Option<Duration> {
        self.penalties
            .get(peer)?
            .lock()
            .expect("penalty lock")
            .refused_for(Instant::now())
    }

    /// Hands transactions `peer` gossiped to the admission task, or drops
    /// (and credits) them if it is behind.
    pub(crate) fn receive_gossip(&self, peer: usize, txs: Vec<SignedTransaction>) {
        let count = txs.len();
        // Counted before it is sent, so the admission thread's taking it
        // out never runs ahead of the count.
        let held = &self.gossip_inbox_txs;
        let before = held.fetch_add(count, Ordering::Relaxed);
        let fits = before + count <= gossip_inbox_txs(self.validators);
        if !(fits && self.gossip_inbox.try_send((peer, txs)).is_ok()) {
            held.fetch_sub(count, Ordering::Relaxed);
            self.metrics.p2p_gossip_dropped.inc();
            self.metrics.saw_overload();
            self.credit(peer, count as u32);
        }
    }
}

/// Starts listening, dialing and serving peers (validator `j` dialed at
/// `dial[j]`: its genesis address unless `node.json` overrides it). Returns
/// once the listener is bound; the work goes on in spawned tasks.
pub async fn start(
    node: Arc<Node>,
    queues: Queues,
    listen: SocketAddr,
    dial: Vec<SocketAddr>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!("p2p listening on {listen}");
    let builder = snow::Builder::new(NOISE_PARAMS.parse().expect("valid noise params"));
    let noise_key = Arc::new(builder.generate_keypair().expect("noise keypair"));
    let identity = Arc::new(Identity::of(&node));
    let n = node.genesis.validators.len();
    let mut inbound_senders: Vec<Option<mpsc::Sender<Connection>>> = (0..n).map(|_| None).collect();
    let admitter = node.clone();
    let inbox = queues.1;
    std::thread::Builder::new()
        .name("cairn-admit".into())
        .spawn(move || admit_gossip(admitter, inbox))?;
    for (peer, queue) in queues.0.into_iter().enumerate() {
        let Some(queue) = queue else { continue };
        let (inbound_tx, inbound_rx) = mpsc::channel(2);
        if peer < node.me.get() {
            inbound_senders[peer] = Some(inbound_tx);
        }
        tokio::spawn(manage_peer(
            node.clone(),
            identity.clone(),
            noise_key.clone(),
            peer,
            dial[peer],
            queue,
            inbound_rx,
        ));
    }
    let handshakes = HandshakeLimits {
        slots: Arc::new(tokio::sync::Semaphore::new(node.limits.p2p_handshakes_max)),
        timeout: Duration::from_millis(node.limits.p2p_handshake_timeout_ms),
        refused: node.metrics.clone(),
    };
    tokio::spawn(accept_loop(
        identity,
        noise_key,
        listener,
        inbound_senders,
        handshakes,
    ));
    Ok(())
}

/// Bounds on inbound handshakes, from anyone: how many run at once and for
/// how long.
struct HandshakeLimits {
    slots: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
    refused: Arc<crate::metrics::Metrics>,
}

/// Admits what peers gossip, one frame at a time, on its own thread at
/// the API's lowered CPU priority ([`crate::lower_thread_priority`]): when
/// the cores are short, votes and proposals go first, this falls behind, and
/// its backlog turns clients away (`overloaded`) instead of slowing blocks.
fn admit_gossip(node: Arc<Node>, mut inbox: mpsc::Receiver<GossipFrame>) {
    crate::lower_thread_priority();
    while let Some(first) = inbox.blocking_recv() {
        // Frames that waited meanwhile are admitted together, up to
        // GOSSIP_ADMIT_TXS: one signature batch and one pass of the pool's
        // lock for all of them (an open-loop client's frames hold about 50
        // transactions each, and small batches verify slower per
        // signature). Each sender's frames stay in order; nothing waits
        // for a frame that has not arrived.
        let (frames, txs) = join_waiting_frames(first, &mut inbox);
        node.network.gossip_taken(txs.len());
        node.submit(txs, false);
        for (peer, count) in frames {
            node.network.credit(peer, count as u32);
        }
    }
}

/// A gossip frame in the inbox: its sender and its transactions.
type GossipFrame = (usize, Vec<SignedTransaction>);

/// `first` and the frames already waiting behind it, up to
/// [`GOSSIP_ADMIT_TXS`] transactions: each frame's sender and size, and
/// their transactions in the order received.
fn join_waiting_frames(
    first: GossipFrame,
    inbox: &mut mpsc::Receiver<GossipFrame>,
) -> (Vec<(usize, usize)>, Vec<SignedTransaction>) {
    let mut frames = vec![(first.0, first.1.len())];
    let mut txs = first.1;
    while txs.len() < GOSSIP_ADMIT_TXS {
        let Ok((peer, more)) = inbox.try_recv() else {
            break;
        };
        frames.push((peer, more.len()));
        txs.extend(more);
    }
    (frames, txs)
}

async fn accept_loop(
    identity: Arc<Identity>,
    noise_key: Arc<snow::Keypair>,
    listener: TcpListener,
    inbound: Vec<Option<mpsc::Sender<Connection>>>,
    limits: HandshakeLimits,
) {
    let inbound = Arc::new(inbound);
    loop {
        let (stream, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("p2p accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the cap: closed at once, before a task, a buffer or a
        // signature is spent on it.
        let Ok(slot) = limits.slots.clone().try_acquire_owned() else {
            limits.refused.p2p_handshakes_refused.inc();
            tracing::debug!("p2p handshakes at their cap; closed connection from {address}");
            drop(stream);
            continue;
        };
        let (identity, noise_key, inbound) = (identity.clone(), noise_key.clone(), inbound.clone());
        let timeout = limits.timeout;
        tokio::spawn(async move {
            let result =
                tokio::time::timeout(timeout, handshake(&identity, &noise_key, stream, false))
                    .await
                    .unwrap_or_else(|_| Err("handshake timed out".into()));
            drop(slot);
            match result {
                Ok(connection) => match inbound.get(connection.peer) {
                    Some(Some(sender)) => {
                        let peer = connection.peer;
                        if sender.send(connection).await.is_err() {
                            tracing::warn!("peer {peer}: connection manager is gone");
                        }
                    }
                    _ => tracing::warn!(
                        event = "peer_refused",
                        peer = connection.peer,
                        address = %address,
                        reason = "the lower index dials",
                        "refused connection from validator {} at {address}: the lower index dials",
                        connection.peer
                    ),
                },
                Err(e) => tracing::warn!(
                    event = "peer_refused",
                    address = %address,
                    reason = %e,
                    "refused p2p connection from {address}: {e}"
                ),
            }
        });
    }
}

/// Keeps one connection to `peer` alive and feeds it the peer's queue.
async fn manage_peer(
    node: Arc<Node>,
    identity: Arc<Identity>,
    noise_key: Arc<snow::Keypair>,
    peer: usize,
    address: SocketAddr,
    mut queue: [mpsc::Receiver<Queued>; 2],
    mut inbound: mpsc::Receiver<Connection>,
) {
    let dialer = node.me.get() < peer;
    let mut backoff = DIAL_BACKOFF_MIN;
    let mut next: Option<Connection> = None;
    loop {
        if dialer && next.is_none() {
            if let Some(left) = node.network.refused_for(peer) {
                tokio::time::sleep(left).await;
                continue;
            }
        }
        let connection = match next.take() {
            Some(connection) => connection,
            None if dialer => match dial(&identity, &noise_key, address).await {
                Ok(connection) if connection.peer == peer => connection,
                Ok(connection) => {
                    tracing::warn!(
                        "{address} answered as validator {}, expected {peer}",
                        connection.peer
                    );
                    tokio::time::sleep(DIAL_BACKOFF_MAX).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!("dial validator {peer} at {address}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
                    continue;
                }
            },
            None => match inbound.recv().await {
                Some(connection) => connection,
                None => return,
            },
        };
        if let Some(left) = node.network.refused_for(peer) {
            tracing::debug!(
                "validator {peer} is refused for {} ms more; connection closed",
                left.as_millis()
            );
            drop(connection);
            continue;
        }
        backoff = DIAL_BACKOFF_MIN;
        tracing::info!(
            event = "peer_connected",
            peer,
            "connected to validator {peer}"
        );
        node.metrics.peers_connected.inc();
        next = serve(&node, connection, &mut queue, &mut inbound, dialer).await;
        node.metrics.peers_connected.dec();
        tracing::info!(
            event = "peer_disconnected",
            peer,
            "disconnected from validator {peer}"
        );
    }
}

async fn dial(
    identity: &Identity,
    noise_key: &snow::Keypair,
    address: SocketAddr,
) -> Result<Connection, String> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(identity, noise_key, stream, true),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
}

async fn read_handshake_message(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let length = stream.read_u16().await.map_err(|e| e.to_string())? as usize;
    let mut message = vec![0u8; length];
    stream
        .read_exact(&mut message)
        .await
        .map_err(|e| e.to_string())?;
    Ok(message)
}

async fn write_handshake_message(stream: &mut TcpStream, message: &[u8]) -> Result<(), String> {
    let length = u16::try_from(message.len()).map_err(|_| "handshake message too long")?;
    stream.write_u16(length).await.map_err(|e| e.to_string())?;
    stream.write_all(message).await.map_err(|e| e.to_string())
}

/// Runs the Noise XX handshake and checks the peer's validator identity.
async fn handshake(
    identity: &Identity,
    noise_key: &snow::Keypair,
    mut stream: TcpStream,
    initiator: bool,
) -> Result<Connection, String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let builder = snow::Builder::new(NOISE_PARAMS.parse().expect("valid noise params"))
        .local_private_key(&noise_key.private);
    let mut state = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(|e| e.to_string())?;
    let hello = Hello {
        genesis_hash: identity.genesis_hash,
        validator: identity.key.public(),
        signature: identity.key.sign(
            P2P_DOMAIN,
            &hello_message(&identity.genesis_hash, &noise_key.public),
        ),
    };
    let hello = codec::encode(&hello);
    let mut buffer = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let mut payload = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let noise_err = |e: snow::Error| format!("noise: {e}");
    let peer_hello = if initiator {
        let n = state.write_message(&[], &mut buffer).map_err(noise_err)?;
        write_handshake_message(&mut stream, &buffer[..n]).await?;
        let message = read_handshake_message(&mut stream).await?;
        let n = state
            .read_message(&message, &mut payload)
            .map_err(noise_err)?;
        let peer_hello = payload[..n].to_vec();
        let n = state
            .write_message(&hello, &mut buffer)
            .map_err(noise_err)?;
        write_handshake_message(&mut stream, &buffer[..n]).await?;
        peer_hello
    } else {
        let message = read_handshake_message(&mut stream).await?;
        state
            .read_message(&message, &mut payload)
            .map_err(noise_err)?;
        let n = state
            .write_message(&hello, &mut buffer)
            .map_err(noise_err)?;
        write_handshake_message(&mut stream, &buffer[..n]).await?;
        let message = read_handshake_message(&mut stream).await?;
        let n = state
            .read_message(&message, &mut payload)
            .map_err(noise_err)?;
        payload[..n].to_vec()
    };
    let remote_static = state
        .get_remote_static()
        .ok_or("peer sent no static key")?
        .to_vec();
    let peer = check_hello(identity, &peer_hello, &remote_static)?;
    let transport = state.into_stateless_transport_mode().map_err(noise_err)?;
    Ok(Connection {
        peer,
        stream,
        transport,
    })
}

/// Checks a peer's identity proof; returns its validator index.
fn check_hello(identity: &Identity, bytes: &[u8], remote_static: &[u8]) -> Result<usize, String> {
    let hello: Hello = codec::decode(bytes).map_err(|e| format!("bad hello: {e}"))?;
    if hello.genesis_hash != identity.genesis_hash {
        return Err("peer is on another chain (genesis hash differs)".into());
    }
    let peer = identity
        .validators
        .iter()
        .position(|v| *v == hello.validator)
        .ok_or_else(|| format!("key {} is not a validator of this chain", hello.validator))?;
    if hello.validator == identity.key.public() {
        return Err("peer claims to be this validator".into());
    }
    cairn_core::verify(
        &hello.validator,
        P2P_DOMAIN,
        &hello_message(&identity.genesis_hash, remote_static),
        &hello.signature,
    )
    .map_err(|_| "identity signature does not bind the validator key to the channel".to_string())?;
    Ok(peer)
}

/// Serves one connection until it fails. Returns a replacement connection if
/// one arrived meanwhile (a peer that restarted and dialed again).
async fn serve(
    node: &Arc<Node>,
    connection: Connection,
    queue: &mut [mpsc::Receiver<Queued>; 2],
    inbound: &mut mpsc::Receiver<Connection>,
    dialer: bool,
) -> Option<Connection> {
    let Connection {
        peer,
        stream,
        transport,
    } = connection;
    let transport = Arc::new(transport);
    let (reader, mut writer) = stream.into_split();
    let mut reader_task = tokio::spawn(read_loop(node.clone(), peer, reader, transport.clone()));
    let mut nonce: u64 = 0;
    let mut ciphertext = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let [consensus, gossip] = queue;
    node.network.reset_window(peer);
    let replacement = loop {
        let window_open = {
            let mut window = node.network.windows[peer].lock().expect("window lock");
            let before = (window.frames, window.txs);
            let was_full = before.0 >= GOSSIP_WINDOW_FRAMES || before.1 >= GOSSIP_WINDOW_TXS;
            let open = window.open(Instant::now());
            if was_full && open {
                tracing::info!(
                    "validator {peer} credited none of {} gossip frames ({} transactions) for {} s: window opened again",
                    before.0,
                    before.1,
                    GOSSIP_CREDIT_TIMEOUT.as_secs()
                );
            }
            open
        };
        let (queued, lane) = tokio::select! {
            biased;
            frame = consensus.recv() => (frame, Lane::Consensus),
            frame = gossip.recv(), if window_open => (frame, Lane::Gossip),
            _ = node.network.credited[peer].notified(), if !window_open => continue,
            // A full window whose credits were lost opens again after a while.
            _ = tokio::time::sleep(GOSSIP_CREDIT_TIMEOUT), if !window_open => continue,
            result = &mut reader_task => {
                if let Ok(Err(e)) = result {
                    tracing::warn!("closing connection to validator {peer}: {e}");
                }
                break None;
            }
            connection = inbound.recv(), if !dialer => break connection,
            _ = node.network.cut[peer].notified() => {
                if node.network.refused_for(peer).is_some() {
                    break None;
                }
                continue;
            }
        };
        let Some((frame, txs)) = queued else {
            break None;
        };
        node.network.dequeued(peer, &frame, lane);
        if lane == Lane::Gossip {
            node.network.windows[peer]
                .lock()
                .expect("window lock")
                .sent(txs as usize, Instant::now());
        }
        match write_frame(&mut writer, &transport, &mut nonce, &frame, &mut ciphertext).await {
            Ok(written) => node.metrics.observe_sent(peer, written),
            Err(e) => {
                tracing::debug!("write to validator {peer}: {e}");
                break None;
            }
        }
    };
    reader_task.abort();
    replacement
}

/// Writes one frame; returns the bytes it took on the wire.
async fn write_frame(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    transport: &snow::StatelessTransportState,
    nonce: &mut u64,
    frame: &[u8],
    ciphertext: &mut [u8],
) -> Result<usize, String> {
    let length = (frame.len() as u32).to_le_bytes();
    let mut out =
        Vec::with_capacity(frame.len() + 4 + (frame.len() / CHUNK_PLAINTEXT_BYTES_MAX + 1) * 18);
    let mut plaintext = Vec::with_capacity(frame.len() + 4);
    plaintext.extend_from_slice(&length);
    plaintext.extend_from_slice(frame);
    for chunk in plaintext.chunks(CHUNK_PLAINTEXT_BYTES_MAX) {
        let n = transport
            .write_message(*nonce, chunk, ciphertext)
            .map_err(|e| format!("noise: {e}"))?;
        *nonce += 1;
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&ciphertext[..n]);
    }
    writer.write_all(&out).await.map_err(|e| e.to_string())?;
    Ok(out.len())
}

/// Reads, decrypts, decodes and dispatches frames until the peer misbehaves
/// or the connection ends.
async fn read_loop(
    node: Arc<Node>,
    peer: usize,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    transport: Arc<snow::StatelessTransportState>,
) -> Result<(), String> {
    let mut nonce: u64 = 0;
    let mut ciphertext = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let mut chunk = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let length = match reader.read_u16().await {
            Ok(length) => length as usize,
            Err(_) => return Ok(()),
        };
        if length < NOISE_TAG_BYTES {
            return Err("short noise message".into());
        }
        reader
            .read_exact(&mut ciphertext[..length])
            .await
            .map_err(|e| e.to_string())?;
        node.metrics.observe_received_bytes(peer, 2 + length);
        let n = transport
            .read_message(nonce, &ciphertext[..length], &mut chunk)
            .map_err(|_| "message does not decrypt".to_string())?;
        nonce += 1;
        pending.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while pending.len() - start >= 4 {
            let frame_length =
                u32::from_le_bytes(pending[start..start + 4].try_into().expect("4 bytes")) as usize;
            if frame_length > FRAME_BYTES_MAX {
                return Err(format!("frame of {frame_length} bytes exceeds the limit"));
            }
            if pending.len() - start < 4 + frame_length {
                break;
            }
            let wire: Wire = codec::decode(&pending[start + 4..start + 4 + frame_length])
                .map_err(|e| format!("undecodable frame: {e}"))?;
            start += 4 + frame_length;
            node.metrics.observe_received_frame(peer);
            dispatch(&node, peer, wire, frame_length).await;
        }
        pending.drain(..start);
    }
}

/// Hands one frame from `peer` to the part of the node that handles it.
async fn dispatch(node: &Arc<Node>, peer: usize, wire: Wire, bytes: usize) {
    let from = ValidatorIndex(peer as u16);
    match wire {
        Wire::Consensus(message) => node.deliver(
            from,
            Event::Message {
                peer: from,
                message,
            },
            bytes,
        ),
        Wire::SyncResponse(blocks) => {
            node.deliver(from, Event::SyncResponse { from, blocks }, bytes)
        }
        Wire::SyncRequest {
            from_height,
            max_blocks,
        } => {
            let node = node.clone();
            let _ = tokio::task::spawn_blocking(move || {
                serve_sync(&node, from, from_height, max_blocks)
            })
            .await;
        }
        Wire::Transactions(txs) => {
            if txs.len() > GOSSIP_TXS_MAX {
                tracing::warn!(
                    "validator {peer} gossiped {} transactions in one frame; ignored",
                    txs.len()
                );
                return;
            }
            // Not awaited here: a consensus frame read after this one must
            // not wait for these signatures to be checked.
            node.network.receive_gossip(peer, txs);
        }
        Wire::GossipCredit { txs } => node.network.credited(peer, txs),
    }
}

/// Answers a sync request from storage: committed blocks with certificates
/// from `from_height` on, bounded in count and bytes.
fn serve_sync(node: &Node, to: ValidatorIndex, from_height: Height, max_blocks: u32) {
    let tip = match node.storage.tip_height() {
        Ok(tip) => tip,
        Err(e) => return tracing::warn!("sync request: {e}"),
    };
    let mut blocks = Vec::new();
    let mut bytes = 0usize;
    let mut height = from_height.max(Height(1));
    while height <= tip && (blocks.len() as u32) < max_blocks.min(SYNC_BLOCKS_MAX) {
        let (Ok(Some(block)), Ok(Some(certificate))) =
            (node.storage.block(height), node.storage.certificate(height))
        else {
            break;
        };
        bytes += codec::encode(&block).len();
        if bytes > SYNC_BYTES_MAX && !blocks.is_empty() {
            break;
        }
        blocks.push((block, certificate));
        height = height.next();
    }
    if !blocks.is_empty() {
        node.network.send(to, &Wire::SyncResponse(blocks));
    }
}

/// Test support: speak the p2p protocol as any key, to check that a node
/// refuses strangers and survives misbehaving peers. Uses the same
/// handshake and framing code as the node.
pub mod probe {
    use super::*;

    /// A client-side connection made with [`connect`].
    pub struct Probe {
        pub peer: usize,
        stream: TcpStream,
        transport: snow::StatelessTransportState,
        nonce: u64,
        read_nonce: u64,
        /// Decrypted bytes not yet cut into frames.
        pending: Vec<u8>,
    }

    /// Dials `address` as `identity` and runs the handshake. Succeeds when
    /// *our* side accepts the node; the node may still refuse us, which
    /// shows as the connection closing ([`Probe::closed_within`]).
    pub async fn connect(identity: &Identity, address: SocketAddr) -> Result<Probe, String> {
        let builder = snow::Builder::new(NOISE_PARAMS.parse().expect("valid noise params"));
        let noise_key = builder.generate_keypair().map_err(|e| e.to_string())?;
        let Connection {
            peer,
            stream,
            transport,
        } = dial(identity, &noise_key, address).await?;
        Ok(Probe {
            peer,
            stream,
            transport,
            nonce: 0,
            read_nonce: 0,
            pending: Vec::new(),
        })
    }

    impl Probe {
        /// Sends one encrypted frame whose length prefix says `declared`
        /// bytes and whose body is `body` (a lying prefix is allowed).
        pub async fn send_frame(&mut self, declared: u32, body: &[u8]) -> Result<(), String> {
            let mut plaintext = declared.to_le_bytes().to_vec();
            plaintext.extend_from_slice(body);
            let mut ciphertext = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
            for chunk in plaintext.chunks(CHUNK_PLAINTEXT_BYTES_MAX) {
                let n = self
                    .transport
                    .write_message(self.nonce, chunk, &mut ciphertext)
                    .map_err(|e| e.to_string())?;
                self.nonce += 1;
                self.stream
                    .write_all(&(n as u16).to_be_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                self.stream
                    .write_all(&ciphertext[..n])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }

        /// Sends a well-formed frame carrying `wire`.
        pub async fn send_wire(&mut self, wire: &Wire) -> Result<(), String> {
            let body = codec::encode(wire);
            self.send_frame(body.len() as u32, &body).await
        }

        /// Sends bytes that are not a Noise message of this session.
        pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
            self.stream
                .write_all(bytes)
                .await
                .map_err(|e| e.to_string())
        }

        /// Reads the node's frames until one that `want` accepts arrives
        /// (the others, e.g. consensus traffic, are skipped). `Ok(None)` when
        /// `timeout` passes first; an error when the connection closes or
        /// a frame does not decrypt or decode.
        pub async fn recv_wire(
            &mut self,
            timeout: Duration,
            want: impl Fn(&Wire) -> bool,
        ) -> Result<Option<Wire>, String> {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut ciphertext = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
            let mut chunk = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
            loop {
                while self.pending.len() >= 4 {
                    let length =
                        u32::from_le_bytes(self.pending[..4].try_into().expect("4 bytes")) as usize;
                    if self.pending.len() < 4 + length {
                        break;
                    }
                    let wire: Wire = codec::decode(&self.pending[4..4 + length])
                        .map_err(|e| format!("undecodable frame: {e}"))?;
                    self.pending.drain(..4 + length);
                    if want(&wire) {
                        return Ok(Some(wire));
                    }
                }
                let read = async {
                    let length = self.stream.read_u16().await.map_err(|e| e.to_string())? as usize;
                    self.stream
                        .read_exact(&mut ciphertext[..length])
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<usize, String>(length)
                };
                let length = match tokio::time::timeout_at(deadline, read).await {
                    Err(_) => return Ok(None),
                    Ok(result) => result.map_err(|e| format!("connection closed: {e}"))?,
                };
                let n = self
                    .transport
                    .read_message(self.read_nonce, &ciphertext[..length], &mut chunk)
                    .map_err(|_| "message does not decrypt".to_string())?;
                self.read_nonce += 1;
                self.pending.extend_from_slice(&chunk[..n]);
            }
        }

        /// Whether the node closes the connection within `timeout` (reading
        /// and discarding whatever it sends meanwhile).
        pub async fn closed_within(&mut self, timeout: Duration) -> bool {
            let mut buffer = vec![0u8; 64 * 1024];
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await {
                    Err(_) => return false,
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => continue,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window lets a peer have at most GOSSIP_WINDOW_FRAMES frames or
    /// GOSSIP_WINDOW_TXS transactions outstanding (one large frame alone),
    /// opens again with each credit, and after a long silence, and never
    /// goes below empty whatever a peer credits.
    #[test]
    fn the_gossip_window_bounds_what_a_peer_has_not_credited() {
        let t0 = Instant::now();
        let mut window = GossipWindow::default();
        for _ in 0..GOSSIP_WINDOW_FRAMES {
            assert!(window.open(t0));
            window.sent(10, t0);
        }
        assert!(!window.open(t0), "frames: full");
        window.credit(10, t0, 350);
        assert!(window.open(t0), "a credit opens it");

        let mut window = GossipWindow::default();
        assert!(window.open(t0));
        window.sent(GOSSIP_WINDOW_TXS + 5_000, t0);
        assert!(
            !window.open(t0),
            "one frame over the transactions' bound goes alone"
        );
        let later = t0 + GOSSIP_CREDIT_TIMEOUT - Duration::from_millis(1);
        assert!(!window.open(later));
        assert!(
            window.open(t0 + GOSSIP_CREDIT_TIMEOUT),
            "credits lost for a long while: open again"
        );

        let mut window = GossipWindow::default();
        window.sent(3, t0);
        window.credit(1_000_000, t0, 0);
        window.credit(1_000_000, t0, 0);
        assert_eq!(
            (window.frames, window.txs),
            (0, 0),
            "over-credit empties it"
        );
        assert!(window.credited.is_some());
    }

    /// Frames waiting in the inbox join the first, each sender's in
    /// order, until the batch reaches its bound; none is waited for.
    #[test]
    fn waiting_gossip_frames_are_admitted_together_in_order_and_bounded() {
        let key = cairn_core::Keypair::from_seed([4; 32]);
        let frame = |peer: usize, from_nonce: u64, count: u64| -> GossipFrame {
            let txs = (from_nonce..from_nonce + count)
                .map(|nonce| {
                    SignedTransaction::sign(
                        cairn_core::Transfer {
                            chain_id: "p2p-test".into(),
                            from: key.public(),
                            to: cairn_core::PublicKey([2; 32]),
                            amount: 1,
                            nonce,
                        },
                        &key,
                    )
                })
                .collect();
            (peer, txs)
        };
        let (sender, mut inbox) = mpsc::channel(8);
        sender.try_send(frame(2, 600, 600)).unwrap();
        sender.try_send(frame(3, 0, 600)).unwrap();
        let (frames, txs) = join_waiting_frames(frame(1, 0, 600), &mut inbox);
        assert_eq!(frames, vec![(1, 600), (2, 600)], "stops past the bound");
        let nonces: Vec<u64> = txs.iter().map(|t| t.transfer.nonce).collect();
        assert_eq!(
            nonces,
            (0..1_200).collect::<Vec<_>>(),
            "in the order received"
        );
        let (frames, _) = join_waiting_frames(inbox.try_recv().unwrap(), &mut inbox);
        assert_eq!(
            frames,
            vec![(3, 600)],
            "nothing waits for a frame not yet there"
        );
    }

    /// What a peer has not credited is known by when it was queued: the
    /// oldest first, gone with its credit, gone when the connection that
    /// carried it is lost (not while it still waits in the queue), and
    /// given up on after the credit timeout.
    #[test]
    fn the_oldest_uncredited_gossip_is_known_until_credited() {
        let timeout_ms = GOSSIP_CREDIT_TIMEOUT.as_millis() as u64;
        let t0 = Instant::now();
        let mut window = GossipWindow::default();
        assert_eq!(window.unconfirmed_since(1_000), None);
        for queued_ms in [100, 200, 300] {
            window.queued(queued_ms);
        }
        assert_eq!(window.unconfirmed_since(400), Some(100));
        window.sent(10, t0);
        window.credit(10, t0, 350);
        assert_eq!(window.unconfirmed_since(400), Some(200), "credited");
        window.sent(10, t0);
        window.reset();
        assert_eq!(
            window.unconfirmed_since(400),
            Some(300),
            "the frame sent on a lost connection is gone, the queued one stays"
        );
        assert_eq!(window.unconfirmed_since(299 + timeout_ms), Some(300));
        assert_eq!(
            window.unconfirmed_since(300 + timeout_ms),
            None,
            "given up on after the credit timeout"
        );
        for queued_ms in 0..GOSSIP_UNCONFIRMED_MAX as u64 + 10 {
            window.queued(1_000 + queued_ms);
        }
        assert_eq!(window.unconfirmed.len(), GOSSIP_UNCONFIRMED_MAX, "bounded");
        assert_eq!(
            window.unconfirmed_since(2_000),
            Some(1_010),
            "oldest dropped"
        );

        // Through the network: queued gossip is in flight until credited;
        // consensus frames are not gossip.
        let metrics = Arc::new(crate::metrics::Metrics::new(4, 0));
        let (network, _receivers) = Network::new(4, 0, metrics);
        let peer = ValidatorIndex(1);
        let frame: Frame = Arc::new(vec![0u8; 100]);
        network.enqueue(1, &frame, 5, Lane::Consensus);
        let now = crate::ledger::now_ms();
        assert_eq!(network.gossip_unconfirmed_since_ms(peer, now), None);
        network.enqueue(1, &frame, 5, Lane::Gossip);
        let in_flight = network.gossip_unconfirmed_since_ms(peer, crate::ledger::now_ms());
        assert!(
            in_flight.is_some_and(|queued| queued >= now),
            "{in_flight:?}"
        );
        assert_eq!(
            network.gossip_unconfirmed_since_ms(ValidatorIndex(2), now),
            None
        );
        network.credited(1, 5);
        assert_eq!(
            network.gossip_unconfirmed_since_ms(peer, crate::ledger::now_ms()),
            None
        );
    }

    /// When a peer had taken what we queued by some time: when the last
    /// frame queued by then was credited; unknown while one is in flight;
    /// at the credit timeout for one never credited; and when queued for
    /// what is older than the frames remembered.
    #[test]
    fn when_a_peer_had_our_gossip_is_known_from_its_credits() {
        let timeout_ms = GOSSIP_CREDIT_TIMEOUT.as_millis() as u64;
        let t0 = Instant::now();
        let mut window = GossipWindow::default();
        assert_eq!(window.delivered_ms(500, 1_000), Some(500), "nothing sent");
        for queued_ms in [100, 200, 300] {
            window.queued(queued_ms);
            window.sent(10, t0);
        }
        assert_eq!(window.delivered_ms(150, 400), None, "in flight");
        window.credit(10, t0, 1_100);
        assert_eq!(window.delivered_ms(150, 1_200), Some(1_100));
        assert_eq!(window.delivered_ms(250, 1_200), None, "200 in flight");
        window.credit(10, t0, 1_600);
        assert_eq!(window.delivered_ms(150, 1_700), Some(1_100), "the first");
        assert_eq!(window.delivered_ms(250, 1_700), Some(1_600));
        assert_eq!(window.delivered_ms(50, 1_700), Some(50), "before any");
        assert_eq!(window.delivered_ms(300, 299 + timeout_ms), None);
        assert_eq!(
            window.delivered_ms(300, 300 + timeout_ms),
            Some(300 + timeout_ms),
            "never credited: taken at the credit timeout"
        );
        for i in 0..GOSSIP_CONFIRMED_MAX as u64 + 10 {
            window.queued(10_000 + i);
            window.credit(1, t0, 20_000 + i);
        }
        assert_eq!(window.confirmed.len(), GOSSIP_CONFIRMED_MAX, "bounded");
    }

    /// Clients wait while our gossip waits for the primary, or for f + 1
    /// peers; one slow peer that is not the primary holds nobody back.
    /// Whether the primary drains (credited lately) is told apart.
    #[test]
    fn gossip_held_back_by_the_primary_or_f_plus_one_peers() {
        let metrics = Arc::new(crate::metrics::Metrics::new(4, 0));
        let (network, _receivers) = Network::new(4, 0, metrics);
        let big: Frame = Arc::new(vec![0u8; GOSSIP_HELD_BACK_BYTES + 1]);
        let primary = ValidatorIndex(1);
        let second = Duration::from_secs(1);
        assert_eq!(network.gossip_held_back(primary, 2, second), HeldBack::Not);
        network.enqueue(2, &big, 100, Lane::Gossip);
        assert_eq!(
            network.gossip_held_back(primary, 2, second),
            HeldBack::Not,
            "one peer, not the primary"
        );
        network.enqueue(1, &big, 100, Lane::Gossip);
        assert_eq!(
            network.gossip_held_back(primary, 2, second),
            HeldBack::ByPeers
        );
        network.dequeued(2, &big, Lane::Gossip);
        assert_eq!(
            network.gossip_held_back(primary, 2, second),
            HeldBack::ByPrimary { draining: false }
        );
        network.credited(1, 100);
        assert_eq!(
            network.gossip_held_back(primary, 2, second),
            HeldBack::ByPrimary { draining: true }
        );
        assert_eq!(
            network.gossip_held_back(ValidatorIndex(0), 2, second),
            HeldBack::Not,
            "we are the primary"
        );
    }

    /// A gossip frame the inbox has no room for is dropped and credited at
    /// once, so the sender's window does not shrink for good.
    #[tokio::test]
    async fn a_dropped_gossip_frame_is_credited() {
        let metrics = Arc::new(crate::metrics::Metrics::new(2, 0));
        let (network, mut queues) = Network::new(2, 0, metrics.clone());
        for _ in 0..gossip_inbox_frames(2) {
            network.receive_gossip(1, vec![]);
        }
        assert!(network.gossip_inbox_busy());
        let [consensus, _] = queues.0[1].as_mut().unwrap();
        assert!(consensus.try_recv().is_err(), "nothing credited yet");
        network.receive_gossip(1, Vec::new());
        assert_eq!(metrics.p2p_gossip_dropped.get(), 1);
        let (frame, _) = consensus.try_recv().expect("a credit");
        let wire: Wire = codec::decode(&frame).unwrap();
        assert!(matches!(wire, Wire::GossipCredit { txs: 0 }));
    }

    /// Handshakes in progress are capped: connections over the cap are
    /// closed at once (issue 10: every TCP connection, from anyone, got a
    /// handshake task that allocated and signed), and a slot frees when a
    /// handshake times out.
    #[tokio::test]
    async fn handshakes_are_capped_and_time_out() {
        let key = cairn_core::Keypair::from_seed([3; 32]);
        let identity = Arc::new(Identity {
            validators: vec![key.public()],
            key,
            genesis_hash: Hash::ZERO,
        });
        let builder = snow::Builder::new(NOISE_PARAMS.parse().expect("valid noise params"));
        let noise_key = Arc::new(builder.generate_keypair().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new(1, 0));
        let limits = HandshakeLimits {
            slots: Arc::new(tokio::sync::Semaphore::new(2)),
            timeout: Duration::from_millis(1_500),
            refused: metrics.clone(),
        };
        tokio::spawn(accept_loop(
            identity,
            noise_key,
            listener,
            vec![None],
            limits,
        ));
        let closed_within = |mut stream: TcpStream, ms: u64| async move {
            let mut byte = [0u8; 1];
            let read = stream.read(&mut byte);
            matches!(
                tokio::time::timeout(Duration::from_millis(ms), read).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        };
        // Two silent connections hold both slots.
        let held = [
            TcpStream::connect(address).await.unwrap(),
            TcpStream::connect(address).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(100)).await;
        let third = TcpStream::connect(address).await.unwrap();
        assert!(
            closed_within(third, 300).await,
            "over the cap: closed at once"
        );
        assert_eq!(metrics.p2p_handshakes_refused.get(), 1);
        // The held ones time out, which frees their slots.
        for stream in held {
            assert!(closed_within(stream, 3_000).await, "handshake timed out");
        }
        let later = TcpStream::connect(address).await.unwrap();
        assert!(!closed_within(later, 300).await, "a slot is free again");
        assert_eq!(metrics.p2p_handshakes_refused.get(), 1);
    }

    /// Issue 10: a punished peer is refused 1 s, then 2 s, 4 s, ... up to
    /// 60 s on repeat offences; offences while it is refused (frames sent
    /// before the cut) do not count again; a minute of good behaviour after
    /// a refusal takes one doubling off.
    #[test]
    fn a_penalty_doubles_up_to_its_cap_and_decays() {
        let start = Instant::now();
        let mut penalty = Penalty::default();
        let s = Duration::from_secs;
        assert_eq!(penalty.refused_for(start), None);
        assert_eq!(penalty.punish(start), Some(s(1)));
        assert_eq!(
            penalty.refused_for(start + Duration::from_millis(400)),
            Some(Duration::from_millis(600))
        );
        assert_eq!(
            penalty.punish(start + Duration::from_millis(500)),
            None,
            "already refused"
        );
        let mut now = start + s(1);
        assert_eq!(penalty.refused_for(now), None);
        let mut seen = vec![];
        for _ in 0..9 {
            let backoff = penalty.punish(now).expect("not refused");
            seen.push(backoff.as_secs());
            now += backoff;
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 60, 60, 60, 60]);
        // Good behaviour: two minutes after the last refusal, two doublings
        // fewer than the cap's.
        assert_eq!(penalty.punish(now + s(120)), Some(s(16)));
        let mut fresh = Penalty::default();
        fresh.punish(start);
        assert_eq!(
            fresh.punish(start + s(1) + s(3_600)),
            Some(s(1)),
            "fully decayed"
        );
    }

    #[test]
    fn a_peer_queue_is_bounded_in_bytes() {
        let metrics = Arc::new(crate::metrics::Metrics::new(2, 0));
        let (network, _receivers) = Network::new(2, 0, metrics.clone());
        let frame: Frame = Arc::new(vec![0u8; PEER_QUEUE_BYTES_MAX / 4]);
        for _ in 0..5 {
            network.enqueue(1, &frame, 0, Lane::Consensus);
        }
        let dropped = || metrics.p2p_frames_dropped.get();
        assert_eq!(dropped(), 1, "the fifth quarter does not fit");
        assert_eq!(
            network.queued_bytes[1][0].load(Ordering::Relaxed),
            PEER_QUEUE_BYTES_MAX
        );
        network.dequeued(1, &frame, Lane::Consensus);
        network.enqueue(1, &frame, 0, Lane::Consensus);
        assert_eq!(dropped(), 1, "room again once a frame left the queue");
        // Gossip waits in its own, smaller lane: a full consensus lane does
        // not stop it, and it never takes a consensus frame's room.
        network.enqueue(1, &frame, 0, Lane::Gossip);
        assert_eq!(dropped(), 1);
        assert_eq!(
            network.queued_bytes[1][1].load(Ordering::Relaxed),
            GOSSIP_QUEUE_BYTES_MAX
        );
        network.enqueue(1, &frame, 0, Lane::Gossip);
        assert_eq!(dropped(), 2, "the gossip lane is full");
        network.enqueue(0, &frame, 0, Lane::Consensus);
        assert_eq!(
            network.queued_bytes[0][0].load(Ordering::Relaxed),
            0,
            "nothing to ourselves"
        );
    }
}
