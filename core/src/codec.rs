//! The one canonical binary codec. Every byte that is hashed, signed, stored
//! on disk or sent between validators goes through here, so switching the
//! encoding is a change to this file alone.
//!
//! Encoding is bincode 2 with fixed-width little-endian integers. Decoding is
//! bounded by [`crate::limits::CODEC_BYTES_MAX`] and refuses trailing bytes,
//! so one value has exactly one encoding.

use serde::{de::DeserializeOwned, Serialize};

use crate::limits::CODEC_BYTES_MAX;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("malformed encoding: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("encoding of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

fn config() -> impl bincode::config::Config {
    config_limited::<CODEC_BYTES_MAX>()
}

/// The one encoding, with every length prefix inside a value bounded so
/// that the whole value takes at most `LIMIT` bytes.
fn config_limited<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<LIMIT>()
}

/// Encodes a value. Encoding our own types cannot fail; a failure is a bug.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("encoding an in-memory value cannot fail")
}

/// Appends the encoding of a value to `out` (no intermediate allocation).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let mut writer = VecWriter(out);
    bincode::serde::encode_into_writer(value, &mut writer, config())
        .expect("encoding an in-memory value cannot fail");
}

/// The length of a value's encoding, without encoding it into memory;
/// `usize::MAX` for a value past the codec's limit.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = LenWriter(0);
    match bincode::serde::encode_into_writer(value, &mut counter, config()) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

struct LenWriter(usize);

impl bincode::enc::write::Writer for &mut LenWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0 += bytes.len();
        Ok(())
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for &mut VecWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Decodes exactly one value from `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > CODEC_BYTES_MAX {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - read));
    }
    Ok(value)
}

/// Decodes one value from the front of `bytes`, whose encoding may take at
/// most `LIMIT` bytes (at most [`CODEC_BYTES_MAX`]); returns the value and
/// the bytes it took. What follows it is left alone: a caller reads a
/// sequence of values one by one this way. A length prefix inside the value
/// that claims more than `LIMIT` bytes is refused before anything is
/// allocated for it ([`CodecError::TooLarge`] with `LIMIT`).
pub fn decode_front<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), CodecError> {
    const { assert!(LIMIT <= CODEC_BYTES_MAX) };
    bincode::serde::decode_from_slice(bytes, config_limited::<LIMIT>()).map_err(|e| match e {
        bincode::error::DecodeError::LimitExceeded => CodecError::TooLarge(LIMIT),
        e => CodecError::Malformed(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = encode(&7u64);
        bytes.push(0);
        assert_eq!(decode::<u64>(&bytes), Err(CodecError::TrailingBytes(1)));
    }

    #[test]
    fn rejects_truncated() {
        let bytes = encode(&(1u64, 2u64));
        assert!(matches!(
            decode::<(u64, u64)>(&bytes[..10]),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn encode_into_matches_encode() {
        let value = (1u8, "abc".to_string(), vec![1u64, 2]);
        let mut out = vec![9];
        encode_into(&value, &mut out);
        assert_eq!(&out[1..], &encode(&value)[..]);
    }

    #[test]
    fn decode_front_reads_one_value_and_bounds_it() {
        let mut bytes = encode(&(5u64, "abc".to_string()));
        bytes.extend_from_slice(&[1, 2, 3]);
        let (value, read) = decode_front::<(u64, String), 64>(&bytes).unwrap();
        assert_eq!((value, read), ((5, "abc".to_string()), bytes.len() - 3));
        // A string claiming more than the limit is refused, not allocated.
        let long = encode(&"x".repeat(100));
        assert_eq!(
            decode_front::<String, 64>(&long),
            Err(CodecError::TooLarge(64))
        );
        assert!(matches!(
            decode_front::<(u64, u64), 64>(&bytes[..10]),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        // A vector claiming u64::MAX elements must fail cleanly.
        let bytes = u64::MAX.to_le_bytes();
        assert!(decode::<Vec<u64>>(&bytes).is_err());
    }
}
