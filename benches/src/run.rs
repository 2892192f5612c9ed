//! One benchmark run: fresh testnet, pre-signed load, measured window,
//! drain, checks, report.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bound::{self, Bound};
use crate::checks::{self, Checked};
use crate::follow::{self, Followed};
use crate::nodemetrics::{self, ViewChangeCount};
use crate::procstat;
use crate::stats::{self, Percentiles};
use crate::submit::{self, Mode, Shared, NOT_SENT};
use crate::testnet::{self, ParamOverrides, Testnet, ACCOUNT_BALANCE, CHAIN_ID};
use crate::workload::{self, Format, Workload};

/// Open-loop batches are sized so each validator gets one about this often.
const OPEN_BATCH_INTERVAL_S: f64 = 0.05;
/// Largest batch the benchmark sends (the API takes up to 10,000).
const BATCH_TXS_MAX: usize = 2_000;
/// Shortest measured window for which the report fits the RSS slope:
/// shorter runs are mostly start-up growth, not a trend.
pub const RSS_SLOPE_DURATION_MIN_S: f64 = 300.0;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub validators: usize,
    pub accounts: usize,
    /// Length of the measured window, seconds.
    pub duration_s: f64,
    /// Load before the measured window, seconds.
    pub warmup_s: f64,
    /// Offered rate (open loop); `None`: as fast as the network takes them.
    pub rate_tps: Option<f64>,
    /// Closed loop: most submitted transactions not yet seen committed.
    pub window_txs: u64,
    /// Closed loop: transactions pre-signed per second of run.
    pub pool_tps: f64,
    /// Transactions per batch (default: by mode and rate).
    pub batch_txs: Option<usize>,
    /// Submitter threads per validator (default: 4 open, 2 closed).
    pub workers: Option<usize>,
    /// Longest wait for submitted transactions to commit after the window.
    pub drain_s: f64,
    /// Where the testnet is written and kept; `None`: a temporary folder.
    pub out: Option<PathBuf>,
    pub params: ParamOverrides,
    /// The validator binary; `None`: `cairn-node` next to this executable.
    pub node_binary: Option<PathBuf>,
    /// How batch bodies are encoded.
    pub format: Format,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            validators: 4,
            accounts: 1000,
            duration_s: 60.0,
            warmup_s: 5.0,
            rate_tps: None,
            window_txs: 20_000,
            pool_tps: 12_000.0,
            batch_txs: None,
            workers: None,
            drain_s: 30.0,
            out: None,
            params: ParamOverrides::default(),
            node_binary: None,
            format: Format::Binary,
        }
    }
}

/// The result of one run. Serialized as the final JSON line.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub committed_tps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub bound_tps: f64,
    /// `committed_tps / bound_tps`.
    pub ratio: f64,
    pub validators: usize,
    /// Our transactions seen committed inside the measured window.
    pub txs_committed: u64,
    pub duration_s: f64,
    /// Largest peak RSS (VmHWM) over the nodes, MiB.
    pub rss_mb_max: f64,
    /// Transactions submitted inside the measured window, per second.
    pub offered_tps: f64,
    /// CPU seconds each node used inside the measured window.
    pub cpu_s: Vec<f64>,
    /// Peak RSS of each node, MiB.
    pub rss_mb: Vec<f64>,
    /// "open" (fixed rate) or "closed" (bounded outstanding transactions).
    pub mode: &'static str,
    /// How batch bodies were encoded: "binary" or "json".
    pub format: Format,
    pub rate_tps: Option<f64>,
    pub warmup_s: f64,
    pub accounts: usize,
    pub latency: Percentiles,
    pub txs_submitted_total: u64,
    pub txs_accepted_total: u64,
    pub txs_rejected_total: u64,
    /// Transactions sent again after a refusal for lack of room (each
    /// resend counts).
    pub txs_resent: u64,
    pub rejected_by_code: std::collections::BTreeMap<String, u64>,
    /// Accepted transactions never seen committed (drain timed out).
    pub txs_uncommitted: u64,
    pub pool_exhausted: bool,
    /// Blocks committed inside the measured window and their mean size.
    pub blocks_in_window: usize,
    pub txs_per_block_mean: f64,
    /// Node CPU over the window as a share of all cores (1.0 = saturated).
    pub node_cpu_share: f64,
    /// CPU seconds the benchmark process itself used inside the window.
    pub bench_cpu_s: f64,
    pub sse_ok: bool,
    pub bound: Bound,
    pub checks: Checked,
    pub block_txs_max: usize,
    pub block_interval_ms: u64,
    /// View changes during the run (from just before the load starts to the
    /// end of the drain), summed over the validators: each node's
    /// `cairn_view_changes_total` difference, or, where a node has no such
    /// counter, the rises of its `cairn_view` gauge polled every second
    /// during the load (a lower bound; see [`nodemetrics`]).
    pub view_changes: u64,
    /// With a measured window of [`RSS_SLOPE_DURATION_MIN_S`] or more: the
    /// least-squares slope, in MiB per minute, of the largest node's current
    /// RSS (`VmRSS`, sampled every second) over the second half of the
    /// window. Absent for shorter runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_mb_slope_per_min: Option<f64>,
    /// Safety record writes (each fsynced before a vote leaves) per block
    /// per validator over the run, and their mean time in milliseconds,
    /// from the nodes' `cairn_safety_*` counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_writes_per_block: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_write_ms_mean: Option<f64>,
}

