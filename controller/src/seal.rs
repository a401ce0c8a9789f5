//! Sealing of private keys at rest.
//!
//! Every private key the controller stores (issuing CAs, the identity CA,
//! issued certificates) is encrypted with AES-256-GCM under the master key.
//! The row it belongs to is bound in as associated data (`cert:<id>`,
//! `issuer:<name>`, …) so a sealed blob copied into another row fails to open.
//! The master key lives outside the database: a file created at first start
//! with mode 0600, or one the operator names (for example a systemd
//! credential).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

const BLOB_VERSION: u8 = 1;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("master key file {path} is missing; without it the keys in this state directory cannot be decrypted — restore it from backup or name it with --master-key-file")]
    Missing { path: PathBuf },
    #[error("cannot read master key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("master key file {path} is malformed: expected 64 hexadecimal characters")]
    Malformed { path: PathBuf },
    #[error("cannot create master key file {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sealed data for {what} could not be opened: wrong master key or the data was tampered with")]
    Open { what: String },
    #[error("random number generator failed")]
    Random,
}

/// The key that seals private keys at rest. Zeroized on drop.
pub struct MasterKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    fn from_bytes(bytes: &[u8]) -> Self {
        // Invariant: `bytes` is exactly KEY_LEN long (checked by callers), the
        // only way UnboundKey::new can fail for AES-256-GCM.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key");
        MasterKey {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Read the master key from `path`.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SealError::Missing {
                    path: path.to_owned(),
                })
            }
            Err(source) => {
                return Err(SealError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| SealError::Malformed {
            path: path.to_owned(),
        })?);
        if bytes.len() != KEY_LEN {
            return Err(SealError::Malformed {
                path: path.to_owned(),
            });
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// Create a new random master key at `path` (mode 0600, never
    /// overwriting an existing file).
    pub fn create(path: &Path) -> Result<Self, SealError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| SealError::Random)?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(bytes.as_ref())));
        let create = |source| SealError::Create {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(create)?;
        file.write_all(text.as_bytes()).map_err(create)?;
        file.sync_all().map_err(create)?;
        Ok(Self::from_bytes(bytes.as_ref()))
    }

    /// Encrypt `plaintext`, binding `aad` (the owning row) into the tag.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(BLOB_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypt a blob made by [`MasterKey::seal`] with the same `aad`.
    pub fn open(&self, aad: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let err = || SealError::Open {
            what: aad.to_string(),
        };
        let (version, rest) = blob.split_first().ok_or_else(err)?;
        if *version != BLOB_VERSION || rest.len() < NONCE_LEN {
            return Err(err());
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| err())?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), buf.as_mut_slice())
            .map_err(|_| err())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_load_seal_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let blob = key.seal("cert:a", b"secret").unwrap();
        let again = MasterKey::load(&path).unwrap();
        assert_eq!(again.open("cert:a", &blob).unwrap().as_slice(), b"secret");
        assert!(MasterKey::create(&path).is_err(), "never overwrites");
    }

    #[test]
    fn blob_bound_to_its_row() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::create(&dir.path().join("k")).unwrap();
        let blob = key.seal("cert:a", b"secret").unwrap();
        assert!(matches!(
            key.open("cert:b", &blob),
            Err(SealError::Open { .. })
        ));
        let mut flipped = blob.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(key.open("cert:a", &flipped).is_err());
        assert!(key.open("cert:a", &[]).is_err());
    }

    #[test]
    fn wrong_or_missing_key_is_clear() {
        let dir = tempfile::tempdir().unwrap();
        let missing = MasterKey::load(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("missing"));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "zz").unwrap();
        assert!(matches!(
            MasterKey::load(&bad),
            Err(SealError::Malformed { .. })
        ));
    }
}
