//! Figures read from each validator's Prometheus `/metrics` text: how many
//! view changes happened during a run.
//!
//! A node that exports the counter `cairn_view_changes_total` is counted by
//! its difference over the run. Otherwise the `cairn_view` gauge is polled
//! about once a second and its rises are summed: a node's view can step
//! *back* (on committing a height decided in a lower view it starts the next
//! height in that view), so the gauge's end-minus-start would undercount;
//! rises between polls still collapse (several changes within one second
//! count as their net rise), so the gauge count is a lower bound.

use std::time::Duration;

use crate::follow;

/// Attempts to read one node's `/metrics` before the run fails.
const METRICS_READ_ATTEMPTS: u32 = 3;
/// Longest wait for one poll of `/metrics` during the run (a missed poll is
/// skipped, not an error).
const POLL_TIMEOUT_MS: u64 = 1_000;

/// The view figures of one node at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewReading {
    /// `cairn_view_changes_total` (summed over its labels), where the node
    /// exports that counter.
    pub view_changes_total: Option<u64>,
    /// `cairn_view`: the node's current view.
    pub view: Option<u64>,
    /// `cairn_safety_writes_total`: durable writes of the safety record.
    pub safety_writes: Option<u64>,
    /// `cairn_safety_write_seconds_total`, in microseconds.
    pub safety_write_us: Option<u64>,
}

/// The sum of every sample of metric `name` in Prometheus text `text` (all
/// label sets; `None` when it has none). Comment lines are skipped.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.chars().next() {
            Some(' ') => rest.trim(),
            Some('{') => rest.rsplit_once('}').map_or("", |(_, v)| v.trim()),
            _ => continue,
        };
        // A sample may end with a timestamp: the value is the first field.
        let value = value.split_whitespace().next().unwrap_or("");
        if let Ok(value) = value.parse::<f64>() {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// The view figures in one `/metrics` text.
pub fn view_reading(text: &str) -> ViewReading {
    let count = |name| metric_sum(text, name).map(|v| v.max(0.0) as u64);
    ViewReading {
        view_changes_total: count("cairn_view_changes_total"),
        view: count("cairn_view"),
        safety_writes: count("cairn_safety_writes_total"),
        safety_write_us: metric_sum(text, "cairn_safety_write_seconds_total")
            .map(|s| (s.max(0.0) * 1e6) as u64),
    }
}

/// View changes of every node over a run, from readings at the start,
/// polls in between, and readings at the end.
#[derive(Clone, Debug)]
pub struct ViewChangeCount {
    first: Vec<ViewReading>,
    last: Vec<ViewReading>,
    gauge_rises: Vec<u64>,
}

impl ViewChangeCount {
    /// Starts counting from one reading per node.
    pub fn start(readings: Vec<ViewReading>) -> ViewChangeCount {
        ViewChangeCount {
            gauge_rises: vec![0; readings.len()],
            last: readings.clone(),
            first: readings,
        }
    }

    /// A later reading of `node`: a rise of its view gauge since the last
    /// reading counts.
    pub fn observe(&mut self, node: usize, reading: ViewReading) {
        if let (Some(before), Some(now)) = (self.last[node].view, reading.view) {
            self.gauge_rises[node] += now.saturating_sub(before);
        }
        if reading.view.is_some() || reading.view_changes_total.is_some() {
            self.last[node] = reading;
        }
    }

    /// Safety record writes over the run, summed over the nodes, and the
    /// time they took in microseconds (`None` when a node lacks the
    /// counters at either end).
    pub fn safety_writes(&self) -> Option<(u64, u64)> {
        let mut total = (0, 0);
        for (first, last) in self.first.iter().zip(&self.last) {
            total.0 += last.safety_writes?.checked_sub(first.safety_writes?)?;
            total.1 += last.safety_write_us?.checked_sub(first.safety_write_us?)?;
        }
        Some(total)
    }

    /// View changes of `node` so far: the counter's difference when the node
    /// exported it at the start and at the last reading, else the summed
    /// rises of its view gauge.
    pub fn of_node(&self, node: usize) -> u64 {
        match (
            self.first[node].view_changes_total,
            self.last[node].view_changes_total,
        ) {
            (Some(first), Some(last)) => last.saturating_sub(first),
            _ => self.gauge_rises[node],
        }
    }

    /// View changes summed over the nodes.
    pub fn total(&self) -> u64 {
        (0..self.first.len()).map(|i| self.of_node(i)).sum()
    }
}

fn read_text(agent: &ureq::Agent, url: &str) -> Result<String, String> {
    agent
        .get(url)
        .call()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|e| e.to_string())
}

