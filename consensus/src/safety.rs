//! Safety rules: the only code that signs votes, and the tiny persisted
//! state that keeps a restarted replica from contradicting itself.
//!
//! Every rule is a small function below whose doc comment states it. The
//! replica asks [`SafetyRules`] for a signed message; the rules either refuse
//! or record the vote in [`SafetyState`] and mark it dirty, and the replica
//! emits `Action::PersistSafety` before the message leaves. Asking again for
//! a vote already given returns the same vote (ed25519 signing is
//! deterministic) without changing the state.

use serde::{Deserialize, Serialize};

use cairn_core::{quorum, Block, Certificate, Hash, Height, Keypair, ValidatorIndex, View};

use crate::abstain::Abstain;
use crate::message::{Message, PreparedCertificate, SignedMessage};

/// What the replica persisted about its own votes. Opaque to the runtime:
/// it stores the encoding and hands it back to [`crate::Replica::new`].
///
/// Everything here is about one height; moving to a higher height starts a
/// fresh record (votes for lower heights are never asked for again).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyState {
    /// The height the records below are about.
    height: Height,
    /// The current view at `height`; never decreases at one height.
    view: View,
    /// The view the replica started `height` in.
    start_view: View,
    /// The block this replica proposed as primary, and in which view.
    proposal: Option<(View, Hash)>,
    /// The last prepare vote at `height`.
    prepare_vote: Option<(View, Hash)>,
    /// The last commit vote at `height`.
    commit_vote: Option<(View, Hash)>,
    /// The highest view this replica asked for at `height`.
    view_change: Option<View>,
    /// The highest-view prepared certificate this replica holds at `height`.
    prepared: Option<PreparedCertificate>,
    /// The block of `prepared` (its hash is the certificate's).
    #[serde(default)]
    prepared_block: Option<Block>,
}

impl SafetyState {
    pub fn height(&self) -> Height {
        self.height
    }

    pub fn view(&self) -> View {
        self.view
    }

    /// The view the height started in: a prepare in any other view was
    /// justified by a new view.
    pub fn start_view(&self) -> View {
        self.start_view
    }

    /// The last prepare vote at [`Self::height`].
    pub fn prepare_vote(&self) -> Option<(View, Hash)> {
        self.prepare_vote
    }

    /// The block of the prepared certificate, if any: by far the largest
    /// part of the state, which a runtime may store apart (and write only
    /// when it changes).
    pub fn prepared_block(&self) -> Option<&Block> {
        self.prepared_block.as_ref()
    }

    /// The same, to take its transactions out before storing the rest and
    /// to put them back when loading.
    pub fn prepared_block_mut(&mut self) -> Option<&mut Block> {
        self.prepared_block.as_mut()
    }

    /// The last commit vote at [`Self::height`].
    pub fn commit_vote(&self) -> Option<(View, Hash)> {
        self.commit_vote
    }

    /// Whether the replica asked for the current view and is waiting for its
    /// new-view message.
    pub(crate) fn requested_current_view(&self) -> bool {
        self.view_change == Some(self.view)
    }
}

/// How a proposal reached the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Justification {
    /// A pre-prepare of the view the height started in.
    Plain,
    /// The proposal of a verified new-view message.
    NewView,
}

/// Why the rules refused to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SafetyError {
    #[error("the vote is for another height than the safety state")]
    WrongHeight,
    #[error("the vote is for another view than the current one")]
    WrongView,
    #[error("a different block was already voted for in this view")]
    Conflict,
    #[error("a plain proposal outside the view the height started in")]
    NotStartView,
    #[error("the block is not prepared")]
    NotPrepared,
    #[error("the view is not above the current one")]
    ViewNotHigher,
    #[error("the validator lost its record and abstains at this height")]
    Abstaining,
}

/// The keeper of the signing key and of the safety state.
pub(crate) struct SafetyRules {
    state: SafetyState,
    key: Keypair,
    chain_id: String,
    me: ValidatorIndex,
    validators_count: usize,
    dirty: bool,
    /// Set while the validator, started without a record, abstains.
    abstain: Option<Abstain>,
}

impl SafetyRules {
    pub(crate) fn new(
        state: SafetyState,
        key: Keypair,
        chain_id: String,
        me: ValidatorIndex,
        validators_count: usize,
    ) -> SafetyRules {
        SafetyRules {
            state,
            key,
            chain_id,
            me,
            validators_count,
            dirty: false,
            abstain: None,
        }
    }

    /// Makes the rules abstain (a validator without a record): see
    /// `abstain.rs`.
    pub(crate) fn start_abstaining(&mut self) {
        self.abstain = Abstain::new(self.validators_count, self.me);
    }

