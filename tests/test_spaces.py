"""Spaces: every draw builds, FixedTrial replays it, sizes and choices are exact, the CLI shows
them."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from nas.cli import main
from search_spaces.arch import SCHEMA_VERSION, ArchConfig, ArchConfigError, StageConfig
from search_spaces.model import LightViT
from search_spaces.spaces import SPACES, get_space
from search_spaces.spaces.base import enumerate_leaves


@pytest.mark.slow
def test_one_thousand_survey_architectures_build_and_run() -> None:
    space = get_space("survey")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_mixers, seen_pos, seen_stems, reductions, exits = set(), set(), set(), set(), 0
    dynamic = 0
    torch.manual_seed(0)
    for _ in range(1000):
        trial = study.ask()
        arch = space.sample(trial, num_classes=10, img_size=32)
        study.tell(trial, 0.0)
        assert (
            space.sample(optuna.trial.FixedTrial(trial.params), num_classes=10, img_size=32)
            == arch
        )
        with torch.no_grad():
            logits = LightViT(arch).eval()(torch.randn(1, 3, arch.img_size, arch.img_size))
        assert logits.shape == (1, 10) and torch.isfinite(logits).all(), arch.describe()
        seen_stems.add(arch.stem)
        seen_pos.add(arch.pos_enc)
        seen_mixers.update(s.mixer for s in arch.stages)
        reductions.update("tome" if s.merge_r else "evit" for s in arch.stages if s.reduces_tokens)
        exits += bool(arch.exits)
        if arch.dynamic_resolution:  # the forward above ran the half-resolution pass first
            dynamic += 1
            assert arch.dynamic_resolution == max(
                arch.patch_size, arch.img_size // 2 // arch.patch_size * arch.patch_size
            )
    # the draws cover every family of the space (version 2: 10 encodings, 9 mixers)
    assert len(seen_stems) == 6 and len(seen_pos) == 10 and len(seen_mixers) == 9
    assert reductions == {"tome", "evit"} and exits > 100 and dynamic > 300


def test_the_survey_space_keeps_its_version_1() -> None:
    """Version 1 is version 2 without the choices it added: the size published for it, none
    of the new blocks drawn, and a study's config can ask for it."""
    from nas.config import ConfigError, SearchConfig

    survey = get_space("survey")
    v1 = survey.at_version(1)
    assert (survey.version, v1.version) == (2, 1) and survey.at_version(2) is survey
    assert v1.size(16) < survey.size(16)
    labels = v1.choices(16)
    assert "dynamic_resolution" not in labels
    assert not {"lisa", "mobileformer", "shift"} & set(labels["stage1.mixer"])
    assert not {"posmlp", "unitary"} & set(labels["pos_enc"])
    for arch in v1.sample_many(50, seed=2, num_classes=4, img_size=16):
        assert arch.pos_enc not in ("posmlp", "unitary") and not arch.dynamic_resolution
    study = {"name": "x"}
    config = SearchConfig.from_dict({"study": study, "space": "survey", "space_version": 1})
    assert config.search_space().version == 1
    with pytest.raises(ConfigError, match="keeps versions 1 and 2, not 3"):
        SearchConfig.from_dict({"study": {"name": "x"}, "space": "survey", "space_version": 3})
    with pytest.raises(ConfigError, match="keeps version 1 only, not 2"):
        SearchConfig.from_dict({"study": {"name": "x"}, "space": "tiny", "space_version": 2})


@pytest.mark.parametrize("name", ["isotropic", "hierarchical"])
def test_macro_spaces_keep_their_structure(name: str) -> None:
    space = get_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(100):
        trial = study.ask()
        arch = space.sample(trial, num_classes=4, img_size=16)
        study.tell(trial, 0.0)
        if name == "isotropic":
            assert len(arch.stages) == 1
        else:
            assert 2 <= len(arch.stages) <= 3 and all(s.downsample for s in arch.stages[1:])


@pytest.mark.slow
def test_size_matches_a_brute_force_count() -> None:
    space = get_space("tiny")
    brute = sum(
        1 for _ in enumerate_leaves(lambda t: space.sample(t, num_classes=10, img_size=16))
    )
    assert space.size(16) == brute == 250_560


def test_isotropic_size_matches_a_brute_force_count_of_a_smaller_copy() -> None:
    """The staged count, checked on the survey's own code with fewer options."""
    from search_spaces.spaces.survey import SurveySpace

    small = SurveySpace("small", ("isotropic", "hierarchical"))
    small.stems, small.dims, small.mlp_ratios, small.heads = ("patch",), (32,), (2.0,), (1,)
    small.pos_encs, small.mixers = ("none", "rope_axial"), ("mhsa", "window", "sra")
    small.isotropic_depth, small.hierarchical_depth = (2, 3), (1, 2)
    small.merge_rs, small.exit_positions, small.patch_sizes = (1,), (0.5,), (4,)
    brute = sum(1 for _ in enumerate_leaves(lambda t: small.sample(t, num_classes=3, img_size=16)))
    assert small.size(16) == brute


