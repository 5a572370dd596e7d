"""The in-API-server policies in the chart (`apiserverPolicies`): the chart renders exactly what
`default-deny-guard policies` prints for the chart's configuration, and turns the validating webhooks' failurePolicy
to Ignore when they are on.

Needs the binary: $DDG_BIN, else target/debug/default-deny-guard under $CARGO_TARGET_DIR or the repository (hack/test.sh
runs `cargo test` first, which builds it).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import FULLNAME, NAMESPACE, ROOT, render

VAP = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
MAP_V1BETA1 = "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"
VALIDATE_NP = "networkpolicies.validate.default-deny-guard.io"
VALIDATE_NS = "namespaces.validate.default-deny-guard.io"
MUTATE_NS = "namespaces.mutate.default-deny-guard.io"


def binary() -> str:
    if os.environ.get("DDG_BIN"):
        return os.environ["DDG_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    found = target / "debug" / "default-deny-guard"
    if not found.exists():
        pytest.fail(f"{found} not found: run `cargo build` first, or set DDG_BIN", pytrace=False)
    return str(found)


def policies(*flags: str) -> list[dict]:
    cmd = [binary(), "policies", "--with-webhook", "--name-prefix", FULLNAME, "--exempt-namespaces", NAMESPACE, *flags]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def rendered_policies(**kw) -> list[dict]:
    docs = [d for d in render(**kw).docs if "AdmissionPolicy" in d["kind"]]
    for d in docs:
        labels = d["metadata"].pop("labels")  # the chart's own labels are the only addition
        assert labels["app.kubernetes.io/instance"] == "ddg"
    return docs


def by_name(docs: list[dict]) -> dict[tuple[str, str], dict]:
    out = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(out) == len(docs), "a kind/name twice"
    return out


CUSTOM = {
    "config": {
        "systemNamespaces": ["kube-system", "openshift-*", "istio-system", "ab-*"],
        "systemNamespaceLabel": "platform.example.com/system=true",
        "enableLabel": "netpol=deny",
        "exceptionAnnotation": "example.com/why",
        "exceptionExpiresAnnotation": "example.com/until",
        "trustedDeleters": ["system:kube-controller-manager", "system:serviceaccount:kube-system:namespace-controller"],
        "warn": ["R2", "R5"],
    }
}
CUSTOM_FLAGS = (
    "--system-namespaces", "kube-system,openshift-*,istio-system,ab-*",
    "--system-namespace-label", "platform.example.com/system=true",
    "--enable-label", "netpol=deny",
    "--exception-annotation", "example.com/why",
    "--exception-expires-annotation", "example.com/until",
    "--trusted-deleters", "system:kube-controller-manager,system:serviceaccount:kube-system:namespace-controller",
    "--warn", "R2,R5",
)

# (name, chart values, kube version, extra served APIs, policies flags)
CASES = [
    ("defaults-1.37", {"apiserverPolicies": {"enabled": True}}, "1.37.0", (), ("--kube-version", "1.37")),
    ("auto-1.36", {}, "1.36.1", (VAP,), ("--kube-version", "1.36")),
    ("custom-1.37", {"apiserverPolicies": {"enabled": True}, **CUSTOM}, "1.37.0", (), ("--kube-version", "1.37", *CUSTOM_FLAGS)),
    ("v1beta1-served-1.34", {}, "1.34.4", (VAP, MAP_V1BETA1), ("--kube-version", "1.34")),
    ("r4-warn-1.37", {"apiserverPolicies": {"enabled": True}, "config": {"warn": ["R4"]}}, "1.37.0", (),
     ("--kube-version", "1.37", "--warn", "R4")),
    ("label-key-only-1.36", {"apiserverPolicies": {"enabled": True}, "config": {"systemNamespaceLabel": "platform/system"}},
     "1.36.0", (), ("--kube-version", "1.36", "--system-namespace-label", "platform/system")),
]


@pytest.mark.parametrize("name,values,kube,apis,flags", CASES, ids=[c[0] for c in CASES])
def test_chart_renders_what_policies_prints(name, values, kube, apis, flags):
    chart = by_name(rendered_policies(values=values, kube_version=kube, api_versions=apis))
    printed = by_name(policies(*flags))
    assert sorted(chart) == sorted(printed)
    for key, doc in printed.items():
        assert chart[key] == doc, f"{key} differs"
    assert len([k for k in chart if k[0] == "ValidatingAdmissionPolicy"]) == 4


def test_on_1_34_without_the_beta_api_the_chart_leaves_r4_to_the_webhook():
    chart = by_name(rendered_policies(kube_version="1.34.4", api_versions=(VAP,)))
    printed = by_name(policies("--kube-version", "1.34"))
    assert ("MutatingAdmissionPolicy", f"{FULLNAME}-r4") in printed, "policies prints it: the user enables the gate"
    assert not any(k[0].startswith("Mutating") for k in chart), "the cluster does not serve v1beta1"
    assert {k: v for k, v in printed.items() if not k[0].startswith("Mutating")} == chart


def test_policies_are_off_without_the_api_and_when_disabled():
    assert rendered_policies(kube_version="1.37.0") == [], "helm template alone: no ValidatingAdmissionPolicy served"
    assert rendered_policies(values={"apiserverPolicies": {"enabled": False}}, kube_version="1.37.0",
                             api_versions=(VAP,)) == []


def test_release_namespace_stays_exempt():
    for d in rendered_policies(values={"apiserverPolicies": {"enabled": True}}, kube_version="1.37.0"):
        if d["kind"].endswith("Binding"):
            (term,) = d["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
            assert term == {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NAMESPACE]}


def test_validating_failure_policy_follows_the_policies():
    def policies_of(**kw) -> tuple[str, str, str]:
        hooks = render(**kw).webhooks()
        return hooks[VALIDATE_NP]["failurePolicy"], hooks[VALIDATE_NS]["failurePolicy"], hooks[MUTATE_NS]["failurePolicy"]

    on = {"apiserverPolicies": {"enabled": True}}
    assert policies_of(values=on) == ("Ignore", "Ignore", "Ignore"), "the API server holds R1-R3, R5 itself"
    assert policies_of(kube_version="1.37.0", api_versions=(VAP,)) == ("Ignore", "Ignore", "Ignore"), "auto"
    assert policies_of(values={"apiserverPolicies": {"enabled": False}}) == ("Fail", "Fail", "Ignore")
    assert policies_of() == ("Fail", "Fail", "Ignore"), "helm template alone: no ValidatingAdmissionPolicy served"
    pinned = {**on, "webhook": {"validating": {"failurePolicy": "Fail"}}}
    assert policies_of(values=pinned) == ("Fail", "Fail", "Ignore"), "an explicit value wins"


def test_chart_template_is_the_generators():
    """The committed template is src/policies/'s output (the Rust test `policies::tests::chart_template` checks the
    text); here: it has no placeholder left and every policy carries the chart's labels."""
    text = (ROOT / "charts/default-deny-guard/templates/apiserver-policies.yaml").read_text()
    assert "DDGHELM" not in text
    assert text.count('include "default-deny-guard.webhook.labels"') == 10
