//! [`ClientError`]: every failure of a client request, with the server's `metav1.Status`
//! decoded when the server answered with one.

use crate::status::{Status, StatusDetails};

/// A failed client request.
///
/// Retryable: [`ClientError::Connect`], [`ClientError::Http`], [`ClientError::Quic`],
/// [`ClientError::Timeout`],
/// and [`ClientError::Api`] with code 409 Conflict (after a re-read), 429, 500, 503 or 504.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with a `metav1.Status` failure (404, 409, 410, 422, ...).
    #[error("{} ({}): {}", .0.code, .0.reason, .0.message)]
    Api(Box<Status>),
    /// The kubeconfig could not be read or is incomplete.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// A TLS setting (CA, client certificate, key) is unusable.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Connecting (TCP, TLS or the HTTP/2 handshake) failed.
    #[error("connecting to {server}: {message}")]
    Connect {
        /// The server address.
        server: String,
        /// What failed.
        message: String,
    },
    /// The HTTP/2 exchange failed (connection lost, stream reset).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The QUIC exchange of a watch failed (connection lost, stream reset, bad answer).
    #[error("QUIC: {0}")]
    Quic(String),
    /// The request (or its response headers, for a watch) took longer than the timeout.
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The request could not be built (bad name, selector or URL).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The response body could not be decoded into the expected type.
    #[error("decoding the response: {0}")]
    Decode(String),
    /// A response body or watch line exceeded the client's bound.
    #[error("response exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The bound that was exceeded.
        limit: usize,
    },
    /// A failure answer without a decodable `metav1.Status` body.
    #[error("unexpected HTTP status {code}: {body}")]
    UnexpectedStatus {
        /// The HTTP status code.
        code: u16,
        /// The start of the body.
        body: String,
    },
}

/// Result alias of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// The HTTP status code of a server answer, if the server answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api(s) => Some(s.code),
            ClientError::UnexpectedStatus { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The `metav1.Status` the server answered with, if any.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Api(s) => Some(s),
            _ => None,
        }
    }

    /// The Status `reason` (`NotFound`, `Conflict`, ...), if the server answered with one.
    pub fn reason(&self) -> Option<&str> {
        self.status().map(|s| s.reason.as_str())
    }

    /// 404 NotFound.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// 409 Conflict on a stale resourceVersion (not AlreadyExists, also a 409).
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409) && self.reason() != Some("AlreadyExists")
    }

    /// 409 AlreadyExists on create.
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(409) && self.reason() == Some("AlreadyExists")
    }

    /// 410 Gone/Expired: the resourceVersion is too old; re-list.
    pub fn is_gone(&self) -> bool {
        self.code() == Some(410)
    }

    /// 422 Invalid.
    pub fn is_invalid(&self) -> bool {
        self.code() == Some(422)
    }

    /// True for failures worth retrying after a pause (transport, timeouts, 429/5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Http(_) | ClientError::Timeout(_) => true,
            _ => matches!(self.code(), Some(429 | 500 | 502 | 503 | 504)),
        }
    }
}

/// Decodes a `metav1.Status` from JSON leniently (fields other servers may omit default),
/// `None` if `v` is not a Status object.
pub(crate) fn status_from_value(v: &serde_json::Value) -> Option<Status> {
    let obj = v.as_object()?;
    if obj.get("kind").and_then(|k| k.as_str()) != Some("Status") {
        return None;
    }
    let s = |k: &str| {
        obj.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let details = obj
        .get("details")
        .and_then(|d| serde_json::from_value::<StatusDetails>(d.clone()).ok());
    Some(Status {
        kind: "Status".into(),
        api_version: {
            let a = s("apiVersion");
            if a.is_empty() { "v1".into() } else { a }
        },
        metadata: obj
            .get("metadata")
            .and_then(|m| m.as_object())
            .cloned()
            .unwrap_or_default(),
        status: s("status"),
        message: s("message"),
        reason: s("reason"),
        details,
        code: obj
            .get("code")
            .and_then(serde_json::Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0),
    })
}

/// The error for a failed HTTP answer `code` with `body`.
pub(crate) fn error_from_response(code: u16, body: &[u8]) -> ClientError {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(mut st) = status_from_value(&v)
    {
        if st.code == 0 {
            st.code = code;
        }
        return ClientError::Api(Box::new(st));
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
    ClientError::UnexpectedStatus { code, body: text }
}
