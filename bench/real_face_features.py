"""Features of the real face folders (../shared/data: lfw, yale_b, orl) for clustering benchmarks and tests.

Identities of every folder are split three ways, by a seeded draw:

* ``backbone``: the identities a small ArcFace backbone (resnet10t, 64 px, CPU-sized) is trained on;
* ``labelled``: identities whose features and labels the clusterers are fitted / tuned on;
* ``unlabelled``: the identities to cluster, seen by neither the backbone nor the clusterers.

Identities with one image (LFW's distractors) never go to the backbone; they are shared between the
labelled and unlabelled parts. Features are the backbone's 256-d L2-normalised embeddings (flip
test-time augmentation) of the labelled and unlabelled images, written under
``<cache>/<key>/`` where ``key`` hashes the folders' file lists and the config, so a rerun with
the same data and config loads them instantly (training resumes if it was interrupted).

    python -m bench.real_face_features [--data ../shared/data] [--out bench/results/real_faces]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from backbone.data.folder import scan_image_folder
from backbone.extract import extract_features
from backbone.train import train_backbone
from backbone.train_config import RUNTIME_FIELDS, TrainConfig
from semiface.atomic import save_json
from semiface.errors import DataError
from semiface.features import check_features, load_features
from semiface.manifest import read_manifest, write_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CACHE = REPO_ROOT / "bench" / "results" / "real_faces"
FOLDERS = ("lfw", "yale_b", "orl")
PARTS = ("backbone", "labelled", "unlabelled")


def _cpu_backbone() -> TrainConfig:
    """The CPU recipe that trains in a few minutes (resnet10t at 64 px, soft ArcFace margin, poly decay)."""
    return TrainConfig(trunk="resnet10t", image_size=48, embedding_dim=256, s=16.0, m=0.2, schedule="poly",
                       epochs=12, batch_size=64, aug_strength=0.3, num_workers=0, device="auto", verbose=False)


@dataclass(frozen=True)
class RealFaceConfig:
    """How identities are split and how the backbone is trained."""

    folders: tuple[str, ...] = FOLDERS
    backbone_share: float = 0.5  # of each folder's identities with >= 2 images
    labelled_share: float = 0.25  # of the same; the rest (~0.25) is unlabelled
    seed: int = 0
    backbone: TrainConfig = field(default_factory=_cpu_backbone)

    def key(self, files: pd.DataFrame) -> str:
        """Short hash of this config and the scanned file list (the cache folder's name)."""
        backbone = {k: v for k, v in self.backbone.to_dict().items() if k not in RUNTIME_FIELDS}
        text = json.dumps({**asdict(self), "backbone": backbone}, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode())
        digest.update("\n".join(files["path"]).encode())
        return digest.hexdigest()[:12]


@dataclass
class RealFaceFeatures:
    """Labelled and unlabelled features (float32 [N, 256], unit rows) with integer identity labels."""

    labelled_features: np.ndarray
    labelled_labels: np.ndarray
    unlabelled_features: np.ndarray
    unlabelled_labels: np.ndarray
    summary: dict


def scan_folders(data_dir: Path, folders: tuple[str, ...] = FOLDERS) -> pd.DataFrame:
    """One row per image of every folder: absolute ``path``, ``folder``, ``identity`` ("folder/name")."""
    frames = []
    for name in folders:
        root = Path(data_dir) / name
        found = scan_image_folder(root, verify=False)  # decoding errors surface, naming the file, when read
        frames.append(pd.DataFrame({
            "path": [str(root / p) for p in found["path"]], "folder": name,
            "identity": [f"{name}/{i}" for i in found["identity"]],
        }))
    return pd.concat(frames, ignore_index=True)


def split_identities(files: pd.DataFrame, config: RealFaceConfig) -> pd.DataFrame:
    """Add ``part`` (backbone / labelled / unlabelled, disjoint by identity) and ``label`` (identity index).

    Per folder, identities with >= 2 images are shuffled and cut at ``backbone_share`` and
    ``backbone_share + labelled_share``; single-image identities go half to labelled, half to unlabelled.
    """
    rng = np.random.default_rng(config.seed)
    counts = files.groupby("identity").size()
    part: dict[str, str] = {}
    for name in config.folders:
        ids = sorted(i for i in counts.index if i.startswith(f"{name}/"))
        multi = np.array([i for i in ids if counts[i] >= 2])
        single = np.array([i for i in ids if counts[i] < 2])
        multi, single = multi[rng.permutation(len(multi))], single[rng.permutation(len(single))]
        cut_b = round(config.backbone_share * len(multi))
        cut_l = round((config.backbone_share + config.labelled_share) * len(multi))
        part.update(dict.fromkeys(multi[:cut_b], "backbone"))
        part.update(dict.fromkeys(multi[cut_b:cut_l], "labelled"))
        part.update(dict.fromkeys(multi[cut_l:], "unlabelled"))
        part.update(dict.fromkeys(single[: len(single) // 2], "labelled"))
        part.update(dict.fromkeys(single[len(single) // 2 :], "unlabelled"))
    frame = files.assign(part=files["identity"].map(part))
    return frame.assign(label=pd.factorize(frame["identity"], sort=True)[0].astype(np.int64))


def real_face_features(
    data_dir: str | Path = DEFAULT_DATA,
    cache_dir: str | Path = DEFAULT_CACHE,
    config: RealFaceConfig | None = None,
    *,
    progress: bool = False,
) -> RealFaceFeatures:
    """Train (or reuse) the backbone on the backbone part, extract (or reuse) the other parts' features."""
    config = config or RealFaceConfig()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "real face data folder not found (expected lfw/, yale_b/, orl/ inside)")
    files = scan_folders(data_dir, config.folders)
    work = Path(cache_dir) / config.key(files)
    frame = split_identities(files, config)
    started = time.perf_counter()

    train_rows = frame[frame["part"] == "backbone"]
    train_manifest = train_rows.assign(label=pd.factorize(train_rows["identity"], sort=True)[0], split="labelled")
    write_manifest(train_manifest[["path", "label", "identity", "split"]], work / "backbone_manifest.parquet")
    backbone = replace(config.backbone, verbose=progress)
    model = train_backbone(work / "backbone_manifest.parquet", None, work / "backbone", backbone)

    feature_path = work / "features.npy"
    manifest_path = work / "cluster_manifest.parquet"
    rows = frame[frame["part"] != "backbone"].reset_index(drop=True)
    rows = rows.assign(split=rows["part"], label=np.where(rows["part"] == "labelled", rows["label"], -1))
    if not (feature_path.is_file() and manifest_path.is_file()
            and read_manifest(manifest_path)["path"].tolist() == rows["path"].tolist()):
        write_manifest(rows[["path", "label", "identity", "split"]], manifest_path)
        extract_features(model, manifest_path, None, feature_path, batch_size=128, device=config.backbone.device)
    features = np.asarray(load_features(feature_path, dim=config.backbone.embedding_dim, mmap=False))
    check_features(features, feature_path, config.backbone.embedding_dim)
    labels = frame.loc[frame["part"] != "backbone", "label"].to_numpy(np.int64)
    labelled = (rows["split"] == "labelled").to_numpy()
    summary = _summary(frame, work, time.perf_counter() - started)
    save_json(work / "summary.json", summary)
    return RealFaceFeatures(features[labelled], labels[labelled], features[~labelled], labels[~labelled], summary)


def _summary(frame: pd.DataFrame, work: Path, seconds: float) -> dict:
    """Identities and images per part and folder, the cache folder and the backbone's last-epoch loss."""
    table = frame.groupby(["part", "folder"]).agg(identities=("identity", "nunique"), images=("path", "size"))
    metrics = work / "backbone" / "metrics.json"
    history = json.loads(metrics.read_text()) if metrics.is_file() else []
    return {
        "cache": str(work), "seconds": seconds,
        "parts": {f"{p}/{f}": {k: int(v) for k, v in row.items()} for (p, f), row in table.iterrows()},
        "backbone_final_loss": history[-1]["loss"] if history else None,
        "backbone_train_seconds": sum(h["seconds"] for h in history),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding lfw/, yale_b/, orl/")
    parser.add_argument("--out", default=str(DEFAULT_CACHE), help="cache folder (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=_cpu_backbone().epochs, help="backbone epochs")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared 2-core machine: "
                        "two processes spinning 2 threads each run ~3x slower than with 1 each)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = RealFaceConfig(backbone=replace(_cpu_backbone(), epochs=args.epochs))
    result = real_face_features(args.data, args.out, config, progress=True)
    print(json.dumps(result.summary, indent=1))
    print(f"labelled {result.labelled_features.shape}, unlabelled {result.unlabelled_features.shape}")


if __name__ == "__main__":
    main()
