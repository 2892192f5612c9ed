//! The bounded mempool: transactions that passed every admission check and
//! wait for a block, ordered per sender by nonce.
//!
//! Every transaction here had its signature verified exactly once, on the way
//! in (API or gossip); block validation trusts that and does not verify it
//! again. After each commit the mempool drops what the block made invalid.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use cairn_core::state::Account;
use cairn_core::{Hash, PublicKey, SignedTransaction, TxError};

/// How far ahead of the account nonce a pending transaction may be.
pub const NONCE_GAP_MAX: u64 = 1_000;
/// How many rejected transaction hashes are remembered for status queries.
pub const REJECTED_REMEMBERED_MAX: usize = 100_000;

/// Why a transaction was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Invalid(#[from] TxError),
    #[error("another transaction with nonce {0} from this sender is already pending")]
    NoncePending(u64),
    #[error(
        "pending transactions of this sender plus this one spend {needed}, balance is {balance}"
    )]
    PendingOverspend { needed: u128, balance: u64 },
    #[error("mempool is full ({0} transactions)")]
    Full(usize),
}

impl AdmitError {
    pub fn code(&self) -> &'static str {
        match self {
            AdmitError::Invalid(e) => e.code(),
            AdmitError::NoncePending(_) => "nonce_pending",
            AdmitError::PendingOverspend { .. } => "insufficient_funds",
            AdmitError::Full(_) => "mempool_full",
        }
    }
}

/// What happened to an admitted transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    New,
    AlreadyPending,
}

/// Where a transaction stands, as far as the mempool knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MempoolStatus {
    Pending,
    Rejected(String),
    Unknown,
}

struct Pending {
    tx: SignedTransaction,
    hash: Hash,
    /// When it was admitted here (`ledger::now_ms` time).
    since_ms: u64,
}

/// One sender's pending transactions by nonce, and what they spend in all.
#[derive(Default)]
struct SenderQueue {
    txs: BTreeMap<u64, Pending>,
    spend: u128,
}

pub struct Mempool {
    chain_id: String,
    capacity: usize,
    senders: HashMap<PublicKey, SenderQueue>,
    /// Senders whose queue holds their committed account nonce (the ones a
    /// block can take transactions from now), each with the turn it got when
    /// it became ready. A queue that starts above the account nonce waits
    /// for the gap to fill.
    ready: HashMap<PublicKey, u64>,
    /// The ready senders in turn order: blocks serve the longest-waiting
    /// sender first, and a sender served by a commit goes to the back.
    turns: BTreeSet<(u64, PublicKey)>,
    next_turn: u64,
    hashes: HashMap<Hash, (PublicKey, u64)>,
    rejected: HashMap<Hash, String>,
    rejected_order: VecDeque<Hash>,
}

