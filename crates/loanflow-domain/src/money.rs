//! Decimal money in the contract's string form.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A non-negative amount with at most two fraction digits.
///
/// Parsed only from the contract's strict form (`"25000"`, `"25000.5"`, `"25000.00"`):
/// no sign, exponent, spaces or thousands separators, so that what a client sends is
/// exactly what is stored. It always serialises with two fraction digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Money(Decimal);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a decimal string: digits, optionally a point and one or two fraction digits")]
pub struct MoneyFormatError;

/// The largest number of integer digits accepted; far above any limit a product sets,
/// and small enough that no arithmetic on it can overflow a `Decimal`.
const MAX_INTEGER_DIGITS: usize = 15;

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// Builds an amount from a decimal, rounding half-up to cents. Negative values are
    /// clamped to zero: money in this domain is never negative.
    pub fn from_decimal(value: Decimal) -> Money {
        let rounded = value.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        Money(rounded.max(Decimal::ZERO))
    }

    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Money {
    type Err = MoneyFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (int, frac) = match s.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (s, None),
        };
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || int.len() > MAX_INTEGER_DIGITS {
            return Err(MoneyFormatError);
        }
        if let Some(frac) = frac {
            if !digits(frac) || frac.len() > 2 {
                return Err(MoneyFormatError);
            }
        }
        let value = Decimal::from_str(s).map_err(|_| MoneyFormatError)?;
        Ok(Money(value.round_dp(2)))
    }
}

impl TryFrom<String> for Money {
    type Error = MoneyFormatError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Money> for String {
    fn from(value: Money) -> Self {
        value.to_string()
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = self.0;
        v.rescale(2);
        write!(f, "{v}")
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({self})")
    }
}

/// A string schema with a pattern (money, identifiers): what the contract fixes as text.
pub(crate) fn string_schema(
    pattern: &str,
    description: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern)).description(Some(description)).build().into()
}

impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(
            "^[0-9]+(\\.[0-9]{1,2})?$",
            "A decimal amount as a string: digits, optionally a point and one or two fraction digits.",
        )
    }
}

impl utoipa::ToSchema for Money {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_forms() {
        for (input, shown) in
            [("25000", "25000.00"), ("25000.5", "25000.50"), ("25000.00", "25000.00"), ("0", "0.00"), ("0.01", "0.01")]
        {
            assert_eq!(input.parse::<Money>().unwrap().to_string(), shown, "{input}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for input in [
            "",
            " 1",
            "1 ",
            "-1",
            "+1",
            "1e3",
            "1.",
            ".5",
            "1.234",
            "1,000",
            "abc",
            "1.2.3",
            "0x10",
            "１２",
            "1234567890123456",
        ] {
            assert!(input.parse::<Money>().is_err(), "{input:?} should be rejected");
        }
    }

    #[test]
    fn serialises_as_a_string_with_cents() {
        let m: Money = serde_json::from_str("\"12.5\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"12.50\"");
        assert!(serde_json::from_str::<Money>("12.5").is_err(), "a JSON number is not money");
    }

    #[test]
    fn from_decimal_rounds_half_up_and_never_goes_negative() {
        assert_eq!(Money::from_decimal(Decimal::new(12345, 3)).to_string(), "12.35");
        assert_eq!(Money::from_decimal(Decimal::new(-5, 0)), Money::ZERO);
    }
}
