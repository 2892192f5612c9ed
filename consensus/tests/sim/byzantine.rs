//! Byzantine behaviours: a faulty validator runs a real replica, and the
//! simulator rewrites what it sends (with its real key, so signatures of
//! forged content still verify unless the behaviour breaks them on purpose).

use cairn_consensus::{Message, SignedMessage};
use cairn_core::{
    Certificate, CommitSignature, Hash, Height, Keypair, Signature, ValidatorIndex, View,
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
}

pub const ALL: [Behaviour; 6] = [
    Behaviour::Equivocate,
    Behaviour::ConflictingVotes,
    Behaviour::BadSignatures,
    Behaviour::WithholdVotes,
    Behaviour::Flood,
    Behaviour::Censor,
];

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
