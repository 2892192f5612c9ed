//! End-to-end test harness: real `cairn-genesis`, `cairn-node` and
//! `cairn-wallet` processes on loopback ports.
//!
//! [`Testnet`] writes a testnet into a temporary folder with free ports,
//! starts, kills (`SIGKILL`), stops (`SIGTERM`) and restarts validators, and
//! kills every process it started when dropped, even when a test fails. On a
//! failing test it prints the tail of each validator's log.

pub mod lying;
pub mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use cairn_core::{
    BlockHeader, Certificate, CommitSignature, Hash, Height, PublicKey, Signature, ValidatorIndex,
    View,
};
pub use cairn_genesis::ValidGenesis;

/// The folder holding the three binaries, built once per test process with
/// the same profile as the tests (`cargo build` is a no-op when fresh).
/// `CAIRN_BIN_DIR` overrides it (CI builds first and points there).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CAIRN_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace");
        let release = !cfg!(debug_assertions);
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // Cargo sets these for the test binary, not for itself: build scripts
        // that watch them (ring's `rerun-if-env-changed=CARGO_PKG_NAME`, ...)
        // would otherwise rebuild on every switch between this nested build
        // and the outer `cargo test`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*name)
            {
                cargo.env_remove(&*name);
            }
        }
        cargo.current_dir(workspace).args([
            "build",
            "--bin",
            "cairn-node",
            "--bin",
            "cairn-wallet",
            "--bin",
            "cairn-genesis",
        ]);
        if release {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        target.join(if release { "release" } else { "debug" })
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Runs a binary to completion with a time limit.
pub fn run(binary: &str, args: &[&str]) -> Output {
    let mut child = Command::new(bin(binary))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{binary} {args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

/// A base port such that `count` consecutive ports from it are free now.
pub fn free_port_base(count: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread concurrent tests of one process over the range; probe each.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() as u16).wrapping_mul(7919);
    for _ in 0..1000 {
        // 20000..32000 stays below Linux's ephemeral range (32768..), where
        // client sockets in TIME_WAIT may hold ports.
        let offset = NEXT.fetch_add(count, Ordering::Relaxed).wrapping_add(seed) % 12_000;
        let base = 20_000 + offset;
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range found");
}

/// HTTP answer: status and parsed JSON (Null when the body is not JSON).
pub struct Answer {
    pub status: u16,
    pub json: Value,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build()
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("HTTP request failed: {e}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap_or_default();
    Answer {
        status,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

pub fn http_get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

pub fn http_post(url: &str, body: &str) -> Answer {
    answer(
        agent()
            .post(url)
            .set("content-type", "application/json")
            .send_string(body),
    )
}

/// `POST url` with `body` as `content_type` (e.g. a binary batch as
/// `application/octet-stream`).
pub fn http_post_bytes(url: &str, content_type: &str, body: &[u8]) -> Answer {
    answer(
        agent()
            .post(url)
            .set("content-type", content_type)
            .send_bytes(body),
    )
}

/// POSTs a body of `length` bytes over a raw socket, declared with
/// Content-Length or sent chunked, while reading the answer on another
/// thread: a server may answer (413) before it has read the whole body.
pub fn http_post_large(
    address: std::net::SocketAddr,
    path: &str,
    length: usize,
    chunked: bool,
) -> Answer {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let path = path.to_string();
    let sender = std::thread::spawn(move || {
        let framing = if chunked {
            "transfer-encoding: chunked".to_string()
        } else {
            format!("content-length: {length}")
        };
        let head = format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n{framing}\r\n\r\n");
        writer.write_all(head.as_bytes())?;
        let piece = vec![b'7'; 64 * 1024];
        let mut sent = 0;
        while sent < length {
            let n = piece.len().min(length - sent);
            if chunked {
                writer.write_all(format!("{n:x}\r\n").as_bytes())?;
                writer.write_all(&piece[..n])?;
                writer.write_all(b"\r\n")?;
            } else {
                writer.write_all(&piece[..n])?;
            }
            sent += n;
        }
        if chunked {
            writer.write_all(b"0\r\n\r\n")?;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buffer[..n]);
                if let Some(answer) = parse_raw_response(&response) {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    let _ = sender.join();
                    return answer;
                }
            }
            Err(e) => panic!(
                "reading the answer: {e} (got {:?})",
                String::from_utf8_lossy(&response)
            ),
        }
    }
    let _ = sender.join();
    parse_raw_response(&response).expect("a complete HTTP answer")
}

/// Parses a complete HTTP/1.1 answer with a Content-Length body.
fn parse_raw_response(bytes: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })?
        .parse()
        .ok()?;
    if body.len() < length {
        return None;
    }
    Some(Answer {
        status,
        json: serde_json::from_str(&body[..length]).unwrap_or(Value::Null),
    })
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A testnet in a temporary folder and the validator processes running it.
pub struct Testnet {
    pub dir: tempfile::TempDir,
    pub genesis: ValidGenesis,
    nodes: Vec<Option<Child>>,
    /// Networks of one test process run one at a time: they share two cores,
    /// and timing-sensitive checks (view changes, catch-up) should not
    /// compete with another network's load.
    _exclusive: Exclusive,
}

static BUSY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

/// Held by the one running [`Testnet`] of this process (a guard that, unlike
/// a `MutexGuard`, may move between threads).
struct Exclusive;

fn exclusive() -> Exclusive {
    let mut busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
    while *busy {
        busy = FREED.wait(busy).unwrap_or_else(|p| p.into_inner());
    }
    *busy = true;
    Exclusive
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|p| p.into_inner()) = false;
        FREED.notify_one();
    }
}

impl Testnet {
    /// Writes a testnet of `validators` validators and `accounts` funded
    /// accounts (each with `balance`), without starting anything.
    pub fn create(validators: usize, accounts: usize, balance: u64) -> Testnet {
        let exclusive = exclusive();
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("net");
        let base = free_port_base(2 * validators as u16);
        let (api, p2p) = (base.to_string(), (base + validators as u16).to_string());
        let output = run(
            "cairn-genesis",
            &[
                "testnet",
                "--validators",
                &validators.to_string(),
                "--accounts",
                &accounts.to_string(),
                "--balance",
                &balance.to_string(),
                "--out",
                out.to_str().expect("utf-8 path"),
                "--api-port-base",
                &api,
                "--p2p-port-base",
                &p2p,
                "--chain-id",
                "cairn-e2e",
            ],
        );
        assert!(output.status.success(), "testnet: {}", stderr(&output));
        let genesis = cairn_genesis::Genesis::load(&out.join("genesis.json")).expect("genesis");
        Testnet {
            dir,
            genesis,
            nodes: (0..validators).map(|_| None).collect(),
            _exclusive: exclusive,
        }
    }

    /// Creates a testnet and starts every validator.
    pub fn start_all(validators: usize, accounts: usize, balance: u64) -> Testnet {
        let mut net = Testnet::create(validators, accounts, balance);
        for i in 0..validators {
            net.start(i);
        }
        for i in 0..validators {
            net.wait_api(i);
        }
        net
    }

    pub fn net_dir(&self) -> PathBuf {
        self.dir.path().join("net")
    }

    pub fn home(&self, i: usize) -> PathBuf {
        self.net_dir().join(format!("node{i}"))
    }

    pub fn account_key(&self, j: usize) -> PathBuf {
        self.net_dir()
            .join("accounts")
            .join(format!("account{j}.key"))
    }

    pub fn account_address(&self, j: usize) -> String {
        let output = run(
            "cairn-wallet",
            &["address", "--key", self.account_key(j).to_str().unwrap()],
        );
        assert!(output.status.success(), "address: {}", stderr(&output));
        stdout(&output)
    }

    pub fn api(&self, i: usize) -> String {
        format!("http://{}", self.genesis.api_addresses[i])
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}.log"))
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// Starts validator `i` (appending to its log).
    pub fn start(&mut self, i: usize) {
        self.start_with(i, &[]);
    }

    /// Starts validator `i` with more `cairn-node run` arguments.
    pub fn start_with(&mut self, i: usize, extra: &[&str]) {
        assert!(self.nodes[i].is_none(), "validator {i} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("log file");
        let child = Command::new(bin("cairn-node"))
            .args(["run", "--home", self.home(i).to_str().unwrap()])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start cairn-node");
        self.nodes[i] = Some(child);
    }

    /// Waits until validator `i` answers `GET /v1/status`.
    pub fn wait_api(&self, i: usize) {
        let url = format!("{}/v1/status", self.api(i));
        wait_for(
            &format!("validator {i} API"),
            Duration::from_secs(30),
            || agent().get(&url).call().ok().map(|_| ()),
        );
    }

    /// `kill -9` validator `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM validator `i` and return its exit code.
    pub fn terminate(&mut self, i: usize) -> Option<i32> {
        let mut child = self.nodes[i].take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("validator {i} did not stop within 20 s of SIGTERM");
    }

    pub fn get(&self, i: usize, path: &str) -> Answer {
        http_get(&format!("{}{}", self.api(i), path))
    }

    pub fn post(&self, i: usize, path: &str, body: &str) -> Answer {
        http_post(&format!("{}{}", self.api(i), path), body)
    }

    /// The value of one series (`name`, with its labels if any, as
    /// written) in validator `i`'s `/metrics`, as a whole number.
    pub fn metric(&self, i: usize, name: &str) -> u64 {
        let text = ureq::get(&format!("{}/metrics", self.api(i)))
            .call()
            .expect("GET /metrics")
            .into_string()
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}")) as u64
    }

    pub fn height(&self, i: usize) -> u64 {
        self.get(i, "/v1/status").json["height"]
            .as_u64()
            .expect("height")
    }

    pub fn balance(&self, i: usize, address: &str) -> (u64, u64) {
        let a = self.get(i, &format!("/v1/accounts/{address}")).json;
        (
            a["balance"].as_u64().expect("balance"),
            a["nonce"].as_u64().expect("nonce"),
        )
    }

    /// Runs `cairn-wallet --node <api of i> args...`.
    pub fn wallet(&self, i: usize, args: &[&str]) -> Output {
        let api = self.api(i);
        let mut all = vec!["--node", api.as_str()];
        all.extend_from_slice(args);
        run("cairn-wallet", &all)
    }

    /// `cairn-wallet --json transfer ... --wait` against validator `node`.
    pub fn wallet_transfer(
        &self,
        node: usize,
        from: usize,
        to: &str,
        amount: u64,
    ) -> (String, u64) {
        let key = self.account_key(from);
        let output = self.wallet(
            node,
            &[
                "--json",
                "transfer",
                "--key",
                key.to_str().unwrap(),
                "--to",
                to,
                "--amount",
                &amount.to_string(),
                "--wait",
                "--timeout",
                "60",
            ],
        );
        assert!(
            output.status.success(),
            "transfer from account {from} via validator {node} failed: {}",
            stderr(&output)
        );
        let json: Value = serde_json::from_str(&stdout(&output)).expect("--json output");
        assert_eq!(json["status"], "committed", "{json}");
        (
            json["hash"].as_str().unwrap().to_string(),
            json["height"].as_u64().unwrap(),
        )
    }

    /// Sum of the balances of the genesis accounts as validator `i` sees them.
    pub fn supply_of_genesis_accounts(&self, i: usize) -> u128 {
        self.genesis
            .accounts
            .keys()
            .map(|k| self.balance(i, &k.to_hex()).0 as u128)
            .sum()
    }

    /// Block hashes at heights 1..=height on validator `i`.
    pub fn block_hashes(&self, i: usize, height: u64) -> Vec<String> {
        (1..=height)
            .map(|h| {
                let b = self.get(i, &format!("/v1/blocks/{h}"));
                assert_eq!(b.status, 200, "block {h} on validator {i}");
                b.json["hash"].as_str().expect("hash").to_string()
            })
            .collect()
    }

    fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!("----- validator {i} log (tail) -----\n{}", self.log_tail(i));
            }
        }
    }
}

