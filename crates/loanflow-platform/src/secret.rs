//! Secrets from configuration (tokens, shared secrets): a type that never prints its
//! value, and compares in constant time so a response's timing does not tell how close
//! a guess was.

use serde::Deserialize;
use subtle::ConstantTimeEq;

/// A configured secret. `Debug` and `Display` show `[redacted]`; the value is read
/// only through [`Secret::expose`] and compared through [`Secret::matches`].
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// An empty secret stands for "not configured".
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison; an unset secret matches nothing, not even "".
    pub fn matches(&self, candidate: &str) -> bool {
        self.is_set() && bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn a_secret_never_prints_and_an_unset_one_matches_nothing() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert!(s.matches("hunter2"));
        assert!(!s.matches("hunter3") && !s.matches("hunter") && !s.matches(""));
        assert!(!Secret::default().matches(""), "an unset secret is no password");
    }
}
