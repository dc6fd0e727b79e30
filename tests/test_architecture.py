"""The import graph: no import cycle among the modules of fastankh and tasks (their
module-level imports, parsed), every module imports in a fresh interpreter,
and imports go only downwards between layers:

- fastankh never imports tasks;
- tasks/task imports no other tasks subpackage;
- tasks/data imports only tasks/task;
- tasks/infer never imports tasks/train;
- no two modules of fastankh and tasks share a name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SUBPACKAGES = ("task", "data", "train", "infer", "hub", "accuracy")
# subpackage -> the tasks subpackages it may import (besides its own and tasks.cli)
ALLOWED = {
    "task": set(),
    "data": {"task"},
    "train": {"task", "data"},
    "infer": {"task"},
    "hub": {"task", "train"},
    "accuracy": {"task", "data", "train"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for package in ("fastankh", "tasks") for p in (REPO / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved), at any depth of the file."""
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def module_level_imports(path: Path) -> set[str]:
    """The fastankh/tasks modules a file imports when it is imported (not those imported inside functions)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {n for n in names if n in set(MODULES)}


def test_no_import_cycle():
    graph = {
        name: module_level_imports(REPO / (name.replace(".", "/") + ".py"))
        for name in MODULES
        if (REPO / (name.replace(".", "/") + ".py")).is_file()
    }
    graph |= {
        name: module_level_imports(REPO / name.replace(".", "/") / "__init__.py")
        for name in MODULES
        if name not in graph
    }
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph.get(name, ())):
            if nxt == name:
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_every_module_imports_in_a_fresh_interpreter():
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as err:\n"
        "        print(f'{name}: {err}')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *MODULES], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.parametrize("path", sorted((REPO / "fastankh").rglob("*.py")), ids=lambda p: p.name)
def test_fastankh_never_imports_tasks(path):
    assert not {n for n in imported(path) if n == "tasks" or n.startswith("tasks.")}


@pytest.mark.parametrize("path", sorted((REPO / "tasks").rglob("*.py")), ids=lambda p: module_name(p))
def test_tasks_imports_go_downwards(path):
    parts = module_name(path).split(".")
    if len(parts) < 2 or parts[1] not in SUBPACKAGES:
        return
    own = parts[1]
    used = {n.split(".")[1] for n in imported(path) if n.startswith("tasks.") and n.split(".")[1] in SUBPACKAGES}
    assert used - {own} <= ALLOWED[own], f"{module_name(path)} imports tasks.{sorted(used - {own} - ALLOWED[own])}"


def test_no_two_modules_share_a_name():
    leaves = [m.rsplit(".", 1)[-1] for m in MODULES if (REPO / (m.replace(".", "/") + ".py")).is_file()]
    repeated = sorted({n for n in leaves if leaves.count(n) > 1})
    assert not repeated, repeated
