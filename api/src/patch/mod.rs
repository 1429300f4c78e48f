//! Patch engines for `PATCH` requests: pure functions over [`serde_json::Value`], no I/O.
//!
//! Entry points (the server picks one by `Content-Type`):
//! - `application/json-patch+json` → [`json_patch::apply`] (RFC 6902), parse with
//!   [`json_patch::parse`] first; errors carry [`PatchError::http_status`] (400 for a malformed
//!   patch, 422 when applying it fails, including a failing `test`).
//! - `application/merge-patch+json` → [`merge_patch::apply`] (RFC 7386);
//!   [`merge_patch::diff`] computes the patch between two documents.
//! - `application/strategic-merge-patch+json` → [`strategic::apply`] with the patch metadata of
//!   the object's kind from [`strategic::builtin_schema`] or [`schema::OpenApiSchema`] (built
//!   from the OpenAPI components' `x-kubernetes-patch-*`/`x-kubernetes-list-*` extensions, or
//!   from a CRD's inline schema), or any other [`strategic::PatchSchema`]. Upstream refuses strategic
//!   merge patch for custom resources with 415; [`strategic::builtin_schema`] returns `None` for
//!   kinds it does not know so the server can do the same.
//! - `application/apply-patch+yaml` → see [`crate::apply`].

pub mod json_patch;
pub mod merge_patch;
pub mod schema;
pub mod strategic;

/// Why a patch could not be parsed or applied. Never retryable: the same patch fails again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The patch document itself is malformed (not the expected JSON shape, unknown op, bad
    /// pointer). The server answers 400 BadRequest.
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// A JSON patch `test` operation found a different value. The server answers 422.
    #[error("testing value {path} failed")]
    TestFailed {
        /// The JSON pointer that was tested.
        path: String,
    },
    /// The patch is well formed but cannot be applied to this document (missing path, index
    /// out of range, wrong type, directive misuse). The server answers 422.
    #[error("{0}")]
    Unprocessable(String),
    /// The patch would grow the document past a limit (copy bombs). The server answers 422.
    #[error("patch result too large: {0}")]
    TooLarge(String),
}

impl PatchError {
    /// The HTTP status upstream's apiserver answers with for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            PatchError::Invalid(_) => 400,
            _ => 422,
        }
    }
}
