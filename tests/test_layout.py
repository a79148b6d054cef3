"""The layout rules of functions/ (README's Layout): no import circles, the layers, and the one rule for handlers.

Every import counts, including those under TYPE_CHECKING and those inside functions: a circle hidden behind
TYPE_CHECKING is still a circle for a reader.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions import ROUTES

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "functions"

# package prefix -> prefixes it must never import
FORBIDDEN = {
    "functions._core.platform": ("functions._core.model", "functions.runtime", "functions.ops", "functions.adapters"),
    "functions._core.model": ("functions.runtime", "functions.ops", "functions.adapters"),
    "functions.adapters": ("functions.runtime", "functions.ops"),
    "functions.runtime": ("functions.ops",),
}
SYSTEMS = ("mail", "gateway", "dns", "state", "web")  # Ports fields that are external systems


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PKG.rglob("*.py"))}


def imports(name: str, tree: ast.Module, known: set[str]) -> Iterator[str]:
    """Every module of functions/ that ``name`` imports (``from pkg import mod`` counts as importing pkg.mod)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("functions"):
                continue
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            if subs:
                yield from subs
            if len(subs) < len(node.names) and node.module in known:
                yield node.module


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: set(imports(name, tree, known)) - {name} for name, tree in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    g = graph()
    # the package __init__ only imports the handlers; edges back to "functions" itself come from ROUTES users
    assert cycles(g) == []


def test_a_detected_circle_is_reported() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers(layer: str) -> None:
    bad = [
        f"{m} imports {dep}"
        for m, deps in graph().items()
        if m == layer or m.startswith(layer + ".")
        for dep in sorted(deps)
        if dep.startswith(FORBIDDEN[layer])
    ]
    assert bad == []


def test_handlers_are_thin_adapters_over_one_logic_module() -> None:
    """The rule in functions/__init__.py: a handler module turns its event into a call of ONE logic module and the
    result into the outcome and outbound events; it never reads or writes a system itself."""
    g = graph()
    for route in ROUTES.values():
        mod = importlib.import_module(f"functions.{route.name}")
        logic = getattr(mod, "LOGIC", None)
        assert isinstance(logic, str) and logic.startswith("functions._core.model."), route.name
        assert logic in g[mod.__name__], f"{route.name} does not import its logic module {logic}"
        path = PKG / f"{route.name}.py"
        assert len(path.read_text().splitlines()) < 150, f"{path.name} is not thin"
        touched = [
            f"ports.{n.attr}"
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "ports"
            if n.attr in SYSTEMS
        ]
        assert touched == [], f"{route.name} touches systems directly: {touched}"


def test_every_handler_module_is_routed() -> None:
    handlers = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert handlers == {r.name for r in ROUTES.values()}
