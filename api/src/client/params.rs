//! Request parameters (the query strings and bodies upstream clients send).

use serde::Serialize;

/// Appends `key=value` pairs to a query string, percent-encoding values.
#[derive(Debug, Default)]
pub(crate) struct Query(String);

impl Query {
    pub(crate) fn push(&mut self, key: &str, value: &str) {
        self.0.push(if self.0.is_empty() { '?' } else { '&' });
        self.0.push_str(key);
        self.0.push('=');
        encode_into(&mut self.0, value);
    }

    pub(crate) fn push_opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.push(key, v);
        }
    }

    pub(crate) fn finish(self) -> String {
        self.0
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Parameters of a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListParams {
    /// Label selector (`app=x,tier in (a,b)`).
    pub label_selector: Option<String>,
    /// Field selector (`spec.nodeName=n1`).
    pub field_selector: Option<String>,
    /// Page size; 0 or `None` for everything at once.
    pub limit: Option<u32>,
    /// The `continue` token of the previous page.
    pub continue_token: Option<String>,
    /// `resourceVersion` (`"0"`: any version, served from cache upstream).
    pub resource_version: Option<String>,
    /// Server-side timeout of the list, in seconds.
    pub timeout: Option<u32>,
}

impl ListParams {
    /// Sets the label selector.
    #[must_use]
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_string());
        self
    }

    /// Sets the field selector.
    #[must_use]
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_string());
        self
    }

    /// Sets the page size.
    #[must_use]
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Continues from a previous page's token.
    #[must_use]
    pub fn continue_token(mut self, token: &str) -> Self {
        self.continue_token = Some(token.to_string());
        self
    }

    /// Lists at `resourceVersion` `rv`.
    #[must_use]
    pub fn at(mut self, rv: &str) -> Self {
        self.resource_version = Some(rv.to_string());
        self
    }

    pub(crate) fn query(&self) -> String {
        let mut q = Query::default();
        q.push_opt("labelSelector", self.label_selector.as_deref());
        q.push_opt("fieldSelector", self.field_selector.as_deref());
        if let Some(l) = self.limit.filter(|l| *l > 0) {
            q.push("limit", &l.to_string());
        }
        q.push_opt("continue", self.continue_token.as_deref());
        q.push_opt("resourceVersion", self.resource_version.as_deref());
        if let Some(t) = self.timeout {
            q.push("timeoutSeconds", &t.to_string());
        }
        q.finish()
    }

    /// The watch parameters with this list's selectors.
    pub fn to_watch(&self) -> WatchParams {
        WatchParams {
            label_selector: self.label_selector.clone(),
            field_selector: self.field_selector.clone(),
            ..WatchParams::default()
        }
    }
}

/// Parameters of a watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchParams {
    /// Label selector.
    pub label_selector: Option<String>,
    /// Field selector.
    pub field_selector: Option<String>,
    /// `timeoutSeconds`: the server ends the stream after this long.
    pub timeout: Option<u32>,
    /// `allowWatchBookmarks`: the server sends BOOKMARK events with progress.
    pub bookmarks: bool,
    /// `sendInitialEvents`: a streaming list (ADDED for every object, then a bookmark
    /// annotated `k8s.io/initial-events-end`); use with an empty resourceVersion.
    pub send_initial_events: bool,
}

impl WatchParams {
    /// Sets the label selector.
    #[must_use]
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_string());
        self
    }

    /// Sets the field selector.
    #[must_use]
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_string());
        self
    }

    /// Sets `timeoutSeconds`.
    #[must_use]
    pub fn timeout(mut self, seconds: u32) -> Self {
        self.timeout = Some(seconds);
        self
    }

    /// Sets `allowWatchBookmarks`.
    #[must_use]
    pub fn bookmarks(mut self, on: bool) -> Self {
        self.bookmarks = on;
        self
    }

    /// Sets `sendInitialEvents` (and bookmarks, which it requires).
    #[must_use]
    pub fn send_initial_events(mut self, on: bool) -> Self {
        self.send_initial_events = on;
        if on {
            self.bookmarks = true;
        }
        self
    }

    pub(crate) fn query(&self, resource_version: &str) -> String {
        let mut q = Query::default();
        q.push("watch", "true");
        q.push_opt("labelSelector", self.label_selector.as_deref());
        q.push_opt("fieldSelector", self.field_selector.as_deref());
        q.push_opt("resourceVersion", Some(resource_version));
        if let Some(t) = self.timeout {
            q.push("timeoutSeconds", &t.to_string());
        }
        if self.bookmarks {
            q.push("allowWatchBookmarks", "true");
        }
        if self.send_initial_events {
            q.push("sendInitialEvents", "true");
            q.push("resourceVersionMatch", "NotOlderThan");
        }
        q.finish()
    }
}

/// `fieldValidation` of writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationDirective {
    /// Unknown or duplicate fields fail the request.
    Strict,
    /// They are dropped with a warning.
    Warn,
    /// They are dropped silently.
    Ignore,
}

impl ValidationDirective {
    fn as_str(self) -> &'static str {
        match self {
            ValidationDirective::Strict => "Strict",
            ValidationDirective::Warn => "Warn",
            ValidationDirective::Ignore => "Ignore",
        }
    }
}

/// Parameters of create and replace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostParams {
    /// `dryRun=All`: validate and answer, store nothing.
    pub dry_run: bool,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `fieldValidation`.
    pub field_validation: Option<ValidationDirective>,
}

