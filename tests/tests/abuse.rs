//! Abuse on real processes (issue 8): senders that fill the mempool with
//! transactions that can never run, a ready transaction whose balance went
//! elsewhere, and a wallet sending twice in a row. Each of these stopped
//! honest users before the mempool's policy kept ready and parked
//! transactions apart.

use std::time::{Duration, Instant};

use cairn_core::api::TxJson;
use cairn_core::{Keypair, PublicKey};
use cairn_tests::{stderr, stdout, tx_hash, wait_for, Signer, Testnet};
use serde_json::Value;

const BALANCE: u64 = 1_000_000_000;

/// Sets chain parameters in every validator's genesis file (before start).
fn set_params(net: &Testnet, params: &[(&str, u64)]) {
    for i in 0..net.validator_count() {
        let path = net.home(i).join("genesis.json");
        let mut genesis: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (name, value) in params {
            genesis["params"][*name] = Value::from(*value);
        }
        std::fs::write(&path, genesis.to_string()).unwrap();
    }
}

/// Sets node limits in every validator's `node.json` (before start).
fn set_limits(net: &Testnet, limits: &[(&str, u64)]) {
    for i in 0..net.validator_count() {
        let path = net.home(i).join("node.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (name, value) in limits {
            config["limits"][*name] = Value::from(*value);
        }
        std::fs::write(&path, config.to_string()).unwrap();
    }
}

fn start(net: &mut Testnet) {
    for i in 0..net.validator_count() {
        net.start(i);
    }
    for i in 0..net.validator_count() {
        net.wait_api(i);
    }
}

/// A fresh key (not in genesis), deterministic per `seed`.
fn fresh(net: &Testnet, seed: u8) -> Signer {
    Signer {
        key: Keypair::from_seed([seed; 32]),
        chain_id: net.genesis.chain_id().to_string(),
        nonce: 0,
    }
}

fn post_batch(net: &Testnet, i: usize, txs: &[TxJson]) -> Vec<Value> {
    let answer = net.post(
        i,
        "/v1/transactions/batch",
        &serde_json::to_string(txs).unwrap(),
    );
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer.json.as_array().expect("batch answer").clone()
}

fn post(net: &Testnet, i: usize, tx: &TxJson) -> cairn_tests::Answer {
    net.post(i, "/v1/transactions", &serde_json::to_string(tx).unwrap())
}

/// Funds `keys` from genesis account 0 in one batch through validator 0 and
/// waits until every validator has committed all of it.
fn fund(net: &Testnet, keys: &[PublicKey], amount: u64, nonce: &mut u64) {
    let mut funder = net.signer(0, *nonce);
    let txs: Vec<TxJson> = keys.iter().map(|k| funder.next(*k, amount)).collect();
    *nonce = funder.nonce;
    for entry in post_batch(net, 0, &txs) {
        assert!(entry["hash"].is_string(), "funding refused: {entry}");
    }
    let last = tx_hash(txs.last().unwrap());
    for i in 0..net.validator_count() {
        net.wait_committed(i, &last, Duration::from_secs(30));
    }
}

