"""The manifest contract: validation of bad input, canonical dtypes, parquet round trip, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from semiface.errors import DataError
from semiface.manifest import read_manifest, validate_manifest, write_manifest


def _frame(**overrides) -> pd.DataFrame:
    columns = {
        "path": ["a/0.png", "a/1.png", "b/0.png", "c/0.png"],
        "label": [0, 0, 1, -1],
        "identity": ["a", "a", "b", "c"],
        "split": ["labelled", "labelled", "labelled", "unlabelled"],
    }
    columns.update(overrides)
    return pd.DataFrame(columns)


def test_valid_frame_gets_canonical_dtypes_and_a_fresh_index():
    frame = _frame(label=[0.0, 0.0, 1.0, -1.0], identity=[7, 7, 8, 9]).set_axis([10, 11, 12, 13])
    out = validate_manifest(frame, "m.parquet")
    assert out["label"].dtype == np.int64 and out["label"].tolist() == [0, 0, 1, -1]
    assert out["identity"].tolist() == ["7", "7", "8", "9"]
    assert out.index.tolist() == [0, 1, 2, 3]
    assert frame["label"].dtype == np.float64  # the input is not modified


def test_rec_index_replaces_path_and_extra_columns_are_kept():
    frame = _frame().drop(columns="path").assign(rec_index=[1, 2, 3, 4], weight=[1.0, 1.0, 0.5, 0.0])
    out = validate_manifest(frame)
    assert {"rec_index", "weight"} <= set(out.columns)


@pytest.mark.parametrize(
    ("drop", "named"),
    [(["label"], "label"), (["identity", "split"], "identity, split"), (["path"], r"path \(or rec_index\)")],
)
def test_missing_columns_are_named(drop: list[str], named: str):
    with pytest.raises(DataError, match=f"m.parquet: manifest is missing column\\(s\\): {named}"):
        validate_manifest(_frame().drop(columns=drop), "m.parquet")


def test_unknown_split_and_label_source_are_named():
    with pytest.raises(DataError, match=r"unknown split value\(s\) \['test', 'train'\]"):
        validate_manifest(_frame(split=["train", "labelled", "test", "probe"]))
    with pytest.raises(DataError, match=r"unknown label_source value\(s\) \['human'\]"):
        validate_manifest(_frame().assign(label_source=["gt", "pseudo", "human", "gt"]))
    validate_manifest(_frame().assign(label_source=["gt", "pseudo", "gt", "gt"]))


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ([0, 1, "x", 2], "must be integers"),
        ([0.0, np.nan, 1.0, 2.0], "must be integers"),
        ([0.0, 1.5, 1.0, 2.25], r"must be integers, found fractions in rows \[1, 3\]"),
    ],
    ids=["text", "nan", "fraction"],
)
def test_non_integer_labels_are_refused(labels, problem: str):
    with pytest.raises(DataError, match=f"column 'label' {problem}"):
        validate_manifest(_frame(label=labels), "m.parquet")


def test_write_read_round_trip(tmp_path: Path):
    path = write_manifest(_frame(), tmp_path / "sub" / "manifest.parquet")
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back, validate_manifest(_frame()))
    assert [p.name for p in path.parent.iterdir()] == ["manifest.parquet"]  # no temporary left behind


def test_invalid_frame_is_not_written_and_old_file_survives(tmp_path: Path):
    path = write_manifest(_frame(), tmp_path / "manifest.parquet")
    before = path.read_bytes()
    with pytest.raises(DataError, match="unknown split"):
        write_manifest(_frame(split=["nope"] * 4), path)
    assert path.read_bytes() == before


def test_read_missing_and_corrupt_files(tmp_path: Path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "absent.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match="not a readable parquet file") as info:
        read_manifest(tmp_path / "bad.parquet")
    assert info.value.source.endswith("bad.parquet")


def test_read_validates_the_file_content(tmp_path: Path):
    _frame().drop(columns="split").to_parquet(tmp_path / "m.parquet")
    with pytest.raises(DataError, match=r"m\.parquet: manifest is missing column\(s\): split"):
        read_manifest(tmp_path / "m.parquet")
