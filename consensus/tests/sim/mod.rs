//! A deterministic simulator of n Cairn replicas: one u64 seed drives the
//! network (delay, reordering, duplication, loss, partitions), crashes and
//! restarts, each replica's clock (offset and drift from true time), and
//! Byzantine behaviour. Blocks are built, checked and executed by the
//! production block executor. Safety invariants are checked after every
//! step (no fork, valid certificates, no weak-key transfer, supply, bounded
//! buffers, no honest replica signing two different votes for one height,
//! view and kind); liveness once the faults stop.

pub mod byzantine;
pub mod ledger;
pub mod network;

use std::collections::BTreeMap;

use cairn_consensus::Message;

use cairn_consensus::limits::buffered_messages_max;
use cairn_consensus::{Action, Config, Input, Replica, SafetyState, SignedMessage};
use cairn_core::{Hash, Height, Keypair, PublicKey, ValidatorIndex, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use byzantine::{Behaviour, Faulty};
use ledger::SimLedger;
use network::{Network, Packet, Partition, Payload};

pub const CHAIN_ID: &str = "cairn-sim";
pub const TICK_MS: u64 = 10;
/// Copies of one signature in a flooded `Decided` certificate.
const DECIDED_FLOOD_COPIES: usize = 64;
/// Blocks a simulated node serves per sync request.
const SYNC_BATCH: usize = 8;
/// A punished peer's messages are refused this long at first, doubling
/// per offence up to [`BAN_MS_MAX`] (the node's p2p backoff, 1 s to 60 s).
const BAN_MS_MIN: u64 = 1_000;
const BAN_MS_MAX: u64 = 60_000;

/// Bytes of a p2p frame around a consensus message (the `Wire` tag and
/// length prefix), counted generously.
pub const FRAME_ENVELOPE_BYTES: usize = 16;

/// The p2p frame a consensus message travels in, in bytes.
pub fn frame_bytes(message: &SignedMessage) -> usize {
    cairn_core::codec::encoded_len(message) + FRAME_ENVELOPE_BYTES
}

/// A punished peer, as one node sees it.
#[derive(Clone, Copy, Debug, Default)]
struct Ban {
    offences: u32,
    until_ms: u64,
}

/// A planned crash of an honest node; it restarts at `restart_ms`.
#[derive(Clone, Debug)]
pub struct Crash {
    pub node: usize,
    pub at_ms: u64,
    pub restart_ms: u64,
}

/// What an honest node's disk loses in a [`DiskFault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskLoss {
    /// Blocks and safety record both (a wiped home, key kept): it restarts
    /// as a new validator, abstaining when `Scenario::abstain` is on.
    Wipe,
    /// The data folder goes back this many heights (a sled rollback after
    /// a power loss); the safety record is intact.
    RollBack { heights: usize },
}

/// A crash of an honest node that also loses data; it restarts at
/// `restart_ms`.
#[derive(Clone, Debug)]
pub struct DiskFault {
    pub node: usize,
    pub at_ms: u64,
    pub restart_ms: u64,
    pub loss: DiskLoss,
}

/// A replica's clock: true time plus `offset_ms`, running `drift_ppm`
/// parts per million fast (or slow, when negative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    pub offset_ms: i64,
    pub drift_ppm: i64,
}

impl Clock {
    /// The local time at true time `now_ms` (never below zero; never goes
    /// back, as drift is far above -1,000,000 ppm).
    pub fn local_ms(&self, now_ms: u64) -> u64 {
        let drifted = now_ms as i128 * (1_000_000 + self.drift_ppm as i128) / 1_000_000;
        (drifted + self.offset_ms as i128).max(0) as u64
    }
}

/// Everything a run does, derived from its seed or written by a scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub n: usize,
    pub byzantine: Vec<(usize, Behaviour)>,
    pub loss: f64,
    pub duplicate: f64,
    pub delay_max_ms: u64,
    pub partitions: Vec<Partition>,
    pub crashes: Vec<Crash>,
    /// Chance that an honest node crashes in the middle of carrying out
    /// the actions of one input (before heal); it restarts soon after.
    pub crash_mid_actions: f64,
    /// When the faults stop: loss and partitions end, crashed nodes restart.
    pub heal_ms: u64,
    /// Heights every honest node must gain after healing.
    pub extra_heights: u64,
    /// Simulated time allowed for that.
    pub liveness_budget_ms: u64,
    pub block_interval_ms: u64,
    pub view_timeout_ms: u64,
    /// When a client's transfer reaches every validator; every honest node
    /// must then commit it before the run ends (a censoring primary must be
    /// replaced).
    pub client_tx_at_ms: Option<u64>,
    /// Each replica's clock (missing ones: true time).
    pub clocks: Vec<Clock>,
    /// Twins (the Diem/Aptos method): each of these validators runs as two
    /// honest replicas with the same key; the second copy of `twins[k]` is
    /// simulated node `n + k`. Partitions then list `n + twins.len()`
    /// nodes, so the two copies can sit on different sides and sign real
    /// conflicting proposals and votes. Twins count as Byzantine.
    pub twins: Vec<usize>,
    /// Crashes that lose the disk, in whole or in part.
    pub disk_faults: Vec<DiskFault>,
    /// Whether a node restarted without a safety record abstains (the
    /// rule of `cairn_consensus`'s `abstain.rs`); off only to show what
    /// happens without it.
    pub abstain: bool,
    /// The largest frame the network carries (the p2p limit, core
    /// `P2P_FRAME_BYTES_MAX`, unless a scenario lowers it): a larger
    /// message is dropped, as p2p closes a connection that sends one, and
    /// an honest replica sending one breaks an invariant.
    pub frame_bytes_max: usize,
    /// Extra transfers in every block (big blocks).
    pub filler_txs: usize,
}

