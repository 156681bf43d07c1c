"""The deployment files in docs/deploy/ are checked, not just shipped: the systemd units by
``systemd-analyze verify``, the alert rules by ``promtool`` (their syntax and their own tests),
the Grafana dashboard and the alerts against the metrics ssedge and HAProxy's exporter export,
the edge proxy's configs and environment file by ``haproxy -c`` (and the unit's file limit by
starting HAProxy unprivileged under it), and the compose and Kubernetes files for what the
drain, the soft stop and the probes need.

``systemd-analyze`` (Debian's systemd), ``promtool`` (Debian's prometheus) and ``haproxy`` are
installed by ``make system``."""

from __future__ import annotations

import asyncio
import atexit
import difflib
import functools
import json
import os
import pwd
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.edge import tls as edge_tls
from relay.edge.haproxy import config as edge_haproxy
from relay.edge.varnish.config import CACHE_PARAMS
from relay.harness.processes import free_port
from relay.ingest.status import Status, render
from relay.node.app import App
from relay.settings import FILE_SUFFIX, env_name, fields, load
from replay.app import ReplayMetrics

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
SETTINGS = {env_name(name) for name, _, _ in fields()}
VARIABLES = SETTINGS | {name + FILE_SUFFIX for name in SETTINGS}
#: HAProxy's configs: the shipped one (the template) and the deployments' copies of it
TEMPLATE = edge_haproxy.TEMPLATE
COPIES = {"compose": DEPLOY / "compose" / "haproxy.cfg",
          "kubernetes": DEPLOY / "kubernetes" / "haproxy.cfg"}
PROXY_ENV = DEPLOY / "systemd" / "edge-proxy.env"


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
    return set(re.findall(r"\b(?:ssedge|haproxy)_[a-z0-9_]+", expr))


# -- HAProxy ---------------------------------------------------------------------------------


def presetenv(text: str) -> dict[str, str]:
    """A haproxy.cfg's ``presetenv`` names and values."""
    return dict(re.findall(r"^\s*presetenv (\w+) (\S+)", text, re.MULTILINE))


def hard_stop_after_s() -> int:
    found = re.search(r"^\s*hard-stop-after (\d+)s$", TEMPLATE.read_text(), re.MULTILINE)
    assert found, "no hard-stop-after in haproxy.cfg"
    return int(found[1])


def port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def start_haproxy(config: Path, env: dict[str, str], user: str | None = None,
                  nofile: int | None = None) -> tuple[subprocess.Popen[bytes], str | None]:
    """HAProxy started on ``config`` (master-worker, foreground) with ``env``, as ``user`` with
    at most ``nofile`` descriptors, and its stats listener's /metrics once it serves them
    (None: it exited first, or did not answer in 10 s)."""
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    account = pwd.getpwnam(user) if user else None
    process = subprocess.Popen(edge_haproxy.command(config),
                               env={"PATH": "/usr/sbin:/usr/bin:/bin", **env},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=limit, user=account.pw_uid if account else None,
                               group=account.pw_gid if account else None,
                               extra_groups=[] if account else None)
    url = f"http://{env['EDGE_STATS_ADDR']}/metrics"
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return process, answer.read().decode()
        except OSError:
            time.sleep(0.1)
    return process, None


def stop(process: subprocess.Popen[bytes]) -> str:
    """Stops a HAProxy of start_haproxy (its pid: the master, which takes its worker along);
    what it said."""
    if process.poll() is None:
        process.terminate()
    try:
        return process.communicate(timeout=10)[0].decode()
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate(timeout=10)[0].decode()


@contextmanager
def running_haproxy(config: Path, env: dict[str, str], user: str | None = None,
                    nofile: int | None = None) -> Iterator[str]:
    """start_haproxy that must serve its /metrics (yielded); stopped after."""
    process, metrics = start_haproxy(config, env, user, nofile)
    try:
        if metrics is None:
            raise AssertionError(f"haproxy did not serve its /metrics: {stop(process)}")
        yield metrics
    finally:
        stop(process)


