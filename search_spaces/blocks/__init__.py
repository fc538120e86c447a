"""Building blocks of lightweight ViTs, one file per family, each family a registry by name."""

from search_spaces.blocks._registry import lookup, register
from search_spaces.blocks.mixers import MIXERS
from search_spaces.blocks.pos_enc import POS_ENCODINGS
from search_spaces.blocks.stems import STEMS

__all__ = ["MIXERS", "POS_ENCODINGS", "STEMS", "REGISTRIES", "lookup", "register"]

# family name -> registry, for code and tests that walk every block
REGISTRIES = {"stem": STEMS, "pos_enc": POS_ENCODINGS, "mixer": MIXERS}
