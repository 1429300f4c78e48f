//! Bad input against the real `kubeshard server`: malformed JSON/YAML/protobuf, unknown and
//! duplicate fields under `fieldValidation=Strict`, invalid names, oversize bodies and
//! objects, wrong content types, stale resourceVersions, path traversal in names. Each gets
//! a `metav1.Status` with upstream's code and reason, and nothing stored changes (checked by
//! listing and by resourceVersions afterwards).

#[path = "support/api_server.rs"]
mod support;

use serde_json::{Value, json};
use support::{TestServer, curl};

struct Http<'a> {
    s: &'a TestServer,
}

impl Http<'_> {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.s.insecure_port)
    }

    /// Sends `body` (a file, so any bytes and any size pass) with `content_type`.
    fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        let f = self.s.dir.join("body.bin");
        std::fs::write(&f, body).expect("write body");
        let data = format!("@{}", f.display());
        // --path-as-is: send `..` segments as they are (curl would squash them).
        let mut args = vec!["--path-as-is", "-X", method, "--data-binary", &data];
        let ct = format!("Content-Type: {content_type}");
        if !content_type.is_empty() {
            args.extend(["-H", &ct]);
        }
        curl(&args, &self.url(path))
    }

    fn get(&self, path: &str) -> (u16, String) {
        curl(&["--path-as-is"], &self.url(path))
    }
}

