//! The identity encrypted DNS presents: the configured certificate and key, or a
//! self-signed one tundns makes once per interface and keeps in its state directory, so
//! that a client's pin stays valid across restarts.
//!
//! Either way its SPKI pin (RFC 7858 §4.2: base64 of the SHA-256 of the key's
//! SubjectPublicKeyInfo) is what `tundns status` prints and `kdig +tls-pin=` takes.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tundns_config::{ConfigError, DnsProxyConfig, Spanned};

/// The first line of a self-signed identity's file, before the names it was made for. A
/// file made by another version or for other names is replaced; PEM readers skip the line.
const SELF_SIGNED_HEADER: &str = "# tundns self-signed identity v1 for";

/// A certificate chain with its key, and the key's pin.
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    pub certified: Arc<CertifiedKey>,
    /// Base64 of the SHA-256 of the key's SubjectPublicKeyInfo.
    pub pin: String,
    /// Where it came from, for the log and `tundns status`.
    pub source: IdentitySource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// `TLSCertificate` and `TLSKey`.
    Configured,
    /// Made by tundns, kept in this file.
    SelfSigned(PathBuf),
}

/// Why no identity could be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the self-signed certificate for encrypted DNS: {0}")]
    SelfSigned(String),
}

impl TlsIdentity {
    /// Checks the configured certificate and key, if any, as [`load`](Self::load) would;
    /// makes nothing.
    pub fn check_configured(
        settings: &DnsProxyConfig,
        config_path: &Path,
    ) -> Result<(), ConfigError> {
        if let (Some(certificate), Some(key)) = (&settings.tls_certificate, &settings.tls_key) {
            configured(config_path, certificate, key)?;
        }
        Ok(())
    }

    /// The configured certificate and key, or else the self-signed identity for
    /// `addresses` kept as `<state_directory>/<interface>.dns-identity.pem`, made when
    /// missing, unreadable or made for other addresses.
    pub fn load(
        settings: &DnsProxyConfig,
        config_path: &Path,
        interface: &str,
        state_directory: &Path,
    ) -> Result<Self, IdentityError> {
        match (&settings.tls_certificate, &settings.tls_key) {
            (Some(certificate), Some(key)) => Ok(configured(config_path, certificate, key)?),
            _ => {
                let path = state_directory.join(format!("{interface}.dns-identity.pem"));
                self_signed(&path, &settings.addresses).map_err(IdentityError::SelfSigned)
            }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// `chain` and `key` as an identity, once the key is shown to be the certificate's.
fn identity(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    source: IdentitySource,
) -> Result<TlsIdentity, String> {
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => "the key is not the certificate's".to_string(),
            other => other.to_string(),
        })?;
    let spki = certified
        .key
        .public_key()
        .ok_or("the key's public half cannot be read")?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki.as_ref());
    Ok(TlsIdentity {
        certified: Arc::new(certified),
        pin: base64::engine::general_purpose::STANDARD.encode(digest.as_ref()),
        source,
    })
}

