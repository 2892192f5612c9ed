//! The block executor: the one pure function family that builds, checks and
//! executes a block on top of its parent. The node, the consensus simulator
//! and the benchmarks all run this code, so the simulator tests the rules
//! that run in production.
//!
//! Given the parent (its height, hash, time and state root), a view of the
//! committed state and the block, [`execute_block`] checks every block
//! validity rule (on the parent, timestamp not before the parent's, the
//! transaction count, the transaction root, the signatures the caller has not
//! checked already, every transfer through [`Overlay::apply`], which carries
//! the weak-key rule, and the state root) and returns the state changes the
//! block makes. [`build_block`] makes the block a proposer sends from
//! candidate transactions, leaving out the ones that fail. No IO: signature
//! checking is the caller's (it may know some signatures are good, and it
//! owns the randomness batch verification wants).

use std::collections::BTreeMap;

use crate::block::{Block, BlockHeader};
use crate::merkle::{tx_root, update_tree, NodeKey, TreeNode};
use crate::state::{Account, Overlay, StateView, ViewTree};
use crate::tx::{SignedTransaction, TxError};
use crate::types::{Hash, Height, PublicKey, View};

/// The block rules that come from genesis.
#[derive(Clone, Copy, Debug)]
pub struct BlockRules<'a> {
    pub chain_id: &'a str,
    /// Most transactions in a block.
    pub block_txs_max: usize,
}

/// What the parent block fixes for its child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    pub height: Height,
    pub hash: Hash,
    pub timestamp_ms: u64,
    pub state_root: Hash,
}

impl Parent {
    /// The parent described by a committed block's header.
    pub fn of(header: &BlockHeader) -> Parent {
        Parent {
            height: header.height,
            hash: header.hash(),
            timestamp_ms: header.timestamp_ms,
            state_root: header.state_root,
        }
    }
}

/// A block executed on top of its parent: what committing it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    pub block_hash: Hash,
    /// The transactions' hashes, in block order.
    pub tx_hashes: Vec<Hash>,
    /// Every account the block changed, with its new value.
    pub changes: BTreeMap<PublicKey, Account>,
    pub state_root: Hash,
    /// The state tree nodes the changes write (see [`crate::merkle`]).
    pub tree_writes: Vec<(NodeKey, TreeNode)>,
}

/// Why a block is invalid on its parent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block {height} does not extend the tip")]
    NotOnParent { height: Height },
    #[error("timestamp is before the parent's")]
    TimestampBeforeParent,
    #[error("too many transactions: {count} > {max}")]
    TooManyTransactions { count: usize, max: usize },
    #[error("tx_root does not match the transactions")]
    TxRoot,
    #[error("transaction {hash} has an invalid signature")]
    InvalidSignature { hash: Hash },
    #[error("transaction {index} ({hash}): {error}")]
    Transaction {
        index: usize,
        hash: Hash,
        error: TxError,
    },
    #[error("state_root does not match the transactions")]
    StateRoot,
}

/// Checks and executes `block` on `parent`, whose committed state `state`
/// is. `first_bad_signature` is given the transactions (and their hashes)
/// and returns the index of one whose signature fails, if any; callers that
/// verified some signatures before may skip those, as the node does for
/// transactions its mempool admitted.
pub fn execute_block<S: StateView + ?Sized>(
    state: &S,
    parent: &Parent,
    rules: &BlockRules,
    block: &Block,
    first_bad_signature: impl FnOnce(&[SignedTransaction], &[Hash]) -> Option<usize>,
) -> Result<Executed, BlockError> {
    let header = &block.header;
    if header.height != parent.height.next() || header.parent_hash != parent.hash {
        return Err(BlockError::NotOnParent {
            height: header.height,
        });
    }
    if header.timestamp_ms < parent.timestamp_ms {
        return Err(BlockError::TimestampBeforeParent);
    }
    if block.transactions.len() > rules.block_txs_max {
        return Err(BlockError::TooManyTransactions {
            count: block.transactions.len(),
            max: rules.block_txs_max,
        });
    }
    let tx_hashes: Vec<Hash> = block.transactions.iter().map(|t| t.hash()).collect();
    if header.tx_root != tx_root(&tx_hashes) {
        return Err(BlockError::TxRoot);
    }
    if let Some(bad) = first_bad_signature(&block.transactions, &tx_hashes) {
        return Err(BlockError::InvalidSignature {
            hash: tx_hashes[bad],
        });
    }
    let mut overlay = Overlay::new(state);
    for (index, tx) in block.transactions.iter().enumerate() {
        overlay
            .apply(tx, rules.chain_id)
            .map_err(|error| BlockError::Transaction {
                index,
                hash: tx_hashes[index],
                error,
            })?;
    }
    let changes = overlay.into_changes();
    let update = update_tree(&ViewTree(state), &changes);
    if header.state_root != update.root {
        return Err(BlockError::StateRoot);
    }
    Ok(Executed {
        block_hash: block.hash(),
        tx_hashes,
        changes,
        state_root: update.root,
        tree_writes: update.writes,
    })
}

