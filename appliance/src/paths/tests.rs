use super::*;

const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

/// A clients' centre placing `echo` over dc2 and dc3, each behind t1 or t2.
fn config(extra_service: &str) -> ApplianceConfig {
    let mut t = format!(
        "[appliance]\nlisten = \"192.0.2.1:1000\"\nmaster_keys = [\"{KEY}\", \"{KEY}\"]\n\n\
         [paths]\nnode = \"dc1\"\nbuckets = 64\nbucket_idle_ms = 5000\nhold_down_ms = 1000\n\n\
         [[paths.transit]]\nname = \"t1\"\nsid = \"fd00:100:1::1\"\n\n\
         [[paths.transit]]\nname = \"t2\"\nsid = \"fd00:100:2::1\"\n\n"
    );
    for site in ["dc2", "dc3"] {
        let n = &site[2..];
        t += &format!("[[paths.site]]\npeer = \"{site}\"\nsid = \"fd00:200:{n}::100\"\n\n");
        for transit in ["t1", "t2"] {
            t += &format!("[[paths.candidate]]\nsite = \"{site}\"\nvia = [\"{transit}\"]\n\n");
            t += &format!(
                "[[paths.link]]\nfrom = \"{transit}\"\nto = \"{site}\"\nlatency_ms = 1.0\n\n"
            );
        }
    }
    t += "[[paths.link]]\nfrom = \"dc1\"\nto = \"t1\"\nlatency_ms = 1.0\n\n\
          [[paths.link]]\nfrom = \"dc1\"\nto = \"t2\"\nlatency_ms = 2.0\n\n";
    t += &format!(
        "[[services]]\nname = \"echo\"\nprefixes = [\"10.99.0.7/32\"]\n{extra_service}\n\n\
         [metrics]\nfile = \"/nonexistent/metrics.toml\"\nttl_ms = 3000\nmin_interval_ms = 500\n"
    );
    ApplianceConfig::parse("dc1.toml", &t).unwrap()
}

fn payload(service: &str, source: &str, about: &str, load: f64, at: u64) -> Vec<u8> {
    serde_json::to_vec(&MetricsPayload {
        service: service.into(),
        advertisement: Advertisement {
            source: source.into(),
            subject: Subject::Site(about.into()),
            values: BTreeMap::from([
                ("cpu_load".to_string(), load),
                ("compute_delay_ms".to_string(), 1.0),
            ]),
            timestamp_ms: at,
            ttl_ms: 3_000,
            mac: [0; 32],
        },
    })
    .unwrap()
}

fn peers(name: &str) -> Option<PeerId> {
    match name {
        "dc2" => Some(PeerId(0)),
        "dc3" => Some(PeerId(1)),
        _ => None,
    }
}

fn sites_of(c: &PathController) -> Vec<Option<PeerId>> {
    let routes = c.service_routes(peers);
    assert_eq!(routes.len(), 1);
    let table = &routes[0].2;
    (0..table.len()).map(|b| table.peer(b)).collect()
}

#[test]
fn advertisements_are_counted_by_outcome() {
    let mut c = PathController::new(&config("")).unwrap();
    let t = 1_000_000;
    assert!(c.ingest("dc2", &payload("echo", "dc2", "dc2", 0.2, t), t));
    // Too soon after the accepted one: rate control.
    assert!(!c.ingest("dc2", &payload("echo", "dc2", "dc2", 0.9, t + 100), t + 100));
    // Older than what is held.
    assert!(!c.ingest("dc2", &payload("echo", "dc2", "dc2", 0.9, t - 10), t + 600));
    // Past its TTL on arrival.
    assert!(!c.ingest("dc3", &payload("echo", "dc3", "dc3", 0.1, t - 5_000), t));
    // dc2 speaking for dc3, or of dc3, or nonsense: forged.
    assert!(!c.ingest("dc2", &payload("echo", "dc3", "dc3", 0.1, t), t));
    assert!(!c.ingest("dc2", &payload("echo", "dc2", "dc3", 0.1, t), t));
    assert!(!c.ingest("dc2", b"not json", t));
    // A service this appliance does not place.
    assert!(!c.ingest("dc2", &payload("other", "dc2", "dc2", 0.1, t), t));
    let m = c.status().metrics;
    assert_eq!(
        (
            m.accepted,
            m.rate_limited,
            m.replayed,
            m.stale,
            m.forged,
            m.ignored
        ),
        (1, 1, 1, 1, 3, 1)
    );
}

