//! The control crate's one error type.

/// What a `cpclink` command can fail with; each message tells the operator what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command-line argument that parsed but makes no sense.
    #[error("{arg}: {reason}")]
    BadArgument {
        /// The argument, as spelled on the command line.
        arg: &'static str,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// The data plane refused the operation.
    #[error(transparent)]
    Dataplane(#[from] cpclink_dataplane::Error),
    /// The key plane (enrolment, the key agent) failed.
    #[error("key plane: {0}")]
    KeyPlane(#[from] cpclink_keymgr::Error),
    /// A benchmark could not run.
    #[error(transparent)]
    Bench(#[from] cpclink_bench::Error),
    /// The appliance could not start or failed while running.
    #[error(transparent)]
    Appliance(#[from] cpclink_appliance::Error),
    /// A demo or check found traffic that did not arrive intact.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The management API could not be reached or refused the request (its problem, in
    /// words).
    #[error("api: {0}")]
    Api(String),
    /// Building or driving `cpclink lab` failed: the command and what it printed.
    #[error("lab: {0}")]
    Lab(String),
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}
