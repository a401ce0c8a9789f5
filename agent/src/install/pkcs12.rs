//! `kind = "pkcs12"`: the deployed leaf, its chain and key as one PKCS#12
//! keystore, for Tomcat and other Java servers.
//!
//! The keystore password is read from the file the target's
//! `password_file` names — on the host, owned by its operator — at every
//! install; the controller never sees or sends it. A missing, unreadable or
//! empty password file fails the install before anything is written.
//!
//! The keystore is written by `p12-keystore` with its default (and modern)
//! protection: PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC, HMAC-SHA256
//! integrity, which `openssl pkcs12` (3.x) and Java 8u301+ read. That crate
//! does its symmetric crypto with RustCrypto; the TLS provider stays aws-lc-rs.
//! JKS is not written: no maintained Rust crate writes it, and Java reads
//! PKCS#12 natively since Java 9.

use std::path::Path;

use certfleet_protocol::message::CertBundle;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use super::verify;
use crate::config::Pkcs12Settings;

/// Largest password file read; a password is a line, not a file.
const PASSWORD_MAX: u64 = 4096;

/// The keystore password: the file's first line, without its line ending.
pub fn read_password(path: &Path) -> Result<Zeroizing<String>, String> {
    use std::io::Read;
    let what = |e: std::io::Error| {
        format!(
            "cannot read the keystore password file {} ({e}); create it (one line, readable \
             by the agent) or fix `password_file` in the agent config",
            path.display()
        )
    };
    let file = std::fs::File::open(path).map_err(what)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(PASSWORD_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(what)?;
    if bytes.len() as u64 > PASSWORD_MAX {
        return Err(format!(
            "keystore password file {} is larger than {PASSWORD_MAX} bytes; it must hold one line",
            path.display()
        ));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        format!(
            "keystore password file {} is not UTF-8 text",
            path.display()
        )
    })?;
    let line = text.split(['\n', '\r']).next().unwrap_or_default();
    if line.is_empty() {
        return Err(format!(
            "keystore password file {} is empty; write the password on its first line",
            path.display()
        ));
    }
    Ok(Zeroizing::new(line.to_string()))
}

/// For `check-config`: every pkcs12 target's password file must be
/// readable now. Each problem names the config file and the key.
pub fn check_password_files(config: &crate::config::Config) -> Vec<String> {
    config
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let p = t.pkcs12.as_ref()?;
            read_password(&p.password_file).err().map(|e| {
                format!(
                    "config {}: target[{i}] ({}).password_file: {e}",
                    config.path.display(),
                    t.name
                )
            })
        })
        .collect()
}

/// The keystore bytes for `bundle`: one private-key entry named by the
/// alias, holding the key, the leaf and the issuing chain.
pub fn keystore(
    settings: &Pkcs12Settings,
    bundle: &CertBundle,
    password: &str,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let key_pem = bundle
        .key
        .expose_str()
        .ok_or("private key is not PEM text")?;
    let pkcs8 = Zeroizing::new(
        rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| format!("private key does not parse: {e}"))?
            .serialize_der(),
    );
    let key = p12_keystore::PrivateKey::from_der(&pkcs8)
        .map_err(|e| format!("private key unusable for PKCS#12: {e}"))?;
    let mut certs = Vec::new();
    for pem in [&bundle.leaf_pem, &bundle.chain_pem] {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let der = der.map_err(|e| format!("certificate PEM is malformed: {e}"))?;
            certs.push(
                p12_keystore::Certificate::from_der(&der)
                    .map_err(|e| format!("certificate unusable for PKCS#12: {e}"))?,
            );
        }
    }
    let leaf = certs.first().ok_or("bundle has no leaf certificate")?;
    let local_key_id = verify::fingerprint(leaf.as_der());
    let chain = p12_keystore::PrivateKeyChain::new(local_key_id.into_bytes(), key, certs);
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        &settings.alias,
        p12_keystore::KeyStoreEntry::PrivateKeyChain(chain),
    );
    store
        .writer(password)
        .write()
        .map(Zeroizing::new)
        .map_err(|e| format!("cannot build the PKCS#12 keystore: {e}"))
}

/// Fingerprint of the leaf in the live keystore, if it opens with the
/// current password.
pub fn live_fingerprint(settings: &Pkcs12Settings) -> Option<String> {
    let password = read_password(&settings.password_file).ok()?;
    let bytes = Zeroizing::new(std::fs::read(&settings.keystore).ok()?);
    let store = p12_keystore::KeyStore::from_pkcs12(
        &bytes,
        &password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    )
    .ok()?;
    let chain = match store.entry(&settings.alias) {
        Some(p12_keystore::KeyStoreEntry::PrivateKeyChain(c)) => c,
        _ => store.private_key_chain()?.1,
    };
    Some(verify::fingerprint(chain.certs().first()?.as_der()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn password_is_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(b"s3cret pass\r\nignored\n")
            .unwrap();
        assert_eq!(read_password(&p).unwrap().as_str(), "s3cret pass");
    }

    #[test]
    fn missing_empty_and_huge_password_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = read_password(&missing).unwrap_err();
        assert!(e.contains("nope") && e.contains("password_file"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(read_password(&empty).unwrap_err().contains("empty"));
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'x'; 10_000]).unwrap();
        assert!(read_password(&huge).unwrap_err().contains("larger"));
    }
}
