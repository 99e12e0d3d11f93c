//! The election benchmark's scenarios, statistics and request log, for any leader
//! election library: shared by the benchmark (`benches/election`) and its peer
//! program (`benches/peers`), which builds peers on other kube versions.

pub mod client_log;
pub mod scenario;
pub mod stats;
