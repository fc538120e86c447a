"""Building blocks of lightweight ViTs, one file per family, each family a registry by name."""

from search_spaces.blocks._registry import lookup, register
from search_spaces.blocks.exits import EXITS
from search_spaces.blocks.mixers import MIXERS
from search_spaces.blocks.pos_enc import POS_ENCODINGS
from search_spaces.blocks.stems import STEMS
from search_spaces.blocks.tokens import TOKEN_REDUCERS

__all__ = [
    "EXITS",
    "MIXERS",
    "POS_ENCODINGS",
    "STEMS",
    "TOKEN_REDUCERS",
    "REGISTRIES",
    "lookup",
    "register",
]

# family name -> registry, for code and tests that walk every block
REGISTRIES = {
    "stem": STEMS,
    "pos_enc": POS_ENCODINGS,
    "mixer": MIXERS,
    "token_reducer": TOKEN_REDUCERS,
    "exit": EXITS,
}
