//! The two Merkle trees a block header commits to, with their proofs.
//!
//! - **Transactions** (`tx_root`): an RFC 6962 / RFC 9162 Merkle tree over
//!   the transaction hashes in block order. A proof is the audit path of
//!   one leaf: about log2(n) hashes (14 for a 10,000-transaction block).
//! - **Accounts** (`state_root`): a binary sparse Merkle tree keyed by
//!   `SHA-256(domain, address)`, in which each leaf sits at the shallowest
//!   depth where its key is unique (empty subtrees hash to zero and are never
//!   stored). The shape, and so the root, depends only on the set of
//!   (address, account) pairs, never on the order of updates. A proof gives
//!   the siblings from the root down to the position where the key's path
//!   ends, and what sits there: the account's leaf (presence), nothing, or
//!   another key's leaf (absence). About log2(accounts) hashes.
//!
//! Why this tree rather than the Jellyfish Merkle Tree is in
//! docs/ARCHITECTURE.md. The tree reads its nodes through [`TreeStore`]; the
//! node keeps them in sled, the simulator and tests in memory. Accounts are
//! never deleted, so the tree only ever grows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::Account;
use crate::types::{Hash, PublicKey};

/// Domain tag of the key of an account in the state tree.
pub const STATE_KEY_DOMAIN: &[u8] = b"cairn/state-key/v1\0";
/// Domain tag of the value hash of an account in the state tree.
pub const STATE_VALUE_DOMAIN: &[u8] = b"cairn/state-value/v1\0";
const LEAF_PREFIX: u8 = 0;
const NODE_PREFIX: u8 = 1;
/// Depth of a 256-bit key path.
pub const KEY_BITS: u16 = 256;

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the proof does not lead to the root")]
    RootMismatch,
    #[error("the proof is malformed: {0}")]
    Malformed(&'static str),
    #[error("the account in the answer is not the one the proof commits to")]
    ValueMismatch,
}

// ---------------------------------------------------------------------------
// Transactions: RFC 6962.

fn leaf_hash(tx_hash: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(tx_hash.0);
    Hash(hasher.finalize().into())
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left.0);
    hasher.update(right.0);
    Hash(hasher.finalize().into())
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root of the RFC 6962 tree over `leaves` (already leaf-hashed).
fn subtree_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Hash(Sha256::digest([]).into()),
        1 => leaves[0],
        _ => {
            // Level by level, carrying an odd last node up: the same shape as
            // the recursive definition (left subtree a power of two).
            let mut level: Vec<Hash> = leaves.to_vec();
            while level.len() > 1 {
                let mut next = Vec::with_capacity(level.len().div_ceil(2));
                for pair in level.chunks(2) {
                    next.push(match pair {
                        [l, r] => node_hash(l, r),
                        [only] => *only,
                        _ => unreachable!(),
                    });
                }
                level = next;
            }
            level[0]
        }
    }
}

/// The transaction root of a block: the RFC 6962 Merkle tree hash of its
/// transaction hashes, in block order.
pub fn tx_root<'a>(tx_hashes: impl IntoIterator<Item = &'a Hash>) -> Hash {
    let leaves: Vec<Hash> = tx_hashes.into_iter().map(leaf_hash).collect();
    subtree_root(&leaves)
}

/// An inclusion proof of one transaction under a block's `tx_root`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxProof {
    /// Position of the transaction in the block.
    pub index: u64,
    /// Number of transactions in the block.
    pub size: u64,
    /// The audit path, from the leaf's sibling up to the root's child.
    pub path: Vec<Hash>,
}

/// The inclusion proof of the transaction at `index` among `tx_hashes`.
pub fn tx_proof(tx_hashes: &[Hash], index: usize) -> Option<TxProof> {
    if index >= tx_hashes.len() {
        return None;
    }
    let leaves: Vec<Hash> = tx_hashes.iter().map(leaf_hash).collect();
    let mut path = Vec::new();
    audit_path(&leaves, index, &mut path);
    path.reverse();
    Some(TxProof {
        index: index as u64,
        size: tx_hashes.len() as u64,
        path,
    })
}

/// Pushes the audit path of `index` in `leaves`, root side first.
fn audit_path(leaves: &[Hash], index: usize, path: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    if index < k {
        path.push(subtree_root(&leaves[k..]));
        audit_path(&leaves[..k], index, path);
    } else {
        path.push(subtree_root(&leaves[..k]));
        audit_path(&leaves[k..], index - k, path);
    }
}

