//! TLS client settings for DoT, DoH, DoQ and DoH over HTTP/3: aws-lc-rs (the provider gotatun
//! uses: one provider per binary, never ring), the system's trust anchors
//! plus an optional CA file, and no way to skip verification.
//!
//! Trust anchors come from the operating system (`rustls-native-certs`), not a
//! bundled list (`webpki-roots`): the host's administrator decides what is
//! trusted (a corporate CA installed system-wide works for DoH too), and
//! updates reach tundns with the OS's CA package instead of a rebuild.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::PoolError;

pub struct ClientConfigs {
    /// DoT: no ALPN (RFC 7858 defines none, and an ALPN-aware server without
    /// "dot" would refuse the handshake).
    pub dot: Arc<ClientConfig>,
    /// DoH: ALPN "h2".
    pub doh: Arc<ClientConfig>,
    /// DoQ: TLS 1.3 only (QUIC has no other), ALPN "doq" (RFC 9250 §4.1), early data on.
    pub doq: Arc<ClientConfig>,
    /// DoH over HTTP/3: TLS 1.3 only, ALPN "h3", early data on.
    pub h3: Arc<ClientConfig>,
}

impl ClientConfigs {
    pub fn new(ca_file: Option<&Path>) -> Result<Self, PoolError> {
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
        tracing::debug!(added, ignored, "system trust anchors");
        if let Some(path) = ca_file {
            add_ca_file(&mut roots, path)?;
        }
        if roots.is_empty() {
            tracing::warn!(
                "no TLS trust anchors: every DoT, DoH, DoQ and HTTP/3 upstream will fail verification"
            );
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let all_versions = rustls::DEFAULT_VERSIONS;
        let tls13 = &[&rustls::version::TLS13];
        let dot = client_config(&provider, all_versions, &roots, Vec::new())?;
        let doh = client_config(&provider, all_versions, &roots, vec![b"h2".to_vec()])?;
        let mut doq = client_config(&provider, tls13, &roots, vec![b"doq".to_vec()])?;
        let mut h3 = client_config(&provider, tls13, &roots, vec![b"h3".to_vec()])?;
        // Queries are idempotent, so they may go in 0-RTT (RFC 9250 §4.5) when a
        // resumption ticket allows it; the default session store keeps the tickets.
        doq.enable_early_data = true;
        h3.enable_early_data = true;
        Ok(ClientConfigs {
            dot: Arc::new(dot),
            doh: Arc::new(doh),
            doq: Arc::new(doq),
            h3: Arc::new(h3),
        })
    }
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    roots: &RootCertStore,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig, PoolError> {
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|error| PoolError::Tls(error.to_string()))?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(config)
}

/// The operating system's trust anchors, read once per process.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(%error, "reading the system's trust anchors");
        }
        loaded.certs
    })
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), PoolError> {
    let error = |reason: String| PoolError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no PEM certificate in the file".into()));
    }
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|e| error(format!("not a usable trust anchor: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_are_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("tundns-upstream-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for path in [&missing, &empty, &garbage] {
            let message = match ClientConfigs::new(Some(path)) {
                Err(error @ PoolError::CaFile { .. }) => error.to_string(),
                Err(other) => panic!("{path:?}: unexpected error {other}"),
                Ok(_) => panic!("{path:?} accepted"),
            };
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
