//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading profiles, inspecting or changing a device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HwError {
    /// A profile file is unreadable, not valid TOML or has fields of the wrong shape: the
    /// file, the field, the line and the fix.
    #[error(transparent)]
    Config(#[from] cpclink_diagnostics::Diagnostic),
    /// A profile parsed but states values that cannot be right; one line per problem.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    ProfileInvalid(Vec<cpclink_diagnostics::Diagnostic>),
    /// No profile with this name is shipped or in the profile directory.
    #[error("no profile named {name:?} (known: {known})")]
    UnknownProfile {
        /// The name asked for.
        name: String,
        /// Names that exist, comma separated.
        known: String,
    },
    /// The network interface does not exist in this network namespace.
    #[error("no network interface {0:?} here (see /sys/class/net)")]
    NoSuchInterface(String),
    /// Reading or writing a file (sysfs, procfs, a profile) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A netlink request was answered with an error.
    #[error("netlink {request} on {dev}: {message}")]
    Netlink {
        /// The request, e.g. `RINGS_SET`.
        request: &'static str,
        /// The interface.
        dev: String,
        /// errno text plus the kernel's extended-ack message when it gave one.
        message: String,
    },
    /// The kernel answered with something this crate cannot decode.
    #[error("malformed netlink reply: {0}")]
    NetlinkDecode(String),
    /// A file from sysfs or procfs did not have the expected form.
    #[error("{path}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// What was wrong with it.
        message: String,
    },
    /// A report or a tuned profile could not be encoded as JSON or TOML.
    #[error("encoding {what}: {message}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's message.
        message: String,
    },
    /// A command-line argument cannot be used as given.
    #[error("{0}")]
    InvalidArgument(String),
    /// The profile asks for something the device cannot do; nothing was changed.
    #[error("refusing to apply, nothing was changed:\n{}", .0.join("\n"))]
    Unsupported(Vec<String>),
    /// The kernel accepted a change but the device reports a different value afterwards.
    #[error("{dev}: {field}: set to {wanted} but the device reports {actual}")]
    NotApplied {
        /// The interface.
        dev: String,
        /// Profile field, e.g. `rings.rx`.
        field: String,
        /// Value asked for.
        wanted: String,
        /// Value read back.
        actual: String,
    },
    /// A throughput trial failed.
    #[error("tune trial (batch {batch}, gso {gso_segments}, workers {workers}): {message}")]
    Trial {
        /// Datagrams per burst.
        batch: u32,
        /// Segments per GSO send.
        gso_segments: u16,
        /// Sender/receiver pairs.
        workers: usize,
        /// What failed.
        message: String,
    },
}

impl HwError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result with [`HwError`].
pub type Result<T> = std::result::Result<T, HwError>;