/// The attack of issue 8, scaled to a pool of 2,000 under the default
/// limits: one account funds 40 fresh keys, and each posts 100 transfers
/// with nonces 1..=100 (nonce 0 never comes). They can never run. Before,
/// they filled every mempool and every honest transfer was refused 503
/// for good; now each sender parks at most its cap, parked ones take at
/// most half the pool, and an honest transfer commits on every validator
/// within seconds.
#[test]
fn a_gap_fill_attack_does_not_stop_an_honest_transfer() {
    let mut net = Testnet::create(4, 2, BALANCE);
    set_params(
        &net,
        &[("mempool_txs_max", 2_000), ("block_txs_max", 1_000)],
    );
    start(&mut net);
    let attackers: Vec<Signer> = (1..=40u8).map(|seed| fresh(&net, seed)).collect();
    let keys: Vec<PublicKey> = attackers.iter().map(|a| a.address()).collect();
    let mut funder_nonce = 0;
    fund(&net, &keys, 1_000, &mut funder_nonce);

    let mut admitted = Vec::new();
    let mut refused: std::collections::BTreeMap<String, usize> = Default::default();
    for (k, attacker) in attackers.iter().enumerate() {
        let txs: Vec<TxJson> = (1..=100)
            .map(|nonce| attacker.sign_with_nonce(keys[(k + 1) % keys.len()], 1, nonce))
            .collect();
        let validator = k % 4;
        for (tx, entry) in txs.iter().zip(post_batch(&net, validator, &txs)) {
            match entry["code"].as_str() {
                None => admitted.push((validator, tx_hash(tx))),
                Some(code) => *refused.entry(code.to_string()).or_default() += 1,
            }
        }
    }
    eprintln!("attack: {} admitted, refused {refused:?}", admitted.len());
    assert!(
        refused.get("sender_limit").copied().unwrap_or(0) > 0,
        "no sender was held to its cap: {refused:?}"
    );
    for i in 0..4 {
        let parked = net.metric(i, "cairn_mempool_parked");
        let size = net.metric(i, "cairn_mempool_size");
        assert!(
            parked <= 1_000 && size <= 2_000,
            "validator {i}: {parked} parked, {size} in all"
        );
    }

    // An honest transfer, sent to a validator the attack also filled.
    let honest = net
        .signer(1, 0)
        .sign_with_nonce(net.account_keypair(0).public(), 7, 0);
    let answer = post(&net, 1, &honest);
    assert_eq!(
        answer.status, 202,
        "honest transfer refused: {}",
        answer.json
    );
    let hash = tx_hash(&honest);
    let started = Instant::now();
    for i in 0..4 {
        net.wait_committed(i, &hash, Duration::from_secs(10));
    }
    eprintln!(
        "honest transfer committed everywhere in {:?}",
        started.elapsed()
    );
    // The attackers' transactions never ran: only the funding moved money.
    for i in 0..4 {
        assert_eq!(net.balance(i, &keys[0].to_hex()), (1_000, 0));
    }
    assert_agreement(&net, &keys);
}

/// Every validator holds the same chain, and the money in the genesis
/// accounts and `fresh` keys adds up to what genesis created.
fn assert_agreement(net: &Testnet, fresh: &[PublicKey]) {
    let height = net.wait_same_height(&[0, 1, 2, 3], 1, Duration::from_secs(30));
    net.assert_same_chain(&[0, 1, 2, 3], height);
    for i in 0..4 {
        let in_fresh: u128 = fresh
            .iter()
            .map(|k| net.balance(i, &k.to_hex()).0 as u128)
            .sum();
        assert_eq!(
            net.supply_of_genesis_accounts(i) + in_fresh,
            2 * BALANCE as u128,
            "validator {i}"
        );
    }
}

