//! The one error type of the path plane.

use std::net::Ipv6Addr;

/// Everything that can go wrong in the path plane, each with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A buffer is shorter than the structure it should hold.
    #[error("{what} is truncated: needs {needed} bytes, got {got}")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// A routing header is not a Segment Routing Header (routing type 4).
    #[error("routing header has type {0}, not 4 (Segment Routing Header)")]
    NotSrh(u8),
    /// The segment list does not fit in the header length.
    #[error(
        "last entry {last_entry} needs {needed} bytes of segments but Hdr Ext Len leaves {room}"
    )]
    LastEntryOverflow {
        /// Last Entry field.
        last_entry: u8,
        /// Bytes the segment list needs.
        needed: usize,
        /// Bytes the header length leaves for it.
        room: usize,
    },
    /// Segments Left points past the segment list.
    #[error("segments left {segments_left} is greater than last entry {last_entry} + 1")]
    SegmentsLeftOutOfRange {
        /// Segments Left field.
        segments_left: u8,
        /// Last Entry field.
        last_entry: u8,
    },
    /// A TLV runs past the end of the SRH.
    #[error("TLV at offset {offset} of the SRH runs past its end ({len} bytes)")]
    TlvOverrun {
        /// Offset of the TLV from the start of the SRH.
        offset: usize,
        /// Total SRH length.
        len: usize,
    },
    /// An HMAC TLV has a length that RFC 8754 does not allow.
    #[error("HMAC TLV length {0} is invalid (expected 6 + 8, 16, 24 or 32)")]
    BadHmacTlv(u8),
    /// A segment list is empty.
    #[error("a segment list needs at least one segment")]
    EmptySegmentList,
    /// A segment list or SRH is larger than the header can describe.
    #[error("SRH would be {len} bytes; the maximum is 2048 (try fewer segments or TLVs)")]
    SrhTooLong {
        /// Length the SRH would have.
        len: usize,
    },
    /// A TLV cannot be encoded as given.
    #[error("TLV cannot be encoded: {0}")]
    BadTlv(&'static str),
    /// The output buffer is too small.
    #[error("output buffer has {got} bytes, {needed} needed")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// An HMAC key is unusable.
    #[error("HMAC key: {0}")]
    BadHmacKey(String),
    /// A SID or SID structure is malformed.
    #[error("SID: {0}")]
    BadSid(String),
    /// A packet is not one the tool can decode.
    #[error("packet: {0}")]
    BadPacket(String),
    /// A topology file is unreadable or invalid: the file, the field, the line and the fix.
    #[error(transparent)]
    Config(#[from] cpclink_diagnostics::Diagnostic),
    /// A metric advertisement was refused.
    #[error("metric advertisement from {source_name:?} rejected: {fault}")]
    MetricRejected {
        /// Claimed source.
        source_name: String,
        /// Why.
        fault: crate::metrics::MetricFault,
    },
    /// No (site, path) candidate satisfies the service's constraints.
    #[error("no site satisfies service {service:?}: {summary}")]
    NoCandidate {
        /// Service name.
        service: String,
        /// Why each group of candidates was refused.
        summary: String,
    },
    /// A netlink request failed or its answer could not be read.
    #[error("{0} (are you root with CAP_NET_ADMIN, and is seg6 built in?)")]
    Netlink(#[from] cpclink_netlink::Error),
    /// An interface name does not exist.
    #[error("interface {0:?} not found in this network namespace")]
    NoSuchInterface(String),
    /// An address does not belong to the expected family or range.
    #[error("address {0} is not usable here")]
    BadAddress(Ipv6Addr),
    /// An I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}
