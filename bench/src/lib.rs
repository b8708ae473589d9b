//! cpclink benchmark suites: each measures cpclink and, in the same run, a baseline, and
//! reports both so results read as ratios on shared, noisy machines.

pub mod crypto;
pub mod dataplane;
mod report;

pub use report::markdown_table;

/// The benchmark crate's one error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data plane refused a key or a buffer.
    #[error(transparent)]
    Dataplane(#[from] cpclink_dataplane::Error),
    /// A baseline library refused its key or input.
    #[error("baseline {0} failed")]
    Baseline(&'static str),
    /// A size outside what a UDP payload can carry.
    #[error("size {0} is out of range (expected 1..=65536 bytes)")]
    BadSize(usize),
}
