//! Writing a local testnet: genesis file, node homes, funded account keys.
//!
//! Everything is built and validated in memory first; files are written only
//! once the genesis is known to be valid, into a folder that was absent or
//! empty. If writing fails half-way, what was written is removed again.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use cairn_core::Keypair;

use crate::{keyfile, AccountInfo, Genesis, NodeConfig, Params, ValidGenesis, ValidatorInfo};

/// Most funded accounts a testnet may have (each is a key file on disk).
pub const TESTNET_ACCOUNTS_MAX: usize = 10_000;

/// Name of the genesis file, in the testnet folder and in each node home.
pub const GENESIS_FILE: &str = "genesis.json";
/// Name of the validator key file in each node home.
pub const VALIDATOR_KEY_FILE: &str = "validator.key";
/// Name of the database folder in each node home.
pub const DATA_DIR: &str = "data";
/// Name of the safety record in each node home (the node's
/// `safety_record.rs` owns its format).
pub const SAFETY_FILE: &str = "safety.json";
/// The record of a validator that has not voted yet: height 0, view 0, no
/// votes (the node reads it as the empty safety state).
pub const INITIAL_SAFETY_RECORD: &str = "{\"format\":\"cairn-safety-1\",\"height\":0,\"view\":0}\n";

/// Writes the initial safety record into a new validator's home, durably
/// (file and folder fsynced). Whoever sets up a validator home for a new
/// network calls it (`cairn-genesis testnet`; `cairn-node init` when it
/// exists), so the validator starts as one that has not voted yet. A home
/// without any record and without blocks is a validator that lost its
/// record: it abstains until it has caught up with its peers (issue 10).
/// Every validator of a new network starting that way would wait for the
/// others forever. Refuses to overwrite a record.
pub fn write_initial_safety_record(home: &Path) -> Result<(), String> {
    use std::io::Write;
    let path = home.join(SAFETY_FILE);
    let shown = path.display();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("cannot create {shown}: {e}"))?;
    file.write_all(INITIAL_SAFETY_RECORD.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::File::open(home)?.sync_all())
        .map_err(|e| format!("cannot write {shown}: {e}"))
}

/// Options of `cairn-genesis testnet`.
#[derive(Clone, Debug)]
pub struct TestnetOptions {
    pub validators: usize,
    pub accounts: usize,
    pub balance: u64,
    pub chain_id: String,
    pub api_port_base: u16,
    pub p2p_port_base: u16,
    pub host: String,
}

impl Default for TestnetOptions {
    fn default() -> Self {
        TestnetOptions {
            validators: 4,
            accounts: 4,
            balance: 1_000_000_000,
            chain_id: "cairn-localnet".into(),
            api_port_base: 8080,
            p2p_port_base: 26600,
            host: "127.0.0.1".into(),
        }
    }
}

/// Folder of validator `i` inside a testnet folder: `node<i>`.
pub fn node_home(out: &Path, index: usize) -> PathBuf {
    out.join(format!("node{index}"))
}

/// Key file of funded account `j` inside a testnet folder:
/// `accounts/account<j>.key`.
pub fn account_key_path(out: &Path, index: usize) -> PathBuf {
    out.join("accounts").join(format!("account{index}.key"))
}

/// Writes a testnet into `out`, which must not exist or be empty, and
/// returns its validated genesis.
pub fn write_testnet(out: &Path, options: &TestnetOptions) -> Result<ValidGenesis, String> {
    check_options(options)?;
    let existed = check_out_dir(out)?;
    let validator_keys: Vec<Keypair> = (0..options.validators)
        .map(|_| keyfile::generate())
        .collect();
    let account_keys: Vec<Keypair> = (0..options.accounts).map(|_| keyfile::generate()).collect();
    let genesis = build_genesis(options, &validator_keys, &account_keys, now_ms()?)?;
    let valid = genesis
        .clone()
        .validate()
        .map_err(|error| error.to_string())?;
    let written = write_files(out, &genesis, &validator_keys, &account_keys);
    if let Err(error) = written {
        remove_partial(out, existed);
        return Err(error);
    }
    Ok(valid)
}

fn check_options(options: &TestnetOptions) -> Result<(), String> {
    use cairn_core::limits::VALIDATORS_MAX;
    if options.validators == 0 {
        return Err("--validators must be at least 1".into());
    }
    if options.validators > VALIDATORS_MAX {
        return Err(format!("--validators must be at most {VALIDATORS_MAX}"));
    }
    if options.accounts > TESTNET_ACCOUNTS_MAX {
        return Err(format!("--accounts must be at most {TESTNET_ACCOUNTS_MAX}"));
    }
    Ok(())
}

