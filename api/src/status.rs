//! `metav1.Status`: the body of every error answer, and [`ApiError`], the typed error every
//! request path returns.
//!
//! kubectl prints `Error from server (<reason>): <message>`, so both the reason and the
//! message follow upstream wording (`apimachinery/pkg/api/errors`). Other modules (resource
//! registry, codecs, store) map their failures to an [`ApiError`] through the constructors
//! here; the server turns it into the HTTP status code plus the JSON body
//! ([`ApiError::to_body`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use store::StoreError;

/// The `reason` of a failed `metav1.Status` (the `StatusReason` values upstream uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reason {
    NotFound,
    AlreadyExists,
    Conflict,
    Invalid,
    BadRequest,
    Forbidden,
    Unauthorized,
    MethodNotAllowed,
    NotAcceptable,
    UnsupportedMediaType,
    /// 410: a resourceVersion older than the retained history.
    Expired,
    /// 410: the resource is gone.
    Gone,
    TooManyRequests,
    RequestEntityTooLarge,
    /// 504: the server could not finish in time (also used for too-new resourceVersions).
    Timeout,
    ServiceUnavailable,
    InternalError,
}

impl Reason {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "NotFound",
            Reason::AlreadyExists => "AlreadyExists",
            Reason::Conflict => "Conflict",
            Reason::Invalid => "Invalid",
            Reason::BadRequest => "BadRequest",
            Reason::Forbidden => "Forbidden",
            Reason::Unauthorized => "Unauthorized",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::NotAcceptable => "NotAcceptable",
            Reason::UnsupportedMediaType => "UnsupportedMediaType",
            Reason::Expired => "Expired",
            Reason::Gone => "Gone",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::RequestEntityTooLarge => "RequestEntityTooLarge",
            Reason::Timeout => "Timeout",
            Reason::ServiceUnavailable => "ServiceUnavailable",
            Reason::InternalError => "InternalError",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a field validation error (`field.ErrorType` upstream); its `Display` is the
/// text upstream puts in messages (`Invalid value`, `Required value`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldErrorKind {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    Forbidden,
    TooLong,
    TooMany,
    NotFound,
    TypeInvalid,
}

impl FieldErrorKind {
    /// The `details.causes[].reason` value (`FieldValueInvalid`, ...).
    pub fn cause_reason(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::TooMany => "FieldValueTooMany",
            FieldErrorKind::NotFound => "FieldValueNotFound",
            FieldErrorKind::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    fn text(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::Duplicate => "Duplicate value",
            FieldErrorKind::Forbidden => "Forbidden",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::TooMany => "Too many",
            FieldErrorKind::NotFound => "Not found",
            FieldErrorKind::TypeInvalid => "Invalid value",
        }
    }
}

