//! `cairn-wallet` as a user runs it, for the commands that need no node.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use cairn_core::api::TxJson;
use cairn_core::SignedTransaction;

/// A port nothing listens on, so a request that slipped through would fail
/// with "cannot reach node" instead of the local validation error.
fn closed_node() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// The passphrase the tests' key files are encrypted under.
const PASSPHRASE: &str = "test passphrase";

/// Runs the wallet with no terminal and `CAIRN_PASSPHRASE` set.
fn wallet(args: &[&str]) -> Output {
    wallet_with(args, Some(PASSPHRASE))
}

/// Runs the wallet with no terminal, `CAIRN_PASSPHRASE` set to `passphrase`
/// or removed.
fn wallet_with(args: &[&str], passphrase: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairn-wallet"));
    command
        .args(args)
        .env("CAIRN_NODE", closed_node())
        .stdin(Stdio::null());
    match passphrase {
        Some(passphrase) => command.env("CAIRN_PASSPHRASE", passphrase),
        None => command.env_remove("CAIRN_PASSPHRASE"),
    };
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Asserts a failure with exactly one `error: ...` line on stderr containing
/// `expected`.
fn assert_fails(output: &Output, expected: &str) {
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert!(!output.status.success(), "should fail: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expected), "{expected:?} in {stderr:?}");
}

fn keygen(path: &Path) -> String {
    let output = wallet(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    stdout(&output).trim().to_string()
}

#[test]
fn keygen_prints_the_address_sets_0600_and_refuses_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.key");
    let address = keygen(&path);
    assert_eq!(address.len(), 64);
    assert!(cairn_wallet::parse_address(&address).is_ok());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = std::fs::read(&path).unwrap();
    let again = wallet(&["keygen", "--out", path.to_str().unwrap()]);
    assert_fails(&again, "refusing to overwrite");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let address_out = wallet(&["address", "--key", path.to_str().unwrap()]);
    assert_eq!(stdout(&address_out), format!("{address}\n"));
    let json = wallet(&["address", "--key", path.to_str().unwrap(), "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["address"], address.as_str());
    assert_eq!(value["encrypted"], true);
}

#[test]
fn keygen_encrypts_unless_plain_and_needs_a_passphrase_source() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = dir.path().join("sealed.key");
    let sealed_arg = sealed.to_str().unwrap();

    // No CAIRN_PASSPHRASE, no --passphrase-file, no terminal.
    let output = wallet_with(&["keygen", "--out", sealed_arg], None);
    assert_fails(&output, "needs a passphrase");
    assert!(!sealed.exists());
    let output = wallet_with(&["keygen", "--out", sealed_arg], Some(""));
    assert_fails(&output, "needs a passphrase");

    let address = keygen(&sealed);
    let text = std::fs::read_to_string(&sealed).unwrap();
    assert!(text.contains("\"ciphertext\""), "{text}");
    assert!(!text.contains("secret_key"), "{text}");

    // The address is readable without the passphrase; signing is not.
    let output = wallet_with(&["address", "--key", sealed_arg], None);
    assert_eq!(stdout(&output).trim(), address);
    let sign = |passphrase: Option<&str>, extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend_from_slice(&[
            "sign-transfer",
            "--key",
            sealed_arg,
            "--to",
            &address,
            "--amount",
            "1",
            "--nonce",
            "0",
            "--chain-id",
            "c",
        ]);
        wallet_with(&args, passphrase)
    };
    assert_fails(&sign(None, &[]), "is encrypted and no passphrase was given");
    assert_fails(
        &sign(Some("nope"), &[]),
        "wrong passphrase or corrupted key file",
    );
    assert!(sign(Some(PASSPHRASE), &[]).status.success());
    // --passphrase-file comes first.
    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, format!("{PASSPHRASE}\n")).unwrap();
    let file_arg = ["--passphrase-file", pass_file.to_str().unwrap()];
    assert!(sign(Some("nope"), &file_arg).status.success());
    let output = sign(None, &["--passphrase-file", "/nonexistent/pass"]);
    assert_fails(&output, "cannot read passphrase file");

    // --plain: a warning, a plain file, no passphrase needed.
    let plain = dir.path().join("plain.key");
    let output = wallet_with(
        &["keygen", "--plain", "--out", plain.to_str().unwrap()],
        None,
    );
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("NOT encrypted"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plain).unwrap()).unwrap();
    assert_eq!(json["plain"], true);
    let output = wallet_with(
        &["address", "--json", "--key", plain.to_str().unwrap()],
        None,
    );
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["encrypted"], false);

    // encrypt/decrypt refuse the wrong form and existing outputs.
    let out = dir.path().join("out.key");
    let out_arg = out.to_str().unwrap();
    assert_fails(
        &wallet(&["encrypt", "--key", sealed_arg, "--out", out_arg]),
        "already encrypted",
    );
    assert_fails(
        &wallet(&[
            "decrypt",
            "--key",
            plain.to_str().unwrap(),
            "--out",
            out_arg,
        ]),
        "is not encrypted",
    );
    assert_fails(
        &wallet(&[
            "decrypt",
            "--key",
            sealed_arg,
            "--out",
            plain.to_str().unwrap(),
        ]),
        "refusing to overwrite",
    );
    assert!(!out.exists());

    // change-passphrase: in place, the old one no longer opens it.
    let new_file = dir.path().join("new-pass");
    std::fs::write(&new_file, "brand new\n").unwrap();
    let new_arg = ["--new-passphrase-file", new_file.to_str().unwrap()];
    let mut args = vec!["change-passphrase", "--key", sealed_arg];
    args.extend_from_slice(&new_arg);
    assert_fails(&wallet_with(&args, Some("nope")), "wrong passphrase");
    assert_fails(
        &wallet(&["change-passphrase", "--key", sealed_arg]),
        "--new-passphrase-file",
    );
    let output = wallet(&args);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output).trim(), address);
    assert_fails(&sign(Some(PASSPHRASE), &[]), "wrong passphrase");
    assert!(sign(Some("brand new"), &[]).status.success());
    assert!(!dir.path().join("sealed.key.new").exists());
    let mut plain_args = vec!["change-passphrase", "--key", plain.to_str().unwrap()];
    plain_args.extend_from_slice(&new_arg);
    assert_fails(&wallet(&plain_args), "is not encrypted");
}

