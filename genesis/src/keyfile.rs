//! Key files: JSON, written with mode 0600 and never overwritten, in one of
//! two forms.
//!
//! - **Encrypted** (what `cairn-wallet keygen` writes by default): the secret
//!   seed sealed with XChaCha20-Poly1305 under a key that Argon2id derives
//!   from a passphrase. The file carries its format version, the KDF and its
//!   parameters and salt, the cipher and its nonce, and the public key in
//!   clear; the public key and every parameter are authenticated as the
//!   AEAD's associated data, so changing any of them makes decryption fail.
//!   ```json
//!   {"version": 1, "public_key": "<64 hex>",
//!    "kdf": {"name": "argon2id", "version": 19, "m_cost_kib": 65536,
//!            "t_cost": 3, "p_cost": 1, "salt": "<64 hex>"},
//!    "cipher": {"name": "xchacha20poly1305", "nonce": "<48 hex>"},
//!    "ciphertext": "<96 hex: 32-byte seed + 16-byte tag>"}
//!   ```
//! - **Plain**: `{"plain": true, "note": "...", "public_key", "secret_key"}`,
//!   the seed in hex. Testnet keys (`cairn-genesis testnet`) and `--plain`
//!   wallet keys; `plain` and `note` say so to whoever opens the file. Files
//!   written before those two fields existed still load.
//!
//! Reading checks the KDF parameters against [`KdfParams::check`] before any
//! work, so a hostile file cannot make the KDF take minutes or gigabytes.
//! Seeds, derived keys and the KDF's memory are wiped after use (the
//! passphrase is the caller's, held in [`Zeroizing`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Block, Version};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

use cairn_core::{Keypair, PublicKey};

/// The environment variable a non-interactive reader takes an encrypted key
/// file's passphrase from (the node for its `validator.key`, the wallet when
/// no `--passphrase-file` is given).
pub const PASSPHRASE_ENV: &str = "CAIRN_PASSPHRASE";
/// The only encrypted format version this code reads and writes.
pub const ENCRYPTED_VERSION: u64 = 1;
/// Largest key file read (a real one is under 1 KiB).
pub const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The KDF of version 1 files.
pub const KDF_NAME: &str = "argon2id";
/// The Argon2 version of version 1 files (0x13).
pub const KDF_ARGON2_VERSION: u32 = 0x13;
/// The AEAD of version 1 files.
pub const CIPHER_NAME: &str = "xchacha20poly1305";
/// Salt written to new files.
pub const SALT_BYTES: usize = 32;
/// Shortest salt read.
pub const SALT_BYTES_MIN: usize = 16;
/// Longest salt read.
pub const SALT_BYTES_MAX: usize = 64;
/// XChaCha20-Poly1305's nonce.
pub const NONCE_BYTES: usize = 24;
/// The sealed seed: 32 bytes of ciphertext and a 16-byte tag.
pub const CIPHERTEXT_BYTES: usize = 32 + 16;

/// Most memory a file may ask the KDF for: 256 MiB, 4 times the default.
pub const KDF_M_COST_KIB_MAX: u32 = 256 * 1024;
/// Most passes a file may ask for.
pub const KDF_T_COST_MAX: u32 = 16;
/// Most lanes a file may ask for (lanes run one after another here, so they
/// add no time, but more than a few is not a real setting).
pub const KDF_P_COST_MAX: u32 = 8;
/// Most memory × passes a file may ask for: 1 GiB of block fills, about 5
/// times the default (under 2 s on a laptop core where the default takes
/// 0.3 s). Past any of these bounds a file is refused before the KDF runs.
pub const KDF_WORK_KIB_MAX: u64 = 1024 * 1024;

// The default fits the bounds it is read back under.
const _: () = assert!(KdfParams::DEFAULT.m_cost_kib <= KDF_M_COST_KIB_MAX);
const _: () = assert!(
    KdfParams::DEFAULT.m_cost_kib as u64 * KdfParams::DEFAULT.t_cost as u64 <= KDF_WORK_KIB_MAX
);
const _: () = assert!(SALT_BYTES >= SALT_BYTES_MIN && SALT_BYTES <= SALT_BYTES_MAX);

