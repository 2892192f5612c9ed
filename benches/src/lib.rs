//! The Cairn end-to-end load benchmark, as a library the `cairn-bench`
//! binary drives.
//!
//! One [`run::run_once`] writes a fresh testnet ([`testnet`]), pre-signs and
//! pre-serializes every transfer before the clock starts ([`workload`]),
//! measures this machine's signature-check bound ([`bound`]), starts real
//! `cairn-node` processes, submits batches over HTTP at a fixed rate or as
//! fast as the network takes them ([`submit`]), follows commits over SSE
//! ([`follow`]) and finally checks that every node holds the same chain and
//! the same total supply ([`checks`]). [`nodemetrics`] counts the view
//! changes of the run from each node's `/metrics`; [`procstat`] samples CPU
//! and memory. [`chart`] draws a throughput/latency sweep as SVG.
//!
//! ```no_run
//! use cairn_bench::run::{run_once, RunConfig};
//! let report = run_once(&RunConfig::default()).expect("benchmark failed");
//! println!("{} committed tx/s", report.committed_tps);
//! ```

pub mod bound;
pub mod chart;
pub mod checks;
pub mod fixtures;
pub mod follow;
pub mod nodemetrics;
pub mod procstat;
pub mod run;
pub mod stats;
pub mod submit;
pub mod testnet;
pub mod workload;
