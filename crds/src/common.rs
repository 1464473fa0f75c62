//! Value types shared by the custom resources and the edge document.
//!
//! Each type deserializes strictly (a value that does not parse is an error naming it) and
//! describes itself in the CRD schema with a pattern, so the apiserver refuses the same
//! values before they ever reach the operator.

use std::{borrow::Cow, fmt, str::FromStr, time};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The longest text a duration may have; bounds the CEL cost the apiserver estimates.
const DURATION_MAX_LENGTH: u32 = 32;

/// A length of time written the Kubernetes way: a sequence of numbers with units
/// `ms`, `s`, `m` or `h`, such as `90s`, `15m` or `1h30m`. Never negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Duration(time::Duration);

/// Why a duration, byte size or other value did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {what}: {reason}")]
pub struct ParseValueError {
    /// What kind of value was expected.
    pub what: &'static str,
    /// The text that was given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ParseValueError {
    fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        Self {
            what,
            value: value.to_owned(),
            reason,
        }
    }
}

impl Duration {
    /// A duration of exactly `seconds` seconds.
    pub const fn from_secs(seconds: u64) -> Self {
        Self(time::Duration::from_secs(seconds))
    }

    /// A duration of exactly `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(time::Duration::from_millis(millis))
    }

    /// The duration as the standard library type.
    pub const fn get(self) -> time::Duration {
        self.0
    }

    /// Whether the duration is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Duration {
    type Err = ParseValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| ParseValueError::new("duration", text, reason);
        if text.is_empty() {
            return Err(invalid("it is empty"));
        }
        if text.starts_with('-') {
            return Err(invalid("durations cannot be negative"));
        }
        let mut total = time::Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid("expected a number such as 15 in 15m"));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| invalid("the number is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = match &rest[..unit_len] {
                "ms" => time::Duration::from_millis(1),
                "s" => time::Duration::from_secs(1),
                "m" => time::Duration::from_secs(60),
                "h" => time::Duration::from_secs(3600),
                "" => return Err(invalid("a unit (ms, s, m or h) must follow each number")),
                _ => return Err(invalid("units are ms, s, m and h")),
            };
            rest = &rest[unit_len..];
            let part = u32::try_from(number)
                .ok()
                .and_then(|n| unit.checked_mul(n))
                .ok_or_else(|| invalid("the duration is too long"))?;
            total = total
                .checked_add(part)
                .ok_or_else(|| invalid("the duration is too long"))?;
        }
        Ok(Self(total))
    }
}

impl TryFrom<String> for Duration {
    type Error = ParseValueError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        let (hours, rest) = (millis / 3_600_000, millis % 3_600_000);
        let (minutes, rest) = (rest / 60_000, rest % 60_000);
        let (seconds, millis) = (rest / 1000, rest % 1000);
        for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl From<Duration> for String {
    fn from(duration: Duration) -> Self {
        duration.to_string()
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h))+$",
            "maxLength": DURATION_MAX_LENGTH,
        })
    }
}

/// A size in bytes, written as a whole number with an optional binary suffix
/// (`Ki`, `Mi`, `Gi`), such as `64Ki` or `10Mi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(u64);

impl ByteSize {
    /// A size of exactly `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }

    /// A size of `kib` kibibytes.
    pub const fn from_kib(kib: u64) -> Self {
        Self(kib * 1024)
    }

    /// A size of `mib` mebibytes.
    pub const fn from_mib(mib: u64) -> Self {
        Self(mib * 1024 * 1024)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ParseValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| ParseValueError::new("byte size", text, reason);
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid(
                "expected a whole number of bytes, optionally with Ki, Mi or Gi",
            ));
        }
        let number: u64 = text[..digits]
            .parse()
            .map_err(|_| invalid("the number is too large"))?;
        let multiplier: u64 = match &text[digits..] {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            _ => return Err(invalid("the only suffixes are Ki, Mi and Gi")),
        };
        number
            .checked_mul(multiplier)
            .map(Self)
            .ok_or_else(|| invalid("the size is too large"))
    }
}

impl TryFrom<String> for ByteSize {
    type Error = ParseValueError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, suffix) in [(30, "Gi"), (20, "Mi"), (10, "Ki")] {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{suffix}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl From<ByteSize> for String {
    fn from(size: ByteSize) -> Self {
        size.to_string()
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(Ki|Mi|Gi)?$",
            "maxLength": 24,
        })
    }
}

