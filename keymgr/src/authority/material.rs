//! The authority's secret material: the CA, its server certificate, the token key and the
//! escrow key, each sealed under the KEK wherever it rests.
//!
//! One process (redb, the default) keeps it as files in the state directory. Replicas on
//! etcd keep it under `material/` in the store, so that every replica serves with one CA:
//! whichever replica starts first writes all of it in one transaction guarded by the CA
//! certificate's key, and every replica (the first included) then loads what the store
//! holds. Two replicas starting together each generate material, one transaction wins, and
//! both load the winner's.
//!
//! The CA is generated on first start, or is the operator's intermediate (`[ca]`), checked
//! and then sealed exactly as a generated one: its certificate is stored with the chain up
//! to the operator's root after it, in one PEM, so that a restart restores both.

use zeroize::Zeroizing;

use super::{read_file, write_durably, StatePaths};
use crate::config::CaFiles;
use crate::pki::{self, Ca, KeyedCert};
use crate::seal::{random_bytes, EscrowKey, Kek};
use crate::store::{AnyStore, Store, Write};
use crate::{Error, Result};

/// The CA, the authority's server certificate, the token key and the escrow key, opened.
pub(super) struct Material {
    pub(super) ca: Ca,
    pub(super) server: KeyedCert,
    pub(super) token_key: Zeroizing<[u8; 32]>,
    pub(super) escrow: EscrowKey,
}

/// The material as it rests: certificates in PEM, keys sealed under the KEK.
struct Sealed {
    ca_cert: Vec<u8>,
    ca_key: Vec<u8>,
    token_key: Vec<u8>,
    server_cert: Vec<u8>,
    server_key: Vec<u8>,
    escrow_key: Vec<u8>,
}

/// Store keys of the sealed material; the CA certificate's is written with the rest and
/// guards their creation.
const CA_CERT: &str = "material/ca.pem";
const CA_KEY: &str = "material/ca.key.sealed";
const TOKEN_KEY: &str = "material/token.key.sealed";
const SERVER_CERT: &str = "material/authority.pem";
const SERVER_KEY: &str = "material/authority.key.sealed";
const ESCROW_KEY: &str = "material/escrow.key.sealed";

impl Sealed {
    /// New material under the operator's CA if `brought` names one, else under a CA
    /// generated now; sealed under `kek`.
    fn offer(kek: &Kek, brought: Option<&CaFiles>) -> Result<Self> {
        let ca = match brought {
            Some(files) => Ca::bring(files)?,
            None => Ca::generate("cpclink key-plane authority")?,
        };
        Self::seal(kek, &ca)
    }

    /// New material around `ca`, sealed under `kek`.
    fn seal(kek: &Kek, ca: &Ca) -> Result<Self> {
        let server = ca.issue_authority()?;
        let token_key = random_bytes::<32>()?;
        let escrow = EscrowKey::generate()?;
        let mut ca_cert = pki::cert_pem(&ca.cert_der());
        for above in ca.chain() {
            ca_cert.push_str(&pki::cert_pem(above));
        }
        Ok(Self {
            ca_cert: ca_cert.into_bytes(),
            ca_key: kek.seal("ca-key", &ca.key_der())?,
            token_key: kek.seal("token-key", token_key.as_ref())?,
            server_cert: pki::cert_pem(&server.cert).into_bytes(),
            server_key: kek.seal("authority-key", &server.key)?,
            escrow_key: kek.seal("escrow-key", escrow.private_bytes())?,
        })
    }

    /// The material in `paths`, if a complete set is there (an escrow key is generated when
    /// missing: state created before escrow existed).
    fn from_files(paths: &StatePaths, kek: &Kek) -> Result<Option<Self>> {
        if !paths.ca_cert.exists() {
            return Ok(None);
        }
        let escrow_key = if paths.escrow_key.exists() {
            read_file(&paths.escrow_key)?
        } else {
            kek.seal("escrow-key", EscrowKey::generate()?.private_bytes())?
        };
        Ok(Some(Self {
            ca_cert: read_file(&paths.ca_cert)?,
            ca_key: read_file(&paths.ca_key)?,
            token_key: read_file(&paths.token_key)?,
            server_cert: read_file(&paths.server_cert)?,
            server_key: read_file(&paths.server_key)?,
            escrow_key,
        }))
    }