    pub(crate) fn abstain(&self) -> Option<&Abstain> {
        self.abstain.as_ref()
    }

    pub(crate) fn abstain_mut(&mut self) -> Option<&mut Abstain> {
        self.abstain.as_mut()
    }

    /// Whether the abstain rule forbids signing at `height`.
    pub(crate) fn abstains_at(&self, height: Height) -> bool {
        check_not_abstaining(&self.abstain, height).is_err()
    }

    pub(crate) fn state(&self) -> &SafetyState {
        &self.state
    }

    /// The state to persist, once, if it changed since last asked.
    pub(crate) fn take_dirty(&mut self) -> Option<SafetyState> {
        std::mem::take(&mut self.dirty).then(|| self.state.clone())
    }

    /// Starts a fresh record for `height` in `view`. Nothing was voted at
    /// that height yet, so this need not be persisted on its own.
    pub(crate) fn begin_height(&mut self, height: Height, view: View) {
        if height <= self.state.height {
            return;
        }
        self.state = SafetyState {
            height,
            view,
            start_view: view,
            ..SafetyState::default()
        };
    }

    /// Moves to `view` at `height` (a verified new view, or the view a
    /// replica asks for).
    pub(crate) fn enter_view(&mut self, height: Height, view: View) -> Result<(), SafetyError> {
        check_height(&self.state, height)?;
        check_view_not_lower(&self.state, view)?;
        if view > self.state.view {
            self.state.view = view;
            self.dirty = true;
        }
        Ok(())
    }

    /// Signs a pre-prepare or new-view proposal of `block` in `view`.
    pub(crate) fn propose(
        &mut self,
        message: Message,
        block: &Block,
        view: View,
        justification: Justification,
    ) -> Result<SignedMessage, SafetyError> {
        let hash = block.hash();
        check_not_abstaining(&self.abstain, block.header.height)?;
        check_height(&self.state, block.header.height)?;
        check_current_view(&self.state, view)?;
        check_justified(&self.state, view, justification)?;
        check_one_proposal(&self.state, view, hash)?;
        self.record(|s| s.proposal = Some((view, hash)));
        Ok(self.sign(message))
    }

    /// Signs a prepare vote for `hash` at `height` in `view`.
    pub(crate) fn prepare(
        &mut self,
        height: Height,
        view: View,
        hash: Hash,
        justification: Justification,
    ) -> Result<SignedMessage, SafetyError> {
        check_not_abstaining(&self.abstain, height)?;
        check_height(&self.state, height)?;
        check_current_view(&self.state, view)?;
        check_justified(&self.state, view, justification)?;
        check_one_prepare(&self.state, view, hash)?;
        self.record(|s| s.prepare_vote = Some((view, hash)));
        Ok(self.sign(Message::Prepare {
            view,
            height,
            block_hash: hash,
        }))
    }

    /// Signs a commit vote for `block`, prepared by `certificate`, which
    /// the caller verified, and keeps both for view changes.
    pub(crate) fn commit(
        &mut self,
        certificate: PreparedCertificate,
        block: &Block,
    ) -> Result<SignedMessage, SafetyError> {
        let (view, hash) = (certificate.view, certificate.block_hash);
        let height = block.header.height;
        assert_eq!(block.hash(), hash, "the certificate is for this block");
        check_not_abstaining(&self.abstain, height)?;
        check_height(&self.state, height)?;
        check_current_view(&self.state, view)?;
        check_prepared(&self.state, &certificate, self.validators_count)?;
        check_one_commit(&self.state, view, hash)?;
        self.record(|s| {
            s.commit_vote = Some((view, hash));
            if s.prepared.as_ref().is_none_or(|p| p.view < view) {
                s.prepared = Some(certificate);
                s.prepared_block = Some(block.clone());
            }
        });
        Ok(self.sign(Message::Commit {
            view,
            height,
            block_hash: hash,
        }))
    }

    /// Signs a view change to `new_view` at `height`, carrying the highest
    /// prepared certificate, and moves to `new_view`.
    pub(crate) fn view_change(
        &mut self,
        height: Height,
        new_view: View,
    ) -> Result<SignedMessage, SafetyError> {
        check_not_abstaining(&self.abstain, height)?;
        check_height(&self.state, height)?;
        check_view_change(&self.state, new_view)?;
        self.record(|s| {
            s.view = new_view;
            s.view_change = Some(new_view);
        });
        Ok(self.sign(Message::ViewChange {
            new_view,
            height,
            prepared: self.state.prepared.clone(),
            prepared_block: self.state.prepared_block.clone(),
        }))
    }

    /// Signs an announcement of a commit (no vote: no rule applies).
    pub(crate) fn decided(&self, certificate: Certificate) -> SignedMessage {
        self.sign(Message::Decided { certificate })
    }

