//! The replica: input dispatch, the normal case (propose, prepare, commit)
//! and the per-height bookkeeping. View changes are in `view_change.rs`,
//! catch-up in `sync.rs`.

use cairn_core::{
    max_faulty, quorum, Block, Certificate, Hash, Height, Keypair, PublicKey, ValidatorIndex, View,
};

use crate::limits::{
    ADVANCE_STEPS_MAX, RETRANSMIT_DIVISOR, RETRANSMIT_INTERVAL_MIN_MS, TIMESTAMP_FUTURE_MS_MAX,
    VIEW_TIMEOUT_DOUBLINGS_MAX,
};
use crate::log::{Kind, Proposal, Round, Seen};
use crate::message::{Message, SignedMessage};
use crate::safety::{Justification, SafetyRules, SafetyState};
use crate::sync::SyncState;
use crate::{Action, Config, Input, Ledger, Offence};

/// One validator's PBFT replica.
pub struct Replica {
    pub(crate) config: Config,
    pub(crate) me: ValidatorIndex,
    pub(crate) public: PublicKey,
    pub(crate) safety: SafetyRules,
    /// The log of the height being decided (`tip + 1`).
    pub(crate) round: Round,
    /// Whether `round` was lined up with the ledger since construction.
    aligned: bool,
    pub(crate) tip_hash: Hash,
    pub(crate) now_ms: u64,
    /// When the current view times out; `None` while the timer is stopped.
    pub(crate) view_deadline_ms: Option<u64>,
    /// Views asked for since the last commit: the timeout doubles per one.
    pub(crate) failed_views: u32,
    /// Time of the last own proposal or commit.
    last_proposal_ms: u64,
    /// When the current height started (the last commit).
    height_started_ms: u64,
    retransmit_at_ms: u64,
    /// Verified messages for heights just above the next one.
    pub(crate) future: crate::sync::FutureBuffer,
    pub(crate) sync: SyncState,
    /// When each peer was last sent a `Decided` (help for laggards).
    helped_at_ms: Vec<Option<u64>>,
    /// The certificate of the tip, when committed since start.
    last_certificate: Option<Certificate>,
    /// While a message is filed: the peer that sent it on its own
    /// connection under its own index, which vouches for what it signed
    /// (taken by the first [`Replica::blame`], so one punishment per input).
    accountable: Option<ValidatorIndex>,
    out: Vec<Action>,
}

impl Replica {
    /// A replica for the validator holding `key`, restored from `safety`
    /// (the default for a fresh validator). `key` must be in
    /// `config.validators`.
    pub fn new(config: Config, key: Keypair, safety: SafetyState) -> Replica {
        let n = config.validators.len();
        assert!(n > 0, "a validator set is never empty");
        let public = key.public();
        let me = config
            .validators
            .iter()
            .position(|v| *v == public)
            .expect("the replica's key is in the validator set");
        let me = ValidatorIndex(me as u16);
        let round = Round::new(safety.height());
        let safety = SafetyRules::new(safety, key, config.chain_id.clone(), me, n);
        Replica {
            me,
            public,
            safety,
            round,
            aligned: false,
            tip_hash: Hash::ZERO,
            now_ms: 0,
            view_deadline_ms: None,
            failed_views: 0,
            last_proposal_ms: 0,
            height_started_ms: 0,
            retransmit_at_ms: 0,
            future: crate::sync::FutureBuffer::new(n),
            sync: SyncState::new(n),
            helped_at_ms: vec![None; n],
            last_certificate: None,
            accountable: None,
            out: vec![],
            config,
        }
    }

    /// A replica for a validator without a safety record (new, or its home
    /// wiped), restored from `safety` (the default, or the state it
    /// persisted while abstaining): it signs nothing until it has committed
    /// past the heights its peers report (see [`Replica::is_abstaining`]).
    pub fn new_fresh(config: Config, key: Keypair, safety: SafetyState) -> Replica {
        let mut replica = Replica::new(config, key, safety);
        replica.safety.start_abstaining();
        replica
    }

