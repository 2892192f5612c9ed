//! Unit tests of the wallet library against a canned in-process HTTP server.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::*;

/// A request the fake node received.
#[derive(Debug)]
struct Seen {
    /// `GET /v1/status HTTP/1.1`
    line: String,
    body: String,
}

/// A fake node on 127.0.0.1: answers each connection with the next canned
/// `(status, body)`, repeating the last one once the list is used up. Stops
/// when dropped, after at most 10 s, or after 500 connections.
struct FakeNode {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Seen>>>,
}

impl FakeNode {
    fn start(answers: Vec<(u16, &str)>) -> FakeNode {
        let answers: Vec<(u16, String)> = answers
            .into_iter()
            .map(|(status, body)| (status, body.to_string()))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || serve(listener, answers, &stopped));
        FakeNode {
            url,
            stop,
            thread: Some(thread),
        }
    }

    fn client(&self) -> Client {
        Client::with_timeout(&self.url, Duration::from_secs(5)).unwrap()
    }

    /// Stops the server and returns what it saw.
    fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: TcpListener, answers: Vec<(u16, String)>, stop: &AtomicBool) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && seen.len() < 500 {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (status, body) = answers[seen.len().min(answers.len() - 1)].clone();
        if let Some(request) = read_request(&stream) {
            seen.push(request);
        }
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status} Canned\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    seen
}

fn read_request(stream: &std::net::TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        line: line.trim().to_string(),
        body: String::from_utf8(body).ok()?,
    })
}

fn key(i: u8) -> Keypair {
    Keypair::from_seed([i; 32])
}

fn status_body(chain_id: &str) -> String {
    serde_json::to_string(&StatusJson {
        chain_id: chain_id.into(),
        node_id: key(1).public().to_hex(),
        height: 3,
        latest_block_hash: Hash::ZERO.to_hex(),
        view: 0,
        leader: key(1).public().to_hex(),
        validators: vec![key(1).public().to_hex()],
        peers: 0,
        mempool_size: 0,
        syncing: false,
    })
    .unwrap()
}

#[test]
fn error_bodies_map_to_typed_errors() {
    let error = error_from_answer(
        400,
        r#"{"error": "balance 0 does not cover amount 5", "code": "insufficient_funds"}"#,
    );
    assert_eq!(
        error,
        WalletError::Api {
            status: 400,
            code: "insufficient_funds".into(),
            message: "balance 0 does not cover amount 5".into(),
        }
    );
    assert_eq!(error.code(), Some("insufficient_funds"));
    assert!(error.to_string().contains("insufficient_funds"));
    assert!(error.to_string().contains("balance 0 does not cover"));

    let error = error_from_answer(502, "<html>bad gateway</html>");
    assert!(matches!(error, WalletError::Http { status: 502, .. }));
    assert_eq!(error.code(), None);
    let error = error_from_answer(500, "");
    assert!(error.to_string().contains("(empty body)"));
    let long = "x".repeat(10_000);
    assert!(error_from_answer(500, &long).to_string().len() < 300);
}

#[test]
fn client_maps_an_error_answer() {
    let node = FakeNode::start(vec![(
        400,
        r#"{"error": "not an address", "code": "invalid_address"}"#,
    )]);
    let error = node.client().account(&key(2).public()).unwrap_err();
    assert_eq!(error.code(), Some("invalid_address"));
    assert!(matches!(error, WalletError::Api { status: 400, .. }));
    let seen = node.finish();
    assert_eq!(
        seen[0].line,
        format!("GET /v1/accounts/{} HTTP/1.1", key(2).public())
    );
}

#[test]
fn client_reads_answers_and_refuses_garbage() {
    let account = r#"{"address": "aa", "balance": 12, "nonce": 3}"#;
    let node = FakeNode::start(vec![
        (200, account),
        (200, "not json"),
        (404, r#"{"error": "no such block", "code": "not_found"}"#),
    ]);
    let client = node.client();
    let answer = client.account(&key(2).public()).unwrap();
    assert_eq!((answer.balance, answer.nonce), (12, 3));
    let error = client.status().unwrap_err();
    assert!(matches!(error, WalletError::BadResponse { .. }), "{error}");
    let error = client.block(BlockId::Height(99)).unwrap_err();
    assert_eq!(error.code(), Some("not_found"));
    let seen = node.finish();
    assert_eq!(seen[2].line, "GET /v1/blocks/99 HTTP/1.1");
}

#[test]
fn unreachable_node_is_named() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = Client::new(&url).unwrap().status().unwrap_err();
    assert!(matches!(error, WalletError::Unreachable { .. }));
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot reach node at {url}: ")),
        "{error}"
    );
}