    /// Applies `change` and marks the state dirty if it changed anything.
    fn record(&mut self, change: impl FnOnce(&mut SafetyState)) {
        let before = self.state.clone();
        change(&mut self.state);
        self.dirty |= self.state != before;
    }

    fn sign(&self, message: Message) -> SignedMessage {
        SignedMessage::sign(&self.chain_id, self.me, &self.key, message)
    }
}

/// A validator that lost its record (or never had one) signs nothing —
/// no proposal, vote, view change or new view — at a height it may have
/// voted at before: up to one past the highest height its peers reported
/// (see `abstain.rs`).
fn check_not_abstaining(abstain: &Option<Abstain>, height: Height) -> Result<(), SafetyError> {
    match abstain {
        Some(abstain) if abstain.forbids(height) => Err(SafetyError::Abstaining),
        _ => Ok(()),
    }
}

/// Votes are only for the height the state is about: a lower height is
/// decided, a higher one must be begun first.
fn check_height(state: &SafetyState, height: Height) -> Result<(), SafetyError> {
    (height == state.height)
        .then_some(())
        .ok_or(SafetyError::WrongHeight)
}

/// Never vote in a view other than the current one: not in a view left
/// behind (a view change promised not to), not in one not yet entered.
fn check_current_view(state: &SafetyState, view: View) -> Result<(), SafetyError> {
    (view == state.view)
        .then_some(())
        .ok_or(SafetyError::WrongView)
}

/// Views never go back at one height, so a restarted replica cannot return
/// to a view it left.
fn check_view_not_lower(state: &SafetyState, view: View) -> Result<(), SafetyError> {
    (view >= state.view)
        .then_some(())
        .ok_or(SafetyError::ViewNotHigher)
}

/// A plain pre-prepare is accepted only in the view the height started in;
/// once a replica changed view at a height, only a proposal justified by a
/// verified new-view message (which carries the highest prepared
/// certificate of 2f+1 replicas) may be prepared.
fn check_justified(
    state: &SafetyState,
    view: View,
    justification: Justification,
) -> Result<(), SafetyError> {
    match justification {
        Justification::NewView => Ok(()),
        Justification::Plain if view == state.start_view => Ok(()),
        Justification::Plain => Err(SafetyError::NotStartView),
    }
}

/// Never propose two different blocks for one (view, height).
fn check_one_proposal(state: &SafetyState, view: View, hash: Hash) -> Result<(), SafetyError> {
    match state.proposal {
        Some((v, h)) if v == view && h != hash => Err(SafetyError::Conflict),
        _ => Ok(()),
    }
}

/// Never prepare two different blocks for one (view, height).
fn check_one_prepare(state: &SafetyState, view: View, hash: Hash) -> Result<(), SafetyError> {
    match state.prepare_vote {
        Some((v, h)) if v == view && h != hash => Err(SafetyError::Conflict),
        _ => Ok(()),
    }
}

/// Never commit-vote a block this replica did not prepare itself, nor one
/// without 2f+1 prepares.
fn check_prepared(
    state: &SafetyState,
    certificate: &PreparedCertificate,
    validators_count: usize,
) -> Result<(), SafetyError> {
    let own = Some((certificate.view, certificate.block_hash));
    let enough = certificate.signatures.len() >= quorum(validators_count);
    (state.prepare_vote == own && enough)
        .then_some(())
        .ok_or(SafetyError::NotPrepared)
}

/// Never commit-vote two different blocks for one (view, height).
fn check_one_commit(state: &SafetyState, view: View, hash: Hash) -> Result<(), SafetyError> {
    match state.commit_vote {
        Some((v, h)) if v == view && h != hash => Err(SafetyError::Conflict),
        _ => Ok(()),
    }
}

