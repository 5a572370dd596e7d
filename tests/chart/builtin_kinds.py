"""Filters a multi-document YAML stream (stdin) down to the Kubernetes built-in kinds (stdout).

kubernetes-validate knows the Kubernetes API's OpenAPI schemas only, so CRD kinds (cert-manager's Certificate and
Issuer, prometheus-operator's ServiceMonitor and PrometheusRule) cannot be validated by it; it would merely warn.
They are dropped here, named on stderr, and checked structurally by tests/chart/test_chart.py instead.
"""

import sys

import yaml

# API groups served by kube-apiserver itself ("" is the core group).
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling"}


def is_builtin(doc: dict) -> bool:
    group = doc.get("apiVersion", "").rpartition("/")[0]
    return group in BUILTIN_GROUPS or group.endswith(".k8s.io")


def main() -> int:
    kept = []
    for doc in yaml.safe_load_all(sys.stdin):
        if not doc:
            continue
        if is_builtin(doc):
            kept.append(doc)
        else:
            print(f"  not validated (CRD kind, no schema offline): {doc['kind']} {doc['apiVersion']} "
                  f"{doc['metadata']['name']}", file=sys.stderr)
    if not kept:
        print("no built-in objects to validate", file=sys.stderr)
    yaml.safe_dump_all(kept, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
