//! Account state and the state transition.
//!
//! State is a map from address to [`Account`]. A block's transactions are
//! applied to an [`Overlay`] over the committed state; the overlay's changes
//! are what storage writes in one batch. The state root is the root of a
//! sparse Merkle tree over every account ([`crate::merkle`]), so a client can
//! check one account against a block header with a short proof.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::merkle::{update_tree, EmptyTree, NodeKey, TreeNode, TreeStore};
use crate::tx::{SignedTransaction, TxError};
use crate::types::{Hash, PublicKey};

/// An account: its balance and the nonce its next transaction must carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub balance: u64,
    pub nonce: u64,
}

/// Read access to committed state: the accounts, and the nodes of the state
/// tree over them. An address never seen is the zero account.
pub trait StateView {
    fn account(&self, address: &PublicKey) -> Account;
    /// A stored node of the committed state tree ([`crate::merkle`]).
    fn tree_node(&self, key: &NodeKey) -> Option<TreeNode>;
}

/// The state tree of a [`StateView`].
pub struct ViewTree<'a, S: StateView + ?Sized>(pub &'a S);

impl<S: StateView + ?Sized> TreeStore for ViewTree<'_, S> {
    fn tree_node(&self, key: &NodeKey) -> Option<TreeNode> {
        self.0.tree_node(key)
    }
}

/// A plain in-memory state with its tree, for tests and the simulator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryState {
    accounts: BTreeMap<PublicKey, Account>,
    tree: BTreeMap<NodeKey, TreeNode>,
    root: Hash,
}

impl StateView for MemoryState {
    fn account(&self, address: &PublicKey) -> Account {
        self.accounts.get(address).copied().unwrap_or_default()
    }

    fn tree_node(&self, key: &NodeKey) -> Option<TreeNode> {
        self.tree.get(key).copied()
    }
}

impl MemoryState {
    /// The state holding exactly `accounts` (a genesis).
    pub fn from_accounts(accounts: BTreeMap<PublicKey, Account>) -> MemoryState {
        let mut state = MemoryState::default();
        state.apply_changes(&accounts);
        state
    }

    pub fn accounts(&self) -> &BTreeMap<PublicKey, Account> {
        &self.accounts
    }

    /// The state root.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The tree nodes, for proofs.
    pub fn tree(&self) -> &BTreeMap<NodeKey, TreeNode> {
        &self.tree
    }

    pub fn apply_changes(&mut self, changes: &BTreeMap<PublicKey, Account>) {
        let update = update_tree(&self.tree, changes);
        self.apply_tree_writes(update.writes);
        self.root = update.root;
        for (address, account) in changes {
            self.accounts.insert(*address, *account);
        }
    }

    /// Applies changes whose tree writes were already computed (by
    /// [`crate::executor::execute_block`]) on this state.
    pub fn apply_executed(
        &mut self,
        changes: &BTreeMap<PublicKey, Account>,
        writes: &[(NodeKey, TreeNode)],
        root: Hash,
    ) {
        self.apply_tree_writes(writes.iter().copied());
        self.root = root;
        for (address, account) in changes {
            self.accounts.insert(*address, *account);
        }
    }

    fn apply_tree_writes(&mut self, writes: impl IntoIterator<Item = (NodeKey, TreeNode)>) {
        for (key, node) in writes {
            self.tree.insert(key, node);
        }
    }

    pub fn total_supply(&self) -> u128 {
        self.accounts.values().map(|a| a.balance as u128).sum()
    }
}

/// Pending changes on top of a base state.
pub struct Overlay<'a, S: StateView + ?Sized> {
    base: &'a S,
    changes: BTreeMap<PublicKey, Account>,
}

impl<'a, S: StateView + ?Sized> Overlay<'a, S> {
    pub fn new(base: &'a S) -> Self {
        Overlay {
            base,
            changes: BTreeMap::new(),
        }
    }

    pub fn account(&self, address: &PublicKey) -> Account {
        match self.changes.get(address) {
            Some(account) => *account,
            None => self.base.account(address),
        }
    }

