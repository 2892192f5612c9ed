//! Issue 12, for operators: `/health` and `/ready` for load balancers and
//! orchestrators, and `--log-format json` for log collectors, on real
//! processes.

use std::time::Duration;

use cairn_tests::{wait_for, Testnet};
use serde_json::Value;

const BALANCE: u64 = 1_000_000;

/// `/health` answers while the process serves; `/ready` only while the
/// validator sees a quorum (itself included) and is not catching up.
#[test]
fn health_and_readiness_follow_the_quorum() {
    let mut net = Testnet::create(4, 2, BALANCE);
    net.start(0);
    net.wait_api(0);
    let health = net.get(0, "/health");
    assert_eq!(health.status, 200, "{}", health.json);
    // Alone: 1 of 4 validators, a quorum is 3.
    let ready = net.get(0, "/ready");
    assert_eq!(ready.status, 503, "{}", ready.json);
    assert_eq!(ready.json["code"], "no_quorum", "{}", ready.json);
    assert!(ready.json["error"].as_str().unwrap().contains("1 of 4"));
    net.start(1);
    net.wait_api(1);
    assert_eq!(net.get(0, "/ready").status, 503, "2 of 4 is not a quorum");
    net.start(2);
    net.wait_api(2);
    wait_for(
        "validator 0 ready with 3 of 4",
        Duration::from_secs(30),
        || (net.get(0, "/ready").status == 200).then_some(()),
    );
    let ready = net.get(0, "/ready").json;
    assert_eq!(
        (ready["validators_seen"].as_u64(), ready["quorum"].as_u64()),
        (Some(3), Some(3))
    );
    // Losing a peer takes readiness away again.
    net.kill9(1);
    wait_for(
        "validator 0 unready after a peer died",
        Duration::from_secs(30),
        || (net.get(0, "/ready").status == 503).then_some(()),
    );
    assert_eq!(net.get(0, "/health").status, 200);
}

/// With `--log-format json`, every line a validator writes is one JSON
/// object, and the events an operator filters by carry their fields.
#[test]
fn json_logs_are_one_object_per_line_with_event_fields() {
    let mut net = Testnet::create(1, 2, BALANCE);
    net.start_with(0, &["--log-format", "json"]);
    net.wait_api(0);
    let bob = net.account_address(1);
    net.wallet_transfer(0, 0, &bob, 5);
    // The commit's log line is written right after the block is stored, so
    // it may trail the API's answer by a moment.
    let log = wait_for("a commit event in the log", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(net.log_path(0)).expect("log");
        log.contains("\"event\":\"commit\"").then_some(log)
    });
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{log}");
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
        assert!(line["message"].is_string(), "{line}");
    }
    let commit = lines
        .iter()
        .find(|l| l["event"] == "commit")
        .unwrap_or_else(|| panic!("no commit event in {log}"));
    assert!(
        commit["height"].as_u64().is_some_and(|h| h >= 1),
        "{commit}"
    );
    assert_eq!(commit["hash"].as_str().map(str::len), Some(64), "{commit}");
}

/// A scrape of `/metrics` passes `promtool check metrics` (Debian's
/// `prometheus` package), and names the series INTERFACE.md asks for.
#[test]
fn metrics_pass_promtool() {
    if !has_promtool() {
        return;
    }
    let net = Testnet::start_all(1, 2, BALANCE);
    let bob = net.account_address(1);
    net.wallet_transfer(0, 0, &bob, 5);
    assert_eq!(net.get(0, "/v1/accounts/xyz").status, 400);
    // The commit's metrics are updated right after the block is stored,
    // so they may trail the API's answer by a moment.
    wait_for("the commit in the metrics", Duration::from_secs(10), || {
        (metric(&net, 0, "cairn_block_commit_latency_seconds_count") >= Some(1.0)).then_some(())
    });
    let answer = ureq::get(&format!("{}/metrics", net.api(0)))
        .call()
        .expect("metrics");
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "the Prometheus text format, not OpenMetrics"
    );
    let scrape = answer.into_string().expect("text");
    for series in [
        "cairn_view_changes_total",
        "cairn_mempool_ready",
        "cairn_mempool_parked",
        "cairn_http_requests_total{route=\"/v1/accounts/{address}\",status=\"400\"} 1",
        "cairn_http_requests_total{route=\"/v1/transactions\",status=\"202\"} 1",
    ] {
        assert!(scrape.contains(series), "no {series} in:\n{scrape}");
    }
    assert!(
        !scrape.contains("# EOF"),
        "no OpenMetrics trailer:\n{scrape}"
    );
    let count = sample(&scrape, "cairn_block_commit_latency_seconds_count");
    assert!(count >= Some(1.0), "{scrape}");
    assert_eq!(
        sample(
            &scrape,
            "cairn_block_commit_latency_seconds_bucket{le=\"+Inf\"}"
        ),
        count
    );
    promtool_check(&scrape);
}

