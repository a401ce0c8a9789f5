//! Key material and tokens on the wire and in memory.
//!
//! `Secret` holds bytes that must never reach a log: its `Debug` prints
//! `[redacted]` and its buffer is zeroized when dropped. It serializes as plain
//! bytes, so it only ever crosses the wire inside the mutual-TLS session.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes: private keys, join-token secrets, passwords.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(transparent)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The secret bytes. Callers must not log or persist them unsealed.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as UTF-8 text (PEM keys are text), if it is.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s.into_bytes())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::from("-----BEGIN PRIVATE KEY-----".to_string());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
    }

    #[test]
    fn round_trips_through_postcard() {
        let s = Secret::new(vec![1, 2, 3]);
        let bytes = postcard::to_stdvec(&s).unwrap();
        let back: Secret = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.expose(), &[1, 2, 3]);
    }
}
