//! Byzantine behaviours: a faulty validator runs a real replica, and the
//! simulator rewrites what it sends (with its real key, so signatures of
//! forged content still verify unless the behaviour breaks them on purpose).

use std::collections::BTreeMap;

use cairn_consensus::{Message, PreparedCertificate, SignedMessage, TIMESTAMP_FUTURE_MS_MAX};
use cairn_core::{
    Block, Certificate, CommitSignature, Hash, Height, Keypair, Signature, ValidatorIndex, View,
    Vote, VoteKind,
};
use rand::rngs::StdRng;
use rand::Rng;

use super::ledger::SimLedger;
use super::CHAIN_ID;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// As primary, sends different valid blocks to different replicas.
    Equivocate,
    /// Sends a vote for another block beside (or instead of) each vote.
    ConflictingVotes,
    /// Breaks the signature of about half of its messages.
    BadSignatures,
    /// Never sends prepares or commits.
    WithholdVotes,
    /// Floods far-future heights and views, bogus certificates, and replays
    /// of other validators' old messages.
    Flood,
    /// As primary, proposes valid blocks that leave out the client's
    /// transfer (a live primary that censors).
    Censor,
    /// As primary, proposes a block that pays into the all-zero (weak) key
    /// and takes the money out again with a crafted signature (issue 8).
    WeakKeyTheft,
    /// The timestamp game of issue 10: as primary, proposes a block timed
    /// just past [`TIMESTAMP_FUTURE_MS_MAX`] ahead of its clock, sends it at
    /// once to f replicas (too far in the future for them) and a moment
    /// later to the others (in time by then), prepares it, and never sends
    /// a commit vote.
    TimestampGame,
    /// Lies in view changes: sends its view changes without the prepared
    /// certificate it holds (hiding its lock) or only to some peers, sends
    /// new-view messages only to some peers (or to none), and forges view
    /// changes for views ahead with nothing prepared.
    ViewChangeLies,
    /// Floods `Decided` messages whose certificate repeats one valid
    /// commit signature many times next to a broken one (issue 10,
    /// defect 2), for the current height and the one below.
    DecidedFlood,
    /// Forges new-view justifications and withholds its commit votes (so
    /// blocks get locked, prepared by a quorum and commit-voted by honest
    /// replicas, without being committed, and views change over them);
    /// at a height where it holds no prepared certificate yet it withholds
    /// its prepares too, so the first block prepared there may be prepared
    /// by it alone (a genuine certificate no honest replica holds). Its
    /// view changes carry a forged prepared certificate (one valid prepare,
    /// its own, beside copies under other validators' indices) for a block
    /// of its own in the view just below. As primary, it replaces each
    /// new view with one of: fewer than a quorum of view changes, repeated
    /// signers, its own view change with that forged certificate (listed
    /// last, so it wins a tie) or its own view change for another view,
    /// each proposing its own block; or its own view change carrying a
    /// genuine certificate lower than the highest (kept from an earlier
    /// view), proposing that certificate's block. To a replica that asks for one of its
    /// views at a height already decided, it answers at once with a new
    /// view of f+1 view changes for its own block.
    ForgeNewView,
    /// Sends its proposals and new views padded past the frame limit (the
    /// block holding its transactions many times over), which the network
    /// drops as p2p closes such a connection; its prepares go out as they
    /// are, its commit votes not at all (so heights get prepared without
    /// being committed, and views change over prepared certificates).
    Oversize,
    /// One of the two honest replicas of a twin validator (same key, see
    /// `Scenario::twins`); its messages go out unchanged.
    Twin,
}

pub const ALL: [Behaviour; 11] = [
    Behaviour::ForgeNewView,
    Behaviour::ViewChangeLies,
    Behaviour::DecidedFlood,
    Behaviour::Equivocate,
    Behaviour::ConflictingVotes,
    Behaviour::BadSignatures,
    Behaviour::WithholdVotes,
    Behaviour::Flood,
    Behaviour::Censor,
    Behaviour::WeakKeyTheft,
    Behaviour::TimestampGame,
];

/// How far past the bound a timestamp-game block is timed.
pub const GAME_MARGIN_MS: u64 = 40;
/// How much later than the first f the other replicas get it.
pub const GAME_DELAY_MS: u64 = 200;

