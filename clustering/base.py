"""The one interface every clustering method sits behind, and the registry of methods by name.

A method is built by name with keyword parameters (unknown ones are refused), optionally
trained on labelled features (``fit``), then asked for a partition of new features with
``fit_predict(features, knn)``. After ``fit_predict`` a method may expose ``confidence_``
(float32 [N], higher = more sure of the sample's cluster).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from clustering.knn import KnnGraph
from semiface.errors import ConfigError


class Clusterer(ABC):
    """Base class of clustering methods.

    Subclasses set ``name`` and, if they learn from labelled data, ``needs_training = True``
    and override ``fit``.
    """

    name: ClassVar[str] = ""
    needs_training: ClassVar[bool] = False
    is_oracle: ClassVar[bool] = False
    confidence_: np.ndarray | None = None

    def fit(self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None) -> Clusterer:
        """Train on labelled features; methods that learn nothing return self."""
        return self

    def retuned(self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None, **changes: object) -> Clusterer:
        """A copy of a fitted method with settings that do not change what it learned (a partition, a link
        rule...) changed and its threshold tuned again on the labelled data it was fitted on; learned
        link methods override this."""
        raise ConfigError(f"clustering method {self.name!r} cannot be retuned: build it again with the new settings")

    def save(self, path: str | Path) -> Path:
        """Save a trained method (learned methods override this and ``load``)."""
        raise ConfigError(f"clustering method {self.name!r} learns nothing and has nothing to save")

    @classmethod
    def load(cls, path: str | Path) -> Clusterer:
        """Load a method saved by ``save``."""
        raise ConfigError(f"clustering method {cls.name!r} learns nothing and has nothing to load")

    @abstractmethod
    def fit_predict(self, features: np.ndarray, knn: KnnGraph) -> np.ndarray:
        """Return int64 cluster labels [N] (-1 = left unclustered)."""


_REGISTRY: dict[str, Callable[..., Clusterer]] = {}


def register(name: str) -> Callable[[type[Clusterer]], type[Clusterer]]:
    """Class decorator: make a method available by ``name`` to the harness and the flow."""

    def wrap(cls: type[Clusterer]) -> type[Clusterer]:
        if name in _REGISTRY:
            raise ValueError(f"clustering method {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_methods() -> list[str]:
    """Names of every registered method."""
    _load_builtin_methods()
    return sorted(_REGISTRY)


def make_method(name: str, **params: object) -> Clusterer:
    """Build a method by name; unknown names and unknown parameters raise ConfigError.

    ``"facet+infomap"`` is shorthand for ``make_method("facet", partition="infomap")``; a ``partition``
    parameter that says otherwise is refused.
    """
    _load_builtin_methods()
    if "+" in name:
        name, partition = name.split("+", 1)
        if params.get("partition", partition) != partition:
            raise ConfigError(f"clustering method {name}+{partition!s}: the name says partition={partition!r} but the "
                              f"parameters say partition={params['partition']!r}; give one of the two")
        params = {**params, "partition": partition}
    if name not in _REGISTRY:
        raise ConfigError(f"unknown clustering method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(p for p in params if p not in accepted)
    if unknown:
        raise ConfigError(
            f"clustering method {name!r}: unknown parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(accepted))}"
        )
    return factory(**params)


def _load_builtin_methods() -> None:
    """Import the modules whose classes register themselves (lazily, to keep imports light)."""
    import importlib

    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


# Modules that define registered methods; a module not written yet is skipped.
_BUILTIN_MODULES = ("clustering.baselines", "clustering.pair_classifier", "clustering.facet", "clustering.clusformer",
                    "clustering.link_stack")
