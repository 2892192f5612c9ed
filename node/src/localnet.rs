//! `cairn-node localnet`: create (or reuse) a local testnet and run all of
//! its validators as child processes until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use cairn_genesis::{Genesis, TestnetOptions};

/// Runs the localnet in `dir`; a new one gets API ports `api_port_base + i`
/// and p2p ports `p2p_port_base + i`. Every address of the testnet must be
/// free: a port already in use is a clear error before anything starts
/// (else another program, or another localnet, would answer in its place).
pub fn run(
    validators: usize,
    dir: &Path,
    api_port_base: u16,
    p2p_port_base: u16,
) -> Result<(), String> {
    let genesis_file = dir.join("genesis.json");
    let genesis = if genesis_file.exists() {
        eprintln!("reusing the testnet in {}", dir.display());
        Genesis::load(&genesis_file).map_err(|e| e.to_string())?
    } else {
        let last = |base: u16| base.checked_add(validators as u16 - 1);
        if last(api_port_base).is_none() || last(p2p_port_base).is_none() {
            return Err(format!(
                "{validators} validators do not fit above port base {api_port_base} (API) / \
                 {p2p_port_base} (p2p)"
            ));
        }
        let options = TestnetOptions {
            validators,
            api_port_base,
            p2p_port_base,
            ..TestnetOptions::default()
        };
        eprintln!(
            "creating a {validators}-validator testnet in {}",
            dir.display()
        );
        cairn_genesis::write_testnet(dir, &options)?
    };
    for (i, (api, p2p)) in genesis
        .api_addresses
        .iter()
        .zip(&genesis.p2p_addresses)
        .enumerate()
    {
        for (what, address) in [("API", api), ("p2p", p2p)] {
            if let Err(e) = std::net::TcpListener::bind(address) {
                return Err(format!(
                    "cannot run validator {i}: its {what} address {address} is not free ({e}); \
                     stop what uses it or create the localnet on other ports \
                     (--api-port-base, --p2p-port-base, in an empty --dir)"
                ));
            }
        }
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find cairn-node: {e}"))?;
    let mut children: Vec<Child> = Vec::new();
    for i in 0..genesis.validators.len() {
        let home = dir.join(format!("node{i}"));
        match Command::new(&exe)
            .arg("run")
            .arg("--home")
            .arg(&home)
            .spawn()
        {
            Ok(child) => children.push(child),
            Err(e) => {
                stop(&mut children);
                return Err(format!("cannot start validator {i}: {e}"));
            }
        }
    }
    println!(
        "Cairn localnet: chain {} with {} validators",
        genesis.chain_id(),
        children.len()
    );
    for (i, address) in genesis.api_addresses.iter().enumerate() {
        println!("  node{i}  API http://{address}");
    }
    println!("Funded account key files:");
    for key in account_keys(dir) {
        println!("  {}", key.display());
    }
    println!(
        "Try: cairn-wallet --node http://{} status",
        genesis.api_addresses[0]
    );
    println!("Press Ctrl-C to stop.");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let exited = runtime.block_on(async {
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = crate::shutdown_signal() => return None,
                _ = check.tick() => {
                    for (i, child) in children.iter_mut().enumerate() {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Some((i, status));
                        }
                    }
                }
            }
        }
    });
    stop(&mut children);
    match exited {
        None => Ok(()),
        Some((i, status)) => Err(format!(
            "validator {i} exited ({status}); stopped the others"
        )),
    }
}

fn account_keys(dir: &Path) -> Vec<PathBuf> {
    let mut keys: Vec<PathBuf> = std::fs::read_dir(dir.join("accounts"))
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// SIGTERM to every child, then wait (SIGKILL after 10 s).
fn stop(children: &mut [Child]) {
    for child in children.iter() {
        // SAFETY: kill(2) on a pid we spawned; no memory is touched.
        unsafe {
            libc_kill(child.id() as i32, 15);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for child in children.iter_mut() {
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}
