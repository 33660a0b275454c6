"""The import rules of docs/ARCHITECTURE.md, checked on the source (static, via the AST).

Lower layers never import higher ones, so the store and the sources can be used (and tested)
without the models or the UI, and the models without the stream workers or the UI.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("pipeline", "models", "dashboard", "pages", "app")
CORE = {"pipeline.schema", "pipeline.news", "pipeline.fundamentals", "pipeline.config",
        "pipeline.backoff", "pipeline.jsonsafe", "pipeline.csv_export"}


def layer(module: str) -> str:
    if module in CORE or module == "pipeline":
        return "core"
    parts = module.split(".")
    if parts[0] == "pipeline" and parts[1] in ("store", "sources"):
        return f"pipeline.{parts[1]}"
    if module == "pipeline.scorer":
        return "scorer"
    return "workers" if parts[0] == "pipeline" else parts[0]


#: layer -> the layers it may import (besides itself)
ALLOWED = {
    "core": set(),
    "pipeline.store": {"core"},
    "pipeline.sources": {"core"},
    "workers": {"core", "pipeline.store", "pipeline.sources", "scorer"},
    "models": {"core", "pipeline.store", "pipeline.sources"},
    "scorer": {"core", "pipeline.store", "pipeline.sources", "workers", "models"},
    "dashboard": {"core", "pipeline.store", "pipeline.sources", "workers", "scorer", "models"},
    "pages": {"core", "pipeline.store", "pipeline.sources", "workers", "scorer", "models",
              "dashboard"},
    "app": {"dashboard"},
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in OURS}


def test_every_import_respects_the_layers():
    files = [p for p in ROOT.glob("*.py") if p.stem == "app"]
    files += [p for d in OURS[:-1] for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 30
    broken = []
    for path in files:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mine = layer(module)
        for target in imports_of(path):
            theirs = layer(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                broken.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not broken, "\n".join(broken)
