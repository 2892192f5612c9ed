//! The transfers a run submits, signed and serialized into HTTP batch bodies
//! before the clock starts, so the benchmark spends almost no CPU while it
//! measures.
//!
//! Transfer `k` is sent by account `k mod M` with nonce `k div M` to the
//! next account, amount 1, so every account sends in nonce order and money
//! only moves between genesis accounts (total supply is checkable). Account
//! `a` always goes to validator `a mod N`, so its transactions reach one
//! mempool in order; each validator's stream is cut into batches.

use std::collections::HashMap;

use cairn_core::api::TxJson;
use cairn_core::{Hash, Keypair, SignedTransaction, Transfer};

/// One `POST /v1/transactions/batch` request, ready to send.
pub struct Batch {
    /// Index into [`Workload::batch_count`]-sized per-batch arrays.
    pub id: u32,
    pub validator: usize,
    pub tx_count: u32,
    /// The JSON array body.
    pub body: Vec<u8>,
    /// Where each entry's JSON ends in `body` (it starts one byte after the
    /// previous end, or after the `[`): refused entries are sent again.
    pub ends: Vec<u32>,
}

impl Batch {
    /// Entry `i`'s JSON object.
    pub fn entry(&self, i: usize) -> &[u8] {
        let start = if i == 0 {
            1
        } else {
            self.ends[i - 1] as usize + 1
        };
        &self.body[start..self.ends[i] as usize]
    }
}

/// Everything a run will submit.
pub struct Workload {
    /// Batches per validator, in send order.
    pub batches: Vec<Vec<Batch>>,
    pub batch_count: usize,
    pub tx_count: usize,
    /// Which transaction a committed hash is.
    pub tx_by_hash: HashMap<Hash, u32>,
    /// The batch each transaction was sent in.
    pub batch_of_tx: Vec<u32>,
}

/// Transfer `k` of a workload over `accounts`.
pub fn transfer(accounts: &[Keypair], chain_id: &str, k: usize) -> SignedTransaction {
    let m = accounts.len();
    let from = &accounts[k % m];
    SignedTransaction::sign(
        Transfer {
            chain_id: chain_id.to_string(),
            from: from.public(),
            to: accounts[(k + 1) % m].public(),
            amount: 1,
            nonce: (k / m) as u64,
        },
        from,
    )
}

/// The validator transfer `k` goes to.
pub fn validator_of(k: usize, accounts: usize, validators: usize) -> usize {
    (k % accounts) % validators
}

/// Signed JSON of transfers `range`: hashes, concatenated JSON objects and
/// the end offset of each.
struct Signed {
    hashes: Vec<Hash>,
    json: Vec<u8>,
    ends: Vec<usize>,
}

fn sign_range(accounts: &[Keypair], chain_id: &str, range: std::ops::Range<usize>) -> Signed {
    let mut signed = Signed {
        hashes: Vec::with_capacity(range.len()),
        json: Vec::with_capacity(range.len() * 320),
        ends: Vec::with_capacity(range.len()),
    };
    for k in range {
        let tx = transfer(accounts, chain_id, k);
        signed.hashes.push(tx.hash());
        serde_json::to_writer(&mut signed.json, &TxJson::from(&tx)).expect("JSON into a Vec");
        signed.ends.push(signed.json.len());
    }
    signed
}

/// Signs `tx_count` transfers over `accounts` on every core and cuts each
/// validator's stream into batches of at most `batch_txs`.
pub fn build(
    accounts: &[Keypair],
    chain_id: &str,
    validators: usize,
    tx_count: usize,
    batch_txs: usize,
) -> Workload {
    assert!(
        accounts.len() >= validators,
        "every validator needs an account"
    );
    assert!(batch_txs > 0 && tx_count < u32::MAX as usize);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = tx_count.div_ceil(threads).max(1);
    let parts: Vec<Signed> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..tx_count)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(tx_count);
                scope.spawn(move || sign_range(accounts, chain_id, start..end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("signing thread"))
            .collect()
    });
    let json_of = |k: usize| -> &[u8] {
        let part = &parts[k / chunk];
        let i = k % chunk;
        let start = if i == 0 { 0 } else { part.ends[i - 1] };
        &part.json[start..part.ends[i]]
    };

    let mut streams: Vec<Vec<usize>> = vec![Vec::new(); validators];
    for k in 0..tx_count {
        streams[validator_of(k, accounts.len(), validators)].push(k);
    }
    let mut batch_of_tx = vec![0u32; tx_count];
    let mut batch_count = 0u32;
    let mut batches = Vec::with_capacity(validators);
    for (validator, stream) in streams.iter().enumerate() {
        let mut list = Vec::new();
        for txs in stream.chunks(batch_txs) {
            let mut body = Vec::with_capacity(txs.len() * 330 + 2);
            let mut ends = Vec::with_capacity(txs.len());
            body.push(b'[');
            for (i, &k) in txs.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(json_of(k));
                ends.push(body.len() as u32);
                batch_of_tx[k] = batch_count;
            }
            body.push(b']');
            list.push(Batch {
                id: batch_count,
                validator,
                tx_count: txs.len() as u32,
                body,
                ends,
            });
            batch_count += 1;
        }
        batches.push(list);
    }
    let mut tx_by_hash = HashMap::with_capacity(tx_count);
    for (p, part) in parts.iter().enumerate() {
        for (i, hash) in part.hashes.iter().enumerate() {
            tx_by_hash.insert(*hash, (p * chunk + i) as u32);
        }
    }
    Workload {
        batches,
        batch_count: batch_count as usize,
        tx_count,
        tx_by_hash,
        batch_of_tx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_each_account_on_one_validator_in_nonce_order() {
        let accounts: Vec<Keypair> = (0..6u8).map(|i| Keypair::from_seed([i + 1; 32])).collect();
        let workload = build(&accounts, "c", 3, 50, 4);
        assert_eq!(workload.tx_count, 50);
        assert_eq!(workload.tx_by_hash.len(), 50);
        let mut last_nonce: HashMap<String, u64> = HashMap::new();
        let mut seen = 0;
        for (v, list) in workload.batches.iter().enumerate() {
            for batch in list {
                assert_eq!(batch.validator, v);
                let txs: Vec<TxJson> = serde_json::from_slice(&batch.body).unwrap();
                assert_eq!(txs.len(), batch.tx_count as usize);
                for (i, tx) in txs.iter().enumerate() {
                    let entry: TxJson = serde_json::from_slice(batch.entry(i)).unwrap();
                    assert_eq!(&entry, tx);
                }
                assert!(txs.len() <= 4);
                for tx in txs {
                    let signed = SignedTransaction::try_from(&tx).unwrap();
                    assert_eq!(signed.verify_signature(), Ok(()));
                    let k = workload.tx_by_hash[&signed.hash()] as usize;
                    assert_eq!(workload.batch_of_tx[k], batch.id);
                    let a = accounts
                        .iter()
                        .position(|a| a.public() == signed.transfer.from);
                    assert_eq!(a.unwrap() % 3, v);
                    if let Some(prev) = last_nonce.insert(tx.from.clone(), tx.nonce) {
                        assert_eq!(tx.nonce, prev + 1);
                    }
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 50);
    }
}
