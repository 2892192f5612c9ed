//! The binary batch format of `POST /v1/transactions/batch` with
//! `Content-Type: application/octet-stream`: what high-rate clients (and
//! `cairn-bench`) send instead of a JSON array.
//!
//! A batch is the canonical encoding ([`crate::codec`]) of a
//! `Vec<SignedTransaction>`, the same bytes the validators use for
//! transactions between themselves: an 8-byte little-endian count, then
//! that many transactions, each
//!
//! ```text
//! u64 chain id length, chain id (UTF-8) | u64 32, from | u64 32, to |
//! u64 amount | u64 nonce | u64 64, signature
//! ```
//!
//! (all integers little-endian; 176 bytes plus the chain id). Nothing may
//! follow the last transaction. [`encode`] writes it; [`count_prefix`] and
//! [`encode_entry`] write it in pieces, for a client that keeps encoded
//! transactions around and batches them as it goes.
//!
//! [`decode`] checks the count prefix against the caller's cap and against
//! the body's length before it allocates anything, and decodes each
//! transaction with every length inside bounded by
//! [`TX_BYTES_MAX`](crate::limits::TX_BYTES_MAX).

use crate::codec::{self, CodecError};
use crate::limits::{TX_BYTES_MAX, TX_BYTES_MIN};
use crate::tx::SignedTransaction;

/// The media type of a binary batch.
pub const CONTENT_TYPE: &str = "application/octet-stream";
/// Length of the count prefix.
pub const COUNT_BYTES: usize = 8;

/// Why bytes are not a binary batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxBatchError {
    #[error("a binary batch starts with an {COUNT_BYTES}-byte count; the body has {0} bytes")]
    NoCount(usize),
    #[error("the batch declares {count} transactions; at most {max} are accepted")]
    TooMany { count: u64, max: usize },
    #[error(
        "the batch declares {count} transactions, which take {least} to {most} bytes; \
         {body} bytes follow the count"
    )]
    CountMismatch {
        count: u64,
        body: usize,
        least: u128,
        most: u128,
    },
    #[error("transaction {index}: {error}")]
    Entry { index: usize, error: String },
    #[error("{0} bytes follow the last transaction")]
    TrailingBytes(usize),
}

impl TxBatchError {
    /// Whether the batch is refused for its size (HTTP 413) rather than
    /// for being malformed (400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, TxBatchError::TooMany { .. })
    }
}

/// The binary batch of `txs`.
pub fn encode(txs: &[SignedTransaction]) -> Vec<u8> {
    codec::encode(txs)
}

/// The count prefix of a batch of `count` transactions: what precedes
/// `count` [`encode_entry`] encodings.
pub fn count_prefix(count: usize) -> [u8; COUNT_BYTES] {
    let bytes = codec::encode(&(count as u64));
    bytes
        .try_into()
        .expect("a u64 encodes to its 8 fixed-width bytes")
}

/// Appends the encoding of one transaction of a batch to `out`.
pub fn encode_entry(tx: &SignedTransaction, out: &mut Vec<u8>) {
    codec::encode_into(tx, out);
}

