//! TLS set-up shared by the server and the clients: PEM files in, rustls configs out.
//!
//! The server's certificate and key live in a [`Certificates`], which new TLS
//! handshakes read and [`Certificates::reload`] replaces (on SIGHUP) without touching
//! connections already open; a pair that cannot be loaded leaves the old one in
//! place. The clients trust the system's roots, or only the CA given with `--ca`.
//!
//! PEM is read with rustls-pki-types (rustls-pemfile is unmaintained); the crypto is
//! rustls's `ring` provider, which builds with nothing but a C compiler.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// Why a certificate, key or CA could not be used. Each message is complete in
/// itself (no `source` chain to print after it).
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or parsed as PEM.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: rustls_pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no private key.
    #[error("{} holds no PEM private key", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key does not belong to the certificate.
    #[error("the key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the pair or a CA certificate for another reason.
    #[error("{0}")]
    Rejected(rustls::Error),
}

impl From<rustls::Error> for TlsError {
    fn from(error: rustls::Error) -> Self {
        Self::Rejected(error)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file, in order (the chain, leaf first).
///
/// # Errors
/// [`TlsError::Read`] or [`TlsError::NoCertificate`].
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| TlsError::Read {
            path: path.to_owned(),
            error,
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// [`TlsError::Read`] or [`TlsError::NoKey`].
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        error => TlsError::Read {
            path: path.to_owned(),
            error,
        },
    })
}

/// A server config for the certificate chain in `cert` and the key in `key`.
///
/// # Errors
/// [`TlsError`] when either cannot be read or they do not belong together.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let chain = read_certificates(cert)?;
    let key_der = read_private_key(key)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            error => TlsError::Rejected(error),
        })?;
    Ok(config)
}

/// A client config that trusts the CA certificates in `ca`, or the system's roots.
///
/// # Errors
/// [`TlsError`] when `ca` cannot be read or holds nothing usable, or no system root
/// can be loaded.
pub fn client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for certificate in read_certificates(path)? {
                roots.add(certificate)?;
            }
        }
        None => {
            // Unreadable entries in the system store are skipped, as every TLS client
            // does; only an empty result is an error.
            let system = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(system.certs);
            if roots.is_empty() {
                return Err(TlsError::NoCertificate {
                    path: PathBuf::from("the system's certificate store"),
                });
            }
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The server's certificate and key, replaceable while the server runs.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<ServerConfig>,
}

impl Certificates {
    /// Loads the pair from `cert` and `key`.
    ///
    /// # Errors
    /// [`TlsError`] when the pair cannot be used.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let config = server_config(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(config),
        })
    }

    /// Reads the pair again from the same files. On success new handshakes use the
    /// new pair; connections already open keep theirs. On failure nothing changes.
    ///
    /// # Errors
    /// [`TlsError`] when the new pair cannot be used (the old one stays).
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}
