"""The README's settings table is the one the code documents."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from relay.cli import cmd_settings


def test_readme_settings_table_matches_the_code() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cmd_settings(None)  # type: ignore[arg-type]
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert out.getvalue().strip() in readme, "run `ssedge settings` and paste it into README.md"
