//! Macro expansion: `%{TX.score}`, `%{MATCHED_VAR}`, `%{request_headers.host}`.

use std::borrow::Cow;

use crate::error::ErrorKind;
use crate::variables::Var;

/// A text with `%{VAR}` or `%{COLLECTION.key}` references, parsed once at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Macro {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Var, Option<String>),
}

impl Macro {
    /// Parses a text; an unknown variable inside `%{}` is an error.
    pub fn parse(text: &str) -> Result<Macro, ErrorKind> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("%{") {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let inner = &rest[start + 2..start + len];
            let (name, key) = match inner.find(['.', ':']) {
                Some(i) => (&inner[..i], Some(inner[i + 1..].to_ascii_lowercase())),
                None => (inner, None),
            };
            let var = Var::from_name(&name.to_ascii_uppercase())
                .ok_or_else(|| ErrorKind::UnsupportedVariable(name.to_string()))?;
            parts.push(Part::Var(var, key));
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Macro { parts })
    }

    /// A text that references no variable: what a macro expands to when the values it
    /// references are the same on every request (see [`crate::fold`]).
    pub fn fixed(text: String) -> Macro {
        Macro {
            parts: if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::Literal(text)]
            },
        }
    }

    /// The text when it references no variable.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// The variables the text refers to, each with its key (lower-cased) when it has one.
    pub fn references(&self) -> impl Iterator<Item = (Var, Option<&str>)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v, k) => Some((*v, k.as_deref())),
            Part::Literal(_) => None,
        })
    }

    /// The literal text every expansion starts with.
    pub fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(s)) => s,
            _ => "",
        }
    }

    /// Expands the references with `lookup` (absent values expand to nothing).
    pub fn expand<'a, F, V>(&'a self, lookup: F) -> Cow<'a, [u8]>
    where
        F: Fn(Var, Option<&str>) -> Option<V>,
        V: AsRef<[u8]>,
    {
        if let Some(l) = self.literal() {
            return Cow::Borrowed(l.as_bytes());
        }
        let mut out = Vec::new();
        self.expand_into(lookup, &mut out);
        Cow::Owned(out)
    }

    /// The expansion (see [`Macro::expand`]): the literal itself, or the expansion written
    /// into `buf`, emptied first: what a caller with a buffer to reuse calls.
    pub fn expand_in<'a, F, V>(&'a self, lookup: F, buf: &'a mut Vec<u8>) -> &'a [u8]
    where
        F: Fn(Var, Option<&str>) -> Option<V>,
        V: AsRef<[u8]>,
    {
        if let Some(l) = self.literal() {
            return l.as_bytes();
        }
        buf.clear();
        self.expand_into(lookup, buf);
        buf
    }

    /// Appends the expansion to `out` (see [`Macro::expand`]).
    pub fn expand_into<F, V>(&self, lookup: F, out: &mut Vec<u8>)
    where
        F: Fn(Var, Option<&str>) -> Option<V>,
        V: AsRef<[u8]>,
    {
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::Var(v, k) => {
                    if let Some(val) = lookup(*v, k.as_deref()) {
                        out.extend_from_slice(val.as_ref());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_keys_and_plain_variables() {
        let m = Macro::parse("score %{tx.anomaly_score} on %{MATCHED_VAR_NAME}!").unwrap();
        assert_eq!(m.literal(), None);
        let out = m.expand(|v, k| match (v, k) {
            (Var::Tx, Some("anomaly_score")) => Some(b"5".to_vec()),
            (Var::MatchedVarName, None) => Some(b"ARGS:a".to_vec()),
            _ => None,
        });
        assert_eq!(&*out, b"score 5 on ARGS:a!");
    }

    #[test]
    fn expansion_in_a_reused_buffer_starts_afresh_and_a_literal_needs_none() {
        let lookup = |_: Var, _: Option<&str>| Some(b"5".to_vec());
        let mut buf = b"left from before".to_vec();
        let m = Macro::parse("score %{tx.anomaly_score}").unwrap();
        assert_eq!(m.expand_in(lookup, &mut buf), b"score 5");
        let plain = Macro::parse("plain").unwrap();
        assert_eq!(plain.expand_in(lookup, &mut buf), b"plain");
        assert_eq!(buf, b"score 5", "a literal was written into the buffer");
    }

    #[test]
    fn unknown_variable_is_an_error() {
        assert!(Macro::parse("%{nope.x}").is_err());
        assert_eq!(Macro::parse("plain").unwrap().literal(), Some("plain"));
    }

    #[test]
    fn references_and_literal_prefix() {
        let m = Macro::parse("header_%{tx.0}_%{MATCHED_VAR}").unwrap();
        assert_eq!(m.literal_prefix(), "header_");
        assert_eq!(
            m.references().collect::<Vec<_>>(),
            [(Var::Tx, Some("0")), (Var::MatchedVar, None)]
        );
        assert_eq!(Macro::parse("%{tx.a}b").unwrap().literal_prefix(), "");
    }

    #[test]
    fn a_fixed_text_is_its_literal() {
        assert_eq!(Macro::fixed("GET HEAD".into()).literal(), Some("GET HEAD"));
        assert_eq!(Macro::fixed(String::new()), Macro::parse("").unwrap());
    }
}