/// Asserts an error answer is a Status with `code` and `reason`; returns it.
#[track_caller]
fn status(resp: (u16, String), code: u16, reason: &str) -> Value {
    let (got, body) = resp;
    assert_eq!(got, code, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(st["kind"], "Status", "{st}");
    assert_eq!(st["apiVersion"], "v1", "{st}");
    assert_eq!(st["status"], "Failure", "{st}");
    assert_eq!(st["code"], code, "{st}");
    assert_eq!(st["reason"], reason, "{st}");
    st
}

fn message(st: &Value) -> &str {
    st["message"].as_str().unwrap_or("")
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const SECRETS: &str = "/api/v1/namespaces/default/secrets";

fn names(h: &Http<'_>, path: &str) -> Vec<String> {
    let (code, body) = h.get(path);
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("list");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn bad_input_gets_status_and_changes_nothing() {
    let s = TestServer::start(&[]);
    let h = Http { s: &s };
    let json_ct = "application/json";

    // What must survive untouched.
    let (code, body) = h.send(
        "POST",
        CMS,
        json_ct,
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"keep"},"data":{"a":"b"}}"#,
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = h.send(
        "POST",
        SECRETS,
        json_ct,
        br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"keep-s"},"stringData":{"k":"v"}}"#,
    );
    assert_eq!(code, 201, "{body}");
    let keep_rv = |h: &Http<'_>| -> String {
        let (_, b) = h.get(&format!("{CMS}/keep"));
        let v: Value = serde_json::from_str(&b).expect("keep");
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let rv0 = keep_rv(&h);

    // Malformed bodies: 400 with a message. JSON: truncated, not an object, not UTF-8; YAML:
    // broken, a list; protobuf: the magic then garbage, no magic, a truncated envelope.
    let pb = "application/vnd.kubernetes.protobuf";
    let malformed: [(&str, &[u8]); 8] = [
        (
            json_ct,
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x""#,
        ),
        (json_ct, b"[1,2,3]"),
        (json_ct, b"\xff\xfe"),
        ("application/yaml", b"metadata: [unclosed\n  name: x"),
        ("application/yaml", b"- just\n- a list\n"),
        (pb, b"k8s\x00\x0a\xff\xff\xff\xff\x0f"),
        (pb, b"{\"kind\":\"ConfigMap\"}"),
        (pb, b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09ConfigMap\x12\x40"),
    ];
    for (ct, body) in malformed {
        let st = status(h.send("POST", CMS, ct, body), 400, "BadRequest");
        assert!(!message(&st).is_empty(), "{st}");
    }

    // Strict field validation: unknown and duplicate fields are 400; Warn passes with a
    // warning (dry run, so nothing is stored); an unknown mode is 400.
    let unknown =
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u1"},"bogus":1,"data":{"a":"b"}}"#;
    let st = status(
        h.send(
            "POST",
            &format!("{CMS}?fieldValidation=Strict"),
            json_ct,
            unknown,
        ),
        400,
        "BadRequest",
    );
    assert!(
        message(&st).contains(r#"strict decoding error: unknown field "bogus""#),
        "{st}"
    );
    let st = status(
        h.send(
            "POST",
            &format!("{CMS}?fieldValidation=Strict"),
            json_ct,
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u2","name":"u3"}}"#,
        ),
        400,
        "BadRequest",
    );
    assert!(
        message(&st).contains(r#"duplicate field "metadata.name""#),
        "{st}"
    );
    let st = status(
        h.send(
            "POST",
            &format!("{CMS}?fieldValidation=Strict"),
            "application/yaml",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: u4\n  bogusMeta: 1\n",
        ),
        400,
        "BadRequest",
    );
    assert!(
        message(&st).contains(r#"unknown field "metadata.bogusMeta""#),
        "{st}"
    );
    let (code, body) = curl(
        &[
            "-i",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            std::str::from_utf8(unknown).unwrap_or(""),
        ],
        &h.url(&format!("{CMS}?fieldValidation=Warn&dryRun=All")),
    );
    assert_eq!(code, 201, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains(r#"warning: 299 - "unknown field \"bogus\"""#),
        "{body}"
    );
    status(
        h.send(
            "POST",
            &format!("{CMS}?fieldValidation=Sometimes"),
            json_ct,
            unknown,
        ),
        400,
        "BadRequest",
    );

    // Invalid names: 422 Invalid with a cause on metadata.name.
    for bad in ["Bad_Name", "../x", "a/b", "-lead", &"x".repeat(254)] {
        let body = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name": bad}});
        let st = status(
            h.send("POST", CMS, json_ct, body.to_string().as_bytes()),
            422,
            "Invalid",
        );
        assert_eq!(st["details"]["causes"][0]["field"], "metadata.name", "{st}");
        assert!(message(&st).starts_with("ConfigMap "), "{st}");
    }
    // No name at all.
    let st = status(
        h.send(
            "POST",
            CMS,
            json_ct,
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#,
        ),
        422,
        "Invalid",
    );
    assert!(
        message(&st).contains("name or generateName is required"),
        "{st}"
    );
    // Body kind/apiVersion that do not match the path: 400.
    status(
        h.send(
            "POST",
            CMS,
            json_ct,
            br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"k1"}}"#,
        ),
        400,
        "BadRequest",
    );
    status(
        h.send(
            "POST",
            CMS,
            json_ct,
            br#"{"apiVersion":"apps/v1","kind":"ConfigMap","metadata":{"name":"k2"}}"#,
        ),
        400,
        "BadRequest",
    );
    // Namespace in the body differing from the path: 400.
    status(
        h.send(
            "POST",
            CMS,
            json_ct,
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"k3","namespace":"kube-system"}}"#,
        ),
        400,
        "BadRequest",
    );

    // Sizes: a body over 3 MiB is 413; a ConfigMap over 1 MiB of data and a Secret over
    // 1 MiB decoded are 422 (the Secret just under it is fine); an object over the store's
    // 1.5 MiB value limit is 413.
    let big = "x".repeat(3 * 1024 * 1024 + 10);
    let body =
        json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"huge"},"data":{"a": big}});
    status(
        h.send("POST", CMS, json_ct, body.to_string().as_bytes()),
        413,
        "RequestEntityTooLarge",
    );
    let body = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big-cm"},
        "data":{"a": "y".repeat(1024 * 1024 + 1)}});
    let st = status(
        h.send("POST", CMS, json_ct, body.to_string().as_bytes()),
        422,
        "Invalid",
    );
    assert!(message(&st).contains("Too long"), "{st}");
    use base64::Engine as _;
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
    let body = json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"big-s"},
        "data":{"a": b64(1024 * 1024 + 1)}});
    let st = status(
        h.send("POST", SECRETS, json_ct, body.to_string().as_bytes()),
        422,
        "Invalid",
    );
    assert!(
        message(&st).contains("may not be more than 1048576 bytes"),
        "{st}"
    );
    let body = json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"big-ok"},
        "data":{"a": b64(1000 * 1024)}});
    let (code, resp) = h.send(
        "POST",
        &format!("{SECRETS}?dryRun=All"),
        json_ct,
        body.to_string().as_bytes(),
    );
    assert_eq!(code, 201, "a Secret of 1000 KiB decoded fits: {resp}");
    let body = json!({"apiVersion":"apps/v1","kind":"ControllerRevision",
        "metadata":{"name":"huge-rev"}, "revision": 1,
        "data":{"blob": "z".repeat(1600 * 1024)}});
    status(
        h.send(
            "POST",
            "/apis/apps/v1/namespaces/default/controllerrevisions",
            json_ct,
            body.to_string().as_bytes(),
        ),
        413,
        "RequestEntityTooLarge",
    );

    // Content types: 415 for bodies the server cannot read, and for non-patch types on PATCH.
    let ok_body = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ct"}}"#;
    for ct in ["text/plain", "application/xml", "application/cbor+x"] {
        status(
            h.send("POST", CMS, ct, ok_body),
            415,
            "UnsupportedMediaType",
        );
    }
    status(
        h.send(
            "PATCH",
            &format!("{CMS}/keep"),
            json_ct,
            br#"{"data":{"a":"c"}}"#,
        ),
        415,
        "UnsupportedMediaType",
    );
    status(
        h.send(
            "PATCH",
            &format!("{CMS}/keep"),
            "text/plain",
            br#"{"data":{"a":"c"}}"#,
        ),
        415,
        "UnsupportedMediaType",
    );
    // Malformed patches: 400; a failing JSON-patch test: 422.
    status(
        h.send(
            "PATCH",
            &format!("{CMS}/keep"),
            "application/merge-patch+json",
            b"{\"data\":",
        ),
        400,
        "BadRequest",
    );
    status(
        h.send(
            "PATCH",
            &format!("{CMS}/keep"),
            "application/json-patch+json",
            br#"{"op":"replace"}"#,
        ),
        400,
        "BadRequest",
    );
    status(
        h.send(
            "PATCH",
            &format!("{CMS}/keep"),
            "application/json-patch+json",
            br#"[{"op":"test","path":"/data/a","value":"not-b"},{"op":"replace","path":"/data/a","value":"c"}]"#,
        ),
        422,
        "Invalid",
    );
    status(
        h.send(
            "PATCH",
            &format!("{CMS}/keep"),
            "application/strategic-merge-patch+json",
            br#"{"data":{"a":1}}"#,
        ),
        400,
        "BadRequest",
    );

    // Stale resourceVersions: 409 on PUT, on a merge patch carrying one, on a JSON patch
    // replacing it, and on a delete precondition.
    let stale = json!({"apiVersion":"v1","kind":"ConfigMap",
        "metadata":{"name":"keep","resourceVersion":"1"},"data":{"a":"stale"}});
    let st = status(
        h.send(
            "PUT",
            &format!("{CMS}/keep"),
            json_ct,
            stale.to_string().as_bytes(),
        ),
        409,
        "Conflict",
    );
    assert!(
        message(&st).contains("the object has been modified"),
        "{st}"
    );
    status(
        h.send(
            "PATCH",
            &format!("{CMS}/keep"),
            "application/merge-patch+json",
            br#"{"metadata":{"resourceVersion":"1"},"data":{"a":"stale"}}"#,
        ),
        409,
        "Conflict",
    );
    status(
        h.send(
            "PATCH",
            &format!("{CMS}/keep"),
            "application/json-patch+json",
            br#"[{"op":"replace","path":"/metadata/resourceVersion","value":"1"},{"op":"replace","path":"/data/a","value":"stale"}]"#,
        ),
        409,
        "Conflict",
    );
    status(
        h.send(
            "DELETE",
            &format!("{CMS}/keep"),
            json_ct,
            br#"{"preconditions":{"resourceVersion":"1"}}"#,
        ),
        409,
        "Conflict",
    );
    // PUT whose body names another object: 400.
    status(
        h.send(
            "PUT",
            &format!("{CMS}/keep"),
            json_ct,
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"other"}}"#,
        ),
        400,
        "BadRequest",
    );
    // Bad delete options: malformed 400, unknown policy 422.
    status(
        h.send(
            "DELETE",
            &format!("{CMS}/keep"),
            json_ct,
            b"{\"propagationPolicy\":",
        ),
        400,
        "BadRequest",
    );
    status(
        h.send(
            "DELETE",
            &format!("{CMS}/keep"),
            json_ct,
            br#"{"propagationPolicy":"Sideways"}"#,
        ),
        422,
        "Invalid",
    );

    // Path traversal in names and namespaces: never reaches another key.
    for p in [
        format!("{CMS}/.."),
        format!("{CMS}/%2E%2E"),
        format!("{CMS}/keep%2F..%2F..%2Fsecrets%2Fkeep-s"),
        format!("{CMS}/%2e"),
        "/api/v1/namespaces/..%2Fkube-system/configmaps".to_string(),
        "/api/v1/namespaces/%2E%2E/configmaps/keep".to_string(),
    ] {
        status(h.get(&p), 400, "BadRequest");
        status(h.send("DELETE", &p, json_ct, b""), 400, "BadRequest");
        let put = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":".."}});
        status(
            h.send("PUT", &p, json_ct, put.to_string().as_bytes()),
            400,
            "BadRequest",
        );
    }
    // `/` between segments is a different path: no such route.
    status(
        h.get(&format!("{CMS}/keep/../../secrets/keep-s")),
        404,
        "NotFound",
    );
    // Unknown query values.
    status(h.get(&format!("{CMS}?limit=abc")), 400, "BadRequest");
    status(
        h.get(&format!("{CMS}?labelSelector=a%20in%20(")),
        400,
        "BadRequest",
    );
    status(
        h.get(&format!("{CMS}?fieldSelector=spec.bogus%3Dx")),
        400,
        "BadRequest",
    );
    status(
        h.get(&format!("{CMS}?watch=true&resourceVersion=abc")),
        400,
        "BadRequest",
    );

    // Nothing changed: the same objects, `keep` at its first resourceVersion and content.
    assert_eq!(names(&h, CMS), vec!["keep".to_string()]);
    assert_eq!(names(&h, SECRETS), vec!["keep-s".to_string()]);
    assert_eq!(
        names(&h, "/apis/apps/v1/namespaces/default/controllerrevisions"),
        Vec::<String>::new()
    );
    assert_eq!(keep_rv(&h), rv0);
    let (_, b) = h.get(&format!("{CMS}/keep"));
    let keep: Value = serde_json::from_str(&b).expect("keep");
    assert_eq!(keep["data"], json!({"a": "b"}));
    assert!(
        keep["metadata"].get("deletionTimestamp").is_none(),
        "{keep}"
    );
}