/// Decodes a binary batch of at most `max_count` transactions.
pub fn decode(bytes: &[u8], max_count: usize) -> Result<Vec<SignedTransaction>, TxBatchError> {
    if bytes.len() < COUNT_BYTES {
        return Err(TxBatchError::NoCount(bytes.len()));
    }
    let (count, read) = codec::decode_front::<u64, COUNT_BYTES>(bytes)
        .map_err(|_| TxBatchError::NoCount(bytes.len()))?;
    debug_assert_eq!(read, COUNT_BYTES);
    if count > max_count as u64 {
        return Err(TxBatchError::TooMany {
            count,
            max: max_count,
        });
    }
    let body = bytes.len() - read;
    let (least, most) = (
        count as u128 * TX_BYTES_MIN as u128,
        count as u128 * TX_BYTES_MAX as u128,
    );
    if (body as u128) < least || (body as u128) > most {
        return Err(TxBatchError::CountMismatch {
            count,
            body,
            least,
            most,
        });
    }
    // `count` is now at most `max_count` and at most one per TX_BYTES_MIN
    // bytes of the body.
    let mut txs = Vec::with_capacity(count as usize);
    let mut at = read;
    for index in 0..count as usize {
        let (tx, used) = codec::decode_front::<SignedTransaction, TX_BYTES_MAX>(&bytes[at..])
            .map_err(|error| TxBatchError::Entry {
                index,
                error: match error {
                    CodecError::TooLarge(_) => format!(
                        "longer than {TX_BYTES_MAX} bytes, the largest encoded transaction \
                         (a chain id of at most {} bytes)",
                        crate::limits::CHAIN_ID_BYTES_MAX
                    ),
                    error => error.to_string(),
                },
            })?;
        txs.push(tx);
        at += used;
    }
    if at != bytes.len() {
        return Err(TxBatchError::TrailingBytes(bytes.len() - at));
    }
    Ok(txs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Keypair, Transfer};

    fn tx(chain_id: &str, nonce: u64) -> SignedTransaction {
        let key = Keypair::from_seed([4; 32]);
        SignedTransaction::sign(
            Transfer {
                chain_id: chain_id.into(),
                from: key.public(),
                to: Keypair::from_seed([5; 32]).public(),
                amount: 7,
                nonce,
            },
            &key,
        )
    }

    fn batch(n: u64) -> Vec<SignedTransaction> {
        (0..n).map(|i| tx("test-chain", i)).collect()
    }

    #[test]
    fn round_trip_and_pieces_match_the_codec() {
        let txs = batch(3);
        let bytes = encode(&txs);
        assert_eq!(bytes, codec::encode(&txs.to_vec()));
        let mut pieces = count_prefix(3).to_vec();
        for t in &txs {
            encode_entry(t, &mut pieces);
        }
        assert_eq!(pieces, bytes);
        assert_eq!(decode(&bytes, 10), Ok(txs));
        assert_eq!(decode(&encode(&[]), 10), Ok(vec![]));
    }

    #[test]
    fn the_smallest_and_largest_transactions_are_the_limits() {
        assert_eq!(codec::encode(&tx("", 0)).len(), TX_BYTES_MIN);
        let longest = "c".repeat(crate::limits::CHAIN_ID_BYTES_MAX);
        assert_eq!(codec::encode(&tx(&longest, 0)).len(), TX_BYTES_MAX);
        let batch = encode(&[tx("", 1), tx(&longest, 2)]);
        assert_eq!(decode(&batch, 2).unwrap().len(), 2);
    }

    #[test]
    fn a_count_over_the_cap_is_refused_before_decoding() {
        let mut bytes = count_prefix(11).to_vec();
        bytes.extend_from_slice(b"not a transaction at all");
        let error = decode(&bytes, 10).unwrap_err();
        assert_eq!(error, TxBatchError::TooMany { count: 11, max: 10 });
        assert!(error.is_too_large());
        // A count of 2^64 - 1 (which would be a huge allocation) too.
        let error = decode(&u64::MAX.to_le_bytes(), 10).unwrap_err();
        assert!(error.is_too_large());
    }

    #[test]
    fn a_count_the_body_cannot_hold_is_refused_before_decoding() {
        let bytes = encode(&batch(3));
        let mut more = bytes.clone();
        more[..COUNT_BYTES].copy_from_slice(&count_prefix(4));
        assert!(matches!(
            decode(&more, 10),
            Err(TxBatchError::CountMismatch { count: 4, .. })
        ));
        let mut fewer = bytes.clone();
        fewer[..COUNT_BYTES].copy_from_slice(&count_prefix(1));
        assert!(matches!(
            decode(&fewer, 10),
            Err(TxBatchError::CountMismatch { count: 1, .. })
        ));
    }

    #[test]
    fn short_truncated_and_trailing_bodies_are_refused() {
        assert_eq!(decode(&[], 10), Err(TxBatchError::NoCount(0)));
        assert_eq!(decode(&[1, 0, 0], 10), Err(TxBatchError::NoCount(3)));
        let bytes = encode(&batch(3));
        // Cut inside the last transaction: the count still fits the length.
        let cut = &bytes[..bytes.len() - 10];
        assert!(matches!(
            decode(cut, 10),
            Err(TxBatchError::Entry { index: 2, .. })
        ));
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(&[0; 5]);
        assert_eq!(decode(&trailing, 10), Err(TxBatchError::TrailingBytes(5)));
    }

    /// A chain id length prefix claiming more than the body is refused
    /// without allocating it.
    #[test]
    fn a_long_chain_id_is_refused_without_allocating_it() {
        let mut bytes = encode(&batch(1));
        bytes[COUNT_BYTES..COUNT_BYTES + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let error = decode(&bytes, 10).unwrap_err();
        assert!(
            matches!(&error, TxBatchError::Entry { index: 0, error } if error.contains("longer than")),
            "{error}"
        );
    }

    /// Any body at all gives a verdict and no panic.
    #[test]
    fn arbitrary_bytes_never_panic() {
        use proptest::prelude::*;
        let good = encode(&batch(2));
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..600), flip in any::<prop::sample::Index>())| {
            let _ = decode(&bytes, 10);
            let mut changed = good.clone();
            let i = flip.index(changed.len());
            changed[i] ^= 0xff;
            let _ = decode(&changed, 10);
        });
    }
}
