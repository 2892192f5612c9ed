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
    if !cairn_tests::machine_has(
        "the promtool test",
        cairn_tests::program_runs("promtool"),
        "promtool (Debian's prometheus package)",
    ) {
        return;
    }
    let net = Testnet::start_all(1, 2, BALANCE);
    let bob = net.account_address(1);
    net.wallet_transfer(0, 0, &bob, 5);
    assert_eq!(net.get(0, "/v1/accounts/xyz").status, 400);
    let scrape = ureq::get(&format!("{}/metrics", net.api(0)))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    for series in [
        "cairn_view_changes_total",
        "cairn_mempool_ready",
        "cairn_mempool_parked",
        "cairn_http_requests_total{route=\"/v1/accounts/{address}\",status=\"400\"} 1",
        "cairn_http_requests_total{route=\"/v1/transactions\",status=\"202\"} 1",
    ] {
        assert!(scrape.contains(series), "no {series} in:\n{scrape}");
    }
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
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
