//! The Cairn PBFT replica as a pure state machine.
//!
//! A [`Replica`] is a value with one entry point, [`Replica::handle`]: an
//! [`Input`] goes in (a tick carrying the time, a message from a peer, a sync
//! reply), a list of [`Action`]s comes out (persist the safety state, send,
//! broadcast, fetch blocks, announce a commit). The replica never touches a
//! socket, a disk, a clock or a thread RNG: the node runtime turns actions into
//! IO, and the deterministic simulator in `tests/` turns them into simulated IO.
//!
//! Application state is reached through the [`Ledger`] trait: the replica asks
//! it to build a proposal, to validate a proposed block against committed
//! state, and to commit a block with its certificate. `Ledger::commit` must be
//! durable when it returns. A ledger reads no clock (the replica hands it the
//! time of its last [`Input::Tick`]) and carries out no side effect beyond
//! its own state: gossip, events and metrics are the runtime's, after
//! `handle` returns.
//!
//! Actions are executed **in order**: an [`Action::PersistSafety`] is written
//! and flushed before any later send leaves the node, so a restarted replica
//! can never vote twice for different blocks at one (view, height).
//!
//! # Protocol in brief
//!
//! One height at a time; views persist across heights (a new height starts
//! in the view of the certificate that decided the previous one). The
//! primary sends [`Message::PrePrepare`]; replicas that validate it send
//! [`Message::Prepare`]; 2f+1 matching prepares make the block prepared and
//! each sends [`Message::Commit`]; 2f+1 matching commits are the block's
//! [`Certificate`]. A replica with no progress for the view timeout sends
//! [`Message::ViewChange`] with its highest [`PreparedCertificate`]; the next
//! primary answers 2f+1 of them with [`Message::NewView`]. A replica that
//! hears from a peer still working on a lower height sends it
//! [`Message::Decided`] (its last certificate); a replica that learns it is
//! behind emits [`Action::RequestSync`]. Own messages of the current view
//! are re-sent every `view_timeout_ms / 4` while a height makes no progress.
//!
//! # Driving a replica
//!
//! - Tick often (every ~10 ms) and after new transactions arrive; the
//!   replica keeps no clock of its own.
//! - Hand every [`SignedMessage`] from a peer to `handle` unchecked: the
//!   replica checks sender, chain and signature and drops what fails.
//! - Answer a peer's sync request from storage with committed blocks and
//!   their certificates from the asked height up (a bounded count); feed
//!   replies to the replica as [`Input::SyncResponse`].
//! - Store each [`Action::PersistSafety`] state (it is `serde`) and give the
//!   last one back to [`Replica::new`] on restart.
//!
//! ```
//! use cairn_consensus::{Action, Config, Input, Ledger, Replica, SafetyState};
//! use cairn_core::{tx_root, Block, BlockHeader, Certificate, Hash, Height, Keypair, PublicKey, View};
//!
//! /// A chain of empty blocks.
//! #[derive(Default)]
//! struct Chain(Vec<(Block, Certificate)>);
//!
//! impl Ledger for Chain {
//!     fn tip(&self) -> (Height, Hash) {
//!         self.0.last().map_or((Height(0), Hash::ZERO), |(b, _)| (b.height(), b.hash()))
//!     }
//!     fn has_pending(&self) -> bool {
//!         self.0.len() < 3
//!     }
//!     fn propose(&mut self, view: View, proposer: PublicKey, now_ms: u64) -> Option<Block> {
//!         let (height, parent_hash) = self.tip();
//!         let header = BlockHeader {
//!             height: height.next(), parent_hash, view, proposer, timestamp_ms: now_ms,
//!             tx_root: tx_root([]), state_root: Hash::ZERO,
//!         };
//!         Some(Block { header, transactions: vec![] })
//!     }
//!     fn validate(&mut self, _block: &Block) -> Result<(), String> {
//!         Ok(())
//!     }
//!     fn commit(&mut self, block: &Block, certificate: &Certificate, _now_ms: u64) -> Result<(), String> {
//!         self.0.push((block.clone(), certificate.clone()));
//!         Ok(())
//!     }
//! }
//!
//! let key = Keypair::from_seed([7; 32]);
//! let config = Config {
//!     chain_id: "demo".into(),
//!     validators: vec![key.public()],
//!     block_interval_ms: 100,
//!     view_timeout_ms: 1_000,
//!     block_txs_max: 1_000,
//! };
//! let mut replica = Replica::new(config, key, SafetyState::default());
//! let mut chain = Chain::default();
//! let mut committed = vec![];
//! for now_ms in (0..1_000).step_by(10) {
//!     for action in replica.handle(&mut chain, Input::Tick { now_ms }) {
//!         if let Action::Committed { height, .. } = action {
//!             committed.push(height.0);
//!         }
//!     }
//! }
//! assert_eq!(committed, [1, 2, 3]);
//! ```

mod abstain;
pub mod limits;
mod log;
mod message;
mod replica;
mod safety;
mod sync;
mod view_change;

use cairn_core::{Block, Certificate, Hash, Height, PublicKey, ValidatorIndex, View};

pub use limits::TIMESTAMP_FUTURE_MS_MAX;
pub use message::{
    signatures_valid, Message, PreparedCertificate, SignedMessage, DECIDED_DOMAIN, NEW_VIEW_DOMAIN,
    PRE_PREPARE_DOMAIN, VIEW_CHANGE_DOMAIN,
};
pub use replica::Replica;
pub use safety::SafetyState;

