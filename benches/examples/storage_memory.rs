//! How much memory a node's storage holds as the chain grows, and how long
//! a commit takes: commits full blocks and prints the process RSS and the
//! mean time per block every 20 blocks.
//!
//! ```sh
//! cargo run --release -p cairn-bench --example storage_memory -- storage 200
//! cargo run --release -p cairn-bench --example storage_memory -- raw-whole 200
//! ```
//!
//! Modes (one per process, so the RSS figures do not mix):
//! - `storage`: `cairn_node::storage::Storage::commit_block`, as a validator
//!   commits (blocks in 4 KiB chunks, the transaction index as sorted runs
//!   merged in the background); at the end it also times lookups of
//!   committed and absent transaction hashes;
//! - `raw-whole` / `raw-chunked`: 1.5 MB values into a bare sled tree with
//!   the same 16 MiB cache, each block as one value or in 4 KiB chunks;
//! - `raw-index32` / `raw-index20`: 10,000 index entries per block into a
//!   bare sled tree, keyed by 32 or 20 bytes (12-byte values).
//!
//! docs/BENCHMARKS.md ("Memory") gives the figures and why.

use cairn_bench::fixtures;
use cairn_core::state::Account;
use cairn_core::{
    tx_root, Block, Certificate, Hash, Keypair, PublicKey, Signature, SignedTransaction, Transfer,
    View,
};
use cairn_node::storage::{Storage, BLOCK_CHUNK_BYTES};

const TXS_PER_BLOCK: u64 = 10_000;
const RAW_VALUE_BYTES: usize = 1_500_000;

fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A block of `TXS_PER_BLOCK` transfers with distinct hashes. Storage
/// neither verifies signatures nor executes, so they carry a dummy one.
fn block_at(parent: &Block, from: &Keypair) -> (Block, Vec<Hash>) {
    let height = parent.height().next();
    let transactions: Vec<SignedTransaction> = (0..TXS_PER_BLOCK)
        .map(|i| SignedTransaction {
            transfer: Transfer {
                chain_id: "memory-probe".into(),
                from: from.public(),
                to: PublicKey([2; 32]),
                amount: 1,
                nonce: height.0 * TXS_PER_BLOCK + i,
            },
            signature: Signature([7; 64]),
        })
        .collect();
    let hashes: Vec<Hash> = transactions.iter().map(|t| t.hash()).collect();
    let mut header = parent.header.clone();
    header.height = height;
    header.parent_hash = parent.hash();
    header.tx_root = tx_root(&hashes);
    (
        Block {
            header,
            transactions,
        },
        hashes,
    )
}

fn storage(dir: &std::path::Path, blocks: u64) {
    let keys = fixtures::keys(1);
    let from = &keys[0];
    let accounts = fixtures::funded(&keys);
    let genesis = fixtures::genesis_block(&accounts);
    let storage = Storage::open(dir, &genesis, &accounts).expect("open storage");
    let mut parent = genesis;
    for h in 1..=blocks {
        let (block, hashes) = block_at(&parent, from);
        let certificate = Certificate {
            height: block.height(),
            view: View(0),
            block_hash: block.hash(),
            signatures: vec![],
        };
        let change = [(
            from.public(),
            Account {
                balance: fixtures::BALANCE - h,
                nonce: h * TXS_PER_BLOCK,
            },
        )];
        let tree = cairn_core::merkle::update_tree(
            &cairn_core::state::ViewTree(&storage),
            &change.iter().copied().collect(),
        );
        storage
            .commit_block(&block, &certificate, &hashes, &change, &tree.writes)
            .expect("commit");
        report("storage", h);
        if h % 20 == 0 {
            println!(
                "storage blocks={h} tx_index_runs={}",
                storage.tx_index_runs()
            );
        }
        if h == blocks {
            time_lookups(&storage, &block, &hashes);
        }
        parent = block;
    }
}

