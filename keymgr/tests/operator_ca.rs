//! The authority on the operator's own CA: it issues under an intermediate the operator
//! brings, agents trust only the operator's root, and everything it sends carries the
//! chain. Real certificates (a root and an intermediate made here), real QUIC on loopback.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use cpclink_keymgr::agent::{AgentOptions, KeyAgent};
use cpclink_keymgr::authority::Authority;
use cpclink_keymgr::config::{AuthorityConfig, CaFiles, StoreConfig};
use cpclink_keymgr::seal::Kek;
use cpclink_keymgr::store::{AnyStore, MemoryStore, Store};
use cpclink_keymgr::{pki, tls};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

mod support;
use support::authority::authority_config;

/// A CA of the operator's PKI.
struct OperatorCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl OperatorCa {
    fn params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "operator");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    }

    /// A self-signed root.
    fn root(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let cert = Self::params(name).self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A CA issued by this one.
    fn issue_ca(&self, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let cert = Self::params(name)
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        Self { cert, key }
    }

    /// A certificate that may not sign others, issued by this one.
    fn issue_leaf(&self, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Self { cert, key }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

/// `[ca]` files under `dir`: `cert`'s certificate and `key`'s key, and `chain` in order.
fn ca_files(dir: &Path, cert: &OperatorCa, key: &KeyPair, chain: &[&OperatorCa]) -> CaFiles {
    let files = CaFiles {
        certificate: dir.join("intermediate.pem"),
        key: dir.join("intermediate.key"),
        chain: dir.join("chain.pem"),
    };
    std::fs::write(&files.certificate, cert.cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    let chain: String = chain.iter().map(|c| c.cert.pem()).collect();
    std::fs::write(&files.chain, chain).unwrap();
    files
}

fn options(
    cfg: &AuthorityConfig,
    authority: &Authority,
    ca_cert: CertificateDer<'static>,
    id: &str,
    token: Option<String>,
) -> AgentOptions {
    AgentOptions {
        appliance: id.into(),
        authorities: vec![authority.local_addr().unwrap()],
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: cfg.state_dir.with_file_name(id),
        kek: Kek::load(&cfg.kek_file, "kek_file").unwrap(),
        ca_cert,
        token: token.map(zeroize::Zeroizing::new),
        endpoints: vec![],
        capabilities: vec![],
        prefixes: vec![],
        suite: cpclink_dataplane::crypto::Suite::AesGcm256,
        sa_lifetime: Duration::from_secs(3600),
        rekey_grace: Duration::from_millis(200),
    }
}

fn token(authority: &Authority, id: &str) -> String {
    authority
        .mint_token(id, "dc1", "acme", Duration::from_secs(600))
        .unwrap()
}

/// Runs `phase` on a runtime of its own, dropped at the end with every task it spawned:
/// an authority's redb store is then closed, and a restarted one can open it.
fn in_runtime<T>(phase: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(phase)
}

async fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The certificate an agent stored, checked to chain to `root` through `intermediate`
/// as a peer's handshake checks it; returns its serial.
async fn chains_to(store: &MemoryStore, root: &OperatorCa, intermediate: &OperatorCa) -> String {
    let stored = store.get("identity/cert").await.unwrap().unwrap();
    let (leaf, chain) = pki::split_chain(&stored).unwrap();
    assert_eq!(
        chain,
        vec![intermediate.der()],
        "the leaf carries its chain"
    );
    tls::verify_chain(&root.der(), &leaf, &chain).unwrap();
    pki::serial_of(&leaf).unwrap()
}

/// Two agents that trust only the operator's root enrol, see each other, grant SAs and
/// rotate; an agent that trusts another root is refused; after a restart the authority
/// issues under the same intermediate and knows its appliances.
#[test]
fn agents_trusting_only_the_operators_root_enrol_rotate_and_talk() {
    let dir = tempfile::tempdir().unwrap();
    let root = OperatorCa::root("operator root");
    let intermediate = root.issue_ca("cpclink issuing ca");
    let mut cfg = authority_config(dir.path());
    cfg.ca = Some(ca_files(
        dir.path(),
        &intermediate,
        &intermediate.key,
        &[&root],
    ));
    let stores = [MemoryStore::default(), MemoryStore::default()];
    in_runtime(async {
        let authority = Authority::start(&cfg).await.unwrap();
        assert_eq!(
            authority.ca_cert(),
            root.der(),
            "agents are told to trust the root"
        );

        let mut agents = Vec::new();
        for (id, store) in ["a", "b"].into_iter().zip(&stores) {
            let opts = options(
                &cfg,
                &authority,
                root.der(),
                id,
                Some(token(&authority, id)),
            );
            agents.push(
                KeyAgent::start_with_store(opts, AnyStore::Memory(store.clone()))
                    .await
                    .unwrap(),
            );
        }
        let (a, b) = (&agents[0].0, &agents[1].0);
        until("a and b saw each other", Duration::from_secs(20), || {
            a.directory().is_active("b") && b.directory().is_active("a")
        })
        .await;
        for store in &stores {
            chains_to(store, &root, &intermediate).await;
        }
        // Appliances accept each other's chains: SAs both ways.
        a.request_sa("b").await.unwrap();
        b.request_sa("a").await.unwrap();

        // An operator token the authority signs (with its CA key: the intermediate's) is
        // accepted by an appliance's management API that trusts only the root; one signed
        // by another CA is not.
        let claims = cpclink_keymgr::credentials::OperatorClaims {
            id: "t1".into(),
            name: "noc".into(),
            role: cpclink_mgmt::Role::Viewer,
            tenant: None,
            expires: u64::MAX,
        };
        let signed = |key: &KeyPair| {
            cpclink_keymgr::credentials::issue_token(&key.serialize_der(), &claims).unwrap()
        };
        let checked = a
            .operator_credentials()
            .check_token(&signed(&intermediate.key), 0)
            .unwrap();
        assert_eq!(checked.name, "noc");
        let stranger_ca = OperatorCa::root("not this operator");
        assert!(a
            .operator_credentials()
            .check_token(&signed(&stranger_ca.key), 0)
            .is_err());

        // A rotation reaches both over the authority's connections.
        let epoch = b.epoch().await;
        authority.rotate_all("test").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A rotation retires the connections of the old generation: a request may
            // meet one closing, and is asked again.
            if let Ok(grant) = a.request_sa("b").await {
                if grant.epoch > epoch {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "no SA of b's rotated generation");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // An agent that trusts another root does not accept this authority.
        let stranger = OperatorCa::root("someone else's root");
        let refused = KeyAgent::start_with_store(
            options(
                &cfg,
                &authority,
                stranger.der(),
                "c",
                Some(token(&authority, "c")),
            ),
            AnyStore::Memory(MemoryStore::default()),
        )
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(refused.contains("UnknownIssuer"), "{refused}");

        // Restarted on its state, the authority issues under the intermediate it sealed, and
        // a's stored certificate is still accepted.
        a.shutdown();
        b.shutdown();
        authority.shutdown();
    });
    in_runtime(async {
        let again = Authority::start(&cfg).await.unwrap();
        assert_eq!(again.ca_cert(), root.der());
        assert!(again.directory().await.is_active("a"));
        let (a2, _events) = KeyAgent::start_with_store(
            options(&cfg, &again, root.der(), "a", None),
            AnyStore::Memory(stores[0].clone()),
        )
        .await
        .unwrap();
        until("a reconnected", Duration::from_secs(10), || {
            a2.authority_connected()
        })
        .await;
        // A new appliance enrols under the restarted authority.
        let d_store = MemoryStore::default();
        let (d, _events) = KeyAgent::start_with_store(
            options(&cfg, &again, root.der(), "d", Some(token(&again, "d"))),
            AnyStore::Memory(d_store.clone()),
        )
        .await
        .unwrap();
        until("d connected", Duration::from_secs(10), || {
            d.authority_connected()
        })
        .await;
        chains_to(&d_store, &root, &intermediate).await;
        a2.shutdown();
        d.shutdown();
        again.shutdown();
    });
}

/// Whether starting on `files` is refused with a message naming `field`, its file, and
/// containing `reason`; nothing may be sealed then.
async fn refused(dir: &Path, files: CaFiles, field: &str, path: &Path, reason: &str) {
    let mut cfg = authority_config(dir);
    cfg.ca = Some(files);
    let e = Authority::start(&cfg).await.unwrap_err().to_string();
    assert!(
        e.contains(field) && e.contains(&path.display().to_string()) && e.contains(reason),
        "expected {field} ({reason}) in: {e}"
    );
    assert!(
        !cfg.state_dir.join("ca.pem").exists(),
        "nothing is sealed from a refused CA"
    );
}

#[test]
fn a_ca_that_cannot_serve_is_refused_at_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = OperatorCa::root("operator root");
    let intermediate = root.issue_ca("cpclink issuing ca");
    let mut cfg = authority_config(dir.path());
    in_runtime(async {
        // A certificate that may not sign.
        let leaf = intermediate.issue_leaf("not-a-ca");
        let files = ca_files(dir.path(), &leaf, &leaf.key, &[&intermediate, &root]);
        let path = files.certificate.clone();
        refused(dir.path(), files, "[ca].certificate", &path, "CA:TRUE").await;

        // The key of another certificate.
        let other = KeyPair::generate().unwrap();
        let files = ca_files(dir.path(), &intermediate, &other, &[&root]);
        let path = files.key.clone();
        refused(dir.path(), files, "[ca].key", &path, "not the key").await;

        // No chain at all: nothing leads to a root.
        let files = ca_files(dir.path(), &intermediate, &intermediate.key, &[]);
        let path = files.chain.clone();
        refused(dir.path(), files, "[ca].chain", &path, "no certificate").await;

        // A chain that stops below the root.
        let middle = root.issue_ca("operator policy ca");
        let issuing = middle.issue_ca("cpclink issuing ca under policy");
        let files = ca_files(dir.path(), &issuing, &issuing.key, &[&middle]);
        let path = files.chain.clone();
        refused(
            dir.path(),
            files,
            "[ca].chain",
            &path,
            "not a self-signed root",
        )
        .await;

        // A chain to someone else's root.
        let stranger = OperatorCa::root("someone else's root");
        let files = ca_files(dir.path(), &intermediate, &intermediate.key, &[&stranger]);
        let path = files.chain.clone();
        refused(dir.path(), files, "[ca].chain", &path, "does not chain").await;

        // The full chain of three starts, and agents trusting the root are served.
        let files = ca_files(dir.path(), &issuing, &issuing.key, &[&middle, &root]);
        cfg.ca = Some(files);
        let authority = Authority::start(&cfg).await.unwrap();
        let store = MemoryStore::default();
        let (a, _events) = KeyAgent::start_with_store(
            options(
                &cfg,
                &authority,
                root.der(),
                "a",
                Some(token(&authority, "a")),
            ),
            AnyStore::Memory(store.clone()),
        )
        .await
        .unwrap();
        until("a connected", Duration::from_secs(10), || {
            a.authority_connected()
        })
        .await;
        let stored = store.get("identity/cert").await.unwrap().unwrap();
        let (leaf, chain) = pki::split_chain(&stored).unwrap();
        assert_eq!(chain, vec![issuing.der(), middle.der()]);
        tls::verify_chain(&root.der(), &leaf, &chain).unwrap();

        a.shutdown();
        authority.shutdown();
    });

    // Started again naming another intermediate: refused, the sealed one is kept.
    let files = ca_files(dir.path(), &intermediate, &intermediate.key, &[&root]);
    let path = files.certificate.clone();
    cfg.ca = Some(files);
    let e = in_runtime(Authority::start(&cfg)).unwrap_err().to_string();
    assert!(
        e.contains("[ca].certificate") && e.contains("first start"),
        "{e}"
    );
    assert!(e.contains(&path.display().to_string()), "{e}");
}

/// Renewed certificates carry the chain too, and peers accept them.
#[tokio::test]
async fn renewed_certificates_chain_to_the_operators_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = OperatorCa::root("operator root");
    let intermediate = root.issue_ca("cpclink issuing ca");
    let mut cfg = authority_config(dir.path());
    cfg.ca = Some(ca_files(
        dir.path(),
        &intermediate,
        &intermediate.key,
        &[&root],
    ));
    let authority = Authority::start(&cfg).await.unwrap();
    authority.set_cert_lifetime(Duration::from_secs(6));
    let store = MemoryStore::default();
    let (a, _ea) = KeyAgent::start_with_store(
        options(
            &cfg,
            &authority,
            root.der(),
            "a",
            Some(token(&authority, "a")),
        ),
        AnyStore::Memory(store.clone()),
    )
    .await
    .unwrap();
    let (b, _eb) = KeyAgent::start_with_store(
        options(
            &cfg,
            &authority,
            root.der(),
            "b",
            Some(token(&authority, "b")),
        ),
        AnyStore::Memory(MemoryStore::default()),
    )
    .await
    .unwrap();
    until("a connected", Duration::from_secs(10), || {
        a.authority_connected()
    })
    .await;
    let first = a.certificate_serial();
    until("a renewed", Duration::from_secs(10), || {
        a.certificate_serial() != first
    })
    .await;
    let renewed = chains_to(&store, &root, &intermediate).await;
    assert!(pki::same_serial(&renewed, &a.certificate_serial()));
    until("b sees a's new serial", Duration::from_secs(5), || {
        b.directory()
            .appliances
            .get("a")
            .is_some_and(|e| pki::same_serial(&e.cert_serial, &renewed))
    })
    .await;
    b.request_sa("a").await.unwrap();
    a.request_sa("b").await.unwrap();
    a.shutdown();
    b.shutdown();
    authority.shutdown();
}

/// On etcd the brought CA is sealed in the store as a generated one is, and a second
/// authority on the cluster (another state directory) serves under the same intermediate.
#[tokio::test]
async fn on_etcd_the_operators_ca_is_sealed_in_the_store_and_survives_a_restart() {
    let Some(etcd) = support::etcd::start_etcd() else {
        eprintln!("skipped: etcd is not installed");
        return;
    };
    let records = support::etcd::connect(&etcd, "/byo/").await;
    let dir = tempfile::tempdir().unwrap();
    let root = OperatorCa::root("operator root");
    let intermediate = root.issue_ca("cpclink issuing ca");
    let mut cfg = authority_config(dir.path());
    cfg.store = StoreConfig::Etcd {
        endpoints: etcd.urls(),
        prefix: "/byo/".into(),
        candidate: None,
        election_ttl_secs: 10,
    };
    cfg.ca = Some(ca_files(
        dir.path(),
        &intermediate,
        &intermediate.key,
        &[&root],
    ));
    let authority = Authority::start(&cfg).await.unwrap();
    let sealed = records.get("material/ca.pem").await.unwrap().unwrap();
    let sealed = pki::certs_from_pem(&String::from_utf8_lossy(&sealed)).unwrap();
    assert_eq!(sealed, vec![intermediate.der(), root.der()]);
    let key = records
        .get("material/ca.key.sealed")
        .await
        .unwrap()
        .unwrap();
    assert!(
        !key.windows(16)
            .any(|w| intermediate.key.serialize_der().windows(16).any(|k| k == w)),
        "the key rests sealed"
    );
    let store = MemoryStore::default();
    let (a, _events) = KeyAgent::start_with_store(
        options(
            &cfg,
            &authority,
            root.der(),
            "a",
            Some(token(&authority, "a")),
        ),
        AnyStore::Memory(store.clone()),
    )
    .await
    .unwrap();
    until("a connected", Duration::from_secs(10), || {
        a.authority_connected()
    })
    .await;
    a.shutdown();
    authority.shutdown();

    // Another state directory on the same cluster: the material comes from etcd.
    cfg.state_dir = dir.path().join("authority-2");
    let again = Authority::start(&cfg).await.unwrap();
    assert_eq!(again.ca_cert(), root.der());
    let (a2, _events) = KeyAgent::start_with_store(
        options(&cfg, &again, root.der(), "a", None),
        AnyStore::Memory(store.clone()),
    )
    .await
    .unwrap();
    until("a reconnected", Duration::from_secs(10), || {
        a2.authority_connected()
    })
    .await;
    chains_to(&store, &root, &intermediate).await;
    a2.shutdown();
    again.shutdown();
}
