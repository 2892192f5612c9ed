//! Deterministic inputs for the criterion micro-benchmarks: keys, signed
//! transfers, a block of them and the state they apply to.

use std::collections::BTreeMap;

use cairn_core::executor::{build_block, execute_block, with_hashes, BlockRules, Parent, Proposer};
use cairn_core::state::{genesis_state_root, Account, MemoryState};
use cairn_core::{
    tx_root, Block, BlockHeader, Certificate, CommitSignature, Hash, Height, Keypair, PublicKey,
    SignedTransaction, Transfer, ValidatorIndex, View,
};

pub const CHAIN_ID: &str = "cairn-bench";
/// Balance of every fixture account.
pub const BALANCE: u64 = 1_000_000_000;

/// `n` keys from fixed seeds.
pub fn keys(n: usize) -> Vec<Keypair> {
    (0..n)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            Keypair::from_seed(seed)
        })
        .collect()
}

/// `count` transfers over `keys` as the load benchmark makes them: sender
/// `k mod M`, nonce `k div M`, to the next key, amount 1.
pub fn transfers(keys: &[Keypair], count: usize) -> Vec<SignedTransaction> {
    (0..count)
        .map(|k| {
            let m = keys.len();
            SignedTransaction::sign(
                Transfer {
                    chain_id: CHAIN_ID.into(),
                    from: keys[k % m].public(),
                    to: keys[(k + 1) % m].public(),
                    amount: 1,
                    nonce: (k / m) as u64,
                },
                &keys[k % m],
            )
        })
        .collect()
}

/// Every key funded with [`BALANCE`].
pub fn funded(keys: &[Keypair]) -> BTreeMap<PublicKey, Account> {
    keys.iter()
        .map(|k| {
            (
                k.public(),
                Account {
                    balance: BALANCE,
                    nonce: 0,
                },
            )
        })
        .collect()
}

/// The genesis block over `accounts`.
pub fn genesis_block(accounts: &BTreeMap<PublicKey, Account>) -> Block {
    Block {
        header: BlockHeader {
            height: Height(0),
            parent_hash: Hash([9; 32]),
            view: View(0),
            proposer: PublicKey([0; 32]),
            timestamp_ms: 1,
            tx_root: tx_root([]),
            state_root: genesis_state_root(accounts),
        },
        transactions: vec![],
    }
}

/// The block rules of the fixtures: [`CHAIN_ID`], no block too large.
pub const RULES: BlockRules<'static> = BlockRules {
    chain_id: CHAIN_ID,
    block_txs_max: cairn_core::limits::BLOCK_TXS_MAX,
};

/// What a validator does to a proposed block once signatures are checked:
/// the production block executor ([`execute_block`]: tx hashes and root,
/// every transfer applied, the next state root) on top of `parent`.
/// Returns the changes.
pub fn validate_block(
    block: &Block,
    state: &MemoryState,
    parent: &Block,
) -> BTreeMap<PublicKey, Account> {
    execute_block(state, &Parent::of(&parent.header), &RULES, block, |_, _| {
        None
    })
    .expect("fixture blocks are valid")
    .changes
}

/// A block at height 1 holding `txs` (valid on top of [`funded`] state),
/// built by the production block builder, with a certificate of `signers`
/// fixture signatures.
pub fn block_on(
    genesis: &Block,
    state: &MemoryState,
    txs: Vec<SignedTransaction>,
    signers: usize,
) -> (Block, Certificate, BTreeMap<PublicKey, Account>) {
    let candidates = with_hashes(txs);
    let proposer = Proposer {
        view: View(0),
        key: PublicKey([1; 32]),
        now_ms: 2,
    };
    let built = build_block(
        state,
        &Parent::of(&genesis.header),
        &RULES,
        proposer,
        candidates,
    );
    assert!(built.left_out.is_empty(), "fixture transfers are valid");
    let block = built.block;
    let certificate = Certificate {
        height: block.height(),
        view: View(0),
        block_hash: block.hash(),
        signatures: (0..signers)
            .map(|i| CommitSignature {
                validator: ValidatorIndex(i as u16),
                signature: cairn_core::Signature([i as u8; 64]),
            })
            .collect(),
    };
    (block, certificate, built.executed.changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_block_validates() {
        let keys = keys(10);
        let accounts = funded(&keys);
        let state = MemoryState::from_accounts(accounts.clone());
        let genesis = genesis_block(&accounts);
        let (block, certificate, changes) = block_on(&genesis, &state, transfers(&keys, 50), 3);
        assert_eq!(certificate.block_hash, block.hash());
        assert_eq!(validate_block(&block, &state, &genesis), changes);
        let mut after = state.clone();
        after.apply_changes(&changes);
        assert_eq!(after.total_supply(), state.total_supply());
    }
}
