//! ed25519 signing and verification with one consensus rule.
//!
//! Keys are made and signatures produced with `ed25519-dalek`. Every
//! signature is *verified* under the ZIP-215 rules of `ed25519-consensus`
//! (built on the same curve25519-dalek), for single and batch verification
//! alike: its batch verifier accepts exactly what its single verifier
//! accepts, so validity is a deterministic function of the bytes no matter
//! how a validator chooses to check it. (ed25519-dalek's own batch and
//! single verifiers can disagree on crafted signatures with small-order
//! components; see the tests.)
//!
//! Every signed message starts with a domain tag so a signature made for one
//! purpose is never valid for another.

use ed25519_consensus as zip215;

use crate::types::{PublicKey, Signature};

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid signature")]
pub struct SignatureError;

/// Every 32-byte string that decompresses to a point of small order: the
/// eight torsion points have five y-coordinates (1, -1, 0 and ±y of the
/// order-8 points); each is encoded with either sign bit (ZIP-215 and
/// curve25519-dalek accept a set sign bit with x = 0), and the two smallest,
/// 0 and 1, also as y + p (non-canonical). 5 × 2 + 2 × 2 = 14. The tests
/// check this list against curve25519-dalek's decompression, bit by bit.
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 14] = [
    hex32("0000000000000000000000000000000000000000000000000000000000000000"),
    hex32("0000000000000000000000000000000000000000000000000000000000000080"),
    hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    hex32("0100000000000000000000000000000000000000000000000000000000000000"),
    hex32("0100000000000000000000000000000000000000000000000000000000000080"),
    hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
];

/// 64 lowercase hex characters as 32 bytes, at compile time.
const fn hex32(text: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not lowercase hex"),
        }
    }
    let bytes = text.as_bytes();
    assert!(bytes.len() == 64, "64 hex characters");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(bytes[2 * i]) << 4) | nibble(bytes[2 * i + 1]);
        i += 1;
    }
    out
}

impl PublicKey {
    /// Whether this key is a *weak* key: its 32 bytes decompress to a point
    /// of small order (one of the eight torsion points: the identity, the
    /// point of order 2, two of order 4, four of order 8), through any
    /// encoding, canonical or not. The all-zero key is one (order 4).
    ///
    /// Why it matters: under ZIP-215 an identity-R signature with s = 0
    /// verifies for a small-order key over *any* message, so anyone can
    /// spend from such an address or sign as such a validator.
    ///
    /// Cost: a comparison with the 14 such encodings, about 15 ns.
    /// (Decompressing and multiplying by the cofactor gives the same answer
    /// but took 6 to 9 µs on the benchmark machine, a tenth of a signature
    /// check; this runs for both addresses of every transaction at
    /// admission, in the mempool and in block execution.)
    pub fn is_weak(&self) -> bool {
        SMALL_ORDER_ENCODINGS.contains(&self.0)
    }

    /// Whether these 32 bytes decompress to a curve point at all. A key that
    /// does not can never carry a valid signature: money sent there can
    /// never move again. Not a consensus rule (a transfer to such an
    /// address only burns the sender's own money, and checking costs a
    /// point decompression, 6 to 9 µs); genesis and the wallet refuse such
    /// keys.
    pub fn is_curve_point(&self) -> bool {
        curve25519_dalek::edwards::CompressedEdwardsY(self.0)
            .decompress()
            .is_some()
    }
}

/// An ed25519 secret key with its public key.
#[derive(Clone)]
pub struct Keypair {
    secret: ed25519_dalek::SigningKey,
}

impl Keypair {
    /// The keypair whose 32-byte secret seed is `seed`. Callers that need a
    /// fresh key draw the seed from the OS; this crate never does.
    pub fn from_seed(seed: [u8; 32]) -> Keypair {
        Keypair {
            secret: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte secret seed (what key files store).
    pub fn seed(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.secret.verifying_key().to_bytes())
    }

    /// Signs `domain || message`.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        let mut bytes = Vec::with_capacity(domain.len() + message.len());
        bytes.extend_from_slice(domain);
        bytes.extend_from_slice(message);
        Signature(self.secret.sign(&bytes).to_bytes())
    }
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", self.public())
    }
}

fn signed_bytes(domain: &[u8], message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(domain.len() + message.len());
    bytes.extend_from_slice(domain);
    bytes.extend_from_slice(message);
    bytes
}

/// Verifies a signature over `domain || message` under ZIP-215 rules.
pub fn verify(
    key: &PublicKey,
    domain: &[u8],
    message: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    let key = zip215::VerificationKey::try_from(key.0).map_err(|_| SignatureError)?;
    key.verify(
        &zip215::Signature::from(signature.0),
        &signed_bytes(domain, message),
    )
    .map_err(|_| SignatureError)
}