/// Parked transactions expire after their lifetime (here 2 s), say so at
/// `GET /v1/transactions/{hash}`, and leave the pool.
#[test]
fn parked_transactions_expire_and_say_so() {
    let mut net = Testnet::create(1, 2, BALANCE);
    set_limits(&net, &[("mempool_parked_ttl_ms", 2_000)]);
    start(&mut net);
    let alice = net.signer(0, 0);
    let bob = net.account_keypair(1).public();
    let parked = alice.sign_with_nonce(bob, 1, 3);
    assert_eq!(post(&net, 0, &parked).status, 202);
    let path = format!("/v1/transactions/{}", tx_hash(&parked));
    assert_eq!(net.get(0, &path).json["status"], "pending");
    assert_eq!(net.metric(0, "cairn_mempool_parked"), 1);
    let status = wait_for("expiry", Duration::from_secs(15), || {
        let answer = net.get(0, &path);
        (answer.json["status"] == "expired").then_some(answer.json)
    });
    assert_eq!(status["reason"], "expired", "{status}");
    assert!(status["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(net.metric(0, "cairn_mempool_parked"), 0);
    assert_eq!(net.get(0, "/v1/status").json["mempool_size"], 0);
    // The sender can simply go on from its committed nonce.
    let first = alice.sign_with_nonce(bob, 1, 0);
    assert_eq!(post(&net, 0, &first).status, 202);
    net.wait_committed(0, &tx_hash(&first), Duration::from_secs(20));
}

/// What a validator refuses of its peers' gossip is counted by code
/// (`cairn_gossip_refused_total{code}`: what it lacks that they hold).
/// Validator 1 keeps at most one parked transaction per sender, the others
/// the default; a sender's three parked transfers sent to validator 0
/// reach every validator, and validator 1 refuses two as `sender_limit`.
#[test]
fn gossip_a_validator_refuses_is_counted_by_code() {
    let mut net = Testnet::create(4, 2, BALANCE);
    let path = net.home(1).join("node.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["limits"]["mempool_sender_parked_max"] = Value::from(1);
    std::fs::write(&path, config.to_string()).unwrap();
    start(&mut net);
    let alice = net.signer(0, 0);
    let bob = net.account_keypair(1).public();
    let parked: Vec<TxJson> = (1..=3).map(|n| alice.sign_with_nonce(bob, 1, n)).collect();
    for entry in post_batch(&net, 0, &parked) {
        assert!(entry["hash"].is_string(), "refused: {entry}");
    }
    let refused = r#"cairn_gossip_refused_total{code="sender_limit"}"#;
    wait_for(
        "validator 1 refusing gossip",
        Duration::from_secs(20),
        || (metric_or_zero(&net, 1, refused) == 2).then_some(()),
    );
    for i in [0, 2, 3] {
        wait_for("the gossip", Duration::from_secs(20), || {
            (net.metric(i, "cairn_mempool_parked") == 3).then_some(())
        });
        assert_eq!(metric_or_zero(&net, i, refused), 0, "validator {i}");
    }
    assert_eq!(net.metric(1, "cairn_mempool_parked"), 1);
    assert_eq!(metric_or_zero(&net, 1, refused), 2);
}

/// A series of validator `i`'s `/metrics`, 0 when it is not there yet (a
/// labelled series appears with its first count).
fn metric_or_zero(net: &Testnet, i: usize, series: &str) -> u64 {
    let text = ureq::get(&format!("{}/metrics", net.api(i)))
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{series} ")))
        .map_or(0, |v| v.trim().parse::<f64>().expect("a number") as u64)
}

/// The race of issue 8: validator A holds a sender's nonce 0 (amount 1) and
/// nonce 1 (the rest of its balance); the primary holds another nonce 0
/// that spends everything, and commits it. A's nonce 1 can no longer run.
/// Before, it stayed in A's pool for good, counted as ready work, and the
/// sender could not send nonce 1 again (409 `nonce_pending`). Now A drops it
/// with reason `insufficient_funds`, the sender transacts again, and no view
/// change happens.
#[test]
fn a_ready_transaction_whose_balance_went_elsewhere_is_dropped() {
    let net = Testnet::start_all(4, 2, BALANCE);
    net.wait_peers(&[0, 1, 2, 3], 3, Duration::from_secs(30));
    let senders: Vec<Signer> = (50..70u8).map(|seed| fresh(&net, seed)).collect();
    let keys: Vec<PublicKey> = senders.iter().map(|s| s.address()).collect();
    let mut funder_nonce = 0;
    fund(&net, &keys, 100, &mut funder_nonce);
    let to = net.account_keypair(1).public();
    let views: Vec<u64> = (0..4).map(|i| net.view(i)).collect();
    let view_changes: Vec<u64> = (0..4)
        .map(|i| net.metric(i, "cairn_view_changes_total"))
        .collect();

    // Set the race up: A's two and the primary's one must all be admitted
    // (gossip may carry one side to the other first; then try another
    // sender).
    let primary = net.leader_index(0);
    let a = (primary + 1) % 4;
    let mut attempt = None;
    for sender in &senders {
        let mine = [
            sender.sign_with_nonce(to, 1, 0),
            sender.sign_with_nonce(to, 99, 1),
        ];
        let theirs = sender.sign_with_nonce(to, 100, 0);
        let barrier = std::sync::Barrier::new(2);
        let (mine_answer, theirs_answer) = std::thread::scope(|s| {
            let mine_thread = s.spawn(|| {
                barrier.wait();
                post_batch(&net, a, &mine)
            });
            barrier.wait();
            let theirs_answer = post(&net, primary, &theirs);
            (mine_thread.join().unwrap(), theirs_answer)
        });
        let mine_ok = mine_answer.iter().all(|e| e["hash"].is_string());
        eprintln!(
            "race set up: mine {mine_answer:?}, theirs {}",
            theirs_answer.json
        );
        if mine_ok && theirs_answer.status == 202 {
            attempt = Some((sender, mine, theirs));
            break;
        }
        // Whatever was admitted commits or is dropped; wait for this sender
        // to settle before the next try.
        std::thread::sleep(Duration::from_millis(500));
    }
    let (sender, mine, theirs) = attempt.expect("the race could not be set up in 20 tries");
    for i in 0..4 {
        net.wait_committed(i, &tx_hash(&theirs), Duration::from_secs(20));
    }
    let path = format!("/v1/transactions/{}", tx_hash(&mine[1]));
    let status = wait_for(
        "the stuck transaction dropped",
        Duration::from_secs(10),
        || {
            let answer = net.get(a, &path);
            (answer.json["status"] == "rejected").then_some(answer.json)
        },
    );
    assert_eq!(status["reason"], "insufficient_funds", "{status}");
    assert_eq!(net.balance(a, &sender.address().to_hex()), (0, 1));

    // Refunded, the sender sends nonce 1 again through A, and it commits.
    fund(&net, &[sender.address()], 50, &mut funder_nonce);
    let again = sender.sign_with_nonce(to, 10, 1);
    let answer = post(&net, a, &again);
    assert_eq!(answer.status, 202, "{}", answer.json);
    for i in 0..4 {
        net.wait_committed(i, &tx_hash(&again), Duration::from_secs(20));
    }
    // Nothing was left to look censored: no validator changed view.
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..4 {
        assert_eq!(net.view(i), views[i], "validator {i} changed view");
        assert_eq!(
            net.metric(i, "cairn_view_changes_total"),
            view_changes[i],
            "validator {i}"
        );
    }
    assert_agreement(&net, &keys);
}

/// `cairn-wallet transfer` without `--nonce` and without `--wait`, twice in
/// a row: the second takes the node's pending nonce, and both commit.
#[test]
fn two_transfers_in_a_row_without_wait_both_commit() {
    let net = Testnet::start_all(4, 2, BALANCE);
    let key = net.account_key(0);
    let bob = net.account_address(1);
    let mut hashes = Vec::new();
    for amount in [5, 6] {
        let output = net.wallet(
            2,
            &[
                "--json",
                "transfer",
                "--key",
                key.to_str().unwrap(),
                "--to",
                &bob,
                "--amount",
                &amount.to_string(),
            ],
        );
        assert!(
            output.status.success(),
            "transfer of {amount}: {}",
            stderr(&output)
        );
        let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
        hashes.push(json["hash"].as_str().unwrap().to_string());
    }
    for hash in &hashes {
        for i in 0..4 {
            net.wait_committed(i, hash, Duration::from_secs(20));
        }
    }
    assert_eq!(net.balance(0, &bob), (BALANCE + 11, 0));
}
