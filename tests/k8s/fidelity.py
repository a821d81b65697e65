#!/usr/bin/env python3
"""The fake API server (tests/k8s/fake_apiserver.py) is faithful for what canaryd's Kubernetes
tests use: real clients — kubectl and the Python `kubernetes` client — run their verbs against
it and see what a kube-apiserver with the Gateway API CRDs would answer. Run by
tests/kubernetes_fake.rs (cargo test); needs kubectl and `pip install kubernetes`.

Exits non-zero with the failed check on the first disagreement."""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def start_fake():
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_apiserver.py"), "--port", "0",
                          "--bookmark-seconds", "0.3"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("listening on "), line
    return p, int(line.split()[-1])


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}", flush=True)


ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: shop, namespace: default }}
spec:
  parentRefs: [{{ name: gw }}]
  hostnames: ["shop.example.com"]
  rules:
    - backendRefs: [{{ name: shop-stable, port: 80, weight: {stable} }}, {{ name: shop-canary, port: 80 }}]
"""


def main():
    fake, port = start_fake()
    server = f"http://127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="fake-kube-")
    kubeconfig = os.path.join(tmp, "kubeconfig")
    with open(kubeconfig, "w") as f:
        f.write(f"""apiVersion: v1
kind: Config
clusters: [{{ name: fake, cluster: {{ server: "{server}" }} }}]
users: [{{ name: fake, user: {{ token: fake }} }}]
contexts: [{{ name: fake, context: {{ cluster: fake, user: fake, namespace: default }} }}]
current-context: fake
""")
    env = dict(os.environ, KUBECONFIG=kubeconfig, KUBECACHEDIR=os.path.join(tmp, "cache"),
               HOME=tmp)

    def kubectl(*args, ok=True, stdin=None):
        r = subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, input=stdin,
                           timeout=60)
        if ok and r.returncode != 0:
            raise SystemExit(f"FAILED: kubectl {' '.join(args)}: {r.stderr}")
        return r

    def route():
        return json.loads(kubectl("get", "httproute", "shop", "-o", "json").stdout)

    try:
        # --- kubectl ---------------------------------------------------------------------
        kubectl("apply", "-f", "-", stdin=ROUTE.format(stable=90))
        r = route()
        refs = r["spec"]["rules"][0]["backendRefs"]
        check(refs[1] == {"group": "", "kind": "Service", "name": "shop-canary", "port": 80, "weight": 1},
              "kubectl apply: the CRD defaults are applied (backendRef group/kind/weight)")
        check(r["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}],
              "kubectl apply: matches default to PathPrefix /")
        check(r["spec"]["parentRefs"][0]["kind"] == "Gateway", "parentRefs default kind Gateway")
        check(r["metadata"]["generation"] == 1 and r["metadata"]["uid"], "generation 1 and a uid")
        rv = r["metadata"]["resourceVersion"]
        kubectl("apply", "-f", "-", stdin=ROUTE.format(stable=90))
        check(route()["metadata"]["resourceVersion"] == rv,
              "kubectl apply of the same file: no change, same resourceVersion")
        kubectl("apply", "-f", "-", stdin=ROUTE.format(stable=70))
        r = route()
        check(r["metadata"]["generation"] == 2 and r["spec"]["rules"][0]["backendRefs"][0]["weight"] == 70,
              "kubectl apply of a new weight: spec changed, generation 2")
        kubectl("annotate", "httproute", "shop", "team=shop")
        check(route()["metadata"]["generation"] == 2, "an annotation does not bump generation")
        kubectl("patch", "httproute", "shop", "--type=json", "-p",
                '[{"op":"replace","path":"/spec/rules/0/backendRefs/1/weight","value":30}]')
        check(route()["spec"]["rules"][0]["backendRefs"][1]["weight"] == 30, "kubectl patch --type=json")
        kubectl("patch", "httproute", "shop", "--type=merge", "-p", '{"spec":{"hostnames":["x.example.com"]}}')
        check(route()["spec"]["hostnames"] == ["x.example.com"], "kubectl patch --type=merge")
        bad = kubectl("patch", "httproute", "shop", "-p", '{"spec":{"hostnames":["y"]}}', ok=False)
        check(bad.returncode != 0 and ("415" in bad.stderr or "unknown format" in bad.stderr),
              "a strategic merge patch on a CRD is refused (415), as on a real cluster")
        gen = route()["metadata"]["generation"]
        status = {"status": {"parents": [{"parentRef": {"name": "gw"}, "controllerName": "canaryd.io/gateway-controller",
                                          "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                                          "message": "", "observedGeneration": gen,
                                                          "lastTransitionTime": "2026-12-01T00:00:00Z"}]}]}}
        kubectl("patch", "httproute", "shop", "--subresource=status", "--type=merge", "-p", json.dumps(status))
        r = route()
        check(r["status"]["parents"][0]["conditions"][0]["type"] == "Accepted" and r["metadata"]["generation"] == gen,
              "the /status subresource changes status, not generation")
        kubectl("patch", "httproute", "shop", "--type=merge", "-p", '{"status":{"parents":[]}}')
        check(route()["status"]["parents"], "a write to the resource leaves status alone")
        gw = kubectl("apply", "-f", "-", stdin="""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: gw, namespace: default }
spec:
  gatewayClassName: canaryd
  listeners: [{ name: http, port: 80, protocol: HTTP }]
