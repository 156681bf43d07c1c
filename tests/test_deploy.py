"""The deployment files in docs/deploy/ are checked, not just shipped: the systemd units by
``systemd-analyze verify``, the alert rules by ``promtool`` (their syntax and their own tests),
the Grafana dashboard and the alerts against the metrics ssedge exports, and the compose and
Kubernetes files for what the drain and the probes need.

``systemd-analyze`` (Debian's systemd) and ``promtool`` (Debian's prometheus) are installed by
``make system``."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from relay.ingest.status import Status, render
from relay.node.app import App
from relay.settings import FILE_SUFFIX, env_name, fields, load
from replay.app import ReplayMetrics

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
SETTINGS = {env_name(name) for name, _, _ in fields()}
VARIABLES = SETTINGS | {name + FILE_SUFFIX for name in SETTINGS}


def exported() -> set[str]:
    """Every metric name a relay (with a JWKS), the replay service and ingest expose,
    histograms' series included."""
    relay = App(load({}, redis_url="redis://127.0.0.1:1/0", jwks_url="http://127.0.0.1:1/k"))
    ingest_status = Status("t", "u")
    ingest_status.error("connect")
    names: set[str] = set()

    async def relay_text() -> bytes:  # some gauges read the event loop (tasks alive)
        return await relay.workers.gather()  # what /metrics answers

    for text in (asyncio.run(relay_text()), ReplayMetrics("r").render(),
                 render("i", [ingest_status])):
        for line in text.decode().splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                names.add(name)
                if kind == "histogram":
                    names.update(name + s for s in ("_bucket", "_sum", "_count"))
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bssedge_[a-z0-9_]+", expr))


def settings_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out[name.strip()] = value.strip()
    return out


# -- systemd -------------------------------------------------------------------------------


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert {u.stem for u in UNITS} == {"ssedge-relay", "ssedge-replay", "ssedge-ingest",
                                       "ssedge-stats", "ssedge-edge"}
    ssedge = Path(sys.executable).parent / "ssedge"  # where the units say /opt/ssedge/bin
    for unit in UNITS:
        (tmp_path / unit.name).write_text(
            unit.read_text().replace("/opt/ssedge/bin/ssedge", str(ssedge)))
    done = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, tmp_path.iterdir()))],
                          capture_output=True, timeout=60)
    # verify exits 0 on an unknown key or a bad value, and says so: any word is a failure
    said = (done.stdout + done.stderr).decode().strip()
    assert done.returncode == 0 and said == "", said


def unit(name: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / f"{name}.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values.setdefault(key, value)
    return values


def test_the_units_outlast_the_drain_and_hold_their_streams() -> None:
    env = settings_file(DEPLOY / "systemd" / "ssedge.env")
    # the secrets' files are the host's
    settings = load({k: v for k, v in env.items() if not k.endswith(FILE_SUFFIX)})
    relay = unit("ssedge-relay")
    # systemd's SIGKILL only after the drain and Granian's 5 s for a late worker
    assert int(relay["TimeoutStopSec"]) > settings.drain_s + 5
    assert int(relay["LimitNOFILE"]) >= settings.workers * settings.max_connections
    for name in ("ssedge-relay", "ssedge-replay", "ssedge-ingest", "ssedge-stats",
                 "ssedge-edge"):
        values = unit(name)
        assert values["Restart"] == "always" and "TimeoutStopSec" in values, name
        if name != "ssedge-edge":
            assert values["EnvironmentFile"] == "/etc/ssedge/ssedge.env", name
        if name not in ("ssedge-stats",):
            assert "LimitNOFILE" in values, name
    assert set(env) <= VARIABLES, set(env) - VARIABLES


# -- compose and Kubernetes ------------------------------------------------------------------


def test_compose_drains_probes_and_names_real_settings() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("relay-1", "relay-2", "replay", "ingest"):
        env = services[name]["environment"]
        assert set(env) <= VARIABLES, (name, set(env) - VARIABLES)
    relay = services["relay-1"]
    drain = float(relay["environment"]["SSEDGE_DRAIN_S"])
    assert int(relay["stop_grace_period"].rstrip("s")) > drain + 5
    assert "/readyz" in " ".join(relay["healthcheck"]["test"])
    # the edge mounts the shipped VCL from the checkout
    mount = services["edge"]["volumes"][0].split(":")[0]
    assert (DEPLOY / mount / "default.vcl").is_file()
    assert (DEPLOY / "compose" / "backends.vcl").is_file()


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_kubernetes_probes_drain_and_disruption_budgets() -> None:
    docs = documents()
    config = docs[("ConfigMap", "ssedge")]["data"]
    assert set(config) <= VARIABLES, set(config) - VARIABLES
    drain = float(config["SSEDGE_DRAIN_S"])
    for name, port in (("ssedge-relay", 8101), ("ssedge-replay", 8201)):
        pod = docs[("Deployment", name)]["spec"]["template"]
        container = pod["spec"]["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["ports"][0]["containerPort"] == port
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        if name == "ssedge-relay":  # the kubelet's SIGKILL after preStop, drain and Granian's
            assert pod["spec"]["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain + 5
        budget = docs[("PodDisruptionBudget", name)]["spec"]
        assert budget["selector"]["matchLabels"]["app.kubernetes.io/name"] == name
        assert docs[("Service", name)]["spec"]["selector"] == budget["selector"]["matchLabels"]
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / "kubernetes" / resource).is_file()


# -- Prometheus and Grafana -------------------------------------------------------------------


def promtool(*args: str) -> str:
    done = subprocess.run(["promtool", *args], capture_output=True, timeout=60,
                          cwd=DEPLOY / "prometheus")
    said = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, said
    return said


def test_the_alert_rules_pass_promtool_and_their_own_tests() -> None:
    assert "SUCCESS" in promtool("check", "rules", "alerts.yaml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yaml")
    assert "SUCCESS" in promtool("check", "config", "prometheus.yaml")


def test_every_alert_watches_metrics_ssedge_exports() -> None:
    names = exported()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            used = metric_names(rule["expr"])
            assert used or "up{" in rule["expr"], rule["alert"]
            assert used <= names, (rule["alert"], used - names)
            assert rule["labels"]["severity"] in ("page", "ticket")
            anchor = rule["annotations"]["runbook"].split("#", 1)[1]
            assert anchor in _troubleshooting_anchors(), (rule["alert"], anchor)


def _troubleshooting_anchors() -> set[str]:
    page = Path(__file__).resolve().parent.parent / "docs" / "TROUBLESHOOTING.md"
    return {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in page.read_text().splitlines() if line.startswith("## ")}


def test_the_dashboard_loads_and_every_panel_asks_for_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "ssedge.json").read_text())
    names = exported()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"] and panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used, (panel["title"], target["expr"])
            assert used <= names, (panel["title"], used - names)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query inside a throwaway rule file (Grafana's $variables
    replaced by what they stand for)."""
    dashboard = json.loads((DEPLOY / "grafana" / "ssedge.json").read_text())
    rules = []
    for n, panel in enumerate(p for p in dashboard["panels"] if p["type"] != "row"):
        for m, target in enumerate(panel["targets"]):
            expr = (target["expr"].replace("$__rate_interval", "1m")
                    .replace("$instance", ".*"))
            rules.append({"record": f"ssedge:panel_{n}_{m}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
