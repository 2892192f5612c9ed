//! The canonical codec: a signed transfer and a 1000-transfer block, encoded
//! and decoded, and the transaction hash (an encode plus SHA-256).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use cairn_bench::fixtures::{block_on, funded, genesis_block, keys, transfers};
use cairn_core::codec;
use cairn_core::state::MemoryState;
use cairn_core::{Block, SignedTransaction};

fn transaction(c: &mut Criterion) {
    let tx = transfers(&keys(2), 1).remove(0);
    let bytes = codec::encode(&tx);
    c.bench_function("encode signed transfer", |b| b.iter(|| codec::encode(&tx)));
    c.bench_function("decode signed transfer", |b| {
        b.iter(|| codec::decode::<SignedTransaction>(&bytes).expect("decodes"))
    });
    c.bench_function("hash signed transfer", |b| b.iter(|| tx.hash()));
}

fn block(c: &mut Criterion) {
    let keys = keys(1000);
    let accounts = funded(&keys);
    let state = MemoryState::from_accounts(accounts.clone());
    let genesis = genesis_block(&accounts);
    let (block, _, _) = block_on(&genesis, &state, transfers(&keys, 1000), 3);
    let bytes = codec::encode(&block);
    let mut group = c.benchmark_group("block of 1000 transfers");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("encode", |b| b.iter(|| codec::encode(&block)));
    group.bench_function("decode", |b| {
        b.iter(|| codec::decode::<Block>(&bytes).expect("decodes"))
    });
    group.finish();
}

criterion_group!(benches, transaction, block);
criterion_main!(benches);
