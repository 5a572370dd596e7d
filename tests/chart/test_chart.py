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

from conftest import (CHART, CI, FULLNAME, NAMESPACE, RECONCILER, RELEASE, ROOT, Rendering, render, render_error,
                      render_notes, render_text)

MODES = sorted(p.name for p in CI.glob("*-values.yaml"))
IN_CLUSTER_MODES = [m for m in MODES if m != "url-values.yaml"]

VALIDATE_NP = "networkpolicies.validate.default-deny-guard.io"
VALIDATE_NS = "namespaces.validate.default-deny-guard.io"
MUTATE_NS = "namespaces.mutate.default-deny-guard.io"
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicy",
                  "MutatingAdmissionPolicyBinding"}
TEST_CA_PEM = yaml.safe_load((CI / "url-values.yaml").read_text())["webhook"]["caBundle"]

# The metric names of docs/design.md section 6, which the alerts and the dashboard must use (and no others of ours): the
# webhook's, then the reconciler's (docs/reconciler.md, "Metrics").
WEBHOOK_METRICS = {
    "default_deny_guard_admission_requests_total",
    "default_deny_guard_admission_duration_seconds_bucket",
    "default_deny_guard_exceptions_total",
    "default_deny_guard_tls_reloads_total",
    "default_deny_guard_certificate_expiry_timestamp_seconds",
}
RECONCILER_METRICS = {
    "default_deny_guard_namespaces",
    "default_deny_guard_reconcile_total",
    "default_deny_guard_reconcile_errors_total",
    "default_deny_guard_reconcile_duration_seconds_bucket",
    # The audit of what exists (SPEC section 9).
    "default_deny_guard_violations",
    "default_deny_guard_exceptions_active",
    "default_deny_guard_namespace_coverage",
}
CONTRACT_METRICS = WEBHOOK_METRICS | RECONCILER_METRICS | {"default_deny_guard_build_info"}


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def b64(pem: str) -> str:
    return base64.b64encode(pem.encode()).decode()


# === Kinds per mode ===

