//! Hardware profiles for cpclink (SPEC H1): detect the NIC and CPU, match a profile, show
//! and apply the difference, and tune batching and worker counts by measurement.

pub mod apply;
pub mod cpuset;
mod error;
pub mod ethtool;
pub mod host;
mod netlink;
pub mod profile;
pub mod tune;
pub mod udp_runner;

pub use error::{HwError, ProfileIssue, Result};
pub use profile::{DataplaneTuning, Profile, ProfileSet};
