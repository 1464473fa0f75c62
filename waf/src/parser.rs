//! SecLang lexing: directives, their quoted arguments, and the three parts of a
//! `SecRule` (variables, operator, actions), each with the line it came from.

use std::sync::Arc;

use crate::error::{ErrorKind, RuleError};

/// Where a directive starts: the file (or source name) and its first line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// File name or source label (`custom_rules`, `generated setup`).
    pub file: Arc<str>,
    /// One-based line number.
    pub line: usize,
}

impl Location {
    /// An error at this location.
    pub(crate) fn error(&self, kind: ErrorKind) -> RuleError {
        RuleError {
            file: self.file.to_string(),
            line: self.line,
            kind,
        }
    }
}

/// One directive with its arguments, quotes removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// The directive name as written (`SecRule`).
    pub name: String,
    /// The arguments, unquoted.
    pub args: Vec<String>,
    /// Where it starts.
    pub location: Location,
}

/// Splits SecLang text into directives. Lines ending in `\` continue on the next line;
/// lines whose first non-blank character is `#` are comments.
pub fn lex(text: &str, file: &str) -> Result<Vec<Directive>, RuleError> {
    let file: Arc<str> = Arc::from(file);
    let mut out = Vec::new();
    let mut logical = String::new();
    let mut start = 0;
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if logical.is_empty() {
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            start = line_no;
        }
        if let Some(cont) = raw.strip_suffix('\\') {
            logical.push_str(cont);
            continue;
        }
        logical.push_str(raw);
        let location = Location {
            file: file.clone(),
            line: start,
        };
        out.push(split_directive(&logical, location)?);
        logical.clear();
    }
    if !logical.is_empty() {
        let location = Location { file, line: start };
        out.push(split_directive(&logical, location)?);
    }
    Ok(out)
}

/// Splits one logical line into the directive name and its arguments. Inside a quoted
/// argument only an escaped quote (`\"`) is unescaped; other backslashes stay, as regexes
/// need them.
fn split_directive(line: &str, location: Location) -> Result<Directive, RuleError> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut word = String::new();
        if first == '"' || first == '\'' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                if c == '\\' && chars.peek() == Some(&first) {
                    word.push(first);
                    chars.next();
                } else if c == first {
                    closed = true;
                    break;
                } else {
                    word.push(c);
                }
            }
            if !closed {
                return Err(
                    location.error(ErrorKind::Syntax(format!("unterminated {first} quote")))
                );
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    let mut words = words.into_iter();
    let name = words.next().unwrap_or_default();
    Ok(Directive {
        name,
        args: words.collect(),
        location,
    })
}

/// One action as written: `name` or `name:value`, the value unquoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawAction {
    /// The action name, as written.
    pub name: String,
    /// The value after `:`, unquoted; `None` for flag actions such as `chain`.
    pub value: Option<String>,
}

/// Splits an action list (`id:1,phase:2,msg:'a, b'`) on the commas outside single quotes.
pub fn split_actions(text: &str, location: &Location) -> Result<Vec<RawAction>, RuleError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == ':' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        let name = name.trim().to_string();
        let mut value = None;
        if chars.peek() == Some(&':') {
            chars.next();
            while chars.peek().is_some_and(|c| *c == ' ') {
                chars.next();
            }
            let mut v = String::new();
            if chars.peek() == Some(&'\'') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    if c == '\\' && chars.peek() == Some(&'\'') {
                        v.push('\'');
                        chars.next();
                    } else if c == '\'' {
                        closed = true;
                        break;
                    } else {
                        v.push(c);
                    }
                }
                if !closed {
                    return Err(location.error(ErrorKind::Syntax(format!(
                        "unterminated quote in the value of action `{name}`"
                    ))));
                }
                // Anything up to the next comma after a closing quote is an error.
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    if !c.is_whitespace() {
                        return Err(location.error(ErrorKind::Syntax(format!(
                            "text after the quoted value of action `{name}`"
                        ))));
                    }
                    chars.next();
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    v.push(c);
                    chars.next();
                }
                v = v.trim_end().to_string();
            }
            value = Some(v);
        }
        if name.is_empty() {
            return Err(location.error(ErrorKind::Syntax("an empty action name".into())));
        }
        out.push(RawAction { name, value });
    }
    Ok(out)
}

/// One target of a rule as written: `!ARGS:/^id$/` is negated, name `ARGS`, key `/^id$/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawVariable {
    /// `!`: an exclusion from the other targets.
    pub negated: bool,
    /// `&`: the number of values instead of the values.
    pub count: bool,
    /// The collection or variable name, upper case.
    pub name: String,
    /// The key after `:`, unquoted; regex keys keep their slashes.
    pub key: Option<String>,
}

