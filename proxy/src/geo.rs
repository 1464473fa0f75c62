//! Layer 8, geo: the client's country from a MaxMind-format database, checked against the
//! access policy's allow and deny lists **before anything is sent upstream**.
//!
//! The database is read whole when the policy is compiled; its file is one of the policy's
//! [`files`](crate::model::Policy::files), so a new database (a renewed GeoLite2, a new
//! `ip-location-db` release) recompiles the policy and is swapped in like any other change.
//! Both record shapes in use are understood: MaxMind's (`country.iso_code`) and
//! ip-location-db's (`country_code`).
//!
//! | rule | status |
//! | --- | --- |
//! | `country-denied`: the country is on the deny list | 403 |
//! | `country-not-allowed`: an allow list is set and the country is not on it | 403 |
//! | `country-unknown`: an allow list is set and the address has no country | 403 |
//!
//! The 403 is the shared error page: it names neither the policy nor the origin.

use std::{fmt, net::IpAddr, path::Path};

use http::StatusCode;
use maxminddb::{PathElement, Reader};

use crate::verdict::{Reason, Response, Verdict};

/// A country code: two upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Parses `FR`, `fr`; `None` for anything that is not two ASCII letters.
    pub fn parse(code: &[u8]) -> Option<Self> {
        match code {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The code, `FR`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the country database could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct GeoDbError {
    path: String,
    #[source]
    source: maxminddb::MaxMindDbError,
}

/// A country database held in memory.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let metadata = self.reader.metadata();
        f.debug_struct("GeoDb")
            .field("database_type", &metadata.database_type)
            .field("build_epoch", &metadata.build_epoch)
            .finish()
    }
}

const MAXMIND_PATH: [PathElement<'static>; 2] =
    [PathElement::Key("country"), PathElement::Key("iso_code")];
const IP_LOCATION_DB_PATH: [PathElement<'static>; 1] = [PathElement::Key("country_code")];

impl GeoDb {
    /// Reads and checks a database file.
    pub fn open(path: &Path) -> Result<Self, GeoDbError> {
        let error = |source| GeoDbError {
            path: path.display().to_string(),
            source,
        };
        let reader = Reader::open_readfile(path).map_err(error)?;
        Ok(Self { reader })
    }

    /// The country of an address, when the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<Country> {
        let ip = match ip {
            IpAddr::V6(v6) if self.reader.metadata().ip_version == 4 => {
                IpAddr::V4(v6.to_ipv4_mapped()?)
            }
            ip => ip,
        };
        let found = self.reader.lookup(ip).ok()?;
        if !found.has_data() {
            return None;
        }
        let code: Option<&str> = found
            .decode_path(&MAXMIND_PATH)
            .ok()
            .flatten()
            .or_else(|| found.decode_path(&IP_LOCATION_DB_PATH).ok().flatten());
        code.and_then(|code| Country::parse(code.as_bytes()))
    }
}

/// The compiled geo layer: the lists of the access policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountryFilter {
    allow: Vec<Country>,
    deny: Vec<Country>,
}

impl CountryFilter {
    /// A filter from the policy's lists (codes the document validated).
    pub fn new<'a>(
        allow: impl IntoIterator<Item = &'a str>,
        deny: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let parse = |codes: &mut dyn Iterator<Item = &'a str>| {
            let mut list: Vec<Country> =
                codes.filter_map(|c| Country::parse(c.as_bytes())).collect();
            list.sort_unstable();
            list.dedup();
            list
        };
        Self {
            allow: parse(&mut allow.into_iter()),
            deny: parse(&mut deny.into_iter()),
        }
    }

    /// Whether the filter needs a country at all.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// The verdict on a client from `country` (`None`: unknown).
    pub fn check(&self, country: Option<Country>) -> Verdict {
        let forbidden = |reason| Verdict::Respond(Response::error(StatusCode::FORBIDDEN), reason);
        match country {
            Some(country) if self.deny.binary_search(&country).is_ok() => forbidden(Reason::owned(
                "country-denied",
                format!("{country} is denied"),
            )),
            Some(country)
                if !self.allow.is_empty() && self.allow.binary_search(&country).is_err() =>
            {
                forbidden(Reason::owned(
                    "country-not-allowed",
                    format!("{country} is not allowed"),
                ))
            }
            None if !self.allow.is_empty() => forbidden(Reason::new(
                "country-unknown",
                "the address has no country and an allow list is set",
            )),
            _ => Verdict::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verdict: &Verdict) -> Option<(&'static str, StatusCode)> {
        match verdict {
            Verdict::Respond(response, reason) => Some((reason.rule, response.status)),
            _ => None,
        }
    }

    fn fr() -> Option<Country> {
        Country::parse(b"FR")
    }

    #[test]
    fn codes_parse_to_upper_case_and_refuse_anything_else() {
        assert_eq!(Country::parse(b"fr").unwrap().as_str(), "FR");
        assert_eq!(Country::parse(b"FRA"), None);
        assert_eq!(Country::parse(b"F1"), None);
        assert_eq!(Country::parse(b""), None);
    }

    #[test]
    fn an_allow_list_admits_only_its_countries_and_refuses_unknown_ones() {
        let filter = CountryFilter::new(["FR", "BE"], []);
        assert_eq!(filter.check(fr()), Verdict::Continue);
        assert_eq!(
            rule(&filter.check(Country::parse(b"US"))),
            Some(("country-not-allowed", StatusCode::FORBIDDEN))
        );
        assert_eq!(
            rule(&filter.check(None)),
            Some(("country-unknown", StatusCode::FORBIDDEN))
        );
    }

    #[test]
    fn a_deny_list_alone_refuses_its_countries_and_admits_unknown_ones() {
        let filter = CountryFilter::new([], ["RU"]);
        assert_eq!(
            rule(&filter.check(Country::parse(b"RU"))),
            Some(("country-denied", StatusCode::FORBIDDEN))
        );
        assert_eq!(filter.check(fr()), Verdict::Continue);
        assert_eq!(filter.check(None), Verdict::Continue);
    }

    #[test]
    fn deny_wins_over_allow() {
        let filter = CountryFilter::new(["FR"], ["FR"]);
        assert_eq!(
            rule(&filter.check(fr())),
            Some(("country-denied", StatusCode::FORBIDDEN))
        );
    }

    #[test]
    fn no_lists_admit_everyone() {
        let filter = CountryFilter::default();
        assert!(filter.is_empty());
        assert_eq!(filter.check(None), Verdict::Continue);
    }
}
