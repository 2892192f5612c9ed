//! Cairn wallet library: offline signing and a small blocking HTTP client for
//! a validator's API.
//!
//! [`Client`] wraps one node URL. Every request has bounded connect, read and
//! write timeouts and a bounded answer size; a non-2xx answer with an
//! `{"error", "code"}` body becomes [`WalletError::Api`] carrying both.
//! [`Client::transfer`] fetches the chain id and next nonce, signs with the
//! sender's key and submits; [`Client::wait_for_commit`] polls the
//! transaction until it is committed, rejected or the time is up.
//!
//! ```no_run
//! use std::time::Duration;
//! use cairn_wallet::{parse_address, Client};
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let key = cairn_genesis::keyfile::read("localnet/accounts/account0.key".as_ref())
//!     .map_err(cairn_wallet::WalletError::Invalid)?;
//! let to = parse_address("8479533b68bbe7b7442b102d94dc53099b1f6395cb27750895472a77fa31c7d7")?;
//! let sent = client.transfer(&key, to, 5, None)?;
//! let committed = client.wait_for_commit(&sent.hash, Duration::from_secs(30))?;
//! println!("{} committed at height {:?}", sent.hash, committed.height);
//! # Ok::<(), cairn_wallet::WalletError>(())
//! ```

pub mod keys;

use std::io::Read;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use cairn_core::api::{
    AccountJson, BatchEntryJson, BlockJson, ErrorJson, StatusJson, SubmitJson, TxJson, TxStatusJson,
};
use cairn_core::limits::CHAIN_ID_BYTES_MAX;
use cairn_core::{Hash, Keypair, PublicKey, SignedTransaction, Transfer};

/// Default node URL when neither `--node` nor `CAIRN_NODE` is given.
pub const DEFAULT_NODE_URL: &str = "http://127.0.0.1:8080";
/// Longest wait for a TCP connection to the node.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest a single request may take, end to end.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Least time one status poll of [`Client::wait_for_commit`] may take, even
/// when the deadline is nearer (so the last poll can still get an answer).
pub const POLL_REQUEST_TIMEOUT_MIN_MS: u64 = 500;
/// How often [`Client::wait_for_commit`] asks for the transaction's status.
pub const POLL_INTERVAL_MS: u64 = 100;
/// Longest [`Client::wait_for_commit`] waits, whatever it is asked (a day).
pub const WAIT_TIMEOUT_MAX_MS: u64 = 24 * 60 * 60 * 1000;
/// Largest successful answer read (a full block is the largest).
pub const RESPONSE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Largest error answer read.
pub const ERROR_BODY_BYTES_MAX: u64 = 64 * 1024;

/// What went wrong talking to a node or preparing a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    /// No HTTP answer: connection refused, DNS, timeout, reset.
    #[error("cannot reach node at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The node answered non-2xx with an `{"error", "code"}` body.
    #[error("node refused the request (HTTP {status}, {code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The node answered non-2xx without a well-formed error body.
    #[error("node answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// The node answered 2xx with something that is not the expected JSON.
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse { url: String, reason: String },
    /// The transaction was included but rejected.
    #[error("transaction {hash} was rejected: {reason}")]
    Rejected { hash: String, reason: String },
    /// The transaction was not committed in time.
    #[error(
        "transaction {hash} not committed within {timeout_secs} s (last status: {last_status})"
    )]
    NotCommitted {
        hash: String,
        timeout_secs: u64,
        last_status: String,
    },
    /// Bad local input, caught before any request: address, hash, amount,
    /// chain id, key file, URL.
    #[error("{0}")]
    Invalid(String),
    /// An answer failed a check against the trusted genesis file (or the
    /// node reported a hash other than the one the wallet computed).
    #[error("verification failed: {0}")]
    Verification(String),
}

