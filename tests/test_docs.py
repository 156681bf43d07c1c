"""The docs hold together: the settings table is the one the code documents, every relative
link leads to a file (and a heading) that exists, and the docs speak of the software, not of
the work that made it."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from relay.cli import cmd_settings

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_settings_table_matches_the_code() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cmd_settings(None)  # type: ignore[arg-type]
    page = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    assert out.getvalue().strip() in page, "run `ssedge settings`, paste it into CONFIGURATION.md"


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def test_every_relative_link_leads_somewhere() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in _LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_docs_speak_of_the_software_not_of_issues() -> None:
    for page in PAGES:
        text = page.read_text()
        assert not re.search(r"\b(the issue|issue \d+|issues? #\d+)\b", text, re.I), page.name
