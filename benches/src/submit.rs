//! Submitters: threads that POST the pre-built batches to the validators,
//! either at a fixed offered rate (open loop) or keeping a bounded number of
//! submitted-but-uncommitted transactions (closed loop).
//!
//! Like any client, they send again what a validator refused for lack of
//! room (`mempool_full`, `sender_limit`, `overloaded`): each account's transfers are a
//! nonce sequence, and one refusal left unrepaired would strand every later
//! transfer of that account behind a gap. Refused entries wait in a
//! per-validator set, in stream order, and go out again (oldest first, one
//! batch at a time, backing off between [`RETRY_INTERVAL_MIN`] and
//! [`RETRY_INTERVAL_MAX`] per submitter) until the window ends, and then,
//! with no new entries, for at most [`REPAIR_MAX`] more. They are counted once as submitted, in
//! `rejected_by_code` per refusal, and in `retries`.
//!
//! And like a client that keeps its nonces in order, a submitter does not
//! send an account's next transfers while an earlier one of that account
//! waits to be sent again: they join the wait, in order (counted
//! submitted when their batch was due, and in `retries` when they go).
//! Sent anyway, they would be parked behind the gap in every validator's
//! pool, work no block can take, filling the room the refused one needs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::api::BatchEntryJson;

use crate::workload::{Batch, Format, Workload};

/// A batch that was never sent.
pub const NOT_SENT: u64 = u64::MAX;
/// Timeout of one batch request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Least and most time between two retry batches of one submitter: it
/// doubles while the validator refuses most of a retry batch, and halves
/// when it takes most (a client backing off, not hammering).
const RETRY_INTERVAL_MIN: Duration = Duration::from_millis(20);
const RETRY_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// Refusals a client sends again: the node had no room now.
const RETRYABLE: [&str; 3] = ["mempool_full", "sender_limit", "overloaded"];
/// How long after the window the submitters go on sending refused entries
/// again (no new ones): each left unsent strands every later transfer of
/// its account, acknowledged and parked behind the gap, so a client keeps
/// sending it.
const REPAIR_MAX: Duration = Duration::from_secs(30);

/// Refused entries of one validator's stream waiting to be sent again:
/// (index of the batch in that validator's list, entry in the batch), and
/// how many of them each account has.
#[derive(Default)]
struct Waiting {
    entries: std::collections::BTreeSet<(u32, u32)>,
    by_account: std::collections::HashMap<u32, u32>,
}

impl Waiting {
    fn insert(&mut self, entry: (u32, u32), account: u32) {
        if self.entries.insert(entry) {
            *self.by_account.entry(account).or_default() += 1;
        }
    }

