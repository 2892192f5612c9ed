//! A loopback fault proxy on every validator-to-validator link.
//!
//! Of each pair of validators the lower index dials the higher. For every
//! pair `a < b`, [`Proxy::install`] opens a listener on an OS-chosen
//! loopback port and writes it into validator `a`'s `node.json` as
//! `peer_addresses[b]`; the proxy forwards what arrives there to `b`'s
//! genesis `p2p_address`, where `b` listens. So every link, in both
//! directions, passes the proxy, and the proxy knows which validators a
//! connection joins by the port it came in on. Bytes from the dialer go
//! `a → b`, bytes back go `b → a`; each of the two directions has its own
//! [`Mode`]:
//!
//! - [`Mode::Pass`]: bytes are forwarded as they come.
//! - [`Mode::Delay`]: every chunk read is written out that much later, in
//!   order (a slow link: fixed latency, bandwidth unchanged).
//! - [`Mode::Blackhole`]: a cut, as in a real partition: bytes are read and
//!   thrown away, nothing is closed or refused, so the sender sees no error
//!   and the receiver simply hears nothing. New connections are accepted
//!   and blackholed the same way (their handshake never completes: the
//!   dialer times out, as when SYNs are lost). A real TCP connection would
//!   either deliver the lost bytes late (retransmission) or be reset after
//!   its retransmission timeout; the proxy models the second, harder case:
//!   what was sent during the cut is lost, and when the direction stops
//!   being blackholed every connection of the link that lost bytes is
//!   closed (its byte stream has a hole), so the dialer redials.
//!
//! [`Proxy::drop_connections`] closes a link's connections at once (a
//! connection reset by a middlebox or a NAT that forgot it): the nodes must
//! notice and redial.
//!
//! Buffers are bounded: one read buffer per direction and at most
//! [`CHUNKS_QUEUED_MAX`] chunks waiting for their delay, after which the
//! reader stops reading (TCP flow control pushes back to the sender). Every
//! thread stops, and every socket is closed, when the proxy is dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Testnet;

/// Bytes read at once per direction.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Chunks waiting to be written per direction (at most 16 MiB).
pub const CHUNKS_QUEUED_MAX: usize = 256;
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// What one direction of a link does to the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Blackhole,
}

/// Byte counts of one direction (`from → to`) since the proxy started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub forwarded: u64,
    pub discarded: u64,
    /// Chunks held back by [`Mode::Delay`].
    pub delayed_chunks: u64,
}

#[derive(Default)]
struct DirectionStats {
    forwarded: AtomicU64,
    discarded: AtomicU64,
    delayed_chunks: AtomicU64,
}

/// One proxied TCP connection of link `(low, high)`.
struct Connection {
    low: usize,
    high: usize,
    /// Clones of the two sockets, to close them from outside.
    client: TcpStream,
    upstream: TcpStream,
    /// Whether bytes were thrown away: `[low → high, high → low]`.
    lost: [AtomicBool; 2],
    closed: AtomicBool,
}

impl Connection {
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

struct State {
    /// Mode of each direction `(from, to)`; absent means [`Mode::Pass`].
    modes: BTreeMap<(usize, usize), Mode>,
    connections: Vec<Arc<Connection>>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    state: Mutex<State>,
    stats: BTreeMap<(usize, usize), DirectionStats>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fault proxy of one testnet. Dropping it closes every connection and
/// joins every thread.
pub struct Proxy {
    shared: Arc<Shared>,
    validators: usize,
    addresses: BTreeMap<(usize, usize), SocketAddr>,
    listeners: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Puts a proxy on every link of `net`, whose validators must not be
    /// running yet: writes `peer_addresses` into each `node.json`.
    pub fn install(net: &Testnet) -> Proxy {
        let proxy = Proxy::start(&net.genesis.p2p_addresses);
        for low in 0..proxy.validators {
            let overrides: serde_json::Map<String, serde_json::Value> = (low + 1..proxy.validators)
                .map(|high| {
                    (
                        net.genesis.genesis.validators[high].name.clone(),
                        proxy.address(low, high).to_string().into(),
                    )
                })
                .collect();
            let path = net.home(low).join(cairn_genesis::NODE_CONFIG_FILE);
            let text = std::fs::read_to_string(&path).expect("read node.json");
            let mut config: serde_json::Value = serde_json::from_str(&text).expect("node.json");
            config["peer_addresses"] = serde_json::Value::Object(overrides);
            std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap())
                .expect("write node.json");
        }
        proxy
    }

