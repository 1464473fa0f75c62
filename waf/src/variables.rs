//! The variables (collections) rules inspect, and how a target selects from them.

use regex::bytes::Regex;

use crate::error::ErrorKind;
use crate::parser::RawVariable;

macro_rules! variables {
    ($($variant:ident = $name:literal, $collection:literal;)*) => {
        /// A SecLang variable or collection.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Var {
            $(#[doc = concat!("`", $name, "`")] $variant,)*
        }

        impl Var {
            /// Every variable, in declaration order.
            pub const ALL: &'static [Var] = &[$(Var::$variant,)*];

            /// The variable by its SecLang name (upper case).
            pub fn from_name(name: &str) -> Option<Var> {
                match name {
                    $($name => Some(Var::$variant),)*
                    _ => None,
                }
            }

            /// The SecLang name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Var::$variant => $name,)*
                }
            }

            /// Whether the variable is a keyed collection (`ARGS:name`) rather than one value.
            pub fn is_collection(self) -> bool {
                match self {
                    $(Var::$variant => $collection,)*
                }
            }
        }
    };
}

variables! {
    Args = "ARGS", true;
    ArgsGet = "ARGS_GET", true;
    ArgsPost = "ARGS_POST", true;
    ArgsNames = "ARGS_NAMES", true;
    ArgsGetNames = "ARGS_GET_NAMES", true;
    ArgsPostNames = "ARGS_POST_NAMES", true;
    ArgsCombinedSize = "ARGS_COMBINED_SIZE", false;
    RequestHeaders = "REQUEST_HEADERS", true;
    RequestHeadersNames = "REQUEST_HEADERS_NAMES", true;
    RequestCookies = "REQUEST_COOKIES", true;
    RequestCookiesNames = "REQUEST_COOKIES_NAMES", true;
    RequestUri = "REQUEST_URI", false;
    RequestUriRaw = "REQUEST_URI_RAW", false;
    RequestFilename = "REQUEST_FILENAME", false;
    RequestBasename = "REQUEST_BASENAME", false;
    RequestLine = "REQUEST_LINE", false;
    RequestMethod = "REQUEST_METHOD", false;
    RequestProtocol = "REQUEST_PROTOCOL", false;
    QueryString = "QUERY_STRING", false;
    RequestBody = "REQUEST_BODY", false;
    RequestBodyLength = "REQUEST_BODY_LENGTH", false;
    ReqbodyProcessor = "REQBODY_PROCESSOR", false;
    ReqbodyError = "REQBODY_ERROR", false;
    ReqbodyErrorMsg = "REQBODY_ERROR_MSG", false;
    Files = "FILES", true;
    FilesNames = "FILES_NAMES", true;
    FilesSizes = "FILES_SIZES", true;
    FilesCombinedSize = "FILES_COMBINED_SIZE", false;
    MultipartPartHeaders = "MULTIPART_PART_HEADERS", true;
    MultipartFilename = "MULTIPART_FILENAME", false;
    MultipartName = "MULTIPART_NAME", false;
    MultipartStrictError = "MULTIPART_STRICT_ERROR", false;
    Xml = "XML", true;
    Tx = "TX", true;
    Ip = "IP", true;
    Global = "GLOBAL", true;
    Env = "ENV", true;
    Rule = "RULE", true;
    MatchedVar = "MATCHED_VAR", false;
    MatchedVarName = "MATCHED_VAR_NAME", false;
    MatchedVars = "MATCHED_VARS", true;
    MatchedVarsNames = "MATCHED_VARS_NAMES", true;
    RemoteAddr = "REMOTE_ADDR", false;
    RemotePort = "REMOTE_PORT", false;
    ServerPort = "SERVER_PORT", false;
    UniqueId = "UNIQUE_ID", false;
    ResponseBody = "RESPONSE_BODY", false;
    ResponseHeaders = "RESPONSE_HEADERS", true;
    ResponseHeadersNames = "RESPONSE_HEADERS_NAMES", true;
    ResponseStatus = "RESPONSE_STATUS", false;
    ResponseProtocol = "RESPONSE_PROTOCOL", false;
    ResponseContentType = "RESPONSE_CONTENT_TYPE", false;
    ResponseContentLength = "RESPONSE_CONTENT_LENGTH", false;
}

