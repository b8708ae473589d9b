//! Any bytes arriving on the PSP port go through header parsing and SA open: nothing may
//! panic, and nothing that fails to verify may come out as plaintext.
#![no_main]

use std::sync::OnceLock;

use cpclink_dataplane::crypto::Backend;
use cpclink_dataplane::psp;
use cpclink_dataplane::sa::{MasterKeys, RxSa, SaLimits, Spi};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static MasterKeys {
    static KEYS: OnceLock<MasterKeys> = OnceLock::new();
    KEYS.get_or_init(|| MasterKeys::with_generations([1; 32], [2; 32], 0))
}

fuzz_target!(|data: &[u8]| {
    let mut packet = data.to_vec();
    let Ok(header) = psp::parse(&packet) else {
        return;
    };
    let Ok(key) = keys().derive(header.spi, header.suite) else {
        return;
    };
    let Ok(cipher) = Backend::AwsLc.cipher(header.suite, key.as_bytes()) else {
        return;
    };
    let mut rx = RxSa::new(Spi(header.spi.0), cipher, SaLimits::default());
    if let Ok(opened) = rx.open(&mut packet) {
        // Only a packet sealed under the derived key can open; random input never does.
        assert!(opened.payload.end <= packet.len());
        assert_eq!(opened.header.suite, header.suite);
    }
});
