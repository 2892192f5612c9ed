//! `cairn-genesis` as a user runs it.

use std::process::{Command, Output};

fn genesis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn-genesis"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn assert_fails(output: &Output, expected: &str) {
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert!(!output.status.success(), "should fail: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expected), "{expected:?} in {stderr:?}");
}

#[test]
fn testnet_then_validate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let out_str = out.to_str().unwrap();
    let output = genesis(&[
        "testnet",
        "--validators",
        "4",
        "--out",
        out_str,
        "--accounts",
        "3",
        "--balance",
        "77",
        "--chain-id",
        "cli-chain",
        "--api-port-base",
        "18100",
        "--p2p-port-base",
        "28100",
    ]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(text.contains("chain id: cli-chain"), "{text}");
    assert!(text.contains("127.0.0.1:18103"), "{text}");
    assert!(text.contains("127.0.0.1:28103"), "{text}");
    assert!(text.contains("account2.key"), "{text}");
    for i in 0..4 {
        let home = out.join(format!("node{i}"));
        for file in ["genesis.json", "validator.key", "node.json"] {
            assert!(home.join(file).is_file(), "node{i}/{file}");
        }
    }

    let file = out.join("genesis.json");
    let valid = genesis(&["validate", file.to_str().unwrap()]);
    assert!(valid.status.success(), "{valid:?}");
    let loaded = cairn_genesis::Genesis::load(&file).unwrap();
    let text = stdout(&valid);
    assert!(text.contains(&loaded.hash.to_hex()), "{text}");
    assert!(text.contains("chain id: cli-chain"), "{text}");
    for key in &loaded.validators {
        assert!(text.contains(&key.to_hex()), "{text}");
    }

    let again = genesis(&["testnet", "--validators", "1", "--out", out_str]);
    assert_fails(&again, "not empty");
}

#[test]
fn validate_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let made = genesis(&[
        "testnet",
        "--validators",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(made.status.success());
    let file = out.join("genesis.json");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let first = value["validators"][0]["public_key"].clone();
    value["validators"][1]["public_key"] = first;
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, value.to_string()).unwrap();
    assert_fails(
        &genesis(&["validate", broken.to_str().unwrap()]),
        "duplicate validator key",
    );
    assert_fails(&genesis(&["validate", "/nonexistent.json"]), "cannot read");
    std::fs::write(&broken, "[1, 2").unwrap();
    assert_fails(
        &genesis(&["validate", broken.to_str().unwrap()]),
        "not a valid genesis file",
    );
}

#[test]
fn bad_options_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("net");
    let out = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["testnet", "--validators", "0", "--out", out],
            "at least 1",
        ),
        (
            &[
                "testnet",
                "--validators",
                "3",
                "--out",
                out,
                "--api-port-base",
                "65534",
            ],
            "above 65535",
        ),
        (
            &[
                "testnet",
                "--validators",
                "1",
                "--out",
                out,
                "--host",
                "example.org",
            ],
            "not an IP address",
        ),
        (
            &[
                "testnet",
                "--validators",
                "1",
                "--out",
                out,
                "--accounts",
                "0",
            ],
            "zero total supply",
        ),
        (&["testnet", "--out", out], "--validators"),
        (
            &["testnet", "--validators", "x", "--out", out],
            "invalid value",
        ),
    ];
    for (args, expected) in cases {
        assert_fails(&genesis(args), expected);
    }
    assert!(!dir.path().join("net").exists());
}

#[test]
fn help_works_on_every_subcommand() {
    for command in ["testnet", "validate"] {
        let output = genesis(&[command, "--help"]);
        assert!(output.status.success(), "{command}");
        assert!(
            stdout(&output).contains("Usage: cairn-genesis"),
            "{command}"
        );
    }
}