#[test]
fn decisions_fill_the_buckets_and_busy_buckets_keep_their_site() {
    let mut c = PathController::new(&config("")).unwrap();
    let t = 1_000_000;
    // Nothing advertised: every bucket drops.
    c.decide(t, |_| true);
    assert!(sites_of(&c).iter().all(Option::is_none));
    assert_eq!(c.status().decisions.last().unwrap().reason, "withdrawn");
    c.ingest("dc2", &payload("echo", "dc2", "dc2", 0.2, t), t);
    c.ingest("dc3", &payload("echo", "dc3", "dc3", 0.5, t), t);
    assert!(c.decide(t, |_| true));
    assert!(sites_of(&c).iter().all(|p| *p == Some(PeerId(0))));
    let status = c.status();
    assert_eq!(status.services[0].site.as_deref(), Some("dc2"));
    assert_eq!(status.services[0].path.as_deref(), Some("dc1 → t1 → dc2"));
    // A flow uses bucket 5; then dc2 fills up.
    c.service_routes(peers)[0].2.activity().touch(5);
    c.decide(t + 100, |_| true);
    let t2 = t + 2_000;
    c.ingest("dc2", &payload("echo", "dc2", "dc2", 0.95, t2), t2);
    assert!(c.decide(t2, |_| true));
    let sites = sites_of(&c);
    assert_eq!(sites[5], Some(PeerId(0)), "the busy bucket moved");
    assert_eq!(sites.iter().filter(|p| **p == Some(PeerId(1))).count(), 63);
    // dc2 is revoked (no longer keyed): its busy bucket moves at once.
    assert!(c.decide(t2 + 100, |site| site != "dc2"));
    assert!(sites_of(&c).iter().all(|p| *p == Some(PeerId(1))));
    // Every change was kept for operators, with its explanation.
    let d = c.status().decisions;
    assert_eq!(
        d.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
        ["withdrawn", "initial", "improved"]
    );
    assert!(d[2].explanation.contains("dc3 via dc1 → t1 → dc3"));
}

#[test]
fn expired_metrics_withdraw_a_site() {
    let mut c = PathController::new(&config("")).unwrap();
    let t = 1_000_000;
    c.ingest("dc2", &payload("echo", "dc2", "dc2", 0.2, t), t);
    c.decide(t, |_| true);
    assert!(sites_of(&c).iter().all(|p| *p == Some(PeerId(0))));
    // No refresh within the TTL: nothing is feasible, every bucket drops (tx_no_site).
    assert!(c.decide(t + 3_001, |_| true));
    assert!(sites_of(&c).iter().all(Option::is_none));
}

#[test]
fn a_reload_keeps_unchanged_services_and_restarts_changed_ones() {
    let mut c = PathController::new(&config("")).unwrap();
    let t = 1_000_000;
    c.ingest("dc2", &payload("echo", "dc2", "dc2", 0.2, t), t);
    c.decide(t, |_| true);
    assert!(sites_of(&c).iter().all(|p| *p == Some(PeerId(0))));
    // The same file again: nothing changes, the placement stays.
    assert!(!c.reload(&config("")));
    assert!(sites_of(&c).iter().all(|p| *p == Some(PeerId(0))));
    // A changed service starts afresh: no metrics held, nothing placed until it decides.
    assert!(c.reload(&config("latency_bound_ms = 40.0")));
    assert!(sites_of(&c).iter().all(Option::is_none));
    c.decide(t + 100, |_| true);
    assert!(sites_of(&c).iter().all(Option::is_none));
    assert!(c.ingest("dc2", &payload("echo", "dc2", "dc2", 0.2, t + 200), t + 200));
    c.decide(t + 300, |_| true);
    assert!(sites_of(&c).iter().all(|p| *p == Some(PeerId(0))));
    // Same services, a link's latency changed: the topology is rebuilt, not kept stale.
    let mut slower = config("latency_bound_ms = 40.0");
    slower.paths.as_mut().unwrap().links[0].latency_ms = 30.0;
    assert!(c.reload(&slower));
    assert!(sites_of(&c).iter().all(Option::is_none));
}