    /// A proxy for validators listening at `targets`: for every pair
    /// `low < high`, a loopback port ([`Proxy::address`]) forwarding to
    /// `targets[high]`.
    pub fn start(targets: &[SocketAddr]) -> Proxy {
        let n = targets.len();
        let mut stats = BTreeMap::new();
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    stats.insert((a, b), DirectionStats::default());
                }
            }
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                modes: BTreeMap::new(),
                connections: Vec::new(),
                threads: Vec::new(),
            }),
            stats,
        });
        let mut listeners = Vec::new();
        let mut addresses = BTreeMap::new();
        for low in 0..n {
            for (high, &target) in targets.iter().enumerate().skip(low + 1) {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
                addresses.insert((low, high), listener.local_addr().expect("proxy address"));
                listener
                    .set_nonblocking(true)
                    .expect("nonblocking listener");
                let shared = shared.clone();
                listeners.push(std::thread::spawn(move || {
                    accept_loop(shared, listener, low, high, target)
                }));
            }
        }
        Proxy {
            shared,
            validators: n,
            addresses,
            listeners,
        }
    }

    /// Where validator `low` dials validator `high` (`low < high`).
    pub fn address(&self, low: usize, high: usize) -> SocketAddr {
        self.addresses[&(low, high)]
    }

    /// Sets the mode of direction `from → to`. Leaving [`Mode::Blackhole`]
    /// closes the link's connections that lost bytes that way.
    pub fn set(&self, from: usize, to: usize, mode: Mode) {
        assert!(from != to && from < self.validators && to < self.validators);
        let mut state = self.shared.state();
        if mode == Mode::Pass {
            state.modes.remove(&(from, to));
        } else {
            state.modes.insert((from, to), mode);
        }
        if mode != Mode::Blackhole {
            let direction = usize::from(from > to);
            for c in &state.connections {
                if (c.low, c.high) == (from.min(to), from.max(to))
                    && c.lost[direction].load(Ordering::Relaxed)
                {
                    c.close();
                }
            }
        }
    }

    /// Sets both directions between `a` and `b`.
    pub fn set_link(&self, a: usize, b: usize, mode: Mode) {
        self.set(a, b, mode);
        self.set(b, a, mode);
    }

    /// Cuts every link between a validator of `one` and one of `other`,
    /// both ways.
    pub fn partition(&self, one: &[usize], other: &[usize]) {
        for &a in one {
            for &b in other {
                self.set_link(a, b, Mode::Blackhole);
            }
        }
    }

    /// Cuts validator `i` off from every other, both ways.
    pub fn isolate(&self, i: usize) {
        let others: Vec<usize> = (0..self.validators).filter(|&j| j != i).collect();
        self.partition(&[i], &others);
    }

    /// Every direction back to [`Mode::Pass`].
    pub fn heal_all(&self) {
        for a in 0..self.validators {
            for b in 0..self.validators {
                if a != b {
                    self.set(a, b, Mode::Pass);
                }
            }
        }
    }

    /// Closes every open connection between `a` and `b` now.
    pub fn drop_connections(&self, a: usize, b: usize) {
        let state = self.shared.state();
        for c in &state.connections {
            if (c.low, c.high) == (a.min(b), a.max(b)) {
                c.close();
            }
        }
    }

    /// Open proxied connections between `a` and `b`.
    pub fn open_connections(&self, a: usize, b: usize) -> usize {
        let state = self.shared.state();
        state
            .connections
            .iter()
            .filter(|c| (c.low, c.high) == (a.min(b), a.max(b)))
            .filter(|c| !c.closed.load(Ordering::Relaxed))
            .count()
    }

    /// What direction `from → to` carried so far.
    pub fn counts(&self, from: usize, to: usize) -> Counts {
        let s = &self.shared.stats[&(from, to)];
        Counts {
            forwarded: s.forwarded.load(Ordering::Relaxed),
            discarded: s.discarded.load(Ordering::Relaxed),
            delayed_chunks: s.delayed_chunks.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.listeners.drain(..) {
            let _ = t.join();
        }
        let threads = {
            let mut state = self.shared.state();
            for c in &state.connections {
                c.close();
            }
            std::mem::take(&mut state.threads)
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    low: usize,
    high: usize,
    target: SocketAddr,
) {
    while !shared.stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        };
        // The target may be down (a stopped validator): then the dialer
        // sees its connection closed, as if refused.
        let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            continue;
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (Ok(client_clone), Ok(upstream_clone)) = (client.try_clone(), upstream.try_clone())
        else {
            continue;
        };
        let connection = Arc::new(Connection {
            low,
            high,
            client: client_clone,
            upstream: upstream_clone,
            lost: [AtomicBool::new(false), AtomicBool::new(false)],
            closed: AtomicBool::new(false),
        });
        let mut state = shared.state();
        if shared.stop.load(Ordering::Relaxed) {
            connection.close();
            return;
        }
        state.threads.retain(|t| !t.is_finished());
        state
            .connections
            .retain(|c| !c.closed.load(Ordering::Relaxed));
        state.connections.push(connection.clone());
        let pairs = [
            (client, upstream, low, high, 0),
            (
                connection.upstream.try_clone().expect("clone"),
                connection.client.try_clone().expect("clone"),
                high,
                low,
                1,
            ),
        ];
        for (source, sink, from, to, direction) in pairs {
            let (sender, receiver) = sync_channel(CHUNKS_QUEUED_MAX);
            let (s, c) = (shared.clone(), connection.clone());
            state.threads.push(std::thread::spawn(move || {
                read_direction(s, c, source, sender, from, to, direction)
            }));
            let (s, c) = (shared.clone(), connection.clone());
            state.threads.push(std::thread::spawn(move || {
                write_direction(s, c, sink, receiver, from, to)
            }));
        }
    }
}

