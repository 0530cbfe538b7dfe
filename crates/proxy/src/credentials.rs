//! The proxies' users: a file of `user:password` lines.

use std::collections::HashMap;

/// Longest username or password RFC 1929 can carry, in bytes.
const MAX_FIELD_LEN: usize = 255;

/// Who may use the proxies, read from a credentials file: one `user:password` per line
/// (the password is everything after the first colon), blank lines and `#` comments
/// ignored.
#[derive(Clone, Default)]
pub struct Credentials {
    passwords: HashMap<Vec<u8>, Vec<u8>>,
}

/// A line of a credentials file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct CredentialsError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl Credentials {
    /// Parses a credentials file's text.
    pub fn parse(text: &str) -> Result<Self, CredentialsError> {
        let mut passwords = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let error = |message: &str| CredentialsError {
                line: index + 1,
                message: message.to_owned(),
            };
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (user, password) = line
                .split_once(':')
                .ok_or_else(|| error("expected user:password"))?;
            if user.is_empty() || password.is_empty() {
                return Err(error(
                    "empty username or password (RFC 1929 needs 1 to 255 bytes)",
                ));
            }
            if user.len() > MAX_FIELD_LEN || password.len() > MAX_FIELD_LEN {
                return Err(error(
                    "username and password are 255 bytes at most (RFC 1929)",
                ));
            }
            if passwords
                .insert(user.as_bytes().to_vec(), password.as_bytes().to_vec())
                .is_some()
            {
                return Err(error(&format!("user {user:?} is listed twice")));
            }
        }
        if passwords.is_empty() {
            return Err(CredentialsError {
                line: text.lines().count().max(1),
                message: "the file lists no user".to_owned(),
            });
        }
        Ok(Self { passwords })
    }

    /// Whether `user` may log in with `password`. The password is compared in time that
    /// does not depend on where it differs.
    pub fn verify(&self, user: &[u8], password: &[u8]) -> bool {
        self.passwords
            .get(user)
            .is_some_and(|expected| constant_time_eq(expected, password))
    }

    /// How many users the file lists.
    pub fn len(&self) -> usize {
        self.passwords.len()
    }

    /// Whether the file lists no user (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.passwords.is_empty()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the passwords, in a log line or a panic message.
        write!(f, "Credentials({} users)", self.passwords.len())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y))) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_log_in_with_their_password_only() {
        let credentials =
            Credentials::parse("# proxy users\nalice:s3cret\n\nbob:with:colons\r\n").unwrap();
        assert_eq!(credentials.len(), 2);
        assert!(credentials.verify(b"alice", b"s3cret"));
        assert!(credentials.verify(b"bob", b"with:colons"));
        assert!(!credentials.verify(b"alice", b"s3cre"));
        assert!(!credentials.verify(b"alice", b"s3cret!"));
        assert!(!credentials.verify(b"carol", b"s3cret"));
        assert_eq!(format!("{credentials:?}"), "Credentials(2 users)");
    }

    #[test]
    fn unusable_lines_are_named() {
        let line_of = |text: &str| Credentials::parse(text).unwrap_err().line;
        assert_eq!(line_of("alice:x\nbob\n"), 2);
        assert_eq!(line_of("alice:x\n:nobody\n"), 2);
        assert_eq!(line_of("alice:\n"), 1);
        assert_eq!(line_of("alice:x\n\nalice:y\n"), 3);
        assert_eq!(line_of(&format!("{}:x", "u".repeat(256))), 1);
        assert_eq!(line_of("# nobody\n"), 1);
    }
}
