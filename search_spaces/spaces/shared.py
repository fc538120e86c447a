"""`supernet`: a weight-sharing sub-space whose choices a config lists, for one-shot search.

A one-shot supernet holds the largest weights of every block a space can use and gives each
candidate the slices it needs (`nas.supernet`). That works when the candidates differ in the
choices weights can be shared across: per stage its depth, width, heads, MLP ratio, token mixer
and the mixer's kernel or ratio; globally the stem and the position encoding. What changes the
token grid (patch size, input resolution, the number of stages and where they downsample) is
fixed per supernet, and token reduction and exits are left out. `SharedSpace` is that space:
its options come from the `supernet:` section of a config (`StageChoices` per stage), it samples
with the survey's labels (`stem`, `pos_enc`, `stage1.mixer`, `stage1.depth`, ...), and it is
searched by the same engine as every other space: from scratch (`evaluation: train`) or scored
with the supernet's weights (`evaluation: supernet`).

Compatibility rules are kept as in the survey space: a window that does not divide the grid
becomes the largest one that does (or the stage becomes mhsa), an sra ratio is capped at the
grid side, and an attention-site position encoding with no attention stage becomes `none`.
Every head option must divide every width of its stage (checked when the space is made).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from search_spaces.arch import ATTENTION_MIXERS, MIXER_SPECS, STEM_SPECS, ArchConfig, StageConfig
from search_spaces.spaces.base import StageContext, StagedSpace, TrialLike, usable_pos_enc
from search_spaces.typed import to_dict

__all__ = ["StageChoices", "SharedSpace", "SHAREABLE_MIXERS", "SHAREABLE_STEMS"]

# Blocks whose weights can be sliced to any width (every block of the registries can; the stem
# and position encodings too). Token reducers and exits are not offered in a supernet.
SHAREABLE_MIXERS = tuple(MIXER_SPECS)
SHAREABLE_STEMS = tuple(STEM_SPECS)


@dataclass(frozen=True)
class StageChoices:
    """The options of one stage of a supernet; `downsample` halves the grid at its start."""

    depths: tuple[int, ...] = (1, 2)
    dims: tuple[int, ...] = (32, 48, 64)
    heads: tuple[int, ...] = (1, 2)
    mlp_ratios: tuple[float, ...] = (2.0, 4.0)
    mixers: tuple[str, ...] = ("mhsa", "pool", "dwconv")
    downsample: bool = False
    kernel_sizes: tuple[int, ...] = (3, 5)
    sr_ratios: tuple[int, ...] = (2,)
    windows: tuple[int, ...] = (2, 4)

    def __post_init__(self) -> None:
        for name in ("depths", "dims", "heads", "mlp_ratios", "mixers"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"stage {name} must list distinct options, got {list(values)}")
        if min(self.depths) < 1 or min(self.dims) < 1 or min(self.heads) < 1:
            raise ValueError("stage depths, dims and heads must be >= 1")
        unknown = [m for m in self.mixers if m not in SHAREABLE_MIXERS]
        if unknown:
            raise ValueError(
                f"stage mixer {unknown[0]!r} is unknown; use any of {', '.join(SHAREABLE_MIXERS)}"
            )
        if any(m in ATTENTION_MIXERS for m in self.mixers):
            bad = [(d, h) for d in self.dims for h in self.heads if d % h]
            if bad:
                d, h = bad[0]
                raise ValueError(
                    f"stage width {d} is not divisible by heads {h}: every head "
                    "option must divide every width"
                )
        if any(k < 1 or k % 2 == 0 for k in self.kernel_sizes) or min(self.sr_ratios) < 2:
            raise ValueError("kernel_sizes must be odd and sr_ratios >= 2")

    def option_choices(self, mixer: str) -> tuple[int, ...]:
        """The values this stage offers for `mixer`'s option: its own list where it has one
        (`kernel_sizes`, `sr_ratios`, `windows`), else the table's (`MIXER_SPECS`)."""
        spec = MIXER_SPECS[mixer]
        return getattr(self, f"{spec.option}s", None) or spec.choices


