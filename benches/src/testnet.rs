//! A fresh testnet of real `cairn-node` processes on loopback ports, stopped
//! (SIGTERM, then SIGKILL) when dropped, even on error or panic.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_core::Keypair;
use cairn_genesis::{Genesis, Params, TestnetOptions, ValidGenesis, GENESIS_FILE};

/// How long a node gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the network gets to answer and connect after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Balance of every funded account.
pub const ACCOUNT_BALANCE: u64 = 1_000_000_000;
/// Chain id of benchmark networks.
pub const CHAIN_ID: &str = "cairn-bench";

/// Genesis parameters the benchmark may override; `None` keeps the default.
#[derive(Clone, Debug, Default)]
pub struct ParamOverrides {
    pub block_interval_ms: Option<u64>,
    pub block_txs_max: Option<usize>,
    pub view_timeout_ms: Option<u64>,
    pub mempool_txs_max: Option<usize>,
}

impl ParamOverrides {
    fn apply(&self, params: &mut Params) {
        if let Some(v) = self.block_interval_ms {
            params.block_interval_ms = v;
        }
        if let Some(v) = self.block_txs_max {
            params.block_txs_max = v;
        }
        if let Some(v) = self.view_timeout_ms {
            params.view_timeout_ms = v;
        }
        if let Some(v) = self.mempool_txs_max {
            params.mempool_txs_max = v;
        }
    }
}

/// A testnet folder and the node processes running from it.
pub struct Testnet {
    pub dir: PathBuf,
    pub genesis: ValidGenesis,
    /// `http://host:port` of each validator's API, in validator order.
    pub api_urls: Vec<String>,
    /// The funded accounts' keys, in genesis file order.
    pub accounts: Vec<Keypair>,
    nodes: Vec<Option<Child>>,
    /// Removed after the nodes stop (fields drop after `Drop::drop`).
    _temp: Option<tempfile::TempDir>,
}

/// The `cairn-node` binary next to this executable, or an error telling the
/// user how to build it.
pub fn default_node_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let dir = exe.parent().ok_or("this executable has no folder")?;
    let node = dir.join("cairn-node");
    if node.is_file() {
        Ok(node)
    } else {
        Err(format!(
            "{} not found: build the validator first with `cargo build --release` \
             (same CARGO_TARGET_DIR as this benchmark), or pass --node-bin",
            node.display()
        ))
    }
}

