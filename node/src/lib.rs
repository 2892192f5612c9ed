//! The Cairn validator: the runtime that drives the pure consensus replica.
//!
//! One OS thread owns the [`cairn_consensus::Replica`] and the
//! [`ledger::NodeLedger`]; everything else talks to it through one bounded
//! channel of [`Event`]s. It turns the replica's actions into IO: safety
//! state flushed to sled before a vote leaves, frames handed to the p2p layer.
//! The main tokio runtime serves the p2p connections ([`p2p`]); the warp HTTP
//! API ([`api`], served within limits by [`http_server`]) has a runtime of
//! its own, so a flood of clients cannot starve p2p. Both read committed
//! state straight from sled ([`storage`]) and admit transactions into the
//! shared [`mempool`].

pub mod admission;
pub mod api;
mod consensus_loop;
pub mod http_server;
pub mod ledger;
pub mod localnet;
pub mod mempool;
pub mod metrics;
pub mod p2p;
pub mod safety_record;
pub mod storage;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::broadcast;

use cairn_consensus::SignedMessage;
use cairn_core::api::BlockEventJson;
use cairn_core::{Block, Certificate, Keypair, ValidatorIndex, View};
use cairn_genesis::{Genesis, NodeConfig, NodeLimits, ValidGenesis};

use crate::mempool::{Mempool, MempoolLimits};
use crate::metrics::Metrics;
use crate::p2p::Network;
use crate::storage::Storage;

/// Block events buffered for slow SSE subscribers (they skip on overflow).
pub const SSE_EVENTS_MAX: usize = 1_024;
/// Worker threads of the API's own tokio runtime.
const API_WORKER_THREADS: usize = 2;

/// How much lower than the rest of the node (in `nice` steps) the threads
/// that take in new transactions run: the API runtime (HTTP, JSON, client
/// admission with its signature checks) and gossip admission. Under
/// contention the kernel then gives the consensus thread and the p2p tasks
/// about three times their CPU share, so a flood of submissions slows its
/// own admission (whose backlog refuses clients with `overloaded`) rather
/// than the blocks: no view change for want of CPU.
pub const ADMISSION_NICE: i32 = 5;

