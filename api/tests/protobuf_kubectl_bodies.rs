//! Request bodies recorded from kubectl 1.33.1 (`tests/fixtures/kubectl-1.33-protobuf/*.pb`:
//! a local listener answered `/version`, `/api`, `/api/v1` and `/apis` and saved each POST body
//! of the command named in the test) decode to the JSON objects those commands mean.

use std::path::PathBuf;

use serde_json::{Value, json};

fn body(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kubectl-1.33-protobuf")
        .join(format!("{name}.pb"));
    let bytes = std::fs::read(&path).expect("fixture");
    api::protobuf::decode_body(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn create_namespace_configmap_secret_serviceaccount() {
    // kubectl create namespace demo
    assert_eq!(
        body("namespace"),
        json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"demo"}})
    );
    // kubectl create configmap cfg --from-literal=a=1 --from-literal=b=two
    assert_eq!(
        body("configmap"),
        json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cfg"},"data":{"a":"1","b":"two"}})
    );
    // kubectl create secret generic s1 --from-literal=password=hunter2
    assert_eq!(
        body("secret"),
        json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"s1"},"data":{"password":"aHVudGVyMg=="}})
    );
    // kubectl create serviceaccount sa1
    assert_eq!(
        body("serviceaccount"),
        json!({"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"sa1"}})
    );
}

#[test]
fn create_workloads() {
    // kubectl create deployment web --image=nginx:1.27 --replicas=0 --port=80
    assert_eq!(
        body("deployment"),
        json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"app":"web"}},
            "spec":{"replicas":0,"selector":{"matchLabels":{"app":"web"}},
                "template":{"metadata":{"labels":{"app":"web"}},
                    "spec":{"containers":[{"name":"nginx","image":"nginx:1.27","ports":[{"containerPort":80}]}]}}}})
    );
    // kubectl create job j1 --image=busybox -- echo hi
    assert_eq!(
        body("job"),
        json!({"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"j1"},
            "spec":{"template":{"spec":{"containers":[{"name":"j1","image":"busybox","command":["echo","hi"]}],
                "restartPolicy":"Never"}}}})
    );
    // kubectl create cronjob c1 --image=busybox --schedule='*/5 * * * *' -- echo hi
    assert_eq!(
        body("cronjob"),
        json!({"apiVersion":"batch/v1","kind":"CronJob","metadata":{"name":"c1"},
            "spec":{"schedule":"*/5 * * * *","jobTemplate":{"metadata":{"name":"c1"},
                "spec":{"template":{"spec":{"containers":[{"name":"c1","image":"busybox","command":["echo","hi"]}],
                    "restartPolicy":"OnFailure"}}}}}})
    );
    // kubectl create service clusterip web --tcp=80:8080
    assert_eq!(
        body("service"),
        json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"web","labels":{"app":"web"}},
            "spec":{"ports":[{"name":"80-8080","protocol":"TCP","port":80,"targetPort":8080}],
                "selector":{"app":"web"},"type":"ClusterIP"}})
    );
}

#[test]
fn create_rbac_and_policy() {
    assert_eq!(
        body("role"),
        json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"r1"},
            "rules":[{"verbs":["get","list"],"apiGroups":[""],"resources":["pods"]}]})
    );
    assert_eq!(
        body("clusterrole"),
        json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"cr1"},
            "rules":[{"verbs":["get"],"apiGroups":[""],"resources":["nodes"]}]})
    );
    assert_eq!(
        body("rolebinding"),
        json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"rb1"},
            "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"r1"},
            "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"alice"},
                        {"kind":"ServiceAccount","name":"sa1","namespace":"default"}]})
    );
    assert_eq!(
        body("clusterrolebinding"),
        json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"crb1"},
            "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"},
            "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"Group","name":"devs"}]})
    );
    // --value=0 survives (no omitempty on PriorityClass.value).
    assert_eq!(
        body("priorityclass"),
        json!({"apiVersion":"scheduling.k8s.io/v1","kind":"PriorityClass","metadata":{"name":"low"},
            "value":0,"description":"low","preemptionPolicy":"PreemptLowerPriority"})
    );
    assert_eq!(
        body("quota"),
        json!({"apiVersion":"v1","kind":"ResourceQuota","metadata":{"name":"q1"},
            "spec":{"hard":{"cpu":"2","pods":"10"}}})
    );
    assert_eq!(
        body("pdb"),
        json!({"apiVersion":"policy/v1","kind":"PodDisruptionBudget","metadata":{"name":"pdb1"},
            "spec":{"minAvailable":1,"selector":{"matchLabels":{"app":"web"}}}})
    );
}

#[test]
fn auth_and_token() {
    // kubectl create token sa1 --duration=1h --audience=api
    assert_eq!(
        body("token"),
        json!({"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","metadata":{},
            "spec":{"audiences":["api"],"expirationSeconds":3600}})
    );
    // kubectl auth can-i create pods
    assert_eq!(
        body("ssar"),
        json!({"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","metadata":{},
            "spec":{"resourceAttributes":{"namespace":"default","verb":"create","resource":"pods"}},
            "status":{"allowed":false}})
    );
    // kubectl auth can-i --list
    assert_eq!(
        body("ssrr"),
        json!({"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectRulesReview","metadata":{},
            "spec":{"namespace":"default"},"status":{"incomplete":false}})
    );
    // kubectl auth whoami
    assert_eq!(
        body("ssr"),
        json!({"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview","metadata":{}})
    );
}