/// Static configuration of a replica, from the genesis file.
#[derive(Clone, Debug)]
pub struct Config {
    pub chain_id: String,
    /// The genesis validator set, in order. `validators[v mod n]` is the
    /// primary of view `v`.
    pub validators: Vec<PublicKey>,
    /// Least time between two proposals of the primary.
    pub block_interval_ms: u64,
    /// Time without progress (while there is work) before a replica asks for
    /// the next view; doubles for each consecutive failed view.
    pub view_timeout_ms: u64,
    /// Most transactions in a block. A committed block with at most half as
    /// many had room:
    /// if a transaction this replica has held ready for a whole view
    /// timeout is still pending after it, the primary is censoring (or never
    /// got it), and the commit does not count as progress.
    pub block_txs_max: usize,
}

/// Application state as the replica sees it. Every method is called from
/// inside [`Replica::handle`]: it reads no clock (times come from the
/// replica's last [`Input::Tick`], as `now_ms` arguments) and does no IO but
/// reading and writing the ledger's own state (`commit` stores durably);
/// gossip, events, metrics and the like are carried out by the runtime after
/// `handle` returns.
pub trait Ledger {
    /// Height and hash of the last committed block (height 0: genesis).
    fn tip(&self) -> (Height, Hash);
    /// Whether the mempool holds transactions waiting for a block.
    fn has_pending(&self) -> bool;
    /// Since when (`Tick` time) `primary` (the primary of the block just
    /// committed) has had the longest-waiting transaction that a block
    /// could take now and that is pending here, as far as this ledger can
    /// tell (at the latest, since it has been pending here), as of
    /// `now_ms`; `None` when there is none, when the ledger does not track
    /// it, or while the primary may not have received it yet.
    fn oldest_pending_ms(&self, _now_ms: u64, _primary: ValidatorIndex) -> Option<u64> {
        None
    }
    /// Builds a block for `tip().0 + 1` on top of the tip, or `None` when there
    /// is nothing to propose.
    fn propose(&mut self, view: View, proposer: PublicKey, now_ms: u64) -> Option<Block>;
    /// Checks a proposed block against committed state: parent is the tip,
    /// every transaction valid, roots correct. Deterministic in the block and
    /// the committed state.
    fn validate(&mut self, block: &Block) -> Result<(), String>;
    /// Applies `block` (whose parent is the tip and whose certificate has been
    /// verified) and stores it with `certificate`, durably, before returning.
    /// `now_ms` is the replica's time.
    fn commit(
        &mut self,
        block: &Block,
        certificate: &Certificate,
        now_ms: u64,
    ) -> Result<(), String>;
}

/// An input to the replica.
// Inputs are moved into `handle` one at a time; boxing the message would
// change the interface the node is written against.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passes. `now_ms` never decreases.
    Tick { now_ms: u64 },
    /// A message (not yet checked) from a source the runtime does not
    /// vouch for: the replica drops it if it fails a check and blames no
    /// one.
    Message(SignedMessage),
    /// A message (not yet checked) that arrived on the authenticated
    /// connection of validator `peer`. When `peer` is the message's `from`,
    /// the peer vouches for what it signed: a bad signature, or content its
    /// signature covers that no honest validator sends (an invalid
    /// certificate, a forged new-view justification), makes the replica
    /// emit [`Action::Punish`] for `peer`. A message whose `from` is
    /// another validator is only checked, never blamed on `peer`.
    PeerMessage {
        peer: ValidatorIndex,
        message: SignedMessage,
    },
    /// Committed blocks with their certificates, in answer to an
    /// [`Action::RequestSync`] (not yet checked).
    SyncResponse {
        from: ValidatorIndex,
        blocks: Vec<(Block, Certificate)>,
    },
}

/// An effect the runtime must carry out, in order.
#[derive(Clone, Debug)]
pub enum Action {
    /// Write and flush this safety state before carrying out any later action.
    PersistSafety(SafetyState),
    /// Send to every other validator.
    Broadcast(SignedMessage),
    /// Send to one validator.
    Send {
        to: ValidatorIndex,
        message: SignedMessage,
    },
    /// Ask `to` for committed blocks from `from_height` on.
    RequestSync {
        to: ValidatorIndex,
        from_height: Height,
    },
    /// A block was committed through [`Ledger::commit`].
    Committed { height: Height, hash: Hash },
    /// `peer` sent a message of its own that no honest validator sends
    /// (see [`Input::PeerMessage`]): the runtime closes that peer's
    /// connection and refuses it for a while. At most one per input.
    Punish {
        peer: ValidatorIndex,
        offence: Offence,
    },
}

/// What a punished peer did (see [`Action::Punish`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offence {
    /// Its own signature on the message does not verify.
    BadSignature,
    /// A certificate it vouches for (in a view change or a `Decided`) is
    /// invalid: too few, too many or repeated signers, or a bad signature.
    BadCertificate,
    /// A new view it signed is not justified: view changes forged,
    /// repeated, too few, for another view or height, or a proposal that is
    /// not the block of the highest prepared certificate among them.
    BadNewView,
}

impl std::fmt::Display for Offence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Offence::BadSignature => "a message with a bad signature",
            Offence::BadCertificate => "an invalid certificate",
            Offence::BadNewView => "an unjustified new view",
        })
    }
}
