//! The cpclink appliance: one owner task for the engine, the key source (the key plane or
//! lab keys), the route table and the state operators read, plus the configuration that
//! shapes them. The `cpclink run` command is a thin front end over [`run`].
#![forbid(unsafe_code)]

pub mod api;
mod appliance;
pub mod config;
mod error;
pub mod keyed;
pub mod keys;
pub mod lab;
pub mod paths;

pub use appliance::{
    run, spawn, ApplianceHandle, ApplianceStatus, Reloaded, Route, RunningAppliance,
};
pub use config::ApplianceConfig;
pub use error::Error;
