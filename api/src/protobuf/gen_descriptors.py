#!/usr/bin/env python3
"""Regenerates descriptors.rs: the protobuf field table of the kinds typed clients POST.

Field numbers and wire types come from upstream's generated.proto files, read here through the
prost bindings of the `k8s-pb` crate (kube-rs); JSON member names and which members are
required come from the `k8s-openapi` crate's serde code. Both crates only need to be in the
local cargo registry (`cargo info k8s-pb`, `k8s-openapi` is a workspace dependency); neither
is linked into kubeshard.

    python3 api/src/protobuf/gen_descriptors.py > api/src/protobuf/descriptors.rs
"""
import glob
import os
import re
import sys

REG = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/"))
PB = next(os.path.join(r, "k8s-pb-0.9.0/src") for r in REG if os.path.isdir(os.path.join(r, "k8s-pb-0.9.0")))
OA_ROOT = next(os.path.join(r, "k8s-openapi-0.29.0/src") for r in REG if os.path.isdir(os.path.join(r, "k8s-openapi-0.29.0")))
# Newest first: k8s-pb 0.9 follows a newer Kubernetes than 1.33.
OA_DIRS = [os.path.join(OA_ROOT, v) for v in ["v1_37", "v1_36", "v1_35", "v1_34", "v1_33"]]

# (module path, type) of every kind a client may POST/PUT as protobuf.
ROOTS = [
    ("api/core/v1", t) for t in ["Namespace", "ConfigMap", "Secret", "Service", "ServiceAccount",
                                  "ResourceQuota", "Pod", "Node", "Endpoints", "Event", "LimitRange",
                                  "PersistentVolumeClaim", "PersistentVolume", "ReplicationController",
                                  "PodTemplate", "Binding"]
] + [("api/apps/v1", t) for t in ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "ControllerRevision"]] \
  + [("api/batch/v1", t) for t in ["Job", "CronJob"]] \
  + [("api/rbac/v1", t) for t in ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]] \
  + [("api/scheduling/v1", "PriorityClass")] \
  + [("api/policy/v1", t) for t in ["PodDisruptionBudget", "Eviction"]] \
  + [("api/authorization/v1", t) for t in ["SelfSubjectAccessReview", "SelfSubjectRulesReview",
                                           "SubjectAccessReview", "LocalSubjectAccessReview"]] \
  + [("api/authentication/v1", t) for t in ["SelfSubjectReview", "TokenRequest", "TokenReview"]] \
  + [("api/coordination/v1", "Lease"), ("api/events/v1", "Event"),
     ("api/discovery/v1", "EndpointSlice"), ("api/certificates/v1", "CertificateSigningRequest"),
     ("api/autoscaling/v1", "Scale"), ("apimachinery/pkg/apis/meta/v1", "DeleteOptions")]

SPECIAL = {
    ("apimachinery/pkg/apis/meta/v1", "Time"): "Time",
    ("apimachinery/pkg/apis/meta/v1", "MicroTime"): "MicroTime",
    ("apimachinery/pkg/apis/meta/v1", "Duration"): "Duration",
    ("apimachinery/pkg/apis/meta/v1", "FieldsV1"): "RawJson",
    ("apimachinery/pkg/api/resource", "Quantity"): "Quantity",
    ("apimachinery/pkg/util/intstr", "IntOrString"): "IntOrString",
    ("apimachinery/pkg/runtime", "RawExtension"): "RawJson",
    ("api/authorization/v1", "ExtraValue"): "StringList",
    ("api/authentication/v1", "ExtraValue"): "StringList",
    ("api/certificates/v1", "ExtraValue"): "StringList",
}

SCALARS = {"string": "Str", "bytes": "Bytes", "bool": "Bool", "int32": "I32", "int64": "I64",
           "double": "F64", "float": "F64", "uint32": "I64", "uint64": "I64"}

pb_cache = {}


def pb_structs(mod):
    if mod in pb_cache:
        return pb_cache[mod]
    src = open(os.path.join(PB, mod, "mod.rs")).read()
    # Join field types that rustfmt wrapped onto their own line(s).
    src = re.sub(r":\n\s+", ": ", src)
    src = re.sub(r"<\n\s+", "<", src)
    src = re.sub(r",\n\s+>", ">", src)
    src = re.sub(r",\n\s+(?=::|super|[A-Z])", ", ", src)
    structs = {}
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", src, re.S):
        fields = []
        for f in re.finditer(r"#\[prost\(([^\]]*)\)\]\s*pub (r#)?(\w+): ([^\n]*),\n", m.group(2) + "\n"):
            fields.append((f.group(1), f.group(3), f.group(4)))
        structs[m.group(1)] = fields
    pb_cache[mod] = structs
    return structs


oa_cache = {}


