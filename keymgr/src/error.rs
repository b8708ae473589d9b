//! The key plane's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the key plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration file (or a file or argument it names) is missing, unreadable or
    /// holds a bad value: the file, the field, the line and the fix.
    #[error(transparent)]
    Config(#[from] cpclink_diagnostics::Diagnostic),
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded store (redb) failed.
    #[error("redb store: {0}")]
    Redb(String),
    /// A request to the etcd cluster failed.
    #[error("etcd {endpoint}: {operation}: {reason}")]
    Etcd {
        /// The client URL(s) the request went to.
        endpoint: String,
        /// The request, naming its key: `range cpclink/x`.
        operation: String,
        /// What went wrong and, where it helps, what to check.
        reason: String,
    },
    /// A write made as leader was refused by etcd because this process no longer holds the
    /// election's leader key (its lease expired or it resigned, and the key is gone or was
    /// created again by another candidate); nothing of the write was applied.
    #[error("no longer the leader of {election}: {now}; nothing of the write was applied (this process held the leader key created at revision {revision})")]
    Fenced {
        /// The election's key in etcd.
        election: String,
        /// The fencing revision this process held.
        revision: i64,
        /// Who holds the leader key now, or that no one does.
        now: String,
    },
    /// This authority replica is not the elected leader, so it refuses the write; nothing
    /// was written.
    #[error("not the leader: {leader}")]
    NotLeader {
        /// Who leads, as far as this replica knows, and where to send the write.
        leader: String,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record {key}: {reason}")]
    CorruptRecord {
        /// The store key of the record.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
    /// The audit log's hash chain is broken.
    #[error("audit log {path}: line {line}: {reason}")]
    AuditBroken {
        /// The log file.
        path: PathBuf,
        /// The 1-based line where verification failed.
        line: usize,
        /// What does not match.
        reason: String,
    },
    /// Certificate generation, signing or parsing failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// An enrolment token is malformed, forged, expired or already used.
    #[error("enrolment token rejected: {0}")]
    Token(TokenError),
    /// Sealing or unsealing a secret with the key-encryption key failed.
    #[error("key wrap: {0}")]
    KeyWrap(&'static str),
    /// A control-channel frame is oversized, of an unknown version or undecodable.
    #[error("frame: {0}")]
    Frame(String),
    /// A QUIC connection could not be made or was lost.
    #[error("quic: {0}")]
    Quic(String),
    /// The peer answered with an error.
    #[error("peer refused: {0}")]
    Refused(String),
    /// The peer is not in the directory, is revoked, or policy does not let the pair talk.
    #[error("not authorised: {0}")]
    NotAuthorised(String),
    /// The data plane's SA machinery failed (SPI space, key derivation).
    #[error("sa: {0}")]
    Sa(#[from] cpclink_dataplane::Error),
    /// An operation did not complete in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// An inner prefix is malformed, or its assignment overlaps another appliance's.
    #[error("prefix: {0}")]
    Prefix(String),
    /// An enrolment token names another appliance than the agent presenting it; nothing
    /// was spent or recorded.
    #[error("enrolment token is for {token}, but this agent is {agent}: create a token for {agent} (or fix `appliance` in the agent's config)")]
    WrongAppliance {
        /// The appliance the token names.
        token: String,
        /// The appliance the agent is configured as.
        agent: String,
    },
    /// The authority revoked this appliance: its certificate stays refused and its agent
    /// serves no one. The way back is the replace flow, with fresh keys and certificate.
    #[error("the authority revoked {appliance}: its certificate stays refused and this agent serves no peers. To put an appliance in its place, run `cpclink keymgr replace --appliance {appliance} --centre CENTRE` at the authority, then start the agent on an empty state_dir with the token it prints")]
    Revoked {
        /// The revoked appliance.
        appliance: String,
    },
    /// A metrics advertisement is larger than the key plane carries; nothing was sent.
    #[error("metrics advertisement of {size} bytes exceeds the {max}-byte limit: advertise fewer services or metrics per message")]
    AdvertisementTooLarge {
        /// Its size.
        size: usize,
        /// The limit ([`crate::metrics::MAX_ADVERTISEMENT`]).
        max: usize,
    },
    /// Something could not be signed, or its signature does not verify against the
    /// signer's certificate (a metric advertisement, an operator token).
    #[error("signature: {0}")]
    Signature(&'static str),
    /// A token was asked for (or presented) for a revoked appliance without the replace
    /// flow; nothing was minted, spent or recorded.
    #[error("{appliance} is revoked: a plain token for it enrols nothing. To put new hardware in its place, run `cpclink keymgr replace --appliance {appliance} --centre CENTRE`; its agent then enrols with fresh keys and a new certificate")]
    ReplaceRequired {
        /// The revoked appliance.
        appliance: String,
    },
}

/// Why an enrolment token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token does not have the `cpt1.<payload>.<mac>` shape.
    #[error("malformed")]
    Malformed,
    /// The MAC does not verify: the token was not minted by this authority.
    #[error("forged (bad MAC)")]
    Forged,
    /// The token's lifetime has passed.
    #[error("expired")]
    Expired,
    /// The token was redeemed before; tokens are single use.
    #[error("already used")]
    Reused,
    /// An operator revoked the token before it was redeemed.
    #[error("revoked by an operator")]
    Revoked,
}

/// The key plane's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with its context.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Self::Redb(e.to_string())
    }
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Self::Redb(e.to_string())
            }
        }
    )*};
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<quinn::ConnectionError> for Error {
    fn from(e: quinn::ConnectionError) -> Self {
        Self::Quic(e.to_string())
    }
}

impl From<quinn::ConnectError> for Error {
    fn from(e: quinn::ConnectError) -> Self {
        Self::Quic(e.to_string())
    }
}

impl From<quinn::WriteError> for Error {
    fn from(e: quinn::WriteError) -> Self {
        Self::Quic(e.to_string())
    }
}

impl From<quinn::ReadExactError> for Error {
    fn from(e: quinn::ReadExactError) -> Self {
        Self::Quic(e.to_string())
    }
}

impl From<quinn::ClosedStream> for Error {
    fn from(e: quinn::ClosedStream) -> Self {
        Self::Quic(e.to_string())
    }
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Self::Certificate(e.to_string())
    }
}
