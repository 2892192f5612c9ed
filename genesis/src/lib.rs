//! The Cairn genesis file, its validation, key files and node home folders.
//!
//! A genesis file names the chain, its validators (keys and addresses), the
//! funded accounts and the consensus parameters. [`Genesis::load`] parses and
//! validates one; [`Genesis::hash`] identifies it. `testnet` writes a
//! ready-to-run network of node home folders ([`NodeConfig`]) and funded
//! account key files ([`keyfile`]).

pub mod assemble;
pub mod cli;
pub mod keyfile;
mod testnet;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use cairn_core::state::{genesis_state_root, Account};
use cairn_core::{Block, BlockHeader, Hash, Height, PublicKey, View};

pub use testnet::{
    account_key_path, build_genesis, node_home, write_initial_safety_record, write_testnet,
    TestnetOptions, DATA_DIR, GENESIS_FILE, INITIAL_SAFETY_RECORD, SAFETY_FILE,
    TESTNET_ACCOUNTS_MAX, VALIDATOR_KEY_FILE,
};

/// Domain tag of the genesis hash.
pub const GENESIS_DOMAIN: &[u8] = b"cairn/genesis/v1\0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub chain_id: String,
    pub genesis_time_ms: u64,
    pub validators: Vec<ValidatorInfo>,
    pub accounts: Vec<AccountInfo>,
    /// Keys allowed to administer the chain. Reserved: no admin operation
    /// exists yet, so total supply is constant.
    #[serde(default)]
    pub admins: Vec<String>,
    pub params: Params,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorInfo {
    pub name: String,
    /// ed25519 public key, 64 hex characters.
    pub public_key: String,
    /// Where peers reach this validator, `host:port`.
    pub p2p_address: String,
    /// Where this validator serves its HTTP API, `host:port`.
    pub api_address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountInfo {
    pub address: String,
    pub balance: u64,
}

/// Consensus and node parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Least time between two proposals.
    pub block_interval_ms: u64,
    /// Most transactions in one block.
    pub block_txs_max: usize,
    /// View-change timeout (doubles per consecutive failed view).
    pub view_timeout_ms: u64,
    /// Most transactions a node's mempool holds.
    pub mempool_txs_max: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            block_interval_ms: 50,
            block_txs_max: 10_000,
            view_timeout_ms: 2_000,
            mempool_txs_max: 200_000,
        }
    }
}

/// What is wrong with a genesis file.
#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a valid genesis file: {error}")]
    Parse {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("invalid genesis: {0}")]
    Invalid(String),
}

/// Why a key is refused, or `None`: a weak key ([`PublicKey::is_weak`])
/// lets anyone sign for it; bytes that are no curve point can never sign,
/// so money there could never move and a validator could never vote.
fn unusable_key(key: &PublicKey) -> Option<&'static str> {
    if key.is_weak() {
        Some("is a weak key: a small-order ed25519 point anyone can sign for")
    } else if !key.is_curve_point() {
        Some("is not a curve point: no key can ever sign for it")
    } else {
        None
    }
}

fn invalid(message: impl Into<String>) -> GenesisError {
    GenesisError::Invalid(message.into())
}

/// A genesis file that passed validation, with its keys parsed.
#[derive(Clone, Debug)]
pub struct ValidGenesis {
    pub genesis: Genesis,
    pub validators: Vec<PublicKey>,
    pub p2p_addresses: Vec<SocketAddr>,
    pub api_addresses: Vec<SocketAddr>,
    pub accounts: BTreeMap<PublicKey, Account>,
    pub hash: Hash,
}