def test_a_mixer_option_comes_from_the_table_where_a_space_lists_none() -> None:
    """A supernet space offers a mixer's option from its `MIXER_SPECS` row when its stage has
    no list of its own (the `shift` mixer's `shift_div`), draws it under `stage{i}.{option}`,
    and a grid the mixer cannot run on makes the stage mhsa."""
    from search_spaces.arch import MIXER_SPECS
    from search_spaces.spaces.shared import SharedSpace, StageChoices

    space = SharedSpace(
        (StageChoices(mixers=("shift",)), StageChoices(mixers=("shift",), downsample=True))
    )
    labels = space.choices(8)
    assert labels["stage1.shift_div"] == MIXER_SPECS["shift"].choices
    seen = set()
    for _, arch in enumerate_leaves(lambda t: space.sample(t, num_classes=3, img_size=8)):
        first, second = arch.stages
        assert first.mixer == "shift" and first.shift_div in MIXER_SPECS["shift"].choices
        assert second.mixer == "mhsa"  # its grid is 1x1: nothing to shift
        seen.add(first.shift_div)
    assert seen == set(MIXER_SPECS["shift"].choices)
    assert space.largest_params()["stage1.shift_div"] == max(MIXER_SPECS["shift"].choices)


@pytest.mark.slow
def test_choices_list_every_label_sample_uses() -> None:
    space = get_space("survey")
    labels = set(space.choices(32))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(200):
        trial = study.ask()
        space.sample(trial, num_classes=10, img_size=32)
        study.tell(trial, 0.0)
        assert set(trial.params) <= labels


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        (
            dict(stages=[{"depth": 1, "dim": 16, "mixer": "window", "window": 3}], patch_size=4),
            "window 3 must divide the 8x8 grid",
        ),
        (
            dict(stages=[{"depth": 1, "dim": 16, "mixer": "sra", "sr_ratio": 16}], patch_size=4),
            "sr_ratio 16 exceeds the 8x8 grid",
        ),
        (
            dict(stages=[{"depth": 1, "dim": 24, "heads": 4}], pos_enc="rope_axial"),
            "RoPE needs a head width divisible by 4",
        ),
        (
            dict(
                stages=[
                    {"depth": 1, "dim": 16, "merge_r": 2},
                    {"depth": 1, "dim": 16, "downsample": True},
                ]
            ),
            "token reduction is allowed in the last stage only",
        ),
        (
            dict(stages=[{"depth": 1, "dim": 16, "mixer": "pool", "keep_rate": 0.5}]),
            "token reduction needs an mhsa or linear mixer",
        ),
        (
            dict(stages=[{"depth": 1, "dim": 16, "merge_r": 2}], pos_enc="cpe"),
            "needs a position encoding added at the input",
        ),
        (
            dict(stages=[{"depth": 1, "dim": 16, "mixer": "pool"}], pos_enc="fire"),
            "acts inside attention",
        ),
        (dict(stages=[{"depth": 2, "dim": 16}], exits=[2]), "exits [2] must be increasing"),
        (
            dict(stages=[{"depth": 1, "dim": 16, "mixer": "atention"}]),
            "unknown mixer 'atention'; use one of: mhsa, sra",
        ),
        (dict(stages=[{"depth": 1, "dim": 16}], stem="vit"), "unknown stem 'vit'"),
        (
            dict(stages=[{"depth": 1, "dim": 16, "merge_r": 1, "keep_rate": 0.5}]),
            "merge_r or keep_rate, not both",
        ),
    ],
)
def test_compatibility_rules_are_enforced_with_the_rule_named(arch: dict, message: str) -> None:
    with pytest.raises(ArchConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ArchConfig.from_dict(arch)


def test_schema_1_configs_still_read() -> None:
    old = {
        "stages": [
            {
                "depth": 1,
                "dim": 16,
                "heads": 2,
                "mlp_ratio": 2.0,
                "mixer": "mhsa",
                "downsample": False,
            }
        ],
        "stem": "conv",
        "patch_size": 4,
        "pos_enc": "cpe",
        "img_size": 16,
        "in_chans": 3,
        "num_classes": 10,
        "schema_version": 1,
    }
    arch = ArchConfig.from_dict(old)
    assert arch.schema_version == SCHEMA_VERSION and arch.stages[0] == StageConfig(
        1, 16, 2, 2.0, "mhsa"
    )


def test_space_show_and_sample_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space", "show", "tiny", "--img-size", "16"]) == 0
    out = capsys.readouterr().out
    assert any(line.split() == ["stage2.mixer", "mhsa,", "pool"] for line in out.splitlines())
    assert "14 choices; 250,560 parameter combinations" in out
    assert main(["space", "sample", "survey", "--n", "3", "--seed", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9
    for described, costs, text in zip(lines[0::3], lines[1::3], lines[2::3], strict=True):
        arch = ArchConfig.from_json(text.strip())
        assert described.split("] ", 1)[1] == arch.describe()
        params = int(costs.split()[1].replace(",", ""))
        assert params == sum(p.numel() for p in LightViT(arch).parameters())
    assert main(["space", "show", "galaxy"]) == 2
    assert "unknown space 'galaxy'" in capsys.readouterr().err


def test_every_space_is_listed() -> None:
    assert set(SPACES) == {"tiny", "survey", "isotropic", "hierarchical"}
    assert json.dumps(sorted(SPACES))
