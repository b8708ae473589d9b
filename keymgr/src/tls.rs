//! TLS 1.3 for the control channel: rustls with the aws-lc-rs provider, the
//! X25519MLKEM768 hybrid group preferred and X25519 accepted, certificates from the CA.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::pki::{identity_of, Identity, KeyedCert};
use crate::{Error, Result};

/// The ALPN protocol of the control channel.
pub const ALPN: &[u8] = b"cpclink-keymgr/1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    let mut p = default_provider();
    // Post-quantum hybrid first; classic X25519 only for peers that lack it.
    p.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519];
    Arc::new(p)
}

/// Whether `leaf`, with the CA certificates `intermediates` above it, chains to `anchor`
/// as a certificate an appliance presents (client authentication, valid now).
pub fn chains_to(
    anchor: &CertificateDer<'static>,
    leaf: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
) -> bool {
    let Ok(roots) = roots(anchor) else {
        return false;
    };
    let Ok(verifier) = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()
    else {
        return false;
    };
    verifier
        .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
        .is_ok()
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// How often a QUIC endpoint may answer a packet of a connection it does not know with a
/// stateless reset: ten thousand agents of a restarted replica hear it within a second.
const RESET_INTERVAL: Duration = Duration::from_micros(100);

/// Binds a QUIC endpoint on `listen` (serving with `server` if given) whose stateless-reset
/// key is derived from the KEK. After a restart (a crash, kill -9, an upgrade) it is the
/// same key, so the endpoint answers the packets of connections it lost with resets its
/// peers recognise, and they reconnect at once instead of waiting out the idle timeout.
pub fn endpoint(
    listen: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
    kek: &crate::seal::Kek,
) -> Result<quinn::Endpoint> {
    let secret = kek.derive("cpclink quic stateless reset v1");
    let cid_secret = kek.derive("cpclink quic connection id v1");
    let mut config = quinn::EndpointConfig::new(Arc::new(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        secret.as_ref(),
    )));
    config.min_reset_interval(RESET_INTERVAL);
    // Connection IDs carry a check keyed the same way: a restarted endpoint must recognise
    // its predecessor's IDs as its own, or it drops their packets instead of resetting.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid_secret[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket =
        std::net::UdpSocket::bind(listen).map_err(|e| Error::io(format!("binding {listen}"), e))?;
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|e| Error::io(format!("binding {listen}"), e))
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    // Several keep-alives fit in the idle timeout, so a live peer is never timed out, while a
    // crashed one (which cannot send a recognisable reset after restarting) is noticed soon.
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_bidi_streams(1024u32.into());
    Arc::new(t)
}

