//! rustls configs from PEM files: the listener's server config (with SNI selection between several
//! certificates) and the client config for HTTPS to upstream servers.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsFiles;

/// Where the system's CA bundle is read from when an upstream gives no `tls_ca`.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const ALPN_HTTP11: &[u8] = b"http/1.1";
/// ALPN name of HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why a TLS config could not be built. Every file problem names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: malformed PEM: {source}", .path.display())]
    Pem { path: PathBuf, source: io::Error },
    #[error("{}: no CERTIFICATE found in the PEM file", .path.display())]
    NoCertificates { path: PathBuf },
    #[error("{}: no private key found (expected PEM PKCS#8, PKCS#1 RSA or SEC1 EC)", .path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{}: unsupported private key: {reason}", .path.display())]
    UnsupportedKey { path: PathBuf, reason: String },
    #[error("{}: bad certificate: {reason}", .path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: private key does not match the certificate in {}", .key.display(), .cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("server name {name:?}: {reason}")]
    BadServerName { name: String, reason: &'static str },
    #[error("no certificate given for the TLS listener")]
    NoCertificate,
    #[error("{}: no usable CA certificate", .path.display())]
    NoTrustAnchors { path: PathBuf },
    #[error("building the TLS config: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Load and check a cert chain + private key (RSA, ECDSA, Ed25519; PKCS#8, PKCS#1, SEC1).
/// The chain is leaf first; a key that does not match the leaf is an error.
pub fn load_certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let signing_key =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnsupportedKey {
                path: files.key.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
        Err(e) => Err(TlsError::BadCertificate {
            path: files.cert.clone(),
            reason: e.to_string(),
        }),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    match certs.is_empty() {
        true => Err(TlsError::NoCertificates {
            path: path.to_owned(),
        }),
        false => Ok(certs),
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: path.to_owned(),
        })
}

/// A server config for one listen address. Each entry is (server names, key); SNI picks the
/// entry whose name matches (exact, or `*.example.com` / `.example.com` wildcard, most specific
/// first); the first entry serves when SNI is absent or matches nothing. ALPN `h2` (when `http2`) and
/// `http/1.1`, TLS 1.2 and 1.3 only.
pub fn server_config(
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    http2: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = SniResolver::new(entries)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = match http2 {
        true => vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()],
        false => vec![ALPN_HTTP11.to_vec()],
    };
    Ok(Arc::new(config))
}

/// Picks a certificate by SNI. Names are stored lower-case without a trailing dot;
/// `wildcard` is keyed by the domain under the `*.` (nginx semantics: any depth below it).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(entries: Vec<(Vec<String>, Arc<CertifiedKey>)>) -> Result<Self, TlsError> {
        let default = entries.first().ok_or(TlsError::NoCertificate)?.1.clone();
        let mut resolver = SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        };
        for (names, key) in entries {
            for name in names {
                resolver.add(&name, &key)?;
            }
        }
        Ok(resolver)
    }

    /// Registers one name; an earlier entry keeps a name listed twice.
    fn add(&mut self, name: &str, key: &Arc<CertifiedKey>) -> Result<(), TlsError> {
        let bad = |reason| TlsError::BadServerName {
            name: name.to_owned(),
            reason,
        };
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let (domain, exact, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, false, true),
            None => match lower.strip_prefix('.') {
                Some(rest) => (rest, true, true),
                None => (lower.as_str(), true, false),
            },
        };
        if domain.is_empty() || domain.starts_with('.') || domain.contains("..") {
            return Err(bad("empty label"));
        }
        if domain.starts_with('~') || domain.contains('*') {
            return Err(bad(
                "only exact names and leading *. wildcards select certificates",
            ));
        }
        if exact {
            self.exact
                .entry(domain.to_owned())
                .or_insert_with(|| key.clone());
        }
        if wildcard {
            self.wildcard
                .entry(domain.to_owned())
                .or_insert_with(|| key.clone());
        }
        Ok(())
    }

    fn lookup(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key);
        }
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return Some(key);
            }
            rest = parent;
        }
        None
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| self.lookup(sni));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