    /// Applies one transfer whose signature the caller has already verified.
    /// Checks chain, amount, weak addresses (all of
    /// [`SignedTransaction::check_stateless`]), nonce and balance; on error
    /// nothing changes.
    /// Money is only moved, never made or destroyed.
    pub fn apply(&mut self, tx: &SignedTransaction, chain_id: &str) -> Result<(), TxError> {
        tx.check_stateless(chain_id)?;
        let t = &tx.transfer;
        let mut sender = self.account(&t.from);
        if t.nonce < sender.nonce {
            return Err(TxError::NonceTooLow {
                expected: sender.nonce,
                got: t.nonce,
            });
        }
        if t.nonce > sender.nonce {
            return Err(TxError::NonceTooHigh {
                expected: sender.nonce,
                got: t.nonce,
            });
        }
        if sender.balance < t.amount {
            return Err(TxError::InsufficientFunds {
                balance: sender.balance,
                amount: t.amount,
            });
        }
        sender.balance -= t.amount;
        sender.nonce += 1;
        if t.to == t.from {
            sender.balance += t.amount;
            self.changes.insert(t.from, sender);
            return Ok(());
        }
        let mut receiver = self.account(&t.to);
        receiver.balance = receiver
            .balance
            .checked_add(t.amount)
            .ok_or(TxError::BalanceOverflow)?;
        self.changes.insert(t.from, sender);
        self.changes.insert(t.to, receiver);
        Ok(())
    }

    pub fn changes(&self) -> &BTreeMap<PublicKey, Account> {
        &self.changes
    }

    pub fn into_changes(self) -> BTreeMap<PublicKey, Account> {
        self.changes
    }
}