/// Times `GET /v1/transactions/{hash}`'s storage part: committed hashes
/// (of the last block and of block 1) and absent ones.
fn time_lookups(storage: &Storage, last: &Block, last_hashes: &[Hash]) {
    let first: Vec<Hash> = storage
        .block(cairn_core::Height(1))
        .expect("read")
        .expect("block 1")
        .transactions
        .iter()
        .map(|t| t.hash())
        .collect();
    for (what, hashes, expect) in [
        ("last_block", last_hashes.to_vec(), Some(last.height())),
        ("first_block", first, Some(cairn_core::Height(1))),
        (
            "absent",
            (0..TXS_PER_BLOCK)
                .map(|i| Hash::digest(&[b"absent", &i.to_be_bytes()]))
                .collect(),
            None,
        ),
    ] {
        let start = std::time::Instant::now();
        for hash in hashes.iter().take(2_000) {
            let found = storage.tx_height(hash).expect("lookup");
            if expect.is_some() {
                assert!(found.is_some(), "{what}: a committed hash not found");
            } else {
                assert_eq!(found, None, "{what}: an absent hash found");
            }
        }
        println!(
            "storage lookups={what} us_per_lookup={:.1}",
            start.elapsed().as_secs_f64() * 1e6 / hashes.len().min(2_000) as f64
        );
    }
}

fn raw(mode: &str, dir: &std::path::Path, blocks: u64) {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(16 * 1024 * 1024)
        .open()
        .expect("open sled");
    let tree = db.open_tree("probe").expect("tree");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for h in 1..=blocks {
        match mode {
            "raw-whole" | "raw-chunked" => {
                let value: Vec<u8> = (0..RAW_VALUE_BYTES).map(|_| next() as u8).collect();
                if mode == "raw-whole" {
                    tree.insert(h.to_be_bytes(), value).expect("insert");
                } else {
                    for (c, chunk) in value.chunks(BLOCK_CHUNK_BYTES).enumerate() {
                        let mut key = h.to_be_bytes().to_vec();
                        key.extend_from_slice(&(c as u32).to_be_bytes());
                        tree.insert(key, chunk).expect("insert");
                    }
                }
            }
            "raw-index32" | "raw-index20" => {
                let key_bytes = if mode == "raw-index32" { 32 } else { 20 };
                for i in 0..TXS_PER_BLOCK {
                    let key: Vec<u8> = (0..4).flat_map(|_| next().to_le_bytes()).collect();
                    let mut value = h.to_be_bytes().to_vec();
                    value.extend_from_slice(&(i as u32).to_be_bytes());
                    tree.insert(&key[..key_bytes], value).expect("insert");
                }
            }
            _ => unreachable!(),
        }
        db.flush().expect("flush");
        report(mode, h);
    }
}

/// Prints RSS and the mean commit time of the last 20 blocks, every 20.
fn report(mode: &str, height: u64) {
    thread_local! {
        static SINCE: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    if height.is_multiple_of(20) {
        let ms_per_block = SINCE.with(|since| {
            let now = std::time::Instant::now();
            let ms = since
                .get()
                .map(|s| now.duration_since(s).as_secs_f64() * 1e3 / 20.0);
            since.set(Some(now));
            ms
        });
        println!(
            "{mode} blocks={height} rss_mib={:.0} ms_per_block={}",
            rss_mib("VmRSS:"),
            ms_per_block.map_or("-".into(), |ms| format!("{ms:.1}"))
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: storage_memory storage|raw-whole|raw-chunked|raw-index32|raw-index20 BLOCKS";
    let (Some(mode), Some(blocks)) = (args.get(1), args.get(2).and_then(|b| b.parse().ok())) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let dir = tempfile::tempdir().expect("temp dir");
    match mode.as_str() {
        "storage" => storage(dir.path(), blocks),
        "raw-whole" | "raw-chunked" | "raw-index32" | "raw-index20" => {
            raw(mode, dir.path(), blocks)
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
    println!(
        "{mode} blocks={blocks} peak_rss_mib={:.0}",
        rss_mib("VmHWM:")
    );
}
