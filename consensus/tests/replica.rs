//! Scripted tests of one replica: exact inputs, exact actions expected.

#[path = "sim/ledger.rs"]
#[allow(dead_code)]
mod ledger;

use cairn_consensus::{
    Action, Config, Input, Ledger, Message, Offence, PreparedCertificate, Replica, SafetyState,
    SignedMessage,
};
use cairn_core::{
    Block, Certificate, CommitSignature, Height, Keypair, PublicKey, ValidatorIndex, View, Vote,
    VoteKind,
};
use ledger::SimLedger;

const CHAIN: &str = "cairn-test";

struct Net {
    keys: Vec<Keypair>,
    validators: Vec<PublicKey>,
}

impl Net {
    fn new(n: u8) -> Net {
        let keys: Vec<Keypair> = (0..n).map(|i| Keypair::from_seed([i + 1; 32])).collect();
        let validators = keys.iter().map(|k| k.public()).collect();
        Net { keys, validators }
    }

    fn config(&self) -> Config {
        Config {
            chain_id: CHAIN.into(),
            validators: self.validators.clone(),
            block_interval_ms: 50,
            view_timeout_ms: 1_000,
            block_txs_max: 1_000,
        }
    }

    fn replica(&self, i: usize, safety: SafetyState) -> Replica {
        Replica::new(self.config(), self.keys[i].clone(), safety)
    }

    fn signed(&self, from: usize, message: Message) -> Input {
        let from_index = ValidatorIndex(from as u16);
        Input::Message(SignedMessage::sign(
            CHAIN,
            from_index,
            &self.keys[from],
            message,
        ))
    }

    fn vote(&self, kind: VoteKind, view: u64, block: &Block, signer: usize) -> CommitSignature {
        let vote = Vote {
            kind,
            chain_id: CHAIN.into(),
            height: block.height(),
            view: View(view),
            block_hash: block.hash(),
        };
        CommitSignature {
            validator: ValidatorIndex(signer as u16),
            signature: vote.sign(&self.keys[signer]),
        }
    }

    fn certificate(&self, view: u64, block: &Block, signers: &[usize]) -> Certificate {
        Certificate {
            height: block.height(),
            view: View(view),
            block_hash: block.hash(),
            signatures: signers
                .iter()
                .map(|s| self.vote(VoteKind::Commit, view, block, *s))
                .collect(),
        }
    }

    fn block(&self, ledger: &SimLedger, view: u64, salt: u64) -> Block {
        let primary = self.validators[(view % self.validators.len() as u64) as usize];
        ledger.build(View(view), primary, 1, salt)
    }
}

fn pre_prepare(view: u64, block: &Block) -> Message {
    Message::PrePrepare {
        view: View(view),
        height: block.height(),
        block: block.clone(),
    }
}

fn vote_message(kind: VoteKind, view: u64, block: &Block) -> Message {
    let (view, height, block_hash) = (View(view), block.height(), block.hash());
    match kind {
        VoteKind::Prepare => Message::Prepare {
            view,
            height,
            block_hash,
        },
        VoteKind::Commit => Message::Commit {
            view,
            height,
            block_hash,
        },
    }
}

/// The kinds of actions, in order, for compact assertions.
fn shape(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::PersistSafety(_) => "persist".to_string(),
            Action::Broadcast(m) | Action::Send { message: m, .. } => match &m.message {
                Message::PrePrepare { .. } => "pre-prepare".into(),
                Message::Prepare { .. } => "prepare".into(),
                Message::Commit { .. } => "commit".into(),
                Message::ViewChange { .. } => "view-change".into(),
                Message::NewView { .. } => "new-view".into(),
                Message::Decided { .. } => "decided".into(),
            },
            Action::RequestSync { .. } => "request-sync".into(),
            Action::Committed { .. } => "committed".into(),
            Action::Punish { .. } => "punish".into(),
        })
        .collect()
}