/// What a Byzantine node remembers across the messages it rewrites.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// The timestamp-game block sent at each (height, view).
    pub games: BTreeMap<(Height, View), Block>,
    /// A `ForgeNewView` node's own blocks, built while each height was
    /// the next one, for the views it is primary of: (height, view).
    pub alternatives: BTreeMap<(Height, View), Block>,
    /// View changes a `ForgeNewView` node received, by (height, new view)
    /// and sender (without their blocks).
    pub view_changes: BTreeMap<(Height, View), BTreeMap<u16, SignedMessage>>,
    /// A `ForgeNewView` node that only forges new views (its view changes
    /// go out unchanged and it answers no lagging replica), so it is not
    /// punished before its own view comes: chosen once per run.
    pub stealthy: Option<bool>,
    /// Genuine prepared certificates (with their blocks) a `ForgeNewView`
    /// node saw at each height: its own and those in view changes it got.
    pub certificates: BTreeMap<Height, Vec<(PreparedCertificate, Block)>>,
}

impl Memory {
    /// Keeps a genuine certificate seen in a view change (at most one per
    /// view and a few per height).
    fn keep_certificate(&mut self, vc: &SignedMessage) {
        let Message::ViewChange {
            height,
            prepared: Some(certificate),
            prepared_block: Some(block),
            ..
        } = &vc.message
        else {
            return;
        };
        let kept = self.certificates.entry(*height).or_default();
        if kept.len() < 8 && !kept.iter().any(|(c, _)| c.view == certificate.view) {
            kept.push((certificate.clone(), block.clone()));
        }
    }

    /// Whether a genuine certificate is kept at `height`.
    pub fn holds_certificate(&self, height: Height) -> bool {
        self.certificates
            .get(&height)
            .is_some_and(|c| !c.is_empty())
    }
}

/// Heights below the next one whose alternatives and view changes a
/// `ForgeNewView` node keeps.
const FORGE_HEIGHTS_KEPT: u64 = 8;

pub struct Faulty<'a> {
    pub me: usize,
    pub n: usize,
    pub key: &'a Keypair,
    pub ledger: &'a SimLedger,
    pub now_ms: u64,
}

fn sign(f: &Faulty, message: Message) -> SignedMessage {
    SignedMessage::sign(CHAIN_ID, ValidatorIndex(f.me as u16), f.key, message)
}

fn random_hash(rng: &mut StdRng) -> Hash {
    Hash(rng.gen())
}