#[test]
fn bad_node_urls_are_refused_locally() {
    for url in ["127.0.0.1:8080", "ftp://x", "http://", "http://a b"] {
        assert!(
            matches!(Client::new(url), Err(WalletError::Invalid(_))),
            "{url}"
        );
    }
    assert_eq!(
        Client::new("http://127.0.0.1:8080/").unwrap().base_url(),
        "http://127.0.0.1:8080"
    );
}

/// A node that reports another hash than the transfer's is not believed.
#[test]
fn transfer_refuses_a_node_that_reports_another_hash() {
    let status = status_body("net-1");
    let wrong = Hash::digest(&[b"tx"]).to_hex();
    let submitted = format!(r#"{{"hash": "{wrong}"}}"#);
    let account = format!(
        r#"{{"address": "{}", "balance": 100, "nonce": 7}}"#,
        key(1).public()
    );
    let node = FakeNode::start(vec![(200, &status), (200, &account), (202, &submitted)]);
    let error = node
        .client()
        .transfer(&key(1), key(2).public(), 5, None)
        .unwrap_err();
    assert!(
        matches!(&error, WalletError::Verification(m) if m.contains(&wrong)),
        "{error}"
    );
    assert!(error.to_string().starts_with("verification failed"));
    node.finish();
}

#[test]
fn transfer_fetches_chain_and_nonce_signs_and_submits() {
    let status = status_body("net-1");
    // The node must report the hash of what it was sent.
    let tx_hash = sign_transfer(&key(1), "net-1", key(2).public(), 5, 7)
        .unwrap()
        .hash()
        .to_hex();
    let submitted = format!(r#"{{"hash": "{tx_hash}"}}"#);
    let account = format!(
        r#"{{"address": "{}", "balance": 100, "nonce": 7}}"#,
        key(1).public()
    );
    let node = FakeNode::start(vec![(200, &status), (200, &account), (202, &submitted)]);
    let sent = node
        .client()
        .transfer(&key(1), key(2).public(), 5, None)
        .unwrap();
    assert_eq!(sent.hash.to_hex(), tx_hash);
    assert_eq!((sent.tx.nonce, sent.tx.amount), (7, 5));
    let seen = node.finish();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].line, "GET /v1/status HTTP/1.1");
    assert_eq!(seen[2].line, "POST /v1/transactions HTTP/1.1");
    let posted: TxJson = serde_json::from_str(&seen[2].body).unwrap();
    assert_eq!(posted, sent.tx);
    assert_eq!(posted.chain_id, "net-1");
    let signed = SignedTransaction::try_from(&posted).unwrap();
    assert_eq!(signed.verify_signature(), Ok(()));
}

#[test]
fn transfer_with_nonce_skips_the_account_and_reports_refusals() {
    let status = status_body("net-1");
    let node = FakeNode::start(vec![
        (200, &status),
        (
            400,
            r#"{"error": "nonce 0 already used", "code": "nonce_too_low"}"#,
        ),
    ]);
    let error = node
        .client()
        .transfer(&key(1), key(2).public(), 5, Some(0))
        .unwrap_err();
    assert_eq!(error.code(), Some("nonce_too_low"));
    let seen = node.finish();
    assert_eq!(seen[1].line, "POST /v1/transactions HTTP/1.1");
    let error = Client::new("http://127.0.0.1:9")
        .unwrap()
        .transfer(&key(1), key(2).public(), 0, None)
        .unwrap_err();
    assert!(matches!(error, WalletError::Invalid(_)), "checked locally");
}

