//! The abstain rule of a validator without a safety record: a new validator
//! or one whose home was wiped (issue 10). It may have signed votes in an
//! earlier life that it no longer remembers, so it signs nothing (no
//! proposal, vote, view change or new view) until it has committed past
//! every height it could have voted at. It still files messages, syncs,
//! commits, and sends `Decided` (a relayed certificate, not a vote).
//!
//! **Which heights.** A replica votes at height `h` only after committing
//! `h - 1`, whose certificate has 2f+1 commit votes, so at least f other
//! honest validators were working on a height of at least `h - 1` when it
//! last voted, and their heights only grow. The replica learns the heights
//! its peers work on from their verified messages (a message's height; a
//! `Decided` shows the height after its certificate) and fixes its target
//! once it has heard `quorum - 1` distinct validators (others than itself,
//! so with f faulty at least one honest answer is among them): the target
//! is the highest of their claims, `W`. It abstains at every height up to
//! `W + 1` (it may have been one height ahead of everyone it heard: it had
//! the certificate of a height the others still voted on) and votes again
//! from `W + 2` on, once it committed `W + 1`.
//!
//! **Liars.** A Byzantine validator among those heard can claim a huge
//! height. A claim only goes down once the target is fixed: to the
//! replica's next height when the claimant answers a sync request with
//! nothing past the replica's tip (it cannot back its claim), or when it
//! leaves [`ABSTAIN_UNANSWERED_MAX`] sync requests in a row unanswered. So a
//! liar delays the end of abstention by at most that many requests.
//!
//! **Trade-offs** (docs/PROTOCOL.md §13): the heard honest validators may
//! all lag behind the height the replica voted at (then it votes again too
//! early); while it abstains it counts as one more faulty validator, so f
//! Byzantine validators that withhold votes stall the network until it
//! is done; with `f = 0` (n ≤ 3) every validator is needed for a quorum
//! and there is no Byzantine primary to fear, so it does not abstain.

use cairn_core::{max_faulty, quorum, Height, ValidatorIndex};

use crate::limits::ABSTAIN_UNANSWERED_MAX;
use crate::message::SignedMessage;
use crate::replica::Replica;

/// What a replica without a safety record has learned of its peers.
#[derive(Clone, Debug)]
pub(crate) struct Abstain {
    me: ValidatorIndex,
    /// The highest height each validator's verified messages showed
    /// (`None`: not heard yet).
    claims: Vec<Option<Height>>,
    /// Sync requests sent to each validator since it last answered.
    unanswered: Vec<u32>,
    /// Whether `quorum - 1` validators were heard: claims no longer rise.
    fixed: bool,
}

impl Abstain {
    /// `None` when the rule does not apply (`f = 0`, see the module doc).
    pub(crate) fn new(n: usize, me: ValidatorIndex) -> Option<Abstain> {
        (max_faulty(n) > 0).then(|| Abstain {
            me,
            claims: vec![None; n],
            unanswered: vec![0; n],
            fixed: false,
        })
    }

    /// The highest height the peers reported, once enough were heard.
    pub(crate) fn target(&self) -> Option<Height> {
        self.fixed
            .then(|| self.claims.iter().flatten().max().copied())
            .flatten()
    }

    /// Whether the rule forbids signing anything at `height`.
    pub(crate) fn forbids(&self, height: Height) -> bool {
        self.target()
            .is_none_or(|target| height.0 <= target.0.saturating_add(1))
    }

    /// Whether a message of `from` at `height` would teach anything (so is
    /// worth a signature check).
    fn wants(&self, from: ValidatorIndex, height: Height) -> bool {
        !self.fixed
            && from != self.me
            && self
                .claims
                .get(from.get())
                .is_some_and(|claim| claim.is_none_or(|c| height > c))
    }

    /// Notes a verified claim; fixes the target once `quorum - 1` distinct
    /// validators were heard.
    fn hear(&mut self, from: ValidatorIndex, height: Height) {
        let claim = &mut self.claims[from.get()];
        *claim = Some(claim.map_or(height, |c| c.max(height)));
        let heard = self.claims.iter().flatten().count();
        self.fixed = heard + 1 >= quorum(self.claims.len());
    }

