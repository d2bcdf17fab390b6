//! The check of a version's cosign signature (`artifacts.verify`) before anything of it is
//! downloaded: the `.sig` manifest and its payloads come from the endpoint that serves the
//! artifact, bounded in size, and are checked by [`cosign`](crate::artifacts::cosign).

use super::Inner;
use crate::artifacts::cosign::{self, SignatureLayer, TrustedKey};
use crate::artifacts::error::{ArtifactError, Result};
use crate::artifacts::registry::{Failure, Registry};
use crate::artifacts::state::ClassState;
use crate::config::RuntimeClass;

impl Inner {
    /// Whether `state` was installed under the signature check the class asks for now: no
    /// check, or a signature by the same key. Otherwise the version is checked (and pulled)
    /// again, so adding or changing `artifacts.verify` holds for what is already installed.
    pub(super) fn signature_current(&self, class: &RuntimeClass, state: &ClassState) -> bool {
        match &class.artifacts.verify {
            None => true,
            Some(verify) => TrustedKey::load(&verify.cosign_key)
                .is_ok_and(|key| state.signed_by.as_deref() == Some(key.fingerprint())),
        }
    }

    /// The fingerprint of the key that signed `digest`, or `None` when the class asks for no
    /// signature. Unsigned, signed by another key, tampered with, or signed for another digest:
    /// [`ArtifactError::Signature`], nothing fetched beyond the signatures.
    pub(super) async fn verify_signature(
        &self,
        class: &RuntimeClass,
        registry: &Registry,
        digest: &str,
    ) -> Result<Option<String>> {
        let Some(verify) = &class.artifacts.verify else {
            return Ok(None);
        };
        let refuse = |why: String| ArtifactError::Signature {
            class: class.name.clone(),
            reference: class.artifacts.url.as_str().to_owned(),
            digest: digest.to_owned(),
            why,
        };
        let key = TrustedKey::load(&verify.cosign_key).map_err(refuse)?;
        let tag = cosign::signature_tag(digest);
        let signatures = registry.tagged(&class.artifacts.url, &tag);
        let body = match registry.manifest(&signatures).await {
            Ok((body, _)) => body,
            Err(ArtifactError::NotFound { .. }) => {
                return Err(refuse(format!(
                    "unsigned: no cosign signature at {}:{tag}",
                    class.artifacts.url.repository()
                )));
            }
            Err(e) => return Err(e),
        };
        let layers = cosign::signature_layers(&body).map_err(refuse)?;
        let mut reasons = Vec::new();
        for layer in &layers {
            let checked = match payload(registry, &signatures, layer).await {
                Ok(payload) => cosign::check(layer, &payload, digest, &key),
                Err(why) => Err(why),
            };
            match checked {
                Ok(()) => {
                    tracing::info!(digest, key = %key.fingerprint(), "cosign signature verified");
                    return Ok(Some(key.fingerprint().to_owned()));
                }
                Err(why) => reasons.push(why),
            }
        }
        Err(refuse(match reasons.as_slice() {
            [one] => one.clone(),
            all => format!(
                "none of its {} signatures verifies: {}",
                all.len(),
                all.join("; ")
            ),
        }))
    }
}

/// One signature layer's payload, at most [`cosign::MAX_PAYLOAD_BYTES`].
async fn payload(
    registry: &Registry,
    signatures: &oci_client::Reference,
    layer: &SignatureLayer,
) -> std::result::Result<Vec<u8>, String> {
    if layer.size > cosign::MAX_PAYLOAD_BYTES {
        return Err(format!(
            "payload {} announces {} bytes, more than the {} a signature takes",
            layer.digest,
            layer.size,
            cosign::MAX_PAYLOAD_BYTES
        ));
    }
    let fetched = match registry
        .blob_at_most(signatures, layer.digest.as_str(), cosign::MAX_PAYLOAD_BYTES)
        .await
    {
        Ok(fetched) => fetched,
        Err(Failure::Permanent(e)) => {
            return Err(format!("fetching payload {}: {e}", layer.digest));
        }
        Err(Failure::Transient(why)) => {
            return Err(format!("fetching payload {}: {why}", layer.digest));
        }
    };
    // The digest is `cosign::check`'s to verify.
    fetched.map(Vec::from).map_err(|read| {
        format!(
            "payload {}: more than {} bytes ({read} read)",
            layer.digest,
            cosign::MAX_PAYLOAD_BYTES
        )
    })
}
