//! Out-of-range durations never abort the authority: not from a config built in code, not
//! from a due time persisted by an earlier run.
//!
//! Found by a hostile probe: `rotation_interval_secs = 9223372036854775807` overflowed the
//! rotation's due time ("overflow when adding duration to instant"), and the overflowed time
//! was persisted, so every restart aborted until the store was edited by hand.
//!
//! One test in this binary: it counts panics with a process-wide hook, and a panic in a
//! spawned task would otherwise pass unnoticed.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cpclink_keymgr::authority::Authority;
use cpclink_keymgr::config::{AuthorityConfig, StoreConfig};
use cpclink_keymgr::proto::AdminReply;
use cpclink_keymgr::store::{RedbStore, Store};

const DAY: u64 = 86_400;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Starts an authority on `cfg`, lets its rotation schedule run a moment, stops it, and
/// returns the rotations it ordered.
fn run_once(cfg: &AuthorityConfig) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rotation = rt.block_on(async {
        let authority = Authority::start(cfg).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let AdminReply::Status { rotation, .. } = authority.status().await else {
            panic!("status failed");
        };
        authority.shutdown();
        rotation
    });
    // Dropping the runtime drops the authority's tasks and with them its store.
    drop(rt);
    rotation
}

fn stored_next_rotation(redb: &std::path::Path) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = RedbStore::open(redb).unwrap();
        let bytes = store.get("meta/next_rotation").await.unwrap().unwrap();
        serde_json::from_slice(&bytes).unwrap()
    })
}

fn put_next_rotation(redb: &std::path::Path, value: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = RedbStore::open(redb).unwrap();
        store
            .put("meta/next_rotation", value.as_bytes())
            .await
            .unwrap();
    });
}

#[test]
fn absurd_intervals_and_persisted_due_times_neither_abort_nor_stick() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let dir = tempfile::tempdir().unwrap();
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, "11".repeat(32)).unwrap();
    let state_dir = dir.path().join("authority");
    let redb = state_dir.join("authority.redb");
    let mut cfg = AuthorityConfig {
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir,
        kek_file,
        // Built in code, so the load-time range check is skipped: the start must cope.
        rotation_interval_secs: 9_223_372_036_854_775_807,
        cert_days: 9_223_372_036_854_775_807,
        token_ttl_secs: 600,
        store: StoreConfig::Redb { path: None },
        rules: Vec::new(),
        api: None,
        ca: None,
    };
    assert_eq!(run_once(&cfg), 0);
    let next = stored_next_rotation(&redb);
    assert!(
        next <= now_secs() + 365 * DAY,
        "persisted due time {next} is past the longest interval"
    );

    // A store written by an earlier, broken run: the due time is replaced, not obeyed.
    cfg.rotation_interval_secs = DAY;
    for absurd in ["18446744073709551615", "9223372036854775807"] {
        put_next_rotation(&redb, absurd);
        let before = now_secs();
        assert_eq!(run_once(&cfg), 0, "a far-future due time is not due now");
        let next = stored_next_rotation(&redb);
        assert!(
            (before + DAY..=now_secs() + DAY).contains(&next),
            "{absurd} was replaced by {next}, not by an interval from now"
        );
    }

    // A due time in the past still rotates at once.
    put_next_rotation(&redb, "1");
    assert_eq!(run_once(&cfg), 1);

    assert_eq!(panics.load(Ordering::SeqCst), 0, "something panicked");
}
