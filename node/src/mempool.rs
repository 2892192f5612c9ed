//! The bounded mempool: transactions that passed every admission check and
//! wait for a block, ordered per sender by nonce.
//!
//! Every transaction here had its signature verified exactly once, on the way
//! in (API or gossip); block validation trusts that and does not verify it
//! again.
//!
//! # Policy
//!
//! A sender's transactions are *ready* when they continue its committed
//! nonce without a gap (a block can take them now, and their balance covers
//! them: admission checks every sender's pending spend against its balance),
//! and *parked* behind a nonce gap otherwise. Parked transactions are no work
//! for consensus; they wait for the gap to fill, at most
//! [`MempoolLimits::parked_ttl_ms`], and are the first to go when the pool is
//! full. The bounds, all in [`MempoolLimits`]:
//!
//! - per sender: at most `sender_txs_max` in all and `sender_parked_max`
//!   parked (over either: `sender_limit`);
//! - in all: `capacity`, of which at most `parked_max` parked;
//! - in time: parked ones for `parked_ttl_ms`, every one for `ttl_ms`.
//!
//! - for clients: the pool takes their transactions up to `client_max`
//!   (a few blocks' worth, at most three quarters of the pool); beyond it
//!   they are refused before their signatures are checked, and the rest of
//!   the pool is room for other validators' gossip. Once the pool holds
//!   half of `client_max`, a client's transaction that would be parked is
//!   refused (`mempool_full`): under load the gap is most likely a refused
//!   transaction, and the client should send again in order.
//!
//! When the pool (or its parked share) is full, a newcomer takes the place
//! of the last parked transaction of the sender with the most parked ones,
//! or failing that (a ready newcomer) of the last transaction of the sender
//! with the most, but only from a hog: a sender holding more than twice
//! what the newcomer's sender would (in parked ones for a parked newcomer).
//! So whatever others hold, a sender with few transactions pending always
//! gets room, and only the biggest holders are refused; honest senders
//! holding about as much are refused when the pool is full, to send again,
//! rather than evicting one another's acknowledged transactions (each
//! eviction leaves the victim's later transactions behind a gap its client
//! does not know of).
//!
//! After every commit the touched senders are checked again: transactions
//! whose nonce was used are dropped (`rejected`), and ready ones the balance
//! no longer covers (another transaction of the sender, committed through
//! another validator, spent it) are dropped (`rejected`, reason
//! `insufficient_funds`) instead of waiting for good. Dropped and evicted
//! transactions are remembered (bounded) with their reason for status
//! queries.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use cairn_core::state::Account;
use cairn_core::{Hash, PublicKey, SignedTransaction, TxError};
use cairn_genesis::NodeLimits;

/// How far ahead of the account nonce a pending transaction may be.
pub const NONCE_GAP_MAX: u64 = 1_000;
/// How many dropped or refused transaction hashes are remembered for status
/// queries.
pub const DROPPED_REMEMBERED_MAX: usize = 100_000;

/// The bounds of one mempool (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MempoolLimits {
    pub capacity: usize,
    pub sender_txs_max: usize,
    pub sender_parked_max: usize,
    pub parked_max: usize,
    pub parked_ttl_ms: u64,
    pub ttl_ms: u64,
    /// Transactions from clients are admitted while the pool holds fewer
    /// than this (a few blocks' worth, at most three quarters of it): a node
    /// offered more than the chain commits refuses the excess at once (503,
    /// before verifying it); the rest of the pool is kept for what other
    /// validators gossip, so their pools stay alike and no validator waits
    /// for a transaction the primary had no room for.
    pub client_max: usize,
}

impl MempoolLimits {
    /// The limits of a node whose chain allows `capacity` transactions per
    /// mempool and `block_txs` per block. Parked transactions never take
    /// more than half of it, clients' never more than three quarters.
    pub fn new(capacity: usize, block_txs: usize, limits: &NodeLimits) -> MempoolLimits {
        MempoolLimits {
            capacity,
            sender_txs_max: limits.mempool_sender_txs_max,
            sender_parked_max: limits.mempool_sender_parked_max,
            parked_max: limits.mempool_parked_max.min(capacity / 2),
            parked_ttl_ms: limits.mempool_parked_ttl_ms,
            ttl_ms: limits.mempool_ttl_ms,
            client_max: (capacity * 3 / 4)
                .min(block_txs.saturating_mul(limits.mempool_client_blocks))
                .max(1),
        }
    }
}

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
    #[error("this sender already has {held} transactions pending here (at most {max})")]
    SenderLimit { held: usize, max: usize },
    #[error(
        "this sender already has {held} transactions parked behind a nonce gap (at most {max})"
    )]
    SenderParkedLimit { held: usize, max: usize },
    #[error("mempool is full ({0} transactions)")]
    Full(usize),
    #[error("too many transactions wait behind nonce gaps ({0}); send the missing nonces first")]
    ParkedFull(usize),
}

impl AdmitError {
    pub fn code(&self) -> &'static str {
        match self {
            AdmitError::Invalid(e) => e.code(),
            AdmitError::NoncePending(_) => "nonce_pending",
            AdmitError::PendingOverspend { .. } => "insufficient_funds",
            AdmitError::SenderLimit { .. } | AdmitError::SenderParkedLimit { .. } => "sender_limit",
            AdmitError::Full(_) | AdmitError::ParkedFull(_) => "mempool_full",
        }
    }
}

/// What happened to an admitted transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    New,
    AlreadyPending,
}

/// Why a transaction left the mempool without being committed, or was
/// refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// It was admitted, then expired or evicted (`status: "expired"`);
    /// otherwise it was refused or found invalid (`status: "rejected"`).
    pub expired: bool,
    /// The error code that applies.
    pub code: &'static str,
    pub message: String,
}

/// Where a transaction stands, as far as the mempool knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MempoolStatus {
    Pending,
    Dropped(Dropped),
    Unknown,
}

struct Pending {
    tx: SignedTransaction,
    hash: Hash,
    /// When it was admitted here (`ledger::now_ms` time).
    since_ms: u64,
    /// When this node first sent it to the other validators itself:
    /// admitted from a client (gossiped at once), or gossiped again
    /// ([`Mempool::ready_since`]); `None` while it is known here only from
    /// a peer's gossip, which may not have reached the primary yet.
    gossiped_ms: Option<u64>,
    parked: bool,
}

/// One sender's pending transactions by nonce. Every nonce is at least
/// `base`; `base..ready_end` are all present (ready), `ready_end` is absent,
/// and every nonce above it is parked.
struct SenderQueue {
    txs: BTreeMap<u64, Pending>,
    /// What the pending transactions spend in all.
    spend: u128,
    /// The sender's committed nonce, as of the last admission or commit.
    base: u64,
    ready_end: u64,
    parked: usize,
}

impl SenderQueue {
    fn new(base: u64) -> SenderQueue {
        SenderQueue {
            txs: BTreeMap::new(),
            spend: 0,
            base,
            ready_end: base,
            parked: 0,
        }
    }
}

/// Where a transaction comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client of this node's API: admitted while the pool is below
    /// [`MempoolLimits::client_max`].
    Client,
    /// Another validator's gossip: may use the whole pool.
    Peer,
}

/// A newcomer whose sender holds `held` (parked ones: `held` parked) may
/// take the last place of a sender holding more than this: clearly more
/// than its share, so senders holding about as much never evict each other
/// back and forth. Evicting an acknowledged transaction of an honest
/// client leaves its later ones behind a gap it does not know of (at twice
/// the peak load, pools of honest senders evicting one another by one
/// transaction filled with parked ones and stopped), so only hogs lose any.
fn hog_above(held: usize) -> usize {
    2 * (held + 1)
}

/// An age index entry: admitted at, sender, nonce.
type Aged = (u64, PublicKey, u64);