    /// Writes every file; the CA certificate last, since its presence marks the set
    /// complete.
    fn to_files(&self, paths: &StatePaths) -> Result<()> {
        write_durably(&paths.token_key, &self.token_key)?;
        write_durably(&paths.ca_key, &self.ca_key)?;
        write_durably(&paths.server_key, &self.server_key)?;
        write_durably(&paths.server_cert, &self.server_cert)?;
        write_durably(&paths.escrow_key, &self.escrow_key)?;
        write_durably(&paths.ca_cert, &self.ca_cert)
    }

    fn writes(&self) -> Vec<Write> {
        [
            (CA_CERT, &self.ca_cert),
            (CA_KEY, &self.ca_key),
            (TOKEN_KEY, &self.token_key),
            (SERVER_CERT, &self.server_cert),
            (SERVER_KEY, &self.server_key),
            (ESCROW_KEY, &self.escrow_key),
        ]
        .into_iter()
        .map(|(k, v)| Write::Put(k.to_owned(), v.clone()))
        .collect()
    }

    async fn from_store(store: &AnyStore) -> Result<Option<Self>> {
        let Some(ca_cert) = store.get(CA_CERT).await? else {
            return Ok(None);
        };
        let get = |key: &'static str| async move {
            store.get(key).await?.ok_or_else(|| Error::CorruptRecord {
                key: key.to_owned(),
                reason: format!("missing although {CA_CERT} is present (written in one transaction with it): restore the store's material/ keys from backup"),
            })
        };
        Ok(Some(Self {
            ca_cert,
            ca_key: get(CA_KEY).await?,
            token_key: get(TOKEN_KEY).await?,
            server_cert: get(SERVER_CERT).await?,
            server_key: get(SERVER_KEY).await?,
            escrow_key: get(ESCROW_KEY).await?,
        }))
    }

    /// Opens every sealed key under `kek`.
    fn open(&self, kek: &Kek) -> Result<Material> {
        let mut certs = pki::certs_from_pem(&String::from_utf8_lossy(&self.ca_cert))?.into_iter();
        let ca_cert = certs
            .next()
            .ok_or_else(|| Error::Certificate("the sealed CA certificate file is empty".into()))?;
        let ca = Ca::load_chained(
            &ca_cert,
            &kek.open("ca-key", &self.ca_key)?,
            certs.collect(),
        )?;
        let server = KeyedCert {
            cert: pki::cert_from_pem(&String::from_utf8_lossy(&self.server_cert))?,
            key: kek.open("authority-key", &self.server_key)?,
            chain: ca.leaf_chain(),
        };
        let raw = kek.open("token-key", &self.token_key)?;
        if raw.len() != 32 {
            return Err(Error::KeyWrap("token key has the wrong length"));
        }
        let mut token_key = Zeroizing::new([0u8; 32]);
        token_key.copy_from_slice(&raw);
        let escrow = EscrowKey::from_bytes(&kek.open("escrow-key", &self.escrow_key)?)?;
        Ok(Material {
            ca,
            server,
            token_key,
            escrow,
        })
    }
}

/// The material in `state_dir`'s files, created there on first start.
fn from_state_dir(paths: &StatePaths, kek: &Kek, brought: Option<&CaFiles>) -> Result<Material> {
    let sealed = match Sealed::from_files(paths, kek)? {
        Some(s) => {
            if !paths.escrow_key.exists() {
                write_durably(&paths.escrow_key, &s.escrow_key)?;
            }
            s
        }
        None => {
            let s = Sealed::offer(kek, brought)?;
            s.to_files(paths)?;
            s
        }
    };
    sealed.open(kek)
}

/// The material shared through `store`, created there by the first replica to start. A
/// state directory that already holds material (an authority that ran before replicas)
/// offers its own, so its appliances' certificates stay valid. The CA certificate is
/// written to the state directory too, for operators to hand to appliances.
async fn from_store(
    store: &AnyStore,
    paths: &StatePaths,
    kek: &Kek,
    brought: Option<&CaFiles>,
) -> Result<Material> {
    if Sealed::from_store(store).await?.is_none() {
        let offered = match Sealed::from_files(paths, kek)? {
            Some(s) => s,
            None => Sealed::offer(kek, brought)?,
        };
        // Losing this race is fine: the winner's material is loaded below.
        store
            .apply_unless_present(CA_CERT, offered.writes())
            .await?;
    }
    let sealed = Sealed::from_store(store)
        .await?
        .ok_or_else(|| Error::CorruptRecord {
            key: CA_CERT.to_owned(),
            reason: "absent right after it was created: is another process deleting material/?"
                .into(),
        })?;
    let material = sealed.open(kek)?;
    if read_file(&paths.ca_cert).ok().as_deref() != Some(sealed.ca_cert.as_slice()) {
        write_durably(&paths.ca_cert, &sealed.ca_cert)?;
    }
    Ok(material)
}