/// Declares a string type whose schema carries a pattern and a maximum length.
macro_rules! patterned_string {
    ($(#[$doc:meta])* $name:ident, $schema_name:literal, $pattern:expr, $max_length:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The value as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self(text.to_owned())
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                $schema_name.into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "maxLength": $max_length,
                })
            }
        }
    };
}

/// The pattern of a DNS name of one or more labels (RFC 1123), lower case.
pub const DOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// The pattern of an e-mail address: a local part, `@`, and a lower-case domain.
pub const EMAIL_PATTERN: &str = r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+$";

patterned_string!(
    /// An ISO 3166-1 alpha-2 country code in upper case, such as `FR`.
    CountryCode,
    "CountryCode",
    "^[A-Z]{2}$",
    2
);

impl CountryCode {
    /// Checks that the code is assigned in ISO 3166-1 (the pattern alone admits `ZZ`).
    pub fn check_assigned(&self) -> Result<(), String> {
        isocountry::CountryCode::for_alpha2(&self.0)
            .map(|_| ())
            .map_err(|_| format!("{:?} is not an ISO 3166-1 alpha-2 country code", self.0))
    }
}

patterned_string!(
    /// An e-mail address such as `alice@example.org`; the domain is written in lower case.
    EmailAddress,
    "EmailAddress",
    EMAIL_PATTERN,
    254
);

impl EmailAddress {
    /// The domain part, after the last `@`.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, domain)| domain)
    }
}

patterned_string!(
    /// A DNS domain or host name in lower case, such as `example.org` or `media.example.org`.
    DomainName,
    "DomainName",
    DOMAIN_PATTERN,
    253
);

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(pub ipnet::IpNet);

impl FromStr for Cidr {
    type Err = ParseValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(net) = text.parse::<ipnet::IpNet>() {
            if net.trunc() != net {
                return Err(ParseValueError::new(
                    "CIDR",
                    text,
                    "host bits are set; write the network address",
                ));
            }
            return Ok(Self(net));
        }
        text.parse::<std::net::IpAddr>()
            .map(|ip| Self(ipnet::IpNet::from(ip)))
            .map_err(|_| {
                ParseValueError::new("CIDR", text, "expected an address or address/prefix")
            })
    }
}

impl TryFrom<String> for Cidr {
    type Error = ParseValueError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> Self {
        cidr.to_string()
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": r"^[0-9a-fA-F:.]+(/[0-9]{1,3})?$",
            "maxLength": 43,
        })
    }
}

/// A reference to another object of a known kind in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectReference {
    /// The object's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key in a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyReference {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_kubernetes_style_and_print_canonically() {
        for (text, seconds, canonical) in [
            ("90s", 90, "1m30s"),
            ("15m", 900, "15m"),
            ("1h30m", 5400, "1h30m"),
            ("0s", 0, "0s"),
            ("24h", 86400, "24h"),
        ] {
            let duration: Duration = text.parse().unwrap();
            assert_eq!(duration.get().as_secs(), seconds, "{text}");
            assert_eq!(duration.to_string(), canonical, "{text}");
        }
        assert_eq!("250ms".parse::<Duration>().unwrap().get().as_millis(), 250);
    }

    #[test]
    fn durations_reject_negative_unitless_and_unknown_units() {
        for text in ["-5m", "15", "", "5d", "m", "1.5h", "99999999999h"] {
            let error = text.parse::<Duration>().unwrap_err();
            assert!(
                error.to_string().contains("not a valid duration"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn byte_sizes_parse_binary_suffixes() {
        assert_eq!("10Mi".parse::<ByteSize>().unwrap().bytes(), 10 << 20);
        assert_eq!("512".parse::<ByteSize>().unwrap().bytes(), 512);
        assert_eq!(ByteSize::from_kib(64).to_string(), "64Ki");
        assert!("10MB".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
    }

    #[test]
    fn cidrs_accept_networks_and_single_addresses_but_not_host_bits() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "192.0.2.7".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            "2001:db8::/32".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!("10.0.0.1/8".parse::<Cidr>().is_err());
        assert!("not-an-ip".parse::<Cidr>().is_err());
    }

    #[test]
    fn country_codes_must_be_assigned() {
        assert!(CountryCode::from("FR").check_assigned().is_ok());
        assert!(CountryCode::from("ZZ").check_assigned().is_err());
    }

    #[test]
    fn email_domain_is_the_part_after_the_last_at() {
        assert_eq!(
            EmailAddress::from("alice@example.org").domain(),
            "example.org"
        );
    }
}
