"""The VCL compiles with Debian's varnishd, as shipped and with a generated backends file
(relay/edge/varnish/config.py); the program renders and checks it through the edge's contract
(relay/edge/varnish/program.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relay.edge.contract import ConfigRefused
from relay.edge.varnish import config as edge
from relay.edge.varnish.program import Varnish


def test_shipped_vcl_compiles() -> None:
    done = subprocess.run(edge.compile_check(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_generated_backends_compile(tmp_path: Path) -> None:
    (tmp_path / "backends.vcl").write_text(
        edge.backends_vcl([("127.0.0.1", 9001), ("127.0.0.1", 9002), ("127.0.0.1", 9003)],
                          ("127.0.0.1", 9100)))
    done = subprocess.run(edge.compile_check(tmp_path), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    # the generated file was the one used, not the shipped example
    generated_c = done.stdout + done.stderr
    assert b"127.0.0.1 9003" in generated_c and b"8101" not in generated_c


def test_params_are_name_value_pairs() -> None:
    args = edge.params()
    assert args[::2] == ["-p"] * (len(args) // 2)
    assert all("=" in value for value in args[1::2])
    assert "thread_pool_max=5000" in args


def test_the_vcl_ships_with_the_package() -> None:
    """varnish/ is linked into relay/edge/varnish/vcl and declared package data: a wheel's
    ``ssedge up`` finds the same VCL and parameters the checkout uses."""
    assert (edge.VCL_DIR / "default.vcl").is_file() and (edge.VCL_DIR / "params").is_file()
    root = Path(__file__).resolve().parents[2]
    assert edge.VCL_DIR.resolve() == (root / "varnish").resolve()
    assert '"relay.edge.varnish" = ["vcl/*"]' in (root / "pyproject.toml").read_text()


def test_the_program_renders_checks_and_refuses_through_the_contract(tmp_path: Path) -> None:
    cache = Varnish("127.0.0.1:18180", ("127.0.0.1", 9100), tmp_path / "work",
                    extra_params=edge.CACHE_PARAMS)
    config = cache.write(tmp_path / "v", [("127.0.0.1", 9001), ("127.0.0.1", 9002)])
    assert config.name == "backends.vcl" and "relay_2" in config.read_text()
    cache.check(tmp_path / "v")
    argv = cache.command(tmp_path / "v")
    assert argv[argv.index("-a") + 1] == "127.0.0.1:18180" and "timeout_idle=3600" in argv
    config.write_text(config.read_text().replace(".port", ".nonsense", 1))
    with pytest.raises(ConfigRefused, match=r"^varnish refuses .*backends\.vcl: ") as refused:
        cache.check(tmp_path / "v")
    assert "\n" not in str(refused.value)
