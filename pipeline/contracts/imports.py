"""``module:Name`` references, imported when first used: how a registry row in a lower layer
names a class of a higher one (a store backend, a source, a stream's live feature provider)
without importing it, so choosing one backend or source never imports the others."""
from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str) -> Any:
    """The object ``path`` (``"package.module:Name"``) names; ValueError for a malformed path."""
    module, sep, name = path.partition(":")
    if not (module and sep and name):
        raise ValueError(f"{path!r} is not a 'module:Name' reference")
    return getattr(importlib.import_module(module), name)
