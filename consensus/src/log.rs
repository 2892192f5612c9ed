//! The message log of one height: proposals, votes and view changes, each
//! bounded (see [`crate::limits`]).

use std::collections::BTreeMap;

use cairn_core::{Block, CommitSignature, Hash, Height, Signature, ValidatorIndex, View};

use crate::limits::{VIEWS_AHEAD_MAX, VIEWS_BEHIND_MAX};
use crate::message::{PreparedCertificate, SignedMessage};
use crate::safety::Justification;

/// A proposal accepted into the log (signature and header checked; not yet
/// validated against state).
pub(crate) struct Proposal {
    pub block: Block,
    pub hash: Hash,
    pub justification: Justification,
}

/// A view change accepted into the log (signature and certificate checked).
pub(crate) struct ViewChangeEntry {
    pub new_view: View,
    pub prepared: Option<PreparedCertificate>,
    /// The block of `prepared`, whose hash matches it.
    pub prepared_block: Option<Block>,
    /// The message without its block, as a new view carries it.
    pub message: SignedMessage,
}

impl ViewChangeEntry {
    /// The entry of a view change whose signature and certificate are
    /// checked, and whose block, when carried, matches the certificate.
    pub fn new(message: &SignedMessage) -> Option<ViewChangeEntry> {
        let crate::message::Message::ViewChange {
            new_view,
            prepared,
            prepared_block,
            ..
        } = &message.message
        else {
            return None;
        };
        Some(ViewChangeEntry {
            new_view: *new_view,
            prepared: prepared.clone(),
            prepared_block: prepared_block.clone(),
            message: message.without_block(),
        })
    }
}

/// The two vote kinds, as an ordered key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Prepare,
    Commit,
}

/// What happened to a vote offered to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The sender has no vote of this kind in this view yet.
    New,
    /// The sender already voted in this view (the same or another block).
    Already,
}

/// Own messages of this height, kept for retransmission.
#[derive(Default)]
pub(crate) struct Own {
    pub proposal: Option<SignedMessage>,
    pub prepare: Option<SignedMessage>,
    pub commit: Option<SignedMessage>,
    pub view_change: Option<SignedMessage>,
}

/// Everything known about one height.
pub(crate) struct Round {
    pub height: Height,
    pub proposals: BTreeMap<View, Proposal>,
    votes: BTreeMap<(View, Kind), BTreeMap<ValidatorIndex, (Hash, Signature)>>,
    /// The latest view change of each validator at this height.
    pub view_changes: BTreeMap<ValidatorIndex, ViewChangeEntry>,
    /// The highest new-view message looked at, per sender (each costs many
    /// signature checks, so a sender gets one look per view).
    pub new_views_seen: BTreeMap<ValidatorIndex, View>,
    /// Ledger verdicts on proposed blocks (committed state is fixed while
    /// the height lasts).
    pub verdicts: BTreeMap<Hash, bool>,
    pub own: Own,
}

impl Round {
    pub fn new(height: Height) -> Round {
        Round {
            height,
            proposals: BTreeMap::new(),
            votes: BTreeMap::new(),
            view_changes: BTreeMap::new(),
            new_views_seen: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            own: Own::default(),
        }
    }

    /// Whether proposals and votes of `view` are kept while in `current`.
    pub fn view_in_window(view: View, current: View) -> bool {
        view.0.saturating_add(VIEWS_BEHIND_MAX) >= current.0
            && view.0 <= current.0.saturating_add(VIEWS_AHEAD_MAX)
    }

    /// Drops proposals, their verdicts and votes of views that left the
    /// window.
    pub fn prune(&mut self, current: View) {
        self.proposals
            .retain(|view, _| Round::view_in_window(*view, current));
        self.votes
            .retain(|(view, _), _| Round::view_in_window(*view, current));
        let proposals = &self.proposals;
        self.verdicts
            .retain(|hash, _| proposals.values().any(|p| p.hash == *hash));
    }

    pub fn vote_seen(&self, kind: Kind, view: View, from: ValidatorIndex) -> Seen {
        match self.votes.get(&(view, kind)) {
            Some(votes) if votes.contains_key(&from) => Seen::Already,
            _ => Seen::New,
        }
    }

    /// Records a vote; the first vote of a sender in a view is the one kept.
    pub fn insert_vote(
        &mut self,
        kind: Kind,
        view: View,
        from: ValidatorIndex,
        hash: Hash,
        signature: Signature,
    ) {
        self.votes
            .entry((view, kind))
            .or_default()
            .entry(from)
            .or_insert((hash, signature));
    }

