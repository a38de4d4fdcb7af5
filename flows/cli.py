"""Command lines of the flows, built from the flow's own signature and docstring as written in its source.

``python -m flows.semi_supervised --help`` must answer at once, but importing a flow module imports
Prefect and the whole library (seconds). So the parser is built from the source text (``ast``, and
griffe for the ``Args:`` descriptions, as Prefect reads them for its form) before anything heavy is
imported; a run then imports the flow and calls it. One option per parameter, typed by its annotation:
``Literal`` names are choices, ``str`` / ``int`` / ``float`` are read as such, ``bool`` is a
``--flag`` / ``--no-flag`` pair, anything else (lists, mappings, the option models) is JSON, and
malformed JSON is refused with the parser's message. A name a module defines at its top level
(``Method = Literal[...]``, ``DEFAULT_SIZES = (...)``) is resolved in that module's source.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCALARS = {"str": str, "int": int, "float": float}


@dataclass(frozen=True)
class Parameter:
    """One flow parameter as the source spells it: its annotation and default resolved to values."""

    name: str
    kind: str  # "str", "int", "float", "bool", "choice", or JSON: "array", "object", "any"
    choices: tuple[str, ...]
    default: Any  # the value; ``REQUIRED`` when there is none
    description: str


REQUIRED = object()


@dataclass(frozen=True)
class Shared:
    """Another flow's parameters that a flow takes through ``**run``, every one optional (not set: the
    value the deployment or the other flow gives it; ``unset`` names other values by parameter)."""

    source: str | Path
    function: str
    left_out: tuple[str, ...]
    unset: dict[str, str]


def unset_text(name: str, default: Any, unset: dict[str, str]) -> str:
    """What a run parameter that a sweep leaves unset takes."""
    return unset.get(name, f"the deployment's value, else {shown(default)}")


def shown(value: Any) -> str:
    """A default as a user types it: JSON for data, the bare text of a string."""
    if value is REQUIRED:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def parameter_descriptions(docstring: str) -> dict[str, str]:
    """The descriptions of a Google-style docstring's ``Args:`` section by parameter name (griffe, as Prefect reads them)."""
    from griffe import Docstring, DocstringSectionKind, Parser, parse

    logging.getLogger("griffe").disabled = True  # it warns that the descriptions name no types
    sections = parse(Docstring(docstring), Parser.google)
    return {p.name: re.sub(r"\s+", " ", p.description).strip()
            for s in sections if s.kind is DocstringSectionKind.parameters for p in s.value}


def flow_parameters(source: str | Path, function: str) -> tuple[str, list[Parameter]]:
    """(docstring, parameters) of ``function`` in the file ``source``, its ``**run`` left out."""
    tree = ast.parse(Path(source).read_text(encoding="utf-8"))
    names = _module_names(tree)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    doc = ast.get_docstring(node) or ""
    described = parameter_descriptions(doc)
    args = [*node.args.args, *node.args.kwonlyargs]
    defaults = ([None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
                + list(node.args.kw_defaults))
    params = []
    for arg, default in zip(args, defaults, strict=True):
        kind, choices = _kind(arg.annotation, names)
        value = REQUIRED if default is None else _value_of(default, names)
        params.append(Parameter(arg.arg, kind, choices, value, described.get(arg.arg, "")))
    return doc, params


def _module_names(tree: ast.Module) -> dict[str, ast.expr]:
    """The top-level ``NAME = value`` assignments of a module, by name."""
    found = {}
    for n in tree.body:
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            found[n.targets[0].id] = n.value
    return found


def _kind(annotation: ast.expr | None, names: dict[str, ast.expr]) -> tuple[str, tuple[str, ...]]:
    """How an annotation is read from the command line: (kind, choices)."""
    if annotation is None:
        return "any", ()
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):  # X | None
        parts = [p for p in (annotation.left, annotation.right) if not _is_none(p)]
        return _kind(parts[0], names) if len(parts) == 1 else ("any", ())
    if isinstance(annotation, ast.Name) and isinstance(names.get(annotation.id), ast.Subscript):
        return _kind(names[annotation.id], names)  # a Literal alias defined in the module
    if isinstance(annotation, ast.Subscript):
        outer = ast.unparse(annotation.value).rsplit(".", 1)[-1]
        if outer == "Literal":
            return "choice", tuple(ast.literal_eval(annotation.slice))
        return {"list": "array", "tuple": "array", "dict": "object", "Mapping": "object"}.get(outer, "any"), ()
    text = ast.unparse(annotation)
    if text in SCALARS or text == "bool":
        return text, ()
    return ("any", ()) if text == "Any" else ("object", ())  # a model (DataOptions, TrainOptions...)


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _value_of(node: ast.expr, names: dict[str, ast.expr]) -> Any:
    """A default as a value: a literal, or a module constant holding one; else its source text."""
    if isinstance(node, ast.Name) and node.id in names:
        node = names[node.id]
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def _json(kind: str) -> Any:
    """An argparse ``type`` reading JSON of the expected shape (``kind``: "object", "array" or "any")."""
    shapes = {"object": dict, "array": list}

    def read(text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
        if kind in shapes and value is not None and not isinstance(value, shapes[kind]):
            raise argparse.ArgumentTypeError(f"expected a JSON {kind}, got {text!r}")
        return value

    read.__name__ = f"JSON {kind}"
    return read


def parse_flow_arguments(
    source: str | Path, function: str, argv: list[str] | None = None, shared: Shared | None = None,
) -> dict[str, Any]:
    """The parameters given on the command line (the flow's defaults hold for the rest); ``--help``
    prints every parameter with its description, its choices and the default it takes, and exits.
    ``shared``: a flow whose ``**run`` takes another flow's parameters lists those too."""
    doc, params = flow_parameters(source, function)
    rows = [(p, shown(p.default)) for p in params]
    if shared is not None:
        other = flow_parameters(shared.source, shared.function)[1]
        rows += [(p, "not set: " + unset_text(p.name, p.default, shared.unset))
                 for p in other if p.name not in shared.left_out]
    prog = f"python -m flows.{Path(source).stem}"
    parser = argparse.ArgumentParser(
        prog=prog, usage=f"{prog} [--PARAMETER VALUE ...] (--help lists them)", description=doc.split("\n\n")[0],
        epilog="Lists and mappings are JSON ('[1, 3]', '{\"epochs\": 10}'); booleans are --flag / --no-flag.")
    for p, default in rows:
        option = "--" + p.name.replace("_", "-")
        help_text = f"{p.description} [default: {default}]".strip().replace("%", "%%")
        if p.kind == "bool":
            parser.add_argument(option, dest=p.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif p.kind == "choice":
            parser.add_argument(option, dest=p.name, choices=p.choices, default=argparse.SUPPRESS, help=help_text)
        elif p.kind in SCALARS:
            parser.add_argument(option, dest=p.name, type=SCALARS[p.kind], default=argparse.SUPPRESS,
                                metavar=p.kind.upper(), help=help_text)
        else:
            parser.add_argument(option, dest=p.name, type=_json(p.kind), default=argparse.SUPPRESS,
                                metavar="JSON", help=help_text)
    return vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
