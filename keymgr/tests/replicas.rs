//! Three authority replicas in one process on a real three-member etcd cluster: one CA for
//! all, one leader that alone enrols and writes, followers that send agents and operators
//! to it, and a successor that knows everything the former leader acknowledged.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cpclink_keymgr::agent::enrol_only;
use cpclink_keymgr::audit::verify_store;
use cpclink_keymgr::authority::{admin_request, Authority};
use cpclink_keymgr::config::{AuthorityConfig, StoreConfig};
use cpclink_keymgr::proto::{AdminReply, AdminRequest};
use support::etcd::{cluster, connect_urls};

const PREFIX: &str = "/replicas/";

fn config(dir: &std::path::Path, id: &str, urls: &[String]) -> AuthorityConfig {
    AuthorityConfig {
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: dir.join(id),
        kek_file: dir.join("kek"),
        rotation_interval_secs: 86_400,
        cert_days: 1,
        token_ttl_secs: 600,
        store: StoreConfig::Etcd {
            endpoints: urls.to_vec(),
            prefix: PREFIX.into(),
            candidate: Some(id.to_owned()),
            election_ttl_secs: 2,
        },
        rules: Vec::new(),
        api: None,
        ca: None,
    }
}

/// The index of the one replica that leads, once exactly one does.
async fn one_leader(replicas: &[Option<Authority>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leading: Vec<usize> = replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.as_ref().is_some_and(Authority::is_leader))
            .map(|(i, _)| i)
            .collect();
        if let [one] = leading.as_slice() {
            return *one;
        }
        assert!(Instant::now() < deadline, "no single leader: {leading:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leader_writes_followers_send_everyone_to_it_and_a_successor_keeps_its_promises() {
    let Some(cluster) = cluster(3) else {
        return;
    };
    let urls = cluster.urls_from(0);
    let store = connect_urls(&urls, PREFIX).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kek"), "33".repeat(32)).unwrap();
    let ids = ["r0", "r1", "r2"];
    let cfgs: Vec<AuthorityConfig> = ids.iter().map(|id| config(dir.path(), id, &urls)).collect();
    // Started together: they must agree on one CA.
    let (a, b, c) = tokio::join!(
        Authority::start(&cfgs[0]),
        Authority::start(&cfgs[1]),
        Authority::start(&cfgs[2])
    );
    let mut replicas = vec![Some(a.unwrap()), Some(b.unwrap()), Some(c.unwrap())];
    let pems: Vec<String> = ids
        .iter()
        .map(|id| std::fs::read_to_string(dir.path().join(id).join("ca.pem")).unwrap())
        .collect();
    assert!(
        pems.iter().all(|p| p == &pems[0]),
        "one CA for every replica"
    );

    let leader = one_leader(&replicas).await;
    let follower = (leader + 1) % 3;
    let lead = replicas[leader].clone().unwrap();
    let ca = lead.ca_cert();

    // The follower refuses writes on its admin socket, naming the leader.
    let refused = admin_request(&cfgs[follower].state_dir, &AdminRequest::Rotate)
        .await
        .unwrap();
    match refused {
        AdminReply::Error(e) => assert!(e.contains(ids[leader]), "{e}"),
        other => panic!("a follower ordered a rotation: {other:?}"),
    }

    // An agent enrolling at a follower is turned away with the leader's address, follows
    // it and enrols there, once: the token is spent for the leader too.
    let token = lead
        .mint_token("edge-1", "dc1", "t", Duration::from_secs(60))
        .unwrap();
    let at_follower = replicas[follower].as_ref().unwrap().local_addr().unwrap();
    enrol_only(at_follower, &ca, "edge-1", &token)
        .await
        .unwrap();
    assert!(
        enrol_only(lead.local_addr().unwrap(), &ca, "edge-1", &token)
            .await
            .is_err()
    );
    let rotation = match admin_request(&cfgs[leader].state_dir, &AdminRequest::Rotate)
        .await
        .unwrap()
    {
        AdminReply::Done(r) => r,
        other => panic!("the leader refused a rotation: {other:?}"),
    };

    // The leader goes; a successor takes over with everything it acknowledged.
    lead.shutdown();
    replicas[leader] = None;
    let next = one_leader(&replicas).await;
    let successor = replicas[next].clone().unwrap();
    assert!(successor
        .directory()
        .await
        .appliances
        .contains_key("edge-1"));
    let again = enrol_only(successor.local_addr().unwrap(), &ca, "edge-1", &token).await;
    assert!(again.is_err(), "a spent token was redeemed again");
    match successor.status().await {
        AdminReply::Status { rotation: r, .. } => assert_eq!(r, rotation),
        other => panic!("{other:?}"),
    }
    let verified = verify_store(&store).await.unwrap();
    assert!(verified.lines >= 3, "{verified:?}");
    for r in replicas.iter().flatten() {
        r.shutdown();
    }
}