""")
        g = json.loads(kubectl("get", "gateway", "gw", "-o", "json").stdout)
        check(g["status"]["conditions"][0]["reason"] == "Pending" and
              g["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"] == "Same",
              "a Gateway gets the pending status and allowedRoutes default")
        del gw

        watcher = subprocess.Popen(["kubectl", "get", "httproutes", "-w", "--output-watch-events"],
                                   env=env, stdout=subprocess.PIPE, text=True)
        watcher.stdout.readline()  # the column titles
        first = watcher.stdout.readline()
        kubectl("patch", "httproute", "shop", "--type=merge", "-p", '{"metadata":{"labels":{"a":"b"}}}')
        second = watcher.stdout.readline()
        watcher.kill()
        check(first.startswith("ADDED") and second.startswith("MODIFIED"),
              f"kubectl get -w sees the route, then its change ({first.strip()!r}, {second.strip()!r})")

        # --- the Python client -----------------------------------------------------------
        from kubernetes import client, config, watch
        config.load_kube_config(config_file=kubeconfig)
        co = client.CustomObjectsApi()
        core = client.CoreV1Api()
        args = ("gateway.networking.k8s.io", "v1", "default", "httproutes")
        listed = co.list_namespaced_custom_object(*args)
        check([i["metadata"]["name"] for i in listed["items"]] == ["shop"] and listed["metadata"]["resourceVersion"],
              "python: list with a resourceVersion")
        obj = co.get_namespaced_custom_object(*args, "shop")
        stale = json.loads(json.dumps(obj))
        obj["spec"]["rules"][0]["backendRefs"][0]["weight"] = 50
        co.replace_namespaced_custom_object(*args, "shop", obj)
        refused = None
        try:
            co.replace_namespaced_custom_object(*args, "shop", stale)
        except client.ApiException as e:
            refused = e
        check(refused is not None and refused.status == 409 and json.loads(refused.body)["reason"] == "Conflict",
              "python: a stale update is refused with 409 Conflict")
        co.patch_namespaced_custom_object(*args, "shop", {"spec": {"hostnames": ["z.example.com"]}})
        check(co.get_namespaced_custom_object(*args, "shop")["spec"]["hostnames"] == ["z.example.com"],
              "python: merge patch")
        co.patch_namespaced_custom_object_status(*args, "shop", {"status": {"parents": []}})
        check(co.get_namespaced_custom_object(*args, "shop")["status"]["parents"] == [],
              "python: status patch through /status")

        core.create_namespaced_service("default", client.V1Service(
            metadata=client.V1ObjectMeta(name="shop-stable"),
            spec=client.V1ServiceSpec(selector={"app": "shop"}, ports=[client.V1ServicePort(port=80)])))
        check(core.read_namespaced_service("shop-stable", "default").spec.selector == {"app": "shop"},
              "python: core Service create and read")
        client.DiscoveryV1Api().create_namespaced_endpoint_slice("default", {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "shop-stable-abc", "labels": {"kubernetes.io/service-name": "shop-stable"}},
            "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["127.0.0.2"], "conditions": {"ready": True}}]})
        slices = client.DiscoveryV1Api().list_namespaced_endpoint_slice(
            "default", label_selector="kubernetes.io/service-name=shop-stable")
        check(len(slices.items) == 1 and slices.items[0].endpoints[0].addresses == ["127.0.0.2"],
              "python: EndpointSlices by label selector")

        # Watch from a resourceVersion: the changes after it, and bookmarks.
        rv = co.list_namespaced_custom_object(*args)["metadata"]["resourceVersion"]
        events = []

        def watch_from(version, out, timeout=5):
            w = watch.Watch()
            try:
                for ev in w.stream(co.list_namespaced_custom_object, *args, resource_version=version,
                                   allow_watch_bookmarks=True, timeout_seconds=timeout):
                    out.append(ev)
                    if len([e for e in out if e["type"] == "BOOKMARK"]) >= 1 and \
                            any(e["type"] == "MODIFIED" for e in out):
                        w.stop()
            except client.ApiException as e:
                out.append({"type": "EXCEPTION", "status": e.status})

        t = threading.Thread(target=watch_from, args=(rv, events))
        t.start()
        time.sleep(0.3)
        co.patch_namespaced_custom_object(*args, "shop", {"metadata": {"labels": {"step": "2"}}})
        t.join(10)
        kinds = [e["type"] for e in events]
        check("MODIFIED" in kinds and "BOOKMARK" in kinds,
              f"python: watch from a resourceVersion sees the change and bookmarks ({kinds})")

        # History compacted: a watch from before it is told 410 Expired.
        urllib.request.urlopen(urllib.request.Request(f"{server}/fake/compact", method="POST")).read()
        old = []
        watch_from(rv, old, timeout=3)
        check(any(e.get("status") == 410 or (e["type"] == "ERROR" and e["raw_object"]["code"] == 410)
                  for e in old), f"python: a watch from a compacted resourceVersion gets 410 ({old})")

        # Dropped mid-stream: the stream ends (clients then watch again).
        cut = []
        t = threading.Thread(target=watch_from, args=(co.list_namespaced_custom_object(*args)["metadata"]["resourceVersion"], cut, 30))
        t.start()
        time.sleep(0.5)
        started = time.monotonic()
        urllib.request.urlopen(urllib.request.Request(f"{server}/fake/drop-watches", method="POST")).read()
        t.join(10)
        check(not t.is_alive() and time.monotonic() - started < 10, "a dropped watch ends the client's stream")

        kubectl("delete", "httproute", "shop")
        check(kubectl("get", "httproute", "shop", ok=False).returncode != 0, "kubectl delete")
        print("fake API server: kubectl and the Python client agree", flush=True)
    finally:
        fake.kill()


if __name__ == "__main__":
    main()
