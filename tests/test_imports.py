"""Imports flow one way and stay light: `lvit --help` and every `lvit <command> --help` load
no torch, `search_spaces.arch` and `search_spaces.spaces` load no torch at run time (checked
in a fresh interpreter through `sys.modules`), `nas.errors` imports nothing of ours, and
importing `search_spaces` registers our models with timm whichever of the two comes first."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


HELP_EVERYWHERE = """
import argparse, contextlib, io, json, sys
from nas.cli import build_parser, main

def paths(parser, prefix=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield list(prefix)
    for action in subs:
        for name, child in action.choices.items():
            yield from paths(child, (*prefix, name))

done = []
for path in [[]] + list(paths(build_parser())):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([*path, "--help"])
        except SystemExit as e:
            assert e.code == 0, (path, e.code)
    assert "usage: lvit" in out.getvalue(), path
    done.append(" ".join(path))
heavy = sorted(m for m in ("torch", "timm", "optuna") if m in sys.modules)
print(json.dumps({"helped": done, "heavy": heavy}))
"""


def test_every_help_loads_no_torch() -> None:
    result = json.loads(_fresh(HELP_EVERYWHERE))
    assert {"search", "export", "latency measure", "latency build-lut", "teacher train"} <= set(
        result["helped"]
    )
    assert result["heavy"] == []


def test_the_pure_data_layers_load_no_torch() -> None:
    loaded = _fresh(
        "import sys, search_spaces.arch, search_spaces.spaces, nas.errors, nas.config\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    assert loaded == "[]"


def test_errors_import_nothing_of_ours() -> None:
    tree = ast.parse((ROOT / "nas" / "errors.py").read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert all(not (m or "").startswith(("nas", "search_spaces")) for m in imported)


@pytest.mark.parametrize(
    "code",
    [
        "import search_spaces, timm",  # the README's order
        "import timm, search_spaces",
        "import search_spaces.arch\nimport timm",  # the CLI's order: arch first, timm later
        "from nas.export import load_export\nimport timm",
    ],
)
@pytest.mark.slow
def test_importing_search_spaces_registers_with_timm(code: str) -> None:
    out = _fresh(
        code + "\nprint(timm.is_model('lightvit'), timm.is_model('lightvit_pool96_digits16'))"
    )
    assert out == "True True"


def test_the_lazy_names_still_import() -> None:
    from search_spaces import PRESETS, LightViT, lightvit

    assert "lightvit_pool96_digits16" in PRESETS and callable(lightvit)
    assert LightViT(PRESETS["lightvit_pool96_digits16"]).num_classes > 0


def test_the_import_layers_hold() -> None:
    """The contracts in pyproject.toml ([tool.importlinter]), checked by import-linter."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_there_is_no_import_cycle() -> None:
    """No group of our modules imports each other round (function-level imports included)."""
    import grimp

    graph = grimp.build_graph("nas", "search_spaces")
    cycles = [
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if a != b and graph.find_shortest_chain(importer=b, imported=a) is not None
    ]
    assert cycles == []