/// Checks that `tx_hash` is at `proof.index` of a block whose `tx_root` is
/// `root` (RFC 9162, section 2.1.3.2).
pub fn verify_tx_proof(root: &Hash, tx_hash: &Hash, proof: &TxProof) -> Result<(), ProofError> {
    if proof.index >= proof.size {
        return Err(ProofError::Malformed("index beyond the block's size"));
    }
    if proof.path.len() > 64 {
        return Err(ProofError::Malformed("path longer than any tree"));
    }
    let (mut f_n, mut s_n) = (proof.index, proof.size - 1);
    let mut r = leaf_hash(tx_hash);
    for p in &proof.path {
        if s_n == 0 {
            return Err(ProofError::Malformed("path longer than the tree"));
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::Malformed("path shorter than the tree"));
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Accounts: a sparse Merkle tree.

/// Where a node sits: its depth (0 is the root) and the first `depth` bits
/// of the keys below it (the rest zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeKey {
    pub depth: u16,
    pub prefix: [u8; 32],
}

impl NodeKey {
    pub const ROOT: NodeKey = NodeKey {
        depth: 0,
        prefix: [0; 32],
    };

    /// The child on side `bit` (false = left).
    fn child(&self, bit: bool) -> NodeKey {
        let mut prefix = self.prefix;
        if bit {
            let d = self.depth as usize;
            prefix[d / 8] |= 0x80 >> (d % 8);
        }
        NodeKey {
            depth: self.depth + 1,
            prefix,
        }
    }

    /// A stable byte form (depth big-endian, then the prefix), for storage.
    pub fn to_bytes(&self) -> [u8; 34] {
        let mut bytes = [0; 34];
        bytes[..2].copy_from_slice(&self.depth.to_be_bytes());
        bytes[2..].copy_from_slice(&self.prefix);
        bytes
    }
}

/// Bit `i` of a key (most significant first).
fn bit(key: &Hash, i: u16) -> bool {
    key.0[i as usize / 8] & (0x80 >> (i % 8)) != 0
}

/// A stored node of the state tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeNode {
    /// Two non-empty-together subtrees, by their hashes (zero: empty).
    Internal { left: Hash, right: Hash },
    /// One account: its key and value hash.
    Leaf { key: Hash, value: Hash },
}

impl TreeNode {
    pub fn hash(&self) -> Hash {
        match self {
            TreeNode::Internal { left, right } => node_hash(left, right),
            TreeNode::Leaf { key, value } => state_leaf_hash(key, value),
        }
    }
}

fn state_leaf_hash(key: &Hash, value: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(key.0);
    hasher.update(value.0);
    Hash(hasher.finalize().into())
}

/// The key of `address` in the state tree.
pub fn state_key(address: &PublicKey) -> Hash {
    Hash::digest(&[STATE_KEY_DOMAIN, &address.0])
}

/// The value hash of `account` at `address`.
pub fn state_value(address: &PublicKey, account: &Account) -> Hash {
    Hash::digest(&[
        STATE_VALUE_DOMAIN,
        &address.0,
        &account.balance.to_le_bytes(),
        &account.nonce.to_le_bytes(),
    ])
}

/// Read access to the stored nodes of the committed state tree. A missing
/// node is an empty subtree.
pub trait TreeStore {
    fn tree_node(&self, key: &NodeKey) -> Option<TreeNode>;
}

/// A tree with no nodes (the state before genesis).
pub struct EmptyTree;

impl TreeStore for EmptyTree {
    fn tree_node(&self, _key: &NodeKey) -> Option<TreeNode> {
        None
    }
}

impl TreeStore for BTreeMap<NodeKey, TreeNode> {
    fn tree_node(&self, key: &NodeKey) -> Option<TreeNode> {
        self.get(key).copied()
    }
}

/// The root of the tree in `store` (zero when empty).
pub fn stored_root<T: TreeStore + ?Sized>(store: &T) -> Hash {
    store
        .tree_node(&NodeKey::ROOT)
        .map_or(Hash::ZERO, |n| n.hash())
}

/// What one batch of updates does to the tree: the new root, and the nodes
/// to write (each replaces what was stored at its key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeUpdate {
    pub root: Hash,
    pub writes: Vec<(NodeKey, TreeNode)>,
}

