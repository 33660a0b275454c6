"""Plain JSON from whatever the pipeline and the models compute.

Metrics, model parameters and worker statistics come out of numpy and pandas as numpy scalars,
arrays and non-finite floats, which :func:`json.dumps` either refuses or writes as ``NaN``
(not JSON; Elasticsearch rejects it). :func:`json_safe` is the one conversion used before any
such value is stored, published or printed as JSON.
"""
from __future__ import annotations

import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """A plain-JSON copy of ``obj``.

    numpy scalars and arrays become Python numbers and lists, NaN and ±inf become ``None``,
    tuples and sets become lists, mapping keys become strings, and anything else that JSON has
    no type for becomes its ``str()``.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, bytes)):
        return obj if isinstance(obj, str) else obj.decode("utf-8", "replace")
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, pandas extension scalars
        return json_safe(obj.tolist())
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (int, bool)):
        return obj
    return str(obj)
