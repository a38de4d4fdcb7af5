"""Errors cross process boundaries as themselves (a process pool or a DataLoader worker pickles them)."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from semiface.errors import ConfigError, DataError


def _raise_data_error(path: str) -> None:
    raise DataError(path, "expected 256 columns, found 128")


def test_data_error_round_trips_through_pickle() -> None:
    copy = pickle.loads(pickle.dumps(DataError("features.npy", "has NaN in row 3")))
    assert isinstance(copy, DataError)
    assert (copy.source, copy.problem, str(copy)) == ("features.npy", "has NaN in row 3", "features.npy: has NaN in row 3")


def test_a_worker_process_error_reaches_the_caller_with_its_message() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(DataError, match="knn.npz: expected 256 columns"):
        pool.submit(_raise_data_error, "knn.npz").result()
    assert str(pickle.loads(pickle.dumps(ConfigError("k: must be > 0")))) == "k: must be > 0"
