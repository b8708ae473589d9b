//! Directory deltas as they arrive from the authority (any sequence, any content) applied to
//! a subscriber's copy and to the authority's master copy: nothing may panic, versions only
//! grow, and every view the master builds from its shared base equals the one built from
//! its live copy.
#![no_main]

use cpclink_keymgr::directory::{Delta, Directory, Master};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(deltas) = postcard::from_bytes::<Vec<Delta>>(data) else {
        return;
    };
    if deltas.len() > 64 {
        return;
    }
    let mut copy = Directory::default();
    let mut master = Master::new(Directory::default());
    for (i, delta) in deltas.iter().enumerate() {
        let before = copy.version;
        let applied = copy.apply(delta);
        assert_eq!(applied, delta.version > before);
        assert_eq!(copy.version, before.max(delta.version));
        assert!(!copy.apply(delta), "a delta applies once");
        if let Some(me) = copy.appliances.keys().next().cloned() {
            copy.retain_view(&me);
            let _ = copy.routes_for(&me);
            let _ = copy.sa_targets(&me);
        }
        master.apply(i as u64 + 1, delta.change.clone());
    }
    let source = master.snapshot_source();
    let ids: Vec<String> = master.live().appliances.keys().cloned().collect();
    for id in ids.iter().chain(std::iter::once(&"nobody".to_owned())) {
        assert_eq!(
            source.view_for(id),
            master.live().view_for(id),
            "the view of {id} built from the base differs from the live copy's"
        );
    }
});
