//! Issue 11: a wallet that checks what nodes tell it. Against a real
//! 4-validator network the wallet with `--genesis` says `verified: yes` for a
//! transfer, a balance (present and absent), a transaction and a block;
//! behind a lying node (a loopback HTTP proxy that alters one thing in the
//! answers) every command that uses the altered answer exits non-zero with
//! `verification failed`.

use std::sync::Arc;

use cairn_tests::lying::{Lie, LyingNode};
use cairn_tests::{run, stderr, stdout, Testnet};
use serde_json::Value;

const BALANCE: u64 = 1_000_000;

/// Runs the wallet against `node` (a URL) trusting the testnet's genesis.
fn wallet(net: &Testnet, node: &str, args: &[&str]) -> std::process::Output {
    let genesis = net.net_dir().join("genesis.json");
    let mut all = vec!["--node", node, "--genesis", genesis.to_str().unwrap()];
    all.extend_from_slice(args);
    run("cairn-wallet", &all)
}

fn assert_verified(output: &std::process::Output, what: &str) {
    assert!(output.status.success(), "{what} failed: {}", stderr(output));
    assert!(
        stdout(output).contains("verified: yes"),
        "{what} did not say verified: {}",
        stdout(output)
    );
}

fn assert_refused(output: &std::process::Output, what: &str) {
    assert!(
        !output.status.success(),
        "{what}: the wallet believed a lying node: {}",
        stdout(output)
    );
    assert!(
        stderr(output).contains("verification failed"),
        "{what}: refused, but not as a failed verification: {}",
        stderr(output)
    );
}

fn lie(f: impl Fn(&str, &mut Value) + Send + Sync + 'static) -> Lie {
    Arc::new(f)
}

#[test]
fn the_wallet_verifies_answers_and_catches_a_lying_node() {
    let net = Testnet::start_all(4, 3, BALANCE);
    let node = net.api(0);
    let key = net.account_key(0);
    let alice = net.account_address(0);
    let bob = net.account_address(1);
    let nobody = "11".repeat(32);

    // An honest node: every answer checks out.
    let sent = wallet(
        &net,
        &node,
        &[
            "transfer",
            "--key",
            key.to_str().unwrap(),
            "--to",
            &bob,
            "--amount",
            "25",
            "--wait",
        ],
    );
    assert_verified(&sent, "transfer --wait");
    let hash = stdout(&sent).lines().next().unwrap().trim().to_string();
    let json = wallet(&net, &node, &["--json", "balance", &alice]);
    assert!(json.status.success(), "{}", stderr(&json));
    let answer: Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(answer["verified"], true);
    assert_eq!(answer["balance"], BALANCE - 25);
    assert_verified(&wallet(&net, &node, &["balance", &bob]), "balance");
    assert_verified(
        &wallet(&net, &node, &["balance", &nobody]),
        "absent balance",
    );
    assert_verified(&wallet(&net, &node, &["tx", &hash]), "tx");
    assert_verified(&wallet(&net, &node, &["block", "latest"]), "block latest");
    assert_verified(&wallet(&net, &node, &["block", "1"]), "block 1");
    assert_verified(&wallet(&net, &node, &["block", "0"]), "genesis block");

    // The proof is there only when asked for; a bad `proof` value is a
    // clear 400.
    let plain = net.get(0, &format!("/v1/accounts/{alice}"));
    assert!(plain.json.get("proof").is_none(), "{}", plain.json);
    let proved = net.get(0, &format!("/v1/accounts/{alice}?proof=true"));
    assert_eq!(proved.status, 200);
    assert!(proved.json["proof"]["merkle_proof"]["siblings"].is_array());
    let bad = net.get(0, &format!("/v1/accounts/{alice}?proof=maybe"));
    assert_eq!(
        (bad.status, bad.json["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let bad = net.get(0, &format!("/v1/transactions/{hash}?proof=1"));
    assert_eq!(
        (bad.status, bad.json["code"].as_str()),
        (400, Some("invalid_query"))
    );

    let upstream = net.genesis.api_addresses[0];
    let lies: Vec<(&str, Lie, Vec<&str>)> = vec![
        (
            "a balance",
            lie(|path, json| {
                if path.starts_with("/v1/accounts/") {
                    json["balance"] = Value::from(json["balance"].as_u64().unwrap() + 1);
                }
            }),
            vec!["balance", &alice],
        ),
        (
            "a proof node",
            lie(|path, json| {
                if path.starts_with("/v1/accounts/") {
                    json["proof"]["merkle_proof"]["siblings"][0] = Value::from("ab".repeat(32));
                }
            }),
            vec!["balance", &alice],
        ),
        (
            "an absent account's proof",
            lie(|path, json| {
                if path.starts_with("/v1/accounts/") {
                    json["balance"] = Value::from(1_000);
                }
            }),
            vec!["balance", &nobody],
        ),
        (
            "a header field",
            lie(|path, json| {
                if path.starts_with("/v1/accounts/") {
                    let t = json["proof"]["header"]["timestamp_ms"].as_u64().unwrap();
                    json["proof"]["header"]["timestamp_ms"] = Value::from(t + 1);
                }
            }),
            vec!["balance", &alice],
        ),
        (
            "a certificate signature",
            lie(|path, json| {
                if path.starts_with("/v1/transactions/") {
                    json["proof"]["commit"]["signatures"][0]["signature"] =
                        Value::from("cd".repeat(64));
                }
            }),
            vec!["tx", &hash],
        ),
        (
            "a transaction's root",
            lie(|path, json| {
                if path.starts_with("/v1/transactions/") {
                    json["proof"]["header"]["tx_root"] = Value::from("ef".repeat(32));
                }
            }),
            vec!["tx", &hash],
        ),
        (
            "a block's state root",
            lie(|path, json| {
                if path.starts_with("/v1/blocks/") {
                    json["state_root"] = Value::from("12".repeat(32));
                }
            }),
            vec!["block", "1"],
        ),
        (
            "a block's commit signature",
            lie(|path, json| {
                if path.starts_with("/v1/blocks/") {
                    json["commit"][0]["signature"] = Value::from("34".repeat(64));
                }
            }),
            vec!["block", "latest"],
        ),
        (
            "the chain id",
            lie(|path, json| {
                if path == "/v1/status" {
                    json["chain_id"] = Value::from("another-chain");
                }
            }),
            vec![
                "transfer",
                "--key",
                key.to_str().unwrap(),
                "--to",
                &bob,
                "--amount",
                "1",
            ],
        ),
        (
            "a submitted transaction's hash",
            lie(|path, json| {
                if path == "/v1/transactions" && json.get("hash").is_some() {
                    json["hash"] = Value::from("56".repeat(32));
                }
            }),
            vec![
                "transfer",
                "--key",
                key.to_str().unwrap(),
                "--to",
                &bob,
                "--amount",
                "1",
            ],
        ),
    ];
    for (what, lie, args) in lies {
        let liar = LyingNode::start(upstream, lie);
        assert_refused(&wallet(&net, &liar.url(), &args), what);
    }
    // The same proxy passing answers unaltered is believed (the refusals
    // above are the lies', not the proxy's).
    let honest = LyingNode::start(upstream, lie(|_, _| {}));
    assert_verified(
        &wallet(&net, &honest.url(), &["balance", &alice]),
        "via an honest proxy",
    );
    assert_verified(
        &wallet(&net, &honest.url(), &["tx", &hash]),
        "tx via an honest proxy",
    );
}
