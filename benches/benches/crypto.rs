//! Signing and ZIP-215 verification: one at a time and in batches, the way
//! admission checks a batch of submitted transfers.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cairn_bench::bound::verify_as_admission;
use cairn_bench::fixtures::{keys, transfers, CHAIN_ID};
use cairn_core::{SignedTransaction, Transfer};

fn signing(c: &mut Criterion) {
    let keys = keys(2);
    let transfer = Transfer {
        chain_id: CHAIN_ID.into(),
        from: keys[0].public(),
        to: keys[1].public(),
        amount: 1,
        nonce: 0,
    };
    c.bench_function("sign transfer", |b| {
        b.iter(|| SignedTransaction::sign(transfer.clone(), &keys[0]))
    });
}

fn single_verification(c: &mut Criterion) {
    let tx = transfers(&keys(2), 1).remove(0);
    c.bench_function("verify one signature (ZIP-215)", |b| {
        b.iter(|| tx.verify_signature().expect("valid"))
    });
}

fn batch_verification(c: &mut Criterion) {
    let txs = transfers(&keys(1024), 1024);
    let mut group = c.benchmark_group("verify batch (ZIP-215)");
    for size in [64usize, 256, 1024] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| verify_as_admission(&txs[..size]))
        });
    }
    group.finish();
}

criterion_group!(benches, signing, single_verification, batch_verification);
criterion_main!(benches);
