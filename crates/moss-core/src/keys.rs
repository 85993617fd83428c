//! The server's ed25519 signing key, generated on first start and kept in the data directory.

use std::{fs, path::Path};

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use rand::{distributions::Alphanumeric, Rng};
use ruma::signatures::Ed25519KeyPair;

use crate::error::{Error, Result};

/// Loads the key at `path`, or generates and writes one (mode 0600) if the file is missing.
/// Processes sharing the data directory and starting together all end up with the same key.
///
/// File format: one line, `ed25519 <version> <base64 PKCS#8 document>`.
pub fn load_or_generate(path: &Path) -> Result<Ed25519KeyPair> {
    let read = || -> Result<Ed25519KeyPair> {
        let text = fs::read_to_string(path).map_err(|e| Error::internal(format!("reading {}: {e}", path.display())))?;
        parse(&text).map_err(|e| Error::internal(format!("signing key {}: {e}", path.display())))
    };
    if path.exists() {
        return read();
    }
    let doc = Ed25519KeyPair::generate();
    let version: String = rand::thread_rng().sample_iter(&Alphanumeric).take(6).map(char::from).collect();
    let line = format!("ed25519 a_{version} {}\n", STANDARD_NO_PAD.encode(&doc));
    let created = crate::secret_file::create_once(path, line.as_bytes())
        .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?;
    if !created {
        return read();
    }
    tracing::info!(path = %path.display(), "generated a new signing key");
    parse(&line).map_err(Error::internal)
}

fn parse(text: &str) -> std::result::Result<Ed25519KeyPair, String> {
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some("ed25519"), Some(version), Some(b64)) => {
            let doc = STANDARD_NO_PAD.decode(b64.trim_end_matches('=')).map_err(|e| e.to_string())?;
            Ed25519KeyPair::from_der(&doc, version.to_owned()).map_err(|e| e.to_string())
        }
        _ => Err("expected `ed25519 <version> <base64>`".into()),
    }
}