impl Genesis {
    /// Reads, parses and validates a genesis file.
    pub fn load(path: &Path) -> Result<ValidGenesis, GenesisError> {
        let text = std::fs::read_to_string(path).map_err(|error| GenesisError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let genesis: Genesis =
            serde_json::from_str(&text).map_err(|error| GenesisError::Parse {
                path: path.to_path_buf(),
                error,
            })?;
        genesis.validate()
    }

    /// Checks everything a node relies on and returns the parsed form.
    pub fn validate(self) -> Result<ValidGenesis, GenesisError> {
        use cairn_core::limits::{BLOCK_TXS_MAX, CHAIN_ID_BYTES_MAX, VALIDATORS_MAX};
        if self.chain_id.is_empty() || self.chain_id.len() > CHAIN_ID_BYTES_MAX {
            return Err(invalid(format!(
                "chain_id must be 1 to {CHAIN_ID_BYTES_MAX} bytes"
            )));
        }
        if !self
            .chain_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(invalid(
                "chain_id may hold only letters, digits, '-', '_' and '.'",
            ));
        }
        if self.validators.is_empty() {
            return Err(invalid("fewer than 1 validator"));
        }
        if self.validators.len() > VALIDATORS_MAX {
            return Err(invalid(format!("more than {VALIDATORS_MAX} validators")));
        }
        let mut validators = Vec::new();
        let mut p2p_addresses = Vec::new();
        let mut api_addresses = Vec::new();
        let mut names = BTreeSet::new();
        let mut listen = BTreeSet::new();
        for (i, v) in self.validators.iter().enumerate() {
            let key: PublicKey = v.public_key.parse().map_err(|e| {
                invalid(format!(
                    "validator {i} ({}): public_key: bad hex: {e}",
                    v.name
                ))
            })?;
            if let Some(why) = unusable_key(&key) {
                return Err(invalid(format!(
                    "validator {i} ({}): public_key {} {why}",
                    v.name, v.public_key
                )));
            }
            if validators.contains(&key) {
                return Err(invalid(format!(
                    "duplicate validator key {} (validator {i}, {})",
                    v.public_key, v.name
                )));
            }
            if v.name.is_empty() || !names.insert(v.name.clone()) {
                return Err(invalid(format!(
                    "validator {i}: empty or duplicate name {:?}",
                    v.name
                )));
            }
            let p2p = parse_address(&v.p2p_address, i, "p2p_address")?;
            let api = parse_address(&v.api_address, i, "api_address")?;
            for address in [p2p, api] {
                if !listen.insert(address) {
                    return Err(invalid(format!(
                        "validator {i}: address {address} is used twice"
                    )));
                }
            }
            validators.push(key);
            p2p_addresses.push(p2p);
            api_addresses.push(api);
        }
        let mut accounts = BTreeMap::new();
        let mut supply: u64 = 0;
        for (j, a) in self.accounts.iter().enumerate() {
            let address: PublicKey = a
                .address
                .parse()
                .map_err(|e| invalid(format!("account {j}: address: bad hex: {e}")))?;
            if let Some(why) = unusable_key(&address) {
                return Err(invalid(format!("account {j}: address {} {why}", a.address)));
            }
            if accounts.contains_key(&address) {
                return Err(invalid(format!("duplicate account {}", a.address)));
            }
            supply = supply
                .checked_add(a.balance)
                .ok_or_else(|| invalid("total supply overflows a 64-bit unsigned integer"))?;
            accounts.insert(
                address,
                Account {
                    balance: a.balance,
                    nonce: 0,
                },
            );
        }
        if supply == 0 {
            return Err(invalid("zero total supply"));
        }
        for (k, admin) in self.admins.iter().enumerate() {
            let key = admin
                .parse::<PublicKey>()
                .map_err(|e| invalid(format!("admin {k}: bad hex: {e}")))?;
            if let Some(why) = unusable_key(&key) {
                return Err(invalid(format!("admin {k}: {admin} {why}")));
            }
        }
        let p = &self.params;
        if p.block_txs_max == 0 || p.block_txs_max > BLOCK_TXS_MAX {
            return Err(invalid(format!(
                "params.block_txs_max must be 1 to {BLOCK_TXS_MAX}"
            )));
        }
        if p.block_interval_ms > 60_000 {
            return Err(invalid("params.block_interval_ms must be at most 60000"));
        }
        if p.view_timeout_ms < 100 || p.view_timeout_ms > 600_000 {
            return Err(invalid("params.view_timeout_ms must be 100 to 600000"));
        }
        if p.mempool_txs_max < p.block_txs_max || p.mempool_txs_max > 10_000_000 {
            return Err(invalid(
                "params.mempool_txs_max must be at least block_txs_max and at most 10000000",
            ));
        }
        let hash = Hash::digest(&[GENESIS_DOMAIN, &cairn_core::codec::encode(&self)]);
        Ok(ValidGenesis {
            genesis: self,
            validators,
            p2p_addresses,
            api_addresses,
            accounts,
            hash,
        })
    }
}

fn parse_address(text: &str, index: usize, field: &str) -> Result<SocketAddr, GenesisError> {
    let address: SocketAddr = text.parse().map_err(|_| {
        invalid(format!(
            "validator {index}: {field} {text:?} is not ip:port"
        ))
    })?;
    if address.port() == 0 {
        return Err(invalid(format!("validator {index}: {field} has port 0")));
    }
    Ok(address)
}

