//! cpclink data plane: PSP over UDP between computing power centres.
//!
//! The sans-IO core ([`wire`], [`crypto`], [`psp`], [`sa`], [`route`]) holds no sockets and reads no
//! clocks; the [`engine`] and the [`io`] backends build on it. Only the I/O module may hold
//! `unsafe` code.

#![deny(unsafe_code)]

pub mod crypto;
pub mod engine;
mod error;
pub mod io;
pub mod psp;
pub mod route;
pub mod sa;
pub mod wire;

pub use error::{Error, Result};
