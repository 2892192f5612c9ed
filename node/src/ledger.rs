//! The node's side of [`cairn_consensus::Ledger`]: builds proposals from the
//! mempool, validates proposed blocks against committed state in sled, and
//! commits blocks (block + certificate + state in one atomic write).
//!
//! Called from inside `Replica::handle`, it reads no clock (the replica's
//! time comes in as `now_ms`) and does no IO beyond storage and the mempool:
//! what a commit means for the world outside (metrics, the SSE event,
//! gossiping overdue transactions again, stopping on a storage failure) is
//! queued and carried out by the consensus loop after `handle` returns
//! ([`NodeLedger::carry_out_effects`], [`NodeLedger::take_fatal`]).

use std::sync::Arc;

use cairn_consensus::Ledger;
use cairn_core::executor::{build_block, execute_block, BlockRules, Executed, Parent, Proposer};
use cairn_core::{
    Block, Certificate, Hash, Height, PublicKey, SignedTransaction, ValidatorIndex, View,
};

use crate::Node;

/// Most transactions sent again in one re-gossip round (see
/// [`NodeLedger::regossip_overdue`]).
const REGOSSIP_TXS_MAX: usize = 4_096;

/// How long after a transaction arrived here its gossip may still be queued
/// for the primary (admission gossips what it admitted at once; this covers
/// a busy admission thread): while the primary has not credited a frame
/// queued by then, it may not have the transaction (see
/// [`NodeLedger::oldest_pending_ms`]).
const PRIMARY_GOSSIP_GRACE_MS: u64 = 500;

/// Fewest transactions of each stuck sender in a re-gossip round (the
/// round's budget is shared out evenly above that; see
/// [`crate::mempool::Mempool::ready_since`]).
const REGOSSIP_TXS_PER_SENDER: usize = 4;

pub struct NodeLedger {
    node: Arc<Node>,
    /// The tip, as its child block sees it.
    parent: Parent,
    /// The last block validated or proposed, so committing it does not
    /// execute or hash it again.
    executed: Option<Executed>,
    /// When overdue transactions were last gossiped again.
    regossiped_ms: u64,
    /// When a commit's effects were last carried out (0: none yet).
    committed_ms: u64,
    /// When an idle chain's pool was last looked at for re-gossip.
    idle_checked_ms: u64,
    /// Commits whose effects the runtime has not carried out yet.
    effects: Vec<CommitEffects>,
    /// Why the node must stop (a committed block it could not store).
    fatal: Option<String>,
}

/// What one commit leaves for the runtime to do once `handle` returns.
#[derive(Clone, Debug)]
struct CommitEffects {
    height: Height,
    hash: Hash,
    tx_count: usize,
    timestamp_ms: u64,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl NodeLedger {
    pub fn new(node: Arc<Node>) -> Result<NodeLedger, String> {
        let height = node.storage.tip_height().map_err(|e| e.to_string())?;
        let tip = node
            .storage
            .block(height)
            .map_err(|e| e.to_string())?
            .ok_or("tip block missing")?
            .header;
        Ok(NodeLedger {
            node,
            parent: Parent::of(&tip),
            executed: None,
            regossiped_ms: 0,
            committed_ms: 0,
            idle_checked_ms: 0,
            effects: Vec::new(),
            fatal: None,
        })
    }

    /// After a committed block that had room: transactions that a block
    /// could take and that have waited here for half a view timeout were
    /// probably never received by the primary (gossip is best effort: a
    /// full peer queue drops frames). Send them to every validator again,
    /// at most once per half timeout, before the replica, after a whole
    /// timeout, counts them as censored and asks for the next view.
    ///
    /// Only what the primary (`primary`) has had time to take: while it
    /// has not credited gossip we queued for it at time `q`, a transaction
    /// that arrived here after `q - PRIMARY_GOSSIP_GRACE_MS` may still be
    /// on its way to it, and sending it again only adds to the primary's
    /// backlog (under load the primary was 1.6 s behind on our gossip, and
    /// three validators each sent ~2,000 transactions again every second).
    fn regossip_overdue(&mut self, tx_count: usize, now: u64, primary: ValidatorIndex) {
        let params = &self.node.genesis.genesis.params;
        if tx_count >= params.block_txs_max {
            return;
        }
        let half_timeout_ms = params.view_timeout_ms / 2;
        if now < self.regossiped_ms.saturating_add(half_timeout_ms) {
            return;
        }
        let mut before_ms = now.saturating_sub(half_timeout_ms);
        if let Some(queued) = self.node.network.gossip_unconfirmed_since_ms(primary, now) {
            before_ms = before_ms.min(queued.saturating_sub(PRIMARY_GOSSIP_GRACE_MS + 1));
        }
        let overdue = self.node.mempool.lock().expect("mempool lock").ready_since(
            before_ms,
            REGOSSIP_TXS_PER_SENDER,
            REGOSSIP_TXS_MAX,
            now,
        );
        if overdue.is_empty() {
            return;
        }
        self.regossiped_ms = now;
        tracing::info!(
            count = overdue.len(),
            "gossiping again transactions that wait although blocks have room"
        );
        self.node.network.gossip_transactions(overdue);
    }

    /// On a tick: when nothing has committed for half a view timeout,
    /// the same re-gossip as after a block with room. Otherwise a node
    /// holding transactions the primary never received (frames lost in a
    /// partition, or refused by a peer's parked cap) waited for a commit
    /// that only those transactions could bring: after a validator's
    /// isolation under load, with the load stopped, 646 of its
    /// acknowledged transactions stayed there (`partitions.rs`).
    /// Looks at the pool at most once per quarter timeout (it is called on
    /// every tick, and an idle chain may hold a large pool).
    pub fn regossip_if_idle(&mut self, now_ms: u64, primary: ValidatorIndex) {
        let timeout_ms = self.node.genesis.genesis.params.view_timeout_ms;
        if now_ms < self.committed_ms.saturating_add(timeout_ms / 2)
            || now_ms < self.idle_checked_ms.saturating_add(timeout_ms / 4)
        {
            return;
        }
        self.idle_checked_ms = now_ms;
        self.regossip_overdue(0, now_ms, primary);
    }

    fn rules(&self) -> BlockRules<'_> {
        BlockRules {
            chain_id: self.node.genesis.chain_id(),
            block_txs_max: self.node.genesis.genesis.params.block_txs_max,
        }
    }

