//! The data plane's one error type.

use crate::crypto::Backend;
use crate::wire::Suite;

/// Everything that can go wrong in the data plane, from parsing a header to an exhausted SA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer ends before the structure it should hold.
    #[error("truncated: need {needed} bytes, have {got}")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The PSP version field names no suite cpclink knows.
    #[error("unknown PSP version {0} (known: 0, 1, 2, 3 and 8)")]
    UnknownVersion(u8),
    /// The PSP header-extension length is not 1 (no cookie) or 2 (with cookie), or disagrees with the V bit.
    #[error("bad PSP header extension length {hdr_ext_len} with V bit {virt}")]
    BadHeaderExtLength {
        /// The length field as received.
        hdr_ext_len: u8,
        /// The V (virtualization cookie) bit as received.
        virt: bool,
    },
    /// The always-one bit of the PSP header is zero.
    #[error("PSP header's always-one bit is clear")]
    MissingOneBit,
    /// The crypt offset points past the end of the payload (or inside the virtualization cookie).
    #[error("crypt offset {offset} bytes is beyond the payload of {payload} bytes")]
    CryptOffsetBeyondPayload {
        /// Clear bytes the crypt offset asks for.
        offset: usize,
        /// Bytes available after the fixed header, before the ICV.
        payload: usize,
    },
    /// The crypt offset does not fit the 6-bit field.
    #[error("crypt offset {0} words does not fit in 6 bits (at most 63)")]
    CryptOffsetTooLarge(usize),
    /// An inner packet is neither IPv4 nor IPv6, or is malformed.
    #[error("malformed inner IP packet: {0}")]
    BadInnerPacket(&'static str),
    /// The ICV did not verify: the packet was altered or the key is wrong.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A key of the wrong length for its suite.
    #[error("{suite} needs a {expected}-byte key, got {got}")]
    BadKeyLength {
        /// The suite the key was for.
        suite: Suite,
        /// Expected key length in bytes.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// The backend does not implement the suite.
    #[error("backend {backend} does not implement {suite}")]
    UnsupportedSuite {
        /// The backend asked.
        backend: Backend,
        /// The suite asked for.
        suite: Suite,
    },
    /// The caller's buffer has no room for the output.
    #[error("buffer too small: need {needed} bytes, have {got}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The packet's SPI does not belong to this SA.
    #[error("SPI {got:#010x} does not match the SA's {expected:#010x}")]
    SpiMismatch {
        /// The SA's SPI.
        expected: u32,
        /// The packet's SPI.
        got: u32,
    },
    /// The packet's version does not match the SA's suite.
    #[error("packet suite {got} does not match the SA's {expected}")]
    SuiteMismatch {
        /// The SA's suite.
        expected: Suite,
        /// The packet's suite.
        got: Suite,
    },
    /// This IV was already accepted on this SA.
    #[error("replayed IV {0}")]
    Replayed(u64),
    /// This IV is older than the replay window reaches.
    #[error("IV {iv} is older than the replay window (highest {highest})")]
    TooOld {
        /// The packet's IV.
        iv: u64,
        /// The highest IV accepted so far.
        highest: u64,
    },
    /// The IV is zero or at or beyond the SA's hard limit.
    #[error("IV {iv} is outside the SA's range 1..{limit}")]
    IvOutOfRange {
        /// The packet's IV.
        iv: u64,
        /// The hard limit.
        limit: u64,
    },
    /// The transmit SA has sealed its last allowed packet; a new SA is needed.
    #[error("SA {spi:#010x} is exhausted after {sealed} packets; fetch a new SA")]
    SaExhausted {
        /// The exhausted SA.
        spi: u32,
        /// Packets sealed with it.
        sealed: u64,
    },
    /// The transmit SA is past its lifetime.
    #[error("SA {0:#010x} has expired; fetch a new SA")]
    SaExpired(u32),
    /// No master key is held for the SPI's generation.
    #[error("no master key for generation {0}")]
    NoMasterKey(u8),
    /// The SPI counter of a generation reached its end.
    #[error("SPI space of generation {0} is exhausted; rotate the master key")]
    SpiSpaceExhausted(u8),
    /// A system call of the I/O layer failed.
    #[error("{what} failed: {reason}")]
    Io {
        /// The operation that failed (system call or option name).
        what: &'static str,
        /// The operating system's explanation.
        reason: String,
    },
    /// io_uring was asked for explicitly but cannot be set up here.
    #[error("io_uring is unavailable: {0} (use io = \"epoll\" or \"auto\")")]
    IoUringUnavailable(String),
    /// A route's prefix is not a prefix: its length is out of range or host bits are set.
    #[error("route {prefix}: {reason} (write the network address, e.g. 10.1.0.0/16)")]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same prefix was routed to two different peers.
    #[error("route {prefix} is given to peer {first} and to peer {second} (keep one)")]
    DuplicatePrefix {
        /// The prefix.
        prefix: String,
        /// The peer it was routed to first.
        first: u32,
        /// The peer it was routed to again.
        second: u32,
    },
    /// A service route cannot be built: its affinity table is unusable or its prefix is
    /// routed elsewhere too.
    #[error("service route {prefix}: {reason}")]
    InvalidService {
        /// The service's prefix.
        prefix: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The engine was configured in a way it cannot run.
    #[error("engine configuration: {0}")]
    EngineConfig(String),
    /// A worker thread is gone (it panicked or was shut down).
    #[error("worker {0} is not running")]
    WorkerGone(usize),
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
