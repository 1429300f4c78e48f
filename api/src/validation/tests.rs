use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};

use super::*;
use crate::openapi::OpenApi;
use crate::registry::Registry;

fn schemas() -> &'static Arc<SchemaSet> {
    static API: OnceLock<OpenApi> = OnceLock::new();
    API.get_or_init(|| OpenApi::build(&Registry::builtin()))
        .schemas()
}

fn def(group: &str, plural: &str) -> ResourceDef {
    let version = if group == "autoscaling" { "v2" } else { "v1" };
    Registry::builtin()
        .lookup(group, version, plural)
        .map(|d| (**d).clone())
        .unwrap_or_else(|| panic!("{plural}"))
}

fn decode(d: &ResourceDef, body: &str, mode: FieldValidation) -> Result<Decoded, DecodeError> {
    decode_json(body.as_bytes(), d, schemas(), mode)
}

/// Runs the whole create pipeline the server runs.
fn create(d: &ResourceDef, mut obj: Value) -> Result<Value, Invalid> {
    if d.namespaced && obj.pointer("/metadata/namespace").is_none() {
        obj["metadata"]["namespace"] = json!("default");
    }
    obj["metadata"]["uid"] = json!("uid-1");
    default_object(d, schemas(), &mut obj);
    prepare_for_create(d, &mut obj);
    validate_create(d, &obj).map(|()| obj)
}

fn causes(e: &Invalid) -> Vec<(String, String)> {
    e.causes
        .iter()
        .map(|c| (c.field.clone(), c.reason().to_owned()))
        .collect()
}

#[test]
fn field_validation_parse() {
    assert_eq!(FieldValidation::parse(None), Ok(FieldValidation::Warn));
    assert_eq!(
        FieldValidation::parse(Some("Strict")),
        Ok(FieldValidation::Strict)
    );
    assert_eq!(
        FieldValidation::parse(Some("Ignore")),
        Ok(FieldValidation::Ignore)
    );
    assert!(matches!(
        FieldValidation::parse(Some("strict")),
        Err(DecodeError::BadFieldValidation(_))
    ));
}

#[test]
fn strict_decoding_unknown_and_duplicate_fields() {
    let d = def("apps", "deployments");
    let body = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"a":"b"}},
        "spec":{"replicas":1,"foo":1,"replicas":2,"template":{"spec":{"containers":[{"name":"c","image":"i","bogus":true}]}}}}"#;
    let err = decode(&d, body, FieldValidation::Strict).err();
    assert_eq!(err.map(|e| e.to_string()), Some(
        "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.foo\", unknown field \"spec.template.spec.containers[0].bogus\", duplicate field \"spec.replicas\"".to_owned()));
    let warn = decode(&d, body, FieldValidation::Warn).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(warn.warnings.len(), 3);
    assert!(
        warn.warnings
            .contains(&"unknown field \"spec.foo\"".to_owned())
    );
    assert!(
        warn.object["spec"].get("foo").is_none(),
        "unknown fields are pruned"
    );
    assert_eq!(warn.object["spec"]["replicas"], 2, "last duplicate wins");
    let ignore = decode(&d, body, FieldValidation::Ignore).unwrap_or_else(|e| panic!("{e}"));
    assert!(ignore.warnings.is_empty());
    assert!(
        ignore.object["spec"]["template"]["spec"]["containers"][0]
            .get("bogus")
            .is_none()
    );
    // known nested and free-form fields are kept
    assert_eq!(ignore.object["metadata"]["labels"]["a"], "b");
    let ok = decode(
        &d,
        r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"selector":{"matchLabels":{"a":"b"}}}}"#,
        FieldValidation::Strict,
    );
    assert!(ok.is_ok_and(|d| d.warnings.is_empty()));
}

#[test]
fn unknown_metadata_and_top_level_fields() {
    let d = def("", "configmaps");
    let e = decode(
        &d,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","nme":"x"},"dta":{}}"#,
        FieldValidation::Strict,
    )
    .err();
    let Some(DecodeError::Strict { errors, kind, .. }) = e else {
        panic!("{e:?}")
    };
    assert_eq!(kind, "ConfigMap");
    assert_eq!(
        errors,
        vec![
            "unknown field \"dta\"".to_owned(),
            "unknown field \"metadata.nme\"".to_owned()
        ]
    );
}