/// What a Byzantine validator sends instead of broadcasting `message`:
/// (recipient, message) pairs.
pub fn rewrite(
    behaviour: Behaviour,
    f: &Faulty,
    rng: &mut StdRng,
    message: SignedMessage,
) -> Vec<(usize, SignedMessage)> {
    let peers: Vec<usize> = (0..f.n).filter(|i| *i != f.me).collect();
    let to_all = |m: &SignedMessage| peers.iter().map(|p| (*p, m.clone())).collect::<Vec<_>>();
    match (behaviour, &message.message) {
        (Behaviour::Equivocate, Message::PrePrepare { view, height, .. }) => {
            let other =
                f.ledger
                    .build(*view, f.key.public(), f.now_ms + 1, 1 + rng.gen_range(0..5));
            let forged = sign(
                f,
                Message::PrePrepare {
                    view: *view,
                    height: *height,
                    block: other,
                },
            );
            peers
                .iter()
                .map(|p| {
                    (
                        *p,
                        if rng.gen_bool(0.5) {
                            message.clone()
                        } else {
                            forged.clone()
                        },
                    )
                })
                .collect()
        }
        (Behaviour::ConflictingVotes, Message::Prepare { view, height, .. })
        | (Behaviour::ConflictingVotes, Message::Commit { view, height, .. }) => {
            let (view, height, block_hash) = (*view, *height, random_hash(rng));
            let forged = match message.message {
                Message::Prepare { .. } => Message::Prepare {
                    view,
                    height,
                    block_hash,
                },
                _ => Message::Commit {
                    view,
                    height,
                    block_hash,
                },
            };
            let forged = sign(f, forged);
            let mut out = vec![];
            for p in &peers {
                match rng.gen_range(0..3) {
                    0 => out.push((*p, message.clone())),
                    1 => out.push((*p, forged.clone())),
                    _ => {
                        out.push((*p, forged.clone()));
                        out.push((*p, message.clone()));
                    }
                }
            }
            out
        }
        (Behaviour::BadSignatures, _) => {
            let mut out = vec![];
            for p in &peers {
                let mut m = message.clone();
                if rng.gen_bool(0.5) {
                    m.signature.0[rng.gen_range(0..64)] ^= 1 << rng.gen_range(0..8);
                }
                out.push((*p, m));
            }
            out
        }
        (Behaviour::WithholdVotes, Message::Prepare { .. } | Message::Commit { .. }) => vec![],
        (Behaviour::ForgeNewView, Message::Commit { .. }) => vec![],
        (
            Behaviour::ViewChangeLies,
            Message::ViewChange {
                new_view, height, ..
            },
        ) => {
            let hidden = sign(
                f,
                Message::ViewChange {
                    new_view: *new_view,
                    height: *height,
                    prepared: None,
                    prepared_block: None,
                },
            );
            let ahead = sign(
                f,
                Message::ViewChange {
                    new_view: View(new_view.0 + rng.gen_range(1..3)),
                    height: *height,
                    prepared: None,
                    prepared_block: None,
                },
            );
            let mut out = vec![];
            for p in &peers {
                match rng.gen_range(0..4) {
                    0 => {}
                    1 => out.push((*p, message.clone())),
                    2 => out.push((*p, hidden.clone())),
                    _ => {
                        out.push((*p, hidden.clone()));
                        out.push((*p, ahead.clone()));
                    }
                }
            }
            out
        }
        (Behaviour::ViewChangeLies, Message::NewView { .. }) => peers
            .iter()
            .filter(|_| rng.gen_bool(0.4))
            .map(|p| (*p, message.clone()))
            .collect(),
        (Behaviour::Censor, Message::PrePrepare { view, height, .. }) => {
            let block = f
                .ledger
                .build_with(*view, f.key.public(), f.now_ms, 0, false);
            let censored = sign(
                f,
                Message::PrePrepare {
                    view: *view,
                    height: *height,
                    block,
                },
            );
            to_all(&censored)
        }
        (Behaviour::WeakKeyTheft, Message::PrePrepare { view, height, .. }) => {
            let block =
                f.ledger
                    .build_weak_key_theft(*view, f.key.public(), f.now_ms, f.key.public());
            let theft = sign(
                f,
                Message::PrePrepare {
                    view: *view,
                    height: *height,
                    block,
                },
            );
            to_all(&theft)
        }
        _ => to_all(&message),
    }
}

/// What a [`Behaviour::TimestampGame`] node sends instead of broadcasting
/// `message`: (recipient, message, delay) triples.
pub fn timestamp_game(
    me: usize,
    n: usize,
    key: &Keypair,
    ledger: &SimLedger,
    now_ms: u64,
    memory: &mut Memory,
    message: SignedMessage,
) -> Vec<(usize, SignedMessage, u64)> {
    let f = Faulty {
        me,
        n,
        key,
        ledger,
        now_ms,
    };
    let peers: Vec<usize> = (1..n).map(|k| (me + k) % n).collect();
    let to_all = |m: &SignedMessage| peers.iter().map(|p| (*p, m.clone(), 0)).collect();
    match &message.message {
        Message::PrePrepare { view, height, .. } => {
            let (view, height) = (*view, *height);
            // The same block on every retransmission.
            let block = match memory.games.get(&(height, view)) {
                Some(block) => block.clone(),
                None => {
                    let timed_ms = now_ms + TIMESTAMP_FUTURE_MS_MAX + GAME_MARGIN_MS;
                    ledger.build(view, key.public(), timed_ms, 0)
                }
            };
            memory.games.insert((height, view), block.clone());
            let game = sign(
                &f,
                Message::PrePrepare {
                    view,
                    height,
                    block,
                },
            );
            let victims = cairn_core::max_faulty(n);
            peers
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let delay_ms = if k < victims { 0 } else { GAME_DELAY_MS };
                    (*p, game.clone(), delay_ms)
                })
                .collect()
        }
        Message::Prepare { view, height, .. } => match memory.games.get(&(*height, *view)) {
            Some(block) => to_all(&sign(
                &f,
                Message::Prepare {
                    view: *view,
                    height: *height,
                    block_hash: block.hash(),
                },
            )),
            None => to_all(&message),
        },
        Message::Commit { .. } => vec![],
        _ => to_all(&message),
    }
}

