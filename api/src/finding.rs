//! Findings: what validation says about an object, field by field.

use std::fmt;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Allowed, but risky: worth a person's look.
    Warning,
    /// Refused: the estate must not be applied like this.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Warning => "warning",
            Self::Error => "error",
        })
    }
}

/// The identity of an object: kind, namespace (when the manifest names one) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// The kind, e.g. `KeyManager`.
    pub kind: String,
    /// The namespace, when the manifest sets one; otherwise the namespace it is applied to.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One thing validation found.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// The object concerned, when it could be identified.
    pub object: Option<ObjectRef>,
    /// Path of the field concerned, e.g. `spec.drives[2].serial`; empty for the whole object.
    pub field: String,
    /// What is wrong, and why it matters.
    pub message: String,
}

impl Finding {
    /// An error about `field` of `object`.
    pub fn error(
        object: Option<ObjectRef>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Error,
            object,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A warning about `field` of `object`.
    pub fn warning(
        object: Option<ObjectRef>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Warning,
            object,
            field: field.into(),
            message: message.into(),
        }
    }

    /// Whether this finding refuses the estate.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Finding {
    /// `error: KeyManager tape/primary: spec.replicas: must be between 1 and 16`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.severity)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}
