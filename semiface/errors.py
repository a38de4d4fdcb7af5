"""Specific exceptions whose messages name the file (or parameter) and the problem."""

from __future__ import annotations

from pathlib import Path


class SemifaceError(Exception):
    """Base class of every error semiface raises on purpose."""


class DataError(SemifaceError, ValueError):
    """Bad input data: missing file, corrupt image, wrong shape, NaN, empty set...

    >>> DataError("features.npy", "expected 256 columns, found 128")
    DataError('features.npy: expected 256 columns, found 128')
    """

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickled with its two arguments, so it crosses process boundaries (DataLoader workers, process
        pools) as itself instead of breaking the pool on unpickling."""
        return type(self), (self.source, self.problem)


class ConfigError(SemifaceError, ValueError):
    """A bad parameter: unknown name, out-of-range value, incompatible combination."""


def reject_unknown(params: dict, allowed: set[str] | frozenset[str], where: str) -> None:
    """Raise ConfigError naming every key of ``params`` not in ``allowed``."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )
