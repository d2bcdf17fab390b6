//! Server certificates checked as containerd checks them.
//!
//! containerd (Go's `crypto/x509`) accepts a server certificate that is itself one of the
//! trusted CA certificates, byte for byte: `Verify` returns the one-certificate chain when the
//! pool contains the leaf, without building a chain. That is what a certificate made the way
//! Docker's documentation shows (`openssl req -x509 … -addext subjectAltName=…`, which OpenSSL
//! marks `CA:TRUE`) relies on when it is configured as the CA. webpki refuses such a certificate
//! as a CA used as an end entity. [`ExactCaVerifier`] keeps webpki's verification and, only on
//! that refusal, accepts a certificate that is exactly one of the configured CA certificates and
//! valid for the server's name, now, and for server authentication, as Go checks it.
//!
//! The handshake signatures are verified as before (by the wrapped verifier), with the key of the
//! certificate presented, so the server must hold that certificate's private key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use x509_cert::der::Decode;

/// `id-kp-serverAuth` (RFC 5280 4.2.1.12).
const SERVER_AUTH: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

/// Why the TLS settings of a registry client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("not a PEM certificate bundle: {0}")]
    Pem(String),
    #[error("{0}")]
    Verifier(#[from] TlsError),
}

/// The certificates of PEM bundles (the CA files), in DER, in order.
pub(crate) fn certificates(
    bundles: &[Vec<u8>],
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let mut certificates = Vec::new();
    for bundle in bundles {
        for certificate in CertificateDer::pem_slice_iter(bundle) {
            certificates.push(certificate.map_err(|e| TlsConfigError::Pem(e.to_string()))?);
        }
    }
    Ok(certificates)
}

/// The rustls configuration reqwest would build for `tls_certs_merge(configured)` (the system's
/// roots plus the configured CA certificates, TLS 1.2 and 1.3, HTTP/1.1), with its verifier
/// wrapped in an [`ExactCaVerifier`].
pub(crate) fn client_config(
    configured: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    // The provider reqwest would pick: the process default (ring, installed by the caller).
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let inner = rustls_platform_verifier::Verifier::new_with_extra_roots(
        configured.iter().cloned(),
        provider.clone(),
    )?;
    let verifier = ExactCaVerifier::new(Arc::new(inner), configured);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // reqwest announces what it speaks when it builds the configuration itself; it is built
    // without HTTP/2 here, so HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A verifier that also accepts, as Go does, a server certificate that is exactly one of the
/// configured CA certificates (see the module documentation). Every other certificate gets the
/// wrapped verifier's answer unchanged.
#[derive(Debug)]
pub(crate) struct ExactCaVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    configured: Vec<CertificateDer<'static>>,
}

impl ExactCaVerifier {
    pub(crate) fn new(
        inner: Arc<dyn ServerCertVerifier>,
        configured: Vec<CertificateDer<'static>>,
    ) -> Self {
        Self { inner, configured }
    }

    fn is_configured(&self, certificate: &CertificateDer<'_>) -> bool {
        self.configured
            .iter()
            .any(|ca| ca.as_ref() == certificate.as_ref())
    }
}

impl ServerCertVerifier for ExactCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // Only webpki's refusal of a CA certificate as the server's is reconsidered: any
            // other failure (unknown issuer, expired, wrong name…) stands as it is.
            Err(error) if ca_used_as_end_entity(&error) && !self.is_configured(end_entity) => {
                // Still refused; said with the rule, so that the fix is plain.
                Err(TlsError::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(UnconfiguredCaCertificate)),
                )))
            }
            Err(error) if ca_used_as_end_entity(&error) => {
                match configured_certificate_valid(end_entity, server_name, now) {
                    Ok(()) => {
                        tracing::debug!(server = ?server_name, "server certificate is a configured CA certificate (exact match)");
                        Ok(ServerCertVerified::assertion())
                    }
                    // Its own reason (e.g. the name), clearer than "CA used as end entity".
                    Err(why) => Err(why),
                }
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// webpki's refusal of a CA certificate as the server's, for one that is not a configured CA
/// certificate (same error kind, a message that names the rule).
#[derive(thiserror::Error)]
#[error(
    "CaUsedAsEndEntity: the server's certificate is a CA certificate (CA:TRUE) that is not exactly one of the configured CA certificates (only an exact match is accepted as the server's, as containerd does)"
)]
pub(crate) struct UnconfiguredCaCertificate;

