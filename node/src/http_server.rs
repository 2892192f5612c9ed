//! The API's HTTP server: an accept loop of its own around warp's routes,
//! bounding what one client can hold (INTERFACE.md, "Abuse limits").
//!
//! `warp::serve` keeps every connection it accepts for as long as the client
//! likes, so a few thousand connections that never finish their headers use
//! up the process's file descriptors. Here every accepted connection first
//! takes a slot, counted per client IP and in total; a connection over either
//! cap is answered 503 `too_many_connections` (one non-blocking write) and
//! closed at once, without a task. At the total cap a client holding fewer
//! connections than the heaviest one still gets in, by evicting the heaviest
//! one's oldest connection (see [`ConnectionCounts`]). Request headers must be complete within
//! the header timeout (hyper's `http1_header_read_timeout`, made to cover
//! idle keep-alive connections too by [`WakeAfterWrite`]). Accept errors (`EMFILE`, ...)
//! back off briefly instead of spinning. HTTP/1 only: the header timeout does
//! not apply to HTTP/2, and no client of the API needs it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::Http;
use hyper::service::Service;
use hyper::{Body, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

use cairn_genesis::NodeLimits;

/// How long the accept loop pauses after an accept error (out of file
/// descriptors, ...), so it does not spin while the condition lasts.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Connections waiting to be accepted (the listen backlog).
pub const LISTEN_BACKLOG: u32 = 1_024;
/// At most one warning per this interval for refused connections and accept
/// errors; the others are counted into the next one.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Files the node keeps open besides API connections (sled, p2p, logs),
/// with room to spare.
pub const OTHER_FILES_RESERVE: u64 = 1_024;

/// Raises this process's soft limit on open files (`ulimit -n`) so that the
/// API's connection cap, not the file limit, is what refuses clients: to
/// `connections_max` plus [`OTHER_FILES_RESERVE`], within the hard limit.
/// Returns the soft limit now in force, or says why it stays too low (for a
/// warning: past it, accepts fail with `EMFILE` before the cap is reached).
pub fn fit_open_files_limit(connections_max: usize) -> Result<u64, String> {
    let needed = connections_max as u64 + OTHER_FILES_RESERVE;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes only the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!(
            "cannot read the open files limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    // `rlim_t` is u64 here but narrower on some targets.
    #[allow(clippy::useless_conversion)]
    let (soft, hard) = (u64::from(limit.rlim_cur), u64::from(limit.rlim_max));
    if soft < needed {
        let raised = libc::rlimit {
            rlim_cur: needed.min(hard) as libc::rlim_t,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit(2) reads only the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(format!(
                "cannot raise the open files limit from {soft} to {}: {}",
                raised.rlim_cur,
                std::io::Error::last_os_error()
            ));
        }
    }
    if hard < needed {
        return Err(format!(
            "limits.api_connections_max {connections_max} needs about {needed} open files, \
             but this process may open only {hard} (ulimit -n): past that, clients are \
             refused by accept errors before the cap; raise the limit or lower the cap"
        ));
    }
    Ok(soft.max(needed))
}

/// The server's bounds, from `node.json` `limits`.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Time a client has to send complete request headers.
    pub header_timeout: Duration,
    /// Open connections from one client IP address.
    pub connections_per_ip_max: usize,
    /// Open connections in all.
    pub connections_max: usize,
}

impl From<&NodeLimits> for ServerLimits {
    fn from(limits: &NodeLimits) -> ServerLimits {
        ServerLimits {
            header_timeout: Duration::from_millis(limits.api_header_timeout_ms),
            connections_per_ip_max: limits.api_connections_per_ip_max,
            connections_max: limits.api_connections_max,
        }
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its client IP holds `connections_per_ip_max` connections already.
    PerIp,
    /// The server holds `connections_max` connections already, and no client
    /// IP holds more than one connection more than this one's.
    Total,
}

/// Open connections, per client IP and in total.
///
/// At the total cap, a connection from an IP that holds fewer connections
/// than the heaviest IP, by two or more, is still let in: the heaviest IP's
/// oldest connection is evicted for it. So clients from many addresses that
/// fill the server between them cannot shut out a client with few or none;
/// they can only hold an equal share.
#[derive(Debug)]
pub struct ConnectionCounts {
    per_ip_max: usize,
    max: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only IPs with at least one open connection: its connections by id
    /// (oldest first) with the handle that evicts each.
    per_ip: HashMap<IpAddr, BTreeMap<u64, Arc<Notify>>>,
    /// The same IPs ordered by how many connections they hold.
    by_count: BTreeSet<(usize, IpAddr)>,
    next_id: u64,
}

impl Counts {
    fn count(&self, ip: &IpAddr) -> usize {
        self.per_ip.get(ip).map_or(0, BTreeMap::len)
    }

    /// Takes connection `id` of `ip` out of the counts; false if it was not
    /// in them (already evicted).
    fn remove(&mut self, ip: IpAddr, id: u64) -> bool {
        let Some(connections) = self.per_ip.get_mut(&ip) else {
            return false;
        };
        let before = connections.len();
        if connections.remove(&id).is_none() {
            return false;
        }
        assert!(
            self.by_count.remove(&(before, ip)),
            "by_count agrees with per_ip"
        );
        if connections.is_empty() {
            self.per_ip.remove(&ip);
        } else {
            self.by_count.insert((before - 1, ip));
        }
        assert!(self.total > 0);
        self.total -= 1;
        true
    }

    fn insert(&mut self, ip: IpAddr, evict: Arc<Notify>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let connections = self.per_ip.entry(ip).or_default();
        let before = connections.len();
        connections.insert(id, evict);
        if before > 0 {
            assert!(
                self.by_count.remove(&(before, ip)),
                "by_count agrees with per_ip"
            );
        }
        self.by_count.insert((before + 1, ip));
        self.total += 1;
        id
    }

    fn check(&self) {
        debug_assert_eq!(self.per_ip.len(), self.by_count.len());
        debug_assert_eq!(
            self.total,
            self.per_ip.values().map(BTreeMap::len).sum::<usize>()
        );
    }
}

impl ConnectionCounts {
    pub fn new(per_ip_max: usize, max: usize) -> Arc<ConnectionCounts> {
        assert!(per_ip_max > 0 && per_ip_max <= max, "connection caps");
        Arc::new(ConnectionCounts {
            per_ip_max,
            max,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a slot for a connection from `ip`, given back when the returned
    /// guard drops; at the total cap, possibly by evicting a connection of the
    /// heaviest IP (its slot's [`ConnectionSlot::evicted`] fires).
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        // IPv4 clients of an IPv6 listener count as their IPv4 address.
        let ip = ip.to_canonical();
        let mut counts = self.counts.lock().expect("connection counts lock");
        let of_ip = counts.count(&ip);
        if of_ip >= self.per_ip_max {
            return Err(Refused::PerIp);
        }
        if counts.total >= self.max {
            let &(heaviest, victim_ip) = counts.by_count.last().expect("at the cap, some IP");
            if of_ip + 1 >= heaviest {
                return Err(Refused::Total);
            }
            let (&victim, _) = counts.per_ip[&victim_ip]
                .first_key_value()
                .expect("an IP in the counts holds a connection");
            let evict = counts.per_ip[&victim_ip][&victim].clone();
            assert!(counts.remove(victim_ip, victim));
            // Stored as a permit if the connection task is not waiting yet.
            evict.notify_one();
        }
        let evicted = Arc::new(Notify::new());
        let id = counts.insert(ip, evicted.clone());
        counts.check();
        assert!(counts.total <= self.max);
        Ok(ConnectionSlot {
            counts: self.clone(),
            ip,
            id,
            evicted,
        })
    }

    /// Open connections in all.
    pub fn total(&self) -> usize {
        self.counts.lock().expect("connection counts lock").total
    }

    /// Open connections from `ip`.
    pub fn of(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().expect("connection counts lock");
        counts.count(&ip.to_canonical())
    }

    fn close(&self, ip: IpAddr, id: u64) {
        let mut counts = self.counts.lock().expect("connection counts lock");
        // An evicted connection was taken out when it was evicted.
        counts.remove(ip, id);
        counts.check();
    }
}

/// One open connection's slot in [`ConnectionCounts`].
#[derive(Debug)]
pub struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    ip: IpAddr,
    id: u64,
    evicted: Arc<Notify>,
}

impl ConnectionSlot {
    /// Resolves when the connection is evicted for a lighter client.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counts.close(self.ip, self.id);
    }
}

/// A counted cap on something long-lived (SSE subscribers): at most `max`
/// [`Slot`]s exist at once.
#[derive(Debug)]
pub struct Slots {
    used: AtomicUsize,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            used: AtomicUsize::new(0),
            max,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A slot, or `None` when `max` are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.max).then_some(used + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

/// One taken place in [`Slots`], given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        let before = self.0.used.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "slot count underflow");
    }
}

/// Binds `listen` with a backlog of [`LISTEN_BACKLOG`]. Call it inside the
/// runtime that will serve the listener.
pub fn bind(listen: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The 503 answer to a connection over a cap.
fn refusal_bytes(refused: Refused, limits: &ServerLimits) -> Vec<u8> {
    let error = match refused {
        Refused::PerIp => format!(
            "at most {} open connections per client address",
            limits.connections_per_ip_max
        ),
        Refused::Total => format!("at most {} open connections", limits.connections_max),
    };
    let body = serde_json::json!({ "error": error, "code": "too_many_connections" }).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Logs a recurring warning at most once per [`WARNING_INTERVAL`].
struct Throttled {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new(what: &'static str) -> Throttled {
        Throttled {
            what,
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, detail: impl std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARNING_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(
            "{}: {detail} ({suppressed} more since the last warning)",
            self.what
        );
        self.last = Some(now);
    }
}

/// Serves `service` (e.g. `warp::service(routes)`) on `listener` within
/// `limits` until `shutdown` resolves; then stops accepting, lets open
/// requests finish and ends when every connection has closed (idle
/// keep-alive connections close at once; one still sending its headers, at
/// the header timeout). Connection tasks run on the runtime that polls the
/// returned future.
pub fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let counts = ConnectionCounts::new(limits.connections_per_ip_max, limits.connections_max);
    let mut http = Http::new();
    http.http1_only(true)
        .http1_header_read_timeout(limits.header_timeout);
    let refused_per_ip = refusal_bytes(Refused::PerIp, &limits);
    let refused_total = refusal_bytes(Refused::Total, &limits);
    async move {
        let (stop, stopped) = watch::channel(false);
        // Each connection task holds a sender: `recv` ends when all are gone.
        let (open, mut all_closed) = mpsc::channel::<()>(1);
        let mut refusals = Throttled::new("API connection refused");
        let mut accept_errors = Throttled::new("API accept error");
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_errors.warn(e);
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            };
            match counts.try_open(peer.ip()) {
                Ok(slot) => {
                    let stream = WakeAfterWrite(stream);
                    let connection = http.serve_connection(stream, service.clone());
                    tokio::spawn(run_connection(
                        connection,
                        slot,
                        stopped.clone(),
                        open.clone(),
                    ));
                }
                Err(refused) => {
                    refusals.warn(format_args!("{refused:?} cap, from {}", peer.ip()));
                    let answer = match refused {
                        Refused::PerIp => &refused_per_ip,
                        Refused::Total => &refused_total,
                    };
                    refuse(stream, answer);
                }
            }
        }
        drop(listener);
        stop.send_replace(true);
        drop(open);
        let _ = all_closed.recv().await;
    }
}

/// Answers a connection over a cap without waiting on it: one non-blocking
/// write of `answer`, then close.
fn refuse(stream: TcpStream, answer: &[u8]) {
    let _ = stream.try_write(answer);
    drop(stream);
}

/// Drives one connection to its end, or through a graceful close once
/// `stopped` turns true, or until it is evicted. `slot` and `_open` are
/// released when it ends.
async fn run_connection<S>(
    connection: hyper::server::conn::Connection<WakeAfterWrite<TcpStream>, S>,
    slot: ConnectionSlot,
    mut stopped: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    tokio::pin!(connection);
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        // Dropped at once: its slot went to a client holding fewer.
        _ = slot.evicted() => Some(Ok(())),
        _ = async { let _ = stopped.wait_for(|stopped| *stopped).await; } => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Header timeouts, resets and malformed requests: the client's doing.
        tracing::debug!("API connection closed: {e}");
    }
}

/// A connection's stream that asks for one more poll of the connection after
/// every write that moved bytes.
///
/// hyper 0.14 starts its header read timer only when it next tries to parse a
/// request head; after a response it returns to idle without doing so, and a
/// keep-alive connection on which the client then sends nothing would never
/// be timed. The extra poll makes hyper try to parse (finding no bytes) and so
/// start the timer: an idle keep-alive connection is closed after the header
/// timeout like a new one. The cost is one spurious poll per write.
pub struct WakeAfterWrite<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for WakeAfterWrite<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WakeAfterWrite<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.0).poll_write(cx, buf);
        wake_if_written(cx, &written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.0).poll_write_vectored(cx, bufs);
        wake_if_written(cx, &written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn wake_if_written(cx: &mut Context<'_>, written: &Poll<std::io::Result<usize>>) {
    if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
        cx.waker().wake_by_ref();
    }
}

#[cfg(test)]
mod tests;
