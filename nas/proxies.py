"""Zero-cost proxies: scores computed on one batch of an untrained candidate, which some NAS
work uses to rank architectures before (or instead of) training them.

Each proxy runs on its own copy of the model, so the candidate that is then trained is untouched.
Scores are "higher is better"; a proxy that cannot be computed (overflow, a model without the
layers it reads) gives None. They are recorded per trial; `experiments/bench_proxies.py`
measures how well each ranks trained accuracy on our spaces.

- synflow: Tanaka et al., "Pruning neural networks without any data by iteratively conserving
  synaptic flow", arXiv 2006.05467; as a NAS proxy in Abdelfattah et al., "Zero-Cost Proxies for
  Lightweight NAS", arXiv 2101.08134. Absolute weights, an all-ones input, no data:
  sum |theta * dR/dtheta| with R the sum of the outputs, in float64.
- naswot: Mellor et al., "Neural Architecture Search without Training", arXiv 2006.04647. The
  binary codes of which units are active (input > 0 at every ReLU/GELU/SiLU/Hardswish) for each
  image; score = log |K| with K[i, j] the number of units on which images i and j agree.
- grad_norm: Abdelfattah et al., arXiv 2101.08134: sum over weight tensors of the L2 norm of
  the cross-entropy gradient.
- snip: Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
  arXiv 1810.02340: sum |theta * dL/dtheta| over weights.

The weight-based proxies read the weights of the Linear and Conv layers, as the reference
implementations do.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PROXIES", "compute_proxies"]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.ReLU6)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, _WEIGHTED)]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad()
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64)
    model(ones).sum().backward()
    score = sum((w * w.grad).abs().sum().item() for w in _weights(model) if w.grad is not None)
    return _finite(float(score))


def naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    model = copy.deepcopy(model).eval()
    codes: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        codes.append((inputs[0] > 0).flatten(1).float())

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, _ACTIVATIONS)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        return None
    c = torch.cat(codes, dim=1).double()
    kernel = c @ c.T + (1 - c) @ (1 - c).T
    sign, logdet = torch.linalg.slogdet(kernel)
    return _finite(float(logdet)) if sign > 0 else None


def _loss_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    model = copy.deepcopy(model).train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return model


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    model = _loss_gradients(model, x, y)
    return _finite(float(sum(w.grad.norm().item() for w in _weights(model) if w.grad is not None)))


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    model = _loss_gradients(model, x, y)
    return _finite(
        float(sum((w * w.grad).abs().sum().item() for w in _weights(model) if w.grad is not None))
    )


PROXIES: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float | None]] = {
    "synflow": synflow,
    "naswot": naswot,
    "grad_norm": grad_norm,
    "snip": snip,
}


def compute_proxies(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    names: tuple[str, ...],
    seed: int = 0,
) -> dict[str, float | None | dict[str, float]]:
    """Every proxy in `names` for `model` on the batch (`x`, `y`), on the CPU, with the seconds
    each took under `seconds`."""
    out: dict[str, float | None | dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for name in names:
        torch.manual_seed(seed)
        start = time.perf_counter()
        try:
            out[name] = PROXIES[name](model, x, y)
        except (RuntimeError, torch.linalg.LinAlgError):  # overflow, singular kernel, ...
            out[name] = None
        seconds[name] = round(time.perf_counter() - start, 4)
    out["seconds"] = seconds
    out["batch_size"] = int(len(y))
    return out