impl Var {
    /// Whether the values of this variable are set from the request line, the headers and
    /// the connection when a transaction starts, and never change.
    pub fn is_fixed(self) -> bool {
        matches!(
            self,
            Var::ArgsGet
                | Var::ArgsGetNames
                | Var::RequestHeaders
                | Var::RequestHeadersNames
                | Var::RequestCookies
                | Var::RequestCookiesNames
                | Var::RequestUri
                | Var::RequestUriRaw
                | Var::RequestFilename
                | Var::RequestBasename
                | Var::RequestLine
                | Var::RequestMethod
                | Var::RequestProtocol
                | Var::QueryString
                | Var::RemoteAddr
                | Var::RemotePort
                | Var::ServerPort
                | Var::UniqueId
        )
    }

    /// Whether the values of this variable are the request's method, protocol or headers
    /// (cookies among them): what a client sends the same on every request (see
    /// [`crate::header_sets`]).
    pub(crate) fn is_of_header_set(self) -> bool {
        matches!(
            self,
            Var::RequestHeaders
                | Var::RequestHeadersNames
                | Var::RequestCookies
                | Var::RequestCookiesNames
                | Var::RequestMethod
                | Var::RequestProtocol
        )
    }

    /// Whether the values of this variable change while a phase runs, so that transformed
    /// values must not be cached.
    pub fn is_volatile(self) -> bool {
        matches!(
            self,
            Var::Tx
                | Var::Ip
                | Var::Global
                | Var::Env
                | Var::Rule
                | Var::MatchedVar
                | Var::MatchedVarName
                | Var::MatchedVars
                | Var::MatchedVarsNames
                | Var::ArgsCombinedSize
                | Var::ReqbodyProcessor
                | Var::ReqbodyError
                | Var::ReqbodyErrorMsg
                | Var::RequestBodyLength
        )
    }
}

/// Which entries of a collection a target selects.
#[derive(Clone, Debug)]
pub enum Selector {
    /// All entries.
    All,
    /// Entries with this key, compared without case.
    Key(String),
    /// Entries whose key matches this case-insensitive regex.
    Regex(Box<KeyRegex>),
}

/// A case-insensitive regex on keys, with the literal text its matches start with (or,
/// unanchored, contain), checked first.
#[derive(Clone, Debug)]
pub struct KeyRegex {
    /// The expression.
    pub regex: Regex,
    /// The literal (lower case) every match starts with or contains; may be empty.
    literal: String,
    /// Whether matches start with the literal.
    anchored: bool,
    /// Whether the expression is the literal alone (after `^`): then the literal decides.
    whole: bool,
    /// For a `TX` target: the keys it matches among those rules write under literal names,
    /// in order, filled once the rule set is complete ([`crate::rule::RuleSet::plan_tx_keys`]).
    /// Keys written under names built by macros are matched when read.
    pub tx_keys: Vec<String>,
}

impl KeyRegex {
    /// Compiles `(?i)source`.
    pub fn new(source: &str) -> Result<KeyRegex, ErrorKind> {
        let regex =
            Regex::new(&format!("(?i){source}")).map_err(|e| ErrorKind::Regex(e.to_string()))?;
        let anchored = source.starts_with('^');
        let body = source.strip_prefix('^').unwrap_or(source);
        let mut literal: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        // A quantifier after the run applies to its last character.
        if body[literal.len()..].starts_with(['*', '?', '{', '+']) {
            literal.pop();
        }
        // An alternation makes the run only one of the choices.
        if source.contains('|') {
            literal.clear();
        }
        Ok(KeyRegex {
            regex,
            whole: !literal.is_empty() && literal.len() == body.len(),
            literal: literal.to_ascii_lowercase(),
            anchored,
            tx_keys: Vec::new(),
        })
    }