/// Reads the view figures of every node, in order, for the start and the
/// end of a run. A node whose `/metrics` cannot be read after a few
/// attempts, or that has neither view figure, fails the run: a missing
/// count must not pass for zero view changes.
pub fn read_views(api_urls: &[String]) -> Result<Vec<ViewReading>, String> {
    let agent = follow::agent();
    api_urls
        .iter()
        .map(|url| {
            let url = format!("{url}/metrics");
            let mut last_error = String::new();
            for attempt in 0..METRICS_READ_ATTEMPTS {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_millis(500));
                }
                match read_text(&agent, &url) {
                    Ok(text) => {
                        let reading = view_reading(&text);
                        if reading.view.is_none() && reading.view_changes_total.is_none() {
                            return Err(format!("{url} reports no cairn_view"));
                        }
                        return Ok(reading);
                    }
                    Err(e) => last_error = e,
                }
            }
            Err(format!("cannot read {url}: {last_error}"))
        })
        .collect()
}

/// Polls every node's view figures once (during the run) into `count`; a
/// node that does not answer within a second is skipped this time.
pub fn poll_views(api_urls: &[String], count: &mut ViewChangeCount) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(POLL_TIMEOUT_MS))
        .build();
    for (i, url) in api_urls.iter().enumerate() {
        if let Ok(text) = read_text(&agent, &format!("{url}/metrics")) {
            count.observe(i, view_reading(&text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP cairn_view Current consensus view.
# TYPE cairn_view gauge
cairn_view 7
# HELP cairn_view_changes_total View changes.
cairn_view_changes_total{reason=\"timeout\"} 2
cairn_view_changes_total{reason=\"censorship\"} 1 1700000000000
cairn_views_other 99
";

    #[test]
    fn sums_samples_and_ignores_longer_names() {
        assert_eq!(metric_sum(TEXT, "cairn_view"), Some(7.0));
        assert_eq!(metric_sum(TEXT, "cairn_view_changes_total"), Some(3.0));
        assert_eq!(metric_sum(TEXT, "cairn_height"), None);
        assert_eq!(
            view_reading(TEXT),
            ViewReading {
                view_changes_total: Some(3),
                view: Some(7),
                ..ViewReading::default()
            }
        );
    }

    /// The node's own exposition (`prometheus-client` since issue 12)
    /// reads back: counters keep their `_total` names, seconds stay seconds.
    #[test]
    fn reads_the_node_s_own_exposition() {
        let metrics = cairn_node::metrics::Metrics::new(4, 0);
        metrics.view.set(5);
        metrics.view_changes.inc_by(3);
        metrics.safety_writes.inc_by(2);
        metrics.safety_write_seconds.inc_by(0.25);
        metrics.observe_sent(1, 100);
        assert_eq!(
            view_reading(&metrics.render()),
            ViewReading {
                view_changes_total: Some(3),
                view: Some(5),
                safety_writes: Some(2),
                safety_write_us: Some(250_000),
            }
        );
        assert_eq!(
            metric_sum(&metrics.render(), "cairn_p2p_bytes_total"),
            Some(100.0)
        );
    }

    fn at(changes: Option<u64>, view: Option<u64>) -> ViewReading {
        ViewReading {
            view_changes_total: changes,
            view,
            ..ViewReading::default()
        }
    }

    #[test]
    fn counter_first_then_gauge() {
        let mut count = ViewChangeCount::start(vec![at(Some(1), Some(4)), at(None, Some(4))]);
        count.observe(0, at(Some(3), Some(9)));
        count.observe(1, at(None, Some(9)));
        assert_eq!((count.of_node(0), count.of_node(1)), (2, 5));
        assert_eq!(count.total(), 7);
    }

    /// The gauge steps back when a node starts a height in the view it was
    /// decided in; only rises count, so 4 -> 8 -> 7 -> 8 is five changes
    /// (end minus start would say four).
    #[test]
    fn gauge_rises_are_summed_and_missed_polls_skipped() {
        let mut count = ViewChangeCount::start(vec![at(None, Some(4))]);
        for view in [8, 7, 8] {
            count.observe(0, at(None, Some(view)));
            count.observe(0, ViewReading::default());
        }
        assert_eq!(count.total(), 5);
        let count = ViewChangeCount::start(vec![at(Some(0), None); 3]);
        assert_eq!(count.total(), 0);
    }
}
