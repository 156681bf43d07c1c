"""haproxy.cfg loads in Debian's HAProxy as shipped and rendered with other nodes and addresses
(relay/edge/haproxy/config.py), and the program checks it through the edge's contract
(relay/edge/haproxy/program.py)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from relay.devstack import edge as edge_stack
from relay.devstack.supervisor import StartFailed
from relay.edge import tls as edge_tls
from relay.edge.contract import ConfigRefused
from relay.edge.haproxy import config as edge_haproxy
from relay.edge.haproxy.program import HAProxy


def _listen(tmp_path: Path, tls: bool = True) -> edge_haproxy.Listen:
    certs = edge_tls.ensure(tmp_path / "tls") if tls else None
    return edge_haproxy.Listen(
        http="127.0.0.1:18080", cache="127.0.0.1:18180", stats="127.0.0.1:18404",
        admin_socket=tmp_path / "admin.sock", https="127.0.0.1:18443" if tls else None,
        cert=certs.edge if certs else None, stream_timeout="45s", maxconn=5000)


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(edge_haproxy.check_command(config), capture_output=True, text=True,
                          timeout=60)


def test_the_shipped_config_loads(tmp_path: Path) -> None:
    # as shipped it wants the local stack's certificate, relative to the checkout: give it one
    certs = edge_tls.ensure(tmp_path / "tls")
    env = {"EDGE_CERT": str(certs.edge), "EDGE_ADMIN_SOCKET": str(tmp_path / "a.sock"),
           "EDGE_STATS_SOCKET": str(tmp_path / "s.sock")}
    done = subprocess.run(edge_haproxy.check_command(edge_haproxy.TEMPLATE),
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/sbin:/usr/bin:/bin", **env})
    assert done.returncode == 0, done.stdout + done.stderr


def test_rendered_config_has_the_nodes_and_addresses_and_loads(tmp_path: Path) -> None:
    relays = [("127.0.0.1", 9001), ("127.0.0.1", 9002), ("10.0.0.3", 9003)]
    config = edge_haproxy.write(tmp_path / "h", relays, _listen(tmp_path))
    text = config.read_text()
    assert "    server relay_1 127.0.0.1:9001\n    server relay_2 127.0.0.1:9002\n" \
           "    server relay_3 10.0.0.3:9003\n    # -- end of relay nodes --" in text
    assert "8101" not in text  # the shipped example's nodes are gone
    for line in ("presetenv EDGE_HTTP_ADDR 127.0.0.1:18080",
                 "presetenv EDGE_HTTPS_ADDR 127.0.0.1:18443",
                 "presetenv EDGE_CACHE_ADDR 127.0.0.1:18180",
                 "presetenv EDGE_STREAM_TIMEOUT 45s", "presetenv EDGE_MAXCONN 5000"):
        assert line in text
    done = _check(config)
    assert done.returncode == 0, done.stdout + done.stderr


def test_without_tls_the_tls_listener_goes(tmp_path: Path) -> None:
    config = edge_haproxy.write(tmp_path, [("127.0.0.1", 9001)], _listen(tmp_path, tls=False))
    assert "EDGE_HTTPS_ADDR}\" ssl" not in config.read_text()
    assert _check(config).returncode == 0


def test_a_template_without_what_render_sets_is_refused(tmp_path: Path) -> None:
    shipped = edge_haproxy.TEMPLATE.read_text()
    with pytest.raises(edge_haproxy.ConfigError, match="relay node markers"):
        edge_haproxy.render([("127.0.0.1", 1)], _listen(tmp_path),
                            shipped.replace(edge_haproxy.END, "# the end"))
    with pytest.raises(edge_haproxy.ConfigError, match="EDGE_CACHE_ADDR"):
        edge_haproxy.render([("127.0.0.1", 1)], _listen(tmp_path),
                            shipped.replace("presetenv EDGE_CACHE_ADDR", "# gone"))


def test_a_config_haproxy_refuses_stops_start_up_with_one_line(tmp_path: Path) -> None:
    proxy = HAProxy(_listen(tmp_path, tls=False))
    bad = proxy.write(tmp_path / "bad", [("127.0.0.1", 9001)])
    bad.write_text(bad.read_text().replace("balance leastconn", "balance nonsense"))
    with pytest.raises(ConfigRefused) as refused:
        proxy.check(bad.parent)
    with pytest.raises(StartFailed) as failed:  # the local stack's words for it
        edge_stack.check(proxy, bad.parent)
    for message in (str(refused.value), str(failed.value)):
        assert "\n" not in message and "haproxy refuses" in message
        assert "balance only supports" in message and "haproxy.cfg:" in message


def test_the_program_renders_what_config_renders(tmp_path: Path) -> None:
    relays = [("127.0.0.1", 9001), ("10.0.0.3", 9003)]
    proxy = HAProxy(_listen(tmp_path))
    assert proxy.render(relays) == {"haproxy.cfg": edge_haproxy.render(relays, proxy.listen)}
    proxy.check(proxy.write(tmp_path / "h", relays).parent)
    assert proxy.command(tmp_path / "h")[-1] == str((tmp_path / "h" / "haproxy.cfg").resolve())


def test_the_limits_table_the_settings_and_the_template_agree(tmp_path: Path) -> None:
    from relay import settings
    from relay.edge.haproxy import limits

    defaults = settings.load({})
    template = edge_haproxy.TEMPLATE.read_text()
    for lim in limits.LIMITS:
        assert getattr(defaults, lim.setting) == lim.default, lim
        assert f"presetenv {lim.env} {lim.default}\n" in template, lim
    assert defaults.edge_limits_exempt == limits.DEFAULT_EXEMPT
    assert f"acl limits_exempt src {limits.DEFAULT_EXEMPT}\n" in template
    for refusal in limits.REFUSALS:
        assert f"backend {refusal.backend}\n" in template, refusal
        assert f"use_backend {refusal.backend} if" in template, refusal


def test_limits_and_exempt_networks_are_rendered_and_load(tmp_path: Path) -> None:
    from relay.edge.haproxy.limits import Limits

    listen = _listen(tmp_path)
    none = Limits(exempt="").but(edge_streams_per_source=7)
    text = edge_haproxy.render([("127.0.0.1", 8101)], dataclasses.replace(listen, limits=none))
    assert "presetenv EDGE_STREAMS_PER_SOURCE 7\n" in text
    assert "acl limits_exempt always_false\n" in text
    some = Limits(exempt="10.0.0.0/8, 192.0.2.7")
    text = edge_haproxy.render([("127.0.0.1", 8101)], dataclasses.replace(listen, limits=some))
    assert "acl limits_exempt src 10.0.0.0/8 192.0.2.7\n" in text
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    done = _check(config)
    assert done.returncode == 0, done.stdout + done.stderr
    with pytest.raises(edge_haproxy.ConfigError):
        edge_haproxy.render([("127.0.0.1", 8101)], dataclasses.replace(
            listen, limits=Limits(exempt="10.0.0.0/8 src 0.0.0.0/0; evil")))
    with pytest.raises(ValueError):
        Limits().but(edge_no_such_limit=1)


def test_the_dashboard_counts_each_refusal_by_its_backend() -> None:
    from relay.edge.haproxy import stats

    rows = [{"pxname": "refuse_stream_limit", "svname": "BACKEND", "stot": "12"},
            {"pxname": "refuse_spelling", "svname": "BACKEND", "stot": "3"},
            {"pxname": "edge", "svname": "FRONTEND", "scur": "5", "req_tot": "40"}]
    snap = stats.proxy_snapshot(rows)
    assert snap["refused"] == {"stream_limit": 12, "spelling": 3}
    assert snap["connections"] == 5
