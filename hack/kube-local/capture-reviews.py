#!/usr/bin/env python3
"""Capture the AdmissionReview bodies that a real kube-apiserver sends, and save them as test fixtures.

A throwaway HTTPS webhook on 127.0.0.1 (stdlib http.server + ssl, certificates made with openssl) that allows
everything and records each request: path with query string, JSON body, and for a NetworkPolicy DELETE the state of
its namespace at that moment. It registers a ValidatingWebhookConfiguration (networkpolicies CREATE/UPDATE/DELETE,
namespaces UPDATE) and a MutatingWebhookConfiguration (namespaces CREATE), drives kubectl through the SCENARIO below,
checks that every step produced the reviews it should, and writes them pretty-printed to --out, one file each.

Rerun (about a minute; needs hack/kube-local/provision.sh once):

    hack/kube-local/up.sh && source "$DDG_CACHE/kube-local/run/env"
    python3 hack/kube-local/capture-reviews.py --out tests/fixtures/apiserver-1.37
    hack/kube-local/down.sh

The raw captures, the webhook's private key and an index (index.json, with the facts tests/fixtures/apiserver-1.37
/README.md reports) stay in --work (default: a new directory under /tmp), outside the repository.
Needs only python3, openssl and the kubectl that provision.sh built. Exits non-zero if a step surprises it.
"""

import argparse
import base64
import http.server
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(os.environ.get("DDG_CACHE", os.path.expanduser("~/.cache/default-deny-guard")), "kube-local")
NS = "ddg-fixtures"  # most steps
NS_COLL = "ddg-collection"  # the two kinds of "delete them all"
NS_DOWN = "ddg-teardown"  # a namespace deleted with a NetworkPolicy inside


def np(name, ns=NS, extra_meta="", spec="  podSelector: {}\n  ingress: []\n", generate=False):
    key = "generateName" if generate else "name"
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  {key}: {name}\n"
            f"  namespace: {ns}\n{extra_meta}spec:\n{spec}")


EXC = "  annotations:\n    default-deny-guard.io/exception: \"fixture capture\"\n"
EGRESS_TOO = "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: []\n"

# (fixture names, kubectl arguments, stdin). Each expected review is (file name or None to not save, operation,
# resource); None for the whole list accepts whatever comes (clean-up).
SCENARIO = [
    ([("namespace-create", "CREATE", "namespaces")], ["create", "namespace", NS], None),
    ([("namespace-create-generatename", "CREATE", "namespaces")], ["create", "-f", "-"],
     "apiVersion: v1\nkind: Namespace\nmetadata:\n  generateName: ddg-gen-\n"),
    ([("namespace-create-apply-labelled", "CREATE", "namespaces")], ["apply", "-f", "-"],
     "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ddg-labelled\n  labels:\n    default-deny: enabled\n"),
    ([("namespace-update-add-label", "UPDATE", "namespaces")],
     ["label", "namespace", NS, "default-deny=enabled"], None),
    ([("namespace-update-remove-label", "UPDATE", "namespaces")], ["label", "namespace", NS, "default-deny-"], None),
    ([("networkpolicy-create", "CREATE", "networkpolicies")], ["apply", "-f", "-"], np("default-deny-all")),
    ([("networkpolicy-update-apply-annotation", "UPDATE", "networkpolicies")], ["apply", "-f", "-"],
     np("default-deny-all", extra_meta=EXC)),
    ([("networkpolicy-update-spec-allow-all", "UPDATE", "networkpolicies")],
     ["patch", "networkpolicy", "default-deny-all", "-n", NS, "--type=merge", "-p", '{"spec":{"ingress":[{}]}}'], None),
    ([("networkpolicy-create-dryrun", "CREATE", "networkpolicies")], ["apply", "--dry-run=server", "-f", "-"],
     np("default-deny-dryrun")),
    ([("networkpolicy-create-server-side", "CREATE", "networkpolicies")], ["apply", "--server-side", "-f", "-"],
     np("default-deny-ssa")),
    ([("networkpolicy-update-server-side-spec", "UPDATE", "networkpolicies")], ["apply", "--server-side", "-f", "-"],
     np("default-deny-ssa", spec=EGRESS_TOO)),
    ([("networkpolicy-create-generatename", "CREATE", "networkpolicies")], ["create", "-f", "-"],
     np("default-deny-", generate=True)),
    ([("networkpolicy-delete-dryrun", "DELETE", "networkpolicies")],
     ["delete", "networkpolicy", "default-deny-ssa", "-n", NS, "--dry-run=server"], None),
    ([("networkpolicy-delete", "DELETE", "networkpolicies")],
     ["delete", "networkpolicy", "default-deny-all", "-n", NS], None),
    # Two policies, removed by `kubectl delete --all`, then two more, removed by a real DELETE on the collection.
    ([(None, "CREATE", "namespaces")], ["create", "namespace", NS_COLL], None),
    ([(None, "CREATE", "networkpolicies")] * 2, ["apply", "-f", "-"],
     np("deny-a", NS_COLL) + "---\n" + np("deny-b", NS_COLL)),
    ([("networkpolicy-delete-all-kubectl", "DELETE", "networkpolicies"), (None, "DELETE", "networkpolicies")],
     ["delete", "networkpolicy", "--all", "-n", NS_COLL], None),
    ([(None, "CREATE", "networkpolicies")] * 2, ["apply", "-f", "-"],
     np("deny-c", NS_COLL) + "---\n" + np("deny-d", NS_COLL)),
    ([("networkpolicy-delete-collection", "DELETE", "networkpolicies"), (None, "DELETE", "networkpolicies")],
     ["delete", "--raw", f"/apis/networking.k8s.io/v1/namespaces/{NS_COLL}/networkpolicies"], None),
    # A namespace deleted with a NetworkPolicy in it: the namespace controller removes the policy.
    ([(None, "CREATE", "namespaces")], ["create", "namespace", NS_DOWN], None),
    ([(None, "CREATE", "networkpolicies")], ["apply", "-f", "-"], np("default-deny-all", NS_DOWN)),
    ([("networkpolicy-delete-namespace-teardown", "DELETE", "networkpolicies")],
     ["delete", "namespace", NS_DOWN, "--timeout=60s"], None),
    (None, ["delete", "namespace", NS, NS_COLL, "ddg-labelled", "--timeout=60s"], None),
]


