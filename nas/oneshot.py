"""The NNI bridge (the `nni` extra): our supernet as an NNI model space, trained by SPOS.

This is the one module that imports NNI ("Retiarii: A Deep Learning Exploratory-Training
Framework", OSDI 2020; NNI 3.0, its last release, treated as frozen). It gives:
  - `ViTModelSpace`: an `nni.nas.nn.pytorch.ModelSpace` whose mutables are the choices of a
    `SharedSpace` (`nni.choice` per label: `stem`, `pos_enc`, `stage1.dim`, ...) over the
    shared weights of `nas.supernet.SharedWeights`. NNI samples it (`random`), validates samples
    (`check_contains`), and `freeze(sample)` returns the plain `LightViT` of a sample with the
    weights it inherits, NNI's contract for a supernet;
  - `train_supernet`: single-path one-shot training with uniform sampling (SPOS, "Single Path
    One-Shot Neural Architecture Search with Uniform Sampling", arXiv 1904.00420): for every
    batch NNI draws one path uniformly over the choices, and that path's slices are trained,
    with the `train` section's recipe; or BigNAS's sandwich rule with in-place distillation
    (`supernet.sampling: sandwich`, arXiv 2003.11142: the largest, the smallest and a few
    drawn paths every batch, the others learning the largest's predictions).

Why our own weight slicing and not NNI's mixed operations: NNI's one-shot strategies replace
`MutableLinear`/`MutableConv2d`/`MutableLayerNorm`/`MutableMultiheadAttention` layers by mixed
operations, so a space written with them shares weights; our blocks (attention with RoPE, FIRE
or relative biases, spatial-reduction and linear attention, pooling, the stems) are plain torch
modules with their own forward, which would each need a mixed version. Slicing parameters in
`SharedWeights` shares the weights of every block as it is, and what a candidate inherits is
what it exports. Everything else that touches NNI (sampling, the space's mutables, the
reference spaces of its hub) stays here, so NNI can be replaced by changing this module.

What did not work with NNI 3.0 here (and is not used): ENAS on Lightning >= 2.1, Proxyless on
spaces with choice-sized layers, nn-meter offline, `nnictl` with setuptools >= 81, and its FLOP
counter on ViTs (it ignores the token dimension). A `nni.choice` given to a plain torch layer
makes NNI loop until memory runs out; `ArchConfig` refuses anything that is not a number where
a number belongs, so a mutable can never reach a layer through our model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:
    with warnings.catch_warnings():  # NNI 3.0 lists torch classes it does not know; harmless
        warnings.simplefilter("ignore", RuntimeWarning)
        import nni
        import numpy as np
        from nni.mutable import Categorical
        from nni.nas.nn.pytorch import ModelSpace
except ImportError as e:  # pragma: no cover - exercised where the extra is absent
    raise ImportError(
        "one-shot search needs the nni extra: pip install -e '.[nni]' "
        f"(NNI 3.0 and pytorch-lightning); {e}"
    ) from None

import torch
from torch import nn

from nas.config import SearchConfig, TrainConfig
from nas.data import Dataset
from nas.supernet import SharedWeights
from search_spaces.arch import ArchConfig
from search_spaces.model import LightViT
from search_spaces.spaces.hub import HUB_SPACES, NNIHubSpace, hub_space  # noqa: F401 - re-exported

__all__ = [
    "ViTModelSpace",
    "SupernetRun",
    "train_supernet",
    "nni_version",
    "HUB_SPACES",
    "NNIHubSpace",
    "hub_space",
]


def nni_version() -> str:
    return nni.__version__


class ViTModelSpace(ModelSpace):
    """An NNI model space over a supernet's shared weights (see the module docstring)."""

    def __init__(self, shared: SharedWeights) -> None:
        super().__init__()
        self.shared = shared
        self.choices: dict[str, Categorical] = {}
        for label, options in shared.space.choices(shared.img_size).items():
            self.choices[label] = self.add_mutable(nni.choice(label, list(options)))

    def arch(self, sample: dict[str, Any]) -> ArchConfig:
        """The architecture an NNI sample stands for (labels the path does not use ignored)."""
        error = self.check_contains(sample)
        if error is not None:
            raise ValueError(f"not a sample of this space: {error}")
        return self.shared.arch_of(dict(sample))

    def resample(self, random_state: np.random.RandomState | None = None) -> dict[str, Any]:
        """Draw one path uniformly (each choice independently), make it the active one and
        return NNI's sample (`random()` would also freeze it into a model)."""
        sample: dict[str, Any] = {}
        for mutable in self.simplify().values():
            mutable.random(sample, random_state)
        self.shared.active = self.arch(sample)
        return sample

    def freeze(self, sample: dict[str, Any]) -> LightViT:  # NNI's name for "export a subnet"
        """The stand-alone LightViT of `sample` with the weights it inherits."""
        return self.shared.subnet(self.arch(sample))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(x)


