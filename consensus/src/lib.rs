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
//! durable when it returns.
//!
//! Actions are executed **in order**: an [`Action::PersistSafety`] is written
//! and flushed before any later send leaves the node, so a restarted replica
//! can never vote twice for different blocks at one (view, height).

use serde::{Deserialize, Serialize};

use cairn_core::{
    Block, Certificate, Hash, Height, Keypair, PublicKey, Signature, ValidatorIndex, View,
};

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
}

/// Application state as the replica sees it.
pub trait Ledger {
    /// Height and hash of the last committed block (height 0: genesis).
    fn tip(&self) -> (Height, Hash);
    /// Whether the mempool holds transactions waiting for a block.
    fn has_pending(&self) -> bool;
    /// Builds a block for `tip().0 + 1` on top of the tip, or `None` when there
    /// is nothing to propose.
    fn propose(&mut self, view: View, proposer: PublicKey, now_ms: u64) -> Option<Block>;
    /// Checks a proposed block against committed state: parent is the tip,
    /// every transaction valid, roots correct. Deterministic in the block and
    /// the committed state.
    fn validate(&mut self, block: &Block) -> Result<(), String>;
    /// Applies `block` (whose parent is the tip and whose certificate has been
    /// verified) and stores it with `certificate`, durably, before returning.
    fn commit(&mut self, block: &Block, certificate: &Certificate) -> Result<(), String>;
}

/// What the replica persisted about its own votes. Opaque to the runtime:
/// it stores the encoding and hands it back to [`Replica::new`] on restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyState {
    // Filled in by the consensus implementation.
}

/// A consensus message and the signature of the validator that sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedMessage {
    pub from: ValidatorIndex,
    pub message: Message,
    pub signature: Signature,
}

/// The messages of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    // Filled in by the consensus implementation.
}

/// An input to the replica.
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passes. `now_ms` never decreases.
    Tick { now_ms: u64 },
    /// A message from a peer (not yet checked).
    Message(SignedMessage),
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
}

/// One validator's PBFT replica.
pub struct Replica {
    // Filled in by the consensus implementation.
}

impl Replica {
    /// A replica for the validator holding `key`, restored from `safety`
    /// (the default for a fresh validator). `key` must be in
    /// `config.validators`.
    pub fn new(config: Config, key: Keypair, safety: SafetyState) -> Replica {
        let _ = (config, key, safety);
        unimplemented!("consensus implementation")
    }

    /// The one entry point.
    pub fn handle(&mut self, ledger: &mut impl Ledger, input: Input) -> Vec<Action> {
        let _ = (ledger, input);
        unimplemented!("consensus implementation")
    }

    /// The replica's current view.
    pub fn view(&self) -> View {
        unimplemented!("consensus implementation")
    }

    /// The primary of the current view.
    pub fn primary(&self) -> ValidatorIndex {
        unimplemented!("consensus implementation")
    }

    /// Whether the replica knows it is behind and is fetching blocks.
    pub fn is_syncing(&self) -> bool {
        unimplemented!("consensus implementation")
    }
}
