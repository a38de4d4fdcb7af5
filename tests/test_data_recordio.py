"""MXNet RecordIO without mxnet: format details on hand-built bytes, round trips, the converter, bad files."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from backbone.data import ManifestImageDataset, scan_image_folder
from backbone.data.recordio import (
    MAGIC,
    RecordIOReader,
    RecordIOWriter,
    encode_record,
    insightface_index,
    iter_records,
    pack,
    read_property,
    record_manifest,
    unpack,
    write_insightface_rec,
)
from backbone.data.recordio_cli import main as recordio_main
from semiface.errors import DataError
from semiface.manifest import read_manifest

MAGIC_BYTES = struct.pack("<I", MAGIC)


def _part(cflag: int, data: bytes) -> bytes:
    """One record part written by hand from the dmlc specification."""
    return struct.pack("<II", MAGIC, cflag << 29 | len(data)) + data + b"\0" * (-len(data) % 4)


def _header(flag: int, label: float, id_: int = 0, id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", flag, label, id_, id2)


def _write_raw(tmp_path: Path, records: dict[int, bytes], name: str = "hand") -> Path:
    """A .rec of hand-encoded records (already in on-disk form) and its .idx."""
    rec = tmp_path / f"{name}.rec"
    offsets, blob = {}, b""
    for key, raw in records.items():
        offsets[key] = len(blob)
        blob += raw
    rec.write_bytes(blob)
    rec.with_suffix(".idx").write_text("".join(f"{k}\t{o}\n" for k, o in offsets.items()))
    return rec


def _png(value: int, size: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- record format -------------------------------------------------------------------------------


def test_header_pack_unpack_scalar_and_array_labels():
    header, payload = unpack(pack(7.0, b"jpeg", id=3, id2=9))
    assert (header.flag, header.label, header.id, header.id2, payload) == (0, 7.0, 3, 9, b"jpeg")
    raw = pack([1.5, 2.5, 4.0], b"xy")
    assert raw[:24] == _header(3, 0.0) and len(raw) == 24 + 12 + 2
    header, payload = unpack(raw)
    assert header.flag == 3 and header.labels.tolist() == [1.5, 2.5, 4.0] and payload == b"xy"


def test_unpack_short_records_name_the_source():
    with pytest.raises(DataError, match="shorter than the 24-byte IRHeader"):
        unpack(b"abc", "x.rec (record at byte offset 8)")
    with pytest.raises(DataError, match="announces 5 labels"):
        unpack(_header(5, 0.0) + b"\0" * 8)


def test_encode_whole_record_is_one_padded_part():
    assert encode_record(b"abcde") == _part(0, b"abcde")
    assert len(encode_record(b"abcde")) == 8 + 8


def test_encode_cuts_at_aligned_magic_words_only():
    payload = b"AAAA" + MAGIC_BYTES + b"BBBBBBBB" + MAGIC_BYTES + b"CC" + b"x" + MAGIC_BYTES  # last one unaligned
    expected = _part(1, b"AAAA") + _part(2, b"BBBBBBBB") + _part(3, b"CCx" + MAGIC_BYTES)
    assert encode_record(payload) == expected
    assert encode_record(MAGIC_BYTES) == _part(1, b"") + _part(3, b"")


def test_read_hand_built_split_record(tmp_path: Path):
    body = _header(0, 4.0) + b"IMG1" + MAGIC_BYTES + b"IMG2" + MAGIC_BYTES + b"end"
    # header is 24 bytes, so the magic words sit at aligned offsets 28 and 36: three parts
    split = _part(1, _header(0, 4.0) + b"IMG1") + _part(2, b"IMG2") + _part(3, b"end")
    rec = _write_raw(tmp_path, {0: _part(0, pack(1.0, b"first")), 1: split, 2: _part(0, pack(2.0, b"z"))})
    with RecordIOReader(rec) as reader:
        assert reader.read(1) == body
        assert reader.read_header(1).label == 4.0
        assert unpack(reader.read(2)) [1] == b"z"
    assert [payload for _, payload in iter_records(rec)] == [pack(1.0, b"first"), body, pack(2.0, b"z")]


def test_read_hand_built_insightface_layout(tmp_path: Path):
    images = {1: (0, _png(10)), 2: (0, _png(20)), 3: (1, _png(30)), 4: (2, _png(40)), 5: (2, _png(50))}
    records = {k: _part(0, _header(0, float(lab)) + img) for k, (lab, img) in images.items()}
    for c, (first, end) in enumerate([(1, 3), (3, 4), (4, 6)]):
        records[6 + c] = _part(0, _header(2, 0.0) + struct.pack("<2f", first, end))
    records[0] = _part(0, _header(2, 0.0) + struct.pack("<2f", 6, 9))
    rec = _write_raw(tmp_path, dict(sorted(records.items(), reverse=True)))  # file order need not be key order
    (tmp_path / "property").write_text("3,6,6\n")
    with RecordIOReader(rec) as reader:
        index = insightface_index(reader)
        np.testing.assert_array_equal(index.image_keys, [1, 2, 3, 4, 5])
        np.testing.assert_array_equal(index.identity_ranges, [[1, 3], [3, 4], [4, 6]])
        assert reader.read_image(4)[0, 0].tolist() == [40, 40, 40]
    frame = record_manifest(rec, split="unlabelled")
    assert frame["rec_index"].tolist() == [1, 2, 3, 4, 5]
    assert frame["label"].tolist() == [0, 0, 1, 2, 2]
    assert set(frame["split"]) == {"unlabelled"}
    assert read_property(tmp_path) == (3, 6, 6)


def test_plain_file_without_header_lists_every_record(tmp_path: Path):
    rec = _write_raw(tmp_path, {0: _part(0, pack(5.0, _png(1))), 1: _part(0, pack([6.0, 0.5], _png(2)))})
    frame = record_manifest(rec)
    assert frame["rec_index"].tolist() == [0, 1] and frame["label"].tolist() == [5, 6]


# -- writer round trips --------------------------------------------------------------------------


def test_insightface_round_trip_with_magic_inside_payloads(tmp_path: Path):
    rng = np.random.default_rng(0)
    labels = [0, 0, 0, 1, 2, 2]
    payloads = [rng.bytes(int(rng.integers(0, 90))) for _ in labels]
    payloads[1] = b"abcd" + MAGIC_BYTES * 3 + b"e"  # split into several parts
    payloads[4] = MAGIC_BYTES
    rec = write_insightface_rec(tmp_path / "train.rec", labels, payloads, image_shape=(112, 96))
    with RecordIOReader(rec) as reader:
        index = insightface_index(reader)
        np.testing.assert_array_equal(index.identity_ranges, [[1, 4], [4, 5], [5, 7]])
        for key, (label, payload) in enumerate(zip(labels, payloads, strict=True), start=1):
            header, body = unpack(reader.read(key))
            assert (header.label, body) == (label, payload)
            assert reader.read_header(key).label == label
    assert read_property(tmp_path) == (3, 112, 96)
    assert len(list(iter_records(rec))) == 1 + 6 + 3


def test_writer_rejects_ungrouped_labels_and_writes_nothing(tmp_path: Path):
    with pytest.raises(DataError, match="label 0 out of order"):
        write_insightface_rec(tmp_path / "t.rec", [0, 1, 0], [b"a", b"b", b"c"])
    with pytest.raises(DataError, match="label 2 out of order"):
        write_insightface_rec(tmp_path / "t.rec", [0, 2], [b"a", b"b"])
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_duplicate_keys(tmp_path: Path):
    with pytest.raises(DataError, match="already written"), RecordIOWriter(tmp_path / "t.rec") as writer:
        writer.write(1, b"x")
        writer.write(1, b"y")
    assert list(tmp_path.iterdir()) == []


# -- bad files -----------------------------------------------------------------------------------


@pytest.fixture
def small_rec(tmp_path: Path) -> Path:
    return write_insightface_rec(tmp_path / "train.rec", [0, 0, 1], [_png(1), _png(2), _png(3)])


def test_missing_files_are_named(tmp_path: Path, small_rec: Path):
    with pytest.raises(DataError, match="RecordIO file not found"):
        RecordIOReader(tmp_path / "absent.rec")
    small_rec.with_suffix(".idx").unlink()
    with pytest.raises(DataError, match=r"train\.idx: RecordIO index \(\.idx\) not found"):
        RecordIOReader(small_rec)


def test_bad_magic_names_file_and_offset(small_rec: Path):
    with RecordIOReader(small_rec) as reader:
        offset = reader.offset(2)
    data = bytearray(small_rec.read_bytes())
    data[offset : offset + 4] = b"JUNK"
    small_rec.write_bytes(bytes(data))
    with RecordIOReader(small_rec) as reader, pytest.raises(DataError, match=f"byte offset {offset}: bad magic") as info:
        reader.read_image(2)
    assert info.value.source == str(small_rec)


def test_truncated_record_names_file_and_offset(small_rec: Path):
    with RecordIOReader(small_rec) as reader:
        offset = reader.offset(3)
    small_rec.write_bytes(small_rec.read_bytes()[: offset + 20])
    with RecordIOReader(small_rec) as reader:
        with pytest.raises(DataError, match=f"byte offset {offset}: truncated record") as info:
            reader.read(3)
        assert str(small_rec) in str(info.value)
        with pytest.raises(DataError, match="truncated record"):
            reader.read_header(3)
    with pytest.raises(DataError, match="truncated record"):
        list(iter_records(small_rec))


def test_corrupt_image_payload_names_record(tmp_path: Path):
    rec = write_insightface_rec(tmp_path / "t.rec", [0], [b"not an image"])
    with RecordIOReader(rec) as reader, pytest.raises(DataError, match="corrupt or unreadable image") as info:
        reader.read_image(1)
    assert "t.rec (record 1 at byte offset 0)" in str(info.value)


def test_continuation_part_where_a_record_should_start(tmp_path: Path):
    rec = _write_raw(tmp_path, {0: _part(3, b"tail")})
    with RecordIOReader(rec) as reader, pytest.raises(DataError, match="part flag 3 is not valid for a first part"):
        reader.read(0)


def test_bad_index_lines_unknown_and_missing_keys(small_rec: Path):
    idx = small_rec.with_suffix(".idx")
    good = idx.read_text()
    idx.write_text(good + "7\tseven\n")
    with pytest.raises(DataError, match=r"line 7: '7\\tseven' is not 'key<TAB>offset'"):
        RecordIOReader(small_rec)
    idx.write_text(good)
    with RecordIOReader(small_rec) as reader, pytest.raises(DataError, match="no record with key 42"):
        reader.read(42)
    idx.write_text("".join(line + "\n" for line in good.splitlines() if not line.startswith("2\t")))
    with RecordIOReader(small_rec) as reader, pytest.raises(DataError, match=r"keys \[2\] are missing"):
        insightface_index(reader)
    idx.write_text("")
    with pytest.raises(DataError, match="empty RecordIO index"):
        RecordIOReader(small_rec)


# -- dataset and converter -----------------------------------------------------------------------


@pytest.fixture
def face_folder(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    for name, values in {"ann": (10, 20), "ben": (30,), "cat": (40, 50, 60)}.items():
        (root / name).mkdir(parents=True)
        for k, v in enumerate(values):
            (root / name / f"{k}.png").write_bytes(_png(v, size=8))
    return root


def test_pack_list_unpack_round_trip(face_folder: Path, tmp_path: Path, capsys):
    rec = tmp_path / "out" / "train.rec"
    assert recordio_main(["--quiet", "pack", str(face_folder), str(rec)]) == 0
    assert "6 images" in capsys.readouterr().out
    manifest = read_manifest(rec.with_suffix(".parquet"))
    assert manifest["rec_index"].tolist() == [1, 2, 3, 4, 5, 6]
    assert manifest["identity"].tolist() == ["ann", "ann", "ben", "cat", "cat", "cat"]
    assert read_property(rec.parent) == (3, 8, 8)

    assert recordio_main(["list", str(rec), "--out", str(tmp_path / "listed.parquet")]) == 0
    assert "InsightFace layout: header record 0, 3 identity records" in capsys.readouterr().out
    listed = read_manifest(tmp_path / "listed.parquet")
    pd.testing.assert_series_equal(listed["label"], manifest["label"])

    assert recordio_main(["--quiet", "unpack", str(rec), str(tmp_path / "back")]) == 0
    back = scan_image_folder(tmp_path / "back")
    assert back["path"].tolist() == ["0/1.png", "0/2.png", "1/3.png", "2/4.png", "2/5.png", "2/6.png"]
    original = scan_image_folder(face_folder)
    for before, after in zip(original["path"], back["path"], strict=True):
        assert (face_folder / before).read_bytes() == (tmp_path / "back" / after).read_bytes()


def test_converter_never_overwrites(face_folder: Path, tmp_path: Path, capsys):
    rec = tmp_path / "train.rec"
    assert recordio_main(["--quiet", "pack", str(face_folder), str(rec)]) == 0
    before = rec.read_bytes()
    assert recordio_main(["--quiet", "pack", str(face_folder), str(rec)]) == 2
    assert "would overwrite" in capsys.readouterr().err
    assert rec.read_bytes() == before
    (tmp_path / "taken").mkdir()
    assert recordio_main(["--quiet", "unpack", str(rec), str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert recordio_main(["list", str(tmp_path / "absent.rec")]) == 2
    assert "RecordIO file not found" in capsys.readouterr().err


def test_failed_unpack_leaves_no_folder(tmp_path: Path):
    rec = write_insightface_rec(tmp_path / "t.rec", [0, 0], [_png(1), _png(2)])
    with RecordIOReader(rec) as reader:
        offset = reader.offset(2)
    rec.write_bytes(rec.read_bytes()[: offset + 12] + b"\0" * 4)  # second image cut, the idx still points past it
    assert recordio_main(["--quiet", "unpack", str(rec), str(tmp_path / "out")]) == 2
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_dataset_reads_records_like_the_folder(face_folder: Path, tmp_path: Path):
    rec = tmp_path / "train.rec"
    recordio_main(["--quiet", "pack", str(face_folder), str(rec)])
    manifest = read_manifest(rec.with_suffix(".parquet"))
    from_rec = ManifestImageDataset(manifest, None, image_size=8, record_file=rec)
    from_folder = ManifestImageDataset(scan_image_folder(face_folder), face_folder, image_size=8)
    for i in range(len(from_folder)):
        a, b = from_rec[i], from_folder[i]
        torch.testing.assert_close(a[0], b[0])
        assert a[1:] == b[1:]
    batches = {}
    for workers in (0, 2):  # with workers the reader is pickled and reopened in each of them
        loader = DataLoader(from_rec, batch_size=4, num_workers=workers)
        batches[workers] = [torch.cat(parts) for parts in zip(*loader, strict=True)]
    torch.testing.assert_close(batches[2][0], batches[0][0])
    assert batches[2][1].tolist() == manifest["label"].tolist()
    assert batches[2][2].tolist() == list(range(len(manifest)))


def test_dataset_record_file_needs_rec_index_and_a_real_file(face_folder: Path, tmp_path: Path):
    frame = scan_image_folder(face_folder)
    with pytest.raises(DataError, match="column 'rec_index' is required"):
        ManifestImageDataset(frame, None, record_file=tmp_path / "t.rec")
    with pytest.raises(DataError, match="RecordIO file not found"):
        ManifestImageDataset(frame.assign(rec_index=1), None, record_file=tmp_path / "t.rec")