WEBHOOK = {"NetworkPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding",
           "Service", "Deployment", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
# The reconciler (on by default) adds a Deployment, Service, ServiceAccount, ClusterRole(Binding) and NetworkPolicy of
# its own: no new kinds (its Events are granted by its ClusterRole, in every namespace; no Role in `default`).
BASE = WEBHOOK
MONITORING = {"ServiceMonitor", "PrometheusRule"}
EXPECTED_KINDS = {
    "default-values.yaml": BASE,
    "cert-manager-values.yaml": BASE - {"Secret"} | {"Issuer", "Certificate"},
    "cert-manager-issuer-values.yaml": BASE - {"Secret"} | {"Certificate"},
    "existing-secret-values.yaml": BASE - {"Secret"},
    "ha-off-values.yaml": BASE - {"PodDisruptionBudget"},
    "ha-on-values.yaml": BASE,
    "hpa-values.yaml": BASE | {"HorizontalPodAutoscaler"},
    "monitoring-values.yaml": BASE | {"ServiceMonitor", "PrometheusRule", "ConfigMap"},
    "namespace-cache-off-values.yaml": BASE,  # the webhook's ClusterRole goes, the reconciler's stays
    "options-values.yaml": BASE | {"ConfigMap"},
    "reconciler-values.yaml": BASE | MONITORING | {"ConfigMap"},
    "reconciler-cronjob-values.yaml": BASE | MONITORING | {"CronJob"},
    "reconciler-off-values.yaml": WEBHOOK | MONITORING,
    "url-values.yaml": {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"},
    # Kubernetes 1.37 (the renderings' version): the MutatingAdmissionPolicy is v1 there.
    "apiserver-policies-values.yaml": BASE | {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                                              "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"},
}

# The reconciler's objects, by mode: (kind, name).
RECONCILER_OBJECTS = {
    ("Deployment", RECONCILER), ("Service", RECONCILER), ("ServiceAccount", RECONCILER),
    ("ClusterRole", RECONCILER), ("ClusterRoleBinding", RECONCILER), ("NetworkPolicy", RECONCILER),
}
RECONCILER_CRONJOB_OBJECTS = (RECONCILER_OBJECTS - {("Deployment", RECONCILER), ("Service", RECONCILER)}
                              | {("CronJob", RECONCILER)})


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
        assert len(meta["name"]) <= (52 if d["kind"] == "CronJob" else 63), where
        reconciler = meta["name"] == RECONCILER
        assert d["kind"] not in ("Role", "RoleBinding"), f"{where}: the chart grants nothing outside its ClusterRoles"
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, where
        elif not (d["kind"] == "ConfigMap" and meta["name"].endswith("-dashboard")):
            assert meta["namespace"] == NAMESPACE, f"{where}: `helm template | kubectl apply` needs the namespace"
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "default-deny-guard", where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/component"] == ("reconciler" if reconciler else "webhook"), where
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
        assert [c["name"] for c in w["matchConditions"]] == [CHART_CONDITION[w["name"]]], "the chart's own"
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
    for name in (VALIDATE_NP, VALIDATE_NS):
        assert hooks[name]["matchConditions"][1:] == cond, "the user's come after the chart's own"
        assert hooks[name]["matchConditions"][0]["name"] == CHART_CONDITION[name]
    assert [c["name"] for c in hooks[MUTATE_NS]["matchConditions"]] == [CHART_CONDITION[MUTATE_NS]]
    assert hooks[MUTATE_NS]["failurePolicy"] == "Fail"
    assert hooks[MUTATE_NS]["reinvocationPolicy"] == "IfNeeded"
    user_term = {"key": "example.com/unmanaged", "operator": "DoesNotExist"}
    for name in (VALIDATE_NP, VALIDATE_NS):
        exprs = hooks[name]["namespaceSelector"]["matchExpressions"]
        assert user_term in exprs
        assert exprs[0]["key"] == "kubernetes.io/metadata.name", "the chart's exemption stays, ANDed with the user's"


# The chart's own matchConditions (generated from src/policies/ into templates/apiserver-policies.yaml).
CHART_CONDITION = {
    VALIDATE_NP: "selects-every-pod",
    VALIDATE_NS: "removes-the-enable-label",
    MUTATE_NS: "lacks-the-enable-label",
}


def test_chart_match_conditions_can_be_turned_off():
    off = render(values={"webhook": {"matchConditions": {"enabled": False}}}).webhooks()
    assert all("matchConditions" not in w for w in off.values())


def test_kubernetes_below_the_tested_versions_is_refused():
    # The floor is the oldest version the end-to-end suite runs on (docs/e2e.md).
    err = render_error(kube_version="1.33.0")
    assert "chart requires kubeVersion: >=1.34.0-0 which is incompatible with Kubernetes v1.33.0" in err


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
    svc = r.one("Service", FULLNAME)
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
                    return self.reply(200, {"major": "1", "minor": "37", "gitVersion": "v1.37.2"})
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
    from conftest import KUBE_VERSION, helm
    proc = subprocess.run([helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=server",
                           "--kube-version", KUBE_VERSION],
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
    svc = {p["name"]: p for p in r.one("Service", FULLNAME)["spec"]["ports"]}
    for name in ("https", "metrics"):
        target = svc[name]["targetPort"]
        assert (ports[target] if isinstance(target, str) else target) == ports[name], name
    assert svc["metrics"]["port"] == ports["metrics"]
    # The Service selects the webhook pods, and only them.
    assert r.one("Service", FULLNAME)["spec"]["selector"] == r.deployment["spec"]["selector"]["matchLabels"]
    pod_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    assert r.deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "app.kubernetes.io/version" not in r.deployment["spec"]["selector"]["matchLabels"], "selectors are immutable"


def test_ports_follow_values():
    r = render(values={"webhook": {"port": 10250, "bindAddress": "[::]"}, "metrics": {"port": 8080},
                       "service": {"port": 8443}})
    flags = r.flags()
    assert flags["addr"] == "[::]:10250" and flags["metrics-addr"] == "[::]:8080"
    svc = {p["name"]: p for p in r.one("Service", FULLNAME)["spec"]["ports"]}
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
        "shutdown-delay": "5s",
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


def assert_restricted(pod_sc: dict, sc: dict):
    """The pod and container security contexts of Pod Security's `restricted` profile, as both Deployments set them:
    non-root numeric user (the image's 65532), RuntimeDefault seccomp, read-only root, no privilege, no capability."""
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc


@pytest.mark.parametrize("mode", IN_CLUSTER_MODES)
def test_pod_security(mode):
    r = render(mode)
    assert_restricted(r.pod["securityContext"], r.container["securityContext"])
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
    assert "lifecycle" not in r.container, "the webhook's own drain pauses, not a preStop hook"
    assert r.flags()["shutdown-delay"] == "5s"
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


def test_the_pause_is_the_servers_own_drain_unless_the_kubelets_sleep_is_asked_for():
    r = render()
    assert "lifecycle" not in r.container
    assert r.flags()["shutdown-delay"] == "5s", "serve drains itself: unready at SIGTERM, connections told to move"
    r = render(values={"preStop": {"by": "kubelet"}})
    assert r.container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert "shutdown-delay" not in r.flags(), "the sleep action pauses; serve closes at SIGTERM"
    assert r.pod["terminationGracePeriodSeconds"] >= 5 + int(r.flags()["shutdown-timeout"].rstrip("s"))
    r = render(values={"preStop": {"enabled": False}})
    assert "lifecycle" not in r.container and "shutdown-delay" not in r.flags()
    assert r.one("PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    err = render_error(values={"preStop": {"by": "sleep"}})
    assert "preStop.by" in err and "kubelet" in err, err


def test_grace_period_must_cover_the_shutdown():
    err = render_error(values={"terminationGracePeriodSeconds": 20})
    assert "must cover preStop.sleepSeconds (5) plus config.shutdownTimeoutSeconds (25)" in err


def test_single_replica_with_min_available_is_refused():
    err = render_error(values={"replicaCount": 1, "podDisruptionBudget": {"minAvailable": 1}})
    assert "no node could ever be drained" in err


# === RBAC and ServiceAccount ===

def test_rbac_is_least_privilege():
    r = render()
    role = r.one("ClusterRole", FULLNAME)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]
    assert not r.all("Role") and not r.all("RoleBinding")
    binding = r.one("ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = r.one("ServiceAccount", FULLNAME)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    assert r.pod["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False
    assert r.pod["automountServiceAccountToken"] is True, "the namespace cache needs the token"


def test_no_rbac_and_no_token_without_the_namespace_cache():
    r = render("namespace-cache-off-values.yaml")
    assert r.flags()["namespace-cache"] == "off"
    assert r.pod["automountServiceAccountToken"] is False
    np = r.one("NetworkPolicy", FULLNAME)["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"] and np["egress"] == []


# === The chart's own NetworkPolicy ===

def is_default_deny(spec: dict) -> bool:
    """docs/design.md section 3, condition 1: a policy is default-deny only if its podSelector selects every pod."""
    sel = spec.get("podSelector") or {}
    return not sel.get("matchLabels") and not sel.get("matchExpressions")


def test_networkpolicy_default():
    r = render()
    np = r.one("NetworkPolicy", FULLNAME)["spec"]
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
    np = r.one("NetworkPolicy", FULLNAME)["spec"]
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
    sm = r.one("ServiceMonitor", FULLNAME)
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in r.one("Service", FULLNAME)["spec"]["ports"]}
    assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["scheme"] == "http"
    assert sm["spec"]["selector"]["matchLabels"].items() <= r.one("Service", FULLNAME)["metadata"]["labels"].items()
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
        assert a["labels"]["severity"] in ("info", "warning", "critical"), name
        assert a["annotations"]["summary"] and a["annotations"]["description"], name
        assert "{{ $labels" not in a["expr"]
        used |= metric_names(a["expr"])
    assert used <= CONTRACT_METRICS, used - CONTRACT_METRICS
    # docs/design.md section 7: webhook errors, latency, certificate expiry, unprotected namespaces (and denial spikes).
    expr = {n: a["expr"] for n, a in alerts.items()}
    assert 'decision="error"' in expr["DefaultDenyGuardAdmissionErrors"]
    assert "apiserver_admission_webhook_rejection_count" in expr["DefaultDenyGuardWebhookCallsFailing"]
    assert 'decision="deny"' in expr["DefaultDenyGuardDenialSpike"]
    assert "default_deny_guard_admission_duration_seconds_bucket" in expr["DefaultDenyGuardHighLatency"]
    assert "histogram_quantile(0.99" in expr["DefaultDenyGuardHighLatency"]
    assert "> 0.25" in expr["DefaultDenyGuardHighLatency"]
    assert "default_deny_guard_certificate_expiry_timestamp_seconds" in expr["DefaultDenyGuardCertificateExpiringSoon"]
    assert "14 * 86400" in expr["DefaultDenyGuardCertificateExpiringSoon"]
    assert 'default_deny_guard_namespaces{state="unprotected", ' in expr["DefaultDenyGuardUnprotectedNamespaces"]
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
    assert used <= CONTRACT_METRICS, used - CONTRACT_METRICS
    # docs/design.md section 7: decisions by rule, latency percentiles, exceptions used, coverage.
    assert any("by (rule, decision)" in e for e in exprs["Decisions by rule"])
    assert [("histogram_quantile(0.5" in e, "histogram_quantile(0.99" in e) for e in exprs["Latency p50 / p99"]] == [
        (True, False), (False, True)]
    assert all("default_deny_guard_exceptions_total" in e and "by (kind)" in e for e in exprs["Exceptions used"])
    assert all("default_deny_guard_namespaces" in e and "by (state)" in e for e in exprs["Coverage"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


# === The reconciler ===

CONTROLLER_MODES = [m for m in IN_CLUSTER_MODES if m not in ("reconciler-off-values.yaml",
                                                             "reconciler-cronjob-values.yaml")]
RECONCILER_MODES = CONTROLLER_MODES + ["reconciler-cronjob-values.yaml"]
# The rules' flags (RuleArgs in src/cli.rs) that `serve` and `reconcile` must be given alike.
RULE_FLAGS = {"system-namespaces", "system-namespace-label", "enable-label", "exception-annotation",
              "exception-expires-annotation"}
NAMESPACES_RULE = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}
POLICIES_RULE = {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                 "verbs": ["list", "watch", "create", "patch", "update"]}
EVENTS_RULE = {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
# The audit's reports (reconciler.audit.reports): its own objects only, hence the one `delete` the reconciler has.
REPORT_VERBS = ["list", "create", "patch", "delete"]
WGPOLICY_RULE = {"apiGroups": ["wgpolicyk8s.io"], "resources": ["policyreports", "clusterpolicyreports"],
                 "verbs": REPORT_VERBS}
OPENREPORTS_RULE = {"apiGroups": ["openreports.io"], "resources": ["reports", "clusterreports"],
                    "verbs": REPORT_VERBS}
REPORT_RULES = [WGPOLICY_RULE, OPENREPORTS_RULE]


def reconciler_objects(r: Rendering) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in r.docs if d["metadata"]["name"] == RECONCILER}


@pytest.mark.parametrize("mode", MODES)
def test_reconciler_objects(mode):
    expected = {
        "reconciler-cronjob-values.yaml": RECONCILER_CRONJOB_OBJECTS - {("ServiceAccount", RECONCILER)},
        "reconciler-off-values.yaml": set(),
        "url-values.yaml": set(),  # out-of-cluster mode renders the webhook configurations only
    }.get(mode, RECONCILER_OBJECTS)
    if mode in CONTROLLER_MODES and "ServiceMonitor" in EXPECTED_KINDS[mode]:
        expected = expected | {("ServiceMonitor", RECONCILER)}
    assert reconciler_objects(render(mode)) == expected


def grants(r: Rendering) -> dict[str, list[tuple[str | None, dict]]]:
    """ServiceAccount name -> the (namespace or None for cluster-wide, rule) it is granted by the rendered bindings."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in r.all("ClusterRole") + r.all("Role")}
    out: dict[str, list] = {}
    for b in r.all("ClusterRoleBinding") + r.all("RoleBinding"):
        ns = b["metadata"].get("namespace")
        ref = b["roleRef"]
        role = roles[(ref["kind"], None if ref["kind"] == "ClusterRole" else ns, ref["name"])]
        for subject in b["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE
            out.setdefault(subject["name"], []).extend((ns, rule) for rule in role["rules"])
    return out


@pytest.mark.parametrize("reports, report_rules", [
    (None, [WGPOLICY_RULE]),                                  # the default: wgpolicyk8s.io
    ([], []),                                                 # --reports none: no access to any report
    (["openreports.io"], [OPENREPORTS_RULE]),
    (["wgpolicyk8s.io", "openreports.io"], [WGPOLICY_RULE, OPENREPORTS_RULE]),
    (["openreports.io", "wgpolicyk8s.io"], [WGPOLICY_RULE, OPENREPORTS_RULE]),
])
def test_reconciler_rbac_is_exactly_the_documented_one(reports, report_rules):
    """The whole rule list, so that any widening fails: one ClusterRole, Events in every namespace (a NetworkPolicy's
    Events go to its namespace), and the report kinds of the APIs asked for only."""
    r = render(values=None if reports is None else {"reconciler": {"audit": {"reports": reports}}})
    role = r.one("ClusterRole", RECONCILER)
    assert role["rules"] == [NAMESPACES_RULE, POLICIES_RULE, EVENTS_RULE] + report_rules
    assert not r.all("Role") and not r.all("RoleBinding"), "no Role in `default` any more: the ClusterRole has Events"
    sa = r.one("ServiceAccount", RECONCILER)["metadata"]["name"]
    assert r.reconciler_pod["serviceAccountName"] == sa
    b = r.one("ClusterRoleBinding", RECONCILER)
    assert "namespace" not in b["metadata"]
    assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RECONCILER}
    assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert sorted(grants(r)[sa], key=str) == sorted(
        [(None, rule) for rule in [NAMESPACES_RULE, POLICIES_RULE, EVENTS_RULE] + report_rules], key=str)


@pytest.mark.parametrize("mode, report_rules", [
    ("reconciler-values.yaml", REPORT_RULES),      # both APIs
    ("reconciler-cronjob-values.yaml", []),        # reports: []
])
def test_reconciler_rbac_follows_the_report_apis_in_both_modes(mode, report_rules):
    role = render(mode).one("ClusterRole", RECONCILER)
    assert role["rules"] == [dict(NAMESPACES_RULE, verbs=["list", "watch", "patch"]), POLICIES_RULE,
                             EVENTS_RULE] + report_rules


def test_reconciler_rbac_patches_namespaces_only_for_the_backfill():
    role = render(values={"reconciler": {"backfill": True}}).one("ClusterRole", RECONCILER)
    assert role["rules"] == [dict(NAMESPACES_RULE, verbs=["list", "watch", "patch"]), POLICIES_RULE, EVENTS_RULE,
                             WGPOLICY_RULE]
    assert render("reconciler-cronjob-values.yaml").one("ClusterRole", RECONCILER)["rules"][0]["verbs"] == [
        "list", "watch", "patch"]


@pytest.mark.parametrize("mode", IN_CLUSTER_MODES)
def test_only_the_reconciler_may_write(mode):
    """Least privilege: the webhook's ServiceAccount reads namespaces and nothing else; only the reconciler's writes
    NetworkPolicies; nobody gets `get` or a wildcard, and `delete` only the reconciler on its own report kinds."""
    r = render(mode)
    by_sa = grants(r)
    webhook_sa = r.pod["serviceAccountName"]
    for ns, rule in by_sa.get(webhook_sa, []):
        assert (ns, rule) == (None, {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]})
    for sa, rules in by_sa.items():
        for ns, rule in rules:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], (sa, rule)
            if sa != webhook_sa:
                assert ns is None, (sa, rule)
                assert not {"get", "deletecollection"} & set(rule["verbs"]), (sa, rule)
                if "delete" in rule["verbs"]:
                    assert rule in REPORT_RULES, (sa, rule)
    if mode != "reconciler-off-values.yaml":
        reconciler_sa = r.reconciler_pod["serviceAccountName"]
        assert reconciler_sa != webhook_sa
        assert (None, POLICIES_RULE) in by_sa[reconciler_sa]


def test_reconciler_rbac_follows_rbac_create():
    r = render(values={"rbac": {"create": False}})
    assert not r.all("ClusterRole") and not r.all("Role") and not r.all("ClusterRoleBinding")
    assert r.one("ServiceAccount", RECONCILER), "the ServiceAccount still comes with the reconciler"


def test_reconciler_service_account():
    r = render()
    sa = r.one("ServiceAccount", RECONCILER)
    assert sa["automountServiceAccountToken"] is False
    assert r.reconciler_pod["automountServiceAccountToken"] is True, "it watches and writes through the API"
    assert sa["metadata"]["labels"]["app.kubernetes.io/component"] == "reconciler"
    r = render("reconciler-values.yaml")
    assert r.one("ServiceAccount", RECONCILER)["metadata"]["annotations"] == {
        "example.com/purpose": "writes NetworkPolicies"}
    r = render("reconciler-cronjob-values.yaml")
    assert r.reconciler_pod["serviceAccountName"] == "ddg-reconciler"
    assert r.one("ClusterRoleBinding", RECONCILER)["subjects"][0]["name"] == "ddg-reconciler"
    assert ("ServiceAccount", "ddg-reconciler") not in {(d["kind"], d["metadata"]["name"]) for d in r.docs}


@pytest.mark.parametrize("values, complaint", [
    ({"reconciler": {"serviceAccount": {"create": False}}}, "reconciler.serviceAccount.name is required"),
    ({"reconciler": {"serviceAccount": {"name": FULLNAME}}}, "must not share the ServiceAccount"),
    ({"reconciler": {"backfill": True}, "config": {"warn": ["R4"]}}, "R4 is in warn mode"),
    ({"reconciler": {"healthPort": 9091}}, "need a port each"),
    ({"reconciler": {"terminationGracePeriodSeconds": 10}}, "must cover reconciler.shutdownTimeoutSeconds (25)"),
])
def test_reconciler_checks(values, complaint):
    assert complaint in render_error(values=values)


@pytest.mark.parametrize("mode", RECONCILER_MODES)
def test_reconciler_gets_the_webhooks_rule_flags(mode):
    """One `config` block for both: the reconciler must treat as system namespaces, enabled and excepted exactly
    what the webhook does (else the webhook's R1 refuses the reconciler's applies)."""
    r = render(mode)
    serve, reconcile = r.flags(), r.reconciler_flags()
    assert {k: v for k, v in reconcile.items() if k in RULE_FLAGS} == {k: v for k, v in serve.items()
                                                                       if k in RULE_FLAGS}
    assert {"system-namespaces", "enable-label", "exception-annotation", "exception-expires-annotation"} <= set(
        reconcile)
    assert reconcile["log-format"] == serve["log-format"]
    assert not {"trusted-deleters", "warn", "namespace-cache", "tls-cert", "addr"} & set(reconcile), "serve's only"
    assert r.reconciler_container["image"] == r.container["image"], "one binary, one image"
    assert r.reconciler_container["imagePullPolicy"] == r.container["imagePullPolicy"]


def test_reconciler_default_flags():
    r = render()
    assert r.reconciler_container["args"][0] == "reconcile"
    assert r.reconciler_flags() == {
        "log-format": "json",
        "system-namespaces": "kube-system,kube-public,kube-node-lease",
        "enable-label": "default-deny=enabled",
        "exception-annotation": "default-deny-guard.io/exception",
        "exception-expires-annotation": "default-deny-guard.io/exception-expires",
        "policy-types": "Ingress",
        "dns-namespace-selector": "kubernetes.io/metadata.name=kube-system",
        "dns-pod-selector": "k8s-app=kube-dns",
        "dns-ports": "53",
        "exceptions-expiring-within": "7d",
        "reports": "wgpolicyk8s.io",
        "health-addr": "0.0.0.0:8081",
        "metrics-addr": "0.0.0.0:9091",
        "resync-interval": "10m",
        "concurrency": "4",
        "reconcile-timeout": "30s",
        "shutdown-timeout": "25s",
    }
    assert "env" not in r.reconciler_container
    assert r.reconciler_workload()["spec"]["replicas"] == 1


def test_reconciler_flags_follow_values():
    r = render("reconciler-values.yaml")
    flags = r.reconciler_flags()
    assert flags["backfill"] is True
    assert flags["policy-types"] == "Ingress,Egress"
    assert flags["dns-namespace-selector"] == "kubernetes.io/metadata.name=openshift-dns"
    assert flags["dns-pod-selector"] == "dns.operator.openshift.io/daemonset-dns=default"
    assert flags["dns-ports"] == "5353"
    assert (flags["health-addr"], flags["metrics-addr"]) == ("0.0.0.0:8181", "0.0.0.0:9191")
    assert (flags["resync-interval"], flags["concurrency"], flags["reconcile-timeout"]) == ("5m", "8", "20s")
    assert flags["shutdown-timeout"] == "20s" and r.reconciler_pod["terminationGracePeriodSeconds"] == 25
    assert flags["enable-label"] == "netpol.example.com/default-deny=on"
    assert flags["system-namespace-label"] == "platform.example.com/system=true"
    assert (flags["exceptions-expiring-within"], flags["reports"]) == ("14d", "wgpolicyk8s.io,openreports.io")
    assert "once" not in flags and "dry-run" not in flags
    assert {"name": "RUST_BACKTRACE", "value": "1"} in r.reconciler_container["env"]
    assert r.reconciler_workload()["spec"]["replicas"] == 2
    template = r.reconciler_pod_template
    assert template["metadata"]["annotations"] == {"example.com/team": "platform"}
    assert template["metadata"]["labels"]["example.com/tier"] == "control"
    assert r.reconciler_pod["priorityClassName"] == "system-cluster-critical"
    assert r.reconciler_pod["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane"
    assert "podAntiAffinity" in r.reconciler_pod["affinity"]
    # Its own extra arguments and environment, not the webhook's (serve's flags would make reconcile fail).
    r = render("options-values.yaml", values={"reconciler": {"extraArgs": ["--future-flag=1"],
                                                             "dns": {"ports": [53, 5353]}}})
    assert r.reconciler_container["args"][-1] == "--future-flag=1"
    assert "--max-body-bytes" not in r.reconciler_container["args"]
    assert "env" not in r.reconciler_container
    assert r.reconciler_flags()["dns-ports"] == "53,5353"
    assert r.reconciler_pod.get("imagePullSecrets") == [{"name": "regcred"}]
    assert r.reconciler_container["image"].endswith("@sha256:" + "0" * 64)


@pytest.mark.parametrize("mode", ["controller", "cronjob"])
def test_the_audit_can_be_left_to_another_tool(mode):
    """`reconciler.audit.enabled: false`: `--audit=false` and none of the audit's flags, no report access, no alerts."""
    off = {"enabled": False, "reports": ["wgpolicyk8s.io", "openreports.io"]}
    r = render(values={"reconciler": {"mode": mode, "audit": off},
                       "metrics": {"prometheusRule": {"enabled": True}}})
    args = r.reconciler_container["args"]
    assert "--audit=false" in args
    assert not [a for a in args if a.startswith(("--reports", "--exceptions-expiring-within"))]
    assert r.one("ClusterRole", RECONCILER)["rules"] == [NAMESPACES_RULE, POLICIES_RULE, EVENTS_RULE]
    alerts = {a.get("alert") for a in r.one("PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert not set(AUDIT_ALERTS) & alerts
    on = render(values={"reconciler": {"mode": mode}})
    assert "--audit=false" not in on.reconciler_container["args"]


@pytest.mark.parametrize("mode", ["controller", "cronjob"])
@pytest.mark.parametrize("audit, expected", [
    ({}, ("7d", "wgpolicyk8s.io")),
    ({"reports": []}, ("7d", "none")),                               # empty list: `--reports none`, not `--reports=`
    ({"reports": ["openreports.io"], "exceptionsExpiringWithin": "36h"}, ("36h", "openreports.io")),
    ({"reports": ["wgpolicyk8s.io", "openreports.io"], "exceptionsExpiringWithin": "2w"},
     ("2w", "wgpolicyk8s.io,openreports.io")),
])
def test_audit_flags_reach_both_workloads(mode, audit, expected):
    """Both the Deployment and the CronJob run `reconcile`, and both audit: the same two flags, once each."""
    r = render(values={"reconciler": {"mode": mode, "audit": audit}})
    assert r.reconciler_workload()["kind"] == ("Deployment" if mode == "controller" else "CronJob")
    flags = r.reconciler_flags()
    assert (flags["exceptions-expiring-within"], flags["reports"]) == expected
    args = r.reconciler_container["args"]
    assert [a for a in args if a.startswith(("--reports", "--exceptions-expiring-within"))] == [
        f"--exceptions-expiring-within={expected[0]}", f"--reports={expected[1]}"]


@pytest.mark.parametrize("mode", CONTROLLER_MODES)
def test_reconciler_ports_probes_and_service_agree(mode):
    r = render(mode)
    c, flags = r.reconciler_container, r.reconciler_flags()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": port_of(flags["health-addr"]), "metrics": port_of(flags["metrics-addr"])}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["scheme"] == "HTTP", probe
        assert get["port"] in ("health", ports["health"]), probe
    svc = r.one("Service", RECONCILER)
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] in ("metrics", ports["metrics"])
    assert port["port"] == ports["metrics"]
    w = r.reconciler_workload()
    assert svc["spec"]["selector"] == w["spec"]["selector"]["matchLabels"]
    assert w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
    webhook_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= webhook_labels.items(), "the Services must not select each other's pods"
    assert not r.one("Service", FULLNAME)["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
    assert w["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert r.reconciler_pod["terminationGracePeriodSeconds"] >= int(flags["shutdown-timeout"].rstrip("s"))


def test_reconciler_addresses_follow_the_bind_address():
    flags = render(values={"webhook": {"bindAddress": "[::]"}}).reconciler_flags()
    assert flags["health-addr"] == "[::]:8081" and flags["metrics-addr"] == "[::]:9091"


@pytest.mark.parametrize("mode", RECONCILER_MODES)
def test_reconciler_pod_security(mode):
    r = render(mode)
    assert_restricted(r.reconciler_pod["securityContext"], r.reconciler_container["securityContext"])
    assert "volumes" not in r.reconciler_pod and "volumeMounts" not in r.reconciler_container
    assert not r.reconciler_pod.get("hostNetwork")
    assert "memory" in r.reconciler_container["resources"]["limits"]
    assert "cpu" not in r.reconciler_container["resources"]["limits"]
    assert r.reconciler_pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_reconciler_is_not_scaled_or_budgeted_with_the_webhook():
    r = render("hpa-values.yaml")
    assert r.one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert r.reconciler_workload()["spec"]["replicas"] == 1
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "webhook"


def test_reconciler_cronjob_mode():
    r = render("reconciler-cronjob-values.yaml")
    cj = r.reconciler_workload()
    assert cj["kind"] == "CronJob" and cj["apiVersion"] == "batch/v1"
    assert cj["spec"]["schedule"] == "*/30 * * * *"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    job = cj["spec"]["jobTemplate"]["spec"]
    assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (1, 300)
    assert r.reconciler_pod["restartPolicy"] == "Never"
    flags = r.reconciler_flags()
    assert flags["once"] is True and flags["backfill"] is True
    assert flags["reports"] == "none" and flags["exceptions-expiring-within"] == "7d"
    assert not {"health-addr", "metrics-addr", "resync-interval", "shutdown-timeout"} & set(flags)
    c = r.reconciler_container
    assert not {"ports", "livenessProbe", "readinessProbe", "startupProbe"} & set(c), "one pass serves nothing"
    assert ("Service", RECONCILER) not in reconciler_objects(r)
    assert [sm["metadata"]["name"] for sm in r.all("ServiceMonitor")] == [FULLNAME]
    assert r.one("NetworkPolicy", RECONCILER)["spec"]["ingress"] == []


def test_reconciler_off():
    r = render("reconciler-off-values.yaml")
    assert reconciler_objects(r) == set()
    assert not r.all("Role") and not r.all("RoleBinding")
    alerts = {a.get("alert") for a in r.one("PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert not {"DefaultDenyGuardUnprotectedNamespaces", "DefaultDenyGuardReconcilerDown"} & alerts, (
        "nothing would export the reconciler's metrics")
    assert "The reconciler is off" in render_notes("reconciler-off-values.yaml")


# --- its NetworkPolicy ---

@pytest.mark.parametrize("mode", RECONCILER_MODES)
def test_reconciler_networkpolicy_covers_its_pods(mode):
    r = render(mode)
    np = r.one("NetworkPolicy", RECONCILER)["spec"]
    pod_labels = r.reconciler_pod_template["metadata"]["labels"]
    assert np["podSelector"]["matchLabels"].items() <= pod_labels.items(), "it selects the reconciler pods"
    assert not is_default_deny(np), "the chart's policy must not itself trip R1/R2"
    webhook_np = r.one("NetworkPolicy", FULLNAME)["spec"]
    assert not webhook_np["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert not np["podSelector"]["matchLabels"].items() <= r.deployment["spec"]["template"]["metadata"]["labels"].items()
    if r.reconciler_workload()["kind"] == "Deployment":
        names = {p["name"] for p in r.reconciler_container["ports"]}
        by_port = {rule["ports"][0]["port"]: rule for rule in np["ingress"]}
        assert set(by_port) == {"health", "metrics"} == names, "ingress to its health and metrics ports only"
        assert "from" not in by_port["health"], "the kubelet probes from the node's address"


def test_reconciler_networkpolicy_metrics_from_and_egress():
    r = render("options-values.yaml")
    np = r.one("NetworkPolicy", RECONCILER)["spec"]
    by_port = {rule["ports"][0]["port"]: rule for rule in np["ingress"]}
    assert by_port["metrics"]["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    (egress,) = np["egress"]
    assert [p["port"] for p in egress["ports"]] == [443, 6443]
    assert egress["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    # Egress is left alone by default.
    np = render().one("NetworkPolicy", RECONCILER)["spec"]
    assert np["policyTypes"] == ["Ingress"] and "egress" not in np


def test_egress_deny_implies_the_api_server_egress_rules():
    """With Egress in the reconciler's policy, the release namespace may get a policy that denies egress (it is not
    a system namespace): both of the chart's policies must then allow the API server, even with
    networkPolicy.egress.enabled false."""
    r = render("reconciler-values.yaml")
    for name in (FULLNAME, RECONCILER):
        np = r.one("NetworkPolicy", name)["spec"]
        assert np["policyTypes"] == ["Ingress", "Egress"], name
        assert [p["port"] for p in np["egress"][0]["ports"]] == [443, 6443], name
        assert "to" not in np["egress"][0]


# --- its monitoring ---

@pytest.mark.parametrize("mode", ["monitoring-values.yaml", "reconciler-values.yaml"])
def test_service_monitors_scrape_each_component_as_its_own_job(mode):
    r = render(mode)
    for name in (FULLNAME, RECONCILER):
        sm, svc = r.one("ServiceMonitor", name), r.one("Service", name)
        other = r.one("Service", RECONCILER if name == FULLNAME else FULLNAME)
        selector = sm["spec"]["selector"]["matchLabels"].items()
        assert selector <= svc["metadata"]["labels"].items(), name
        assert not selector <= other["metadata"]["labels"].items(), f"{name} would also scrape {other['metadata']['name']}"
        (ep,) = sm["spec"]["endpoints"]
        assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["scheme"] == "http"
        assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
        assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The reconciler's Service port is the container's `--metrics-addr` port.
    svc_port = r.one("Service", RECONCILER)["spec"]["ports"][0]["port"]
    assert svc_port == port_of(r.reconciler_flags()["metrics-addr"])


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, its label matchers) for each of our metrics in a PromQL expression."""
    return re.findall(r"\b(default_deny_guard_[a-z_]+)\{([^}]*)\}", expr)


@pytest.mark.parametrize("mode", ["monitoring-values.yaml", "reconciler-values.yaml"])
def test_alerts_select_the_right_job(mode):
    r = render(mode)
    (group,) = r.one("PrometheusRule")["spec"]["groups"]
    alerts = {a["alert"]: a["expr"] for a in group["rules"] if "alert" in a}
    for name, expr in alerts.items():
        for metric, matchers in selectors(expr):
            job = RECONCILER if metric in RECONCILER_METRICS else FULLNAME
            assert f'job="{job}"' in matchers, (name, metric, matchers)
            assert f'namespace="{NAMESPACE}"' in matchers, (name, metric)
    for name in ("DefaultDenyGuardCertificateExpiringSoon", "DefaultDenyGuardCertificateExpiring"):
        assert f'job="{FULLNAME}"' in alerts[name] and RECONCILER not in alerts[name], "the webhook's certificate only"
    assert alerts["DefaultDenyGuardDown"] == f'absent(up{{namespace="{NAMESPACE}", job="{FULLNAME}"}} == 1)'
    assert alerts["DefaultDenyGuardReconcilerDown"] == f'absent(up{{namespace="{NAMESPACE}", job="{RECONCILER}"}} == 1)'
    unprotected = alerts["DefaultDenyGuardUnprotectedNamespaces"]
    assert unprotected.startswith("max by (namespace) (default_deny_guard_namespaces{"), "every replica reports all"
    assert 'state="unprotected"' in unprotected and unprotected.endswith("> 0")
    assert "default_deny_guard_reconcile_errors_total" in alerts["DefaultDenyGuardReconcileErrors"]
    for expr in alerts.values():
        promql_ok(expr)


def test_cronjob_mode_alerts_on_the_last_pass():
    r = render("reconciler-cronjob-values.yaml")
    (group,) = r.one("PrometheusRule")["spec"]["groups"]
    alerts = {a["alert"]: a for a in group["rules"] if "alert" in a}
    assert not {"DefaultDenyGuardUnprotectedNamespaces", "DefaultDenyGuardReconcilerDown",
                "DefaultDenyGuardReconcileErrors"} & set(alerts), "a one-shot pass exports no metrics"
    a = alerts["DefaultDenyGuardReconcilePassFailed"]
    promql_ok(a["expr"])
    assert f'cronjob="{RECONCILER}"' in a["expr"] and "kube_cronjob_status_last_successful_time" in a["expr"]
    assert a["for"] == "10m", "longer than a pass may run (activeDeadlineSeconds 300) plus 5 minutes"


AUDIT_ALERTS = ("DefaultDenyGuardDefaultDenyInSystemNamespace", "DefaultDenyGuardNamespacesUncovered",
                "DefaultDenyGuardExceptionsExpiringSoon")


def audit_expr(metric: str, matcher: str) -> str:
    # Every replica reports the whole cluster: max, not sum (as DefaultDenyGuardUnprotectedNamespaces).
    return f'max by (namespace) ({metric}{{{matcher}, namespace="{NAMESPACE}", job="{RECONCILER}"}}) > 0'


def test_audit_alerts_in_controller_mode():
    r = render("reconciler-values.yaml", values={"metrics": {"prometheusRule": {"unprotectedFor": "45m"}}})
    (group,) = r.one("PrometheusRule")["spec"]["groups"]
    alerts = {a["alert"]: a for a in group["rules"] if "alert" in a}
    r1, uncovered, expiring = (alerts[n] for n in AUDIT_ALERTS)
    assert (r1["expr"], r1["for"], r1["labels"]) == (
        audit_expr("default_deny_guard_violations", 'rule="R1"'), "1m", {"severity": "critical"})
    assert (uncovered["expr"], uncovered["for"], uncovered["labels"]) == (
        audit_expr("default_deny_guard_violations", 'rule="coverage"'), "45m", {"severity": "warning"})
    assert uncovered["for"] == alerts["DefaultDenyGuardUnprotectedNamespaces"]["for"], "one setting for both"
    assert (expiring["expr"], expiring["for"], expiring["labels"]) == (
        audit_expr("default_deny_guard_exceptions_active", 'state="expiring"'), "15m", {"severity": "info"})
    for a in (r1, uncovered, expiring):
        promql_ok(a["expr"])
        assert a["annotations"]["summary"] and a["annotations"]["description"]
    d = r1["annotations"]["description"]
    assert "DNS" in d and "right now" in d
    assert "`kubectl get policyreport -A`" in d
    assert "`kubectl get clusterpolicyreport default-deny-guard -o yaml`" in d
    assert "`kubectl get reports.openreports.io -A`" in d, "both APIs are written in this mode"
    assert "`kubectl -n NS delete networkpolicy NAME`" in d and "always allowed" in d
    assert "openshift-*" in d and "platform.example.com/system=true" in d, "which namespaces are system ones"
    d = expiring["annotations"]["description"]
    assert "within 14d (reconciler.audit.exceptionsExpiringWithin)" in d
    assert "14d" in expiring["annotations"]["summary"]
    assert "netpol.example.com/exception-until" in d
    assert "45m" in uncovered["annotations"]["description"]
    # The existing reconciler alerts stay.
    assert {"DefaultDenyGuardUnprotectedNamespaces", "DefaultDenyGuardReconcilerDown",
            "DefaultDenyGuardReconcileErrors"} <= set(alerts)


@pytest.mark.parametrize("reports, finds, not_found", [
    (["openreports.io"], "`kubectl get reports.openreports.io -A`", "policyreport"),
    ([], "`kubectl get events -A --field-selector reason=DefaultDenyInSystemNamespace`", "report"),
])
def test_audit_alerts_say_where_the_findings_are(reports, finds, not_found):
    r = render("monitoring-values.yaml", values={"reconciler": {"audit": {"reports": reports}}})
    alerts = {a["alert"]: a for a in r.one("PrometheusRule")["spec"]["groups"][0]["rules"] if "alert" in a}
    d = alerts["DefaultDenyGuardDefaultDenyInSystemNamespace"]["annotations"]["description"]
    assert finds in d
    assert not_found not in d.replace(finds, "")


@pytest.mark.parametrize("mode", ["reconciler-cronjob-values.yaml", "reconciler-off-values.yaml"])
def test_audit_alerts_need_the_controller(mode):
    """A one-shot pass exports no metrics (its Job's status is the signal), and without the reconciler nothing does."""
    alerts = {a.get("alert") for a in render(mode).one("PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert not set(AUDIT_ALERTS) & alerts


def test_dashboard_reads_the_reconciler():
    r = render("reconciler-values.yaml")
    dash = json.loads(r.one("ConfigMap")["data"]["default-deny-guard.json"])
    panels = {p["title"]: p for p in dash["panels"] if p["type"] != "row"}
    exprs = {t: [x["expr"] for x in p["targets"]] for t, p in panels.items()}
    for title in ("Coverage", "Namespaces by state"):
        (e,) = exprs[title]
        assert e.startswith("max by (state) (default_deny_guard_namespaces{"), "replicas report the same namespaces"
    assert exprs["Unprotected namespaces"] == [
        'max(default_deny_guard_namespaces{namespace=~"$namespace", state="unprotected"})']
    assert "default_deny_guard_reconcile_total" in exprs["Reconciles by result"][0]
    assert "default_deny_guard_reconcile_errors_total" in exprs["Reconcile errors by reason"][0]
    assert all("default_deny_guard_reconcile_duration_seconds_bucket" in e for e in exprs["Reconcile duration p50 / p99"])
    # No panel mixes the webhook's metrics with the reconciler's.
    for title, es in exprs.items():
        used = set().union(*(metric_names(e) for e in es))
        assert not (used & WEBHOOK_METRICS and used & RECONCILER_METRICS), title


def test_dashboard_shows_the_audit():
    raw = (CHART / "dashboards" / "default-deny-guard.json").read_text()
    dash = json.loads(raw)
    assert json.loads(render("reconciler-values.yaml").one("ConfigMap")["data"]["default-deny-guard.json"]) == dash
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    panels = {p["title"]: p for p in dash["panels"]}
    assert panels["Audit"]["type"] == "row"
    exprs = {t: [x["expr"] for x in p.get("targets", [])] for t, p in panels.items()}
    sel = 'namespace=~"$namespace"'
    assert exprs["Violations by rule"] == [f"max by (rule) (default_deny_guard_violations{{{sel}}})"]
    assert exprs["Coverage ratio"] == [
        f'sum(default_deny_guard_namespace_coverage{{{sel}, state="covered"}})'
        f' / sum(default_deny_guard_namespace_coverage{{{sel}, state=~"covered|uncovered"}})']
    assert panels["Coverage ratio"]["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert exprs["Exceptions by state"] == [f"max by (state) (default_deny_guard_exceptions_active{{{sel}}})"]
    for title in ("Violations by rule", "Coverage ratio", "Exceptions by state"):
        p = panels[title]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert all(t["datasource"] == p["datasource"] and t["refId"] for t in p["targets"]), title
        promql_ok(exprs[title][0].replace("$namespace", ".*"))
        # Below the Audit row, side by side, inside Grafana's 24 columns.
        g = p["gridPos"]
        assert g["y"] > panels["Audit"]["gridPos"]["y"] and g["x"] + g["w"] <= 24, title
    # No two panels overlap.
    boxes = [p["gridPos"] for p in dash["panels"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"]
                    or b["y"] + b["h"] <= a["y"]), (a, b)


def test_notes_show_coverage():
    notes = render_notes()
    assert f"rollout status deployment/{RECONCILER}" in notes
    assert "kubectl get networkpolicy -A -l app.kubernetes.io/managed-by=default-deny-guard" in notes
    assert f"port-forward service/{RECONCILER} 9091:9091" in notes
    assert "grep '^default_deny_guard_namespaces'" in notes
    # The backfill preview runs with the very rule flags the reconciler gets.
    r = render()
    rule_args = [a for a in r.reconciler_container["args"] if a[2:].split("=", 1)[0] in RULE_FLAGS]
    assert "reconcile --backfill --dry-run" in notes
    assert " ".join(f"'{a}'" for a in rule_args) in notes
    notes = render_notes("reconciler-values.yaml")
    assert "--backfill --dry-run" not in notes, "the backfill is on"
    assert "labelled at every start" in notes
    notes = render_notes("reconciler-cronjob-values.yaml")
    assert f"create job {RECONCILER}-now --from=cronjob/{RECONCILER}" in notes
    assert "kubectl get networkpolicy -A -l app.kubernetes.io/managed-by=default-deny-guard" in notes
    warn = render_notes(values={"reconciler": {"policyTypes": "Egress"}, "networkPolicy": {"enabled": False}})
    assert "cuts this chart's pods off from the" in warn


def test_notes_show_where_the_findings_are():
    notes = render_notes()
    assert "kubectl get policyreport -A" in notes
    assert "kubectl get clusterpolicyreport default-deny-guard" in notes
    assert "openreports.io" not in notes
    assert "crds --api wgpolicyk8s.io | kubectl apply -f -" in notes
    notes = render_notes("reconciler-values.yaml")
    assert "kubectl get policyreport -A" in notes and "kubectl get reports.openreports.io -A" in notes
    assert "crds --api wgpolicyk8s.io,openreports.io" in notes
    assert "expiring within 14d" in " ".join(notes.split()), "the window of the values"
    notes = render_notes("reconciler-cronjob-values.yaml")
    assert "policyreport" not in notes and "reconciler.audit.reports is empty" in notes
    assert "each pass's log lists them" in notes
    notes = render_notes(values={"reconciler": {"audit": {"reports": []}}})
    assert "policyreport" not in notes and "the reconciler's Events" in notes
    assert "Audit findings" not in render_notes("reconciler-off-values.yaml")


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
    ({"reconciler": {"backfil": True}}, "backfil"),                               # typo under reconciler
    ({"reconciler": {"dns": {"podSelectr": "k8s-app=kube-dns"}}}, "podSelectr"),  # typo nested under reconciler
    ({"reconciler": {"enabled": "yes"}}, "reconciler.enabled"),                   # wrong type
    ({"reconciler": {"mode": "daemonset"}}, "mode"),                              # not an enum value
    ({"reconciler": {"policyTypes": "All"}}, "policyTypes"),                      # --policy-types values only
    ({"reconciler": {"dns": {"podSelector": "k8s-app"}}}, "podSelector"),         # key=value,...
    ({"reconciler": {"dns": {"ports": [0]}}}, "ports"),                           # 1-65535
    ({"reconciler": {"resyncInterval": "10 minutes"}}, "resyncInterval"),         # a duration
    ({"reconciler": {"audit": {"reports": ["policyreports"]}}}, "reports"),        # an API group, not a kind
    ({"reconciler": {"audit": {"reports": ["none"]}}}, "reports"),                 # none is `[]`
    ({"reconciler": {"audit": {"reports": ["openreports.io", "openreports.io"]}}}, "reports"),
    ({"reconciler": {"audit": {"reports": "wgpolicyk8s.io"}}}, "reports"),         # a list
    ({"reconciler": {"audit": {"exceptionsExpiringWithin": "7 days"}}}, "exceptionsExpiringWithin"),
    ({"reconciler": {"audit": {"exceptionsExpiringWithin": "7"}}}, "exceptionsExpiringWithin"),  # a unit
    ({"reconciler": {"audit": {"exceptionsExpiringIn": "7d"}}}, "exceptionsExpiringIn"),  # typo under audit
])
def test_schema_rejects(values, complaint):
    assert complaint in render_error(values=values)


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
    defaults = render()  # one image, two commands: `serve` (the webhook) and `reconcile`
    served = {c["containerPort"] for c in defaults.container["ports"] + defaults.reconciler_container["ports"]}
    assert exposed == served
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
