//! PBFT across four validators on real processes: transfers sent to
//! different validators commit everywhere with the same blocks, the same
//! certificates and the same state; and `cairn-node localnet` runs (and
//! stops) a whole network in one command.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::{
    assert_certificate_verifies, bin, free_port_base, port_is_free, run, stderr, stdout,
    try_http_get, wait_for, Testnet,
};
use serde_json::Value;

const BALANCE: u64 = 1_000_000;

#[test]
fn four_validators_agree() {
    let started = Instant::now();
    let net = Testnet::start_all(4, 6, BALANCE);
    let all = [0, 1, 2, 3];
    net.wait_peers(&all, 3, Duration::from_secs(30));
    let addresses: Vec<String> = (0..6).map(|j| net.account_address(j)).collect();

    // Four senders at once, each through a different validator, three
    // transfers each; then two more rounds that rotate the validators.
    let mut committed: Vec<(String, u64)> = Vec::new();
    for round in 0..3 {
        let results: Vec<Vec<(String, u64)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|sender| {
                    let net = &net;
                    let to = addresses[(sender + 1 + round) % 6].clone();
                    scope.spawn(move || {
                        let node = (sender + round) % 4;
                        (0..3)
                            .map(|k| net.wallet_transfer(node, sender, &to, 10 + k))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        committed.extend(results.into_iter().flatten());
    }
    assert_eq!(committed.len(), 36);
    let top = committed.iter().map(|(_, h)| *h).max().unwrap();

    let height = net.wait_same_height(&all, top, Duration::from_secs(30));
    eprintln!(
        "four validators at height {height} after {} transfers",
        committed.len()
    );
    let hashes = net.assert_same_chain(&all, height);
    assert_eq!(hashes.len() as u64, height);

    // Every block carries a certificate of at least 2f+1 = 3 distinct
    // validators that verifies, on every validator.
    for i in all {
        for h in 1..=height {
            let block = net.get(i, &format!("/v1/blocks/{h}")).json;
            assert_eq!(block["hash"], hashes[h as usize - 1]);
            let signers: std::collections::BTreeSet<&str> = block["commit"]
                .as_array()
                .expect("commit")
                .iter()
                .map(|s| s["validator"].as_str().unwrap())
                .collect();
            assert!(
                signers.len() >= 3,
                "block {h} on validator {i}: {} distinct signers",
                signers.len()
            );
            assert_certificate_verifies(&net, &block, 3);
        }
    }

    // Every transaction is committed, at the same height, on every validator.
    for (hash, at) in &committed {
        for i in all {
            let tx = net.get(i, &format!("/v1/transactions/{hash}")).json;
            assert_eq!(tx["status"], "committed", "{hash} on validator {i}: {tx}");
            assert_eq!(tx["height"], *at, "{hash} on validator {i}");
        }
    }

    net.assert_same_state_and_supply(&all);
    // Each sender made 9 transfers: its nonce is 9 everywhere.
    for (j, address) in addresses.iter().enumerate().take(4) {
        assert_eq!(net.balance(0, address).1, 9, "nonce of account {j}");
    }

    for i in all {
        let status = net.get(i, "/v1/status").json;
        assert_eq!(status["peers"], 3, "validator {i}: {status}");
        assert_eq!(status["validators"].as_array().unwrap().len(), 4);
        assert_eq!(status["height"].as_u64().unwrap(), height);
        assert_eq!(status["latest_block_hash"], hashes[height as usize - 1]);
    }
    eprintln!("four_validators_agree took {:.1?}", started.elapsed());
}

/// Free API and p2p port bases for a four-validator localnet, and all
/// eight ports.
fn localnet_ports() -> (u16, u16, Vec<u16>) {
    let (api, p2p) = (free_port_base(4), free_port_base(4));
    let all = (0..4).map(|i| api + i).chain((0..4).map(|i| p2p + i));
    (api, p2p, all.collect())
}

/// A running `cairn-node localnet`; stopped (and its validators with it)
/// when dropped, even when the test fails.
struct Localnet {
    child: Option<Child>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

fn pids_with_parent(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

fn pid_alive(pid: u32) -> bool {
    // A zombie has exited; only its entry remains until its parent reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
        .unwrap_or(false)
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

impl Localnet {
    fn start(dir: &Path, logs: &Path, run: usize, (api, p2p): (u16, u16)) -> Localnet {
        let stdout_path = logs.join(format!("localnet{run}.out"));
        let stderr_path = logs.join(format!("localnet{run}.err"));
        let child = Command::new(bin("cairn-node"))
            .args(["localnet", "--dir", dir.to_str().unwrap()])
            .args(["--api-port-base", &api.to_string()])
            .args(["--p2p-port-base", &p2p.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start cairn-node localnet");
        Localnet {
            child: Some(child),
            stdout_path,
            stderr_path,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM; returns the exit status once it has exited.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("localnet did not exit within 30 s of SIGTERM");
    }
}

impl Drop for Localnet {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let validators = pids_with_parent(child.id());
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        for pid in validators {
            if pid_alive(pid) {
                signal(pid, "KILL");
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "----- localnet stdout -----\n{}\n----- localnet stderr (tail) -----\n{}",
                self.stdout(),
                tail(&self.stderr(), 60)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits for the localnet banner; returns the API URLs and key files.
fn wait_banner(localnet: &mut Localnet) -> (Vec<String>, Vec<PathBuf>) {
    let text = wait_for("the localnet banner", Duration::from_secs(60), || {
        if let Some(status) = localnet.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "localnet exited early ({status}): {}",
                tail(&localnet.stderr(), 20)
            );
        }
        let text = localnet.stdout();
        text.contains("Press Ctrl-C").then_some(text)
    });
    let apis: Vec<String> = text
        .lines()
        .filter(|l| l.contains(" API "))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .map(str::to_string)
        .collect();
    let keys: Vec<PathBuf> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with(".key"))
        .map(PathBuf::from)
        .collect();
    (apis, keys)
}

fn genesis_hash(dir: &Path) -> String {
    cairn_genesis::Genesis::load(&dir.join("genesis.json"))
        .expect("localnet genesis")
        .hash
        .to_hex()
}

/// `cairn-node localnet` on free ports: the validators answering on the
/// printed addresses must be the ones it started (their keys and chain are
/// those of the testnet it wrote), not whatever else listens there.
#[test]
fn localnet_command_runs_four_validators() {
    let started = Instant::now();
    let _slot = cairn_tests::exclusive_slot();
    let (api_base, p2p_base, ports) = localnet_ports();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("localnet");

    let mut localnet = Localnet::start(&dir, tmp.path(), 1, (api_base, p2p_base));
    let (apis, keys) = wait_banner(&mut localnet);
    assert_eq!(
        apis,
        (api_base..api_base + 4)
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>(),
        "API URLs printed:\n{}",
        localnet.stdout()
    );
    let written =
        cairn_genesis::Genesis::load(&dir.join("genesis.json")).expect("localnet genesis");
    assert_eq!(keys.len(), 4, "key files printed:\n{}", localnet.stdout());
    for key in &keys {
        assert!(key.is_file(), "{} is not a file", key.display());
    }
    let validators = pids_with_parent(localnet.pid());
    assert_eq!(
        validators.len(),
        4,
        "localnet runs four validator processes"
    );

    for api in &apis {
        let status = wait_for(&format!("{api} answers"), Duration::from_secs(30), || {
            try_http_get(&format!("{api}/v1/status")).filter(|a| a.status == 200)
        });
        assert_eq!(status.json["chain_id"], "cairn-localnet");
        assert_eq!(status.json["validators"].as_array().unwrap().len(), 4);
    }
    assert_answering_nodes_are(&apis, &written);
    let genesis = genesis_hash(&dir);

    // A wallet transfer with a printed key file, through validator 1.
    let to = stdout(&run(
        "cairn-wallet",
        &["address", "--key", keys[1].to_str().unwrap()],
    ));
    let output = run(
        "cairn-wallet",
        &[
            "--node",
            &apis[1],
            "--json",
            "transfer",
            "--key",
            keys[0].to_str().unwrap(),
            "--to",
            &to,
            "--amount",
            "42",
            "--wait",
            "--timeout",
            "60",
        ],
    );
    assert!(output.status.success(), "transfer: {}", stderr(&output));
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["status"], "committed");
    let height = json["height"].as_u64().unwrap();
    let hash = json["hash"].as_str().unwrap().to_string();
    for api in &apis {
        wait_for(
            &format!("{hash} committed on {api}"),
            Duration::from_secs(30),
            || {
                let tx = try_http_get(&format!("{api}/v1/transactions/{hash}"))?;
                (tx.json["status"] == "committed" && tx.json["height"] == height).then_some(())
            },
        );
    }

    // SIGTERM stops the localnet and every validator it started.
    let status = localnet.terminate();
    assert!(status.success(), "localnet exit status {status}");
    for pid in &validators {
        wait_for(
            &format!("validator process {pid} gone"),
            Duration::from_secs(15),
            || (!pid_alive(*pid)).then_some(()),
        );
    }
    wait_for("localnet ports free", Duration::from_secs(15), || {
        ports.iter().all(|&p| port_is_free(p)).then_some(())
    });
    eprintln!("first localnet run took {:.1?}", started.elapsed());

    // A second run reuses the testnet: same genesis, same chain.
    let mut again = Localnet::start(&dir, tmp.path(), 2, (api_base, p2p_base));
    let (apis_again, keys_again) = wait_banner(&mut again);
    assert_eq!(apis_again, apis);
    assert_eq!(keys_again, keys);
    assert_eq!(genesis_hash(&dir), genesis, "the testnet was reused");
    assert!(
        again.stderr().contains("reusing"),
        "stderr: {}",
        tail(&again.stderr(), 10)
    );
    for api in &apis {
        let status = wait_for(&format!("{api} answers"), Duration::from_secs(30), || {
            try_http_get(&format!("{api}/v1/status")).filter(|a| a.status == 200)
        });
        assert!(status.json["height"].as_u64().unwrap() >= height);
        let tx = try_http_get(&format!("{api}/v1/transactions/{hash}")).unwrap();
        assert_eq!(tx.json["status"], "committed", "{api}: {}", tx.json);
        assert_eq!(tx.json["height"], height);
    }
    assert_answering_nodes_are(&apis, &written);
    let status = again.terminate();
    assert!(status.success(), "localnet exit status {status}");
    wait_for("localnet ports free", Duration::from_secs(15), || {
        ports.iter().all(|&p| port_is_free(p)).then_some(())
    });
    eprintln!(
        "localnet_command_runs_four_validators took {:.1?}",
        started.elapsed()
    );
}

/// The validator answering at `apis[i]` is validator `i` of `genesis`: its
/// node id is that validator's key, and its chain id and validator set are
/// the genesis file's.
fn assert_answering_nodes_are(apis: &[String], genesis: &cairn_genesis::ValidGenesis) {
    let validators: Vec<String> = genesis.validators.iter().map(|v| v.to_hex()).collect();
    for (i, api) in apis.iter().enumerate() {
        let status = try_http_get(&format!("{api}/v1/status"))
            .unwrap_or_else(|| panic!("{api} does not answer"))
            .json;
        assert_eq!(
            status["node_id"].as_str(),
            Some(validators[i].as_str()),
            "{api} is not validator {i} of the localnet's genesis: {status}"
        );
        assert_eq!(
            status["chain_id"].as_str(),
            Some(genesis.chain_id()),
            "{api}"
        );
        let served: Vec<&str> = status["validators"]
            .as_array()
            .expect("validators")
            .iter()
            .map(|v| v.as_str().unwrap_or_default())
            .collect();
        assert_eq!(served, validators, "{api}: validator set");
    }
}

/// A localnet whose ports are taken refuses to start, with one clear error
/// naming the busy address, and starts no validator.
#[test]
fn localnet_refuses_busy_ports() {
    let _slot = cairn_tests::exclusive_slot();
    let (api_base, p2p_base, _) = localnet_ports();
    let busy = std::net::TcpListener::bind(("127.0.0.1", p2p_base + 2)).expect("hold a port");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("localnet");
    let output = run(
        "cairn-node",
        &[
            "localnet",
            "--dir",
            dir.to_str().unwrap(),
            "--api-port-base",
            &api_base.to_string(),
            "--p2p-port-base",
            &p2p_base.to_string(),
        ],
    );
    assert!(!output.status.success(), "localnet ran on a busy port");
    let err = stderr(&output);
    let address = format!("127.0.0.1:{}", p2p_base + 2);
    assert!(
        err.contains(&format!("p2p address {address} is not free")),
        "stderr: {err}"
    );
    assert!(
        !stdout(&output).contains("Press Ctrl-C"),
        "{}",
        stdout(&output)
    );
    for i in 0..4 {
        assert!(
            port_is_free(api_base + i),
            "an API port is in use: a validator started"
        );
    }
    drop(busy);
}
