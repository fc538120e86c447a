"""Search spaces of lightweight ViTs: building blocks, the LightViT model and named spaces.

Importing this package registers the `lightvit` model and the named presets
(`search_spaces.presets`) with timm, so that `timm.create_model("local-dir:DIR",
pretrained=True)` loads folders written by `lvit export`.
`search_spaces.arch` and `search_spaces.spaces` themselves never import torch.
"""

from search_spaces.arch import SCHEMA_VERSION, ArchConfig, StageConfig
from search_spaces.model import LightViT, lightvit
from search_spaces.presets import PRESETS

__all__ = ["SCHEMA_VERSION", "ArchConfig", "StageConfig", "LightViT", "lightvit", "PRESETS"]