pub struct Mempool {
    chain_id: String,
    limits: MempoolLimits,
    senders: HashMap<PublicKey, SenderQueue>,
    /// Senders with ready transactions (the ones a block can take from now),
    /// each with the turn it got when it became ready.
    ready: HashMap<PublicKey, u64>,
    /// The ready senders in turn order: blocks serve the longest-waiting
    /// sender first, and a sender served by a commit goes to the back.
    turns: BTreeSet<(u64, PublicKey)>,
    next_turn: u64,
    hashes: HashMap<Hash, (PublicKey, u64)>,
    ready_len: usize,
    parked_len: usize,
    /// Senders by how many transactions they hold, and by how many parked.
    by_size: BTreeSet<(usize, PublicKey)>,
    by_parked: BTreeSet<(usize, PublicKey)>,
    /// Every transaction, and the parked ones, by admission time.
    ages: BTreeSet<Aged>,
    parked_ages: BTreeSet<Aged>,
    dropped: HashMap<Hash, Dropped>,
    dropped_order: VecDeque<Hash>,
    /// Transactions that left without a block, by [`RemovedReason`].
    removed: [u64; 4],
}

/// Why admitted transactions left the pool without a block (a metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovedReason {
    /// Evicted for room.
    Evicted = 0,
    /// Waited longer than their lifetime.
    Expired = 1,
    /// Their nonce was used by a commit: as a rule by themselves, when an
    /// admission read the sender's committed account before the pool
    /// heard of the block, so not a loss; otherwise by another
    /// transaction of the sender.
    NonceUsed = 2,
    /// A commit spent the balance they needed.
    Unaffordable = 3,
}

impl RemovedReason {
    pub const ALL: [RemovedReason; 4] = [
        RemovedReason::Evicted,
        RemovedReason::Expired,
        RemovedReason::NonceUsed,
        RemovedReason::Unaffordable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RemovedReason::Evicted => "evicted",
            RemovedReason::Expired => "expired",
            RemovedReason::NonceUsed => "nonce_used",
            RemovedReason::Unaffordable => "unaffordable",
        }
    }

    fn of(why: &Dropped) -> RemovedReason {
        match (why.expired, why.code) {
            (true, "expired") => RemovedReason::Expired,
            (true, _) => RemovedReason::Evicted,
            (false, "insufficient_funds") => RemovedReason::Unaffordable,
            (false, _) => RemovedReason::NonceUsed,
        }
    }
}

impl Mempool {
    pub fn new(chain_id: String, limits: MempoolLimits) -> Mempool {
        assert!(limits.capacity > 0);
        Mempool {
            chain_id,
            limits,
            senders: HashMap::new(),
            ready: HashMap::new(),
            turns: BTreeSet::new(),
            next_turn: 0,
            hashes: HashMap::new(),
            ready_len: 0,
            parked_len: 0,
            by_size: BTreeSet::new(),
            by_parked: BTreeSet::new(),
            ages: BTreeSet::new(),
            parked_ages: BTreeSet::new(),
            dropped: HashMap::new(),
            dropped_order: VecDeque::new(),
            removed: [0; 4],
        }
    }

    /// How many admitted transactions left without a block, for `reason`,
    /// since the pool was made.
    pub fn removed(&self, reason: RemovedReason) -> u64 {
        self.removed[reason as usize]
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn ready_len(&self) -> usize {
        self.ready_len
    }

    pub fn parked_len(&self) -> usize {
        self.parked_len
    }

    /// How many more transactions from `origin` fit without evicting any.
    pub fn room_for(&self, origin: Origin) -> usize {
        self.size_for(origin).saturating_sub(self.hashes.len())
    }

    pub fn capacity(&self) -> usize {
        self.limits.capacity
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
        } else if let Some(dropped) = self.dropped.get(hash) {
            MempoolStatus::Dropped(dropped.clone())
        } else {
            MempoolStatus::Unknown
        }
    }

    /// The next nonce of `sender` counting its ready transactions here, given
    /// its committed `account` (parked ones do not count: they wait behind a
    /// gap the sender must fill first).
    pub fn pending_nonce(&self, sender: &PublicKey, account: Account) -> u64 {
        match self.senders.get(sender) {
            Some(queue) if queue.base == account.nonce => queue.ready_end,
            Some(queue) if queue.base < account.nonce => {
                // A commit this pool has not been told about yet.
                (account.nonce..)
                    .find(|n| !queue.txs.contains_key(n))
                    .unwrap_or(account.nonce)
            }
            _ => account.nonce,
        }
    }

    /// How many transactions of `sender` this pool holds: (ready, parked).
    #[cfg(test)]
    pub fn sender_counts(&self, sender: &PublicKey) -> (usize, usize) {
        self.senders
            .get(sender)
            .map_or((0, 0), |q| (q.txs.len() - q.parked, q.parked))
    }

    /// Whether `tx` could be admitted as far as the cheap checks tell, before
    /// its signature is verified: nonce window, pending nonce, balance and
    /// the sender's caps. `admit` checks all of it again.
    pub fn precheck(
        &self,
        tx: &SignedTransaction,
        account: Account,
        origin: Origin,
    ) -> Result<(), AdmitError> {
        let t = &tx.transfer;
        check_nonce_window(t.nonce, account)?;
        let queue = self
            .senders
            .get(&t.from)
            .filter(|q| q.base == account.nonce);
        if queue.is_some_and(|q| q.txs.contains_key(&t.nonce)) {
            return Err(AdmitError::NoncePending(t.nonce));
        }
        let pending_spend = queue.map_or(0, |q| q.spend);
        check_spend(pending_spend, t.amount, account)?;
        if let Some(q) = queue {
            self.check_sender_caps(q, t.nonce)?;
        }
        let (held, parked_held, ready_end) = queue.map_or((0, 0, account.nonce), |q| {
            (q.txs.len(), q.parked, q.ready_end)
        });
        self.check_room(held, parked_held, t.nonce != ready_end, origin)
    }

    /// Whether a newcomer whose sender holds `held` transactions here,
    /// `parked_held` of them parked, would find room (evicting if it may):
    /// the same rules [`Mempool::admit`] applies, without changing anything.
    fn check_room(
        &self,
        held: usize,
        parked_held: usize,
        parked: bool,
        origin: Origin,
    ) -> Result<(), AdmitError> {
        // A client's transaction behind a gap waits on one that has not
        // arrived. Once clients have filled half their share, that one was
        // most likely refused for room, and parking its successors would
        // fill the pool with work no block can take (at twice the peak
        // load, pools ended all parked). Refused, the client sends again
        // in order.
        if parked && origin == Origin::Client && self.hashes.len() * 2 >= self.size_for(origin) {
            return Err(AdmitError::ParkedFull(self.parked_len));
        }
        let most_parked = self.by_parked.last().map_or(0, |(count, _)| *count);
        let most_held = self.by_size.last().map_or(0, |(count, _)| *count);
        let may_evict_parked = most_parked > hog_above(parked_held);
        if parked && self.parked_len >= self.limits.parked_max && !may_evict_parked {
            return Err(AdmitError::ParkedFull(self.parked_len));
        }
        if self.hashes.len() >= self.size_for(origin) {
            let fits = if parked {
                may_evict_parked
            } else {
                most_parked > hog_above(held) || most_held > hog_above(held)
            };
            if !fits {
                return Err(AdmitError::Full(self.size_for(origin)));
            }
        }
        Ok(())
    }

    /// How full the pool may get with transactions from `origin`.
    fn size_for(&self, origin: Origin) -> usize {
        match origin {
            Origin::Client => self.limits.client_max,
            Origin::Peer => self.limits.capacity,
        }
    }

    fn check_sender_caps(&self, queue: &SenderQueue, nonce: u64) -> Result<(), AdmitError> {
        let held = queue.txs.len();
        if held >= self.limits.sender_txs_max {
            return Err(AdmitError::SenderLimit {
                held,
                max: self.limits.sender_txs_max,
            });
        }
        if nonce != queue.ready_end && queue.parked >= self.limits.sender_parked_max {
            return Err(AdmitError::SenderParkedLimit {
                held: queue.parked,
                max: self.limits.sender_parked_max,
            });
        }
        Ok(())
    }

