//! Deterministic inputs for the criterion micro-benchmarks: keys, signed
//! transfers, a block of them and the state they apply to.

use std::collections::BTreeMap;

use cairn_core::state::{genesis_state_root, next_state_root, Account, MemoryState, Overlay};
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

/// What a validator does to a proposed block once signatures are checked:
/// tx hashes and root, every transfer applied through an [`Overlay`], the
/// next state root. Returns the changes.
pub fn validate_block(
    block: &Block,
    state: &MemoryState,
    parent_root: &Hash,
) -> BTreeMap<PublicKey, Account> {
    let hashes: Vec<Hash> = block.transactions.iter().map(|t| t.hash()).collect();
    assert_eq!(block.header.tx_root, tx_root(&hashes));
    let mut overlay = Overlay::new(state);
    for tx in &block.transactions {
        overlay
            .apply(tx, CHAIN_ID)
            .expect("fixture transfers are valid");
    }
    let changes = overlay.into_changes();
    assert_eq!(
        block.header.state_root,
        next_state_root(parent_root, &changes)
    );
    changes
}

/// A block at height 1 holding `txs` (valid on top of [`funded`] state),
/// with a certificate of `signers` fixture signatures.
pub fn block_on(
    genesis: &Block,
    state: &MemoryState,
    txs: Vec<SignedTransaction>,
    signers: usize,
) -> (Block, Certificate, BTreeMap<PublicKey, Account>) {
    let hashes: Vec<Hash> = txs.iter().map(|t| t.hash()).collect();
    let mut overlay = Overlay::new(state);
    for tx in &txs {
        overlay
            .apply(tx, CHAIN_ID)
            .expect("fixture transfers are valid");
    }
    let changes = overlay.into_changes();
    let block = Block {
        header: BlockHeader {
            height: Height(1),
            parent_hash: genesis.hash(),
            view: View(0),
            proposer: PublicKey([1; 32]),
            timestamp_ms: 2,
            tx_root: tx_root(&hashes),
            state_root: next_state_root(&genesis.header.state_root, &changes),
        },
        transactions: txs,
    };
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
    (block, certificate, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_block_validates() {
        let keys = keys(10);
        let accounts = funded(&keys);
        let state = MemoryState {
            accounts: accounts.clone(),
        };
        let genesis = genesis_block(&accounts);
        let (block, certificate, changes) = block_on(&genesis, &state, transfers(&keys, 50), 3);
        assert_eq!(certificate.block_hash, block.hash());
        assert_eq!(
            validate_block(&block, &state, &genesis.header.state_root),
            changes
        );
        let mut after = state.clone();
        after.apply_changes(&changes);
        assert_eq!(after.total_supply(), state.total_supply());
    }
}
