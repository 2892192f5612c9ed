//! The README flow on one validator, end to end on real processes: transfer
//! with the wallet, see it over HTTP and SSE, survive `kill -9`, idle and in
//! the middle of committing under load.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::api::TxJson;
use cairn_tests::{
    assert_certificate_verifies, stderr, stdout, try_http_post, tx_hash, wait_for, Signer,
    TestSeed, Testnet,
};
use serde_json::Value;

const BALANCE: u64 = 1_000_000;

#[test]
fn transfer_commits_and_survives_kill_9() {
    let seed = TestSeed::new("single_validator", "transfer_commits_and_survives_kill_9");
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

    // Now kill -9 in the middle of committing, under load, three times.
    let mut rng = seed.rng();
    for round in 1..=3 {
        eprintln!("kill -9 under load, round {round}");
        kill_9_while_committing(&mut net, &mut rng);
    }

    // SIGTERM stops the node cleanly, even with an SSE subscriber attached.
    let subscriber = ureq::get(&format!("{}/v1/events", net.api(0)))
        .call()
        .expect("SSE");
    assert_eq!(net.terminate(0), Some(0), "SIGTERM stops the node cleanly");
    drop(subscriber);
}

/// What one sender thread of [`kill_9_while_committing`] sent: every
/// transaction acknowledged with 202, in nonce order, and the one whose
/// POST was cut by the kill (outcome unknown), if any.
struct Sent {
    acked: Vec<TxJson>,
    cut: Option<TxJson>,
}

/// Three senders (every funded account) post signed transfers to the one
/// validator as fast as it admits them; once blocks are committing under
/// that load (at a seeded moment) the validator is `kill -9`ed, then
/// restarted on its own data folder. Checked against every transaction
/// acknowledged with 202:
///
/// - every block committed before the kill is still there, unchanged;
/// - each acknowledged transaction is committed exactly once in the
///   restarted validator's chain. One that is neither committed nor pending
///   after the restart (202 admits to the mempool, which a kill loses) is
///   sent again as itself, like any client would, and must then commit; at
///   most what the mempool held at the kill may be lost, never a committed
///   one;
/// - per sender the committed nonces run 0, 1, 2, ... without a gap or a
///   repeat, and replaying every committed transfer from the genesis
///   balances gives exactly the balances and nonces the node serves, with
///   the supply unchanged.
fn kill_9_while_committing(net: &mut Testnet, rng: &mut cairn_tests::SeededRng) {
    let api = net.api(0);
    let accounts: Vec<String> = (0..3).map(|j| net.account_address(j)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..3)
        .map(|j| {
            let nonce = net.balance(0, &accounts[j]).1;
            let signer = net.signer(j, nonce);
            let to: cairn_core::PublicKey = accounts[(j + 1) % 3].parse().unwrap();
            let (api, stop, count) = (api.clone(), stop.clone(), acked_count.clone());
            std::thread::spawn(move || send_until_cut(signer, to, &api, &stop, &count))
        })
        .collect();

    // Let blocks commit under load, then kill at a seeded moment while the
    // mempool still holds acknowledged transfers.
    let start_height = net.height(0);
    wait_for(
        "blocks committing under load",
        Duration::from_secs(30),
        || (net.try_height(0)? >= start_height + 3).then_some(()),
    );
    std::thread::sleep(rng.millis(0, 700));
    let acked_before_status = acked_count.load(Ordering::SeqCst);
    let before = wait_for(
        "acknowledged transfers waiting to commit",
        Duration::from_secs(10),
        || {
            let status = net.try_status(0)?;
            (status["mempool_size"].as_u64()? > 0).then_some(status)
        },
    );
    let height_before = before["height"].as_u64().unwrap();
    let hash_before = net.get(0, &format!("/v1/blocks/{height_before}")).json["hash"].clone();
    let killed_at = Instant::now();
    net.kill9(0);
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<Sent> = threads
        .into_iter()
        .map(|t| t.join().expect("sender thread"))
        .collect();
    let acked: usize = sent.iter().map(|s| s.acked.len()).sum();
    eprintln!(
        "kill -9 at height {height_before} with {} transactions in the mempool, {acked} \
         acknowledged in all, {} POSTs cut by the kill",
        before["mempool_size"],
        sent.iter().filter(|s| s.cut.is_some()).count()
    );

    net.start(0);
    net.wait_api(0);
    eprintln!("restarted in {:.1?}", killed_at.elapsed());
    let height_after = net.height(0);
    assert!(
        height_after >= height_before,
        "blocks committed before the kill were lost: height {height_after} after the restart, \
         {height_before} before"
    );
    assert_eq!(
        net.get(0, &format!("/v1/blocks/{height_before}")).json["hash"],
        hash_before,
        "block {height_before} changed across the kill"
    );

    // Each acknowledged transaction: committed, pending, or lost with the
    // mempool (then sent again as itself). The POST cut by the kill may have
    // landed or not: it is sent again too if absent.
    let mut lost = 0;
    for s in &sent {
        for tx in s.acked.iter().chain(&s.cut) {
            let hash = tx_hash(tx);
            let status = net.get(0, &format!("/v1/transactions/{hash}"));
            match (status.status, status.json["status"].as_str()) {
                (200, Some("committed" | "pending")) => {}
                (404, _) => {
                    if s.acked.contains(tx) {
                        lost += 1;
                    }
                    let again =
                        net.post(0, "/v1/transactions", &serde_json::to_string(tx).unwrap());
                    assert_eq!(again.status, 202, "{hash} sent again: {}", again.json);
                }
                _ => panic!(
                    "acknowledged {hash} after the restart: {} {}",
                    status.status, status.json
                ),
            }
        }
    }
    // Lost: at most what the mempool held at the status read before the
    // kill plus what was acknowledged after that read.
    let in_mempool = before["mempool_size"].as_u64().unwrap() as usize;
    let acked_after_status = acked - acked_before_status;
    eprintln!(
        "{lost} acknowledged transactions were lost with the mempool and sent again (at most \
         {in_mempool} + {acked_after_status} may be)"
    );
    assert!(
        lost <= in_mempool + acked_after_status,
        "{lost} acknowledged transactions lost, more than the mempool held"
    );
    let mut heights = HashMap::new();
    for s in &sent {
        for tx in s.acked.iter().chain(&s.cut) {
            let hash = tx_hash(tx);
            heights.insert(
                hash.clone(),
                net.wait_committed(0, &hash, Duration::from_secs(60)),
            );
        }
    }

    // The restarted validator's own chain, from genesis to its tip.
    let tip = net.wait_same_height(&[0], 0, Duration::from_secs(30));
    let mut balances: BTreeMap<String, u64> = net
        .genesis
        .accounts
        .iter()
        .map(|(k, a)| (k.to_hex(), a.balance))
        .collect();
    let mut nonces: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for h in 1..=tip {
        let block = net.get(0, &format!("/v1/blocks/{h}")).json;
        for t in block["transactions"].as_array().unwrap() {
            let hash = t["hash"].as_str().unwrap().to_string();
            if let Some(first) = seen.insert(hash.clone(), h) {
                panic!("{hash} committed twice: heights {first} and {h}");
            }
            let (from, to) = (t["from"].as_str().unwrap(), t["to"].as_str().unwrap());
            let (amount, nonce) = (t["amount"].as_u64().unwrap(), t["nonce"].as_u64().unwrap());
            let next = nonces.entry(from.to_string()).or_default();
            assert_eq!(
                nonce, *next,
                "{hash} from {from} at height {h}: nonce gap or repeat"
            );
            *next += 1;
            let from_balance = balances.get_mut(from).expect("a funded sender");
            *from_balance = from_balance.checked_sub(amount).expect("no overdraft");
            *balances.entry(to.to_string()).or_default() += amount;
        }
    }
    for (hash, height) in &heights {
        assert_eq!(
            seen.get(hash),
            Some(height),
            "{hash} in the chain at its reported height"
        );
    }
    for account in &accounts {
        assert_eq!(
            net.balance(0, account),
            (balances[account], nonces.get(account).copied().unwrap_or(0)),
            "account {account}: the node's state is the replay of its own chain"
        );
    }
    let supply: u128 = balances.values().map(|b| *b as u128).sum();
    assert_eq!(supply, 3 * BALANCE as u128, "supply conserved");
    assert_eq!(net.supply_of_genesis_accounts(0), 3 * BALANCE as u128);
    eprintln!(
        "after the restart: {} acknowledged transactions each committed once by height {tip}",
        heights.len()
    );
}

