//! One sled block commit: a 1000-transfer block, its certificate, indexes
//! and account changes in one transaction, then a flush (what a validator
//! does once per committed block). Transaction hashes are computed before
//! the clock, as the validator has them from validation.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use cairn_bench::fixtures::{block_on, funded, genesis_block, keys, transfers};
use cairn_core::state::MemoryState;
use cairn_core::Height;
use cairn_node::storage::Storage;

fn commit_block(c: &mut Criterion) {
    let keys = keys(1000);
    let accounts = funded(&keys);
    let state = MemoryState::from_accounts(accounts.clone());
    let genesis = genesis_block(&accounts);
    let (block, certificate, changes) = block_on(&genesis, &state, transfers(&keys, 1000), 3);
    let changes: Vec<_> = changes.into_iter().collect();
    let tx_hashes: Vec<_> = block.transactions.iter().map(|t| t.hash()).collect();
    let dir = tempfile::tempdir().expect("temporary folder");
    let storage = Storage::open(dir.path(), &genesis, &accounts).expect("open storage");
    let mut group = c.benchmark_group("sled");
    group.throughput(Throughput::Elements(1000));
    group.sample_size(20);
    group.bench_function("commit block of 1000 transfers", |b| {
        // Each commit writes a new height (the block's contents repeat; the
        // storage layer does not re-validate), as a growing chain does.
        let mut height = 0u64;
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                height += 1;
                let mut next = block.clone();
                next.header.height = Height(height);
                let mut cert = certificate.clone();
                cert.height = next.height();
                cert.block_hash = next.hash();
                let start = Instant::now();
                storage
                    .commit_block(&next, &cert, &tx_hashes, &changes, &[])
                    .expect("commit");
                spent += start.elapsed();
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, commit_block);
criterion_main!(benches);