#[test]
fn type_errors_and_malformed_bodies() {
    let d = def("apps", "deployments");
    let e = decode(
        &d,
        r#"{"metadata":{"name":"a"},"spec":{"replicas":"three"}}"#,
        FieldValidation::Ignore,
    )
    .err();
    assert_eq!(e.map(|e| e.to_string()), Some("Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32".to_owned()));
    assert!(matches!(
        decode(&d, "{not json", FieldValidation::Strict),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode(&d, "[1,2]", FieldValidation::Strict),
        Err(DecodeError::Malformed(_))
    ));
    // int-or-string and quantities accept both
    let ok = decode(
        &d,
        r#"{"metadata":{"name":"a"},"spec":{"strategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":"10%"}},
        "template":{"spec":{"containers":[{"name":"c","image":"i","resources":{"limits":{"cpu":1,"memory":"1Gi"}}}]}}}}"#,
        FieldValidation::Strict,
    );
    assert!(ok.is_ok(), "{ok:?}");
    let pods = def("", "pods");
    assert!(matches!(
        decode(
            &pods,
            r#"{"metadata":{"name":"a"},"spec":{"containers":{"name":"x"}}}"#,
            FieldValidation::Strict
        ),
        Err(DecodeError::Type { .. })
    ));
}

#[test]
fn pod_defaults_users_see() {
    let d = def("", "pods");
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}], "livenessProbe": {"httpGet": {"port": 80}}},
        {"name": "b", "image": "nginx:1.27"},
        {"name": "c", "image": "registry.local:5000/app@sha256:abcd"}]}});
    let out = create(&d, pod).unwrap_or_else(|e| panic!("{e}"));
    let spec = &out["spec"];
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert_eq!(spec["schedulerName"], "default-scheduler");
    assert_eq!(spec["securityContext"], json!({}));
    assert_eq!(spec["enableServiceLinks"], true);
    assert_eq!(spec["serviceAccountName"], "default");
    assert!(
        spec.get("priority").is_none(),
        "priority is Priority admission's to resolve, not defaulting's"
    );
    assert_eq!(spec["tolerations"].as_array().map(Vec::len), Some(2));
    let c = &spec["containers"];
    assert_eq!(c[0]["imagePullPolicy"], "Always");
    assert_eq!(c[1]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c[2]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c[0]["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c[0]["terminationMessagePolicy"], "File");
    assert_eq!(c[0]["ports"][0]["protocol"], "TCP");
    assert_eq!(c[0]["livenessProbe"]["periodSeconds"], 10);
    assert_eq!(c[0]["livenessProbe"]["httpGet"]["scheme"], "HTTP");
    assert_eq!(
        out["status"],
        json!({"phase": "Pending", "qosClass": "BestEffort"})
    );
    // defaulting is idempotent
    let mut again = out.clone();
    default_object(&d, schemas(), &mut again);
    assert_eq!(again, out);
}

#[test]
fn image_pull_policy_by_tag() {
    for (img, want) in [
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("nginx:1.2", "IfNotPresent"),
        ("localhost:5000/x", "Always"),
        ("localhost:5000/x:v1", "IfNotPresent"),
        ("x@sha256:00", "IfNotPresent"),
    ] {
        assert_eq!(image_pull_policy(img), want, "{img}");
    }
}

#[test]
fn workload_and_service_defaults() {
    let d = def("apps", "deployments");
    let dep = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
    let out = create(&d, dep).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["spec"]["replicas"], 1);
    assert_eq!(out["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(out["spec"]["progressDeadlineSeconds"], 600);
    assert_eq!(
        out["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
    );
    assert_eq!(out["spec"]["template"]["spec"]["restartPolicy"], "Always");

    let svc = create(&def("", "services"), json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["sessionAffinity"], "None");
    assert_eq!(
        svc["spec"]["ports"][0],
        json!({"port": 80, "protocol": "TCP", "targetPort": 80})
    );

    let job = create(
        &def("batch", "jobs"),
        json!({"metadata": {"name": "pi"}, "spec": {"template": {"spec": {"restartPolicy": "Never",
        "containers": [{"name": "pi", "image": "perl"}]}}}}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(job["spec"]["completions"], 1);
    assert_eq!(job["spec"]["parallelism"], 1);
    assert_eq!(job["spec"]["backoffLimit"], 6);
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        "uid-1"
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"]["job-name"],
        "pi"
    );

    let ns = create(
        &def("", "namespaces"),
        json!({"metadata": {"name": "demo"}}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "demo"
    );
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(ns["status"]["phase"], "Active");
}

#[test]
fn secret_string_data_becomes_base64_data() {
    let d = def("", "secrets");
    let out = create(&d, json!({"metadata": {"name": "s"}, "data": {"a": "b2xk"}, "stringData": {"a": "new", "b": "hello"}}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["data"], json!({"a": "bmV3", "b": "aGVsbG8="}));
    assert!(out.get("stringData").is_none());
    assert_eq!(out["type"], "Opaque");
    let mut upd = json!({"metadata": {"name": "s"}, "stringData": {"c": "x"}});
    prepare_for_update(&d, &mut upd);
    assert_eq!(upd["data"]["c"], "eA==");
}

#[test]
fn name_validation_per_kind() {
    let cases: &[(&str, &str, &str, bool)] = &[
        ("", "configmaps", "good.name-1", true),
        ("", "configmaps", "Bad_Name", false),
        ("", "namespaces", "has.dot", false),
        ("", "namespaces", "ok-ns", true),
        ("", "services", "1abc", false),
        ("", "services", "abc-1", true),
        ("", "pods", "a.b.c", true),
        (
            "rbac.authorization.k8s.io",
            "clusterroles",
            "system:admin",
            true,
        ),
        ("rbac.authorization.k8s.io", "clusterroles", "a/b", false),
        ("", "pods", &"x".repeat(254), false),
    ];
    for (g, plural, name, ok) in cases {
        let d = def(g, plural);
        let mut obj = json!({"metadata": {"name": name}});
        if d.namespaced {
            obj["metadata"]["namespace"] = json!("default");
        }
        let errs: Vec<FieldError> = {
            let mut e = Vec::new();
            rules::object_meta(&d, &obj, &mut e);
            e
        };
        assert_eq!(errs.is_empty(), *ok, "{plural} {name}: {errs:?}");
    }
}

#[test]
fn invalid_errors_have_upstream_shape() {
    let d = def("", "pods");
    let e = create(
        &d,
        json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c"}]}}),
    )
    .err();
    let Some(e) = e else { panic!("must fail") };
    assert_eq!(
        causes(&e),
        vec![
            ("metadata.name".to_owned(), "FieldValueInvalid".to_owned()),
            (
                "spec.containers[0].image".to_owned(),
                "FieldValueRequired".to_owned()
            )
        ]
    );
    assert!(e.message().starts_with("Pod \"Bad_Name\" is invalid: [metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"));
    assert!(
        e.message()
            .ends_with(", spec.containers[0].image: Required value]")
    );
    let cj = e.causes_json();
    assert_eq!(
        cj[1],
        json!({"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers[0].image"})
    );

    let e = create(&def("apps", "deployments"), json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})).err();
    let Some(e) = e else { panic!("must fail") };
    assert_eq!(
        causes(&e),
        vec![(
            "spec.template.metadata.labels".to_owned(),
            "FieldValueInvalid".to_owned()
        )]
    );
    assert!(e.message().starts_with(
        "Deployment.apps \"web\" is invalid: spec.template.metadata.labels: Invalid value: "
    ));
    assert_eq!(e.group, "apps");
}

#[test]
#[allow(clippy::type_complexity)]
fn kind_rules_table() {
    // (group, plural, object, expected (field, reason) causes)
    let cases: Vec<(&str, &str, Value, Vec<(&str, &str)>)> = vec![
        (
            "",
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
            vec![("spec.containers", "FieldValueRequired")],
        ),
        (
            "",
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": "i"}, {"name": "a", "image": "i", "ports": [{"containerPort": 70000}]}]}}),
            vec![
                ("spec.containers[1].name", "FieldValueDuplicate"),
                (
                    "spec.containers[1].ports[0].containerPort",
                    "FieldValueInvalid",
                ),
                ("spec.restartPolicy", "FieldValueNotSupported"),
            ],
        ),
        (
            "",
            "services",
            json!({"metadata": {"name": "s"}, "spec": {"type": "Weird"}}),
            vec![
                ("spec.type", "FieldValueNotSupported"),
                ("spec.ports", "FieldValueRequired"),
            ],
        ),
        (
            "",
            "services",
            json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}, {"port": 81}]}}),
            vec![
                ("spec.ports[0].name", "FieldValueRequired"),
                ("spec.ports[1].name", "FieldValueRequired"),
            ],
        ),
        (
            "",
            "services",
            json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "None"}}),
            vec![],
        ),
        (
            "",
            "configmaps",
            json!({"metadata": {"name": "c"}, "data": {"bad key": "x", "ok": "y"}}),
            vec![("data[bad key]", "FieldValueInvalid")],
        ),
        (
            "apps",
            "deployments",
            json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            vec![("spec.selector", "FieldValueRequired")],
        ),
        (
            "batch",
            "jobs",
            json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}}),
            vec![("spec.template.spec.restartPolicy", "FieldValueNotSupported")],
        ),
        (
            "batch",
            "cronjobs",
            json!({"metadata": {"name": "c"}, "spec": {"schedule": "* *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}]}}}}}}),
            vec![("spec.schedule", "FieldValueInvalid")],
        ),
        (
            "",
            "namespaces",
            json!({"metadata": {"name": "n", "namespace": "x"}}),
            vec![("metadata.namespace", "FieldValueForbidden")],
        ),
        (
            "",
            "configmaps",
            json!({"metadata": {"generateName": "web-"}}),
            vec![],
        ),
        (
            "",
            "configmaps",
            json!({"metadata": {}}),
            vec![("metadata.name", "FieldValueRequired")],
        ),
        (
            "",
            "configmaps",
            json!({"metadata": {"name": "c", "labels": {"bad key": "v", "k": "bad value!"}}}),
            vec![
                ("metadata.labels", "FieldValueInvalid"),
                ("metadata.labels", "FieldValueInvalid"),
            ],
        ),
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            json!({"metadata": {"name": "wrong"}, "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"}, "versions": [{"name": "v1", "served": true, "storage": true}]}}),
            vec![("metadata.name", "FieldValueInvalid")],
        ),
        (
            "autoscaling",
            "horizontalpodautoscalers",
            json!({"metadata": {"name": "h"}, "spec": {"maxReplicas": 0, "scaleTargetRef": {"kind": "Deployment", "name": "w"}}}),
            vec![("spec.maxReplicas", "FieldValueInvalid")],
        ),
    ];
    for (g, plural, obj, want) in cases {
        let d = def(g, plural);
        let got = match create(&d, obj.clone()) {
            Ok(_) => vec![],
            Err(e) => causes(&e),
        };
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(f, r)| ((*f).to_owned(), (*r).to_owned()))
            .collect();
        assert_eq!(got, want, "{plural}: {obj}");
    }
}

