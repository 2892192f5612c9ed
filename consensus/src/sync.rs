//! Catch-up: noticing that the others are ahead, asking one of them for
//! committed blocks, and applying the certified blocks of the reply. Also
//! the buffer of messages for heights just above the next one.

use std::collections::BTreeMap;

use cairn_core::{codec, Block, Certificate, Hash, Height, ValidatorIndex, View};

use crate::limits::{
    FUTURE_BYTES_PER_SENDER_MAX, FUTURE_MESSAGES_PER_SENDER_MAX, HEIGHTS_AHEAD_MAX, SYNC_BLOCKS_MAX,
};
use crate::log::{Kind, Round, Seen};
use crate::message::{signatures_valid, SignedMessage};
use crate::replica::Replica;
use crate::{Action, Ledger};

/// What the replica knows about being behind.
pub(crate) struct SyncState {
    /// The highest height each validator's signed messages showed it on.
    claims: Vec<Height>,
    /// A height proven committed (by a certificate or a commit quorum), and
    /// a validator that holds it.
    proven: Option<(Height, ValidatorIndex)>,
    /// Since when the evidence of being behind has stood at this height.
    behind_since_ms: Option<u64>,
    requested_at_ms: Option<u64>,
    /// Turns through the peers that can serve a sync.
    rotation: usize,
}

impl SyncState {
    pub(crate) fn new(n: usize) -> SyncState {
        SyncState {
            claims: vec![Height(0); n],
            proven: None,
            behind_since_ms: None,
            requested_at_ms: None,
            rotation: 0,
        }
    }

    pub(crate) fn on_new_height(&mut self) {
        self.behind_since_ms = None;
        self.requested_at_ms = None;
    }

    /// Behind: a height at or above `next` is proven committed, or f+1
    /// validators (so at least one honest) work above `next`.
    pub(crate) fn is_behind(&self, next: Height, n: usize) -> bool {
        let proven = self.proven.is_some_and(|(h, _)| h >= next);
        proven || self.ahead(next).count() > cairn_core::max_faulty(n)
    }

    /// While behind, the height to catch up to: the highest height proven
    /// committed, or the highest that f+1 validators' signed messages show
    /// them past (their (f+1)-th highest claim less one, so at least one
    /// honest validator has committed it; one liar cannot raise it).
    pub(crate) fn target(&self, next: Height, n: usize) -> Option<Height> {
        if !self.is_behind(next, n) {
            return None;
        }
        let proven = self.proven.map(|(h, _)| h).filter(|h| *h >= next);
        let mut claims = self.claims.clone();
        claims.sort_unstable_by(|a, b| b.cmp(a));
        let honest = claims
            .get(cairn_core::max_faulty(n))
            .filter(|h| **h > next)
            .map(|h| Height(h.0 - 1));
        proven.max(honest)
    }

    fn ahead(&self, next: Height) -> impl Iterator<Item = ValidatorIndex> + '_ {
        self.claims
            .iter()
            .enumerate()
            .filter(move |(_, h)| **h > next)
            .map(|(i, _)| ValidatorIndex(i as u16))
    }

    /// The next peer to ask: the holder of a proven height, then in turn
    /// each validator ahead of us.
    fn pick_peer(&mut self, next: Height) -> Option<ValidatorIndex> {
        let mut peers: Vec<ValidatorIndex> = self
            .proven
            .filter(|(h, _)| *h >= next)
            .map(|(_, v)| v)
            .into_iter()
            .collect();
        peers.extend(self.ahead(next));
        if peers.is_empty() {
            return None;
        }
        self.rotation = self.rotation.wrapping_add(1);
        Some(peers[self.rotation % peers.len()])
    }
}

/// Verified messages for heights just above the next one, bounded per
/// sender in count ([`FUTURE_MESSAGES_PER_SENDER_MAX`]) and in encoded
/// bytes ([`FUTURE_BYTES_PER_SENDER_MAX`]).
pub(crate) struct FutureBuffer {
    by_height: BTreeMap<Height, Vec<(SignedMessage, usize)>>,
    /// Messages and encoded bytes held per sender.
    held: Vec<(usize, usize)>,
}

impl FutureBuffer {
    pub(crate) fn new(n: usize) -> FutureBuffer {
        FutureBuffer {
            by_height: BTreeMap::new(),
            held: vec![(0, 0); n],
        }
    }