/// One field validation failure, as `field.Error` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub kind: FieldErrorKind,
    /// The JSON path of the field, e.g. `metadata.name` or `spec.containers[0].image`.
    pub field: String,
    /// The offending value, already rendered as upstream does (strings quoted: `"Foo_"`).
    /// `None` omits it from the message (as for `Required`).
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    /// `Invalid value` with a string value (rendered quoted).
    pub fn invalid(field: impl Into<String>, value: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorKind::Invalid,
            field: field.into(),
            value: Some(serde_json::Value::from(value).to_string()),
            detail: detail.into(),
        }
    }

    /// `Required value`.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorKind::Required,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    /// `Forbidden`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorKind::Forbidden,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    /// The message without the field path (`Invalid value: "x": detail`), as in causes.
    pub fn body(&self) -> String {
        let mut s = self.kind.text().to_string();
        if let Some(v) = &self.value {
            s.push_str(": ");
            s.push_str(v);
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }

    /// The `details.causes[]` entry.
    pub fn cause(&self) -> StatusCause {
        StatusCause {
            reason: self.kind.cause_reason().to_string(),
            message: self.body(),
            field: self.field.clone(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// `metav1.StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusCause {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
}

/// `metav1.StatusDetails`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Serialized even when empty for NotFound/AlreadyExists (`"group":""`), as upstream does.
    #[serde(default)]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

/// `metav1.Status` as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub kind: String,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    pub code: u16,
}

impl Status {
    /// `{"status":"Success","code":200}`, e.g. for a delete that returns no object.
    pub fn success(details: Option<StatusDetails>) -> Self {
        Self {
            kind: "Status".into(),
            api_version: "v1".into(),
            metadata: serde_json::Map::new(),
            status: "Success".into(),
            message: String::new(),
            reason: String::new(),
            details,
            code: 200,
        }
    }

    /// The JSON encoding.
    pub fn to_json(&self) -> Vec<u8> {
        // A Status holds only strings, numbers and maps: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// A request failure, turned into a `metav1.Status` answer. Retryable only where the reason
/// says so (Conflict after a re-read, TooManyRequests, ServiceUnavailable, Timeout).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ApiError {
    /// The HTTP status code.
    pub code: u16,
    pub reason: Reason,
    pub message: String,
    /// Boxed to keep `Result<_, ApiError>` small on the hot path.
    pub details: Option<Box<StatusDetails>>,
}

/// `resource` or `resource.group`, as upstream names a resource in messages.
pub fn qualified_resource(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    fn new(code: u16, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: StatusDetails) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    fn resource_details(group: &str, resource: &str, name: &str) -> StatusDetails {
        StatusDetails {
            name: name.to_string(),
            group: group.to_string(),
            kind: resource.to_string(),
            ..Default::default()
        }
    }

    /// 404 `pods "x" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            404,
            Reason::NotFound,
            format!(
                "{} \"{name}\" not found",
                qualified_resource(group, resource)
            ),
        )
        .with_details(Self::resource_details(group, resource, name))
    }

    /// 404 for a path that names no resource at all.
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            Reason::NotFound,
            "the server could not find the requested resource",
        )
        .with_details(StatusDetails::default())
    }

    /// 409 `pods "x" already exists`.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            409,
            Reason::AlreadyExists,
            format!(
                "{} \"{name}\" already exists",
                qualified_resource(group, resource)
            ),
        )
        .with_details(Self::resource_details(group, resource, name))
    }

    /// 409 `Operation cannot be fulfilled on pods "x": <why>`.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            Reason::Conflict,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified_resource(group, resource)
            ),
        )
        .with_details(Self::resource_details(group, resource, name))
    }

    /// The optimistic-concurrency conflict (stale `resourceVersion`), worded as upstream.
    pub fn conflict_modified(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 `Pod "x" is invalid: <errors>` with one cause per field error. `kind` is the
    /// object kind (`Pod`), `group` its API group.
    pub fn invalid(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let list = match errors {
            [one] => one.to_string(),
            many => format!(
                "[{}]",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        Self::new(
            422,
            Reason::Invalid,
            format!("{qualified_kind} \"{name}\" is invalid: {list}"),
        )
        .with_details(StatusDetails {
            name: name.to_string(),
            group: group.to_string(),
            kind: kind.to_string(),
            causes: errors.iter().map(FieldError::cause).collect(),
            ..Default::default()
        })
    }

    /// 400 with the message as given (e.g. `strict decoding error: unknown field "x"`).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, Reason::BadRequest, message)
    }

    /// 401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(401, Reason::Unauthorized, "Unauthorized")
    }

    /// 403 with the message as given.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, Reason::Forbidden, message)
    }

    /// 405 `the server does not allow this method on the requested resource`.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            Reason::MethodNotAllowed,
            "the server does not allow this method on the requested resource",
        )
    }

    /// 406 for an `Accept` the server cannot produce.
    pub fn not_acceptable(accept: &str) -> Self {
        Self::new(
            406,
            Reason::NotAcceptable,
            format!(
                "the server was unable to respond with a content type that the client supports (accept: {accept})"
            ),
        )
    }

    /// 415 for a request body media type the server cannot decode.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            Reason::UnsupportedMediaType,
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type})"
            ),
        )
    }

    /// 410 `Expired`: `too old resource version: N (M)`.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            Reason::Expired,
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 410 `Gone` with the message as given.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, Reason::Gone, message)
    }

    /// 413 `RequestEntityTooLarge`.
    pub fn request_entity_too_large(message: impl Into<String>) -> Self {
        Self::new(413, Reason::RequestEntityTooLarge, message)
    }

    /// 429 with `details.retryAfterSeconds`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        Self::new(429, Reason::TooManyRequests, message).with_details(StatusDetails {
            retry_after_seconds: Some(retry_after_seconds),
            ..Default::default()
        })
    }

    /// 504 `Timeout` with the message as given.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, Reason::Timeout, message)
    }

    /// 503 `ServiceUnavailable` with the message as given.
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, Reason::ServiceUnavailable, message)
    }

    /// 500 `InternalError`: `Internal error occurred: <message>`.
    pub fn internal(message: impl fmt::Display) -> Self {
        Self::new(
            500,
            Reason::InternalError,
            format!("Internal error occurred: {message}"),
        )
        .with_details(StatusDetails {
            causes: vec![StatusCause {
                message: message.to_string(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    /// The `metav1.Status` for this error.
    pub fn status(&self) -> Status {
        Status {
            kind: "Status".into(),
            api_version: "v1".into(),
            metadata: serde_json::Map::new(),
            status: "Failure".into(),
            message: self.message.clone(),
            reason: self.reason.as_str().into(),
            details: self.details.as_deref().cloned(),
            code: self.code,
        }
    }

    /// The JSON body of the answer.
    pub fn to_body(&self) -> Vec<u8> {
        self.status().to_json()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted {
                requested,
                compact_revision,
            } => ApiError::expired(requested.0, compact_revision.0),
            StoreError::WatchTooSlow { resume_from } => ApiError::gone(format!(
                "watch closed because the client was too slow; resume from resourceVersion {resume_from}"
            )),
            StoreError::FutureRevision { requested, current } => ApiError::timeout(format!(
                "Too large resource version: {requested}, current: {current}"
            )),
            StoreError::ValueTooLarge { .. } => ApiError::request_entity_too_large(e.to_string()),
            StoreError::Unavailable(_) => ApiError::service_unavailable(e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

/// Builds an error from an HTTP status code and message with the reason that code means.
pub fn from_code(code: u16, message: impl Into<String>) -> ApiError {
    let reason = match code {
        400 => Reason::BadRequest,
        401 => Reason::Unauthorized,
        403 => Reason::Forbidden,
        404 => Reason::NotFound,
        405 => Reason::MethodNotAllowed,
        406 => Reason::NotAcceptable,
        409 => Reason::Conflict,
        410 => Reason::Gone,
        413 => Reason::RequestEntityTooLarge,
        415 => Reason::UnsupportedMediaType,
        422 => Reason::Invalid,
        429 => Reason::TooManyRequests,
        503 => Reason::ServiceUnavailable,
        504 => Reason::Timeout,
        _ => Reason::InternalError,
    };
    ApiError::new(code, reason, message)
}

impl From<crate::validation::Invalid> for ApiError {
    fn from(e: crate::validation::Invalid) -> Self {
        let causes = e
            .causes
            .iter()
            .map(|c| StatusCause {
                reason: c.reason().to_string(),
                message: c.body(),
                field: c.field.clone(),
            })
            .collect();
        ApiError::new(422, Reason::Invalid, e.message()).with_details(StatusDetails {
            name: e.name.clone(),
            group: e.group.clone(),
            kind: e.kind.clone(),
            causes,
            ..Default::default()
        })
    }
}

impl From<crate::validation::DecodeError> for ApiError {
    fn from(e: crate::validation::DecodeError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<crate::patch::PatchError> for ApiError {
    fn from(e: crate::patch::PatchError) -> Self {
        from_code(e.http_status(), e.to_string())
    }
}

impl From<crate::apply::ApplyError> for ApiError {
    fn from(e: crate::apply::ApplyError) -> Self {
        from_code(e.http_status(), e.to_string())
    }
}

impl From<crate::protobuf::ProtobufError> for ApiError {
    fn from(e: crate::protobuf::ProtobufError) -> Self {
        from_code(e.http_status(), e.to_string())
    }
}

impl From<crate::registry::FieldSelectorError> for ApiError {
    fn from(e: crate::registry::FieldSelectorError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<crate::registry::ScaleError> for ApiError {
    fn from(e: crate::registry::ScaleError) -> Self {
        match e {
            crate::registry::ScaleError::NoScale => ApiError::path_not_found(),
            other => from_code(422, other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_upstream_wire_form() {
        let e = ApiError::not_found("", "pods", "x");
        let v: serde_json::Value = serde_json::from_slice(&e.to_body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"pods \"x\" not found","reason":"NotFound",
                "details":{"name":"x","group":"","kind":"pods"},"code":404})
        );
    }

    #[test]
    fn grouped_resources_are_qualified() {
        let e = ApiError::already_exists("apps", "deployments", "web");
        assert_eq!(e.message, "deployments.apps \"web\" already exists");
        assert_eq!(e.code, 409);
        let c = ApiError::conflict_modified("", "configmaps", "x");
        assert_eq!(
            c.message,
            "Operation cannot be fulfilled on configmaps \"x\": the object has been modified; please apply your changes to the latest version and try again"
        );
    }

    #[test]
    fn invalid_lists_causes() {
        let e = ApiError::invalid(
            "",
            "ConfigMap",
            "Bad_",
            &[FieldError::invalid(
                "metadata.name",
                "Bad_",
                "must be lowercase",
            )],
        );
        assert_eq!(
            e.message,
            "ConfigMap \"Bad_\" is invalid: metadata.name: Invalid value: \"Bad_\": must be lowercase"
        );
        let d = e.details.unwrap();
        assert_eq!(d.causes[0].reason, "FieldValueInvalid");
        assert_eq!(d.causes[0].field, "metadata.name");
        let two = ApiError::invalid(
            "apps",
            "Deployment",
            "w",
            &[
                FieldError::required("spec.selector", ""),
                FieldError::required("spec.template", ""),
            ],
        );
        assert_eq!(
            two.message,
            "Deployment.apps \"w\" is invalid: [spec.selector: Required value, spec.template: Required value]"
        );
    }

    #[test]
    fn store_errors_map_to_statuses() {
        let e: ApiError = StoreError::Compacted {
            requested: store::Revision(3),
            compact_revision: store::Revision(10),
        }
        .into();
        assert_eq!((e.code, e.reason), (410, Reason::Expired));
        assert_eq!(e.message, "too old resource version: 3 (10)");
        let e: ApiError = StoreError::Unavailable("closing".into()).into();
        assert_eq!(e.code, 503);
    }
}