#[test]
fn sign_transfer_prints_a_verifiable_tx_json() {
    let dir = tempfile::tempdir().unwrap();
    let from = keygen(&dir.path().join("from.key"));
    let to = keygen(&dir.path().join("to.key"));
    let key = dir.path().join("from.key");
    let output = wallet(&[
        "sign-transfer",
        "--key",
        key.to_str().unwrap(),
        "--to",
        &to,
        "--amount",
        "42",
        "--nonce",
        "3",
        "--chain-id",
        "test-chain",
    ]);
    assert!(output.status.success(), "{output:?}");
    let json: TxJson = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (
            json.from.as_str(),
            json.to.as_str(),
            json.amount,
            json.nonce
        ),
        (from.as_str(), to.as_str(), 42, 3)
    );
    assert_eq!(json.chain_id, "test-chain");
    let tx = SignedTransaction::try_from(&json).unwrap();
    assert_eq!(tx.verify_signature(), Ok(()));
    assert_eq!(tx.check_stateless("test-chain"), Ok(()));
}

#[test]
fn bad_input_is_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("k.key");
    let to = keygen(&key_path);
    let key = key_path.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["balance", "xyz"], "invalid address"),
        (&["balance", &"g".repeat(64)], "invalid address"),
        (
            &["transfer", "--key", key, "--to", "abc", "--amount", "1"],
            "invalid address",
        ),
        (
            &[
                "transfer",
                "--key",
                key,
                "--to",
                &"00".repeat(32),
                "--amount",
                "1",
            ],
            "weak key",
        ),
        (
            &[
                "sign-transfer",
                "--key",
                key,
                "--to",
                &"00".repeat(32),
                "--amount",
                "1",
                "--nonce",
                "0",
                "--chain-id",
                "c",
            ],
            "weak key",
        ),
        (
            &["transfer", "--key", key, "--to", &to, "--amount", "0"],
            "amount must be greater than zero",
        ),
        (
            &[
                "sign-transfer",
                "--key",
                key,
                "--to",
                &to,
                "--amount",
                "0",
                "--nonce",
                "0",
                "--chain-id",
                "c",
            ],
            "amount must be greater than zero",
        ),
        (
            &[
                "transfer",
                "--key",
                "/nonexistent.key",
                "--to",
                &to,
                "--amount",
                "1",
            ],
            "cannot read key file",
        ),
        (&["tx", "abc"], "invalid hash"),
        (&["block", "tip"], "invalid block"),
        (&["--node", "localhost:8080", "status"], "invalid node URL"),
        (
            &["transfer", "--key", key, "--to", &to, "--amount", "1.5"],
            "--amount",
        ),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, expected) in cases {
        assert_fails(&wallet(args), expected);
    }
    std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
    let bad = dir.path().join("bad.key");
    assert_fails(
        &wallet(&["address", "--key", bad.to_str().unwrap()]),
        "not a key file",
    );
}

#[test]
fn node_down_is_one_clear_line() {
    for args in [&["status"][..], &["block"], &["balance", &"a".repeat(64)]] {
        assert_fails(&wallet(args), "cannot reach node at http://127.0.0.1:");
    }
}

#[test]
fn help_works_on_every_subcommand() {
    for command in [
        "keygen",
        "address",
        "encrypt",
        "decrypt",
        "import",
        "export",
        "change-passphrase",
        "balance",
        "transfer",
        "sign-transfer",
        "tx",
        "block",
        "status",
    ] {
        let output = wallet(&[command, "--help"]);
        assert!(output.status.success(), "{command}");
        assert!(stdout(&output).contains("Usage: cairn-wallet"), "{command}");
    }
}
