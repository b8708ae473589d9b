//! Leader election on a real three-member etcd cluster: one winner among candidates in one
//! process, failover within the lease's TTL when the leader stops renewing, fencing of the
//! former leader's writes, and all of it still working with one member frozen.

mod support;

use std::time::{Duration, Instant};

use cpclink_keymgr::store::{Candidate, EtcdStore, Leadership, Store, Write};
use cpclink_keymgr::Error;
use support::etcd::{cluster, connect_urls};
use support::seed::Seed;
use tokio::sync::mpsc;

/// The leader's lease: short enough for a quick test, long enough that a loaded machine
/// renews it in time.
/// A frozen etcd leader stalls renewals until the other members elect one (a second or
/// more when loaded), so the TTL must outlast that with room.
const TTL: Duration = Duration::from_secs(6);
/// What a failover may take beyond the TTL on a machine shared with builds: a poll, a
/// grant, a transaction, and slow fsyncs.
const MARGIN: Duration = Duration::from_secs(10);
const PREFIX: &str = "/elect/";
const ELECTION: &str = "authority";

/// Stands `id` for election on its own connection (members in the order `urls`); sends the
/// leadership once won.
fn stand(id: &str, urls: Vec<String>, won: mpsc::UnboundedSender<Leadership>) {
    let candidate = Candidate {
        id: id.to_owned(),
        address: format!("{id}.test:4433"),
        api: None,
    };
    tokio::spawn(async move {
        let store = connect_urls(&urls, PREFIX).await;
        let leadership = store
            .election(ELECTION)
            .campaign(&candidate, TTL)
            .await
            .unwrap();
        let _ = won.send(leadership);
    });
}

async fn next_winner(
    won: &mut mpsc::UnboundedReceiver<Leadership>,
    within: Duration,
) -> Leadership {
    tokio::time::timeout(within, won.recv())
        .await
        .unwrap_or_else(|_| panic!("no candidate won within {within:?}"))
        .unwrap()
}

fn puts(pairs: &[(&str, &str)]) -> Vec<Write> {
    pairs
        .iter()
        .map(|(k, v)| Write::Put((*k).into(), v.as_bytes().to_vec()))
        .collect()
}

