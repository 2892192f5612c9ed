//! Blocks, consensus votes and commit certificates.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::crypto::{self, Keypair};
use crate::tx::SignedTransaction;
use crate::types::{Hash, Height, PublicKey, Signature, ValidatorIndex, View};

/// Domain tag of block hashes.
pub const BLOCK_DOMAIN: &[u8] = b"cairn/block/v1\0";
/// Domain tag of consensus votes (prepare and commit).
pub const VOTE_DOMAIN: &[u8] = b"cairn/vote/v1\0";

/// What a block commits to. The block hash is the hash of the header alone;
/// the header commits to the transactions through `tx_root`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub height: Height,
    pub parent_hash: Hash,
    pub view: View,
    pub proposer: PublicKey,
    pub timestamp_ms: u64,
    pub tx_root: Hash,
    /// The state root after applying this block's transactions.
    pub state_root: Hash,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub header: BlockHeader,
    pub transactions: Vec<SignedTransaction>,
}

impl BlockHeader {
    pub fn hash(&self) -> Hash {
        Hash::digest(&[BLOCK_DOMAIN, &codec::encode(self)])
    }
}

impl Block {
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    pub fn height(&self) -> Height {
        self.header.height
    }
}

/// The two vote kinds of the normal case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VoteKind {
    Prepare,
    Commit,
}

/// What a validator signs when it votes: kind, chain, height, view and the
/// block hash. A commit certificate is 2f+1 commit-vote signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub kind: VoteKind,
    pub chain_id: String,
    pub height: Height,
    pub view: View,
    pub block_hash: Hash,
}

impl Vote {
    pub fn signing_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn sign(&self, key: &Keypair) -> Signature {
        key.sign(VOTE_DOMAIN, &self.signing_bytes())
    }

    pub fn verify(&self, key: &PublicKey, signature: &Signature) -> bool {
        crypto::verify(key, VOTE_DOMAIN, &self.signing_bytes(), signature).is_ok()
    }
}

/// One validator's commit-vote signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSignature {
    pub validator: ValidatorIndex,
    pub signature: Signature,
}

/// Proof that a quorum committed a block: commit-vote signatures of at least
/// 2f+1 distinct validators over (height, view, block hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub height: Height,
    pub view: View,
    pub block_hash: Hash,
    pub signatures: Vec<CommitSignature>,
}

/// Why a certificate does not prove its block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("certificate is for block {got}, expected {expected}")]
    WrongBlock { expected: Hash, got: Hash },
    #[error("certificate is for height {got}, expected {expected}")]
    WrongHeight { expected: Height, got: Height },
    #[error("signer index {0} is not a validator")]
    UnknownSigner(ValidatorIndex),
    #[error("validator {0} signed twice")]
    DuplicateSigner(ValidatorIndex),
    #[error("signature of validator {0} does not verify")]
    BadSignature(ValidatorIndex),
    #[error("{got} signatures, {needed} needed")]
    TooFewSignatures { got: usize, needed: usize },
}

impl Certificate {
    pub fn vote(&self, chain_id: &str) -> Vote {
        Vote {
            kind: VoteKind::Commit,
            chain_id: chain_id.to_string(),
            height: self.height,
            view: self.view,
            block_hash: self.block_hash,
        }
    }

    /// Checks that the certificate proves `header` under `validators`: every
    /// signer is a distinct validator, every signature verifies, and there are
    /// at least 2f+1 of them.
    pub fn verify(
        &self,
        chain_id: &str,
        validators: &[PublicKey],
        header: &BlockHeader,
    ) -> Result<(), CertificateError> {
        let hash = header.hash();
        if self.block_hash != hash {
            return Err(CertificateError::WrongBlock {
                expected: hash,
                got: self.block_hash,
            });
        }
        if self.height != header.height {
            return Err(CertificateError::WrongHeight {
                expected: header.height,
                got: self.height,
            });
        }
        let needed = crate::quorum(validators.len());
        if self.signatures.len() < needed {
            return Err(CertificateError::TooFewSignatures {
                got: self.signatures.len(),
                needed,
            });
        }
        let vote = self.vote(chain_id);
        let mut seen = BTreeSet::new();
        for sig in &self.signatures {
            let key = validators
                .get(sig.validator.get())
                .ok_or(CertificateError::UnknownSigner(sig.validator))?;
            if !seen.insert(sig.validator) {
                return Err(CertificateError::DuplicateSigner(sig.validator));
            }
            if !vote.verify(key, &sig.signature) {
                return Err(CertificateError::BadSignature(sig.validator));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BlockHeader {
        BlockHeader {
            height: Height(3),
            parent_hash: Hash::digest(&[b"parent"]),
            view: View(1),
            proposer: PublicKey([9; 32]),
            timestamp_ms: 1_700_000_000_000,
            tx_root: crate::merkle::tx_root([]),
            state_root: Hash::digest(&[b"state"]),
        }
    }

    fn certificate(keys: &[Keypair], signers: &[u16], header: &BlockHeader) -> Certificate {
        let mut cert = Certificate {
            height: header.height,
            view: header.view,
            block_hash: header.hash(),
            signatures: vec![],
        };
        let vote = cert.vote("c");
        cert.signatures = signers
            .iter()
            .map(|&i| CommitSignature {
                validator: ValidatorIndex(i),
                signature: vote.sign(&keys[i as usize]),
            })
            .collect();
        cert
    }

    #[test]
    fn certificate_rules() {
        let keys: Vec<_> = (0..4u8).map(|i| Keypair::from_seed([i; 32])).collect();
        let validators: Vec<_> = keys.iter().map(|k| k.public()).collect();
        let h = header();
        assert_eq!(
            certificate(&keys, &[0, 1, 2], &h).verify("c", &validators, &h),
            Ok(())
        );
        assert_eq!(
            certificate(&keys, &[0, 1], &h).verify("c", &validators, &h),
            Err(CertificateError::TooFewSignatures { got: 2, needed: 3 })
        );
        assert_eq!(
            certificate(&keys, &[0, 1, 1], &h).verify("c", &validators, &h),
            Err(CertificateError::DuplicateSigner(ValidatorIndex(1)))
        );
        assert!(certificate(&keys, &[0, 1, 2], &h)
            .verify("other-chain", &validators, &h)
            .is_err());
        let mut other = h.clone();
        other.state_root = Hash::ZERO;
        assert!(matches!(
            certificate(&keys, &[0, 1, 2], &h).verify("c", &validators, &other),
            Err(CertificateError::WrongBlock { .. })
        ));
        let mut forged = certificate(&keys, &[0, 1, 2], &h);
        forged.signatures[2].signature = forged.signatures[1].signature;
        assert_eq!(
            forged.verify("c", &validators, &h),
            Err(CertificateError::BadSignature(ValidatorIndex(2)))
        );
    }

    #[test]
    fn block_codec_round_trip() {
        let block = Block {
            header: header(),
            transactions: vec![],
        };
        let bytes = codec::encode(&block);
        assert_eq!(codec::decode::<Block>(&bytes), Ok(block));
    }
}
