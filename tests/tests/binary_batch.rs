//! Issue 13: the binary batch (`POST /v1/transactions/batch` with
//! `application/octet-stream`, `cairn_core::tx_batch`) against a real
//! 4-validator network: accepted with the JSON batch's answer, gossiped,
//! committed on every validator; a malformed one changes nothing.

use std::time::Duration;

use cairn_core::{tx_batch, SignedTransaction};
use cairn_tests::{http_post_bytes, Testnet};

const BALANCE: u64 = 1_000_000;
const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn a_binary_batch_is_committed_by_the_network() {
    let net = Testnet::start_all(4, 3, BALANCE);
    let to = net.signer(2, 0).address();
    // 40 transfers from two accounts, in nonce order, and one refused
    // entry (an overspend) among them.
    let mut txs: Vec<SignedTransaction> = Vec::new();
    for j in 0..2 {
        let mut signer = net.signer(j, 0);
        for _ in 0..20 {
            txs.push(SignedTransaction::try_from(&signer.next(to, 3)).unwrap());
        }
    }
    let overspend = net.signer(1, 20).sign_with_nonce(to, BALANCE, 20);
    txs.push(SignedTransaction::try_from(&overspend).unwrap());
    let url = format!("{}/v1/transactions/batch", net.api(0));

    // Malformed first: refused whole, nothing admitted.
    let body = tx_batch::encode(&txs);
    let cut = http_post_bytes(&url, tx_batch::CONTENT_TYPE, &body[..body.len() - 3]);
    assert_eq!(cut.status, 400, "{}", cut.json);
    assert_eq!(cut.json["code"], "invalid_encoding");
    let status = net.get(0, "/v1/status").json;
    assert_eq!(status["mempool_size"], 0, "{status}");

    let answer = http_post_bytes(&url, tx_batch::CONTENT_TYPE, &body);
    assert_eq!(answer.status, 200, "{}", answer.json);
    let entries = answer.json.as_array().expect("one entry per transaction");
    assert_eq!(entries.len(), txs.len());
    for (entry, tx) in entries.iter().zip(&txs[..40]) {
        assert_eq!(entry["hash"], tx.hash().to_hex(), "{entry}");
    }
    assert_eq!(entries[40]["code"], "insufficient_funds");

    // Committed everywhere (the last of each sender's nonces implies the
    // rest), and the money moved.
    for i in 0..4 {
        for last in [&txs[19], &txs[39]] {
            net.wait_committed(i, &last.hash().to_hex(), PATIENCE);
        }
    }
    let tip = net.wait_same_height(&[0, 1, 2, 3], 1, PATIENCE);
    net.assert_same_chain(&[0, 1, 2, 3], tip);
    assert_eq!(net.balance(1, &to.to_hex()), (BALANCE + 120, 0));
    for j in 0..2 {
        let address = net.signer(j, 0).address().to_hex();
        assert_eq!(net.balance(2, &address), (BALANCE - 60, 20));
    }
    assert_eq!(net.supply_of_genesis_accounts(3), 3 * BALANCE as u128);

    // The same batch again, now as JSON to another validator: what was
    // committed is refused as used.
    let json: Vec<cairn_core::api::TxJson> = txs.iter().map(Into::into).collect();
    let again = net.post(
        3,
        "/v1/transactions/batch",
        &serde_json::to_string(&json).unwrap(),
    );
    assert_eq!(again.status, 200, "{}", again.json);
    assert!(again.json.as_array().unwrap()[..40]
        .iter()
        .all(|e| e["code"] == "nonce_too_low"));
}
