//! cosign signatures (`artifacts.verify.cosignKey`): a version is installed only when a
//! signature by the node's key says it is that version. Signatures are found where cosign
//! stores them without the OCI 1.1 referrers API: a manifest tagged `sha256-<hex>.sig` in the
//! artifact's repository, one layer per signature, each layer a "simple signing" payload whose
//! annotation holds the base64 signature over the payload's bytes. Key-based and offline: no
//! transparency log, no certificate, no network beyond the registry that serves the artifact.
//!
//! A layer counts when (1) its payload is the blob its descriptor names, (2) the key verifies
//! the signature over those bytes, (3) the payload is a cosign image signature whose
//! `docker-manifest-digest` is the digest being installed. Any one such layer is enough (signing
//! again adds a layer).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use sigstore::crypto::{CosignVerificationKey, Signature};

/// The media type of a cosign signature layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a cosign image signature.
const COSIGN_SIGNATURE_TYPE: &str = "cosign container image signature";
/// A payload is a few hundred bytes; a larger one is not read.
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 10;
/// Layers looked at in one `.sig` manifest: a hostile registry could list thousands.
pub const MAX_SIGNATURES: usize = 16;

/// A public key the node trusts, from `artifacts.verify.cosignKey`.
pub struct TrustedKey {
    key: CosignVerificationKey,
    path: PathBuf,
    fingerprint: String,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl TrustedKey {
    /// Reads a PEM public key (`cosign.pub`: ECDSA P-256, or another key cosign makes).
    pub fn load(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::from_pem(&pem, path)
    }

    pub fn from_pem(pem: &[u8], path: &Path) -> Result<Self, String> {
        let key = CosignVerificationKey::try_from_pem(pem).map_err(|e| {
            format!(
                "{} is not a cosign public key (PEM, as `cosign generate-key-pair` writes cosign.pub): {e}",
                path.display()
            )
        })?;
        Ok(Self {
            key,
            path: path.to_owned(),
            fingerprint: fingerprint(pem),
        })
    }

    /// `sha256:<hex>` of the key's DER bytes: what the install record keeps, so a changed key
    /// makes the installed version be checked again.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// The DER inside the PEM armour, so line ends and the file's layout do not change it.
fn fingerprint(pem: &[u8]) -> String {
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.trim().chars())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .unwrap_or_else(|_| pem.to_vec());
    format!("sha256:{:x}", Sha256::digest(&bytes))
}

/// The tag cosign stores the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// One signature layer of a `.sig` manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    pub digest: String,
    pub size: u64,
    pub signature: String,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// The signature layers of a `.sig` manifest, at most [`MAX_SIGNATURES`]; layers of another
/// type are not signatures and are passed over.
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>, String> {
    let manifest: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("the signature manifest is not an OCI manifest: {e}"))?;
    let layers: Vec<SignatureLayer> = manifest
        .layers
        .into_iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        .filter_map(|l| {
            Some(SignatureLayer {
                signature: l.annotations.get(SIGNATURE_ANNOTATION)?.clone(),
                digest: l.digest,
                size: l.size,
            })
        })
        .take(MAX_SIGNATURES)
        .collect();
    if layers.is_empty() {
        return Err(format!(
            "the signature manifest has no {SIMPLE_SIGNING_MEDIA_TYPE} layer with a {SIGNATURE_ANNOTATION} annotation"
        ));
    }
    Ok(layers)
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Checks one signature layer whose blob is `payload` against `digest` (the version to install)
/// and `key`. The error says what is wrong, for the one line the refusal prints.
pub fn check(
    layer: &SignatureLayer,
    payload: &[u8],
    digest: &str,
    key: &TrustedKey,
) -> Result<(), String> {
    let actual = format!("sha256:{:x}", Sha256::digest(payload));
    if actual != layer.digest {
        return Err(format!(
            "payload {} is not what its descriptor names (got {actual}): tampered with in the registry",
            layer.digest
        ));
    }
    key.key
        .verify_signature(
            Signature::Base64Encoded(layer.signature.as_bytes()),
            payload,
        )
        .map_err(|_| {
            format!(
                "signature does not verify with cosign key {} ({})",
                key.path.display(),
                key.fingerprint
            )
        })?;
    let payload: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("signed payload is not a cosign signature: {e}"))?;
    if payload.critical.kind != COSIGN_SIGNATURE_TYPE {
        return Err(format!(
            "signed payload is a {:?}, not a {COSIGN_SIGNATURE_TYPE:?}",
            payload.critical.kind
        ));
    }
    let signed = payload.critical.image.docker_manifest_digest;
    if signed != digest {
        return Err(format!("the signature is for {signed}, not for {digest}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigstore::crypto::SigningScheme;

    const DIGEST: &str = "sha256:e783d2ff0000000000000000000000000000000000000000000000000000000a";
    const OTHER: &str = "sha256:f00d000000000000000000000000000000000000000000000000000000000000";

    fn payload(digest: &str) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r.example/kata/artifact"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    struct Signer {
        signer: sigstore::crypto::SigStoreSigner,
        key: TrustedKey,
    }

    fn signer() -> Signer {
        let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
            .create_signer()
            .expect("signer");
        let pem = signer
            .to_sigstore_keypair()
            .expect("keypair")
            .public_key_to_pem()
            .expect("pem");
        let key =
            TrustedKey::from_pem(pem.as_bytes(), Path::new("/etc/knm/cosign.pub")).expect("key");
        Signer { signer, key }
    }

    fn layer(signer: &Signer, payload: &[u8]) -> SignatureLayer {
        let signature = signer.signer.sign(payload).expect("sign");
        SignatureLayer {
            digest: format!("sha256:{:x}", Sha256::digest(payload)),
            size: payload.len() as u64,
            signature: base64::engine::general_purpose::STANDARD.encode(signature),
        }
    }

    #[test]
    fn a_signature_of_this_digest_by_this_key_verifies() {
        let ours = signer();
        let payload = payload(DIGEST);
        check(&layer(&ours, &payload), &payload, DIGEST, &ours.key).expect("verifies");
    }

    #[test]
    fn each_way_of_being_wrong_is_named() {
        let ours = signer();
        let theirs = signer();
        let good = payload(DIGEST);

        let by_another_key = layer(&theirs, &good);
        let err = check(&by_another_key, &good, DIGEST, &ours.key).unwrap_err();
        assert!(
            err.contains("does not verify with cosign key /etc/knm/cosign.pub"),
            "{err}"
        );

        let mut tampered = good.clone();
        let at = tampered.len() - 3;
        tampered[at] ^= 1;
        let err = check(&layer(&ours, &good), &tampered, DIGEST, &ours.key).unwrap_err();
        assert!(err.contains("tampered"), "{err}");

        // Signed as a whole again by a hostile registry cannot happen without the key; a
        // payload whose descriptor was rewritten to match still fails the signature.
        let mut rewritten = layer(&ours, &good);
        rewritten.digest = format!("sha256:{:x}", Sha256::digest(&tampered));
        let err = check(&rewritten, &tampered, DIGEST, &ours.key).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");

        let other = payload(OTHER);
        let err = check(&layer(&ours, &other), &other, DIGEST, &ours.key).unwrap_err();
        assert_eq!(
            err,
            format!("the signature is for {OTHER}, not for {DIGEST}")
        );

        let not_cosign =
            br#"{"critical":{"image":{"docker-manifest-digest":"x"},"type":"something else"}}"#;
        let err = check(&layer(&ours, not_cosign), not_cosign, DIGEST, &ours.key).unwrap_err();
        assert!(
            err.contains("not a \"cosign container image signature\""),
            "{err}"
        );
    }

    #[test]
    fn the_sig_manifest_gives_its_signature_layers() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
               "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"sha256:44"}},
               "layers":[
                 {{"mediaType":"text/plain","size":1,"digest":"sha256:01"}},
                 {{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","size":244,"digest":"sha256:02",
                   "annotations":{{"{SIGNATURE_ANNOTATION}":"MEUC"}}}},
                 {{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","size":244,"digest":"sha256:03"}}]}}"#
        );
        let layers = signature_layers(manifest.as_bytes()).expect("layers");
        assert_eq!(
            layers,
            [SignatureLayer {
                digest: "sha256:02".into(),
                size: 244,
                signature: "MEUC".into()
            }]
        );
        let err = signature_layers(br#"{"layers":[]}"#).unwrap_err();
        assert!(
            err.contains("no application/vnd.dev.cosign.simplesigning.v1+json layer"),
            "{err}"
        );
        assert_eq!(
            signature_tag(DIGEST),
            format!("sha256-{}.sig", &DIGEST[7..])
        );
    }

    #[test]
    fn a_file_that_is_no_key_is_named() {
        let err = TrustedKey::from_pem(b"not a key", Path::new("/etc/knm/cosign.pub")).unwrap_err();
        assert!(
            err.starts_with("/etc/knm/cosign.pub is not a cosign public key"),
            "{err}"
        );
    }

    #[test]
    fn the_fingerprint_ignores_the_pem_layout() {
        let ours = signer();
        let pem = ours
            .signer
            .to_sigstore_keypair()
            .unwrap()
            .public_key_to_pem()
            .unwrap();
        let crlf = pem.replace('\n', "\r\n");
        let other = TrustedKey::from_pem(crlf.as_bytes(), Path::new("k")).unwrap();
        assert_eq!(ours.key.fingerprint(), other.fingerprint());
        assert!(ours.key.fingerprint().starts_with("sha256:"));
    }
}