/// Applies `changes` (the new accounts of some addresses) to the tree in
/// `store`, without changing it: returns the new root and the nodes to write.
/// Reads each node on the changed paths once.
pub fn update_tree<T: TreeStore + ?Sized>(
    store: &T,
    changes: &BTreeMap<PublicKey, Account>,
) -> TreeUpdate {
    let mut updates: Vec<(Hash, Hash)> = changes
        .iter()
        .map(|(address, account)| (state_key(address), state_value(address, account)))
        .collect();
    updates.sort_unstable_by_key(|u| u.0);
    let mut writes = Vec::new();
    let root = if updates.is_empty() {
        stored_root(store)
    } else {
        let current = store.tree_node(&NodeKey::ROOT);
        update_at(store, NodeKey::ROOT, current, &updates, &mut writes)
    };
    TreeUpdate { root, writes }
}

/// The new hash of the subtree at `at`, which holds `current`, after
/// `updates` (sorted by key, distinct, all under `at`).
fn update_at<T: TreeStore + ?Sized>(
    store: &T,
    at: NodeKey,
    current: Option<TreeNode>,
    updates: &[(Hash, Hash)],
    writes: &mut Vec<(NodeKey, TreeNode)>,
) -> Hash {
    match current {
        Some(TreeNode::Internal { left, right }) => {
            let cut = updates.partition_point(|(k, _)| !bit(k, at.depth));
            let (l_updates, r_updates) = updates.split_at(cut);
            let left = if l_updates.is_empty() {
                left
            } else {
                let child = at.child(false);
                let node = (left != Hash::ZERO)
                    .then(|| store.tree_node(&child))
                    .flatten();
                update_at(store, child, node, l_updates, writes)
            };
            let right = if r_updates.is_empty() {
                right
            } else {
                let child = at.child(true);
                let node = (right != Hash::ZERO)
                    .then(|| store.tree_node(&child))
                    .flatten();
                update_at(store, child, node, r_updates, writes)
            };
            let node = TreeNode::Internal { left, right };
            writes.push((at, node));
            node.hash()
        }
        Some(TreeNode::Leaf { key, value }) => {
            if updates.iter().any(|(k, _)| *k == key) {
                build(at, updates, writes)
            } else {
                // The leaf moves down beside the newcomers.
                let mut merged = Vec::with_capacity(updates.len() + 1);
                merged.extend_from_slice(updates);
                let at_index = merged.partition_point(|(k, _)| *k < key);
                merged.insert(at_index, (key, value));
                build(at, &merged, writes)
            }
        }
        None => build(at, updates, writes),
    }
}

/// Builds a fresh subtree at `at` holding exactly `leaves` (sorted,
/// distinct, all under `at`), and returns its hash.
fn build(at: NodeKey, leaves: &[(Hash, Hash)], writes: &mut Vec<(NodeKey, TreeNode)>) -> Hash {
    match leaves {
        [] => Hash::ZERO,
        [(key, value)] => {
            let node = TreeNode::Leaf {
                key: *key,
                value: *value,
            };
            writes.push((at, node));
            node.hash()
        }
        _ => {
            assert!(at.depth < KEY_BITS, "two distinct keys share all 256 bits");
            let cut = leaves.partition_point(|(k, _)| !bit(k, at.depth));
            let left = build(at.child(false), &leaves[..cut], writes);
            let right = build(at.child(true), &leaves[cut..], writes);
            let node = TreeNode::Internal { left, right };
            writes.push((at, node));
            node.hash()
        }
    }
}

/// A proof of an account's presence or absence under a `state_root`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateProof {
    /// The siblings on the key's path, from the root's children down.
    pub siblings: Vec<Hash>,
    /// What sits where the path ends: a leaf (the account's, or another
    /// key's, which proves absence), or nothing (an empty subtree).
    pub leaf: Option<ProofLeaf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofLeaf {
    pub key: Hash,
    pub value: Hash,
}

/// The proof for `address` in the tree in `store`.
pub fn prove_account<T: TreeStore + ?Sized>(store: &T, address: &PublicKey) -> StateProof {
    let key = state_key(address);
    let mut siblings = Vec::new();
    let mut at = NodeKey::ROOT;
    let mut node = store.tree_node(&at);
    loop {
        match node {
            None => {
                return StateProof {
                    siblings,
                    leaf: None,
                }
            }
            Some(TreeNode::Leaf { key, value }) => {
                return StateProof {
                    siblings,
                    leaf: Some(ProofLeaf { key, value }),
                }
            }
            Some(TreeNode::Internal { left, right }) => {
                let side = bit(&key, at.depth);
                let (next, sibling) = if side { (right, left) } else { (left, right) };
                siblings.push(sibling);
                at = at.child(side);
                node = if next == Hash::ZERO {
                    None
                } else {
                    store.tree_node(&at)
                };
            }
        }
    }
}

