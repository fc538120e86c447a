"""NNI's hub spaces searched by the engine (`space: nni:autoformer`; the `nni` extra).

Pure data like the other spaces: NNI (and with it torch) is imported only when a hub space is
built, through its class path, so that importing the spaces loads neither.
"""

from __future__ import annotations

import warnings
from typing import Any

from search_spaces.arch import ArchConfig
from search_spaces.spaces.base import SearchSpace

__all__ = ["HUB_SPACES", "NNIHubSpace", "hub_space"]


def _nni_version() -> str:
    import importlib

    return importlib.import_module("nni").__version__


HUB_SPACES: dict[str, tuple[str, dict[str, Any]]] = {
    "autoformer": (
        "nni.nas.hub.pytorch.AutoFormer",
        {
            "search_embed_dim": (48, 64, 96),
            "search_mlp_ratio": (3.0, 3.5, 4.0),
            "search_num_heads": (2, 4),
            "search_depth": (3, 4, 5, 6),
            "patch_size": 4,
        },
    ),
}


class NNIHubSpace(SearchSpace):
    """A space of NNI's hub searched by the engine: its labels and options are read from NNI's
    own model space (`simplify()`), Optuna suggests them define-by-run, and a sample becomes an
    `ArchConfig` of our blocks.

    `nni:autoformer` (AutoFormer, "AutoFormer: Searching Transformers for Visual Recognition",
    arXiv 2107.00651): `embed_dim`, `depth`, and per layer `mlp_ratio_i` and `num_head_i`. A
    sample becomes an isotropic model, one stage of one MHSA block per layer at the shared
    width, with a patch stem of NNI's `patch_size` and a learned absolute position embedding.
    What differs from NNI's own network: heads split the width (AutoFormer keeps 64 channels a
    head, which at these widths would make attention wider than the model), tokens are averaged
    instead of read from a class token, and AutoFormer's relative position encoding of keys and
    values is left out (our relative encodings are biases; the absolute one is kept).
    """

    version = 1

    def __init__(self, name: str, args: dict[str, Any] | None = None) -> None:
        import importlib
        import inspect

        if name not in HUB_SPACES:
            raise ValueError(
                f"nni:{name} is not a hub space here; use one of: "
                + ", ".join(f"nni:{n}" for n in HUB_SPACES)
            )
        path, defaults = HUB_SPACES[name]
        self.args = {**defaults, **(args or {})}
        module, _, cls_name = path.rpartition(".")
        try:
            with warnings.catch_warnings():  # NNI 3.0 lists torch classes it does not know
                warnings.simplefilter("ignore", RuntimeWarning)
                cls = getattr(importlib.import_module(module), cls_name)
        except ImportError as e:
            raise ImportError(
                "one-shot search needs the nni extra: pip install -e '.[nni]' "
                f"(NNI 3.0 and pytorch-lightning); {e}"
            ) from None
        init = getattr(cls, "_init_wrapped", cls.__init__)  # ModelSpace wraps __init__
        unknown = set(self.args) - set(inspect.signature(init).parameters) - {"self"}
        if unknown:
            raise ValueError(f"space_args {sorted(unknown)} are not arguments of {path}")
        self.patch_size = int(self.args.get("patch_size", 16))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_space = cls(**{**self.args, "img_size": 32, "num_labels": 2})
        self.options = {label: tuple(m.values) for label, m in model_space.simplify().items()}
        self.name = f"nni:{name}"
        self.description = f"NNI's {cls_name} space ({path}), as LightViT blocks"

    def spec(self) -> dict[str, Any]:
        return {"nni": _nni_version(), "args": {k: _plain(v) for k, v in self.args.items()}}

    def sample(
        self, trial: Any, *, num_classes: int, in_chans: int = 3, img_size: int = 32
    ) -> ArchConfig:
        from search_spaces.arch import StageConfig

        o = self.options
        embed = trial.suggest_categorical("embed_dim", o["embed_dim"])
        depth = trial.suggest_categorical("depth", o["depth"])
        stages = []
        for i in range(depth):
            ratio = trial.suggest_categorical(f"mlp_ratio_{i}", o[f"mlp_ratio_{i}"])
            heads = trial.suggest_categorical(f"num_head_{i}", o[f"num_head_{i}"])
            stages.append(StageConfig(depth=1, dim=embed, heads=heads, mlp_ratio=ratio))
        return ArchConfig(
            stages=tuple(stages),
            stem="patch",
            patch_size=self.patch_size,
            pos_enc="learned",
            img_size=img_size,
            in_chans=in_chans,
            num_classes=num_classes,
        )

    def choices(self, img_size: int = 32) -> dict[str, tuple[Any, ...]]:
        return dict(self.options)

    def size(self, img_size: int = 32) -> int:
        o = self.options
        per_layer = len(o["mlp_ratio_0"]) * len(o["num_head_0"])
        return len(o["embed_dim"]) * sum(per_layer**d for d in o["depth"])


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def hub_space(name: str, args: dict[str, Any] | None = None) -> NNIHubSpace:
    """`nni:NAME` as a search space (`space: nni:autoformer` in a config)."""
    return NNIHubSpace(name.removeprefix("nni:"), args)
