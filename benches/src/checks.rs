//! End-of-run safety checks: every node holds the same block hash at every
//! height, the chain links, total supply over the genesis accounts is
//! unchanged, and the nonces account for every committed transaction.

use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde::Deserialize;

use cairn_core::Keypair;

use crate::follow::{agent, get_json, BlockSeen};

/// How long the nodes get to reach one common tip once the load stops.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the checks found (they passed).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Checked {
    /// The common tip height.
    pub height: u64,
    /// Transactions in blocks 1..=height.
    pub chain_txs: u64,
    pub total_supply: u128,
}

#[derive(Deserialize)]
struct BlockLink {
    height: u64,
    hash: String,
    parent_hash: String,
    transactions: Vec<IgnoredAny>,
}

/// Readings of the whole state before giving up on a chain that keeps moving.
const CHECK_ATTEMPTS_MAX: usize = 20;

/// Waits until every node reports the same height twice in a row.
pub fn wait_converged(api_urls: &[String]) -> Result<u64, String> {
    let agent = agent();
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut last: Option<Vec<u64>> = None;
    loop {
        let heights = api_urls
            .iter()
            .map(|url| {
                let status: serde_json::Value = get_json(&agent, &format!("{url}/v1/status"))?;
                status["height"]
                    .as_u64()
                    .ok_or_else(|| format!("{url}: status without a height"))
            })
            .collect::<Result<Vec<u64>, String>>()?;
        let same = heights.iter().all(|h| *h == heights[0]);
        if same && last.as_ref() == Some(&heights) {
            return Ok(heights[0]);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "nodes did not converge on one tip within {CONVERGE_TIMEOUT:?}: heights {heights:?}"
            ));
        }
        last = Some(heights);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The chain of one node, heights 0..=tip: (hash, tx count), checking links.
fn chain_of(url: &str, tip: u64) -> Result<Vec<(String, u64)>, String> {
    let agent = agent();
    let mut chain: Vec<(String, u64)> = Vec::with_capacity(tip as usize + 1);
    for height in 0..=tip {
        let block: BlockLink = get_json(&agent, &format!("{url}/v1/blocks/{height}"))?;
        if block.height != height {
            return Err(format!(
                "{url}: asked for block {height}, got {}",
                block.height
            ));
        }
        if let Some((parent, _)) = chain.last() {
            if &block.parent_hash != parent {
                return Err(format!(
                    "{url}: block {height} does not link to block {}",
                    height - 1
                ));
            }
        }
        chain.push((block.hash, block.transactions.len() as u64));
    }
    Ok(chain)
}

/// Sum of balances and of nonces of `accounts` on one node.
fn sums_of(url: &str, accounts: &[Keypair]) -> Result<(u128, u128), String> {
    let agent = agent();
    let mut balance = 0u128;
    let mut nonce = 0u128;
    for key in accounts {
        let account: serde_json::Value =
            get_json(&agent, &format!("{url}/v1/accounts/{}", key.public()))?;
        let field = |name: &str| {
            account[name]
                .as_u64()
                .ok_or_else(|| format!("{url}: account without a {name}"))
        };
        balance += field("balance")? as u128;
        nonce += field("nonce")? as u128;
    }
    Ok((balance, nonce))
}

/// One node's chain (hash and transaction count per height) and its sums of
/// balances and nonces.
type NodeView = (Vec<(String, u64)>, (u128, u128));

/// Runs every check against the nodes at `api_urls`, with the blocks the
/// follower saw on the first node. An error says loudly what differs.
pub fn run(
    api_urls: &[String],
    followed: &[BlockSeen],
    accounts: &[Keypair],
    supply: u128,
) -> Result<Checked, String> {
    // The accounts are read at whatever height a node is at: the reading
    // counts only if every node was still at the same tip afterwards
    // (transactions still committing after the drain would otherwise look
    // like a state violation).
    let mut attempts = 0;
    let (tip, results) = loop {
        let tip = wait_converged(api_urls)?;
        let results: Vec<Result<NodeView, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = api_urls
                .iter()
                .map(|url| scope.spawn(move || Ok((chain_of(url, tip)?, sums_of(url, accounts)?))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("check thread"))
                .collect()
        });
        if wait_converged(api_urls)? == tip {
            break (tip, results);
        }
        attempts += 1;
        if attempts >= CHECK_ATTEMPTS_MAX {
            return Err(format!(
                "the chain kept moving while it was being read ({CHECK_ATTEMPTS_MAX} tries)"
            ));
        }
    };
    let mut per_node = Vec::new();
    for (url, result) in api_urls.iter().zip(results) {
        per_node.push(result.map_err(|e| format!("checking {url}: {e}"))?);
    }
    let (reference, _) = &per_node[0];
    for (i, (chain, _)) in per_node.iter().enumerate() {
        if let Some(h) = (0..=tip as usize).find(|&h| chain[h].0 != reference[h].0) {
            return Err(format!(
                "SAFETY VIOLATION: validator {i} has block {} at height {h}, validator 0 has {}",
                chain[h].0, reference[h].0
            ));
        }
    }
    for seen in followed {
        let Some((hash, _)) = reference.get(seen.height as usize) else {
            continue;
        };
        if *hash != seen.hash || reference[seen.height as usize - 1].0 != seen.parent_hash {
            return Err(format!(
                "SAFETY VIOLATION: block {} seen during the run ({}) differs from the final chain ({hash})",
                seen.height, seen.hash
            ));
        }
    }
    let chain_txs: u64 = reference.iter().map(|(_, count)| count).sum();
    for (i, (_, (balance, nonce))) in per_node.iter().enumerate() {
        if *balance != supply {
            return Err(format!(
                "SUPPLY VIOLATION: validator {i} holds {balance} over the genesis accounts, genesis had {supply}"
            ));
        }
        if *nonce != chain_txs as u128 {
            return Err(format!(
                "STATE VIOLATION: validator {i}: nonces sum to {nonce} but the chain holds {chain_txs} transactions"
            ));
        }
    }
    Ok(Checked {
        height: tip,
        chain_txs,
        total_supply: supply,
    })
}
