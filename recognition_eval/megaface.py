"""The MegaFace Challenge 1 layout: FaceScrub probes by identity against a MegaFace distractor set.

Images. Probes: a folder with one sub-folder per identity (``facescrub/<identity>/<image>``), or a
devkit list (``facescrub_features_list.json``: ``{"path": [...], "id": [...]}``, or a text file of
``path<TAB>identity`` lines) whose paths are relative to ``probe_root``. Distractors: a folder (every
image under it, at any depth), or a list (the devkit's ``megaface_features_list.json_1000000_1``:
``{"path": [...]}``, or a text file with one path a line) relative to ``distractor_root``.

Noise lists (the cleaned protocol most papers report since ArcFace: the devkit's mislabelled FaceScrub
images and the MegaFace distractors that are in fact FaceScrub people, e.g. InsightFace's
``facescrub_noises.txt`` / ``megaface_noises.txt``): ``drop_noise`` removes the listed images from
either set (``read_noise_list``, ``noise_mask``), before anything is extracted or scored.

Precomputed features of those images: one ``.npy`` [N, D] in list order, or the devkit's one file per
image, ``<folder>/<image path><suffix>`` (e.g. ``_arcface.bin``: four int32 -- rows, cols, element size,
type 5 = float32 -- then the floats).

``megaface_manifest`` turns the layout into the manifest contract (``split`` probe / distractor) with
paths under two link names, ``probes/`` and ``distractors/``, so that the manifest does not depend on
where the data is mounted; ``link_image_roots`` makes the folder those names resolve in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semiface.errors import DataError
from semiface.manifest import IMAGE_EXTENSIONS

PROBES, DISTRACTORS = "probes", "distractors"
UNKNOWN_IDENTITY = "unknown"  # a distractor's identity is not known (semiface.manifest.UNKNOWN_IDENTITIES)
_DEVKIT_HEADER = 4  # int32 values before a devkit feature's floats
_CV_32F = 5


def read_image_list(path: str | Path, with_identities: bool) -> pd.DataFrame:
    """A devkit JSON list or a text list as a frame of ``path`` (and ``identity`` when asked for)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image list not found")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("path"), list):
            raise DataError(path, 'expected a MegaFace devkit list: {"path": [...]} (and "id" for probes)')
        frame = pd.DataFrame({"path": [str(p) for p in data["path"]]})
        if with_identities:
            ids = data.get("id")
            if not isinstance(ids, list) or len(ids) != len(frame):
                raise DataError(path, f'a probe list needs an "id" list as long as "path" ({len(frame)} entries)')
            frame["identity"] = [str(i) for i in ids]
    else:
        lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
        cells = [line.split("\t") for line in lines]
        if with_identities and any(len(c) != 2 for c in cells):
            bad = next(i for i, c in enumerate(cells) if len(c) != 2)
            raise DataError(path, f"line {bad + 1}: expected 'path<TAB>identity'")
        frame = pd.DataFrame({"path": [c[0].strip() for c in cells]})
        if with_identities:
            frame["identity"] = [c[1].strip() for c in cells]
    if frame.empty:
        raise DataError(path, "empty image list")
    return frame


def list_probes(probes: str | Path, probe_root: str | Path | None = None) -> tuple[pd.DataFrame, Path]:
    """Probe images (``path`` relative to the returned root, ``identity``) from a folder or a list."""
    probes = Path(probes)
    if probes.is_dir():
        rows = [(f"{identity.name}/{image.name}", identity.name)
                for identity in sorted(p for p in probes.iterdir() if p.is_dir() and not p.name.startswith("."))
                for image in sorted(identity.iterdir()) if _is_image(image)]
        if not rows:
            raise DataError(probes, "no probe images (expected <identity>/<image> sub-folders)")
        return pd.DataFrame(rows, columns=["path", "identity"]), probes
    frame = read_image_list(probes, with_identities=True)
    return frame, image_root(probes, probe_root, "probe_root")


