//! Checking what a node answers without trusting the node: the verifier the
//! wallet, the tests and any client use.
//!
//! Trust comes from the genesis file alone: its chain id and validator set.
//! An answer is believed when a block header is certified by a quorum of
//! distinct genesis validators (their commit votes verify over the header's
//! hash) and the answer is proved under that header: an account by a sparse
//! Merkle proof under `state_root`, a transaction by an RFC 6962 proof under
//! `tx_root`, a block by recomputing its hash and `tx_root` from its fields
//! and transactions.

use crate::api::{
    AccountJson, BlockJson, CertificateJson, CommitSignatureJson, HeaderJson, StateProofJson,
    TxMerkleProofJson, TxStatusJson,
};
use crate::block::{BlockHeader, Certificate, CertificateError, CommitSignature};
use crate::merkle::{self, ProofError, ProofLeaf, StateProof, TxProof};
use crate::state::Account;
use crate::tx::SignedTransaction;
use crate::types::{Hash, Height, PublicKey, Signature, ValidatorIndex, View};

/// What a client trusts: the chain id, validators and genesis block hash
/// of its genesis file.
#[derive(Clone, Copy, Debug)]
pub struct Trust<'a> {
    pub chain_id: &'a str,
    pub validators: &'a [PublicKey],
    pub genesis_hash: Hash,
}

/// Why an answer is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the answer has no {0}")]
    Missing(&'static str),
    #[error("the answer is malformed: {0}")]
    Malformed(String),
    #[error("the answer contradicts itself: {0}")]
    Mismatch(String),
    #[error("the commit certificate does not prove the header: {0}")]
    Certificate(#[from] CertificateError),
    #[error("the Merkle proof does not hold: {0}")]
    Proof(#[from] ProofError),
}

fn parse<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, VerifyError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| VerifyError::Malformed(format!("{what}: {e}")))
}

/// The header an answer describes; its `hash` field must be its hash.
pub fn header_from_json(json: &HeaderJson) -> Result<BlockHeader, VerifyError> {
    let header = BlockHeader {
        height: Height(json.height),
        parent_hash: parse("parent_hash", &json.parent_hash)?,
        view: View(json.view),
        proposer: parse("proposer", &json.proposer)?,
        timestamp_ms: json.timestamp_ms,
        tx_root: parse("tx_root", &json.tx_root)?,
        state_root: parse("state_root", &json.state_root)?,
    };
    let claimed: Hash = parse("hash", &json.hash)?;
    if header.hash() != claimed {
        return Err(VerifyError::Mismatch(format!(
            "the header hashes to {}, not {claimed}",
            header.hash()
        )));
    }
    Ok(header)
}

/// The JSON form of a header.
pub fn header_json(header: &BlockHeader) -> HeaderJson {
    HeaderJson {
        height: header.height.0,
        hash: header.hash().to_hex(),
        parent_hash: header.parent_hash.to_hex(),
        view: header.view.0,
        proposer: header.proposer.to_hex(),
        timestamp_ms: header.timestamp_ms,
        tx_root: header.tx_root.to_hex(),
        state_root: header.state_root.to_hex(),
    }
}

/// The JSON form of a certificate (signers by public key); signers that are
/// not validators are left out (they cannot be in a stored certificate).
pub fn certificate_json(certificate: &Certificate, validators: &[PublicKey]) -> CertificateJson {
    CertificateJson {
        height: certificate.height.0,
        view: certificate.view.0,
        block_hash: certificate.block_hash.to_hex(),
        signatures: commit_signatures_json(certificate, validators),
    }
}

/// A certificate's signatures with their signers' public keys.
pub fn commit_signatures_json(
    certificate: &Certificate,
    validators: &[PublicKey],
) -> Vec<CommitSignatureJson> {
    certificate
        .signatures
        .iter()
        .filter_map(|s| {
            Some(CommitSignatureJson {
                validator: validators.get(s.validator.get())?.to_hex(),
                signature: s.signature.to_hex(),
            })
        })
        .collect()
}