/// Argon2id cost parameters, stored in each encrypted file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, in KiB.
    pub m_cost_kib: u32,
    /// Passes over the memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// What new files get: 64 MiB, 3 passes, 1 lane (RFC 9106's second
    /// recommended setting, with one lane).
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// Refuses parameters that would make the KDF too costly to run (a
    /// hostile file) or that Argon2 does not accept.
    pub fn check(&self) -> Result<(), String> {
        let KdfParams {
            m_cost_kib,
            t_cost,
            p_cost,
        } = *self;
        if m_cost_kib > KDF_M_COST_KIB_MAX {
            return Err(format!(
                "kdf m_cost_kib {m_cost_kib} is over the limit of {KDF_M_COST_KIB_MAX} (256 MiB); refusing to run it"
            ));
        }
        if t_cost == 0 || t_cost > KDF_T_COST_MAX {
            return Err(format!(
                "kdf t_cost {t_cost} is outside 1..={KDF_T_COST_MAX}; refusing to run it"
            ));
        }
        if p_cost == 0 || p_cost > KDF_P_COST_MAX {
            return Err(format!(
                "kdf p_cost {p_cost} is outside 1..={KDF_P_COST_MAX}; refusing to run it"
            ));
        }
        if m_cost_kib as u64 * t_cost as u64 > KDF_WORK_KIB_MAX {
            return Err(format!(
                "kdf cost m_cost_kib × t_cost = {} is over the limit of {KDF_WORK_KIB_MAX}; refusing to run it",
                m_cost_kib as u64 * t_cost as u64
            ));
        }
        if m_cost_kib < 8 * p_cost {
            return Err(format!(
                "kdf m_cost_kib {m_cost_kib} is under 8 × p_cost ({p_cost})"
            ));
        }
        Ok(())
    }
}

/// A key file as read from disk, before any passphrase.
pub enum KeyFile {
    /// The secret seed in clear.
    Plain(Keypair),
    /// The seed sealed under a passphrase.
    Encrypted(EncryptedKey),
}

impl KeyFile {
    /// The key's public key (for an encrypted file: the one stored in clear,
    /// authenticated only once the file is decrypted).
    pub fn public(&self) -> PublicKey {
        match self {
            KeyFile::Plain(key) => key.public(),
            KeyFile::Encrypted(sealed) => sealed.public,
        }
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, KeyFile::Encrypted(_))
    }
}

/// An encrypted key file's contents, checked for form and bounds but not
/// yet decrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedKey {
    public: PublicKey,
    params: KdfParams,
    salt: Vec<u8>,
    nonce: [u8; NONCE_BYTES],
    ciphertext: [u8; CIPHERTEXT_BYTES],
    /// Where it was read from, for messages (empty when made in memory).
    path: PathBuf,
}