    /// Checks and executes a block on top of the tip with the one block
    /// executor, verifying only the signatures of transactions the mempool
    /// has not seen (those it holds were verified on admission).
    fn execute_block(&self, block: &Block) -> Result<Executed, String> {
        let verify_unseen = |transactions: &[SignedTransaction], hashes: &[Hash]| {
            let unseen: Vec<usize> = {
                let mempool = self.node.mempool.lock().expect("mempool lock");
                (0..transactions.len())
                    .filter(|&i| !mempool.contains(&hashes[i]))
                    .collect()
            };
            let refs: Vec<&SignedTransaction> = unseen.iter().map(|&i| &transactions[i]).collect();
            crate::admission::verify_signatures(&refs)
                .iter()
                .position(|r| r.is_err())
                .map(|bad| unseen[bad])
        };
        execute_block(
            &self.node.storage,
            &self.parent,
            &self.rules(),
            block,
            verify_unseen,
        )
        .map_err(|e| e.to_string())
    }
}

impl Ledger for NodeLedger {
    fn tip(&self) -> (Height, Hash) {
        (self.parent.height, self.parent.hash)
    }

    fn has_pending(&self) -> bool {
        self.node.mempool.lock().expect("mempool lock").has_ready()
    }

    /// None while this node is overloaded (it refused work for want of
    /// room within a view timeout): its peers, the primary among them,
    /// are then likely refusing too, so a transaction the primary's block
    /// left out is explained by load, not censorship. Judging it anyway
    /// changed views over and over at twice the peak load (issue 8).
    ///
    /// Only what this node sent the other validators itself is judged (a
    /// client's transaction, or one it gossiped again because it waited:
    /// `Mempool::oldest_ready_gossiped_ms`), from when it sent it: a
    /// transaction known only from a peer's gossip may still wait in that
    /// peer's queue for the primary. And the age is counted from when the
    /// primary took (credited) the gossip we queued for it up to a little
    /// after then ([`PRIMARY_GOSSIP_GRACE_MS`]), `None` while it has not:
    /// a primary behind on its gossip has not been given the transaction
    /// yet, and a new primary would be just as far behind (a block
    /// proposed before the primary took it, and judged when committed
    /// after, must not count either). Under load one validator asked
    /// alone for the next view right after commit after commit, ~200 ms
    /// apart (most of the 26 view changes counted in 600 s at 80 % of the
    /// peak). A primary that credits nothing is still judged: frames
    /// uncredited for `GOSSIP_CREDIT_TIMEOUT` count as taken.
    fn oldest_pending_ms(&self, now_ms: u64, primary: ValidatorIndex) -> Option<u64> {
        let view_timeout_ms = self.node.genesis.genesis.params.view_timeout_ms;
        if self.node.metrics.overloaded_within(view_timeout_ms, now_ms) {
            return None;
        }
        let sent = self
            .node
            .mempool
            .lock()
            .expect("mempool lock")
            .oldest_ready_gossiped_ms()?;
        let queued_by = sent.saturating_add(PRIMARY_GOSSIP_GRACE_MS);
        let Some(delivered) = self
            .node
            .network
            .gossip_delivered_ms(primary, queued_by, now_ms)
        else {
            if sent.saturating_add(view_timeout_ms) <= now_ms {
                tracing::debug!(
                    sent_ms_ago = now_ms - sent,
                    "not judging validator {primary}: it has not yet taken the gossip \
                     we sent {} ms ago",
                    now_ms - sent
                );
            }
            return None;
        };
        let had = delivered.max(sent);
        if had.saturating_add(view_timeout_ms) <= now_ms {
            tracing::info!(
                sent_ms_ago = now_ms - sent,
                had_ms_ago = now_ms - had,
                "validator {primary} has had for {} ms a transaction we sent {} ms ago, \
                 and its block, which had room, left it out",
                now_ms - had,
                now_ms - sent
            );
        }
        Some(had)
    }

