//! Types shared by the custom resources.

use std::{fmt, str::FromStr, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The API group of every shadowkeep resource.
pub const GROUP: &str = "shadowkeep.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as it appears in manifests.
pub const API_VERSION: &str = "shadowkeep.io/v1alpha1";

/// A reference to the KeyManager, in the same namespace, that a Shadow, DriveTable or
/// KeyGroup belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyManagerRef {
    /// Name of the KeyManager. A reference that does not resolve is an error in
    /// `shadowkeep validate` and a condition on the referring object.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
}

/// A duration in the Kubernetes (Go) notation: `30s`, `5m`, `1h30m`, `168h`.
///
/// Kubernetes durations have no day unit, so a week is `168h`. The value is kept as a
/// [`Duration`]; it prints in the largest whole unit so that defaults read naturally in the
/// generated schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval(Duration);

impl Interval {
    /// An interval of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// An interval of whole hours.
    pub const fn from_hours(hours: u64) -> Self {
        Self(Duration::from_secs(hours * 3600))
    }

    /// The interval as a standard duration.
    pub const fn as_duration(self) -> Duration {
        self.0
    }
}

impl From<Duration> for Interval {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

/// Why a string is not an [`Interval`].
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {input:?}: expected a duration such as 30s, 5m or 168h ({reason})")]
pub struct IntervalError {
    input: String,
    reason: String,
}

impl FromStr for Interval {
    type Err = IntervalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| IntervalError {
            input: s.to_owned(),
            reason,
        };
        if s.trim().is_empty() {
            return Err(err("empty".to_owned()));
        }
        let parsed: kube::core::Duration = s.parse().map_err(|e| err(format!("{e}")))?;
        if parsed.is_negative() {
            return Err(err("negative durations are not allowed".to_owned()));
        }
        Ok(Self(parsed.into()))
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        let secs = d.as_secs();
        match secs {
            0 => f.write_str("0s"),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Interval {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Interval".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "description": "A duration such as 30s, 5m or 168h (Kubernetes notation; no day unit)."
        })
    }
}

/// Builds a CEL rule that bounds an interval field; used by the CRD field attributes.
macro_rules! interval_rule {
    (min $min:literal) => {
        kube::core::Rule::new(concat!("duration(self) >= duration('", $min, "')"))
            .message(concat!("must be at least ", $min))
    };
    (min $min:literal, max $max:literal) => {
        kube::core::Rule::new(concat!(
            "duration(self) >= duration('",
            $min,
            "') && duration(self) <= duration('",
            $max,
            "')"
        ))
        .message(concat!("must be between ", $min, " and ", $max))
    };
    (positive) => {
        kube::core::Rule::new("duration(self) > duration('0s')").message("must be greater than 0s")
    };
}
pub(crate) use interval_rule;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_round_trips_in_largest_unit() {
        for (input, shown) in [
            ("168h", "168h"),
            ("90m", "90m"),
            ("1h30m", "90m"),
            ("45s", "45s"),
            ("1.5s", "1500ms"),
        ] {
            let i: Interval = input.parse().expect(input);
            assert_eq!(i.to_string(), shown, "{input}");
            assert_eq!(shown.parse::<Interval>().expect(shown), i);
        }
    }

    #[test]
    fn interval_refuses_garbage_and_negative() {
        for bad in ["", "7d", "soon", "-5m", "5"] {
            let err = bad.parse::<Interval>().expect_err(bad);
            assert!(err.to_string().contains("invalid duration"), "{err}");
        }
    }
}
