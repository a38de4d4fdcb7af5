"""The code a stage runs: the modules of this repository its entry modules import, transitively, and a
fingerprint of them that ignores comments, docstrings, layout and how Prefect runs the task.

An entry module (a stage's task module, or a module it reaches by a name built at run time) is read with
``ast``; every ``import x.y`` / ``from x import y`` anywhere in it (inside functions too) that names a
module of this repository is followed, and so is every string constant that names one (the method
registry's module list, a lazy export table, ``python -m backbone.train``). Importing ``a.b.c`` runs the
packages ``a`` and ``a.b`` too, so they are part of it. A task module's imports of the cache, artifact and
report helpers (``PRESENTATION``) are not followed: they decide whether a stage runs and what the
dashboard shows, not what it computes. Library modules that use them (the evaluation report writes its
markdown with ``semiface.markdown``) keep them.

Python does not reload a module that changed while a process runs, so the closure and fingerprint of a
set of entries are computed once per process and kept.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Imported by task modules to run the cache, publish artifacts and draw the report's plots and tables.
PRESENTATION = frozenset({"tasks.common", "tasks.stage_cache", "tasks.stage_code", "tasks.plots", "semiface.markdown"})
TASK_LAYER = "tasks"
# Decorators that say how Prefect runs a function (retries, timeouts, names), not what it computes.
ORCHESTRATION_DECORATORS = frozenset({"task", "flow"})
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# CPython 3.11 keeps one AST-construction recursion counter per interpreter, shared by its threads, so two
# threads parsing at once can fail with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905); the stages of two sweep runs side by side (max_parallel > 1) fingerprint their
# code in threads. One parse at a time; a module read again unchanged is not parsed again.
_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1024)
def _parse(source: str) -> ast.Module:
    with _PARSE_LOCK:
        return ast.parse(source)


@functools.lru_cache(maxsize=1024)
def code_text(source: str) -> str:
    """What a module computes, as text: its syntax tree (no comments, no layout) without docstrings and
    without ``@task(...)`` / ``@flow(...)`` decorators."""
    with _PARSE_LOCK:  # a tree of its own (not _parse's shared one): it is edited below
        tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            node.decorator_list = [d for d in node.decorator_list if not _orchestration(d)]
    return ast.dump(tree, include_attributes=False)


def module_file(name: str, root: Path = REPO_ROOT) -> Path | None:
    """The source of module ``name`` in the repository at ``root`` (a package's ``__init__.py``), or None."""
    if not _MODULE_NAME.fullmatch(name):
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_name(base.name + ".py")):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=256)
def stage_modules(entries: tuple[str, ...], root: Path = REPO_ROOT) -> tuple[str, ...]:
    """The sorted names of the repository modules that running ``entries`` imports (see the module docstring).

    ValueError when an entry is not a module of the repository.
    """
    missing = [name for name in entries if module_file(name, root) is None]
    if missing:
        raise ValueError(f"stage code: {missing} are not modules of the repository at {root}")
    found: set[str] = set()
    pending = list(entries)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        path = module_file(name, root)
        assert path is not None
        skipped = PRESENTATION if name.split(".")[0] == TASK_LAYER else frozenset()
        for imported in _imports(name, path.name == "__init__.py", path.read_text(encoding="utf-8")):
            for module in _with_parents(imported):
                if module in skipped:
                    break
                if module not in found and module_file(module, root) is not None:
                    pending.append(module)
    return tuple(sorted(found))


@functools.lru_cache(maxsize=256)
def code_fingerprint(entries: tuple[str, ...], root: Path = REPO_ROOT) -> str:
    """sha256 over the (repository-relative path, ``code_text``) of every module of ``stage_modules``."""
    digest = hashlib.sha256()
    for name in stage_modules(tuple(sorted(set(entries))), root):
        path = module_file(name, root)
        assert path is not None
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(code_text(path.read_text(encoding="utf-8")).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1024)
def _imports(module: str, is_package: bool, source: str) -> tuple[str, ...]:
    """Every module name ``source`` imports or names in a string constant (absolute; repository or not)."""
    names: list[str] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(_parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value):
            names.append(node.value)
    return tuple(dict.fromkeys(names))


def _absolute(module: str | None, level: int, package: str) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - level + 1])
    return f"{base}.{module}" if module else base


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _orchestration(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    return name in ORCHESTRATION_DECORATORS
