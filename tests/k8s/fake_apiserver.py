#!/usr/bin/env python3
"""A fake Kubernetes API server for canaryd's Kubernetes tests (issue 21).

A real HTTP server on loopback, standard library only, that behaves like kube-apiserver for
the verbs canaryd, kubectl, the Python `kubernetes` client and the routers of Flagger and
Argo Rollouts use:

- discovery (/version, /api, /apis, /api/v1, /apis/<group>/<version>), legacy (not
  aggregated) documents: clients that ask for aggregated discovery fall back to them;
- list with a resourceVersion, label and field selectors, and watch (watch=1) as a stream of
  newline-delimited JSON events from a given resourceVersion, BOOKMARK events when
  allowWatchBookmarks=true, sendInitialEvents=true (ADDED for everything, then a bookmark
  marked k8s.io/initial-events-end), timeoutSeconds, and an ERROR event with a 410 Expired
  Status for a resourceVersion older than the compacted history;
- create (POST), get, update (PUT; 409 Conflict on a stale resourceVersion), patch with
  application/merge-patch+json, application/json-patch+json and, for built-in types,
  application/strategic-merge-patch+json (applied as a merge patch: lists are replaced, not
  merged by key; CRDs answer 415 like the real server), delete;
- the /status subresource: writes there change only status, writes to the resource never
  change status (types that have the subresource); metadata.generation starts at 1 and is
  bumped only when something outside metadata and status changes; uid, creationTimestamp;
- the defaults the Gateway API v1 CRDs apply (parentRefs group/kind, matches default to
  PathPrefix "/", backendRefs group ""/kind Service/weight 1, ...);
- Status objects for every error (kind Status, reason, code, details).

Test hooks (not Kubernetes): POST /fake/compact (history before now is gone: watches from an
older resourceVersion get 410), POST /fake/drop-watches (every open watch stream is cut),
GET /fake/requests (what was asked, for assertions).

Usage: fake_apiserver.py [--port N] [--bookmark-seconds S]; prints `listening on PORT`.
"""

import argparse
import copy
import datetime
import json
import re
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

GW = "gateway.networking.k8s.io"