fn configured(
    config_path: &Path,
    certificate: &Spanned<PathBuf>,
    key: &Spanned<PathBuf>,
) -> Result<TlsIdentity, ConfigError> {
    let at = |line: usize, message: String| ConfigError::at(config_path, line, message);
    let shown = |path: &PathBuf| path.display().to_string();
    let chain = CertificateDer::pem_file_iter(&certificate.value)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            at(
                certificate.line,
                format!("TLSCertificate {}: {error}", shown(&certificate.value)),
            )
        })?;
    if chain.is_empty() {
        return Err(at(
            certificate.line,
            format!(
                "TLSCertificate {}: no PEM certificate in it",
                shown(&certificate.value)
            ),
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(&key.value)
        .map_err(|error| at(key.line, format!("TLSKey {}: {error}", shown(&key.value))))?;
    identity(chain, private_key, IdentitySource::Configured).map_err(|why| {
        at(
            key.line,
            format!(
                "TLSKey {} with TLSCertificate {}: {why}",
                shown(&key.value),
                shown(&certificate.value)
            ),
        )
    })
}

/// The names of a self-signed identity: the virtual IPs, and the name DDR designates
/// them by.
fn names(addresses: &[IpAddr]) -> Vec<String> {
    addresses
        .iter()
        .map(IpAddr::to_string)
        .chain([tundns_dns::discovery::RESOLVER_NAME.to_string()])
        .collect()
}

/// The header line naming `names`.
fn header(names: &[String]) -> String {
    let mut line = SELF_SIGNED_HEADER.to_string();
    for name in names {
        let _ = write!(line, " {name}");
    }
    line
}

/// The kept identity file, if it is a private file of this user's (not a link, no access
/// for others): anything else is replaced, never trusted.
fn read_kept(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let metadata = file.metadata().ok()?;
    let private = metadata.is_file()
        && metadata.uid() == nix::unistd::geteuid().as_raw()
        && metadata.mode() & 0o077 == 0;
    if !private {
        tracing::warn!(path = %path.display(), "the kept self-signed identity is not a private file; making a new one");
        return None;
    }
    let mut kept = Vec::new();
    file.take(64 * 1024).read_to_end(&mut kept).ok()?;
    Some(kept)
}

fn self_signed(path: &Path, addresses: &[IpAddr]) -> Result<TlsIdentity, String> {
    let names = names(addresses);
    let header = header(&names);
    let source = IdentitySource::SelfSigned(path.to_path_buf());
    if let Some(kept) = read_kept(path)
        && kept.split(|&b| b == b'\n').next() == Some(header.as_bytes())
    {
        let chain = CertificateDer::pem_slice_iter(&kept).collect::<Result<Vec<_>, _>>();
        let key = PrivateKeyDer::from_pem_slice(&kept);
        if let (Ok(chain), Ok(key)) = (chain, key)
            && let Ok(identity) = identity(chain, key, source.clone())
        {
            return Ok(identity);
        }
        tracing::warn!(path = %path.display(), "the kept self-signed identity does not read; making a new one");
    }
    let made = rcgen::generate_simple_self_signed(names).map_err(|error| error.to_string())?;
    let contents = format!(
        "{header}\n{}{}",
        made.cert.pem(),
        made.signing_key.serialize_pem()
    );
    if let Some(directory) = path.parent() {
        tundns_host::journal::private_directory(directory).map_err(|error| error.to_string())?;
    }
    tundns_host::atomic_file::write_atomically(path, contents.as_bytes(), 0o600)
        .map_err(|error| error.to_string())?;
    tracing::info!(path = %path.display(), "made a self-signed certificate for encrypted DNS");
    let chain = vec![made.cert.der().clone()];
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
        .map_err(|error| error.to_string())?;
    identity(chain, key, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(addresses: &[&str]) -> DnsProxyConfig {
        let mut settings = tundns_config::Config::parse(
            "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n",
            "wg0.conf",
        )
        .expect("a minimal config")
        .dns_proxy;
        settings.addresses = addresses.iter().map(|a| a.parse().unwrap()).collect();
        settings
    }

    /// The self-signed identity of `wg0` for `address`, kept in `state`.
    fn self_signed_in(state: &Path, address: &str) -> TlsIdentity {
        TlsIdentity::load(&settings(&[address]), Path::new("wg0.conf"), "wg0", state).unwrap()
    }

    #[test]
    fn the_self_signed_identity_is_made_once_and_kept_for_the_same_addresses() {
        let directory = tempfile::tempdir().unwrap();
        let state = directory.path();
        let made = self_signed_in(state, "10.30.30.30");
        let file = state.join("wg0.dns-identity.pem");
        assert_eq!(made.source, IdentitySource::SelfSigned(file.clone()));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(made.pin.len(), 44, "base64 of 32 bytes: {}", made.pin);

        let again = self_signed_in(state, "10.30.30.30");
        assert_eq!(again.pin, made.pin);

        let other = self_signed_in(state, "10.30.30.31");
        assert_ne!(other.pin, made.pin, "made for other addresses: replaced");

        let names = names(&["10.30.30.31".parse().unwrap()]);
        std::fs::write(&file, format!("{}\ngarbage\n", header(&names))).unwrap();
        let remade = self_signed_in(state, "10.30.30.31");
        assert_ne!(remade.pin, other.pin, "unreadable: replaced");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let exposed = self_signed_in(state, "10.30.30.31");
        assert_ne!(exposed.pin, remade.pin, "readable by others: replaced");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_configured_pair_is_checked_and_errors_name_the_line() {
        let directory = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["dns.lab.test".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["dns.lab.test".into()]).unwrap();
        let certificate = directory.path().join("dns.pem");
        let key = directory.path().join("dns.key");
        let other_key = directory.path().join("other.key");
        std::fs::write(&certificate, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();

        let mut settings = settings(&["10.30.30.30"]);
        settings.tls_certificate = Some(Spanned::new(certificate.clone(), 7));
        settings.tls_key = Some(Spanned::new(key, 8));
        let loaded =
            TlsIdentity::load(&settings, Path::new("wg0.conf"), "wg0", directory.path()).unwrap();
        assert_eq!(loaded.source, IdentitySource::Configured);

        settings.tls_key = Some(Spanned::new(other_key, 8));
        let error = TlsIdentity::load(&settings, Path::new("wg0.conf"), "wg0", directory.path())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("wg0.conf:8: TLSKey "), "{error}");
        assert!(
            error.ends_with("the key is not the certificate's"),
            "{error}"
        );

        settings.tls_certificate = Some(Spanned::new(directory.path().join("missing.pem"), 7));
        let error = TlsIdentity::load(&settings, Path::new("wg0.conf"), "wg0", directory.path())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("wg0.conf:7: TLSCertificate "), "{error}");
    }
}
