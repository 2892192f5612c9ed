//! The safety record on real processes (issue 10): `HOME/safety.json` holds
//! the last votes a validator signed, outside its data folder. A data folder
//! that lost its record refuses to start; a lost data folder resyncs and
//! keeps the record.

use std::time::{Duration, Instant};

use cairn_tests::Testnet;
use serde_json::Value;

const BALANCE: u64 = 1_000_000_000;
const ALL: [usize; 4] = [0, 1, 2, 3];

fn record(net: &Testnet, i: usize) -> Value {
    let path = net.home(i).join("safety.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("validator {i}: cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// Commits `count` transfers, each with `--wait`, through validator 0.
fn commit_transfers(net: &Testnet, count: usize) {
    for k in 0..count {
        net.wallet_transfer(k % 4, 0, &net.account_address(1), 1);
    }
}

#[test]
fn a_data_folder_without_its_safety_record_refuses_to_start() {
    let mut net = Testnet::start_all(4, 2, BALANCE);
    net.wait_peers(&ALL, 3, Duration::from_secs(30));
    commit_transfers(&net, 3);
    let tip = net.wait_same_height(&ALL, 3, Duration::from_secs(30));

    // Every validator voted, so every one has a record at a height it
    // voted at, with the votes in it.
    for i in ALL {
        let record = record(&net, i);
        assert_eq!(record["format"], "cairn-safety-1", "{record}");
        let height = record["height"].as_u64().expect("height");
        assert!(
            (1..=tip + 1).contains(&height),
            "validator {i}: record at {height}, tip {tip}: {record}"
        );
        assert!(record["state"].as_str().is_some_and(|s| !s.is_empty()));
    }

    let victim = 1;
    assert_eq!(net.terminate(victim), Some(0), "SIGTERM stops it cleanly");
    let path = net.home(victim).join("safety.json");
    let saved = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();

    let log_before = net.log(victim).len();
    net.start(victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = net.try_exit_status(victim) {
            break status;
        }
        assert!(
            net.try_height(victim).is_none(),
            "validator {victim} started without its safety record, on a data folder with blocks"
        );
        assert!(
            Instant::now() < deadline,
            "validator {victim} neither exited nor served"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "exited 0 without its record");
    let log = net.log(victim);
    let this_run = &log[log_before..];
    assert!(
        this_run
            .lines()
            .any(|line| line.contains("safety.json") && line.contains("missing")),
        "no line names the missing record:\n{this_run}"
    );
    assert!(!this_run.contains("panicked at"), "{this_run}");

    // With the record restored it starts and catches up.
    std::fs::write(&path, saved).unwrap();
    net.start(victim);
    net.wait_api(victim);
    commit_transfers(&net, 1);
    let tip = net.wait_same_height(&ALL, tip + 1, Duration::from_secs(60));
    net.assert_same_chain(&ALL, tip);
}

/// A data folder lost with its validator running (`kill -9`, then the
/// folder deleted): the record stays beside the key, the validator resyncs
/// from its peers, and its record never goes below what it was.
#[test]
fn a_lost_data_folder_resyncs_and_keeps_the_record() {
    let mut net = Testnet::start_all(4, 2, BALANCE);
    net.wait_peers(&ALL, 3, Duration::from_secs(30));
    commit_transfers(&net, 4);
    let tip = net.wait_same_height(&ALL, 4, Duration::from_secs(30));

    let victim = 2;
    net.kill9(victim);
    let before = record(&net, victim)["height"].as_u64().unwrap();
    std::fs::remove_dir_all(net.data_dir(victim)).unwrap();
    net.start(victim);
    net.wait_api(victim);
    commit_transfers(&net, 2);
    let tip = net.wait_same_height(&ALL, tip + 2, Duration::from_secs(60));
    net.assert_same_chain(&ALL, tip);
    let after = record(&net, victim)["height"].as_u64().unwrap();
    assert!(
        after >= before,
        "the record went back from {before} to {after}"
    );
}

/// A validator whose whole home is wiped but its key and config (`kill -9`,
/// then the data folder and `safety.json` deleted): it starts as one that
/// lost its record, signs nothing while the others commit, catches up, says
/// in its log when it stops abstaining, and then votes again (its record,
/// which said it abstained, becomes an ordinary one above the old tip).
#[test]
fn a_wiped_home_abstains_then_votes_again() {
    let mut net = Testnet::start_all(4, 2, BALANCE);
    net.wait_peers(&ALL, 3, Duration::from_secs(30));
    commit_transfers(&net, 3);
    let tip = net.wait_same_height(&ALL, 3, Duration::from_secs(30));

    let victim = 3;
    net.kill9(victim);
    std::fs::remove_dir_all(net.data_dir(victim)).unwrap();
    for entry in std::fs::read_dir(net.home(victim)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("safety") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let log_before = net.log(victim).len();
    net.start(victim);
    net.wait_api(victim);
    assert_eq!(record(&net, victim)["abstaining"], true, "says so at once");
    let this_run = || net.log(victim)[log_before..].to_string();
    assert!(this_run().contains("abstaining: this validator has no record"));

    // The three others commit without it; it catches up and stops.
    commit_transfers(&net, 4);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !this_run().contains("stopped abstaining") {
        assert!(
            Instant::now() < deadline,
            "still abstaining:\n{}",
            this_run()
        );
        commit_transfers(&net, 1);
    }
    let caught_up = net.height(0);
    commit_transfers(&net, 2);
    let end = net.wait_same_height(&ALL, caught_up + 1, Duration::from_secs(60));
    net.assert_same_chain(&ALL, end);
    let record = record(&net, victim);
    assert!(record.get("abstaining").is_none(), "{record}");
    assert!(record["height"].as_u64().unwrap() > tip, "{record}");
    assert!(!this_run().contains("panicked at"));
}