# group, version, plural, kind, namespaced, status subresource, short names, CRD
RESOURCES = [
    ("", "v1", "namespaces", "Namespace", False, True, ["ns"], False),
    ("", "v1", "services", "Service", True, True, ["svc"], False),
    ("", "v1", "endpoints", "Endpoints", True, False, ["ep"], False),
    ("", "v1", "configmaps", "ConfigMap", True, False, ["cm"], False),
    ("", "v1", "secrets", "Secret", True, False, [], False),
    ("", "v1", "events", "Event", True, False, ["ev"], False),
    ("", "v1", "pods", "Pod", True, True, ["po"], False),
    ("apps", "v1", "deployments", "Deployment", True, True, ["deploy"], False),
    ("apps", "v1", "replicasets", "ReplicaSet", True, True, ["rs"], False),
    ("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, False, [], False),
    ("networking.k8s.io", "v1", "ingresses", "Ingress", True, True, ["ing"], False),
    ("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False, False, [], False),
    ("coordination.k8s.io", "v1", "leases", "Lease", True, False, [], False),
    (GW, "v1", "gatewayclasses", "GatewayClass", False, True, ["gc"], True),
    (GW, "v1", "gateways", "Gateway", True, True, ["gtw"], True),
    (GW, "v1", "httproutes", "HTTPRoute", True, True, [], True),
]


class Res:
    def __init__(self, group, version, plural, kind, namespaced, status, short, crd):
        self.group, self.version, self.plural, self.kind = group, version, plural, kind
        self.namespaced, self.has_status, self.short, self.crd = namespaced, status, short, crd

    @property
    def api_version(self):
        return f"{self.group}/{self.version}" if self.group else self.version

    def discovery(self):
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        out = [{"name": self.plural, "singularName": self.kind.lower(), "namespaced": self.namespaced,
                "kind": self.kind, "verbs": verbs, "shortNames": self.short}]
        if self.has_status:
            out.append({"name": f"{self.plural}/status", "singularName": "", "namespaced": self.namespaced,
                        "kind": self.kind, "verbs": ["get", "patch", "update"]})
        return out


REGISTRY = {(r[0], r[1], r[2]): Res(*r) for r in RESOURCES}


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_obj(code, reason, message, name=None, kind=None):
    details = {}
    if name is not None:
        details["name"] = name
    if kind is not None:
        details["kind"] = kind
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code}


class ApiError(Exception):
    def __init__(self, code, reason, message, name=None, kind=None):
        super().__init__(message)
        self.body = status_obj(code, reason, message, name, kind)
        self.code = code


# --- Gateway API defaults (the CRDs' OpenAPI defaults, standard channel v1.2) --------------

def default_parent_ref(ref):
    ref.setdefault("group", GW)
    ref.setdefault("kind", "Gateway")


def default_backend_ref(ref):
    ref.setdefault("group", "")
    ref.setdefault("kind", "Service")
    ref.setdefault("weight", 1)


def apply_defaults(res, obj):
    spec = obj.get("spec")
    if not isinstance(spec, dict) or res.group != GW:
        return
    if res.kind == "HTTPRoute":
        for ref in spec.get("parentRefs") or []:
            default_parent_ref(ref)
        rules = spec.get("rules")
        if rules is None:
            spec["rules"] = rules = [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]
        for rule in rules:
            if "matches" not in rule:
                rule["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}}]
            for m in rule["matches"]:
                path = m.setdefault("path", {})
                path.setdefault("type", "PathPrefix")
                path.setdefault("value", "/")
                for h in m.get("headers") or []:
                    h.setdefault("type", "Exact")
                for q in m.get("queryParams") or []:
                    q.setdefault("type", "Exact")
            for ref in rule.get("backendRefs") or []:
                default_backend_ref(ref)
            for f in rule.get("filters") or []:
                mirror = f.get("requestMirror")
                if mirror and "backendRef" in mirror:
                    mirror["backendRef"].setdefault("group", "")
                    mirror["backendRef"].setdefault("kind", "Service")
    elif res.kind == "Gateway":
        for listener in spec.get("listeners") or []:
            allowed = listener.setdefault("allowedRoutes", {})
            allowed.setdefault("namespaces", {"from": "Same"})
    elif res.kind == "GatewayClass":
        pass


def default_status(res, obj):
    """What the API server puts in status at creation for Gateway API kinds."""
    if res.group != GW or "status" in obj:
        return
    pending = {"type": "Accepted", "status": "Unknown", "reason": "Pending",
               "message": "Waiting for controller", "lastTransitionTime": "1970-01-01T00:00:00Z"}
    if res.kind == "GatewayClass":
        obj["status"] = {"conditions": [pending]}
    elif res.kind == "Gateway":
        programmed = dict(pending, type="Programmed")
        obj["status"] = {"conditions": [pending, programmed]}


# --- patches ---------------------------------------------------------------------------------

def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc, ops):
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")

    def parent_of(parts):
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, parts[-1]

    def get(parts):
        cur = doc
        for p in parts:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    for op in ops:
        kind, parts = op.get("op"), pointer(op.get("path", ""))
        try:
            if kind in ("add", "replace"):
                parent, key = parent_of(parts)
                if isinstance(parent, list):
                    if key == "-":
                        parent.append(copy.deepcopy(op["value"]))
                    elif kind == "add":
                        parent.insert(int(key), copy.deepcopy(op["value"]))
                    else:
                        parent[int(key)] = copy.deepcopy(op["value"])
                else:
                    if kind == "replace" and key not in parent:
                        raise KeyError(key)
                    parent[key] = copy.deepcopy(op["value"])
            elif kind == "remove":
                parent, key = parent_of(parts)
                if isinstance(parent, list):
                    del parent[int(key)]
                else:
                    del parent[key]
            elif kind == "test":
                if get(parts) != op.get("value"):
                    raise ApiError(422, "Invalid", f"test operation failed at {op.get('path')}")
            elif kind in ("move", "copy"):
                value = get(pointer(op["from"]))
                if kind == "move":
                    src_parent, src_key = parent_of(pointer(op["from"]))
                    if isinstance(src_parent, list):
                        del src_parent[int(src_key)]
                    else:
                        del src_parent[src_key]
                parent, key = parent_of(parts)
                if isinstance(parent, list):
                    parent.insert(len(parent) if key == "-" else int(key), copy.deepcopy(value))
                else:
                    parent[key] = copy.deepcopy(value)
            else:
                raise ApiError(400, "BadRequest", f"unknown JSON patch operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            if isinstance(e, ApiError):
                raise
            raise ApiError(422, "Invalid", f"JSON patch {kind} {op.get('path')}: path not found")
    return doc


# --- selectors -------------------------------------------------------------------------------

def label_matches(labels, selector):
    if not selector:
        return True
    for term in [t.strip() for t in re.split(r",(?![^()]*\))", selector) if t.strip()]:
        m = re.match(r"^([\w./-]+)\s+(in|notin)\s+\((.*)\)$", term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (op == "in") != (labels.get(key) in values):
                return False
        elif "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_matches(obj, selector):
    if not selector:
        return True
    meta = obj.get("metadata", {})
    fields = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}
    for term in selector.split(","):
        neg = "!=" in term
        k, v = term.split("!=" if neg else "=", 1)
        k = k.rstrip("=")
        if (fields.get(k.strip()) == v.strip()) == neg:
            return False
    return True


# --- the store -------------------------------------------------------------------------------

class Store:
    def __init__(self, bookmark_seconds):
        self.lock = threading.Condition()
        self.rv = 1
        self.objects = {}  # (group, version, plural, ns, name) -> obj
        self.events = []  # (rv, res key, type, obj)
        self.compacted = 0  # watches from a resourceVersion below this get 410
        self.watch_epoch = 0  # bumped to cut every open watch
        self.bookmark_seconds = bookmark_seconds
        self.requests = []

    def bump(self):
        self.rv += 1
        return str(self.rv)

    def record(self, res, kind, obj):
        self.events.append((self.rv, (res.group, res.version, res.plural), kind, copy.deepcopy(obj)))
        self.lock.notify_all()

    def key(self, res, ns, name):
        return (res.group, res.version, res.plural, ns if res.namespaced else "", name)

    def get(self, res, ns, name):
        obj = self.objects.get(self.key(res, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{res.plural}.{res.group} "{name}" not found'.replace(". ", " "),
                           name, res.plural)
        return obj

    def create(self, res, ns, obj):
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["name"] = name
        if not name:
            raise ApiError(422, "Invalid", f"{res.kind}: metadata.name: Required value")
        if res.namespaced:
            if meta.get("namespace", ns) != ns:
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        k = self.key(res, ns, name)
        if k in self.objects:
            raise ApiError(409, "AlreadyExists", f'{res.plural} "{name}" already exists', name, res.plural)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        if res.has_status and res.crd:
            obj.pop("status", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        meta["generation"] = 1
        meta.pop("resourceVersion", None)
        apply_defaults(res, obj)
        default_status(res, obj)
        meta["resourceVersion"] = self.bump()
        self.objects[k] = obj
        self.record(res, "ADDED", obj)
        return obj

    def replace(self, res, ns, name, new, subresource=None):
        old = self.get(res, ns, name)
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the request")
        sent_rv = meta.get("resourceVersion")
        if not sent_rv and subresource is None and res.crd:
            raise ApiError(422, "Invalid", f'{res.kind}.{res.group} "{name}" is invalid: '
                           "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                           name, res.kind)
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict",
                           f'Operation cannot be fulfilled on {res.plural}.{res.group or "core"} "{name}": '
                           "the object has been modified; please apply your changes to the latest version "
                           "and try again", name, res.plural)
        if subresource == "status":
            obj = copy.deepcopy(old)
            if "status" in new:
                obj["status"] = new["status"]
            else:
                obj.pop("status", None)
        else:
            obj = copy.deepcopy(new)
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            keep = old["metadata"]
            m = obj["metadata"]
            for f in ("uid", "creationTimestamp", "generation"):
                m[f] = keep.get(f)
            if res.namespaced:
                m["namespace"] = ns
            if res.has_status:
                if "status" in old:
                    obj["status"] = old["status"]
                else:
                    obj.pop("status", None)
            apply_defaults(res, obj)

            def body(o):
                return {k: v for k, v in o.items() if k not in ("metadata", "status", "apiVersion", "kind")}
            if body(obj) != body(old):
                m["generation"] = (keep.get("generation") or 1) + 1
        if obj == old:
            return old  # a no-op write bumps nothing
        obj["metadata"]["resourceVersion"] = self.bump()
        self.objects[self.key(res, ns, name)] = obj
        self.record(res, "MODIFIED", obj)
        return obj

    def delete(self, res, ns, name):
        obj = self.get(res, ns, name)
        del self.objects[self.key(res, ns, name)]
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self.bump()
        self.record(res, "DELETED", obj)
        return obj

    def list(self, res, ns, q):
        items = []
        for (g, v, p, o_ns, _), obj in sorted(self.objects.items()):
            if (g, v, p) != (res.group, res.version, res.plural):
                continue
            if res.namespaced and ns and o_ns != ns:
                continue
            if not label_matches(obj["metadata"].get("labels") or {}, q.get("labelSelector")):
                continue
            if not field_matches(obj, q.get("fieldSelector")):
                continue
            items.append(copy.deepcopy(obj))
        return items


STORE = None


def parse_path(path):
    """(res, namespace, name, subresource) for a resource path, or None."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    ns = None
    # /namespaces/<ns>/<resource>...; /namespaces and /namespaces/<name>[/status] are the
    # namespaces themselves.
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] != "status":
        ns, rest = rest[1], rest[2:]
    if not rest:
        return None
    res = REGISTRY.get((group, version, rest[0]))
    if res is None:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and (sub != "status" or not res.has_status):
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
    return res, ns, name, sub


def openapi(path):
    """Just enough OpenAPI v3 for kubectl's server-side field validation check: a PATCH
    operation per kind that takes `fieldValidation` (kubectl apply then sends
    ?fieldValidation=Strict instead of validating against /openapi/v2)."""
    gvs = sorted({(r.group, r.version) for r in REGISTRY.values()})

    def gv_path(g, v):
        return f"apis/{g}/{v}" if g else f"api/{v}"
    if path == "/openapi/v3":
        return {"paths": {gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{gv_path(g, v)}?hash=1"}
                          for g, v in gvs}}
    for g, v in gvs:
        if path == f"/openapi/v3/{gv_path(g, v)}":
            paths = {}
            for r in REGISTRY.values():
                if (r.group, r.version) != (g, v):
                    continue
                scope = "/namespaces/{namespace}" if r.namespaced else ""
                paths[f"/{gv_path(g, v)}{scope}/{r.plural}/{{name}}"] = {"patch": {
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {"group": g, "version": v, "kind": r.kind},
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]}}
            return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
                    "paths": paths, "components": {"schemas": {}}}
    return None


def discovery(path):
    if path.startswith("/openapi/v3"):
        return openapi(path)
    if path == "/version":
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-canaryd-fake", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if path == "/apis":
        groups = {}
        for r in REGISTRY.values():
            if r.group:
                groups.setdefault(r.group, []).append(r.version)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in sorted(set(vs))],
             "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
            for g, vs in sorted(groups.items())]}
    m = re.match(r"^/api/v1$|^/apis/([^/]+)/([^/]+)$", path)
    if m:
        group, version = (m.group(1) or ""), (m.group(2) or "v1")
        resources = [d for r in REGISTRY.values() if (r.group, r.version) == (group, version) for d in r.discovery()]
        if not resources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}
    m = re.match(r"^/apis/([^/]+)$", path)
    if m:
        vs = sorted({r.version for r in REGISTRY.values() if r.group == m.group(1)})
        if vs:
            return {"kind": "APIGroup", "apiVersion": "v1", "name": m.group(1),
                    "versions": [{"groupVersion": f"{m.group(1)}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{m.group(1)}/{vs[0]}", "version": vs[0]}}
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "BadRequest", "the body is not JSON (this fake speaks JSON only)")

    def handle_any(self, method):
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with STORE.lock:
            STORE.requests.append({"method": method, "path": url.path, "query": q,
                                   "contentType": self.headers.get("Content-Type"),
                                   "authorization": self.headers.get("Authorization")})
        try:
            if url.path.startswith("/fake/"):
                return self.fake(method, url.path)
            if method == "GET":
                doc = discovery(url.path)
                if doc is not None:
                    return self.send_json(200, doc)
            parsed = parse_path(url.path)
            if parsed is None:
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({url.path})")
            res, ns, name, sub = parsed
            if res.namespaced and name is not None and ns is None:
                raise ApiError(404, "NotFound", f"{res.plural} must be addressed in a namespace")
            if method == "GET" and name is None:
                if q.get("watch") in ("1", "true"):
                    return self.watch(res, ns, q)
                return self.list(res, ns, q)
            with STORE.lock:
                if method == "GET":
                    return self.send_json(200, STORE.get(res, ns, name))
                if method == "POST" and name is None:
                    body = self.read_body()
                    return self.send_json(201, STORE.create(res, ns or "", body or {}))
                if method == "PUT" and name is not None:
                    return self.send_json(200, STORE.replace(res, ns, name, self.read_body() or {}, sub))
                if method == "PATCH" and name is not None:
                    return self.send_json(200, self.patch(res, ns, name, sub))
                if method == "DELETE" and name is not None:
                    self.read_body()  # DeleteOptions (propagation policy...): nothing to do here
                    STORE.delete(res, ns, name)
                    return self.send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                                "status": "Success", "details": {"name": name, "kind": res.plural}})
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")
        except ApiError as e:
            return self.send_json(e.code, e.body)

    def patch(self, res, ns, name, sub):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        old = STORE.get(res, ns, name)
        patch = self.read_body()
        if ctype == "application/merge-patch+json":
            new = merge_patch(old, patch)
        elif ctype == "application/json-patch+json":
            new = json_patch(old, patch)
        elif ctype == "application/strategic-merge-patch+json":
            if res.crd:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format - accepted media types "
                               f"include: application/json-patch+json, application/merge-patch+json, "
                               f"application/apply-patch+yaml")
            new = merge_patch(old, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
        # A patch carries the resourceVersion only when the client asks for the check.
        if isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion") is None:
            new.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
        if sub != "status" and res.has_status:
            new["status"] = copy.deepcopy(old.get("status"))
            if new["status"] is None:
                del new["status"]
        return STORE.replace(res, ns, name, new, sub)

    def list(self, res, ns, q):
        with STORE.lock:
            items = STORE.list(res, ns, q)
            rv = str(STORE.rv)
        self.send_json(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                             "metadata": {"resourceVersion": rv}, "items": items})

    def watch(self, res, ns, q):
        send_initial = q.get("sendInitialEvents") == "true"
        bookmarks = q.get("allowWatchBookmarks") == "true"
        timeout = float(q.get("timeoutSeconds") or 1800)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def emit(event):
            line = (json.dumps(event) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()

        def wanted(key, obj):
            if key != (res.group, res.version, res.plural):
                return False
            if res.namespaced and ns and obj["metadata"].get("namespace") != ns:
                return False
            return label_matches(obj["metadata"].get("labels") or {}, q.get("labelSelector")) and \
                field_matches(obj, q.get("fieldSelector"))

        import time
        deadline = time.monotonic() + timeout
        try:
            with STORE.lock:
                epoch = STORE.watch_epoch
                rv_param = q.get("resourceVersion")
                if send_initial or not rv_param or rv_param == "0":
                    start = STORE.rv
                    initial = STORE.list(res, ns, q)
                else:
                    start, initial = int(rv_param), None
                    if start < STORE.compacted:
                        emit({"type": "ERROR", "object": status_obj(
                            410, "Expired", f"too old resource version: {start} ({STORE.compacted})")})
                        return self.end_chunks()
            if initial is not None and (send_initial or not rv_param or rv_param == "0"):
                for obj in initial:
                    emit({"type": "ADDED", "object": obj})
                if send_initial and bookmarks:
                    emit({"type": "BOOKMARK", "object": {
                        "kind": res.kind, "apiVersion": res.api_version,
                        "metadata": {"resourceVersion": str(start),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}})
            last_bookmark = time.monotonic()
            seen = start
            while True:
                with STORE.lock:
                    pending = [e for e in STORE.events if e[0] > seen]
                    if not pending:
                        STORE.lock.wait(timeout=0.2)
                        pending = [e for e in STORE.events if e[0] > seen]
                    cut = STORE.watch_epoch != epoch
                    current = STORE.rv
                for rv, key, kind, obj in pending:
                    seen = max(seen, rv)
                    if wanted(key, obj):
                        emit({"type": kind, "object": obj})
                if cut or time.monotonic() > deadline:
                    return self.end_chunks()
                if bookmarks and time.monotonic() - last_bookmark >= STORE.bookmark_seconds:
                    seen = max(seen, current)
                    emit({"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version,
                                                         "metadata": {"resourceVersion": str(seen)}}})
                    last_bookmark = time.monotonic()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def end_chunks(self):
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def fake(self, method, path):
        with STORE.lock:
            if method == "POST" and path == "/fake/compact":
                STORE.compacted = STORE.rv + 1
                return self.send_json(200, {"compactedBelow": STORE.compacted})
            if method == "POST" and path == "/fake/drop-watches":
                STORE.watch_epoch += 1
                STORE.lock.notify_all()
                return self.send_json(200, {"epoch": STORE.watch_epoch})
            if method == "GET" and path == "/fake/requests":
                return self.send_json(200, STORE.requests)
        raise ApiError(404, "NotFound", path)

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_DELETE(self):
        self.handle_any("DELETE")


def main():
    global STORE
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bookmark-seconds", type=float, default=1.0)
    a = ap.parse_args()
    STORE = Store(a.bookmark_seconds)
    with STORE.lock:
        STORE.create(REGISTRY[("", "v1", "namespaces")], "", {"metadata": {"name": "default"}})
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
