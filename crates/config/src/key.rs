//! WireGuard key material: 32 bytes written as 44 characters of standard base64.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, Zeroizing};

/// Length of a WireGuard key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a WireGuard key in base64, padding included.
const KEY_BASE64_LEN: usize = 44;

/// Decodes a key. The error says what is wrong without ever echoing the input,
/// which may be a secret.
fn decode_key(text: &str) -> Result<[u8; KEY_LEN], &'static str> {
    if text.len() != KEY_BASE64_LEN {
        return Err("must be 44 characters of base64 (32 bytes)");
    }
    let decoded = Zeroizing::new(
        STANDARD
            .decode(text)
            .map_err(|_| "is not valid base64 (expected 32 bytes, as `wg genkey` prints)")?,
    );
    let mut key = [0u8; KEY_LEN];
    if decoded.len() != KEY_LEN {
        return Err("must decode to exactly 32 bytes");
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}

/// A secret key (`PrivateKey` or `PresharedKey`).
///
/// Its `Debug` prints `<redacted>`; it has no `Display`; its bytes are zeroed on drop.
/// It deliberately has no `PartialEq`: compare secrets in constant time where it matters.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// Decodes a base64 secret key; the error message never contains the input.
    pub fn from_base64(text: &str) -> Result<Self, &'static str> {
        let mut bytes = decode_key(text)?;
        let key = Self(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes, for handing to WireGuard. Never log them.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A peer's public key. Not secret: `Debug` and `Display` print its base64 form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Decodes a base64 public key; the error message never contains the input
    /// (a private key pasted in the wrong place must not end up in a log).
    pub fn from_base64(text: &str) -> Result<Self, &'static str> {
        decode_key(text).map(Self)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    #[test]
    fn decodes_a_wg_genkey_key() {
        let key = SecretKey::from_base64(KEY).unwrap();
        assert_eq!(STANDARD.encode(key.expose_bytes()), KEY);
        let public = PublicKey::from_base64(KEY).unwrap();
        assert_eq!(public.to_string(), KEY);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let key = SecretKey::from_base64(KEY).unwrap();
        let debug = format!("{key:?}");
        assert_eq!(debug, "SecretKey(<redacted>)");
    }

    #[test]
    fn rejects_wrong_lengths_and_alphabet() {
        assert!(SecretKey::from_base64("").is_err());
        assert!(SecretKey::from_base64(&KEY[..43]).is_err());
        assert!(SecretKey::from_base64(&format!("{KEY}A")).is_err());
        // 44 characters but not base64.
        assert!(SecretKey::from_base64(&"!".repeat(44)).is_err());
        // 44 characters of base64 that decode to 33 bytes.
        assert!(SecretKey::from_base64(&"A".repeat(44)).is_err());
        // Non-canonical trailing bits are rejected, as wg does.
        assert!(SecretKey::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmn=").is_err());
    }
}