/// What a [`Behaviour::DecidedFlood`] node sends on a tick: to each peer,
/// a `Decided` whose certificate is `copies` copies of its own valid commit
/// signature of its last committed block plus one broken signature, and one
/// claiming the next height with copies of a signature over nothing.
pub fn decided_flood(f: &Faulty, copies: usize) -> Vec<(usize, SignedMessage)> {
    let Some((block, certificate)) = f.ledger.blocks.last() else {
        return vec![];
    };
    let vote = certificate.vote(CHAIN_ID);
    let mine = CommitSignature {
        validator: ValidatorIndex(f.me as u16),
        signature: vote.sign(f.key),
    };
    let mut broken = mine.clone();
    broken.signature.0[0] ^= 1;
    let mut signatures = vec![mine.clone(); copies];
    signatures.push(broken);
    let repeated = Certificate {
        signatures: signatures.clone(),
        ..certificate.clone()
    };
    let ahead = Certificate {
        height: block.height().next(),
        signatures,
        ..certificate.clone()
    };
    let messages = [
        sign(
            f,
            Message::Decided {
                certificate: repeated,
            },
        ),
        sign(f, Message::Decided { certificate: ahead }),
    ];
    (0..f.n)
        .filter(|p| *p != f.me)
        .flat_map(|p| messages.iter().map(move |m| (p, m.clone())))
        .collect()
}

/// Unprompted messages a flooder sends on a tick.
pub fn flood(
    f: &Faulty,
    rng: &mut StdRng,
    recent: &[SignedMessage],
) -> Vec<(usize, SignedMessage)> {
    let next = f.ledger.height().next();
    let mut out = vec![];
    for _ in 0..3 {
        let to = rng.gen_range(0..f.n);
        if to == f.me {
            continue;
        }
        let far_height = Height(next.0 + rng.gen_range(1..1_000_000));
        let far_view = View(rng.gen_range(0..1_000_000));
        let message = match rng.gen_range(0..6) {
            0 => sign(
                f,
                Message::Prepare {
                    view: far_view,
                    height: far_height,
                    block_hash: random_hash(rng),
                },
            ),
            1 => sign(
                f,
                Message::Commit {
                    view: far_view,
                    height: next,
                    block_hash: random_hash(rng),
                },
            ),
            2 => sign(
                f,
                Message::ViewChange {
                    new_view: far_view,
                    height: next,
                    prepared: None,
                    prepared_block: None,
                },
            ),
            3 => {
                let signatures = (0..f.n)
                    .map(|i| CommitSignature {
                        validator: ValidatorIndex(i as u16),
                        signature: Signature([7; 64]),
                    })
                    .collect();
                let certificate = Certificate {
                    height: far_height,
                    view: far_view,
                    block_hash: random_hash(rng),
                    signatures,
                };
                sign(f, Message::Decided { certificate })
            }
            4 => sign(
                f,
                Message::Prepare {
                    view: View(rng.gen_range(0..8)),
                    height: Height(next.0 + rng.gen_range(1..3)),
                    block_hash: random_hash(rng),
                },
            ),
            _ => match recent.is_empty() {
                true => continue,
                false => recent[rng.gen_range(0..recent.len())].clone(),
            },
        };
        out.push((to, message));
    }
    out
}

/// Primaries of views at or above `from`: the next two of validator `me`.
fn own_views(me: usize, n: usize, from: View) -> [View; 2] {
    let first = from.0 + ((me as u64 + n as u64 - from.0 % n as u64) % n as u64);
    [View(first), View(first + n as u64)]
}

