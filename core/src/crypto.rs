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

impl PublicKey {
    /// Whether this key is unusable as an address or validator key: true
    /// when its 32 bytes decompress to a point of small order (one of the
    /// eight torsion points: the identity, the point of order 2, two of
    /// order 4, four of order 8), through any encoding, canonical or not
    /// (the all-zero key is one, of order 4); and true as well when they do
    /// not decompress to a curve point at all.
    ///
    /// Why: under ZIP-215 an identity-R signature with s = 0 verifies for a
    /// small-order key over *any* message, so anyone can spend from such an
    /// address or sign as such a validator. Bytes that are no point can
    /// never carry a valid signature, so money sent there would be burned;
    /// refusing them too means an address is usable exactly when it is a
    /// point of large order, which every key made from a secret is.
    ///
    /// Cost: one point decompression (a field square root) and three point
    /// doublings, a few microseconds, well below one signature check.
    pub fn is_weak(&self) -> bool {
        match curve25519_dalek::edwards::CompressedEdwardsY(self.0).decompress() {
            Some(point) => point.is_small_order(),
            None => true,
        }
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
    #[test]
    fn weak_keys_are_the_small_order_points_and_non_points() {
        for bytes in small_order_encodings() {
            assert!(PublicKey(bytes).is_weak(), "{}", hex::encode(bytes));
        }
        assert!(PublicKey([2; 32]).is_weak(), "not a curve point");
        for seed in 0..=255u8 {
            assert!(!Keypair::from_seed([seed; 32]).public().is_weak());
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
