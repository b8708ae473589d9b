//! Any text as a topology file (`cpclink srv6 select`): refused or accepted, never a panic.
#![no_main]

use cpclink_srv6::Topology;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Topology::parse(text, "fuzz.toml");
});