#[test]
fn update_rules() {
    let d = def("apps", "deployments");
    let old = json!({"metadata": {"name": "d", "namespace": "n"}, "spec": {"selector": {"matchLabels": {"a": "1"}},
        "template": {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}});
    let mut new = old.clone();
    new["spec"]["selector"] = json!({"matchLabels": {"a": "1", "b": "2"}});
    let e = validate_update(&d, &new, &old).err();
    assert_eq!(
        e.map(|e| causes(&e)),
        Some(vec![(
            "spec.selector".to_owned(),
            "FieldValueInvalid".to_owned()
        )])
    );
    let mut ok = old.clone();
    ok["spec"]["template"]["spec"]["containers"][0]["image"] = json!("j");
    assert!(validate_update(&d, &ok, &old).is_ok());

    let p = def("", "pods");
    let old = json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Always"}});
    let mut img = old.clone();
    img["spec"]["containers"][0]["image"] = json!("j");
    assert!(validate_update(&p, &img, &old).is_ok());
    let mut bad = old.clone();
    bad["spec"]["restartPolicy"] = json!("Never");
    assert_eq!(
        validate_update(&p, &bad, &old).err().map(|e| causes(&e)),
        Some(vec![("spec".to_owned(), "FieldValueForbidden".to_owned())])
    );

    let s = def("", "configmaps");
    let old =
        json!({"metadata": {"name": "c", "namespace": "n"}, "immutable": true, "data": {"a": "1"}});
    let mut new = old.clone();
    new["data"]["a"] = json!("2");
    assert!(validate_update(&s, &new, &old).is_err());
}

fn widget_registry() -> Registry {
    let mut r = Registry::builtin();
    let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object",
            "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
              "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}}]}});
    assert!(r.apply_crd(&crd).is_ok());
    r
}

#[test]
fn custom_resources_against_their_schema() {
    let r = widget_registry();
    let Some(d) = r
        .lookup("example.com", "v1", "widgets")
        .map(|d| (**d).clone())
    else {
        panic!("widgets")
    };
    let body = r#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w"},"spec":{"size":3,"foo":1,"extra":{"any":{"thing":1}}}}"#;
    let e = decode(&d, body, FieldValidation::Strict).err();
    assert_eq!(e.map(|e| e.to_string()), Some("Widget in version \"v1\" cannot be handled as a Widget: strict decoding error: unknown field \"spec.foo\"".to_owned()));
    let dec = decode(&d, body, FieldValidation::Ignore).unwrap_or_else(|e| panic!("{e}"));
    assert!(dec.object["spec"].get("foo").is_none(), "pruned");
    assert_eq!(dec.object["spec"]["extra"]["any"]["thing"], 1, "preserved");
    let out = create(&d, dec.object).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["spec"]["color"], "red", "schema default applied");

    let bad = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "Bad/Name"},
        "spec": {"size": "big", "color": "pink", "tags": ["a", "b", "c"]}});
    let e = create(&d, bad).err();
    let Some(e) = e else { panic!("must fail") };
    assert_eq!(
        causes(&e),
        vec![
            ("metadata.name".to_owned(), "FieldValueInvalid".to_owned()),
            ("spec.color".to_owned(), "FieldValueNotSupported".to_owned()),
            ("spec.size".to_owned(), "FieldValueInvalid".to_owned()),
            ("spec.tags".to_owned(), "FieldValueTooMany".to_owned()),
        ]
    );
    assert!(
        e.message()
            .starts_with("Widget.example.com \"Bad/Name\" is invalid: [")
    );
    let missing = create(&d, json!({"metadata": {"name": "w"}, "spec": {"size": 11}}))
        .err()
        .map(|e| causes(&e));
    assert_eq!(
        missing,
        Some(vec![(
            "spec.size".to_owned(),
            "FieldValueInvalid".to_owned()
        )])
    );
    let req = create(&d, json!({"metadata": {"name": "w"}, "spec": {}}))
        .err()
        .map(|e| causes(&e));
    assert_eq!(
        req,
        Some(vec![(
            "spec.size".to_owned(),
            "FieldValueRequired".to_owned()
        )])
    );
}

#[test]
fn qos_classes() {
    assert_eq!(pod_qos(&json!({"containers": [{}]})), "BestEffort");
    assert_eq!(
        pod_qos(
            &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}]})
        ),
        "Guaranteed"
    );
    assert_eq!(
        pod_qos(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
        "Burstable"
    );
    // limits only: requests default to them, so the pod is Guaranteed
    let out = create(
        &def("", "pods"),
        json!({"metadata": {"name": "g"}, "spec": {"containers": [{"name": "c", "image": "i",
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}),
    );
    assert_eq!(
        out.map(|p| p["status"]["qosClass"].clone()).ok(),
        Some(json!("Guaranteed"))
    );
}

#[test]
fn secret_data_must_be_base64() {
    let d = def("", "secrets");
    let e = decode(
        &d,
        r#"{"metadata":{"name":"s"},"data":{"a":"not base64!"}}"#,
        FieldValidation::Strict,
    )
    .err();
    assert_eq!(e.map(|e| e.to_string()), Some("Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 3".to_owned()));
    assert!(
        decode(
            &d,
            r#"{"metadata":{"name":"s"},"data":{"a":"aGVsbG8="},"stringData":{"b":"plain text"}}"#,
            FieldValidation::Strict
        )
        .is_ok()
    );
}
