//! The server's limits against an in-process server on loopback: the header
//! timeout, the per-IP and total connection caps, the body timeout and the
//! graceful shutdown. Client addresses 127.0.0.x are distinct client IPs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use warp::{Filter, Reply};

use super::*;

const PARTIAL_HEAD: &[u8] = b"GET /ok HTTP/1.1\r\n";
/// Bound on every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(5);

fn limits(header_timeout_ms: u64, per_ip: usize, max: usize) -> ServerLimits {
    ServerLimits {
        header_timeout: Duration::from_millis(header_timeout_ms),
        connections_per_ip_max: per_ip,
        connections_max: max,
    }
}

struct Running {
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

/// Starts a server with routes `/ok`, `/slow` (answers after 300 ms) and
/// `POST /body` (reads a bounded body with a 300 ms timeout).
fn start(limits: ServerLimits) -> Running {
    let ok = warp::path!("ok").map(|| "ok");
    let slow = warp::path!("slow").then(|| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        "done"
    });
    let body = warp::path!("body")
        .and(warp::post())
        .and(crate::api::bounded_body(Duration::from_millis(300)))
        .map(
            |body: Result<bytes::Bytes, warp::reply::Response>| match body {
                Ok(body) => format!("read {} bytes", body.len()).into_response(),
                Err(response) => response,
            },
        );
    let routes = ok
        .map(Reply::into_response)
        .or(slow.map(Reply::into_response))
        .unify()
        .or(body)
        .unify();
    let listener = bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let address = listener.local_addr().unwrap();
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, warp::service(routes), limits, async {
        let _ = stop.await;
    }));
    Running {
        address,
        shutdown: Some(shutdown),
        server,
    }
}

async fn connect_from(source: &str, address: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .expect("bind the client address");
    tokio::time::timeout(PATIENCE, socket.connect(address))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads until the server closes the connection (EOF or reset); what it
/// sent and when it closed, or `None` if it is still open after `patience`.
async fn read_until_closed(
    stream: &mut TcpStream,
    patience: Duration,
) -> Option<(String, Instant)> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((
                    String::from_utf8_lossy(&answer).into_owned(),
                    Instant::now(),
                ))
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
        }
    }
}

/// One `GET path` from `source` with `connection: close`: the whole answer.
async fn get_from(source: &str, address: SocketAddr, path: &str) -> String {
    let mut stream = connect_from(source, address).await;
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    read_until_closed(&mut stream, PATIENCE)
        .await
        .expect("the server answers and closes")
        .0
}

/// Opens `count` connections from `source` that never finish their headers.
async fn slow_clients(source: &str, address: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..count {
        let mut stream = connect_from(source, address).await;
        stream.write_all(PARTIAL_HEAD).await.unwrap();
        streams.push(stream);
    }
    // Let the server accept them (in order) before the caller goes on.
    tokio::time::sleep(Duration::from_millis(100)).await;
    streams
}

#[tokio::test]
async fn header_timeout_closes_a_slow_connection() {
    let server = start(limits(300, 8, 16));
    let opened = Instant::now();
    let mut slow = connect_from("127.0.0.1", server.address).await;
    slow.write_all(PARTIAL_HEAD).await.unwrap();
    assert!(get_from("127.0.0.1", server.address, "/ok")
        .await
        .starts_with("HTTP/1.1 200"));
    let (_, closed) = read_until_closed(&mut slow, PATIENCE)
        .await
        .expect("the server closes a connection whose headers never end");
    let after = closed - opened;
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_secs(2),
        "closed after {after:?}, header timeout 300 ms"
    );
}

