"""Search spaces of lightweight ViTs: building blocks, the LightViT model and named spaces.

Importing this package registers the `lightvit` model and the named presets
(`search_spaces.presets`) with timm, so that `timm.create_model("local-dir:DIR",
pretrained=True)` loads folders written by `lvit export`: at once when timm is already
imported, otherwise the moment timm's import finishes (`import search_spaces, timm` works in
either order). The package itself stays light: `search_spaces.arch` and
`search_spaces.spaces` import no torch, and `LightViT`, `lightvit` and `PRESETS` are loaded
on first use. `register_with_timm()` registers explicitly: code that imports one of our block
modules before timm (timm's import then finishes while ours is half done, and registering
would need it whole) calls it before `timm.create_model("lightvit", ...)`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Any

from search_spaces.arch import SCHEMA_VERSION, ArchConfig, StageConfig

__all__ = [
    "SCHEMA_VERSION",
    "ArchConfig",
    "StageConfig",
    "LightViT",
    "lightvit",
    "PRESETS",
    "register_with_timm",
]

_LAZY = {
    "LightViT": "search_spaces.model",
    "lightvit": "search_spaces.model",
    "PRESETS": "search_spaces.presets",
}


def register_with_timm() -> None:
    """Register `lightvit` and the presets with timm (imports torch and timm)."""
    importlib.import_module("search_spaces.presets")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search_spaces' has no attribute {name!r}")


def _importing_ours() -> bool:
    """Whether one of our modules is part-way through its import (it imports timm itself and
    registers, or is a block module that the model will import): registering now would
    import the model before the module it needs is complete."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name.startswith("search_spaces.")
    )


class _RegisterAfterTimm(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds timm as the other finders would, and registers our models once timm's own import
    has finished. Removes itself from `sys.meta_path` on first use."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__spec__.loader = module.__loader__ = self._loader
        self._loader.exec_module(module)
        if not _importing_ours():
            register_with_timm()


if "timm" in sys.modules:
    register_with_timm()
elif not any(isinstance(f, _RegisterAfterTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimm())