    /// The one entry point.
    pub fn handle(&mut self, ledger: &mut impl Ledger, input: Input) -> Vec<Action> {
        self.align(ledger);
        match input {
            Input::Tick { now_ms } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.on_tick(ledger);
            }
            Input::Message(message) => self.on_message(message, false),
            Input::PeerMessage { peer, message } => {
                self.accountable = (peer == message.from).then_some(peer);
                self.on_message(message, false);
                self.accountable = None;
            }
            Input::SyncResponse { from, blocks } => self.on_sync_response(ledger, from, blocks),
        }
        self.advance(ledger);
        self.persist_if_dirty();
        std::mem::take(&mut self.out)
    }

    /// The replica's current view.
    pub fn view(&self) -> View {
        self.safety.state().view()
    }

    /// The primary of the current view.
    pub fn primary(&self) -> ValidatorIndex {
        self.view().primary(self.n())
    }

    /// Whether the replica knows it is behind and is fetching blocks.
    pub fn is_syncing(&self) -> bool {
        self.sync.is_behind(self.round.height, self.n())
    }

    /// While catching up, the height this replica knows the others have
    /// committed (see `sync.rs`); `None` when it is not behind. For metrics
    /// and logs: the replica does not act on it.
    pub fn sync_target(&self) -> Option<Height> {
        self.sync.target(self.round.height, self.n())
    }

    /// The height being decided: the ledger tip + 1 (as of the last input).
    pub fn height(&self) -> Height {
        self.round.height
    }

    /// Messages held in buffers and logs; never above
    /// [`crate::limits::buffered_messages_max`] of the validator count.
    pub fn buffered_message_count(&self) -> usize {
        self.round.message_count() + self.future.message_count()
    }

    pub(crate) fn n(&self) -> usize {
        self.config.validators.len()
    }

    pub(crate) fn quorum(&self) -> usize {
        quorum(self.n())
    }

    pub(crate) fn max_faulty(&self) -> usize {
        max_faulty(self.n())
    }

    pub(crate) fn view_timeout_ms(&self) -> u64 {
        let doublings = self.failed_views.min(VIEW_TIMEOUT_DOUBLINGS_MAX);
        self.config.view_timeout_ms.saturating_mul(1 << doublings)
    }

    pub(crate) fn retransmit_interval_ms(&self) -> u64 {
        (self.config.view_timeout_ms / RETRANSMIT_DIVISOR).max(RETRANSMIT_INTERVAL_MIN_MS)
    }

    /// Lines the log up with the ledger tip (at start, after a restart).
    fn align(&mut self, ledger: &mut impl Ledger) {
        let (tip, hash) = ledger.tip();
        if self.aligned && self.round.height == tip.next() {
            return;
        }
        self.aligned = true;
        self.tip_hash = hash;
        if self.round.height != tip.next() || self.safety.state().height() != tip.next() {
            self.start_height(tip.next(), self.view());
        }
        if self.safety.state().requested_current_view() && self.round.own.view_change.is_none() {
            // Restarted while asking for a view: ask again (same view).
            self.start_view_change(self.view());
        }
    }

    /// Starts deciding `height` in `view` with a fresh log.
    fn start_height(&mut self, height: Height, view: View) {
        self.safety.begin_height(height, view);
        self.round = Round::new(height);
        self.view_deadline_ms = None;
        self.failed_views = 0;
        // `last_proposal_ms` is not reset here: the interval runs from the
        // last proposal, not from its commit, so a primary whose blocks take
        // longer than the interval to decide proposes again at once (an
        // idle interval after every commit added its whole length to each
        // block's cycle: half the latency at low load, a tenth of the
        // throughput at peak).
        self.height_started_ms = self.now_ms;
        self.retransmit_at_ms = self.now_ms + self.retransmit_interval_ms();
        self.sync.on_new_height();
    }

    fn on_tick(&mut self, ledger: &mut impl Ledger) {
        self.check_view_timer(ledger);
        self.join_higher_view();
        self.retransmit();
        self.check_sync();
    }

    /// Takes every step the log allows, in order of priority.
    fn advance(&mut self, ledger: &mut impl Ledger) {
        for _ in 0..ADVANCE_STEPS_MAX {
            let progressed = self.try_commit(ledger)
                || self.try_commit_vote()
                || self.try_prepare(ledger)
                || self.try_new_view(ledger)
                || self.try_propose(ledger);
            if !progressed {
                return;
            }
        }
    }

    // ---- sending ----------------------------------------------------------

    pub(crate) fn persist_if_dirty(&mut self) {
        if let Some(state) = self.safety.take_dirty() {
            self.out.push(Action::PersistSafety(state));
        }
    }

    pub(crate) fn broadcast(&mut self, message: SignedMessage) {
        self.persist_if_dirty();
        self.out.push(Action::Broadcast(message));
    }

    pub(crate) fn send(&mut self, to: ValidatorIndex, message: SignedMessage) {
        self.persist_if_dirty();
        self.out.push(Action::Send { to, message });
    }

    pub(crate) fn push(&mut self, action: Action) {
        self.out.push(action);
    }

    // ---- receiving --------------------------------------------------------

    /// Filters and files one message. `verified`: the outer signature was
    /// already checked (a message replayed from the future buffer).
    pub(crate) fn on_message(&mut self, message: SignedMessage, verified: bool) {
        if message.from.get() >= self.n() || message.from == self.me {
            return;
        }
        self.abstain_hear(&message, verified);
        if let Message::Decided { certificate } = &message.message {
            let certificate = certificate.clone();
            return self.on_decided(message, certificate, verified);
        }
        let height = message.message.height();
        if height < self.round.height {
            return self.help_peer(message.from);
        }
        if height > self.round.height {
            return self.on_future(message, verified);
        }
        match &message.message {
            Message::PrePrepare { view, block, .. } => {
                let (view, block) = (*view, block.clone());
                self.on_pre_prepare(message, view, block, verified);
            }
            Message::Prepare {
                view, block_hash, ..
            } => self.on_vote(&message, Kind::Prepare, *view, *block_hash, verified),
            Message::Commit {
                view, block_hash, ..
            } => self.on_vote(&message, Kind::Commit, *view, *block_hash, verified),
            Message::ViewChange { .. } => self.on_view_change(message, verified),
            Message::NewView { .. } => self.on_new_view(message, verified),
            Message::Decided { .. } => {}
        }
    }

    pub(crate) fn verify(&self, message: &SignedMessage) -> bool {
        message.verify(&self.config.chain_id, &self.config.validators)
    }

    /// Checks the signature of the message being filed, blaming its sender
    /// when it fails (see [`Replica::blame`]).
    pub(crate) fn verify_sender(&mut self, message: &SignedMessage) -> bool {
        let valid = self.verify(message);
        if !valid {
            self.blame(Offence::BadSignature);
        }
        valid
    }

    /// The message being filed is bogus in a way no honest validator's
    /// message is: when its sender sent it on its own connection, report
    /// it (once per input) for the runtime to disconnect and back off. A
    /// message that reached us otherwise (a test, a relay, a replay from
    /// the future buffer) blames no one.
    pub(crate) fn blame(&mut self, offence: Offence) {
        if let Some(peer) = self.accountable.take() {
            self.out.push(Action::Punish { peer, offence });
        }
    }

    /// Files a pre-prepare from the primary of its view whose header builds
    /// on our tip; the first one per view is kept.
    fn on_pre_prepare(&mut self, message: SignedMessage, view: View, block: Block, verified: bool) {
        if !Round::view_in_window(view, self.view()) || self.round.proposals.contains_key(&view) {
            return;
        }
        let from = message.from;
        let header = &block.header;
        let consistent = from == view.primary(self.n())
            && header.height == self.round.height
            && header.view == view
            && header.proposer == self.config.validators[from.get()]
            && header.parent_hash == self.tip_hash;
        if !consistent || !(verified || self.verify_sender(&message)) {
            return;
        }
        let hash = block.hash();
        let proposal = Proposal {
            block,
            hash,
            justification: Justification::Plain,
        };
        self.round.proposals.insert(view, proposal);
    }

    /// Files a prepare or commit vote; a sender's first vote per view and
    /// kind is kept, any other is a duplicate or an equivocation.
    fn on_vote(
        &mut self,
        message: &SignedMessage,
        kind: Kind,
        view: View,
        hash: Hash,
        verified: bool,
    ) {
        if !Round::view_in_window(view, self.view())
            || self.round.vote_seen(kind, view, message.from) == Seen::Already
            || !(verified || self.verify_sender(message))
        {
            return;
        }
        self.round
            .insert_vote(kind, view, message.from, hash, message.signature);
    }

    // ---- the normal case --------------------------------------------------

    /// The primary proposes once per view when there is work and the block
    /// interval has passed.
    fn try_propose(&mut self, ledger: &mut impl Ledger) -> bool {
        let view = self.view();
        let ready = view.primary(self.n()) == self.me
            && view == self.safety.state().start_view()
            && !self.round.proposals.contains_key(&view)
            && self.now_ms >= self.last_proposal_ms + self.config.block_interval_ms
            && ledger.has_pending();
        if !ready {
            return false;
        }
        let Some(block) = ledger.propose(view, self.public, self.now_ms) else {
            return false;
        };
        if block.header.height != self.round.height || block.header.parent_hash != self.tip_hash {
            debug_assert!(false, "the ledger proposed a block off the tip");
            return false;
        }
        let message = Message::PrePrepare {
            view,
            height: self.round.height,
            block: block.clone(),
        };
        let Ok(signed) = self
            .safety
            .propose(message, &block, view, Justification::Plain)
        else {
            return false;
        };
        self.last_proposal_ms = self.now_ms;
        let hash = block.hash();
        let proposal = Proposal {
            block,
            hash,
            justification: Justification::Plain,
        };
        self.round.proposals.insert(view, proposal);
        self.round.own.proposal = Some(signed.clone());
        self.broadcast(signed);
        true
    }

    /// Prepares the proposal of the current view once it validates.
    fn try_prepare(&mut self, ledger: &mut impl Ledger) -> bool {
        let view = self.view();
        if own_vote_view(&self.round.own.prepare) == Some(view) {
            return false;
        }
        let Some(proposal) = self.round.proposals.get(&view) else {
            return false;
        };
        let (hash, justification) = (proposal.hash, proposal.justification);
        if justification == Justification::Plain && view != self.safety.state().start_view() {
            return false;
        }
        if !self.validated(ledger, hash) {
            return false;
        }
        let height = self.round.height;
        let Ok(signed) = self.safety.prepare(height, view, hash, justification) else {
            return false;
        };
        self.round
            .insert_vote(Kind::Prepare, view, self.me, hash, signed.signature);
        self.round.own.prepare = Some(signed.clone());
        self.broadcast(signed);
        self.note_progress();
        true
    }

    /// Restarts a running view timer: this replica just voted in the current
    /// view (it validated the proposal, or saw it prepared), so the height
    /// is moving even if slower than one timeout (a large block on a busy
    /// machine). Each vote happens once per view, so a view lasts at most
    /// three timeouts from when work appeared; a primary that proposes
    /// nothing, or a block that cannot gather a quorum, still times out.
    fn note_progress(&mut self) {
        if self.view_deadline_ms.is_some() {
            self.view_deadline_ms = Some(self.now_ms + self.view_timeout_ms());
        }
    }

    /// Whether the proposed block `hash` is timed within
    /// [`TIMESTAMP_FUTURE_MS_MAX`] of this replica's clock (checked every
    /// time: a verdict that depends on the clock is never cached, or a block
    /// timed just past the bound for some replicas would stay refused by
    /// them for the whole height) and the ledger accepts it (asked once:
    /// committed state is fixed during a height).
    fn validated(&mut self, ledger: &mut impl Ledger, hash: Hash) -> bool {
        let Some(block) = self.round.block(hash) else {
            return false;
        };
        if block.header.timestamp_ms > self.now_ms.saturating_add(TIMESTAMP_FUTURE_MS_MAX) {
            return false;
        }
        if let Some(verdict) = self.round.verdicts.get(&hash) {
            return *verdict;
        }
        let verdict = ledger.validate(block).is_ok();
        self.round.verdicts.insert(hash, verdict);
        verdict
    }

    /// Commit-votes once 2f+1 prepares match this replica's own prepare.
    fn try_commit_vote(&mut self) -> bool {
        let view = self.view();
        let Some((prepared_view, hash)) = self.safety.state().prepare_vote() else {
            return false;
        };
        if prepared_view != view || own_vote_view(&self.round.own.commit) == Some(view) {
            return false;
        }
        let signatures = self.round.signatures(Kind::Prepare, view, hash);
        if signatures.len() < self.quorum() {
            return false;
        }
        let Some(block) = self.round.block(hash).cloned() else {
            return false;
        };
        let certificate = crate::message::PreparedCertificate {
            view,
            block_hash: hash,
            signatures,
        };
        let Ok(signed) = self.safety.commit(certificate, &block) else {
            return false;
        };
        self.round
            .insert_vote(Kind::Commit, view, self.me, hash, signed.signature);
        self.round.own.commit = Some(signed.clone());
        self.broadcast(signed);
        self.note_progress();
        true
    }

    /// Commits a block with 2f+1 commit votes in any view, once it is known.
    fn try_commit(&mut self, ledger: &mut impl Ledger) -> bool {
        for (view, hash) in self.round.commit_quorums(self.quorum()) {
            let Some(block) = self.round.block(hash).cloned() else {
                self.note_unknown_commit(view, hash);
                continue;
            };
            let certificate = Certificate {
                height: self.round.height,
                view,
                block_hash: hash,
                signatures: self.round.signatures(Kind::Commit, view, hash),
            };
            // At most half full: a primary working through a backlog (it
            // proposes what it has checked so far, while gossip is still
            // arriving) fills more than that, and is not judged.
            let had_room = block.transactions.len() * 2 <= self.config.block_txs_max;
            let height_started_ms = self.height_started_ms;
            if !self.commit_block(ledger, block, certificate) {
                return false;
            }
            if had_room {
                self.check_censorship(ledger, height_started_ms);
            }
            return true;
        }
        false
    }

    /// A transaction ready here that the primary has had (by the ledger's
    /// account, `Ledger::oldest_pending_ms`) for a whole view timeout
    /// before the height started, and that a block with room for it (at
    /// most half full) left out, means
    /// the primary censors it (or never received it): the commit is no
    /// progress, and the replica asks for the next view at once. Only
    /// commits by quorum in this replica's own round are judged (synced
    /// blocks were decided while it was away).
    fn check_censorship(&mut self, ledger: &mut impl Ledger, height_started_ms: u64) {
        let overdue = ledger
            .oldest_pending_ms(self.now_ms, self.primary())
            .is_some_and(|since| {
                since.saturating_add(self.config.view_timeout_ms) <= height_started_ms
            });
        if overdue {
            self.view_deadline_ms = Some(self.now_ms);
        }
    }

    /// Commits `block` (whose parent is the tip and whose certificate is
    /// verified) and moves to the next height in the certificate's view.
    pub(crate) fn commit_block(
        &mut self,
        ledger: &mut impl Ledger,
        block: Block,
        certificate: Certificate,
    ) -> bool {
        let height = self.round.height;
        assert_eq!(block.header.height, height, "commit only the next height");
        assert_eq!(block.header.parent_hash, self.tip_hash, "commit on the tip");
        if ledger.commit(&block, &certificate, self.now_ms).is_err() {
            return false;
        }
        let hash = block.hash();
        self.push(Action::Committed { height, hash });
        self.tip_hash = hash;
        let view = certificate.view;
        self.last_certificate = Some(certificate);
        self.start_height(height.next(), view);
        self.replay_future();
        true
    }

    /// Re-sends this height's own messages of the current view, so a lost
    /// message does not need a view change.
    fn retransmit(&mut self) {
        if self.now_ms < self.retransmit_at_ms {
            return;
        }
        self.retransmit_at_ms = self.now_ms + self.retransmit_interval_ms();
        let view = self.view();
        let own = &self.round.own;
        let messages: Vec<SignedMessage> = [&own.proposal, &own.prepare, &own.commit]
            .into_iter()
            .flatten()
            .filter(|m| message_view(&m.message) == Some(view))
            .chain(own.view_change.iter().filter(|_| self.awaiting_new_view()))
            .cloned()
            .collect();
        for message in messages {
            self.out.push(Action::Broadcast(message));
        }
    }

    /// Tells a peer whose message shows it is behind what we committed last
    /// (at most once per retransmission interval per peer).
    fn help_peer(&mut self, to: ValidatorIndex) {
        let Some(certificate) = self.last_certificate.clone() else {
            return;
        };
        let interval = self.retransmit_interval_ms();
        let last = &mut self.helped_at_ms[to.get()];
        if last.is_some_and(|t| self.now_ms < t + interval) {
            return;
        }
        *last = Some(self.now_ms);
        let signed = self.safety.decided(certificate);
        self.send(to, signed);
    }
}

/// The view of a prepare or commit message.
fn own_vote_view(message: &Option<SignedMessage>) -> Option<View> {
    message.as_ref().and_then(|m| message_view(&m.message))
}

/// The view a message belongs to (a view change belongs to its new view).
pub(crate) fn message_view(message: &Message) -> Option<View> {
    match message {
        Message::PrePrepare { view, .. }
        | Message::Prepare { view, .. }
        | Message::Commit { view, .. }
        | Message::NewView { view, .. } => Some(*view),
        Message::ViewChange { new_view, .. } => Some(*new_view),
        Message::Decided { .. } => None,
    }
}