impl Mempool {
    pub fn new(chain_id: String, capacity: usize) -> Mempool {
        assert!(capacity > 0);
        Mempool {
            chain_id,
            capacity,
            senders: HashMap::new(),
            ready: HashMap::new(),
            turns: BTreeSet::new(),
            next_turn: 0,
            hashes: HashMap::new(),
            rejected: HashMap::new(),
            rejected_order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// How many more transactions fit.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.hashes.len())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether a block could take a transaction now. Transactions waiting
    /// behind a nonce gap do not count: they are no work for consensus.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.hashes.contains_key(hash)
    }

    pub fn status(&self, hash: &Hash) -> MempoolStatus {
        if self.hashes.contains_key(hash) {
            MempoolStatus::Pending
        } else if let Some(reason) = self.rejected.get(hash) {
            MempoolStatus::Rejected(reason.clone())
        } else {
            MempoolStatus::Unknown
        }
    }

    /// Gives `sender` a new turn at the back (or drops its turn when it is
    /// not ready).
    fn set_ready(&mut self, sender: PublicKey, ready: bool) {
        if let Some(turn) = self.ready.remove(&sender) {
            self.turns.remove(&(turn, sender));
        }
        if ready {
            let turn = self.next_turn;
            self.next_turn += 1;
            self.ready.insert(sender, turn);
            self.turns.insert((turn, sender));
        }
    }

    /// Admits a transaction whose signature the caller verified, against the
    /// sender's committed `account`, at `now_ms`. Nothing changes on error.
    pub fn admit(
        &mut self,
        tx: SignedTransaction,
        hash: Hash,
        account: Account,
        now_ms: u64,
    ) -> Result<Admitted, AdmitError> {
        if self.hashes.contains_key(&hash) {
            return Ok(Admitted::AlreadyPending);
        }
        tx.check_stateless(&self.chain_id)?;
        let t = &tx.transfer;
        if t.nonce < account.nonce {
            return Err(TxError::NonceTooLow {
                expected: account.nonce,
                got: t.nonce,
            }
            .into());
        }
        if t.nonce > account.nonce.saturating_add(NONCE_GAP_MAX) {
            return Err(TxError::NonceTooHigh {
                expected: account.nonce,
                got: t.nonce,
            }
            .into());
        }
        let queue = self.senders.get(&t.from);
        if queue.is_some_and(|q| q.txs.contains_key(&t.nonce)) {
            return Err(AdmitError::NoncePending(t.nonce));
        }
        let pending_spend = queue.map_or(0, |q| q.spend);
        let needed = pending_spend + t.amount as u128;
        if needed > account.balance as u128 {
            return Err(if pending_spend == 0 {
                TxError::InsufficientFunds {
                    balance: account.balance,
                    amount: t.amount,
                }
                .into()
            } else {
                AdmitError::PendingOverspend {
                    needed,
                    balance: account.balance,
                }
            });
        }
        if self.hashes.len() >= self.capacity {
            return Err(AdmitError::Full(self.capacity));
        }
        let (from, nonce, amount) = (t.from, t.nonce, t.amount);
        self.hashes.insert(hash, (from, nonce));
        let queue = self.senders.entry(from).or_default();
        queue.spend += amount as u128;
        queue.txs.insert(
            nonce,
            Pending {
                tx,
                hash,
                since_ms: now_ms,
            },
        );
        if nonce == account.nonce && !self.ready.contains_key(&from) {
            self.set_ready(from, true);
        }
        Ok(Admitted::New)
    }

    /// Candidate transactions for a block, with their hashes: senders in turn
    /// order, each with the run of consecutive nonces starting at its
    /// committed nonce. `account` reads committed state. At most `max`.
    pub fn candidates(
        &self,
        max: usize,
        mut account: impl FnMut(&PublicKey) -> Account,
    ) -> Vec<(SignedTransaction, Hash)> {
        let mut out = Vec::with_capacity(max.min(self.hashes.len()));
        for (_, sender) in &self.turns {
            if out.len() >= max {
                break;
            }
            let Some(queue) = self.senders.get(sender) else {
                continue;
            };
            let first = account(sender).nonce;
            let run = (first..)
                .zip(queue.txs.range(first..))
                .take_while(|(expected, (nonce, _))| expected == *nonce)
                .take(max - out.len());
            out.extend(run.map(|(_, (_, pending))| (pending.tx.clone(), pending.hash)));
        }
        out
    }

    /// Since when the longest-waiting transaction a block could take now
    /// (the next one of each ready sender) has been here. Walks the ready
    /// senders.
    pub fn oldest_ready_since_ms(&self) -> Option<u64> {
        self.ready
            .keys()
            .filter_map(|sender| self.senders.get(sender)?.txs.values().next())
            .map(|pending| pending.since_ms)
            .min()
    }

    /// Up to `max` transactions a block could take now that have waited
    /// here since `before_ms` or earlier: the runs of consecutive nonces of
    /// the ready senders, oldest first within each.
    pub fn ready_since(&self, before_ms: u64, max: usize) -> Vec<SignedTransaction> {
        let mut out = Vec::new();
        for sender in self.ready.keys() {
            let Some(queue) = self.senders.get(sender) else {
                continue;
            };
            let mut expected = None;
            for (nonce, pending) in &queue.txs {
                if out.len() >= max || expected.is_some_and(|e| e != *nonce) {
                    break;
                }
                expected = Some(nonce + 1);
                if pending.since_ms <= before_ms {
                    out.push(pending.tx.clone());
                }
            }
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// After a commit: drops the block's transactions and every pending
    /// transaction of the touched senders whose nonce is now used, remembering
    /// the latter as rejected; touched senders still ready go to the back.
    pub fn remove_committed(
        &mut self,
        committed: &[SignedTransaction],
        committed_hashes: &[Hash],
        mut account: impl FnMut(&PublicKey) -> Account,
    ) {
        let mut senders: Vec<PublicKey> = committed.iter().map(|t| t.transfer.from).collect();
        senders.sort_unstable();
        senders.dedup();
        let committed_hashes: HashSet<&Hash> = committed_hashes.iter().collect();
        for sender in senders {
            let nonce = account(&sender).nonce;
            let Some(queue) = self.senders.get_mut(&sender) else {
                continue;
            };
            let keep = queue.txs.split_off(&nonce);
            let stale = std::mem::replace(&mut queue.txs, keep);
            for pending in stale.values() {
                queue.spend -= pending.tx.transfer.amount as u128;
            }
            let ready = queue.txs.contains_key(&nonce);
            if queue.txs.is_empty() {
                self.senders.remove(&sender);
            }
            self.set_ready(sender, ready);
            for (_, pending) in stale {
                self.hashes.remove(&pending.hash);
                if !committed_hashes.contains(&pending.hash) {
                    self.remember_rejected(
                        pending.hash,
                        "another transaction with the same nonce was committed".into(),
                    );
                }
            }
        }
    }

    fn remember_rejected(&mut self, hash: Hash, reason: String) {
        if self.rejected.insert(hash, reason).is_none() {
            self.rejected_order.push_back(hash);
        }
        while self.rejected_order.len() > REJECTED_REMEMBERED_MAX {
            if let Some(old) = self.rejected_order.pop_front() {
                self.rejected.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::{Keypair, Transfer};

    fn tx(key: &Keypair, amount: u64, nonce: u64) -> SignedTransaction {
        SignedTransaction::sign(
            Transfer {
                chain_id: "c".into(),
                from: key.public(),
                to: PublicKey([9; 32]),
                amount,
                nonce,
            },
            key,
        )
    }

    fn funded(balance: u64, nonce: u64) -> Account {
        Account { balance, nonce }
    }

    #[test]
    fn admission_rules() {
        let key = Keypair::from_seed([1; 32]);
        let mut pool = Mempool::new("c".into(), 3);
        let t0 = tx(&key, 40, 0);
        assert_eq!(
            pool.admit(t0.clone(), t0.hash(), funded(100, 0), 0),
            Ok(Admitted::New)
        );
        assert_eq!(
            pool.admit(t0.clone(), t0.hash(), funded(100, 0), 0),
            Ok(Admitted::AlreadyPending)
        );
        let other0 = tx(&key, 41, 0);
        assert_eq!(
            pool.admit(other0.clone(), other0.hash(), funded(100, 0), 0),
            Err(AdmitError::NoncePending(0))
        );
        let t1 = tx(&key, 61, 1);
        assert_eq!(
            pool.admit(t1.clone(), t1.hash(), funded(100, 0), 0)
                .unwrap_err()
                .code(),
            "insufficient_funds"
        );
        let old = tx(&key, 1, 0);
        assert_eq!(
            pool.admit(old.clone(), old.hash(), funded(100, 1), 0)
                .unwrap_err()
                .code(),
            "nonce_too_low"
        );
        let far = tx(&key, 1, NONCE_GAP_MAX + 1);
        assert_eq!(
            pool.admit(far.clone(), far.hash(), funded(100, 0), 0)
                .unwrap_err()
                .code(),
            "nonce_too_high"
        );
        let zero = tx(&key, 0, 1);
        assert_eq!(
            pool.admit(zero.clone(), zero.hash(), funded(100, 0), 0)
                .unwrap_err()
                .code(),
            "invalid_amount"
        );
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn a_nonce_gap_is_not_ready_work() {
        let key = Keypair::from_seed([1; 32]);
        let mut pool = Mempool::new("c".into(), 10);
        let later = tx(&key, 1, 1);
        pool.admit(later.clone(), later.hash(), funded(100, 0), 0)
            .unwrap();
        assert!(!pool.has_ready(), "nonce 1 waits for nonce 0");
        assert!(pool.candidates(10, |_| funded(100, 0)).is_empty());
        let first = tx(&key, 1, 0);
        pool.admit(first.clone(), first.hash(), funded(100, 0), 0)
            .unwrap();
        assert!(pool.has_ready());
        assert_eq!(pool.candidates(10, |_| funded(100, 0)).len(), 2);
        pool.remove_committed(
            &[first.clone(), later.clone()],
            &[first.hash(), later.hash()],
            |_| funded(98, 2),
        );
        assert!(!pool.has_ready());
        assert!(pool.is_empty());
    }

    /// A sender served by a commit goes behind the senders still waiting.
    #[test]
    fn senders_take_turns() {
        let a = Keypair::from_seed([1; 32]);
        let b = Keypair::from_seed([2; 32]);
        let mut pool = Mempool::new("c".into(), 100);
        for nonce in 0..5 {
            let t = tx(&a, 1, nonce);
            pool.admit(t.clone(), t.hash(), funded(100, 0), 0).unwrap();
        }
        let tb = tx(&b, 1, 0);
        pool.admit(tb.clone(), tb.hash(), funded(100, 0), 0)
            .unwrap();
        let first: Vec<_> = pool.candidates(2, |_| funded(100, 0));
        assert!(first.iter().all(|(t, _)| t.transfer.from == a.public()));
        let (txs, hashes): (Vec<_>, Vec<_>) = first.into_iter().unzip();
        pool.remove_committed(&txs, &hashes, |k| {
            funded(100, if *k == a.public() { 2 } else { 0 })
        });
        let next = pool.candidates(1, |k| funded(100, if *k == a.public() { 2 } else { 0 }));
        assert_eq!(next[0].0.transfer.from, b.public(), "b waited longer");
    }

    #[test]
    fn bounded() {
        let key = Keypair::from_seed([1; 32]);
        let mut pool = Mempool::new("c".into(), 2);
        for nonce in 0..2 {
            let t = tx(&key, 1, nonce);
            pool.admit(t.clone(), t.hash(), funded(100, 0), 0).unwrap();
        }
        let t = tx(&key, 1, 2);
        assert_eq!(
            pool.admit(t.clone(), t.hash(), funded(100, 0), 0),
            Err(AdmitError::Full(2))
        );
    }

    #[test]
    fn candidates_are_consecutive_and_commit_prunes() {
        let a = Keypair::from_seed([1; 32]);
        let mut pool = Mempool::new("c".into(), 100);
        for nonce in [0, 1, 3] {
            let t = tx(&a, 1, nonce);
            pool.admit(t.clone(), t.hash(), funded(100, 0), 0).unwrap();
        }
        let picked = pool.candidates(10, |_| funded(100, 0));
        assert_eq!(
            picked
                .iter()
                .map(|(t, _)| t.transfer.nonce)
                .collect::<Vec<_>>(),
            vec![0, 1]
        );
        // Block commits nonces 0 and 1 (one of them a different tx for nonce 1).
        let other1 = tx(&a, 2, 1);
        let block = [picked[0].0.clone(), other1];
        let hashes: Vec<Hash> = block.iter().map(|t| t.hash()).collect();
        pool.remove_committed(&block, &hashes, |_| funded(97, 2));
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.status(&picked[0].1), MempoolStatus::Unknown);
        assert!(matches!(
            pool.status(&picked[1].1),
            MempoolStatus::Rejected(_)
        ));
    }

    /// The age a replica judges censorship by counts only transactions a
    /// block could take now: the next one of each ready sender.
    #[test]
    fn the_oldest_ready_transaction_and_the_overdue_ones() {
        let a = Keypair::from_seed([1; 32]);
        let b = Keypair::from_seed([2; 32]);
        let gapped = Keypair::from_seed([3; 32]);
        let mut pool = Mempool::new("c".into(), 100);
        assert_eq!(pool.oldest_ready_since_ms(), None);
        let g = tx(&gapped, 1, 5);
        pool.admit(g.clone(), g.hash(), funded(100, 0), 50).unwrap();
        assert_eq!(pool.oldest_ready_since_ms(), None, "a gap is no work");
        let a0 = tx(&a, 1, 0);
        pool.admit(a0.clone(), a0.hash(), funded(100, 0), 100)
            .unwrap();
        let b1 = tx(&b, 1, 1);
        pool.admit(b1.clone(), b1.hash(), funded(100, 0), 10)
            .unwrap();
        let b0 = tx(&b, 1, 0);
        pool.admit(b0.clone(), b0.hash(), funded(100, 0), 200)
            .unwrap();
        assert_eq!(pool.oldest_ready_since_ms(), Some(100));
        let mut overdue: Vec<Hash> = pool.ready_since(150, 10).iter().map(|t| t.hash()).collect();
        overdue.sort();
        let mut expected = vec![a0.hash(), b1.hash()];
        expected.sort();
        assert_eq!(overdue, expected, "not b0 (new), not g (behind a gap)");
        assert_eq!(pool.ready_since(150, 1).len(), 1, "bounded");
        pool.remove_committed(std::slice::from_ref(&a0), &[a0.hash()], |k| {
            funded(100, u64::from(*k == a.public()))
        });
        assert_eq!(pool.oldest_ready_since_ms(), Some(200));
    }
}
