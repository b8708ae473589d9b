//! Any IPv6 packet from the network goes through SRH lookup, decoding and HMAC check: nothing
//! may panic, a random HMAC never verifies, and what decodes re-encodes to an SRH that
//! decodes to the same thing and, once signed, verifies.
#![no_main]

use std::sync::OnceLock;

use cpclink_srv6::inspect::decode_packet;
use cpclink_srv6::{HmacKey, Srh, SrhRepr};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static HmacKey {
    static KEY: OnceLock<HmacKey> = OnceLock::new();
    KEY.get_or_init(|| {
        HmacKey::new(7, b"not-the-kernel-packet-secret".to_vec()).expect("a valid key")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = decode_packet(data, Some(key())) {
        // Forging a valid HMAC-SHA256 by chance does not happen; one that verifies means the
        // check looked at the wrong bytes. (The seeds carry HMACs made with another secret:
        // the kernel's, so the digest is computed and compared, and must differ.)
        if let Some(h) = &decoded.hmac {
            assert_ne!(h.valid, Some(true), "a fuzzed HMAC verified");
        }
    }
    // The SRH alone, as a bare header.
    let Ok(srh) = Srh::new_checked(data) else {
        return;
    };
    let _ = srh.segments().count();
    let _ = srh.tlvs().count();
    let Ok(repr) = SrhRepr::parse(&srh) else {
        return;
    };
    let Ok(bytes) = repr.to_bytes() else { return };
    let again = Srh::new_checked(&bytes[..]).expect("an emitted SRH checks");
    assert_eq!(SrhRepr::parse(&again).expect("an emitted SRH parses"), repr);
    // Signed with the key, it verifies; with the source changed, it does not.
    let mut signed = repr.with_hmac(key().key_id);
    let source = "fd00:a::1".parse().expect("an address");
    if signed.sign(source, key()).is_ok() {
        let bytes = signed.to_bytes().expect("a signed SRH emits");
        let srh = Srh::new_checked(&bytes[..]).expect("a signed SRH checks");
        assert!(srh.verify_hmac(source, key()));
        assert!(!srh.verify_hmac("fd00:a::2".parse().expect("an address"), key()));
    }
});