/// Posts transfers with consecutive nonces until `stop` or until a POST
/// gets no answer (the validator was killed). Documented transient
/// refusals (503 `mempool_full`/`overloaded`, 429 `sender_limit`) are
/// retried for at most 30 s; any other refusal fails the test.
fn send_until_cut(
    mut signer: Signer,
    to: cairn_core::PublicKey,
    api: &str,
    stop: &AtomicBool,
    acked_count: &AtomicUsize,
) -> Sent {
    let mut sent = Sent {
        acked: vec![],
        cut: None,
    };
    let mut refused_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let tx = signer.sign_with_nonce(to, 1 + signer.nonce % 5, signer.nonce);
        let body = serde_json::to_string(&tx).unwrap();
        let Some(answer) = try_http_post(&format!("{api}/v1/transactions"), &body) else {
            sent.cut = Some(tx);
            break;
        };
        match (answer.status, answer.json["code"].as_str()) {
            (202, _) => {
                assert_eq!(answer.json["hash"].as_str(), Some(tx_hash(&tx).as_str()));
                sent.acked.push(tx);
                acked_count.fetch_add(1, Ordering::SeqCst);
                signer.nonce += 1;
                refused_since = None;
                std::thread::sleep(Duration::from_millis(2));
            }
            (503, Some("mempool_full" | "overloaded")) | (429, Some("sender_limit")) => {
                let since = *refused_since.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_secs(30),
                    "refused for 30 s: {}",
                    answer.json
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            (status, _) => panic!("nonce {} refused: {status} {}", signer.nonce, answer.json),
        }
    }
    sent
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