class Recorder:
    """Thread-safe list of captured requests, persisted as they arrive."""

    def __init__(self, work, kubectl):
        self.items, self.lock, self.work, self.kubectl = [], threading.Lock(), work, kubectl
        os.makedirs(os.path.join(work, "raw"), exist_ok=True)

    def add(self, path, body):
        entry = {"path": path, "received": time.time(), "body": body}
        req = body.get("request", {})
        if req.get("operation") == "DELETE" and req.get("resource", {}).get("resource") == "networkpolicies":
            entry["namespace_at_delete"] = self.namespace_state(req.get("namespace", ""))
        with self.lock:
            entry["seq"] = len(self.items)
            self.items.append(entry)
        with open(os.path.join(self.work, "raw", f"{entry['seq']:03d}.json"), "w") as f:
            json.dump(entry, f, indent=2)

    def namespace_state(self, ns):
        """The namespace as the API server shows it while it waits for our answer."""
        try:
            out = subprocess.run([self.kubectl, "get", "namespace", ns, "-o", "json", "--request-timeout=3s"],
                                 capture_output=True, text=True, timeout=5)
            if out.returncode != 0:
                return {"error": out.stderr.strip()}
            obj = json.loads(out.stdout)
            return {"deletionTimestamp": obj["metadata"].get("deletionTimestamp"),
                    "phase": obj.get("status", {}).get("phase")}
        except Exception as e:  # noqa: BLE001 - a note for the README, never fatal
            return {"error": repr(e)}

    def count(self):
        with self.lock:
            return len(self.items)

    def since(self, start):
        with self.lock:
            return list(self.items[start:])


def make_handler(rec):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as kube-apiserver uses it

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"unparsed": raw.decode("utf-8", "replace")}
            rec.add(self.path, body)
            answer = json.dumps({"apiVersion": body.get("apiVersion"), "kind": "AdmissionReview",
                                 "response": {"uid": body.get("request", {}).get("uid"), "allowed": True}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, fmt, *args):
            print(f"  webhook: {self.command} {self.path}", file=sys.stderr)

    return Handler


def make_pki(work):
    """CA + serving certificate for IP:127.0.0.1. Returns (cert, key, CA PEM)."""
    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    ca_key, ca_crt = os.path.join(work, "ca.key"), os.path.join(work, "ca.crt")
    key, csr, crt = (os.path.join(work, n) for n in ("webhook.key", "webhook.csr", "webhook.crt"))
    ext = os.path.join(work, "webhook.ext")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ossl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=capture-reviews-ca", "-keyout", ca_key, "-out", ca_crt)
    ossl("req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr)
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
         "-extfile", ext, "-out", crt)
    with open(ca_crt, "rb") as f:
        return crt, key, f.read()


def webhook_configs(port, ca_pem):
    common = {"admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore",
              "timeoutSeconds": 10}
    bundle = base64.b64encode(ca_pem).decode()
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "ddg-capture"},
        "webhooks": [{
            "name": "validate.capture.default-deny-guard.io", **common,
            "clientConfig": {"url": f"https://127.0.0.1:{port}/validate", "caBundle": bundle},
            "rules": [
                {"apiGroups": ["networking.k8s.io"], "apiVersions": ["v1"], "resources": ["networkpolicies"],
                 "operations": ["CREATE", "UPDATE", "DELETE"]},
                {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["namespaces"], "operations": ["UPDATE"]},
            ]}]}
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "ddg-capture"},
        "webhooks": [{
            "name": "mutate.capture.default-deny-guard.io", **common,
            "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate", "caBundle": bundle},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["namespaces"],
                       "operations": ["CREATE"]}]}]}
    return {"apiVersion": "v1", "kind": "List", "items": [validating, mutating]}


