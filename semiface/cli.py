"""Command-line settings as ``KEY=VALUE`` (one parser for every CLI that takes config fields)."""

from __future__ import annotations

import json
from typing import Any

from semiface.errors import ConfigError


def parse_assignment(text: str, option: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, true/false/null, lists,
    objects), else as a string; ConfigError naming ``option`` when there is no ``=``."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{option} {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw
