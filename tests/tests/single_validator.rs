//! The README flow on one validator, end to end on real processes: transfer
//! with the wallet, see it over HTTP and SSE, survive `kill -9`.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use cairn_tests::{assert_certificate_verifies, stderr, stdout, Testnet};
use serde_json::Value;

const BALANCE: u64 = 1_000_000;

#[test]
fn transfer_commits_and_survives_kill_9() {
    let mut net = Testnet::start_all(1, 3, BALANCE);
    let alice = net.account_address(0);
    let bob = net.account_address(1);

    let status = net.get(0, "/v1/status").json;
    assert_eq!(status["chain_id"], "cairn-e2e");
    assert_eq!(status["height"], 0);
    assert_eq!(status["validators"].as_array().unwrap().len(), 1);
    assert_eq!(status["leader"], status["node_id"]);
    assert_eq!(status["mempool_size"], 0);

    // Follow commits over SSE while transferring.
    let events_url = format!("{}/v1/events", net.api(0));
    let (event_tx, event_rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        let response = ureq::get(&events_url).call().expect("SSE");
        let mut reader = BufReader::new(response.into_reader());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                if event_tx
                    .send(serde_json::from_str(data.trim()).expect("event JSON"))
                    .is_err()
                {
                    return;
                }
            }
            line.clear();
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    let (hash, height) = net.wallet_transfer(0, 0, &bob, 1_234);
    assert_eq!(net.balance(0, &alice), (BALANCE - 1_234, 1));
    assert_eq!(net.balance(0, &bob), (BALANCE + 1_234, 0));

    let tx = net.get(0, &format!("/v1/transactions/{hash}"));
    assert_eq!(tx.status, 200);
    assert_eq!(tx.json["status"], "committed");
    assert_eq!(tx.json["height"], height);

    let block = net.get(0, &format!("/v1/blocks/{height}")).json;
    assert_eq!(block["height"], height);
    let hashes: Vec<&str> = block["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["hash"].as_str().unwrap())
        .collect();
    assert!(hashes.contains(&hash.as_str()));
    assert_certificate_verifies(&net, &block, 1);
    assert_eq!(
        net.get(0, "/v1/blocks/latest").json["height"],
        net.height(0)
    );

    let event = event_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a block event");
    assert_eq!(event["height"], height, "{event}");
    assert_eq!(event["hash"], block["hash"]);
    assert_eq!(
        event["tx_count"],
        block["transactions"].as_array().unwrap().len()
    );

    let metrics = ureq::get(&format!("{}/metrics", net.api(0)))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for name in [
        "cairn_height",
        "cairn_view",
        "cairn_committed_transactions_total",
        "cairn_mempool_size",
        "cairn_peers_connected",
        "cairn_block_commit_latency_seconds_count",
    ] {
        assert!(metrics.contains(name), "metric {name} missing");
    }

    // More traffic from two senders, then kill -9 and restart.
    for amount in [5, 6, 7] {
        net.wallet_transfer(0, 1, &alice, amount);
    }
    net.wallet_transfer(0, 0, &bob, 100);
    let tip = net.height(0);
    let hashes_before = net.block_hashes(0, tip);
    let alice_before = net.balance(0, &alice);
    let bob_before = net.balance(0, &bob);
    assert_eq!(alice_before, (BALANCE - 1_234 + 18 - 100, 2));
    assert_eq!(bob_before, (BALANCE + 1_234 - 18 + 100, 3));

    net.kill9(0);
    net.start(0);
    net.wait_api(0);
    assert_eq!(net.height(0), tip, "every committed block is still there");
    assert_eq!(net.block_hashes(0, tip), hashes_before);
    assert_eq!(net.balance(0, &alice), alice_before);
    assert_eq!(net.balance(0, &bob), bob_before);
    assert_eq!(
        net.get(0, &format!("/v1/transactions/{hash}")).json["status"],
        "committed"
    );

    let (_, new_height) = net.wallet_transfer(0, 0, &bob, 1);
    assert!(new_height > tip);
    assert_eq!(net.supply_of_genesis_accounts(0), 3 * BALANCE as u128);

    // SIGTERM stops the node cleanly, even with an SSE subscriber attached.
    let subscriber = ureq::get(&format!("{}/v1/events", net.api(0)))
        .call()
        .expect("SSE");
    assert_eq!(net.terminate(0), Some(0), "SIGTERM stops the node cleanly");
    drop(subscriber);
}

#[test]
fn wallet_reports_node_state() {
    let net = Testnet::start_all(1, 2, BALANCE);
    let alice = net.account_address(0);
    let output = net.wallet(0, &["--json", "balance", &alice]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["balance"], BALANCE);
    assert_eq!(json["nonce"], 0);

    let output = net.wallet(0, &["--json", "status"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["chain_id"], "cairn-e2e");

    let output = net.wallet(0, &["--json", "block", "0"]);
    assert!(output.status.success(), "{}", stderr(&output));

    // A rejected transfer exits non-zero with the code on one line.
    let key = net.account_key(1);
    let output = net.wallet(
        0,
        &[
            "transfer",
            "--key",
            key.to_str().unwrap(),
            "--to",
            &alice,
            "--amount",
            &(BALANCE + 1).to_string(),
        ],
    );
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("insufficient_funds"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A node that is down is one clear line too.
    let output = cairn_tests::run("cairn-wallet", &["--node", "http://127.0.0.1:9", "status"]);
    assert!(!output.status.success());
    assert_eq!(stderr(&output).lines().count(), 1);
}
