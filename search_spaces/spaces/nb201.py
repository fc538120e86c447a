"""`nb201`: the cell space of NAS-Bench-201, searched through a table, never trained here.

From "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search" (Dong and
Yang, ICLR 2020, arXiv 2001.00326). A cell is a directed acyclic graph of 4 nodes; each of its
6 edges (j <- i, i < j) carries one of 5 operations, so the space has 5**6 = 15,625 cells. The
network stacks the cell (3 stages of 5 cells, channels 16/32/64, residual blocks between the
stages); every cell was trained on CIFAR-10, CIFAR-100 and ImageNet16-120 with a fixed recipe,
and its accuracies, parameters and latency are a table (`nas.tables`). `evaluation: table`
looks a sampled cell up in that table instead of training it.

A cell is written as the paper's string, node by node, each edge as `op~i`:
`|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|` (ResNet's
cell). Its Optuna labels are the edges (`edge1<-0`, ..., `edge3<-2`), in the string's order.

A cell space, not an ArchConfig space: `sample` returns the cell string (the table's key), with
the same signature as `SearchSpace.sample` so that the engine's sampler checks run on it.
"""

from __future__ import annotations

from typing import Any

from search_spaces.spaces.base import TrialLike

__all__ = ["EDGES", "NB201Space", "OPS", "cell_string", "parse_cell"]

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# (to node, from node), in the order the cell string lists them
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


def edge_label(edge: tuple[int, int]) -> str:
    return f"edge{edge[0]}<-{edge[1]}"


def cell_string(ops: tuple[str, ...]) -> str:
    """The paper's string of a cell whose edges carry `ops` (in `EDGES` order)."""
    if len(ops) != len(EDGES) or any(op not in OPS for op in ops):
        raise ValueError(f"a cell has {len(EDGES)} edges, each one of {', '.join(OPS)}: {ops}")
    edges = list(zip(ops, EDGES, strict=True))
    nodes = ("|".join(f"{op}~{i}" for op, (j, i) in edges if j == node) for node in (1, 2, 3))
    return "+".join(f"|{n}|" for n in nodes)


def parse_cell(cell: str) -> tuple[str, ...]:
    """The operations on a cell string's edges (in `EDGES` order); ValueError when it is not
    one of the space's 15,625 cells."""
    ops = []
    try:
        for node, part in enumerate(cell.split("+"), start=1):
            edges = [e for e in part.strip("|").split("|")]
            for i, edge in enumerate(edges):
                op, source = edge.split("~")
                if int(source) != i or op not in OPS:
                    raise ValueError
                ops.append(op)
            if len(edges) != node:
                raise ValueError
    except ValueError:
        raise ValueError(
            f"not a NAS-Bench-201 cell: {cell!r} (e.g. "
            f"'|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|')"
        ) from None
    if len(ops) != len(EDGES):
        raise ValueError(f"not a NAS-Bench-201 cell: {cell!r}")
    return tuple(ops)


class NB201Space:
    """NAS-Bench-201's 15,625 cells; `sample` returns a cell string."""

    name = "nb201"
    version = 1
    description = "NAS-Bench-201's cell: 6 edges, 5 operations each (looked up in its table)"
    labels = tuple(edge_label(e) for e in EDGES)

    def sample(
        self, trial: TrialLike, *, num_classes: int = 10, in_chans: int = 3, img_size: int = 32
    ) -> str:
        """One cell (the task arguments are the table's, fixed: they are ignored)."""
        return cell_string(tuple(trial.suggest_categorical(label, OPS) for label in self.labels))

    def params_of(self, cell: str) -> dict[str, str]:
        """The trial parameters that sample `cell` (for `enqueue_trial`)."""
        return dict(zip(self.labels, parse_cell(cell), strict=True))

    def choices(self, img_size: int = 32) -> dict[str, tuple[Any, ...]]:
        return {label: OPS for label in self.labels}

    def size(self, img_size: int = 32) -> int:
        return len(OPS) ** len(EDGES)