/// Accepts a folder that does not exist or is empty. Returns whether it
/// existed.
fn check_out_dir(out: &Path) -> Result<bool, String> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                Err(format!(
                    "{} exists and is not empty; refusing to overwrite it",
                    out.display()
                ))
            } else {
                Ok(true)
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) if out.exists() && !out.is_dir() => Err(format!(
            "{} exists and is not a folder ({error})",
            out.display()
        )),
        Err(error) => Err(format!("cannot read {}: {error}", out.display())),
    }
}

/// The genesis of a testnet with the given keys, not yet validated.
pub fn build_genesis(
    options: &TestnetOptions,
    validator_keys: &[Keypair],
    account_keys: &[Keypair],
    genesis_time_ms: u64,
) -> Result<Genesis, String> {
    let host: IpAddr = options
        .host
        .parse()
        .map_err(|_| format!("--host {:?} is not an IP address", options.host))?;
    let mut validators = Vec::with_capacity(validator_keys.len());
    for (i, key) in validator_keys.iter().enumerate() {
        let api_port = port(options.api_port_base, i, "--api-port-base")?;
        let p2p_port = port(options.p2p_port_base, i, "--p2p-port-base")?;
        validators.push(ValidatorInfo {
            name: format!("node{i}"),
            public_key: key.public().to_hex(),
            p2p_address: SocketAddr::new(host, p2p_port).to_string(),
            api_address: SocketAddr::new(host, api_port).to_string(),
        });
    }
    let accounts = account_keys
        .iter()
        .map(|key| AccountInfo {
            address: key.public().to_hex(),
            balance: options.balance,
        })
        .collect();
    Ok(Genesis {
        chain_id: options.chain_id.clone(),
        genesis_time_ms,
        validators,
        accounts,
        admins: vec![],
        params: Params::default(),
    })
}

/// `base + index` as a port, or an error naming the flag when it does not fit.
fn port(base: u16, index: usize, flag: &str) -> Result<u16, String> {
    let port = base as usize + index;
    if base == 0 {
        return Err(format!("{flag} must not be 0"));
    }
    u16::try_from(port).map_err(|_| {
        format!("{flag} {base} plus validator index {index} gives port {port}, above 65535")
    })
}

fn now_ms() -> Result<u64, String> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_string())?;
    u64::try_from(since_epoch.as_millis()).map_err(|_| "the system clock is out of range".into())
}

fn write_files(
    out: &Path,
    genesis: &Genesis,
    validator_keys: &[Keypair],
    account_keys: &[Keypair],
) -> Result<(), String> {
    let text = serde_json::to_string_pretty(genesis)
        .map_err(|e| format!("cannot encode the genesis file: {e}"))?
        + "\n";
    create_dir(out)?;
    write_file(&out.join(GENESIS_FILE), &text)?;
    for (i, key) in validator_keys.iter().enumerate() {
        let home = node_home(out, i);
        create_dir(&home)?;
        keyfile::write_new(&home.join(VALIDATOR_KEY_FILE), key)?;
        write_file(&home.join(GENESIS_FILE), &text)?;
        let config = home_node_config_text()?;
        write_file(&home.join(crate::NODE_CONFIG_FILE), &config)?;
        write_initial_safety_record(&home)?;
    }
    if !account_keys.is_empty() {
        create_dir(&out.join("accounts"))?;
    }
    for (j, key) in account_keys.iter().enumerate() {
        keyfile::write_new(&account_key_path(out, j), key)?;
    }
    Ok(())
}

/// The `node.json` of a validator home laid out as `testnet` and `init`
/// make it (genesis, key and data beside it; default limits).
pub(crate) fn home_node_config_text() -> Result<String, String> {
    let config = NodeConfig {
        genesis: GENESIS_FILE.into(),
        key: VALIDATOR_KEY_FILE.into(),
        data: DATA_DIR.into(),
        p2p_listen: None,
        api_listen: None,
        peer_addresses: Default::default(),
        limits: Default::default(),
    };
    Ok(serde_json::to_string_pretty(&config)
        .map_err(|e| format!("cannot encode the node config: {e}"))?
        + "\n")
}

fn create_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Removes what a failed [`write_files`] left behind. The folder was absent
/// or empty before, so everything in it is ours.
fn remove_partial(out: &Path, existed: bool) {
    if !existed {
        let _ = std::fs::remove_dir_all(out);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(out) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}
