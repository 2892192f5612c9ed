//! Transactions: a transfer of funds, signed by the sender's key.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::crypto::{self, Keypair};
use crate::limits::CHAIN_ID_BYTES_MAX;
use crate::types::{Hash, PublicKey, Signature};

/// Domain tag of transaction signatures.
pub const TX_DOMAIN: &[u8] = b"cairn/tx/v1\0";

/// Move `amount` from `from` to `to`. `nonce` must equal the sender's account
/// nonce when the transaction is applied; the chain id binds the signature to
/// one chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub chain_id: String,
    pub from: PublicKey,
    pub to: PublicKey,
    pub amount: u64,
    pub nonce: u64,
}

/// A transfer with the sender's signature over
/// `TX_DOMAIN || encode(transfer)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTransaction {
    pub transfer: Transfer,
    pub signature: Signature,
}

/// Why a transaction is invalid. `code` is the API's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("signature does not verify")]
    InvalidSignature,
    #[error("transaction is for chain {got:?}, this is {expected:?}")]
    WrongChain { expected: String, got: String },
    #[error("amount must be greater than zero")]
    ZeroAmount,
    #[error("nonce {got} already used: the account's next nonce is {expected}")]
    NonceTooLow { expected: u64, got: u64 },
    #[error("nonce {got} is ahead of the account's next nonce {expected}")]
    NonceTooHigh { expected: u64, got: u64 },
    #[error("balance {balance} does not cover amount {amount}")]
    InsufficientFunds { balance: u64, amount: u64 },
    #[error("crediting the receiver would overflow its balance")]
    BalanceOverflow,
    /// `from` or `to` is a small-order ed25519 point, which anyone can sign
    /// for; see [`PublicKey::is_weak`].
    #[error(
        "{role} address {address} is a weak key (a small-order ed25519 point anyone can \
         sign for): refused"
    )]
    WeakAddress {
        role: &'static str,
        address: PublicKey,
    },
}

impl TxError {
    /// The snake_case code the API reports for this error.
    pub fn code(&self) -> &'static str {
        match self {
            TxError::InvalidSignature => "invalid_signature",
            TxError::WrongChain { .. } => "wrong_chain",
            TxError::ZeroAmount => "invalid_amount",
            TxError::NonceTooLow { .. } => "nonce_too_low",
            TxError::NonceTooHigh { .. } => "nonce_too_high",
            TxError::InsufficientFunds { .. } => "insufficient_funds",
            TxError::BalanceOverflow => "balance_overflow",
            TxError::WeakAddress { .. } => "invalid_address",
        }
    }
}

impl Transfer {
    /// The exact bytes the sender signs (without the domain tag).
    pub fn signing_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }
}

impl SignedTransaction {
    pub fn sign(transfer: Transfer, key: &Keypair) -> SignedTransaction {
        debug_assert_eq!(transfer.from, key.public(), "the sender signs");
        let signature = key.sign(TX_DOMAIN, &transfer.signing_bytes());
        SignedTransaction {
            transfer,
            signature,
        }
    }

    /// SHA-256 of the signed encoding: the transaction's identity.
    pub fn hash(&self) -> Hash {
        Hash::digest(&[&codec::encode(self)])
    }

