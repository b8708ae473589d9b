//! Any text as a key-plane configuration (the authority's and the appliance agent's):
//! refused with a diagnostic naming the file, or accepted, never a panic.
#![no_main]

use cpclink_diagnostics::ConfigText;
use cpclink_keymgr::config::{AgentConfig, AuthorityConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = ConfigText::new("fuzz.toml", text);
    if let Err(e) = AuthorityConfig::parse(&text) {
        assert!(e.to_string().contains("fuzz.toml"), "{e}");
    }
    if let Err(e) = AgentConfig::parse(&text) {
        assert!(e.to_string().contains("fuzz.toml"), "{e}");
    }
});
