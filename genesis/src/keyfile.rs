//! Key files: a JSON object with the public key and the 32-byte secret seed,
//! both hex, written with mode 0600 and never overwritten.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use cairn_core::{Keypair, PublicKey};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    public_key: String,
    secret_key: String,
}

/// Writes `key` to a new file at `path` with mode 0600. Refuses to overwrite
/// an existing file.
pub fn write_new(path: &Path, key: &Keypair) -> Result<(), String> {
    let json = KeyFileJson {
        public_key: key.public().to_hex(),
        secret_key: hex::encode(key.seed()),
    };
    let text = serde_json::to_string_pretty(&json).expect("a key file serializes") + "\n";
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

/// Reads a key file and checks that its public key matches its secret.
pub fn read(path: &Path) -> Result<Keypair, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    let json: KeyFileJson = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a key file: {e}", path.display()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(json.secret_key.trim(), &mut seed)
        .map_err(|_| format!("{}: secret_key is not 64 hex characters", path.display()))?;
    let key = Keypair::from_seed(seed);
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
    Ok(key)
}

/// A fresh key from the operating system's randomness.
pub fn generate() -> Keypair {
    use rand_core::RngCore;
    let mut seed = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut seed);
    Keypair::from_seed(seed)
}