    /// Admits a transaction whose signature the caller verified, against the
    /// sender's committed `account`, at `now_ms`. Nothing changes on error
    /// (beyond expiring what is due).
    pub fn admit(
        &mut self,
        tx: SignedTransaction,
        hash: Hash,
        account: Account,
        now_ms: u64,
        origin: Origin,
    ) -> Result<Admitted, AdmitError> {
        if self.hashes.contains_key(&hash) {
            return Ok(Admitted::AlreadyPending);
        }
        tx.check_stateless(&self.chain_id)?;
        let (from, nonce, amount) = (tx.transfer.from, tx.transfer.nonce, tx.transfer.amount);
        check_nonce_window(nonce, account)?;
        self.expire(now_ms);
        self.sync_sender(&from, account);
        let (held, parked_held, ready_end, spend) = match self.senders.get(&from) {
            Some(q) => {
                if nonce < q.base {
                    // `account` is older than what this pool has seen.
                    return Err(TxError::NonceTooLow {
                        expected: q.base,
                        got: nonce,
                    }
                    .into());
                }
                if q.txs.contains_key(&nonce) {
                    return Err(AdmitError::NoncePending(nonce));
                }
                self.check_sender_caps(q, nonce)?;
                (q.txs.len(), q.parked, q.ready_end, q.spend)
            }
            None => (0, 0, account.nonce, 0),
        };
        check_spend(spend, amount, account)?;
        let parked = nonce != ready_end;
        // Make room: parked transactions first, and only ever from a sender
        // holding more than twice what this one's would (a hog).
        self.check_room(held, parked_held, parked, origin)?;
        let mut evicted = false;
        if parked && self.parked_len >= self.limits.parked_max {
            evicted = self.evict_parked(hog_above(parked_held));
        }
        if !evicted && self.hashes.len() >= self.size_for(origin) {
            evicted = if parked {
                self.evict_parked(hog_above(parked_held))
            } else {
                self.evict_parked(hog_above(held)) || self.evict_largest(hog_above(held))
            };
        }
        debug_assert!(self.hashes.len() < self.size_for(origin) || evicted);

        self.unindex(&from);
        self.hashes.insert(hash, (from, nonce));
        self.ages.insert((now_ms, from, nonce));
        let queue = self
            .senders
            .entry(from)
            .or_insert_with(|| SenderQueue::new(account.nonce));
        queue.spend += amount as u128;
        queue.txs.insert(
            nonce,
            Pending {
                tx,
                hash,
                since_ms: now_ms,
                gossiped_ms: (origin == Origin::Client).then_some(now_ms),
                parked,
            },
        );
        if parked {
            queue.parked += 1;
            self.parked_len += 1;
            self.parked_ages.insert((now_ms, from, nonce));
        } else {
            self.ready_len += 1;
            queue.ready_end += 1;
            // The gap this one filled may free parked ones behind it.
            while let Some(next) = queue.txs.get_mut(&queue.ready_end) {
                next.parked = false;
                queue.parked -= 1;
                self.parked_len -= 1;
                self.ready_len += 1;
                self.parked_ages
                    .remove(&(next.since_ms, from, queue.ready_end));
                queue.ready_end += 1;
            }
        }
        self.reindex(&from);
        Ok(Admitted::New)
    }

    /// Evicts the last parked transaction of the sender with the most
    /// parked ones, if it holds more than `newcomer_would_hold`. Returns
    /// whether one went.
    fn evict_parked(&mut self, newcomer_would_hold: usize) -> bool {
        let Some(&(count, victim)) = self.by_parked.last() else {
            return false;
        };
        if count <= newcomer_would_hold {
            return false;
        }
        self.evict_last(&victim)
    }

    /// Evicts the last transaction of the sender holding the most, if it
    /// holds more than `newcomer_would_hold`.
    fn evict_largest(&mut self, newcomer_would_hold: usize) -> bool {
        let Some(&(count, victim)) = self.by_size.last() else {
            return false;
        };
        if count <= newcomer_would_hold {
            return false;
        }
        self.evict_last(&victim)
    }

    fn evict_last(&mut self, victim: &PublicKey) -> bool {
        let Some(nonce) = self
            .senders
            .get(victim)
            .and_then(|q| q.txs.keys().next_back().copied())
        else {
            return false;
        };
        self.drop_txs(
            victim,
            &[nonce],
            Dropped {
                expired: true,
                code: "mempool_full",
                message: "evicted: the mempool was full and this sender held the most".into(),
            },
        );
        true
    }

