"""Which settings of a trainer's config change what training computes.

A config dataclass marks the fields that do not (device, inference batch sizes, how the trained model
is cut into clusters...) with ``after_training(default)``; ``training_settings(config)`` is every
other field. A checkpoint's identity holds those, so a resume across the marked fields is allowed
and across any other is refused; a finished backbone run is reused across them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_MARK = "semiface.after_training"


def after_training(default: Any) -> Any:
    """A dataclass field (with ``default``) that does not change what training computes."""
    return dataclasses.field(default=default, metadata={_MARK: True})


def runtime_field_names(config_class: type) -> frozenset[str]:
    """The fields of ``config_class`` marked with ``after_training``."""
    return frozenset(f.name for f in dataclasses.fields(config_class) if f.metadata.get(_MARK))


def training_settings(config: Any) -> dict[str, Any]:
    """The fields of a config dataclass instance that change what training computes."""
    skip = runtime_field_names(type(config))
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in skip}
