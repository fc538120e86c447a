"""Weight sharing for one-shot search: the largest weights of a space, sliced for each candidate.

A `SharedWeights` holds, for every parameter any architecture of a `SharedSpace` can have, one
tensor of the largest shape the space needs. A candidate (an `ArchConfig`) runs as an ordinary
`LightViT` whose parameters are slices of those tensors (`torch.func.functional_call`), so:
  - every block of the registries is shareable without a supernet version of it: a candidate is
    computed by the same code that builds, trains and exports it;
  - the weights a candidate inherits are exactly the slices it ran with: `subnet(arch)` returns
    a plain `LightViT` (no NNI, no supernet) whose outputs equal the supernet's for that arch.

Weight entanglement (AutoFormer, "AutoFormer: Searching Transformers for Visual Recognition",
arXiv 2107.00651): a narrower width, a smaller MLP ratio or a shallower stage uses the leading
part of the largest one's weights (the first channels, the first blocks); a smaller kernel takes
the centre of the largest; fused projections (`qkv`, `kv`) are sliced per part, so that q, k and
v keep their own rows at every width. Blocks that are alternatives (stems, position encodings,
token mixers) have their own weights, named by the registry name of the block (`stem@conv`),
as path sampling does in single-path one-shot NAS (SPOS, "Single Path One-Shot Neural
Architecture Search with Uniform Sampling", arXiv 1904.00420).

Batch-norm statistics are not shared: they differ from one subnet to another, so each candidate
gets its own, recalibrated on training batches before it is scored (as Once-for-All does, "Once
for All: Train One Network and Specialize it for Efficient Deployment", arXiv 1908.09791).
Layer norms (every transformer block) need none.

This module is plain torch; `nas.oneshot` (the NNI extra) declares the space to NNI and samples
the paths the supernet trains on.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from nas.data import Dataset
from nas.loader import shuffled_batches
from nas.train import evaluate, resize
from search_spaces.arch import ArchConfig
from search_spaces.model import LightViT
from search_spaces.spaces.shared import SharedSpace, StageChoices

__all__ = [
    "SharedWeights",
    "fine_tune",
    "SupernetError",
    "recalibrate_bn",
    "shared_key",
    "space_from_spec",
    "SUPERNET_FILE",
    "SUPERNET_META",
]

SUPERNET_FILE = "supernet.safetensors"
SUPERNET_META = "supernet.json"
# Fused projections sliced per part (q|k|v, k|v), so each part keeps its rows at every width.
_FUSED_PARTS = {"qkv": 3, "kv": 2}


class SupernetError(ValueError):
    """A supernet cannot be used as asked (wrong file, an architecture outside its space)."""


def space_from_spec(spec: dict[str, Any]) -> SharedSpace:
    """The `SharedSpace` of a `SharedSpace.spec()` dict (as a supernet file stores it)."""
    stages = tuple(
        StageChoices(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})
        for s in spec["stages"]
    )
    return SharedSpace(
        stages, tuple(spec["stems"]), tuple(spec["pos_encs"]), int(spec["patch_size"])
    )


def shared_key(model: LightViT) -> dict[str, str]:
    """Parameter name in `model` -> the name of the shared tensor it is a slice of: the module
    path with the registry name of each alternative block inserted after it
    (`stages.0.blocks.1.mixer.qkv.weight` -> `stages.0.blocks.1.mixer@mhsa.qkv.weight`)."""
    tags = {
        path: type(module).registry_name
        for path, module in model.named_modules()
        if path and getattr(type(module), "registry_name", None)
    }
    out = {}
    for name, _ in model.named_parameters():
        parts, key = name.split("."), []
        for i, part in enumerate(parts):
            key.append(part)
            tag = tags.get(".".join(parts[: i + 1]))
            if tag is not None:
                key[-1] = f"{part}@{tag}"  # no brackets: timm matches names as patterns
        out[name] = ".".join(key)
    return out


def _slice(full: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """The part of `full` a parameter of `shape` uses: leading entries of each dimension, the
    centre of a convolution's kernel, and per part for fused projections."""
    parts = _FUSED_PARTS.get(name.rsplit(".", 2)[-2] if name.count(".") else "", 1)
    if parts > 1 and shape[0] % parts == 0 and full.shape[0] % parts == 0:
        pieces = full.chunk(parts, dim=0)
        sub = (shape[0] // parts, *shape[1:])
        return torch.cat([_slice(p, sub, "") for p in pieces], dim=0)
    index = []
    for d, (n, big) in enumerate(zip(shape, full.shape, strict=True)):
        start = (big - n) // 2 if full.dim() == 4 and d >= 2 else 0
        index.append(slice(start, start + n))
    return full[tuple(index)]


class SharedWeights(nn.Module):
    """The weights of a one-shot supernet over `space` (see the module docstring).

    In training mode, `forward` runs the architecture `sampler()` returns (a new path for every
    batch: single-path uniform sampling when the sampler is uniform); in eval mode it runs
    `active`. `subnet(arch)` is a stand-alone LightViT with the inherited weights.
    """

    def __init__(
        self,
        space: SharedSpace,
        *,
        num_classes: int,
        in_chans: int = 3,
        img_size: int = 32,
        cache_size: int = 64,
        init: bool = True,
    ) -> None:
        """`init=False` leaves the weights zero: for loading saved ones."""
        super().__init__()
        self.space = space
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.sampler: Callable[[], ArchConfig] | None = None
        # the sandwich rule's paths of one batch: (largest, smallest, the drawn ones)
        self.sandwich: Callable[[], tuple[ArchConfig, ArchConfig, list[ArchConfig]]] | None = None
        self.active = space.largest(num_classes=num_classes, in_chans=in_chans, img_size=img_size)
        self._models: OrderedDict[str, LightViT] = OrderedDict()
        self._cache_size = cache_size
        self.weights = nn.ParameterDict()
        self._names: dict[str, str] = {}  # shared key -> ParameterDict key
        for key, tensor in self._largest_tensors(init).items():
            safe = key.replace(".", ":")
            self.weights[safe] = nn.Parameter(tensor)
            self._names[key] = safe

    # -- building ----------------------------------------------------------------------------
    def _variants(self) -> list[ArchConfig]:
        """Architectures that, together, reach the largest shape of every parameter. A stem's
        weights depend on the stem and the first width; a position encoding's and a mixer's on
        both of them, the widths and the heads. So: every stem (with the first encoding and
        mixers), and every encoding with every mixer (all stages at once where a stage offers
        it, with the first stem); each with every number at its largest, and again with one
        stage at its narrowest width or fewest heads (what a width-changing projection and
        per-head tables need)."""
        stages = self.space.stages
        mixers = list(dict.fromkeys(m for s in stages for m in s.mixers))
        first_pos, first_stem = self.space.pos_encs[0], self.space.stems[0]
        combos = [(stem, first_pos, mixers[0]) for stem in self.space.stems]
        combos += [(first_stem, pos, m) for pos in self.space.pos_encs for m in mixers]
        tweaks: list[dict[str, Any]] = [{}]
        for i, c in enumerate(stages, 1):
            tweaks.append({f"stage{i}.dim": min(c.dims)})
            tweaks.append({f"stage{i}.heads": min(c.heads)})
        out, seen = [], set()
        for stem, pos, mixer in dict.fromkeys(combos):
            base = {**self.space.largest_params(mixer), "stem": stem, "pos_enc": pos}
            for tweak in tweaks:
                try:
                    arch = self.arch_of({**base, **tweak})
                except ValueError:
                    continue
                if arch not in seen:
                    seen.add(arch)
                    out.append(arch)
        return out

    def arch_of(self, params: dict[str, Any]) -> ArchConfig:
        """The architecture of a complete set of the space's parameters (NNI samples, trial
        params)."""
        return self.space.from_params(
            params, num_classes=self.num_classes, in_chans=self.in_chans, img_size=self.img_size
        )

    def _largest_tensors(self, init: bool) -> dict[str, torch.Tensor]:
        """The largest shape of every shared tensor; with `init`, initialised as the blocks
        initialise themselves (the largest instance's values in their region, the rest of a
        matrix truncated normal, of a vector its first value)."""
        best: dict[str, torch.Tensor] = {}
        shape: dict[str, list[int]] = {}
        self._no_decay: set[str] = set()
        for arch in self._variants():
            model = LightViT(arch)
            keys = shared_key(model)
            self._no_decay |= {keys[n] for n in model.no_weight_decay() if n in keys}
            for name, p in model.named_parameters():
                key = keys[name]
                if key not in shape:
                    shape[key] = list(p.shape)
                else:
                    shape[key] = [max(a, b) for a, b in zip(shape[key], p.shape, strict=True)]
                if key not in best or p.numel() > best[key].numel():
                    best[key] = p.detach().clone()
        if not init:
            return {key: torch.zeros(size) for key, size in shape.items()}
        out = {}
        for key, value in best.items():
            full = torch.empty(shape[key])
            if value.dim() >= 2:
                nn.init.trunc_normal_(full, std=0.02)
            else:
                full.fill_(value.flatten()[0].item() if value.numel() else 0.0)
            full[tuple(_region(value.shape, full.shape))] = value
            out[key] = full
        return out

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The shared tensors of position embeddings and bias tables, exempt from weight decay
        as in the blocks themselves (timm's optimiser factory reads this)."""
        return {f"weights.{self._names[key]}" for key in self._no_decay}

    # -- running -----------------------------------------------------------------------------
    def model_of(self, arch: ArchConfig) -> LightViT:
        """The (cached) LightViT that computes `arch`; its own parameters are not used."""
        key = arch.to_json()
        model = self._models.get(key)
        if model is None:
            model = LightViT(arch)
            model.requires_grad_(False)
            self._check_fits(model, arch)
            self._models[key] = model
            if len(self._models) > self._cache_size:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(key)
        return model

    def _check_fits(self, model: LightViT, arch: ArchConfig) -> None:
        for name, key in shared_key(model).items():
            p = model.get_parameter(name)
            full = self._full(key)
            if (
                full is None
                or full.dim() != p.dim()
                or any(n > big for n, big in zip(p.shape, full.shape, strict=True))
            ):
                raise SupernetError(
                    f"{arch.describe()} is not in this supernet's space ({name} has no shared "
                    "weights of its size): search the supernet's own space (space: supernet)"
                )

    def _full(self, key: str) -> torch.Tensor | None:
        safe = self._names.get(key)
        return None if safe is None else self.weights[safe]

    def tensors_for(self, model: LightViT) -> dict[str, torch.Tensor]:
        """`model`'s parameters as slices of the shared weights (gradients flow back)."""
        return {
            name: _slice(self._full(key), tuple(model.get_parameter(name).shape), key)
            for name, key in shared_key(model).items()
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sampler is not None:
            self.active = self.sampler()
        return self.run(self.active, x)

    def run(self, arch: ArchConfig, x: torch.Tensor) -> torch.Tensor:
        """`arch`'s logits on `x`, with the weights it inherits (made active)."""
        self.active = arch
        model = self.model_of(arch)
        model.train(self.training)
        return functional_call(model, self.tensors_for(model), (x,), strict=False)

    def sandwich_loss(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """One batch of the sandwich rule with in-place distillation ("BigNAS: Scaling Up
        Neural Architecture Search with Big Single-Stage Models", arXiv 2003.11142): the
        largest path learns the labels; the smallest and the paths `sandwich()` draws learn the
        largest's predictions (soft cross-entropy on its detached softmax). The sum of their
        losses, whose one backward gives the gradient BigNAS accumulates path by path."""
        largest, smallest, drawn = self.sandwich()
        logits = self.run(largest, x)
        loss = criterion(logits, target)
        taught = logits.detach().softmax(dim=-1)
        for arch in (smallest, *drawn):
            out = self.run(arch, x).log_softmax(dim=-1)
            loss = loss + (-(taught * out).sum(dim=-1)).mean()
        return loss

    @torch.no_grad()
    def inherit(self, model: LightViT) -> LightViT:
        """Copy into `model` (a LightViT of an architecture in the space) the weights it
        inherits; its batch-norm statistics are left as they are. Returns `model`."""
        self.model_of(model.arch)  # checks that the space covers it
        for name, tensor in self.tensors_for(model).items():
            model.get_parameter(name).copy_(tensor)
        return model

    def prepare(
        self,
        model: LightViT,
        data: Dataset,
        *,
        calib_batches: int = 20,
        tune_steps: int = 0,
        tune_lr: float = 3e-4,
        batch_size: int = 64,
        seed: int = 0,
    ) -> int:
        """Make `model` (a LightViT of an architecture in the space) what a candidate is scored
        as: the weights it inherits, its batch norms (if any) recalibrated on `calib_batches`
        training batches, and, with `tune_steps`, adapted alone for that many batches
        (`fine_tune`) and recalibrated again. Leaves it in eval mode; returns the number of
        batch norms recalibrated."""
        self.inherit(model)
        img = model.arch.img_size
        norms = recalibrate_bn(model, data, calib_batches, batch_size, img, seed)
        if tune_steps:
            fine_tune(model, data, tune_steps, lr=tune_lr, seed=seed)
            recalibrate_bn(model, data, calib_batches, batch_size, img, seed)
        model.eval()
        return norms

    def subnet(self, arch: ArchConfig, data: Dataset | None = None, **prepare: Any) -> LightViT:
        """A stand-alone LightViT of `arch` with the weights it inherits (copies), in eval mode;
        with `data`, prepared as a candidate is scored (`prepare`'s keyword arguments)."""
        model = LightViT(arch)
        if data is None:
            return self.inherit(model).eval()
        self.prepare(model, data, **prepare)
        return model

    def score(self, arch: ArchConfig, data: Dataset, **prepare: Any) -> float:
        """Validation accuracy of `arch` prepared as a candidate (`prepare`'s keyword
        arguments: calib_batches, tune_steps, tune_lr, batch_size, seed)."""
        model = self.subnet(arch, data, **prepare)
        return evaluate(model, data, "val", img_size=arch.img_size)

    # -- files -------------------------------------------------------------------------------
    def save(self, folder: str, meta: dict[str, Any]) -> None:
        """Write `supernet.safetensors` and `supernet.json` (space, task, `meta`) atomically."""
        os.makedirs(folder, exist_ok=True)
        tensors = {key: self._full(key).detach().contiguous() for key in self._names}
        info = {
            "format": "lightweight-vit supernet",
            "version": 1,
            "space": self.space.spec(),
            "fingerprint": self.space.fingerprint(),
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "img_size": self.img_size,
            **meta,
        }
        for name, write in (
            (SUPERNET_FILE, lambda p: save_file(tensors, p)),
            (SUPERNET_META, lambda p: open(p, "w").write(json.dumps(info, indent=2))),
        ):
            tmp = os.path.join(folder, f".{name}.tmp")
            write(tmp)
            os.replace(tmp, os.path.join(folder, name))

    @classmethod
    def load(cls, folder: str) -> tuple[SharedWeights, dict[str, Any]]:
        """A supernet saved by `save`, and its `supernet.json`."""
        meta_path = os.path.join(folder, SUPERNET_META)
        if not os.path.isfile(meta_path) or not os.path.isfile(
            os.path.join(folder, SUPERNET_FILE)
        ):
            raise SupernetError(
                f"{folder} holds no trained supernet ({SUPERNET_META} and {SUPERNET_FILE}): "
                "train one with `lvit supernet train CONFIG`"
            )
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            shared = cls(
                space_from_spec(meta["space"]),
                num_classes=meta["num_classes"],
                in_chans=meta["in_chans"],
                img_size=meta["img_size"],
                init=False,
            )
            tensors = load_file(os.path.join(folder, SUPERNET_FILE))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise SupernetError(
                f"{folder} holds a damaged supernet ({reason}): train it again with "
                "`lvit supernet train CONFIG --force`"
            ) from None
        if set(tensors) != set(shared._names):
            raise SupernetError(f"{folder}: the weights do not match the space in {SUPERNET_META}")
        with torch.no_grad():
            for key, tensor in tensors.items():
                if shared._full(key).shape != tensor.shape:
                    raise SupernetError(
                        f"{folder}: {key} has shape {list(tensor.shape)}, the space in "
                        f"{SUPERNET_META} needs {list(shared._full(key).shape)}"
                    )
                shared._full(key).copy_(tensor)
        return shared, meta


def _region(small: torch.Size, big: torch.Size) -> list[slice]:
    """Where a tensor of shape `small` sits in one of shape `big` (as `_slice` reads it)."""
    return [
        slice((b - s) // 2, (b - s) // 2 + s) if len(big) == 4 and d >= 2 else slice(0, s)
        for d, (s, b) in enumerate(zip(small, big, strict=True))
    ]


def fine_tune(
    model: LightViT,
    data: Dataset,
    steps: int,
    *,
    lr: float = 3e-4,
    batch_size: int = 32,
    seed: int = 0,
) -> None:
    """A few steps of AdamW on the subnet alone (a copy: the supernet is not changed), before it
    is scored: inherited weights are a compromise between every subnet that shares them, and a
    short adaptation to the one at hand makes the scores rank subnets more like training from
    scratch does, at a cost per candidate. Leaves the model in eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    done = 0
    batches = shuffled_batches(data, batch_size, seed)
    while done < steps:
        for xb, yb in batches:
            loss = criterion(model(resize(xb, model.arch.img_size)), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done >= steps:
                break
    model.eval()


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: Dataset,
    num_batches: int = 20,
    batch_size: int = 64,
    img_size: int | None = None,
    seed: int = 0,
) -> int:
    """Reset the running statistics of every batch norm in `model` and re-estimate them as the
    plain average over `num_batches` training batches (no augmentation, no gradient); returns
    the number of batch norms (0: nothing done, also when `num_batches` is 0). Leaves the
    model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or num_batches <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i, (xb, _) in enumerate(shuffled_batches(data, batch_size, seed)):
        if i >= num_batches:
            break
        model(resize(xb, img_size))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return len(norms)
