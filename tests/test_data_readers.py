"""Image decoding, identity-folder scanning and the manifest Dataset, on tiny generated images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from backbone.data import CorruptImagesError, ManifestImageDataset, scan_image_folder
from backbone.data.images import decode_image, image_format, read_image, resize_square
from semiface.errors import DataError
from semiface.manifest import validate_manifest


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def _solid(colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (*size, 3)).copy()


@pytest.fixture
def face_folder(tmp_path: Path) -> Path:
    """root/<identity>/<image>: three identities, PNG and JPEG, plus files a scan must ignore."""
    root = tmp_path / "faces"
    colours = {"bob": (200, 10, 10), "alice": (10, 200, 10), "carol": (10, 10, 200)}
    counts = {"bob": 3, "alice": 2, "carol": 1}
    for name, colour in colours.items():
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(counts[name]):
            fmt, ext = ("PNG", "png") if k % 2 == 0 else ("JPEG", "jpg")
            (folder / f"{k}.{ext}").write_bytes(_encode(_solid(colour), fmt))
        (folder / "notes.txt").write_text("not an image")
        (folder / ".hidden.png").write_bytes(b"junk")
    (root / "README.md").write_text("top-level files are not identities")
    (root / ".cache").mkdir()
    return root


# -- decoding ------------------------------------------------------------------------------------


def test_decode_grey_png_gives_three_equal_channels():
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    image = decode_image(_encode(grey, "PNG"), "grey.png")
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], grey)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty image file"),
        (b"definitely not an image", "corrupt or unreadable image"),
        (_encode(np.full((32, 32, 3), 90, np.uint8), "JPEG")[:-40], "corrupt or unreadable image"),
    ],
    ids=["empty", "garbage", "truncated-jpeg"],
)
def test_decode_damaged_bytes_names_source(data: bytes, problem: str):
    with pytest.raises(DataError, match=problem) as info:
        decode_image(data, "faces/x/1.jpg")
    assert info.value.source == "faces/x/1.jpg"


def test_read_missing_image_names_file(tmp_path: Path):
    with pytest.raises(DataError, match="image file not found") as info:
        read_image(tmp_path / "nope.png")
    assert info.value.source.endswith("nope.png")


def test_image_format_sniffs_bytes_not_names():
    assert image_format(_encode(_solid((1, 2, 3)), "JPEG")) == ".jpg"
    assert image_format(_encode(_solid((1, 2, 3)), "PNG")) == ".png"
    with pytest.raises(DataError, match="unknown image format"):
        image_format(b"xxxx")


def test_resize_square_keeps_solid_colour_and_sets_size():
    image = _solid((30, 60, 90), (40, 20))
    assert resize_square(image, 16).shape == (16, 16, 3)  # shrink one side, enlarge the other
    np.testing.assert_array_equal(resize_square(image, 16)[5, 5], [30, 60, 90])
    square = image[:16, :16]
    assert resize_square(square, 16) is square  # already the size: no copy


# -- scanning ------------------------------------------------------------------------------------


def test_scan_lists_images_with_sorted_contiguous_labels(face_folder: Path):
    frame = scan_image_folder(face_folder)
    validate_manifest(frame, "scan")
    assert list(frame["identity"]) == ["alice", "alice", "bob", "bob", "bob", "carol"]
    assert list(frame["label"]) == [0, 0, 1, 1, 1, 2]
    assert frame["label"].dtype == np.int64
    assert list(frame["path"]) == ["alice/0.png", "alice/1.jpg", "bob/0.png", "bob/1.jpg", "bob/2.png", "carol/0.png"]
    assert set(frame["split"]) == {"labelled"}
    assert frame.attrs["skipped_corrupt"] == []


def test_scan_split_is_set_and_checked(face_folder: Path):
    assert set(scan_image_folder(face_folder, split="probe", verify=False)["split"]) == {"probe"}
    with pytest.raises(DataError, match="unknown split 'test'"):
        scan_image_folder(face_folder, split="test")


def test_scan_missing_root(tmp_path: Path):
    with pytest.raises(DataError, match="image folder not found") as info:
        scan_image_folder(tmp_path / "absent")
    assert info.value.source.endswith("absent")


def test_scan_root_that_is_a_file(tmp_path: Path):
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        scan_image_folder(tmp_path / "file.png")


def test_scan_root_without_identity_folders(tmp_path: Path):
    (tmp_path / "loose.png").write_bytes(_encode(_solid((1, 1, 1)), "PNG"))
    with pytest.raises(DataError, match="no identity sub-folders"):
        scan_image_folder(tmp_path)


def test_scan_empty_identity_folder_is_named(face_folder: Path):
    (face_folder / "dave").mkdir()
    (face_folder / "dave" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty identity folder") as info:
        scan_image_folder(face_folder)
    assert info.value.source.endswith("dave")


def test_scan_lists_every_corrupt_image(face_folder: Path):
    (face_folder / "bob" / "1.jpg").write_bytes((face_folder / "bob" / "1.jpg").read_bytes()[:30])
    (face_folder / "carol" / "9.png").write_bytes(b"")
    with pytest.raises(CorruptImagesError) as info:
        scan_image_folder(face_folder)
    assert [path for path, _ in info.value.corrupt] == ["bob/1.jpg", "carol/9.png"]
    assert "bob/1.jpg" in str(info.value) and "carol/9.png" in str(info.value)
    assert isinstance(info.value, DataError)


def test_scan_skip_corrupt_leaves_them_out_and_reports_them(face_folder: Path):
    (face_folder / "bob" / "1.jpg").write_bytes(b"broken")
    frame = scan_image_folder(face_folder, skip_corrupt=True)
    assert "bob/1.jpg" not in set(frame["path"])
    assert len(frame) == 5
    assert [path for path, _ in frame.attrs["skipped_corrupt"]] == ["bob/1.jpg"]


def test_scan_without_verify_does_not_decode(face_folder: Path):
    (face_folder / "bob" / "1.jpg").write_bytes(b"broken")
    assert len(scan_image_folder(face_folder, verify=False)) == 6


def test_scan_relabels_when_a_corrupt_identity_disappears(face_folder: Path):
    (face_folder / "alice" / "0.png").write_bytes(b"broken")
    (face_folder / "alice" / "1.jpg").write_bytes(b"broken")
    frame = scan_image_folder(face_folder, skip_corrupt=True)
    assert list(frame["identity"].unique()) == ["bob", "carol"]
    assert sorted(frame["label"].unique()) == [0, 1]


# -- dataset -------------------------------------------------------------------------------------


def test_dataset_items_are_chw_float_label_and_row(face_folder: Path):
    frame = scan_image_folder(face_folder)
    data = ManifestImageDataset(frame, face_folder, image_size=8)
    assert len(data) == 6
    image, label, row = data[2]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert (label, row) == (1, 2)
    # bob is (200, 10, 10) as PNG: the default transform maps [0, 255] to [-1, 1]
    np.testing.assert_allclose(image[:, 0, 0].numpy(), np.array([200, 10, 10]) / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(data.read(5)[0, 0], [10, 10, 200])


def test_dataset_applies_the_given_transform(face_folder: Path):
    seen = []

    def transform(image: np.ndarray) -> torch.Tensor:
        seen.append(image.shape)
        return torch.zeros(3, 4, 4)

    data = ManifestImageDataset(scan_image_folder(face_folder), face_folder, transform=transform)
    assert data[0][0].shape == (3, 4, 4)
    assert seen == [(12, 10, 3)]


def test_dataset_keeps_unlabelled_minus_one_and_absolute_paths(face_folder: Path):
    frame = scan_image_folder(face_folder, split="unlabelled")
    frame["label"] = -1
    frame["path"] = [str(face_folder / p) for p in frame["path"]]
    data = ManifestImageDataset(frame, None, image_size=4)
    assert [data[i][1] for i in range(len(data))] == [-1] * 6


def test_dataset_missing_image_names_the_file(face_folder: Path):
    frame = scan_image_folder(face_folder)
    (face_folder / "carol" / "0.png").unlink()
    data = ManifestImageDataset(frame, face_folder)
    with pytest.raises(DataError, match="image file not found") as info:
        data[5]
    assert info.value.source.endswith("carol/0.png")


def test_dataset_corrupt_image_names_the_file(face_folder: Path):
    frame = scan_image_folder(face_folder)
    (face_folder / "alice" / "1.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="corrupt or unreadable image") as info:
        ManifestImageDataset(frame, face_folder)[1]
    assert info.value.source.endswith("alice/1.jpg")


def test_dataset_bad_manifest_and_root(face_folder: Path):
    frame = scan_image_folder(face_folder)
    with pytest.raises(DataError, match="column 'path' is required"):
        ManifestImageDataset(frame.drop(columns="path").assign(rec_index=0), face_folder)
    with pytest.raises(DataError, match="missing column"):
        ManifestImageDataset(frame.drop(columns="split"), face_folder)
    with pytest.raises(DataError, match="image root folder not found"):
        ManifestImageDataset(frame, face_folder / "absent")


# -- the real face folders -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "identities", "images"), [("orl", 40, 400), ("yale_b", 38, 2414), ("lfw", 2832, 5032)])
def test_scan_real_face_folders(shared_data_dir: Path, name: str, identities: int, images: int):
    root = shared_data_dir / name
    frame = scan_image_folder(root, verify=name == "orl")  # decoding all of lfw/yale_b is left to the bench
    assert (frame["identity"].nunique(), len(frame)) == (identities, images)
    assert frame["label"].max() == identities - 1
    picks = frame.groupby("label").head(1).sample(n=5, random_state=0).index
    data = ManifestImageDataset(frame, root, image_size=32)
    for row in picks:
        image, label, index = data[int(row)]
        assert image.shape == (3, 32, 32) and index == row and label == frame.at[row, "label"]
        assert -1.0 <= float(image.min()) < float(image.max()) <= 1.0


def test_manifest_frame_from_scan_round_trips_through_parquet(face_folder: Path, tmp_path: Path):
    from semiface.manifest import read_manifest, write_manifest

    frame = scan_image_folder(face_folder)
    write_manifest(frame, tmp_path / "m.parquet")
    again = read_manifest(tmp_path / "m.parquet")
    pd.testing.assert_frame_equal(again[frame.columns], frame, check_like=False)