/// Client config for HTTPS to upstream servers: with `ca`, trust only that PEM bundle; without,
/// the system bundle at [`SYSTEM_CA_BUNDLE`]. ALPN `http/1.1`, TLS 1.2 and 1.3 only.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(path) => roots_from(path, true)?,
        None => roots_from(Path::new(SYSTEM_CA_BUNDLE), false)?,
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Trust anchors from a PEM bundle. `strict`: every certificate in it must be usable
/// (a bundle the operator chose); otherwise unusable ones are skipped (the system bundle).
fn roots_from(path: &Path, strict: bool) -> Result<RootCertStore, TlsError> {
    let certs = read_certs(path)?;
    let mut roots = RootCertStore::empty();
    if strict {
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::BadCertificate {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    } else {
        roots.add_parsable_certificates(certs);
    }
    match roots.is_empty() {
        true => Err(TlsError::NoTrustAnchors {
            path: path.to_owned(),
        }),
        false => Ok(roots),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::ServerName;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// Self-signed RSA 2048 certificate and its PKCS#1 key (made with openssl; test only).
    const RSA_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIDHjCCAgagAwIBAgIUbFTpS4R9IusjoI62CAgJp6SLOUMwDQYJKoZIhvcNAQEL
BQAwEzERMA8GA1UEAwwIcnNhLnRlc3QwIBcNMjYxMTIyMjI1MjExWhgPMjEyNjEw
MjkyMjUyMTFaMBMxETAPBgNVBAMMCHJzYS50ZXN0MIIBIjANBgkqhkiG9w0BAQEF
AAOCAQ8AMIIBCgKCAQEArImAd2hC1T5xwUu0VY/vjKVWStePDs73Na4MMVEGw8zG
TiL+MgMCkCcPrcahULsx+Ond9oEsTp7Gl6NsWTeRFSodLjSP/xtayAbbw+Z2x/MQ
gqOiBbbft70AyXFq/Ej3RE3z3fXruOGaLHZlEVsb1Tay5SIfVNpnGY/M8kZmfExv
o9FfZJ245jBNgw5A7DmOmvAzQ510m9TnqfMyapine+krwjxGdUQuP546VLPuny/a
c9M5tCVv377S3c8L5xi+BZurINcjQNWQrj9i6y6++gd3tP6Xj88zkLAoj7IgKLPt
83EO+u5+JVxB4t/QB0EUxvLDiGkegNYndD735sroSQIDAQABo2gwZjAdBgNVHQ4E
FgQUgFvTvsvYF4oLELQ5NJaxNmODVZgwHwYDVR0jBBgwFoAUgFvTvsvYF4oLELQ5
NJaxNmODVZgwDwYDVR0TAQH/BAUwAwEB/zATBgNVHREEDDAKgghyc2EudGVzdDAN
BgkqhkiG9w0BAQsFAAOCAQEAq4eHyDr89UrNpJcsFE3uxoRK5xgqO8C/jziP4U9L
160EA0Ehld2uYw2hhuqEaCvwO1YBJ7+DSrDexHPkkFEVY77/wUCCsTtt1jNFENOJ
oeHxyxcB0mfjR+834I/Az9gVAN7P/WVhA23ngGtXnUQQvdJULvKjnlFT27nbBZ2V
XqIkPk1qAsjVR4MhMI8qznWdPbcVeGdIm5evzL6sxuCG4wPZtIYNt3Rw69xLm5nW
/jPy9zBbz89z0iYD5CxJrPlq3/d+Zt2mLeZ0D5BUylZbIihoGqKUbKUo6242D4RI
vw6yqAAFVqXz4IbbXSLOMsB/KTdDXRg5pzqi+kywODgdfQ==
-----END CERTIFICATE-----
";
    const RSA_PKCS1_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEoQIBAAKCAQEArImAd2hC1T5xwUu0VY/vjKVWStePDs73Na4MMVEGw8zGTiL+
MgMCkCcPrcahULsx+Ond9oEsTp7Gl6NsWTeRFSodLjSP/xtayAbbw+Z2x/MQgqOi
Bbbft70AyXFq/Ej3RE3z3fXruOGaLHZlEVsb1Tay5SIfVNpnGY/M8kZmfExvo9Ff
ZJ245jBNgw5A7DmOmvAzQ510m9TnqfMyapine+krwjxGdUQuP546VLPuny/ac9M5
tCVv377S3c8L5xi+BZurINcjQNWQrj9i6y6++gd3tP6Xj88zkLAoj7IgKLPt83EO
+u5+JVxB4t/QB0EUxvLDiGkegNYndD735sroSQIDAQABAoH/MPNztSmplqDCfQdp
Svgs/qzci1HgbQ/EccdAavNptI9XEjJvm1UJZSAAzAlz1hV8GBVqeE+m/xMaiFb9
xNjxlAIo5vMQOHkDmWvR+4yqyEXCGJHNnAdT3W8FhsNIpLcBcF+f+T5uDjwOj0tz
shqTDlbHXS15mzsYVg1N/VPhAyyhA6I0PcHxKJ3lIAxM+zoU8AVhxgXaEb6dE/Pz
cytRnDUZ6FYuElBFfkZdqZHHwRIC8c2hVoqriGAkuOrM1hmGxG2sgDBisFGILd3i
cfhx/rYNAkaqCdZ/+G/A2rrKBcJcAGKEYi1x/pby9o7x6xBpUC1HaSiZGOMg8UzW
aPQxAoGBANYOIjwNsAvse9RZzgXLe+73kbWcxa8zwwrYzjgerbqN3rf0CQl5TWO4
VXWuBzxV+IlvKkE6sdFpoWS7Ozv9VmJdRbR9iMHI3dVmolE8zZubVpN+2hEc30Xo
nsj4NF5r5uHYZUxjIlEouQDZNyJNU7a5iN9hXocJ5V3dna6LuWjzAoGBAM5Yp4FG
vSs645ajg+yN//+FslO1jiWLoCa3xhTjbKscO4QYh4Vgn+C6aen5RIz4rQMNea5U
fH6ptfIOg6/C+FxP0o20fDsg5SUesf4H7xDw4DhOODplS4bRqPqT7w85wVAaRyZI
65LH1JzFRfEOHYz0Vl3QiXKTGM2HBR9W+vjTAoGAZOy9D3uUqcqSiAjfrrPGd2Ga
/fow6u6I47BdavBsES2a+TjCmgjriDz9bkLjfns6d/JGBgNam9YmFoyA3UQRWseH
ehZGSLggf+GoXo1AlEGljF2fC7qFOzz2wOLmLi7J6WpSOLX1FDcTI2dHK5EyC1Fn
S4tpOlpcHunC0u1mOikCgYAnaduk38QmS7tI/LaoKn9paTokrxsVpNPUUWnud3o8
PMpJcv3/xfMD09eDL2+elalGWf6SA+U7tGLid09D9TPHPh/znTPVf3UFYBWTdiR9
0eSiHJ602MBSYh2qrzMMb3WzPTG16FvGz5CW2T+AybdvQwR0Ku72CY7FQzMBR3Xs
rQKBgQCVHJ81ie9lWmPjQIFHF5lzTrgEMqRNo2SPt8sy4wddYVjhQBdIJpn7iLQw
CpCNNs9ejJiD1OEbNpobtGaCv42mROS5qQKMqXlfmzOkIbz7dZu/6ygDFTw4YKdg
T6u5ypZ190r5bkAwRWhBS8GvbOa+9AvGtB7xfPVlSkjw3SroUQ==
-----END RSA PRIVATE KEY-----
";
    /// Self-signed ECDSA P-256 certificate and its SEC1 key (made with openssl; test only).
    const EC_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBjzCCATWgAwIBAgIUfbg0Rev3W0upapHs03Gs/qSdmL0wCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHZWMudGVzdDAgFw0yNjExMjIyMjUyMTFaGA8yMTI2MTAyOTIy
NTIxMVowEjEQMA4GA1UEAwwHZWMudGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABOkEyNbfj21FzFusoyyYg53Y3+G57+FYxvdYyoP7X9NC/nlVRyEPvIWKoCFG
wq+2dKl3R6MuzITWEcsSk2SRnbmjZzBlMB0GA1UdDgQWBBRiDZ+8Qvx1DYQXI1dq
pXj+tRIZpzAfBgNVHSMEGDAWgBRiDZ+8Qvx1DYQXI1dqpXj+tRIZpzAPBgNVHRMB
Af8EBTADAQH/MBIGA1UdEQQLMAmCB2VjLnRlc3QwCgYIKoZIzj0EAwIDSAAwRQIg
HsZcM0z+lWYSetHEj8n1nw9Eq+tUUXVG8RSnJJHXlNMCIQDqo7OQSK+nxGFRAohM
aLFjnOzsHAHIjKEazF6kJVuAvw==
-----END CERTIFICATE-----
";
    const EC_SEC1_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIHioBaaYjg+7WVL2TVNDOOdcAieJppiVpKmQU6Sjl8QeoAoGCCqGSM49
AwEHoUQDQgAE6QTI1t+PbUXMW6yjLJiDndjf4bnv4VjG91jKg/tf00L+eVVHIQ+8
hYqgIUbCr7Z0qXdHoy7MhNYRyxKTZJGduQ==
-----END EC PRIVATE KEY-----
";

    /// A CA and two leaves it signed, written as PEM files into a tempdir.
    struct Pki {
        dir: tempfile::TempDir,
        ca_der: CertificateDer<'static>,
        /// ECDSA leaf for a.example.com, fallback.test and 127.0.0.1.
        a: TlsFiles,
        a_der: CertificateDer<'static>,
        /// Ed25519 leaf for b.example.com and *.b.example.com.
        b: TlsFiles,
        b_der: CertificateDer<'static>,
    }

    impl Pki {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = KeyPair::generate().unwrap();
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            let leaf = |name: &str, sans: &[&str], key: KeyPair| {
                let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
                let cert = CertificateParams::new(sans)
                    .unwrap()
                    .signed_by(&key, &ca, &ca_key);
                let cert = cert.unwrap();
                let files = write_pair(&dir, name, &(cert.pem() + &ca.pem()), &key.serialize_pem());
                (files, cert.der().clone())
            };
            let ecdsa = KeyPair::generate().unwrap();
            let (a, a_der) = leaf("a", &["a.example.com", "fallback.test", "127.0.0.1"], ecdsa);
            let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            let (b, b_der) = leaf("b", &["b.example.com", "*.b.example.com"], ed25519);
            Pki {
                ca_der: ca.der().clone(),
                dir,
                a,
                a_der,
                b,
                b_der,
            }
        }

        fn ca_path(&self) -> PathBuf {
            self.dir.path().join("ca.pem")
        }

        fn server(&self) -> Arc<ServerConfig> {
            let a = load_certified_key(&self.a).unwrap();
            let b = load_certified_key(&self.b).unwrap();
            let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
            server_config(
                vec![
                    (names(&["a.example.com"]), a),
                    (names(&["*.b.example.com", "b.example.com"]), b),
                ],
                true,
            )
            .unwrap()
        }
    }

    fn write_pair(dir: &tempfile::TempDir, name: &str, cert: &str, key: &str) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.path().join(format!("{name}.crt")),
            key: dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    /// A full handshake over an in-memory pipe: the leaf the client saw and the ALPN agreed.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> (CertificateDer<'static>, Option<Vec<u8>>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(name.to_string()).unwrap();
        let (accepted, connected) = tokio::join!(
            TlsAcceptor::from(server).accept(server_io),
            TlsConnector::from(client).connect(name, client_io)
        );
        accepted.unwrap();
        let connected = connected.unwrap();
        let conn = connected.get_ref().1;
        let leaf = conn.peer_certificates().unwrap()[0].clone().into_owned();
        (leaf, conn.alpn_protocol().map(<[u8]>::to_vec))
    }

    #[test]
    fn loads_ecdsa_and_ed25519_chains_leaf_first() {
        let pki = Pki::new();
        let a = load_certified_key(&pki.a).unwrap();
        assert_eq!(a.cert, vec![pki.a_der.clone(), pki.ca_der.clone()]);
        let b = load_certified_key(&pki.b).unwrap();
        assert_eq!(b.cert[0], pki.b_der);
    }

    #[test]
    fn loads_rsa_pkcs1_and_ec_sec1() {
        let dir = tempfile::tempdir().unwrap();
        let rsa = write_pair(&dir, "rsa", RSA_CERT, RSA_PKCS1_KEY);
        assert!(load_certified_key(&rsa).is_ok());
        let ec = write_pair(&dir, "ec", EC_CERT, EC_SEC1_KEY);
        assert!(load_certified_key(&ec).is_ok());
        let combined = write_pair(&dir, "combined", &(EC_CERT.to_owned() + EC_SEC1_KEY), "");
        let combined = TlsFiles {
            key: combined.cert.clone(),
            ..combined
        };
        assert!(
            load_certified_key(&combined).is_ok(),
            "cert and key in one file"
        );
    }

    #[test]
    fn mismatched_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(&dir, "mix", RSA_CERT, EC_SEC1_KEY);
        let err = load_certified_key(&files).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("mix.key") && msg.contains("mix.crt"), "{msg}");
        let pki = Pki::new();
        let swapped = TlsFiles {
            cert: pki.a.cert.clone(),
            key: pki.b.key.clone(),
        };
        assert!(matches!(
            load_certified_key(&swapped),
            Err(TlsError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsFiles {
            cert: dir.path().join("nope.crt"),
            key: dir.path().join("k"),
        };
        let msg = load_certified_key(&missing).unwrap_err().to_string();
        assert!(msg.contains("nope.crt"), "{msg}");
        let files = write_pair(&dir, "swapped", EC_SEC1_KEY, EC_CERT);
        let err = load_certified_key(&files).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates { .. }), "{err}");
        assert!(err.to_string().contains("swapped.crt"));
        let files = write_pair(&dir, "nokey", EC_CERT, EC_CERT);
        let err = load_certified_key(&files).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("nokey.key"));
        let files = write_pair(&dir, "missingkey", EC_CERT, "");
        let files = TlsFiles {
            key: dir.path().join("absent.key"),
            ..files
        };
        assert!(load_certified_key(&files)
            .unwrap_err()
            .to_string()
            .contains("absent.key"));
    }

    #[test]
    fn server_config_rejects_bad_input() {
        assert!(matches!(
            server_config(vec![], true),
            Err(TlsError::NoCertificate)
        ));
        let dir = tempfile::tempdir().unwrap();
        let key = load_certified_key(&write_pair(&dir, "ec", EC_CERT, EC_SEC1_KEY)).unwrap();
        for bad in ["", "*.", "www.*", "~^api", "a..b", "*.*.x"] {
            let res = server_config(vec![(vec![bad.to_string()], key.clone())], true);
            assert!(
                matches!(res, Err(TlsError::BadServerName { .. })),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn sni_picks_the_certificate_and_alpn_is_http11() {
        let pki = Pki::new();
        let (server, client) = (pki.server(), client_config(Some(&pki.ca_path())).unwrap());
        let cases = [
            ("a.example.com", &pki.a_der),
            ("b.example.com", &pki.b_der),
            ("x.b.example.com", &pki.b_der),
            ("X.B.Example.COM", &pki.b_der),
            ("fallback.test", &pki.a_der),
            ("127.0.0.1", &pki.a_der),
        ];
        for (name, expected) in cases {
            let (leaf, alpn) = handshake(server.clone(), client.clone(), name).await;
            assert_eq!(&leaf, expected, "{name}");
            assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "{name}");
        }
    }

    #[tokio::test]
    async fn tls12_client_is_served() {
        let pki = Pki::new();
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (leaf, alpn) = handshake(pki.server(), Arc::new(client), "b.example.com").await;
        assert_eq!(leaf, pki.b_der);
        assert_eq!(alpn, None, "this client offered no ALPN");
    }

    #[test]
    fn client_config_roots() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca-missing.pem");
        let msg = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(msg.contains("ca-missing.pem"), "{msg}");
        let no_ca = write_pair(&dir, "empty", "", "").cert;
        assert!(matches!(
            client_config(Some(&no_ca)),
            Err(TlsError::NoCertificates { .. })
        ));
        if std::fs::metadata(SYSTEM_CA_BUNDLE).is_ok() {
            assert!(client_config(None).is_ok());
        }
    }
}