@functools.cache
def _certificate() -> Path:
    """The edge's certificate and key in one PEM file, readable by anyone (a test's own)."""
    directory = Path(tempfile.mkdtemp(prefix="ssedge-deploy-tls-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    directory.chmod(0o755)
    pem = edge_tls.ensure(directory).edge
    pem.chmod(0o644)
    return pem


def loopback_env(directory: Path) -> dict[str, str]:
    """Free loopback listeners, a certificate and a runtime socket for a HAProxy started
    here."""
    return {"EDGE_HTTP_ADDR": f"127.0.0.1:{free_port()}",
            "EDGE_HTTPS_ADDR": f"127.0.0.1:{free_port()}",
            "EDGE_STATS_ADDR": f"127.0.0.1:{free_port()}",
            "EDGE_CERT": str(_certificate()), "EDGE_ADMIN_SOCKET": str(directory / "admin.sock"),
            "EDGE_STATS_SOCKET": str(directory / "stats.sock")}


@functools.cache
def haproxy_exported() -> frozenset[str]:
    """Every metric name HAProxy 2.6's exporter (the stats listener's /metrics) gives for the
    shipped config, read from a running one."""
    with tempfile.TemporaryDirectory() as directory, \
            running_haproxy(TEMPLATE, loopback_env(Path(directory))) as text:
        return frozenset(line.split(" ")[2] for line in text.splitlines()
                         if line.startswith("# TYPE "))


def haproxy_check(config: Path, env: dict[str, str]) -> None:
    done = subprocess.run(edge_haproxy.check_command(config), capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/bin", **env})
    assert done.returncode == 0, (config, done.stdout + done.stderr)


def _skeleton(text: str) -> list[str]:
    """A haproxy.cfg's lines with the ``presetenv`` values, the networks exempt from the
    limits and the relay nodes taken out."""
    out, nodes = [], False
    for line in text.splitlines():
        if edge_haproxy.END in line:
            nodes = False
        if nodes:
            continue
        line = re.sub(r"^(\s*acl limits_exempt) .*$", r"\1", line)  # the deployment's
        out.append(re.sub(r"^(\s*presetenv \w+) .*$", r"\1", line))
        if edge_haproxy.BEGIN in line:
            nodes = True
    return out


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
                                       "ssedge-stats", "ssedge-edge-proxy",
                                       "ssedge-edge-cache"}
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
    """A unit's settings (the first of each key, the last for ExecReload)."""
    values: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / f"{name}.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values.setdefault(key, value)
            if key == "ExecReload":
                values[key] = value
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
                 "ssedge-edge-proxy", "ssedge-edge-cache"):
        values = unit(name)
        assert values["Restart"] == "always" and "TimeoutStopSec" in values, name
        if not name.startswith("ssedge-edge-"):
            assert values["EnvironmentFile"] == "/etc/ssedge/ssedge.env", name
        if name not in ("ssedge-stats",):
            assert "LimitNOFILE" in values, name
    assert set(env) <= VARIABLES, set(env) - VARIABLES


def test_the_edge_proxy_unit_reloads_stops_softly_and_holds_its_streams() -> None:
    proxy, cache, stats = unit("ssedge-edge-proxy"), unit("ssedge-edge-cache"), unit("ssedge-stats")
    env = settings_file(PROXY_ENV)
    # every variable is one of haproxy.cfg's, and the file sets each address and limit
    names = set(presetenv(TEMPLATE.read_text()))
    assert set(env) == names, set(env) ^ names
    assert proxy["EnvironmentFile"] == "/etc/ssedge/edge-proxy.env"
    config = "/etc/ssedge/haproxy/haproxy.cfg"
    assert shlex.split(proxy["ExecStart"]) == ["/usr/sbin/haproxy", "-Ws", "-f", config]
    assert proxy["Type"] == "notify"  # -Ws says when it is ready
    assert proxy["ExecReload"] == "/bin/kill -USR2 $MAINPID"
    # a soft stop: streams kept until hard-stop-after, systemd's SIGKILL only after it
    assert proxy["KillSignal"] == "SIGUSR1"
    assert int(proxy["TimeoutStopSec"]) > hard_stop_after_s()
    # two descriptors per stream, and some for listeners, checks and varnishd
    assert int(proxy["LimitNOFILE"]) >= 2 * int(env["EDGE_MAXCONN"]) + 1000
    # the runtime socket is in the unit's runtime directory, and the collector reads it
    assert env["EDGE_ADMIN_SOCKET"] == f"/run/{proxy['RuntimeDirectory']}/admin.sock"
    collector = shlex.split(stats["ExecStart"])
    assert env["EDGE_STATS_SOCKET"] == f"/run/{proxy['RuntimeDirectory']}/stats.sock"
    # the collector reads the reading socket (level operator), not the operators' one
    assert collector[collector.index("--haproxy-socket") + 1] == env["EDGE_STATS_SOCKET"]
    assert "haproxy" in stats["SupplementaryGroups"].split()
    # varnishd is where HAProxy sends what is not a stream, on loopback, with make up's params
    varnishd = cache["ExecStart"]
    assert f"-a {env['EDGE_CACHE_ADDR']} " in varnishd and env["EDGE_CACHE_ADDR"].startswith("127.")
    for param in CACHE_PARAMS:
        assert f"-p {param}" in varnishd
    workdir = re.search(r"-n (\S+)", varnishd)
    assert workdir and collector[collector.index("--varnish-name") + 1] == workdir[1]
    assert "ssedge-edge-cache.service" in proxy["Wants"]


def test_the_edge_proxy_env_file_loads_with_the_shipped_config(tmp_path: Path) -> None:
    env = settings_file(PROXY_ENV)
    # the host's certificate and socket directory are not here
    haproxy_check(TEMPLATE, {**env, "EDGE_CERT": str(_certificate()),
                             "EDGE_ADMIN_SOCKET": str(tmp_path / "admin.sock"),
                             "EDGE_STATS_SOCKET": str(tmp_path / "stats.sock")})


@pytest.mark.skipif(os.geteuid() != 0, reason="starts HAProxy as another user: needs root")
def test_the_edge_proxy_starts_unprivileged_within_the_units_file_limit() -> None:
    """As the unit runs it: not root, so HAProxy cannot raise its own file limit and refuses
    to start when it is short of 2 x maxconn and its own few. The unit's LimitNOFILE leaves
    `margin` above 2 x EDGE_MAXCONN; HAProxy starts with that margin, and not without it.
    (With the env file's maxconn itself where this machine's hard limit allows.)"""
    env = settings_file(PROXY_ENV)
    limit = int(unit("ssedge-edge-proxy")["LimitNOFILE"])
    margin = limit - 2 * int(env["EDGE_MAXCONN"])
    maxconn = min(int(env["EDGE_MAXCONN"]),
                  (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - margin) // 2)
    with tempfile.TemporaryDirectory() as directory:
        Path(directory).chmod(0o777)  # the runtime socket's, for the unprivileged user
        here = {**env, **loopback_env(Path(directory)), "EDGE_MAXCONN": str(maxconn)}
        with running_haproxy(TEMPLATE, here, user="nobody",
                             nofile=2 * maxconn + margin) as metrics:
            values = dict(line.split(" ", 1) for line in metrics.splitlines()
                          if line.startswith("haproxy_process_m"))
        assert int(values["haproxy_process_max_connections"]) == maxconn
        short, served = start_haproxy(TEMPLATE, here, user="nobody", nofile=2 * maxconn)
        said = stop(short)
        assert served is None and "Cannot raise FD limit" in said, said


# -- HAProxy's config in compose and Kubernetes ------------------------------------------------


def test_the_deployments_haproxy_configs_are_the_shipped_one_and_load(tmp_path: Path) -> None:
    """Each copy holds every line of the shipped haproxy.cfg in order (its own presetenv values
    and relay nodes aside) and only adds to it; HAProxy loads it."""
    template = _skeleton(TEMPLATE.read_text())
    for name, path in COPIES.items():
        copy = _skeleton(path.read_text())
        matcher = difflib.SequenceMatcher(None, template, copy, autojunk=False)
        changed = [(tag, template[i1:i2], copy[j1:j2])
                   for tag, i1, i2, j1, j2 in matcher.get_opcodes()
                   if tag not in ("equal", "insert")]
        assert not changed, (name, changed)
        env = presetenv(path.read_text())
        assert set(env) == set(presetenv(TEMPLATE.read_text())), name
        # the certificate is the deployment's secret; the socket's directory is made there
        haproxy_check(path, {"EDGE_CERT": str(_certificate()),
                             "EDGE_ADMIN_SOCKET": str(tmp_path / f"{name}.sock"),
                             "EDGE_STATS_SOCKET": str(tmp_path / f"{name}-stats.sock")})


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
    # the edge cache mounts the shipped VCL from the checkout
    cache = services["edge-cache"]
    mount = cache["volumes"][0].split(":")[0]
    assert (DEPLOY / mount / "default.vcl").is_file()
    assert (DEPLOY / "compose" / "backends.vcl").is_file()
    # the edge proxy runs compose/haproxy.cfg, which sends what is not a stream to edge-cache
    edge = services["edge"]
    source, target = edge["volumes"][0].split(":")[:2]
    assert DEPLOY / source == COPIES["compose"]
    assert edge["entrypoint"][-2:] == ["-f", target]
    env = presetenv(COPIES["compose"].read_text())
    assert env["EDGE_CACHE_ADDR"] == f"edge-cache:{port(env['EDGE_CACHE_ADDR'])}"
    assert f"-a :{port(env['EDGE_CACHE_ADDR'])} " in cache["entrypoint"][-1]
    assert "ports" not in cache  # internal: HAProxy is its one client
    for param in CACHE_PARAMS:
        assert f"-p {param}" in cache["entrypoint"][-1]
    published = {int(p.rsplit(":", 1)[1]) for p in edge["ports"]}
    listeners = ("EDGE_HTTP_ADDR", "EDGE_HTTPS_ADDR", "EDGE_STATS_ADDR")
    assert {port(env[k]) for k in listeners} <= published
    # the relays named in its nodes are the compose services
    nodes = re.findall(r"^\s*server relay_\d+ ([\w-]+):8101", COPIES["compose"].read_text(), re.M)
    assert nodes and set(nodes) <= set(services)
    # the certificate is a compose secret
    assert env["EDGE_CERT"] == f"/run/secrets/{edge['secrets'][0]}"
    assert edge["secrets"][0] in compose["secrets"]
    # a soft stop, and two descriptors per stream
    assert edge["stop_signal"] == "SIGUSR1"
    assert int(edge["stop_grace_period"].rstrip("s")) > hard_stop_after_s()
    assert edge["ulimits"]["nofile"]["hard"] >= 2 * int(env["EDGE_MAXCONN"]) + 1000


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
    for resource_file in kustomization["resources"]:
        assert (DEPLOY / "kubernetes" / resource_file).is_file()
    for generated in kustomization["configMapGenerator"]:
        for file in generated["files"]:
            assert (DEPLOY / "kubernetes" / file).is_file()


def test_kubernetes_edge_pod_haproxy_in_front_of_varnishd() -> None:
    docs = documents()
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    generated = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
    pod = docs[("Deployment", "ssedge-edge")]["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    proxy, cache = containers["haproxy"], containers["varnish"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    text = COPIES["kubernetes"].read_text()
    env = presetenv(text)
    # HAProxy runs the ConfigMap made from kubernetes/haproxy.cfg
    config = Path(proxy["command"][proxy["command"].index("-f") + 1])
    mounts = {m["mountPath"]: m["name"] for m in proxy["volumeMounts"]}
    config_map = volumes[mounts[str(config.parent)]]["configMap"]["name"]
    assert generated[config_map] == [config.name] and config.name == COPIES["kubernetes"].name
    # its listeners are the container's ports, the Service's targets and the scrape port
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"http": port(env["EDGE_HTTP_ADDR"]), "https": port(env["EDGE_HTTPS_ADDR"]),
                     "stats": port(env["EDGE_STATS_ADDR"])}
    service = docs[("Service", "ssedge-edge")]["spec"]
    assert {p["targetPort"] for p in service["ports"]} == {"http", "https"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["stats"])
    assert str(Path(env["EDGE_CERT"]).parent) in mounts
    assert str(Path(env["EDGE_ADMIN_SOCKET"]).parent) in mounts
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/v1/handshake"
    # varnishd on the pod's loopback, where HAProxy sends what is not a stream
    assert env["EDGE_CACHE_ADDR"].startswith("127.")
    assert f"-a {env['EDGE_CACHE_ADDR']} " in cache["command"][-1]
    for param in CACHE_PARAMS:
        assert f"-p {param}" in cache["command"][-1]
    # a soft stop after the endpoints are gone; the kubelet's SIGKILL after hard-stop-after
    hook = " ".join(proxy["lifecycle"]["preStop"]["exec"]["command"])
    sleep = re.search(r"sleep (\d+); kill -USR1 1;", hook)
    assert sleep, hook
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(sleep[1]) + hard_stop_after_s()
    # one server slot per relay pod, from the headless Service's DNS name
    template = re.search(r"^\s*server-template relay_ (\d+) ([\w.-]+):(\d+) .*resolvers (\w+)",
                         text, re.M)
    assert template, "no server-template in kubernetes/haproxy.cfg"
    slots, name, relay_port, resolvers = template.groups()
    headless = docs[("Service", "ssedge-relay-headless")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == docs[("Service", "ssedge-relay")]["spec"]["selector"]
    assert name == f"ssedge-relay-headless.{kustomization['namespace']}.svc.cluster.local"
    assert int(relay_port) == headless["ports"][0]["port"]
    assert int(slots) > docs[("Deployment", "ssedge-relay")]["spec"]["replicas"]
    assert re.search(rf"^resolvers {resolvers}$", text, re.M)


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


def test_prometheus_scrapes_the_edge_proxys_stats_listener() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yaml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    edge = jobs["ssedge-edge"]
    assert edge.get("metrics_path", "/metrics") == "/metrics"
    stats = port(settings_file(PROXY_ENV)["EDGE_STATS_ADDR"])
    targets = [t for c in edge["static_configs"] for t in c["targets"]]
    assert targets and all(port(t) == stats for t in targets)


def test_every_alert_watches_metrics_ssedge_or_haproxy_exports() -> None:
    names = exported() | haproxy_exported()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            used = metric_names(rule["expr"])
            assert used or "up{" in rule["expr"], rule["alert"]
            assert used <= names, (rule["alert"], used - names)
            if any(name.startswith("haproxy_") for name in used):  # the edge's, not another's
                assert 'job="ssedge-edge"' in rule["expr"], rule["alert"]
            assert rule["labels"]["severity"] in ("page", "ticket")
            anchor = rule["annotations"]["runbook"].split("#", 1)[1]
            assert anchor in _troubleshooting_anchors(), (rule["alert"], anchor)


def _troubleshooting_anchors() -> set[str]:
    page = Path(__file__).resolve().parent.parent / "docs" / "TROUBLESHOOTING.md"
    return {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in page.read_text().splitlines() if line.startswith("## ")}


def test_the_dashboard_loads_and_every_panel_asks_for_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "ssedge.json").read_text())
    names = exported() | haproxy_exported()
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
            if any(name.startswith("haproxy_") for name in used):
                assert 'job="ssedge-edge"' in target["expr"], panel["title"]
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
