//! A network across organisations: each operator runs `cairn-node init` on
//! its own host (a key that never leaves it, and its genesis entry), and
//! one person assembles the entries and the funded accounts into the
//! genesis file everyone then copies into their home folder.

use std::path::Path;

use serde::Serialize;

use crate::{
    keyfile, AccountInfo, Genesis, Params, ValidGenesis, ValidatorInfo, NODE_CONFIG_FILE,
    VALIDATOR_KEY_FILE,
};

/// Makes a validator home on this host: `home/validator.key` (a new key,
/// mode 0600), `home/node.json` and the initial safety record
/// (`home/safety.json`, no votes yet), and returns this validator's genesis
/// entry. Refuses a home that already holds a key or a node config (never
/// overwrites); the genesis file comes later (`home/genesis.json`).
pub fn init_home(
    home: &Path,
    name: &str,
    p2p_address: &str,
    api_address: &str,
) -> Result<ValidatorInfo, String> {
    check_name(name)?;
    for (flag, address) in [("--p2p", p2p_address), ("--api", api_address)] {
        let parsed: std::net::SocketAddr = address
            .parse()
            .map_err(|_| format!("{flag} {address:?} is not IP:PORT"))?;
        if parsed.port() == 0 || parsed.ip().is_unspecified() {
            return Err(format!(
                "{flag} {address}: peers and clients must be able to reach it \
                 (no port 0, no 0.0.0.0 or ::)"
            ));
        }
    }
    if p2p_address == api_address {
        return Err("--p2p and --api must differ".into());
    }
    for file in [VALIDATOR_KEY_FILE, NODE_CONFIG_FILE] {
        if home.join(file).exists() {
            return Err(format!(
                "{} already exists; refusing to overwrite a validator home",
                home.join(file).display()
            ));
        }
    }
    std::fs::create_dir_all(home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    let key = keyfile::generate();
    let config = crate::testnet::home_node_config_text()?;
    keyfile::write_new(&home.join(VALIDATOR_KEY_FILE), &key)?;
    std::fs::write(home.join(NODE_CONFIG_FILE), config).map_err(|e| {
        format!(
            "cannot write {}: {e}",
            home.join(NODE_CONFIG_FILE).display()
        )
    })?;
    // A new validator has voted for nothing: its record says so, so a new
    // network of such homes does not abstain (only a home that lost its
    // record does, see docs/PROTOCOL.md).
    crate::write_initial_safety_record(home)?;
    Ok(ValidatorInfo {
        name: name.to_string(),
        public_key: key.public().to_hex(),
        p2p_address: p2p_address.to_string(),
        api_address: api_address.to_string(),
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Reads one validator entry as `cairn-node init` printed it.
pub fn read_entry(path: &Path) -> Result<ValidatorInfo, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() > 64 * 1024 {
        return Err(format!(
            "{} is too large for a validator entry",
            path.display()
        ));
    }
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a validator entry (as `cairn-node init` prints it): {e}",
            path.display()
        )
    })
}

/// Parses `ADDRESS=BALANCE`.
pub fn parse_account(text: &str) -> Result<AccountInfo, String> {
    let (address, balance) = text
        .split_once('=')
        .ok_or_else(|| format!("--account {text:?}: expected ADDRESS=BALANCE"))?;
    let balance = balance
        .parse::<u64>()
        .map_err(|_| format!("--account {text:?}: the balance is not a whole number"))?;
    Ok(AccountInfo {
        address: address.to_string(),
        balance,
    })
}

/// Builds the genesis file of `validators` (in the order given) and
/// `accounts`, checked exactly as `cairn-genesis validate` and every node
/// check it.
pub fn assemble(
    chain_id: &str,
    genesis_time_ms: u64,
    validators: Vec<ValidatorInfo>,
    accounts: Vec<AccountInfo>,
) -> Result<(Genesis, ValidGenesis), String> {
    let genesis = Genesis {
        chain_id: chain_id.to_string(),
        genesis_time_ms,
        validators,
        accounts,
        admins: vec![],
        params: Params::default(),
    };
    let valid = genesis.clone().validate().map_err(|e| e.to_string())?;
    Ok((genesis, valid))
}

/// Writes `value` as pretty JSON to a new file (never overwrites).
pub fn write_new_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())? + "\n";
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                format!(
                    "{} already exists; refusing to overwrite it",
                    path.display()
                )
            }
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