/// A QUIC server configuration. With `require_client_cert` false, clients without a
/// certificate may connect (the authority's enrolment path) and are told apart later.
pub fn server_config(
    ca: &CertificateDer<'static>,
    own: &KeyedCert,
    require_client_cert: bool,
) -> Result<quinn::ServerConfig> {
    let tls = rustls_server(provider(), ca, own, require_client_cert)?;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Certificate(format!("quic server config: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// The TLS half of [`server_config`].
fn rustls_server(
    provider: Arc<rustls::crypto::CryptoProvider>,
    ca: &CertificateDer<'static>,
    own: &KeyedCert,
    require_client_cert: bool,
) -> Result<rustls::ServerConfig> {
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone());
    if !require_client_cert {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| Error::Certificate(format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(own.presented(), own.private_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// The ALPN protocol of the management API.
pub const HTTPS_ALPN: &[u8] = b"http/1.1";

/// An HTTPS server configuration for a management API: `own`'s certificate, issued by the
/// authority's CA; a client certificate from `ca` is verified when one is presented
/// (clients without one authenticate with a bearer token).
pub fn https_server(
    ca: &CertificateDer<'static>,
    own: &KeyedCert,
) -> Result<Arc<rustls::ServerConfig>> {
    let mut tls = rustls_server(provider(), ca, own, false)?;
    tls.alpn_protocols = vec![HTTPS_ALPN.to_vec()];
    Ok(Arc::new(tls))
}

/// An HTTPS client configuration trusting `ca` only, for `cpclink ctl`; presenting `own`
/// (an operator certificate) if given.
pub fn https_client(
    ca: &CertificateDer<'static>,
    own: Option<&KeyedCert>,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut tls = rustls_client(provider(), ca, own)?;
    tls.alpn_protocols = vec![HTTPS_ALPN.to_vec()];
    Ok(Arc::new(tls))
}

/// A QUIC client configuration trusting `ca`, presenting `own` if given.
pub fn client_config(
    ca: &CertificateDer<'static>,
    own: Option<&KeyedCert>,
) -> Result<quinn::ClientConfig> {
    let tls = rustls_client(provider(), ca, own)?;
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Certificate(format!("quic client config: {e}")))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// The TLS half of [`client_config`].
fn rustls_client(
    provider: Arc<rustls::crypto::CryptoProvider>,
    ca: &CertificateDer<'static>,
    own: Option<&KeyedCert>,
) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?);
    let mut tls = match own {
        Some(own) => builder.with_client_auth_cert(own.presented(), own.private_key())?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// Checks that `leaf` (a client certificate) chains through `intermediates` to `anchor`
/// exactly as a peer's handshake would check it: signatures, validity, CA constraints and
/// names along the path.
pub fn verify_chain(
    anchor: &CertificateDer<'static>,
    leaf: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
) -> Result<()> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(anchor)?, provider())
        .build()
        .map_err(|e| Error::Certificate(format!("client verifier: {e}")))?;
    verifier
        .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
        .map_err(|e| Error::Certificate(e.to_string()))?;
    Ok(())
}

/// The end-entity certificate the peer presented and TLS verified, if any.
pub fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.first().cloned()
}

/// The identity named by the peer's verified certificate, if it presented one.
pub fn peer_identity(conn: &quinn::Connection) -> Option<Identity> {
    identity_of(&peer_certificate(conn)?).ok()
}

/// The serial of the certificate the peer presented, hex.
pub fn peer_serial(conn: &quinn::Connection) -> Option<String> {
    crate::pki::serial_of(&peer_certificate(conn)?).ok()
}

#[cfg(test)]
mod tests {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    use rustls::crypto::SupportedKxGroup;
    use rustls::NamedGroup;

    use super::*;
    use crate::pki::Ca;

    fn only(groups: &[&'static dyn SupportedKxGroup]) -> Arc<rustls::crypto::CryptoProvider> {
        let mut p = default_provider();
        p.kx_groups = groups.to_vec();
        Arc::new(p)
    }

    /// A full mutually authenticated handshake in memory with the configs the control
    /// channel uses (QUIC carries the same TLS handshake); returns the group both agreed.
    fn negotiated(
        client: Arc<rustls::crypto::CryptoProvider>,
        server: Arc<rustls::crypto::CryptoProvider>,
    ) -> NamedGroup {
        let ca = Ca::generate("test ca").unwrap();
        let ca_cert = ca.cert_der();
        let client = rustls_client(
            client,
            &ca_cert,
            Some(&crate::pki::issued_for_tests(&ca, "a")),
        )
        .unwrap();
        let server = rustls_server(
            server,
            &ca_cert,
            &crate::pki::issued_for_tests(&ca, "b"),
            true,
        )
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("b").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().unwrap();
            wire.clear();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking(), "no handshake");
        let group = s.negotiated_key_exchange_group().unwrap().name();
        assert_eq!(c.negotiated_key_exchange_group().unwrap().name(), group);
        // Mutual: the server saw the client's certificate.
        assert!(s.peer_certificates().is_some_and(|c| !c.is_empty()));
        group
    }

    #[test]
    fn control_channel_negotiates_the_post_quantum_hybrid() {
        assert_eq!(
            negotiated(provider(), provider()),
            NamedGroup::X25519MLKEM768
        );
    }

    #[test]
    fn peers_offering_only_x25519_are_accepted_with_x25519() {
        let classic = only(&[kx_group::X25519]);
        assert_eq!(negotiated(classic.clone(), provider()), NamedGroup::X25519);
        assert_eq!(negotiated(provider(), classic), NamedGroup::X25519);
    }
}

#[cfg(test)]
mod restart_tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::{Ca, AUTHORITY_NAME};
    use crate::seal::Kek;

    /// A server endpoint that dies without a word (its runtime dropped, as a kill -9 drops
    /// a process) and comes back on the same address: with the keys derived from the same
    /// KEK, the client's next keep-alive is answered with a reset it accepts; with another
    /// KEK, nothing it recognises comes back and only the idle timeout would end it. Waits
    /// `window` for the connection to end.
    fn reset_after_restart(same_kek: bool, window: Duration) -> Option<quinn::ConnectionError> {
        let ca = Ca::generate("test ca").unwrap();
        let server_cert = ca.issue_authority().unwrap();
        let server_cfg = || server_config(&ca.cert_der(), &server_cert, false).unwrap();
        let kek = Kek::from_bytes([5; 32]);
        let first = tokio::runtime::Runtime::new().unwrap();
        let server = first.block_on(async {
            endpoint(
                (std::net::Ipv4Addr::LOCALHOST, 0).into(),
                Some(server_cfg()),
                &kek,
            )
        });
        let server = server.unwrap();
        let addr = server.local_addr().unwrap();
        let accepting = server.clone();
        first.spawn(async move {
            let conn = accepting.accept().await?.await.ok()?;
            conn.closed().await;
            Some(())
        });
        let client_rt = tokio::runtime::Runtime::new().unwrap();
        let conn = client_rt.block_on(async {
            let client =
                quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into()).unwrap();
            client
                .connect_with(
                    client_config(&ca.cert_der(), None).unwrap(),
                    addr,
                    AUTHORITY_NAME,
                )
                .unwrap()
                .await
                .unwrap()
        });
        drop(server);
        drop(first);
        let other = Kek::from_bytes([6; 32]);
        let again = tokio::runtime::Runtime::new().unwrap();
        let _restarted = again
            .block_on(async {
                endpoint(
                    addr,
                    Some(server_cfg()),
                    if same_kek { &kek } else { &other },
                )
            })
            .unwrap();
        // Keep-alives go every 2 s; the idle timeout is 10 s.
        client_rt.block_on(async { tokio::time::timeout(window, conn.closed()).await.ok() })
    }

    #[test]
    fn a_restarted_endpoint_resets_its_predecessors_connections() {
        // Up to four keep-alives' time (one may fall while nothing listens on the address,
        // and a loaded machine delays timers), still inside the idle timeout.
        let same = reset_after_restart(true, Duration::from_secs(9));
        assert!(
            matches!(same, Some(quinn::ConnectionError::Reset)),
            "same KEK: {same:?}"
        );
        // Another KEK's endpoint sends nothing the client takes for a reset: the connection
        // lives on, and 5 s is well inside its 10 s idle timeout.
        let other = reset_after_restart(false, Duration::from_secs(5));
        assert!(other.is_none(), "another KEK: {other:?}");
    }
}