fn say(message: &str) {
    eprintln!("cairn-bench: {message}");
}

/// Runs one benchmark. Every node process is stopped before this returns,
/// whatever happens.
pub fn run_once(config: &RunConfig) -> Result<Report, String> {
    let node_binary = match &config.node_binary {
        Some(path) if path.is_file() => path.clone(),
        Some(path) => return Err(format!("--node-bin {} is not a file", path.display())),
        None => testnet::default_node_binary()?,
    };
    if config.accounts < config.validators {
        return Err("--accounts must be at least --validators".into());
    }
    let mut net = Testnet::create(
        config.out.as_deref(),
        config.validators,
        config.accounts,
        &config.params,
    )?;
    say(&format!(
        "testnet of {} validators in {}",
        config.validators,
        net.dir.display()
    ));

    let total_s = config.warmup_s + config.duration_s;
    let (mode, tx_count, batch_txs, workers) = match config.rate_tps {
        Some(rate) => {
            let per_validator = rate / config.validators as f64 * OPEN_BATCH_INTERVAL_S;
            let batch = config
                .batch_txs
                .unwrap_or((per_validator.round() as usize).clamp(1, BATCH_TXS_MAX));
            let count = (rate * total_s).ceil() as usize + config.validators * batch;
            (
                Mode::Open { rate_tps: rate },
                count,
                batch,
                config.workers.unwrap_or(4),
            )
        }
        None => (
            Mode::Closed {
                window_txs: config.window_txs,
            },
            (config.pool_tps * total_s).ceil() as usize,
            config.batch_txs.unwrap_or(1000),
            config.workers.unwrap_or(2),
        ),
    };
    say(&format!(
        "signing {tx_count} transfers over {} accounts",
        config.accounts
    ));
    let signing = Instant::now();
    let load = Arc::new(workload::build(
        &net.accounts,
        CHAIN_ID,
        config.format,
        config.validators,
        tx_count,
        batch_txs,
    ));
    say(&format!(
        "signed in {:.1} s; {} {} batches of up to {batch_txs}",
        signing.elapsed().as_secs_f64(),
        load.batch_count,
        config.format.name()
    ));

    let sample: Vec<_> = (0..1024)
        .map(|k| workload::transfer(&net.accounts, CHAIN_ID, k))
        .collect();
    let bound = bound::measure(&sample, config.validators);
    say(&format!(
        "signature bound: {:.0} verifications/s/core (batch {}), single {:.0}/s, {} cores / {} validators = {:.0} tx/s",
        bound.batch_verify_per_s,
        bound.best_batch,
        bound.single_verify_per_s,
        bound.cores,
        bound.validators,
        bound.bound_tps
    ));

    net.start_ready(&node_binary)?;
    let mut views = ViewChangeCount::start(nodemetrics::read_views(&net.api_urls)?);
    say("all validators answer and are connected; starting the load");

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(total_s);
    let shared = Arc::new(Shared::new(load.batch_count, start, end));
    // Followed on the last validator, not on validator 0: validator 0 is
    // the primary of view 0, and fetching every block as JSON (hex for
    // every hash, key and signature) took about 4 % of its CPU.
    let followed_node = net.api_urls.len() - 1;
    let follower = follow::start(&net.api_urls[followed_node], load.clone(), shared.clone())?;
    let submitters = submit::start(load.clone(), &net.api_urls, mode, workers, shared.clone());

    let window = watch(&mut net, &shared, config, end, &mut views);
    // Whatever happened, let the threads finish.
    shared.stop.store(window.is_err(), Ordering::Release);
    for handle in submitters {
        let _ = handle.join();
    }
    let window = window?;
    drain(&mut net, &shared, config)?;
    shared.stop.store(true, Ordering::Release);
    let followed = follower
        .join()
        .map_err(|_| "the follower thread panicked".to_string())??;
    for (i, reading) in nodemetrics::read_views(&net.api_urls)?
        .into_iter()
        .enumerate()
    {
        views.observe(i, reading);
    }

    let pids = net.pids();
    let rss_mb: Vec<f64> = pids
        .iter()
        .map(|&pid| procstat::peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0)
        .collect();
    save_metrics(&net);
    say("checking that every node holds the same chain and supply");
    let supply = ACCOUNT_BALANCE as u128 * config.accounts as u128;
    let checked = checks::run(&net.api_urls, &followed.blocks, &net.accounts, supply)?;
    if followed.foreign_txs > 0 {
        return Err(format!(
            "{} committed transactions were not submitted by this benchmark",
            followed.foreign_txs
        ));
    }
    let unclean = net.stop();
    if !unclean.is_empty() {
        return Err(format!(
            "validators did not stop cleanly: {}",
            unclean.join("; ")
        ));
    }
    Ok(report(
        config, mode, &load, &shared, &followed, window, rss_mb, bound, checked, &net, &views,
    ))
}

