//! Placeholder until the criterion benches are written.
fn main() {}
