"""Building blocks of lightweight ViTs, one file per family, each family a registry by name."""

from search_spaces.blocks._registry import citations, lookup, register
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
    "citations",
    "lookup",
    "register",
    "papers_of",
]

# family name -> registry, for code and tests that walk every block
REGISTRIES = {
    "stem": STEMS,
    "pos_enc": POS_ENCODINGS,
    "mixer": MIXERS,
    "token_reducer": TOKEN_REDUCERS,
    "exit": EXITS,
}


def papers_of(arch: object) -> list[tuple[str, str, str]]:
    """(block, paper title, arXiv id) for every block an ArchConfig uses, each paper once."""
    used = [("stem", STEMS[arch.stem]), ("position encoding", POS_ENCODINGS[arch.pos_enc])]
    for stage in arch.stages:
        used.append(("mixer", MIXERS[stage.mixer]))
        if stage.merge_r:
            used.append(("token merging", TOKEN_REDUCERS["tome"]))
        if stage.keep_rate < 1:
            used.append(("token pruning", TOKEN_REDUCERS["evit"]))
    if arch.exits:
        used.append(("early exits", EXITS["linear"]))
    seen: set[str] = set()
    out = []
    for kind, cls in used:
        for title, arxiv in citations(cls):
            if arxiv not in seen:
                seen.add(arxiv)
                out.append((f"{kind} `{cls.registry_name}`", title, arxiv))
    return out
