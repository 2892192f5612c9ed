//! Network partitions on real processes: four validators whose every link
//! passes the loopback fault proxy ([`cairn_tests::proxy`]), under a
//! steady load of transfers.
//!
//! - a 2|2 partition for 20 s: no block commits on either side (neither
//!   has a quorum), then the heal;
//! - one validator isolated: the other three go on, it catches up after;
//! - one-way partitions: a validator that sends but hears nothing, then one
//!   that hears but is not heard;
//! - a slow link: 200 ms each way on every link of the primary.
//!
//! After each: every validator holds the same chain, every block's
//! certificate verifies against the genesis validator set, the supply is
//! conserved, every transaction answered with 202 is committed exactly once
//! (in the chain, and `committed` at the same height on every validator),
//! and the chain moved again within a few view timeouts of the heal.
//! Figures are printed with `eprintln!`; run with `--nocapture`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_core::PublicKey;
use cairn_tests::proxy::{Mode, Proxy};
use cairn_tests::{assert_certificate_verifies, try_http_get, try_http_post, tx_hash, Testnet};

const VALIDATORS: usize = 4;
const ALL: [usize; VALIDATORS] = [0, 1, 2, 3];
/// Signatures in a commit certificate of four validators.
const QUORUM: usize = 3;
/// Loading accounts: one thread each.
const ACCOUNTS: usize = 8;
const BALANCE: u64 = 1_000_000_000;
/// Pause between two submissions of one loading thread: 8 threads at
/// 40 ms offer about 200 transactions a second.
const SUBMIT_INTERVAL: Duration = Duration::from_millis(40);
/// Transactions of one account acknowledged and not yet committed, at most
/// (below the node's per-sender limit of 1,000).
const UNCOMMITTED_PER_ACCOUNT_MAX: u64 = 400;
/// Messages already past the proxy when a cut starts may still land: the
/// "no commit" checks start this long after the cut.
const CUT_SETTLE: Duration = Duration::from_secs(1);
/// The chain must commit again within this many (base) view timeouts of a
/// heal.
const HEAL_VIEW_TIMEOUTS: u32 = 4;

/// A transaction a validator answered with 202.
#[derive(Clone, Debug)]
struct Acked {
    hash: String,
    node: usize,
}

