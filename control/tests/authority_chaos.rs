//! The key authority as three replica processes (`cpclink keymgr`) on a three-member etcd
//! cluster on loopback, with agents enrolling, rotating and granting SAs over real QUIC,
//! while a seeded chaos loop kills -9 and restarts the leader, freezes it past its lease and
//! resumes it, and freezes etcd members. After every step: no token redeemed twice, no
//! (appliance, generation, SPI) granted twice, every acknowledged enrolment still listed,
//! the audit chain verifies with no fork, gap or edit, a rotation ordered before a failover
//! is acknowledged after it, no line of a resumed former leader lands after its
//! successor's, and every agent follows the new leader by itself, through its list of
//! replica addresses.
//!
//! `CPCLINK_CHAOS_SEED` replays a run (the seed is printed); `CPCLINK_CHAOS_KILLS` sets the
//! number of leader kills (default 50, the CI figure). The invariant checks are
//! `cpclink_bench::replicas`, which `cpclink bench keymgr --replicas` runs too.

use cpclink_bench::replicas::{etcd_installed, run, seed_from_env, ReplicaPlan};

#[test]
fn replicas_keep_every_promise_through_leader_kills_pauses_and_etcd_freezes() {
    if !etcd_installed() {
        eprintln!("skipping: no `etcd` binary (install Debian's etcd-server)");
        return;
    }
    let kills = std::env::var("CPCLINK_CHAOS_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(50);
    let plan = ReplicaPlan {
        binary: env!("CARGO_BIN_EXE_cpclink").into(),
        replicas: 3,
        kills,
        chaos: true,
        seed: seed_from_env(),
        agents: 4,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(run(&plan)).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(
        report.violations.is_empty(),
        "seed {}: {:?}",
        report.seed,
        report.violations
    );
    assert_eq!(report.kills, kills);
    assert!(report.rotations_across_failover >= kills);
    assert!(report.grants > 0, "no SA was granted: nothing was checked");
    // At least the two first agents followed each new leader by themselves.
    assert!(report.agents_back_ms.samples >= 2 * kills);
}
