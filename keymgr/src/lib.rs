//! cpclink key plane: the authority (CA, enrolment, directory and policy, rotation orders,
//! revocation, audit), the key agent in every appliance, and the QUIC control channel
//! between them.
//!
//! Master keys leave the appliance that generated them only sealed to the authority's
//! escrow key: a peer that wants to send obtains an SA (SPI and derived key) from the
//! receiver's agent over a mutually authenticated channel, and the authority only decides
//! who may ask.

#![forbid(unsafe_code)]

pub mod agent;
pub mod audit;
pub mod authority;
pub mod backoff;
pub mod config;
pub mod credentials;
pub mod directory;
mod error;
pub mod metrics;
pub mod pki;
pub mod prefix;
pub mod proto;
pub mod seal;
pub mod signing;
pub mod store;
pub mod tls;
pub mod token;

pub use error::{Error, Result, TokenError};
