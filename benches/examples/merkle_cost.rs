//! What the Merkle state costs: the state tree update per block as a
//! validator commits it (nodes read from and written to sled through
//! `Storage`), the size of an account proof, and the time to verify one.
//!
//! ```sh
//! cargo run --release -p cairn-bench --example merkle_cost -- 100000 20
//! ```
//!
//! Arguments: accounts in the genesis state, blocks to commit. Each block
//! changes 20,000 random accounts, as a full 10,000-transfer block between
//! distinct accounts does. Printed: ms per block for the tree update alone
//! (`update_tree`, reading the nodes it needs from sled) and for the whole
//! commit (`Storage::commit_block` with the tree writes); the proof size in
//! siblings and bytes of JSON; and µs per proof verification.

use std::collections::BTreeMap;
use std::time::Instant;

use cairn_core::merkle::{self, update_tree};
use cairn_core::state::{Account, ViewTree};
use cairn_core::{Block, BlockHeader, Certificate, Hash, Height, PublicKey, View};
use cairn_node::storage::Storage;

const CHANGES_PER_BLOCK: usize = 20_000;

/// A deterministic generator (splitmix64): runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn address(i: u64) -> PublicKey {
    PublicKey(Hash::digest(&[b"merkle-cost account", &i.to_le_bytes()]).0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let accounts: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let blocks: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let genesis_accounts: BTreeMap<PublicKey, Account> = (0..accounts)
        .map(|i| {
            (
                address(i),
                Account {
                    balance: 1_000_000,
                    nonce: 0,
                },
            )
        })
        .collect();
    let started = Instant::now();
    let genesis = Block {
        header: BlockHeader {
            height: Height(0),
            parent_hash: Hash([7; 32]),
            view: View(0),
            proposer: PublicKey([0; 32]),
            timestamp_ms: 0,
            tx_root: cairn_core::tx_root([]),
            state_root: cairn_core::state::genesis_state_root(&genesis_accounts),
        },
        transactions: vec![],
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::open(dir.path(), &genesis, &genesis_accounts).expect("open");
    println!(
        "genesis of {accounts} accounts stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut rng = Rng(42);
    let mut parent = genesis;
    let (mut update_ms, mut commit_ms) = (Vec::new(), Vec::new());
    let per_block = CHANGES_PER_BLOCK.min(accounts as usize);
    for h in 1..=blocks {
        let mut changes = BTreeMap::new();
        while changes.len() < per_block {
            let i = rng.next() % accounts;
            changes.insert(
                address(i),
                Account {
                    balance: rng.next() % 1_000_000,
                    nonce: h,
                },
            );
        }
        let t = Instant::now();
        let tree = update_tree(&ViewTree(&storage), &changes);
        update_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let mut header = parent.header.clone();
        header.height = Height(h);
        header.parent_hash = parent.hash();
        header.state_root = tree.root;
        let block = Block {
            header,
            transactions: vec![],
        };
        let certificate = Certificate {
            height: block.height(),
            view: View(0),
            block_hash: block.hash(),
            signatures: vec![],
        };
        let list: Vec<(PublicKey, Account)> = changes.into_iter().collect();
        let t = Instant::now();
        storage
            .commit_block(&block, &certificate, &[], &list, &tree.writes)
            .expect("commit");
        commit_ms.push(t.elapsed().as_secs_f64() * 1e3);
        parent = block;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "{blocks} blocks of {per_block} changed accounts over {accounts}: \
         tree update {:.1} ms mean ({:.1} max), commit with tree writes {:.1} ms mean ({:.1} max)",
        mean(&update_ms),
        max(&update_ms),
        mean(&commit_ms),
        max(&commit_ms)
    );
    // Proofs: size and verification time.
    let root = parent.header.state_root;
    let probes = 2_000u64;
    let mut siblings = 0usize;
    let mut json_bytes = 0usize;
    let mut proofs = Vec::new();
    for k in 0..probes {
        let a = address(rng.next() % accounts.max(1) + (k % 2) * accounts);
        let (_, account, proof) = storage.account_with_proof(&a).expect("proof");
        siblings += proof.siblings.len();
        json_bytes += serde_json::to_string(&cairn_core::verify::state_proof_json(&proof))
            .expect("json")
            .len();
        proofs.push((a, account, proof));
    }
    let t = Instant::now();
    for (a, account, proof) in &proofs {
        merkle::verify_account(&root, a, account, proof).expect("verifies");
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / probes as f64;
    println!(
        "account proofs (half present, half absent): {:.1} siblings, {:.0} bytes of JSON on average; \
         verification {verify_us:.1} µs each",
        siblings as f64 / probes as f64,
        json_bytes as f64 / probes as f64,
    );
}