#[test]
fn a_single_validator_commits_through_the_normal_path() {
    let net = Net::new(1);
    let mut replica = net.replica(0, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let actions = replica.handle(&mut ledger, Input::Tick { now_ms: 100 });
    assert_eq!(
        shape(&actions),
        [
            "persist",
            "pre-prepare",
            "persist",
            "prepare",
            "persist",
            "commit",
            "committed"
        ]
    );
    let (block, certificate) = &ledger.blocks[0];
    assert_eq!(certificate.signatures.len(), 1);
    certificate
        .verify(CHAIN, &net.validators, &block.header)
        .unwrap();
    assert_eq!(replica.height(), Height(2));
}

#[test]
fn a_prepare_is_persisted_before_it_leaves_and_repeated_after_restart() {
    let net = Net::new(4);
    let mut replica = net.replica(1, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let block = net.block(&ledger, 0, 0);
    let actions = replica.handle(&mut ledger, net.signed(0, pre_prepare(0, &block)));
    assert_eq!(shape(&actions), ["persist", "prepare"]);
    let Action::PersistSafety(state) = &actions[0] else {
        unreachable!()
    };
    let Action::Broadcast(prepare) = &actions[1] else {
        unreachable!()
    };

    let mut restarted = net.replica(1, state.clone());
    let again = restarted.handle(&mut ledger, net.signed(0, pre_prepare(0, &block)));
    assert_eq!(shape(&again), ["prepare"], "nothing new to persist");
    let Action::Broadcast(repeated) = &again[0] else {
        unreachable!()
    };
    assert_eq!(repeated, prepare, "the same vote, not a new one");

    let other = net.block(&ledger, 0, 3);
    assert_ne!(other.hash(), block.hash());
    let mut restarted = net.replica(1, state.clone());
    let refused = restarted.handle(&mut ledger, net.signed(0, pre_prepare(0, &other)));
    assert!(
        shape(&refused).is_empty(),
        "no prepare for a second block in one view, even after a restart"
    );
}

#[test]
fn votes_arriving_before_the_pre_prepare_are_kept() {
    let net = Net::new(4);
    let mut replica = net.replica(1, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let block = net.block(&ledger, 0, 0);
    for from in [0, 2, 3] {
        for kind in [VoteKind::Prepare, VoteKind::Commit] {
            let input = net.signed(from, vote_message(kind, 0, &block));
            assert!(replica.handle(&mut ledger, input).is_empty());
        }
    }
    let actions = replica.handle(&mut ledger, net.signed(0, pre_prepare(0, &block)));
    assert_eq!(
        shape(&actions),
        ["committed"],
        "commit quorum and block known: commit at once"
    );
    assert_eq!(ledger.tip(), (Height(1), block.hash()));
}

#[test]
fn forged_duplicate_and_stranger_messages_are_dropped() {
    let net = Net::new(4);
    let mut replica = net.replica(1, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let block = net.block(&ledger, 0, 0);
    let Input::Message(mut forged) = net.signed(2, vote_message(VoteKind::Prepare, 0, &block))
    else {
        unreachable!()
    };
    forged.signature.0[5] ^= 1;
    replica.handle(&mut ledger, Input::Message(forged.clone()));
    forged.from = ValidatorIndex(9);
    replica.handle(&mut ledger, Input::Message(forged));
    assert_eq!(replica.buffered_message_count(), 0);
    for _ in 0..3 {
        let input = net.signed(2, vote_message(VoteKind::Prepare, 0, &block));
        replica.handle(&mut ledger, input);
    }
    assert_eq!(replica.buffered_message_count(), 1);
    let wrong_chain = SignedMessage::sign(
        "other-chain",
        ValidatorIndex(3),
        &net.keys[3],
        vote_message(VoteKind::Prepare, 0, &block),
    );
    replica.handle(&mut ledger, Input::Message(wrong_chain));
    assert_eq!(replica.buffered_message_count(), 1);
}

#[test]
fn a_sync_reply_is_applied_up_to_the_first_bad_certificate() {
    let net = Net::new(4);
    let mut source = SimLedger::new(CHAIN);
    let mut chain = vec![];
    for _ in 0..3 {
        let block = net.block(&source, 0, 0);
        let certificate = net.certificate(0, &block, &[0, 1, 2]);
        source.commit(&block, &certificate, 0).unwrap();
        chain.push((block, certificate));
    }
    chain[1].1.signatures[0].signature.0[0] ^= 1;
    let mut replica = net.replica(3, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let input = Input::SyncResponse {
        from: ValidatorIndex(0),
        blocks: chain.clone(),
    };
    let actions = replica.handle(&mut ledger, input);
    // Progress asks the same peer for more (the reply may have been an
    // unsolicited answer to the runtime's idle poll).
    assert_eq!(shape(&actions), ["committed", "request-sync"]);
    assert_eq!(ledger.height(), Height(1));
    chain[1].1 = net.certificate(0, &chain[1].0, &[1, 2, 3]);
    replica.handle(
        &mut ledger,
        Input::SyncResponse {
            from: ValidatorIndex(0),
            blocks: chain,
        },
    );
    assert_eq!(
        ledger.tip(),
        source.tip(),
        "old blocks skipped, rest applied"
    );
}

#[test]
fn far_future_messages_are_bounded_and_f_plus_1_of_them_start_a_sync() {
    let net = Net::new(4);
    let mut replica = net.replica(1, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let block = net.block(&ledger, 0, 0);
    for view in 0..100 {
        let mut message = vote_message(VoteKind::Prepare, view, &block);
        if let Message::Prepare { height, .. } = &mut message {
            *height = Height(2);
        }
        replica.handle(&mut ledger, net.signed(2, message));
    }
    let bound = cairn_consensus::limits::FUTURE_MESSAGES_PER_SENDER_MAX;
    assert_eq!(replica.buffered_message_count(), bound);
    assert!(!replica.is_syncing(), "one validator ahead may be lying");
    assert_eq!(replica.sync_target(), None);
    let far = Message::ViewChange {
        new_view: View(0),
        height: Height(500),
        prepared: None,
        prepared_block: None,
    };
    replica.handle(&mut ledger, net.signed(3, far));
    assert!(replica.is_syncing(), "f+1 validators are ahead");
    // Validator 3 claims height 500 alone; validator 2 works on height 2,
    // so height 1 is committed: the target one liar cannot raise.
    assert_eq!(replica.sync_target(), Some(Height(1)));
    let mut requests = 0;
    for now_ms in (0..2_000).step_by(10) {
        let actions = replica.handle(&mut ledger, Input::Tick { now_ms });
        requests += shape(&actions)
            .iter()
            .filter(|a| *a == "request-sync")
            .count();
    }
    assert!(
        (1..=10).contains(&requests),
        "rate-limited requests: {requests}"
    );
}

/// View changes for view 1 at height 1 from `from`, the first carrying a
/// prepared certificate for `prepared` (view 0) when given.
fn view_changes(net: &Net, from: &[usize], prepared: Option<&Block>) -> Vec<SignedMessage> {
    from.iter()
        .enumerate()
        .map(|(i, f)| {
            let prepared = prepared
                .filter(|_| i == 0)
                .map(|block| PreparedCertificate {
                    view: View(0),
                    block_hash: block.hash(),
                    signatures: [0, 2, 3]
                        .iter()
                        .map(|s| net.vote(VoteKind::Prepare, 0, block, *s))
                        .collect(),
                });
            // As a new view carries them: without the block.
            let message = Message::ViewChange {
                new_view: View(1),
                height: Height(1),
                prepared,
                prepared_block: None,
            };
            SignedMessage::sign(CHAIN, ValidatorIndex(*f as u16), &net.keys[*f], message)
        })
        .collect()
}

fn new_view(net: &Net, view_changes: Vec<SignedMessage>, proposal: &Block) -> Input {
    let message = Message::NewView {
        view: View(1),
        height: Height(1),
        view_changes,
        proposal: proposal.clone(),
    };
    net.signed(1, message)
}

#[test]
fn a_new_view_must_repropose_the_highest_prepared_block() {
    let net = Net::new(4);
    let ledger0 = SimLedger::new(CHAIN);
    let prepared = net.block(&ledger0, 0, 0);
    let fresh = net.block(&ledger0, 1, 0);
    let vcs = view_changes(&net, &[0, 2, 3], Some(&prepared));

    let mut replica = net.replica(2, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let ignored = replica.handle(&mut ledger, new_view(&net, vcs.clone(), &fresh));
    assert!(
        shape(&ignored).is_empty(),
        "fresh block despite a prepared one"
    );
    assert_eq!(replica.view(), View(0));

    let mut replica = net.replica(2, SafetyState::default());
    let actions = replica.handle(&mut ledger, new_view(&net, vcs, &prepared));
    assert_eq!(shape(&actions), ["persist", "prepare"]);
    assert_eq!(replica.view(), View(1));
    let Action::Broadcast(m) = &actions[1] else {
        unreachable!()
    };
    assert_eq!(m.message, vote_message(VoteKind::Prepare, 1, &prepared));
}

#[test]
fn a_new_view_needs_a_quorum_of_distinct_view_changes() {
    let net = Net::new(4);
    let mut ledger = SimLedger::new(CHAIN);
    let fresh = net.block(&ledger, 1, 0);
    let mut replica = net.replica(2, SafetyState::default());
    let two = view_changes(&net, &[0, 3], None);
    assert!(replica
        .handle(&mut ledger, new_view(&net, two, &fresh))
        .is_empty());
    let mut replica = net.replica(2, SafetyState::default());
    let repeated = view_changes(&net, &[0, 3, 3], None);
    assert!(replica
        .handle(&mut ledger, new_view(&net, repeated, &fresh))
        .is_empty());
    let mut replica = net.replica(2, SafetyState::default());
    let good = view_changes(&net, &[0, 2, 3], None);
    let actions = replica.handle(&mut ledger, new_view(&net, good, &fresh));
    assert_eq!(shape(&actions), ["persist", "prepare"]);
}

/// A replica whose height makes no progress asks for the next view when
/// the timer expires. Alone, it then waits in that request: the new view's
/// timer runs only once a quorum asks for it (or a higher view), so a few
/// replicas cannot run ahead of the rest view after view. With a quorum
/// and no new-view message, it asks again after the doubled timeout.
#[test]
fn the_view_timer_asks_for_the_next_view_and_doubles() {
    let net = Net::new(4);
    let mut replica = net.replica(2, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let mut asked_at = vec![];
    let mut quorum_at = None;
    for now_ms in (0..8_000).step_by(10) {
        let actions = replica.handle(&mut ledger, Input::Tick { now_ms });
        if shape(&actions).contains(&"view-change".to_string())
            && replica.view().0 > asked_at.len() as u64
        {
            asked_at.push(now_ms);
        }
        if quorum_at.is_none() && asked_at.first().is_some_and(|t| now_ms >= t + 1_500) {
            assert_eq!(asked_at.len(), 1, "alone, it waits in view 1");
            for from in [0, 3] {
                let ask = Message::ViewChange {
                    new_view: View(1),
                    height: Height(1),
                    prepared: None,
                    prepared_block: None,
                };
                replica.handle(&mut ledger, net.signed(from, ask));
            }
            quorum_at = Some(now_ms);
        }
    }
    assert_eq!(replica.view(), View(asked_at.len() as u64));
    assert!(asked_at.len() >= 2, "{asked_at:?}");
    assert!((1_000..=1_020).contains(&asked_at[0]), "{asked_at:?}");
    let second = asked_at[1] - quorum_at.expect("the others asked");
    assert!(
        (2_000..=2_020).contains(&second),
        "timeout doubled, counted from the quorum: {asked_at:?} {quorum_at:?}"
    );
}

#[test]
fn an_idle_network_stays_quiet() {
    let net = Net::new(4);
    let mut replica = net.replica(2, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    ledger.pending = false;
    for now_ms in (0..20_000).step_by(10) {
        let actions = replica.handle(&mut ledger, Input::Tick { now_ms });
        assert!(actions.is_empty(), "at {now_ms} ms: {:?}", shape(&actions));
    }
    assert_eq!(replica.view(), View(0));
}

#[test]
fn a_decided_certificate_lets_a_lagging_replica_commit() {
    let net = Net::new(4);
    let mut replica = net.replica(3, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let block = net.block(&ledger, 0, 0);
    replica.handle(&mut ledger, net.signed(0, pre_prepare(0, &block)));
    let mut certificate = net.certificate(0, &block, &[0, 1, 2]);
    certificate.signatures[2].signature.0[1] ^= 1;
    let forged = Message::Decided {
        certificate: certificate.clone(),
    };
    replica.handle(&mut ledger, net.signed(1, forged));
    assert_eq!(ledger.height(), Height(0), "one bad signature spoils it");
    let certificate = net.certificate(0, &block, &[0, 1, 2]);
    let actions = replica.handle(&mut ledger, net.signed(1, Message::Decided { certificate }));
    assert_eq!(shape(&actions), ["committed"]);
    assert_eq!(ledger.tip(), (Height(1), block.hash()));
}

/// A `Decided` for the next height is checked for its shape before any
/// signature: a sender's own signature first, then at most n signatures of
/// distinct validators (issue 10: a frame of copies of one valid signature
/// cost one verification each, and was filed as votes).
#[test]
fn a_padded_or_unsigned_decided_is_refused_before_its_signatures_are_checked() {
    let net = Net::new(4);
    let mut replica = net.replica(3, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let block = net.block(&ledger, 0, 0);
    replica.handle(&mut ledger, net.signed(0, pre_prepare(0, &block)));

    // Copies of one valid signature beyond n, then a quorum.
    let mut padded = net.certificate(0, &block, &[0, 1, 2]);
    let copy = padded.signatures[0].clone();
    padded
        .signatures
        .splice(0..0, std::iter::repeat_n(copy, 1_000));
    let actions = replica.handle(
        &mut ledger,
        net.signed(
            1,
            Message::Decided {
                certificate: padded,
            },
        ),
    );
    assert!(actions.is_empty(), "{:?}", shape(&actions));
    assert_eq!(
        ledger.height(),
        Height(0),
        "more signatures than validators"
    );

    // Within n, but one validator twice.
    let duplicated = net.certificate(0, &block, &[0, 0, 1, 2]);
    replica.handle(
        &mut ledger,
        net.signed(
            1,
            Message::Decided {
                certificate: duplicated,
            },
        ),
    );
    assert_eq!(ledger.height(), Height(0), "a signer twice");

    // A valid certificate in a message whose own signature is bad.
    let mut unsigned = SignedMessage::sign(
        CHAIN,
        ValidatorIndex(1),
        &net.keys[1],
        Message::Decided {
            certificate: net.certificate(0, &block, &[0, 1, 2]),
        },
    );
    unsigned.signature.0[0] ^= 1;
    replica.handle(&mut ledger, Input::Message(unsigned));
    assert_eq!(
        ledger.height(),
        Height(0),
        "the message's own signature is bad"
    );

    // The same certificate, well formed and signed, commits.
    let certificate = net.certificate(0, &block, &[0, 1, 2]);
    let actions = replica.handle(&mut ledger, net.signed(1, Message::Decided { certificate }));
    assert_eq!(shape(&actions), ["committed"]);
}

/// A proposal timed more than `TIMESTAMP_FUTURE_MS_MAX` ahead of this
/// replica's clock is not prepared yet, and prepared once the clock comes
/// close: the verdict depends on the clock, so it is never cached (issue
/// 10: the node's ledger refused such a block and the replica kept that
/// verdict for the whole height, so a Byzantine primary could time a block
/// to be refused by f replicas and accepted by 2f, and halt the height).
#[test]
fn a_block_from_the_future_is_prepared_once_the_clock_comes_close() {
    let net = Net::new(4);
    let mut replica = net.replica(3, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let now = 1_000_000;
    replica.handle(&mut ledger, Input::Tick { now_ms: now });
    let ahead = now + cairn_consensus::TIMESTAMP_FUTURE_MS_MAX + 500;
    let block = ledger.build(View(0), net.validators[0], ahead, 0);
    let actions = replica.handle(&mut ledger, net.signed(0, pre_prepare(0, &block)));
    assert!(
        !shape(&actions).contains(&"prepare".to_string()),
        "prepared a block {} ms ahead: {:?}",
        ahead - now,
        shape(&actions)
    );
    let actions = replica.handle(&mut ledger, Input::Tick { now_ms: now + 400 });
    assert!(!shape(&actions).contains(&"prepare".to_string()));
    let actions = replica.handle(&mut ledger, Input::Tick { now_ms: now + 600 });
    assert!(
        shape(&actions).contains(&"prepare".to_string()),
        "not prepared once the clock came close: {:?}",
        shape(&actions)
    );
}

/// A peer's claim to be ahead goes down when, asked, it has nothing past
/// our tip (issue 10: a claimed height never went down, so one message
/// from a Byzantine validator at a far height kept the replica asking it
/// for blocks, once per view timeout, for good).
#[test]
fn a_claim_to_be_ahead_goes_down_when_the_peer_has_nothing_to_give() {
    let net = Net::new(4);
    let mut replica = net.replica(3, SafetyState::default());
    let mut ledger = SimLedger::new(CHAIN);
    let far = Message::ViewChange {
        new_view: View(0),
        height: Height(1_000),
        prepared: None,
        prepared_block: None,
    };
    replica.handle(&mut ledger, net.signed(1, far));
    let requests_to_1 = |replica: &mut Replica, ledger: &mut SimLedger, from_ms: u64| {
        let mut requests = 0;
        for now_ms in (from_ms..from_ms + 5_000).step_by(10) {
            for action in replica.handle(ledger, Input::Tick { now_ms }) {
                if matches!(action, Action::RequestSync { to, .. } if to == ValidatorIndex(1)) {
                    requests += 1;
                }
            }
        }
        requests
    };
    let before = requests_to_1(&mut replica, &mut ledger, 0);
    assert!(
        before >= 1,
        "one validator ahead is asked after a view timeout"
    );
    replica.handle(
        &mut ledger,
        Input::SyncResponse {
            from: ValidatorIndex(1),
            blocks: vec![],
        },
    );
    let after = requests_to_1(&mut replica, &mut ledger, 5_000);
    assert_eq!(after, 0, "asked {after} more times after an empty answer");
}

/// A new-view message for the view a replica is in must not replace the
/// proposal it already prepared there (issue 10): replicas can start a
/// height in different views, so a Byzantine primary can send a plain
/// pre-prepare to a replica that started in its view, and then a new view
/// for the same view, justified by the others, with another block. The
/// replica cannot prepare twice in one view; if the new view replaced its
/// proposal, it would lose the block it prepared and never commit-vote it.
#[test]
fn a_new_view_does_not_replace_a_prepared_proposal_of_its_view() {
    let net = Net::new(4);
    let mut ledger = SimLedger::new(CHAIN);
    // Height 1 decided in view 1: this replica starts height 2 in view 1.
    let first = net.block(&ledger, 0, 0);
    let certificate = net.certificate(1, &first, &[0, 1, 3]);
    let mut replica = net.replica(2, SafetyState::default());
    replica.handle(
        &mut ledger,
        Input::SyncResponse {
            from: ValidatorIndex(0),
            blocks: vec![(first, certificate)],
        },
    );
    assert_eq!((replica.height(), replica.view()), (Height(2), View(1)));

    let prepared = net.block(&ledger, 1, 0);
    let actions = replica.handle(&mut ledger, net.signed(1, pre_prepare(1, &prepared)));
    assert_eq!(shape(&actions), ["persist", "prepare"]);

    // The others started height 2 in view 0 and asked for view 1; its
    // primary answers them with a new view and another block.
    let other = net.block(&ledger, 1, 3);
    assert_ne!(other.hash(), prepared.hash());
    let view_changes = [0usize, 1, 3]
        .iter()
        .map(|from| {
            let message = Message::ViewChange {
                new_view: View(1),
                height: Height(2),
                prepared: None,
                prepared_block: None,
            };
            SignedMessage::sign(
                CHAIN,
                ValidatorIndex(*from as u16),
                &net.keys[*from],
                message,
            )
        })
        .collect();
    let message = Message::NewView {
        view: View(1),
        height: Height(2),
        view_changes,
        proposal: other,
    };
    let actions = replica.handle(&mut ledger, net.signed(1, message));
    assert!(actions.is_empty(), "{:?}", shape(&actions));

    // A quorum prepares the block this replica prepared: it commit-votes.
    let mut seen = vec![];
    for from in [0, 3] {
        let input = net.signed(from, vote_message(VoteKind::Prepare, 1, &prepared));
        seen.extend(shape(&replica.handle(&mut ledger, input)));
    }
    assert_eq!(
        seen,
        ["persist", "commit"],
        "the prepared block was lost to the new view"
    );
}

/// A block of `count` copies of one signed transfer on the ledger's tip:
/// the size of a full block, without the cost of signing each.
fn large_block(net: &Net, ledger: &SimLedger, view: u64, count: usize) -> Block {
    let key = Keypair::from_seed([200; 32]);
    let transfer = cairn_core::Transfer {
        chain_id: CHAIN.into(),
        from: key.public(),
        to: net.validators[0],
        amount: 1,
        nonce: 0,
    };
    let tx = cairn_core::SignedTransaction::sign(transfer, &key);
    let mut block = net.block(ledger, view, 0);
    let hashes = vec![tx.hash(); count];
    block.header.tx_root = cairn_core::tx_root(&hashes);
    block.transactions = vec![tx; count];
    block
}

/// A new-view message for n = 31 whose view changes all carry a prepared
/// certificate of a 10,000-transaction block fits in one p2p frame (issue
/// 10: each view change carried the block, and the new view a quorum of
/// them plus the block again, about 22 blocks: past the 32 MiB frame
/// limit every receiver closed the connection, and the new primary sent
/// it again forever).
#[test]
fn a_new_view_of_31_validators_with_full_blocks_fits_in_a_frame() {
    let net = Net::new(31);
    let mut ledger = SimLedger::new(CHAIN);
    let block = large_block(&net, &ledger, 0, 10_000);
    let signers: Vec<usize> = (0..21).collect();
    let mut replica = net.replica(1, SafetyState::default());
    replica.handle(&mut ledger, Input::Tick { now_ms: 0 });
    let mut new_view = None;
    for from in (0..31).filter(|i| *i != 1).take(20) {
        let prepared = PreparedCertificate {
            view: View(0),
            block_hash: block.hash(),
            signatures: signers
                .iter()
                .map(|s| net.vote(VoteKind::Prepare, 0, &block, *s))
                .collect(),
        };
        let message = Message::ViewChange {
            new_view: View(1),
            height: Height(1),
            prepared: Some(prepared),
            prepared_block: Some(block.clone()),
        };
        for action in replica.handle(&mut ledger, net.signed(from, message)) {
            if let Action::Broadcast(m) = action {
                if matches!(m.message, Message::NewView { .. }) {
                    new_view = Some(m);
                }
            }
        }
    }
    let new_view = new_view.expect("the new primary sends a new view");
    let bytes = cairn_core::codec::encode(&new_view).len();
    let frame = cairn_core::limits::P2P_FRAME_BYTES_MAX;
    println!("new view, n = 31, 10,000-tx blocks: {bytes} bytes (frame limit {frame})");
    assert!(
        bytes + 1_024 <= frame,
        "a new view of {bytes} bytes does not fit in a frame of {frame}"
    );
    let Message::NewView { view_changes, .. } = &new_view.message else {
        unreachable!()
    };
    assert_eq!(view_changes.len(), 21);
    for vc in view_changes {
        let vc_bytes = cairn_core::codec::encode(vc).len();
        assert!(vc_bytes <= cairn_consensus::limits::view_change_bytes_max(31));
    }
    let block_bytes = cairn_core::codec::encode(&block).len();
    assert!(block_bytes <= 10_000 * cairn_core::limits::TX_BYTES_MAX + 1_024);
    assert!(bytes <= cairn_consensus::limits::message_bytes_max(31));
}

/// The future-height buffer is bounded per sender in bytes, not only in
/// messages (issue 10: 16 messages of up to 32 MiB each per sender): a
/// validator sending large proposals for the height above fills only its
/// own share, and another sender's messages are still kept.
#[test]
fn the_future_buffer_is_bounded_in_bytes_per_sender() {
    let net = Net::new(4);
    let mut ledger = SimLedger::new(CHAIN);
    let mut replica = net.replica(1, SafetyState::default());
    let block = large_block(&net, &ledger, 0, 12_500);
    let block_bytes = cairn_core::codec::encode(&block).len();
    for view in 0..16 {
        let message = Message::PrePrepare {
            view: View(view),
            height: Height(2),
            block: block.clone(),
        };
        replica.handle(&mut ledger, net.signed(2, message));
    }
    let held = replica.future_bytes_of(ValidatorIndex(2));
    let bound = cairn_consensus::limits::FUTURE_BYTES_PER_SENDER_MAX;
    println!("16 future proposals of {block_bytes} bytes: {held} bytes held (bound {bound})");
    assert!(held <= bound, "{held} bytes held from one sender");
    assert!(held >= block_bytes, "a proposal still fits");
    let vote = Message::Prepare {
        view: View(0),
        height: Height(2),
        block_hash: block.hash(),
    };
    let before = replica.buffered_message_count();
    replica.handle(&mut ledger, net.signed(3, vote));
    assert_eq!(replica.buffered_message_count(), before + 1);
}

/// `input` (a message) as it arrives on validator `peer`'s connection.
fn on_connection_of(peer: usize, input: Input) -> Input {
    let Input::Message(message) = input else {
        unreachable!("a message")
    };
    Input::PeerMessage {
        peer: ValidatorIndex(peer as u16),
        message,
    }
}

/// The punishments among `actions`: (peer, offence).
fn punished(actions: &[Action]) -> Vec<(usize, Offence)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Punish { peer, offence } => Some((peer.get(), *offence)),
            _ => None,
        })
        .collect()
}

/// Issue 10: "a bad signature costs its sender nothing". A message that
/// arrives on its sender's own connection with a bad signature, or with a
/// certificate its sender vouches for that is invalid, makes the replica
/// report the peer; the same bytes passed on by another peer (a relay) or
/// handed in with no peer blame no one; good messages never do.
#[test]
fn a_peer_is_punished_for_a_bad_signature_it_sends_and_a_relay_is_not() {
    let net = Net::new(4);
    let mut ledger = SimLedger::new(CHAIN);
    let mut replica = net.replica(1, SafetyState::default());
    let block = net.block(&ledger, 0, 0);
    let mut bad = net.signed(2, vote_message(VoteKind::Prepare, 0, &block));
    if let Input::Message(m) = &mut bad {
        m.signature.0[5] ^= 1;
    }
    let actions = replica.handle(&mut ledger, on_connection_of(2, bad.clone()));
    assert_eq!(punished(&actions), [(2, Offence::BadSignature)]);
    let actions = replica.handle(&mut ledger, on_connection_of(3, bad.clone()));
    assert_eq!(punished(&actions), [], "a relay of another's message");
    let actions = replica.handle(&mut ledger, bad);
    assert_eq!(punished(&actions), [], "no peer named");
    let good = net.signed(2, vote_message(VoteKind::Prepare, 0, &block));
    let actions = replica.handle(&mut ledger, on_connection_of(2, good));
    assert_eq!(punished(&actions), []);
    assert_eq!(replica.buffered_message_count(), 1, "the good one is kept");

    // A `Decided` whose certificate names a signer twice.
    let duplicated = net.certificate(0, &block, &[0, 0, 2]);
    let decided = net.signed(
        0,
        Message::Decided {
            certificate: duplicated,
        },
    );
    let actions = replica.handle(&mut ledger, on_connection_of(0, decided));
    assert_eq!(punished(&actions), [(0, Offence::BadCertificate)]);

    // A view change whose prepared certificate has too few prepares.
    let weak = PreparedCertificate {
        view: View(0),
        block_hash: block.hash(),
        signatures: [0, 3]
            .iter()
            .map(|s| net.vote(VoteKind::Prepare, 0, &block, *s))
            .collect(),
    };
    let view_change = net.signed(
        3,
        Message::ViewChange {
            new_view: View(1),
            height: Height(1),
            prepared: Some(weak),
            prepared_block: Some(block.clone()),
        },
    );
    let actions = replica.handle(&mut ledger, on_connection_of(3, view_change));
    assert_eq!(punished(&actions), [(3, Offence::BadCertificate)]);
}

/// A new view whose justification no honest primary sends (too few or
/// repeated view changes, one with a bad signature, a fresh block despite
/// a prepared one) gets its primary punished when it comes on the
/// primary's own connection; a justified one does not.
#[test]
fn a_forged_new_view_punishes_its_primary() {
    let net = Net::new(4);
    let mut ledger = SimLedger::new(CHAIN);
    let prepared = net.block(&ledger, 0, 0);
    let fresh = net.block(&ledger, 1, 0);
    let mut bad_signature = view_changes(&net, &[0, 2, 3], None);
    bad_signature[1].signature.0[3] ^= 1;
    let forged = [
        view_changes(&net, &[0, 3], None),
        view_changes(&net, &[0, 3, 3], None),
        bad_signature,
    ];
    for vcs in forged {
        let mut replica = net.replica(2, SafetyState::default());
        let actions = replica.handle(
            &mut ledger,
            on_connection_of(1, new_view(&net, vcs, &fresh)),
        );
        assert_eq!(punished(&actions), [(1, Offence::BadNewView)]);
        assert_eq!(replica.view(), View(0));
    }
    let mut replica = net.replica(2, SafetyState::default());
    let lower = view_changes(&net, &[0, 2, 3], Some(&prepared));
    let actions = replica.handle(
        &mut ledger,
        on_connection_of(1, new_view(&net, lower.clone(), &fresh)),
    );
    assert_eq!(
        punished(&actions),
        [(1, Offence::BadNewView)],
        "not the prepared block"
    );
    let mut replica = net.replica(2, SafetyState::default());
    let actions = replica.handle(
        &mut ledger,
        on_connection_of(0, new_view(&net, lower.clone(), &fresh)),
    );
    assert_eq!(punished(&actions), [], "relayed by another peer");
    let mut replica = net.replica(2, SafetyState::default());
    let actions = replica.handle(
        &mut ledger,
        on_connection_of(1, new_view(&net, lower, &prepared)),
    );
    assert_eq!(punished(&actions), []);
    assert_eq!(shape(&actions), ["persist", "prepare"]);
}