/// Resource figures sampled over the measured window.
struct Window {
    cpu_s: Vec<f64>,
    bench_cpu_s: f64,
    /// `(seconds since the window started, largest node RSS in MiB)`, one a
    /// second inside the window.
    rss_samples: Vec<(f64, f64)>,
}

/// The largest current RSS over the nodes, MiB.
fn max_rss_mb(net: &Testnet) -> f64 {
    net.pids()
        .iter()
        .map(|&pid| procstat::rss_kib(pid).unwrap_or(0) as f64 / 1024.0)
        .fold(0.0, f64::max)
}

/// Shows progress every second until `end`, checks the nodes stay up,
/// samples CPU at the measured window's edges and the largest node's RSS
/// every second inside it, and polls the nodes' views (or view-change
/// counters) into `views`.
fn watch(
    net: &mut Testnet,
    shared: &Shared,
    config: &RunConfig,
    end: Instant,
    views: &mut ViewChangeCount,
) -> Result<Window, String> {
    let terminal = std::io::stderr().is_terminal();
    let window_start = shared.start + Duration::from_secs_f64(config.warmup_s);
    let cpu = |net: &Testnet| -> Vec<f64> {
        net.pids()
            .iter()
            .map(|&pid| procstat::cpu_seconds(pid).unwrap_or(0.0))
            .collect()
    };
    let mut cpu_start: Option<(Vec<f64>, f64)> = None;
    let mut rss_samples = Vec::new();
    let mut last_committed = 0;
    let mut quiet_ticks = 0;
    let mut tick = shared.start;
    while Instant::now() < end {
        tick += Duration::from_secs(1);
        let now = Instant::now();
        if tick > now {
            std::thread::sleep(tick - now);
        }
        net.check_alive()?;
        if cpu_start.is_none() && Instant::now() >= window_start {
            cpu_start = Some((cpu(net), procstat::own_cpu_seconds()));
        }
        // Every second, also where nodes count view changes themselves: the
        // progress line shows the count so far.
        nodemetrics::poll_views(&net.api_urls, views);
        let rss_mb = max_rss_mb(net);
        if let Some(since) = Instant::now().checked_duration_since(window_start) {
            rss_samples.push((since.as_secs_f64(), rss_mb));
        }
        let committed = shared.committed.load(Ordering::Acquire);
        let line = format!(
            "{:>5.0} s  submitted {:>8}  committed {:>8}  {:>6} tx/s  rejected {}  rss {:.0} MiB  view changes {}",
            shared.start.elapsed().as_secs_f64(),
            shared.submitted.load(Ordering::Acquire),
            committed,
            committed - last_committed,
            shared.rejected.load(Ordering::Acquire),
            rss_mb,
            views.total(),
        );
        last_committed = committed;
        if terminal {
            eprint!("\r{line}   ");
            let _ = std::io::stderr().flush();
        } else {
            // Not a terminal (a log file): one line every 5 s.
            quiet_ticks += 1;
            if quiet_ticks == 5 {
                eprintln!("{line}");
                quiet_ticks = 0;
            }
        }
    }
    if terminal {
        eprintln!();
    }
    let (start_cpu, start_own) = cpu_start.unwrap_or_else(|| (vec![0.0; net.pids().len()], 0.0));
    Ok(Window {
        cpu_s: cpu(net)
            .iter()
            .zip(start_cpu)
            .map(|(end, start)| end - start)
            .collect(),
        bench_cpu_s: procstat::own_cpu_seconds() - start_own,
        rss_samples,
    })
}

