"""`tiny`: the quickstart space, small enough to search on a laptop CPU in minutes.

Stem (patch or early convolutions) and its stride, position encoding (none, learned, CPE),
then one or two stages; the second stage, when present, halves the token grid. Per stage: depth,
width, token mixer (MHSA or pooling), heads (attention only) and MLP ratio.
"""

from __future__ import annotations

from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.spaces.base import SearchSpace, TrialLike

__all__ = ["TinySpace"]


class TinySpace(SearchSpace):
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

    def sample(
        self, trial: TrialLike, *, num_classes: int, in_chans: int = 3, img_size: int = 32
    ) -> ArchConfig:
        stem = trial.suggest_categorical("stem", self.stems)
        patch = trial.suggest_categorical("patch_size", self.patch_sizes)
        pos_enc = trial.suggest_categorical("pos_enc", self.pos_encs)
        num_stages = trial.suggest_int("num_stages", 1, 2)
        stages = []
        for i in range(1, num_stages + 1):
            mixer = trial.suggest_categorical(f"stage{i}.mixer", self.mixers)
            heads = (
                trial.suggest_categorical(f"stage{i}.heads", self.heads) if mixer == "mhsa" else 1
            )
            stages.append(
                StageConfig(
                    depth=trial.suggest_int(f"stage{i}.depth", 1, self.max_depth),
                    dim=trial.suggest_categorical(f"stage{i}.dim", self.dims),
                    heads=heads,
                    mlp_ratio=trial.suggest_categorical(f"stage{i}.mlp_ratio", self.mlp_ratios),
                    mixer=mixer,
                    downsample=i > 1,
                )
            )
        return ArchConfig(
            stages=tuple(stages),
            stem=stem,
            patch_size=patch,
            pos_enc=pos_enc,
            img_size=img_size,
            in_chans=in_chans,
            num_classes=num_classes,
        )
