"""The official Python `kubernetes` client against kubeshard (driven by tests/api_python.rs).

Usage: python_client.py KUBECONFIG. Prints one line per step and `OK` at the end; any
failed expectation raises (non-zero exit). Every watch is bounded by timeout_seconds.
"""

import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "py"


def expect_status(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        assert e.status == code, (e.status, e.body)
        return e
    raise AssertionError(f"expected HTTP {code}")


def names(items):
    return sorted(i.metadata.name for i in items)


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    v1 = client.CoreV1Api()
    apps = client.AppsV1Api()

    ver = client.VersionApi().get_code()
    assert ver.major == "1" and ver.minor.isdigit(), ver
    print("version", ver.git_version)

    v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    assert NS in names(v1.list_namespace().items)

    # CRUD on a ConfigMap.
    cm = v1.create_namespaced_config_map(
        NS, {"metadata": {"name": "c1", "labels": {"app": "a", "tier": "x"}}, "data": {"k": "v"}}
    )
    rv1 = cm.metadata.resource_version
    assert rv1 and cm.metadata.uid
    expect_status(409, v1.create_namespaced_config_map, NS, {"metadata": {"name": "c1"}})
    got = v1.read_namespaced_config_map("c1", NS)
    assert got.data == {"k": "v"}, got.data
    got.data["k"] = "v2"
    upd = v1.replace_namespaced_config_map("c1", NS, got)
    assert upd.data == {"k": "v2"} and upd.metadata.resource_version != rv1
    got.metadata.resource_version = rv1
    got.data["k"] = "stale"
    expect_status(409, v1.replace_namespaced_config_map, "c1", NS, got)
    # A dict body is a strategic merge patch, a list body a JSON patch.
    p = v1.patch_namespaced_config_map("c1", NS, {"data": {"k2": "v3"}})
    assert p.data == {"k": "v2", "k2": "v3"}, p.data
    p = v1.patch_namespaced_config_map("c1", NS, [{"op": "remove", "path": "/data/k2"}])
    assert p.data == {"k": "v2"}, p.data
    same = v1.patch_namespaced_config_map("c1", NS, {"data": {"k": "v2"}})
    assert same.metadata.resource_version == p.metadata.resource_version, "no-op bumped the RV"
    print("crud ok")

    # Selectors.
    v1.create_namespaced_config_map(NS, {"metadata": {"name": "c2", "labels": {"app": "a", "tier": "y"}}})
    v1.create_namespaced_config_map(NS, {"metadata": {"name": "c3", "labels": {"app": "b", "tier": "x"}}})
    sel = lambda **kw: names(v1.list_namespaced_config_map(NS, **kw).items)
    assert sel(label_selector="app=a") == ["c1", "c2"], sel(label_selector="app=a")
    assert sel(label_selector="tier in (x),app!=a") == ["c3"]
    assert sel(label_selector="!tier") == []
    assert sel(field_selector="metadata.name=c2") == ["c2"]
    assert sel(field_selector="metadata.name!=c2", label_selector="tier=x") == ["c1", "c3"]
    page = v1.list_namespaced_config_map(NS, limit=2)
    assert len(page.items) == 2 and page.metadata._continue
    rest = v1.list_namespaced_config_map(NS, limit=2, _continue=page.metadata._continue)
    assert names(page.items + rest.items) == ["c1", "c2", "c3"]
    expect_status(400, v1.list_namespaced_config_map, NS, field_selector="data.k=v")
    # Pods by node and phase (the field selectors the kubelet and describe use).
    for name, node in [("p1", "n1"), ("p2", "n2")]:
        v1.create_namespaced_pod(
            NS,
            {
                "metadata": {"name": name},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            },
        )
    on_n1 = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1").items
    assert names(on_n1) == ["p1"], names(on_n1)
    assert names(v1.list_namespaced_pod(NS, field_selector="status.phase=Pending").items) == ["p1", "p2"]
    print("selectors ok")

    # Deployments and the scale subresource.
    dep = {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx"}]},
            },
        },
    }
    apps.create_namespaced_deployment(NS, dep)
    apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 4}})
    assert apps.read_namespaced_deployment_scale("web", NS).spec.replicas == 4
    d = apps.read_namespaced_deployment("web", NS)
    assert d.spec.template.spec.containers[0].image == "nginx"
    apps.delete_namespaced_deployment("web", NS)
    expect_status(404, apps.read_namespaced_deployment, "web", NS)
    print("deployments ok")

    # Watch from a list's resourceVersion, then resume from an event's resourceVersion.
    rv = v1.list_namespaced_config_map(NS).metadata.resource_version
    v1.create_namespaced_config_map(NS, {"metadata": {"name": "c4"}})
    v1.patch_namespaced_config_map("c4", NS, {"metadata": {"labels": {"w": "1"}}})
    v1.delete_namespaced_config_map("c3", NS)
    w = watch.Watch()
    events = []
    for ev in w.stream(v1.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=10):
        events.append((ev["type"], ev["object"].metadata.name, ev["object"].metadata.resource_version))
        if len(events) == 3:
            w.stop()
    kinds = [(t, n) for t, n, _ in events]
    assert kinds == [("ADDED", "c4"), ("MODIFIED", "c4"), ("DELETED", "c3")], events
    resume_rv = events[1][2]
    w = watch.Watch()
    resumed = []
    for ev in w.stream(v1.list_namespaced_config_map, NS, resource_version=resume_rv, timeout_seconds=3):
        resumed.append((ev["type"], ev["object"].metadata.name))
        if len(resumed) == 1:
            w.stop()
    assert resumed == [("DELETED", "c3")], resumed
    # A label-selected watch with bookmarks allowed sees only its objects.
    w = watch.Watch()
    rv = v1.list_namespaced_config_map(NS).metadata.resource_version
    v1.create_namespaced_config_map(NS, {"metadata": {"name": "c5", "labels": {"sel": "no"}}})
    v1.create_namespaced_config_map(NS, {"metadata": {"name": "c6", "labels": {"sel": "yes"}}})
    seen = []
    for ev in w.stream(
        v1.list_namespaced_config_map,
        NS,
        resource_version=rv,
        label_selector="sel=yes",
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    ):
        if ev["type"] != "BOOKMARK":
            seen.append((ev["type"], ev["object"].metadata.name))
            w.stop()
    assert seen == [("ADDED", "c6")], seen
    print("watch ok")

    # Delete; then 404.
    v1.delete_namespaced_config_map("c1", NS)
    expect_status(404, v1.read_namespaced_config_map, "c1", NS)
    assert sel() == ["c2", "c4", "c5", "c6"], sel()
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