impl Scenario {
    /// A fault-free scenario to build on.
    pub fn calm(name: &str, seed: u64, n: usize) -> Scenario {
        Scenario {
            name: name.into(),
            seed,
            n,
            byzantine: vec![],
            loss: 0.0,
            duplicate: 0.0,
            delay_max_ms: 20,
            partitions: vec![],
            crashes: vec![],
            crash_mid_actions: 0.0,
            heal_ms: 1_000,
            extra_heights: 5,
            liveness_budget_ms: 60_000,
            block_interval_ms: 60,
            view_timeout_ms: 300,
            client_tx_at_ms: None,
            clocks: vec![],
            twins: vec![],
            disk_faults: vec![],
            abstain: true,
            frame_bytes_max: cairn_core::limits::P2P_FRAME_BYTES_MAX,
            filler_txs: 0,
        }
    }

    /// Simulated nodes: one per validator, plus the second copy of each twin.
    pub fn nodes(&self) -> usize {
        self.n + self.twins.len()
    }

    /// Everything random: n is 4 for even seeds, 7 for odd ones.
    pub fn random(seed: u64) -> Scenario {
        let n = if seed.is_multiple_of(2) { 4 } else { 7 };
        Scenario::random_with("random", seed, n)
    }

    /// A random run with `n` validators (for n = 5 or 6, not `3f + 1`, the
    /// quorum is larger than `2f + 1`): named `random_n<n>`.
    pub fn random_n(seed: u64, n: usize) -> Scenario {
        Scenario::random_with(&format!("random_n{n}"), seed, n)
    }

    fn random_with(name: &str, seed: u64, n: usize) -> Scenario {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5ca1_ab1e);
        let mut s = Scenario::calm(name, seed, n);
        s.extra_heights = 4;
        s.block_interval_ms = 100;
        s.heal_ms = rng.gen_range(700..2_000);
        s.loss = [0.0, 0.05, 0.2, 0.4][rng.gen_range(0..4)];
        s.duplicate = [0.0, 0.1, 0.3][rng.gen_range(0..3)];
        s.delay_max_ms = [5, 20, 60, 150][rng.gen_range(0..4)];
        let f = cairn_core::max_faulty(n);
        // Most runs have a Byzantine validator, so each behaviour runs in
        // a meaningful share of them.
        let faulty = if rng.gen_bool(0.15) {
            0
        } else {
            rng.gen_range(1..=f.max(1)).min(f)
        };
        let mut nodes: Vec<usize> = (0..n).collect();
        for _ in 0..faulty {
            let node = nodes.remove(rng.gen_range(0..nodes.len()));
            s.byzantine
                .push((node, byzantine::ALL[rng.gen_range(0..byzantine::ALL.len())]));
        }
        // A fifth of the runs with faulty validators make them twins, with
        // one to three partitions in a row that part each pair.
        if faulty > 0 && rng.gen_bool(0.2) {
            s.twins = s.byzantine.drain(..).map(|(node, _)| node).collect();
            let phase_ms = s.heal_ms / 3;
            for phase in 0..rng.gen_range(1..=3u64) {
                let mut groups: Vec<u8> = (0..s.nodes()).map(|_| rng.gen_range(0..2)).collect();
                for (k, twin) in s.twins.iter().enumerate() {
                    groups[n + k] = 1 - groups[*twin];
                }
                s.partitions.push(Partition {
                    start_ms: phase * phase_ms,
                    end_ms: (phase + 1) * phase_ms,
                    groups,
                });
            }
        } else if rng.gen_bool(0.4) {
            let start_ms = rng.gen_range(0..s.heal_ms);
            let end_ms = rng.gen_range(start_ms..=s.heal_ms);
            let groups = (0..n).map(|_| rng.gen_range(0..2)).collect();
            s.partitions.push(Partition {
                start_ms,
                end_ms,
                groups,
            });
        }
        if rng.gen_bool(0.5) {
            for _ in 0..rng.gen_range(1..=2) {
                let node = nodes[rng.gen_range(0..nodes.len())];
                let at_ms = rng.gen_range(0..s.heal_ms);
                let restart_ms = rng.gen_range(at_ms..=s.heal_ms);
                s.crashes.push(Crash {
                    node,
                    at_ms,
                    restart_ms,
                });
            }
        }
        if rng.gen_bool(0.3) {
            s.crash_mid_actions = 0.002;
        }
        if rng.gen_bool(0.5) {
            s.client_tx_at_ms = Some(rng.gen_range(0..s.heal_ms));
        }
        s.clocks = random_clocks(&mut rng, n);
        // Three tenths of the runs lose an honest node's disk: its whole
        // home (it restarts as a new validator and abstains), where the
        // other faults leave room for one more, or part of its data folder
        // (its record intact).
        if rng.gen_bool(0.3) {
            let node = nodes[rng.gen_range(0..nodes.len())];
            let at_ms = rng.gen_range(0..s.heal_ms);
            let restart_ms = rng.gen_range(at_ms..=s.heal_ms);
            // A wiped validator abstains for a few heights, so it counts
            // as one more fault: only beside faulty validators that still
            // vote, change views and are not cut off (a peer punished for
            // what it signed is refused for a doubling backoff, which
            // silences it as surely as withholding), else there is no
            // quorum to wait for.
            let cooperative = s.byzantine.iter().all(|(_, b)| {
                matches!(
                    b,
                    Behaviour::Equivocate | Behaviour::Censor | Behaviour::WeakKeyTheft
                )
            });
            let room = s.byzantine.len() + s.twins.len() < f || (s.twins.is_empty() && cooperative);
            let loss = if rng.gen_bool(0.8) && room {
                DiskLoss::Wipe
            } else {
                DiskLoss::RollBack {
                    heights: rng.gen_range(1..=3),
                }
            };
            s.disk_faults.push(DiskFault {
                node,
                at_ms,
                restart_ms,
                loss,
            });
        }
        s
    }

    /// The local time of simulated node `i` at true time `now_ms` (the
    /// second copy of a twin: true time).
    pub fn local_ms(&self, i: usize, now_ms: u64) -> u64 {
        self.clocks
            .get(i)
            .copied()
            .unwrap_or_default()
            .local_ms(now_ms)
    }

    pub fn replay_hint(&self) -> String {
        format!(
            "scenario {:?} failed with seed {}: replay with `CAIRN_SIM_SEED={} CAIRN_SIM_SCENARIO={} cargo test -p cairn-consensus --test simulator replay -- --nocapture`",
            self.name, self.seed, self.seed, self.name
        )
    }
}

