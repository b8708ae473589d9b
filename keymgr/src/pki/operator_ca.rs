//! An operator's own CA: the authority issues under an intermediate CA the operator
//! brings (`[ca]` in its configuration), so that agents trust the operator's root.
//!
//! Everything is checked before the key is sealed, each failure naming the file, the
//! field and the fix: the certificate is a CA that may sign certificates and is valid
//! now, the key is its key, and the chain leads to a self-signed root. Last, a probe
//! certificate issued under the intermediate must verify against the root exactly as an
//! agent's handshake would verify an appliance's, so that nothing the authority issues
//! later can fail where the checks above passed.

use cpclink_diagnostics::Diagnostic;
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

use super::{certs_from_pem, Ca, Identity};
use crate::config::CaFiles;
use crate::{Error, Result};

/// One of the `[ca]` fields, for diagnostics.
struct Field<'a> {
    name: &'static str,
    path: &'a std::path::Path,
}

impl Field<'_> {
    fn error(&self, reason: impl Into<String>, fix: impl Into<String>) -> Error {
        Diagnostic::new(self.path.display().to_string(), self.name, reason)
            .with_fix(fix)
            .into()
    }

    fn read(&self) -> Result<String> {
        std::fs::read_to_string(self.path).map_err(|e| {
            self.error(
                format!("cannot be read: {e}"),
                "name a readable PEM file in the authority's [ca] section",
            )
        })
    }

    fn certs(&self) -> Result<Vec<CertificateDer<'static>>> {
        certs_from_pem(&self.read()?).map_err(|e| {
            self.error(
                e.to_string(),
                "give PEM certificates (-----BEGIN CERTIFICATE-----)",
            )
        })
    }
}

fn parse<'a>(field: &Field<'_>, der: &'a [u8]) -> Result<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| {
            field.error(
                format!("holds an unparsable certificate: {e}"),
                "give DER-valid X.509 certificates in PEM",
            )
        })
}

/// Why `cert` cannot sign certificates, if it cannot.
fn not_a_ca(cert: &X509Certificate<'_>) -> Option<&'static str> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        _ => return Some("is not a CA certificate (basicConstraints lacks CA:TRUE)"),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => None,
        _ => Some("may not sign certificates (keyUsage lacks keyCertSign)"),
    }
}

fn self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw()
}

impl Ca {
    /// The operator's intermediate CA named by `files`, checked (see the module comment).
    pub fn bring(files: &CaFiles) -> Result<Self> {
        let certificate = Field {
            name: "[ca].certificate",
            path: &files.certificate,
        };
        let key_field = Field {
            name: "[ca].key",
            path: &files.key,
        };
        let chain_field = Field {
            name: "[ca].chain",
            path: &files.chain,
        };

        let certs = certificate.certs()?;
        let [ca_der] = certs.as_slice() else {
            return Err(certificate.error(
                format!("holds {} certificates, not one", certs.len()),
                "keep only the intermediate CA's certificate here and put the ones above it in [ca].chain",
            ));
        };
        let ca = parse(&certificate, ca_der)?;
        if let Some(reason) = not_a_ca(&ca) {
            return Err(certificate.error(
                reason,
                "give the certificate of an intermediate CA issued for this authority (CA:TRUE, keyUsage keyCertSign), not a server or client certificate",
            ));
        }
        if !ca.validity().is_valid() {
            return Err(certificate.error(
                format!(
                    "is not valid now (valid from {} to {})",
                    ca.validity().not_before,
                    ca.validity().not_after
                ),
                "have the operator's CA issue a current intermediate certificate (and check this machine's clock)",
            ));
        }

        let key = KeyPair::from_pem(&key_field.read()?).map_err(|e| {
            key_field.error(
                format!("is no private key this authority reads: {e}"),
                "give the intermediate's unencrypted private key in PEM (openssl pkcs8 -topk8 -nocrypt converts one)",
            )
        })?;
        if key.public_key_raw() != ca.public_key().subject_public_key.data.as_ref() {
            return Err(key_field.error(
                format!(
                    "is not the key of the certificate in {}",
                    files.certificate.display()
                ),
                "give the private key the intermediate certificate was issued for",
            ));
        }

        let chain = chain_field.certs()?;
        let Some(root_der) = chain.last() else {
            return Err(chain_field.error(
                "holds no certificate",
                "give the certificates above the intermediate, up to and including the operator's self-signed root",
            ));
        };
        let mut below = ca.clone();
        for der in &chain {
            let above = parse(&chain_field, der)?;
            if below.issuer().as_raw() != above.subject().as_raw() {
                return Err(chain_field.error(
                    format!(
                        "does not chain: {} is issued by {}, but the next certificate is {}",
                        below.subject(),
                        below.issuer(),
                        above.subject()
                    ),
                    "order the chain from the intermediate's issuer up to the root, one certificate each",
                ));
            }
            if let Some(reason) = not_a_ca(&above) {
                return Err(chain_field.error(
                    format!("{}: {reason}", above.subject()),
                    "give only CA certificates in the chain",
                ));
            }
            below = above;
        }
        if !self_signed(&below) {
            return Err(chain_field.error(
                format!(
                    "ends at {}, which is not a self-signed root",
                    below.subject()
                ),
                "append the operator's root certificate (the one agents name as ca_cert)",
            ));
        }

        let brought = Self::load_chained(ca_der, &key.serialize_der(), chain.clone())?;
        // What agents will check, checked once now with a probe certificate.
        let (probe_key, csr) = super::appliance_csr("probe")?;
        drop(probe_key);
        let identity = Identity {
            appliance: "probe".into(),
            centre: "probe".into(),
        };
        let (probe, _) = brought.sign_csr(&csr, &identity, 1)?;
        crate::tls::verify_chain(root_der, &probe, &brought.leaf_chain()).map_err(|e| {
            chain_field.error(
                format!(
                    "a certificate issued under {} does not verify against the root: {e}",
                    files.certificate.display()
                ),
                "give the chain that leads from this intermediate to the root agents trust, each certificate valid now",
            )
        })?;
        Ok(brought)
    }
}