fn signatures_from_json(
    signatures: &[CommitSignatureJson],
    validators: &[PublicKey],
) -> Result<Vec<CommitSignature>, VerifyError> {
    if signatures.len() > validators.len() {
        return Err(VerifyError::Malformed(format!(
            "{} signatures for {} validators",
            signatures.len(),
            validators.len()
        )));
    }
    signatures
        .iter()
        .map(|s| {
            let key: PublicKey = parse("signer", &s.validator)?;
            let index = validators.iter().position(|v| *v == key).ok_or_else(|| {
                VerifyError::Mismatch(format!("signer {key} is not a genesis validator"))
            })?;
            Ok(CommitSignature {
                validator: ValidatorIndex(index as _),
                signature: parse::<Signature>("signature", &s.signature)?,
            })
        })
        .collect()
}

/// The header, once a quorum of distinct genesis validators is shown to
/// have committed it (or, at height 0, once it is the trusted genesis
/// block, which has no certificate).
pub fn verify_certified_header(
    trust: Trust<'_>,
    header: &HeaderJson,
    commit: &CertificateJson,
) -> Result<BlockHeader, VerifyError> {
    let header = header_from_json(header)?;
    if header.height == Height(0) {
        return if header.hash() == trust.genesis_hash {
            Ok(header)
        } else {
            Err(VerifyError::Mismatch(format!(
                "block 0 is {}, the genesis file's is {}",
                header.hash(),
                trust.genesis_hash
            )))
        };
    }
    let certificate = Certificate {
        height: Height(commit.height),
        view: View(commit.view),
        block_hash: parse("block_hash", &commit.block_hash)?,
        signatures: signatures_from_json(&commit.signatures, trust.validators)?,
    };
    certificate.verify(trust.chain_id, trust.validators, &header)?;
    Ok(header)
}

fn state_proof_from_json(json: &StateProofJson) -> Result<StateProof, VerifyError> {
    if json.siblings.len() > merkle::KEY_BITS as usize {
        return Err(VerifyError::Malformed("too many siblings".into()));
    }
    Ok(StateProof {
        siblings: json
            .siblings
            .iter()
            .map(|s| parse("sibling", s))
            .collect::<Result<_, _>>()?,
        leaf: match &json.leaf {
            None => None,
            Some(leaf) => Some(ProofLeaf {
                key: parse("leaf key", &leaf.key)?,
                value: parse("leaf value", &leaf.value)?,
            }),
        },
    })
}

/// The JSON form of a state proof.
pub fn state_proof_json(proof: &StateProof) -> StateProofJson {
    StateProofJson {
        siblings: proof.siblings.iter().map(Hash::to_hex).collect(),
        leaf: proof.leaf.map(|l| crate::api::ProofLeafJson {
            key: l.key.to_hex(),
            value: l.value.to_hex(),
        }),
    }
}

/// The JSON form of a transaction's audit path.
pub fn tx_proof_json(proof: &TxProof) -> TxMerkleProofJson {
    TxMerkleProofJson {
        index: proof.index,
        size: proof.size,
        path: proof.path.iter().map(Hash::to_hex).collect(),
    }
}

/// Checks an account answer (asked with `?proof=true`): its balance and
/// nonce are those of the address under the `state_root` of a certified
/// header. Returns the height the answer holds at.
pub fn verify_account(trust: Trust<'_>, answer: &AccountJson) -> Result<Height, VerifyError> {
    let proof = answer.proof.as_ref().ok_or(VerifyError::Missing("proof"))?;
    let header = verify_certified_header(trust, &proof.header, &proof.commit)?;
    if header.height.0 != proof.height {
        return Err(VerifyError::Mismatch(format!(
            "the proof is for height {} but its header is {}",
            proof.height, header.height
        )));
    }
    let address: PublicKey = parse("address", &answer.address)?;
    let account = Account {
        balance: answer.balance,
        nonce: answer.nonce,
    };
    let merkle_proof = state_proof_from_json(&proof.merkle_proof)?;
    merkle::verify_account(&header.state_root, &address, &account, &merkle_proof)?;
    Ok(header.height)
}