/// On each tick, a [`Behaviour::ForgeNewView`] node builds its own block
/// for the next height in the next views it is primary of (kept for
/// forged new views, including ones sent later to replicas still at this
/// height), and forgets old heights.
pub fn prepare_alternatives(f: &Faulty, memory: &mut Memory, view: View) {
    let next = f.ledger.height().next();
    for view in own_views(f.me, f.n, view) {
        memory
            .alternatives
            .entry((next, view))
            .or_insert_with(|| f.ledger.build(view, f.key.public(), f.now_ms, 3));
    }
    let keep = Height(next.0.saturating_sub(FORGE_HEIGHTS_KEPT));
    memory.alternatives = memory.alternatives.split_off(&(keep, View(0)));
    memory.view_changes = memory.view_changes.split_off(&(keep, View(0)));
    memory.certificates = memory.certificates.split_off(&keep);
}

/// A prepared certificate for `block` in `view` at `height` holding one
/// valid prepare (the forger's own) and copies of it under other
/// validators' indices, up to a quorum.
fn forged_certificate(
    f: &Faulty,
    height: Height,
    view: View,
    block: &Block,
) -> PreparedCertificate {
    let vote = Vote {
        kind: VoteKind::Prepare,
        chain_id: CHAIN_ID.into(),
        height,
        view,
        block_hash: block.hash(),
    };
    let signature = vote.sign(f.key);
    let mut signatures = vec![CommitSignature {
        validator: ValidatorIndex(f.me as u16),
        signature,
    }];
    let others = (0..f.n).filter(|i| *i != f.me);
    for i in others.take(cairn_core::quorum(f.n) - 1) {
        signatures.push(CommitSignature {
            validator: ValidatorIndex(i as u16),
            signature,
        });
    }
    PreparedCertificate {
        view,
        block_hash: block.hash(),
        signatures,
    }
}

/// The forger's own block for (height, view): kept, or built now when
/// `height` is the next one.
fn alternative(f: &Faulty, memory: &Memory, height: Height, view: View) -> Option<Block> {
    if let Some(block) = memory.alternatives.get(&(height, view)) {
        return Some(block.clone());
    }
    (height == f.ledger.height().next()).then(|| f.ledger.build(view, f.key.public(), f.now_ms, 3))
}

/// A view change of the forger to `new_view` at `height` carrying nothing.
fn hidden_view_change(f: &Faulty, height: Height, new_view: View) -> SignedMessage {
    sign(
        f,
        Message::ViewChange {
            new_view,
            height,
            prepared: None,
            prepared_block: None,
        },
    )
}

/// A view change of the forger carrying a forged certificate for its own
/// block in the view below `new_view`, or `None` (view 0, or no block).
fn forged_view_change(
    f: &Faulty,
    memory: &Memory,
    height: Height,
    new_view: View,
) -> Option<(SignedMessage, Block)> {
    let below = View(new_view.0.checked_sub(1)?);
    let block = alternative(f, memory, height, new_view)?;
    let certificate = forged_certificate(f, height, below, &block);
    let message = sign(
        f,
        Message::ViewChange {
            new_view,
            height,
            prepared: Some(certificate),
            prepared_block: Some(block.clone()),
        },
    );
    Some((message, block))
}

/// What a [`Behaviour::ForgeNewView`] node sends instead of its view
/// change: to each peer, the true one, one hiding its lock, or one with
/// a forged certificate for its own block.
pub fn forge_view_change(
    f: &Faulty,
    rng: &mut StdRng,
    memory: &mut Memory,
    message: SignedMessage,
) -> Vec<(usize, SignedMessage)> {
    memory.keep_certificate(&message);
    let stealthy = *memory.stealthy.get_or_insert_with(|| rng.gen_bool(0.5));
    if stealthy {
        return (0..f.n)
            .filter(|p| *p != f.me)
            .map(|p| (p, message.clone()))
            .collect();
    }
    let memory = &*memory;
    let Message::ViewChange {
        new_view, height, ..
    } = &message.message
    else {
        return vec![];
    };
    let hidden = hidden_view_change(f, *height, *new_view);
    let forged = forged_view_change(f, memory, *height, *new_view).map(|(m, _)| m);
    (0..f.n)
        .filter(|p| *p != f.me)
        .map(|p| {
            let m = match rng.gen_range(0..3) {
                0 => message.clone(),
                1 => hidden.clone(),
                _ => forged.clone().unwrap_or_else(|| message.clone()),
            };
            (p, m)
        })
        .collect()
}