def list_distractors(distractors: str | Path, distractor_root: str | Path | None = None) -> tuple[list[str], Path]:
    """Distractor image paths (relative to the returned root) from a folder (any depth) or a list."""
    distractors = Path(distractors)
    if distractors.is_dir():
        paths = []
        for folder, dirnames, filenames in os.walk(distractors):
            dirnames.sort()
            paths.extend(Path(folder, name).relative_to(distractors).as_posix()
                         for name in sorted(filenames) if _is_image(Path(name)))
        if not paths:
            raise DataError(distractors, "no distractor images in this folder")
        return paths, distractors
    frame = read_image_list(distractors, with_identities=False)
    return frame["path"].tolist(), image_root(distractors, distractor_root, "distractor_root")


def read_noise_list(path: str | Path) -> set[str]:
    """The images a noise list names: one a line, relative to the set's root, or a bare file name
    (matched by name); blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "noise list not found")
    entries = {_normalised(line) for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.lstrip().startswith("#")}
    if not entries:
        raise DataError(path, "empty noise list")
    return entries


def noise_mask(paths: list[str], noise_list: str | Path) -> np.ndarray:
    """True for each of ``paths`` that the noise list names (``read_noise_list``), by its relative path
    or, for an entry without a folder, by its file name. A list that names none of the paths is
    refused: it belongs to another set or another root, and dropping nothing would go unnoticed."""
    noise = read_noise_list(noise_list)
    by_path = {entry for entry in noise if "/" in entry}
    by_name = noise - by_path
    normalised = [_normalised(p) for p in paths]
    mask = np.fromiter((p in by_path or p.rsplit("/", 1)[-1] in by_name for p in normalised), bool, len(paths))
    if len(paths) and not mask.any():
        example = next(iter(sorted(noise)))
        raise DataError(noise_list, f"none of its {len(noise)} entries (e.g. {example!r}) is among the "
                                    f"{len(paths)} images of this set (e.g. {normalised[0]!r}): wrong list or root?")
    return mask


@dataclass(frozen=True)
class NoiseDrop:
    """A probe frame and a distractor list less the images their noise lists name."""

    probes: pd.DataFrame
    distractors: list[str]
    probe_keep: np.ndarray  # bool, one per row given
    distractor_keep: np.ndarray

    @property
    def removed(self) -> dict[str, int]:
        return {"probe": int((~self.probe_keep).sum()), "distractor": int((~self.distractor_keep).sum())}


def drop_noise(probes: pd.DataFrame, distractors: list[str], probe_noise: str | Path | None = None,
               distractor_noise: str | Path | None = None) -> NoiseDrop:
    """``probes`` (``path``, ``identity``) and ``distractors`` less what each noise list (if given) names."""

    def keep(paths: list[str], noise_list: str | Path | None) -> np.ndarray:
        if noise_list is None:
            return np.ones(len(paths), dtype=bool)
        return ~noise_mask(paths, noise_list)

    probe_keep, distractor_keep = keep(probes["path"].tolist(), probe_noise), keep(distractors, distractor_noise)
    return NoiseDrop(probes[probe_keep].reset_index(drop=True),
                     [path for path, k in zip(distractors, distractor_keep, strict=True) if k], probe_keep, distractor_keep)


def _normalised(path: str) -> str:
    path = path.strip().replace("\\", "/")
    return path[2:] if path.startswith("./") else path


def megaface_manifest(probes: pd.DataFrame, distractors: list[str]) -> pd.DataFrame:
    """Probe rows then distractor rows, paths under ``probes/`` and ``distractors/`` (see module doc)."""
    frame = pd.concat([
        pd.DataFrame({"path": PROBES + "/" + probes["path"], "identity": probes["identity"], "split": "probe"}),
        pd.DataFrame({"path": [f"{DISTRACTORS}/{p}" for p in distractors], "identity": UNKNOWN_IDENTITY,
                      "split": "distractor"}),
    ], ignore_index=True)
    frame["label"] = np.int64(-1)
    return frame[["path", "label", "identity", "split"]]


def link_image_roots(folder: str | Path, roots: Mapping[str, str | Path]) -> Path:
    """Make ``folder/<name>`` a symbolic link to each root (replaced atomically); returns ``folder``.

    The links are made on every run, so a data set mounted elsewhere needs no new manifest.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in roots.items():
        target = Path(target).resolve()
        if not target.is_dir():
            raise DataError(target, f"{name} image root not found")
        temporary = folder / f".{name}.{os.getpid()}.tmp"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target, target_is_directory=True)
        os.replace(temporary, folder / name)
    return folder


