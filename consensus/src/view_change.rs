//! View changes: the view timer, asking for a view, joining a view f+1
//! replicas ask for, and the new primary's new-view message with the checks
//! replicas run on it before following.

use cairn_core::{Block, View};

use crate::log::{Proposal, Round, ViewChangeEntry};
use crate::message::{Message, PreparedCertificate, SignedMessage};
use crate::replica::Replica;
use crate::safety::Justification;
use crate::{Ledger, Offence};

impl Replica {
    /// Whether the replica asked for the current view and has not yet
    /// accepted its new-view message.
    pub(crate) fn awaiting_new_view(&self) -> bool {
        let accepted = self
            .round
            .proposals
            .get(&self.view())
            .is_some_and(|p| p.justification == Justification::NewView);
        self.safety.state().requested_current_view() && !accepted
    }

    /// Runs the view timer while there is work (a proposal seen, or
    /// transactions pending), so an idle network does not change views.
    /// When it expires the replica asks for the next view; the timeout
    /// doubles per view asked for since the last commit.
    ///
    /// While asking for a view, the timer runs only once a quorum asks for
    /// that view or a higher one (PBFT starts the new view's timer on 2f+1
    /// view changes). Otherwise replicas whose timers expire a little
    /// earlier leapfrog the rest forever, each group one view apart and
    /// neither a quorum (a seen livelock: 2 of 7 always one view ahead of the
    /// other 5, one of them withholding votes). Replicas split over several
    /// requested views still meet: the lowest asker counts every honest
    /// request, the honest validators alone are a quorum, so its timer runs
    /// and it moves up.
    pub(crate) fn check_view_timer(&mut self, ledger: &mut impl Ledger) {
        if self.awaiting_new_view() && !self.quorum_asks_at_least(self.view()) {
            self.view_deadline_ms = None;
            return;
        }
        let Some(deadline_ms) = self.view_deadline_ms else {
            if !self.round.proposals.is_empty() || ledger.has_pending() {
                self.view_deadline_ms = Some(self.now_ms + self.view_timeout_ms());
            }
            return;
        };
        if self.now_ms >= deadline_ms {
            self.start_view_change(self.view().next());
        }
    }

    /// Whether a quorum of validators (this one included) asks for `view`
    /// or a higher one at this height.
    fn quorum_asks_at_least(&self, view: View) -> bool {
        let asking = self
            .round
            .view_changes
            .values()
            .filter(|e| e.new_view >= view)
            .count();
        asking >= self.quorum()
    }

    /// Asks for `new_view` (or again for the current one) at this height.
    pub(crate) fn start_view_change(&mut self, new_view: View) {
        let height = self.round.height;
        let Ok(signed) = self.safety.view_change(height, new_view) else {
            return;
        };
        self.failed_views += 1;
        self.view_deadline_ms = None;
        self.round.prune(new_view);
        let entry = ViewChangeEntry::new(&signed).expect("the safety rules sign a view change");
        self.round.view_changes.insert(self.me, entry);
        self.round.own.view_change = Some(signed.clone());
        self.broadcast(signed);
    }

    /// PBFT's liveness rule: when f+1 replicas ask for views above ours, at
    /// least one of them is honest, so join the smallest of those views.
    pub(crate) fn join_higher_view(&mut self) {
        let view = self.view();
        let higher: Vec<View> = self
            .round
            .view_changes
            .values()
            .map(|e| e.new_view)
            .filter(|v| *v > view)
            .collect();
        if higher.len() > self.max_faulty() {
            let smallest = *higher.iter().min().expect("not empty");
            self.start_view_change(smallest);
        }
    }

    /// Files the latest view change of a sender, with its prepared
    /// certificate checked and its block (which a view change sent on its
    /// own must carry with a certificate) matching it.
    pub(crate) fn on_view_change(&mut self, message: SignedMessage, verified: bool) {
        let Message::ViewChange {
            new_view,
            prepared,
            prepared_block,
            ..
        } = &message.message
        else {
            return;
        };
        let (from, new_view) = (message.from, *new_view);
        let stale = self
            .round
            .view_changes
            .get(&from)
            .is_some_and(|e| e.new_view >= new_view);
        if stale
            || !self.prepared_block_ok(prepared, prepared_block)
            || !(verified || self.verify_sender(&message))
        {
            return;
        }
        if !certificate_below(prepared, new_view) {
            return;
        }
        if !self.certificate_valid(prepared) {
            return self.blame(Offence::BadCertificate);
        }
        if !prepared_block.as_ref().is_none_or(body_matches_header) {
            return;
        }
        let Some(entry) = ViewChangeEntry::new(&message) else {
            return;
        };
        self.round.view_changes.insert(from, entry);
        self.join_higher_view();
    }

