//! Any text as a hardware profile: refused or accepted, never a panic; an accepted one is
//! validated and asked for the tuning it gives.
#![no_main]

use cpclink_diagnostics::ConfigText;
use cpclink_hw::Profile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(profile) = Profile::parse("fuzz.toml", text) {
        let _ = profile.validate(&ConfigText::new("fuzz.toml", text));
        let _ = profile.match_score("ixgbe", Some((0x8086, 0x10fb)));
    }
});