@dataclass
class SupernetRun:
    """What `train_supernet` did."""

    shared: SharedWeights
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    paths: int = 0
    folder: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def train_supernet(
    config: SearchConfig,
    data: Dataset,
    on_epoch: Callable[[int, float], None] | None = None,
    on_step: Callable[[], None] | None = None,
    keep_epochs: tuple[int, ...] = (),
) -> SupernetRun:
    """Train the supernet of `config.supernet` on `data` with SPOS and save it to its folder.

    After each epoch, `on_epoch(epoch, acc)` gets the inherited-weight accuracy of the largest
    subnet (batch norms recalibrated), the curve the supernet's history records. The weights
    after each epoch in `keep_epochs` are also saved, to `<folder>/epoch-N`."""
    import dataclasses

    from nas.lifecycle import library_versions
    from nas.train import train_model

    sn = config.supernet
    space = sn.space()
    torch.manual_seed(sn.seed)
    shared = SharedWeights(
        space, num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size
    )
    model_space = ViTModelSpace(shared)
    rng = np.random.RandomState(sn.seed)
    paths = 0

    def sample() -> ArchConfig:
        nonlocal paths
        paths += 1
        model_space.resample(rng)
        if on_step is not None:
            on_step()
        return shared.active

    largest = space.largest(
        num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size
    )

    folder = sn.folder(config.study.name)
    epoch = 0

    def score_largest(_: nn.Module) -> float:
        nonlocal epoch
        epoch += 1
        if epoch in keep_epochs:
            shared.save(os.path.join(folder, f"epoch-{epoch}"), {"epoch": epoch})
        return shared.score(largest, data, calib_batches=sn.calib_batches, seed=sn.seed)

    shared.sampler = sample
    if sn.sampling == "sandwich":
        smallest = space.smallest(
            num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size
        )

        def sandwich() -> tuple[ArchConfig, ArchConfig, list[ArchConfig]]:
            return largest, smallest, [sample() for _ in range(sn.sandwich_paths)]

        shared.sandwich = sandwich
    recipe: TrainConfig = dataclasses.replace(config.train, epochs=sn.epochs)
    result = train_model(
        shared, data, recipe, sn.seed, on_epoch=on_epoch, evaluate_fn=score_largest
    )
    shared.sampler = shared.sandwich = None
    meta = {
        "data": data.info(),
        "recipe": dataclasses.asdict(recipe),
        "sampling": (
            f"sandwich rule (largest, smallest, {sn.sandwich_paths} drawn by NNI) with in-place "
            "distillation (BigNAS)"
            if sn.sampling == "sandwich"
            else "uniform single path per batch (SPOS), drawn by NNI"
        ),
        "seed": sn.seed,
        "epochs": sn.epochs,
        "paths_trained": paths,
        "history": result.history,
        "seconds": round(result.seconds, 1),
        "largest": largest.to_dict(),
        "largest_accuracy": result.val_acc,
        "choices": {k: list(v) for k, v in space.choices(data.img_size).items()},
        "versions": {**library_versions(), "nni": nni_version()},
    }
    shared.save(folder, meta)
    return SupernetRun(shared, result.history, result.seconds, paths, folder, meta)


# NNI hub spaces searchable by the engine: name -> (NNI class path, default arguments at the
# scale of this tool's budgets). AutoFormer-Tiny's own (embed 192-240, depth 12-14, heads 3-4 of
# width 64) is about 6M parameters; these defaults keep its shape at about 50-350k.