/// Issue 12, the series added for operators, on a running network of four:
/// each peer's p2p bytes and frames grow both ways as transfers commit
/// (series for the genesis peers only), the consensus queue's depth stands
/// beside its drops and drains to zero, and a validator that was killed
/// and caught up counted its catch-up and reads "not syncing, target =
/// height". Its scrape passes promtool too.
#[test]
fn metrics_count_peer_traffic_queue_depth_and_sync() {
    let mut net = Testnet::start_all(4, 3, BALANCE);
    for i in 0..4 {
        wait_for(
            &format!("validator {i} connected to all peers"),
            Duration::from_secs(30),
            || (metric(&net, i, "cairn_peers_connected") == Some(3.0)).then_some(()),
        );
    }
    let bob = net.account_address(1);
    let before = scrape(&net, 0);
    for amount in 1..=3 {
        net.wallet_transfer(0, 0, &bob, amount);
    }
    let series = |name: &str, peer: usize, direction: &str| {
        format!("{name}{{peer=\"{peer}\",direction=\"{direction}\"}}")
    };
    // Validator 0 commits on a quorum, so the last votes of the slowest
    // peer may still be on their way: wait until every series has grown.
    let grown = |after: &str| {
        for peer in 1..4 {
            for direction in ["sent", "received"] {
                for name in ["cairn_p2p_bytes_total", "cairn_p2p_frames_total"] {
                    let series = series(name, peer, direction);
                    let (was, is) = (sample(&before, &series), sample(after, &series));
                    if was.is_none() || is <= was {
                        return Err(format!("{series}: {was:?} -> {is:?}"));
                    }
                }
            }
        }
        Ok(())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = scrape(&net, 0);
        match grown(&after) {
            Ok(()) => break after,
            Err(e) if std::time::Instant::now() > deadline => panic!("not grown: {e}\n{after}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    for peer in 1..4 {
        for direction in ["sent", "received"] {
            // Each frame takes at least its length prefixes and a Noise tag.
            let bytes = sample(&after, &series("cairn_p2p_bytes_total", peer, direction));
            let frames = sample(&after, &series("cairn_p2p_frames_total", peer, direction));
            let (bytes, frames) = (bytes.unwrap(), frames.unwrap());
            assert!(bytes >= 22.0 * frames, "{bytes} bytes in {frames} frames");
        }
    }
    assert!(
        !after.contains("peer=\"0\"") && !after.contains("peer=\"4\""),
        "series only for the other genesis validators:\n{after}"
    );
    for name in ["cairn_consensus_events_dropped_total", "cairn_syncs_total"] {
        assert!(sample(&after, name).is_some(), "no {name} in:\n{after}");
    }
    wait_for(
        "validator 0's consensus queue drained",
        Duration::from_secs(10),
        || {
            let text = scrape(&net, 0);
            (sample(&text, "cairn_consensus_events_queued") == Some(0.0)
                && sample(&text, "cairn_consensus_events_queued_bytes") == Some(0.0))
            .then_some(())
        },
    );
    let settled = |text: &str| {
        sample(text, "cairn_syncing") == Some(0.0)
            && sample(text, "cairn_sync_target_height").is_some()
            && sample(text, "cairn_sync_target_height") == sample(text, "cairn_height")
    };
    wait_for(
        "validator 0 not syncing, its target its height",
        Duration::from_secs(10),
        || settled(&scrape(&net, 0)).then_some(()),
    );
    if has_promtool() {
        promtool_check(&after);
    }

    // Validator 3 loses its disk and comes back to a quiet chain: the
    // blocks it lacks were delivered to its old process, so it must fetch
    // them (on its peers' `Decided`, or its own idle poll when no vote
    // shows it behind: either is a catch-up, and counted).
    net.kill9(3);
    std::fs::remove_dir_all(net.data_dir(3)).expect("delete validator 3's data folder");
    for amount in 7..=8 {
        net.wallet_transfer(0, 0, &bob, amount);
    }
    net.start(3);
    net.wait_api(3);
    let text = wait_for(
        "validator 3 caught up on a quiet chain",
        Duration::from_secs(30),
        || {
            let text = scrape(&net, 3);
            (net.height(3) == net.height(0) && settled(&text)).then_some(text)
        },
    );
    assert!(
        sample(&text, "cairn_syncs_total") >= Some(1.0),
        "validator 3 counted its quiet catch-up:\n{text}"
    );

    // Validator 3 misses blocks, then comes back while blocks keep
    // committing: it catches up, and its sync gauges settle.
    net.kill9(3);
    for amount in 4..=6 {
        net.wallet_transfer(0, 0, &bob, amount);
    }
    let missed = net.height(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let api = net.api(0);
    let mut signer = net.signer(2, 0);
    let recipient = net.account_keypair(1).public();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Bounded: at most 30 s of traffic.
            for _ in 0..300 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let tx = signer.next(recipient, 1);
                let answer = cairn_tests::http_post(
                    &format!("{api}/v1/transactions"),
                    &serde_json::to_string(&tx).unwrap(),
                );
                if answer.status != 202 {
                    // Traffic only has to show validator 3 it is behind;
                    // a refusal (a sender cap) ends it rather than park
                    // the rest behind a nonce gap.
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        net.start(3);
        net.wait_api(3);
        wait_for("validator 3 caught up", Duration::from_secs(30), || {
            (net.height(3) > missed + 2).then_some(())
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    // Its sync count is not asserted here: the frames its peers queued for
    // it while it was down (a peer's queue outlives its connection) may
    // carry it through the heights it missed without a sync.
    wait_for(
        "validator 3 caught up and its sync gauges settled",
        Duration::from_secs(30),
        || (net.height(3) == net.height(0) && settled(&scrape(&net, 3))).then_some(()),
    );
}

fn has_promtool() -> bool {
    cairn_tests::machine_has(
        "the promtool check",
        cairn_tests::program_runs("promtool"),
        "promtool (Debian's prometheus package)",
    )
}

/// Validator `i`'s `/metrics` text.
fn scrape(net: &Testnet, i: usize) -> String {
    ureq::get(&format!("{}/metrics", net.api(i)))
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("metrics text")
}

/// The value of the sample `series` (its name and labels as written) in
/// Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

fn metric(net: &Testnet, i: usize, series: &str) -> Option<f64> {
    sample(&scrape(net, i), series)
}

/// `promtool check metrics` finds nothing to say about `scrape`.
fn promtool_check(scrape: &str) {
    use std::io::Write;
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let output = check.wait_with_output().expect("promtool");
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}{}\n{scrape}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
