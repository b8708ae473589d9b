//! A signed metric advertisement from a peer: the signature check on any bytes, then the
//! path controller's decoding of what passed it. Nothing may panic; a fuzzed signature never
//! verifies; one made by the peer's key does, over those bytes only.
#![no_main]

use std::sync::{Mutex, OnceLock};

use cpclink_appliance::paths::PathController;
use cpclink_appliance::ApplianceConfig;
use cpclink_keymgr::metrics::{MetricSigner, MetricVerifier};
use cpclink_keymgr::pki::Ca;
use libfuzzer_sys::fuzz_target;

const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

struct Peer {
    signer: MetricSigner,
    verifier: MetricVerifier,
    controller: Mutex<PathController>,
}

fn peer() -> &'static Peer {
    static PEER: OnceLock<Peer> = OnceLock::new();
    PEER.get_or_init(|| {
        let ca = Ca::generate("fuzz").expect("a CA");
        let identity = ca.issue_authority().expect("a certificate");
        let config = format!(
            "[appliance]\nlisten = \"192.0.2.1:1000\"\nmaster_keys = [\"{KEY}\", \"{KEY}\"]\n\n\
             [paths]\nnode = \"dc1\"\n\n\
             [[paths.transit]]\nname = \"t1\"\nsid = \"fd00:100:1::1\"\n\n\
             [[paths.site]]\npeer = \"dc2\"\nsid = \"fd00:200:2::100\"\n\n\
             [[paths.candidate]]\nsite = \"dc2\"\nvia = [\"t1\"]\n\n\
             [[paths.link]]\nfrom = \"dc1\"\nto = \"t1\"\nlatency_ms = 1.0\n\n\
             [[paths.link]]\nfrom = \"t1\"\nto = \"dc2\"\nlatency_ms = 1.0\n\n\
             [[services]]\nname = \"echo\"\nprefixes = [\"10.99.0.7/32\"]\n\n\
             [metrics]\nfile = \"/nonexistent/metrics.toml\"\nttl_ms = 3000\nmin_interval_ms = 500\n"
        );
        let config = ApplianceConfig::parse("dc1.toml", &config).expect("the fuzz config");
        Peer {
            signer: MetricSigner::new("dc2", &identity).expect("a signer"),
            verifier: MetricVerifier::from_certificate("dc2", &identity.cert).expect("a verifier"),
            controller: Mutex::new(PathController::new(&config).expect("paths are configured")),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let peer = peer();
    // [signature length][signature][advertisement]
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (signature, advertisement) = rest.split_at(usize::from(n).min(rest.len()));
    assert!(
        peer.verifier.verify(advertisement, signature).is_err(),
        "a fuzzed signature verified"
    );
    // What the peer's own key signs verifies, and only over those bytes.
    if let Ok(good) = peer.signer.sign(advertisement) {
        assert!(peer.verifier.verify(advertisement, &good).is_ok());
        let mut other = advertisement.to_vec();
        other.push(0);
        assert!(peer.verifier.verify(&other, &good).is_err());
    }
    // Past the signature, the controller decodes the advertisement.
    let mut controller = peer.controller.lock().unwrap_or_else(|e| e.into_inner());
    controller.ingest("dc2", advertisement, 1_000);
});