impl WalletError {
    /// The API's error code, when the node gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            WalletError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Parses an address (an ed25519 public key, 64 hex characters). Upper-case
/// hex is accepted and normalised.
pub fn parse_address(text: &str) -> Result<PublicKey, WalletError> {
    text.trim()
        .to_ascii_lowercase()
        .parse()
        .map_err(|e| WalletError::Invalid(format!("invalid address {text:?}: {e}")))
}

/// Parses the receiver of a transfer: an address ([`parse_address`]) that is
/// not a weak key, refused here so nothing is signed or sent.
pub fn parse_recipient(text: &str) -> Result<PublicKey, WalletError> {
    let to = parse_address(text)?;
    check_recipient(&to)?;
    Ok(to)
}

/// Refuses a weak key ([`PublicKey::is_weak`]) as a receiver: money sent to
/// a small-order point could be taken by anyone, and nodes refuse it anyway
/// (`invalid_address`). Refuses 32 bytes that are no curve point too: nodes
/// would take the transfer, but no key could ever move that money again.
fn check_recipient(to: &PublicKey) -> Result<(), WalletError> {
    if to.is_weak() {
        return Err(WalletError::Invalid(format!(
            "invalid address {to}: a weak key (a small-order ed25519 point anyone can sign \
             for); nodes refuse transfers to it"
        )));
    }
    if !to.is_curve_point() {
        return Err(WalletError::Invalid(format!(
            "invalid address {to}: not a curve point, so no key can ever spend what is sent \
             there"
        )));
    }
    Ok(())
}

/// Parses a transaction or block hash (64 hex characters).
pub fn parse_hash(text: &str) -> Result<Hash, WalletError> {
    text.trim()
        .to_ascii_lowercase()
        .parse()
        .map_err(|e| WalletError::Invalid(format!("invalid hash {text:?}: {e}")))
}

/// Signs a transfer offline. Refuses a zero amount, a weak receiver and a
/// chain id the node could never accept.
pub fn sign_transfer(
    key: &Keypair,
    chain_id: &str,
    to: PublicKey,
    amount: u64,
    nonce: u64,
) -> Result<SignedTransaction, WalletError> {
    if amount == 0 {
        return Err(WalletError::Invalid(
            "amount must be greater than zero".into(),
        ));
    }
    if chain_id.is_empty() || chain_id.len() > CHAIN_ID_BYTES_MAX {
        return Err(WalletError::Invalid(format!(
            "chain id must be 1 to {CHAIN_ID_BYTES_MAX} bytes"
        )));
    }
    check_recipient(&to)?;
    let transfer = Transfer {
        chain_id: chain_id.to_string(),
        from: key.public(),
        to,
        amount,
        nonce,
    };
    Ok(SignedTransaction::sign(transfer, key))
}

/// Maps a non-2xx answer to an error: `{"error", "code"}` bodies become
/// [`WalletError::Api`], anything else [`WalletError::Http`].
pub fn error_from_answer(status: u16, body: &str) -> WalletError {
    match serde_json::from_str::<ErrorJson>(body) {
        Ok(ErrorJson { error, code }) => WalletError::Api {
            status,
            code,
            message: error,
        },
        Err(_) => {
            let mut body: String = body.trim().chars().take(200).collect();
            if body.is_empty() {
                body = "(empty body)".into();
            }
            WalletError::Http { status, body }
        }
    }
}

/// What the wallet trusts, from a genesis file (`--genesis`): it checks
/// every answer it uses against it ([`cairn_core::verify`]).
#[derive(Clone, Debug)]
pub struct Verifier {
    pub chain_id: String,
    pub validators: Vec<PublicKey>,
    pub genesis_hash: Hash,
}

impl Verifier {
    /// Reads and checks a genesis file.
    pub fn from_genesis_file(path: &std::path::Path) -> Result<Verifier, WalletError> {
        let genesis = cairn_genesis::Genesis::load(path)
            .map_err(|e| WalletError::Invalid(format!("genesis file {}: {e}", path.display())))?;
        Ok(Verifier {
            chain_id: genesis.chain_id().to_string(),
            validators: genesis.validators.clone(),
            genesis_hash: genesis.block().hash(),
        })
    }

