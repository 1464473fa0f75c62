//! Layer 2, TLS termination: the HTTPS listener's OpenSSL acceptor, HSTS, and the plain-HTTP
//! listener's redirect.
//!
//! The acceptor is built when a policy is compiled (off the request path), from the
//! certificate and key files the document names: TLS 1.2 and 1.3 only, forward-secret AEAD
//! cipher suites, ALPN `h2` then `http/1.1`. The files are watched with the document, so a
//! renewed certificate is picked up by the next handshake; connections already open keep
//! theirs. The handshake itself runs in connection setup ([`crate::app`]) with the
//! `timeouts.headerRead` deadline. HSTS is added to every HTTPS response in
//! `response_filter` and to the edge's own responses. The plain-HTTP listener answers
//! every request with [`https_redirect`] ([`crate::redirect`]).

use std::path::{Path, PathBuf};

use http::{HeaderValue, StatusCode};
use pingora::tls::{
    pkey::PKey,
    ssl::{AlpnError, SslAcceptor, SslAcceptorBuilder, SslMethod, SslVersion, select_next_proto},
    x509::X509,
};

use crate::verdict::{Reason, Redirect};

/// TLS 1.2 cipher suites: ECDHE key exchange with AEAD ciphers only (Mozilla's
/// "intermediate" list without the finite-field DHE suites). TLS 1.3 keeps OpenSSL's
/// defaults, which are all AEAD.
pub const TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// ALPN protocols offered, in wire format, most preferred first.
const ALPN_H2_H1: &[u8] = b"\x02h2\x08http/1.1";

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The certificate chain does not parse.
    #[error("{path} holds no PEM certificate chain: {source}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: pingora::tls::error::ErrorStack,
    },
    /// The private key does not parse.
    #[error("{path} holds no PEM private key: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: pingora::tls::error::ErrorStack,
    },
    /// OpenSSL refused the settings, or the key does not belong to the certificate.
    #[error("the TLS settings are refused: {0}")]
    Settings(#[source] pingora::tls::error::ErrorStack),
}

/// Reads a file that TLS settings are built from.
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a PEM certificate bundle.
pub fn read_certificates(path: &Path) -> Result<Vec<X509>, TlsError> {
    let pem = read(path)?;
    let chain = X509::stack_from_pem(&pem).map_err(|source| TlsError::Certificate {
        path: path.to_owned(),
        source,
    })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: path.to_owned(),
            source: pingora::tls::error::ErrorStack::get(),
        });
    }
    Ok(chain)
}

/// Builds the HTTPS acceptor from a certificate chain file and its key file.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<SslAcceptor, TlsError> {
    acceptor_builder(cert_file, key_file).map(SslAcceptorBuilder::build)
}

/// The HTTPS acceptor's settings, before they are frozen.
pub fn acceptor_builder(cert_file: &Path, key_file: &Path) -> Result<SslAcceptorBuilder, TlsError> {
    let chain = read_certificates(cert_file)?;
    let key = PKey::private_key_from_pem(&read(key_file)?).map_err(|source| TlsError::Key {
        path: key_file.to_owned(),
        source,
    })?;
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(TlsError::Settings)?;
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(TlsError::Settings)?;
    builder
        .set_cipher_list(TLS12_CIPHERS)
        .map_err(TlsError::Settings)?;
    let mut chain = chain.into_iter();
    if let Some(leaf) = chain.next() {
        builder.set_certificate(&leaf).map_err(TlsError::Settings)?;
    }
    for intermediate in chain {
        builder
            .add_extra_chain_cert(intermediate)
            .map_err(TlsError::Settings)?;
    }
    builder.set_private_key(&key).map_err(TlsError::Settings)?;
    builder.check_private_key().map_err(TlsError::Settings)?;
    builder.set_alpn_select_callback(|_, offered| {
        select_next_proto(ALPN_H2_H1, offered).ok_or(AlpnError::NOACK)
    });
    Ok(builder)
}

/// The `Strict-Transport-Security` value for a max-age.
pub fn hsts(max_age: std::time::Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("max-age={}", max_age.as_secs()))
        .unwrap_or(HeaderValue::from_static("max-age=31536000"))
}

/// Why the plain-HTTP listener answered as it did, for the log.
pub const HTTPS_ONLY: Reason = Reason::new("https-only", "plain HTTP is redirected to HTTPS");

/// The plain-HTTP listener's only answer: 308 to the same path on `https://host`.
///
/// The target is the configured host, never the client's `Host`, so the redirect cannot be
/// pointed elsewhere. A request target that is not a path (`*`, absolute form) goes to `/`.
pub fn https_redirect(host: &str, target: &str) -> Redirect {
    let path = if target.starts_with('/') { target } else { "/" };
    // Joined by hand: this runs for every plain-HTTP request.
    let mut location = String::with_capacity("https://".len() + host.len() + path.len());
    location.push_str("https://");
    location.push_str(host);
    location.push_str(path);
    let location = HeaderValue::from_str(&location).unwrap_or_else(|_| {
        HeaderValue::from_str(&format!("https://{host}/")).unwrap_or(HeaderValue::from_static("/"))
    });
    Redirect {
        status: StatusCode::PERMANENT_REDIRECT,
        location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(redirect: Redirect) -> String {
        assert_eq!(redirect.status, StatusCode::PERMANENT_REDIRECT);
        redirect.location.to_str().unwrap().to_owned()
    }

    #[test]
    fn plain_http_goes_to_the_same_path_on_https() {
        assert_eq!(
            location(https_redirect("media.example.org", "/web/index.html?x=1")),
            "https://media.example.org/web/index.html?x=1"
        );
    }

    #[test]
    fn odd_targets_go_to_the_root_of_the_configured_host() {
        assert_eq!(
            location(https_redirect("media.example.org", "http://evil.example/")),
            "https://media.example.org/"
        );
        assert_eq!(
            location(https_redirect("media.example.org", "*")),
            "https://media.example.org/"
        );
    }

    #[test]
    fn hsts_carries_the_max_age_in_seconds() {
        assert_eq!(
            hsts(std::time::Duration::from_secs(86_400)),
            "max-age=86400"
        );
    }

    fn write_pair(dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["media.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    #[test]
    fn the_acceptor_speaks_tls_1_2_and_up_only() {
        let dir = std::env::temp_dir().join(format!("portcullis-tls-{}", std::process::id()));
        let (cert, key) = write_pair(&dir);
        let Ok(mut builder) = acceptor_builder(&cert, &key) else {
            panic!("the acceptor must build");
        };
        assert_eq!(builder.min_proto_version(), Some(SslVersion::TLS1_2));
        assert!(acceptor(&cert, &key).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_files_are_named() {
        let Err(error) = acceptor(
            Path::new("/nonexistent/tls.crt"),
            Path::new("/nonexistent/tls.key"),
        ) else {
            panic!("a missing certificate must fail");
        };
        assert!(
            error.to_string().contains("/nonexistent/tls.crt"),
            "{error}"
        );
    }
}
