//! `cairn-bench`: the end-to-end load benchmark of a real Cairn testnet.
//!
//! Prints progress on stderr and, as its last stdout line, one JSON object
//! with the figures (see `cairn_bench::run::Report`). Exits non-zero with a
//! loud message when the network loses safety, supply or a node.

use std::path::{Path, PathBuf};

use clap::Parser;

use cairn_bench::chart::{self, SweepPoint};
use cairn_bench::run::{run_once, Report, RunConfig};
use cairn_bench::testnet::ParamOverrides;
use cairn_bench::workload::Format;

/// Load-test a fresh local Cairn testnet of real cairn-node processes.
///
/// Build the validator first: `cargo build --release` (the benchmark runs
/// the `cairn-node` next to its own executable).
#[derive(Parser, Debug)]
#[command(version)]
struct Options {
    /// Validators in the testnet.
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Load before the measured window starts, seconds.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Offered load in tx/s (open loop). Default: as fast as the network
    /// takes them (closed loop, see --window).
    #[arg(long)]
    rate: Option<f64>,
    /// Funded accounts sending transfers.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Where the testnet, node logs and metrics (and the sweep chart) are
    /// written and kept. Default: a temporary folder removed at the end.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Closed loop: most submitted transactions not yet seen committed.
    #[arg(long, default_value_t = 20_000)]
    window: u64,
    /// Closed loop: transactions pre-signed per second of run (the most the
    /// run can offer).
    #[arg(long, default_value_t = 16_000.0)]
    pool_tps: f64,
    /// Transactions per HTTP batch (default: 1000 closed loop; about 50 ms
    /// of each validator's share open loop).
    #[arg(long)]
    batch_txs: Option<usize>,
    /// Concurrent submitter connections per validator (default 4 open loop,
    /// 2 closed loop).
    #[arg(long)]
    workers: Option<usize>,
    /// Longest wait after the window for submitted transactions to commit.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Genesis parameter block_txs_max.
    #[arg(long)]
    block_txs_max: Option<usize>,
    /// Genesis parameter block_interval_ms.
    #[arg(long)]
    block_interval_ms: Option<u64>,
    /// Genesis parameter view_timeout_ms.
    #[arg(long)]
    view_timeout_ms: Option<u64>,
    /// Genesis parameter mempool_txs_max.
    #[arg(long)]
    mempool_txs_max: Option<usize>,
    /// The validator binary. Default: cairn-node next to this executable.
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// How batch bodies are encoded: the binary batch
    /// (application/octet-stream, the format high-rate clients use) or a
    /// JSON array (what people send), to compare the two.
    #[arg(long, value_enum, default_value_t = Format::Binary)]
    format: Format,
    /// The latency-at-load curve: find the peak (closed loop), then run
    /// 100 tx/s and 10 %, 25 %, 50 %, 75 %, 90 % and 100 % of the peak's
    /// committed tx/s open loop, each on a fresh network; writes sweep.json
    /// (committed tx/s, p50 and p99 per point) and throughput_latency.svg
    /// into --out or the current folder. The last JSON line is the peak run
    /// with a "sweep" array.
    #[arg(long)]
    sweep: bool,
    /// Only redraw throughput_latency.svg (into --out or the current
    /// folder) from a sweep.json that --sweep wrote; runs nothing.
    #[arg(long, value_name = "SWEEP_JSON")]
    chart_from: Option<PathBuf>,
    /// Signature bound (tx/s) to draw with --chart-from.
    #[arg(long, default_value_t = 0.0)]
    chart_bound: f64,
}

fn config(options: &Options) -> RunConfig {
    RunConfig {
        validators: options.validators,
        accounts: options.accounts,
        duration_s: options.duration,
        warmup_s: options.warmup,
        rate_tps: options.rate,
        window_txs: options.window,
        pool_tps: options.pool_tps,
        batch_txs: options.batch_txs,
        workers: options.workers,
        drain_s: options.drain,
        out: options.out.clone(),
        params: ParamOverrides {
            block_interval_ms: options.block_interval_ms,
            block_txs_max: options.block_txs_max,
            view_timeout_ms: options.view_timeout_ms,
            mempool_txs_max: options.mempool_txs_max,
        },
        node_binary: options.node_bin.clone(),
        format: options.format,
    }
}

fn check_options(options: &Options) -> Result<(), String> {
    if options.validators == 0 {
        return Err("--validators must be at least 1".into());
    }
    if !(options.duration > 0.0 && options.warmup >= 0.0 && options.drain >= 0.0) {
        return Err("--duration must be positive, --warmup and --drain not negative".into());
    }
    if options.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err("--rate must be positive".into());
    }
    if options.batch_txs == Some(0) || options.workers == Some(0) || options.window == 0 {
        return Err("--batch-txs, --workers and --window must be positive".into());
    }
    if options.sweep && options.rate.is_some() {
        return Err("--sweep chooses the rates itself; drop --rate".into());
    }
    Ok(())
}

fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string(value).expect("JSON"));
}

fn summary(report: &Report) -> String {
    format!(
        "{:.0} tx/s committed ({:.0} offered), p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, bound {:.0} tx/s (ratio {:.3}), peak RSS {:.0} MiB",
        report.committed_tps,
        report.offered_tps,
        report.p50_ms,
        report.p95_ms,
        report.p99_ms,
        report.bound_tps,
        report.ratio,
        report.rss_mb_max
    )
}

/// The folder for sweep point `name`: a subfolder of --out, or a
/// temporary one.
fn point_out(out: Option<&Path>, name: &str) -> Option<PathBuf> {
    out.map(|dir| dir.join(name))
}

