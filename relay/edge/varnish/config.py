"""Running varnishd with ssedge's VCL: the backends file and the command line.

``varnish/default.vcl`` includes ``backends.vcl`` through varnishd's ``vcl_path``: a deployment
(or ``ssedge up``, or a test) writes its own backends file into a directory searched before
``varnish/``, and the VCL itself is used as it is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# the shipped VCL: the top-level varnish/ folder, linked here (vcl/) so that the wheel carries it
VCL_DIR = Path(__file__).resolve().parent / "vcl"

#: varnishd behind HAProxy has one client, HAProxy, which keeps connections to it and reuses
#: them. An idle one that varnishd closed (timeout_idle, 5 s by default) just as HAProxy sent
#: a request on it would fail that request; HAProxy closes its own idle connections first.
#: And it holds no stream: varnish/params pre-starts 2 x 2,500 threads for streams (two
#: each), a cache of short answers starts with 2 x 100 and grows to the same maximum.
CACHE_PARAMS = ("timeout_idle=3600", "thread_pool_min=100")


def varnishd() -> str | None:
    """Debian installs varnishd in /usr/sbin, which a user's PATH may not hold."""
    return shutil.which("varnishd") or shutil.which("varnishd", path="/usr/sbin:/usr/local/sbin")


def varnishncsa() -> str:
    """varnishd's request log reader (``ssedge stats`` counts edge hits with it)."""
    return (shutil.which("varnishncsa")
            or shutil.which("varnishncsa", path="/usr/bin:/usr/local/bin") or "varnishncsa")


def backends_vcl(relays: Sequence[tuple[str, int]], replay: tuple[str, int]) -> str:
    """A backends.vcl for these relay nodes and this replay service (probes: probes.vcl)."""
    parts = []
    for n, (host, port) in enumerate(relays, 1):
        parts.append(f'backend relay_{n} {{\n    .host = "{host}";\n    .port = "{port}";\n'
                     f"    .probe = ssedge_relay_probe;\n    .connect_timeout = 1s;\n}}\n")
    parts.append(f'backend replay {{\n    .host = "{replay[0]}";\n    .port = "{replay[1]}";\n'
                 f"    .probe = ssedge_replay_probe;\n    .connect_timeout = 1s;\n}}\n")
    adds = "".join(f"    relays.add_backend(relay_{n});\n" for n in range(1, len(relays) + 1))
    parts.append(f"sub vcl_init {{\n    new relays = directors.round_robin();\n{adds}}}\n")
    return "\n".join(parts)


def params(path: Path = VCL_DIR / "params") -> list[str]:
    """The ``-p name=value`` arguments of ``varnish/params``."""
    out: list[str] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out += ["-p", line]
    return out


def command(workdir: Path, listen: str, backends_dir: Path, *,
            extra_params: Sequence[str] = (), storage: str = "malloc,256m") -> list[str]:
    """varnishd in the foreground with ssedge's VCL and parameters."""
    argv = [
        varnishd() or "varnishd", "-F", "-n", str(workdir), "-a", listen,
        "-f", str(VCL_DIR / "default.vcl"),
        "-p", f"vcl_path={backends_dir}:{VCL_DIR}:/usr/share/varnish/vcl",
        "-s", storage,
        # management on a free loopback port; varnishadm -n finds it
        "-T", "127.0.0.1:0",
        *params(),
    ]
    for param in extra_params:
        argv += ["-p", param]
    # The local stack and the tests keep varnishd's working directory in private directories
    # (the checkout's .ssedge/, pytest's 0700 temp dirs) that the jail's unprivileged user
    # could not enter, and listen on loopback only: no jail. Production runs varnishd as
    # Debian's service, with its default unix jail.
    argv += ["-j", "none"]
    return argv


def compile_check(backends_dir: Path | None = None) -> list[str]:
    """The command that compiles the VCL without running it (``varnishd -C``)."""
    search = f"{backends_dir}:{VCL_DIR}" if backends_dir else str(VCL_DIR)
    # no jail, as in ``command``: the compiler, too, must read private directories (with the
    # jail it silently skips a vcl_path entry it cannot enter)
    return [varnishd() or "varnishd", "-C", "-j", "none", "-f", str(VCL_DIR / "default.vcl"),
            "-p", f"vcl_path={search}"]


def counters(workdir: Path) -> dict[str, int]:
    """A running varnishd's counters (``varnishstat -1 -j``), by name."""
    out = subprocess.run(["varnishstat", "-n", str(workdir), "-1", "-j"],
                         capture_output=True, check=True, timeout=10).stdout
    found = json.loads(out)
    found = found.get("counters", found)
    return {name: int(c["value"]) for name, c in found.items()
            if isinstance(c, dict) and "value" in c}