/// Checks a transaction answer (asked with `?proof=true`) for `hash`: it
/// is committed, in a certified header's `tx_root`, at the height the
/// answer says. Returns that height.
pub fn verify_transaction(
    trust: Trust<'_>,
    hash: &Hash,
    answer: &TxStatusJson,
) -> Result<Height, VerifyError> {
    if answer.hash != hash.to_hex() {
        return Err(VerifyError::Mismatch(format!(
            "asked about {hash}, the answer is about {}",
            answer.hash
        )));
    }
    if answer.status != "committed" {
        return Err(VerifyError::Mismatch(format!(
            "status {:?} cannot be proved",
            answer.status
        )));
    }
    let proof = answer.proof.as_ref().ok_or(VerifyError::Missing("proof"))?;
    let header = verify_certified_header(trust, &proof.header, &proof.commit)?;
    if answer.height != Some(header.height.0) {
        return Err(VerifyError::Mismatch(format!(
            "the answer says height {:?}, the proof's header is {}",
            answer.height, header.height
        )));
    }
    let path = &proof.merkle_proof;
    if path.path.len() > 64 {
        return Err(VerifyError::Malformed("audit path too long".into()));
    }
    let tx_proof = TxProof {
        index: path.index,
        size: path.size,
        path: path
            .path
            .iter()
            .map(|p| parse("path", p))
            .collect::<Result<_, _>>()?,
    };
    merkle::verify_tx_proof(&header.tx_root, hash, &tx_proof)?;
    Ok(header.height)
}

