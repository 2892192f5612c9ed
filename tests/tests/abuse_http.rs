//! The API under a slow-header flood, end to end on real processes: one
//! client address (127.0.0.9) opens more connections than the per-IP cap and
//! never finishes its request headers. The server closes the connections
//! over the cap at once and the others at the header timeout, while a client
//! from 127.0.0.1 still reads `/v1/status` and commits a transfer, and the
//! SSE subscriber cap answers 503 `too_many_subscribers`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cairn_tests::Testnet;
use serde_json::Value;

const BALANCE: u64 = 1_000_000;
const FLOOD_CONNECTIONS: usize = 600;
const FLOOD_SOURCE: &str = "127.0.0.9";
const HEADER_TIMEOUT_MS: u64 = 3_000;
const PER_IP_MAX: usize = 256;
const SSE_SUBSCRIBERS_MAX: usize = 4;
/// How long past the header timeout the server may take to close.
const CLOSE_MARGIN: Duration = Duration::from_secs(3);

/// Writes tighter API limits into validator `i`'s `node.json`.
fn set_api_limits(net: &Testnet, i: usize) {
    let path = net.home(i).join("node.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("node.json")).expect("JSON");
    config["limits"] = serde_json::json!({
        "api_header_timeout_ms": HEADER_TIMEOUT_MS,
        "api_connections_per_ip_max": PER_IP_MAX,
        "api_connections_max": 2_048,
        "api_sse_subscribers_max": SSE_SUBSCRIBERS_MAX,
    });
    std::fs::write(&path, config.to_string()).expect("write node.json");
}

/// Opens `count` connections from `source` to `target`, each sending a
/// request line and never the end of its headers. Non-blocking sockets.
fn slow_header_flood(source: &str, target: SocketAddr, count: usize) -> Vec<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let source: SocketAddr = format!("{source}:0").parse().expect("source address");
    runtime.block_on(async {
        let mut streams = Vec::with_capacity(count);
        for _ in 0..count {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind(source).expect("bind the flood source address");
            let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(target))
                .await
                .expect("connect in time")
                .expect("connect");
            let mut stream = stream.into_std().expect("std stream");
            // A few bytes always fit the socket buffer; a server that has
            // already closed the connection may reset it: that is fine.
            let _ = stream.write(b"GET /v1/status HTTP/1.1\r\n");
            streams.push(stream);
        }
        streams
    })
}

/// Whether the server has closed `stream` (EOF or reset), reading and
/// dropping whatever it answered first. The stream is non-blocking.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Counts the flood's connections the server has closed so far.
fn count_closed(streams: &mut [TcpStream], closed: &mut [bool]) -> usize {
    for (stream, closed) in streams.iter_mut().zip(closed.iter_mut()) {
        if !*closed {
            *closed = closed_by_server(stream);
        }
    }
    closed.iter().filter(|c| **c).count()
}

#[test]
fn slow_header_flood_does_not_stop_other_clients() {
    let mut net = Testnet::create(4, 2, BALANCE);
    set_api_limits(&net, 0);
    for i in 0..4 {
        net.start(i);
    }
    for i in 0..4 {
        net.wait_api(i);
    }
    let bob = net.account_address(1);
    let target = net.genesis.api_addresses[0];

    let started = Instant::now();
    let mut flood = slow_header_flood(FLOOD_SOURCE, target, FLOOD_CONNECTIONS);
    let opened_in = started.elapsed();
    let mut closed = vec![false; flood.len()];

    // The connections over the per-IP cap are closed at once, well before
    // the header timeout.
    let early_deadline = started + Duration::from_millis(HEADER_TIMEOUT_MS / 2);
    let mut closed_early = 0;
    while Instant::now() < early_deadline {
        closed_early = count_closed(&mut flood, &mut closed);
        if closed_early >= FLOOD_CONNECTIONS - PER_IP_MAX {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let early_at = started.elapsed();

    // Meanwhile a client from 127.0.0.1 is served and commits a transfer.
    let status = net.get(0, "/v1/status");
    assert_eq!(
        status.status, 200,
        "status during the flood: {}",
        status.json
    );
    let transfer_started = Instant::now();
    let (_, height) = net.wallet_transfer(0, 0, &bob, 7);
    let transfer_took = transfer_started.elapsed();

    // The SSE subscriber cap: the streams over it are refused with 503.
    let events = format!("{}/v1/events", net.api(0));
    let subscribers: Vec<ureq::Response> = (0..SSE_SUBSCRIBERS_MAX)
        .map(|_| {
            ureq::get(&events)
                .call()
                .expect("SSE subscriber under the cap")
        })
        .collect();
    let over = net.get(0, "/v1/events");
    drop(subscribers);

    // Every flood connection is closed within the header timeout + margin.
    let deadline = started + Duration::from_millis(HEADER_TIMEOUT_MS) + CLOSE_MARGIN;
    let mut closed_all = count_closed(&mut flood, &mut closed);
    while closed_all < flood.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        closed_all = count_closed(&mut flood, &mut closed);
    }
    let all_at = started.elapsed();
    eprintln!(
        "flood of {FLOOD_CONNECTIONS} opened in {opened_in:?}; closed by the server: \
         {closed_early} after {early_at:?}, {closed_all} after {all_at:?}; \
         transfer committed at height {height} in {transfer_took:?}; \
         SSE subscriber over the cap: {} {}",
        over.status, over.json
    );
    assert!(
        closed_early >= FLOOD_CONNECTIONS - PER_IP_MAX,
        "after {early_at:?}, {closed_early} of {FLOOD_CONNECTIONS} flood connections were \
         closed by the server; expected at least {} (over the per-IP cap of {PER_IP_MAX})",
        FLOOD_CONNECTIONS - PER_IP_MAX
    );
    assert_eq!(
        closed_all,
        FLOOD_CONNECTIONS,
        "after {all_at:?}, {} flood connections are still open (header timeout {HEADER_TIMEOUT_MS} ms)",
        FLOOD_CONNECTIONS - closed_all
    );
    assert_eq!(
        over.status, 503,
        "SSE subscriber over the cap: {}",
        over.json
    );
    assert_eq!(over.json["code"], "too_many_subscribers", "{}", over.json);

    // The validator still answers after the flood, and its log holds a
    // throttled warning, not a line per refused or timed-out connection.
    assert_eq!(net.get(0, "/v1/status").status, 200);
    let log = net.log(0);
    let refusals = log
        .lines()
        .filter(|l| l.contains("API connection refused"))
        .count();
    assert!((1..=2).contains(&refusals), "{refusals} refusal warnings");
    assert!(!log.contains("read header from client timeout"));
}
