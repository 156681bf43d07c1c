"""The VCL compiles with Debian's varnishd, as shipped and with a generated backends file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from relay.devstack import varnish as edge


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
    """varnish/ is linked into relay/devstack/vcl and declared package data: a wheel's
    ``ssedge up`` finds the same VCL and parameters the checkout uses."""
    from pathlib import Path

    from relay.devstack import varnish as edge

    assert (edge.VCL_DIR / "default.vcl").is_file() and (edge.VCL_DIR / "params").is_file()
    root = Path(__file__).resolve().parents[2]
    assert edge.VCL_DIR.resolve() == (root / "varnish").resolve()
    assert '"relay.devstack" = ["vcl/*"]' in (root / "pyproject.toml").read_text()
