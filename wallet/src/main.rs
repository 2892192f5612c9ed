//! `cairn-wallet`: key files, offline signing, transfers and queries against
//! a Cairn node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use cairn_core::api::{AccountJson, BlockJson, StatusJson, TxJson, TxStatusJson};
use cairn_core::Keypair;
use cairn_genesis::keyfile::{self, KdfParams, KeyFile};
use cairn_wallet::keys::{self, PassphraseSource};
use cairn_wallet::{
    parse_address, parse_hash, parse_recipient, sign_transfer, BlockId, Client, Verifier,
    WalletError,
};

/// Cairn wallet: keys, signing, sending transactions, queries.
#[derive(Parser)]
#[command(name = "cairn-wallet", version)]
struct Cli {
    /// The node's API URL.
    #[arg(
        long,
        global = true,
        env = "CAIRN_NODE",
        value_name = "URL",
        default_value = cairn_wallet::DEFAULT_NODE_URL
    )]
    node: String,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Trust this genesis file, not the node: take the chain id and the
    /// validator set from it and check every answer (`verified: yes`).
    #[arg(long, global = true, env = "CAIRN_GENESIS", value_name = "FILE")]
    genesis: Option<PathBuf>,
    /// Read the key file passphrase from FILE (first line) instead of
    /// CAIRN_PASSPHRASE or a terminal prompt.
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new key file (mode 0600), encrypted under a passphrase
    /// unless --plain, and print its address.
    ///
    /// The passphrase comes from --passphrase-file, CAIRN_PASSPHRASE, or a
    /// prompt on the terminal (asked twice).
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Write the secret key unencrypted (anyone who can read the file can
        /// spend from it).
        #[arg(long)]
        plain: bool,
    },
    /// Print the address of a key file (no passphrase needed: an encrypted
    /// file stores its public key in clear, checked when the key is used).
    Address {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Write an encrypted copy of a plain key file.
    #[command(visible_alias = "import")]
    Encrypt {
        /// The plain key file to read.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where to write the encrypted copy (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Re-encrypt a key file under a new passphrase, in place.
    ///
    /// The current passphrase comes from --passphrase-file, CAIRN_PASSPHRASE
    /// or a prompt; the new one from --new-passphrase-file or a prompt (asked
    /// twice).
    ChangePassphrase {
        /// The encrypted key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Read the new passphrase from FILE (first line).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Write an unencrypted copy of an encrypted key file.
    #[command(visible_alias = "export")]
    Decrypt {
        /// The encrypted key file to read.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where to write the plain copy (never overwritten, mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Show an account's balance and next nonce.
    Balance {
        #[arg(value_name = "ADDRESS")]
        address: String,
    },
    /// Sign and submit a transfer; print its hash.
    Transfer {
        /// The sender's key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The receiver's address.
        #[arg(long, value_name = "ADDRESS")]
        to: String,
        /// Amount to move (greater than zero).
        #[arg(long, value_name = "N")]
        amount: u64,
        /// Nonce to use; default: the account's next nonce, asked of the node.
        #[arg(long, value_name = "N")]
        nonce: Option<u64>,
        /// Return only once the transfer is committed.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout: u64,
    },
    /// Sign a transfer offline and print the JSON body `POST /v1/transactions`
    /// accepts.
    SignTransfer {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(long, value_name = "ADDRESS")]
        to: String,
        #[arg(long, value_name = "N")]
        amount: u64,
        #[arg(long, value_name = "N")]
        nonce: u64,
        #[arg(long, value_name = "ID")]
        chain_id: String,
    },
    /// Show a transaction's status.
    Tx {
        #[arg(value_name = "HASH")]
        hash: String,
    },
    /// Show a block (default: the latest).
    Block {
        #[arg(value_name = "HEIGHT|latest", default_value = "latest")]
        block: String,
    },
    /// Show the node's status.
    Status,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return cairn_genesis::cli::usage_error(error),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), WalletError> {
    let node = cli.node;
    let client = || Client::new(&node);
    let verifier = match &cli.genesis {
        Some(path) => Some(Verifier::from_genesis_file(path)?),
        None => None,
    };
    let passphrases = PassphraseSource::from_file(cli.passphrase_file);
    let read_key = |path: &Path| keys::read_key(path, &passphrases);
    match cli.command {
        Command::Keygen { out, plain } => keygen(&out, plain, &passphrases, cli.json),
        Command::Address { key } => {
            let file = keyfile::load(&key).map_err(WalletError::Invalid)?;
            let address = file.public().to_hex();
            if cli.json {
                print_json(&json!({ "address": address, "encrypted": file.is_encrypted() }));
            } else {
                println!("{address}");
            }
            Ok(())
        }
        Command::Encrypt { key, out } => encrypt(&key, &out, &passphrases, cli.json),
        Command::Decrypt { key, out } => decrypt(&key, &out, &passphrases, cli.json),
        Command::ChangePassphrase {
            key,
            new_passphrase_file,
        } => change_passphrase(&key, new_passphrase_file.as_deref(), &passphrases, cli.json),
        Command::Balance { address } => {
            let address = parse_address(&address)?;
            match &verifier {
                None => show(
                    &client()?,
                    &format!("/v1/accounts/{address}"),
                    cli.json,
                    print_account,
                ),
                Some(verifier) => show_verified(
                    &client()?,
                    &format!("/v1/accounts/{address}?proof=true"),
                    cli.json,
                    |answer| verifier.account(&address, answer),
                    print_account,
                ),
            }
        }
        Command::Transfer {
            key,
            to,
            amount,
            nonce,
            wait,
            timeout,
        } => {
            let to = parse_recipient(&to)?;
            check_amount(amount)?;
            let key = read_key(&key)?;
            let wait = wait.then(|| Duration::from_secs(timeout));
            transfer(
                &client()?,
                verifier.as_ref(),
                &key,
                to,
                amount,
                nonce,
                wait,
                cli.json,
            )
        }
        Command::SignTransfer {
            key,
            to,
            amount,
            nonce,
            chain_id,
        } => {
            let to = parse_recipient(&to)?;
            check_amount(amount)?;
            let key = read_key(&key)?;
            let tx = sign_transfer(&key, &chain_id, to, amount, nonce)?;
            print_json(&TxJson::from(&tx));
            Ok(())
        }
        Command::Tx { hash } => {
            let hash = parse_hash(&hash)?;
            match &verifier {
                None => show(
                    &client()?,
                    &format!("/v1/transactions/{hash}"),
                    cli.json,
                    print_tx_status,
                ),
                Some(verifier) => show_verified(
                    &client()?,
                    &format!("/v1/transactions/{hash}?proof=true"),
                    cli.json,
                    |answer| verifier.transaction(&hash, answer),
                    print_tx_status,
                ),
            }
        }
        Command::Block { block } => {
            let id: BlockId = block.parse()?;
            match &verifier {
                None => show(&client()?, &id.path(), cli.json, print_block),
                Some(verifier) => show_verified(
                    &client()?,
                    &id.path(),
                    cli.json,
                    |answer| verifier.block(id, answer),
                    print_block,
                ),
            }
        }
        Command::Status => match &verifier {
            None => show(&client()?, "/v1/status", cli.json, print_status),
            // The status is the node's word and is shown as such (no
            // `verified`); what the genesis file fixes (chain id,
            // validators) is checked.
            Some(verifier) => {
                let client = client()?;
                let raw: serde_json::Value = client.get("/v1/status")?;
                let status: StatusJson =
                    serde_json::from_value(raw.clone()).map_err(|e| WalletError::BadResponse {
                        url: format!("{}/v1/status", client.base_url()),
                        reason: e.to_string(),
                    })?;
                verifier.status(&status)?;
                if cli.json {
                    print_json(&raw);
                } else {
                    print_status(&status);
                }
                Ok(())
            }
        },
    }
}

fn check_amount(amount: u64) -> Result<(), WalletError> {
    if amount == 0 {
        return Err(WalletError::Invalid(
            "amount must be greater than zero".into(),
        ));
    }
    Ok(())
}

fn keygen(
    out: &Path,
    plain: bool,
    passphrases: &PassphraseSource,
    json: bool,
) -> Result<(), WalletError> {
    // Refuse an existing file before asking for a passphrase.
    refuse_existing(out)?;
    let key = keyfile::generate();
    if plain {
        keyfile::write_new(out, &key).map_err(WalletError::Invalid)?;
        warn_plain(out);
    } else {
        let passphrase = passphrases.for_new(out)?;
        keyfile::write_new_encrypted(out, &key, passphrase.as_bytes(), KdfParams::DEFAULT)
            .map_err(WalletError::Invalid)?;
    }
    print_written(&key, out, !plain, json);
    Ok(())
}

/// `encrypt`: a plain key file to a new encrypted one.
fn encrypt(
    key_file: &Path,
    out: &Path,
    passphrases: &PassphraseSource,
    json: bool,
) -> Result<(), WalletError> {
    let KeyFile::Plain(key) = keyfile::load(key_file).map_err(WalletError::Invalid)? else {
        return Err(WalletError::Invalid(format!(
            "{} is already encrypted",
            key_file.display()
        )));
    };
    refuse_existing(out)?;
    let passphrase = passphrases.for_new(out)?;
    keyfile::write_new_encrypted(out, &key, passphrase.as_bytes(), KdfParams::DEFAULT)
        .map_err(WalletError::Invalid)?;
    print_written(&key, out, true, json);
    Ok(())
}

/// `decrypt`: an encrypted key file to a new plain one.
fn decrypt(
    key_file: &Path,
    out: &Path,
    passphrases: &PassphraseSource,
    json: bool,
) -> Result<(), WalletError> {
    let KeyFile::Encrypted(sealed) = keyfile::load(key_file).map_err(WalletError::Invalid)? else {
        return Err(WalletError::Invalid(format!(
            "{} is not encrypted",
            key_file.display()
        )));
    };
    refuse_existing(out)?;
    let passphrase = passphrases.for_opening(key_file)?;
    let key = sealed
        .open(passphrase.as_bytes())
        .map_err(WalletError::Invalid)?;
    keyfile::write_new(out, &key).map_err(WalletError::Invalid)?;
    warn_plain(out);
    print_written(&key, out, false, json);
    Ok(())
}

/// `change-passphrase`: the same key, sealed again under a new passphrase
/// (fresh salt and nonce), replacing the file.
fn change_passphrase(
    key_file: &Path,
    new_passphrase_file: Option<&Path>,
    passphrases: &PassphraseSource,
    json: bool,
) -> Result<(), WalletError> {
    let KeyFile::Encrypted(sealed) = keyfile::load(key_file).map_err(WalletError::Invalid)? else {
        return Err(WalletError::Invalid(format!(
            "{} is not encrypted; use encrypt to make an encrypted copy",
            key_file.display()
        )));
    };
    let old = passphrases.for_opening(key_file)?;
    let key = sealed.open(old.as_bytes()).map_err(WalletError::Invalid)?;
    let new = PassphraseSource::for_change(new_passphrase_file, key_file)?;
    let resealed = keyfile::EncryptedKey::seal(&key, new.as_bytes(), KdfParams::DEFAULT)
        .map_err(WalletError::Invalid)?;
    keyfile::replace_sealed(key_file, &resealed).map_err(WalletError::Invalid)?;
    print_written(&key, key_file, true, json);
    Ok(())
}

fn refuse_existing(out: &Path) -> Result<(), WalletError> {
    if out.symlink_metadata().is_ok() {
        return Err(WalletError::Invalid(format!(
            "{} already exists; refusing to overwrite it",
            out.display()
        )));
    }
    Ok(())
}

fn warn_plain(out: &Path) {
    eprintln!(
        "warning: {} is NOT encrypted: anyone who can read it can spend from this key",
        out.display()
    );
}

fn print_written(key: &Keypair, out: &Path, encrypted: bool, json: bool) {
    let address = key.public().to_hex();
    if json {
        print_json(&json!({ "address": address, "key_file": out, "encrypted": encrypted }));
    } else {
        println!("{address}");
    }
}

#[allow(clippy::too_many_arguments)]
fn transfer(
    client: &Client,
    verifier: Option<&Verifier>,
    key: &Keypair,
    to: cairn_core::PublicKey,
    amount: u64,
    nonce: Option<u64>,
    wait: Option<Duration>,
    json: bool,
) -> Result<(), WalletError> {
    let chain_id = verifier.map(|v| v.chain_id.as_str());
    if let Some(verifier) = verifier {
        // Signing uses the genesis file's chain id whatever the node says;
        // a node that says otherwise is not one of this chain's.
        verifier.status(&client.status()?)?;
    }
    let sent = client.transfer_on(chain_id, key, to, amount, nonce)?;
    let Some(timeout) = wait else {
        if json {
            print_json(&json!({ "hash": sent.hash.to_hex(), "status": "pending" }));
        } else {
            println!("{}", sent.hash);
        }
        return Ok(());
    };
    if !json {
        println!("{}", sent.hash);
    }
    let mut committed = client.wait_for_commit(&sent.hash, timeout)?;
    if let Some(verifier) = verifier {
        // `committed` is the node's word; the proof is the validators'.
        committed = client.get(&format!("/v1/transactions/{}?proof=true", sent.hash))?;
        verifier.transaction(&sent.hash, &committed)?;
    }
    let height = committed.height.ok_or_else(|| WalletError::BadResponse {
        url: client.base_url().to_string(),
        reason: "committed transaction without a height".into(),
    })?;
    if json {
        let mut answer = json!({
            "hash": sent.hash.to_hex(),
            "status": "committed",
            "height": height,
        });
        if verifier.is_some() {
            answer["verified"] = json!(true);
        }
        print_json(&answer);
    } else {
        println!("committed at height {height}");
        if verifier.is_some() {
            println!("verified: yes");
        }
    }
    Ok(())
}

/// `GET path`, checked by `check` before anything is printed: with
/// `--json` the node's JSON with `"verified": true` added, else `human` of
/// the answer and `verified: yes`.
fn show_verified<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    json: bool,
    check: impl FnOnce(&T) -> Result<(), WalletError>,
    human: fn(&T),
) -> Result<(), WalletError> {
    let mut raw: serde_json::Value = client.get(path)?;
    let answer: T = serde_json::from_value(raw.clone()).map_err(|e| WalletError::BadResponse {
        url: format!("{}{path}", client.base_url()),
        reason: e.to_string(),
    })?;
    check(&answer)?;
    if json {
        if let Some(object) = raw.as_object_mut() {
            object.insert("verified".into(), json!(true));
        }
        print_json(&raw);
    } else {
        human(&answer);
        println!("verified: yes");
    }
    Ok(())
}

/// `GET path`: with `--json` the node's JSON as it came, else `human` of
/// the parsed answer.
fn show<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    json: bool,
    human: fn(&T),
) -> Result<(), WalletError> {
    if json {
        print_json(&client.get::<serde_json::Value>(path)?);
    } else {
        human(&client.get::<T>(path)?);
    }
    Ok(())
}

