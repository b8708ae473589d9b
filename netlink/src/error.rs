//! The one error type of this crate.

use std::io;

/// Everything that can go wrong talking netlink to the kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be opened, bound or connected.
    #[error("opening a netlink socket: {0}")]
    Open(#[source] io::Error),
    /// Sending a request or receiving its answer failed.
    #[error("netlink {op}: {source}")]
    Transport {
        /// What was being done, e.g. `add route fd00::/64 table 254`.
        op: String,
        /// What the OS said.
        source: io::Error,
    },
    /// The kernel answered the request with an error.
    #[error("netlink {op} failed: {source}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        /// What was being done.
        op: String,
        /// The errno the kernel answered with.
        source: io::Error,
        /// The kernel's extended-ack message, when it gave one.
        detail: Option<String>,
    },
    /// An answer could not be decoded.
    #[error("netlink reply to {op} is malformed: {reason}")]
    Malformed {
        /// The request.
        op: String,
        /// What was wrong.
        reason: String,
    },
}

impl Error {
    /// The errno of a refused request (positive), if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the kernel said the device does not exist (ENODEV).
    pub fn is_no_such_device(&self) -> bool {
        self.errno() == Some(ENODEV)
    }

    /// Whether the kernel said the operation is not supported (EOPNOTSUPP).
    pub fn is_unsupported(&self) -> bool {
        self.errno() == Some(EOPNOTSUPP)
    }

    /// The kernel's own words: errno text plus its extended-ack message; for other errors
    /// the whole message.
    pub fn kernel_message(&self) -> String {
        match self {
            Self::Refused {
                source,
                detail: Some(d),
                ..
            } => format!("{source}: {d}"),
            Self::Refused { source, .. } => source.to_string(),
            other => other.to_string(),
        }
    }

    pub(crate) fn malformed(op: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Malformed {
            op: op.into(),
            reason: reason.into(),
        }
    }
}

const ENODEV: i32 = 19;
const EOPNOTSUPP: i32 = 95;