#[tokio::test]
async fn header_timeout_closes_a_connection_that_sends_nothing() {
    let server = start(limits(300, 8, 16));
    let opened = Instant::now();
    let mut silent = connect_from("127.0.0.1", server.address).await;
    let (_, closed) = read_until_closed(&mut silent, PATIENCE)
        .await
        .expect("the server closes a connection that sends nothing");
    assert!(
        closed - opened < Duration::from_secs(2),
        "closed after {:?}",
        closed - opened
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_after_the_header_timeout() {
    let server = start(limits(300, 8, 16));
    let mut stream = connect_from("127.0.0.1", server.address).await;
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = stream.read(&mut buffer).await.unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, PATIENCE)
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(closed - answered < Duration::from_secs(2));
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_at_once() {
    let server = start(limits(10_000, 4, 16));
    let mut held = slow_clients("127.0.0.1", server.address, 4).await;

    let opened = Instant::now();
    let mut over = connect_from("127.0.0.1", server.address).await;
    let (answer, closed) = read_until_closed(&mut over, PATIENCE)
        .await
        .expect("a connection over the per-IP cap is closed");
    assert!(
        closed - opened < Duration::from_secs(1),
        "closed after {:?}",
        closed - opened
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    if !answer.is_empty() {
        assert!(
            answer.contains("\"code\":\"too_many_connections\""),
            "{answer}"
        );
    }

    // Another client address is served meanwhile.
    assert!(get_from("127.0.0.2", server.address, "/ok")
        .await
        .starts_with("HTTP/1.1 200"));
    // The held connections are still open (under the cap, within the timeout).
    for stream in &mut held {
        assert!(read_until_closed(stream, Duration::from_millis(10))
            .await
            .is_none());
    }

    // A closed connection gives its slot back.
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        if get_from("127.0.0.1", server.address, "/ok")
            .await
            .starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot of a closed connection was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_over_the_total_cap_are_closed_at_once() {
    let server = start(limits(10_000, 2, 3));
    // Three clients with one connection each: a fourth is not lighter by
    // two than any of them, so it evicts no one and is refused.
    let _held = [
        slow_clients("127.0.0.1", server.address, 1).await,
        slow_clients("127.0.0.2", server.address, 1).await,
        slow_clients("127.0.0.4", server.address, 1).await,
    ];
    let opened = Instant::now();
    let mut over = connect_from("127.0.0.3", server.address).await;
    let (answer, closed) = read_until_closed(&mut over, PATIENCE)
        .await
        .expect("a connection over the total cap is closed");
    assert!(closed - opened < Duration::from_secs(1));
    assert!(
        answer.is_empty() || answer.contains("too_many_connections"),
        "{answer}"
    );
}

#[tokio::test]
async fn at_the_total_cap_a_lighter_client_evicts_the_heaviest_ones_oldest() {
    let server = start(limits(10_000, 3, 3));
    let mut held = slow_clients("127.0.0.1", server.address, 3).await;
    // 127.0.0.2 holds none, 127.0.0.1 all three: the oldest of those goes.
    assert!(get_from("127.0.0.2", server.address, "/ok")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(
        read_until_closed(&mut held[0], PATIENCE).await.is_some(),
        "the heaviest client's oldest connection is evicted"
    );
    for stream in &mut held[1..] {
        assert!(read_until_closed(stream, Duration::from_millis(10))
            .await
            .is_none());
    }
}

#[tokio::test]
async fn a_slow_body_is_refused_408() {
    let server = start(limits(10_000, 8, 16));
    let mut stream = connect_from("127.0.0.1", server.address).await;
    stream
        .write_all(b"POST /body HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
        .await
        .expect("an answer within the body timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&buffer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    // A whole body is read as before.
    let mut stream = connect_from("127.0.0.1", server.address).await;
    stream
        .write_all(b"POST /body HTTP/1.1\r\nhost: test\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut stream, PATIENCE).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("read 3 bytes"),
        "{answer}"
    );
}

#[tokio::test]
async fn shutdown_lets_open_requests_finish_then_ends() {
    // A connection still sending its headers is not cut by the shutdown; it
    // ends at the header timeout.
    let mut server = start(limits(1_000, 8, 16));
    let _idle = slow_clients("127.0.0.2", server.address, 1).await;
    let address = server.address;
    let request = tokio::spawn(async move { get_from("127.0.0.1", address, "/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown.take().unwrap().send(()).unwrap();
    let answer = request.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
        "{answer}"
    );
    tokio::time::timeout(PATIENCE, server.server)
        .await
        .expect("the server ends after shutdown once requests finish")
        .unwrap();
    assert!(
        TcpStream::connect(address).await.is_err(),
        "still accepting"
    );
}

#[test]
fn connection_counts_cap_per_ip_and_in_total_and_release_on_drop() {
    let counts = ConnectionCounts::new(2, 3);
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let b: IpAddr = "10.0.0.2".parse().unwrap();
    let c: IpAddr = "::ffff:10.0.0.3".parse().unwrap();
    let d: IpAddr = "10.0.0.4".parse().unwrap();
    let a1 = counts.try_open(a).unwrap();
    assert_eq!(
        counts.try_open(b).map(|_| ()),
        Ok(()),
        "a dropped slot is given back"
    );
    let _b1 = counts.try_open(b).unwrap();
    let c1 = counts.try_open(c).unwrap();
    assert_eq!(
        c1.ip,
        "10.0.0.3".parse::<IpAddr>().unwrap(),
        "IPv4-mapped counts as IPv4"
    );
    assert_eq!(counts.try_open(d).unwrap_err(), Refused::Total);
    assert_eq!(counts.total(), 3);
    drop(a1);
    assert_eq!(counts.total(), 2);
    let _d1 = counts.try_open(d).unwrap();
    let counts = ConnectionCounts::new(2, 8);
    let _a = [counts.try_open(a).unwrap(), counts.try_open(a).unwrap()];
    assert_eq!(counts.try_open(a).unwrap_err(), Refused::PerIp);
    assert_eq!(counts.total(), 2);
}

#[test]
fn at_the_total_cap_only_a_lighter_ip_evicts_and_only_the_heaviest_ones_oldest() {
    let counts = ConnectionCounts::new(4, 4);
    let heavy: IpAddr = "10.0.0.1".parse().unwrap();
    let light: IpAddr = "10.0.0.2".parse().unwrap();
    let other: IpAddr = "10.0.0.3".parse().unwrap();
    let heavy_slots: Vec<_> = (0..3).map(|_| counts.try_open(heavy).unwrap()).collect();
    let _light1 = counts.try_open(light).unwrap();
    assert_eq!(counts.total(), 4);
    // 10.0.0.3 holds 0 against 3: it gets in; 10.0.0.1's oldest is evicted.
    let _other1 = counts.try_open(other).unwrap();
    assert_eq!(
        (counts.total(), counts.of(heavy), counts.of(other)),
        (4, 2, 1)
    );
    let oldest = &heavy_slots[0];
    assert!(futures::FutureExt::now_or_never(oldest.evicted()).is_some());
    assert!(futures::FutureExt::now_or_never(heavy_slots[1].evicted()).is_none());
    // Now 2/1/1: a client holding 1 is not two below the heaviest (2).
    assert_eq!(counts.try_open(light).unwrap_err(), Refused::Total);
    // Dropping an evicted slot does not count it twice.
    drop(heavy_slots);
    assert_eq!((counts.total(), counts.of(heavy)), (2, 0));
    assert!(counts.try_open(light).is_ok());
}

#[test]
fn slots_cap_and_release_on_drop() {
    let slots = Slots::new(2);
    let first = slots.try_take().unwrap();
    let _second = slots.try_take().unwrap();
    assert!(slots.try_take().is_none());
    assert_eq!(slots.used(), 2);
    drop(first);
    assert_eq!(slots.used(), 1);
    assert!(slots.try_take().is_some());
}

#[test]
fn the_open_files_limit_is_raised_within_the_hard_limit() {
    let files = fit_open_files_limit(16).expect("a small cap fits");
    assert!(files >= 16 + OTHER_FILES_RESERVE);
    let error = fit_open_files_limit(usize::MAX / 4).unwrap_err();
    assert!(error.contains("ulimit -n"), "{error}");
}