    /// The signatures of the votes of `kind` for `hash` in `view`.
    pub fn signatures(&self, kind: Kind, view: View, hash: Hash) -> Vec<CommitSignature> {
        let Some(votes) = self.votes.get(&(view, kind)) else {
            return vec![];
        };
        votes
            .iter()
            .filter(|(_, (h, _))| *h == hash)
            .map(|(validator, (_, signature))| CommitSignature {
                validator: *validator,
                signature: *signature,
            })
            .collect()
    }

    /// Every (view, block hash) with at least `quorum` commit votes.
    pub fn commit_quorums(&self, quorum: usize) -> Vec<(View, Hash)> {
        let mut found = vec![];
        for ((view, kind), votes) in &self.votes {
            if *kind != Kind::Commit {
                continue;
            }
            let mut counts: BTreeMap<Hash, usize> = BTreeMap::new();
            for (hash, _) in votes.values() {
                *counts.entry(*hash).or_default() += 1;
            }
            found.extend(
                counts
                    .into_iter()
                    .filter(|(_, count)| *count >= quorum)
                    .map(|(hash, _)| (*view, hash)),
            );
        }
        found
    }

    /// A known block with this hash, from any proposal of this height.
    pub fn block(&self, hash: Hash) -> Option<&Block> {
        self.proposals
            .values()
            .find(|p| p.hash == hash)
            .map(|p| &p.block)
    }

    /// The view changes for exactly `view`.
    pub fn view_changes_for(&self, view: View) -> impl Iterator<Item = &ViewChangeEntry> {
        self.view_changes
            .values()
            .filter(move |entry| entry.new_view == view)
    }

    /// Messages held: proposals, votes and view changes.
    pub fn message_count(&self) -> usize {
        let votes: usize = self.votes.values().map(|v| v.len()).sum();
        self.proposals.len() + votes + self.view_changes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Views near `u64::MAX` (any peer can name one) neither overflow nor
    /// fall out of the window by wrapping (issue 10: `view + 4` wrapped in
    /// release builds and panicked in debug builds, before any signature
    /// check).
    #[test]
    fn the_view_window_holds_at_the_end_of_the_range() {
        assert!(!Round::view_in_window(View(u64::MAX), View(0)));
        assert!(!Round::view_in_window(View(0), View(u64::MAX)));
        assert!(Round::view_in_window(View(u64::MAX), View(u64::MAX)));
        assert!(Round::view_in_window(View(u64::MAX - 3), View(u64::MAX)));
        assert!(Round::view_in_window(View(u64::MAX), View(u64::MAX - 3)));
    }

    #[test]
    fn first_vote_per_sender_and_view_wins_and_quorums_count_per_hash() {
        let mut round = Round::new(Height(1));
        let (a, b) = (Hash([1; 32]), Hash([2; 32]));
        let sig = Signature([0; 64]);
        for i in 0..3 {
            round.insert_vote(Kind::Commit, View(0), ValidatorIndex(i), a, sig);
        }
        round.insert_vote(Kind::Commit, View(0), ValidatorIndex(0), b, sig);
        round.insert_vote(Kind::Commit, View(0), ValidatorIndex(3), b, sig);
        assert_eq!(round.commit_quorums(3), vec![(View(0), a)]);
        assert_eq!(round.commit_quorums(4), vec![]);
        assert_eq!(round.signatures(Kind::Commit, View(0), b).len(), 1);
        assert_eq!(round.signatures(Kind::Prepare, View(0), a).len(), 0);
        assert_eq!(
            round.vote_seen(Kind::Commit, View(0), ValidatorIndex(3)),
            Seen::Already
        );
        assert_eq!(
            round.vote_seen(Kind::Commit, View(1), ValidatorIndex(3)),
            Seen::New
        );
    }

    #[test]
    fn prune_keeps_only_the_window() {
        let mut round = Round::new(Height(1));
        let sig = Signature([0; 64]);
        for view in 0..20 {
            round.insert_vote(
                Kind::Prepare,
                View(view),
                ValidatorIndex(0),
                Hash::ZERO,
                sig,
            );
        }
        round.prune(View(10));
        assert_eq!(
            round.message_count() as u64,
            VIEWS_BEHIND_MAX + 1 + VIEWS_AHEAD_MAX
        );
    }
}
