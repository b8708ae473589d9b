//! The management API's stage routes, called through the real router with bearer tokens,
//! against a real engine that seals packets to itself over loopback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use cpclink_bench::pacer::SourceRate;
use cpclink_bench::traffic::{TrafficCounters, TrafficSpec};
use cpclink_dataplane::crypto::Suite;
use cpclink_dataplane::engine::{
    lab, BatchingMode, Egress, Engine, EngineConfig, Event, PeerConfig, PeerId, RouteTable,
    SaProfile,
};
use cpclink_dataplane::sa::MasterKeys;
use cpclink_keymgr::audit::ApplianceReport;
use tower::ServiceExt as _;

use super::*;
use crate::config::Prefix;
use crate::keys::{KeySource, KeyUpdate, KeyingStatus};

/// A key source with nothing to do but keep what the owner reports to the audit log.
struct Reports(Arc<Mutex<Vec<ApplianceReport>>>);

impl KeySource for Reports {
    type Input = ();
    fn next(&mut self) -> impl std::future::Future<Output = ()> + Send {
        std::future::pending()
    }
    fn handle(&mut self, _: ()) -> KeyUpdate {
        KeyUpdate::Nothing
    }
    fn on_engine_event(&mut self, _: Event) {}
    fn status(&self) -> KeyingStatus {
        KeyingStatus::default()
    }
    fn reload(&mut self, _: &crate::config::ApplianceConfig) -> Result<KeyUpdate, crate::Error> {
        Ok(KeyUpdate::Nothing)
    }
    fn routes(&self) -> Vec<(String, PeerId, Vec<Prefix>)> {
        Vec::new()
    }
    fn peer_id(&self, _: &str) -> Option<PeerId> {
        None
    }
    fn publish_metrics(&self, _: Vec<u8>) {}
    fn take_metrics(&mut self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
    fn own_id(&self) -> Option<String> {
        None
    }
    fn report(&self, report: ApplianceReport) {
        self.0.lock().unwrap().push(report);
    }
    async fn shutdown(self) {}
}

struct Bench {
    router: Router,
    engine: Arc<Engine>,
    reports: Arc<Mutex<Vec<ApplianceReport>>>,
}

impl Bench {
    /// One worker sealing a paced synthetic stream to its own socket and opening it again,
    /// stage sampling off as an appliance starts; tokens `v`, `o`, `a` for the three roles.
    fn start() -> Self {
        let spec = TrafficSpec::new(4, 1000);
        let counters = TrafficCounters::new(1);
        let mut config = EngineConfig::new((std::net::Ipv4Addr::LOCALHOST, 0).into());
        config.source = Some(
            spec.source(
                Some(SourceRate::PacketsPerSecond(20_000.0)),
                config.gso_segments,
                &counters,
            )
            .unwrap(),
        );
        config.egress = Egress::Sink(spec.sink(&counters));
        let engine = Arc::new(Engine::start(config).unwrap());
        let keys = MasterKeys::new([7; 32]);
        engine
            .set_peer(
                PeerId(0),
                PeerConfig {
                    endpoint: engine.local_addr(),
                },
            )
            .unwrap();
        lab::enable_rx_derivation(&engine, &keys, Suite::AesGcm256).unwrap();
        lab::install_tx_sas(&engine, PeerId(0), &keys, SaProfile::default()).unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let running = crate::appliance::spawn(engine.clone(), Reports(reports.clone()), None);
        // After the owner's first route table (its key source routes nothing).
        engine
            .set_routes(Arc::new(RouteTable::build(spec.routes()).unwrap()))
            .unwrap();
        let tokens = [
            ("v", Role::Viewer),
            ("o", Role::Operator),
            ("a", Role::Admin),
        ]
        .map(|(secret, role)| ApiToken {
            name: format!("{}-token", role.as_str()),
            role,
            sha256: token_digest(secret),
        });
        let router = router(Api {
            handle: running.handle(),
            engine: engine.clone(),
            access: Access::new(tokens.to_vec()),
            tenant: Arc::new(|| None),
        });
        Self {
            router,
            engine,
            reports,
        }
    }