/// The state root of genesis: the root of the state tree holding every
/// funded account.
pub fn genesis_state_root(accounts: &BTreeMap<PublicKey, Account>) -> Hash {
    update_tree(&EmptyTree, accounts).root
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;
    use crate::tx::Transfer;
    use proptest::prelude::*;

    const CHAIN: &str = "prop-chain";

    fn keys() -> Vec<Keypair> {
        (0..4u8).map(|i| Keypair::from_seed([i + 1; 32])).collect()
    }

    fn state(balances: &[u64]) -> MemoryState {
        MemoryState::from_accounts(
            keys()
                .iter()
                .zip(balances)
                .map(|(k, b)| {
                    (
                        k.public(),
                        Account {
                            balance: *b,
                            nonce: 0,
                        },
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn self_transfer_only_bumps_nonce() {
        let ks = keys();
        let base = state(&[10]);
        let mut overlay = Overlay::new(&base);
        let tx = SignedTransaction::sign(
            Transfer {
                chain_id: CHAIN.into(),
                from: ks[0].public(),
                to: ks[0].public(),
                amount: 7,
                nonce: 0,
            },
            &ks[0],
        );
        overlay.apply(&tx, CHAIN).unwrap();
        assert_eq!(
            overlay.account(&ks[0].public()),
            Account {
                balance: 10,
                nonce: 1
            }
        );
    }

    proptest! {
        /// Any sequence of transfers, valid or not: supply is conserved,
        /// a rejected transfer changes nothing, an accepted one carried the
        /// sender's exact nonce and did not overdraw.
        #[test]
        fn transition_conserves_and_never_overdraws(
            balances in prop::collection::vec(0u64..1_000_000, 4),
            ops in prop::collection::vec((0usize..4, 0usize..4, 0u64..400_000, 0u64..6), 1..60),
        ) {
            let ks = keys();
            let base = state(&balances);
            let supply: u128 = base.total_supply();
            let mut overlay = Overlay::new(&base);
            for (from, to, amount, nonce) in ops {
                let before_from = overlay.account(&ks[from].public());
                let before_to = overlay.account(&ks[to].public());
                let tx = SignedTransaction::sign(
                    Transfer { chain_id: CHAIN.into(), from: ks[from].public(), to: ks[to].public(), amount, nonce },
                    &ks[from],
                );
                let result = overlay.apply(&tx, CHAIN);
                let after_from = overlay.account(&ks[from].public());
                match result {
                    Ok(()) => {
                        prop_assert_eq!(nonce, before_from.nonce);
                        prop_assert!(amount > 0 && amount <= before_from.balance);
                        prop_assert_eq!(after_from.nonce, before_from.nonce + 1);
                    }
                    Err(_) => {
                        prop_assert_eq!(after_from, before_from);
                        prop_assert_eq!(overlay.account(&ks[to].public()), before_to);
                    }
                }
                let mut now = base.clone();
                now.apply_changes(overlay.changes());
                prop_assert_eq!(now.total_supply(), supply);
            }
        }

        /// A nonce once used is never accepted again.
        #[test]
        fn reused_nonce_is_rejected(count in 1u64..10, reuse in 0u64..10) {
            let ks = keys();
            let base = state(&[1_000]);
            let mut overlay = Overlay::new(&base);
            let tx = |nonce| SignedTransaction::sign(
                Transfer { chain_id: CHAIN.into(), from: ks[0].public(), to: ks[1].public(), amount: 1, nonce },
                &ks[0],
            );
            for n in 0..count {
                prop_assert_eq!(overlay.apply(&tx(n), CHAIN), Ok(()));
            }
            let reuse = reuse % count;
            let is_nonce_too_low = matches!(overlay.apply(&tx(reuse), CHAIN), Err(TxError::NonceTooLow { .. }));
            prop_assert!(is_nonce_too_low);
        }
    }

    #[test]
    fn state_root_depends_on_every_change() {
        let one = |balance, nonce| {
            MemoryState::from_accounts([(PublicKey([1; 32]), Account { balance, nonce })].into())
                .root()
        };
        let a = one(5, 1);
        assert_ne!(a, one(5, 2));
        assert_ne!(a, one(6, 1));
        assert_ne!(a, MemoryState::default().root());
        assert_eq!(
            a,
            genesis_state_root(
                &[(
                    PublicKey([1; 32]),
                    Account {
                        balance: 5,
                        nonce: 1
                    }
                )]
                .into()
            )
        );
    }

    /// The theft issue 8 describes: the all-zero key is a small-order point,
    /// so under ZIP-215 an identity-R signature with s = 0 verifies for it
    /// over any message. Whoever wants the money held there can sign for it.
    /// The signature does verify; block execution refuses the transfer
    /// anyway, and refuses sending money there in the first place.
    #[test]
    fn crafted_signature_from_the_all_zero_key_cannot_move_money() {
        let zero = PublicKey([0; 32]);
        let thief = Keypair::from_seed([66; 32]).public();
        let ks = keys();
        let mut base = state(&[10]);
        base.apply_changes(
            &[(
                zero,
                Account {
                    balance: 500,
                    nonce: 0,
                },
            )]
            .into(),
        );
        let mut crafted = [0u8; 64];
        crafted[0] = 1; // R = identity, s = 0
        let theft = SignedTransaction {
            transfer: Transfer {
                chain_id: CHAIN.into(),
                from: zero,
                to: thief,
                amount: 500,
                nonce: 0,
            },
            signature: crate::types::Signature(crafted),
        };
        assert_eq!(theft.verify_signature(), Ok(()), "ZIP-215 accepts it");
        let mut overlay = Overlay::new(&base);
        assert_eq!(
            overlay.apply(&theft, CHAIN).map_err(|e| e.code()),
            Err("invalid_address")
        );
        assert_eq!(overlay.account(&thief), Account::default());

        let deposit = SignedTransaction::sign(
            Transfer {
                chain_id: CHAIN.into(),
                from: ks[0].public(),
                to: zero,
                amount: 5,
                nonce: 0,
            },
            &ks[0],
        );
        assert_eq!(
            overlay.apply(&deposit, CHAIN).map_err(|e| e.code()),
            Err("invalid_address")
        );
        assert!(overlay.changes().is_empty());
    }
}
