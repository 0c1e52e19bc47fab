//! Talking HTTPS to a server with rustls, trusting one CA: which certificate the server
//! presents, and one HTTP/1.0 request.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

/// A TLS connection to `addr` (`127.0.0.1:PORT`) whose handshake succeeded, trusting only
/// the CA certificate `ca_pem`.
pub fn connect(
    addr: &str,
    ca_pem: &str,
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let config = ClientConfig::builder_with_provider(latchkey_api::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .to_owned();
    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    let mut connection =
        ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    while connection.is_handshaking() {
        connection
            .complete_io(&mut socket)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    Ok(StreamOwned::new(connection, socket))
}

/// The certificate (DER) the server at `addr` presents, checked against `ca_pem`.
pub fn served_certificate(addr: &str, ca_pem: &str) -> Result<Vec<u8>, String> {
    let stream = connect(addr, ca_pem)?;
    let chain = stream
        .conn
        .peer_certificates()
        .ok_or("no certificate presented")?;
    Ok(chain[0].to_vec())
}

/// Sends one HTTP/1.0 request over TLS; returns the status and the body.
pub fn request(
    addr: &str,
    ca_pem: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut stream = connect(addr, ca_pem).expect("a TLS connection");
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut reader = BufReader::new(stream);
    let (status, _) = super::read_head(&mut reader);
    let mut body = String::new();
    // The server may close without a TLS close_notify; what arrived is the body.
    let _ = reader.read_to_string(&mut body);
    (status, body)
}