    /// `TX_DOMAIN || encode(transfer)`: what the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut bytes = TX_DOMAIN.to_vec();
        codec::encode_into(&self.transfer, &mut bytes);
        bytes
    }

    pub fn verify_signature(&self) -> Result<(), TxError> {
        crypto::verify(
            &self.transfer.from,
            &[],
            &self.signed_message(),
            &self.signature,
        )
        .map_err(|_| TxError::InvalidSignature)
    }

    /// The checks that need no state: chain id, amount, and that neither
    /// `from` nor `to` is a weak key ([`PublicKey::is_weak`]). (The
    /// signature is checked separately so it can be checked once and in
    /// batches.) Block execution runs these too ([`crate::state::Overlay::apply`]),
    /// so they are consensus rules.
    ///
    /// Cost: two lookups in the 14 small-order encodings, tens of
    /// nanoseconds. Whether an address is a curve point at all is not
    /// checked here (a decompression, 6 to 9 µs, and this runs several
    /// times per transaction per validator): a `to` that is no point only
    /// burns the sender's money, and a `from` that is no point never has a
    /// valid signature.
    pub fn check_stateless(&self, chain_id: &str) -> Result<(), TxError> {
        let t = &self.transfer;
        if t.chain_id != chain_id || t.chain_id.len() > CHAIN_ID_BYTES_MAX {
            return Err(TxError::WrongChain {
                expected: chain_id.to_string(),
                got: t.chain_id.clone(),
            });
        }
        if t.amount == 0 {
            return Err(TxError::ZeroAmount);
        }
        for (role, address) in [("from", t.from), ("to", t.to)] {
            if address.is_weak() {
                return Err(TxError::WeakAddress { role, address });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn transfer(amount: u64, nonce: u64) -> SignedTransaction {
        let from = Keypair::from_seed([1; 32]);
        SignedTransaction::sign(
            Transfer {
                chain_id: "test-chain".into(),
                from: from.public(),
                to: Keypair::from_seed([2; 32]).public(),
                amount,
                nonce,
            },
            &from,
        )
    }

    #[test]
    fn stateless_checks() {
        assert_eq!(transfer(1, 0).check_stateless("test-chain"), Ok(()));
        assert_eq!(
            transfer(0, 0).check_stateless("test-chain"),
            Err(TxError::ZeroAmount)
        );
        assert!(matches!(
            transfer(1, 0).check_stateless("other"),
            Err(TxError::WrongChain { .. })
        ));
    }

    #[test]
    fn signature_covers_chain_id() {
        let mut tx = transfer(5, 0);
        tx.transfer.chain_id = "other-chain".into();
        assert_eq!(tx.verify_signature(), Err(TxError::InvalidSignature));
    }

    proptest! {
        #[test]
        fn codec_round_trip(amount in any::<u64>(), nonce in any::<u64>(), chain in "[a-z0-9-]{0,64}") {
            let mut tx = transfer(amount, nonce);
            tx.transfer.chain_id = chain;
            let bytes = codec::encode(&tx);
            prop_assert_eq!(codec::decode::<SignedTransaction>(&bytes), Ok(tx));
        }

        #[test]
        fn signed_transactions_verify(amount in 1u64.., nonce in any::<u64>()) {
            prop_assert_eq!(transfer(amount, nonce).verify_signature(), Ok(()));
        }

        /// Flipping any bit of the encoding makes the transaction fail to
        /// decode or fail to verify: nothing signed can be altered.
        #[test]
        fn any_changed_byte_fails(amount in 1u64.., nonce in any::<u64>(), index in any::<prop::sample::Index>(), bit in 0u8..8) {
            let tx = transfer(amount, nonce);
            let mut bytes = codec::encode(&tx);
            let i = index.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(changed) = codec::decode::<SignedTransaction>(&bytes) {
                prop_assert_ne!(&changed, &tx);
                prop_assert_eq!(changed.verify_signature(), Err(TxError::InvalidSignature));
            }
        }
    }

    fn with_to(to: [u8; 32]) -> SignedTransaction {
        let mut tx = transfer(1, 0);
        tx.transfer.to = PublicKey(to);
        tx
    }

    fn with_from(from: [u8; 32]) -> SignedTransaction {
        let mut tx = transfer(1, 0);
        tx.transfer.from = PublicKey(from);
        tx
    }

    /// Issue 8: every encoding of a small-order point is refused as sender
    /// and as receiver, canonical or not.
    #[test]
    fn small_order_addresses_are_refused_as_from_and_to() {
        for (i, bytes) in crypto::small_order_encodings().into_iter().enumerate() {
            for (side, tx) in [("to", with_to(bytes)), ("from", with_from(bytes))] {
                assert_eq!(
                    tx.check_stateless("test-chain").map_err(|e| e.code()),
                    Err("invalid_address"),
                    "small-order encoding {i} as {side}: {}",
                    hex::encode(bytes)
                );
            }
        }
    }

    /// 32 bytes that are no curve point at all (`[2; 32]` does not
    /// decompress) are not weak: a transfer to them only burns the sender's
    /// money, and one from them never has a valid signature.
    #[test]
    fn an_address_off_the_curve_is_not_weak_and_cannot_send() {
        assert_eq!(with_to([2; 32]).check_stateless("test-chain"), Ok(()));
        let from = with_from([2; 32]);
        assert_eq!(from.check_stateless("test-chain"), Ok(()));
        assert_eq!(from.verify_signature(), Err(TxError::InvalidSignature));
    }

    /// Keys made from a secret are never refused as weak.
    #[test]
    fn normal_keys_pass() {
        for seed in 0..=255u8 {
            let key = Keypair::from_seed([seed; 32]).public();
            assert_eq!(with_to(key.0).check_stateless("test-chain"), Ok(()));
            assert_eq!(with_from(key.0).check_stateless("test-chain"), Ok(()));
        }
    }
}