/// Ask only for a view above the current one, or again for the view already
/// asked for (a retransmission).
fn check_view_change(state: &SafetyState, new_view: View) -> Result<(), SafetyError> {
    let repeat = state.view_change == Some(new_view) && new_view == state.view;
    (new_view > state.view || repeat)
        .then_some(())
        .ok_or(SafetyError::ViewNotHigher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::{tx_root, BlockHeader, CommitSignature, PublicKey, Signature};

    fn rules() -> SafetyRules {
        let mut rules = SafetyRules::new(
            SafetyState::default(),
            Keypair::from_seed([1; 32]),
            "c".into(),
            ValidatorIndex(0),
            4,
        );
        rules.begin_height(Height(1), View(0));
        rules
    }

    fn block(seed: u8) -> Block {
        Block {
            header: BlockHeader {
                height: Height(1),
                parent_hash: Hash::ZERO,
                view: View(0),
                proposer: PublicKey([0; 32]),
                timestamp_ms: seed as u64,
                tx_root: tx_root([]),
                state_root: Hash::ZERO,
            },
            transactions: vec![],
        }
    }

    fn certificate(view: View, block: &Block, signers: u16) -> PreparedCertificate {
        let signatures = (0..signers)
            .map(|i| CommitSignature {
                validator: ValidatorIndex(i),
                signature: Signature([0; 64]),
            })
            .collect();
        PreparedCertificate {
            view,
            block_hash: block.hash(),
            signatures,
        }
    }

    const PLAIN: Justification = Justification::Plain;

    #[test]
    fn never_prepares_two_blocks_in_one_view_and_repeats_the_same_vote() {
        let mut r = rules();
        let (a, b) = (block(1).hash(), block(2).hash());
        let first = r.prepare(Height(1), View(0), a, PLAIN).unwrap();
        assert!(r.take_dirty().is_some(), "a new vote must be persisted");
        let again = r.prepare(Height(1), View(0), a, PLAIN).unwrap();
        assert_eq!(first, again);
        assert!(r.take_dirty().is_none(), "a repeated vote changes nothing");
        assert_eq!(
            r.prepare(Height(1), View(0), b, PLAIN),
            Err(SafetyError::Conflict)
        );
    }

    #[test]
    fn votes_only_at_the_current_height_and_view() {
        let mut r = rules();
        let a = block(1).hash();
        assert_eq!(
            r.prepare(Height(2), View(0), a, PLAIN),
            Err(SafetyError::WrongHeight)
        );
        assert_eq!(
            r.prepare(Height(1), View(1), a, PLAIN),
            Err(SafetyError::WrongView)
        );
    }

    #[test]
    fn after_a_view_change_only_new_view_proposals_are_prepared() {
        let mut r = rules();
        let a = block(1).hash();
        r.view_change(Height(1), View(1)).unwrap();
        assert_eq!(
            r.prepare(Height(1), View(0), a, PLAIN),
            Err(SafetyError::WrongView),
            "no vote in a view left behind"
        );
        assert_eq!(
            r.prepare(Height(1), View(1), a, PLAIN),
            Err(SafetyError::NotStartView)
        );
        assert!(r
            .prepare(Height(1), View(1), a, Justification::NewView)
            .is_ok());
        assert_eq!(
            r.view_change(Height(1), View(1))
                .map(|m| m.message.height()),
            Ok(Height(1)),
            "re-asking for the current view is a retransmission"
        );
        assert_eq!(
            r.view_change(Height(1), View(0)),
            Err(SafetyError::ViewNotHigher)
        );
    }

    #[test]
    fn commit_votes_need_an_own_prepare_and_a_quorum() {
        let mut r = rules();
        let b = block(1);
        assert_eq!(
            r.commit(certificate(View(0), &b, 3), &b),
            Err(SafetyError::NotPrepared)
        );
        r.prepare(Height(1), View(0), b.hash(), PLAIN).unwrap();
        assert_eq!(
            r.commit(certificate(View(0), &b, 2), &b),
            Err(SafetyError::NotPrepared)
        );
        assert!(r.commit(certificate(View(0), &b, 3), &b).is_ok());
        let vc = r.view_change(Height(1), View(1)).unwrap();
        match vc.message {
            Message::ViewChange {
                prepared,
                prepared_block,
                ..
            } => {
                assert_eq!(prepared.map(|p| p.block_hash), Some(b.hash()));
                assert_eq!(prepared_block, Some(b));
            }
            other => panic!("not a view change: {other:?}"),
        }
    }

    #[test]
    fn never_proposes_two_blocks_in_one_view() {
        let mut r = rules();
        let pre_prepare = |b: &Block| Message::PrePrepare {
            view: View(0),
            height: Height(1),
            block: b.clone(),
        };
        assert!(r
            .propose(pre_prepare(&block(1)), &block(1), View(0), PLAIN)
            .is_ok());
        assert_eq!(
            r.propose(pre_prepare(&block(2)), &block(2), View(0), PLAIN),
            Err(SafetyError::Conflict)
        );
    }

    #[test]
    fn a_new_height_starts_a_fresh_record_and_old_heights_are_refused() {
        let mut r = rules();
        r.prepare(Height(1), View(0), block(1).hash(), PLAIN)
            .unwrap();
        r.begin_height(Height(2), View(3));
        assert_eq!(r.state().view(), View(3));
        assert_eq!(r.state().prepare_vote(), None);
        assert_eq!(
            r.prepare(Height(1), View(3), block(2).hash(), PLAIN),
            Err(SafetyError::WrongHeight)
        );
        r.begin_height(Height(1), View(0));
        assert_eq!(r.state().height(), Height(2), "heights never go back");
    }
}
