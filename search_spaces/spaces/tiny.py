"""`tiny`: the quickstart space, small enough to search on a laptop CPU in minutes.

Stem (patch or early convolutions) and its stride, position encoding (none, learned, CPE),
then one or two stages; the second stage, when present, halves the token grid. Per stage: depth,
width, token mixer (MHSA or pooling), heads (attention only) and MLP ratio.
"""

from __future__ import annotations

from typing import Any

from search_spaces.arch import StageConfig
from search_spaces.spaces.base import StageContext, StagedSpace, TrialLike

__all__ = ["TinySpace"]


class TinySpace(StagedSpace):
    name = "tiny"
    version = 1
    description = "1-2 stages of MHSA or pooling blocks; patch or conv stem; none/learned/CPE"

    stems = ("patch", "conv")
    patch_sizes = (2, 4)
    pos_encs = ("none", "learned", "cpe")
    mixers = ("mhsa", "pool")
    dims = (32, 48, 64, 96)
    heads = (1, 2, 4)
    mlp_ratios = (2.0, 3.0, 4.0)
    max_depth = 3

    def sample_globals(self, trial: TrialLike, img_size: int) -> dict[str, Any]:
        g = {
            "stem": trial.suggest_categorical("stem", self.stems),
            "patch_size": trial.suggest_categorical("patch_size", self.patch_sizes),
            "pos_enc": trial.suggest_categorical("pos_enc", self.pos_encs),
            "img_size": img_size,
        }
        num_stages = trial.suggest_int("num_stages", 1, 2)
        g.update(num_stages=num_stages, downsample=[i > 0 for i in range(num_stages)])
        return g

    def sample_stage(self, trial: TrialLike, ctx: StageContext) -> StageConfig:
        i = ctx.index
        mixer = trial.suggest_categorical(f"stage{i}.mixer", self.mixers)
        heads = trial.suggest_categorical(f"stage{i}.heads", self.heads) if mixer == "mhsa" else 1
        return StageConfig(
            depth=trial.suggest_int(f"stage{i}.depth", 1, self.max_depth),
            dim=trial.suggest_categorical(f"stage{i}.dim", self.dims),
            heads=heads,
            mlp_ratio=trial.suggest_categorical(f"stage{i}.mlp_ratio", self.mlp_ratios),
            mixer=mixer,
            downsample=ctx.downsample,
        )