/// Checks a block's `commit` list as a certificate against the validator set.
pub fn assert_certificate_verifies(net: &Testnet, block: &Value, min_signers: usize) {
    let validators = &net.genesis.validators;
    let signatures: Vec<CommitSignature> = block["commit"]
        .as_array()
        .expect("commit")
        .iter()
        .map(|s| {
            let key: PublicKey = s["validator"].as_str().unwrap().parse().unwrap();
            let index = validators
                .iter()
                .position(|v| *v == key)
                .expect("signer is a validator");
            CommitSignature {
                validator: ValidatorIndex(index as u16),
                signature: s["signature"]
                    .as_str()
                    .unwrap()
                    .parse::<Signature>()
                    .unwrap(),
            }
        })
        .collect();
    assert!(
        signatures.len() >= min_signers,
        "{} signatures",
        signatures.len()
    );
    let header = BlockHeader {
        height: Height(block["height"].as_u64().unwrap()),
        parent_hash: block["parent_hash"].as_str().unwrap().parse().unwrap(),
        view: View(block["view"].as_u64().unwrap()),
        proposer: block["proposer"].as_str().unwrap().parse().unwrap(),
        timestamp_ms: block["timestamp_ms"].as_u64().unwrap(),
        tx_root: block["tx_root"].as_str().unwrap().parse().unwrap(),
        state_root: block["state_root"].as_str().unwrap().parse().unwrap(),
    };
    let hash: Hash = block["hash"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        header.hash(),
        hash,
        "the header fields hash to the block hash"
    );
    let view = View(block["commit_view"].as_u64().expect("commit_view"));
    let certificate = Certificate {
        height: header.height,
        view,
        block_hash: hash,
        signatures,
    };
    certificate
        .verify(net.genesis.chain_id(), validators, &header)
        .expect("certificate verifies against the genesis validator set");
}

