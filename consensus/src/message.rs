//! Protocol messages, what their signatures cover, and signature checks.
//!
//! Prepare and commit signatures are core [`Vote`] signatures, so commit
//! signatures can be assembled into a [`Certificate`] as they are. The other
//! messages are signed under their own domain tags; every signed byte string
//! starts with the chain id, so a message from another chain never verifies.

use serde::{Deserialize, Serialize};

use cairn_core::{
    codec, quorum, verify, Block, Certificate, CommitSignature, Hash, Height, Keypair, PublicKey,
    Signature, ValidatorIndex, View, Vote, VoteKind,
};

/// Domain tag of pre-prepare signatures.
pub const PRE_PREPARE_DOMAIN: &[u8] = b"cairn/pre-prepare/v1\0";
/// Domain tag of view-change signatures.
pub const VIEW_CHANGE_DOMAIN: &[u8] = b"cairn/view-change/v1\0";
/// Domain tag of new-view signatures.
pub const NEW_VIEW_DOMAIN: &[u8] = b"cairn/new-view/v1\0";
/// Domain tag of decided-announcement signatures.
pub const DECIDED_DOMAIN: &[u8] = b"cairn/decided/v1\0";

/// A consensus message and the signature of the validator that sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedMessage {
    pub from: ValidatorIndex,
    pub message: Message,
    pub signature: Signature,
}

/// Proof that a quorum prepared the block `block_hash` in `view`: 2f+1
/// prepare-vote signatures (in the shape of commit signatures) over its
/// hash. The block itself travels beside it, at most once per message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCertificate {
    pub view: View,
    pub block_hash: Hash,
    pub signatures: Vec<CommitSignature>,
}

/// The messages of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The primary of `view` proposes `block` for `height`.
    PrePrepare {
        view: View,
        height: Height,
        block: Block,
    },
    /// The sender accepted the proposal `block_hash` in `view`.
    Prepare {
        view: View,
        height: Height,
        block_hash: Hash,
    },
    /// The sender saw 2f+1 prepares for `block_hash` in `view`.
    Commit {
        view: View,
        height: Height,
        block_hash: Hash,
    },
    /// The sender gave up on the views below `new_view` at `height`; it
    /// carries the sender's highest prepared certificate at that height
    /// and, sent on its own, that certificate's block (`prepared_block`,
    /// not covered by the signature: the certificate names its hash).
    /// Inside a [`Message::NewView`] the block is left out.
    ViewChange {
        new_view: View,
        height: Height,
        prepared: Option<PreparedCertificate>,
        prepared_block: Option<Block>,
    },
    /// The primary of `view` starts it: 2f+1 view changes for `view`
    /// (without their prepared blocks) and the proposal they justify (the
    /// block of the highest prepared certificate among them, or a fresh
    /// block when there is none): one block per message.
    NewView {
        view: View,
        height: Height,
        view_changes: Vec<SignedMessage>,
        proposal: Block,
    },
    /// The sender committed `certificate.height`: sent to a peer whose
    /// messages show it is behind.
    Decided { certificate: Certificate },
}

impl Message {
    /// The height the message is about. A `Decided` is about the height
    /// above the certificate: the height its sender works on.
    pub fn height(&self) -> Height {
        match self {
            Message::PrePrepare { height, .. }
            | Message::Prepare { height, .. }
            | Message::Commit { height, .. }
            | Message::ViewChange { height, .. }
            | Message::NewView { height, .. } => *height,
            Message::Decided { certificate } => certificate.height.next(),
        }
    }

    /// The domain tag and bytes the sender's signature covers.
    fn signing_bytes(&self, chain_id: &str) -> (&'static [u8], Vec<u8>) {
        match self {
            Message::Prepare { .. } | Message::Commit { .. } => {
                unreachable!("prepares and commits are signed as core votes")
            }
            Message::PrePrepare {
                view,
                height,
                block,
            } => (
                PRE_PREPARE_DOMAIN,
                codec::encode(&(chain_id, view, height, block.hash())),
            ),
            Message::ViewChange {
                new_view,
                height,
                prepared,
                prepared_block: _,
            } => (
                VIEW_CHANGE_DOMAIN,
                codec::encode(&(chain_id, new_view, height, prepared)),
            ),
            Message::NewView {
                view,
                height,
                view_changes,
                proposal,
            } => {
                let justification: Vec<_> =
                    view_changes.iter().map(|m| (m.from, m.signature)).collect();
                (
                    NEW_VIEW_DOMAIN,
                    codec::encode(&(chain_id, view, height, proposal.hash(), justification)),
                )
            }
            Message::Decided { certificate } => {
                (DECIDED_DOMAIN, codec::encode(&(chain_id, certificate)))
            }
        }
    }

    /// The core vote a prepare or commit message stands for.
    pub fn vote(&self, chain_id: &str) -> Option<Vote> {
        let (kind, view, height, block_hash) = match self {
            Message::Prepare {
                view,
                height,
                block_hash,
            } => (VoteKind::Prepare, view, height, block_hash),
            Message::Commit {
                view,
                height,
                block_hash,
            } => (VoteKind::Commit, view, height, block_hash),
            _ => return None,
        };
        Some(Vote {
            kind,
            chain_id: chain_id.to_string(),
            height: *height,
            view: *view,
            block_hash: *block_hash,
        })
    }
}

impl SignedMessage {
    /// Signs `message` as validator `from` holding `key`. Inside the replica
    /// only the safety rules call this; it is public for tools and tests.
    pub fn sign(
        chain_id: &str,
        from: ValidatorIndex,
        key: &Keypair,
        message: Message,
    ) -> SignedMessage {
        let signature = match message.vote(chain_id) {
            Some(vote) => vote.sign(key),
            None => {
                let (domain, bytes) = message.signing_bytes(chain_id);
                key.sign(domain, &bytes)
            }
        };
        SignedMessage {
            from,
            message,
            signature,
        }
    }