    /// A view change sent on its own carries the block of its certificate
    /// (so the next primary can propose it again), and no block without
    /// one: the block is the certificate's, at this height, on our tip.
    fn prepared_block_ok(
        &self,
        prepared: &Option<PreparedCertificate>,
        block: &Option<Block>,
    ) -> bool {
        match (prepared, block) {
            (None, None) => true,
            (Some(p), Some(b)) => {
                b.header.height == self.round.height
                    && b.header.parent_hash == self.tip_hash
                    && b.hash() == p.block_hash
            }
            _ => false,
        }
    }

    /// A prepared certificate carried by a view change: 2f+1 valid
    /// prepares at this height. (Honest replicas prepare only blocks on the
    /// tip, so the prepares vouch for the parent of a block carried by hash
    /// alone.) It must also be from a view below the one asked for
    /// ([`certificate_below`]).
    fn certificate_valid(&self, prepared: &Option<PreparedCertificate>) -> bool {
        prepared.as_ref().is_none_or(|p| {
            p.verify(
                &self.config.chain_id,
                &self.config.validators,
                self.round.height,
            )
        })
    }

    /// The new primary starts its view once 2f+1 replicas ask for it,
    /// re-proposing the block of the highest prepared certificate among
    /// them, or else a fresh block (when the ledger has one).
    pub(crate) fn try_new_view(&mut self, ledger: &mut impl Ledger) -> bool {
        let view = self.view();
        if view.primary(self.n()) != self.me || !self.awaiting_new_view() {
            return false;
        }
        let entries: Vec<&ViewChangeEntry> = self.round.view_changes_for(view).collect();
        if entries.len() < self.quorum() {
            return false;
        }
        let highest = highest_prepared(entries.iter().map(|e| &e.prepared));
        let view_changes: Vec<SignedMessage> = entries.iter().map(|e| e.message.clone()).collect();
        let proposal = match highest {
            Some(p) => {
                let carried = entries
                    .iter()
                    .filter_map(|e| e.prepared_block.as_ref())
                    .find(|b| b.hash() == p.block_hash);
                match carried.or_else(|| self.round.block(p.block_hash)) {
                    Some(block) => block.clone(),
                    None => return false,
                }
            }
            None => match ledger.propose(view, self.public, self.now_ms) {
                Some(block) => block,
                None => return false,
            },
        };
        let message = Message::NewView {
            view,
            height: self.round.height,
            view_changes,
            proposal: proposal.clone(),
        };
        let Ok(signed) = self
            .safety
            .propose(message, &proposal, view, Justification::NewView)
        else {
            return false;
        };
        self.round.own.proposal = Some(signed.clone());
        self.broadcast(signed);
        self.accept_new_view(view, proposal);
        true
    }

    /// Follows a new view whose justification checks out.
    pub(crate) fn on_new_view(&mut self, message: SignedMessage, verified: bool) {
        let Message::NewView {
            view,
            view_changes,
            proposal,
            ..
        } = &message.message
        else {
            return;
        };
        let (from, view) = (message.from, *view);
        let looked = self
            .round
            .new_views_seen
            .get(&from)
            .is_some_and(|v| *v >= view);
        if view < self.view() || from != view.primary(self.n()) || looked {
            return;
        }
        if !(verified || self.verify_sender(&message)) {
            return;
        }
        self.round.new_views_seen.insert(from, view);
        match self.new_view_justified(view, view_changes, proposal) {
            Ok(()) => self.accept_new_view(view, proposal.clone()),
            Err(Unjustified::Forged) => self.blame(Offence::BadNewView),
            Err(Unjustified::OffTip | Unjustified::Stale) => {}
        }
    }

