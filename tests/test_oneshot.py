"""One-shot search: the supernet's space, shared weights, NNI's model space, the commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from nas.cli import main
from nas.config import ConfigError, load_config
from nas.oneshot_retrain import best_scored
from nas.supernet import SharedWeights, SupernetError, recalibrate_bn, shared_key
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT
from search_spaces.spaces.shared import SharedSpace, StageChoices
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[1]

SPACE = SharedSpace(
    (
        StageChoices(
            depths=(1, 2),
            dims=(16, 32),
            heads=(1, 2),
            mlp_ratios=(2.0, 3.0),
            mixers=(
                "mhsa",
                "pool",
                "dwconv",
                "sra",
                "window",
                "linear",
                "shift",
                "lisa",
                "mobileformer",
            ),
            kernel_sizes=(3, 5),
        ),
        StageChoices(
            depths=(1, 2), dims=(32, 48), heads=(1, 2), mixers=("mhsa", "dwconv"), downsample=True
        ),
    ),
    stems=("patch", "conv", "repconv", "multiscale"),
    pos_encs=("learned", "cpe", "posmlp", "rel_bias", "rope_axial", "unitary", "none"),
    patch_size=2,
)

SUPERNET_SECTION = """supernet:
          epochs: 2
          patch_size: 4
          stems: [patch, conv]
          pos_encs: [learned, cpe]
          stages:
            - {depths: [1, 2], dims: [16, 32], heads: [1, 2], mlp_ratios: [2.0],
               mixers: [mhsa, pool, dwconv]}
          calib_batches: 2
          retrain_top_k: 2"""


@pytest.fixture(scope="module")
def shared() -> SharedWeights:
    torch.manual_seed(0)
    return SharedWeights(SPACE, num_classes=4, img_size=16)


@pytest.mark.slow
def test_every_architecture_of_the_space_runs_as_a_slice_and_exports_identically(shared):
    archs = SPACE.sample_many(40, seed=3, num_classes=4, img_size=16)
    assert len({a.stem for a in archs}) > 1 and len({a.stages[0].mixer for a in archs}) > 2
    x = torch.randn(2, 3, 16, 16)
    shared.eval()
    for arch in archs:
        shared.active = arch
        inside = shared(x)
        alone = shared.subnet(arch)
        assert type(alone) is LightViT and alone.arch == arch
        assert torch.equal(inside, alone(x)), arch.describe()


def test_narrow_subnets_use_the_leading_part_of_the_widest_weights(shared):
    arch = SPACE.largest(num_classes=4, img_size=16)
    narrow_stage = StageConfig(depth=1, dim=16, heads=1, mlp_ratio=2.0, mixer="mhsa")
    narrow = ArchConfig(
        stages=(narrow_stage, *arch.stages[1:]),
        stem="patch",
        patch_size=2,
        pos_enc="learned",
        img_size=16,
        num_classes=4,
    )
    wide = shared.subnet(
        ArchConfig.from_dict({**arch.to_dict(), "stem": "patch", "pos_enc": "learned"})
    )
    small = shared.subnet(narrow)
    wide_qkv = wide.stages[0].blocks[0].mixer.qkv.weight
    small_qkv = small.stages[0].blocks[0].mixer.qkv.weight
    for part in range(3):  # q, k and v keep their own rows at every width
        assert torch.equal(
            small_qkv[part * 16 : part * 16 + 16], wide_qkv[part * 32 : part * 32 + 16, :16]
        )
    assert torch.equal(
        small.stages[0].blocks[0].mlp.fc1.weight, wide.stages[0].blocks[0].mlp.fc1.weight[:32, :16]
    )


def test_a_smaller_kernel_is_the_centre_of_the_largest(shared):
    params = {
        "stem": "patch", "pos_enc": "none", "stage1.mixer": "dwconv", "stage1.depth": 1,
        "stage1.dim": 32, "stage1.mlp_ratio": 2.0, "stage1.kernel_size": 3,
        "stage2.mixer": "dwconv", "stage2.depth": 1, "stage2.dim": 32, "stage2.mlp_ratio": 4.0,
        "stage2.kernel_size": 3,
    }  # fmt: skip
    k3 = shared.subnet(shared.arch_of(params))
    k5 = shared.subnet(shared.arch_of({**params, "stage1.kernel_size": 5}))
    w3, w5 = k3.stages[0].blocks[0].mixer.conv.weight, k5.stages[0].blocks[0].mixer.conv.weight
    assert w3.shape[-1] == 3 and w5.shape[-1] == 5
    assert torch.equal(w3, w5[:, :, 1:4, 1:4])


@pytest.mark.slow
def test_training_a_path_changes_only_its_slices():
    torch.manual_seed(0)
    net = SharedWeights(SPACE, num_classes=4, img_size=16)
    arch = SPACE.sample_many(1, seed=0, num_classes=4, img_size=16)[0]
    narrow = ArchConfig.from_dict(
        {**arch.to_dict(), "stages": [{**arch.stages[0].__dict__, "dim": 16, "mixer": "mhsa",
                                       "heads": 1}, arch.stages[1].__dict__]}
    )  # fmt: skip
    before = {k: v.detach().clone() for k, v in net.weights.items()}
    net.train()
    net.sampler = lambda: narrow
    loss = net(torch.randn(8, 3, 16, 16)).logsumexp(1).mean()
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    changed = {k for k, v in net.weights.items() if not torch.equal(v, before[k])}
    assert changed and all("@" in k or k.startswith(("stages", "head", "norm")) for k in changed)
    qkv = next(k for k in net.weights if k.endswith("stages:0:blocks:0:mixer@mhsa:qkv:weight"))
    delta = (net.weights[qkv] - before[qkv]).abs()
    assert delta[:16, :16].sum() > 0 and delta[16:32].sum() == 0 and delta[:, 16:].sum() == 0
    untouched = [k for k in before if "mixer@pool" in k or "mixer@sra" in k]
    assert all(k not in changed for k in untouched)


def test_the_sandwich_rule_teaches_the_other_paths_the_largest_predictions(shared):
    """BigNAS's sandwich rule: the largest path's loss on the labels, plus the smallest's and
    the drawn paths' soft cross-entropy against the largest's detached predictions."""
    largest = SPACE.largest(num_classes=4, img_size=16)
    smallest = SPACE.smallest(num_classes=4, img_size=16)
    assert [(s.depth, s.dim, s.heads) for s in smallest.stages] == [(1, 16, 1), (1, 32, 1)]
    assert smallest.stages[0].mlp_ratio == 2.0 and smallest.stem == "patch"
    drawn = SPACE.sample_many(2, seed=3, num_classes=4, img_size=16)
    shared.sandwich = lambda: (largest, smallest, drawn)
    shared.eval()  # no dropout, batch statistics fixed: the same logits twice
    try:
        torch.manual_seed(0)
        x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 4, (6,))
        criterion = torch.nn.CrossEntropyLoss()
        loss = shared.sandwich_loss(x, y, criterion)
        with torch.no_grad():
            top = shared.run(largest, x)
            taught = top.softmax(-1)
            expected = criterion(top, y)
            for arch in (smallest, *drawn):
                out = shared.run(arch, x).log_softmax(-1)
                expected += -(taught * out).sum(-1).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        loss.backward()  # every tensor of the paths learns
        for arch in (largest, smallest, *drawn):
            for key in shared_key(shared.model_of(arch)).values():
                assert shared._full(key).grad is not None, key
    finally:
        shared.sandwich = None
        shared.zero_grad(set_to_none=True)


def test_lvit_supernet_train_with_the_sandwich_rule(tmp_path, capsys):
    section = SUPERNET_SECTION.replace(
        "epochs: 2", f"path: {tmp_path}/sw\n          epochs: 1\n          sampling: sandwich"
    )
    path = write_config(tmp_path, "sw", space="space: supernet", supernet=section)
    assert main(["supernet", "train", str(path)]) == 0
    meta = json.loads((tmp_path / "sw" / "supernet.json").read_text())
    assert meta["sampling"].startswith("sandwich rule (largest, smallest, 2 drawn")
    assert meta["paths_trained"] == 4 * 2  # 4 batches, 2 drawn paths each beside the two ends


def test_position_embeddings_are_exempt_from_weight_decay_as_in_the_blocks(shared):
    exempt = shared.no_weight_decay()
    assert exempt and all(name.startswith("weights.") for name in exempt)
    assert any("pos_enc@learned" in name for name in exempt)
    assert not any(name.endswith("qkv:weight") for name in exempt)
    from timm.optim import create_optimizer_v2

    groups = create_optimizer_v2(shared, "adamw", lr=1e-3, weight_decay=0.05).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    named = dict(shared.named_parameters())
    assert all(id(named[name]) not in decayed for name in exempt)


def test_an_architecture_outside_the_space_is_refused(shared):
    wider = ArchConfig(stages=(StageConfig(depth=1, dim=64, heads=1),), patch_size=2, img_size=16)
    with pytest.raises(SupernetError, match="not in this supernet's space"):
        shared.subnet(wider)


def test_save_and_load_keep_the_weights(shared, tmp_path):
    shared.save(str(tmp_path), {"note": "test"})
    loaded, meta = SharedWeights.load(str(tmp_path))
    assert meta["note"] == "test" and meta["fingerprint"] == SPACE.fingerprint()
    for key in shared._names:
        assert torch.equal(shared._full(key), loaded._full(key))
    with pytest.raises(SupernetError, match="lvit supernet train"):
        SharedWeights.load(str(tmp_path / "missing"))


def test_batch_norm_recalibration_is_the_average_of_batch_statistics():
    from nas.config import DataConfig
    from nas.data import load_dataset

    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=96))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert recalibrate_bn(model, data, num_batches=0) == 0
    assert recalibrate_bn(model, data, num_batches=3, batch_size=16) == 1
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.train_y), generator=generator)[:48]
    feats = model[0](data.tensors("train", index=order)[0]).detach()
    means = torch.stack([feats[i * 16 : (i + 1) * 16].mean(dim=(0, 2, 3)) for i in range(3)])
    assert torch.allclose(model[1].running_mean, means.mean(0), atol=1e-5)
    assert not model.training


def test_a_choice_object_never_reaches_a_layer():
    import nni
    import numpy as np

    with pytest.raises(ValueError, match="dim must be an integer"):
        StageConfig(depth=1, dim=nni.choice("width", [32, 64]))
    with pytest.raises(ValueError, match="mlp_ratio must be a number"):
        StageConfig(depth=1, dim=32, mlp_ratio=nni.choice("ratio", [2.0, 4.0]))
    assert type(StageConfig(depth=np.int64(2), dim=32).depth) is int


def test_config_rules_for_one_shot(tmp_path):
    ok = load_config(
        write_config(tmp_path, "ok", space="space: supernet", supernet=SUPERNET_SECTION)
    )
    assert ok.search_space().name == "supernet" and ok.evaluation == "train"
    cases = {
        "no_section": ({"space": "space: supernet"}, "need a supernet section"),
        "other_space": (
            {"evaluation": "evaluation: supernet", "supernet": SUPERNET_SECTION},
            "set space: supernet",
        ),
        "bad_mixer": (
            {"space": "space: supernet", "supernet": SUPERNET_SECTION.replace("pool", "conv3")},
            "mixer 'conv3' is unknown",
        ),
        "bad_heads": (
            {"space": "space: supernet", "supernet": SUPERNET_SECTION.replace("[1, 2]", "[1, 3]")},
            "not divisible by heads 3",
        ),
        "bad_sampling": (
            {
                "space": "space: supernet",
                "supernet": SUPERNET_SECTION + "\n          sampling: bignas",
            },
            "supernet.sampling must be spos or sandwich",
        ),
    }
    for name, (overrides, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(write_config(tmp_path, name, **overrides))


def test_nni_model_space_samples_freezes_and_validates(shared):
    from nas.oneshot import ViTModelSpace

    space = ViTModelSpace(shared)
    assert set(space.simplify()) == set(SPACE.choices(16))
    rng = __import__("numpy").random.RandomState(0)
    x = torch.randn(2, 3, 16, 16)
    shared.eval()
    for _ in range(5):
        sample = space.resample(rng)
        frozen = space.freeze(sample)
        assert type(frozen) is LightViT and frozen.arch == shared.active
        assert not any("nni" in type(m).__module__ for m in frozen.modules())
        assert torch.equal(frozen(x), space(x))
    with pytest.raises(ValueError, match="not a sample"):
        space.arch({**sample, "stage1.dim": 24})


@pytest.mark.slow
def test_supernet_train_search_retrain_and_export_from_the_command_line(tmp_path, capsys):
    path = write_config(
        tmp_path,
        "one",
        space="space: supernet",
        evaluation="evaluation: supernet",
        supernet=SUPERNET_SECTION.replace(
            "epochs: 2", f"path: {tmp_path}/supernet\n          epochs: 2"
        ),
    )
    assert main(["search", str(path), "--n-trials", "3"]) == 2
    assert "lvit supernet train" in capsys.readouterr().err

    assert main(["supernet", "train", str(path)]) == 0
    out = capsys.readouterr()
    assert "Wrote" in out.out and "supernet" in out.err
    meta = json.loads((tmp_path / "supernet" / "supernet.json").read_text())
    assert meta["paths_trained"] == 2 * 4 and len(meta["history"]) == 2  # 128 images, batch 32
    assert main(["supernet", "train", str(path)]) == 2
    assert "--force" in capsys.readouterr().err

    assert main(["search", str(path), "--n-trials", "6"]) == 0
    out = capsys.readouterr().out
    assert "scored" in out and "stand-alone" in out
    storage = f"sqlite:///{tmp_path}/study.db"
    study = optuna.load_study(study_name="one", storage=storage)
    scored = [t for t in study.trials if t.user_attrs.get("status") == "scored"]
    assert scored and all(t.user_attrs["inherited"]["seconds"] > 0 for t in scored)
    assert all(t.values[0] == t.user_attrs["inherited"]["accuracy"] for t in scored)
    retrained = optuna.load_study(study_name="one-retrained", storage=storage)
    budget = retrained.user_attrs["config"]["budget"]  # admitted by the search: no re-check
    assert budget["max_params"] is None and budget["max_latency_ms"] is None
    best = best_scored(study, 2)  # the 2 best distinct architectures
    assert best[0].values[0] == max(t.values[0] for t in scored)
    assert len({json.dumps(t.user_attrs["arch"], sort_keys=True) for t in best}) == len(best)
    done = [t for t in retrained.trials if t.user_attrs.get("status") == "trained"]
    assert sorted(t.user_attrs["from_trial"] for t in done) == sorted(t.number for t in best)
    for t in done:
        source = study.trials[t.user_attrs["from_trial"]]
        assert t.user_attrs["arch"] == source.user_attrs["arch"]
        assert len(t.user_attrs["train"]["history"]) == 2  # the train section's epochs

    # resuming retrains nothing again
    assert main(["search", str(path), "--n-trials", "6"]) == 0
    capsys.readouterr()
    assert len(optuna.load_study(study_name="one-retrained", storage=storage).trials) == len(done)

    # a scored trial exports with its inherited weights; any subnet exports from the supernet
    out_dir = tmp_path / "exported"
    assert main(["export", "--storage", storage, "--study", "one", "--trial",
                 str(scored[0].number), "--out", str(out_dir)]) == 0  # fmt: skip
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(scored[0].user_attrs["arch"]))
    sub_dir = tmp_path / "subnet"
    assert (
        main(["supernet", "export", str(path), "--arch", str(arch_file), "--out", str(sub_dir)])
        == 0
    )
    capsys.readouterr()
    code = (
        "import search_spaces, timm, torch, json, sys\n"
        f"m = timm.create_model('local-dir:{sub_dir}', pretrained=True).eval()\n"
        "print(json.dumps({'nni': 'nni' in sys.modules, 'classes': m.num_classes}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"nni": False, "classes": 4}


@pytest.mark.slow
def test_without_nni_the_tool_works_and_one_shot_says_what_to_install(tmp_path):
    path = write_config(tmp_path, "plain", space="space: supernet", supernet=SUPERNET_SECTION)
    code = (
        "import sys; sys.modules['nni'] = None\n"
        "from nas.cli import main\n"
        f"assert main(['space', 'show', 'tiny']) == 0\n"
        f"sys.exit(main(['supernet', 'train', '{path}']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install -e '.[nni]'" in result.stderr


def test_nni_autoformer_space_is_searched_by_the_same_engine(tmp_path, capsys):
    from nas.oneshot import hub_space

    space = hub_space("nni:autoformer", {"search_depth": (2, 3), "search_embed_dim": (16, 32)})
    options = space.choices()
    assert {"embed_dim", "depth", "mlp_ratio_0", "num_head_2"} <= set(options)
    assert options["depth"] == (2, 3) and options["embed_dim"] == (16, 32)
    per_layer = len(options["mlp_ratio_0"]) * len(options["num_head_0"])
    assert space.size() == 2 * (per_layer**2 + per_layer**3)
    archs = space.sample_many(8, seed=0, num_classes=4, img_size=16)
    for arch in archs:
        assert arch.depth in (2, 3) and len({s.dim for s in arch.stages}) == 1
        assert arch.stem == "patch" and arch.patch_size == 4 and arch.pos_enc == "learned"

    args = "space_args: {search_depth: [2, 3], search_embed_dim: [16, 32]}"
    path = write_config(tmp_path, "af", space="space: nni:autoformer", space_args=args)
    assert main(["search", str(path), "--n-trials", "2"]) == 0
    study = optuna.load_study(study_name="af", storage=f"sqlite:///{tmp_path}/study.db")
    assert study.user_attrs["space"]["name"] == "nni:autoformer"
    trained = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
    assert trained and "embed_dim" in trained[0].params
    capsys.readouterr()
    bad = write_config(
        tmp_path, "bad", space="space: nni:autoformer", space_args="space_args: {depth: [2]}"
    )
    assert main(["search", str(bad)]) == 2
    assert "not arguments of nni.nas.hub.pytorch.AutoFormer" in capsys.readouterr().err