// ---------------------------------------------------------------------------
// Multi-validator and fault-injection helpers (network.rs, faults.rs).
//
// Everything below only adds to the harness above. Requests made here never
// panic on a validator that is down: the `try_*` forms answer `None`.
// ---------------------------------------------------------------------------

/// A short-timeout agent for probing validators that may be down or busy.
/// One shared agent, so connections are kept alive and reused: a fresh
/// connection per request under load leaves tens of thousands of client
/// sockets in TIME_WAIT, which then block binding the next testnet's ports.
fn probe_agent() -> ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
                .max_idle_connections(256)
                .max_idle_connections_per_host(32)
                .build()
        })
        .clone()
}

fn try_answer(result: Result<ureq::Response, ureq::Error>) -> Option<Answer> {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(_)) => return None,
    };
    let status = response.status();
    let text = response.into_string().ok()?;
    Some(Answer {
        status,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
    })
}

/// `GET url`; `None` when no HTTP answer came (refused, reset, timeout).
pub fn try_http_get(url: &str) -> Option<Answer> {
    try_answer(probe_agent().get(url).call())
}

/// `POST url` with a JSON body; `None` when no HTTP answer came.
pub fn try_http_post(url: &str, body: &str) -> Option<Answer> {
    try_answer(
        probe_agent()
            .post(url)
            .set("content-type", "application/json")
            .send_string(body),
    )
}