/// Checks a block answer: every transaction's hash, the `tx_root` over
/// them, the block hash over the header fields, and the commit certificate
/// (or, at height 0, that it is the genesis block of the trusted file).
pub fn verify_block(trust: Trust<'_>, answer: &BlockJson) -> Result<BlockHeader, VerifyError> {
    let mut tx_hashes = Vec::with_capacity(answer.transactions.len());
    for entry in &answer.transactions {
        let tx = SignedTransaction::try_from(&entry.tx)
            .map_err(|e| VerifyError::Malformed(format!("transaction {}: {e}", entry.hash)))?;
        let hash = tx.hash();
        if hash.to_hex() != entry.hash {
            return Err(VerifyError::Mismatch(format!(
                "a transaction hashes to {hash}, not {}",
                entry.hash
            )));
        }
        tx_hashes.push(hash);
    }
    let header_json = HeaderJson {
        height: answer.height,
        hash: answer.hash.clone(),
        parent_hash: answer.parent_hash.clone(),
        view: answer.view,
        proposer: answer.proposer.clone(),
        timestamp_ms: answer.timestamp_ms,
        tx_root: answer.tx_root.clone(),
        state_root: answer.state_root.clone(),
    };
    let root = merkle::tx_root(&tx_hashes);
    if root.to_hex() != answer.tx_root {
        return Err(VerifyError::Mismatch(format!(
            "the transactions' root is {root}, not the header's {}",
            answer.tx_root
        )));
    }
    let commit = CertificateJson {
        height: answer.height,
        view: match answer.commit_view {
            Some(view) => view,
            None if answer.height == 0 => 0,
            None => return Err(VerifyError::Missing("commit_view")),
        },
        block_hash: answer.hash.clone(),
        signatures: answer.commit.clone(),
    };
    verify_certified_header(trust, &header_json, &commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AccountProofJson, TxJson, TxProofJson};
    use crate::block::Block;
    use crate::crypto::Keypair;
    use crate::state::MemoryState;
    use crate::tx::Transfer;

    const CHAIN: &str = "verify-chain";

    struct Fixture {
        validators: Vec<PublicKey>,
        state: MemoryState,
        block: Block,
        certificate: Certificate,
    }

    fn fixture() -> Fixture {
        let keys: Vec<Keypair> = (0..4u8).map(|i| Keypair::from_seed([i + 1; 32])).collect();
        let validators: Vec<PublicKey> = keys.iter().map(Keypair::public).collect();
        let alice = Keypair::from_seed([50; 32]);
        let state = MemoryState::from_accounts(
            [
                (
                    alice.public(),
                    Account {
                        balance: 90,
                        nonce: 1,
                    },
                ),
                (
                    PublicKey([7; 32]),
                    Account {
                        balance: 10,
                        nonce: 0,
                    },
                ),
            ]
            .into(),
        );
        let transactions: Vec<SignedTransaction> = (0..5)
            .map(|nonce| {
                SignedTransaction::sign(
                    Transfer {
                        chain_id: CHAIN.into(),
                        from: alice.public(),
                        to: PublicKey([7; 32]),
                        amount: 1,
                        nonce,
                    },
                    &alice,
                )
            })
            .collect();
        let hashes: Vec<Hash> = transactions.iter().map(|t| t.hash()).collect();
        let block = Block {
            header: BlockHeader {
                height: Height(3),
                parent_hash: Hash([2; 32]),
                view: View(1),
                proposer: validators[1],
                timestamp_ms: 77,
                tx_root: merkle::tx_root(&hashes),
                state_root: state.root(),
            },
            transactions,
        };
        let mut certificate = Certificate {
            height: Height(3),
            view: View(1),
            block_hash: block.hash(),
            signatures: vec![],
        };
        let vote = certificate.vote(CHAIN);
        for i in [0usize, 2, 3] {
            certificate.signatures.push(CommitSignature {
                validator: ValidatorIndex(i as _),
                signature: vote.sign(&keys[i]),
            });
        }
        Fixture {
            validators,
            state,
            block,
            certificate,
        }
    }

    fn trust(f: &Fixture) -> Trust<'_> {
        Trust {
            chain_id: CHAIN,
            validators: &f.validators,
            genesis_hash: Hash([0; 32]),
        }
    }

    fn account_answer(f: &Fixture, address: &PublicKey) -> AccountJson {
        let account = crate::state::StateView::account(&f.state, address);
        AccountJson {
            address: address.to_hex(),
            balance: account.balance,
            nonce: account.nonce,
            pending_nonce: None,
            proof: Some(AccountProofJson {
                height: 3,
                header: header_json(&f.block.header),
                commit: certificate_json(&f.certificate, &f.validators),
                merkle_proof: state_proof_json(&merkle::prove_account(f.state.tree(), address)),
            }),
        }
    }

    fn tx_answer(f: &Fixture, index: usize) -> TxStatusJson {
        let hashes: Vec<Hash> = f.block.transactions.iter().map(|t| t.hash()).collect();
        TxStatusJson {
            hash: hashes[index].to_hex(),
            status: "committed".into(),
            height: Some(3),
            error: None,
            reason: None,
            proof: Some(TxProofJson {
                header: header_json(&f.block.header),
                commit: certificate_json(&f.certificate, &f.validators),
                merkle_proof: tx_proof_json(&merkle::tx_proof(&hashes, index).unwrap()),
            }),
        }
    }

    /// Every field of an account answer's proof: changing any one makes
    /// verification fail.
    #[test]
    fn account_answers_verify_and_every_alteration_fails() {
        let f = fixture();
        let present = Keypair::from_seed([50; 32]).public();
        for address in [present, PublicKey([7; 32]), PublicKey([9; 32])] {
            let good = account_answer(&f, &address);
            assert_eq!(verify_account(trust(&f), &good), Ok(Height(3)));
            let mut alterations: Vec<AccountJson> = Vec::new();
            let mut a = good.clone();
            a.balance += 1;
            alterations.push(a);
            let mut a = good.clone();
            a.nonce += 1;
            alterations.push(a);
            let mut a = good.clone();
            a.address = PublicKey([8; 32]).to_hex();
            alterations.push(a);
            let mut a = good.clone();
            a.proof.as_mut().unwrap().height = 4;
            alterations.push(a);
            let mut a = good.clone();
            let p = a.proof.as_mut().unwrap();
            if let Some(s) = p.merkle_proof.siblings.first_mut() {
                *s = Hash([3; 32]).to_hex();
                alterations.push(a);
            }
            let mut a = good.clone();
            a.proof.as_mut().unwrap().header.state_root = Hash([1; 32]).to_hex();
            alterations.push(a);
            let mut a = good.clone();
            a.proof.as_mut().unwrap().header.timestamp_ms += 1;
            alterations.push(a);
            let mut a = good.clone();
            a.proof.as_mut().unwrap().commit.signatures[0].signature = Signature([1; 64]).to_hex();
            alterations.push(a);
            let mut a = good.clone();
            a.proof.as_mut().unwrap().commit.signatures.pop();
            alterations.push(a);
            let mut a = good.clone();
            let sigs = &mut a.proof.as_mut().unwrap().commit.signatures;
            sigs[1] = sigs[0].clone();
            alterations.push(a);
            let mut a = good.clone();
            a.proof = None;
            alterations.push(a);
            for (i, bad) in alterations.iter().enumerate() {
                assert!(
                    verify_account(trust(&f), bad).is_err(),
                    "alteration {i} of {address} verified"
                );
            }
            // Another chain id, or another validator set, is not trusted.
            let other = Trust {
                chain_id: "other-chain",
                ..trust(&f)
            };
            assert!(verify_account(other, &good).is_err());
            let strangers: Vec<PublicKey> = (10..14u8)
                .map(|i| Keypair::from_seed([i; 32]).public())
                .collect();
            let other = Trust {
                validators: &strangers,
                ..trust(&f)
            };
            assert!(verify_account(other, &good).is_err());
        }
    }

    #[test]
    fn transaction_answers_verify_and_every_alteration_fails() {
        let f = fixture();
        let hashes: Vec<Hash> = f.block.transactions.iter().map(|t| t.hash()).collect();
        for (index, hash) in hashes.iter().enumerate() {
            let good = tx_answer(&f, index);
            assert_eq!(verify_transaction(trust(&f), hash, &good), Ok(Height(3)));
            let other = hashes[(index + 1) % hashes.len()];
            assert!(verify_transaction(trust(&f), &other, &good).is_err());
            let mut a = good.clone();
            a.height = Some(2);
            assert!(verify_transaction(trust(&f), hash, &a).is_err());
            let mut a = good.clone();
            a.proof.as_mut().unwrap().merkle_proof.index ^= 1;
            assert!(verify_transaction(trust(&f), hash, &a).is_err());
            let mut a = good.clone();
            a.proof.as_mut().unwrap().merkle_proof.path[0] = Hash([4; 32]).to_hex();
            assert!(verify_transaction(trust(&f), hash, &a).is_err());
            let mut a = good.clone();
            a.proof.as_mut().unwrap().header.tx_root = Hash([4; 32]).to_hex();
            assert!(verify_transaction(trust(&f), hash, &a).is_err());
            let mut a = good.clone();
            a.status = "pending".into();
            assert!(verify_transaction(trust(&f), hash, &a).is_err());
        }
    }

    fn block_answer(f: &Fixture) -> BlockJson {
        let h = &f.block.header;
        BlockJson {
            height: h.height.0,
            hash: f.block.hash().to_hex(),
            parent_hash: h.parent_hash.to_hex(),
            view: h.view.0,
            proposer: h.proposer.to_hex(),
            timestamp_ms: h.timestamp_ms,
            tx_root: h.tx_root.to_hex(),
            state_root: h.state_root.to_hex(),
            transactions: f
                .block
                .transactions
                .iter()
                .map(|tx| crate::api::BlockTxJson {
                    hash: tx.hash().to_hex(),
                    tx: TxJson::from(tx),
                })
                .collect(),
            commit: commit_signatures_json(&f.certificate, &f.validators),
            commit_view: Some(f.certificate.view.0),
        }
    }

    #[test]
    fn block_answers_verify_and_alterations_fail() {
        let f = fixture();
        let good = block_answer(&f);
        assert!(verify_block(trust(&f), &good).is_ok());
        let mut a = good.clone();
        a.transactions[0].tx.amount += 1;
        assert!(verify_block(trust(&f), &a).is_err());
        let mut a = good.clone();
        a.transactions.pop();
        assert!(verify_block(trust(&f), &a).is_err());
        let mut a = good.clone();
        a.state_root = Hash([6; 32]).to_hex();
        assert!(verify_block(trust(&f), &a).is_err());
        let mut a = good.clone();
        a.commit_view = Some(0);
        assert!(verify_block(trust(&f), &a).is_err());
        let mut a = good.clone();
        a.commit.truncate(2);
        assert!(verify_block(trust(&f), &a).is_err());
        // Block 0 is believed only when it is the trusted genesis block.
        let mut genesis = f.block.clone();
        genesis.header.height = Height(0);
        genesis.transactions.clear();
        genesis.header.tx_root = merkle::tx_root([]);
        let g = Fixture {
            block: genesis.clone(),
            ..fixture()
        };
        let mut answer = block_answer(&g);
        answer.commit.clear();
        answer.commit_view = None;
        assert!(verify_block(trust(&f), &answer).is_err());
        let trusted = Trust {
            genesis_hash: genesis.hash(),
            ..trust(&f)
        };
        assert!(verify_block(trusted, &answer).is_ok());
    }
}
