//! A lying node: a loopback HTTP proxy in front of a validator's API that
//! alters its JSON answers, for testing clients that must not trust a node.
//!
//! Each connection carries one request (the proxy answers with
//! `Connection: close`). The request is forwarded as it came; the answer's
//! JSON body goes through the [`Lie`] (a function of the request path and
//! the parsed body) and is sent back with a corrected `Content-Length`.
//! Requests and answers are bounded in size; the listener thread stops and
//! every socket closes when the proxy is dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Alters an answer: given the request path and the JSON body.
pub type Lie = Arc<dyn Fn(&str, &mut Value) + Send + Sync>;

/// Largest request or answer the proxy reads.
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

pub struct LyingNode {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LyingNode {
    /// Listens on a free loopback port and forwards to `upstream`
    /// (`host:port`), altering every JSON answer with `lie`.
    pub fn start(upstream: SocketAddr, lie: Lie) -> LyingNode {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the lying proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let lie = lie.clone();
                        std::thread::spawn(move || {
                            let _ = serve(client, upstream, &lie);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        LyingNode {
            address,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for LyingNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one HTTP message (head and a `Content-Length` body, or to EOF when
/// `to_eof` and there is none).
fn read_message(stream: &mut TcpStream, to_eof: bool) -> std::io::Result<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 || buffer.len() > MESSAGE_BYTES_MAX {
            return Err(std::io::Error::other("incomplete head"));
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = buffer[head_end..].to_vec();
    match length {
        Some(length) => {
            if length > MESSAGE_BYTES_MAX {
                return Err(std::io::Error::other("message too large"));
            }
            while body.len() < length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::Error::other("truncated body"));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(length);
        }
        None if to_eof => loop {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
            if body.len() > MESSAGE_BYTES_MAX {
                return Err(std::io::Error::other("message too large"));
            }
        },
        None => {}
    }
    Ok((head, body))
}

fn serve(mut client: TcpStream, upstream: SocketAddr, lie: &Lie) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (head, body) = read_message(&mut client, false)?;
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    // One request per upstream connection, closed after the answer.
    let head: String = head
        .lines()
        .filter(|line| !line.to_ascii_lowercase().starts_with("connection:") && !line.is_empty())
        .map(|line| format!("{line}\r\n"))
        .collect();
    let mut node = TcpStream::connect(upstream)?;
    node.set_read_timeout(Some(Duration::from_secs(30)))?;
    node.write_all(head.as_bytes())?;
    node.write_all(b"Connection: close\r\n\r\n")?;
    node.write_all(&body)?;
    let (answer_head, answer_body) = read_message(&mut node, true)?;
    let status_line = answer_head
        .lines()
        .next()
        .unwrap_or("HTTP/1.1 502 Bad Gateway");
    let content_type = answer_head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-type:"))
        .unwrap_or("content-type: application/json")
        .to_string();
    let body = match serde_json::from_slice::<Value>(&answer_body) {
        Ok(mut json) => {
            lie(&path, &mut json);
            serde_json::to_vec(&json).expect("JSON encodes")
        }
        Err(_) => answer_body,
    };
    write!(
        client,
        "{status_line}\r\n{content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    client.write_all(&body)?;
    client.flush()
}