/// Whether nothing listens on (and nothing holds) `127.0.0.1:port`.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The environment variable that replays a randomised end-to-end test:
/// `CAIRN_TEST_SEED=<seed> cargo test --release -p cairn-tests --test <file>
/// <test> -- --nocapture` runs the same fault schedule again.
pub const TEST_SEED_VAR: &str = "CAIRN_TEST_SEED";

/// The seed of one randomised end-to-end test: read from
/// [`TEST_SEED_VAR`] (else the clock) and printed at the start, and printed
/// again with the replay command if the test fails (when this is dropped
/// during a panic). Declare it before the [`Testnet`] so the replay line
/// comes after the validators' logs.
pub struct TestSeed {
    pub seed: u64,
    test: &'static str,
    file: &'static str,
}

impl TestSeed {
    /// `file` is the test file's name (`faults` for tests/faults.rs).
    pub fn new(file: &'static str, test: &'static str) -> TestSeed {
        let seed = SeededRng::seed_from_env();
        eprintln!("{test}: seed {seed} (replay with {TEST_SEED_VAR}={seed})");
        TestSeed { seed, test, file }
    }

    pub fn rng(&self) -> SeededRng {
        SeededRng::new(self.seed)
    }
}

impl Drop for TestSeed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} FAILED with seed {}: replay with `{TEST_SEED_VAR}={} cargo test --release \
                 -p cairn-tests --test {} {} -- --nocapture`",
                self.test, self.seed, self.seed, self.file, self.test
            );
        }
    }
}