/// Reads `from → to` and hands each chunk, with the moment it is due, to
/// the writer; or throws it away while the direction is blackholed.
fn read_direction(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    mut source: TcpStream,
    sender: SyncSender<(Instant, Vec<u8>)>,
    from: usize,
    to: usize,
    direction: usize,
) {
    let _ = source.set_read_timeout(Some(POLL));
    let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
    let stats = &shared.stats[&(from, to)];
    loop {
        if shared.stop.load(Ordering::Relaxed) || connection.closed.load(Ordering::Relaxed) {
            break;
        }
        let n = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => break,
        };
        let mode = {
            let state = shared.state();
            let mode = state.modes.get(&(from, to)).copied().unwrap_or(Mode::Pass);
            if mode == Mode::Blackhole {
                // Marked under the lock, so healing (which looks under the
                // lock) never misses a connection that lost bytes.
                connection.lost[direction].store(true, Ordering::Relaxed);
            }
            mode
        };
        let due = match mode {
            Mode::Pass => Instant::now(),
            Mode::Delay(delay) => {
                stats.delayed_chunks.fetch_add(1, Ordering::Relaxed);
                Instant::now() + delay
            }
            Mode::Blackhole => {
                stats.discarded.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
        };
        // Blocks when the writer is CHUNKS_QUEUED_MAX behind: we stop
        // reading and TCP pushes back to the sender.
        if sender.send((due, buffer[..n].to_vec())).is_err() {
            break;
        }
    }
    connection.close();
}