    /// Takes the `limit` oldest entries.
    fn take(&mut self, limit: usize, batches: &[Batch]) -> Vec<(u32, u32)> {
        let taken: Vec<(u32, u32)> = self.entries.iter().take(limit).copied().collect();
        for entry in &taken {
            self.entries.remove(entry);
            let account = batches[entry.0 as usize].accounts[entry.1 as usize];
            if let std::collections::hash_map::Entry::Occupied(mut count) =
                self.by_account.entry(account)
            {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
        taken
    }

    fn waits(&self, account: u32) -> bool {
        self.by_account.contains_key(&account)
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

type RetrySet = Mutex<Waiting>;

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
    /// Entries sent again after a refusal for lack of room.
    pub retries: AtomicU64,
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
            retries: AtomicU64::new(0),
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
        self.count_refusal(code, count);
    }

    fn count_refusal(&self, code: &str, count: u64) {
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
        let retry: Arc<RetrySet> = Arc::default();
        for w in 0..workers_per_validator {
            let (workload, shared, next, due_us, retry) = (
                workload.clone(),
                shared.clone(),
                next.clone(),
                due_us.clone(),
                retry.clone(),
            );
            let url = format!("{url}/v1/transactions/batch");
            let handle = std::thread::Builder::new()
                .name(format!("submit-{v}-{w}"))
                .spawn(move || {
                    let batches = &workload.batches[v];
                    let format = workload.format;
                    worker(&url, format, batches, &due_us, &next, mode, &shared, &retry)
                })
                .expect("spawn a submitter thread");
            handles.push(handle);
        }
    }
    handles
}

#[allow(clippy::too_many_arguments)]
fn worker(
    url: &str,
    format: Format,
    batches: &[Batch],
    due_us: &[u64],
    next: &AtomicUsize,
    mode: Mode,
    shared: &Shared,
    retry: &RetrySet,
) {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .build();
    let mut last_retry = Instant::now();
    let mut interval = RETRY_INTERVAL_MIN;
    // Sends a batch of refused entries again if it is time; returns whether
    // it did.
    let mut retry_now = |last_retry: &mut Instant| {
        if last_retry.elapsed() < interval {
            return false;
        }
        *last_retry = Instant::now();
        match send_again(&agent, url, format, batches, shared, retry) {
            None => false,
            Some((sent, accepted)) => {
                interval = if accepted * 2 < sent {
                    (interval * 2).min(RETRY_INTERVAL_MAX)
                } else {
                    (interval / 2).max(RETRY_INTERVAL_MIN)
                };
                true
            }
        }
    };
    'window: loop {
        if shared.stop.load(Ordering::Acquire) || Instant::now() >= shared.end {
            break;
        }
        retry_now(&mut last_retry);
        // Closed loop: wait for room before taking the next batch, so that
        // a batch taken is always sent. (Taken first, a batch whose wait
        // outlasted the window was never sent while a later one of the same
        // accounts was, and the later one waited behind the gap for good:
        // every closed-loop run ended with transactions parked.)
        if let Mode::Closed { window_txs } = mode {
            let batch_txs = batches.first().map_or(0, |b| b.tx_count as u64);
            while shared.outstanding() + batch_txs > window_txs && shared.outstanding() > 0 {
                if shared.stop.load(Ordering::Acquire) || Instant::now() >= shared.end {
                    break 'window;
                }
                if !retry_now(&mut last_retry) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let j = next.fetch_add(1, Ordering::AcqRel);
        if j >= batches.len() {
            break;
        }
        match mode {
            Mode::Open { .. } => {
                let due = shared.start + Duration::from_micros(due_us[j]);
                if due >= shared.end {
                    break;
                }
                while Instant::now() < due {
                    if !retry_now(&mut last_retry) {
                        let now = Instant::now();
                        std::thread::sleep(
                            (due.saturating_duration_since(now)).min(RETRY_INTERVAL_MIN),
                        );
                    }
                }
            }
            Mode::Closed { .. } => {}
        }
        send(&agent, url, format, j, batches, shared, retry);
    }
    // The window is over: only refused entries go out again, for at most
    // REPAIR_MAX.
    let repair_end = Instant::now() + REPAIR_MAX;
    while !shared.stop.load(Ordering::Acquire)
        && Instant::now() < repair_end
        && !retry.lock().expect("retry set").is_empty()
    {
        if !retry_now(&mut last_retry) {
            std::thread::sleep(RETRY_INTERVAL_MIN);
        }
    }
}

/// Sends up to one batch's worth of this validator's refused entries again,
/// oldest first. Returns how many went and how many were accepted, if any.
fn send_again(
    agent: &ureq::Agent,
    url: &str,
    format: Format,
    batches: &[Batch],
    shared: &Shared,
    retry: &RetrySet,
) -> Option<(u64, u64)> {
    let limit = batches.first().map_or(1, |b| b.tx_count.max(1) as usize);
    let taken = retry.lock().expect("retry set").take(limit, batches);
    if taken.is_empty() {
        return None;
    }
    let entries: Vec<&[u8]> = taken
        .iter()
        .map(|&(j, i)| batches[j as usize].entry(i as usize))
        .collect();
    let (body, _) = format.body(&entries);
    shared
        .retries
        .fetch_add(taken.len() as u64, Ordering::AcqRel);
    let accepted = post(agent, url, format, &body, &taken, batches, shared, retry);
    Some((taken.len() as u64, accepted))
}

/// Sends batch `j`, but for the entries of accounts with an earlier
/// transfer waiting to be sent again: those join the wait.
fn send(
    agent: &ureq::Agent,
    url: &str,
    format: Format,
    j: usize,
    batches: &[Batch],
    shared: &Shared,
    retry: &RetrySet,
) {
    let batch = &batches[j];
    let count = batch.tx_count as u64;
    shared.sent_us[batch.id as usize].store(shared.elapsed_us(), Ordering::Release);
    shared.submitted.fetch_add(count, Ordering::AcqRel);
    let mut entries: Vec<(u32, u32)> = Vec::with_capacity(batch.tx_count as usize);
    {
        let mut waiting = retry.lock().expect("retry set");
        for i in 0..batch.tx_count {
            let account = batch.accounts[i as usize];
            if waiting.waits(account) {
                waiting.insert((j as u32, i), account);
            } else {
                entries.push((j as u32, i));
            }
        }
    }
    if entries.is_empty() {
        return;
    }
    if entries.len() == batch.tx_count as usize {
        post(
            agent,
            url,
            format,
            &batch.body,
            &entries,
            batches,
            shared,
            retry,
        );
    } else {
        let bytes: Vec<&[u8]> = entries
            .iter()
            .map(|&(_, i)| batch.entry(i as usize))
            .collect();
        let (body, _) = format.body(&bytes);
        post(agent, url, format, &body, &entries, batches, shared, retry);
    }
}

/// POSTs a batch body in `format` whose entries are `entries` (for
/// retries), counts the answer (JSON whatever the body's format) and
/// returns how many were accepted.
#[allow(clippy::too_many_arguments)]
fn post(
    agent: &ureq::Agent,
    url: &str,
    format: Format,
    body: &[u8],
    entries: &[(u32, u32)],
    batches: &[Batch],
    shared: &Shared,
    retry: &RetrySet,
) -> u64 {
    let count = entries.len() as u64;
    let answer = agent
        .post(url)
        .set("content-type", format.content_type())
        .send_bytes(body);
    let response = match answer {
        Ok(response) => response,
        Err(ureq::Error::Status(status, response)) => {
            let body = response.into_string().unwrap_or_default();
            let code = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("http_{status}"));
            shared.reject(&code, count);
            return 0;
        }
        Err(_) => {
            shared.reject("transport_error", count);
            return 0;
        }
    };
    let body = response.into_string().unwrap_or_default();
    // Fast path: no entry carries an error code (a `"code":` key cannot occur
    // inside an escaped JSON string).
    if !body.contains("\"code\":") {
        shared.accepted.fetch_add(count, Ordering::AcqRel);
        return count;
    }
    match serde_json::from_str::<Vec<BatchEntryJson>>(&body) {
        Ok(answers) => {
            let mut accepted = 0;
            let mut again = Vec::new();
            for (answer, entry) in answers.into_iter().zip(entries) {
                match answer.code {
                    None => accepted += 1,
                    Some(code) if RETRYABLE.contains(&code.as_str()) => {
                        shared.count_refusal(&code, 1);
                        again.push(*entry);
                    }
                    Some(code) => shared.reject(&code, 1),
                }
            }
            shared.accepted.fetch_add(accepted, Ordering::AcqRel);
            if !again.is_empty() {
                let mut waiting = retry.lock().expect("retry set");
                for (j, i) in again {
                    waiting.insert((j, i), batches[j as usize].accounts[i as usize]);
                }
            }
            accepted
        }
        Err(_) => {
            shared.reject("bad_answer", count);
            0
        }
    }
}