    /// Whether some key that starts with `prefix` (lower case ASCII) may match: `false`
    /// only when the expression is anchored on a literal that differs from `prefix` where
    /// both have characters.
    pub fn may_match_prefixed(&self, prefix: &str) -> bool {
        !self.anchored
            || self.literal.is_empty()
            || self.literal.starts_with(prefix)
            || prefix.starts_with(&self.literal)
    }

    /// Whether a lower-cased key matches.
    pub fn is_match(&self, key_lower: &str) -> bool {
        // For an ASCII key the literal decides without the expression (case folding can
        // only differ on non-ASCII text).
        if key_lower.is_ascii() && !self.literal.is_empty() {
            let found = if self.anchored {
                key_lower.starts_with(&self.literal)
            } else {
                key_lower.contains(&self.literal)
            };
            if !found || self.whole {
                return found;
            }
        }
        self.regex.is_match(key_lower.as_bytes())
    }
}

impl Selector {
    /// Reads a target key: `/re/` is a regex, anything else a literal key.
    pub fn parse(var: Var, key: Option<&str>) -> Result<Selector, ErrorKind> {
        let Some(key) = key else {
            return Ok(Selector::All);
        };
        if var != Var::Xml && key.len() > 2 && key.starts_with('/') && key.ends_with('/') {
            return KeyRegex::new(&key[1..key.len() - 1]).map(|r| Selector::Regex(Box::new(r)));
        }
        Ok(Selector::Key(key.to_ascii_lowercase()))
    }

    /// Whether a key (as stored, any case) is selected.
    pub fn matches(&self, key_lower: &str) -> bool {
        match self {
            Selector::All => true,
            Selector::Key(k) => k == key_lower,
            Selector::Regex(re) => re.is_match(key_lower),
        }
    }

    /// The same selection, compared by text (regexes by their source).
    pub fn same_as(&self, other: &Selector) -> bool {
        match (self, other) {
            (Selector::All, Selector::All) => true,
            (Selector::Key(a), Selector::Key(b)) => a == b,
            (Selector::Regex(a), Selector::Regex(b)) => a.regex.as_str() == b.regex.as_str(),
            _ => false,
        }
    }
}

/// One compiled target of a rule: a variable, which of its entries, minus exclusions.
#[derive(Clone, Debug)]
pub struct Target {
    /// The variable.
    pub var: Var,
    /// Which entries.
    pub selector: Selector,
    /// `&`: count the entries instead.
    pub count: bool,
    /// Keys removed by `!VAR:key` targets, `SecRuleUpdateTargetById` or exclusions.
    pub exclusions: Vec<Selector>,
}

/// A parsed target before exclusions are folded in.
#[derive(Clone, Debug)]
pub struct ParsedTarget {
    /// `!`: an exclusion.
    pub negated: bool,
    /// The target.
    pub target: Target,
}

impl ParsedTarget {
    /// Compiles one raw target.
    pub fn compile(raw: &RawVariable) -> Result<ParsedTarget, ErrorKind> {
        let var = Var::from_name(&raw.name)
            .ok_or_else(|| ErrorKind::UnsupportedVariable(raw.name.clone()))?;
        if raw.key.is_some() && !var.is_collection() {
            return Err(ErrorKind::Syntax(format!(
                "`{}` is not a collection and takes no key",
                raw.name
            )));
        }
        if var == Var::Xml
            && let Some(k) = raw.key.as_deref()
            && k != "/*"
            && k != "//@*"
        {
            return Err(ErrorKind::Invalid {
                what: "XML target",
                detail: format!("only XML:/* and XML://@* are supported, not XML:{k}"),
            });
        }
        Ok(ParsedTarget {
            negated: raw.negated,
            target: Target {
                var,
                selector: Selector::parse(var, raw.key.as_deref())?,
                count: raw.count,
                exclusions: Vec::new(),
            },
        })
    }
}

/// Folds `!VAR:key` exclusions into the positive targets of the same variable.
pub fn fold_targets(parsed: Vec<ParsedTarget>) -> Result<Vec<Target>, ErrorKind> {
    let mut targets: Vec<Target> = Vec::new();
    let mut negations = Vec::new();
    for p in parsed {
        if p.negated {
            negations.push(p.target);
        } else {
            targets.push(p.target);
        }
    }
    for n in negations {
        add_exclusion(&mut targets, n.var, n.selector);
    }
    Ok(targets)
}