    /// Drops what has waited too long: parked transactions older than
    /// `parked_ttl_ms`, any older than `ttl_ms`. Returns how many went.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut due: Vec<(PublicKey, u64)> = Vec::new();
        let parked_before = now_ms.saturating_sub(self.limits.parked_ttl_ms);
        for &(since, sender, nonce) in &self.parked_ages {
            if since >= parked_before {
                break;
            }
            due.push((sender, nonce));
        }
        let before = now_ms.saturating_sub(self.limits.ttl_ms);
        for &(since, sender, nonce) in &self.ages {
            if since >= before {
                break;
            }
            due.push((sender, nonce));
        }
        if due.is_empty() {
            return 0;
        }
        due.sort_unstable();
        due.dedup();
        let mut by_sender: BTreeMap<PublicKey, Vec<u64>> = BTreeMap::new();
        for (sender, nonce) in &due {
            by_sender.entry(*sender).or_default().push(*nonce);
        }
        for (sender, nonces) in by_sender {
            self.drop_txs(
                &sender,
                &nonces,
                Dropped {
                    expired: true,
                    code: "expired",
                    message: "waited too long in the mempool".into(),
                },
            );
        }
        due.len()
    }

    /// Removes `nonces` of `sender`, remembering each as `why`, and settles
    /// the sender (later ready ones may become parked).
    fn drop_txs(&mut self, sender: &PublicKey, nonces: &[u64], why: Dropped) {
        let reason = RemovedReason::of(&why);
        for hash in self.remove_txs(sender, nonces) {
            self.removed[reason as usize] += 1;
            self.remember_dropped(hash, why.clone());
        }
    }

    /// Removes `nonces` of `sender` (those present) and settles the sender;
    /// returns the removed transactions' hashes.
    fn remove_txs(&mut self, sender: &PublicKey, nonces: &[u64]) -> Vec<Hash> {
        self.unindex(sender);
        let mut gone = Vec::new();
        if let Some(queue) = self.senders.get_mut(sender) {
            for nonce in nonces {
                if let Some(pending) = queue.txs.remove(nonce) {
                    queue.spend -= pending.tx.transfer.amount as u128;
                    if pending.parked {
                        queue.parked -= 1;
                        self.parked_len -= 1;
                        self.parked_ages
                            .remove(&(pending.since_ms, *sender, *nonce));
                    } else {
                        self.ready_len -= 1;
                    }
                    self.ages.remove(&(pending.since_ms, *sender, *nonce));
                    self.hashes.remove(&pending.hash);
                    gone.push(pending.hash);
                }
            }
        }
        self.settle(sender);
        self.reindex(sender);
        gone
    }

    /// Recomputes which of `sender`'s transactions are ready from its `base`.
    fn settle(&mut self, sender: &PublicKey) {
        let Some(queue) = self.senders.get_mut(sender) else {
            return;
        };
        let mut end = queue.base;
        for (&nonce, pending) in queue.txs.iter_mut() {
            let ready = nonce == end;
            if ready {
                end += 1;
            }
            if pending.parked == ready {
                // It changes side.
                let key = (pending.since_ms, *sender, nonce);
                if ready {
                    queue.parked -= 1;
                    self.parked_len -= 1;
                    self.ready_len += 1;
                    self.parked_ages.remove(&key);
                } else {
                    queue.parked += 1;
                    self.parked_len += 1;
                    self.ready_len -= 1;
                    self.parked_ages.insert(key);
                }
                pending.parked = !ready;
            }
        }
        queue.ready_end = end;
    }

    /// Takes `sender` out of the size indexes (before a change).
    fn unindex(&mut self, sender: &PublicKey) {
        if let Some(queue) = self.senders.get(sender) {
            self.by_size.remove(&(queue.txs.len(), *sender));
            self.by_parked.remove(&(queue.parked, *sender));
        }
    }

    /// Puts `sender` back into the indexes (after a change), forgets it when
    /// it holds nothing, and gives it a turn when it just became ready.
    fn reindex(&mut self, sender: &PublicKey) {
        let ready = match self.senders.get(sender) {
            None => false,
            Some(queue) if queue.txs.is_empty() => {
                self.senders.remove(sender);
                false
            }
            Some(queue) => {
                self.by_size.insert((queue.txs.len(), *sender));
                if queue.parked > 0 {
                    self.by_parked.insert((queue.parked, *sender));
                }
                queue.ready_end > queue.base
            }
        };
        if ready != self.ready.contains_key(sender) {
            self.set_ready(*sender, ready);
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

    /// Brings `sender`'s queue up to its committed `account`: nonces now used
    /// are dropped, and the ready ones the balance no longer covers (in nonce
    /// order) are dropped as `insufficient_funds`; what follows them parks.
    fn sync_sender(&mut self, sender: &PublicKey, account: Account) {
        let Some(queue) = self.senders.get(sender) else {
            return;
        };
        if queue.base > account.nonce {
            // Older state than this pool has seen (a read before a commit
            // this pool already applied): nothing to learn from it.
            return;
        }
        let used: Vec<u64> = queue.txs.range(..account.nonce).map(|(n, _)| *n).collect();
        // Walk the ready run from the committed nonce: the first one the
        // balance does not cover, and every ready one after it, can not
        // execute now.
        let mut balance = account.balance as u128;
        let mut unaffordable = Vec::new();
        for (&nonce, pending) in queue.txs.range(account.nonce..) {
            // Once one is not covered, neither is anything after it.
            let amount = pending.tx.transfer.amount as u128;
            if amount <= balance && unaffordable.is_empty() {
                balance -= amount;
            } else {
                unaffordable.push(nonce);
            }
        }
        let base_only = used.is_empty() && unaffordable.is_empty() && queue.base != account.nonce;
        if let Some(queue) = self.senders.get_mut(sender) {
            queue.base = account.nonce;
        }
        if !used.is_empty() {
            self.drop_txs(
                sender,
                &used,
                Dropped {
                    expired: false,
                    code: "nonce_too_low",
                    message: "another transaction with the same nonce was committed".into(),
                },
            );
        }
        if !unaffordable.is_empty() {
            self.drop_txs(
                sender,
                &unaffordable,
                Dropped {
                    expired: false,
                    code: "insufficient_funds",
                    message: format!(
                        "the sender's balance {} no longer covers it",
                        account.balance
                    ),
                },
            );
        }
        if base_only {
            // A new base alone may make parked transactions ready (the
            // drops above settle the sender themselves).
            self.unindex(sender);
            self.settle(sender);
            self.reindex(sender);
        }
    }

    /// Candidate transactions for a block, with their hashes: senders in turn
    /// order, each with the run of consecutive nonces starting at its
    /// committed nonce. `account` reads committed state. At most `max`.
    pub fn candidates(
        &self,
        max: usize,
        mut account: impl FnMut(&PublicKey) -> Account,
    ) -> Vec<(SignedTransaction, Hash)> {
        let mut out = Vec::with_capacity(max.min(self.ready_len));
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
    /// (the next one of each ready sender) has been sent by this node to
    /// the other validators: what the censorship judge counts, since only
    /// what a node sent the primary itself can it tell the primary has
    /// had (a transaction known only from a peer's gossip may still wait
    /// in that peer's queue for the primary). Walks the ready senders.
    pub fn oldest_ready_gossiped_ms(&self) -> Option<u64> {
        self.ready
            .keys()
            .filter_map(|sender| self.senders.get(sender)?.txs.values().next())
            .filter_map(|pending| pending.gossiped_ms)
            .min()
    }

    /// Up to `max` transactions to gossip again: for each ready sender
    /// whose next transaction has waited here since `before_ms` or earlier,
    /// the start of its run of consecutive nonces, the senders that waited
    /// longest first. `max` is shared out evenly, at least `per_sender`
    /// each: a peer that missed a gossip frame lacks one nonce of each of
    /// many senders (their heads are what it needs, and a bounded round
    /// reaches every one of them), while a peer cut off for a while lacks
    /// the whole runs of a few.
    ///
    /// They count as sent by this node from `now_ms` on (see
    /// [`Mempool::oldest_ready_gossiped_ms`]), if they did not already.
    pub fn ready_since(
        &mut self,
        before_ms: u64,
        per_sender: usize,
        max: usize,
        now_ms: u64,
    ) -> Vec<SignedTransaction> {
        let mut heads: Vec<(u64, PublicKey)> = self
            .ready
            .keys()
            .filter_map(|sender| {
                let head = self.senders.get(sender)?.txs.values().next()?;
                (!head.parked && head.since_ms <= before_ms).then_some((head.since_ms, *sender))
            })
            .collect();
        heads.sort_unstable_by_key(|(since, _)| *since);
        let per_sender = per_sender.max(max / heads.len().max(1));
        let mut out = Vec::new();
        for (_, sender) in heads {
            let room = max.saturating_sub(out.len());
            if room == 0 {
                break;
            }
            let Some(queue) = self.senders.get_mut(&sender) else {
                continue;
            };
            for pending in queue
                .txs
                .values_mut()
                .take_while(|p| !p.parked)
                .take(per_sender.min(room))
            {
                pending.gossiped_ms.get_or_insert(now_ms);
                out.push(pending.tx.clone());
            }
        }
        out
    }

    /// After a commit: drops the block's transactions, and checks every
    /// touched sender again against its committed `account` (see
    /// [`Mempool::sync_sender`]); touched senders still ready go to the back.
    /// Also expires what is due at `now_ms`.
    pub fn remove_committed(
        &mut self,
        committed: &[SignedTransaction],
        committed_hashes: &[Hash],
        mut account: impl FnMut(&PublicKey) -> Account,
        now_ms: u64,
    ) {
        let mut senders: Vec<PublicKey> = committed.iter().map(|t| t.transfer.from).collect();
        senders.sort_unstable();
        senders.dedup();
        let committed_hashes: HashSet<&Hash> = committed_hashes.iter().collect();
        for sender in senders {
            let Some(queue) = self.senders.get(&sender) else {
                continue;
            };
            // The block's own transactions leave without a trace.
            let included: Vec<u64> = queue
                .txs
                .iter()
                .filter(|(_, p)| committed_hashes.contains(&p.hash))
                .map(|(n, _)| *n)
                .collect();
            self.remove_txs(&sender, &included);
            self.sync_sender(&sender, account(&sender));
            if self.ready.contains_key(&sender) {
                self.set_ready(sender, true);
            }
        }
        self.expire(now_ms);
    }

    /// Remembers that a transaction was refused at admission (its signature
    /// verified), for status queries.
    pub fn remember_refused(&mut self, hash: Hash, error: &AdmitError) {
        if self.hashes.contains_key(&hash) {
            return;
        }
        self.remember_dropped(
            hash,
            Dropped {
                expired: false,
                code: error.code(),
                message: error.to_string(),
            },
        );
    }

    fn remember_dropped(&mut self, hash: Hash, why: Dropped) {
        if self.dropped.insert(hash, why).is_none() {
            self.dropped_order.push_back(hash);
        }
        while self.dropped_order.len() > DROPPED_REMEMBERED_MAX {
            if let Some(old) = self.dropped_order.pop_front() {
                self.dropped.remove(&old);
            }
        }
    }

    /// Checks every invariant the pool relies on (tests and debugging).
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut ready_len = 0;
        let mut parked_len = 0;
        let mut total = 0;
        for (sender, q) in &self.senders {
            if q.txs.is_empty() {
                return Err(format!("{sender}: empty queue kept"));
            }
            let mut end = q.base;
            let mut parked = 0;
            let mut spend = 0u128;
            for (&nonce, p) in &q.txs {
                if nonce < q.base {
                    return Err(format!("{sender}: nonce {nonce} below base {}", q.base));
                }
                if nonce == end {
                    end += 1;
                    if p.parked {
                        return Err(format!("{sender}: ready nonce {nonce} marked parked"));
                    }
                } else {
                    parked += 1;
                    if !p.parked {
                        return Err(format!("{sender}: parked nonce {nonce} marked ready"));
                    }
                    if !self.parked_ages.contains(&(p.since_ms, *sender, nonce)) {
                        return Err(format!("{sender}: parked nonce {nonce} not aged"));
                    }
                }
                if !self.ages.contains(&(p.since_ms, *sender, nonce)) {
                    return Err(format!("{sender}: nonce {nonce} not aged"));
                }
                if self.hashes.get(&p.hash) != Some(&(*sender, nonce)) {
                    return Err(format!("{sender}: nonce {nonce} hash not indexed"));
                }
                spend += p.tx.transfer.amount as u128;
            }
            if end != q.ready_end || parked != q.parked || spend != q.spend {
                return Err(format!("{sender}: counters out of date"));
            }
            if self.ready.contains_key(sender) != (end > q.base) {
                return Err(format!("{sender}: ready set out of date"));
            }
            if !self.by_size.contains(&(q.txs.len(), *sender)) {
                return Err(format!("{sender}: size index out of date"));
            }
            if q.txs.len() > self.limits.sender_txs_max || parked > self.limits.sender_parked_max {
                return Err(format!("{sender}: over its caps"));
            }
            ready_len += q.txs.len() - parked;
            parked_len += parked;
            total += q.txs.len();
        }
        if ready_len != self.ready_len || parked_len != self.parked_len {
            return Err("global counters out of date".into());
        }
        if total != self.hashes.len() || total != self.ages.len() {
            return Err("hash or age index holds strays".into());
        }
        if parked_len != self.parked_ages.len()
            || self.by_size.len() != self.senders.len()
            || self.by_parked.len() != self.senders.values().filter(|q| q.parked > 0).count()
            || self.turns.len() != self.ready.len()
        {
            return Err("indexes hold strays".into());
        }
        if total > self.limits.capacity || parked_len > self.limits.parked_max {
            return Err(format!(
                "over capacity: {total} (parked {parked_len}) of {:?}",
                self.limits
            ));
        }
        Ok(())
    }
}

fn check_nonce_window(nonce: u64, account: Account) -> Result<(), AdmitError> {
    if nonce < account.nonce {
        return Err(TxError::NonceTooLow {
            expected: account.nonce,
            got: nonce,
        }
        .into());
    }
    if nonce > account.nonce.saturating_add(NONCE_GAP_MAX) {
        return Err(TxError::NonceTooHigh {
            expected: account.nonce,
            got: nonce,
        }
        .into());
    }
    Ok(())
}

fn check_spend(pending_spend: u128, amount: u64, account: Account) -> Result<(), AdmitError> {
    let needed = pending_spend + amount as u128;
    if needed <= account.balance as u128 {
        return Ok(());
    }
    Err(if pending_spend == 0 {
        TxError::InsufficientFunds {
            balance: account.balance,
            amount,
        }
        .into()
    } else {
        AdmitError::PendingOverspend {
            needed,
            balance: account.balance,
        }
    })
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

    fn limits(capacity: usize) -> MempoolLimits {
        MempoolLimits {
            capacity,
            sender_txs_max: 1_000,
            sender_parked_max: 1_000,
            parked_max: capacity,
            parked_ttl_ms: 60_000,
            ttl_ms: 600_000,
            client_max: capacity,
        }
    }

    fn pool(capacity: usize) -> Mempool {
        Mempool::new("c".into(), limits(capacity))
    }

    fn admit(
        pool: &mut Mempool,
        t: &SignedTransaction,
        account: Account,
        now: u64,
    ) -> Result<Admitted, AdmitError> {
        let verdict = pool.admit(t.clone(), t.hash(), account, now, Origin::Client);
        pool.check_invariants().unwrap();
        verdict
    }

    /// Once clients filled half their share, a client's transaction behind
    /// a gap is refused (it would wait on one most likely refused for
    /// room); a ready one, and a peer's parked one, still get in.
    #[test]
    fn a_half_full_pool_refuses_clients_gaps() {
        let mut pool = pool(8);
        let (a, b, c) = (
            Keypair::from_seed([1; 32]),
            Keypair::from_seed([2; 32]),
            Keypair::from_seed([3; 32]),
        );
        assert_eq!(
            admit(&mut pool, &tx(&a, 1, 1), funded(100, 0), 0),
            Ok(Admitted::New)
        );
        for nonce in 0..3 {
            admit(&mut pool, &tx(&b, 1, nonce), funded(100, 0), 0).unwrap();
        }
        assert_eq!(pool.len(), 4, "half of client_max");
        assert!(matches!(
            admit(&mut pool, &tx(&a, 1, 2), funded(100, 0), 0),
            Err(AdmitError::ParkedFull(_))
        ));
        let peer = tx(&c, 1, 5);
        assert_eq!(
            pool.admit(peer.clone(), peer.hash(), funded(100, 0), 0, Origin::Peer),
            Ok(Admitted::New)
        );
        // In order, the same sender is taken, and its gap closes.
        assert_eq!(
            admit(&mut pool, &tx(&a, 1, 0), funded(100, 0), 0),
            Ok(Admitted::New)
        );
        assert_eq!(
            admit(&mut pool, &tx(&a, 1, 2), funded(100, 0), 0),
            Ok(Admitted::New)
        );
        assert_eq!(pool.ready_len(), 6);
    }

    fn dropped_code(pool: &Mempool, t: &SignedTransaction) -> Option<(bool, &'static str)> {
        match pool.status(&t.hash()) {
            MempoolStatus::Dropped(d) => Some((d.expired, d.code)),
            _ => None,
        }
    }

    #[test]
    fn admission_rules() {
        let key = Keypair::from_seed([1; 32]);
        let mut pool = pool(3);
        let t0 = tx(&key, 40, 0);
        assert_eq!(admit(&mut pool, &t0, funded(100, 0), 0), Ok(Admitted::New));
        assert_eq!(
            admit(&mut pool, &t0, funded(100, 0), 0),
            Ok(Admitted::AlreadyPending)
        );
        let other0 = tx(&key, 41, 0);
        assert_eq!(
            admit(&mut pool, &other0, funded(100, 0), 0),
            Err(AdmitError::NoncePending(0))
        );
        let t1 = tx(&key, 61, 1);
        let e = admit(&mut pool, &t1, funded(100, 0), 0).unwrap_err();
        assert_eq!(e.code(), "insufficient_funds");
        assert_eq!(
            pool.precheck(&t1, funded(100, 0), Origin::Client)
                .unwrap_err(),
            e
        );
        let old = tx(&key, 1, 0);
        assert_eq!(
            admit(&mut pool, &old, funded(100, 1), 0)
                .unwrap_err()
                .code(),
            "nonce_too_low"
        );
        let far = tx(&key, 1, NONCE_GAP_MAX + 1);
        assert_eq!(
            admit(&mut pool, &far, funded(100, 0), 0)
                .unwrap_err()
                .code(),
            "nonce_too_high"
        );
        assert_eq!(
            pool.precheck(&far, funded(100, 0), Origin::Client)
                .unwrap_err()
                .code(),
            "nonce_too_high"
        );
        let zero = tx(&key, 0, 1);
        assert_eq!(
            admit(&mut pool, &zero, funded(100, 0), 0)
                .unwrap_err()
                .code(),
            "invalid_amount"
        );
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn a_nonce_gap_is_not_ready_work() {
        let key = Keypair::from_seed([1; 32]);
        let mut pool = pool(10);
        let later = tx(&key, 1, 1);
        admit(&mut pool, &later, funded(100, 0), 0).unwrap();
        assert!(!pool.has_ready(), "nonce 1 waits for nonce 0");
        assert_eq!((pool.ready_len(), pool.parked_len()), (0, 1));
        assert_eq!(pool.pending_nonce(&key.public(), funded(100, 0)), 0);
        assert!(pool.candidates(10, |_| funded(100, 0)).is_empty());
        let first = tx(&key, 1, 0);
        admit(&mut pool, &first, funded(100, 0), 0).unwrap();
        assert!(pool.has_ready());
        assert_eq!((pool.ready_len(), pool.parked_len()), (2, 0));
        assert_eq!(pool.pending_nonce(&key.public(), funded(100, 0)), 2);
        assert_eq!(pool.candidates(10, |_| funded(100, 0)).len(), 2);
        pool.remove_committed(
            &[first.clone(), later.clone()],
            &[first.hash(), later.hash()],
            |_| funded(98, 2),
            0,
        );
        pool.check_invariants().unwrap();
        assert!(!pool.has_ready());
        assert!(pool.is_empty());
    }

    /// A sender served by a commit goes behind the senders still waiting.
    #[test]
    fn senders_take_turns() {
        let a = Keypair::from_seed([1; 32]);
        let b = Keypair::from_seed([2; 32]);
        let mut pool = pool(100);
        for nonce in 0..5 {
            admit(&mut pool, &tx(&a, 1, nonce), funded(100, 0), 0).unwrap();
        }
        admit(&mut pool, &tx(&b, 1, 0), funded(100, 0), 0).unwrap();
        let first: Vec<_> = pool.candidates(2, |_| funded(100, 0));
        assert!(first.iter().all(|(t, _)| t.transfer.from == a.public()));
        let (txs, hashes): (Vec<_>, Vec<_>) = first.into_iter().unzip();
        let after = |k: &PublicKey| funded(98, if *k == a.public() { 2 } else { 0 });
        pool.remove_committed(&txs, &hashes, after, 0);
        pool.check_invariants().unwrap();
        let next = pool.candidates(1, after);
        assert_eq!(next[0].0.transfer.from, b.public(), "b waited longer");
    }

    #[test]
    fn candidates_are_consecutive_and_commit_prunes() {
        let a = Keypair::from_seed([1; 32]);
        let mut pool = pool(100);
        for nonce in [0, 1, 3] {
            admit(&mut pool, &tx(&a, 1, nonce), funded(100, 0), 0).unwrap();
        }
        let picked = pool.candidates(10, |_| funded(100, 0));
        let nonces: Vec<u64> = picked.iter().map(|(t, _)| t.transfer.nonce).collect();
        assert_eq!(nonces, vec![0, 1]);
        // The block commits nonces 0 and 1 (another transaction for nonce 1).
        let other1 = tx(&a, 2, 1);
        let block = [picked[0].0.clone(), other1];
        let hashes: Vec<Hash> = block.iter().map(|t| t.hash()).collect();
        pool.remove_committed(&block, &hashes, |_| funded(97, 2), 0);
        pool.check_invariants().unwrap();
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.status(&picked[0].1), MempoolStatus::Unknown);
        assert_eq!(
            dropped_code(&pool, &picked[1].0),
            Some((false, "nonce_too_low"))
        );
    }

    /// The age a replica judges censorship by counts only transactions a
    /// block could take now: the next one of each ready sender (clients'
    /// here, sent on at once).
    #[test]
    fn the_oldest_ready_transaction_and_the_overdue_ones() {
        let a = Keypair::from_seed([1; 32]);
        let b = Keypair::from_seed([2; 32]);
        let gapped = Keypair::from_seed([3; 32]);
        let mut pool = pool(100);
        assert_eq!(pool.oldest_ready_gossiped_ms(), None);
        admit(&mut pool, &tx(&gapped, 1, 5), funded(100, 0), 50).unwrap();
        assert_eq!(pool.oldest_ready_gossiped_ms(), None, "a gap is no work");
        let a0 = tx(&a, 1, 0);
        admit(&mut pool, &a0, funded(100, 0), 100).unwrap();
        let b1 = tx(&b, 1, 1);
        admit(&mut pool, &b1, funded(100, 0), 10).unwrap();
        let b0 = tx(&b, 1, 0);
        admit(&mut pool, &b0, funded(100, 0), 200).unwrap();
        assert_eq!(pool.oldest_ready_gossiped_ms(), Some(100));
        let overdue: Vec<Hash> = pool
            .ready_since(150, 4, 10, 150)
            .iter()
            .map(|t| t.hash())
            .collect();
        assert_eq!(
            overdue,
            vec![a0.hash()],
            "not b's run (its next one, b0, is new), not g (behind a gap)"
        );
        let b_first: Vec<Hash> = pool
            .ready_since(250, 4, 10, 250)
            .iter()
            .map(|t| t.hash())
            .collect();
        assert_eq!(
            b_first,
            vec![a0.hash(), b0.hash(), b1.hash()],
            "longest waiting first, a run in nonce order"
        );
        assert_eq!(
            pool.ready_since(250, 1, 2, 250).len(),
            2,
            "one per sender when the budget is tight"
        );
        assert_eq!(
            pool.ready_since(250, 1, 10, 250).len(),
            3,
            "the budget shared out: b's whole run"
        );
        assert_eq!(pool.ready_since(250, 4, 1, 250).len(), 1, "bounded");
        pool.remove_committed(
            std::slice::from_ref(&a0),
            &[a0.hash()],
            |k| funded(100, u64::from(*k == a.public())),
            300,
        );
        assert_eq!(pool.oldest_ready_gossiped_ms(), Some(200));
    }

    /// A transaction known only from a peer's gossip is not judged until
    /// this node sends it on itself (gossips it again): from then on, from
    /// the first time, however often it goes again.
    #[test]
    fn a_peers_transaction_is_judged_from_when_this_node_sent_it() {
        let a = Keypair::from_seed([1; 32]);
        let b = Keypair::from_seed([2; 32]);
        let mut pool = pool(100);
        let from_peer = tx(&a, 1, 0);
        pool.admit(
            from_peer.clone(),
            from_peer.hash(),
            funded(100, 0),
            100,
            Origin::Peer,
        )
        .unwrap();
        assert_eq!(pool.oldest_ready_gossiped_ms(), None, "only a peer sent it");
        admit(&mut pool, &tx(&b, 1, 0), funded(100, 0), 300).unwrap();
        assert_eq!(pool.oldest_ready_gossiped_ms(), Some(300), "a client's");
        let again = pool.ready_since(150, 4, 10, 200);
        assert_eq!(again, vec![from_peer.clone()]);
        assert_eq!(pool.oldest_ready_gossiped_ms(), Some(200), "sent on at 200");
        assert_eq!(pool.ready_since(400, 4, 10, 500).len(), 2);
        assert_eq!(pool.oldest_ready_gossiped_ms(), Some(200), "the first time");
        pool.check_invariants().unwrap();
    }

    /// The attack of issue 8: senders fill the pool with transactions behind
    /// a nonce gap. They take at most their share, expire, and give way to
    /// anyone with a ready transaction.
    #[test]
    fn parked_transactions_are_capped_expire_and_give_way() {
        let mut limits = limits(10);
        limits.parked_max = 4;
        limits.sender_parked_max = 3;
        limits.parked_ttl_ms = 1_000;
        let mut pool = Mempool::new("c".into(), limits);
        let attacker = Keypair::from_seed([1; 32]);
        let other = Keypair::from_seed([2; 32]);
        for nonce in 1..=3 {
            admit(&mut pool, &tx(&attacker, 1, nonce), funded(100, 0), 0).unwrap();
        }
        assert_eq!(
            admit(&mut pool, &tx(&attacker, 1, 4), funded(100, 0), 0)
                .unwrap_err()
                .code(),
            "sender_limit"
        );
        admit(&mut pool, &tx(&other, 1, 1), funded(100, 0), 10).unwrap();
        // The parked share is full: a fifth parked one from a sender holding
        // as many as any other is refused...
        let third = Keypair::from_seed([3; 32]);
        admit(&mut pool, &tx(&third, 1, 1), funded(100, 0), 10).unwrap();
        assert_eq!(pool.parked_len(), 4, "took the attacker's last place");
        let evicted = tx(&attacker, 1, 3);
        assert_eq!(dropped_code(&pool, &evicted), Some((true, "mempool_full")));
        assert_eq!(
            admit(&mut pool, &tx(&third, 1, 2), funded(100, 0), 10)
                .unwrap_err()
                .code(),
            "mempool_full"
        );
        // ...and a ready one always fits.
        for (seed, t) in [(4u8, 20u64), (5, 20)] {
            let honest = Keypair::from_seed([seed; 32]);
            admit(&mut pool, &tx(&honest, 1, 0), funded(100, 0), t).unwrap();
        }
        // After their time, parked ones expire and say so.
        assert_eq!(pool.expire(1_005), 2, "the attacker's");
        pool.check_invariants().unwrap();
        let expired = tx(&attacker, 1, 1);
        assert_eq!(dropped_code(&pool, &expired), Some((true, "expired")));
        assert_eq!(pool.expire(1_011), 2);
        assert_eq!((pool.ready_len(), pool.parked_len()), (2, 0));
    }

    /// Senders holding about as many parked transactions never evict one
    /// another's: at twice the peak load, pools of honest senders took one
    /// acknowledged transaction from each other, over and over, each time
    /// leaving the victim's later transactions behind a gap its client did
    /// not know of, until the pools held nothing a block could take. Now
    /// the newcomer is refused (its client sends it again); a hog still
    /// gives way, to a parked newcomer and to a ready one.
    #[test]
    fn only_hogs_lose_acknowledged_transactions() {
        let mut pool = Mempool::new(
            "c".into(),
            MempoolLimits {
                parked_max: 6,
                ..limits(100)
            },
        );
        let peer = |pool: &mut Mempool, t: &SignedTransaction| {
            let verdict = pool.admit(t.clone(), t.hash(), funded(100, 0), 0, Origin::Peer);
            pool.check_invariants().unwrap();
            verdict
        };
        let senders: Vec<Keypair> = (1..=3).map(|i| Keypair::from_seed([i; 32])).collect();
        for sender in &senders {
            for nonce in 1..=2 {
                peer(&mut pool, &tx(sender, 1, nonce)).unwrap();
            }
        }
        assert_eq!(pool.parked_len(), 6);
        let fourth = Keypair::from_seed([4; 32]);
        peer(&mut pool, &tx(&fourth, 1, 1)).unwrap_err();
        peer(&mut pool, &tx(&senders[0], 1, 3)).unwrap_err();
        assert_eq!(pool.removed(RemovedReason::Evicted), 0, "no equal evicted");
        // A hog: one sender with 5 of the 6 parked places.
        let mut pool = Mempool::new(
            "c".into(),
            MempoolLimits {
                parked_max: 6,
                ..limits(8)
            },
        );
        let hog = Keypair::from_seed([9; 32]);
        for nonce in 1..=5 {
            peer(&mut pool, &tx(&hog, 1, nonce)).unwrap();
        }
        peer(&mut pool, &tx(&senders[0], 1, 1)).unwrap();
        peer(&mut pool, &tx(&senders[1], 1, 1)).unwrap();
        assert_eq!(
            dropped_code(&pool, &tx(&hog, 1, 5)),
            Some((true, "mempool_full"))
        );
        // The pool (8) full: a ready newcomer takes a hog's parked place.
        peer(&mut pool, &tx(&senders[2], 1, 0)).unwrap();
        peer(&mut pool, &tx(&senders[2], 1, 1)).unwrap();
        assert_eq!(pool.len(), 8);
        peer(&mut pool, &tx(&fourth, 1, 0)).unwrap();
        assert_eq!(
            dropped_code(&pool, &tx(&hog, 1, 4)),
            Some((true, "mempool_full"))
        );
        assert_eq!(pool.removed(RemovedReason::Evicted), 2);
    }

    /// A full pool of ready transactions still takes a sender holding few:
    /// the sender holding the most loses its last one.
    #[test]
    fn a_full_pool_makes_room_for_a_small_sender() {
        let mut pool = pool(6);
        let big = Keypair::from_seed([1; 32]);
        for nonce in 0..6 {
            admit(&mut pool, &tx(&big, 1, nonce), funded(100, 0), 0).unwrap();
        }
        let small = Keypair::from_seed([2; 32]);
        admit(&mut pool, &tx(&small, 1, 0), funded(100, 0), 0).unwrap();
        assert_eq!(
            dropped_code(&pool, &tx(&big, 1, 5)),
            Some((true, "mempool_full"))
        );
        admit(&mut pool, &tx(&small, 1, 1), funded(100, 0), 0).unwrap();
        assert_eq!(pool.sender_counts(&big.public()), (4, 0));
        // Now big holds 4 and small would hold 3: not twice as much, so no.
        assert_eq!(
            admit(&mut pool, &tx(&small, 1, 2), funded(100, 0), 0),
            Err(AdmitError::Full(6))
        );
        assert_eq!(
            admit(&mut pool, &tx(&big, 1, 4), funded(100, 0), 0),
            Err(AdmitError::Full(6))
        );
    }

    /// Clients fill the pool only up to their share; other validators'
    /// gossip may use the rest.
    #[test]
    fn clients_leave_room_for_gossip() {
        let mut limits = limits(6);
        limits.client_max = 3;
        let mut pool = Mempool::new("c".into(), limits);
        let keys: Vec<Keypair> = (1..=6u8).map(|i| Keypair::from_seed([i; 32])).collect();
        for key in &keys[..3] {
            let t = tx(key, 1, 0);
            assert_eq!(
                pool.admit(t.clone(), t.hash(), funded(100, 0), 0, Origin::Client),
                Ok(Admitted::New)
            );
        }
        let t = tx(&keys[3], 1, 0);
        assert_eq!(
            pool.precheck(&t, funded(100, 0), Origin::Client),
            Err(AdmitError::Full(3))
        );
        assert_eq!(
            pool.admit(t.clone(), t.hash(), funded(100, 0), 0, Origin::Client),
            Err(AdmitError::Full(3))
        );
        for key in &keys[3..] {
            let t = tx(key, 1, 0);
            assert_eq!(
                pool.admit(t.clone(), t.hash(), funded(100, 0), 0, Origin::Peer),
                Ok(Admitted::New)
            );
        }
        pool.check_invariants().unwrap();
        assert_eq!(pool.len(), 6);
    }

    /// The race of issue 8: a sender's nonce 0 and 1 wait here; another
    /// nonce 0 that spends everything commits through another validator.
    /// Nonce 1 can no longer execute: it goes, with its reason, and the
    /// sender can send nonce 1 again.
    #[test]
    fn a_ready_transaction_the_balance_no_longer_covers_is_dropped() {
        let key = Keypair::from_seed([1; 32]);
        let mut pool = pool(10);
        let mine0 = tx(&key, 10, 0);
        let mine1 = tx(&key, 90, 1);
        admit(&mut pool, &mine0, funded(100, 0), 0).unwrap();
        admit(&mut pool, &mine1, funded(100, 0), 0).unwrap();
        let theirs0 = tx(&key, 100, 0);
        pool.remove_committed(
            std::slice::from_ref(&theirs0),
            &[theirs0.hash()],
            |_| funded(0, 1),
            0,
        );
        pool.check_invariants().unwrap();
        assert!(pool.is_empty() && !pool.has_ready());
        assert_eq!(dropped_code(&pool, &mine0), Some((false, "nonce_too_low")));
        assert_eq!(
            dropped_code(&pool, &mine1),
            Some((false, "insufficient_funds"))
        );
        let again = tx(&key, 5, 1);
        assert_eq!(admit(&mut pool, &again, funded(5, 1), 0), Ok(Admitted::New));
    }

    /// A commit this pool was not told about yet (admission read newer
    /// state) is caught up on admission.
    #[test]
    fn admission_catches_up_with_a_newer_account() {
        let key = Keypair::from_seed([1; 32]);
        let mut pool = pool(10);
        admit(&mut pool, &tx(&key, 1, 0), funded(100, 0), 0).unwrap();
        admit(&mut pool, &tx(&key, 1, 1), funded(100, 0), 0).unwrap();
        assert_eq!(pool.pending_nonce(&key.public(), funded(99, 1)), 2);
        admit(&mut pool, &tx(&key, 1, 2), funded(99, 1), 0).unwrap();
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.pending_nonce(&key.public(), funded(99, 1)), 3);
    }

    mod model {
        //! The mempool against a model: random senders admit, blocks commit
        //! candidates, time passes. After every step the pool's invariants
        //! hold, caps are kept, what it holds is exactly what the model says
        //! was admitted and not yet gone, and evictions take from the
        //! biggest holder.
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Admit {
                sender: u8,
                nonce_ahead: u8,
                amount: u8,
            },
            Commit {
                max: u8,
            },
            /// Another validator's transaction of this sender commits.
            Foreign {
                sender: u8,
                amount: u8,
            },
            Wait {
                ms: u16,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0..6u8, 0..6u8, 1..40u8).prop_map(|(sender, nonce_ahead, amount)| Op::Admit { sender, nonce_ahead, amount }),
                2 => (0..8u8).prop_map(|max| Op::Commit { max }),
                1 => (0..6u8, 1..100u8).prop_map(|(sender, amount)| Op::Foreign { sender, amount }),
                1 => (0..400u16).prop_map(|ms| Op::Wait { ms }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            #[test]
            fn the_pool_keeps_its_promises(ops in proptest::collection::vec(op(), 1..120)) {
                let limits = MempoolLimits {
                    capacity: 12,
                    sender_txs_max: 5,
                    sender_parked_max: 2,
                    parked_max: 5,
                    parked_ttl_ms: 500,
                    ttl_ms: 2_000,
                    client_max: 9,
                };
                let mut pool = Mempool::new("c".into(), limits.clone());
                let keys: Vec<Keypair> = (0..6u8).map(|i| Keypair::from_seed([i + 1; 32])).collect();
                let mut accounts: HashMap<PublicKey, Account> = keys.iter().map(|k| (k.public(), funded(100, 0))).collect();
                let mut now = 0u64;
                // What the model says the pool holds.
                let mut held: HashMap<Hash, SignedTransaction> = HashMap::new();
                for op in ops {
                    match op {
                        Op::Admit { sender, nonce_ahead, amount } => {
                            let key = &keys[sender as usize];
                            let account = accounts[&key.public()];
                            let t = tx(key, amount as u64, account.nonce + nonce_ahead as u64);
                            let sizes: Vec<(usize, usize)> = keys.iter().map(|k| pool.sender_counts(&k.public())).collect();
                            let before = held.clone();
                            let pending_before = pool.pending_nonce(&key.public(), account);
                            let origin = if sender % 2 == 0 { Origin::Client } else { Origin::Peer };
                            let verdict = pool.admit(t.clone(), t.hash(), account, now, origin);
                            pool.check_invariants().map_err(TestCaseError::fail)?;
                            // Whatever left (expired or evicted) says why.
                            let gone: Vec<Hash> = before.keys().filter(|h| !pool.contains(h)).copied().collect();
                            let mut evicted = Vec::new();
                            for h in &gone {
                                match pool.status(h) {
                                    MempoolStatus::Dropped(d) if d.code == "mempool_full" => evicted.push(*h),
                                    MempoolStatus::Dropped(d) => prop_assert_eq!(d.code, "expired"),
                                    other => prop_assert!(false, "{:?}", other),
                                }
                                held.remove(h);
                            }
                            prop_assert!(evicted.len() <= 1);
                            if let Some(h) = evicted.first() {
                                // Taken from the biggest parked holder, else
                                // the biggest holder, and only from a hog:
                                // one holding more than twice what the
                                // newcomer's sender holds (in parked ones,
                                // for a parked newcomer).
                                let victim = keys.iter().position(|k| k.public() == before[h].transfer.from).unwrap();
                                let parked_newcomer = t.transfer.nonce != pending_before;
                                let (own_ready, own_parked) = sizes[sender as usize];
                                let most_parked = sizes.iter().map(|s| s.1).max().unwrap();
                                if parked_newcomer {
                                    prop_assert_eq!(sizes[victim].1, most_parked);
                                    prop_assert!(most_parked > hog_above(own_parked));
                                } else if most_parked > hog_above(own_ready + own_parked) {
                                    prop_assert_eq!(sizes[victim].1, most_parked);
                                } else {
                                    let most = sizes.iter().map(|s| s.0 + s.1).max().unwrap();
                                    prop_assert_eq!(sizes[victim].0 + sizes[victim].1, most);
                                    prop_assert!(most > hog_above(own_ready + own_parked));
                                }
                            }
                            match verdict {
                                Ok(Admitted::New) => {
                                    prop_assert!(held.insert(t.hash(), t.clone()).is_none(), "admitted twice");
                                }
                                Ok(Admitted::AlreadyPending) => prop_assert!(held.contains_key(&t.hash())),
                                Err(AdmitError::Full(_)) if nonce_ahead == 0 && sizes[sender as usize] == (0, 0) => {
                                    // A sender holding nothing is refused only
                                    // when nobody holds more than twice one.
                                    prop_assert!(sizes.iter().all(|s| s.0 + s.1 <= hog_above(0)));
                                }
                                Err(_) => {}
                            }
                        }
                        Op::Commit { max } => {
                            let picked = pool.candidates(max as usize, |k| accounts[k]);
                            let mut block = Vec::new();
                            for (t, h) in picked {
                                let a = accounts.get_mut(&t.transfer.from).unwrap();
                                prop_assert_eq!(a.nonce, t.transfer.nonce, "candidates continue the nonce");
                                prop_assert!(a.balance >= t.transfer.amount, "candidates are covered");
                                a.nonce += 1;
                                a.balance -= t.transfer.amount;
                                block.push((t, h));
                            }
                            let (txs, hashes): (Vec<_>, Vec<_>) = block.into_iter().unzip();
                            pool.remove_committed(&txs, &hashes, |k| accounts[k], now);
                            pool.check_invariants().map_err(TestCaseError::fail)?;
                            for h in &hashes {
                                held.remove(h);
                                prop_assert!(!pool.contains(h));
                            }
                            held.retain(|h, _| pool.contains(h));
                        }
                        Op::Foreign { sender, amount } => {
                            let key = &keys[sender as usize];
                            let a = accounts.get_mut(&key.public()).unwrap();
                            let amount = (amount as u64).min(a.balance);
                            if amount > 0 {
                                let foreign = tx(key, amount, a.nonce);
                                a.nonce += 1;
                                a.balance -= amount;
                                pool.remove_committed(std::slice::from_ref(&foreign), &[foreign.hash()], |k| accounts[k], now);
                                pool.check_invariants().map_err(TestCaseError::fail)?;
                                prop_assert!(!pool.contains(&foreign.hash()));
                                held.retain(|h, _| pool.contains(h));
                            }
                        }
                        Op::Wait { ms } => {
                            now += ms as u64;
                            pool.expire(now);
                            pool.check_invariants().map_err(TestCaseError::fail)?;
                            held.retain(|h, _| pool.contains(h));
                        }
                    }
                    prop_assert_eq!(pool.len(), held.len());
                    for h in held.keys() {
                        prop_assert!(pool.contains(h));
                    }
                    // Ready means: continues the committed nonce.
                    for k in &keys {
                        let (ready, _) = pool.sender_counts(&k.public());
                        let a = accounts[&k.public()];
                        prop_assert_eq!(pool.pending_nonce(&k.public(), a), a.nonce + ready as u64);
                    }
                }
            }
        }
    }
}
