//! Submitters: threads that POST the pre-built batches to the validators,
//! either at a fixed offered rate (open loop) or keeping a bounded number of
//! submitted-but-uncommitted transactions (closed loop).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::api::BatchEntryJson;

use crate::workload::{Batch, Workload};

/// A batch that was never sent.
pub const NOT_SENT: u64 = u64::MAX;
/// Timeout of one batch request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How the load is offered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Send at `rate_tps` whatever happens (open loop).
    Open { rate_tps: f64 },
    /// Keep at most `window_txs` submitted transactions uncommitted.
    Closed { window_txs: u64 },
}

/// Counters shared by submitters, the follower and the progress display.
pub struct Shared {
    pub start: Instant,
    /// No batch is sent after this.
    pub end: Instant,
    /// When each batch's request started, µs since `start` ([`NOT_SENT`]).
    pub sent_us: Vec<AtomicU64>,
    /// Transactions in batches whose request has started.
    pub submitted: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Our transactions seen committed (written by the follower).
    pub committed: AtomicU64,
    pub rejected_by_code: Mutex<BTreeMap<String, u64>>,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn new(batch_count: usize, start: Instant, end: Instant) -> Shared {
        Shared {
            start,
            end,
            sent_us: (0..batch_count).map(|_| AtomicU64::new(NOT_SENT)).collect(),
            submitted: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            rejected_by_code: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        }
    }

    pub fn elapsed_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Whether some validator's last batch went out: the pre-signed pool
    /// ran dry, so the offered load may have been limited by it. (Open loop
    /// signs one batch per validator more than the rate needs.)
    pub fn pool_exhausted(&self, workload: &Workload) -> bool {
        workload.batches.iter().any(|list| {
            list.last()
                .is_some_and(|b| self.sent_us[b.id as usize].load(Ordering::Acquire) != NOT_SENT)
        })
    }

    fn outstanding(&self) -> u64 {
        let done = self.committed.load(Ordering::Acquire) + self.rejected.load(Ordering::Acquire);
        self.submitted.load(Ordering::Acquire).saturating_sub(done)
    }

    fn reject(&self, code: &str, count: u64) {
        self.rejected.fetch_add(count, Ordering::AcqRel);
        *self
            .rejected_by_code
            .lock()
            .expect("rejection counts")
            .entry(code.to_string())
            .or_default() += count;
    }
}

/// Starts `workers_per_validator` submitter threads per validator.
pub fn start(
    workload: Arc<Workload>,
    api_urls: &[String],
    mode: Mode,
    workers_per_validator: usize,
    shared: Arc<Shared>,
) -> Vec<std::thread::JoinHandle<()>> {
    let total = workload.tx_count as f64;
    let mut handles = Vec::new();
    for (v, url) in api_urls.iter().enumerate() {
        let next = Arc::new(AtomicUsize::new(0));
        let batches = &workload.batches[v];
        // Open loop: batch j is due when the transactions before it, sent at
        // this validator's share of the rate, have gone out.
        let share = batches.iter().map(|b| b.tx_count as f64).sum::<f64>() / total;
        let mut due_us = Vec::with_capacity(batches.len());
        let mut before = 0.0;
        let stagger = v as f64 / api_urls.len() as f64;
        for batch in batches {
            due_us.push(match mode {
                Mode::Open { rate_tps } => {
                    let per_batch_s = batch.tx_count as f64 / (rate_tps * share);
                    ((before / (rate_tps * share) + stagger * per_batch_s) * 1e6) as u64
                }
                Mode::Closed { .. } => 0,
            });
            before += batch.tx_count as f64;
        }
        let due_us = Arc::new(due_us);
        for w in 0..workers_per_validator {
            let (workload, shared, next, due_us) = (
                workload.clone(),
                shared.clone(),
                next.clone(),
                due_us.clone(),
            );
            let url = format!("{url}/v1/transactions/batch");
            let handle = std::thread::Builder::new()
                .name(format!("submit-{v}-{w}"))
                .spawn(move || {
                    let batches = &workload.batches[v];
                    worker(&url, batches, &due_us, &next, mode, &shared)
                })
                .expect("spawn a submitter thread");
            handles.push(handle);
        }
    }
    handles
}

fn worker(
    url: &str,
    batches: &[Batch],
    due_us: &[u64],
    next: &AtomicUsize,
    mode: Mode,
    shared: &Shared,
) {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .build();
    loop {
        if shared.stop.load(Ordering::Acquire) || Instant::now() >= shared.end {
            return;
        }
        let j = next.fetch_add(1, Ordering::AcqRel);
        let Some(batch) = batches.get(j) else {
            return;
        };
        match mode {
            Mode::Open { .. } => {
                let due = shared.start + Duration::from_micros(due_us[j]);
                if due >= shared.end {
                    return;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            Mode::Closed { window_txs } => {
                while shared.outstanding() + batch.tx_count as u64 > window_txs
                    && shared.outstanding() > 0
                {
                    if shared.stop.load(Ordering::Acquire) || Instant::now() >= shared.end {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        send(&agent, url, batch, shared);
    }
}

fn send(agent: &ureq::Agent, url: &str, batch: &Batch, shared: &Shared) {
    let count = batch.tx_count as u64;
    shared.sent_us[batch.id as usize].store(shared.elapsed_us(), Ordering::Release);
    shared.submitted.fetch_add(count, Ordering::AcqRel);
    let answer = agent
        .post(url)
        .set("content-type", "application/json")
        .send_bytes(&batch.body);
    let response = match answer {
        Ok(response) => response,
        Err(ureq::Error::Status(status, response)) => {
            let body = response.into_string().unwrap_or_default();
            let code = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("http_{status}"));
            shared.reject(&code, count);
            return;
        }
        Err(_) => {
            shared.reject("transport_error", count);
            return;
        }
    };
    let body = response.into_string().unwrap_or_default();
    // Fast path: no entry carries an error code (a `"code":` key cannot occur
    // inside an escaped JSON string).
    if !body.contains("\"code\":") {
        shared.accepted.fetch_add(count, Ordering::AcqRel);
        return;
    }
    match serde_json::from_str::<Vec<BatchEntryJson>>(&body) {
        Ok(entries) => {
            let mut accepted = 0;
            for entry in entries {
                match entry.code {
                    None => accepted += 1,
                    Some(code) => shared.reject(&code, 1),
                }
            }
            shared.accepted.fetch_add(accepted, Ordering::AcqRel);
        }
        Err(_) => shared.reject("bad_answer", count),
    }
}