impl ValidGenesis {
    pub fn chain_id(&self) -> &str {
        &self.genesis.chain_id
    }

    pub fn total_supply(&self) -> u64 {
        self.accounts.values().map(|a| a.balance).sum()
    }

    pub fn index_of(&self, key: &PublicKey) -> Option<usize> {
        self.validators.iter().position(|v| v == key)
    }

    /// The genesis block: height 0, parent hash = the genesis hash, state root
    /// over the funded accounts, no transactions and no certificate.
    pub fn block(&self) -> Block {
        Block {
            header: BlockHeader {
                height: Height(0),
                parent_hash: self.hash,
                view: View(0),
                proposer: PublicKey([0; 32]),
                timestamp_ms: self.genesis.genesis_time_ms,
                tx_root: cairn_core::tx_root([]),
                state_root: genesis_state_root(&self.accounts),
            },
            transactions: vec![],
        }
    }
}

/// `node.json` in a node's home folder. Relative paths are relative to the
/// home folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The genesis file.
    pub genesis: PathBuf,
    /// This validator's key file.
    pub key: PathBuf,
    /// The sled database folder.
    pub data: PathBuf,
    /// Where to listen for peers; default: this validator's `p2p_address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p_listen: Option<SocketAddr>,
    /// Where to serve the API; default: this validator's `api_address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<SocketAddr>,
    /// Where this node dials some peers instead of their genesis
    /// `p2p_address`, by validator name (`{"node2": "10.0.0.7:9100"}`):
    /// a peer reached through NAT, a tunnel or a fault proxy. Only peers this
    /// node dials use it: the lower index of a pair dials the higher, so an
    /// entry for a lower-index peer is never used. Checked against the
    /// genesis by [`NodeConfig::dial_addresses`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peer_addresses: BTreeMap<String, SocketAddr>,
    /// This node's admission and API limits; every one has a default.
    #[serde(default, skip_serializing_if = "NodeLimits::is_default")]
    pub limits: NodeLimits,
}

/// Every limit an operator may tune on one node (`node.json` `"limits"`),
/// in one place. Consensus does not depend on any of them: validators may
/// differ. The mempool's total size is a chain parameter
/// (`params.mempool_txs_max` in genesis); these split and bound it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeLimits {
    /// Most transactions one sender may hold in the mempool, ready and
    /// parked together (over it: 429 `sender_limit`).
    pub mempool_sender_txs_max: usize,
    /// Most transactions one sender may hold parked behind a nonce gap.
    pub mempool_sender_parked_max: usize,
    /// Most parked transactions in all (a share of the mempool).
    pub mempool_parked_max: usize,
    /// How long a parked transaction may wait for its gap to fill.
    pub mempool_parked_ttl_ms: u64,
    /// How long any transaction may wait in the mempool in all.
    pub mempool_ttl_ms: u64,
    /// Clients' transactions are admitted while the mempool holds fewer
    /// than this many blocks' worth (`params.block_txs_max` each, and at
    /// most three quarters of the pool): a node offered more than the chain
    /// commits refuses the excess at once (503, before any signature
    /// check) instead of verifying it, queueing it for seconds and starving
    /// consensus of CPU.
    pub mempool_client_blocks: usize,
    /// Time a client has to send complete request headers.
    pub api_header_timeout_ms: u64,
    /// Time a client has to send a whole request body.
    pub api_body_timeout_ms: u64,
    /// Open API connections from one client IP address.
    pub api_connections_per_ip_max: usize,
    /// Open API connections in all.
    pub api_connections_max: usize,
    /// Open `GET /v1/events` streams in all.
    pub api_sse_subscribers_max: usize,
    /// Consensus frames (messages, sync replies) from one peer waiting for
    /// the consensus thread; more are dropped.
    pub consensus_queue_frames_per_peer: usize,
    /// Bytes of those frames from one peer (at least one largest p2p
    /// frame, 32 MiB).
    pub consensus_queue_bytes_per_peer: usize,
    /// p2p handshakes in progress at once, from anyone; a connection over
    /// the cap is closed at once, before anything is allocated or signed.
    pub p2p_handshakes_max: usize,
    /// Time a p2p connection has to complete its handshake.
    pub p2p_handshake_timeout_ms: u64,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            mempool_sender_txs_max: 1_000,
            mempool_sender_parked_max: 64,
            mempool_parked_max: 20_000,
            mempool_parked_ttl_ms: 60_000,
            mempool_ttl_ms: 600_000,
            mempool_client_blocks: 4,
            api_header_timeout_ms: 10_000,
            api_body_timeout_ms: 30_000,
            api_connections_per_ip_max: 256,
            api_connections_max: 4_096,
            api_sse_subscribers_max: 256,
            consensus_queue_frames_per_peer: 4_096,
            consensus_queue_bytes_per_peer: 64 * 1024 * 1024,
            p2p_handshakes_max: 64,
            p2p_handshake_timeout_ms: 5_000,
        }
    }
}