/// Clocks for a random run: most close to true time (a few ms off and up
/// to 0.1 % drift), some seconds off, and now and then one far enough off
/// that its blocks are beyond [`cairn_consensus::TIMESTAMP_FUTURE_MS_MAX`]
/// of another honest replica's clock for a while.
fn random_clocks(rng: &mut StdRng, n: usize) -> Vec<Clock> {
    let spread_ms: i64 = match rng.gen_range(0..10) {
        0..=5 => 20,
        6..=8 => 5_000,
        _ => 20_000,
    };
    (0..n)
        .map(|_| Clock {
            offset_ms: rng.gen_range(-spread_ms..=spread_ms),
            drift_ppm: rng.gen_range(-1_000..=1_000),
        })
        .collect()
}

/// What a finished run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub heights: Vec<Height>,
    /// Each node's view at the end (`None`: crashed then).
    pub views: Vec<Option<u64>>,
    pub end_ms: u64,
    pub max_view: u64,
    pub sync_responses: u64,
    pub commits_before_heal: u64,
    pub restarts: u64,
    pub max_buffered: usize,
    /// When each height (index h - 1) was first committed by an honest node.
    pub agreed_at_ms: Vec<u64>,
    /// Each agreed height (index h - 1): the view its block was proposed
    /// in, its proposer, the view of its commit certificate and how many
    /// validators signed that certificate.
    pub agreed_blocks: Vec<AgreedBlock>,
    /// Packets lost because a partition started while they were in flight.
    pub dropped_in_flight: u64,
    /// Pre-prepares a `WeakKeyTheft` primary sent with its theft block.
    pub weak_key_theft_proposals: u64,
    /// Blocks a `TimestampGame` primary timed past the bound for some.
    pub timestamp_games: u64,
    /// Proposals and votes for one (height, view, kind) that the two copies
    /// of a twin signed for different blocks.
    pub twin_conflicts: u64,
    /// `Decided` messages a `DecidedFlood` node sent.
    pub decided_flood_messages: u64,
    /// Disk faults that happened (wiped homes, rolled-back data folders).
    pub disk_faults: u64,
    /// Whether some replica abstained (lost its record) at some point.
    pub abstained: bool,
    /// New views a `ForgeNewView` node forged (rewritten or unprompted).
    pub forged_new_views: u64,
    /// The largest frame of a message an honest replica sent.
    pub max_honest_frame_bytes: usize,
    /// The largest new view an honest replica sent, and what it would have
    /// weighed when each view change carried its certificate's block (the
    /// format before one block per message).
    pub max_new_view_bytes: usize,
    pub max_new_view_bytes_block_per_view_change: usize,
    /// Messages dropped for being larger than a frame.
    pub oversized_dropped: u64,
    /// Peers punished (disconnected and refused) by a node.
    pub punishments: u64,
    /// Messages dropped because their sender was refused at the receiver.
    pub refused_messages: u64,
}

/// How one height was decided (see [`Report::agreed_blocks`]).
#[derive(Clone, Debug)]
pub struct AgreedBlock {
    pub height: u64,
    pub at_ms: u64,
    pub proposal_view: u64,
    pub proposer: usize,
    pub commit_view: u64,
    pub signers: usize,
}

struct Node {
    /// The validator this node runs (twins: two nodes, one validator).
    validator: usize,
    key: Keypair,
    replica: Option<Replica>,
    ledger: SimLedger,
    persisted: SafetyState,
    restart_ms: Option<u64>,
    behaviour: Option<Behaviour>,
    /// Committed heights already checked against the agreed chain.
    checked: usize,
    /// A Byzantine node's memory across messages.
    byzantine: byzantine::Memory,
    /// Whether the record on disk says the replica abstains (a wiped home
    /// writes that at once; every record persisted while abstaining keeps
    /// it), so a restart abstains again.
    persisted_abstaining: bool,
    /// Whether the running replica abstained after its last input.
    abstaining: bool,
}

pub struct Sim {
    s: Scenario,
    rng: StdRng,
    now_ms: u64,
    nodes: Vec<Node>,
    net: Network,
    validators: Vec<PublicKey>,
    /// The first hash an honest node committed at each height.
    agreed: BTreeMap<Height, Hash>,
    supply: u128,
    report: Report,
    /// Every vote an honest replica signed: (node, height, view, kind) to
    /// the hash voted for; kind 0 proposal, 1 prepare, 2 commit.
    votes: BTreeMap<(usize, Height, u64, u8), Hash>,
    /// The last such vote of each twin validator (either copy).
    twin_votes: BTreeMap<(usize, Height, u64, u8), Hash>,
    /// A broken invariant found while carrying out actions.
    violation: Option<String>,
    /// (node, validator): the validator's messages refused at the node.
    bans: BTreeMap<(usize, usize), Ban>,
    /// Honest validators that commit-voted each (height, view, hash).
    commit_voters: BTreeMap<(Height, View, Hash), std::collections::BTreeSet<usize>>,
    /// Per height, the (view, hash) pairs locked: see `note_commit_vote`.
    locks: BTreeMap<Height, Vec<(View, Hash)>>,
    /// Per height, honest prepares made on a new view's word: (node, view,
    /// hash).
    justified_prepares: BTreeMap<Height, Vec<(usize, View, Hash)>>,
}

