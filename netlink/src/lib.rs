//! cpclink's one netlink client. Framing, acks and errors come from `netlink-packet-core`
//! over a `netlink-sys` socket; links from `netlink-packet-route`; generic-netlink family
//! lookup from `netlink-packet-generic`. Written here only what those crates lack: seg6 and
//! seg6local route encapsulation, the SEG6 generic-netlink family (HMAC keys, tunnel
//! source), and a small attribute writer/reader for families they do not model (ethtool).
#![forbid(unsafe_code)]

pub mod attr;
mod error;
pub mod genl;
pub mod link;
pub mod route;
pub mod seg6;
mod socket;

pub use error::Error;
pub use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
pub use socket::{Reply, Socket};