/// A base port such that `count` consecutive ports from it are free now.
fn free_port_base(count: u16) -> Result<u16, String> {
    let seed = (std::process::id() as u64).wrapping_mul(7919);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    for attempt in 0..1000u64 {
        let offset = (seed + started + attempt * 131) % 25_000;
        let base = 30_000 + offset as u16;
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    Err("no free range of loopback ports found".into())
}

impl Testnet {
    /// Writes a testnet of `validators` nodes and `accounts` funded accounts
    /// into `out` (which must be absent or empty) or a temporary folder, with
    /// the genesis parameters overridden as asked. Starts nothing.
    pub fn create(
        out: Option<&Path>,
        validators: usize,
        accounts: usize,
        overrides: &ParamOverrides,
    ) -> Result<Testnet, String> {
        let (temp, dir) = match out {
            Some(out) => (None, out.to_path_buf()),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("cairn-bench-")
                    .tempdir()
                    .map_err(|e| format!("cannot create a temporary folder: {e}"))?;
                let dir = temp.path().join("testnet");
                (Some(temp), dir)
            }
        };
        let n = u16::try_from(validators).map_err(|_| "too many validators")?;
        let base = free_port_base(2 * n)?;
        let options = TestnetOptions {
            validators,
            accounts,
            balance: ACCOUNT_BALANCE,
            chain_id: CHAIN_ID.into(),
            api_port_base: base,
            p2p_port_base: base + n,
            host: "127.0.0.1".into(),
        };
        cairn_genesis::write_testnet(&dir, &options)?;
        let genesis = rewrite_genesis(&dir, validators, |g| overrides.apply(&mut g.params))?;
        let accounts = (0..accounts)
            .map(|j| cairn_genesis::keyfile::read(&cairn_genesis::account_key_path(&dir, j)))
            .collect::<Result<Vec<_>, _>>()?;
        let api_urls = genesis
            .api_addresses
            .iter()
            .map(|a| format!("http://{a}"))
            .collect();
        Ok(Testnet {
            dir,
            genesis,
            api_urls,
            accounts,
            nodes: Vec::new(),
            _temp: temp,
        })
    }

    /// Moves the (stopped) network to other free ports, keeping its keys and
    /// chain id, so pre-signed transfers stay valid. For when another
    /// process took a port between probing and binding it.
    pub fn move_ports(&mut self) -> Result<(), String> {
        let _ = self.stop();
        let n = self.api_urls.len();
        let base = free_port_base(2 * n as u16)?;
        self.genesis = rewrite_genesis(&self.dir, n, |g| {
            for (i, v) in g.validators.iter_mut().enumerate() {
                v.api_address = format!("127.0.0.1:{}", base as usize + i);
                v.p2p_address = format!("127.0.0.1:{}", base as usize + n + i);
            }
        })?;
        for i in 0..n {
            let data = self.home(i).join(cairn_genesis::DATA_DIR);
            if data.exists() {
                std::fs::remove_dir_all(&data)
                    .map_err(|e| format!("cannot remove {}: {e}", data.display()))?;
            }
        }
        self.api_urls = self
            .genesis
            .api_addresses
            .iter()
            .map(|a| format!("http://{a}"))
            .collect();
        Ok(())
    }

    /// Starts the nodes and waits until they are ready, moving the network
    /// to other ports (up to a few times) when a port was taken meanwhile.
    pub fn start_ready(&mut self, node_binary: &Path) -> Result<(), String> {
        const ATTEMPTS: usize = 4;
        for attempt in 1..=ATTEMPTS {
            self.start(node_binary)?;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e) if e.contains("Address already in use") && attempt < ATTEMPTS => {
                    eprintln!("cairn-bench: a port was taken meanwhile; moving the testnet to other ports");
                    self.move_ports()?;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Home folder of validator `i`.
    pub fn home(&self, i: usize) -> PathBuf {
        cairn_genesis::node_home(&self.dir, i)
    }

    /// Log file of validator `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.home(i).join("node.log")
    }

    /// Starts every validator from `node_binary`, logging to `node.log` in
    /// its home folder.
    pub fn start(&mut self, node_binary: &Path) -> Result<(), String> {
        assert!(
            self.nodes.iter().all(Option::is_none),
            "nodes already running"
        );
        self.nodes.clear();
        for i in 0..self.api_urls.len() {
            let log = std::fs::File::create(self.log_path(i))
                .map_err(|e| format!("cannot create {}: {e}", self.log_path(i).display()))?;
            let log_err = log.try_clone().map_err(|e| e.to_string())?;
            let mut command = Command::new(node_binary);
            command
                .arg("run")
                .arg("--home")
                .arg(self.home(i))
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err);
            // SAFETY: prctl is async-signal-safe and touches no memory of the
            // parent; it asks the kernel to kill the node if this benchmark
            // dies without running its destructors (e.g. SIGKILL).
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                    Ok(())
                });
            }
            let child = command
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", node_binary.display()))?;
            self.nodes.push(Some(child));
        }
        Ok(())
    }

    /// Process ids of the running nodes, in validator order.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().flatten().map(|c| c.id()).collect()
    }

    /// Waits until every node answers `/v1/status` and sees all its peers.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        let deadline = Instant::now() + READY_TIMEOUT;
        let peers_wanted = self.api_urls.len() - 1;
        for i in 0..self.api_urls.len() {
            loop {
                self.check_alive()?;
                let status: Option<serde_json::Value> = agent
                    .get(&format!("{}/v1/status", self.api_urls[i]))
                    .call()
                    .ok()
                    .and_then(|r| r.into_json().ok());
                let peers = status
                    .as_ref()
                    .and_then(|s| s["peers"].as_u64())
                    .unwrap_or(0);
                if status.is_some() && peers as usize >= peers_wanted {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "validator {i} not ready after {READY_TIMEOUT:?} (status {status:?}); see {}",
                        self.log_path(i).display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// An error naming the first node that has exited, with its log's tail.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let Some(child) = self.nodes[i].as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i] = None;
                return Err(format!(
                    "validator {i} exited early ({status}); last lines of {}:\n{}",
                    self.log_path(i).display(),
                    log_tail(&self.log_path(i), 20)
                ));
            }
        }
        Ok(())
    }

    /// Stops every node: SIGTERM, then SIGKILL after a grace period. Returns
    /// the validators that did not exit cleanly.
    pub fn stop(&mut self) -> Vec<String> {
        for child in self.nodes.iter().flatten() {
            // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut unclean = Vec::new();
        for (i, slot) in self.nodes.iter_mut().enumerate() {
            let Some(mut child) = slot.take() else {
                continue;
            };
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => break,
                    Ok(Some(status)) => {
                        unclean.push(format!("validator {i} exited with {status}"));
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        unclean.push(format!("validator {i} did not stop on SIGTERM; killed"));
                        break;
                    }
                }
            }
        }
        unclean
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let unclean = self.stop();
        for line in unclean {
            eprintln!("cairn-bench: {line}");
        }
    }
}

/// Rewrites `genesis.json` in the testnet folder and every node home after
/// `edit`, and validates the result.
fn rewrite_genesis(
    dir: &Path,
    validators: usize,
    edit: impl FnOnce(&mut Genesis),
) -> Result<ValidGenesis, String> {
    let path = dir.join(GENESIS_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut genesis: Genesis =
        serde_json::from_str(&text).map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
    edit(&mut genesis);
    let valid = genesis
        .clone()
        .validate()
        .map_err(|e| format!("the rewritten genesis is invalid: {e}"))?;
    let text = serde_json::to_string_pretty(&genesis).map_err(|e| e.to_string())? + "\n";
    let homes = (0..validators).map(|i| cairn_genesis::node_home(dir, i).join(GENESIS_FILE));
    for target in std::iter::once(path.clone()).chain(homes) {
        std::fs::write(&target, &text)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    }
    Ok(valid)
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