def load_listed_features(source: str | Path, paths: list[str], suffix: str = "") -> np.ndarray:
    """Features of the listed images: rows of a ``.npy`` in list order, or devkit files ``<source>/<path><suffix>``."""
    source = Path(source)
    if source.is_dir():
        if not suffix:
            raise DataError(source, "a folder of devkit feature files needs the file suffix (e.g. _arcface.bin)")
        rows = [read_devkit_feature(source / f"{p}{suffix}") for p in paths]
        dims = {len(r) for r in rows}
        if len(dims) > 1:
            raise DataError(source, f"devkit feature files of different dimensions {sorted(dims)}")
        return np.stack(rows)
    from semiface.features import load_features

    features = load_features(source, mmap=True)
    if len(features) != len(paths):
        raise DataError(source, f"{len(features)} feature rows but the list has {len(paths)} images")
    return features


def read_devkit_feature(path: Path) -> np.ndarray:
    """One MegaFace devkit feature file (a float32 column vector behind a 4 x int32 header)."""
    if not path.is_file():
        raise DataError(path, "feature file not found")
    data = path.read_bytes()
    if len(data) < 4 * _DEVKIT_HEADER:
        raise DataError(path, f"{len(data)} bytes: too short for a devkit feature file")
    rows, cols, _, kind = np.frombuffer(data[: 4 * _DEVKIT_HEADER], dtype=np.int32)
    values = np.frombuffer(data[4 * _DEVKIT_HEADER:], dtype=np.float32)
    if kind != _CV_32F or rows * cols != len(values) or min(rows, cols) != 1:
        raise DataError(path, f"not a float32 devkit feature (header rows {rows}, cols {cols}, type {kind}; "
                              f"{len(values)} values)")
    return values.copy()


def evaluate_megaface_features(probe_list: str | Path, probe_features: str | Path, distractor_list: str | Path,
                               distractor_features: str | Path, out_dir: str | Path, suffix: str = "",
                               probe_noise: str | Path | None = None, distractor_noise: str | Path | None = None,
                               **options: Any) -> dict[str, Any]:
    """Identification of precomputed FaceScrub features against precomputed MegaFace distractor features,
    less the images the noise lists name (their counts go in the summary as ``noise_removed``).

    ``options`` go to ``recognition_eval.report.evaluate`` (sizes, seed, device, ...).
    """
    from recognition_eval.report import evaluate

    probes = read_image_list(probe_list, with_identities=True)
    distractors = read_image_list(distractor_list, with_identities=False)["path"].tolist()
    kept = drop_noise(probes, distractors, probe_noise, distractor_noise)
    probe_x = _kept_features(probe_features, probes["path"].tolist(), suffix, kept.probe_keep)
    distractor_x = _kept_features(distractor_features, distractors, suffix, kept.distractor_keep)
    if probe_x.shape[1] != distractor_x.shape[1]:
        raise DataError(distractor_features, f"{distractor_x.shape[1]} feature columns, the probes have {probe_x.shape[1]}")
    features = np.concatenate([np.asarray(probe_x, np.float32), np.asarray(distractor_x, np.float32)])
    summary = evaluate(features, megaface_manifest(kept.probes, kept.distractors), out_dir,
                       provenance={"noise_removed": kept.removed}, **options)
    return {**summary, "noise_removed": kept.removed}


def _kept_features(source: str | Path, paths: list[str], suffix: str, keep: np.ndarray) -> np.ndarray:
    """``load_listed_features`` rows of the kept paths (the devkit files of dropped images are not read)."""
    if Path(source).is_dir():
        return load_listed_features(source, [path for path, k in zip(paths, keep, strict=True) if k], suffix)
    features = load_listed_features(source, paths, suffix)
    return features if keep.all() else np.asarray(features[keep])


def image_root(source: str | Path, root: str | Path | None, name: str) -> Path:
    """The folder the images of ``source`` are under: the folder itself, or for a list its ``root``
    (``name``: the option that gives it, named in the error when it is missing)."""
    source = Path(source)
    if source.is_dir():
        return source
    if root is None:
        raise DataError(source, f"a list of images needs {name}: the folder its paths are relative to")
    return Path(root)


def _is_image(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