    fn propose(&mut self, view: View, proposer: PublicKey, now_ms: u64) -> Option<Block> {
        let block_txs_max = self.node.genesis.genesis.params.block_txs_max;
        let candidates = {
            let mempool = self.node.mempool.lock().expect("mempool lock");
            mempool.candidates(block_txs_max, |a| {
                self.node.storage.account(a).unwrap_or_default()
            })
        };
        if candidates.is_empty() {
            return None;
        }
        let proposer = Proposer {
            view,
            key: proposer,
            now_ms,
        };
        let built = build_block(
            &self.node.storage,
            &self.parent,
            &self.rules(),
            proposer,
            candidates,
        );
        if built.block.transactions.is_empty() {
            tracing::debug!(
                "nothing to propose: none of the mempool's candidates executes on the tip"
            );
            return None;
        }
        self.executed = Some(built.executed);
        Some(built.block)
    }

    /// A proposal that does not validate is logged: an honest primary
    /// never makes one, and the view change that follows says nothing
    /// about why.
    fn validate(&mut self, block: &Block) -> Result<(), String> {
        match self.execute_block(block) {
            Ok(executed) => {
                self.executed = Some(executed);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    height = block.height().0,
                    view = block.header.view.0,
                    "the proposal for height {} (view {}, {} transactions) does not validate: {e}",
                    block.height(),
                    block.header.view.0,
                    block.transactions.len()
                );
                Err(e)
            }
        }
    }

    fn commit(
        &mut self,
        block: &Block,
        certificate: &Certificate,
        now_ms: u64,
    ) -> Result<(), String> {
        let header = &block.header;
        if header.height != self.parent.height.next() || header.parent_hash != self.parent.hash {
            return Err(format!("block {} does not extend the tip", header.height));
        }
        let hash = block.hash();
        let executed = match self.executed.take() {
            Some(executed) if executed.block_hash == hash => executed,
            // A block learned through catch-up: its certificate proves the
            // header; the transactions must match it and execute to it.
            _ => self.execute_block(block).map_err(|e| {
                tracing::error!("certified block {} does not check out: {e}", block.height());
                e
            })?,
        };
        let stored = self.node.storage.commit_block(
            block,
            certificate,
            &executed.tx_hashes,
            &executed.changes.into_iter().collect::<Vec<_>>(),
            &executed.tree_writes,
        );
        if let Err(e) = stored {
            // The block is decided; a validator that cannot record it must
            // not go on voting as if it had: the loop stops the node before
            // carrying out any action of this input. A restart catches up
            // from peers once the disk is fixed.
            let error = format!("cannot store committed block {}: {e}", block.height());
            self.fatal = Some(error.clone());
            return Err(error);
        }
        self.parent = Parent {
            height: block.height(),
            hash,
            timestamp_ms: block.header.timestamp_ms,
            state_root: block.header.state_root,
        };
        self.node
            .mempool
            .lock()
            .expect("mempool lock")
            .remove_committed(
                &block.transactions,
                &executed.tx_hashes,
                |a| self.node.storage.account(a).unwrap_or_default(),
                now_ms,
            );
        self.effects.push(CommitEffects {
            height: block.height(),
            hash,
            tx_count: block.transactions.len(),
            timestamp_ms: block.header.timestamp_ms,
        });
        Ok(())
    }
}

impl NodeLedger {
    /// Why the node must stop, if a commit failed to store (taken once).
    /// The consensus loop checks it after every `handle`, before any
    /// action of that input is carried out.
    pub fn take_fatal(&mut self) -> Option<String> {
        self.fatal.take()
    }

    /// Carries out what the commits of the last `handle` left for the world
    /// outside, at wall-clock time `now_ms`: metrics, the SSE event, and
    /// gossiping again the transactions that wait although blocks have room.
    pub fn carry_out_effects(&mut self, now_ms: u64, primary: ValidatorIndex) {
        if self.effects.is_empty() {
            return;
        }
        for done in std::mem::take(&mut self.effects) {
            self.node.after_commit(&done, now_ms);
            self.regossip_overdue(done.tx_count, now_ms, primary);
        }
        self.committed_ms = now_ms;
        let mempool = self.node.mempool.lock().expect("mempool lock");
        self.node.metrics.observe_mempool(&mempool);
    }
}

impl crate::Node {
    /// Everything the world sees of a durable commit: metrics, the log
    /// line, the SSE event.
    fn after_commit(&self, done: &CommitEffects, now_ms: u64) {
        let m = &self.metrics;
        m.height.set(done.height.0);
        m.committed_transactions.inc_by(done.tx_count as u64);
        let latency_ms = now_ms.saturating_sub(done.timestamp_ms);
        m.observe_commit_latency(latency_ms as f64 / 1000.0);
        tracing::debug!(height = done.height.0, txs = done.tx_count, "committed");
        let _ = self.events.send(cairn_core::api::BlockEventJson {
            height: done.height.0,
            hash: done.hash.to_hex(),
            tx_count: done.tx_count,
        });
    }
}
