"""Imports run one way (issue 25; ../shared/style.md, "Layout and the direction of imports"),
read from the source of every module with `ast`: top-level imports, imports inside functions and
`if TYPE_CHECKING:` imports alike, since each is a dependency a reader must know about.

- `dia2/` imports neither `data_prep` nor `finetune`; `data_prep` and `finetune` import `dia2`,
  never each other.
- No module imports an entry point of `dia2` (a command's `main` module): the launch layer is the top.
- Inside `dia2/`, each module sits in a layer (`LAYERS`) and imports only its own group (its
  sub-package, or itself for a top-level module) and lower layers; groups of one layer do not
  import each other. The layers read as the data flow: shared basics; the model and its weights;
  text to tokens; audio and the token grid; the embedded tiny model; generation; serving and
  evaluation; the studio; then the entry points.
- No two modules import each other, directly or around a circle (function-body and
  TYPE_CHECKING imports included: an import hidden in a function still ties two modules).

A new module of `dia2/` must be given a layer here (or be an entry point). Known exceptions are
listed in EXPECTED with their reason; each must still occur (a stale one is reported).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGES = ("dia2", "data_prep", "finetune")
LAYERS = {
    "dia2.errors": 0,  # the one error base: imports nothing of dia2
    "dia2.console": 1, "dia2.device": 1, "dia2.options": 1, "dia2.output_paths": 1, "dia2.processes": 1,
    "dia2.progress": 1,
    "dia2.model": 2,  # config.json, the network, weights and assets, adapters, quantization
    "dia2.text": 3,  # scripts, tokenizer, state machine, alignment
    "dia2.audio": 4, "dia2.data": 4,  # the codec, audio files, recognition | the token grid, corpus schema
    "dia2.tiny": 5,  # the embedded demo model: builds a model, a tokenizer and a Mimi
    "dia2.generation": 6,  # sampling, the frame loop, voices, the Python API
    "dia2.serving": 7, "dia2.evaluation": 7,  # many requests on one model | scores of voices
    "dia2.launch": 8,  # what the commands stand on: model options and loading, shared checks, `run_main`
    "dia2.studio": 9,  # the page: serving, evaluation and jobs together
}
"""Layer of each group of `dia2/` (a sub-package or a top-level module): lower layers never import higher ones."""
ENTRY_POINTS = frozenset({
    "dia2.cli", "dia2.api_server", "dia2.studio.app", "dia2.evaluation.cli", "dia2.demo", "gradio_app",
})
"""The commands of `dia2` (`main` + argument parsing): only `python -m`, a console script or a
launcher file starts them; no module imports one. (`data_prep` and `finetune` have their own
commands, `data_prep.cli`, `finetune.train`, `finetune.push`, outside this rule.)"""
FACADE = "dia2"
"""The package's lazy public names (PEP 562): what users import; no module of the tree imports it."""
LAUNCHERS = {
    ("gradio_app", "dia2.studio.app"): "the studio's launcher under the Dia2 README's name: it calls dia2.studio.app.main",
}
"""Launchers: files that only start an entry point (allowed for good)."""