/// Waits until every accepted transaction is seen committed, or the drain
/// time runs out.
fn drain(net: &mut Testnet, shared: &Shared, config: &RunConfig) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs_f64(config.drain_s);
    loop {
        let accepted = shared.accepted.load(Ordering::Acquire);
        let committed = shared.committed.load(Ordering::Acquire);
        if committed >= accepted {
            return Ok(());
        }
        if Instant::now() > deadline {
            say(&format!(
                "drain: {} accepted transactions still uncommitted after {} s",
                accepted - committed,
                config.drain_s
            ));
            return Ok(());
        }
        net.check_alive()?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Keeps each node's `/metrics` next to its log.
fn save_metrics(net: &Testnet) {
    let agent = follow::agent();
    for (i, url) in net.api_urls.iter().enumerate() {
        if let Ok(response) = agent.get(&format!("{url}/metrics")).call() {
            if let Ok(text) = response.into_string() {
                let _ = std::fs::write(net.home(i).join("metrics.txt"), text);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    config: &RunConfig,
    mode: Mode,
    load: &Workload,
    shared: &Shared,
    followed: &Followed,
    window: Window,
    rss_mb: Vec<f64>,
    bound: Bound,
    checks: Checked,
    net: &Testnet,
    views: &ViewChangeCount,
) -> Report {
    let view_changes = views.total();
    let blocks = followed.blocks.len().max(1) as f64;
    let safety = views.safety_writes().filter(|&(writes, _)| writes > 0);
    let from_us = (config.warmup_s * 1e6) as u64;
    let to_us = ((config.warmup_s + config.duration_s) * 1e6) as u64;
    let in_window = |t: u64| t != NOT_SENT && (from_us..to_us).contains(&t);
    let sent_us = |k: usize| shared.sent_us[load.batch_of_tx[k] as usize].load(Ordering::Acquire);
    let txs_committed = followed.commit_us.iter().filter(|&&t| in_window(t)).count() as u64;
    let mut latencies: Vec<u64> = (0..load.tx_count)
        .filter(|&k| in_window(sent_us(k)) && followed.commit_us[k] != NOT_SENT)
        .map(|k| followed.commit_us[k].saturating_sub(sent_us(k)))
        .collect();
    let offered = (0..load.tx_count)
        .filter(|&k| in_window(sent_us(k)))
        .count();
    let latency = stats::percentiles(&mut latencies);
    let window_blocks: Vec<_> = followed
        .blocks
        .iter()
        .filter(|b| in_window(b.seen_us))
        .collect();
    let committed_tps = txs_committed as f64 / config.duration_s;
    let accepted = shared.accepted.load(Ordering::Acquire);
    let committed_total = followed
        .commit_us
        .iter()
        .filter(|&&t| t != NOT_SENT)
        .count() as u64;
    let params = &net.genesis.genesis.params;
    let rss_mb_slope_per_min = rss_slope(&window.rss_samples, config.duration_s);
    Report {
        committed_tps,
        p50_ms: latency.p50_ms,
        p95_ms: latency.p95_ms,
        p99_ms: latency.p99_ms,
        bound_tps: bound.bound_tps,
        ratio: committed_tps / bound.bound_tps,
        validators: config.validators,
        txs_committed,
        duration_s: config.duration_s,
        rss_mb_max: rss_mb.iter().copied().fold(0.0, f64::max),
        offered_tps: offered as f64 / config.duration_s,
        node_cpu_share: window.cpu_s.iter().sum::<f64>() / config.duration_s / bound.cores as f64,
        cpu_s: window.cpu_s,
        rss_mb,
        mode: match mode {
            Mode::Open { .. } => "open",
            Mode::Closed { .. } => "closed",
        },
        format: config.format,
        rate_tps: config.rate_tps,
        warmup_s: config.warmup_s,
        accounts: config.accounts,
        latency,
        txs_submitted_total: shared.submitted.load(Ordering::Acquire),
        txs_accepted_total: accepted,
        txs_rejected_total: shared.rejected.load(Ordering::Acquire),
        txs_resent: shared.retries.load(Ordering::Acquire),
        rejected_by_code: shared.rejected_by_code.lock().expect("counts").clone(),
        txs_uncommitted: accepted.saturating_sub(committed_total),
        pool_exhausted: shared.pool_exhausted(load),
        blocks_in_window: window_blocks.len(),
        txs_per_block_mean: if window_blocks.is_empty() {
            0.0
        } else {
            window_blocks.iter().map(|b| b.tx_count).sum::<usize>() as f64
                / window_blocks.len() as f64
        },
        bench_cpu_s: window.bench_cpu_s,
        sse_ok: followed.sse_ok,
        bound,
        checks,
        block_txs_max: params.block_txs_max,
        block_interval_ms: params.block_interval_ms,
        view_changes,
        rss_mb_slope_per_min,
        safety_writes_per_block: safety
            .map(|(writes, _)| writes as f64 / blocks / net.api_urls.len() as f64),
        safety_write_ms_mean: safety.map(|(writes, us)| us as f64 / 1e3 / writes as f64),
    }
}

/// The RSS growth the report gives: the slope over the second half of a
/// window of `duration_s` (samples at seconds since the window started), or
/// `None` when the window is shorter than [`RSS_SLOPE_DURATION_MIN_S`].
fn rss_slope(samples: &[(f64, f64)], duration_s: f64) -> Option<f64> {
    if duration_s < RSS_SLOPE_DURATION_MIN_S {
        return None;
    }
    let second_half: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= duration_s / 2.0)
        .collect();
    stats::slope_per_min(&second_half)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the second half counts: fast start-up growth, then 1 MiB a
    /// minute.
    #[test]
    fn rss_slope_fits_the_second_half_of_long_runs_only() {
        let samples: Vec<(f64, f64)> = (0..=300)
            .map(|s| {
                let t = s as f64;
                (t, if t < 150.0 { t } else { 150.0 + t / 60.0 })
            })
            .collect();
        let slope = rss_slope(&samples, 300.0).unwrap();
        assert!((slope - 1.0).abs() < 1e-9, "{slope}");
        assert_eq!(rss_slope(&samples, 299.0), None);
        assert_eq!(rss_slope(&[], 300.0), None);
    }
}