fn sweep(options: &Options) -> Result<serde_json::Value, String> {
    let base = config(options);
    if let Some(out) = &options.out {
        std::fs::create_dir_all(out)
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    }
    eprintln!("cairn-bench: sweep 1: peak (closed loop)");
    let peak = run_once(&RunConfig {
        out: point_out(options.out.as_deref(), "peak"),
        ..base.clone()
    })?;
    eprintln!("cairn-bench: peak: {}", summary(&peak));
    let peak_json = serde_json::to_value(&peak).expect("JSON");
    print_json(&peak_json);
    let mut points = vec![SweepPoint {
        label: "peak (closed loop)".into(),
        open_loop: false,
        offered_tps: peak.offered_tps,
        committed_tps: peak.committed_tps,
        p50_ms: peak.p50_ms,
        p99_ms: peak.p99_ms,
        fraction_of_peak: None,
    }];
    let mut runs = vec![peak_json.clone()];
    for (i, (rate, fraction)) in sweep_rates(peak.committed_tps).into_iter().enumerate() {
        let label = match fraction {
            Some(f) => format!("{:.0} % of peak ({rate} tx/s)", f * 100.0),
            None => format!("{rate} tx/s"),
        };
        eprintln!("cairn-bench: sweep {}: {label} (open loop)", i + 2);
        let report = run_once(&RunConfig {
            rate_tps: Some(rate),
            out: point_out(options.out.as_deref(), &format!("rate-{rate}")),
            ..base.clone()
        })?;
        eprintln!("cairn-bench: {label}: {}", summary(&report));
        let json = serde_json::to_value(&report).expect("JSON");
        print_json(&json);
        runs.push(json);
        points.push(SweepPoint {
            label,
            open_loop: true,
            offered_tps: report.offered_tps,
            committed_tps: report.committed_tps,
            p50_ms: report.p50_ms,
            p99_ms: report.p99_ms,
            fraction_of_peak: fraction,
        });
    }
    let subtitle = format!(
        "cairn-bench: {} validators on {} cores, {} batches, {} s per point, fresh network each",
        options.validators,
        peak.bound.cores,
        options.format.name(),
        options.duration
    );
    let svg = chart::sweep_svg(&points, peak.bound_tps, &subtitle);
    let dir = options.out.clone().unwrap_or_else(|| PathBuf::from("."));
    let points_path = dir.join("sweep.json");
    let points_json = serde_json::to_string_pretty(&points).expect("JSON");
    std::fs::write(&points_path, points_json)
        .map_err(|e| format!("cannot write {}: {e}", points_path.display()))?;
    let path = dir.join("throughput_latency.svg");
    std::fs::write(&path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("cairn-bench: wrote {}", path.display());
    let mut last = peak_json;
    last["sweep"] = serde_json::to_value(&points).expect("JSON");
    last["sweep_runs"] = serde_json::Value::Array(runs);
    Ok(last)
}

/// Fractions of the closed-loop peak the sweep offers open loop.
const SWEEP_FRACTIONS: [f64; 6] = [0.10, 0.25, 0.50, 0.75, 0.90, 1.00];
/// The light-load point of every sweep, tx/s.
const SWEEP_LIGHT_TPS: f64 = 100.0;

/// The open-loop rates of a sweep after a peak of `peak_tps`, lowest
/// first: 100 tx/s, then each fraction of the peak (rounded; a rate at
/// or below 100 tx/s, or repeated, is left out), with its fraction.
fn sweep_rates(peak_tps: f64) -> Vec<(f64, Option<f64>)> {
    let mut rates = vec![(SWEEP_LIGHT_TPS, None)];
    for fraction in SWEEP_FRACTIONS {
        let rate = (peak_tps * fraction).round();
        if rate > rates.last().map_or(0.0, |r| r.0) {
            rates.push((rate, Some(fraction)));
        }
    }
    rates
}

/// `--chart-from`: redraws the chart of an earlier sweep.
fn chart_from(options: &Options, path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let points: Vec<SweepPoint> = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a sweep.json: {e}", path.display()))?;
    let subtitle = format!(
        "cairn-bench: {} validators, fresh network per point",
        options.validators
    );
    let svg = chart::sweep_svg(&points, options.chart_bound, &subtitle);
    let dir = options.out.clone().unwrap_or_else(|| PathBuf::from("."));
    let out = dir.join("throughput_latency.svg");
    std::fs::write(&out, svg).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(serde_json::json!({ "chart": out.display().to_string(), "points": points.len() }))
}

fn main() {
    let options = Options::parse();
    let result = check_options(&options).and_then(|()| {
        if let Some(path) = &options.chart_from {
            chart_from(&options, path)
        } else if options.sweep {
            sweep(&options)
        } else {
            let report = run_once(&config(&options))?;
            eprintln!("cairn-bench: {}", summary(&report));
            Ok(serde_json::to_value(&report).expect("JSON"))
        }
    });
    match result {
        Ok(json) => print_json(&json),
        Err(message) => {
            eprintln!("\ncairn-bench: FAILED: {message}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_offers_100_tx_s_and_each_fraction_of_the_peak() {
        let rates = sweep_rates(10_000.0);
        assert_eq!(
            rates,
            vec![
                (100.0, None),
                (1_000.0, Some(0.10)),
                (2_500.0, Some(0.25)),
                (5_000.0, Some(0.50)),
                (7_500.0, Some(0.75)),
                (9_000.0, Some(0.90)),
                (10_000.0, Some(1.00)),
            ]
        );
        // A tiny peak: fractions at or below 100 tx/s are left out.
        assert_eq!(
            sweep_rates(300.0),
            vec![
                (100.0, None),
                (150.0, Some(0.5)),
                (225.0, Some(0.75)),
                (270.0, Some(0.9)),
                (300.0, Some(1.0)),
            ]
        );
        assert_eq!(sweep_rates(0.0), vec![(100.0, None)]);
    }
}