/// Writes each chunk to `sink` once it is due, in order.
fn write_direction(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    mut sink: TcpStream,
    receiver: Receiver<(Instant, Vec<u8>)>,
    from: usize,
    to: usize,
) {
    let stats = &shared.stats[&(from, to)];
    let stopping =
        || shared.stop.load(Ordering::Relaxed) || connection.closed.load(Ordering::Relaxed);
    'chunks: loop {
        let (due, chunk) = match receiver.recv_timeout(POLL) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) if !stopping() => continue,
            Err(_) => break,
        };
        loop {
            if stopping() {
                break 'chunks;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(POLL));
        }
        if sink.write_all(&chunk).is_err() {
            break;
        }
        stats
            .forwarded
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    connection.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection through the proxy of link 0-1: (the dialer's end, the
    /// end validator 1 accepted).
    fn connect(proxy: &Proxy, target: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(proxy.address(0, 1)).unwrap();
        let (server, _) = target.accept().unwrap();
        for s in [&client, &server] {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
        }
        (client, server)
    }

    /// Reads what arrives within the read timeout; `None` at end of stream
    /// or on a reset.
    fn receive(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut buffer = [0u8; 64];
        match stream.read(&mut buffer) {
            Ok(0) => None,
            Ok(n) => Some(buffer[..n].to_vec()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                Some(Vec::new())
            }
            Err(_) => None,
        }
    }

    #[test]
    fn modes_per_direction_heal_drop_and_shutdown() {
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let unused = "127.0.0.1:9".parse().unwrap();
        let proxy = Proxy::start(&[unused, target.local_addr().unwrap()]);
        let (mut client, mut server) = connect(&proxy, &target);

        // Pass, both ways.
        client.write_all(b"up").unwrap();
        assert_eq!(receive(&mut server).unwrap(), b"up");
        server.write_all(b"down").unwrap();
        assert_eq!(receive(&mut client).unwrap(), b"down");

        // Delay one way only.
        proxy.set(0, 1, Mode::Delay(Duration::from_millis(150)));
        let sent = Instant::now();
        client.write_all(b"slow").unwrap();
        server.write_all(b"fast").unwrap();
        assert_eq!(receive(&mut client).unwrap(), b"fast");
        assert_eq!(receive(&mut server).unwrap(), b"slow");
        assert!(sent.elapsed() >= Duration::from_millis(150));
        assert_eq!(proxy.counts(0, 1).delayed_chunks, 1);
        proxy.set(0, 1, Mode::Pass);

        // Blackhole one way: thrown away, nothing closed; the other way
        // still passes.
        proxy.set(1, 0, Mode::Blackhole);
        server.write_all(b"lost").unwrap();
        assert_eq!(receive(&mut client).unwrap(), b"");
        assert_eq!(proxy.counts(1, 0).discarded, 4);
        client.write_all(b"heard").unwrap();
        assert_eq!(receive(&mut server).unwrap(), b"heard");
        assert_eq!(proxy.open_connections(0, 1), 1);
        // Healing closes the connection that lost bytes.
        proxy.set(1, 0, Mode::Pass);
        assert_eq!(receive(&mut client), None);
        assert_eq!(receive(&mut server), None);
        assert_eq!(proxy.open_connections(0, 1), 0);

        // A new connection passes again; dropping connections closes it.
        let (mut client, mut server) = connect(&proxy, &target);
        client.write_all(b"again").unwrap();
        assert_eq!(receive(&mut server).unwrap(), b"again");
        proxy.drop_connections(1, 0);
        assert_eq!(receive(&mut client), None);
        assert_eq!(receive(&mut server), None);

        // Dropping the proxy closes what is open and stops every thread.
        let (mut client, mut server) = connect(&proxy, &target);
        proxy.set(0, 1, Mode::Delay(Duration::from_secs(60)));
        client.write_all(b"held").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let dropping = Instant::now();
        drop(proxy);
        assert!(dropping.elapsed() < Duration::from_secs(2));
        assert_eq!(receive(&mut client), None);
        assert_eq!(receive(&mut server), None);
    }
}
