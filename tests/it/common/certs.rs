//! Certificates made for the tests with rcgen: self-signed, for `localhost` and
//! 127.0.0.1, written as PEM files the server loads like any operator's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use tcpchat::tls::Certificates;

/// A certificate and its key, as PEM files in a directory of their own.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// A new self-signed certificate for localhost in `dir`, named `name`.
    pub fn generate(dir: &Path, name: &str) -> Self {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("generate a certificate");
        std::fs::create_dir_all(dir).expect("create the certificate directory");
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).expect("write the certificate");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write the key");
        Self {
            cert,
            key,
            der: made.cert.der().clone(),
        }
    }

    /// The server's side: the pair, loaded as `tcpchat serve --tls-cert` does.
    pub fn certificates(&self) -> Arc<Certificates> {
        Arc::new(Certificates::load(&self.cert, &self.key).expect("load the test certificate"))
    }

    /// A client config that trusts exactly this certificate.
    pub fn client_config(&self) -> ClientConfig {
        trusting(&[&self.der])
    }
}

/// A client config that trusts exactly `certificates`.
pub fn trusting(certificates: &[&CertificateDer<'static>]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add((*certificate).clone())
            .expect("trust the certificate");
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A fresh directory for one test's files.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("tests")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// The certificate every in-process test server uses.
pub fn shared() -> &'static TestCert {
    static SHARED: OnceLock<TestCert> = OnceLock::new();
    SHARED.get_or_init(|| TestCert::generate(&scratch_dir("shared-cert"), "server"))
}
