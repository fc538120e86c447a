"""Knowledge distillation: teachers trained and saved as timm folders, loaded safely, and
distilled into searched candidates."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nas.cli import main
from nas.config import DataConfig, DistillConfig, TrainConfig, load_config
from nas.data import load_dataset
from nas.distill import load_teacher
from nas.errors import UserError
from nas.study import run_search
from nas.train import distillation_loss, soft_distillation, train_model
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT
from tests.conftest import write_config


def test_soft_distillation_is_hintons_loss() -> None:
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    expected = F.softmax(t / 3, -1) * (F.log_softmax(t / 3, -1) - F.log_softmax(s / 3, -1))
    assert torch.allclose(soft_distillation(s, t, 3.0), expected.sum(-1).mean() * 9)
    assert soft_distillation(t, t, 3.0).abs() < 1e-6


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("teach")
    config = write_config(folder)
    out = folder / "resnet"
    assert (
        main(
            [
                "teacher",
                "train",
                str(config),
                "--model",
                "resnet10t",
                "--out",
                str(out),
                "--epochs",
                "2",
            ]
        )
        == 0
    )
    return config, out


@pytest.mark.slow
def test_teacher_train_writes_a_timm_folder(teacher_dir) -> None:
    _, out = teacher_dir
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    data = load_dataset(load_config(teacher_dir[0]).data)
    teacher = load_teacher(str(out), data)
    assert teacher.info["architecture"] == "resnet10t" and 0 <= teacher.info["val_acc"] <= 1


def test_a_teacher_folder_must_hold_safetensors_and_match_the_classes(teacher_dir, tmp_path):
    _, out = teacher_dir
    data = load_dataset(load_config(teacher_dir[0]).data)
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((out / "config.json").read_text())
    (bad / "pytorch_model.bin").write_bytes(b"anything")
    with pytest.raises(
        UserError, match=r"holds pickle weights \(pytorch_model.bin\), which are never"
    ):
        load_teacher(str(bad), data)
    other = load_dataset(DataConfig(name="synthetic", img_size=16, num_classes=6, num_samples=60))
    with pytest.raises(UserError, match="predicts 4 classes, the data has 6"):
        load_teacher(str(out), other)


@pytest.mark.slow
def test_a_search_distils_from_the_teacher_and_records_it(teacher_dir, tmp_path) -> None:
    _, out = teacher_dir
    config = write_config(tmp_path, budget="budget: {max_params: 1000000, max_latency_ms: 100}")
    text = Path(config).read_text() + f"distill: {{teacher: {out}, alpha: 0.7}}\n"
    Path(config).write_text(text)
    run = run_search(load_config(config).replace_study(n_trials=2))
    for t in run.study.trials:
        record = t.user_attrs["distill"]
        assert record["alpha"] == 0.7 and record["architecture"] == "resnet10t"


def test_distillation_pulls_the_student_towards_the_teacher() -> None:
    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=120))
    arch = ArchConfig(stages=(StageConfig(1, 16, 1, 2.0, "pool"),), img_size=16, num_classes=4)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    with torch.no_grad():
        val_x, _ = data.tensors("val")
        target = teacher(val_x).softmax(-1)
    distilled, plain = LightViT(arch), LightViT(arch)
    recipe = TrainConfig(epochs=3, device="cpu")
    train_model(
        distilled,
        data,
        recipe,
        seed=0,
        teacher=teacher,
        distill=DistillConfig(teacher="t", alpha=1.0, temperature=1.0),
    )
    train_model(plain, data, recipe, seed=0)

    def gap(model: LightViT) -> float:
        with torch.no_grad():
            return (model(val_x).softmax(-1) - target).abs().mean().item()

    assert gap(distilled) < gap(plain)


def test_lvit_train_retrains_with_a_teacher_into_a_timm_folder(
    teacher_dir, tmp_path, capsys
) -> None:
    import json

    import timm

    config, teacher = teacher_dir
    arch = ArchConfig(
        stages=(StageConfig(1, 16, 2, 2.0),), img_size=16, patch_size=4, exits=(), num_classes=10
    )  # classes follow the data
    path = tmp_path / "arch.json"
    path.write_text(arch.to_json())
    out = tmp_path / "student"
    assert (
        main(
            [
                "train",
                str(path),
                "--config",
                str(config),
                "--epochs",
                "2",
                "--teacher",
                str(teacher),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "distilled from" in capsys.readouterr().out
    meta = json.loads((out / "config.json").read_text())["lightweight_vit"]
    assert meta["teacher"]["architecture"] == "resnet10t" and meta["epochs"] == 2
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model.num_classes == 4
    card = (out / "README.md").read_text()
    assert "distilled from `resnet10t`" in card and "with the full recipe: 2 epochs" in card
    assert meta["recipe"].startswith("full recipe") and "random erasing 0.25" in meta["recipe"]
    assert "validation split" in card and "synthetic has no test split" in card
    # the search's recipe on a few images: --recipe proxy, --max-train
    light = tmp_path / "light"
    args = ["train", str(path), "--config", str(config), "--epochs", "1", "--out", str(light)]
    assert main([*args, "--recipe", "proxy", "--max-train", "20"]) == 0
    meta = json.loads((light / "config.json").read_text())["lightweight_vit"]
    assert meta["recipe"].startswith("proxy recipe: 1 epoch,") and meta["data"]["train_size"] == 20
    # an export folder is a target too; an occupied --out is refused
    assert (
        main(["train", str(out), "--config", str(config), "--epochs", "1", "--out", str(out)]) == 2
    )
    assert "already exists" in capsys.readouterr().err


class _ConvTeacher(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.layer1 = torch.nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer1(torch.relu(self.stem(x))).mean(dim=(2, 3)))


def test_a_fitnets_hint_pulls_student_features_towards_the_teacher() -> None:
    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=120))
    arch = ArchConfig(stages=(StageConfig(2, 16, 2, 2.0),), img_size=16, num_classes=4)
    hint = DistillConfig(
        teacher="t", alpha=0.0, hint_weight=1.0, hint_layer="layer1", hint_block=1
    )
    result = train_model(
        LightViT(arch),
        data,
        TrainConfig(epochs=4, device="cpu"),
        seed=0,
        teacher=_ConvTeacher(),
        distill=hint,
    )
    losses = [h["hint_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    with pytest.raises(Exception, match="no module 'layer9'"):
        train_model(
            LightViT(arch),
            data,
            TrainConfig(epochs=1, device="cpu"),
            seed=0,
            teacher=_ConvTeacher(),
            distill=DistillConfig(teacher="t", hint_weight=1.0, hint_layer="layer9", hint_block=1),
        )
    with pytest.raises(Exception, match="hint_block 5 is not a block of this student"):
        train_model(
            LightViT(arch),
            data,
            TrainConfig(epochs=1, device="cpu"),
            seed=0,
            teacher=_ConvTeacher(),
            distill=DistillConfig(teacher="t", hint_weight=1.0, hint_layer="layer1", hint_block=5),
        )


def test_a_hint_needs_its_layer_and_block() -> None:
    with pytest.raises(ValueError, match="needs hint_layer"):
        DistillConfig(teacher="t", hint_weight=0.5)


def test_hard_distillation_is_cross_entropy_on_the_teachers_class() -> None:
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    hard = distillation_loss(s, t, DistillConfig(teacher="t", kind="hard"))
    assert torch.allclose(hard, F.cross_entropy(s, t.argmax(-1)))
    soft = distillation_loss(s, t, DistillConfig(teacher="t", temperature=2.0))
    assert torch.allclose(soft, soft_distillation(s, t, 2.0))


def test_a_distillation_head_gives_both_logits_in_training_and_their_mean_at_inference():
    arch = ArchConfig(stages=(StageConfig(1, 16, 2, 2.0),), img_size=16, distill_head=True)
    model = LightViT(arch)
    x = torch.randn(3, 3, 16, 16)
    model.set_distilled_training(True)
    logits, dist = model.train()(x)
    model.eval()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = (model.head(pooled) + model.head_dist(pooled)) / 2
        assert torch.allclose(model(x), expected, atol=1e-6)
    assert logits.shape == dist.shape == (3, 10)
    assert model.pretrained_cfg["classifier"] == ("head", "head_dist")
    assert "+dist" in arch.describe()
    with pytest.raises(ValueError, match="no distillation head"):
        LightViT(ArchConfig(stages=arch.stages, img_size=16)).set_distilled_training(True)


def test_deit_hard_distillation_teaches_the_head_the_teachers_classes() -> None:
    # a teacher that disagrees with the labels: the class head follows the labels, the
    # distillation head the teacher (DeiT's two heads learn two different targets)
    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=160))
    arch = ArchConfig(
        stages=(StageConfig(1, 24, 2, 2.0),), img_size=16, num_classes=4, distill_head=True
    )
    torch.manual_seed(1)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    model = LightViT(arch)
    train_model(
        model,
        data,
        TrainConfig(epochs=6, device="cpu", lr=0.003),
        seed=0,
        teacher=teacher,
        distill=DistillConfig(teacher="t", kind="hard", head=True),
    )
    assert not model.distilled_training  # switched off again after training
    with torch.no_grad():
        train_x, _ = data.tensors("train")
        pooled = model.forward_head(model.forward_features(train_x), pre_logits=True)
        taught = teacher(train_x).argmax(-1)
        agree_dist = (model.head_dist(pooled).argmax(-1) == taught).float().mean()
        agree_cls = (model.head(pooled).argmax(-1) == taught).float().mean()
        label_dist = (model.head_dist(pooled).argmax(-1) == data.train_y).float().mean()
        label_cls = (model.head(pooled).argmax(-1) == data.train_y).float().mean()
    assert agree_dist > agree_cls and label_cls > label_dist
    with pytest.raises(ValueError, match="train it with a teacher"):
        train_model(LightViT(arch), data, TrainConfig(epochs=1, device="cpu"), seed=0)


@pytest.mark.slow
def test_a_search_with_a_distillation_head_trains_counts_and_exports_it(
    teacher_dir, tmp_path, capsys
) -> None:
    import json

    import timm

    plain_config, out = teacher_dir
    config = write_config(tmp_path, budget="budget: {max_params: 1000000, max_latency_ms: 100}")
    text = Path(config).read_text()
    Path(config).write_text(text + f"distill: {{teacher: {out}, kind: hard, head: true}}\n")
    run = run_search(load_config(config).replace_study(n_trials=1))
    (trial,) = run.study.trials
    arch = ArchConfig.from_dict(trial.user_attrs["arch"])
    assert arch.distill_head and trial.user_attrs["distill"]["kind"] == "hard"
    plain = LightViT(dataclasses.replace(arch, distill_head=False))
    assert trial.user_attrs["costs"]["params"] == sum(p.numel() for p in plain.parameters()) + sum(
        p.numel() for p in LightViT(arch).head_dist.parameters()
    )
    folder = tmp_path / "exported"
    storage = f"sqlite:///{tmp_path}/study.db"
    assert main(["export", "--storage", storage, "--trial", "0", "--out", str(folder)]) == 0
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert model.head_dist is not None
    assert "hard targets, alpha 0.5; a distillation head" in (folder / "README.md").read_text()
    assert json.loads((folder / "config.json").read_text())["model_args"]["arch"]["distill_head"]
    # retraining it without a teacher is refused: its second head would learn nothing
    capsys.readouterr()
    retrain = ["train", str(folder), "--config", str(plain_config), "--out", str(tmp_path / "r")]
    assert main(retrain) == 2
    assert "pass --teacher DIR" in capsys.readouterr().err


def test_distill_config_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="distill.kind 'medium' is unknown; use one of: soft"):
        DistillConfig(teacher="t", kind="medium")
    with pytest.raises(ValueError, match="distill.head needs a teacher"):
        DistillConfig(head=True)