impl PostParams {
    pub(crate) fn query(&self) -> String {
        let mut q = Query::default();
        if self.dry_run {
            q.push("dryRun", "All");
        }
        q.push_opt("fieldManager", self.field_manager.as_deref());
        if let Some(v) = self.field_validation {
            q.push("fieldValidation", v.as_str());
        }
        q.finish()
    }
}

/// A patch and its type.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch<P: Serialize> {
    /// RFC 6902 JSON patch (an array of operations).
    Json(serde_json::Value),
    /// RFC 7386 JSON merge patch.
    Merge(P),
    /// Strategic merge patch (built-in kinds only).
    Strategic(P),
    /// Server-side apply (needs [`PatchParams::field_manager`]).
    Apply(P),
}

impl<P: Serialize> Patch<P> {
    pub(crate) fn content_type(&self) -> &'static str {
        match self {
            Patch::Json(_) => "application/json-patch+json",
            Patch::Merge(_) => "application/merge-patch+json",
            Patch::Strategic(_) => "application/strategic-merge-patch+json",
            Patch::Apply(_) => "application/apply-patch+yaml",
        }
    }

    pub(crate) fn body(&self) -> serde_json::Result<Vec<u8>> {
        match self {
            Patch::Json(v) => serde_json::to_vec(v),
            Patch::Merge(p) | Patch::Strategic(p) | Patch::Apply(p) => serde_json::to_vec(p),
        }
    }

    pub(crate) fn is_apply(&self) -> bool {
        matches!(self, Patch::Apply(_))
    }
}

/// Parameters of a patch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchParams {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `force=true`: server-side apply takes conflicting fields.
    pub force: bool,
    /// `fieldManager` (required for apply).
    pub field_manager: Option<String>,
    /// `fieldValidation`.
    pub field_validation: Option<ValidationDirective>,
}

impl PatchParams {
    /// Parameters for server-side apply as `manager`.
    pub fn apply(manager: &str) -> Self {
        Self {
            field_manager: Some(manager.to_string()),
            ..Self::default()
        }
    }

    /// Sets `force`.
    #[must_use]
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }

    pub(crate) fn query(&self, apply: bool) -> String {
        let mut q = Query::default();
        if self.dry_run {
            q.push("dryRun", "All");
        }
        if self.force && apply {
            q.push("force", "true");
        }
        q.push_opt("fieldManager", self.field_manager.as_deref());
        if let Some(v) = self.field_validation {
            q.push("fieldValidation", v.as_str());
        }
        q.finish()
    }
}

/// `propagationPolicy` of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PropagationPolicy {
    /// Dependents are deleted before the owner disappears.
    Foreground,
    /// The owner goes now, the garbage collector deletes dependents after.
    Background,
    /// Dependents are kept (their owner references removed).
    Orphan,
}

/// `preconditions` of a delete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    /// Delete only if the object still has this uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Delete only if the object is still at this resourceVersion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// Parameters of a delete (sent as a `DeleteOptions` body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteParams {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `gracePeriodSeconds` (0: immediately).
    pub grace_period_seconds: Option<u32>,
    /// `propagationPolicy`.
    pub propagation_policy: Option<PropagationPolicy>,
    /// `preconditions`.
    pub preconditions: Option<Preconditions>,
}

impl DeleteParams {
    /// Foreground cascading deletion.
    pub fn foreground() -> Self {
        Self {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..Self::default()
        }
    }

    /// Background cascading deletion.
    pub fn background() -> Self {
        Self {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Self::default()
        }
    }

    /// Orphaning deletion.
    pub fn orphan() -> Self {
        Self {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..Self::default()
        }
    }

    /// Sets `gracePeriodSeconds`.
    #[must_use]
    pub fn grace_period(mut self, seconds: u32) -> Self {
        self.grace_period_seconds = Some(seconds);
        self
    }

    /// The `DeleteOptions` JSON body.
    pub(crate) fn body(&self) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        m.insert("kind".into(), "DeleteOptions".into());
        m.insert("apiVersion".into(), "v1".into());
        if self.dry_run {
            m.insert("dryRun".into(), serde_json::json!(["All"]));
        }
        if let Some(g) = self.grace_period_seconds {
            m.insert("gracePeriodSeconds".into(), g.into());
        }
        if let Some(p) = self.propagation_policy {
            m.insert("propagationPolicy".into(), serde_json::json!(p));
        }
        if let Some(p) = &self.preconditions {
            m.insert("preconditions".into(), serde_json::json!(p));
        }
        serde_json::to_vec(&serde_json::Value::Object(m)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded() {
        let q = ListParams::default()
            .labels("app in (a,b),!x")
            .fields("spec.nodeName=n1")
            .limit(500)
            .query();
        assert_eq!(
            q,
            "?labelSelector=app%20in%20%28a%2Cb%29%2C%21x&fieldSelector=spec.nodeName%3Dn1&limit=500"
        );
        let w = WatchParams::default()
            .bookmarks(true)
            .timeout(5)
            .query("12");
        assert_eq!(
            w,
            "?watch=true&resourceVersion=12&timeoutSeconds=5&allowWatchBookmarks=true"
        );
    }

    #[test]
    fn delete_body() {
        let b = DeleteParams::background().grace_period(0).body();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["propagationPolicy"], "Background");
        assert_eq!(v["gracePeriodSeconds"], 0);
        assert_eq!(v["kind"], "DeleteOptions");
    }
}
