"""The manual: the README stays short and links only to pages that exist, and the docs build
with `mkdocs build --strict`, so no page, link or anchor rots."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_is_short_and_its_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not link.startswith("http")]
    assert local, "the README links to its manual"
    for link in local:
        assert (ROOT / link).exists(), link
    # every page of the manual is linked from the README
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages <= {Path(link).name for link in local}


def test_the_manual_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    built = tmp_path / "site"
    for page in ("quickstart", "configuration", "latency", "benchmarks", "design"):
        assert (built / page / "index.html").is_file()
    # the benchmark pictures the pages show are in the site
    assert (built / "results" / "baselines" / "pareto.png").is_file()
