//! Typed validation and decoding errors, shaped so the server maps them 1:1 to
//! `metav1.Status` (422 Invalid with `details.causes`, 400 BadRequest).

use serde_json::Value;

/// What went wrong with one field (upstream's `field.ErrorType`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FieldErrorKind {
    /// `FieldValueRequired`.
    Required,
    /// `FieldValueInvalid`, with the offending value.
    Invalid(Value),
    /// `FieldValueDuplicate`.
    Duplicate(Value),
    /// `FieldValueNotSupported`, with the supported values.
    NotSupported(Value, Vec<String>),
    /// `FieldValueForbidden`.
    Forbidden,
    /// `FieldValueTooLong`, with the limit.
    TooLong(usize),
    /// `FieldValueTooMany`, with the limit.
    TooMany(usize),
}

/// One field error: a path such as `spec.containers[0].image`, the kind, and detail text.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
    pub detail: String,
}

/// Go's `%q`/`%v`-like rendering of a value inside messages.
fn render(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Required,
            detail: detail.into(),
        }
    }
    pub fn invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Invalid(value),
            detail: detail.into(),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: Value) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Duplicate(value),
            detail: String::new(),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: Value, supported: &[&str]) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::NotSupported(
                value,
                supported.iter().map(|s| (*s).to_owned()).collect(),
            ),
            detail: String::new(),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Forbidden,
            detail: detail.into(),
        }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::TooLong(max),
            detail: String::new(),
        }
    }

    /// The `StatusCause.reason` (`FieldValueRequired`, ...).
    pub fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::NotSupported(..) => "FieldValueNotSupported",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong(_) => "FieldValueTooLong",
            FieldErrorKind::TooMany(_) => "FieldValueTooMany",
        }
    }

    /// The `StatusCause.message`: upstream's `ErrorBody()` (`Required value`,
    /// `Invalid value: "x": detail`, ...).
    pub fn body(&self) -> String {
        let with_detail = |head: String| {
            if self.detail.is_empty() {
                head
            } else {
                format!("{head}: {}", self.detail)
            }
        };
        match &self.kind {
            FieldErrorKind::Required => with_detail("Required value".into()),
            FieldErrorKind::Invalid(v) => with_detail(format!("Invalid value: {}", render(v))),
            FieldErrorKind::Duplicate(v) => with_detail(format!("Duplicate value: {}", render(v))),
            FieldErrorKind::NotSupported(v, sup) => {
                let list: Vec<String> = sup.iter().map(|s| format!("{s:?}")).collect();
                format!(
                    "Unsupported value: {}: supported values: {}",
                    render(v),
                    list.join(", ")
                )
            }
            FieldErrorKind::Forbidden => with_detail("Forbidden".into()),
            FieldErrorKind::TooLong(max) => {
                with_detail(format!("Too long: may not be more than {max} bytes"))
            }
            FieldErrorKind::TooMany(max) => {
                with_detail(format!("Too many: must have at most {max} items"))
            }
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A 422 Invalid: the object failed validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Invalid {
    /// The kind (`Deployment`), as `details.kind`.
    pub kind: String,
    /// The group (`apps`, `""` for core), as `details.group`.
    pub group: String,
    /// The object's name (may be empty when `generateName` was used).
    pub name: String,
    /// The causes, in the order found.
    pub causes: Vec<FieldError>,
}

impl Invalid {
    /// `Deployment.apps "web" is invalid: <one error>` or `... is invalid: [e1, e2]`.
    pub fn message(&self) -> String {
        let qk = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        let agg = match self.causes.as_slice() {
            [one] => one.to_string(),
            many => format!(
                "[{}]",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!("{qk} {:?} is invalid: {agg}", self.name)
    }

    /// `details.causes` as Status JSON: `[{"reason","message","field"}]`.
    pub fn causes_json(&self) -> Value {
        Value::Array(
            self.causes
                .iter()
                .map(|c| serde_json::json!({"reason": c.reason(), "message": c.body(), "field": c.field}))
                .collect(),
        )
    }
}

/// A request body that cannot be decoded into the kind (400 BadRequest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not valid JSON, or not a JSON object.
    #[error("{0}")]
    Malformed(String),
    /// `fieldValidation=Strict` found unknown or duplicate fields.
    #[error("{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}", errors.join(", "))]
    Strict {
        kind: String,
        version: String,
        errors: Vec<String>,
    },
    /// A field has the wrong JSON type for the kind.
    #[error("{kind} in version {version:?} cannot be handled as a {kind}: {detail}")]
    Type {
        kind: String,
        version: String,
        detail: String,
    },
    /// An unknown `fieldValidation` value.
    #[error("fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {0:?}")]
    BadFieldValidation(String),
}

impl DecodeError {
    /// The Status `reason` to answer with (always `BadRequest`, code 400).
    pub fn reason(&self) -> &'static str {
        "BadRequest"
    }
}