/// rustls shows `CertificateError::Other` with `{:?}`: the message, not the type's name.
impl std::fmt::Debug for UnconfiguredCaCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Whether rustls reports webpki's `CaUsedAsEndEntity` (a `CA:TRUE` certificate as the server's).
fn ca_used_as_end_entity(error: &TlsError) -> bool {
    match error {
        TlsError::InvalidCertificate(CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// What Go checks of a leaf that is one of its roots: the validity period, the extended key usage
/// (server authentication, when the certificate restricts it), and the name (its subject
/// alternative names; the common name is ignored, as by Go since 1.15 and by webpki).
fn configured_certificate_valid(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), TlsError> {
    let certificate = x509_cert::Certificate::from_der(end_entity.as_ref())
        .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
    let tbs = certificate.tbs_certificate();
    let not_before = UnixTime::since_unix_epoch(tbs.validity().not_before.to_unix_duration());
    let not_after = UnixTime::since_unix_epoch(tbs.validity().not_after.to_unix_duration());
    if now.as_secs() < not_before.as_secs() {
        return Err(TlsError::InvalidCertificate(
            CertificateError::NotValidYetContext {
                time: now,
                not_before,
            },
        ));
    }
    if now.as_secs() > not_after.as_secs() {
        return Err(TlsError::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: now,
                not_after,
            },
        ));
    }
    match tbs.get_extension::<x509_cert::ext::pkix::ExtendedKeyUsage>() {
        Ok(None) => {}
        Ok(Some((_, usage))) if usage.0.contains(&SERVER_AUTH) => {}
        Ok(Some(_)) => {
            return Err(TlsError::InvalidCertificate(
                CertificateError::InvalidPurpose,
            ));
        }
        Err(_) => return Err(TlsError::InvalidCertificate(CertificateError::BadEncoding)),
    }
    let parsed = ParsedCertificate::try_from(end_entity)?;
    rustls::client::verify_server_name(&parsed, server_name)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `now` moved by `by`: a time outside a certificate's validity.
    fn later(now: UnixTime, by: Duration) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs()) + by)
    }

    /// `openssl req -x509 -newkey ec … -days 36500 -subj /CN=registry.test -addext
    /// subjectAltName=DNS:registry.test,IP:127.0.0.1`: `CA:TRUE`, as Docker's docs make them.
    const SELF_SIGNED: &str = include_str!("testdata/self-signed-ca.pem");
    /// The same, another key.
    const OTHER: &str = include_str!("testdata/other-self-signed-ca.pem");
    /// The same with `extendedKeyUsage=clientAuth`.
    const CLIENT_AUTH: &str = include_str!("testdata/self-signed-ca-client-auth.pem");

    fn der(pem: &str) -> CertificateDer<'static> {
        certificates(&[pem.as_bytes().to_vec()])
            .expect("pem")
            .remove(0)
    }

    /// webpki with exactly `configured` as roots (no system roots: the tests do not depend on
    /// the machine), wrapped.
    fn verifier(configured: &[&str]) -> ExactCaVerifier {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let configured: Vec<_> = configured.iter().map(|pem| der(pem)).collect();
        let mut roots = rustls::RootCertStore::empty();
        for ca in &configured {
            roots.add(ca.clone()).expect("root");
        }
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("webpki verifier");
        ExactCaVerifier::new(inner, configured)
    }

    fn unconfigured(error: &TlsError) -> bool {
        match error {
            TlsError::InvalidCertificate(CertificateError::Other(other)) => other
                .0
                .downcast_ref::<UnconfiguredCaCertificate>()
                .is_some(),
            _ => false,
        }
    }

    fn verify(
        verifier: &ExactCaVerifier,
        pem: &str,
        name: &str,
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let name = ServerName::try_from(name.to_owned()).expect("name");
        verifier.verify_server_cert(&der(pem), &[], &name, &[], now)
    }

    #[test]
    fn webpki_alone_refuses_a_ca_certificate_as_the_servers() {
        let inner = verifier(&[SELF_SIGNED]).inner;
        let name = ServerName::try_from("registry.test").expect("name");
        let error = inner
            .verify_server_cert(&der(SELF_SIGNED), &[], &name, &[], UnixTime::now())
            .expect_err("CaUsedAsEndEntity");
        assert!(ca_used_as_end_entity(&error), "{error}");
    }

    #[test]
    fn accepts_the_configured_certificate_itself_for_its_names() {
        let verifier = verifier(&[OTHER, SELF_SIGNED]);
        for name in ["registry.test", "127.0.0.1"] {
            verify(&verifier, SELF_SIGNED, name, UnixTime::now()).expect(name);
        }
    }

    #[test]
    fn refuses_a_name_the_certificate_does_not_carry() {
        let verifier = verifier(&[SELF_SIGNED]);
        for name in ["elsewhere.test", "127.0.0.2"] {
            let error =
                verify(&verifier, SELF_SIGNED, name, UnixTime::now()).expect_err("wrong name");
            assert!(
                matches!(
                    error,
                    TlsError::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
                ),
                "{name}: {error:?}"
            );
        }
    }

    #[test]
    fn refuses_a_certificate_that_is_not_exactly_a_configured_one() {
        // Same subject and names, another key: not configured, so webpki's refusal stands as it
        // is, whatever the configured certificates look like.
        let verifier = verifier(&[SELF_SIGNED]);
        let error =
            verify(&verifier, OTHER, "registry.test", UnixTime::now()).expect_err("not configured");
        assert!(unconfigured(&error), "{error:?}");
    }

    #[test]
    fn refuses_a_certificate_for_clients_only() {
        let verifier = verifier(&[CLIENT_AUTH]);
        let error = verify(&verifier, CLIENT_AUTH, "registry.test", UnixTime::now())
            .expect_err("clientAuth only");
        assert!(
            matches!(
                error,
                TlsError::InvalidCertificate(CertificateError::InvalidPurpose)
            ),
            "{error:?}"
        );
    }

    #[test]
    fn refuses_the_configured_certificate_outside_its_validity() {
        let verifier = verifier(&[SELF_SIGNED]);
        let late = later(UnixTime::now(), Duration::from_secs(200 * 365 * 86_400));
        let error = verify(&verifier, SELF_SIGNED, "registry.test", late).expect_err("expired");
        assert!(
            matches!(
                error,
                TlsError::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{error:?}"
        );
        // Our own check, whatever webpki checks first.
        let name = ServerName::try_from("registry.test").expect("name");
        assert!(matches!(
            configured_certificate_valid(&der(SELF_SIGNED), &name, late),
            Err(TlsError::InvalidCertificate(
                CertificateError::ExpiredContext { .. }
            ))
        ));
        let early = UnixTime::since_unix_epoch(Duration::from_secs(86_400));
        assert!(matches!(
            configured_certificate_valid(&der(SELF_SIGNED), &name, early),
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidYetContext { .. }
            ))
        ));
    }

    #[test]
    fn without_configured_certificates_nothing_is_reconsidered() {
        let mut verifier = verifier(&[SELF_SIGNED]);
        verifier.configured.clear();
        let error = verify(&verifier, SELF_SIGNED, "registry.test", UnixTime::now())
            .expect_err("not configured");
        assert!(unconfigured(&error), "{error:?}");
    }

    #[test]
    fn builds_reqwests_configuration() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = client_config(vec![der(SELF_SIGNED)]).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(
            certificates(&[
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec()
            ])
            .is_err()
        );
    }
}
