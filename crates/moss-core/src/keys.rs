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

/// Loads an existing key (never creates one): moss's own file or Synapse's
/// (`signing_key_path` in homeserver.yaml), for `moss media-repo` signing as its Synapse.
pub fn load(path: &Path) -> Result<Ed25519KeyPair> {
    let text = fs::read_to_string(path).map_err(|e| Error::internal(format!("reading {}: {e}", path.display())))?;
    parse(&text).map_err(|e| Error::internal(format!("signing key {}: {e}", path.display())))
}

/// PKCS#8 v1 wrapping of a bare ed25519 seed (RFC 8410): SEQUENCE { version 0,
/// AlgorithmIdentifier { id-Ed25519 }, OCTET STRING { OCTET STRING seed } }.
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// One line `ed25519 <version> <base64>`: moss writes a PKCS#8 document, Synapse (and signedjson)
/// the bare 32-byte seed; both are read. The first line is the key (Synapse may list more).
fn parse(text: &str) -> std::result::Result<Ed25519KeyPair, String> {
    let mut parts = text.lines().next().unwrap_or_default().split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some("ed25519"), Some(version), Some(b64)) => {
            let raw = STANDARD_NO_PAD.decode(b64.trim_end_matches('=')).map_err(|e| e.to_string())?;
            let doc = if raw.len() == 32 { [&PKCS8_ED25519_PREFIX[..], &raw].concat() } else { raw };
            Ed25519KeyPair::from_der(&doc, version.to_owned()).map_err(|e| e.to_string())
        }
        _ => Err("expected `ed25519 <version> <base64>`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synapse_seed_and_a_moss_document_both_load() {
        // Synapse's format: the seed alone. Its public key is what RFC 8032's test vector 1 says.
        let seed = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4, 0x44, 0x49,
            0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
        ];
        let public = [
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a, 0x0e, 0xe1,
            0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
        ];
        let synapse = format!("ed25519 a_abcd {}\n", STANDARD_NO_PAD.encode(seed));
        let key = parse(&synapse).expect("Synapse's key file loads");
        assert_eq!(key.public_key(), public);
        assert_eq!(key.version(), "a_abcd");

        let doc = Ed25519KeyPair::generate();
        let own = format!("ed25519 a_xyz {}\n", STANDARD_NO_PAD.encode(&doc));
        assert!(parse(&own).is_ok());
        assert!(parse("ed25519 a_1 AAAA").is_err(), "neither a seed nor a document");
        assert!(parse("rsa a_1 AAAA").is_err());
    }
}
