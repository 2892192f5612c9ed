//! `cairn-node`: run a validator, or a whole local testnet.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn-node", version, about = "A Cairn validator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one validator from a home folder written by `cairn-genesis testnet`.
    Run {
        /// The validator's home folder (holds node.json).
        #[arg(long)]
        home: PathBuf,
        /// How log lines are written on stderr: `text` for people, `json`
        /// (one object per line) for log collectors.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Make a validator home on this host (a new key that never leaves it, and
    /// node.json) and print this validator's genesis entry (JSON) for
    /// `cairn-genesis assemble`.
    Init {
        /// The home folder to create (must not hold a key or node.json).
        #[arg(long)]
        home: PathBuf,
        /// This validator's name in the genesis file.
        #[arg(long)]
        name: String,
        /// Where peers reach this validator (IP:PORT); it listens there.
        #[arg(long, value_name = "HOST:PORT")]
        p2p: String,
        /// Where this validator serves its HTTP API (IP:PORT).
        #[arg(long, value_name = "HOST:PORT")]
        api: String,
    },
    /// Create (or reuse) a local testnet and run all its validators until Ctrl-C.
    Localnet {
        /// Number of validators when creating the testnet.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        validators: u16,
        /// Where the testnet lives.
        #[arg(long, default_value = "./localnet")]
        dir: PathBuf,
        /// First API port when creating the testnet (validator i gets base + i).
        #[arg(long, default_value_t = 8080)]
        api_port_base: u16,
        /// First p2p port when creating the testnet (validator i gets base + i).
        #[arg(long, default_value_t = 26600)]
        p2p_port_base: u16,
    },
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return cairn_genesis::cli::usage_error(error),
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // hyper warns once for every client that does not finish its headers in
    // time: a slow-header flood would flood the log too. The API server logs
    // its own refusals, throttled. `RUST_LOG` naming hyper still wins.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("hyper")) {
        filter = filter.add_directive("hyper=error".parse().expect("a valid directive"));
    }
    let format = match cli.command {
        Command::Run { log_format, .. } => log_format,
        _ => LogFormat::Text,
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => logs.init(),
        // One JSON object per line: timestamp, level, target, the message
        // and every field of the event, flattened for filtering.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    let result = match cli.command {
        Command::Run { home, .. } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|runtime| runtime.block_on(cairn_node::run(&home))),
        Command::Init {
            home,
            name,
            p2p,
            api,
        } => cairn_genesis::assemble::init_home(&home, &name, &p2p, &api).and_then(|entry| {
            let text = serde_json::to_string_pretty(&entry).map_err(|e| e.to_string())?;
            println!("{text}");
            eprintln!(
                "wrote {} and {}; give the entry above to whoever assembles the genesis file, \
                 then copy that file to {}",
                home.join(cairn_genesis::VALIDATOR_KEY_FILE).display(),
                home.join(cairn_genesis::NODE_CONFIG_FILE).display(),
                home.join(cairn_genesis::GENESIS_FILE).display()
            );
            Ok(())
        }),
        Command::Localnet {
            validators,
            dir,
            api_port_base,
            p2p_port_base,
        } => cairn_node::localnet::run(validators as usize, &dir, api_port_base, p2p_port_base),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