    async fn call(&self, token: &str, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_owned()))
            .unwrap();
        let r = self.router.clone().oneshot(request).await.unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn stages(&self) -> StagesReport {
        let (status, body) = self.call("v", "GET", "/v1/stages", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_sampling_is_off_until_an_admin_turns_it_on_and_every_change_is_audited() {
    let bench = Bench::start();
    let idle = bench.stages().await;
    assert_eq!(idle.sample_every, 0, "off by default");
    assert_eq!(idle.workers.len(), 1);
    assert!(idle.workers[0].stages.is_empty() && idle.all.is_empty());

    // Reading is for viewers; changing it is for admins only.
    for token in ["v", "o"] {
        let (status, body) = bench
            .call(token, "POST", "/v1/stages", r#"{"sample_every": 4}"#)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token}: {body}");
    }
    let (status, _) = bench.call("nobody", "GET", "/v1/stages", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A body that does not say what to set is refused, saying what to send.
    let (status, body) = bench
        .call("a", "POST", "/v1/stages", r#"{"every": 4}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("sample_every"), "{body}");
    assert!(
        bench.reports.lock().unwrap().is_empty(),
        "refusals change nothing"
    );
    assert_eq!(bench.engine.stage_sample_every(), 0);

    let (status, body) = bench
        .call("a", "POST", "/v1/stages", r#"{"sample_every": 4}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        *bench.reports.lock().unwrap(),
        [ApplianceReport::SettingChanged {
            by: "api:admin-token".into(),
            setting: "stage_sample_every".into(),
            value: "4".into(),
        }]
    );
    // The workers time packets from now on: both directions show, per worker and merged.
    let start = Instant::now();
    let sampled = loop {
        let report = bench.stages().await;
        let has = |name: &str| report.all.iter().any(|s| s.stage == name && s.count > 0);
        if has("seal") && has("open") && has("send") {
            break report;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no stage samples: {report:?} {:?}",
            bench.engine.snapshot().unwrap().total()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sampled.sample_every, 4);
    assert_eq!(sampled.workers[0].worker, 0);
    for s in &sampled.workers[0].stages {
        assert!(
            0.0 < s.p50_us
                && s.p50_us <= s.p99_us
                && s.p99_us <= s.p999_us
                && s.p999_us <= s.max_us,
            "{s:?}"
        );
    }
    let seal = sampled.workers[0]
        .stages
        .iter()
        .find(|s| s.stage == "seal")
        .unwrap();
    assert!(seal.max_us < 1e6, "a seal within a second: {seal:?}");

    // Off again: the samples are forgotten and the change is audited too.
    let (status, body) = bench
        .call("a", "POST", "/v1/stages", r#"{"sample_every": 0}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let off = bench.stages().await;
    assert_eq!(off.sample_every, 0);
    assert!(off.all.is_empty(), "{off:?}");
    let reports = bench.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 2);
    assert!(matches!(
        &reports[1],
        ApplianceReport::SettingChanged { value, .. } if value == "0"
    ));

    // The OpenAPI document lists both methods with their roles.
    let (_, doc) = bench.call("", "GET", "/openapi.json", "").await;
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["paths"]["/v1/stages"]["get"]["x-cpclink-role"],
        "viewer"
    );
    assert_eq!(
        doc["paths"]["/v1/stages"]["post"]["x-cpclink-role"],
        "admin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switches_the_running_workers_between_throughput_and_latency_first() {
    const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    let file = |extra: &str| {
        format!(
            "[appliance]\nlisten = \"127.0.0.1:0\"\nmaster_keys = [\"{KEY}\", \"{KEY}\"]\n{extra}\n\
             [tun]\nname = \"cpc0\"\npath_mtu = 1500\n\
             [[peers]]\nname = \"b\"\nendpoint = \"127.0.0.1:9\"\nprefixes = [\"10.2.0.0/16\"]\n\
             master_keys = [\"{KEY}\", \"{KEY}\"]\n"
        )
    };
    let parse =
        |extra: &str| crate::config::ApplianceConfig::parse("a.toml", &file(extra)).unwrap();
    let engine = Arc::new(
        Engine::start(EngineConfig::new((std::net::Ipv4Addr::LOCALHOST, 0).into())).unwrap(),
    );
    let reports = Arc::new(Mutex::new(Vec::new()));
    let running = crate::appliance::spawn(engine.clone(), Reports(reports), Some(parse("")));
    let handle = running.handle();
    assert_eq!(engine.batching(), BatchingMode::THROUGHPUT);

    let reloaded = handle
        .reload(
            parse("mode = \"latency\"\nmax_hold_us = 5\nbusy_poll_us = 0"),
            "test",
        )
        .await
        .unwrap();
    // What the operator reads back says what changed, not "nothing to change".
    assert_eq!(
        reloaded.to_string(),
        "data plane mode now latency (a batch's first packet waits at most 5 µs, batches of \
         at most 32 reads, no busy polling)"
    );
    let mode = engine.batching();
    assert_eq!(mode.policy.max_hold, Some(Duration::from_micros(5)));
    assert_eq!(mode.busy_poll, Duration::ZERO);
    assert_eq!(
        mode.policy.max_packets,
        BatchingMode::LATENCY_FIRST.policy.max_packets
    );

    // Dropping the setting from the file goes back to throughput first, without a restart.
    let reloaded = handle.reload(parse(""), "test").await.unwrap();
    assert_eq!(engine.batching(), BatchingMode::THROUGHPUT);
    assert!(
        reloaded
            .to_string()
            .starts_with("data plane mode now throughput"),
        "{reloaded}"
    );
    let reloaded = handle.reload(parse(""), "test").await.unwrap();
    assert_eq!(reloaded.to_string(), "nothing to change");
    handle.stop();
}
