"""Markdown tables: one writer for the Prefect artifacts, the evaluation report and the flows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


def markdown_table(rows: Sequence[Mapping[str, Any]], digits: int = 4, cell: Callable[[Any], str] | None = None) -> str:
    """A markdown table from a list of dicts (the first row's keys are the columns).

    Cells: ``cell(value)`` when given, else floats rounded to ``digits``, None as ``-``.
    """
    if not rows:
        return "*(empty)*\n"
    columns = list(rows[0])

    def plain(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return "-" if value is None else str(value)

    show = cell or plain
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(show(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
