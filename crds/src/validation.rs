//! Validation that the CRD schema cannot express, reported with field paths.
//!
//! The apiserver enforces the schema (types, enums, patterns, bounds) and the CEL rules.
//! What remains (membership in ISO 3166, regexes that compile, CIDRs that parse, limits
//! that depend on one another in ways CEL cannot cheaply say) is checked here, and every
//! problem is reported at once with the path of the field that causes it.

use std::fmt;

/// One problem found in an object, with the path of the field that causes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the object, e.g. `spec.countries.allow[2]`.
    pub field: String,
    /// What is wrong, written for the person who wrote the object.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one object; never empty when returned as an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// Whether any problem names `field` exactly.
    pub fn names(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }
}

/// Collects problems while walking an object, tracking the current field path.
#[derive(Debug, Default)]
pub struct Problems {
    errors: Vec<FieldError>,
}

impl Problems {
    /// Records a problem at `field`.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records `message` at `field` when `condition` does not hold.
    pub fn require(
        &mut self,
        condition: bool,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        if !condition {
            self.add(field, message);
        }
    }

    /// Records the error of a parse, if any, at `field`.
    pub fn check<T, E: fmt::Display>(
        &mut self,
        result: Result<T, E>,
        field: impl Into<String>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.add(field, error.to_string());
                None
            }
        }
    }

    /// Ok when nothing was recorded, otherwise every problem.
    pub fn finish(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.errors))
        }
    }
}

/// A specification that can check itself beyond what its schema says.
pub trait Validate {
    /// Checks every rule the schema cannot express and returns all problems, each with
    /// its field path rooted at `spec`.
    fn validate(&self) -> Result<(), ValidationErrors>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_report_every_error_in_order() {
        let mut problems = Problems::default();
        problems.require(true, "spec.a", "never recorded");
        problems.add("spec.b", "first");
        problems.check::<(), _>(Err("second"), "spec.c");
        let errors = problems.finish().unwrap_err();
        assert_eq!(errors.to_string(), "spec.b: first; spec.c: second");
        assert!(errors.names("spec.c"));
        assert!(!errors.names("spec.a"));
    }

    #[test]
    fn no_problems_is_ok() {
        assert!(Problems::default().finish().is_ok());
    }
}