def kubectl(kc, args, stdin=None, check=True):
    cmd = [kc, *args]
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=90)
    if check and out.returncode != 0:
        sys.exit(f"FAILED: {' '.join(cmd)}\n{out.stdout}{out.stderr}")
    return out


def wait_count(rec, n, secs):
    deadline = time.time() + secs
    while rec.count() < n and time.time() < deadline:
        time.sleep(0.05)
    return rec.count() >= n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="fixture directory, e.g. tests/fixtures/apiserver-1.37")
    ap.add_argument("--work", help="scratch directory for keys and raw captures (default: new under /tmp)")
    ap.add_argument("--port", type=int, default=0, help="webhook port on 127.0.0.1 (default: any free one)")
    # The kubectl of the running control plane's release (up.sh's env file exports KUBE_LOCAL_BIN).
    ap.add_argument("--kubectl", default=os.path.join(os.environ.get("KUBE_LOCAL_BIN", ""), "kubectl")
                    if os.environ.get("KUBE_LOCAL_BIN") else "kubectl")
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or os.path.join(
        os.environ.get("KUBE_LOCAL_RUN", os.path.join(CACHE, "run")), "kubeconfig"))
    a = ap.parse_args()
    os.environ["KUBECONFIG"] = a.kubeconfig
    work = a.work or tempfile.mkdtemp(prefix="ddg-capture-")
    os.makedirs(work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    kc = a.kubectl

    crt, key, ca_pem = make_pki(work)
    rec = Recorder(work, kc)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(rec))
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(f"webhook on https://127.0.0.1:{port}, work dir {work}", file=sys.stderr)

    index = []
    try:
        kubectl(kc, ["apply", "-f", "-"], json.dumps(webhook_configs(port, ca_pem)))
        # A new configuration takes a moment to reach the admission chain: probe with a server-side dry run.
        for _ in range(100):
            start = rec.count()
            kubectl(kc, ["create", "namespace", "ddg-probe", "--dry-run=server"])
            if wait_count(rec, start + 1, 0.3):
                break
        else:
            sys.exit("the webhook was never called")
        time.sleep(0.5)

        for expected, args, stdin in SCENARIO:
            start = rec.count()
            t0 = time.time()
            out = kubectl(kc, args, stdin)
            wait_count(rec, start + len(expected or []), 30)
            time.sleep(1.0)  # anything extra shows up now
            got = rec.since(start)
            shown = " ".join(args)
            said = out.stdout.strip().replace("\n", "; ")
            print(f"kubectl {shown}: {len(got)} review(s) in {time.time() - t0:.1f} s; {said[:120]}", file=sys.stderr)
            if expected is None:
                continue
            seen = [(g["body"]["request"]["operation"], g["body"]["request"]["resource"]["resource"]) for g in got]
            if seen != [(op, res) for _, op, res in expected]:
                sys.exit(f"step `kubectl {shown}` expected {[e[1:] for e in expected]}, got {seen}")
            for (name, _, _), g in zip(expected, got):
                if name is None:
                    continue
                with open(os.path.join(a.out, name + ".json"), "w") as f:
                    json.dump(g["body"], f, indent=2)
                    f.write("\n")
                r = g["body"]["request"]
                index.append({"file": name + ".json", "command": "kubectl " + shown, "stdin": stdin,
                              "path": g["path"], "operation": r["operation"], "name": r.get("name"),
                              "namespace": r.get("namespace"), "user": r["userInfo"].get("username"),
                              "groups": r["userInfo"].get("groups"), "dryRun": r.get("dryRun"),
                              "options": r.get("options"), "subResource": r.get("subResource"),
                              "has_object": r.get("object") is not None,
                              "has_oldObject": r.get("oldObject") is not None,
                              "namespace_at_delete": g.get("namespace_at_delete"),
                              "reviews_in_step": len(got)})
    finally:
        kubectl(kc, ["delete", "validatingwebhookconfiguration,mutatingwebhookconfiguration", "ddg-capture",
                     "--ignore-not-found"], check=False)
        srv.shutdown()
        with open(os.path.join(work, "index.json"), "w") as f:
            json.dump(index, f, indent=2)
    print(f"{len(index)} fixtures in {a.out}; index and raw captures in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