/// Checks that `address` holds `account` under `root`: the proof shows its
/// leaf with that value, or shows it absent and `account` is the zero
/// account (an address never seen).
pub fn verify_account(
    root: &Hash,
    address: &PublicKey,
    account: &Account,
    proof: &StateProof,
) -> Result<(), ProofError> {
    if proof.siblings.len() > KEY_BITS as usize {
        return Err(ProofError::Malformed("more siblings than key bits"));
    }
    let key = state_key(address);
    let depth = proof.siblings.len() as u16;
    let mut hash = match &proof.leaf {
        Some(leaf) => {
            // The leaf must sit on the key's path.
            if (0..depth).any(|i| bit(&leaf.key, i) != bit(&key, i)) {
                return Err(ProofError::Malformed("the leaf is not on the key's path"));
            }
            state_leaf_hash(&leaf.key, &leaf.value)
        }
        None => Hash::ZERO,
    };
    for (i, sibling) in proof.siblings.iter().enumerate().rev() {
        hash = if bit(&key, i as u16) {
            node_hash(sibling, &hash)
        } else {
            node_hash(&hash, sibling)
        };
    }
    if hash != *root {
        return Err(ProofError::RootMismatch);
    }
    let present = proof.leaf.as_ref().is_some_and(|l| l.key == key);
    let matches = if present {
        proof.leaf.as_ref().map(|l| l.value) == Some(state_value(address, account))
    } else {
        *account == Account::default()
    };
    if matches {
        Ok(())
    } else {
        Err(ProofError::ValueMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(i: u32) -> Hash {
        Hash::digest(&[b"tx", &i.to_le_bytes()])
    }

    /// The recursive definition of RFC 6962, as a reference.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => Hash(Sha256::digest([]).into()),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split(n);
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    #[test]
    fn tx_root_is_rfc6962() {
        for n in 0..70 {
            let hashes: Vec<Hash> = (0..n).map(h).collect();
            assert_eq!(tx_root(&hashes), reference_root(&hashes), "n = {n}");
        }
        // RFC 6962's empty tree: SHA-256 of the empty string.
        assert_eq!(
            tx_root([]).to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_tx_proof_verifies_and_no_other() {
        for n in 1..40u32 {
            let hashes: Vec<Hash> = (0..n).map(h).collect();
            let root = tx_root(&hashes);
            for i in 0..n as usize {
                let proof = tx_proof(&hashes, i).unwrap();
                assert_eq!(
                    verify_tx_proof(&root, &hashes[i], &proof),
                    Ok(()),
                    "{n} {i}"
                );
                let other = h(n + 1);
                assert!(verify_tx_proof(&root, &other, &proof).is_err());
                if n > 1 {
                    let mut moved = proof.clone();
                    moved.index = (moved.index + 1) % n as u64;
                    assert!(verify_tx_proof(&root, &hashes[i], &moved).is_err());
                    // (The size is not committed to by the root: a proof
                    // may also verify with another size of the same shape
                    // along its path, so it is not tested here.)
                    let mut changed = proof.clone();
                    changed.path[0].0[0] ^= 1;
                    assert!(verify_tx_proof(&root, &hashes[i], &changed).is_err());
                    let mut short = proof.clone();
                    short.path.pop();
                    assert!(verify_tx_proof(&root, &hashes[i], &short).is_err());
                }
                let mut long = proof.clone();
                long.path.push(Hash::ZERO);
                assert!(verify_tx_proof(&root, &hashes[i], &long).is_err());
            }
        }
        assert!(tx_proof(&[h(0)], 1).is_none());
    }

    fn address(i: u8) -> PublicKey {
        PublicKey([i; 32])
    }

    fn account(balance: u64, nonce: u64) -> Account {
        Account { balance, nonce }
    }

    /// A tree kept in memory, updated as the node updates its store.
    #[derive(Default)]
    struct Tree {
        nodes: BTreeMap<NodeKey, TreeNode>,
        root: Hash,
    }

    impl Tree {
        fn apply(&mut self, changes: &BTreeMap<PublicKey, Account>) {
            let update = update_tree(&self.nodes, changes);
            for (k, n) in update.writes {
                self.nodes.insert(k, n);
            }
            self.root = update.root;
            assert_eq!(stored_root(&self.nodes), self.root);
        }
    }

    #[test]
    fn empty_tree_proves_absence() {
        let tree = Tree::default();
        assert_eq!(tree.root, Hash::ZERO);
        let proof = prove_account(&tree.nodes, &address(1));
        assert_eq!(
            verify_account(&tree.root, &address(1), &Account::default(), &proof),
            Ok(())
        );
        assert_eq!(
            verify_account(&tree.root, &address(1), &account(1, 0), &proof),
            Err(ProofError::ValueMismatch)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// After random blocks of changes, every account proves present
        /// with its value and absent ones prove absent; the root is the
        /// root of the final state built at once; any change to the proof,
        /// the value or the root fails.
        #[test]
        fn proofs_verify_after_random_blocks(
            blocks in prop::collection::vec(
                prop::collection::btree_map(0u8..60, (0u64..5, 0u64..3), 0..12), 1..8),
            probe in 0u8..70,
        ) {
            let mut tree = Tree::default();
            let mut state: BTreeMap<PublicKey, Account> = BTreeMap::new();
            for block in &blocks {
                let changes: BTreeMap<PublicKey, Account> = block
                    .iter()
                    .map(|(a, (b, n))| (address(*a), account(*b, *n)))
                    .collect();
                tree.apply(&changes);
                state.extend(changes);
            }
            // The root depends only on the final state.
            let mut once = Tree::default();
            once.apply(&state);
            prop_assert_eq!(once.root, tree.root);
            // Every account, and the probe.
            for (a, acc) in &state {
                let proof = prove_account(&tree.nodes, a);
                prop_assert_eq!(verify_account(&tree.root, a, acc, &proof), Ok(()));
                let wrong = account(acc.balance + 1, acc.nonce);
                prop_assert!(verify_account(&tree.root, a, &wrong, &proof).is_err());
            }
            let p = address(probe);
            let claimed = state.get(&p).copied().unwrap_or_default();
            let proof = prove_account(&tree.nodes, &p);
            prop_assert_eq!(verify_account(&tree.root, &p, &claimed, &proof), Ok(()));
            // Tampering with any part fails.
            let mut root = tree.root;
            root.0[5] ^= 1;
            prop_assert!(verify_account(&root, &p, &claimed, &proof).is_err());
            for i in 0..proof.siblings.len() {
                let mut bad = proof.clone();
                bad.siblings[i].0[0] ^= 0x40;
                prop_assert!(verify_account(&tree.root, &p, &claimed, &bad).is_err());
            }
            if let Some(leaf) = proof.leaf {
                let mut bad = proof.clone();
                bad.leaf = Some(ProofLeaf { key: leaf.key, value: Hash([9; 32]) });
                prop_assert!(verify_account(&tree.root, &p, &claimed, &bad).is_err());
                let mut gone = proof.clone();
                gone.leaf = None;
                prop_assert!(verify_account(&tree.root, &p, &Account::default(), &gone).is_err());
            }
            if !proof.siblings.is_empty() {
                let mut short = proof.clone();
                short.siblings.pop();
                prop_assert!(verify_account(&tree.root, &p, &claimed, &short).is_err());
            }
        }

        /// The order in which one block's changes reach the tree does not
        /// matter (they are sorted), nor how the same final state was split
        /// into blocks.
        #[test]
        fn root_is_independent_of_update_order(
            changes in prop::collection::btree_map(0u8..200, 1u64..9, 1..40),
            cut in 0usize..40,
        ) {
            let all: Vec<(PublicKey, Account)> =
                changes.iter().map(|(a, b)| (address(*a), account(*b, 0))).collect();
            let cut = cut.min(all.len());
            let mut split = Tree::default();
            split.apply(&all[cut..].iter().copied().collect());
            split.apply(&all[..cut].iter().copied().collect());
            let mut once = Tree::default();
            once.apply(&all.iter().copied().collect());
            prop_assert_eq!(split.root, once.root);
        }
    }

    #[test]
    fn a_proof_for_one_address_does_not_prove_another() {
        let mut tree = Tree::default();
        tree.apply(
            &(1..20)
                .map(|i| (address(i), account(i as u64, 0)))
                .collect(),
        );
        let proof = prove_account(&tree.nodes, &address(3));
        assert_eq!(
            verify_account(&tree.root, &address(3), &account(3, 0), &proof),
            Ok(())
        );
        // Presented as another address's proof: it is not on that path or
        // the value differs.
        assert!(verify_account(&tree.root, &address(4), &account(3, 0), &proof).is_err());
        assert!(verify_account(&tree.root, &address(4), &Account::default(), &proof).is_err());
    }
}
