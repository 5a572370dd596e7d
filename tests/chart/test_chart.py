"""Assertions on the chart's rendered manifests (helm template; no cluster).

Each mode is a values file in charts/default-deny-guard/ci/ (also used by hack/test-chart.sh for `helm lint` and
kubernetes-validate); tests that need one more setting pass it as `values=`.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from conftest import (CHART, CI, FULLNAME, NAMESPACE, RELEASE, ROOT, Rendering, render, render_error, render_notes,
                      render_text)

MODES = sorted(p.name for p in CI.glob("*-values.yaml"))
IN_CLUSTER_MODES = [m for m in MODES if m != "url-values.yaml"]

VALIDATE_NP = "networkpolicies.validate.default-deny-guard.io"
VALIDATE_NS = "namespaces.validate.default-deny-guard.io"
MUTATE_NS = "namespaces.mutate.default-deny-guard.io"
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
TEST_CA_PEM = yaml.safe_load((CI / "url-values.yaml").read_text())["webhook"]["caBundle"]

# The metric names of SPEC section 6, which the alerts and the dashboard must use (and no others of ours).
SPEC_METRICS = {
    "default_deny_guard_admission_requests_total",
    "default_deny_guard_admission_duration_seconds_bucket",
    "default_deny_guard_exceptions_total",
    "default_deny_guard_tls_reloads_total",
    "default_deny_guard_certificate_expiry_timestamp_seconds",
    "default_deny_guard_build_info",
    "default_deny_guard_namespaces",
}


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def b64(pem: str) -> str:
    return base64.b64encode(pem.encode()).decode()


# === Kinds per mode ===

BASE = {"NetworkPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding",
        "Service", "Deployment", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
EXPECTED_KINDS = {
    "default-values.yaml": BASE,
    "cert-manager-values.yaml": BASE - {"Secret"} | {"Issuer", "Certificate"},
    "cert-manager-issuer-values.yaml": BASE - {"Secret"} | {"Certificate"},
    "existing-secret-values.yaml": BASE - {"Secret"},
    "ha-off-values.yaml": BASE - {"PodDisruptionBudget"},
    "ha-on-values.yaml": BASE,
    "hpa-values.yaml": BASE | {"HorizontalPodAutoscaler"},
    "monitoring-values.yaml": BASE | {"ServiceMonitor", "PrometheusRule", "ConfigMap"},
    "namespace-cache-off-values.yaml": BASE - {"ClusterRole", "ClusterRoleBinding"},
    "options-values.yaml": BASE | {"ConfigMap"},
    "url-values.yaml": {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"},
}


def test_every_mode_has_expected_kinds():
    assert set(MODES) == set(EXPECTED_KINDS), "a ci/ values file without expected kinds here (or the reverse)"


@pytest.mark.parametrize("mode", MODES)
def test_rendered_kinds(mode):
    assert render(mode).kinds() == EXPECTED_KINDS[mode]


@pytest.mark.parametrize("mode", MODES)
def test_namespaces_names_and_labels(mode):
    r = render(mode)
    for d in r.docs:
        meta = d["metadata"]
        where = f"{d['kind']}/{meta['name']}"
        assert len(meta["name"]) <= 63, where
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, where
        elif not (d["kind"] == "ConfigMap" and meta["name"].endswith("-dashboard")):
            assert meta["namespace"] == NAMESPACE, f"{where}: `helm template | kubectl apply` needs the namespace"
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "default-deny-guard", where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/component"] == "webhook", where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["helm.sh/chart"] == "default-deny-guard-0.1.0", where


def test_common_labels_reach_every_object():
    r = render("options-values.yaml")
    for d in r.docs:
        assert d["metadata"]["labels"]["example.com/owner"] == "platform", d["kind"]


# === Webhook configurations ===

@pytest.mark.parametrize("mode", MODES)
def test_webhook_rules_and_paths(mode):
    hooks = render(mode).webhooks()
    assert set(hooks) == {VALIDATE_NP, VALIDATE_NS, MUTATE_NS}

    np = hooks[VALIDATE_NP]
    assert np["_kind"] == "ValidatingWebhookConfiguration"
    (rule,) = np["rules"]
    assert rule["apiGroups"] == ["networking.k8s.io"] and rule["apiVersions"] == ["v1"]
    assert rule["resources"] == ["networkpolicies"]
    assert sorted(rule["operations"]) == ["CREATE", "DELETE", "UPDATE"]
    assert rule["scope"] == "Namespaced"

    ns = hooks[VALIDATE_NS]
    assert ns["_kind"] == "ValidatingWebhookConfiguration"
    (rule,) = ns["rules"]
    assert rule["apiGroups"] == [""] and rule["apiVersions"] == ["v1"] and rule["resources"] == ["namespaces"]
    assert rule["operations"] == ["UPDATE"]
    assert rule["scope"] == "Cluster"

    mut = hooks[MUTATE_NS]
    assert mut["_kind"] == "MutatingWebhookConfiguration"
    (rule,) = mut["rules"]
    assert rule["apiGroups"] == [""] and rule["apiVersions"] == ["v1"] and rule["resources"] == ["namespaces"]
    assert rule["operations"] == ["CREATE"]

    for name, w in hooks.items():
        cc = w["clientConfig"]
        path = "/mutate" if name == MUTATE_NS else "/validate"
        if mode == "url-values.yaml":
            assert cc["url"] == "https://127.0.0.1:8443" + path
            assert "service" not in cc
        else:
            assert cc["service"]["path"] == path
            assert "url" not in cc
        assert w["sideEffects"] == "None"
        assert w["admissionReviewVersions"] == ["v1"]
        assert w["matchPolicy"] == "Equivalent"


def test_failure_policies_and_timeouts_default():
    hooks = render().webhooks()
    assert hooks[VALIDATE_NP]["failurePolicy"] == "Fail"
    assert hooks[VALIDATE_NS]["failurePolicy"] == "Fail"
    assert hooks[MUTATE_NS]["failurePolicy"] == "Ignore"
    assert hooks[VALIDATE_NP]["timeoutSeconds"] == 10
    assert hooks[VALIDATE_NS]["timeoutSeconds"] == 10
    assert hooks[MUTATE_NS]["timeoutSeconds"] == 5
    assert hooks[MUTATE_NS]["reinvocationPolicy"] == "Never"
    for w in hooks.values():
        assert "matchConditions" not in w, "omitted when empty (Kubernetes < 1.28 lacks the field)"
        assert "objectSelector" not in w


def test_failure_policies_and_timeouts_follow_values():
    hooks = render(values={"webhook": {"validating": {"failurePolicy": "Ignore", "timeoutSeconds": 3},
                                       "mutating": {"failurePolicy": "Fail", "timeoutSeconds": 30}}}).webhooks()
    assert hooks[VALIDATE_NP]["failurePolicy"] == hooks[VALIDATE_NS]["failurePolicy"] == "Ignore"
    assert hooks[VALIDATE_NP]["timeoutSeconds"] == hooks[VALIDATE_NS]["timeoutSeconds"] == 3
    assert hooks[MUTATE_NS]["failurePolicy"] == "Fail"
    assert hooks[MUTATE_NS]["timeoutSeconds"] == 30


def test_match_conditions_and_selectors_pass_through():
    hooks = render("options-values.yaml").webhooks()
    cond = [{"name": "not-a-node", "expression": "!request.userInfo.username.startsWith('system:node:')"}]
    assert hooks[VALIDATE_NP]["matchConditions"] == cond
    assert hooks[VALIDATE_NS]["matchConditions"] == cond
    assert "matchConditions" not in hooks[MUTATE_NS]
    assert hooks[MUTATE_NS]["failurePolicy"] == "Fail"
    assert hooks[MUTATE_NS]["reinvocationPolicy"] == "IfNeeded"
    user_term = {"key": "example.com/unmanaged", "operator": "DoesNotExist"}
    for name in (VALIDATE_NP, VALIDATE_NS):
        exprs = hooks[name]["namespaceSelector"]["matchExpressions"]
        assert user_term in exprs
        assert exprs[0]["key"] == "kubernetes.io/metadata.name", "the chart's exemption stays, ANDed with the user's"


def test_match_conditions_refused_before_kubernetes_1_28():
    err = render_error("options-values.yaml", kube_version="1.27.0", values={"preStop": {"enabled": False}})
    assert "matchConditions need Kubernetes 1.28+" in err


def exempt(webhook: dict) -> list[str]:
    for e in webhook.get("namespaceSelector", {}).get("matchExpressions", []):
        if e["key"] == "kubernetes.io/metadata.name":
            assert e["operator"] == "NotIn"
            return e["values"]
    return []


@pytest.mark.parametrize("mode", IN_CLUSTER_MODES)
def test_release_namespace_is_exempt_from_every_webhook(mode):
    """No deadlock: with the webhook down (failurePolicy Fail), its own namespace's NetworkPolicies and labels can
    still be changed, so a policy that cuts the API server off from the webhook pods can be repaired."""
    for name, w in render(mode).webhooks().items():
        assert NAMESPACE in exempt(w), name


def test_system_namespaces_stay_under_the_networkpolicy_webhook():
    """R1 must see kube-system & co; only the Namespace webhooks leave the exact system names out."""
    hooks = render().webhooks()
    assert exempt(hooks[VALIDATE_NP]) == [NAMESPACE]
    for name in (VALIDATE_NS, MUTATE_NS):
        assert exempt(hooks[name]) == [NAMESPACE, "kube-system", "kube-public", "kube-node-lease"]
    # Patterns cannot be label-selected: they are left to the server.
    hooks = render("options-values.yaml").webhooks()
    assert exempt(hooks[MUTATE_NS]) == [NAMESPACE, "kube-system", "kube-public", "kube-node-lease", "cattle-system"]


def test_url_mode_exempts_no_release_namespace():
    hooks = render("url-values.yaml").webhooks()
    assert exempt(hooks[VALIDATE_NP]) == []
    assert "namespaceSelector" in hooks[VALIDATE_NP]
    assert exempt(hooks[VALIDATE_NS]) == ["kube-system", "kube-public", "kube-node-lease"]


def test_installing_into_a_system_namespace_is_refused():
    err = render_error(namespace="kube-system")
    assert "is a system namespace" in err and "unguarded by R1" in err
    err = render_error(namespace="openshift-guard", values={"config": {"systemNamespaces": ["kube-system", "openshift-*"]}})
    assert "is a system namespace" in err


def test_clientconfig_targets_the_service():
    r = render()
    svc = r.one("Service")
    for w in r.webhooks().values():
        s = w["clientConfig"]["service"]
        assert s["name"] == svc["metadata"]["name"] == FULLNAME
        assert s["namespace"] == NAMESPACE
        assert s["port"] in [p["port"] for p in svc["spec"]["ports"] if p["name"] == "https"]


# === Out-of-cluster (url) mode ===

@pytest.mark.parametrize("file", ["validatingwebhookconfiguration.yaml", "mutatingwebhookconfiguration.yaml"])
def test_url_mode_renders_each_configuration_alone(file):
    text = render_text("url-values.yaml", show_only=f"templates/{file}")
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert len(docs) == 1
    for w in docs[0]["webhooks"]:
        assert w["clientConfig"]["url"].startswith("https://127.0.0.1:8443/")
        assert w["clientConfig"]["caBundle"] == b64(TEST_CA_PEM)


def test_url_mode_accepts_a_base64_ca_and_a_trailing_slash():
    hooks = render(values={"webhook": {"url": "https://host.docker.internal:9443/", "caBundle": b64(TEST_CA_PEM)}}).webhooks()
    assert hooks[VALIDATE_NP]["clientConfig"] == {"url": "https://host.docker.internal:9443/validate",
                                                  "caBundle": b64(TEST_CA_PEM)}
    assert hooks[MUTATE_NS]["clientConfig"]["url"] == "https://host.docker.internal:9443/mutate"


def test_url_mode_needs_https_and_a_ca_bundle():
    assert "caBundle is required" in render_error(values={"webhook": {"url": "https://127.0.0.1:8443"}})
    # The schema catches http:// first; the template's own check says why.
    assert "url" in render_error(values={"webhook": {"url": "http://127.0.0.1:8443", "caBundle": "x"}})
    assert "certManager.enabled" in render_error("url-values.yaml", values={"certManager": {"enabled": True}})


# === Certificates ===

def load_cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def expected_sans() -> list[str]:
    return [FULLNAME, f"{FULLNAME}.{NAMESPACE}", f"{FULLNAME}.{NAMESPACE}.svc",
            f"{FULLNAME}.{NAMESPACE}.svc.cluster.local"]


def mounted_secret(r: Rendering) -> str:
    vols = {v["name"]: v for v in r.pod["volumes"]}
    return vols["tls"]["secret"]["secretName"]


def test_self_signed_ca_bundle_matches_the_secret():
    r = render()
    secret = r.one("Secret")
    assert secret["type"] == "kubernetes.io/tls"
    assert mounted_secret(r) == secret["metadata"]["name"] == f"{FULLNAME}-tls"
    ca_pem = base64.b64decode(secret["data"]["ca.crt"]).decode()
    cert_pem = base64.b64decode(secret["data"]["tls.crt"]).decode()
    key_pem = base64.b64decode(secret["data"]["tls.key"]).decode()
    for name, w in r.webhooks().items():
        assert w["clientConfig"]["caBundle"], name
        assert w["clientConfig"]["caBundle"] == secret["data"]["ca.crt"], f"{name}: caBundle != the Secret's ca.crt"
    ca, cert = load_cert(ca_pem), load_cert(cert_pem)
    # Signed by that CA, for the Service's DNS names, with the key in the Secret.
    pub = ca.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    assert cert.issuer == ca.subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sorted(sans) == sorted(expected_sans())
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=3000)
    # The pods roll when the chart makes a new certificate.
    assert "checksum/tls" in r.deployment["spec"]["template"]["metadata"]["annotations"]


class FakeKubeAPI:
    """Just enough of a Kubernetes API for Helm's `lookup` of the TLS Secret (`helm template --dry-run=server`):
    discovery of v1 Secrets and GET of the Secrets it holds. Stands in for the cluster of an upgrade."""

    def __init__(self, secrets: dict[str, dict]):
        import http.server
        import threading

        outer = self
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                path = self.path.split("?")[0].strip("/").split("/")
                if path == ["version"]:
                    return self.reply(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0"})
                if path == ["api", "v1"]:
                    return self.reply(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
                         "verbs": ["get", "list"]}]})
                if len(path) == 6 and path[:3] == ["api", "v1", "namespaces"] and path[4] == "secrets":
                    found = secrets.get(f"{path[3]}/{path[5]}")
                    if found:
                        return self.reply(200, found)
                return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "reason": "NotFound", "code": 404})

            def reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kubeconfig(self, tmp_path) -> str:
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.server.server_port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        return str(path)

    def close(self):
        self.server.shutdown()


def render_against(api: FakeKubeAPI, tmp_path) -> Rendering:
    import os
    from conftest import helm
    proc = subprocess.run([helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=server"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, KUBECONFIG=api.kubeconfig(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    return Rendering([d for d in yaml.safe_load_all(proc.stdout) if d])


def test_self_signed_certificate_is_kept_across_upgrades(tmp_path):
    """On upgrade, `lookup` reads the Secret back: same CA, certificate and key, same caBundle, same checksum (no
    pod restart), so the API server never trusts a CA that the pods do not serve."""
    installed = render()
    secret = installed.one("Secret")
    api = FakeKubeAPI({f"{NAMESPACE}/{secret['metadata']['name']}": secret})
    try:
        upgraded = render_against(api, tmp_path)
        again = render_against(api, tmp_path)
    finally:
        api.close()
    assert f"/api/v1/namespaces/{NAMESPACE}/secrets/{FULLNAME}-tls" in [p.split("?")[0] for p in api.requests]
    assert upgraded.one("Secret")["data"] == secret["data"]
    for w in upgraded.webhooks().values():
        assert w["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    checksum = lambda r: r.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/tls"]
    assert checksum(upgraded) == checksum(again) == checksum(installed)


def test_self_signed_certificate_is_remade_when_the_secret_is_incomplete(tmp_path):
    """A Secret without ca.crt (say, made by hand) cannot back a caBundle: the chart makes a new pair."""
    secret = render().one("Secret")
    partial = dict(secret, data={k: v for k, v in secret["data"].items() if k != "ca.crt"})
    api = FakeKubeAPI({f"{NAMESPACE}/{secret['metadata']['name']}": partial})
    try:
        upgraded = render_against(api, tmp_path)
    finally:
        api.close()
    data = upgraded.one("Secret")["data"]
    assert data["tls.crt"] != secret["data"]["tls.crt"] and data["ca.crt"]
    assert {w["clientConfig"]["caBundle"] for w in upgraded.webhooks().values()} == {data["ca.crt"]}


def test_self_signed_certificate_is_made_once_per_rendering():
    """Secret, webhook configurations and checksum must all use the same generated pair."""
    r = render("monitoring-values.yaml")
    ca = r.one("Secret")["data"]["ca.crt"]
    assert {w["clientConfig"]["caBundle"] for w in r.webhooks().values()} == {ca}


def test_cert_manager_mode():
    r = render("cert-manager-values.yaml")
    certs = {c["metadata"]["name"]: c for c in r.all("Certificate")}
    serving = certs[FULLNAME]
    assert sorted(serving["spec"]["dnsNames"]) == sorted(expected_sans())
    assert serving["spec"]["secretName"] == mounted_secret(r)
    assert serving["spec"]["privateKey"]["encoding"] == "PKCS8"
    assert serving["spec"]["issuerRef"] == {"name": f"{FULLNAME}-ca", "kind": "Issuer", "group": "cert-manager.io"}
    ca = certs[f"{FULLNAME}-ca"]
    assert ca["spec"]["isCA"] is True
    issuers = {i["metadata"]["name"]: i["spec"] for i in r.all("Issuer")}
    assert issuers == {f"{FULLNAME}-selfsigned": {"selfSigned": {}},
                       f"{FULLNAME}-ca": {"ca": {"secretName": ca["spec"]["secretName"]}}}
    assert ca["spec"]["issuerRef"]["name"] == f"{FULLNAME}-selfsigned"
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        cfg = r.one(kind)
        assert cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{FULLNAME}"
        for w in cfg["webhooks"]:
            assert "caBundle" not in w["clientConfig"], "the cainjector fills it; helm must not fight it"
    assert "checksum/tls" not in (r.deployment["spec"]["template"]["metadata"].get("annotations") or {})


def test_cert_manager_with_an_existing_issuer():
    r = render("cert-manager-issuer-values.yaml")
    (cert,) = r.all("Certificate")
    assert cert["spec"]["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert cert["spec"]["duration"] == "720h" and cert["spec"]["renewBefore"] == "240h"
    assert not r.all("Issuer")


def test_existing_secret_mode():
    r = render("existing-secret-values.yaml")
    assert mounted_secret(r) == "my-webhook-tls"
    assert not r.all("Secret")
    for w in r.webhooks().values():
        assert w["clientConfig"]["caBundle"] == b64(TEST_CA_PEM)
    err = render_error(values={"tls": {"existingSecret": "my-webhook-tls"}})
    assert "webhook.caBundle is required with tls.existingSecret" in err
    assert "exclude each other" in render_error("existing-secret-values.yaml", values={"certManager": {"enabled": True}})


# === The Deployment: flags, ports, probes, security ===

@pytest.mark.parametrize("mode", IN_CLUSTER_MODES)
def test_ports_flags_service_agree(mode):
    r = render(mode)
    flags = r.flags()
    ports = {p["name"]: p["containerPort"] for p in r.container["ports"]}
    assert port_of(flags["addr"]) == ports["https"]
    assert port_of(flags["metrics-addr"]) == ports["metrics"]
    svc = {p["name"]: p for p in r.one("Service")["spec"]["ports"]}
    for name in ("https", "metrics"):
        target = svc[name]["targetPort"]
        assert (ports[target] if isinstance(target, str) else target) == ports[name], name
    assert svc["metrics"]["port"] == ports["metrics"]
    # The Service selects the webhook pods, and only them.
    assert r.one("Service")["spec"]["selector"] == r.deployment["spec"]["selector"]["matchLabels"]
    pod_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    assert r.deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "app.kubernetes.io/version" not in r.deployment["spec"]["selector"]["matchLabels"], "selectors are immutable"


def test_ports_follow_values():
    r = render(values={"webhook": {"port": 10250, "bindAddress": "[::]"}, "metrics": {"port": 8080},
                       "service": {"port": 8443}})
    flags = r.flags()
    assert flags["addr"] == "[::]:10250" and flags["metrics-addr"] == "[::]:8080"
    svc = {p["name"]: p for p in r.one("Service")["spec"]["ports"]}
    assert svc["https"]["port"] == 8443
    assert all(w["clientConfig"]["service"]["port"] == 8443 for w in r.webhooks().values())


def test_default_flags():
    r = render()
    assert r.container["args"][:6] == [
        "serve", "--addr=0.0.0.0:8443", "--metrics-addr=0.0.0.0:9090",
        "--tls-cert=/etc/default-deny-guard/tls/tls.crt", "--tls-key=/etc/default-deny-guard/tls/tls.key",
        "--log-format=json"]
    assert r.flags() == {
        "addr": "0.0.0.0:8443",
        "metrics-addr": "0.0.0.0:9090",
        "tls-cert": "/etc/default-deny-guard/tls/tls.crt",
        "tls-key": "/etc/default-deny-guard/tls/tls.key",
        "log-format": "json",
        "system-namespaces": "kube-system,kube-public,kube-node-lease",
        "enable-label": "default-deny=enabled",
        "exception-annotation": "default-deny-guard.io/exception",
        "exception-expires-annotation": "default-deny-guard.io/exception-expires",
        "trusted-deleters": "system:serviceaccount:kube-system:namespace-controller,"
                            "system:serviceaccount:kube-system:generic-garbage-collector",
        "namespace-cache": "auto",
        "shutdown-timeout": "25s",
    }
    assert r.container["image"] == "default-deny-guard:0.1.0"


def test_flags_follow_values():
    r = render("options-values.yaml")
    flags = r.flags()
    assert flags["warn"] == "R2,R3"
    assert flags["system-namespace-label"] == "platform.example.com/system=true"
    assert flags["system-namespaces"] == "kube-system,kube-public,kube-node-lease,openshift-*,cattle-system"
    assert flags["log-format"] == "text"
    assert flags["client-ca"] == "/etc/default-deny-guard/client-ca/ca.crt"
    assert r.container["args"][-2:] == ["--max-body-bytes", "16777216"]
    assert {"name": "RUST_BACKTRACE", "value": "1"} in r.container["env"]
    assert r.container["image"] == ("registry.example.com/security/default-deny-guard:0.1.0@sha256:" + "0" * 64)
    # mTLS: the CA is in a ConfigMap, mounted as a directory at the flag's path.
    cm = r.one("ConfigMap")
    assert cm["data"]["ca.crt"].strip() == TEST_CA_PEM.strip()
    vols = {v["name"]: v for v in r.pod["volumes"]}
    assert vols["client-ca"]["configMap"]["name"] == cm["metadata"]["name"]
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    assert flags["client-ca"].startswith(mounts["client-ca"]["mountPath"] + "/")


@pytest.mark.parametrize("mode", IN_CLUSTER_MODES)
def test_tls_secret_is_mounted_as_a_directory(mode):
    """A subPath mount would never see a rotated certificate."""
    r = render(mode)
    flags = r.flags()
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    assert all("subPath" not in m and "subPathExpr" not in m for m in mounts.values())
    assert mounts["tls"]["readOnly"] is True
    assert flags["tls-cert"] == mounts["tls"]["mountPath"] + "/tls.crt"
    assert flags["tls-key"] == mounts["tls"]["mountPath"] + "/tls.key"


@pytest.mark.parametrize("mode", IN_CLUSTER_MODES)
def test_probes_use_https_health_endpoints(mode):
    c = render(mode).container
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["scheme"] == "HTTPS", probe
        assert get["port"] in ("https", ports["https"]), probe


@pytest.mark.parametrize("mode", IN_CLUSTER_MODES)
def test_pod_security(mode):
    r = render(mode)
    pod_sc, sc = r.pod["securityContext"], r.container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    vols = {v["name"]: v for v in r.pod["volumes"]}
    assert vols["tls"]["secret"]["defaultMode"] == 0o440, "the key is readable by the pod's fsGroup only"
    assert not any("hostPath" in v or "emptyDir" in v for v in vols.values()), "the server writes nothing to disk"
    assert "resources" in r.container and "memory" in r.container["resources"]["limits"]
    assert "cpu" not in r.container["resources"].get("limits", {}), "CPU throttling would show as admission latency"


def test_key_stays_readable_without_an_fs_group():
    """On OpenShift the SCC assigns fsGroup; without any, the non-root server must still read its key."""
    r = render(values={"podSecurityContext": {"fsGroup": None, "runAsUser": None, "runAsGroup": None}})
    assert "fsGroup" not in r.pod["securityContext"] and "runAsUser" not in r.pod["securityContext"]
    vols = {v["name"]: v for v in r.pod["volumes"]}
    assert vols["tls"]["secret"]["defaultMode"] == 0o444


# === Availability: replicas, anti-affinity, PDB, preStop, HPA ===

def test_ha_defaults():
    r = render()
    d = r.deployment
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    (term,) = r.pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert r.container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    grace = r.pod["terminationGracePeriodSeconds"]
    assert grace >= 5 + int(r.flags()["shutdown-timeout"].rstrip("s"))
    assert r.pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_ha_off():
    r = render("ha-off-values.yaml")
    assert r.deployment["spec"]["replicas"] == 1
    assert r.maybe("PodDisruptionBudget") is None
    assert "affinity" not in r.pod
    assert "lifecycle" not in r.container
    assert "single replica" in render_notes("ha-off-values.yaml")


def test_ha_on():
    r = render("ha-on-values.yaml")
    assert r.deployment["spec"]["replicas"] == 5
    (term,) = r.pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert r.pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert r.pod["priorityClassName"] == "system-cluster-critical"
    pdb = r.one("PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 3 and "maxUnavailable" not in pdb


def test_hpa():
    r = render("hpa-values.yaml")
    assert "replicas" not in r.deployment["spec"], "the HPA owns the replica count"
    hpa = r.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 8)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]}
    assert targets == {"cpu": 70, "memory": 80}


def test_prestop_sleep_needs_kubernetes_1_29():
    assert "needs Kubernetes 1.29+" in render_error(kube_version="1.28.0")
    r = render(kube_version="1.28.0", values={"preStop": {"enabled": False}})
    assert "lifecycle" not in r.container
    assert "unhealthyPodEvictionPolicy" in r.one("PodDisruptionBudget")["spec"]
    r = render(kube_version="1.26.0", values={"preStop": {"enabled": False}})
    assert "unhealthyPodEvictionPolicy" not in r.one("PodDisruptionBudget")["spec"], "field is 1.27+"


def test_grace_period_must_cover_the_shutdown():
    err = render_error(values={"terminationGracePeriodSeconds": 20})
    assert "must cover preStop.sleepSeconds (5) plus config.shutdownTimeoutSeconds (25)" in err


def test_single_replica_with_min_available_is_refused():
    err = render_error(values={"replicaCount": 1, "podDisruptionBudget": {"minAvailable": 1}})
    assert "no node could ever be drained" in err


# === RBAC and ServiceAccount ===

def test_rbac_is_least_privilege():
    r = render()
    role = r.one("ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]
    assert not r.all("Role") and not r.all("RoleBinding")
    binding = r.one("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = r.one("ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    assert r.pod["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False
    assert r.pod["automountServiceAccountToken"] is True, "the namespace cache needs the token"


def test_no_rbac_and_no_token_without_the_namespace_cache():
    r = render("namespace-cache-off-values.yaml")
    assert r.flags()["namespace-cache"] == "off"
    assert r.pod["automountServiceAccountToken"] is False
    np = r.one("NetworkPolicy")["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"] and np["egress"] == []


# === The chart's own NetworkPolicy ===

def is_default_deny(spec: dict) -> bool:
    """SPEC section 3, condition 1: a policy is default-deny only if its podSelector selects every pod."""
    sel = spec.get("podSelector") or {}
    return not sel.get("matchLabels") and not sel.get("matchExpressions")


def test_networkpolicy_default():
    r = render()
    np = r.one("NetworkPolicy")["spec"]
    assert np["podSelector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]
    assert not is_default_deny(np), "the chart's policy must not itself trip R1/R2"
    assert np["policyTypes"] == ["Ingress"], "egress untouched unless asked"
    by_port = {rule["ports"][0]["port"]: rule for rule in np["ingress"]}
    assert set(by_port) == {"https", "metrics"}
    assert "from" not in by_port["https"], "the API server's address is unknowable: open by default"
    assert "from" not in by_port["metrics"]
    names = {p["name"] for p in r.container["ports"]}
    assert set(by_port) <= names


def test_networkpolicy_narrowed():
    r = render("options-values.yaml")
    np = r.one("NetworkPolicy")["spec"]
    by_port = {rule["ports"][0]["port"]: rule for rule in np["ingress"]}
    assert by_port["https"]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    assert by_port["metrics"]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    assert np["policyTypes"] == ["Ingress", "Egress"]
    (egress,) = np["egress"]
    assert [p["port"] for p in egress["ports"]] == [443, 6443]
    assert egress["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]


# === Monitoring ===

def test_service_monitor_scrapes_the_metrics_port():
    r = render("monitoring-values.yaml")
    sm = r.one("ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in r.one("Service")["spec"]["ports"]}
    assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["scheme"] == "http"
    assert sm["spec"]["selector"]["matchLabels"].items() <= r.one("Service")["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(default_deny_guard_[a-z_]+)\b", expr))


def promql_ok(expr: str) -> None:
    import promql_parser
    promql_parser.parse(expr)  # raises on a syntax error


def test_prometheus_rule():
    r = render("monitoring-values.yaml")
    rule = r.one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (group,) = rule["spec"]["groups"]
    alerts = {a["alert"]: a for a in group["rules"] if "alert" in a}
    used = set()
    for name, a in alerts.items():
        promql_ok(a["expr"])
        assert a["labels"]["severity"] in ("warning", "critical"), name
        assert a["annotations"]["summary"] and a["annotations"]["description"], name
        assert "{{ $labels" not in a["expr"]
        used |= metric_names(a["expr"])
    assert used <= SPEC_METRICS, used - SPEC_METRICS
    # SPEC section 7: webhook errors, latency, certificate expiry, unprotected namespaces (and denial spikes).
    expr = {n: a["expr"] for n, a in alerts.items()}
    assert 'decision="error"' in expr["DefaultDenyGuardAdmissionErrors"]
    assert "apiserver_admission_webhook_rejection_count" in expr["DefaultDenyGuardWebhookCallsFailing"]
    assert 'decision="deny"' in expr["DefaultDenyGuardDenialSpike"]
    assert "default_deny_guard_admission_duration_seconds_bucket" in expr["DefaultDenyGuardHighLatency"]
    assert "histogram_quantile(0.99" in expr["DefaultDenyGuardHighLatency"]
    assert "> 0.25" in expr["DefaultDenyGuardHighLatency"]
    assert "default_deny_guard_certificate_expiry_timestamp_seconds" in expr["DefaultDenyGuardCertificateExpiringSoon"]
    assert "14 * 86400" in expr["DefaultDenyGuardCertificateExpiringSoon"]
    assert 'default_deny_guard_namespaces{state="unprotected"}' in expr["DefaultDenyGuardUnprotectedNamespaces"]
    assert f'job="{FULLNAME}"' in expr["DefaultDenyGuardDown"]
    # The API server's metrics name the webhooks: the alerts' regex must match the chart's webhook names.
    for alert in ("DefaultDenyGuardWebhookCallsFailing", "DefaultDenyGuardNamespacesCreatedUnlabelled"):
        (literal,) = re.findall(r'name=~"((?:[^"\\]|\\.)*)"', expr[alert])
        regex = literal.encode().decode("unicode_escape")  # PromQL string escapes, as Go's
        for name in (VALIDATE_NP, VALIDATE_NS, MUTATE_NS):
            assert re.fullmatch(regex, name), (alert, regex, name)
        assert not re.fullmatch(regex, "networkpolicies-validate.default-deny-guard.io"), "dots are escaped"
    # Prometheus' own templating survives Helm's.
    assert "{{ $labels.rule }}" in alerts["DefaultDenyGuardDenialSpike"]["annotations"]["summary"]
    # extraRules are appended.
    records = [x for x in group["rules"] if "record" in x]
    assert records and records[0]["record"] == "default_deny_guard:admission_requests:rate5m"
    promql_ok(records[0]["expr"])


def test_dashboard():
    r = render("monitoring-values.yaml")
    cm = r.one("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Security"}
    dash = json.loads(cm["data"]["default-deny-guard.json"])
    assert dash["uid"] == "default-deny-guard"
    panels = {p["title"]: p for p in dash["panels"] if p["type"] != "row"}
    exprs = {t: [x["expr"] for x in p["targets"]] for t, p in panels.items()}
    used = set()
    for title, es in exprs.items():
        assert es, title
        for e in es:
            concrete = (e.replace("$__rate_interval", "5m").replace("$__range", "6h")
                         .replace("$namespace", ".*"))
            promql_ok(concrete)
            used |= metric_names(e)
    assert used <= SPEC_METRICS, used - SPEC_METRICS
    # SPEC section 7: decisions by rule, latency percentiles, exceptions used, coverage.
    assert any("by (rule, decision)" in e for e in exprs["Decisions by rule"])
    assert [("histogram_quantile(0.5" in e, "histogram_quantile(0.99" in e) for e in exprs["Latency p50 / p99"]] == [
        (True, False), (False, True)]
    assert all("default_deny_guard_exceptions_total" in e and "by (kind)" in e for e in exprs["Exceptions used"])
    assert all("default_deny_guard_namespaces" in e and "by (state)" in e for e in exprs["Coverage"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


# === NOTES.txt ===

def test_notes_explain_how_to_verify():
    notes = render_notes()
    assert "kubectl apply --dry-run=server -f -" in notes
    assert "namespace: kube-system" in notes and "podSelector: {}" in notes
    assert 'admission webhook "networkpolicies.validate.default-deny-guard.io"' in notes
    assert "denied the request: NetworkPolicy kube-system/default-deny-all is deny-all (Ingress)" in notes
    assert '{"default-deny":"enabled"' in notes
    assert f"rollout status deployment/{FULLNAME}" in notes
    assert "single replica" not in notes


def test_notes_follow_warn_mode_and_url_mode():
    warn = render_notes(values={"config": {"warn": ["R1", "R4"]}})
    assert "Warning: R1 (warn mode, allowed)" in warn and "created (server dry run)" in warn
    assert "denied the request" not in warn
    url = render_notes("url-values.yaml")
    assert "Out-of-cluster mode" in url and "https://127.0.0.1:8443" in url
    assert "rollout status" not in url


# === values.yaml, values.schema.json, Chart.yaml ===

@pytest.mark.parametrize("values, complaint", [
    ({"replicaCont": 2}, "replicaCont"),                                          # typo at the top
    ({"webhook": {"validating": {"failurPolicy": "Fail"}}}, "failurPolicy"),     # typo nested
    ({"replicaCount": "three"}, "replicaCount"),                                  # wrong type
    ({"certManager": {"enabled": "yes"}}, "certManager.enabled"),                 # wrong type
    ({"webhook": {"validating": {"failurePolicy": "Sometimes"}}}, "failurePolicy"),  # not an enum value
    ({"webhook": {"mutating": {"timeoutSeconds": 45}}}, "timeoutSeconds"),        # out of range (API max 30)
    ({"config": {"warn": ["R9"]}}, "warn"),                                       # unknown rule
    ({"config": {"namespaceCache": "maybe"}}, "namespaceCache"),
    ({"config": {"enableLabel": "default-deny"}}, "enableLabel"),                 # key=value
])
def test_schema_rejects(values, complaint):
    assert complaint in render_error(values=values)


def test_reconciler_is_reserved_not_half_rendered():
    assert "not part of this chart version yet" in render_error(values={"reconciler": {"enabled": True}})
    for mode in MODES:
        for d in render(mode).docs:
            assert "reconciler" not in d["metadata"]["name"]


def test_schema_and_values_cover_the_same_keys():
    """Every key in values.yaml is typed in the schema, and every key the schema types in the chart's own blocks
    has its default in values.yaml (Kubernetes objects passed through, like `resources`, are not descended into)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def typed(s, v, path=()):
        for k, sub in s["properties"].items():
            yield path + (k,)
            here = v.get(k)
            if sub.get("additionalProperties") is False and isinstance(here, dict) and here:
                yield from typed(sub, here, path + (k,))

    def given(v, s, path=()):
        for k, here in v.items():
            yield path + (k,)
            sub = s["properties"].get(k, {})
            if sub.get("additionalProperties") is False and isinstance(here, dict):
                yield from given(here, sub, path + (k,))

    in_schema = set(typed(schema, values)) - {("global",)}
    in_values = set(given(values, schema))
    assert in_schema - in_values == set(), "typed in the schema but missing from values.yaml"
    assert in_values - in_schema == set(), "in values.yaml but not in the schema"