    /// This message as a new view carries it: a view change without its
    /// prepared block (the signature does not cover the block, so it still
    /// verifies).
    pub fn without_block(&self) -> SignedMessage {
        let mut stripped = self.clone();
        if let Message::ViewChange { prepared_block, .. } = &mut stripped.message {
            *prepared_block = None;
        }
        stripped
    }

    /// Whether the signature is `from`'s over this message on this chain.
    /// Checks the outer signature only, not certificates carried inside.
    pub fn verify(&self, chain_id: &str, validators: &[PublicKey]) -> bool {
        let Some(key) = validators.get(self.from.get()) else {
            return false;
        };
        match self.message.vote(chain_id) {
            Some(vote) => vote.verify(key, &self.signature),
            None => {
                let (domain, bytes) = self.message.signing_bytes(chain_id);
                verify(key, domain, &bytes, &self.signature).is_ok()
            }
        }
    }
}

impl PreparedCertificate {
    /// Whether 2f+1 distinct validators signed a prepare vote for this
    /// block hash at `height` in `view`.
    pub fn verify(&self, chain_id: &str, validators: &[PublicKey], height: Height) -> bool {
        let vote = Vote {
            kind: VoteKind::Prepare,
            chain_id: chain_id.to_string(),
            height,
            view: self.view,
            block_hash: self.block_hash,
        };
        signatures_valid(&vote, &self.signatures, validators)
    }
}

/// Whether `signatures` hold 2f+1 distinct validators' valid signatures of
/// `vote`. Cheap checks first; stops at the first bad signature.
pub fn signatures_valid(
    vote: &Vote,
    signatures: &[CommitSignature],
    validators: &[PublicKey],
) -> bool {
    if signatures.len() < quorum(validators.len()) || signatures.len() > validators.len() {
        return false;
    }
    let mut seen = vec![false; validators.len()];
    for s in signatures {
        match seen.get_mut(s.validator.get()) {
            Some(flag) if !*flag => *flag = true,
            _ => return false,
        }
    }
    signatures
        .iter()
        .all(|s| vote.verify(&validators[s.validator.get()], &s.signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::{tx_root, BlockHeader, PublicKey};

    fn keys(n: u8) -> (Vec<Keypair>, Vec<PublicKey>) {
        let keys: Vec<_> = (0..n).map(|i| Keypair::from_seed([i + 1; 32])).collect();
        let publics = keys.iter().map(|k| k.public()).collect();
        (keys, publics)
    }

    fn block() -> Block {
        Block {
            header: BlockHeader {
                height: Height(1),
                parent_hash: Hash::ZERO,
                view: View(0),
                proposer: PublicKey([0; 32]),
                timestamp_ms: 5,
                tx_root: tx_root([]),
                state_root: Hash::ZERO,
            },
            transactions: vec![],
        }
    }

    #[test]
    fn signatures_bind_sender_chain_and_content() {
        let (keys, validators) = keys(4);
        let messages = [
            Message::PrePrepare {
                view: View(0),
                height: Height(1),
                block: block(),
            },
            Message::Prepare {
                view: View(0),
                height: Height(1),
                block_hash: block().hash(),
            },
            Message::ViewChange {
                new_view: View(1),
                height: Height(1),
                prepared: None,
                prepared_block: None,
            },
        ];
        for message in messages {
            let signed = SignedMessage::sign("c", ValidatorIndex(2), &keys[2], message);
            assert!(signed.verify("c", &validators));
            assert!(!signed.verify("other", &validators));
            let mut forged = signed.clone();
            forged.from = ValidatorIndex(1);
            assert!(!forged.verify("c", &validators));
            forged.from = ValidatorIndex(9);
            assert!(!forged.verify("c", &validators));
        }
    }

    #[test]
    fn commit_message_signature_is_the_certificate_signature() {
        let (keys, _) = keys(4);
        let hash = block().hash();
        let signed = SignedMessage::sign(
            "c",
            ValidatorIndex(0),
            &keys[0],
            Message::Commit {
                view: View(3),
                height: Height(1),
                block_hash: hash,
            },
        );
        let cert = Certificate {
            height: Height(1),
            view: View(3),
            block_hash: hash,
            signatures: vec![],
        };
        assert!(cert.vote("c").verify(&keys[0].public(), &signed.signature));
    }

    #[test]
    fn prepared_certificate_needs_a_quorum_of_distinct_signers() {
        let (keys, validators) = keys(4);
        let vote = Vote {
            kind: VoteKind::Prepare,
            chain_id: "c".into(),
            height: Height(1),
            view: View(0),
            block_hash: block().hash(),
        };
        let sig = |i: u16| CommitSignature {
            validator: ValidatorIndex(i),
            signature: vote.sign(&keys[i as usize]),
        };
        let cert = |signatures| PreparedCertificate {
            view: View(0),
            block_hash: block().hash(),
            signatures,
        };
        assert!(cert(vec![sig(0), sig(1), sig(3)]).verify("c", &validators, Height(1)));
        assert!(!cert(vec![sig(0), sig(1), sig(3)]).verify("c", &validators, Height(2)));
        assert!(!cert(vec![sig(0), sig(1)]).verify("c", &validators, Height(1)));
        assert!(!cert(vec![sig(0), sig(1), sig(1)]).verify("c", &validators, Height(1)));
        let mut wrong = sig(3);
        wrong.validator = ValidatorIndex(2);
        assert!(!cert(vec![sig(0), sig(1), wrong]).verify("c", &validators, Height(1)));
    }
}