    /// Whether a message of `bytes` from its sender would be kept: within
    /// the sender's bounds and not held already.
    fn has_room(&self, message: &SignedMessage, bytes: usize) -> bool {
        let (count, held_bytes) = self.held[message.from.get()];
        count < FUTURE_MESSAGES_PER_SENDER_MAX
            && held_bytes.saturating_add(bytes) <= FUTURE_BYTES_PER_SENDER_MAX
            && !self
                .by_height
                .get(&message.message.height())
                .is_some_and(|ms| ms.iter().any(|(m, _)| m == message))
    }

    fn insert(&mut self, message: SignedMessage, bytes: usize) {
        let held = &mut self.held[message.from.get()];
        held.0 += 1;
        held.1 += bytes;
        let height = message.message.height();
        self.by_height
            .entry(height)
            .or_default()
            .push((message, bytes));
    }

    /// Takes the messages of `height` and drops those of lower heights.
    fn take(&mut self, height: Height) -> Vec<SignedMessage> {
        let later = self.by_height.split_off(&height.next());
        let now = std::mem::replace(&mut self.by_height, later);
        let mut taken = vec![];
        for (h, messages) in now {
            for (message, bytes) in messages {
                let held = &mut self.held[message.from.get()];
                held.0 -= 1;
                held.1 -= bytes;
                if h == height {
                    taken.push(message);
                }
            }
        }
        taken
    }

    pub(crate) fn message_count(&self) -> usize {
        self.held.iter().map(|(count, _)| count).sum()
    }

    /// Encoded bytes held for `sender`.
    pub(crate) fn bytes_of(&self, sender: ValidatorIndex) -> usize {
        self.held.get(sender.get()).map_or(0, |(_, bytes)| *bytes)
    }
}

impl Replica {
    /// A signed message for a height above the next one: evidence that its
    /// sender is ahead, and buffered when the height is near.
    pub(crate) fn on_future(&mut self, message: SignedMessage, verified: bool) {
        let from = message.from.get();
        let height = message.message.height();
        let near = height.0 <= self.round.height.0.saturating_add(HEIGHTS_AHEAD_MAX);
        let bytes = if near {
            codec::encoded_len(&message)
        } else {
            0
        };
        if near {
            if !self.future.has_room(&message, bytes) {
                return;
            }
        } else if self.sync.claims[from] > self.round.height {
            return; // already counted as ahead: no need to check again
        }
        if !(verified || self.verify_sender(&message)) {
            return;
        }
        let claim = &mut self.sync.claims[from];
        *claim = (*claim).max(height);
        if near {
            self.future.insert(message, bytes);
        }
    }

    /// Files the buffered messages of the new next height, drops older ones.
    pub(crate) fn replay_future(&mut self) {
        for message in self.future.take(self.round.height) {
            self.on_message(message, true);
        }
    }

    /// Encoded bytes of the future-height messages held for `sender`; never
    /// above [`FUTURE_BYTES_PER_SENDER_MAX`].
    pub fn future_bytes_of(&self, sender: ValidatorIndex) -> usize {
        self.future.bytes_of(sender)
    }

    /// A peer's certificate: for the next height its signatures count as
    /// commit votes (when its view is one the log keeps); otherwise it
    /// proves we are behind.
    pub(crate) fn on_decided(
        &mut self,
        message: SignedMessage,
        certificate: Certificate,
        verified: bool,
    ) {
        let next = self.round.height;
        if certificate.height == next && Round::view_in_window(certificate.view, self.view()) {
            if !(verified || self.verify_sender(&message)) {
                return;
            }
            if !self.add_commit_votes(&certificate) {
                self.blame(crate::Offence::BadCertificate);
            }
            return;
        }
        let useful = certificate.height >= next
            && self.sync.proven.is_none_or(|(h, _)| certificate.height > h);
        if !useful || !(verified || self.verify_sender(&message)) {
            return;
        }
        let vote = certificate.vote(&self.config.chain_id);
        if signatures_valid(&vote, &certificate.signatures, &self.config.validators) {
            self.sync.proven = Some((certificate.height, message.from));
        } else {
            self.blame(crate::Offence::BadCertificate);
        }
    }