impl Sim {
    pub fn new(s: Scenario) -> Sim {
        let keys: Vec<Keypair> = (0..s.n)
            .map(|i| Keypair::from_seed([i as u8 + 1; 32]))
            .collect();
        let validators: Vec<PublicKey> = keys.iter().map(|k| k.public()).collect();
        let net = Network::new(s.loss, s.duplicate, s.delay_max_ms, s.partitions.clone());
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(s.seed),
            now_ms: 0,
            nodes: vec![],
            net,
            validators,
            agreed: BTreeMap::new(),
            supply: SimLedger::new(CHAIN_ID).total_supply(),
            report: Report::default(),
            votes: BTreeMap::new(),
            twin_votes: BTreeMap::new(),
            violation: None,
            bans: BTreeMap::new(),
            commit_voters: BTreeMap::new(),
            locks: BTreeMap::new(),
            justified_prepares: BTreeMap::new(),
            s,
        };
        let copies = sim.s.twins.clone();
        let nodes = (0..sim.s.n).chain(copies);
        for i in nodes {
            let key = keys[i].clone();
            let behaviour = match sim.s.twins.contains(&i) {
                true => Some(Behaviour::Twin),
                false => sim
                    .s
                    .byzantine
                    .iter()
                    .find(|(b, _)| *b == i)
                    .map(|(_, b)| *b),
            };
            let replica = Replica::new(sim.config(), key.clone(), SafetyState::default());
            let mut ledger = SimLedger::new(CHAIN_ID);
            ledger.filler = sim.s.filler_txs;
            sim.nodes.push(Node {
                validator: i,
                key,
                replica: Some(replica),
                ledger,
                persisted: SafetyState::default(),
                restart_ms: None,
                behaviour,
                checked: 0,
                byzantine: byzantine::Memory::default(),
                persisted_abstaining: false,
                abstaining: false,
            });
        }
        sim
    }

    fn config(&self) -> Config {
        Config {
            chain_id: CHAIN_ID.into(),
            validators: self.validators.clone(),
            block_interval_ms: self.s.block_interval_ms,
            view_timeout_ms: self.s.view_timeout_ms,
            block_txs_max: ledger::BLOCK_TXS_MAX.max(2 * (self.s.filler_txs + 2)),
        }
    }

    fn honest(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].behaviour.is_none())
    }

    /// The simulated nodes that run `validator` (two for a twin).
    fn nodes_of(&self, validator: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(move |i| self.nodes[*i].validator == validator)
    }

    /// Runs the scenario: the fault phase, then heals and demands progress.
    pub fn run(mut self) -> Result<Report, String> {
        let mut next_tick_ms = 0;
        let mut target: Option<Height> = None;
        loop {
            if self.net.next_time().is_some_and(|t| t < next_tick_ms) {
                let (at, packet) = self.net.pop().expect("a packet");
                self.now_ms = at;
                if let Some(packet) = packet {
                    self.deliver(packet);
                }
            } else {
                self.now_ms = next_tick_ms;
                self.tick_all();
                next_tick_ms += TICK_MS;
            }
            self.check_safety()?;
            if target.is_none() && self.now_ms >= self.s.heal_ms {
                target = Some(self.heal());
            }
            if let Some(target) = target {
                if self.honest().all(|i| {
                    let ledger = &self.nodes[i].ledger;
                    ledger.height() >= target
                        && ledger
                            .client
                            .as_ref()
                            .is_none_or(|c| c.committed_at.is_some())
                }) {
                    return Ok(self.finish());
                }
                if self.now_ms > self.s.heal_ms + self.s.liveness_budget_ms {
                    return Err(self.stuck(target));
                }
            }
        }
    }

    fn finish(mut self) -> Report {
        self.report.heights = self.nodes.iter().map(|n| n.ledger.height()).collect();
        self.report.end_ms = self.now_ms;
        self.report.dropped_in_flight = self.net.dropped_in_flight;
        self.report.views = self
            .nodes
            .iter()
            .map(|n| n.replica.as_ref().map(|r| r.view().0))
            .collect();
        self.report
    }

    fn stuck(&self, target: Height) -> String {
        let states: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let r = n.replica.as_ref();
                format!(
                    "node {i} {:?}: height {} view {:?} syncing {:?} abstaining {:?} (target \
                     {:?}) client tx committed at {:?}",
                    n.behaviour,
                    n.ledger.height(),
                    r.map(|r| r.view()),
                    r.map(|r| r.is_syncing()),
                    r.map(|r| r.is_abstaining()),
                    r.and_then(|r| r.abstain_target()),
                    n.ledger.client.as_ref().map(|c| c.committed_at)
                )
            })
            .collect();
        format!(
            "liveness: honest nodes did not reach height {target} (and commit the client's \
             transfer, if any) by {} ms\n{}",
            self.now_ms,
            states.join("\n")
        )
    }

    /// Ends the fault phase; returns the height all honest nodes must reach.
    fn heal(&mut self) -> Height {
        self.net.loss = 0.0;
        self.net.end_partitions(self.now_ms);
        self.s.crash_mid_actions = 0.0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_none() {
                self.restart(i);
            }
        }
        self.report.commits_before_heal = self.agreed.len() as u64;
        let top = self.honest().map(|i| self.nodes[i].ledger.height()).max();
        Height(top.unwrap_or_default().0 + self.s.extra_heights)
    }

    fn tick_all(&mut self) {
        if self.s.client_tx_at_ms.is_some_and(|t| t <= self.now_ms) {
            self.s.client_tx_at_ms = None;
            for i in 0..self.nodes.len() {
                let local_ms = self.s.local_ms(i, self.now_ms);
                self.nodes[i].ledger.submit_client_tx(local_ms);
            }
        }
        let (due, later): (Vec<Crash>, Vec<Crash>) = self
            .s
            .crashes
            .drain(..)
            .partition(|c| c.at_ms <= self.now_ms);
        self.s.crashes = later;
        for crash in due {
            if self.now_ms < self.s.heal_ms && self.nodes[crash.node].replica.is_some() {
                self.crash(crash.node, crash.restart_ms);
            }
        }
        let (due, later): (Vec<DiskFault>, Vec<DiskFault>) = self
            .s
            .disk_faults
            .drain(..)
            .partition(|c| c.at_ms <= self.now_ms);
        self.s.disk_faults = later;
        for fault in due {
            if self.now_ms < self.s.heal_ms && self.nodes[fault.node].replica.is_some() {
                self.lose_disk(fault.node, fault.loss, fault.restart_ms);
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].restart_ms.is_some_and(|t| t <= self.now_ms) {
                self.restart(i);
            }
            if self.nodes[i].replica.is_some() {
                match self.nodes[i].behaviour {
                    Some(Behaviour::Flood) => self.flood(i),
                    Some(Behaviour::DecidedFlood) => self.decided_flood(i),
                    Some(Behaviour::ForgeNewView) => self.prepare_alternatives(i),
                    _ => {}
                }
            }
            let now_ms = self.s.local_ms(i, self.now_ms);
            self.input(i, Input::Tick { now_ms });
        }
    }

    fn crash(&mut self, i: usize, restart_ms: u64) {
        let node = &mut self.nodes[i];
        node.replica = None;
        node.restart_ms = Some(restart_ms.max(self.now_ms + 1));
    }

    /// Crashes node `i` and takes from its disk what `loss` says.
    fn lose_disk(&mut self, i: usize, loss: DiskLoss, restart_ms: u64) {
        self.crash(i, restart_ms);
        let node = &mut self.nodes[i];
        match loss {
            DiskLoss::Wipe => {
                let client = node.ledger.client.clone();
                node.ledger = SimLedger::new(CHAIN_ID);
                node.ledger.client = client.map(|c| ledger::ClientTx {
                    committed_at: None,
                    ..c
                });
                node.persisted = SafetyState::default();
                node.persisted_abstaining = self.s.abstain;
            }
            DiskLoss::RollBack { heights } => {
                let keep = node.ledger.blocks.len().saturating_sub(heights);
                node.ledger = node.ledger.rolled_back(keep);
            }
        }
        node.checked = 0;
        self.report.disk_faults += 1;
    }

    /// Rebuilds the replica from what it persisted and its durable ledger.
    fn restart(&mut self, i: usize) {
        let config = self.config();
        let node = &mut self.nodes[i];
        let new = if node.persisted_abstaining {
            Replica::new_fresh
        } else {
            Replica::new
        };
        node.replica = Some(new(config, node.key.clone(), node.persisted.clone()));
        node.restart_ms = None;
        self.report.restarts += 1;
    }

    fn deliver(&mut self, packet: Packet) {
        let Packet { from, to, payload } = packet;
        match payload {
            Payload::Message(m) => {
                let peer = ValidatorIndex(self.nodes[from].validator as u16);
                let banned = self
                    .bans
                    .get(&(to, peer.get()))
                    .is_some_and(|b| b.until_ms > self.now_ms);
                if banned {
                    self.report.refused_messages += 1;
                    return;
                }
                let forger = self.nodes[to].behaviour == Some(Behaviour::ForgeNewView);
                if forger && self.nodes[to].replica.is_some() {
                    if let Message::ViewChange { .. } = m.message {
                        self.answer_lagging(to, &m);
                    }
                }
                self.input(to, Input::PeerMessage { peer, message: *m })
            }
            Payload::SyncResponse(blocks) => {
                self.report.sync_responses += 1;
                let from = ValidatorIndex(self.nodes[from].validator as u16);
                self.input(to, Input::SyncResponse { from, blocks });
            }
            Payload::SyncRequest { from_height } => {
                // Certificates hold the server's commit signatures: a node
                // that withholds its commit votes does not serve them.
                let withholds = matches!(
                    self.nodes[to].behaviour,
                    Some(
                        Behaviour::WithholdVotes
                            | Behaviour::TimestampGame
                            | Behaviour::ForgeNewView
                            | Behaviour::Oversize
                    )
                );
                if self.nodes[to].replica.is_some() && !withholds {
                    let mut blocks = self.nodes[to].ledger.blocks_from(from_height, SYNC_BATCH);
                    let liar = self.nodes[to].behaviour == Some(Behaviour::BadSignatures);
                    if liar && !blocks.is_empty() && self.rng.gen_bool(0.5) {
                        let i = self.rng.gen_range(0..blocks.len());
                        blocks[i].1.signatures[0].signature.0[0] ^= 1;
                    }
                    let packet = Packet {
                        from: to,
                        to: from,
                        payload: Payload::SyncResponse(blocks),
                    };
                    self.net.send(&mut self.rng, self.now_ms, packet);
                }
            }
        }
    }

    /// Hands one input to node `i` and carries out its actions in order,
    /// unless it crashes part way (then the rest is lost).
    fn input(&mut self, i: usize, input: Input) {
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let actions = replica.handle(&mut node.ledger, input);
        node.abstaining = replica.is_abstaining();
        if node.abstaining {
            self.report.abstained = true;
        }
        self.report.max_view = self.report.max_view.max(replica.view().0);
        if node.behaviour.is_none() {
            let buffered = replica.buffered_message_count();
            self.report.max_buffered = self.report.max_buffered.max(buffered);
        }
        let mut cut = actions.len();
        let crash_mid = node.behaviour.is_none()
            && self.s.crash_mid_actions > 0.0
            && !actions.is_empty()
            && self.rng.gen_bool(self.s.crash_mid_actions);
        if crash_mid {
            cut = self.rng.gen_range(0..actions.len());
        }
        for action in actions.into_iter().take(cut) {
            self.act(i, action);
        }
        if crash_mid {
            let restart_ms = self.now_ms + self.rng.gen_range(10..500);
            self.crash(i, restart_ms);
        }
    }

    fn act(&mut self, i: usize, action: Action) {
        match action {
            Action::PersistSafety(state) => {
                let old = &self.nodes[i].persisted;
                assert!(
                    (state.height(), state.view()) >= (old.height(), old.view()),
                    "persisted safety state went back: {old:?} -> {state:?}"
                );
                self.nodes[i].persisted = state;
                self.nodes[i].persisted_abstaining = self.nodes[i].abstaining;
            }
            Action::Broadcast(m) => {
                self.note_vote(i, &m);
                self.note_size(i, &m);
                for (to, m, delay_ms) in self.rewrite(i, m) {
                    self.send_message_after(i, to, m, delay_ms);
                }
            }
            Action::Send { to, message } => {
                self.note_vote(i, &message);
                self.note_size(i, &message);
                // A `Decided` carries the sender's own commit signature: a
                // node that withholds its commit votes withholds it too.
                let withholds = matches!(
                    self.nodes[i].behaviour,
                    Some(
                        Behaviour::WithholdVotes
                            | Behaviour::TimestampGame
                            | Behaviour::ForgeNewView
                            | Behaviour::Oversize
                    )
                );
                if !(withholds && matches!(message.message, Message::Decided { .. })) {
                    self.send_message(i, to.get(), message)
                }
            }
            Action::RequestSync { to, from_height } => {
                let copies: Vec<usize> = self.nodes_of(to.get()).collect();
                for to in copies {
                    let packet = Packet {
                        from: i,
                        to,
                        payload: Payload::SyncRequest { from_height },
                    };
                    self.net.send(&mut self.rng, self.now_ms, packet);
                }
            }
            Action::Committed { height, hash } => {
                let blocks = &self.nodes[i].ledger.blocks;
                let stored = blocks.get(height.0 as usize - 1).map(|(b, _)| b.hash());
                assert_eq!(stored, Some(hash), "Committed names a committed block");
            }
            Action::Punish { peer, offence } => self.punish(i, peer.get(), offence),
        }
    }

    /// Node `i` found validator `peer` sending `offence`: like the node's
    /// p2p layer, it refuses the peer's messages for a backoff that doubles
    /// per offence ([`BAN_MS_MIN`] to [`BAN_MS_MAX`]). An honest replica
    /// must never punish an honest validator.
    fn punish(&mut self, i: usize, peer: usize, offence: cairn_consensus::Offence) {
        let honest_peer =
            !self.s.twins.contains(&peer) && !self.s.byzantine.iter().any(|(b, _)| *b == peer);
        if self.nodes[i].behaviour.is_none() && honest_peer && self.violation.is_none() {
            self.violation = Some(format!(
                "honest node {i} punished honest validator {peer} for {offence}"
            ));
        }
        let ban = self.bans.entry((i, peer)).or_default();
        if ban.until_ms > self.now_ms {
            return;
        }
        let ban_ms = (BAN_MS_MIN << ban.offences.min(16)).min(BAN_MS_MAX);
        ban.offences += 1;
        ban.until_ms = self.now_ms + ban_ms;
        self.report.punishments += 1;
    }

    fn send_message(&mut self, from: usize, to: usize, message: SignedMessage) {
        self.send_message_after(from, to, message, 0);
    }

    /// Sends a message from node `from` to every node of validator `to`,
    /// leaving `delay_ms` from now (a Byzantine sender choosing when each
    /// peer gets it).
    fn send_message_after(
        &mut self,
        from: usize,
        to: usize,
        message: SignedMessage,
        delay_ms: u64,
    ) {
        if frame_bytes(&message) > self.s.frame_bytes_max {
            // p2p closes a connection that sends a frame over the limit.
            self.report.oversized_dropped += 1;
            return;
        }
        let copies: Vec<usize> = self.nodes_of(to).collect();
        for to in copies {
            let packet = Packet {
                from,
                to,
                payload: Payload::Message(Box::new(message.clone())),
            };
            self.net
                .send_after(&mut self.rng, self.now_ms, packet, delay_ms);
        }
    }

    /// The invariant that every message an honest replica sends fits in a
    /// p2p frame; also measures new views against the older format.
    fn note_size(&mut self, i: usize, message: &SignedMessage) {
        let honest = matches!(self.nodes[i].behaviour, None | Some(Behaviour::Twin));
        if !honest {
            return;
        }
        let bytes = frame_bytes(message);
        let r = &mut self.report;
        r.max_honest_frame_bytes = r.max_honest_frame_bytes.max(bytes);
        if let Message::NewView {
            view_changes,
            proposal,
            ..
        } = &message.message
        {
            let block_bytes = cairn_core::codec::encoded_len(proposal);
            let certified = view_changes
                .iter()
                .filter(|vc| {
                    matches!(
                        vc.message,
                        Message::ViewChange {
                            prepared: Some(_),
                            ..
                        }
                    )
                })
                .count();
            r.max_new_view_bytes = r.max_new_view_bytes.max(bytes);
            r.max_new_view_bytes_block_per_view_change = r
                .max_new_view_bytes_block_per_view_change
                .max(bytes + certified * block_bytes);
        }
        if bytes > self.s.frame_bytes_max && self.violation.is_none() {
            self.violation = Some(format!(
                "honest node {i} sent a {} of {bytes} bytes, over the {}-byte frame limit",
                message_kind(&message.message),
                self.s.frame_bytes_max
            ));
        }
    }

    /// The invariant that no honest replica signs two different votes (or
    /// proposals) for one (height, view, kind), across restarts.
    fn note_vote(&mut self, i: usize, message: &SignedMessage) {
        let twin = self.nodes[i].behaviour == Some(Behaviour::Twin);
        if !(self.nodes[i].behaviour.is_none() || twin)
            || message.from.get() != self.nodes[i].validator
        {
            return;
        }
        let (kind, height, view, hash) = match &message.message {
            Message::PrePrepare {
                view,
                height,
                block,
            } => (0, *height, view.0, block.hash()),
            Message::Prepare {
                view,
                height,
                block_hash,
            } => (1, *height, view.0, *block_hash),
            Message::Commit {
                view,
                height,
                block_hash,
            } => (2, *height, view.0, *block_hash),
            _ => return,
        };
        if twin {
            let key = (self.nodes[i].validator, height, view, kind);
            let signed = *self.twin_votes.entry(key).or_insert(hash);
            if signed != hash {
                self.report.twin_conflicts += 1;
                self.twin_votes.insert(key, hash);
            }
            return;
        }
        let signed = *self.votes.entry((i, height, view, kind)).or_insert(hash);
        if signed != hash && self.violation.is_none() {
            let kind = ["proposal", "prepare", "commit"][kind as usize];
            self.violation = Some(format!(
                "double vote: honest node {i} signed two {kind}s at height {height} view {view}: {signed} and {hash}"
            ));
        }
        match kind {
            1 => self.note_prepare(i, height, View(view), hash),
            2 => self.note_commit_vote(i, height, View(view), hash),
            _ => {}
        }
    }

    /// The lock invariant, part one: enough honest replicas commit-voted
    /// `hash` at (height, view) that every quorum of view changes holds one
    /// of them (n - quorum + 1), so `hash` is locked from `view` on.
    fn note_commit_vote(&mut self, i: usize, height: Height, view: View, hash: Hash) {
        let voters = self.commit_voters.entry((height, view, hash)).or_default();
        voters.insert(self.nodes[i].validator);
        let n = self.s.n;
        if voters.len() < n - cairn_core::quorum(n) + 1 {
            return;
        }
        let locks = self.locks.entry(height).or_default();
        if locks.contains(&(view, hash)) {
            return;
        }
        locks.push((view, hash));
        let broken = self
            .justified_prepares
            .get(&height)
            .into_iter()
            .flatten()
            .find(|(_, v, h)| *v > view && *h != hash)
            .copied();
        if let Some((node, v, h)) = broken {
            self.lock_broken(node, height, v, h, view, hash);
        }
    }

    /// The lock invariant, part two: an honest replica prepares, on a new
    /// view's word (a view other than the one it started the height in),
    /// only the block locked in any lower view (PBFT's view-change safety:
    /// every quorum of view changes holds a certificate of it, and the
    /// highest certificate is its). Checks the honest side of every new
    /// view, even where no fork follows.
    fn note_prepare(&mut self, i: usize, height: Height, view: View, hash: Hash) {
        let state = &self.nodes[i].persisted;
        if state.height() != height || state.start_view() == view {
            return;
        }
        self.justified_prepares
            .entry(height)
            .or_default()
            .push((i, view, hash));
        let broken = self
            .locks
            .get(&height)
            .into_iter()
            .flatten()
            .find(|(v, h)| *v < view && *h != hash)
            .copied();
        if let Some((locked_view, locked)) = broken {
            self.lock_broken(i, height, view, hash, locked_view, locked);
        }
    }

    fn lock_broken(
        &mut self,
        node: usize,
        height: Height,
        view: View,
        hash: Hash,
        locked_view: View,
        locked: Hash,
    ) {
        if self.violation.is_none() {
            self.violation = Some(format!(
                "lock broken: honest node {node} prepared {hash} at height {height} in view {} \
                 on a new view's word, but {locked} was locked (commit-voted by enough honest \
                 replicas) in view {}",
                view.0, locked_view.0
            ));
        }
    }

    /// Honest nodes broadcast as is; Byzantine ones rewrite, and may
    /// delay what some peers get.
    fn rewrite(&mut self, i: usize, message: SignedMessage) -> Vec<(usize, SignedMessage, u64)> {
        let local_ms = self.s.local_ms(i, self.now_ms);
        let node = &mut self.nodes[i];
        let me = node.validator;
        let honest = matches!(node.behaviour, None | Some(Behaviour::Twin));
        let Some(behaviour) = node.behaviour.filter(|_| !honest) else {
            return (0..self.s.n)
                .filter(|p| *p != me)
                .map(|p| (p, message.clone(), 0))
                .collect();
        };
        if behaviour == Behaviour::TimestampGame {
            let out = byzantine::timestamp_game(
                me,
                self.s.n,
                &node.key,
                &node.ledger,
                local_ms,
                &mut node.byzantine,
                message,
            );
            if out.iter().any(|(_, _, delay_ms)| *delay_ms > 0) {
                self.report.timestamp_games += 1;
            }
            return out;
        }
        if behaviour == Behaviour::WeakKeyTheft
            && matches!(message.message, cairn_consensus::Message::PrePrepare { .. })
        {
            self.report.weak_key_theft_proposals += 1;
        }
        let faulty = Faulty {
            me,
            n: self.s.n,
            key: &node.key,
            ledger: &node.ledger,
            now_ms: local_ms,
        };
        let memory = &mut node.byzantine;
        let out = match (behaviour, &message.message) {
            (Behaviour::Oversize, _) => {
                byzantine::oversize(&faulty, self.s.frame_bytes_max, message)
            }
            (Behaviour::ForgeNewView, Message::ViewChange { .. }) => {
                byzantine::forge_view_change(&faulty, &mut self.rng, memory, message)
            }
            (Behaviour::ForgeNewView, Message::Prepare { height, .. })
                if !memory.holds_certificate(*height) =>
            {
                vec![]
            }
            (Behaviour::ForgeNewView, Message::NewView { .. }) => {
                self.report.forged_new_views += 1;
                byzantine::forge_new_view(&faulty, &mut self.rng, memory, message)
            }
            _ => byzantine::rewrite(behaviour, &faulty, &mut self.rng, message),
        };
        out.into_iter().map(|(to, m)| (to, m, 0)).collect()
    }

    fn flood(&mut self, i: usize) {
        let node = &self.nodes[i];
        let faulty = Faulty {
            me: node.validator,
            n: self.s.n,
            key: &node.key,
            ledger: &node.ledger,
            now_ms: self.s.local_ms(i, self.now_ms),
        };
        let out = byzantine::flood(&faulty, &mut self.rng, &self.net.recent);
        for (to, m) in out {
            self.send_message(i, to, m);
        }
    }

    fn prepare_alternatives(&mut self, i: usize) {
        let local_ms = self.s.local_ms(i, self.now_ms);
        let node = &mut self.nodes[i];
        let Some(view) = node.replica.as_ref().map(|r| r.view()) else {
            return;
        };
        let faulty = Faulty {
            me: node.validator,
            n: self.s.n,
            key: &node.key,
            ledger: &node.ledger,
            now_ms: local_ms,
        };
        byzantine::prepare_alternatives(&faulty, &mut node.byzantine, view);
    }

    /// A `ForgeNewView` node `i` received view change `vc`: it may answer
    /// a replica still at a decided height with a forged new view.
    fn answer_lagging(&mut self, i: usize, vc: &SignedMessage) {
        let local_ms = self.s.local_ms(i, self.now_ms);
        let node = &mut self.nodes[i];
        let faulty = Faulty {
            me: node.validator,
            n: self.s.n,
            key: &node.key,
            ledger: &node.ledger,
            now_ms: local_ms,
        };
        if let Some(forged) =
            byzantine::answer_lagging_view_change(&faulty, &mut self.rng, &mut node.byzantine, vc)
        {
            self.report.forged_new_views += 1;
            self.send_message(i, vc.from.get(), forged);
        }
    }

    fn decided_flood(&mut self, i: usize) {
        let node = &self.nodes[i];
        let faulty = Faulty {
            me: node.validator,
            n: self.s.n,
            key: &node.key,
            ledger: &node.ledger,
            now_ms: self.s.local_ms(i, self.now_ms),
        };
        for (to, m) in byzantine::decided_flood(&faulty, DECIDED_FLOOD_COPIES) {
            self.report.decided_flood_messages += 1;
            self.send_message(i, to, m);
        }
    }

    /// After every step: honest nodes agree on every committed height, every
    /// committed block carries a valid certificate and no transfer touching
    /// the weak all-zero key, supply is conserved, and buffers stay within
    /// their bounds.
    fn check_safety(&mut self) -> Result<(), String> {
        if let Some(violation) = self.violation.take() {
            return Err(violation);
        }
        let limit = buffered_messages_max(self.s.n);
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if node.behaviour.is_some() {
                continue;
            }
            if let Some(r) = &node.replica {
                if r.buffered_message_count() > limit {
                    return Err(format!(
                        "node {i} buffers {} > {limit}",
                        r.buffered_message_count()
                    ));
                }
            }
            for (block, certificate) in &node.ledger.blocks[node.checked..] {
                let height = block.height();
                let hash = block.hash();
                if let Err(e) = certificate.verify(CHAIN_ID, &self.validators, &block.header) {
                    return Err(format!(
                        "node {i} committed height {height} with a bad certificate: {e}"
                    ));
                }
                let weak = PublicKey(ledger::WEAK_ADDRESS);
                if let Some(tx) = block
                    .transactions
                    .iter()
                    .find(|t| t.transfer.from == weak || t.transfer.to == weak)
                {
                    return Err(format!(
                        "node {i} committed height {height} with a transfer touching the weak \
                         all-zero key: {} -> {}",
                        tx.transfer.from, tx.transfer.to
                    ));
                }
                if !self.agreed.contains_key(&height) {
                    self.report.agreed_at_ms.push(self.now_ms);
                    let proposer = self
                        .validators
                        .iter()
                        .position(|v| *v == block.header.proposer)
                        .unwrap_or(usize::MAX);
                    self.report.agreed_blocks.push(AgreedBlock {
                        height: height.0,
                        at_ms: self.now_ms,
                        proposal_view: block.header.view.0,
                        proposer,
                        commit_view: certificate.view.0,
                        signers: certificate.signatures.len(),
                    });
                }
                let agreed = *self.agreed.entry(height).or_insert(hash);
                if agreed != hash {
                    return Err(format!(
                        "fork at height {height}: node {i} committed {hash}, another {agreed}"
                    ));
                }
            }
            if node.ledger.total_supply() != self.supply {
                return Err(format!("node {i}: supply changed"));
            }
            self.nodes[i].checked = self.nodes[i].ledger.blocks.len();
        }
        Ok(())
    }
}

/// A message's kind, for messages.
fn message_kind(message: &Message) -> &'static str {
    match message {
        Message::PrePrepare { .. } => "pre-prepare",
        Message::Prepare { .. } => "prepare",
        Message::Commit { .. } => "commit",
        Message::ViewChange { .. } => "view change",
        Message::NewView { .. } => "new view",
        Message::Decided { .. } => "decided",
    }
}

/// Runs a scenario; panics with the replay command on failure.
pub fn run_or_panic(s: Scenario) -> Report {
    run(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a scenario; the error (a broken invariant, or a panic inside the
/// run) carries the replay command.
pub fn run(s: Scenario) -> Result<Report, String> {
    let hint = s.replay_hint();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Sim::new(s).run()));
    match result {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(e)) => Err(format!("{e}\n{hint}")),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panic: {text}\n{hint}"))
        }
    }
}