    /// 2f+1 distinct, valid view changes for `view` at this height, and a
    /// proposal that is the block of the highest prepared certificate among
    /// them, or a fresh block of the new primary when there is none.
    /// `Forged` when no honest primary sends such a new view (every check
    /// but the parent, which depends on our own tip, is one an honest
    /// primary already made on the same bytes).
    fn new_view_justified(
        &self,
        view: View,
        view_changes: &[SignedMessage],
        proposal: &Block,
    ) -> Result<(), Unjustified> {
        let n = self.n();
        if view_changes.len() < self.quorum() || view_changes.len() > n {
            return Err(Unjustified::Forged);
        }
        let mut seen = vec![false; n];
        let mut certificates = vec![];
        for vc in view_changes {
            let Some(flag) = seen.get_mut(vc.from.get()) else {
                return Err(Unjustified::Forged);
            };
            let Message::ViewChange {
                new_view,
                height,
                prepared,
                prepared_block: None,
            } = &vc.message
            else {
                return Err(Unjustified::Forged);
            };
            if *flag || *new_view != view || *height != self.round.height {
                return Err(Unjustified::Forged);
            }
            *flag = true;
            let known = self
                .round
                .view_changes
                .get(&vc.from)
                .is_some_and(|e| e.message == *vc);
            if !(known || (self.verify(vc) && self.certificate_valid(prepared))) {
                return Err(Unjustified::Forged);
            }
            // An honest replica that asks again for the view it is in (after
            // a restart) may carry a certificate of that view, and its
            // primary files its own view change unchecked: refused, but no
            // one's fault.
            if !certificate_below(prepared, view) {
                return Err(Unjustified::Stale);
            }
            certificates.push(prepared);
        }
        let header = &proposal.header;
        if header.height != self.round.height {
            return Err(Unjustified::Forged);
        }
        if header.parent_hash != self.tip_hash {
            return Err(Unjustified::OffTip);
        }
        let follows = match highest_prepared(certificates.into_iter()) {
            Some(p) => p.block_hash == proposal.hash(),
            None => {
                header.view == view
                    && header.proposer == self.config.validators[view.primary(n).get()]
            }
        };
        match follows {
            true => Ok(()),
            false => Err(Unjustified::Forged),
        }
    }

    /// Enters `view` and files its justified proposal, unless this replica
    /// already prepared another block in `view` (it started the height in
    /// that view and prepared the primary's plain pre-prepare): it can
    /// never prepare a second block there, and must keep the one it
    /// prepared to commit-vote it once a quorum prepares it too.
    fn accept_new_view(&mut self, view: View, proposal: Block) {
        if self.safety.enter_view(self.round.height, view).is_err() {
            return;
        }
        let hash = proposal.hash();
        let prepared_other = self
            .safety
            .state()
            .prepare_vote()
            .is_some_and(|(v, h)| v == view && h != hash);
        if prepared_other {
            return;
        }
        let entry = Proposal {
            block: proposal,
            hash,
            justification: Justification::NewView,
        };
        self.round.proposals.insert(view, entry);
        self.round.prune(view);
        self.view_deadline_ms = None;
        debug_assert!(Round::view_in_window(view, self.view()));
    }
}

/// Why a new view is not followed.
enum Unjustified {
    /// No honest primary sends it: its sender is to blame.
    Forged,
    /// Its proposal does not extend our tip (we may be behind).
    OffTip,
    /// A view change in it carries a certificate not below its view.
    Stale,
}

/// Whether a view change to `new_view` carries no certificate or one from
/// a lower view.
fn certificate_below(prepared: &Option<PreparedCertificate>, new_view: View) -> bool {
    prepared.as_ref().is_none_or(|p| p.view < new_view)
}

/// Whether a block's transactions are the ones its header commits to (its
/// hash covers the header only): a block carried by a view change is
/// proposed again as it is, so a Byzantine sender must not swap its body.
fn body_matches_header(block: &Block) -> bool {
    let hashes: Vec<_> = block.transactions.iter().map(|tx| tx.hash()).collect();
    cairn_core::tx_root(&hashes) == block.header.tx_root
}

/// The prepared certificate of the highest view among `certificates`.
fn highest_prepared<'a>(
    certificates: impl Iterator<Item = &'a Option<PreparedCertificate>>,
) -> Option<&'a PreparedCertificate> {
    certificates.flatten().max_by_key(|p| p.view)
}