    /// A claim that cannot be backed goes down to `next` (only once fixed:
    /// before that, a later, higher claim would raise it again anyway).
    fn lower(&mut self, from: ValidatorIndex, next: Height) {
        if let Some(Some(claim)) = self.claims.get_mut(from.get()) {
            *claim = (*claim).min(next);
        }
    }
}

impl Replica {
    /// Whether this replica lost its safety record and does not sign
    /// anything at its current height (see `abstain.rs`).
    pub fn is_abstaining(&self) -> bool {
        self.safety.abstains_at(self.round.height)
    }

    /// The height the peers reported when this replica started abstaining,
    /// once enough of them were heard (`None` also when not abstaining).
    pub fn abstain_target(&self) -> Option<Height> {
        self.safety.abstain().and_then(Abstain::target)
    }

    /// Learns a peer's height from a message, checking its signature
    /// only when it teaches something (at most a few messages per peer).
    pub(crate) fn abstain_hear(&mut self, message: &SignedMessage, verified: bool) {
        let height = message.message.height();
        let wanted = self
            .safety
            .abstain()
            .is_some_and(|a| a.wants(message.from, height));
        if !wanted || !(verified || self.verify(message)) {
            return;
        }
        if let Some(abstain) = self.safety.abstain_mut() {
            abstain.hear(message.from, height);
        }
    }

    /// A sync request to `to` left; too many unanswered lower its claim.
    pub(crate) fn abstain_requested(&mut self, to: ValidatorIndex) {
        let next = self.round.height;
        if let Some(abstain) = self.safety.abstain_mut().filter(|a| a.fixed) {
            let Some(unanswered) = abstain.unanswered.get_mut(to.get()) else {
                return;
            };
            *unanswered += 1;
            if *unanswered > ABSTAIN_UNANSWERED_MAX {
                abstain.lower(to, next);
            }
        }
    }

    /// `from` answered a sync request; with nothing past our tip its claim
    /// goes down to our next height.
    pub(crate) fn abstain_answered(&mut self, from: ValidatorIndex, progressed: bool) {
        let next = self.round.height;
        if let Some(abstain) = self.safety.abstain_mut().filter(|a| a.fixed) {
            if let Some(unanswered) = abstain.unanswered.get_mut(from.get()) {
                *unanswered = 0;
            }
            if !progressed {
                abstain.lower(from, next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_waits_for_quorum_minus_one_then_for_two_heights_past_the_highest() {
        let mut a = Abstain::new(4, ValidatorIndex(0)).unwrap();
        assert!(a.forbids(Height(1)) && a.forbids(Height(1_000)));
        a.hear(ValidatorIndex(1), Height(7));
        assert_eq!(a.target(), None, "one of two needed");
        a.hear(ValidatorIndex(1), Height(9));
        assert_eq!(a.target(), None, "the same validator twice is one");
        a.hear(ValidatorIndex(2), Height(5));
        assert_eq!(a.target(), Some(Height(9)));
        assert!(a.forbids(Height(10)) && !a.forbids(Height(11)));
        assert!(!a.wants(ValidatorIndex(3), Height(50)), "fixed: no rise");
    }

    #[test]
    fn a_claim_goes_down_only_to_the_next_height() {
        let mut a = Abstain::new(4, ValidatorIndex(0)).unwrap();
        a.hear(ValidatorIndex(1), Height(1 << 40));
        a.hear(ValidatorIndex(2), Height(5));
        a.lower(ValidatorIndex(1), Height(3));
        assert_eq!(a.target(), Some(Height(5)));
        a.lower(ValidatorIndex(2), Height(3));
        assert_eq!(a.target(), Some(Height(3)));
    }

    #[test]
    fn without_faults_to_tolerate_the_rule_is_off() {
        for n in 1..=3 {
            assert!(Abstain::new(n, ValidatorIndex(0)).is_none(), "n = {n}");
        }
        assert!(Abstain::new(4, ValidatorIndex(0)).is_some());
    }
}
