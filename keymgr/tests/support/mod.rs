//! What more than one test file needs: an authority's configuration, etcd servers on loopback and replayable randomness.

// Each test file is its own crate and uses part of this module; the rest is dead there.
#![allow(dead_code)]

pub mod authority;
pub mod etcd;
pub mod seed;
