//! Admission: every check a transaction passes before it enters the mempool
//! (well-formed, right chain, amount > 0, nonce, balance, caps, signature), shared
//! by the API and by transactions gossiped from peers.

use cairn_core::state::Account;
use cairn_core::{Hash, SignedTransaction};

use crate::mempool::{AdmitError, Admitted, Origin};
use crate::p2p::HeldBack;
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
            AdmitError::Full(_) | AdmitError::ParkedFull(_) => 503,
            AdmitError::SenderLimit { .. } | AdmitError::SenderParkedLimit { .. } => 429,
            AdmitError::NoncePending(_) => 409,
            AdmitError::Invalid(_) | AdmitError::PendingOverspend { .. } => 400,
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
    ///
    /// The checks run cheapest first, and signatures last: chain, amount
    /// and addresses; then, against committed state and the mempool, the
    /// nonce window, a pending nonce, the balance, the sender's caps and room
    /// in the pool. Only what passes all of them costs a signature check, so
    /// unfunded keys, replays and an overloaded node's refusals cost no
    /// curve arithmetic.
    pub fn submit(&self, txs: Vec<SignedTransaction>, gossip: bool) -> Vec<Result<Hash, Refusal>> {
        let chain_id = self.genesis.chain_id();
        let origin = if gossip { Origin::Client } else { Origin::Peer };
        let hashes: Vec<Hash> = txs.iter().map(|t| t.hash()).collect();
        let mut verdicts: Vec<Option<Result<Hash, Refusal>>> = vec![None; txs.len()];
        // Stateless checks, and the committed accounts of the rest (read
        // outside the mempool lock).
        // A node still checking what its peers gossiped is at its limit:
        // new clients wait (503, retry later) so that the validators'
        // mempools stay alike and consensus keeps its share of the CPU. So
        // do they while the primary (or f + 1 peers) has not taken the
        // gossip we sent it: what we admitted now would wait in our queue,
        // and the primary could not propose it.
        let busy = origin == Origin::Client && self.network.gossip_inbox_busy();
        let view_timeout =
            std::time::Duration::from_millis(self.genesis.genesis.params.view_timeout_ms);
        let held_back = if origin == Origin::Client && !busy {
            let primary = self.status.read().expect("status lock").leader;
            let quorum_gap = cairn_core::max_faulty(self.genesis.validators.len()) + 1;
            self.network
                .gossip_held_back(primary, quorum_gap, view_timeout)
        } else {
            HeldBack::Not
        };
        let overloaded = busy || held_back != HeldBack::Not;
        let mut candidates: Vec<(usize, Account)> = Vec::with_capacity(txs.len());
        let mut seen = std::collections::HashSet::with_capacity(txs.len());
        for (i, tx) in txs.iter().enumerate() {
            if let Err(e) = tx.check_stateless(chain_id) {
                verdicts[i] = Some(Err(Refusal::new(400, e.code(), e.to_string())));
                continue;
            }
            if overloaded {
                verdicts[i] = Some(Err(Refusal::new(
                    503,
                    "overloaded",
                    if busy {
                        "this validator is busy checking transactions from its peers; try again shortly"
                    } else {
                        "the other validators have not yet taken what this one sent them; try again shortly"
                    },
                )));
                continue;
            }
            if !seen.insert(hashes[i]) {
                // The same transaction twice in one request: one check,
                // one verdict for both.
                continue;
            }
            match self.storage.account(&tx.transfer.from) {
                Ok(account) => candidates.push((i, account)),
                Err(e) => {
                    verdicts[i] = Some(Err(Refusal::new(503, "storage_error", e.to_string())))
                }
            }
        }
        let mut to_verify: Vec<usize> = Vec::with_capacity(candidates.len());
        {
            let mempool = self.mempool.lock().expect("mempool lock");
            let mut room = mempool.room_for(origin);
            for (i, account) in candidates {
                if mempool.contains(&hashes[i]) {
                    verdicts[i] = Some(Ok(hashes[i]));
                    continue;
                }
                // `precheck` judges room in the pool as it is (in a full
                // one: whether this sender may evict); what this request
                // adds before it takes room too.
                let checked = mempool.precheck(&txs[i], account, origin).and_then(|()| {
                    if room > 0 {
                        room -= 1;
                        Ok(())
                    } else if mempool.room_for(origin) == 0 {
                        Ok(())
                    } else {
                        Err(AdmitError::Full(mempool.capacity()))
                    }
                });
                match checked {
                    Ok(()) => to_verify.push(i),
                    Err(e) => verdicts[i] = Some(Err(e.into())),
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
                // Read again, under the mempool lock: a block may have
                // committed since the first reading, and a transaction
                // admitted against older state than the pool's last re-check
                // could hold a used nonce or spend money that is gone. (A
                // commit's re-check takes this lock after the state is
                // written, so a reading here is never older than the pool.)
                // `admit` runs every check again.
                let tx = &txs[i];
                let account = match self.storage.account(&tx.transfer.from) {
                    Ok(account) => account,
                    Err(e) => {
                        verdicts[i] = Some(Err(Refusal::new(503, "storage_error", e.to_string())));
                        continue;
                    }
                };
                verdicts[i] = Some(
                    match mempool.admit(tx.clone(), hashes[i], account, now_ms, origin) {
                        Ok(Admitted::New) => {
                            admitted.push(tx.clone());
                            Ok(hashes[i])
                        }
                        Ok(Admitted::AlreadyPending) => Ok(hashes[i]),
                        Err(e) => {
                            mempool.remember_refused(hashes[i], &e);
                            Err(e.into())
                        }
                    },
                );
            }
            self.metrics.observe_mempool(&mempool);
        }
        // Duplicates within the request share the first one's verdict.
        let mut first_verdict: std::collections::HashMap<Hash, Result<Hash, Refusal>> =
            std::collections::HashMap::new();
        for (i, verdict) in verdicts.iter().enumerate() {
            if let Some(v) = verdict {
                first_verdict.entry(hashes[i]).or_insert_with(|| v.clone());
            }
        }
        let verdicts: Vec<Result<Hash, Refusal>> = verdicts
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.or_else(|| first_verdict.get(&hashes[i]).cloned())
                    .expect("every transaction has a verdict")
            })
            .collect();
        let refused = verdicts.iter().filter(|v| v.is_err()).count();
        if origin == Origin::Peer && refused > 0 {
            // Counted per code, not per transaction: a few codes at most.
            let mut by_code: Vec<(&'static str, u64)> = Vec::new();
            for refusal in verdicts.iter().filter_map(|v| v.as_ref().err()) {
                match by_code.iter_mut().find(|(code, _)| *code == refusal.code) {
                    Some((_, count)) => *count += 1,
                    None => by_code.push((refusal.code, 1)),
                }
            }
            for (code, count) in by_code {
                self.metrics.gossip_refused(code, count);
            }
        }
        // Refusals for want of room here mean the other validators are
        // likely refusing too, which quiets the censorship judge for a
        // while (`NodeLedger::oldest_pending_ms`). Gossip held back by a
        // primary that credits nothing does not: a faulty primary must
        // still be voted out for the transactions it never takes.
        if held_back != (HeldBack::ByPrimary { draining: false })
            && verdicts
                .iter()
                .any(|v| matches!(v, Err(r) if r.code == "mempool_full" || r.code == "overloaded"))
        {
            self.metrics.saw_overload();
        }
        self.metrics.rejected_transactions.inc_by(refused as u64);
        self.metrics
            .admitted_transactions
            .inc_by(admitted.len() as u64);
        if !admitted.is_empty() {
            if gossip {
                self.network.gossip_transactions(admitted);
            }
            self.nudge_consensus();
        }
        verdicts
    }
}
