//! The transfers a run submits, signed and serialized into HTTP batch bodies
//! before the clock starts, so the benchmark spends almost no CPU while it
//! measures.
//!
//! Transfer `k` is sent by account `k mod M` with nonce `k div M` to the
//! next account, amount 1, so every account sends in nonce order and money
//! only moves between genesis accounts (total supply is checkable). Account
//! `a` always goes to validator `a mod N`, so its transactions reach one
//! mempool in order; each validator's stream is cut into batches.
//!
//! A body is a JSON array or the binary batch of
//! [`cairn_core::tx_batch`] ([`Format`]); either way each entry's bytes are
//! kept findable, so refused entries can be sent again in a new body.

use std::collections::HashMap;

use cairn_core::api::TxJson;
use cairn_core::{tx_batch, Hash, Keypair, SignedTransaction, Transfer};

/// How batch bodies are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON array (`application/json`), as people send it.
    Json,
    /// The binary batch (`application/octet-stream`, `cairn_core::tx_batch`).
    Binary,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Binary => tx_batch::CONTENT_TYPE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Binary => "binary",
        }
    }

    /// About how many bytes one transfer's entry takes.
    fn entry_bytes(self) -> usize {
        match self {
            Format::Json => 330,
            Format::Binary => 200,
        }
    }

    /// Appends one transaction's entry (no separator) to `out`.
    fn write_entry(self, tx: &SignedTransaction, out: &mut Vec<u8>) {
        match self {
            Format::Json => {
                serde_json::to_writer(&mut *out, &TxJson::from(tx)).expect("JSON into a Vec")
            }
            Format::Binary => tx_batch::encode_entry(tx, out),
        }
    }

    /// The body of a batch of `entries` (each as [`Format::write_entry`]
    /// wrote it), and where each entry lies in it.
    pub fn body(self, entries: &[&[u8]]) -> (Vec<u8>, Vec<(u32, u32)>) {
        let size = entries.iter().map(|e| e.len() + 1).sum::<usize>() + 8;
        let mut body = Vec::with_capacity(size);
        let mut spans = Vec::with_capacity(entries.len());
        match self {
            Format::Json => body.push(b'['),
            Format::Binary => body.extend_from_slice(&tx_batch::count_prefix(entries.len())),
        }
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 && self == Format::Json {
                body.push(b',');
            }
            let start = body.len() as u32;
            body.extend_from_slice(entry);
            spans.push((start, body.len() as u32));
        }
        if self == Format::Json {
            body.push(b']');
        }
        (body, spans)
    }
}

/// One `POST /v1/transactions/batch` request, ready to send.
pub struct Batch {
    /// Index into [`Workload::batch_count`]-sized per-batch arrays.
    pub id: u32,
    pub validator: usize,
    pub tx_count: u32,
    /// The body, in the workload's [`Format`].
    pub body: Vec<u8>,
    /// Where each entry lies in `body`: refused entries are sent again.
    pub spans: Vec<(u32, u32)>,
    /// The sending account of each entry (its index in the workload).
    pub accounts: Vec<u32>,
}

impl Batch {
    /// Entry `i`'s bytes (a JSON object, or one encoded transaction).
    pub fn entry(&self, i: usize) -> &[u8] {
        let (start, end) = self.spans[i];
        &self.body[start as usize..end as usize]
    }
}

