//! The state transition: validating a 1000-transfer block (hashes, tx root,
//! every transfer through an Overlay over MemoryState, state root) and
//! applying its changes.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use cairn_bench::fixtures::{block_on, funded, genesis_block, keys, transfers, validate_block};
use cairn_core::state::MemoryState;

fn block_validation(c: &mut Criterion) {
    let keys = keys(1000);
    let accounts = funded(&keys);
    let state = MemoryState::from_accounts(accounts.clone());
    let genesis = genesis_block(&accounts);
    let (block, _, changes) = block_on(&genesis, &state, transfers(&keys, 1000), 3);
    let mut group = c.benchmark_group("block of 1000 transfers");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("validate (no signatures)", |b| {
        b.iter(|| validate_block(&block, &state, &genesis))
    });
    group.bench_function("apply changes to MemoryState", |b| {
        b.iter_batched_ref(
            || state.clone(),
            |state| state.apply_changes(&changes),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, block_validation);
criterion_main!(benches);
