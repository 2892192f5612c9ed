//! `cairn-genesis`: writes local testnets and checks genesis files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cairn_genesis::{Genesis, TestnetOptions, ValidGenesis};

/// Creates and checks Cairn genesis files and local testnets.
#[derive(Parser)]
#[command(name = "cairn-genesis", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a ready-to-run network: genesis.json, one home folder per
    /// validator (node<i>/) and funded account keys (accounts/).
    Testnet {
        /// Number of validators.
        #[arg(long, value_name = "N")]
        validators: usize,
        /// Folder to create; must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Number of funded accounts.
        #[arg(long, value_name = "M", default_value_t = 4)]
        accounts: usize,
        /// Initial balance of each funded account.
        #[arg(long, value_name = "B", default_value_t = 1_000_000_000)]
        balance: u64,
        /// Chain id (letters, digits, '-', '_', '.').
        #[arg(long, value_name = "ID", default_value = "cairn-localnet")]
        chain_id: String,
        /// Validator i serves its HTTP API on port A+i.
        #[arg(long, value_name = "A", default_value_t = 8080)]
        api_port_base: u16,
        /// Validator i listens for peers on port P+i.
        #[arg(long, value_name = "P", default_value_t = 26600)]
        p2p_port_base: u16,
        /// IP address the validators listen on and are reached at.
        #[arg(long, value_name = "H", default_value = "127.0.0.1")]
        host: String,
    },
    /// Assemble a genesis file from validator entries (`cairn-node init`
    /// prints one on each validator's host) and funded accounts.
    Assemble {
        /// Chain id (letters, digits, '-', '_', '.').
        #[arg(long, value_name = "ID")]
        chain_id: String,
        /// A validator entry file, once per validator, in validator order.
        #[arg(long = "validator", value_name = "ENTRY_FILE", required = true)]
        validators: Vec<PathBuf>,
        /// A funded account, once per account.
        #[arg(long = "account", value_name = "ADDRESS=BALANCE", required = true)]
        accounts: Vec<String>,
        /// Genesis time in ms since the Unix epoch (default: now).
        #[arg(long, value_name = "MS")]
        genesis_time_ms: Option<u64>,
        /// Where to write the genesis file; never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check a genesis file; print its chain id, hash and validators.
    Validate {
        /// The genesis file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return cairn_genesis::cli::usage_error(error),
    };
    let result = match cli.command {
        Command::Testnet {
            validators,
            out,
            accounts,
            balance,
            chain_id,
            api_port_base,
            p2p_port_base,
            host,
        } => {
            let options = TestnetOptions {
                validators,
                accounts,
                balance,
                chain_id,
                api_port_base,
                p2p_port_base,
                host,
            };
            testnet(&out, &options)
        }
        Command::Assemble {
            chain_id,
            validators,
            accounts,
            genesis_time_ms,
            out,
        } => assemble(&chain_id, &validators, &accounts, genesis_time_ms, &out),
        Command::Validate { file } => validate(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn testnet(out: &Path, options: &TestnetOptions) -> Result<(), String> {
    let genesis = cairn_genesis::write_testnet(out, options)?;
    println!("wrote testnet to {}", out.display());
    print_summary(&genesis);
    println!("node homes:");
    for i in 0..genesis.validators.len() {
        println!("  {}", cairn_genesis::node_home(out, i).display());
    }
    println!("funded accounts ({} each):", options.balance);
    for j in 0..genesis.accounts.len() {
        println!("  {}", cairn_genesis::account_key_path(out, j).display());
    }
    println!(
        "start a validator with: cairn-node run --home {}",
        cairn_genesis::node_home(out, 0).display()
    );
    Ok(())
}

fn assemble(
    chain_id: &str,
    validators: &[PathBuf],
    accounts: &[String],
    genesis_time_ms: Option<u64>,
    out: &Path,
) -> Result<(), String> {
    use cairn_genesis::assemble;
    let validators = validators
        .iter()
        .map(|path| assemble::read_entry(path))
        .collect::<Result<Vec<_>, _>>()?;
    let accounts = accounts
        .iter()
        .map(|text| assemble::parse_account(text))
        .collect::<Result<Vec<_>, _>>()?;
    let genesis_time_ms = match genesis_time_ms {
        Some(ms) => ms,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970".to_string())?
            .as_millis() as u64,
    };
    let (genesis, valid) = assemble::assemble(chain_id, genesis_time_ms, validators, accounts)?;
    assemble::write_new_json(out, &genesis)?;
    println!("wrote {}", out.display());
    print_summary(&valid);
    println!(
        "accounts: {} (total supply {})",
        valid.accounts.len(),
        valid.total_supply()
    );
    println!("each operator copies it to HOME/genesis.json and runs: cairn-node run --home HOME");
    Ok(())
}

fn validate(file: &Path) -> Result<(), String> {
    let genesis = Genesis::load(file).map_err(|e| e.to_string())?;
    println!("{} is valid", file.display());
    print_summary(&genesis);
    println!(
        "accounts: {} (total supply {})",
        genesis.accounts.len(),
        genesis.total_supply()
    );
    Ok(())
}

fn print_summary(genesis: &ValidGenesis) {
    println!("chain id: {}", genesis.chain_id());
    println!("genesis hash: {}", genesis.hash);
    println!("validators ({}):", genesis.genesis.validators.len());
    for v in &genesis.genesis.validators {
        println!(
            "  {}  key {}  api {}  p2p {}",
            v.name, v.public_key, v.api_address, v.p2p_address
        );
    }
}
