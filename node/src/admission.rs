//! Admission: every check a transaction passes before it enters the mempool
//! (well-formed, right chain, amount > 0, signature, nonce, balance), shared
//! by the API and by transactions gossiped from peers.

use std::sync::atomic::Ordering;

use cairn_core::{Hash, SignedTransaction};

use crate::mempool::{AdmitError, Admitted};
use crate::Node;

/// Why a submitted transaction was refused: an HTTP status, the API error
/// code and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<AdmitError> for Refusal {
    fn from(e: AdmitError) -> Refusal {
        let status = match e {
            AdmitError::Full(_) => 503,
            AdmitError::NoncePending(_) => 409,
            _ => 400,
        };
        Refusal::new(status, e.code(), e.to_string())
    }
}

/// Verifies signatures in one batch (ZIP-215, same verdicts as one by one).
pub fn verify_signatures(txs: &[&SignedTransaction]) -> Vec<Result<(), ()>> {
    if txs.is_empty() {
        return Vec::new();
    }
    let messages: Vec<Vec<u8>> = txs.iter().map(|t| t.signed_message()).collect();
    cairn_core::verify_batch(
        txs.iter()
            .zip(messages)
            .map(|(t, m)| (&t.transfer.from, m, &t.signature)),
        rand_core::OsRng,
    )
    .into_iter()
    .map(|r| r.map_err(|_| ()))
    .collect()
}

impl Node {
    /// Runs every admission check on `txs` and admits the ones that pass.
    /// Returns one verdict per transaction, in order. New transactions are
    /// gossiped to the other validators when `gossip` is set (they came from
    /// a client, not a peer). Blocking: verifies signatures.
    pub fn submit(&self, txs: Vec<SignedTransaction>, gossip: bool) -> Vec<Result<Hash, Refusal>> {
        let chain_id = self.genesis.chain_id();
        let hashes: Vec<Hash> = txs.iter().map(|t| t.hash()).collect();
        let mut verdicts: Vec<Option<Result<Hash, Refusal>>> = vec![None; txs.len()];
        let mut to_verify = Vec::new();
        {
            // Signatures are the expensive check: an overloaded node sheds
            // what its mempool has no room for before verifying anything.
            let mempool = self.mempool.lock().expect("mempool lock");
            let room = mempool.room();
            for (i, tx) in txs.iter().enumerate() {
                if let Err(e) = tx.check_stateless(chain_id) {
                    verdicts[i] = Some(Err(Refusal::new(400, e.code(), e.to_string())));
                } else if mempool.contains(&hashes[i]) {
                    verdicts[i] = Some(Ok(hashes[i]));
                } else if to_verify.len() >= room {
                    verdicts[i] = Some(Err(AdmitError::Full(mempool.capacity()).into()));
                } else {
                    to_verify.push(i);
                }
            }
        }
        let refs: Vec<&SignedTransaction> = to_verify.iter().map(|&i| &txs[i]).collect();
        let signature_ok = verify_signatures(&refs);
        let mut admitted = Vec::new();
        let now_ms = crate::ledger::now_ms();
        {
            let mut mempool = self.mempool.lock().expect("mempool lock");
            for (&i, ok) in to_verify.iter().zip(signature_ok) {
                if ok.is_err() {
                    verdicts[i] = Some(Err(Refusal::new(
                        400,
                        "invalid_signature",
                        "signature does not verify",
                    )));
                    continue;
                }
                let tx = &txs[i];
                let account = match self.storage.account(&tx.transfer.from) {
                    Ok(account) => account,
                    Err(e) => {
                        verdicts[i] = Some(Err(Refusal::new(503, "storage_error", e.to_string())));
                        continue;
                    }
                };
                verdicts[i] = Some(
                    match mempool.admit(tx.clone(), hashes[i], account, now_ms) {
                        Ok(Admitted::New) => {
                            admitted.push(tx.clone());
                            Ok(hashes[i])
                        }
                        Ok(Admitted::AlreadyPending) => Ok(hashes[i]),
                        Err(e) => Err(e.into()),
                    },
                );
            }
            self.metrics
                .mempool_size
                .store(mempool.len() as u64, Ordering::Relaxed);
        }
        let refused = verdicts
            .iter()
            .filter(|v| matches!(v, Some(Err(_))))
            .count();
        self.metrics
            .rejected_transactions
            .fetch_add(refused as u64, Ordering::Relaxed);
        self.metrics
            .admitted_transactions
            .fetch_add(admitted.len() as u64, Ordering::Relaxed);
        if !admitted.is_empty() {
            if gossip {
                self.network.gossip_transactions(admitted);
            }
            self.nudge_consensus();
        }
        verdicts
            .into_iter()
            .map(|v| v.expect("every transaction has a verdict"))
            .collect()
    }
}