    pub fn trust(&self) -> cairn_core::verify::Trust<'_> {
        cairn_core::verify::Trust {
            chain_id: &self.chain_id,
            validators: &self.validators,
            genesis_hash: self.genesis_hash,
        }
    }

    /// A status answer: the chain id and validators must be the genesis
    /// file's (the rest is the node's word and cannot be checked).
    pub fn status(&self, answer: &StatusJson) -> Result<(), WalletError> {
        if answer.chain_id != self.chain_id {
            return Err(WalletError::Verification(format!(
                "the node reports chain id {:?}, the genesis file says {:?}",
                answer.chain_id, self.chain_id
            )));
        }
        let validators: Vec<String> = self.validators.iter().map(PublicKey::to_hex).collect();
        if answer.validators != validators {
            return Err(WalletError::Verification(
                "the node reports validators other than the genesis file's".into(),
            ));
        }
        Ok(())
    }

    /// An account answer (asked with `?proof=true`) for `address`.
    pub fn account(&self, address: &PublicKey, answer: &AccountJson) -> Result<(), WalletError> {
        if answer.address != address.to_hex() {
            return Err(WalletError::Verification(format!(
                "asked about {address}, the answer is about {}",
                answer.address
            )));
        }
        cairn_core::verify::verify_account(self.trust(), answer)
            .map(|_| ())
            .map_err(|e| WalletError::Verification(format!("account {address}: {e}")))
    }

    /// A committed transaction's answer (asked with `?proof=true`).
    pub fn transaction(&self, hash: &Hash, answer: &TxStatusJson) -> Result<(), WalletError> {
        cairn_core::verify::verify_transaction(self.trust(), hash, answer)
            .map(|_| ())
            .map_err(|e| WalletError::Verification(format!("transaction {hash}: {e}")))
    }

    /// A block answer, for the block asked for.
    pub fn block(&self, asked: BlockId, answer: &BlockJson) -> Result<(), WalletError> {
        if let BlockId::Height(height) = asked {
            if answer.height != height {
                return Err(WalletError::Verification(format!(
                    "asked for block {height}, the answer is block {}",
                    answer.height
                )));
            }
        }
        cairn_core::verify::verify_block(self.trust(), answer)
            .map(|_| ())
            .map_err(|e| WalletError::Verification(format!("block {}: {e}", answer.height)))
    }
}

/// Which block to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockId {
    Latest,
    Height(u64),
}

impl FromStr for BlockId {
    type Err = WalletError;

    /// `latest` or a height.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "latest" {
            return Ok(BlockId::Latest);
        }
        text.parse().map(BlockId::Height).map_err(|_| {
            WalletError::Invalid(format!(
                "invalid block {text:?}: expected a height or `latest`"
            ))
        })
    }
}

impl BlockId {
    /// The API route of this block.
    pub fn path(self) -> String {
        match self {
            BlockId::Latest => "/v1/blocks/latest".into(),
            BlockId::Height(height) => format!("/v1/blocks/{height}"),
        }
    }
}

/// A transfer the node accepted into its mempool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// The hash the node reported.
    pub hash: Hash,
    /// The signed transaction as it was sent.
    pub tx: TxJson,
}

/// A blocking client of one node's HTTP API.
#[derive(Clone, Debug)]
pub struct Client {
    base_url: String,
    agent: ureq::Agent,
    request_timeout: Duration,
}

impl Client {
    /// A client of the node at `base_url` (`http://host:port`).
    pub fn new(base_url: &str) -> Result<Client, WalletError> {
        Client::with_timeout(base_url, Duration::from_millis(REQUEST_TIMEOUT_MS))
    }