impl NodeLimits {
    fn is_default(&self) -> bool {
        *self == NodeLimits::default()
    }

    /// Checks the limits make sense together.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("mempool_sender_txs_max", self.mempool_sender_txs_max as u64),
            ("mempool_parked_max", self.mempool_parked_max as u64),
            ("mempool_parked_ttl_ms", self.mempool_parked_ttl_ms),
            ("mempool_ttl_ms", self.mempool_ttl_ms),
            ("mempool_client_blocks", self.mempool_client_blocks as u64),
            ("api_header_timeout_ms", self.api_header_timeout_ms),
            ("api_body_timeout_ms", self.api_body_timeout_ms),
            (
                "api_connections_per_ip_max",
                self.api_connections_per_ip_max as u64,
            ),
            ("api_connections_max", self.api_connections_max as u64),
            (
                "api_sse_subscribers_max",
                self.api_sse_subscribers_max as u64,
            ),
            (
                "consensus_queue_frames_per_peer",
                self.consensus_queue_frames_per_peer as u64,
            ),
            ("p2p_handshakes_max", self.p2p_handshakes_max as u64),
            ("p2p_handshake_timeout_ms", self.p2p_handshake_timeout_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("limits.{name} must be greater than zero"));
        }
        if self.mempool_sender_parked_max > self.mempool_sender_txs_max {
            return Err(
                "limits.mempool_sender_parked_max must be at most mempool_sender_txs_max".into(),
            );
        }
        let frame = cairn_core::limits::P2P_FRAME_BYTES_MAX;
        if self.consensus_queue_bytes_per_peer < frame {
            return Err(format!(
                "limits.consensus_queue_bytes_per_peer must be at least {frame} (one p2p frame)"
            ));
        }
        if self.api_connections_per_ip_max > self.api_connections_max {
            return Err(
                "limits.api_connections_per_ip_max must be at most api_connections_max".into(),
            );
        }
        Ok(())
    }
}

pub const NODE_CONFIG_FILE: &str = "node.json";

impl NodeConfig {
    /// Reads `home/node.json` and resolves its paths against `home`.
    pub fn load(home: &Path) -> Result<NodeConfig, String> {
        let path = home.join(NODE_CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut config: NodeConfig = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a valid node config: {e}", path.display()))?;
        config.genesis = home.join(&config.genesis);
        config.key = home.join(&config.key);
        config.data = home.join(&config.data);
        config
            .limits
            .check()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// The address this node (validator `me` of `genesis`) dials each
    /// validator at: its `peer_addresses` entry, else its genesis
    /// `p2p_address`. Refuses an entry naming no validator, naming this
    /// validator itself, or an address no one can dial (port 0, an
    /// unspecified IP such as `0.0.0.0`).
    pub fn dial_addresses(
        &self,
        genesis: &ValidGenesis,
        me: usize,
    ) -> Result<Vec<SocketAddr>, String> {
        let mut addresses = genesis.p2p_addresses.clone();
        for (name, address) in &self.peer_addresses {
            let Some(index) = genesis
                .genesis
                .validators
                .iter()
                .position(|v| v.name == *name)
            else {
                return Err(format!(
                    "peer_addresses: no validator is named {name:?} in the genesis"
                ));
            };
            if index == me {
                return Err(format!(
                    "peer_addresses: {name:?} is this validator; it does not dial itself"
                ));
            }
            if address.port() == 0 || address.ip().is_unspecified() {
                return Err(format!(
                    "peer_addresses: {name:?}: {address} is not an address to dial"
                ));
            }
            addresses[index] = *address;
        }
        Ok(addresses)
    }
}

#[cfg(test)]
mod tests;