/// Lowers the calling thread's CPU priority by [`ADMISSION_NICE`] (Linux:
/// `setpriority` on a thread id applies to that thread only). Lowering
/// needs no privilege; a failure is logged and ignored.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let current = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, current + ADMISSION_NICE)
        };
        if result != 0 {
            tracing::debug!(
                "cannot lower this thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
/// How long open API requests may take to finish once shutdown starts.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// An input for the consensus thread.
#[derive(Debug)]
pub enum Event {
    /// A consensus message that arrived on `peer`'s authenticated
    /// connection (its `from` may name another validator).
    Message {
        peer: ValidatorIndex,
        message: Box<SignedMessage>,
    },
    SyncResponse {
        from: ValidatorIndex,
        blocks: Vec<(Block, Certificate)>,
    },
    /// New transactions arrived: a good moment to propose.
    Nudge,
    Shutdown,
}

/// What the API shows of consensus, refreshed by the consensus thread.
#[derive(Clone, Debug, Default)]
pub struct ConsensusStatus {
    pub view: View,
    pub leader: ValidatorIndex,
    pub syncing: bool,
}

/// State shared by the consensus thread, the p2p tasks and the API.
pub struct Node {
    pub genesis: ValidGenesis,
    /// This node's admission and API limits (`node.json`).
    pub limits: NodeLimits,
    pub key: Keypair,
    pub me: ValidatorIndex,
    pub storage: Storage,
    pub mempool: Mutex<Mempool>,
    pub metrics: Arc<Metrics>,
    pub events: broadcast::Sender<BlockEventJson>,
    /// Becomes true when the node starts shutting down: long-lived API
    /// streams (SSE) end so the graceful shutdown does not wait on them.
    pub stopping: tokio::sync::watch::Sender<bool>,
    pub status: RwLock<ConsensusStatus>,
    pub network: Network,
    consensus_events: Arc<consensus_loop::EventQueue>,
}

impl Node {
    /// Hands an event from `peer` (a frame of `bytes`) to the consensus
    /// thread; drops it if that peer's share of the queue is full (the
    /// protocol tolerates lost messages).
    pub fn deliver(&self, peer: ValidatorIndex, event: Event, bytes: usize) {
        if !self.consensus_events.push(peer, event, bytes) {
            self.metrics.consensus_events_dropped.inc();
            tracing::debug!("consensus queue full for validator {peer}; event dropped");
        }
    }

    /// New transactions: the consensus thread ticks soon (nudges coalesce,
    /// so clients cannot crowd out peers' messages).
    pub fn nudge_consensus(&self) {
        self.consensus_events.nudge();
    }
}

/// Runs a validator from its home folder until SIGINT or SIGTERM.
pub async fn run(home: &Path) -> Result<(), String> {
    let config = NodeConfig::load(home)?;
    let genesis = Genesis::load(&config.genesis).map_err(|e| e.to_string())?;
    let key = cairn_genesis::keyfile::read(&config.key)?;
    let me = genesis.index_of(&key.public()).ok_or_else(|| {
        format!(
            "key {} is not a validator in {}",
            key.public(),
            config.genesis.display()
        )
    })?;
    let dial_addresses = config.dial_addresses(&genesis, me).map_err(|e| {
        format!(
            "{}: {e}",
            home.join(cairn_genesis::NODE_CONFIG_FILE).display()
        )
    })?;
    for (name, address) in &config.peer_addresses {
        tracing::info!("dialing validator {name} at {address} (node.json peer_addresses)");
    }
    let storage = Storage::open(&config.data, &genesis.block(), &genesis.accounts)
        .map_err(|e| format!("cannot open data folder {}: {e}", config.data.display()))?;
    let (safety_record, safety, origin) = safety_record::SafetyRecord::load(home, &storage)?;
    if origin == safety_record::Origin::Fresh {
        tracing::warn!(
            "no safety record ({}) and no blocks: starting as a validator that lost its record \
             (a new one gets an initial record from cairn-genesis testnet)",
            home.join(safety_record::SAFETY_FILE).display()
        );
    }
    let p2p_listen = config.p2p_listen.unwrap_or(genesis.p2p_addresses[me]);
    let api_listen = config.api_listen.unwrap_or(genesis.api_addresses[me]);

    let metrics = Arc::new(Metrics::new(genesis.validators.len(), me));
    let (network, queues) = Network::new(genesis.validators.len(), me, metrics.clone());
    let consensus_events = Arc::new(consensus_loop::EventQueue::new(
        genesis.validators.len(),
        config.limits.consensus_queue_frames_per_peer,
        config.limits.consensus_queue_bytes_per_peer,
        consensus_loop::QueueGauges::of(&metrics),
    ));
    let mempool = Mempool::new(
        genesis.chain_id().to_string(),
        MempoolLimits::new(
            genesis.genesis.params.mempool_txs_max,
            genesis.genesis.params.block_txs_max,
            &config.limits,
        ),
    );
    let node = Arc::new(Node {
        me: ValidatorIndex(me as u16),
        key,
        storage,
        mempool: Mutex::new(mempool),
        metrics,
        events: broadcast::channel(SSE_EVENTS_MAX).0,
        stopping: tokio::sync::watch::channel(false).0,
        status: RwLock::new(ConsensusStatus::default()),
        network,
        consensus_events,
        genesis,
        limits: config.limits.clone(),
    });
    let tip = node.storage.tip_height().map_err(|e| e.to_string())?;
    node.metrics.height.set(tip.0);
    node.metrics.sync_target_height.set(tip.0);
    tracing::info!(
        "validator {me} ({}) of chain {} starting at height {tip}",
        node.key.public(),
        node.genesis.chain_id()
    );

    let consensus_inbox = node.consensus_events.clone();
    let consensus =
        consensus_loop::start(node.clone(), consensus_inbox, safety_record, safety, origin)?;
    tokio::spawn(expire_mempool(node.clone()));
    p2p::start(node.clone(), queues, p2p_listen, dial_addresses)
        .await
        .map_err(|e| format!("cannot listen for peers on {p2p_listen}: {e}"))?;
    let stopping = node.stopping.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping.send_replace(true);
    });
    let mut stopping = node.stopping.subscribe();
    let shutdown = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    match http_server::fit_open_files_limit(node.limits.api_connections_max) {
        Ok(files) => tracing::debug!("open files limit: {files}"),
        Err(e) => tracing::warn!("{e}"),
    }
    // The API runs on its own runtime (its own threads), so a flood of
    // clients cannot starve the p2p tasks on this one.
    let api_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(API_WORKER_THREADS)
        .thread_name("cairn-api")
        .on_thread_start(lower_thread_priority)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the API runtime: {e}"))?;
    let (api_address, api_server) = {
        let _inside = api_runtime.enter();
        api::serve(node.clone(), api_listen, shutdown)
            .map_err(|e| format!("cannot serve the API on {api_listen}: {e}"))?
    };
    let api_server = api_runtime.spawn(api_server);
    tracing::info!("API listening on http://{api_address}");
    let mut stopping = node.stopping.subscribe();
    tokio::select! {
        _ = api_server => {}
        // Open requests get a grace period once shutdown starts, not forever.
        _ = async {
            let _ = stopping.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("API requests still open after {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    // Whatever is still open on the API runtime is dropped, not waited for.
    api_runtime.shutdown_background();

    tracing::info!("shutting down");
    node.consensus_events.shutdown();
    let result = tokio::task::spawn_blocking(move || consensus.join())
        .await
        .map_err(|e| e.to_string())?;
    if result.is_err() {
        return Err("consensus thread panicked".into());
    }
    node.storage.flush().map_err(|e| e.to_string())?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Expires what waited too long in the mempool once a second, so an idle
/// chain (no commit to trigger it) frees its pool too.
async fn expire_mempool(node: Arc<Node>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut mempool = node.mempool.lock().expect("mempool lock");
        if mempool.expire(ledger::now_ms()) > 0 {
            node.metrics.observe_mempool(&mempool);
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
