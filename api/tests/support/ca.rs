//! A throw-away certificate authority for the HTTPS tests, and server certificates for
//! 127.0.0.1 and localhost issued by it, written as PEM files the way an operator would
//! deploy them. The agent's tests use this same file.

#![allow(dead_code)] // each test file uses part of it

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A CA whose certificate is in `<dir>/<name>.pem`.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
    pub file: PathBuf,
}

/// A server certificate and its key as issued, and where they were written.
pub struct Issued {
    /// The certificate (DER), to compare with the one a server presents.
    pub der: Vec<u8>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Ca {
    /// A new CA named `name`; its certificate is written to `<dir>/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let file = dir.join(format!("{name}.pem"));
        write(&file, &cert.pem());
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            pem: cert.pem(),
            file,
        }
    }

    /// A server certificate for 127.0.0.1 and localhost, with `subject` as its common name
    /// and `serial` as its serial number, issued by this CA; written to
    /// `<dir>/<subject>.crt` (the chain: the certificate, then the CA's) and
    /// `<dir>/<subject>.key` (0600).
    pub fn issue(&self, dir: &Path, subject: &str, serial: u64) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, subject);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            der: cert.der().to_vec(),
            cert_file: dir.join(format!("{subject}.crt")),
            key_file: dir.join(format!("{subject}.key")),
        };
        write(&issued.cert_file, &format!("{}{}", cert.pem(), self.pem));
        write(&issued.key_file, &key.serialize_pem());
        issued
    }
}

/// Writes `text` to a file beside `path` (0600) and renames it over `path`, as a certificate
/// renewal tool does, so a reader sees the old file or the new one, never half of one.
pub fn write(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.sync_all().unwrap();
    std::fs::rename(&partial, path).unwrap();
}
