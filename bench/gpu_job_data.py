"""The data ``bench/gpu_check.py``'s job stages read, generated on the machine that runs them (nothing carried).

* ``faces``: a RecordIO of 112-px JPEG faces (q95, 10 per person) drawn by the project's demo-face
  generator (``backbone.data.demo_faces``) and packed by ``backbone.data.recordio.write_insightface_rec``,
  with its manifest: what ``semi-supervised/ms1m`` trains on, at MS1M's image size and encoding;
* ``labelled`` / ``unlabelled``: MS1M-like 256-d features with identity labels
  (``clustering.benchmark_features``), disjoint identities, sharing one nuisance subspace.

Faces and features are made in a pool of processes (one chunk of identities each), so 20K faces and
684K feature rows take seconds on a 16-core GPU host. Each file is written once per work folder and
reused by later stages (and later runs with the same ``--work``).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FACES_PER_ID = 10
FEATURE_CHUNK_IDS = 4_000  # identities per generated feature chunk (one process each)
ROWS_PER_ID = 16  # ask for this many identities per wanted row count: the generator averages ~18.6 images each


@dataclass(frozen=True)
class FaceRecord:
    """A generated RecordIO (``.rec`` + ``.idx``) and its manifest."""

    rec: Path
    manifest: Path


def pool_size() -> int:
    """Processes for generation: every CPU this process may use (at most 16)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(16, cpus))


def _render_identities(job: tuple[int, int, int]) -> list[bytes]:
    """JPEG bytes of ``FACES_PER_ID`` faces of each identity in [first, stop) at ``size`` px."""
    from PIL import Image

    from backbone.data.demo_faces import DemoConfig, face_layers, identity_face, identity_view, render_face

    first, stop, size = job
    config = DemoConfig(image_size=size)
    out = []
    for identity in range(first, stop):
        face = identity_face(config, identity)
        layers = face_layers(face, size)
        for k in range(FACES_PER_ID):
            buffer = io.BytesIO()
            Image.fromarray(render_face(face, identity_view(config, identity, k), size, layers)).save(
                buffer, format="JPEG", quality=95)
            out.append(buffer.getvalue())
    return out


def face_record(folder: Path, n_images: int, size: int) -> FaceRecord:
    """``n_images`` (rounded up to whole identities) JPEG faces of ``size`` px in ``folder``; reused when there."""
    from backbone.data.recordio import record_manifest, write_insightface_rec
    from semiface.manifest import write_manifest

    rec, manifest = folder / f"faces_{n_images}_{size}.rec", folder / f"faces_{n_images}_{size}.parquet"
    if rec.is_file() and manifest.is_file():
        return FaceRecord(rec, manifest)
    n_ids = -(-n_images // FACES_PER_ID)
    step = max(1, -(-n_ids // (4 * pool_size())))
    jobs = [(first, min(first + step, n_ids), size) for first in range(0, n_ids, step)]
    labels = np.repeat(np.arange(n_ids), FACES_PER_ID)
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(pool_size()) as pool:
        images = (jpeg for chunk in pool.map(_render_identities, jobs) for jpeg in chunk)
        write_insightface_rec(rec, labels, images, image_shape=(size, size))
    write_manifest(record_manifest(rec), manifest)
    return FaceRecord(rec, manifest)


def _feature_chunk(job: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    from clustering.benchmark_features import generate_benchmark_features

    n_ids, seed, world_seed = job
    return generate_benchmark_features(n_ids, seed=seed, world_seed=world_seed)


def feature_set(folder: Path, name: str, rows: int, seed: int) -> tuple[Path, Path]:
    """``rows`` generated feature rows (``<name>.npy`` float32 [rows, 256], unit) and their labels
    (``<name>_labels.npy`` int64); identities drawn from ``seed`` (labelled and unlabelled sets take
    different seeds: disjoint people, one shared nuisance subspace). Reused when there."""
    from semiface.atomic import save_npy

    features_path, labels_path = folder / f"{name}_{rows}.npy", folder / f"{name}_{rows}_labels.npy"
    if features_path.is_file() and labels_path.is_file():
        return features_path, labels_path
    n_ids = max(2, -(-rows // ROWS_PER_ID))
    chunks = [min(FEATURE_CHUNK_IDS, n_ids - first) for first in range(0, n_ids, FEATURE_CHUNK_IDS)]
    jobs = [(count, 1_000 * seed + i, 0) for i, count in enumerate(chunks)]
    with ProcessPoolExecutor(min(pool_size(), len(jobs))) as pool:
        parts = list(pool.map(_feature_chunk, jobs))
    offsets = np.cumsum([0] + chunks[:-1])
    features = np.concatenate([f for f, _ in parts])[:rows]
    labels = np.concatenate([lab + off for (_, lab), off in zip(parts, offsets, strict=True)])[:rows]
    if len(features) < rows:
        raise RuntimeError(f"generated {len(features)} feature rows, fewer than the {rows} asked for")
    folder.mkdir(parents=True, exist_ok=True)
    save_npy(labels_path, labels)
    save_npy(features_path, features)
    return features_path, labels_path