EXPECTED: dict[tuple[str, str], str] = {}
"""(importer, imported) pairs allowed for now, with the reason; every check skips them."""


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    where: str  # path:line, for the message

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.imported}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    files = [p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))]
    return {_module_name(p): p for p in [*files, REPO_ROOT / "gradio_app.py"]}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of the tree an import names (`a.b.c` may be module a.b's attribute c), or None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


@cache
def imports() -> tuple[Import, ...]:
    """Every import between modules of the tree, one per (importer, imported, line)."""
    modules, found = _modules(), []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = _package_of(module, path).split(".")
                    base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
                names = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
            for name in names:
                target = _resolve(name, modules)
                if target is not None and target != module:
                    found.append(Import(module, target, where))
    return tuple(dict.fromkeys(found))


def _group(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    return None


def _allowed(i: Import) -> bool:
    return (i.importer, i.imported) in EXPECTED or (i.importer, i.imported) in LAUNCHERS


def _report(title: str, broken: list[str]) -> str:
    return f"{title}:\n  " + "\n  ".join(broken)


def test_every_dia2_module_has_a_layer_or_is_an_entry_point():
    unplaced = [m for m in _modules() if m.startswith("dia2.") and m not in ENTRY_POINTS and _group(m) is None]
    assert not unplaced, _report("modules of dia2/ with no layer: add each to LAYERS in tests/unit/test_imports.py "
                                 "(or to ENTRY_POINTS if it is a command)", unplaced)


def test_dia2_imports_neither_data_prep_nor_finetune_and_they_do_not_import_each_other():
    top = {"dia2": ("data_prep", "finetune"), "gradio_app": ("data_prep", "finetune"),
           "data_prep": ("finetune",), "finetune": ("data_prep",)}
    broken = [str(i) for i in imports()
              if i.imported.split(".")[0] in top[i.importer.split(".")[0]] and not _allowed(i)]
    assert not broken, _report("imports against `data_prep, finetune -> dia2`", broken)


def test_no_module_imports_an_entry_point():
    broken = [str(i) for i in imports() if i.imported in ENTRY_POINTS and not _allowed(i)]
    assert not broken, _report("imports of an entry point (move what they share into a library module)", broken)


def test_no_module_imports_the_dia2_facade():
    broken = [str(i) for i in imports() if i.imported == FACADE and i.importer.startswith(PACKAGES)]
    assert not broken, _report("imports of the `dia2` package's lazy names (import from the defining module)", broken)


def test_dia2_modules_import_only_their_own_group_and_lower_layers():
    broken = []
    for i in imports():
        if not i.importer.startswith("dia2.") or i.importer in ENTRY_POINTS or i.imported in ENTRY_POINTS:
            continue
        if not i.imported.startswith("dia2.") or _allowed(i):
            continue
        own, other = _group(i.importer), _group(i.imported)
        if own is None or other is None or own == other:
            continue  # unplaced modules are reported by their own test
        if LAYERS[other] >= LAYERS[own]:
            kind = "a higher layer" if LAYERS[other] > LAYERS[own] else "a sibling of the same layer"
            broken.append(f"{i} ({own}, layer {LAYERS[own]}, imports {other}, {kind}: layer {LAYERS[other]})")
    assert not broken, _report("imports up the layers of dia2/", broken)


def _circles(edges: dict[str, set[str]]) -> list[tuple[set[str], list[str]]]:
    """Each group of modules that import each other around circles (Tarjan's strongly connected
    components), with one circle through it: its modules in order, the first repeated at the end."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = {stack.pop()}
            while node not in component:
                component.add(stack.pop())
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return [(c, _circle_in(sorted(c)[0], edges, c)) for c in components]


def _circle_in(start: str, edges: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest circle from `start` back to it inside `component` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, set()) & component):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is on no circle of {sorted(component)}")


def test_no_import_circles():
    edges: dict[str, set[str]] = {}
    where = {}
    for i in imports():
        if not _allowed(i):
            edges.setdefault(i.importer, set()).add(i.imported)
            where.setdefault((i.importer, i.imported), i.where)
    circles = _circles(edges)
    assert not circles, _report(
        "import circles (one side is often an import inside a function: move what both need into a module below them)",
        [f"{', '.join(sorted(members))} import each other; one circle: " + " -> ".join(c)
         + "".join(f"\n      {where[a, b]}: {a} imports {b}" for a, b in zip(c, c[1:])) for members, c in circles],
    )


def test_the_circle_finder_finds_every_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert _circles({"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "x": {"y"}, "y": {"x", "a"}}) == [
        ({"a", "b", "c"}, ["a", "b", "a"]), ({"x", "y"}, ["x", "y", "x"])]


def test_every_expected_exception_still_occurs():
    found = {(i.importer, i.imported) for i in imports()}
    stale = [f"{a} -> {b} ({reason})" for (a, b), reason in {**EXPECTED, **LAUNCHERS}.items() if (a, b) not in found]
    assert not stale, _report("exceptions in tests/unit/test_imports.py that no longer occur: remove them", stale)
