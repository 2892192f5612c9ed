//! Encrypted key files end to end on real processes: `cairn-wallet keygen`
//! encrypts by default, a wrong or missing passphrase is refused with one
//! line and sends nothing, a transfer signed with an encrypted key commits,
//! `decrypt`/`encrypt` move between the two forms, and a validator runs from
//! an encrypted `validator.key` given `CAIRN_PASSPHRASE`.
//!
//! The KDF runs with its real default cost (64 MiB, 3 passes: about 0.2 s
//! per key file opened in a release build).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::{bin, stderr, stdout, wait_for, Testnet};
use serde_json::Value;

const BALANCE: u64 = 1_000_000;
const PASSPHRASE: &str = "correct horse battery staple";

/// Runs `cairn-wallet --node <api of 0> args...` with `CAIRN_PASSPHRASE` set
/// to `passphrase`, or removed when `None`; no terminal (stdin is null).
fn wallet(net: &Testnet, passphrase: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(bin("cairn-wallet"));
    command
        .args(["--node", &net.api(0)])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match passphrase {
        Some(passphrase) => command.env("CAIRN_PASSPHRASE", passphrase),
        None => command.env_remove("CAIRN_PASSPHRASE"),
    };
    let mut child = command.spawn().expect("start cairn-wallet");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cairn-wallet {args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The one line a failed command printed, which must contain `expected`.
fn assert_fails_with(output: &Output, expected: &str) {
    assert!(!output.status.success(), "expected a failure: {output:?}");
    let err = stderr(output);
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
}

#[test]
fn encrypted_keys_sign_transfers_that_commit() {
    let net = Testnet::start_all(1, 1, BALANCE);
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("alice.key");

    // No passphrase source and no terminal: refused, nothing written.
    let output = wallet(&net, None, &["keygen", "--out", path(&key)]);
    assert_fails_with(&output, "CAIRN_PASSPHRASE");
    assert!(!key.exists());

    // Encrypted by default; the secret is not in the file.
    let output = wallet(&net, Some(PASSPHRASE), &["keygen", "--out", path(&key)]);
    assert!(output.status.success(), "keygen: {}", stderr(&output));
    let alice = stdout(&output);
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&key).unwrap()).unwrap();
    assert_eq!(file["version"], 1);
    assert_eq!(file["public_key"], alice.as_str());
    assert!(file.get("secret_key").is_none());
    assert_eq!(file["kdf"]["name"], "argon2id");
    // An existing file is never overwritten.
    let output = wallet(&net, Some(PASSPHRASE), &["keygen", "--out", path(&key)]);
    assert_fails_with(&output, "refusing to overwrite");

    // The address needs no passphrase.
    let output = wallet(&net, None, &["address", "--key", path(&key)]);
    assert!(output.status.success(), "address: {}", stderr(&output));
    assert_eq!(stdout(&output), alice);

    // Fund it from a plain testnet key.
    let funder = net.account_address(0);
    net.wallet_transfer(0, 0, &alice, 5_000);
    assert_eq!(net.balance(0, &alice), (5_000, 0));

    // A wrong passphrase, or none, is refused and sends nothing.
    let send = |passphrase: Option<&str>, extra: &[&str]| {
        let mut args = vec![
            "--json",
            "transfer",
            "--key",
            path(&key),
            "--to",
            &funder,
            "--amount",
            "1234",
            "--wait",
        ];
        args.extend_from_slice(extra);
        wallet(&net, passphrase, &args)
    };
    let output = send(Some("wrong horse"), &[]);
    assert_fails_with(&output, "wrong passphrase or corrupted key file");
    let output = send(None, &[]);
    assert_fails_with(&output, "is encrypted and no passphrase was given");
    assert_eq!(net.balance(0, &alice), (5_000, 0));
    assert_eq!(net.get(0, "/v1/status").json["mempool_size"], 0);

    // The right one, from the environment: committed.
    let output = send(Some(PASSPHRASE), &[]);
    assert!(output.status.success(), "transfer: {}", stderr(&output));
    let answer: Value = serde_json::from_str(&stdout(&output)).expect("JSON answer");
    assert_eq!(answer["status"], "committed", "{answer}");
    assert_eq!(net.balance(0, &alice), (5_000 - 1_234, 1));

    // And from --passphrase-file, which wins over a wrong environment value.
    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, format!("{PASSPHRASE}\n")).unwrap();
    let output = send(
        Some("wrong horse"),
        &["--passphrase-file", path(&pass_file)],
    );
    assert!(output.status.success(), "transfer: {}", stderr(&output));
    assert_eq!(net.balance(0, &alice), (5_000 - 2 * 1_234, 2));

    // A file whose public key was swapped for another's is refused.
    let swapped = dir.path().join("swapped.key");
    let mut changed = file.clone();
    changed["public_key"] = funder.clone().into();
    std::fs::write(&swapped, changed.to_string()).unwrap();
    let output = wallet(
        &net,
        Some(PASSPHRASE),
        &[
            "transfer",
            "--key",
            path(&swapped),
            "--to",
            &alice,
            "--amount",
            "1",
        ],
    );
    assert_fails_with(&output, "wrong passphrase or corrupted key file");

    // Export to plain and import back under a new passphrase: same key.
    let plain = dir.path().join("plain.key");
    let output = wallet(
        &net,
        Some(PASSPHRASE),
        &["export", "--key", path(&key), "--out", path(&plain)],
    );
    assert!(output.status.success(), "export: {}", stderr(&output));
    assert!(stderr(&output).contains("NOT encrypted"));
    let plain_json: Value =
        serde_json::from_str(&std::fs::read_to_string(&plain).unwrap()).unwrap();
    assert_eq!(plain_json["plain"], true);
    let again = dir.path().join("again.key");
    let output = wallet(
        &net,
        Some("another passphrase"),
        &["import", "--key", path(&plain), "--out", path(&again)],
    );
    assert!(output.status.success(), "import: {}", stderr(&output));
    assert_eq!(stdout(&output), alice);
    let output = wallet(
        &net,
        Some("another passphrase"),
        &[
            "--json",
            "transfer",
            "--key",
            path(&again),
            "--to",
            &funder,
            "--amount",
            "1",
            "--wait",
        ],
    );
    assert!(output.status.success(), "transfer: {}", stderr(&output));
    assert_eq!(net.balance(0, &alice).1, 3);
}