class SharedSpace(StagedSpace):
    """The space of a weight-sharing supernet (see the module docstring)."""

    version = 1

    def __init__(
        self,
        stages: tuple[StageChoices, ...],
        stems: tuple[str, ...] = ("patch",),
        pos_encs: tuple[str, ...] = ("learned",),
        patch_size: int = 4,
        name: str = "supernet",
    ) -> None:
        if not stages:
            raise ValueError("a supernet needs at least one stage")
        if stages[0].downsample:
            raise ValueError("stage 1 cannot downsample: the stem sets the first grid")
        unknown = [s for s in stems if s not in SHAREABLE_STEMS]
        if unknown or not stems:
            raise ValueError(f"stems must list any of {', '.join(SHAREABLE_STEMS)}")
        if not pos_encs:
            raise ValueError("pos_encs must list at least one position encoding")
        self.stages = tuple(stages)
        self.stems = tuple(stems)
        self.pos_encs = tuple(pos_encs)
        self.patch_size = patch_size
        self.name = name
        self.description = (
            f"{len(stages)}-stage weight-sharing space: stems {', '.join(stems)}; "
            f"position encodings {', '.join(pos_encs)}"
        )

    def spec(self) -> dict[str, Any]:
        """The space as JSON values (what a supernet file and a study record)."""
        return {
            "stems": list(self.stems),
            "pos_encs": list(self.pos_encs),
            "patch_size": self.patch_size,
            "stages": [to_dict(s) for s in self.stages],
        }

    def fingerprint(self) -> str:
        """A short hash of `spec()`: two spaces with the same options have the same one."""
        text = json.dumps(self.spec(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def sample_globals(self, trial: TrialLike, img_size: int) -> dict[str, Any]:
        if img_size % self.patch_size:
            raise ValueError(
                f"the supernet's patch_size {self.patch_size} does not divide img_size {img_size}"
            )
        return {
            "stem": trial.suggest_categorical("stem", self.stems),
            "patch_size": self.patch_size,
            "img_size": img_size,
            "pos_enc": trial.suggest_categorical("pos_enc", self.pos_encs),
            "num_stages": len(self.stages),
            "downsample": [s.downsample for s in self.stages],
        }

    def sample_stage(self, trial: TrialLike, ctx: StageContext) -> StageConfig:
        i, grid, c = ctx.index, ctx.grid, self.stages[ctx.index - 1]
        mixer = trial.suggest_categorical(f"stage{i}.mixer", c.mixers)
        options: dict[str, Any] = {}
        spec = MIXER_SPECS[mixer]
        value = (
            trial.suggest_categorical(f"stage{i}.{spec.option}", c.option_choices(mixer))
            if spec.option
            else None
        )
        dim = trial.suggest_categorical(f"stage{i}.dim", c.dims)
        if spec.option:  # one that cannot run on this stage makes it mhsa
            fitted = spec.fit_option(value, grid, dim)
            if fitted is None:
                mixer = "mhsa"
            else:
                options[spec.option] = fitted
        heads = (
            trial.suggest_categorical(f"stage{i}.heads", c.heads)
            if mixer in ATTENTION_MIXERS
            else 1
        )
        return StageConfig(
            depth=trial.suggest_categorical(f"stage{i}.depth", c.depths),
            dim=dim,
            heads=heads,
            mlp_ratio=trial.suggest_categorical(f"stage{i}.mlp_ratio", c.mlp_ratios),
            mixer=mixer,
            downsample=ctx.downsample,
            **options,
        )

    def finish(
        self,
        trial: TrialLike,
        g: dict[str, Any],
        stages: tuple[StageConfig, ...],
        num_classes: int,
        in_chans: int,
    ) -> ArchConfig:
        pos_enc = usable_pos_enc(g["pos_enc"], stages)
        return self.arch(g, stages, num_classes, in_chans, pos_enc=pos_enc)

    def largest_params(self, mixer: str | None = None) -> dict[str, Any]:
        """Parameters with every number at its largest, the first stem and position encoding,
        and in every stage `mixer` where it offers it (else its first mixer)."""
        return self._extreme_params(max, mixer)

    def smallest_params(self) -> dict[str, Any]:
        """Parameters with every number at its smallest, the first stem, position encoding and
        mixer of each stage (the sandwich rule's smallest path)."""
        return self._extreme_params(min)

    def _extreme_params(self, pick: Any, mixer: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"stem": self.stems[0], "pos_enc": self.pos_encs[0]}
        for i, c in enumerate(self.stages, 1):
            params.update(
                {
                    f"stage{i}.mixer": mixer if mixer in c.mixers else c.mixers[0],
                    f"stage{i}.depth": pick(c.depths),
                    f"stage{i}.dim": pick(c.dims),
                    f"stage{i}.heads": pick(c.heads),
                    f"stage{i}.mlp_ratio": pick(c.mlp_ratios),
                    **{
                        f"stage{i}.{spec.option}": pick(c.option_choices(m))
                        for m, spec in MIXER_SPECS.items()
                        if spec.option
                    },
                }
            )
        return params

    def smallest(self, *, num_classes: int, in_chans: int = 3, img_size: int = 32) -> ArchConfig:
        """The architecture of `smallest_params()`."""
        return self.from_params(
            self.smallest_params(), num_classes=num_classes, in_chans=in_chans, img_size=img_size
        )

    def largest(self, *, num_classes: int, in_chans: int = 3, img_size: int = 32) -> ArchConfig:
        """The architecture of `largest_params()`."""
        return self.from_params(
            self.largest_params(), num_classes=num_classes, in_chans=in_chans, img_size=img_size
        )

    def from_params(
        self, params: dict[str, Any], *, num_classes: int, in_chans: int = 3, img_size: int = 32
    ) -> ArchConfig:
        """The architecture a complete set of parameters stands for (labels the path does not
        ask are ignored; a value outside its options is an error)."""
        return self.sample(
            _Answers(params), num_classes=num_classes, in_chans=in_chans, img_size=img_size
        )


class _Answers:
    """A trial that answers from a dict (labels the space does not ask are ignored)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        value = self.params[name]
        if value not in tuple(choices):
            raise ValueError(f"{name}={value!r} is not one of the options {list(choices)}")
        return value

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int:
        return int(self.params[name])
