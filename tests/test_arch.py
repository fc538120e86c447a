"""ArchConfig is data: exact JSON round trips, loud validation, torch-free spaces."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import optuna
import pytest

from search_spaces.arch import ArchConfig, ArchConfigError, StageConfig
from search_spaces.spaces import SPACES, get_space

ROOT = Path(__file__).resolve().parents[1]


def _sampled(space_name: str, n: int, seed: int = 0) -> list[tuple[dict, ArchConfig]]:
    space = get_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        arch = space.sample(trial, num_classes=10, img_size=16)
        out.append((trial.params, arch))
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_sampled_archs_round_trip_through_json(space_name: str) -> None:
    for _, arch in _sampled(space_name, 50):
        text = json.dumps(arch.to_dict())
        again = ArchConfig.from_dict(json.loads(text))
        assert again == arch
        assert json.dumps(again.to_dict()) == text
        assert ArchConfig.from_json(arch.to_json(indent=2)) == arch


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_fixed_trial_rebuilds_the_same_arch(space_name: str) -> None:
    space = get_space(space_name)
    for params, arch in _sampled(space_name, 50, seed=1):
        rebuilt = space.sample(optuna.trial.FixedTrial(params), num_classes=10, img_size=16)
        assert rebuilt == arch


def test_integer_mlp_ratio_reads_as_float() -> None:
    arch = ArchConfig.from_dict({"stages": [{"depth": 1, "dim": 8, "mlp_ratio": 2}]})
    assert arch.stages[0].mlp_ratio == 2.0 and isinstance(arch.stages[0].mlp_ratio, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stages": [{"depth": 1, "dim": 8}], "stme": "conv"}, "unknown key 'arch.stme'"),
        ({"stages": [{"depth": "2", "dim": 8}]}, "arch.stages[0].depth must be an integer"),
        ({"stages": [{"depth": 1, "dim": 10, "heads": 4}]}, "not divisible by heads"),
        ({"stages": [{"depth": 1, "dim": 8}], "img_size": 30, "patch_size": 4}, "multiple of"),
        ({"stages": []}, "at least one stage"),
        ({"stages": [{"depth": 1, "dim": 8}], "schema_version": 99}, "schema_version 99"),
        ({"stages": [{"depth": 1, "dim": 8, "downsample": True}]}, "stage 1 cannot downsample"),
        ({"stem": "conv"}, "missing required key 'arch.stages'"),
    ],
)
def test_invalid_archs_are_refused_with_the_key_named(data: dict, message: str) -> None:
    with pytest.raises(ArchConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ArchConfig.from_dict(data)


def test_grid_sizes_follow_downsampling() -> None:
    arch = ArchConfig(
        stages=(StageConfig(1, 8), StageConfig(1, 16, downsample=True)), img_size=32, patch_size=4
    )
    assert arch.grid_sizes() == [8, 4]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_arch_and_spaces_never_import_torch() -> None:
    """Spaces are data plus sample(): no torch, timm or model code behind them."""
    files = [
        ROOT / "search_spaces/arch.py",
        ROOT / "search_spaces/typed.py",
        *sorted((ROOT / "search_spaces/spaces").glob("*.py")),
    ]
    allowed_own = ("search_spaces.arch", "search_spaces.typed", "search_spaces.spaces")
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in ("torch", "timm", "numpy"), f"{path.name} imports {name}"
            if top == "search_spaces":
                assert name.startswith(allowed_own), f"{path.name} imports {name}"
