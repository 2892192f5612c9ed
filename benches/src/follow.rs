//! The commit follower: listens to one validator's Server-Sent Events for
//! new blocks, fetches each block to learn its transaction hashes, and
//! records when each of our transactions was first seen committed.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;

use cairn_core::api::BlockEventJson;
use cairn_core::Hash;

use crate::submit::{Shared, NOT_SENT};
use crate::workload::Workload;

/// How long the follower waits for an event before looking at the stop flag.
const EVENT_WAIT: Duration = Duration::from_millis(100);

/// One committed block as the follower saw it.
#[derive(Clone, Debug)]
pub struct BlockSeen {
    pub height: u64,
    pub hash: String,
    pub parent_hash: String,
    pub tx_count: usize,
    /// When the commit was first seen, µs since the run's start.
    pub seen_us: u64,
}

/// What the follower learned.
pub struct Followed {
    /// Heights 1.. in order.
    pub blocks: Vec<BlockSeen>,
    /// When each transaction of the workload was seen committed, µs since
    /// the start ([`NOT_SENT`] if never).
    pub commit_us: Vec<u64>,
    /// Committed transactions that are not ours (should be none).
    pub foreign_txs: u64,
    /// Whether the SSE stream stayed up for the whole run.
    pub sse_ok: bool,
}

/// The parts of `GET /v1/blocks/{h}` the benchmark reads.
#[derive(Deserialize)]
pub struct BlockHashes {
    pub height: u64,
    pub hash: String,
    pub parent_hash: String,
    pub transactions: Vec<TxHash>,
}

#[derive(Deserialize)]
pub struct TxHash {
    pub hash: String,
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
}

/// `GET url` parsed as JSON of type `T`.
pub fn get_json<T: serde::de::DeserializeOwned>(
    agent: &ureq::Agent,
    url: &str,
) -> Result<T, String> {
    let response = agent
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes)
        .map_err(|e| format!("GET {url}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: bad JSON: {e}"))
}

