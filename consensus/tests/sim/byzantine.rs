//! Byzantine behaviours: a faulty validator runs a real replica, and the
//! simulator rewrites what it sends (with its real key, so signatures of
//! forged content still verify unless the behaviour breaks them on purpose).

use std::collections::BTreeMap;

use cairn_consensus::{Message, SignedMessage, TIMESTAMP_FUTURE_MS_MAX};
use cairn_core::{
    Block, Certificate, CommitSignature, Hash, Height, Keypair, Signature, ValidatorIndex, View,
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
    /// One of the two honest replicas of a twin validator (same key, see
    /// `Scenario::twins`); its messages go out unchanged.
    Twin,
}

pub const ALL: [Behaviour; 10] = [
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
}

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
