//! Why rules could not be loaded.

use std::path::PathBuf;

/// What is wrong with one directive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The text does not follow SecLang's grammar.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A directive this engine does not implement.
    #[error("unsupported directive `{0}`")]
    UnsupportedDirective(String),
    /// A variable (collection) this engine does not implement.
    #[error("unsupported variable `{0}`")]
    UnsupportedVariable(String),
    /// An operator this engine does not implement.
    #[error("unsupported operator `@{0}`")]
    UnsupportedOperator(String),
    /// A transformation this engine does not implement.
    #[error("unsupported transformation `t:{0}`")]
    UnsupportedTransformation(String),
    /// An action this engine does not implement.
    #[error("unsupported action `{0}`")]
    UnsupportedAction(String),
    /// A value of a known action or operator that is not valid.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// Which value.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A regular expression that does not compile.
    #[error("regular expression does not compile: {0}")]
    Regex(String),
    /// A data file of `@pmFromFile` that cannot be read.
    #[error("cannot read data file {0}: {1}")]
    DataFile(String, String),
}

/// One problem at one place in the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {kind}")]
pub struct RuleError {
    /// The file (or source label) of the directive.
    pub file: String,
    /// The directive's first line.
    pub line: usize,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// Why a [`crate::WafEngine`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A rule file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CRS directory has no `crs-setup.conf.example` (nor `crs-setup.conf`).
    #[error("no crs-setup.conf.example in {0} or its parent")]
    MissingSetup(PathBuf),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Settings(String),
    /// Directives that do not parse or use constructs this engine does not support; every
    /// one found is listed.
    #[error("{} rule error(s):\n{}", .0.len(), list(.0))]
    Rules(Vec<RuleError>),
}

impl LoadError {
    /// The variant name, for metrics labels.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "Read",
            Self::MissingSetup(_) => "MissingSetup",
            Self::Settings(_) => "Settings",
            Self::Rules(_) => "Rules",
        }
    }
}

fn list(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_label_is_the_variant_name_only() {
        let e = LoadError::Rules(vec![RuleError {
            file: "x.conf".into(),
            line: 3,
            kind: ErrorKind::UnsupportedOperator("rbl".into()),
        }]);
        assert_eq!(e.metric_label(), "Rules");
        assert_eq!(
            e.to_string(),
            "1 rule error(s):\n  x.conf:3: unsupported operator `@rbl`"
        );
        assert_eq!(LoadError::Settings("x".into()).metric_label(), "Settings");
    }
}
