//! The loan reference: the one identifier an application carries everywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Crockford's base-32 alphabet: no `I`, `L`, `O` or `U`, so a reference read aloud
/// or copied by hand is hard to get wrong. Every character is URL-safe.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const PREFIX: &str = "LN-";
/// Bytes of randomness in a reference: 120 bits, well above the contract's 80, so a
/// reference cannot be guessed or enumerated.
pub const RANDOM_BYTES: usize = 15;
const BODY_LEN: usize = RANDOM_BYTES * 8 / 5;

/// An application's reference, `LN-` followed by 24 base-32 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(value_type = String, pattern = "^LN-[0-9A-Z]{24}$")]
#[serde(try_from = "String", into = "String")]
pub struct Reference(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a loan reference")]
pub struct MalformedReference;

impl Reference {
    /// Encodes random bytes as a reference. The caller supplies the randomness (a
    /// CSPRNG in the intake), which keeps this crate free of I/O.
    pub fn from_random(bytes: [u8; RANDOM_BYTES]) -> Reference {
        let mut out = String::with_capacity(PREFIX.len() + BODY_LEN);
        out.push_str(PREFIX);
        let (mut acc, mut bits) = (0u32, 0u32);
        for byte in bytes {
            acc = (acc << 8) | u32::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
            }
        }
        Reference(out)
    }

    pub fn parse(s: &str) -> Result<Reference, MalformedReference> {
        let body = s.strip_prefix(PREFIX).ok_or(MalformedReference)?;
        if body.len() == BODY_LEN && body.bytes().all(|b| ALPHABET.contains(&b)) {
            Ok(Reference(s.to_owned()))
        } else {
            Err(MalformedReference)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Reference {
    type Error = MalformedReference;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Reference::parse(&value)
    }
}

impl From<Reference> for String {
    fn from(value: Reference) -> Self {
        value.0
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_the_randomness_and_parses_back() {
        let a = Reference::from_random([0; RANDOM_BYTES]);
        let b = Reference::from_random([0xff; RANDOM_BYTES]);
        assert_eq!(a.as_str(), "LN-000000000000000000000000");
        assert_eq!(b.as_str(), "LN-ZZZZZZZZZZZZZZZZZZZZZZZZ");
        let mut one = [0; RANDOM_BYTES];
        one[RANDOM_BYTES - 1] = 1;
        assert_ne!(Reference::from_random(one), a, "the last bit must count");
        assert_eq!(Reference::parse(b.as_str()), Ok(b));
    }

    #[test]
    fn rejects_malformed_references() {
        for s in [
            "",
            "LN-",
            "LN-00000000000000000000000",
            "LN-0000000000000000000000000",
            "ln-000000000000000000000000",
            "LN-00000000000000000000000I",
            "XX-000000000000000000000000",
            "LN-00000000000000000000000/",
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?}");
        }
    }
}