/// Background transfers: one thread per account, pinned to one validator
/// (account `k` to validator `k % 4`), each submitting its next transfer
/// every [`SUBMIT_INTERVAL`] and recording every 202. A transaction that
/// got no answer is re-sent as itself (signing is deterministic).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    problems: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(net: &Testnet) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let everyone: Vec<PublicKey> = (0..ACCOUNTS)
            .map(|j| net.account_keypair(j).public())
            .collect();
        let threads = (0..ACCOUNTS)
            .map(|k| {
                let node = k % VALIDATORS;
                let signer = net.signer(k, 0);
                let to = everyone[(k + 1) % ACCOUNTS];
                let url = net.api(node);
                let (stop, acked, problems) = (stop.clone(), acked.clone(), problems.clone());
                std::thread::spawn(move || {
                    load_thread(signer, to, node, url, stop, acked, problems)
                })
            })
            .collect();
        Load {
            stop,
            acked,
            problems,
            threads,
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the threads; returns every acknowledged transaction and
    /// asserts no thread met an unexpected answer.
    fn stop(mut self) -> Vec<Acked> {
        self.halt();
        let problems = self.problems.lock().unwrap().clone();
        assert!(problems.is_empty(), "the load met: {problems:#?}");
        let acked = self.acked.lock().unwrap().clone();
        acked
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    /// Also on a failing test: no thread outlives it.
    fn drop(&mut self) {
        self.halt();
    }
}

fn account_nonce(url: &str, address: &PublicKey) -> Option<u64> {
    try_http_get(&format!("{url}/v1/accounts/{address}"))?.json["nonce"].as_u64()
}

fn load_thread(
    mut signer: cairn_tests::Signer,
    to: PublicKey,
    node: usize,
    url: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    problems: Arc<Mutex<Vec<String>>>,
) {
    let mut committed_nonce = 0;
    let mut since_check = 0;
    while !stop.load(Ordering::Relaxed) {
        if since_check >= 25 || signer.nonce - committed_nonce >= UNCOMMITTED_PER_ACCOUNT_MAX {
            since_check = 0;
            if let Some(nonce) = account_nonce(&url, &signer.address()) {
                committed_nonce = nonce;
            }
            if signer.nonce - committed_nonce >= UNCOMMITTED_PER_ACCOUNT_MAX {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let nonce = signer.nonce;
        let tx = signer.sign_with_nonce(to, 1 + nonce % 7, nonce);
        let body = serde_json::to_string(&tx).unwrap();
        match try_http_post(&format!("{url}/v1/transactions"), &body) {
            None => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Some(a) if a.status == 202 => {
                let hash = tx_hash(&tx);
                if a.json["hash"].as_str() != Some(hash.as_str()) {
                    problems
                        .lock()
                        .unwrap()
                        .push(format!("202 with the wrong hash: {}", a.json));
                    return;
                }
                acked.lock().unwrap().push(Acked { hash, node });
                signer.nonce += 1;
            }
            // An earlier try whose answer was lost got in and committed.
            Some(a) if a.json["code"] == "nonce_too_low" => signer.nonce += 1,
            // Busy: the same transaction again, a little later.
            Some(a) if a.status == 429 || a.status == 503 => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Some(a) => {
                problems.lock().unwrap().push(format!(
                    "validator {node} refused nonce {nonce}: {} {}",
                    a.status, a.json
                ));
                return;
            }
        }
        since_check += 1;
        std::thread::sleep(SUBMIT_INTERVAL);
    }
}

/// A testnet with the proxy on every link, all validators connected through
/// it.
fn start() -> (Testnet, Proxy) {
    let mut net = Testnet::create(VALIDATORS, ACCOUNTS, BALANCE);
    let proxy = Proxy::install(&net);
    for i in ALL {
        net.start(i);
    }
    for i in ALL {
        net.wait_api(i);
    }
    net.wait_peers(&ALL, (VALIDATORS - 1) as u64, Duration::from_secs(30));
    for a in ALL {
        for b in a + 1..VALIDATORS {
            assert_eq!(
                proxy.open_connections(a, b),
                1,
                "link {a}-{b} passes the proxy"
            );
        }
    }
    (net, proxy)
}

fn view_timeout(net: &Testnet) -> Duration {
    Duration::from_millis(net.genesis.genesis.params.view_timeout_ms)
}

fn heights(net: &Testnet, nodes: &[usize]) -> Vec<u64> {
    nodes.iter().map(|&i| net.height(i)).collect()
}

/// Waits until every one of `nodes` is above `height`; returns how long
/// that took.
fn time_until_above(net: &Testnet, nodes: &[usize], height: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if nodes
            .iter()
            .all(|&i| net.try_height(i).is_some_and(|h| h > height))
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "validators {nodes:?} not above height {height} within {limit:?}: {:?}",
            heights(net, nodes)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts no validator of `nodes` commits anything for `duration`.
fn assert_no_commits(net: &Testnet, nodes: &[usize], duration: Duration, what: &str) -> Vec<u64> {
    let base = heights(net, nodes);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let now = heights(net, nodes);
        assert_eq!(
            now, base,
            "{what}: validators {nodes:?} committed during the partition"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    base
}

/// Heals every link and asserts the chain commits on every validator within
/// [`HEAL_VIEW_TIMEOUTS`] view timeouts; returns that time.
fn heal_and_time(net: &Testnet, proxy: &Proxy, what: &str) -> Duration {
    let top = *heights(net, &ALL).iter().max().unwrap();
    proxy.heal_all();
    let limit = view_timeout(net) * HEAL_VIEW_TIMEOUTS;
    let took = time_until_above(net, &ALL, top, limit);
    eprintln!("{what}: every validator committed above height {top} {took:?} after the heal (limit {limit:?})");
    took
}

/// The checks after every fault: stops the load, waits for every
/// acknowledged transaction, then compares chains, certificates,
/// transaction statuses, states and supply on every validator.
fn check_everything(net: &Testnet, load: Load, what: &str) {
    let started = Instant::now();
    let acked = load.stop();
    assert!(!acked.is_empty(), "{what}: nothing acknowledged");

    // Every acknowledged transaction reaches the chain (read on validator 0).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut in_chain: HashMap<String, Vec<u64>> = HashMap::new();
    let mut read_to = 0;
    loop {
        let top = net.height(0);
        for h in read_to + 1..=top {
            let block = net.get(0, &format!("/v1/blocks/{h}"));
            assert_eq!(block.status, 200, "block {h}");
            for tx in block.json["transactions"].as_array().expect("transactions") {
                let hash = tx["hash"].as_str().expect("hash").to_string();
                in_chain.entry(hash).or_default().push(h);
            }
        }
        read_to = top;
        let missing: Vec<&Acked> = acked
            .iter()
            .filter(|a| !in_chain.contains_key(&a.hash))
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            // What each validator knows of the first missing one, and how
            // its mempool stands.
            for i in 0..net.validator_count() {
                let status = net.get(i, &format!("/v1/transactions/{}", missing[0].hash));
                let metrics = ureq::get(&format!("{}/metrics", net.api(i)))
                    .call()
                    .ok()
                    .and_then(|r| r.into_string().ok())
                    .unwrap_or_default();
                let pool: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        l.starts_with("cairn_mempool_")
                            || l.starts_with("cairn_p2p_gossip_dropped")
                            || l.starts_with("cairn_p2p_frames_dropped")
                            || l.starts_with("cairn_admitted_transactions_total")
                            || l.starts_with("cairn_rejected_transactions_total")
                    })
                    .collect();
                eprintln!(
                    "{what}: validator {i}: {} {}; {pool:?}",
                    status.status, status.json
                );
                for line in net
                    .log(i)
                    .lines()
                    .filter(|l| l.contains("gossiping again") || l.contains("window opened"))
                {
                    eprintln!("{what}: validator {i}: {line}");
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {} acknowledged transactions never committed, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for a in &acked {
        assert_eq!(
            in_chain[&a.hash].len(),
            1,
            "{what}: {} (acknowledged by validator {}) is in the chain at heights {:?}",
            a.hash,
            a.node,
            in_chain[&a.hash]
        );
    }

    // One chain, every certificate valid, on every validator.
    let height = net.wait_same_height(&ALL, read_to, Duration::from_secs(60));
    let chains: Vec<Vec<String>> = std::thread::scope(|s| {
        let readers: Vec<_> = ALL
            .iter()
            .map(|&i| {
                s.spawn(move || {
                    (1..=height)
                        .map(|h| {
                            let block = net.get(i, &format!("/v1/blocks/{h}"));
                            assert_eq!(block.status, 200, "block {h} on validator {i}");
                            assert_certificate_verifies(net, &block.json, QUORUM);
                            block.json["hash"].as_str().unwrap().to_string()
                        })
                        .collect()
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for i in 1..VALIDATORS {
        if let Some(h) = (0..height as usize).find(|&h| chains[i][h] != chains[0][h]) {
            panic!(
                "{what}: fork at height {}: validator 0 has {}, validator {i} has {}",
                h + 1,
                chains[0][h],
                chains[i][h]
            );
        }
    }

    // Every acknowledged transaction is committed, at its one height, as
    // every validator reports it.
    std::thread::scope(|s| {
        for i in ALL {
            let (acked, in_chain) = (&acked, &in_chain);
            s.spawn(move || {
                for a in acked {
                    let status = net.get(i, &format!("/v1/transactions/{}", a.hash)).json;
                    assert_eq!(
                        status["status"], "committed",
                        "{what}: on validator {i}: {status}"
                    );
                    assert_eq!(
                        status["height"].as_u64(),
                        Some(in_chain[&a.hash][0]),
                        "{what}: height of {} on validator {i}",
                        a.hash
                    );
                }
            });
        }
    });

    net.assert_same_state_and_supply(&ALL);
    eprintln!(
        "{what}: {} transactions acknowledged, all committed once; {height} blocks identical \
         on all validators, every certificate valid, supply conserved (checked in {:?})",
        acked.len(),
        started.elapsed()
    );
}

#[test]
fn partition_2_2_for_20_s_under_load_then_heals() {
    let started = Instant::now();
    let (net, proxy) = start();
    let load = Load::start(&net);
    let before = heights(&net, &ALL);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        time_until_above(
            &net,
            &ALL,
            *before.iter().max().unwrap(),
            Duration::from_secs(10)
        ) < Duration::from_secs(10)
    );

    let cut = Instant::now();
    let at_cut = heights(&net, &ALL);
    let acked_at_cut = load.acked_count();
    proxy.partition(&[0, 1], &[2, 3]);
    std::thread::sleep(CUT_SETTLE);
    let settled = assert_no_commits(
        &net,
        &ALL,
        Duration::from_secs(20) - CUT_SETTLE,
        "2|2 partition",
    );
    let discarded: u64 = [(0, 2), (0, 3), (1, 2), (1, 3), (2, 0), (3, 1)]
        .iter()
        .map(|&(a, b)| proxy.counts(a, b).discarded)
        .sum();
    eprintln!(
        "2|2: heights at the cut {at_cut:?}, after {CUT_SETTLE:?} {settled:?}, unchanged for \
         the remaining {:?}; {} transactions acknowledged during the cut; {discarded} bytes \
         thrown away on the cut links",
        cut.elapsed() - CUT_SETTLE,
        load.acked_count() - acked_at_cut
    );
    assert!(discarded > 0, "the cut links carried nothing to throw away");
    for (&a, &b) in at_cut.iter().zip(&settled) {
        assert!(
            b <= a + 1,
            "more than the block in flight committed after the cut"
        );
    }

    heal_and_time(&net, &proxy, "2|2");
    std::thread::sleep(Duration::from_secs(2));
    check_everything(&net, load, "2|2");
    eprintln!("2|2: test took {:?}", started.elapsed());
}

#[test]
fn isolated_validator_rejoins_and_catches_up() {
    let started = Instant::now();
    let (net, proxy) = start();
    let load = Load::start(&net);
    std::thread::sleep(Duration::from_secs(2));

    proxy.isolate(3);
    std::thread::sleep(CUT_SETTLE);
    let others = [0, 1, 2];
    let before = heights(&net, &others);
    let isolated =
        assert_no_commits(&net, &[3], Duration::from_secs(10), "isolated validator 3")[0];
    let after = heights(&net, &others);
    let gained = after
        .iter()
        .min()
        .unwrap()
        .saturating_sub(*before.iter().max().unwrap());
    eprintln!(
        "isolated: validators 0-2 went {before:?} -> {after:?} in 10 s; validator 3 stayed at \
         {isolated}"
    );
    assert!(
        *after.iter().min().unwrap() >= before.iter().max().unwrap() + 3,
        "the three connected validators kept committing (gained {gained})"
    );

    // Every validator above the others' height at the heal: validator 3
    // caught up and the chain moved on.
    let target = *heights(&net, &others).iter().max().unwrap();
    let took = heal_and_time(&net, &proxy, "isolated");
    eprintln!(
        "isolated: validator 3 caught up {} blocks (and the chain moved on) within {took:?}",
        target - isolated
    );
    std::thread::sleep(Duration::from_secs(2));
    check_everything(&net, load, "isolated");
    eprintln!("isolated: test took {:?}", started.elapsed());
}

#[test]
fn one_way_partitions_keep_the_chain_moving() {
    let started = Instant::now();
    let (net, proxy) = start();
    let load = Load::start(&net);
    std::thread::sleep(Duration::from_secs(2));

    // Validator 0 (the dialer of all its links) sends but hears nothing.
    for j in [1, 2, 3] {
        proxy.set(j, 0, Mode::Blackhole);
    }
    let phase = |name: &str, connected: &[usize]| {
        std::thread::sleep(CUT_SETTLE);
        let before = heights(&net, connected);
        std::thread::sleep(Duration::from_secs(8));
        let after = heights(&net, connected);
        eprintln!("{name}: validators {connected:?} went {before:?} -> {after:?} in 8 s");
        assert!(
            *after.iter().min().unwrap() >= before.iter().max().unwrap() + 3,
            "{name}: validators {connected:?} kept committing"
        );
    };
    phase("deaf validator 0", &[1, 2, 3]);
    assert!(proxy.counts(1, 0).discarded > 0);
    assert!(proxy.counts(0, 1).forwarded > 0, "validator 0 still sends");
    heal_and_time(&net, &proxy, "deaf validator 0");

    // Validator 3 (the acceptor of all its links) hears but is not heard.
    for j in [0, 1, 2] {
        proxy.set(3, j, Mode::Blackhole);
    }
    phase("mute validator 3", &[0, 1, 2]);
    heal_and_time(&net, &proxy, "mute validator 3");

    std::thread::sleep(Duration::from_secs(2));
    check_everything(&net, load, "one-way");
    eprintln!("one-way: test took {:?}", started.elapsed());
}

#[test]
fn slow_links_of_the_primary_keep_the_chain_moving() {
    let started = Instant::now();
    let (net, proxy) = start();
    let load = Load::start(&net);
    std::thread::sleep(Duration::from_secs(2));

    let rate = |seconds: u64| {
        let before = heights(&net, &ALL);
        std::thread::sleep(Duration::from_secs(seconds));
        let after = heights(&net, &ALL);
        let gained = after
            .iter()
            .min()
            .unwrap()
            .saturating_sub(*before.iter().max().unwrap());
        (before, after, gained as f64 / seconds as f64)
    };
    let (_, _, normal) = rate(3);
    let primary = net.leader_index(0);
    let latency = Duration::from_millis(200);
    for j in ALL.into_iter().filter(|&j| j != primary) {
        proxy.set_link(primary, j, Mode::Delay(latency));
    }
    let (before, after, slow) = rate(10);
    eprintln!(
        "slow links: {latency:?} each way on every link of validator {primary} (the primary): \
         {before:?} -> {after:?} in 10 s; {slow:.1} blocks/s (before: {normal:.1} blocks/s)"
    );
    assert!(
        *after.iter().min().unwrap() >= before.iter().max().unwrap() + 3,
        "every validator kept committing over the slow links"
    );
    let delayed: u64 = ALL
        .into_iter()
        .filter(|&j| j != primary)
        .map(|j| proxy.counts(primary, j).delayed_chunks + proxy.counts(j, primary).delayed_chunks)
        .sum();
    assert!(delayed > 0, "the proxy delayed nothing");

    heal_and_time(&net, &proxy, "slow links");
    // A reset link is redialed, through the proxy.
    let other = if primary == 0 { 1 } else { 0 };
    proxy.drop_connections(other, primary);
    std::thread::sleep(Duration::from_millis(200));
    net.wait_peers(&ALL, (VALIDATORS - 1) as u64, Duration::from_secs(10));
    assert_eq!(proxy.open_connections(other, primary), 1);
    std::thread::sleep(Duration::from_secs(2));
    check_everything(&net, load, "slow links");
    eprintln!("slow links: test took {:?}", started.elapsed());
}

#[test]
fn bad_peer_addresses_stop_the_node_with_the_reason() {
    let net = Testnet::create(2, 1, BALANCE);
    let path = net.home(0).join("node.json");
    let text = std::fs::read_to_string(&path).unwrap();
    for (peers, expected) in [
        (
            r#"{"nobody": "127.0.0.1:7001"}"#,
            "no validator is named \"nobody\"",
        ),
        (r#"{"node1": "0.0.0.0:7001"}"#, "not an address to dial"),
    ] {
        let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
        config["peer_addresses"] = serde_json::from_str(peers).unwrap();
        std::fs::write(&path, config.to_string()).unwrap();
        let output = cairn_tests::run(
            "cairn-node",
            &["run", "--home", net.home(0).to_str().unwrap()],
        );
        let stderr = cairn_tests::stderr(&output);
        assert!(!output.status.success(), "{peers}: the node started");
        assert!(
            stderr.contains("node.json") && stderr.contains(expected),
            "{peers}: {stderr}"
        );
    }
}
