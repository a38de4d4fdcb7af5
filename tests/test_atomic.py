"""Atomic writes leave either the old file or the new one, with ordinary permissions."""

from __future__ import annotations

import os

import numpy as np
import pytest

from semiface.atomic import atomic_open, save_npy


def test_output_gets_umask_permissions_not_owner_only(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_npy(tmp_path / "a.npy", np.arange(3))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "kept.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as handle:
        handle.write("new, half written")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]