/// What a [`Behaviour::ForgeNewView`] primary sends instead of its new
/// view: to each peer, one forgery (see the behaviour) or, now and then,
/// the true one.
pub fn forge_new_view(
    f: &Faulty,
    rng: &mut StdRng,
    memory: &Memory,
    message: SignedMessage,
) -> Vec<(usize, SignedMessage)> {
    let Message::NewView {
        view,
        height,
        view_changes,
        ..
    } = &message.message
    else {
        return vec![];
    };
    let (view, height) = (*view, *height);
    let Some(own) = alternative(f, memory, height, view) else {
        return (0..f.n)
            .filter(|p| *p != f.me)
            .map(|p| (p, message.clone()))
            .collect();
    };
    let others: Vec<SignedMessage> = view_changes
        .iter()
        .filter(|vc| vc.from.get() != f.me)
        .cloned()
        .collect();
    let unlocked: Vec<SignedMessage> = others
        .iter()
        .filter(|vc| matches!(vc.message, Message::ViewChange { prepared: None, .. }))
        .cloned()
        .collect();
    let hidden = hidden_view_change(f, height, view);
    let new_view = |vcs: Vec<SignedMessage>, proposal: &Block| {
        sign(
            f,
            Message::NewView {
                view,
                height,
                view_changes: vcs,
                proposal: proposal.clone(),
            },
        )
    };
    let f_plus_1 = cairn_core::max_faulty(f.n) + 1;
    let quorum = cairn_core::quorum(f.n);
    let mut forgeries = vec![];
    // Fewer than a quorum: its own lock-free view change and others'
    // without a certificate.
    let mut few = vec![hidden.clone()];
    few.extend(unlocked.iter().take(f_plus_1 - 1).cloned());
    if few.len() == f_plus_1 && f_plus_1 < quorum {
        forgeries.push(new_view(few, &own));
    }
    // A quorum by repeating its own view change.
    let mut repeated = unlocked.clone();
    while repeated.len() < quorum {
        repeated.push(hidden.clone());
    }
    forgeries.push(new_view(repeated, &own));
    // A forged certificate for its own block, listed last.
    if let Some((forged, block)) = forged_view_change(f, memory, height, view) {
        let mut vcs = others.clone();
        vcs.push(forged.without_block());
        forgeries.push(new_view(vcs, &block));
    }
    if let Some(forged) = lower_certificate_new_view(f, memory, height, view, &others) {
        forgeries.push(forged);
    }
    // Its own view change for another view.
    let mut wrong_view = others.clone();
    wrong_view.push(hidden_view_change(f, height, View(view.0 + 1)));
    forgeries.push(new_view(wrong_view, &own));
    (0..f.n)
        .filter(|p| *p != f.me)
        .map(|p| {
            let m = match rng.gen_bool(0.2) {
                true => message.clone(),
                false => forgeries[rng.gen_range(0..forgeries.len())].clone(),
            };
            (p, m)
        })
        .collect()
}

/// A new view for `view` at `height` of `others` (view changes of other
/// validators) and the forger's own view change carrying a genuine
/// certificate lower than the highest among them, for another block
/// (kept from an earlier view of this height), listed last; proposing
/// that certificate's block. `None` without such a certificate or a
/// quorum.
fn lower_certificate_new_view(
    f: &Faulty,
    memory: &Memory,
    height: Height,
    view: View,
    others: &[SignedMessage],
) -> Option<SignedMessage> {
    let highest = others
        .iter()
        .filter_map(|vc| match &vc.message {
            Message::ViewChange {
                prepared: Some(p), ..
            } => Some(p),
            _ => None,
        })
        .max_by_key(|p| p.view)?;
    let (certificate, block) = memory
        .certificates
        .get(&height)?
        .iter()
        .filter(|(c, _)| c.view < highest.view && c.block_hash != highest.block_hash)
        .min_by_key(|(c, _)| c.view)?;
    if others.len() + 1 < cairn_core::quorum(f.n) {
        return None;
    }
    let mut vcs = others.to_vec();
    vcs.push(sign(
        f,
        Message::ViewChange {
            new_view: view,
            height,
            prepared: Some(certificate.clone()),
            prepared_block: None,
        },
    ));
    Some(sign(
        f,
        Message::NewView {
            view,
            height,
            view_changes: vcs,
            proposal: block.clone(),
        },
    ))
}

