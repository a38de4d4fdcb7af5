"""Command lines of the flows, built from the flow's own signature as written in its source.

``python -m flows.semi_supervised --help`` must answer at once, but importing a flow module imports
Prefect and the whole library (seconds). So the parser is built from the source text (``ast``, standard
library only) before anything heavy is imported; a run then imports the flow and calls it. One option
per parameter, ``--data-path /x``; values of parameters typed ``str`` are strings, the others are read as
JSON when they parse (numbers, lists, objects, true/false/null), else as strings.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any


def flow_parameters(source: str | Path, function: str) -> tuple[str, list[tuple[str, str, str]]]:
    """(docstring, [(name, annotation, default) as written]) of ``function`` in the file ``source``."""
    tree = ast.parse(Path(source).read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    args = node.args.args  # a ``**run`` of the function is filled by ``parse_flow_arguments``' ``shared``
    defaults = [None] * (len(args) - len(node.args.defaults)) + list(node.args.defaults)
    params = [(a.arg, ast.unparse(a.annotation) if a.annotation else "", ast.unparse(d) if d is not None else "")
              for a, d in zip(args, defaults, strict=True)]
    return ast.get_docstring(node) or "", params


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_flow_arguments(
    source: str | Path, function: str, argv: list[str] | None = None,
    shared: tuple[str | Path, str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """The parameters given on the command line (the flow's defaults hold for the rest); ``--help``
    prints every parameter with its type and default and exits. ``shared`` (source, function, names
    left out): a flow whose ``**run`` takes another flow's parameters lists those too."""
    doc, params = flow_parameters(source, function)
    if shared is not None:
        other, other_function, left_out = shared
        params += [p for p in flow_parameters(other, other_function)[1] if p[0] not in left_out]
    parser = argparse.ArgumentParser(
        prog=f"python -m flows.{Path(source).stem}", description=doc.split("\n\n")[0],
        epilog="Values are JSON where they parse (3, 0.5, true, null, [1, 3], {\"epochs\": 10}), else strings.")
    for name, annotation, default in params:
        text_only = annotation in ("str", "str | None")  # "--label 3" is the string "3"
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=str if text_only else _value,
                            default=argparse.SUPPRESS,
                            metavar="VALUE", help=f"{annotation} (default: {default or 'required'})")
    return vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
