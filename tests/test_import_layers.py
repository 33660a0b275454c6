"""The import rules of docs/ARCHITECTURE.md, checked on the source (static, via the AST).

Lower layers never import higher ones, so the store and the sources can be used (and tested)
without the models or the UI, the features without the models, the models without the live
layer, and the live scoring step without Kafka. A module's layer is its folder, nothing else:
``pipeline/contracts/``, ``pipeline/store/``, ``pipeline/sources/``, ``models/features/``,
``models/`` (flat), ``models/live/``, ``pipeline/workers/`` (with ``pipeline/cli/``,
``pipeline/flink/`` and ``pipeline/__main__.py``), ``dashboard/``, ``pages/``, ``app.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("pipeline", "models", "dashboard", "pages", "app")

#: Bottom to top.
LAYERS = ("contracts", "store", "sources", "features", "models", "live", "workers", "dashboard",
          "pages", "app")
#: Folder (dotted prefix) -> layer; the longest prefix wins.
FOLDERS = {
    "pipeline": "contracts",  # the package itself (its __init__ only)
    "pipeline.contracts": "contracts",
    "pipeline.store": "store",
    "pipeline.sources": "sources",
    "pipeline.workers": "workers",
    "pipeline.cli": "workers",
    "pipeline.flink": "workers",
    "pipeline.__main__": "workers",
    "models": "models",
    "models.features": "features",
    "models.live": "live",
    "dashboard": "dashboard",
    "pages": "pages",
    "app": "app",
}


def layer(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FOLDERS:
            return FOLDERS[".".join(parts[:n])]
    raise AssertionError(f"{module} is in no folder of docs/ARCHITECTURE.md")


#: layer -> the layers it may import (besides itself)
ALLOWED = {
    "contracts": set(),
    "store": {"contracts"},
    "sources": {"contracts"},
    "features": {"contracts"},
    "models": {"contracts", "store", "sources", "features"},
    "live": {"contracts", "store", "features", "models"},
    "workers": {"contracts", "store", "sources", "features", "models", "live"},
    "dashboard": {"contracts", "store", "sources", "features", "models", "live", "workers"},
    "pages": {"contracts", "store", "sources", "features", "models", "live", "workers", "dashboard"},
    "app": {"dashboard"},
}


def source_files() -> list[Path]:
    files = [p for p in ROOT.glob("*.py") if p.stem == "app"]
    return files + [p for d in OURS[:-1] for p in (ROOT / d).rglob("*.py")]


def module_name(path: Path) -> str:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return module.removesuffix(".__init__")


def imports_of(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = _top_level(tree.body) if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in OURS}


def _top_level(body: list[ast.stmt]):
    """Statements run at import (``if TYPE_CHECKING:`` and ``try:`` blocks included), not the
    imports inside functions."""
    for node in body:
        yield node
        for child in ("body", "orelse", "finalbody"):
            if isinstance(node, (ast.If, ast.Try)) and getattr(node, child, None):
                yield from _top_level(getattr(node, child))


def test_every_layer_is_ordered_and_allowed_only_downwards():
    for name, allowed in ALLOWED.items():
        below = set(LAYERS[:LAYERS.index(name)])
        assert allowed <= below, f"{name} may import a layer above it: {allowed - below}"


def test_every_import_respects_the_layers():
    files = source_files()
    assert len(files) > 30
    known = {module_name(p) for p in files}
    broken = []
    for path in files:
        module = module_name(path)
        mine = layer(module)
        for target in imports_of(path):
            if target not in known and target.rsplit(".", 1)[0] in known:
                target = target.rsplit(".", 1)[0]  # ``from pkg import name``: the package
            theirs = layer(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                broken.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not broken, "\n".join(broken)


def test_no_two_modules_import_each_other_at_import_time():
    """No import circle, not even one behind ``if TYPE_CHECKING`` (the one between
    models/adaptation.py and the former models/live_errors.py is gone: models/retrain_policy.py)."""
    files = source_files()
    modules = {module_name(p): p for p in files}
    graph = {m: {t for t in imports_of(p, top_level_only=True) if t in modules and t != m}
             for m, p in modules.items()}
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_pipeline_has_no_module_outside_a_layer_folder():
    """``pipeline/`` holds only its package files and the layer folders, so where a new module
    goes says its layer (``python -m pipeline`` needs ``__main__.py`` at the top)."""
    flat = sorted(p.name for p in (ROOT / "pipeline").glob("*.py"))
    assert flat == ["__init__.py", "__main__.py"], flat
    folders = {p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").exists()}
    assert folders == {"contracts", "store", "sources", "workers", "cli", "flink"}, folders


def test_the_rules_catch_an_upward_import():
    assert layer("models.live.step") == "live" and layer("models.features.specs") == "features"
    assert layer("pipeline.store.sqlite") == "store" and layer("pipeline.workers.scorer") == "workers"
    assert layer("pipeline.contracts.schema") == "contracts" and layer("models.zoo") == "models"
    assert layer("pipeline.__main__") == "workers" and layer("models.live.series") == "live"
    assert "live" not in ALLOWED["models"] and "models" not in ALLOWED["features"]
    assert "workers" not in ALLOWED["live"]
