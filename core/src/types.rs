//! Identifier newtypes: hashes, keys, signatures, heights and views.
//!
//! Byte arrays are shown and parsed as lowercase hex. Their serde form is a
//! fixed-length byte string, which is what the binary codec writes; JSON types
//! at the API edge convert them to hex explicitly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a hex identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseHexError {
    #[error("expected {expected} hex characters, got {got}")]
    Length { expected: usize, got: usize },
    #[error("not lowercase hex")]
    NotHex,
}

macro_rules! byte_array_newtype {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let hex = self.to_hex();
                write!(f, "{}({}..)", stringify!($name), &hex[..12])
            }
        }

        impl FromStr for $name {
            type Err = ParseHexError;

            /// Parses exactly `2 * LEN` lowercase hex characters.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 2 * $len {
                    return Err(ParseHexError::Length { expected: 2 * $len, got: s.len() });
                }
                if !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(ParseHexError::NotHex);
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| ParseHexError::NotHex)?;
                Ok($name(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct BytesVisitor;
                impl<'de> serde::de::Visitor<'de> for BytesVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} bytes", $len)
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<$name, E> {
                        let array: [u8; $len] = v
                            .try_into()
                            .map_err(|_| E::invalid_length(v.len(), &self))?;
                        Ok($name(array))
                    }
                    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<$name, E> {
                        self.visit_bytes(v)
                    }
                    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<$name, E> {
                        self.visit_bytes(&v)
                    }
                }
                deserializer.deserialize_bytes(BytesVisitor)
            }
        }
    };
}

byte_array_newtype!(
    /// A SHA-256 digest: block hashes, transaction hashes, state roots.
    Hash,
    32
);
byte_array_newtype!(
    /// An ed25519 public key. An account's address is its public key.
    PublicKey,
    32
);
byte_array_newtype!(
    /// An ed25519 signature.
    Signature,
    64
);

impl Default for Hash {
    fn default() -> Hash {
        Hash::ZERO
    }
}

impl Hash {
    pub const ZERO: Hash = Hash([0; 32]);

    /// SHA-256 of the concatenation of `parts`.
    pub fn digest(parts: &[&[u8]]) -> Hash {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        Hash(hasher.finalize().into())
    }
}

/// A block height. Height 0 is genesis; the first block is height 1.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Height(pub u64);

/// A consensus view. The primary of view `v` is `validators[v mod n]`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct View(pub u64);

/// A validator's position in the genesis validator list.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ValidatorIndex(pub u16);

impl Height {
    pub fn next(self) -> Height {
        Height(self.0 + 1)
    }
}

impl View {
    pub fn next(self) -> View {
        View(self.0 + 1)
    }

    /// Index of this view's primary among `n` validators.
    pub fn primary(self, n: usize) -> ValidatorIndex {
        assert!(n > 0, "a validator set is never empty");
        ValidatorIndex((self.0 % n as u64) as u16)
    }
}

impl ValidatorIndex {
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ValidatorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_strictness() {
        let h = Hash::digest(&[b"x"]);
        assert_eq!(h.to_hex().parse::<Hash>(), Ok(h));
        assert_eq!(
            "ab".parse::<Hash>(),
            Err(ParseHexError::Length {
                expected: 64,
                got: 2
            })
        );
        let upper = h.to_hex().to_uppercase();
        if upper != h.to_hex() {
            assert_eq!(upper.parse::<Hash>(), Err(ParseHexError::NotHex));
        }
        assert_eq!("zz".repeat(32).parse::<Hash>(), Err(ParseHexError::NotHex));
    }

    #[test]
    fn codec_round_trip() {
        let k = PublicKey([7; 32]);
        let bytes = crate::codec::encode(&k);
        assert_eq!(crate::codec::decode::<PublicKey>(&bytes), Ok(k));
        assert!(crate::codec::decode::<Signature>(&bytes).is_err());
    }
}