def oa_fields(mod, ty):
    """snake name -> (json name, required) from k8s-openapi's serde code."""
    f = None
    for base in OA_DIRS:
        d = os.path.join(base, mod)
        if d not in oa_cache:
            idx = {}
            for path in glob.glob(os.path.join(d, "*.rs")):
                for m in re.finditer(r"pub struct (\w+) \{", open(path).read()):
                    idx[m.group(1).lower()] = (path, m.group(1))
            oa_cache[d] = idx
        f = oa_cache[d].get(ty.lower())
        if f:
            break
    if not f:
        return None
    f, real = f
    src = open(f).read()
    body = re.search(r"pub struct %s \{(.*?)\n\}" % real, src, re.S).group(1)
    out = {}
    for m in re.finditer(r'"([A-Za-z0-9$_-]+)" => Field::Key_(\w+),', src):
        out[m.group(2)] = [m.group(1), False]
    for m in re.finditer(r"\n    pub (\w+): ([^\n]*),", body):
        if m.group(1) in out and not m.group(2).startswith("Option<"):
            out[m.group(1)][1] = True
    return out


def resolve(mod, rust_ty):
    """(module, type) of a message type written relative to module `mod`."""
    t = rust_ty.replace("::prost::alloc::string::String", "String")
    for w in ["::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::collections::BTreeMap<String, ", ">"]:
        t = t.replace(w, "")
    t = t.strip().rstrip(",")
    parts = t.split("::")
    base = mod.split("/")
    while parts and parts[0] == "super":
        parts.pop(0)
        base.pop()
    return ("/".join(base + parts[:-1]), parts[-1])


def camel(snake):
    p = snake.split("_")
    return p[0] + "".join(x[:1].upper() + x[1:] for x in p[1:])


messages = {}  # (mod, ty) -> fields
order = []


def visit(mod, ty):
    key = (mod, ty)
    if key in messages or key in SPECIAL:
        return
    structs = pb_structs(mod)
    if ty not in structs:
        sys.exit("missing %s %s" % key)
    messages[key] = None
    order.append(key)
    oa = oa_fields(mod, ty) or {}
    fields = []
    for attr, snake, rust_ty in structs[ty]:
        tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
        squashed = {k.replace("_", ""): v for k, v in oa.items()}
        found = oa.get(snake) or oa.get(snake + "_") or squashed.get(snake.replace("_", ""))
        json, required = found or [camel(snake), False]
        # Go embeds some structs (VolumeSource, ProbeHandler, LocalObjectReference, ...): the
        # proto has a member for them, JSON has their members inline.
        inline = found is None and bool(oa) and "message" in attr and "repeated" not in attr
        repeated = "repeated" in attr
        kind = attr.split(",")[0].strip()
        if kind.startswith("btree_map") or kind.startswith("map"):
            kv = re.search(r'map = "(\w+), (\w+)"', attr).groups()
            if kv[1] == "message":
                target = resolve(mod, rust_ty)
                if target in SPECIAL:
                    k = "MapSpecial(Special::%s)" % SPECIAL[target]
                else:
                    visit(*target)
                    k = "MapMsg(%s)" % "@@%s|%s@@" % target
            else:
                k = "Map%s" % SCALARS[kv[1]]
            fields.append((tag, json, k, False, required))
            continue
        if kind.startswith("bytes"):
            kind = "bytes"
        if kind == "message":
            target = resolve(mod, rust_ty)
            if target in SPECIAL:
                k = "Special(Special::%s)" % SPECIAL[target]
            else:
                visit(*target)
                k = ("Inline(%s)" if inline else "Msg(%s)") % ("@@%s|%s@@" % target)
        else:
            k = "Scalar(Scalar::%s)" % SCALARS[kind]
        fields.append((tag, json, k, repeated, required))
    messages[key] = sorted(fields)


for m, t in ROOTS:
    visit(m, t)

index = {k: i for i, k in enumerate(order)}


def fix(k):
    return re.sub(r"@@(.*?)\|(.*?)@@", lambda m: str(index[(m.group(1), m.group(2))]), k)


print("// @generated by gen_descriptors.py from upstream's generated.proto field numbers; do not edit.")
print("//! The protobuf messages of the kinds typed clients send, as a table: (number, JSON name, kind).")
print("#![allow(clippy::all)]")
print("use super::decode::{Field, Kind::*, Msg, Scalar, Special};")
print()
print("/// Every message, indexed by `Kind::Msg`/`Kind::MapMsg` numbers.")
print("pub(super) static MESSAGES: &[Msg] = &[")
for key in order:
    mod, ty = key
    pkg = mod.replace("/", ".")
    print('    Msg { name: "%s.%s", fields: &[' % (pkg, ty))
    for tag, json, k, rep, req in messages[key]:
        print('        Field { num: %d, json: "%s", kind: %s, repeated: %s, required: %s },' % (
            tag, json, fix(k), "true" if rep else "false", "true" if req else "false"))
    print("    ] },")
print("];")
print()
print("/// Root kinds: (group, kind, message index).")
print("pub(super) static KINDS: &[(&str, &str, usize)] = &[")
for mod, ty in ROOTS:
    parts = mod.split("/")
    if parts[0] == "api":
        group = "" if parts[1] == "core" else parts[1]
        group = {"rbac": "rbac.authorization.k8s.io", "scheduling": "scheduling.k8s.io",
                 "authorization": "authorization.k8s.io", "authentication": "authentication.k8s.io",
                 "coordination": "coordination.k8s.io", "events": "events.k8s.io",
                 "discovery": "discovery.k8s.io", "certificates": "certificates.k8s.io"}.get(group, group)
    else:
        group = "meta.k8s.io"
    print('    ("%s", "%s", %d),' % (group, ty, index[(mod, ty)]))
print("];")
