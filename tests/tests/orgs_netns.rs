//! Issue 12: a network across organisations, on four addresses. Four
//! validators, each in a Linux network namespace this test creates, joined
//! by a bridge, each set up the way an organisation would on its own host
//! (`cairn-node init`, then one `cairn-genesis assemble`) and listening only
//! on its own address. They commit transfers; one validator's link goes
//! down (`ip link set ... down`) while the other three go on, and when it
//! comes back up that validator catches up.
//!
//! Every process and every client runs inside the namespaces (`ip netns
//! exec`), so no traffic leaves them; the namespaces, the bridge and the
//! processes are removed at the end, even on failure. Needs root and `ip`
//! (CI runs as root); without them it fails in CI and says SKIPPED
//! elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use cairn_tests::{bin, stderr, stdout, wait_for};
use serde_json::Value;

const VALIDATORS: usize = 4;

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The namespaces, bridge and processes of one run; all removed on drop.
struct Lab {
    tag: String,
    subnet: u8,
    dir: tempfile::TempDir,
    nodes: Vec<Option<Child>>,
    made_bridge: bool,
    namespaces: Vec<String>,
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let mut lab = Lab {
            tag: format!("c{}", pid % 100_000),
            subnet: 20 + (pid % 200) as u8,
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: (0..VALIDATORS).map(|_| None).collect(),
            made_bridge: false,
            namespaces: Vec::new(),
        };
        let bridge = lab.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        lab.made_bridge = true;
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..VALIDATORS {
            let ns = lab.ns(i);
            ip(&["netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            let (host_end, ns_end) = lab.veth(i);
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ]);
            ip(&["link", "set", &ns_end, "netns", &ns]);
            ip(&["link", "set", &host_end, "master", &bridge]);
            ip(&["link", "set", &host_end, "up"]);
            let address = format!("{}/24", lab.address(i));
            ip(&["-n", &ns, "addr", "add", &address, "dev", &ns_end]);
            ip(&["-n", &ns, "link", "set", &ns_end, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// (host end, namespace end) of validator `i`'s link.
    fn veth(&self, i: usize) -> (String, String) {
        (format!("{}h{i}", self.tag), format!("{}v{i}", self.tag))
    }

    fn address(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, i + 1)
    }

    fn api(&self, i: usize) -> String {
        format!("http://{}:8080", self.address(i))
    }

    fn home(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("org{i}"))
    }

    /// Runs a binary inside validator `i`'s namespace.
    fn exec(&self, i: usize, binary: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(i)])
            .arg(bin(binary))
            .args(args)
            .env("CAIRN_PASSPHRASE", "netns-test")
            .output()
            .expect("ip netns exec")
    }

    /// The wallet in namespace `i`, talking to validator `node` (as JSON).
    fn wallet(&self, i: usize, node: usize, args: &[&str]) -> Output {
        let api = self.api(node);
        let mut all = vec!["--node", api.as_str(), "--json"];
        all.extend_from_slice(args);
        self.exec(i, "cairn-wallet", &all)
    }

    fn height(&self, i: usize) -> Option<u64> {
        let output = self.wallet(i, i, &["status"]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_str::<Value>(&stdout(&output)).ok()?["height"].as_u64()
    }

    fn start(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.path().join(format!("org{i}.log"))).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i)])
            .arg(bin("cairn-node"))
            .args(["run", "--home", self.home(i).to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start cairn-node in its namespace");
        self.nodes[i] = Some(child);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for i in 0..VALIDATORS {
                let log = std::fs::read_to_string(self.dir.path().join(format!("org{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- org{i} log (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if self.made_bridge {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge()])
                .output();
        }
    }
}

fn must(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn four_organisations_on_four_addresses_survive_a_link_down() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    if !cairn_tests::machine_has(
        "the network-namespace test",
        root && cairn_tests::program_runs("ip"),
        "root and `ip` (iproute2)",
    ) {
        return;
    }
    let mut lab = Lab::new();
    // Each organisation: init on its own host; only the entry leaves it.
    let mut entries = Vec::new();
    for i in 0..VALIDATORS {
        let home = lab.home(i);
        let p2p = format!("{}:26600", lab.address(i));
        let api = format!("{}:8080", lab.address(i));
        let entry = must(
            lab.exec(
                i,
                "cairn-node",
                &[
                    "init",
                    "--home",
                    home.to_str().unwrap(),
                    "--name",
                    &format!("org{i}"),
                    "--p2p",
                    &p2p,
                    "--api",
                    &api,
                ],
            ),
            "cairn-node init",
        );
        let path = lab.dir.path().join(format!("entry{i}.json"));
        write(&path, &entry);
        entries.push(path);
    }
    // One funded account, its key made with the wallet.
    let alice_key = lab.dir.path().join("alice.key");
    let alice: Value = serde_json::from_str(&must(
        lab.exec(
            0,
            "cairn-wallet",
            &["--json", "keygen", "--out", alice_key.to_str().unwrap()],
        ),
        "keygen",
    ))
    .expect("keygen JSON");
    let alice = alice["address"].as_str().expect("address").to_string();
    let bob_key = lab.dir.path().join("bob.key");
    let bob: Value = serde_json::from_str(&must(
        lab.exec(
            0,
            "cairn-wallet",
            &["--json", "keygen", "--out", bob_key.to_str().unwrap()],
        ),
        "keygen",
    ))
    .expect("keygen JSON");
    let bob = bob["address"].as_str().expect("address").to_string();
    let genesis = lab.dir.path().join("genesis.json");
    let mut args = vec![
        "assemble".to_string(),
        "--chain-id".into(),
        "orgs-netns".into(),
        "--out".into(),
        genesis.to_str().unwrap().into(),
        "--account".into(),
        format!("{alice}=1000000"),
    ];
    for entry in &entries {
        args.push("--validator".into());
        args.push(entry.to_str().unwrap().into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    must(lab.exec(0, "cairn-genesis", &args), "assemble");
    must(
        lab.exec(0, "cairn-genesis", &["validate", genesis.to_str().unwrap()]),
        "validate",
    );
    for i in 0..VALIDATORS {
        std::fs::copy(&genesis, lab.home(i).join("genesis.json")).expect("copy genesis");
        lab.start(i);
    }
    for i in 0..VALIDATORS {
        wait_for(&format!("org{i} API"), Duration::from_secs(30), || {
            lab.height(i)
        });
    }
    // Reachable across the bridge, on its own address only (not on the
    // namespace's loopback).
    let across = lab.wallet(1, 0, &["status"]);
    assert!(
        across.status.success(),
        "org0 from org1's namespace: {}",
        stderr(&across)
    );
    let loopback = lab.exec(
        0,
        "cairn-wallet",
        &["--node", "http://127.0.0.1:8080", "status"],
    );
    assert!(!loopback.status.success(), "org0 also listens on loopback");

    let transfer = |lab: &Lab, node: usize, amount: &str| -> u64 {
        let output = lab.wallet(
            node,
            node,
            &[
                "transfer",
                "--key",
                alice_key.to_str().unwrap(),
                "--to",
                &bob,
                "--amount",
                amount,
                "--wait",
                "--timeout",
                "60",
            ],
        );
        let json: Value = serde_json::from_str(&must(output, "transfer")).expect("JSON");
        json["height"].as_u64().expect("height")
    };
    let first = transfer(&lab, 0, "5");
    assert!(first >= 1);
    wait_for(
        "every validator at the first commit",
        Duration::from_secs(30),
        || {
            (0..VALIDATORS)
                .all(|i| lab.height(i).is_some_and(|h| h >= first))
                .then_some(())
        },
    );

    // org3's link goes down: the other three go on committing.
    let (host_end, _) = lab.veth(3);
    ip(&["link", "set", &host_end, "down"]);
    let stuck = lab.height(3).expect("org3 still answers in its namespace");
    let mut last = first;
    for k in 0..3 {
        last = transfer(&lab, k % 3, "7");
    }
    assert!(
        last > stuck,
        "the three committed past org3's {stuck}: {last}"
    );
    assert!(
        lab.height(3).expect("org3 answers") <= stuck,
        "org3 cannot have committed while cut off"
    );
    // Up again: org3 catches up with the others.
    ip(&["link", "set", &host_end, "up"]);
    wait_for(
        "org3 caught up after its link came back",
        Duration::from_secs(60),
        || lab.height(3).filter(|h| *h >= last).map(|_| ()),
    );
    let after = transfer(&lab, 3, "1");
    assert!(after > last, "org3 takes part again");
    let balance = lab.wallet(2, 2, &["balance", &bob]);
    let balance: Value = serde_json::from_str(&must(balance, "balance")).expect("JSON");
    assert_eq!(balance["balance"], 5 + 3 * 7 + 1);
}