/// A [`Behaviour::ForgeNewView`] node received view change `vc`: kept;
/// and when it asks, at a height below the forger's next one, for a view
/// the forger is primary of, answered at once with a new view: one over
/// a genuine lower certificate (see `lower_certificate_new_view`) when it
/// can, else (unless stealthy) one of a quorum with its own view change
/// carrying a forged certificate, or one of f+1 view changes (the asker's, the
/// forger's own lock-free one, others it kept) for the forger's own
/// block, which was never prepared there.
pub fn answer_lagging_view_change(
    f: &Faulty,
    rng: &mut StdRng,
    memory: &mut Memory,
    vc: &SignedMessage,
) -> Option<SignedMessage> {
    let Message::ViewChange {
        new_view, height, ..
    } = &vc.message
    else {
        return None;
    };
    let (view, height) = (*new_view, *height);
    memory.keep_certificate(vc);
    let kept = memory.view_changes.entry((height, view)).or_default();
    if kept.len() < f.n {
        kept.insert(vc.from.0, vc.without_block());
    }
    let behind = height < f.ledger.height().next();
    if !behind || view.primary(f.n).get() != f.me {
        return None;
    }
    let others: Vec<SignedMessage> = memory.view_changes[&(height, view)]
        .values()
        .filter(|other| other.from.get() != f.me)
        .cloned()
        .collect();
    let mut forgeries: Vec<SignedMessage> =
        lower_certificate_new_view(f, memory, height, view, &others)
            .into_iter()
            .collect();
    let stealthy = memory.stealthy == Some(true);
    let new_view = |view_changes: Vec<SignedMessage>, proposal: Block| {
        sign(
            f,
            Message::NewView {
                view,
                height,
                view_changes,
                proposal,
            },
        )
    };
    // A quorum with its own view change carrying a forged certificate for
    // its own block in the view below, listed last.
    let forged = forged_view_change(f, memory, height, view);
    if let Some((own, block)) = forged.filter(|_| !stealthy) {
        if others.len() + 1 >= cairn_core::quorum(f.n) {
            let mut vcs = others.clone();
            vcs.push(own.without_block());
            forgeries.push(new_view(vcs, block));
        }
    }
    // f+1 view changes: the asker's, its own lock-free one, others kept.
    let own = memory.alternatives.get(&(height, view)).cloned();
    if let Some(own) = own.filter(|_| !stealthy) {
        let mut vcs = vec![vc.without_block(), hidden_view_change(f, height, view)];
        let f_plus_1 = cairn_core::max_faulty(f.n) + 1;
        for other in &others {
            if vcs.len() >= f_plus_1 {
                break;
            }
            if other.from != vc.from {
                vcs.push(other.clone());
            }
        }
        forgeries.push(new_view(vcs, own));
    }
    match forgeries.len() {
        0 => None,
        k => Some(forgeries.swap_remove(rng.gen_range(0..k))),
    }
}

/// What a [`Behaviour::Oversize`] node sends instead of broadcasting
/// `message`: its proposals and new views with the block padded past
/// `frame_bytes_max`, the rest as it is.
pub fn oversize(
    f: &Faulty,
    frame_bytes_max: usize,
    message: SignedMessage,
) -> Vec<(usize, SignedMessage)> {
    let pad = |block: &Block| {
        let mut padded = block.clone();
        let Some(tx) = block.transactions.first().cloned() else {
            return padded;
        };
        let copies = frame_bytes_max / cairn_core::codec::encoded_len(&tx) + 1;
        padded.transactions = vec![tx; copies];
        padded
    };
    let padded = match &message.message {
        Message::PrePrepare {
            view,
            height,
            block,
        } => Some(Message::PrePrepare {
            view: *view,
            height: *height,
            block: pad(block),
        }),
        Message::NewView {
            view,
            height,
            view_changes,
            proposal,
        } => Some(Message::NewView {
            view: *view,
            height: *height,
            view_changes: view_changes.clone(),
            proposal: pad(proposal),
        }),
        Message::Commit { .. } => return vec![],
        _ => None,
    };
    let out = padded.map_or(message, |m| sign(f, m));
    (0..f.n)
        .filter(|p| *p != f.me)
        .map(|p| (p, out.clone()))
        .collect()
}
