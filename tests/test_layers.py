"""The package's floor plan: layers imported one way, through their faces, no circles, no reach-ins.

Read from the source with ``ast``, every import counted (module level, in functions, under
``TYPE_CHECKING``). The layers, from the ground up (docs/architecture.md draws them):

    errors  <  _support  <  _encoding  <  _core  <  _io  <  _torch
            <  callstate, loop, lightning, distributed  <  _adapters, _cli
            <  transformers, accelerate, __main__
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import callstate

PACKAGE = Path(callstate.__file__).parent
NAME = "callstate"

# The floor each room stands on: a module may import only from its own floor or below.
FLOORS = {
    "errors": 0,
    "_support": 1,
    "_encoding": 2,
    "_tensors": 2,  # the path version 1 files name for their tensors: an alias of _encoding's
    "_core": 3,
    "_io": 4,
    "_torch": 5,  # torch checkpoints: imported only by the front ends that read or write them
    "_kit": 5,  # the resume kit (RNGState): numpy and torch imported inside its functions only
    "": 6,  # callstate/__init__.py: the flat namespace
    "_checkpoints": 6,  # read/inspect/load of every checkpoint kind, over _io and _torch
    "loop": 6,
    "lightning": 6,
    "distributed": 6,
    "_adapters": 7,
    "_cli": 7,
    "transformers": 8,
    "accelerate": 8,
    "orbax": 8,
    "keras": 8,
    "__main__": 8,
}
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join((NAME, *parts))] = path
    return out


MODULES = _modules()


def _room(module: str) -> str:
    """The room of a module: its subpackage, or its own name at the top ("" for the package)."""
    parts = module.split(".")[1:]
    return parts[0] if parts else ""


def _imports(module: str, path: Path) -> Iterator[tuple[ast.AST, str, list[str], bool]]:
    """Yield (node, imported module, names, in a function) for every import of a callstate module."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    functions: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.update(id(child) for child in ast.walk(node) if child is not node)
    for node in ast.walk(tree):
        local = id(node) in functions
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target != NAME and not target.startswith(NAME + "."):
                continue
            names = [a.name for a in node.names]
            # from . import x, where x is a module: the import is of that module
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if submodules:
                for sub in submodules:
                    yield node, sub, [], local
                rest = [n for n in names if f"{target}.{n}" not in MODULES]
                if rest:
                    yield node, target, rest, local
            else:
                yield node, target, names, local
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == NAME or alias.name.startswith(NAME + "."):
                    yield node, alias.name, [], local


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _, target, _, _ in _imports(module, path):
            if target in MODULES and target != module:
                edges[module].add(target)
    return edges


def test_no_import_circle() -> None:
    """No module imports itself through others (every import counted, local and TYPE_CHECKING ones too)."""
    edges = _edges()
    # A package's face imports its own modules; those importing the face back is the circle we look for.
    circles = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert circles == []


def test_every_room_has_a_floor() -> None:
    """Every module belongs to a room this test knows the floor of (a new room must be placed)."""
    assert sorted({_room(m) for m in MODULES} - set(FLOORS)) == []


def test_imports_go_down_and_through_faces() -> None:
    """A module imports only from its floor or below, and another room only through its face (__init__)."""
    wrong = []
    for module, path in MODULES.items():
        room = _room(module)
        for node, target, _, _ in _imports(module, path):
            other = _room(target)
            line = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target}"
            if FLOORS[other] > FLOORS[room]:
                wrong.append(f"{line}: up from floor {FLOORS[room]} to {FLOORS[other]}")
            elif other != room and target.count(".") > 1:
                wrong.append(f"{line}: around the face of {NAME}.{other}")
    assert wrong == []


def test_no_local_import_that_defers_nothing() -> None:
    """A function-level import of a callstate module is only of one that `import callstate` does not load."""
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {NAME}; print('\\n'.join(m for m in sys.modules if m.startswith('{NAME}')))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    wrong = []
    for module, path in MODULES.items():
        for node, target, _, local in _imports(module, path):
            if local and target in loaded:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target} in a function")
    assert wrong == []


def _private_members() -> dict[str, set[str]]:
    """The private attributes and methods each callstate class defines, by class name."""
    out: dict[str, set[str]] = {}
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            names = out.setdefault(node.name, set())
            for child in ast.walk(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(child.name):
                    names.add(child.name)
                elif isinstance(child, ast.Attribute) and isinstance(child.ctx, ast.Store) and _private(child.attr):
                    names.add(child.attr)
                elif isinstance(child, ast.AnnAssign) and isinstance(child.target, ast.Name) and _private(child.target.id):
                    names.add(child.target.id)
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_reach_in_to_another_objects_private_attributes() -> None:
    """Only an object itself (self, cls, super()) touches the private attributes callstate's classes define."""
    members = _private_members()
    ours = set().union(*members.values())
    wrong = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        # A class's own module may name its private methods through the class (a dispatch table).
        here = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)] + [tree]:
            own = members.get(cls.name, set()) if isinstance(cls, ast.ClassDef) else set()
            for node in ast.walk(cls):
                if not (isinstance(node, ast.Attribute) and node.attr in ours):
                    continue
                subject = node.value
                if isinstance(subject, ast.Name) and subject.id in ("self", "cls"):
                    continue
                if isinstance(subject, ast.Name) and subject.id in here and node.attr in members[subject.id]:
                    continue
                if isinstance(subject, ast.Call) and isinstance(subject.func, ast.Name) and subject.func.id == "super":
                    continue
                if node.attr in own:
                    continue  # another instance of the same class (an __eq__, a copy)
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: .{node.attr} of {ast.unparse(subject)}")
    assert sorted(set(wrong)) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_800_lines(module: str) -> None:
    """A module holds one concept: none is over 800 lines."""
    assert len(MODULES[module].read_text().splitlines()) <= MAX_LINES


def test_each_face_names_what_it_exports() -> None:
    """Each subpackage's __init__ is a face: it only re-exports (explicitly, with __all__) and defines nothing."""
    for module, path in MODULES.items():
        if path.name != "__init__.py" or module == NAME:
            continue
        tree = ast.parse(path.read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        kinds = {type(n).__name__ for n in body}
        assert kinds <= {"ImportFrom", "Assign"}, (module, kinds)
        exported = {a.asname or a.name for n in body if isinstance(n, ast.ImportFrom) for a in n.names}
        declared = next(n for n in body if isinstance(n, ast.Assign))
        assert isinstance(declared.value, ast.List)
        assert sorted(ast.literal_eval(declared.value)) == sorted(exported), module
