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
