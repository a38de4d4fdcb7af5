"""The data path: uint8 batches, device normalisation and decoding, per-sample keys, errors, worker count."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from backbone.data.dataset import FolderImages, RecordImages
from backbone.data.demo_faces import DemoConfig, identity_face, identity_view, render_face
from backbone.data.recordio import RecordIOReader, write_insightface_rec
from backbone.loader import FaceBatches, batch_loader, cgroup_cpu_quota, eval_loader, resolve_workers
from backbone.model_input import decode_on_device, model_input
from semiface.errors import ConfigError, DataError

CPU = torch.device("cpu")
SIZE = 32


def _face(identity: int, k: int, size: int = SIZE) -> np.ndarray:
    config = DemoConfig(image_size=size, seed=5)
    return render_face(identity_face(config, identity), identity_view(config, identity, k), size)


def _jpeg(image: np.ndarray) -> bytes:
    return simplejpeg.encode_jpeg(image, quality=95, colorspace="RGB")


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def _records(path: Path, payloads: list[bytes]) -> RecordImages:
    labels = np.arange(len(payloads)) // 4
    write_insightface_rec(path, labels, payloads)
    return RecordImages(RecordIOReader(path), np.arange(1, len(payloads) + 1))


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> tuple[RecordImages, np.ndarray]:
    """16 JPEG faces of 4 people, 32 px, in a RecordIO; and their pixels as Pillow decodes them."""
    folder = tmp_path_factory.mktemp("faces")
    payloads = [_jpeg(_face(i // 4, i % 4)) for i in range(16)]
    pillow = np.stack([np.array(Image.open(io.BytesIO(p)).convert("RGB")) for p in payloads])
    return _records(folder / "train.rec", payloads), pillow


def _inputs(data: FaceBatches, sampler, workers: int, epochs: list[int]) -> list[torch.Tensor]:
    loader = batch_loader(data, sampler, 4, workers, CPU, drop_last=True, persistent=workers > 0)
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        out.append(torch.cat([model_input(batch, CPU, SIZE) for batch in loader]))
    return out


def test_uint8_batches_and_device_normalisation_give_the_model_input_of_before(faces):
    images, pillow = faces
    data = FaceBatches(images, np.arange(16) // 4, SIZE)
    batch = next(iter(eval_loader(images, np.arange(16) // 4, SIZE, 16, 0, "cpu", CPU)))
    assert batch.pixels.dtype == torch.uint8 and batch.pixels.shape == (16, SIZE, SIZE, 3)  # NHWC, no float
    assert batch.labels.tolist() == (np.arange(16) // 4).tolist() and batch.index.tolist() == list(range(16))
    # before: Pillow decode, then x / 127.5 - 1 (CHW float32); libjpeg-turbo gives Pillow's pixels
    # (measured: identical), allowed one level for another libjpeg build
    before = torch.from_numpy(pillow.transpose(0, 3, 1, 2) / 127.5 - 1.0).float()
    inputs = model_input(batch, CPU, SIZE)
    assert inputs.dtype == torch.float32 and inputs.shape == (16, 3, SIZE, SIZE) and inputs.is_contiguous()
    torch.testing.assert_close(inputs, before, atol=1 / 127.5 + 1e-6, rtol=0)
    assert len(data[(0, 3)]) == 1  # one item is a batch of one


@pytest.mark.parametrize("recipe", ["flip", "albumentations"])
def test_augmentation_is_the_same_in_any_worker_count_and_after_a_resume(faces, recipe):
    images, _ = faces
    data = FaceBatches(images, np.arange(16) // 4, SIZE, recipe, strength=1.0, seed=3)
    order = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    in_process = _inputs(data, order, 0, [0, 1])
    two_workers = _inputs(data, order, 2, [0, 1])
    resumed = _inputs(data, order, 2, [1])  # a fresh loader that starts at epoch 1, as a resumed run does
    for epoch in (0, 1):
        assert torch.equal(in_process[epoch], two_workers[epoch])
    assert torch.equal(resumed[0], in_process[1])
    # another epoch: another order and other draws; the same row differs between epochs in some rows
    plain = torch.cat([model_input(b, CPU, SIZE) for b in eval_loader(images, np.zeros(16), SIZE, 16, 0, "cpu", CPU)])
    rows = [list(iter(order)) for order.epoch in (0, 1)]
    by_row = [in_process[e][np.argsort(rows[e])] for e in (0, 1)]
    assert sum(not torch.equal(by_row[0][i], by_row[1][i]) for i in range(16)) >= 4
    if recipe == "flip":  # each row is the plain image or its exact mirror, about half of them mirrored
        mirrored = [torch.equal(by_row[0][i], plain[i].flip(2)) for i in range(16)]
        assert all(m or torch.equal(by_row[0][i], plain[i]) for i, m in enumerate(mirrored))
        assert 3 <= sum(mirrored) <= 13


def test_device_decode_run_on_the_cpu_gives_the_worker_decoders_pixels(faces, tmp_path):
    images, _ = faces
    labels = np.arange(16) // 4
    on_workers = next(iter(eval_loader(images, labels, SIZE, 16, 0, "cpu", CPU)))
    on_device = next(iter(eval_loader(images, labels, SIZE, 16, 0, "device", CPU)))
    assert len(on_device.pixel_rows) == 0 and len(on_device.jpeg_rows) == 16  # workers only read the bytes
    gap = (model_input(on_device, CPU, SIZE) - model_input(on_workers, CPU, SIZE)).abs().max() * 127.5
    assert gap <= 2.0, gap  # torchvision's libjpeg and simplejpeg: measured 0 levels apart
    # a PNG in the batch is decoded by the worker; JPEGs of other sizes are resized on the device
    mixed = _records(tmp_path / "mixed.rec", [_png(_face(0, 0)), _jpeg(_face(1, 0, 64)), _jpeg(_face(2, 0, 48)),
                                              _jpeg(_face(3, 0, 24)), _jpeg(_face(3, 1))])
    both = [next(iter(eval_loader(mixed, np.zeros(5), SIZE, 5, 0, decode, CPU))) for decode in ("cpu", "device")]
    assert both[1].pixel_rows.tolist() == [0] and both[1].jpeg_rows.tolist() == [1, 2, 3, 4]
    cpu, device = (model_input(b, CPU, SIZE) * 127.5 for b in both)
    gaps = (cpu - device).abs()
    assert torch.equal(cpu[0], device[0]) and gaps[4].max() <= 2.0
    # OpenCV (area when shrinking, bilinear when enlarging) on the CPU; on the device area averaging by an
    # integer factor and bilinear otherwise. Measured on 8 faces: 64 -> 32 max 1 level, 24 -> 32 max 1,
    # 48 -> 32 mean 1.4 (max 30, on sharp edges), 40 -> 32 mean 0.7
    assert gaps[1].max() <= 2.0 and gaps[3].max() <= 2.0 and gaps[2].mean() < 3.0


def test_corrupt_bytes_raise_a_data_error_naming_the_record_in_every_decode_mode(tmp_path):
    good = [_jpeg(_face(0, k)) for k in range(3)]
    truncated = good[0][: len(good[0]) // 2]
    garbled = good[1][:2] + b"\xff\xe0\x00\x10garbage!" + bytes(200) + b"\xff\xd9"  # SOI ... EOI, no image
    images = _records(tmp_path / "bad.rec", [good[2], truncated, good[0], garbled])
    for decode in ("cpu", "device"):
        for workers in (0, 2):
            for rows, key in (([0, 1, 2], 2), ([0, 2, 3], 4)):
                picked = RecordImages(images.reader, images.keys[rows])
                loader = eval_loader(picked, np.zeros(3), SIZE, 3, workers, decode, CPU)
                with pytest.raises(DataError, match=r"corrupt or unreadable image") as info:
                    for batch in loader:
                        model_input(batch, CPU, SIZE)
                assert info.value.source.startswith(f"{tmp_path / 'bad.rec'} (record {key} at byte offset"), (
                    decode, workers, str(info.value))


def test_a_missing_file_in_a_worker_is_a_data_error_naming_it(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(_face(0, 0)))
    images = FolderImages(np.array(["a.png", "gone.png"]), tmp_path)
    with pytest.raises(DataError, match="image file not found") as info:
        list(eval_loader(images, np.zeros(2), SIZE, 2, 1, "cpu", CPU))
    assert info.value.source == str(tmp_path / "gone.png")


def test_auto_worker_count_comes_from_the_cpus_and_the_local_ranks(monkeypatch, tmp_path):
    import backbone.loader as loader

    monkeypatch.setattr(loader, "usable_cpus", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cuda = torch.device("cuda")
    assert resolve_workers("auto", cuda) == 7  # 8 CPUs a rank, one kept for the rank's own process
    assert resolve_workers("auto", CPU) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_workers("auto", cuda) == 15
    monkeypatch.setattr(loader, "usable_cpus", lambda: 64)
    assert resolve_workers("auto", cuda) == loader.MAX_AUTO_WORKERS
    monkeypatch.setattr(loader, "usable_cpus", lambda: 1)
    assert (resolve_workers("auto", cuda), resolve_workers("auto", CPU)) == (1, 0)
    assert resolve_workers(3, cuda) == 3  # an explicit number wins
    with pytest.raises(ConfigError, match="num_workers: 'many' is neither 'auto' nor a count"):
        resolve_workers("many", CPU)
    # a container's CPU limit: cgroup v2 cpu.max, v1 quota / period
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 3
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 4


def test_decode_option_is_checked():
    assert decode_on_device("auto", torch.device("cuda")) and not decode_on_device("auto", CPU)
    assert decode_on_device("device", CPU) and not decode_on_device("cpu", torch.device("cuda"))
    with pytest.raises(ConfigError, match="decode: 'gpu' is not one of"):
        decode_on_device("gpu", CPU)


def test_the_flip_path_runs_with_torch_numpy_and_simplejpeg_alone(faces):
    """As on a bare GPU host: pandas, Pillow, OpenCV, albumentations, timm and prefect unimportable."""
    images, _ = faces
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {{"pandas", "PIL", "cv2", "albumentations", "timm", "prefect", "faiss"}}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np, torch
from torch.utils.data import RandomSampler
from backbone.data.dataset import RecordImages
from backbone.data.recordio import RecordIOReader
from backbone.loader import FaceBatches, batch_loader
from backbone.model_input import device_batches
data = FaceBatches(RecordImages(RecordIOReader({str(images.reader.rec_path)!r}), np.arange(1, 17)), np.zeros(16),
                   {SIZE}, "flip", seed=1)
loader = batch_loader(data, RandomSampler(data), 8, 1, torch.device("cpu"), drop_last=True, persistent=True)
shapes = [tuple(x.shape) for _, x in device_batches(loader, torch.device("cpu"), {SIZE})]
print(shapes)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([(8, 3, SIZE, SIZE)] * 2)