fn print_json(value: &impl Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("error: cannot encode JSON: {error}"),
    }
}

fn print_account(account: &AccountJson) {
    println!("address: {}", account.address);
    println!("balance: {}", account.balance);
    println!("nonce:   {}", account.nonce);
    if let Some(pending) = account.pending_nonce.filter(|p| *p != account.nonce) {
        println!("pending nonce: {pending}");
    }
}

fn print_tx_status(tx: &TxStatusJson) {
    println!("hash:   {}", tx.hash);
    println!("status: {}", tx.status);
    if let Some(height) = tx.height {
        println!("height: {height}");
    }
    if let Some(reason) = &tx.error {
        println!("reason: {reason}");
    }
}

fn print_block(block: &BlockJson) {
    println!("height:       {}", block.height);
    println!("hash:         {}", block.hash);
    println!("parent hash:  {}", block.parent_hash);
    println!("view:         {}", block.view);
    println!("proposer:     {}", block.proposer);
    println!("timestamp ms: {}", block.timestamp_ms);
    println!("tx root:      {}", block.tx_root);
    println!("state root:   {}", block.state_root);
    println!("commit:       {} signatures", block.commit.len());
    for signature in &block.commit {
        println!("  {}", signature.validator);
    }
    println!("transactions: {}", block.transactions.len());
    for tx in &block.transactions {
        println!(
            "  {}  {} -> {}  amount {}  nonce {}",
            tx.hash, tx.tx.from, tx.tx.to, tx.tx.amount, tx.tx.nonce
        );
    }
}

fn print_status(status: &StatusJson) {
    println!("chain id:     {}", status.chain_id);
    println!("node id:      {}", status.node_id);
    println!("height:       {}", status.height);
    println!("latest block: {}", status.latest_block_hash);
    println!("view:         {}", status.view);
    println!("leader:       {}", status.leader);
    println!("peers:        {}", status.peers);
    println!("mempool size: {}", status.mempool_size);
    println!(
        "syncing:      {}",
        if status.syncing { "yes" } else { "no" }
    );
    println!("validators:   {}", status.validators.len());
    for validator in &status.validators {
        println!("  {validator}");
    }
}
