//! Cairn core: the types every other crate shares, the one canonical codec,
//! ed25519 signing with domain separation, and the state transition.
//!
//! This crate does no IO: no files, sockets, clocks or thread RNG. Everything
//! here is a deterministic function of its inputs, which is what lets every
//! validator reach the same verdict and the simulator replay any run.
//!
//! ```
//! use cairn_core::{Keypair, Transfer, SignedTransaction};
//! let alice = Keypair::from_seed([1; 32]);
//! let bob = Keypair::from_seed([2; 32]);
//! let tx = Transfer { chain_id: "demo".into(), from: alice.public(), to: bob.public(), amount: 5, nonce: 0 };
//! let signed = SignedTransaction::sign(tx, &alice);
//! assert!(signed.verify_signature().is_ok());
//! ```

pub mod api;
mod block;
pub mod codec;
mod crypto;
pub mod executor;
pub mod limits;
pub mod merkle;
pub mod state;
mod tx;
pub mod tx_batch;
mod types;
pub mod verify;

pub use block::{
    Block, BlockHeader, Certificate, CertificateError, CommitSignature, Vote, VoteKind,
};
pub use crypto::{verify, verify_batch, Keypair, SignatureError};
pub use merkle::tx_root;
pub use tx::{SignedTransaction, Transfer, TxError};
pub use types::{Hash, Height, ParseHexError, PublicKey, Signature, ValidatorIndex, View};

/// Number of faults tolerated by `n` validators: `f = (n - 1) / 3`.
pub fn max_faulty(n: usize) -> usize {
    n.saturating_sub(1) / 3
}

/// Matching votes needed among `n` validators: the least `q` with
/// `2q - n >= f + 1`, so any two quorums share an honest validator, for every
/// `n` (not only `n = 3f + 1`). It is `2f + 1` when `n = 3f + 1` and never
/// more than `n - f`, so the honest validators alone always make a quorum.
pub fn quorum(n: usize) -> usize {
    (n + max_faulty(n)) / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_sizes() {
        assert_eq!((quorum(1), quorum(2), quorum(3)), (1, 2, 2));
        assert_eq!((quorum(4), quorum(7)), (3, 5));
        assert_eq!(max_faulty(4), 1);
        assert_eq!(max_faulty(7), 2);
        assert_eq!((quorum(5), quorum(6), quorum(10)), (4, 4, 7));
    }

    /// Safety: two quorums intersect in at least f + 1 validators (so in an
    /// honest one). Liveness: the n - f honest validators form a quorum.
    #[test]
    fn quorums_intersect_in_an_honest_validator_for_every_n() {
        for n in 1..=crate::limits::VALIDATORS_MAX {
            let (q, f) = (quorum(n), max_faulty(n));
            assert!(
                2 * q > n + f,
                "n = {n}: quorums of {q} may not share an honest validator"
            );
            assert!(
                q <= n - f,
                "n = {n}: honest validators alone cannot make a quorum of {q}"
            );
        }
    }
}