#[test]
fn wait_for_commit_polls_until_committed() {
    let hash = Hash::digest(&[b"tx"]);
    let pending = format!(r#"{{"hash": "{hash}", "status": "pending"}}"#);
    let committed = format!(r#"{{"hash": "{hash}", "status": "committed", "height": 9}}"#);
    let node = FakeNode::start(vec![
        (404, r#"{"error": "unknown", "code": "not_found"}"#),
        (200, &pending),
        (200, &committed),
    ]);
    let status = node
        .client()
        .wait_for_commit(&hash, Duration::from_secs(u64::MAX))
        .unwrap();
    assert_eq!(status.height, Some(9));
    let seen = node.finish();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0].line,
        format!("GET /v1/transactions/{hash} HTTP/1.1")
    );
}

#[test]
fn wait_for_commit_reports_rejection_and_timeout() {
    let hash = Hash::digest(&[b"tx"]);
    let rejected =
        format!(r#"{{"hash": "{hash}", "status": "rejected", "error": "insufficient funds"}}"#);
    let node = FakeNode::start(vec![(200, &rejected)]);
    let error = node
        .client()
        .wait_for_commit(&hash, Duration::from_secs(5))
        .unwrap_err();
    assert!(matches!(error, WalletError::Rejected { .. }));
    assert!(error.to_string().contains("insufficient funds"));
    drop(node);

    let pending = format!(r#"{{"hash": "{hash}", "status": "pending"}}"#);
    let node = FakeNode::start(vec![(200, &pending)]);
    let started = Instant::now();
    let error = node
        .client()
        .wait_for_commit(&hash, Duration::from_millis(350))
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(error, WalletError::NotCommitted { .. }), "{error}");
    assert!(error.to_string().contains("pending"), "{error}");
    assert!(waited >= Duration::from_millis(350) && waited < Duration::from_secs(3));
    let polls = node.finish().len();
    assert!((2..=10).contains(&polls), "{polls} polls");
}

#[test]
fn local_parsing_and_signing() {
    let address = key(3).public().to_hex();
    assert_eq!(parse_address(&address).unwrap(), key(3).public());
    assert_eq!(
        parse_address(&address.to_uppercase()).unwrap(),
        key(3).public()
    );
    for bad in ["", "abc", &"g".repeat(64), &format!("{address}00")] {
        let error = parse_address(bad).unwrap_err();
        assert!(error.to_string().starts_with("invalid address"), "{error}");
    }
    assert!(parse_hash("12").is_err());
    assert_eq!("latest".parse::<BlockId>().unwrap(), BlockId::Latest);
    assert_eq!("17".parse::<BlockId>().unwrap(), BlockId::Height(17));
    assert_eq!(BlockId::Height(17).path(), "/v1/blocks/17");
    assert!("-1".parse::<BlockId>().is_err());
    assert!("tip".parse::<BlockId>().is_err());

    let tx = sign_transfer(&key(1), "c", key(2).public(), 1, 0).unwrap();
    assert_eq!(tx.verify_signature(), Ok(()));
    assert!(sign_transfer(&key(1), "c", key(2).public(), 0, 0).is_err());
    assert!(sign_transfer(&key(1), "", key(2).public(), 1, 0).is_err());
    assert!(sign_transfer(&key(1), &"c".repeat(65), key(2).public(), 1, 0).is_err());
}

/// Issue 8: a weak receiver is refused before anything is signed.
#[test]
fn weak_recipients_are_refused() {
    let zero = "00".repeat(32);
    let error = parse_recipient(&zero).unwrap_err().to_string();
    assert!(
        error.contains("invalid address") && error.contains("weak key"),
        "{error}"
    );
    let error = sign_transfer(&key(1), "c", PublicKey([0; 32]), 1, 0).unwrap_err();
    assert!(error.to_string().contains("weak key"), "{error}");
    assert_eq!(
        parse_recipient(&key(2).public().to_hex()).unwrap(),
        key(2).public()
    );
    assert!(parse_recipient("abc").is_err());
    let error = parse_recipient(&"02".repeat(32)).unwrap_err().to_string();
    assert!(error.contains("not a curve point"), "{error}");
}

#[test]
fn submit_batch_posts_an_array_and_reads_one_entry_each() {
    let tx = TxJson::from(&sign_transfer(&key(1), "c", key(2).public(), 1, 0).unwrap());
    let answer = r#"[{"hash": "ab"}, {"error": "bad signature", "code": "invalid_signature"}]"#;
    let node = FakeNode::start(vec![(200, answer)]);
    let entries = node
        .client()
        .submit_batch(&[tx.clone(), tx.clone()])
        .unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].hash.as_deref(), Some("ab"));
    assert_eq!(entries[1].code.as_deref(), Some("invalid_signature"));
    let seen = node.finish();
    assert_eq!(seen[0].line, "POST /v1/transactions/batch HTTP/1.1");
    let posted: Vec<TxJson> = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(posted, vec![tx.clone(), tx]);
}