    /// Like [`Client::new`] with a different per-request timeout.
    pub fn with_timeout(base_url: &str, request_timeout: Duration) -> Result<Client, WalletError> {
        let base_url = base_url.trim().trim_end_matches('/').to_string();
        let rest = base_url
            .strip_prefix("http://")
            .or_else(|| base_url.strip_prefix("https://"));
        if !matches!(rest, Some(host) if !host.is_empty() && !host.contains(char::is_whitespace)) {
            return Err(WalletError::Invalid(format!(
                "invalid node URL {base_url:?}: expected http://host:port"
            )));
        }
        let connect = Duration::from_millis(CONNECT_TIMEOUT_MS).min(request_timeout);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(connect)
            .timeout(request_timeout)
            .redirects(0)
            .user_agent(concat!("cairn-wallet/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            base_url,
            agent,
            request_timeout,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<StatusJson, WalletError> {
        self.get("/v1/status")
    }

    /// `GET /v1/accounts/{address}`.
    pub fn account(&self, address: &PublicKey) -> Result<AccountJson, WalletError> {
        self.get(&format!("/v1/accounts/{address}"))
    }

    /// `POST /v1/transactions`.
    pub fn submit(&self, tx: &TxJson) -> Result<SubmitJson, WalletError> {
        self.post("/v1/transactions", tx)
    }

    /// `POST /v1/transactions/batch`: one entry per transaction, in order.
    pub fn submit_batch(&self, txs: &[TxJson]) -> Result<Vec<BatchEntryJson>, WalletError> {
        self.post("/v1/transactions/batch", txs)
    }

    /// `GET /v1/transactions/{hash}`; an unknown hash is an
    /// [`WalletError::Api`] with code `not_found`.
    pub fn tx_status(&self, hash: &Hash) -> Result<TxStatusJson, WalletError> {
        self.get(&format!("/v1/transactions/{hash}"))
    }

    /// `GET /v1/blocks/latest` or `GET /v1/blocks/{height}`.
    pub fn block(&self, id: BlockId) -> Result<BlockJson, WalletError> {
        self.get(&id.path())
    }

    /// Signs a transfer of `amount` from `key`'s account to `to` and submits
    /// it. The chain id comes from the node; the nonce too unless given.
    pub fn transfer(
        &self,
        key: &Keypair,
        to: PublicKey,
        amount: u64,
        nonce: Option<u64>,
    ) -> Result<Submitted, WalletError> {
        self.transfer_on(None, key, to, amount, nonce)
    }

    /// Like [`Client::transfer`], signing for `chain_id` when given (the
    /// trusted genesis file's) instead of the chain id the node reports: a
    /// lying node cannot get a signature valid on another chain. The hash
    /// the node reports must be the one the wallet computed.
    pub fn transfer_on(
        &self,
        chain_id: Option<&str>,
        key: &Keypair,
        to: PublicKey,
        amount: u64,
        nonce: Option<u64>,
    ) -> Result<Submitted, WalletError> {
        if amount == 0 {
            return Err(WalletError::Invalid(
                "amount must be greater than zero".into(),
            ));
        }
        let chain_id = match chain_id {
            Some(chain_id) => chain_id.to_string(),
            None => self.status()?.chain_id,
        };
        let nonce = match nonce {
            Some(nonce) => nonce,
            // The node's pending nonce counts what it already holds from
            // this key, so transfers in a row need not wait for each other.
            None => {
                let account = self.account(&key.public())?;
                account.pending_nonce.unwrap_or(account.nonce)
            }
        };
        let signed = sign_transfer(key, &chain_id, to, amount, nonce)?;
        let tx = TxJson::from(&signed);
        let answer = self.submit(&tx)?;
        let hash: Hash = answer.hash.parse().map_err(|e| WalletError::BadResponse {
            url: self.url("/v1/transactions"),
            reason: format!("hash {:?}: {e}", answer.hash),
        })?;
        if hash != signed.hash() {
            return Err(WalletError::Verification(format!(
                "the node reported hash {hash} for the transfer whose hash is {}",
                signed.hash()
            )));
        }
        Ok(Submitted { hash, tx })
    }

    /// Polls `GET /v1/transactions/{hash}` every [`POLL_INTERVAL_MS`] until
    /// the transaction is committed (returns its status, with `height`),
    /// rejected ([`WalletError::Rejected`]) or `timeout` has passed
    /// ([`WalletError::NotCommitted`]). While waiting, an unknown hash and an
    /// unreachable node count as "not yet". The last poll may overrun the
    /// deadline by up to [`POLL_REQUEST_TIMEOUT_MIN_MS`].
    pub fn wait_for_commit(
        &self,
        hash: &Hash,
        timeout: Duration,
    ) -> Result<TxStatusJson, WalletError> {
        let timeout = timeout.min(Duration::from_millis(WAIT_TIMEOUT_MAX_MS));
        let deadline = Instant::now() + timeout;
        let path = format!("/v1/transactions/{hash}");
        let mut last_status = String::from("unknown");
        let poll_timeout = Duration::from_millis(POLL_REQUEST_TIMEOUT_MIN_MS);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let answer = self.request_json::<TxStatusJson>(
                self.agent
                    .get(&self.url(&path))
                    .timeout(poll_timeout.max(remaining).min(self.request_timeout)),
                None::<&()>,
                &path,
            );
            match answer {
                Ok(status) if status.status == "committed" => return Ok(status),
                // Dropped unexecuted (refused, or expired in the mempool):
                // it will not commit unless sent again.
                Ok(status) if status.status == "rejected" || status.status == "expired" => {
                    return Err(WalletError::Rejected {
                        hash: hash.to_hex(),
                        reason: status.error.unwrap_or_else(|| "no reason given".into()),
                    })
                }
                Ok(status) => last_status = status.status,
                Err(WalletError::Api { code, .. }) if code == "not_found" => {
                    last_status = "not found".into()
                }
                Err(error @ WalletError::Unreachable { .. }) => {
                    if last_status == "unknown" {
                        last_status = error.to_string();
                    }
                }
                Err(error) => return Err(error),
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(WalletError::NotCommitted {
                    hash: hash.to_hex(),
                    timeout_secs: timeout.as_secs_f64().ceil() as u64,
                    last_status,
                });
            }
            std::thread::sleep(remaining.min(Duration::from_millis(POLL_INTERVAL_MS)));
        }
    }

    /// `GET path`, parsed as `T` (use `serde_json::Value` for the raw JSON).
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, WalletError> {
        self.request_json(self.agent.get(&self.url(path)), None::<&()>, path)
    }

    /// `POST path` with a JSON body, the answer parsed as `T`.
    pub fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, WalletError> {
        self.request_json(self.agent.post(&self.url(path)), Some(body), path)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn request_json<T: DeserializeOwned>(
        &self,
        request: ureq::Request,
        body: Option<&(impl Serialize + ?Sized)>,
        path: &str,
    ) -> Result<T, WalletError> {
        let answer = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match answer {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                return Err(error_from_answer(status, &read_error_body(response)))
            }
            Err(ureq::Error::Transport(transport)) => {
                return Err(WalletError::Unreachable {
                    url: self.base_url.clone(),
                    reason: transport_reason(&transport),
                })
            }
        };
        let reader = response.into_reader().take(RESPONSE_BYTES_MAX);
        serde_json::from_reader(reader).map_err(|e| WalletError::BadResponse {
            url: self.url(path),
            reason: e.to_string(),
        })
    }
}

fn read_error_body(response: ureq::Response) -> String {
    let mut body = String::new();
    let _ = response
        .into_reader()
        .take(ERROR_BODY_BYTES_MAX)
        .read_to_string(&mut body);
    body
}

/// A short reason for a transport failure, without repeating the URL or
/// the same words twice.
fn transport_reason(transport: &ureq::Transport) -> String {
    let mut parts = vec![transport.kind().to_string()];
    parts.extend(transport.message().map(str::to_string));
    parts.extend(std::error::Error::source(transport).map(|s| s.to_string()));
    let mut reason = String::new();
    for part in parts {
        if reason.is_empty() || part.starts_with(&reason) {
            reason = part;
        } else if !reason.contains(&part) {
            reason = format!("{reason}: {part}");
        }
    }
    reason
}

#[cfg(test)]
mod tests;