/// Everything a run will submit.
pub struct Workload {
    pub format: Format,
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

/// Signed transfers `range`: hashes, their entries (in a [`Format`])
/// concatenated, and the end offset of each.
struct Signed {
    hashes: Vec<Hash>,
    entries: Vec<u8>,
    ends: Vec<usize>,
}

fn sign_range(
    accounts: &[Keypair],
    chain_id: &str,
    format: Format,
    range: std::ops::Range<usize>,
) -> Signed {
    let mut signed = Signed {
        hashes: Vec::with_capacity(range.len()),
        entries: Vec::with_capacity(range.len() * format.entry_bytes()),
        ends: Vec::with_capacity(range.len()),
    };
    for k in range {
        let tx = transfer(accounts, chain_id, k);
        signed.hashes.push(tx.hash());
        format.write_entry(&tx, &mut signed.entries);
        signed.ends.push(signed.entries.len());
    }
    signed
}

/// Signs `tx_count` transfers over `accounts` on every core and cuts each
/// validator's stream into batches of at most `batch_txs`, in `format`.
pub fn build(
    accounts: &[Keypair],
    chain_id: &str,
    format: Format,
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
                scope.spawn(move || sign_range(accounts, chain_id, format, start..end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("signing thread"))
            .collect()
    });
    let entry_of = |k: usize| -> &[u8] {
        let part = &parts[k / chunk];
        let i = k % chunk;
        let start = if i == 0 { 0 } else { part.ends[i - 1] };
        &part.entries[start..part.ends[i]]
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
            let entries: Vec<&[u8]> = txs.iter().map(|&k| entry_of(k)).collect();
            let (body, spans) = format.body(&entries);
            for &k in txs {
                batch_of_tx[k] = batch_count;
            }
            list.push(Batch {
                id: batch_count,
                validator,
                tx_count: txs.len() as u32,
                body,
                spans,
                accounts: txs.iter().map(|&k| (k % accounts.len()) as u32).collect(),
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
        format,
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

    /// The transactions of a batch body, and of each entry alone.
    fn decode(format: Format, batch: &Batch) -> Vec<SignedTransaction> {
        let txs: Vec<SignedTransaction> = match format {
            Format::Json => serde_json::from_slice::<Vec<TxJson>>(&batch.body)
                .unwrap()
                .iter()
                .map(|t| SignedTransaction::try_from(t).unwrap())
                .collect(),
            Format::Binary => tx_batch::decode(&batch.body, 10_000).unwrap(),
        };
        for (i, tx) in txs.iter().enumerate() {
            let alone = match format {
                Format::Json => {
                    let json: TxJson = serde_json::from_slice(batch.entry(i)).unwrap();
                    SignedTransaction::try_from(&json).unwrap()
                }
                Format::Binary => cairn_core::codec::decode(batch.entry(i)).unwrap(),
            };
            assert_eq!(&alone, tx);
        }
        txs
    }

    #[test]
    fn batches_keep_each_account_on_one_validator_in_nonce_order() {
        let accounts: Vec<Keypair> = (0..6u8).map(|i| Keypair::from_seed([i + 1; 32])).collect();
        for format in [Format::Json, Format::Binary] {
            let workload = build(&accounts, "c", format, 3, 50, 4);
            assert_eq!(workload.tx_count, 50);
            assert_eq!(workload.tx_by_hash.len(), 50);
            let mut last_nonce: HashMap<cairn_core::PublicKey, u64> = HashMap::new();
            let mut seen = 0;
            for (v, list) in workload.batches.iter().enumerate() {
                for batch in list {
                    assert_eq!(batch.validator, v);
                    let txs = decode(format, batch);
                    assert_eq!(txs.len(), batch.tx_count as usize);
                    assert!(txs.len() <= 4);
                    for signed in txs {
                        assert_eq!(signed.verify_signature(), Ok(()));
                        let k = workload.tx_by_hash[&signed.hash()] as usize;
                        assert_eq!(workload.batch_of_tx[k], batch.id);
                        let a = accounts
                            .iter()
                            .position(|a| a.public() == signed.transfer.from);
                        assert_eq!(a.unwrap() % 3, v);
                        let nonce = signed.transfer.nonce;
                        if let Some(prev) = last_nonce.insert(signed.transfer.from, nonce) {
                            assert_eq!(nonce, prev + 1);
                        }
                        seen += 1;
                    }
                }
            }
            assert_eq!(seen, 50);
        }
    }

    /// A body of some entries of earlier batches (a retry) is a valid
    /// batch of exactly those transactions.
    #[test]
    fn a_body_of_chosen_entries_is_a_batch_of_them() {
        let accounts: Vec<Keypair> = (0..4u8).map(|i| Keypair::from_seed([i + 9; 32])).collect();
        for format in [Format::Json, Format::Binary] {
            let workload = build(&accounts, "c", format, 1, 12, 5);
            let list = &workload.batches[0];
            let chosen = [list[0].entry(4), list[1].entry(0), list[2].entry(1)];
            let (body, spans) = format.body(&chosen);
            let again = Batch {
                id: 0,
                validator: 0,
                tx_count: 3,
                body,
                spans,
                accounts: vec![0; 3],
            };
            let expected: Vec<SignedTransaction> = [(0, 4), (1, 0), (2, 1)]
                .iter()
                .map(|&(j, i)| decode(format, &list[j])[i].clone())
                .collect();
            assert_eq!(decode(format, &again), expected);
        }
    }
}
