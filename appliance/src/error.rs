//! The appliance crate's one error type.

/// What running an appliance can fail with; each message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is wrong: the diagnostic names the file, the field, the line and the fix.
    #[error(transparent)]
    Config(#[from] cpclink_diagnostics::Diagnostic),
    /// The data plane refused an operation (binding its sockets, opening the TUN device, an SA).
    #[error(transparent)]
    Dataplane(#[from] cpclink_dataplane::Error),
    /// The key plane (enrolment, the key agent) failed.
    #[error("key plane: {0}")]
    KeyPlane(#[from] cpclink_keymgr::Error),
    /// Setting up the appliance's own machinery (its runtime, signal handlers) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The authority could not be reached or refused this appliance at start.
    #[error("key plane: the authority at {} ([keymgr].authority): {reason}; check that `cpclink keymgr run` serves there, that its UDP port is reachable from this host, and that [keymgr].ca_cert is that authority's ca.pem", authorities.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or "))]
    Authority {
        /// The addresses tried (one per authority replica).
        authorities: Vec<std::net::SocketAddr>,
        /// What went wrong.
        reason: String,
    },
    /// A reload was refused; the running configuration stays.
    #[error("reload refused: {0}")]
    Reload(String),
    /// This appliance was revoked while it ran; it stopped (final counters attached).
    #[error("this appliance was revoked and has stopped; an admin brings new hardware into its role with `cpclink keymgr replace` (final counters: {0})")]
    Revoked(String),
    /// The appliance's owner task has ended; nothing more can be asked of it.
    #[error("the appliance has stopped")]
    Stopped,
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