def test_every_value_is_documented():
    """helm-docs style: each key in values.yaml has a `# --` comment above it (or its block has a comment)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, documented_indent = [], None
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        if documented_indent is not None and indent > documented_indent:
            continue  # inside a documented value (e.g. the keys of podSecurityContext's default)
        documented_indent = None
        j, comments = i - 1, []
        while j >= 0 and lines[j].strip().startswith("#"):
            comments.append(lines[j].strip())
            j -= 1
        if any(c.startswith("# --") for c in comments):
            documented_indent = indent
        elif not line.rstrip().endswith(":"):
            undocumented.append(line.strip())  # a leaf without `# --`; a section header needs none
    assert undocumented == []


def test_app_version_matches_cargo():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert chart["appVersion"] == cargo["package"]["version"]
    assert f'ARG VERSION={cargo["package"]["version"]}' in (ROOT / "Dockerfile").read_text()


# === Dockerfile ===

def test_dockerfile_matches_the_chart():
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == ["rust:1.95-bookworm", "gcr.io/distroless/cc-debian12:nonroot"], (
        "pinned builder; glibc runtime of the same Debian release")
    assert "cargo build --release --locked" in text
    assert re.search(r"^USER 65532(:65532)?$", text, re.M), "numeric user, as the chart's runAsUser"
    exposed = set(map(int, re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()))
    defaults = render()
    assert exposed == {c["containerPort"] for c in defaults.container["ports"]}
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/default-deny-guard"\]$', text, re.M)
    assert re.search(r'^CMD \["serve"\]$', text, re.M)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "**/target" in ignore and ".git" in ignore and "certs" in ignore


def test_hadolint():
    hadolint = shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (hack/test-chart.sh installs it)")
    proc = subprocess.run([hadolint, "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