/// A `first_bad_signature` for [`execute_block`] that checks every
/// signature, one at a time.
pub fn first_bad_signature(transactions: &[SignedTransaction], _hashes: &[Hash]) -> Option<usize> {
    transactions
        .iter()
        .position(|t| t.verify_signature().is_err())
}

/// Who proposes a block, in which view, at what time.
#[derive(Clone, Copy, Debug)]
pub struct Proposer {
    pub view: View,
    pub key: PublicKey,
    /// The proposer's clock; the block is timed no earlier than its parent.
    pub now_ms: u64,
}

/// A block [`build_block`] made, executed, and the candidates it left out.
#[derive(Clone, Debug)]
pub struct Built {
    pub block: Block,
    pub executed: Executed,
    /// Candidates that failed on the state before them, with why.
    pub left_out: Vec<(Hash, TxError)>,
}

/// Candidates for [`build_block`]: each transaction with its hash.
pub fn with_hashes(
    transactions: impl IntoIterator<Item = SignedTransaction>,
) -> Vec<(SignedTransaction, Hash)> {
    transactions
        .into_iter()
        .map(|t| {
            let hash = t.hash();
            (t, hash)
        })
        .collect()
}

/// Builds the block `proposer` proposes on `parent` from `candidates`
/// (transactions with their hashes, signatures checked by the caller), in
/// order, leaving out each one that fails on the state before it, and at
/// most `rules.block_txs_max`. The block passes [`execute_block`] on the
/// same parent and state.
pub fn build_block<S: StateView + ?Sized>(
    state: &S,
    parent: &Parent,
    rules: &BlockRules,
    proposer: Proposer,
    candidates: Vec<(SignedTransaction, Hash)>,
) -> Built {
    let mut overlay = Overlay::new(state);
    let mut transactions = Vec::with_capacity(candidates.len().min(rules.block_txs_max));
    let mut tx_hashes = Vec::with_capacity(transactions.capacity());
    let mut left_out = Vec::new();
    for (tx, hash) in candidates {
        if transactions.len() == rules.block_txs_max {
            break;
        }
        match overlay.apply(&tx, rules.chain_id) {
            Ok(()) => {
                transactions.push(tx);
                tx_hashes.push(hash);
            }
            Err(error) => left_out.push((hash, error)),
        }
    }
    let changes = overlay.into_changes();
    let update = update_tree(&ViewTree(state), &changes);
    let state_root = update.root;
    let header = BlockHeader {
        height: parent.height.next(),
        parent_hash: parent.hash,
        view: proposer.view,
        proposer: proposer.key,
        timestamp_ms: proposer.now_ms.max(parent.timestamp_ms),
        tx_root: tx_root(&tx_hashes),
        state_root,
    };
    let block = Block {
        header,
        transactions,
    };
    let executed = Executed {
        block_hash: block.hash(),
        tx_hashes,
        changes,
        state_root,
        tree_writes: update.writes,
    };
    Built {
        block,
        executed,
        left_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;
    use crate::state::MemoryState;
    use crate::tx::Transfer;

    const CHAIN: &str = "exec-chain";
    const RULES: BlockRules = BlockRules {
        chain_id: CHAIN,
        block_txs_max: 3,
    };

    fn keys() -> Vec<Keypair> {
        (0..3u8).map(|i| Keypair::from_seed([i + 1; 32])).collect()
    }

    fn state() -> MemoryState {
        MemoryState::from_accounts(
            keys()
                .iter()
                .map(|k| {
                    (
                        k.public(),
                        Account {
                            balance: 100,
                            nonce: 0,
                        },
                    )
                })
                .collect(),
        )
    }

    fn parent() -> Parent {
        Parent {
            height: Height(4),
            hash: Hash([4; 32]),
            timestamp_ms: 1_000,
            state_root: Hash([5; 32]),
        }
    }

    fn tx(from: usize, nonce: u64, amount: u64) -> (SignedTransaction, Hash) {
        let ks = keys();
        let tx = SignedTransaction::sign(
            Transfer {
                chain_id: CHAIN.into(),
                from: ks[from].public(),
                to: ks[(from + 1) % 3].public(),
                amount,
                nonce,
            },
            &ks[from],
        );
        let hash = tx.hash();
        (tx, hash)
    }

    fn proposer(now_ms: u64) -> Proposer {
        Proposer {
            view: View(2),
            key: keys()[0].public(),
            now_ms,
        }
    }

    #[test]
    fn a_built_block_executes_to_the_same_changes() {
        let candidates = vec![tx(0, 0, 5), tx(0, 5, 1), tx(1, 0, 500), tx(1, 0, 7)];
        let built = build_block(&state(), &parent(), &RULES, proposer(900), candidates);
        assert_eq!(built.block.transactions.len(), 2);
        assert_eq!(built.left_out.len(), 2);
        assert_eq!(built.block.header.timestamp_ms, 1_000, "not before parent");
        let executed = execute_block(
            &state(),
            &parent(),
            &RULES,
            &built.block,
            first_bad_signature,
        );
        assert_eq!(executed, Ok(built.executed));
    }

    #[test]
    fn every_block_rule_refuses() {
        let good = build_block(
            &state(),
            &parent(),
            &RULES,
            proposer(2_000),
            vec![tx(0, 0, 5)],
        )
        .block;
        let run = |block: &Block| {
            execute_block(&state(), &parent(), &RULES, block, first_bad_signature).map(|_| ())
        };
        assert_eq!(run(&good), Ok(()));
        let mut b = good.clone();
        b.header.parent_hash = Hash([0; 32]);
        assert!(matches!(run(&b), Err(BlockError::NotOnParent { .. })));
        let mut b = good.clone();
        b.header.timestamp_ms = 999;
        assert_eq!(run(&b), Err(BlockError::TimestampBeforeParent));
        let mut b = good.clone();
        b.transactions = vec![tx(0, 0, 5).0; 4];
        assert!(matches!(
            run(&b),
            Err(BlockError::TooManyTransactions { .. })
        ));
        let mut b = good.clone();
        b.transactions[0].transfer.amount = 6;
        assert_eq!(run(&b), Err(BlockError::TxRoot));
        let mut b = good.clone();
        b.transactions[0].signature.0[5] ^= 1;
        b.header.tx_root = tx_root([&b.transactions[0].hash()]);
        assert!(matches!(run(&b), Err(BlockError::InvalidSignature { .. })));
        let mut b = good.clone();
        b.header.state_root = Hash([1; 32]);
        assert_eq!(run(&b), Err(BlockError::StateRoot));
    }

    /// The weak-key rule is a block rule: a transfer to the all-zero key
    /// (a small-order point) is never built into a block nor accepted in one.
    #[test]
    fn weak_addresses_are_refused_in_blocks() {
        let ks = keys();
        let to_weak = SignedTransaction::sign(
            Transfer {
                chain_id: CHAIN.into(),
                from: ks[0].public(),
                to: PublicKey([0; 32]),
                amount: 5,
                nonce: 0,
            },
            &ks[0],
        );
        let hash = to_weak.hash();
        let built = build_block(
            &state(),
            &parent(),
            &RULES,
            proposer(2_000),
            vec![(to_weak.clone(), hash)],
        );
        assert!(built.block.transactions.is_empty());
        assert_eq!(built.left_out[0].1.code(), "invalid_address");
        let mut block = built.block;
        block.transactions = vec![to_weak];
        block.header.tx_root = tx_root([&hash]);
        let verdict = execute_block(&state(), &parent(), &RULES, &block, |_, _| None);
        assert!(matches!(
            verdict,
            Err(BlockError::Transaction {
                error: TxError::WeakAddress { .. },
                ..
            })
        ));
    }
}
