//! cpclink path plane: SRv6 segment identifiers and the Segment Routing Header (RFC 8754,
//! RFC 8986) with HMAC compatible with Linux seg6, compute- and network-aware path selection
//! after the IETF CATS drafts, and programming of Linux seg6 over netlink.
//!
//! The codec, metrics and selector are sans-IO; [`program`] talks to the kernel through
//! `cpclink-netlink`.
#![forbid(unsafe_code)]

pub mod error;
pub mod hmac;
pub mod inspect;
pub mod metrics;
pub mod program;
pub mod select;
pub mod sid;
pub mod srh;
pub mod topology;

pub use error::Error;
pub use hmac::HmacKey;
pub use metrics::{LinkMetrics, MetricStore, SiteMetrics};
pub use select::{Decision, Explanation, PathSelector};
pub use sid::{SegmentList, Sid, SidStructure};
pub use srh::{Srh, SrhRepr, TlvRepr};
pub use topology::Topology;