/// Splits a target list (`ARGS|!ARGS:/a|b/|XML:/*`) on the `|` outside regex keys and quotes.
pub fn split_variables(text: &str, location: &Location) -> Result<Vec<RawVariable>, RuleError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i] == b'|' || bytes[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let mut negated = false;
        let mut count = false;
        loop {
            match bytes.get(i) {
                Some(b'!') => negated = true,
                Some(b'&') => count = true,
                _ => break,
            }
            i += 1;
        }
        let name_start = i;
        while i < bytes.len() && bytes[i] != b':' && bytes[i] != b'|' {
            i += 1;
        }
        let name = text[name_start..i].to_ascii_uppercase();
        if name.is_empty() {
            return Err(location.error(ErrorKind::Syntax(format!(
                "an empty variable name in `{text}`"
            ))));
        }
        let mut key = None;
        if i < bytes.len() && bytes[i] == b':' {
            i += 1;
            let key_start = i;
            if name != "XML" && bytes.get(i) == Some(&b'/') {
                // A regex key: runs to the closing slash that ends the target.
                i += 1;
                let mut escaped = false;
                while i < bytes.len() {
                    let c = bytes[i];
                    if escaped {
                        escaped = false;
                    } else if c == b'\\' {
                        escaped = true;
                    } else if c == b'/' && (i + 1 == bytes.len() || bytes[i + 1] == b'|') {
                        break;
                    }
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(location.error(ErrorKind::Syntax(format!(
                        "unterminated regex key in `{text}`"
                    ))));
                }
                i += 1;
                key = Some(text[key_start..i].to_string());
            } else if bytes.get(i) == Some(&b'\'') {
                i += 1;
                let s = i;
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(location.error(ErrorKind::Syntax(format!(
                        "unterminated quoted key in `{text}`"
                    ))));
                }
                key = Some(text[s..i].to_string());
                i += 1;
            } else {
                while i < bytes.len() && bytes[i] != b'|' {
                    i += 1;
                }
                key = Some(text[key_start..i].to_string());
            }
        }
        out.push(RawVariable {
            negated,
            count,
            name,
            key,
        });
    }
    if out.is_empty() {
        return Err(location.error(ErrorKind::Syntax("a rule without targets".into())));
    }
    Ok(out)
}

/// The operator part of a rule: `!@rx a` is negated, name `rx`, argument `a`. A bare
/// argument means `@rx`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawOperator {
    /// `!`: the rule matches when the operator does not.
    pub negated: bool,
    /// The operator name without `@`.
    pub name: String,
    /// The argument, leading blanks removed.
    pub argument: String,
}

/// Reads the operator part of a rule.
pub fn split_operator(text: &str) -> RawOperator {
    let mut rest = text.trim_start();
    let mut negated = false;
    if let Some(r) = rest.strip_prefix('!') {
        negated = true;
        rest = r.trim_start();
    }
    if let Some(r) = rest.strip_prefix('@') {
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        RawOperator {
            negated,
            name: r[..end].to_string(),
            argument: r[end..].trim_start().to_string(),
        }
    } else {
        RawOperator {
            negated,
            name: "rx".into(),
            argument: rest.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> Location {
        Location {
            file: Arc::from("t.conf"),
            line: 1,
        }
    }

    #[test]
    fn continuation_lines_join_and_report_the_first_line() {
        let text = "# comment\n\nSecRule ARGS \"@rx a\\\"b\" \\\n    \"id:1,\\\n    phase:2\"\n";
        let d = lex(text, "t.conf").unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].location.line, 3);
        assert_eq!(d[0].args, vec!["ARGS", "@rx a\"b", "id:1,    phase:2"]);
    }

    #[test]
    fn unterminated_quote_is_a_syntax_error_with_its_line() {
        let err = lex("\nSecRule ARGS \"@rx a", "x.conf").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.to_string().contains("x.conf:2"), "{err}");
    }

    #[test]
    fn actions_keep_commas_inside_quotes() {
        let a = split_actions("id:1, msg:'a, b\\'c',t:none,chain", &loc()).unwrap();
        let names: Vec<_> = a.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["id", "msg", "t", "chain"]);
        assert_eq!(a[1].value.as_deref(), Some("a, b'c"));
        assert_eq!(a[3].value, None);
    }

    #[test]
    fn variables_split_outside_regex_keys() {
        let v = split_variables("ARGS|!REQUEST_COOKIES:/^(?:a|b)$/|&TX:x|XML:/*", &loc()).unwrap();
        assert_eq!(v.len(), 4);
        assert!(v[1].negated);
        assert_eq!(v[1].key.as_deref(), Some("/^(?:a|b)$/"));
        assert!(v[2].count);
        assert_eq!(v[3].key.as_deref(), Some("/*"));
    }

    #[test]
    fn bare_operator_is_rx() {
        let o = split_operator("!^a b");
        assert!(o.negated);
        assert_eq!((o.name.as_str(), o.argument.as_str()), ("rx", "^a b"));
        let o = split_operator("@pm a b");
        assert_eq!((o.name.as_str(), o.argument.as_str()), ("pm", "a b"));
    }
}