/// Verifies many `(key, domain || message, signature)` triples at once under
/// the same ZIP-215 rules as [`verify`]. Returns one verdict per item, in
/// order; when the batch as a whole fails, each item is checked alone so a
/// single bad signature does not condemn the others.
///
/// `rng` only blinds the batch equation; the verdicts do not depend on it.
pub fn verify_batch<'a, R>(
    items: impl IntoIterator<Item = (&'a PublicKey, Vec<u8>, &'a Signature)>,
    rng: R,
) -> Vec<Result<(), SignatureError>>
where
    R: rand_core::RngCore + rand_core::CryptoRng,
{
    let items: Vec<_> = items.into_iter().collect();
    let mut batch = zip215::batch::Verifier::new();
    for (key, message, signature) in &items {
        let key = zip215::VerificationKeyBytes::from(key.0);
        batch.queue((key, zip215::Signature::from(signature.0), message));
    }
    if batch.verify(rng).is_ok() {
        return vec![Ok(()); items.len()];
    }
    items
        .iter()
        .map(|(key, message, signature)| verify(key, &[], message, signature))
        .collect()
}

/// Encodings of the eight small-order points: their canonical encodings
/// (the all-zero key is one of them, a point of order 4) and non-canonical
/// ones that decompress to the same points. For tests.
#[cfg(test)]
pub(crate) fn small_order_encodings() -> Vec<[u8; 32]> {
    let mut encodings: Vec<[u8; 32]> = curve25519_dalek::constants::EIGHT_TORSION
        .iter()
        .map(|point| point.compress().to_bytes())
        .collect();
    let with_last = |first: u8, middle: u8, last: u8| {
        let mut bytes = [middle; 32];
        bytes[0] = first;
        bytes[31] = last;
        bytes
    };
    // y = p (so y = 0: the order-4 points), both signs of x.
    encodings.push(with_last(0xed, 0xff, 0x7f));
    encodings.push(with_last(0xed, 0xff, 0xff));
    // y = p + 1 (so y = 1: the identity).
    encodings.push(with_last(0xee, 0xff, 0x7f));
    // x = 0 with the sign bit set: the identity and the point of order 2.
    encodings.push(with_last(0x01, 0x00, 0x80));
    encodings.push(with_last(0xec, 0xff, 0xff));
    encodings
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &[u8] = b"cairn/test/v1";

    #[test]
    fn sign_verify_and_domain_separation() {
        let key = Keypair::from_seed([3; 32]);
        let sig = key.sign(DOMAIN, b"hello");
        assert_eq!(verify(&key.public(), DOMAIN, b"hello", &sig), Ok(()));
        assert_eq!(
            verify(&key.public(), DOMAIN, b"hellp", &sig),
            Err(SignatureError)
        );
        assert_eq!(
            verify(&key.public(), b"cairn/other/v1", b"hello", &sig),
            Err(SignatureError)
        );
        let other = Keypair::from_seed([4; 32]);
        assert_eq!(
            verify(&other.public(), DOMAIN, b"hello", &sig),
            Err(SignatureError)
        );
    }

    #[test]
    fn batch_agrees_with_single_and_isolates_bad_items() {
        let keys: Vec<_> = (0..8u8).map(|i| Keypair::from_seed([i; 32])).collect();
        let publics: Vec<_> = keys.iter().map(|k| k.public()).collect();
        let mut sigs: Vec<_> = keys.iter().map(|k| k.sign(DOMAIN, b"m")).collect();
        sigs[5].0[0] ^= 1;
        let verdicts = verify_batch(
            publics
                .iter()
                .zip(&sigs)
                .map(|(k, s)| (k, signed_bytes(DOMAIN, b"m"), s)),
            rand_core::OsRng,
        );
        for (i, verdict) in verdicts.iter().enumerate() {
            assert_eq!(verdict.is_ok(), i != 5, "item {i}");
            assert_eq!(*verdict, verify(&publics[i], DOMAIN, b"m", &sigs[i]));
        }
    }

    /// A crafted signature on which ed25519 implementations disagree: the
    /// public key is a small-order point (the identity's alternative encoding
    /// of order 1 is excluded; we use a point of order 8) and R is the
    /// identity, so s = 0 satisfies the cofactored equation `8sB = 8R + 8kA`
    /// for every message, while the strict cofactorless check rejects it
    /// because the key has small order.
    ///
    /// Our rule is ZIP-215: such a signature is *valid*, for single and for
    /// batch verification alike, so validators never disagree about it.
    #[test]
    fn crafted_small_order_signature_has_one_verdict() {
        // A point of order 8 on edwards25519 (canonical encoding).
        let small_order_key: [u8; 32] = [
            0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10,
            0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77,
            0x92, 0xac, 0x03, 0x7a,
        ];
        // R = identity (encoded as 1 followed by zeros), s = 0.
        let mut crafted = [0u8; 64];
        crafted[0] = 1;
        let key = PublicKey(small_order_key);
        let signature = Signature(crafted);

        let single = verify(&key, DOMAIN, b"any message", &signature);
        let batch = verify_batch(
            [(&key, signed_bytes(DOMAIN, b"any message"), &signature)],
            rand_core::OsRng,
        );
        assert_eq!(single, Ok(()), "ZIP-215 accepts the crafted signature");
        assert_eq!(batch, vec![single], "batch and single agree");

        // The rule we rejected: ed25519-dalek's verify_strict refuses it.
        let dalek_key = ed25519_dalek::VerifyingKey::from_bytes(&small_order_key).unwrap();
        let dalek_sig = ed25519_dalek::Signature::from_bytes(&crafted);
        assert!(dalek_key
            .verify_strict(&signed_bytes(DOMAIN, b"any message"), &dalek_sig)
            .is_err());
    }

    /// The test vectors of small-order keys are what they claim: each
    /// decompresses to a point of small order; the first eight are the
    /// canonical encodings of the eight distinct points (the all-zero key
    /// among them), the rest are non-canonical.
    /// What curve25519-dalek says: the bytes decompress to a point of small
    /// order.
    fn dalek_small_order(bytes: &[u8; 32]) -> bool {
        curve25519_dalek::edwards::CompressedEdwardsY(*bytes)
            .decompress()
            .is_some_and(|point| point.is_small_order())
    }

    /// The list is exactly the encodings derived from the eight torsion
    /// points (each y, and y + p where that stays below 2^255, with either
    /// sign bit), and curve25519-dalek agrees with `is_weak` on every entry
    /// and on every one-bit change of every entry.
    #[test]
    fn weak_list_is_every_encoding_of_the_small_order_points() {
        const P: [u8; 32] =
            hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
        let mut derived = std::collections::BTreeSet::new();
        for point in curve25519_dalek::constants::EIGHT_TORSION {
            let mut y = point.compress().to_bytes();
            y[31] &= 0x7f;
            let mut y_plus_p = [0u8; 32];
            let mut carry = 0u16;
            for i in 0..32 {
                let sum = y[i] as u16 + P[i] as u16 + carry;
                y_plus_p[i] = sum as u8;
                carry = sum >> 8;
            }
            let mut candidates = vec![y];
            if carry == 0 && y_plus_p[31] & 0x80 == 0 {
                candidates.push(y_plus_p);
            }
            for candidate in candidates {
                let mut signed = candidate;
                signed[31] |= 0x80;
                derived.insert(candidate);
                derived.insert(signed);
            }
        }
        let listed: std::collections::BTreeSet<[u8; 32]> =
            SMALL_ORDER_ENCODINGS.iter().copied().collect();
        assert_eq!(listed.len(), 14);
        assert_eq!(derived, listed);
        for entry in SMALL_ORDER_ENCODINGS {
            assert!(dalek_small_order(&entry), "{}", hex::encode(entry));
            for bit in 0..256 {
                let mut changed = entry;
                changed[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    PublicKey(changed).is_weak(),
                    dalek_small_order(&changed),
                    "{}",
                    hex::encode(changed)
                );
            }
        }
    }

    #[test]
    fn weak_keys_and_curve_points() {
        for bytes in small_order_encodings() {
            assert!(PublicKey(bytes).is_weak(), "{}", hex::encode(bytes));
            assert!(PublicKey(bytes).is_curve_point());
        }
        assert!(!PublicKey([2; 32]).is_weak());
        assert!(!PublicKey([2; 32]).is_curve_point(), "[2; 32] is no point");
        for seed in 0..=255u8 {
            let key = Keypair::from_seed([seed; 32]).public();
            assert!(!key.is_weak() && key.is_curve_point());
        }
    }

    proptest::proptest! {
        /// On arbitrary bytes, the list agrees with decompression.
        #[test]
        fn is_weak_agrees_with_dalek(bytes in proptest::prelude::any::<[u8; 32]>()) {
            proptest::prop_assert_eq!(PublicKey(bytes).is_weak(), dalek_small_order(&bytes));
        }
    }

    #[test]
    fn small_order_encodings_are_small_order() {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        let encodings = small_order_encodings();
        let mut distinct = std::collections::BTreeSet::new();
        for (i, bytes) in encodings.iter().enumerate() {
            let point = CompressedEdwardsY(*bytes)
                .decompress()
                .expect("decompresses");
            assert!(point.is_small_order(), "encoding {i}");
            assert_eq!(point.compress().to_bytes() == *bytes, i < 8, "encoding {i}");
            distinct.insert(point.compress().to_bytes());
        }
        assert_eq!(distinct.len(), 8);
        assert!(encodings[..8].contains(&[0; 32]));
    }
}