/// The authority's material: from the store when replicas share it (etcd), else from the
/// state directory's files. `brought` is the operator's CA from the configuration, used
/// when the material is first created and checked against it afterwards.
pub(super) async fn load(
    store: &AnyStore,
    paths: &StatePaths,
    kek: &Kek,
    brought: Option<&CaFiles>,
) -> Result<Material> {
    let material = match store {
        AnyStore::Etcd(_) => from_store(store, paths, kek, brought).await?,
        // Created before any replica leads: unfenced, guarded by the CA's key alone.
        AnyStore::Replica(r) => {
            let unfenced = AnyStore::Etcd(Box::new(r.unfenced().clone()));
            from_store(&unfenced, paths, kek, brought).await?
        }
        _ => from_state_dir(paths, kek, brought)?,
    };
    if let Some(files) = brought {
        still_brought(&material.ca, files)?;
    }
    Ok(material)
}

/// Refuses a `[ca]` that names another certificate than the CA sealed at first start:
/// appliances hold certificates of that one, and replacing it is not supported.
fn still_brought(sealed: &Ca, files: &CaFiles) -> Result<()> {
    let named = std::fs::read_to_string(&files.certificate)
        .ok()
        .and_then(|pem| pki::cert_from_pem(&pem).ok());
    if named.as_ref() == Some(&sealed.cert_der()) {
        return Ok(());
    }
    let subject = pki::identity_of(&sealed.cert_der())
        .map(|i| i.appliance)
        .unwrap_or_default();
    Err(cpclink_diagnostics::Diagnostic::new(
        files.certificate.display().to_string(),
        "[ca].certificate",
        format!("is not the CA this authority sealed at its first start (CN {subject:?}, kept in its state)"),
    )
    .with_fix("name the intermediate the authority first started with; replacing the CA under enrolled appliances is not supported (start a new state and enrol them again)")
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn kek() -> Kek {
        Kek::from_bytes([7u8; 32])
    }

    #[tokio::test]
    async fn redb_layout_keeps_material_in_files_and_loads_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path());
        let store = AnyStore::Memory(MemoryStore::default());
        let first = load(&store, &paths, &kek(), None).await.unwrap();
        for p in [
            &paths.ca_cert,
            &paths.ca_key,
            &paths.token_key,
            &paths.escrow_key,
        ] {
            assert!(p.exists(), "{}", p.display());
        }
        assert!(store.scan("material/").await.unwrap().is_empty());
        let again = load(&store, &paths, &kek(), None).await.unwrap();
        assert_eq!(first.server.cert, again.server.cert);
        assert_eq!(*first.token_key, *again.token_key);
    }

    #[tokio::test]
    async fn replicas_starting_together_agree_on_one_ca_and_an_old_state_dir_is_kept() {
        let store = AnyStore::Memory(MemoryStore::default());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (pa, pb) = (StatePaths::new(a.path()), StatePaths::new(b.path()));
        let kek = kek();
        let (ma, mb) = tokio::join!(
            from_store(&store, &pa, &kek, None),
            from_store(&store, &pb, &kek, None)
        );
        let (ma, mb) = (ma.unwrap(), mb.unwrap());
        assert_eq!(ma.server.cert, mb.server.cert);
        assert_eq!(*ma.token_key, *mb.token_key);
        assert_eq!(
            std::fs::read(&pa.ca_cert).unwrap(),
            std::fs::read(&pb.ca_cert).unwrap()
        );
        assert!(
            !pa.ca_key.exists(),
            "replicas keep sealed keys in the store only"
        );

        // A single authority's state directory moved onto etcd keeps its CA.
        let old = tempfile::tempdir().unwrap();
        let po = StatePaths::new(old.path());
        let solo = from_state_dir(&po, &kek, None).unwrap();
        let fresh = AnyStore::Memory(MemoryStore::default());
        let moved = from_store(&fresh, &po, &kek, None).await.unwrap();
        assert_eq!(solo.server.cert, moved.server.cert);
        assert_eq!(fresh.scan("material/").await.unwrap().len(), 6);
    }
}