/// A small seeded PRNG (SplitMix64) so fault schedules replay from a seed.
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed)
    }

    /// The seed from env [`TEST_SEED_VAR`], else from the clock. An
    /// unparsable value is an error, never silently another seed.
    pub fn seed_from_env() -> u64 {
        match std::env::var(TEST_SEED_VAR) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                panic!("{TEST_SEED_VAR}={text:?} is not a seed (a u64 in decimal)")
            }),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `low..high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low))
    }
}

/// Signs transfers from one funded account with `cairn_core`, tracking the
/// next nonce locally. Signing is deterministic: the same (to, amount,
/// nonce) always gives the same transaction and hash, so a lost transaction
/// can be re-sent as itself.
pub struct Signer {
    pub key: cairn_core::Keypair,
    pub chain_id: String,
    pub nonce: u64,
}

impl Signer {
    pub fn address(&self) -> PublicKey {
        self.key.public()
    }

    /// The signed transfer with an explicit nonce, as the API takes it.
    pub fn sign_with_nonce(
        &self,
        to: PublicKey,
        amount: u64,
        nonce: u64,
    ) -> cairn_core::api::TxJson {
        let transfer = cairn_core::Transfer {
            chain_id: self.chain_id.clone(),
            from: self.key.public(),
            to,
            amount,
            nonce,
        };
        cairn_core::api::TxJson::from(&cairn_core::SignedTransaction::sign(transfer, &self.key))
    }

    /// Signs a transfer with the next nonce and advances it.
    pub fn next(&mut self, to: PublicKey, amount: u64) -> cairn_core::api::TxJson {
        let tx = self.sign_with_nonce(to, amount, self.nonce);
        self.nonce += 1;
        tx
    }
}

/// The hash of a transaction as the API reports it.
pub fn tx_hash(tx: &cairn_core::api::TxJson) -> String {
    cairn_core::SignedTransaction::try_from(tx)
        .expect("well-formed transaction")
        .hash()
        .to_hex()
}

impl Testnet {
    /// Number of validators in the genesis.
    pub fn validator_count(&self) -> usize {
        self.nodes.len()
    }

    /// Indices of the validators this harness is running now.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.is_running(i))
            .collect()
    }

    /// The whole log of validator `i` (all its runs, appended).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Validator `i`'s sled data folder (`home/data`).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.home(i).join("data")
    }

    /// Funded account `j`'s key, read with the genesis key-file reader.
    pub fn account_keypair(&self, j: usize) -> cairn_core::Keypair {
        cairn_genesis::keyfile::read(&self.account_key(j)).expect("account key file")
    }

    /// A [`Signer`] for funded account `j`, starting at nonce `nonce`.
    pub fn signer(&self, j: usize, nonce: u64) -> Signer {
        Signer {
            key: self.account_keypair(j),
            chain_id: self.genesis.chain_id().to_string(),
            nonce,
        }
    }

    pub fn try_get(&self, i: usize, path: &str) -> Option<Answer> {
        try_http_get(&format!("{}{}", self.api(i), path))
    }

    pub fn try_post(&self, i: usize, path: &str, body: &str) -> Option<Answer> {
        try_http_post(&format!("{}{}", self.api(i), path), body)
    }

    /// `GET /v1/status` of validator `i`, `None` when it does not answer.
    pub fn try_status(&self, i: usize) -> Option<Value> {
        self.try_get(i, "/v1/status")
            .filter(|a| a.status == 200)
            .map(|a| a.json)
    }

    pub fn try_height(&self, i: usize) -> Option<u64> {
        self.try_status(i)?["height"].as_u64()
    }

    /// Index in the genesis validator set of a public key in hex.
    pub fn validator_index(&self, key_hex: &str) -> usize {
        let key: PublicKey = key_hex.parse().expect("validator key hex");
        self.genesis
            .validators
            .iter()
            .position(|v| *v == key)
            .unwrap_or_else(|| panic!("{key_hex} is not a genesis validator"))
    }

    /// The current primary as validator `i` sees it (`status.leader`).
    pub fn leader_index(&self, i: usize) -> usize {
        let status = self.get(i, "/v1/status").json;
        self.validator_index(status["leader"].as_str().expect("leader"))
    }

    /// `status.view` of validator `i`.
    pub fn view(&self, i: usize) -> u64 {
        self.get(i, "/v1/status").json["view"]
            .as_u64()
            .expect("view")
    }

    /// Waits until each of `nodes` reports `peers == count`.
    pub fn wait_peers(&self, nodes: &[usize], count: u64, timeout: Duration) {
        for &i in nodes {
            wait_for(
                &format!("validator {i} connected to {count} peers"),
                timeout,
                || (self.try_status(i)?["peers"].as_u64()? == count).then_some(()),
            );
        }
    }

    /// Waits until every one of `nodes` answers with the same height, at
    /// least `at_least`, twice in a row 200 ms apart (so nothing was still
    /// committing); returns that height.
    pub fn wait_same_height(&self, nodes: &[usize], at_least: u64, timeout: Duration) -> u64 {
        let what = format!("validators {nodes:?} at one height >= {at_least}");
        let deadline = Instant::now() + timeout;
        let heights =
            || -> Option<Vec<u64>> { nodes.iter().map(|&i| self.try_height(i)).collect() };
        loop {
            if let Some(first) = heights() {
                if first[0] >= at_least && first.iter().all(|&h| h == first[0]) {
                    std::thread::sleep(Duration::from_millis(200));
                    if heights().as_ref() == Some(&first) {
                        return first[0];
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {what}; last heights {:?}",
                    heights_debug(self, nodes)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts that `nodes` hold identical block hashes at heights
    /// 1..=height and returns them.
    pub fn assert_same_chain(&self, nodes: &[usize], height: u64) -> Vec<String> {
        let reference = self.block_hashes(nodes[0], height);
        for &i in &nodes[1..] {
            let hashes = self.block_hashes(i, height);
            for (h, (a, b)) in reference.iter().zip(&hashes).enumerate() {
                assert_eq!(
                    a,
                    b,
                    "fork at height {}: validator {} has {a}, validator {i} has {b}",
                    h + 1,
                    nodes[0]
                );
            }
        }
        reference
    }

    /// Asserts that `nodes` agree on every genesis account (balance and
    /// nonce) and that the total supply is the genesis supply.
    ///
    /// The chain may still be moving (a transaction that waited at one
    /// validator gets gossiped again and committed late), so the states are
    /// compared only when read at one height on every node: the heights
    /// are read before and after, and the reading is retried if any moved.
    pub fn assert_same_state_and_supply(&self, nodes: &[usize]) {
        let expected: u128 = self
            .genesis
            .accounts
            .values()
            .map(|a| a.balance as u128)
            .sum();
        let state_of = |i: usize| -> Vec<(u64, u64)> {
            self.genesis
                .accounts
                .keys()
                .map(|k| self.balance(i, &k.to_hex()))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let (height, states) = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let height = self.wait_same_height(nodes, 0, remaining);
            let states: Vec<Vec<(u64, u64)>> = nodes.iter().map(|&i| state_of(i)).collect();
            if nodes.iter().all(|&i| self.try_height(i) == Some(height)) {
                break (height, states);
            }
            assert!(
                Instant::now() < deadline,
                "validators {nodes:?} never held still at one height for long enough \
                 to compare their states; last heights {:?}",
                heights_debug(self, nodes)
            );
        };
        let supply: u128 = states[0].iter().map(|(b, _)| *b as u128).sum();
        assert_eq!(
            supply, expected,
            "total supply on validator {} at height {height}",
            nodes[0]
        );
        for (k, &i) in nodes.iter().enumerate().skip(1) {
            assert_eq!(
                states[k], states[0],
                "account state of validator {i} differs from validator {} at height {height}",
                nodes[0]
            );
        }
    }

    /// Waits until transaction `hash` is committed on validator `i`;
    /// returns its height.
    pub fn wait_committed(&self, i: usize, hash: &str, timeout: Duration) -> u64 {
        wait_for(
            &format!("transaction {hash} committed on validator {i}"),
            timeout,
            || {
                let a = self.try_get(i, &format!("/v1/transactions/{hash}"))?;
                (a.json["status"] == "committed").then(|| a.json["height"].as_u64())?
            },
        )
    }

    /// If validator `i` (started by this harness) has exited, reaps it and
    /// returns its exit status; `None` while it runs.
    pub fn try_exit_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let child = self.nodes[i].as_mut()?;
        let status = child.try_wait().expect("try_wait")?;
        self.nodes[i] = None;
        Some(status)
    }

    /// The process id of validator `i`, while running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].as_ref().map(|c| c.id())
    }
}

fn heights_debug(net: &Testnet, nodes: &[usize]) -> Vec<Option<u64>> {
    nodes.iter().map(|&i| net.try_height(i)).collect()
}

/// Holds this process's one-network-at-a-time slot for a test that runs
/// validators without a [`Testnet`] (e.g. `cairn-node localnet`).
pub struct ExclusiveSlot(#[allow(dead_code)] Exclusive);

pub fn exclusive_slot() -> ExclusiveSlot {
    ExclusiveSlot(exclusive())
}

/// Whether a test that needs something of the machine (a browser, root for
/// network namespaces, Schemathesis) can run. Present: true. Missing: in CI
/// (`CAIRN_CI=1`, set by `.ci/run`, which installs them) the test fails;
/// elsewhere it says loudly that it is skipped and why, and returns false.
pub fn machine_has(test: &str, present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var("CAIRN_CI").is_ok_and(|v| v == "1") {
        panic!("{test} needs {what}; CI must provide it (.ci/run installs it)");
    }
    eprintln!("SKIPPED {test}: needs {what} (`.ci/run` installs it; CI never skips)");
    false
}

/// Whether `program` runs (`program --version` exits 0; `ip -V` for
/// iproute2's `ip`, which has no `--version`).
pub fn program_runs(program: &str) -> bool {
    let flag = if program == "ip" { "-V" } else { "--version" };
    Command::new(program)
        .arg(flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
