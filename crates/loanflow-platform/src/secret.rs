//! Secrets from configuration (tokens, shared secrets): a type that never prints its
//! value, and compares in constant time so a response's timing does not tell how close
//! a guess was; and the digest of a token, which is what configuration holds for
//! people's tokens, so that reading a configuration file does not hand out identities.

use rand::RngCore;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
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

/// The SHA-256 digest of a bearer token, as configuration holds it (64 hex digits,
/// `loanflow token` prints a new token with its digest). Tokens are 256 random bits, so
/// a plain digest suffices: there is no dictionary to stretch against, and checking a
/// token stays one hash.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The digest of `token`.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses 64 hex digits (either case).
    pub fn parse(hex: &str) -> Option<TokenHash> {
        let hex = hex.trim().as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(TokenHash(out))
    }

    /// Whether `token` hashes to this digest, compared in constant time. An empty
    /// token matches nothing.
    pub fn matches(&self, token: &str) -> bool {
        !token.is_empty() && bool::from(TokenHash::of(token).0.ct_eq(&self.0))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TokenHash::parse(&text).ok_or_else(|| {
            serde::de::Error::custom("a token digest is 64 hex digits (SHA-256; `loanflow token` prints one)")
        })
    }
}

/// A new random token: 32 bytes from the operating system's generator, as 64 hex digits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::{new_token, Secret, TokenHash};

    #[test]
    fn a_token_digest_matches_its_token_only_and_parses_its_own_hex() {
        let token = new_token();
        assert_eq!(token.len(), 64);
        let hash = TokenHash::of(&token);
        assert!(hash.matches(&token));
        assert!(!hash.matches(&token[1..]) && !hash.matches("") && !hash.matches(&new_token()));
        assert_eq!(TokenHash::parse(&hash.to_hex()), Some(hash.clone()));
        assert_eq!(TokenHash::parse(&hash.to_hex().to_uppercase()), Some(hash.clone()));
        // The well-known digest of "abc" pins the algorithm.
        assert_eq!(TokenHash::of("abc").to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65), &"é".repeat(32)] {
            assert_eq!(TokenHash::parse(bad), None, "{bad:?}");
        }
        assert!(!format!("{hash:?}").contains(&hash.to_hex()), "Debug shows a prefix only");
    }

    #[test]
    fn a_secret_never_prints_and_an_unset_one_matches_nothing() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert!(s.matches("hunter2"));
        assert!(!s.matches("hunter3") && !s.matches("hunter") && !s.matches(""));
        assert!(!Secret::default().matches(""), "an unset secret is no password");
    }
}