/// A validator process started by this test, killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cairn-node run` on `home`; its stderr is captured (for a node
/// expected to exit at once) or dropped (for one that keeps running, so a
/// full pipe never blocks it).
fn start_node(home: &Path, passphrase: Option<&str>, capture_stderr: bool) -> Node {
    let mut command = Command::new(bin("cairn-node"));
    command
        .args(["run", "--home", path(home)])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if capture_stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    match passphrase {
        Some(passphrase) => command.env("CAIRN_PASSPHRASE", passphrase),
        None => command.env_remove("CAIRN_PASSPHRASE"),
    };
    Node(command.spawn().expect("start cairn-node"))
}

#[test]
fn a_validator_runs_from_an_encrypted_key() {
    let net = Testnet::create(1, 1, BALANCE);
    let home = net.home(0);
    let validator_key = home.join("validator.key");
    let sealed = home.join("validator.key.sealed");
    let output = wallet(
        &net,
        Some(PASSPHRASE),
        &[
            "encrypt",
            "--key",
            path(&validator_key),
            "--out",
            path(&sealed),
        ],
    );
    assert!(output.status.success(), "encrypt: {}", stderr(&output));
    std::fs::rename(&sealed, &validator_key).unwrap();

    // Without the passphrase: a clear error, non-zero exit.
    let mut node = start_node(&home, None, true);
    let status = wait_for("the node to exit", Duration::from_secs(30), || {
        node.0.try_wait().expect("wait")
    });
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(node.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("is encrypted: set CAIRN_PASSPHRASE"),
        "node stderr: {err}"
    );

    // A wrong one: refused the same way.
    let mut node = start_node(&home, Some("wrong horse"), true);
    let status = wait_for("the node to exit", Duration::from_secs(30), || {
        node.0.try_wait().expect("wait")
    });
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(node.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("wrong passphrase or corrupted key file"),
        "node stderr: {err}"
    );

    // With it: the validator runs and commits.
    let _node = start_node(&home, Some(PASSPHRASE), false);
    net.wait_api(0);
    let bob = cairn_core::Keypair::from_seed([3; 32]).public().to_hex();
    let (_, height) = net.wallet_transfer(0, 0, &bob, 7);
    assert!(height >= 1);
}
