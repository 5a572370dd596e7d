"""Renders the chart with `helm template` for the assertions in test_chart.py (no cluster needed).

`helm` is taken from $HELM or $PATH (hack/test-chart.sh puts the pinned one first). Renderings are cached per set of
values, so each mode is rendered once however many tests read it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "default-deny-guard"
CI = CHART / "ci"
RELEASE = "ddg"
NAMESPACE = "ddg-system"
FULLNAME = f"{RELEASE}-default-deny-guard"
RECONCILER = f"{FULLNAME}-reconciler"


def helm() -> str:
    found = os.environ.get("HELM") or shutil.which("helm")
    if not found:
        pytest.exit("helm not found: run hack/test-chart.sh, which installs it", returncode=2)
    return found


@dataclass
class Rendering:
    docs: list[dict]

    def kinds(self) -> set[str]:
        return {d["kind"] for d in self.docs}

    def all(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str) -> dict | None:
        found = self.all(kind)
        assert len(found) <= 1, f"expected at most one {kind}, found {len(found)}"
        return found[0] if found else None

    # --- the webhook Deployment's pieces ---
    @property
    def deployment(self) -> dict:
        return self.one("Deployment", FULLNAME)

    @property
    def pod(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict:
        (c,) = self.pod["containers"]
        return c

    def flags(self) -> dict[str, str]:
        """The container's `--flag=value` arguments (after `serve`), as a dict; repeated flags are an error."""
        args = self.container["args"]
        assert args[0] == "serve", args
        out: dict[str, str] = {}
        for a in args[1:]:
            if not a.startswith("--") or "=" not in a:
                continue
            k, v = a[2:].split("=", 1)
            assert k not in out, f"flag --{k} given twice"
            out[k] = v
        return out

    # --- the reconciler's pieces (Deployment, or the CronJob's pod template) ---
    def reconciler_workload(self) -> dict:
        found = [d for d in self.docs if d["kind"] in ("Deployment", "CronJob") and d["metadata"]["name"] == RECONCILER]
        assert len(found) == 1, f"expected the reconciler's Deployment or CronJob, found {len(found)}"
        return found[0]

    @property
    def reconciler_pod_template(self) -> dict:
        w = self.reconciler_workload()
        return w["spec"]["jobTemplate"]["spec"]["template"] if w["kind"] == "CronJob" else w["spec"]["template"]

    @property
    def reconciler_pod(self) -> dict:
        return self.reconciler_pod_template["spec"]

    @property
    def reconciler_container(self) -> dict:
        (c,) = self.reconciler_pod["containers"]
        return c

    def reconciler_flags(self) -> dict[str, str | bool]:
        """The reconciler's `--flag=value` arguments (after `reconcile`) as a dict, `--flag` alone as True; a repeated
        flag is an error (clap refuses them)."""
        args = self.reconciler_container["args"]
        assert args[0] == "reconcile", args
        out: dict[str, str | bool] = {}
        for a in args[1:]:
            if not a.startswith("--"):
                continue
            k, v = a[2:].split("=", 1) if "=" in a else (a[2:], True)
            assert k not in out, f"flag --{k} given twice"
            out[k] = v
        return out

    def webhooks(self) -> dict[str, dict]:
        """Every webhook of both configurations, by name."""
        out = {}
        for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            for cfg in self.all(kind):
                for w in cfg["webhooks"]:
                    assert w["name"] not in out
                    out[w["name"]] = dict(w, _kind=kind)
        return out


class RenderError(Exception):
    pass


@functools.lru_cache(maxsize=None)
def _render(files: tuple[str, ...], values_json: str, namespace: str, kube_version: str,
            show_only: str | None, chart: str, api_versions: tuple[str, ...] = ()) -> str:
    cmd = [helm(), "template", RELEASE, chart, "--namespace", namespace]
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            cmd += ["--values", str(CI / f) if "/" not in f else f]
        if values_json != "{}":
            extra = Path(tmp) / "extra-values.yaml"
            extra.write_text(yaml.safe_dump(json.loads(values_json)))
            cmd += ["--values", str(extra)]
        cmd += ["--kube-version", kube_version]
        if show_only:
            cmd += ["--show-only", show_only]
        for a in api_versions:
            cmd += ["--api-versions", a]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    return proc.stdout


# helm template's default version is its own client library's (1.33 for helm 3.18), below the chart's floor.
KUBE_VERSION = "1.37.0"


def render_text(*files: str, values: dict | None = None, namespace: str = NAMESPACE, kube_version: str = KUBE_VERSION,
                show_only: str | None = None, chart: Path = CHART, api_versions: tuple[str, ...] = ()) -> str:
    """`api_versions`: what the cluster serves beyond helm's defaults (`--api-versions`, e.g.
    `admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy`)."""
    return _render(tuple(files), json.dumps(values or {}, sort_keys=True), namespace, kube_version, show_only,
                   str(chart), tuple(api_versions))


def render(*files: str, **kw) -> Rendering:
    """Renders the chart with the ci/ values files named (e.g. "url-values.yaml") and `values` on top."""
    text = render_text(*files, **kw)
    return Rendering([d for d in yaml.safe_load_all(text) if d])


def render_error(*files: str, **kw) -> str:
    """Renders, expecting helm to refuse; returns its error message."""
    try:
        render_text(*files, **kw)
    except RenderError as e:
        return str(e)
    raise AssertionError("helm template succeeded, but was expected to fail")


@functools.lru_cache(maxsize=None)
def _notes_chart() -> Path:
    """A copy of the chart whose NOTES.txt is also rendered as a manifest (helm template skips NOTES.txt)."""
    tmp = Path(tempfile.mkdtemp(prefix="ddg-notes-"))
    chart = tmp / "default-deny-guard"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_zz_test_notes.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "{{- end -}}\n")
    (chart / "templates" / "zz-test-notes.yaml").write_text(
        'kind: RenderedNotes\nnotes: |\n{{ include "test.notes" . | indent 2 }}\n')
    return chart


def render_notes(*files: str, **kw) -> str:
    text = render_text(*files, chart=_notes_chart(), show_only="templates/zz-test-notes.yaml", **kw)
    return yaml.safe_load(text)["notes"]
