"""The dtype of node ids in kNN graphs, neighbour tables, sequences and links."""

from __future__ import annotations

import numpy as np

INT32_ROWS = 2**31  # int32 holds every id below this, and the -1 of padding


def id_dtype(n: int) -> np.dtype:
    """int32 for the ids of a set of ``n`` rows below 2^31 rows (half the bytes of int64), else int64."""
    return np.dtype(np.int32) if n < INT32_ROWS else np.dtype(np.int64)