/// A fenced write retried while etcd fails it for other reasons than fencing (a frozen
/// member that swallowed the request, a cluster electing its own leader).
async fn fenced_eventually(leader: &Leadership, batch: Vec<Write>) {
    let deadline = Instant::now() + MARGIN + TTL;
    loop {
        match leader.fenced(batch.clone()).await {
            Ok(()) => return,
            Err(e @ Error::Fenced { .. }) => panic!(
                "the leader was fenced: {e} (its lease: {})",
                leader.lost_reason().unwrap_or("held, as far as it knows")
            ),
            Err(e) if Instant::now() < deadline => {
                eprintln!("fenced write failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("fenced write never landed: {e}"),
        }
    }
}

/// A former leader's write, retried while a frozen member swallows it, until etcd refuses
/// it as fenced.
async fn fenced_out(former: &Leadership, batch: Vec<Write>) {
    let deadline = Instant::now() + MARGIN + TTL;
    loop {
        match former.fenced(batch.clone()).await {
            Ok(()) => panic!("a former leader's write landed"),
            Err(Error::Fenced { .. }) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("stale write failed otherwise, retrying: {e}");
            }
            Err(e) => panic!("a former leader's write was never refused as fenced: {e}"),
        }
    }
}

async fn value(store: &EtcdStore, key: &str) -> Option<String> {
    store
        .get(key)
        .await
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_fails_over_fences_its_predecessor_and_survives_a_frozen_member() {
    let Some(cluster) = cluster(3) else {
        return;
    };
    let mut seed = Seed::from_env("election");
    let records = connect_urls(&cluster.urls_from(0), PREFIX).await;
    let election = records.election(ELECTION);
    assert_eq!(election.leader().await.unwrap(), None);

    // Three candidates, each preferring a member the seed picks: exactly one wins.
    let (won_tx, mut won) = mpsc::unbounded_channel();
    for id in ["a", "b", "c"] {
        stand(id, cluster.urls_from(seed.below(3)), won_tx.clone());
    }
    let first = next_winner(&mut won, Duration::from_secs(30)).await;
    assert!(first.is_held());
    let waited = tokio::time::timeout(2 * TTL, won.recv()).await;
    assert!(
        waited.is_err(),
        "a second candidate won while the first held the lease"
    );
    let leader = election.leader().await.unwrap().unwrap();
    assert_eq!(&leader.candidate, first.candidate());
    assert_eq!(leader.revision, first.revision());

    // The leader's fenced writes land.
    first
        .fenced(puts(&[("rotation/next", "1"), ("audit/1", "first")]))
        .await
        .unwrap();
    assert_eq!(value(&records, "rotation/next").await.as_deref(), Some("1"));

    // The leader freezes (stops renewing, still believes it leads): another wins within the
    // TTL and a margin.
    first.stop_renewing();
    let frozen_at = Instant::now();
    let second = next_winner(&mut won, TTL + MARGIN).await;
    eprintln!(
        "failover after freezing the leader: {:?}",
        frozen_at.elapsed()
    );
    assert_ne!(second.candidate(), first.candidate());
    assert!(second.revision() > first.revision());
    assert!(first.is_held(), "a frozen leader has not noticed");

    // The former leader's write fails in etcd and changes nothing.
    let stale = first
        .fenced(puts(&[("rotation/next", "stale"), ("audit/2", "stale")]))
        .await
        .unwrap_err();
    match &stale {
        Error::Fenced { revision, now, .. } => {
            assert_eq!(*revision, first.revision());
            assert!(now.contains(&second.candidate().id), "{stale}");
        }
        other => panic!("expected the write to be fenced, got {other}"),
    }
    assert!(stale
        .to_string()
        .starts_with("no longer the leader of /elect/election/authority"));
    assert_eq!(value(&records, "rotation/next").await.as_deref(), Some("1"));
    assert_eq!(value(&records, "audit/2").await, None);
    second.fenced(puts(&[("audit/2", "second")])).await.unwrap();
    assert_eq!(value(&records, "audit/2").await.as_deref(), Some("second"));

    if std::env::var_os("CPCLINK_ETCD_CHAOS").is_none() {
        eprintln!(
            "skipped the frozen-member phase: set CPCLINK_ETCD_CHAOS=1 to run it (a leader \
             may still lose its lease while a member is frozen on a loaded 2-core machine)"
        );
        second.resign().await.unwrap();
        return;
    }
    // One member frozen (SIGSTOP): two of three still make a quorum. The leader's writes
    // land, it resigns, the last candidate wins, and its writes land.
    let frozen = seed.below(3);
    eprintln!("freezing etcd member {frozen}");
    cluster.members[frozen].pause();
    fenced_eventually(&second, puts(&[("audit/3", "second")])).await;
    let resigned_at = Instant::now();
    second.resign().await.unwrap();
    let third = next_winner(&mut won, TTL + MARGIN).await;
    eprintln!(
        "failover after a resignation, one member frozen: {:?}",
        resigned_at.elapsed()
    );
    assert!(third.revision() > first.revision());
    fenced_eventually(&third, puts(&[("audit/4", "third")])).await;
    fenced_out(&first, puts(&[("audit/4", "stale")])).await;
    let live = connect_urls(&cluster.urls_from(frozen + 1)[..2], PREFIX).await;
    assert_eq!(value(&live, "audit/4").await.as_deref(), Some("third"));
    let leader = live.election(ELECTION).leader().await.unwrap().unwrap();
    assert_eq!(
        (&leader.candidate, leader.revision),
        (third.candidate(), third.revision())
    );

    // Resumed, the frozen member catches up, and a new candidate preferring it wins once
    // the leader resigns. (Whether the leader kept its lease across the resumption is not
    // asserted: a resumed member that led before its freeze may answer a renewal before it
    // learns it was deposed; `fenced` stays safe either way.)
    cluster.members[frozen].resume();
    let thawed = connect_urls(&cluster.urls_from(frozen)[..1], PREFIX).await;
    assert_eq!(value(&thawed, "audit/4").await.as_deref(), Some("third"));
    let third_revision = third.revision();
    third.resign().await.unwrap();
    stand("d", cluster.urls_from(frozen), won_tx.clone());
    let fourth = next_winner(&mut won, TTL + MARGIN).await;
    assert_eq!(fourth.candidate().id, "d");
    assert!(fourth.revision() > third_revision);
    fenced_eventually(&fourth, puts(&[("audit/5", "fourth")])).await;
    assert_eq!(value(&thawed, "audit/5").await.as_deref(), Some("fourth"));
    fourth.resign().await.unwrap();
    assert_eq!(election.leader().await.unwrap(), None);
}
