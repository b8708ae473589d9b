//! What more than one test file needs: etcd servers on loopback and replayable randomness.

// Each test file is its own crate and uses part of this module; the rest is dead there.
#![allow(dead_code)]

pub mod etcd;
pub mod seed;
