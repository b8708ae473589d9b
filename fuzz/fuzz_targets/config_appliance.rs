//! Any text as an appliance configuration: refused with a diagnostic or accepted, never a
//! panic; an accepted one also yields its engine configuration and path controller.
#![no_main]

use cpclink_appliance::paths::PathController;
use cpclink_appliance::ApplianceConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ApplianceConfig::parse("fuzz.toml", text) {
        Ok(config) => {
            let _ = config.engine_config();
            let _ = PathController::new(&config);
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
    }
});