    /// Files the signatures of a certificate for the next height as commit
    /// votes. Its shape is checked before any signature (at most n, of
    /// distinct validators), so a padded certificate costs nothing; a
    /// signature already in the log is not checked again; one bad signature
    /// discards the whole certificate. False when the certificate is
    /// bogus (no honest validator sends it).
    fn add_commit_votes(&mut self, certificate: &Certificate) -> bool {
        if certificate.signatures.len() > self.n() {
            return false;
        }
        let mut seen = vec![false; self.n()];
        for s in &certificate.signatures {
            match seen.get_mut(s.validator.get()) {
                Some(signed) if !*signed => *signed = true,
                _ => return false,
            }
        }
        let (view, hash) = (certificate.view, certificate.block_hash);
        let vote = certificate.vote(&self.config.chain_id);
        let mut new = vec![];
        for s in &certificate.signatures {
            let Some(key) = self.config.validators.get(s.validator.get()) else {
                return false;
            };
            if self.round.vote_seen(Kind::Commit, view, s.validator) == Seen::Already {
                continue;
            }
            if !vote.verify(key, &s.signature) {
                return false;
            }
            new.push(s);
        }
        for s in new {
            self.round
                .insert_vote(Kind::Commit, view, s.validator, hash, s.signature);
        }
        true
    }

    /// 2f+1 commit votes for a block we do not hold: the height is decided
    /// and the block must be fetched from one of the voters.
    pub(crate) fn note_unknown_commit(&mut self, view: View, hash: Hash) {
        let next = self.round.height;
        let voter = self
            .round
            .signatures(Kind::Commit, view, hash)
            .into_iter()
            .map(|s| s.validator)
            .find(|v| *v != self.me);
        if let Some(voter) = voter {
            if self.sync.proven.is_none_or(|(h, _)| h < next) {
                self.sync.proven = Some((next, voter));
            }
        }
    }

    /// Asks a peer for blocks when behind: on strong evidence (a proven
    /// height, or f+1 validators ahead) once it stood for a retransmission
    /// interval (reordered messages often run a little ahead); on a single
    /// validator ahead only after a whole view timeout without progress
    /// (its sender may be the only one that moved on, or may lie: then one
    /// wasted request per timeout). At most one request per interval.
    pub(crate) fn check_sync(&mut self) {
        let next = self.round.height;
        let strong = self.sync.is_behind(next, self.n());
        if !strong && self.sync.ahead(next).next().is_none() {
            self.sync.behind_since_ms = None;
            return;
        }
        let interval = self.retransmit_interval_ms();
        let wait = if strong {
            interval
        } else {
            self.config.view_timeout_ms
        };
        let since = *self.sync.behind_since_ms.get_or_insert(self.now_ms);
        let recently = self
            .sync
            .requested_at_ms
            .is_some_and(|t| self.now_ms < t + interval);
        if self.now_ms < since + wait || recently {
            return;
        }
        if let Some(peer) = self.sync.pick_peer(next) {
            self.request_sync(peer);
        }
    }

    fn request_sync(&mut self, to: ValidatorIndex) {
        self.sync.requested_at_ms = Some(self.now_ms);
        self.abstain_requested(to);
        let from_height = self.round.height;
        self.push(Action::RequestSync { to, from_height });
    }

    /// Applies the certified blocks of a sync reply in order, stopping at
    /// the first that does not extend the tip or whose certificate fails;
    /// after any progress asks the same peer for more (a reply may be
    /// unsolicited, from the runtime's idle poll, so the replica may not yet
    /// know how far behind it is; the last request costs an empty reply).
    pub(crate) fn on_sync_response(
        &mut self,
        ledger: &mut impl Ledger,
        from: ValidatorIndex,
        blocks: Vec<(Block, Certificate)>,
    ) {
        let mut progressed = false;
        for (block, certificate) in blocks.into_iter().take(SYNC_BLOCKS_MAX) {
            let next = self.round.height;
            if block.header.height < next {
                continue;
            }
            let extends = block.header.height == next && block.header.parent_hash == self.tip_hash;
            let certified = extends
                && certificate
                    .verify(
                        &self.config.chain_id,
                        &self.config.validators,
                        &block.header,
                    )
                    .is_ok();
            if !certified || !self.commit_block(ledger, block, certificate) {
                break;
            }
            progressed = true;
        }
        if from.get() >= self.n() || from == self.me {
            return;
        }
        self.abstain_answered(from, progressed);
        if progressed {
            self.request_sync(from);
        } else {
            // Nothing past our tip: whatever it claimed, it is not ahead
            // (a claim that only went up kept a liar asked for good).
            let next = self.round.height;
            let claim = &mut self.sync.claims[from.get()];
            *claim = (*claim).min(next);
        }
    }
}