impl EncryptedKey {
    /// Seals `key` under `passphrase` with a fresh salt and nonce.
    pub fn seal(
        key: &Keypair,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<EncryptedKey, String> {
        params.check()?;
        if passphrase.is_empty() {
            return Err("the passphrase is empty".into());
        }
        use rand_core::RngCore;
        let mut salt = vec![0u8; SALT_BYTES];
        rand_core::OsRng.fill_bytes(&mut salt);
        let mut nonce = [0u8; NONCE_BYTES];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let mut sealed = EncryptedKey {
            public: key.public(),
            params,
            salt,
            nonce,
            ciphertext: [0u8; CIPHERTEXT_BYTES],
            path: PathBuf::new(),
        };
        let derived = derive_key(passphrase, &sealed.salt, params)?;
        let mut seed = Zeroizing::new(key.seed());
        let tag = XChaCha20Poly1305::new(Key::from_slice(&derived[..]))
            .encrypt_in_place_detached(
                XNonce::from_slice(&sealed.nonce),
                &sealed.associated_data(),
                &mut seed[..],
            )
            .map_err(|_| "cannot encrypt the key".to_string())?;
        sealed.ciphertext[..32].copy_from_slice(&seed[..]);
        sealed.ciphertext[32..].copy_from_slice(&tag);
        Ok(sealed)
    }

    /// Opens the file with `passphrase`. A wrong passphrase and any change to
    /// the file (ciphertext, public key, parameters, salt, nonce) give the
    /// same error: the AEAD cannot tell them apart.
    pub fn open(&self, passphrase: &[u8]) -> Result<Keypair, String> {
        self.params.check()?;
        let derived = derive_key(passphrase, &self.salt, self.params)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&self.ciphertext[..32]);
        XChaCha20Poly1305::new(Key::from_slice(&derived[..]))
            .decrypt_in_place_detached(
                XNonce::from_slice(&self.nonce),
                &self.associated_data(),
                &mut seed[..],
                Tag::from_slice(&self.ciphertext[32..]),
            )
            .map_err(|_| {
                format!(
                    "wrong passphrase or corrupted key file {}",
                    self.path.display()
                )
            })?;
        let key = Keypair::from_seed(*seed);
        // Authenticated above, so only a bug in the writer can get here.
        if key.public() != self.public {
            return Err(format!(
                "{}: public_key does not match the encrypted secret key",
                self.path.display()
            ));
        }
        Ok(key)
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub fn params(&self) -> KdfParams {
        self.params
    }

    /// What the AEAD authenticates besides the seed: a format label, the
    /// public key, the KDF with its parameters and salt, the cipher and its
    /// nonce, each fixed-width or length-prefixed.
    fn associated_data(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(128);
        aad.extend_from_slice(b"cairn-key-file\0");
        aad.extend_from_slice(&ENCRYPTED_VERSION.to_le_bytes());
        aad.extend_from_slice(&self.public.0);
        push_labelled(&mut aad, KDF_NAME.as_bytes());
        aad.extend_from_slice(&KDF_ARGON2_VERSION.to_le_bytes());
        aad.extend_from_slice(&self.params.m_cost_kib.to_le_bytes());
        aad.extend_from_slice(&self.params.t_cost.to_le_bytes());
        aad.extend_from_slice(&self.params.p_cost.to_le_bytes());
        push_labelled(&mut aad, &self.salt);
        push_labelled(&mut aad, CIPHER_NAME.as_bytes());
        aad.extend_from_slice(&self.nonce);
        aad
    }

    fn to_json(&self) -> EncryptedJson {
        EncryptedJson {
            version: ENCRYPTED_VERSION,
            public_key: self.public.to_hex(),
            kdf: serde_json::to_value(KdfJson {
                name: KDF_NAME.into(),
                version: KDF_ARGON2_VERSION,
                m_cost_kib: self.params.m_cost_kib.into(),
                t_cost: self.params.t_cost.into(),
                p_cost: self.params.p_cost.into(),
                salt: hex::encode(&self.salt),
            })
            .expect("KDF parameters serialize"),
            cipher: serde_json::to_value(CipherJson {
                name: CIPHER_NAME.into(),
                nonce: hex::encode(self.nonce),
            })
            .expect("cipher parameters serialize"),
            ciphertext: hex::encode(self.ciphertext),
        }
    }

    fn from_json(json: EncryptedJson, path: &Path) -> Result<EncryptedKey, String> {
        let at = |what: &str| format!("{}: {what}", path.display());
        let public: PublicKey = json
            .public_key
            .parse()
            .map_err(|e| at(&format!("public_key: {e}")))?;
        let kdf = named::<KdfJson>(json.kdf, "kdf", KDF_NAME).map_err(|e| at(&e))?;
        if kdf.version != KDF_ARGON2_VERSION {
            return Err(at(&format!(
                "kdf version {} is not supported (only {KDF_ARGON2_VERSION})",
                kdf.version
            )));
        }
        let small = |name: &str, value: u64| {
            u32::try_from(value).map_err(|_| {
                at(&format!(
                    "kdf {name} {value} is over the limit; refusing to run it"
                ))
            })
        };
        let params = KdfParams {
            m_cost_kib: small("m_cost_kib", kdf.m_cost_kib)?,
            t_cost: small("t_cost", kdf.t_cost)?,
            p_cost: small("p_cost", kdf.p_cost)?,
        };
        params.check().map_err(|e| at(&e))?;
        let salt = hex::decode(kdf.salt.trim()).map_err(|_| at("kdf salt is not hex"))?;
        if !(SALT_BYTES_MIN..=SALT_BYTES_MAX).contains(&salt.len()) {
            return Err(at(&format!(
                "kdf salt is {} bytes, not {SALT_BYTES_MIN}..={SALT_BYTES_MAX}",
                salt.len()
            )));
        }
        let cipher = named::<CipherJson>(json.cipher, "cipher", CIPHER_NAME).map_err(|e| at(&e))?;
        let mut nonce = [0u8; NONCE_BYTES];
        hex::decode_to_slice(cipher.nonce.trim(), &mut nonce).map_err(|_| {
            at(&format!(
                "cipher nonce is not {} hex characters",
                2 * NONCE_BYTES
            ))
        })?;
        let mut ciphertext = [0u8; CIPHERTEXT_BYTES];
        hex::decode_to_slice(json.ciphertext.trim(), &mut ciphertext).map_err(|_| {
            at(&format!(
                "ciphertext is not {} hex characters",
                2 * CIPHERTEXT_BYTES
            ))
        })?;
        Ok(EncryptedKey {
            public,
            params,
            salt,
            nonce,
            ciphertext,
            path: path.to_path_buf(),
        })
    }
}

fn push_labelled(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Argon2id of `passphrase` and `salt` into a 32-byte key; the KDF's memory
/// is wiped before it is freed.
fn derive_key(
    passphrase: &[u8],
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, String> {
    let argon_params =
        argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
            .map_err(|e| format!("kdf parameters: {e}"))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
    let mut memory = vec![Block::default(); argon.params().block_count()];
    let mut key = Zeroizing::new([0u8; 32]);
    let result = argon.hash_password_into_with_memory(passphrase, salt, &mut key[..], &mut memory);
    memory.iter_mut().for_each(Zeroize::zeroize);
    result.map_err(|e| format!("kdf: {e}"))?;
    Ok(key)
}

/// `value` as a `T` after checking its `name` field is `expected` (so an
/// unknown KDF or cipher is named as such, not as an unknown field).
fn named<T: for<'de> Deserialize<'de>>(
    value: Value,
    what: &str,
    expected: &str,
) -> Result<T, String> {
    match value.get("name").and_then(Value::as_str) {
        Some(name) if name == expected => {}
        Some(name) => {
            return Err(format!(
                "{what} {name:?} is not supported (only {expected:?})"
            ))
        }
        None => return Err(format!("{what} has no name")),
    }
    serde_json::from_value(value).map_err(|e| format!("{what}: {e}"))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptedJson {
    version: u64,
    public_key: String,
    kdf: Value,
    cipher: Value,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfJson {
    name: String,
    version: u32,
    m_cost_kib: u64,
    t_cost: u64,
    p_cost: u64,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CipherJson {
    name: String,
    nonce: String,
}

/// What a plain file's `note` says.
pub const PLAIN_NOTE: &str =
    "UNENCRYPTED key: anyone who can read this file can sign as this key. \
For tests and local networks; `cairn-wallet encrypt` makes an encrypted copy.";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plain: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    public_key: String,
    secret_key: String,
}

impl Drop for PlainJson {
    fn drop(&mut self) {
        self.secret_key.zeroize();
    }
}

/// Writes `key` in clear to a new file at `path` with mode 0600, marked
/// `"plain": true`. Refuses to overwrite an existing file.
pub fn write_new(path: &Path, key: &Keypair) -> Result<(), String> {
    let seed = Zeroizing::new(key.seed());
    let json = PlainJson {
        plain: Some(true),
        note: Some(PLAIN_NOTE.into()),
        public_key: key.public().to_hex(),
        secret_key: hex::encode(&seed[..]),
    };
    let text =
        Zeroizing::new(serde_json::to_string_pretty(&json).expect("a key file serializes") + "\n");
    write_text_new(path, &text)
}

/// Writes `key` encrypted under `passphrase` to a new file at `path` with
/// mode 0600. Refuses to overwrite an existing file.
pub fn write_new_encrypted(
    path: &Path,
    key: &Keypair,
    passphrase: &[u8],
    params: KdfParams,
) -> Result<(), String> {
    let sealed = EncryptedKey::seal(key, passphrase, params)?;
    write_sealed_new(path, &sealed)
}

/// Writes an already sealed key to a new file at `path` (mode 0600).
pub fn write_sealed_new(path: &Path, sealed: &EncryptedKey) -> Result<(), String> {
    let text =
        serde_json::to_string_pretty(&sealed.to_json()).expect("a key file serializes") + "\n";
    write_text_new(path, &text)
}

/// Replaces the key file at `path` with `sealed` (the same key under a new
/// passphrase): written beside it as `<name>.new` (mode 0600, fsynced), then
/// renamed over it, so a crash leaves the old file or the new one, never
/// half of either. Refuses when `path` holds another key.
pub fn replace_sealed(path: &Path, sealed: &EncryptedKey) -> Result<(), String> {
    let current = load(path)?;
    if current.public() != sealed.public {
        return Err(format!(
            "{} holds another key; refusing to replace it",
            path.display()
        ));
    }
    let mut name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file name", path.display()))?
        .to_os_string();
    name.push(".new");
    let temporary = path.with_file_name(name);
    write_sealed_new(&temporary, sealed)?;
    if let Err(e) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(format!("cannot replace {}: {e}", path.display()));
    }
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", folder.display()))
}

fn write_text_new(path: &Path, text: &str) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!(
                "{} already exists; refusing to overwrite it",
                path.display()
            )
        }
        _ => format!("cannot create {}: {e}", path.display()),
    })?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads a key file of either form without decrypting it.
pub fn load(path: &Path) -> Result<KeyFile, String> {
    let mut text = Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|file| file.take(KEY_FILE_BYTES_MAX + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    if text.len() as u64 > KEY_FILE_BYTES_MAX {
        return Err(format!(
            "{} is not a key file: larger than {KEY_FILE_BYTES_MAX} bytes",
            path.display()
        ));
    }
    let not_a_key_file =
        |e: &dyn std::fmt::Display| format!("{} is not a key file: {e}", path.display());
    let object: Map<String, Value> = serde_json::from_str(&text).map_err(|e| not_a_key_file(&e))?;
    if object.contains_key("version") || object.contains_key("ciphertext") {
        let version = object.get("version").and_then(Value::as_u64);
        if version != Some(ENCRYPTED_VERSION) {
            return Err(format!(
                "{}: key file version {} is not supported (this build reads version {ENCRYPTED_VERSION} and plain files)",
                path.display(),
                object.get("version").map_or("(none)".into(), |v| v.to_string())
            ));
        }
        let json: EncryptedJson =
            serde_json::from_value(Value::Object(object)).map_err(|e| not_a_key_file(&e))?;
        return EncryptedKey::from_json(json, path).map(KeyFile::Encrypted);
    }
    let json: PlainJson =
        serde_json::from_value(Value::Object(object)).map_err(|e| not_a_key_file(&e))?;
    if json.plain == Some(false) {
        return Err(not_a_key_file(
            &"\"plain\": false but the secret key is in clear",
        ));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(json.secret_key.trim(), &mut seed[..])
        .map_err(|_| format!("{}: secret_key is not 64 hex characters", path.display()))?;
    let key = Keypair::from_seed(*seed);
    let public: PublicKey = json
        .public_key
        .parse()
        .map_err(|e| format!("{}: public_key: {e}", path.display()))?;
    if public != key.public() {
        return Err(format!(
            "{}: public_key does not match secret_key",
            path.display()
        ));
    }
    Ok(KeyFile::Plain(key))
}

/// Reads a key file without asking anyone: a plain file as it is, an
/// encrypted one with the passphrase in `CAIRN_PASSPHRASE` (what the node
/// does with its `validator.key`).
pub fn read(path: &Path) -> Result<Keypair, String> {
    match load(path)? {
        KeyFile::Plain(key) => Ok(key),
        KeyFile::Encrypted(sealed) => {
            let passphrase = passphrase_from_env()?.ok_or_else(|| {
                format!(
                    "{} is encrypted: set {PASSPHRASE_ENV} to its passphrase",
                    path.display()
                )
            })?;
            sealed.open(passphrase.as_bytes())
        }
    }
}

/// The passphrase in `CAIRN_PASSPHRASE`, if set and not empty.
pub fn passphrase_from_env() -> Result<Option<Zeroizing<String>>, String> {
    match std::env::var_os(PASSPHRASE_ENV) {
        None => Ok(None),
        Some(value) if value.is_empty() => Ok(None),
        Some(value) => value
            .into_string()
            .map(|text| Some(Zeroizing::new(text)))
            .map_err(|_| format!("{PASSPHRASE_ENV} is not valid UTF-8")),
    }
}

/// A fresh key from the operating system's randomness.
pub fn generate() -> Keypair {
    use rand_core::RngCore;
    let mut seed = Zeroizing::new([0u8; 32]);
    rand_core::OsRng.fill_bytes(&mut seed[..]);
    Keypair::from_seed(*seed)
}