/// Excludes `selector` of `var` from every target of that variable (and `ARGS`'s
/// subsets). Excluding a whole variable removes its targets.
pub fn add_exclusion(targets: &mut Vec<Target>, var: Var, selector: Selector) {
    if matches!(selector, Selector::All) {
        targets.retain(|t| t.var != var);
        return;
    }
    for t in targets.iter_mut() {
        if (t.var == var || (var == Var::Args && matches!(t.var, Var::ArgsGet | Var::ArgsPost)))
            && !t.exclusions.iter().any(|e| e.same_as(&selector))
        {
            t.exclusions.push(selector.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for v in Var::ALL {
            assert_eq!(Var::from_name(v.name()), Some(*v));
        }
    }

    #[test]
    fn key_regexes_check_their_literal_first_and_agree_with_the_expression() {
        for source in [
            "^header_name_920450_",
            "paramcounter_.*",
            "^__utm",
            "^abc*",
            "^ab|cd",
            "^x[0-9]+",
            "header_name",
            "^ab-c",
            "^abc$",
            "abc\\d",
        ] {
            let r = KeyRegex::new(source).unwrap();
            for key in [
                "header_name_920450_host",
                "x_header_name_920450_",
                "paramcounter_1",
                "__utmz",
                "ab",
                "abccc",
                "cd",
                "x12",
                "",
                "other",
                "ab-c",
                "abc",
                "abc1",
                "xabc1",
            ] {
                assert_eq!(
                    r.is_match(key),
                    r.regex.is_match(key.as_bytes()),
                    "{source} on {key}"
                );
            }
        }
        let whole = |s: &str| KeyRegex::new(s).unwrap().whole;
        assert!(whole("^__utm") && whole("header_name") && whole("^ab-c"));
        assert!(!whole("^abc$") && !whole("^abc*") && !whole("abc\\d") && !whole("^ab|cd"));
        // A regex said to match no key with a beginning matches none of those tried.
        let may = |s: &str, prefix: &str| KeyRegex::new(s).unwrap().may_match_prefixed(prefix);
        assert!(!may("^header_name_920450_", "header_name_920451_") && !may("^abc*", "b"));
        assert!(may("^abc*", "a") && may("^ab", "abx_") && may("paramcounter_.*", "h_"));
        for source in [
            "^header_name_920450_",
            "^abc*",
            "^x[0-9]+",
            "^ab|cd",
            "paramcounter_",
        ] {
            for prefix in ["header_name_920451_", "header_", "a", "b", "x", "h_", ""] {
                for rest in ["", "1", "c", "paramcounter_1", "\u{212a}", "cd"] {
                    let key = format!("{prefix}{rest}");
                    let r = KeyRegex::new(source).unwrap();
                    assert!(
                        r.may_match_prefixed(prefix) || !r.is_match(&key),
                        "{source} {key}"
                    );
                }
            }
        }
    }

    #[test]
    fn negated_keys_become_exclusions() {
        let raw = |n: bool, k: Option<&str>| RawVariable {
            negated: n,
            count: false,
            name: "REQUEST_COOKIES".into(),
            key: k.map(str::to_string),
        };
        let parsed = vec![
            ParsedTarget::compile(&raw(false, None)).unwrap(),
            ParsedTarget::compile(&raw(true, Some("/__utm/"))).unwrap(),
        ];
        let t = fold_targets(parsed).unwrap();
        assert_eq!(t.len(), 1);
        assert!(t[0].exclusions[0].matches("__utmz"));
        assert!(!t[0].exclusions[0].matches("session"));
    }

    #[test]
    fn unknown_variable_is_reported_by_name() {
        let raw = RawVariable {
            negated: false,
            count: false,
            name: "GEO".into(),
            key: None,
        };
        let err = ParsedTarget::compile(&raw).unwrap_err();
        assert_eq!(err, ErrorKind::UnsupportedVariable("GEO".into()));
    }
}