/// Opens the event stream of `api_url` (so no commit after this returns is
/// missed) and starts following. The stream is closed when following ends:
/// an open SSE connection would hold up the node's graceful shutdown.
pub fn start(
    api_url: &str,
    workload: Arc<Workload>,
    shared: Arc<Shared>,
) -> Result<JoinHandle<Result<Followed, String>>, String> {
    let (socket, body) = sse::open(api_url)?;
    let (sender, receiver) = mpsc::channel();
    let sse_shared = shared.clone();
    std::thread::Builder::new()
        .name("sse".into())
        .spawn(move || {
            // Ends when the stream closes; never joined.
            for line in std::io::BufReader::new(body).lines() {
                let Ok(line) = line else { return };
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                if let Ok(event) = serde_json::from_str::<BlockEventJson>(data.trim()) {
                    if sender
                        .send((event.height, sse_shared.elapsed_us()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let api_url = api_url.to_string();
    std::thread::Builder::new()
        .name("follow".into())
        .spawn(move || {
            let result = follow(&api_url, &workload, &shared, receiver);
            let _ = socket.shutdown(std::net::Shutdown::Both);
            result
        })
        .map_err(|e| e.to_string())
}

fn follow(
    api_url: &str,
    workload: &Workload,
    shared: &Shared,
    events: Receiver<(u64, u64)>,
) -> Result<Followed, String> {
    let agent = agent();
    let mut out = Followed {
        blocks: Vec::new(),
        commit_us: vec![NOT_SENT; workload.tx_count],
        foreign_txs: 0,
        sse_ok: true,
    };
    let mut seen_us: HashMap<u64, u64> = HashMap::new();
    let mut tip = 0u64;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        match events.recv_timeout(EVENT_WAIT) {
            Ok((height, at)) => {
                seen_us.entry(height).or_insert(at);
                tip = tip.max(height);
                while let Ok((height, at)) = events.try_recv() {
                    seen_us.entry(height).or_insert(at);
                    tip = tip.max(height);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The stream broke: poll the tip instead.
                out.sse_ok = false;
                tip = tip.max(status_height(&agent, api_url)?);
            }
        }
        if stopping {
            tip = tip.max(status_height(&agent, api_url)?);
        }
        while (out.blocks.len() as u64) < tip {
            let height = out.blocks.len() as u64 + 1;
            let block: BlockHashes = get_json(&agent, &format!("{api_url}/v1/blocks/{height}"))?;
            let at = seen_us
                .remove(&height)
                .unwrap_or_else(|| shared.elapsed_us());
            record(workload, shared, &mut out, block, at)?;
        }
        if stopping {
            return Ok(out);
        }
    }
}

fn status_height(agent: &ureq::Agent, api_url: &str) -> Result<u64, String> {
    let status: serde_json::Value = get_json(agent, &format!("{api_url}/v1/status"))?;
    status["height"]
        .as_u64()
        .ok_or_else(|| "status without a height".to_string())
}

fn record(
    workload: &Workload,
    shared: &Shared,
    out: &mut Followed,
    block: BlockHashes,
    at: u64,
) -> Result<(), String> {
    let expected = out.blocks.len() as u64 + 1;
    if block.height != expected {
        return Err(format!("asked for block {expected}, got {}", block.height));
    }
    let mut ours = 0;
    for tx in &block.transactions {
        let hash: Hash = tx
            .hash
            .parse()
            .map_err(|e| format!("block {}: bad transaction hash: {e}", block.height))?;
        match workload.tx_by_hash.get(&hash) {
            Some(&k) if out.commit_us[k as usize] == NOT_SENT => {
                out.commit_us[k as usize] = at;
                ours += 1;
            }
            Some(_) => {
                return Err(format!(
                    "transaction {hash} committed twice (again in block {})",
                    block.height
                ))
            }
            None => out.foreign_txs += 1,
        }
    }
    shared.committed.fetch_add(ours, Ordering::AcqRel);
    out.blocks.push(BlockSeen {
        height: block.height,
        hash: block.hash,
        parent_hash: block.parent_hash,
        tx_count: block.transactions.len(),
        seen_us: at,
    });
    Ok(())
}

/// A minimal Server-Sent Events client over a plain socket, so the
/// benchmark can close the stream when it is done (HTTP clients keep it in
/// their own hands).
mod sse {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Connects to `GET {api_url}/v1/events`, reads the answer's head and
    /// returns the socket (to shut down later) and a reader of the body.
    pub fn open(api_url: &str) -> Result<(TcpStream, Box<dyn Read + Send>), String> {
        let address = api_url.strip_prefix("http://").unwrap_or(api_url);
        let mut socket = TcpStream::connect(address)
            .map_err(|e| format!("cannot connect to {address} for events: {e}"))?;
        socket
            .set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(
            socket,
            "GET /v1/events HTTP/1.1\r\nhost: {address}\r\naccept: text/event-stream\r\n\r\n"
        )
        .map_err(|e| format!("cannot ask {address} for events: {e}"))?;
        let mut reader = BufReader::new(socket.try_clone().map_err(|e| e.to_string())?);
        let mut status = String::new();
        reader.read_line(&mut status).map_err(|e| e.to_string())?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("GET {api_url}/v1/events: {}", status.trim()));
        }
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("event stream closed in its head".into());
            }
            let line = line.trim().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if line.starts_with("transfer-encoding:") && line.contains("chunked") {
                chunked = true;
            }
        }
        let body: Box<dyn Read + Send> = if chunked {
            Box::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            })
        } else {
            Box::new(reader)
        };
        Ok((socket, body))
    }

    /// Decodes `Transfer-Encoding: chunked`.
    struct Chunked<R> {
        inner: R,
        left: usize,
        done: bool,
    }

    impl<R: BufRead> Read for Chunked<R> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            while self.left == 0 {
                if self.done {
                    return Ok(0);
                }
                let mut line = String::new();
                if self.inner.read_line(&mut line)? == 0 {
                    return Ok(0);
                }
                let size = line.trim().split(';').next().unwrap_or("");
                if size.is_empty() {
                    continue; // the CRLF after a chunk's data
                }
                self.left = usize::from_str_radix(size, 16).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
                })?;
                self.done = self.left == 0;
            }
            let n = out.len().min(self.left);
            let n = self.inner.read(&mut out[..n])?;
            if n == 0 {
                return Ok(0);
            }
            self.left -= n;
            Ok(n)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn decodes_chunks() {
            let wire = b"5\r\nhello\r\n7\r\n world\n\r\n0\r\n\r\n";
            let mut body = String::new();
            Chunked {
                inner: &wire[..],
                left: 0,
                done: false,
            }
            .read_to_string(&mut body)
            .unwrap();
            assert_eq!(body, "hello world\n");
        }
    }
}
