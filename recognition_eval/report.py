"""Evaluate one features file against its manifest, and compare several evaluations.

``evaluate`` writes to ``out_dir``: results.json, identification.parquet (distractor-set size x
rank-1..rank-k), verification.parquet (TAR at FAR), rank1_vs_distractors.png, cmc.png, roc.png; it
returns a small JSON-ready summary. ``compare`` draws several results.json on one plot and one table.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recognition_eval.identification import DEFAULT_MAX_RANK, DEFAULT_SIZES, IdentificationResult
from recognition_eval.inputs import EvaluationWarning
from recognition_eval.overlap import DEFAULT_CENTROID_THRESHOLD, OverlapReport, check_identity_overlap
from recognition_eval.plots import plot_cmc, plot_comparison, plot_rank1_vs_distractors, plot_roc, size_label
from recognition_eval.protocol import ProtocolResult, run_protocol
from recognition_eval.scan import DEFAULT_MAX_BYTES, ProgressReport
from recognition_eval.verification import DEFAULT_FARS, VerificationResult
from semiface.atomic import atomic_open, save_json, save_parquet
from semiface.errors import DataError
from semiface.features import load_features
from semiface.manifest import known_identity_mask, read_manifest, validate_manifest
from semiface.markdown import markdown_table

log = logging.getLogger(__name__)

TRAIN_SPLITS = ("labelled", "unlabelled")


def evaluate(
    features: np.ndarray | Path | str,
    manifest: pd.DataFrame | Path | str,
    out_dir: Path | str,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seed: int = 0,
    device: str = "auto",
    train_identities: Iterable[str] | None = None,
    max_rank: int = DEFAULT_MAX_RANK,
    fars: Sequence[float] = DEFAULT_FARS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    overlap_threshold: float = DEFAULT_CENTROID_THRESHOLD,
    progress: ProgressReport = False,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """MegaFace-style evaluation of the ``probe`` rows against the ``distractor`` rows of a manifest.

    ``features`` rows follow the manifest's rows. The overlap guard compares probe identities with
    ``train_identities`` plus the identities of the manifest's labelled/unlabelled rows (by name), and
    probe centroids with the labelled classes' centroids (by features). Warnings (left-out probes,
    renormalised rows, overlaps) are emitted and recorded in results.json under "notes".
    ``provenance``: what the caller knows of how the rows were chosen (e.g. ``noise_removed``), recorded
    in results.json under "inputs".
    """
    features, features_name = _features(features)
    frame, manifest_name = _manifest(manifest)
    if len(features) != len(frame):
        raise DataError(features_name, f"{len(features)} feature rows but the manifest has {len(frame)} rows")
    split = frame["split"].to_numpy()
    probe_rows = np.flatnonzero(split == "probe")
    distractor_rows = np.flatnonzero(split == "distractor")
    if len(probe_rows) == 0:
        raise DataError(manifest_name, "no rows with split == 'probe'")
    if len(distractor_rows) == 0:
        raise DataError(manifest_name, "no rows with split == 'distractor': identification needs distractors")
    probe_features = np.asarray(features[probe_rows], dtype=np.float32)
    probe_identities = frame["identity"].to_numpy()[probe_rows]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationWarning)
        overlap = _overlap(
            frame, features, probe_features, probe_identities, train_identities, overlap_threshold
        )
        result = run_protocol(
            probe_features,
            probe_identities,
            features,
            distractor_rows,
            sizes=sizes,
            max_rank=max_rank,
            fars=fars,
            seed=seed,
            device=device,
            max_bytes=max_bytes,
            probe_name=f"{features_name} (probe rows)",
            distractor_name=features_name,
            progress=progress,
        )
    notes = [str(w.message) for w in caught if issubclass(w.category, EvaluationWarning)]
    for note in notes:
        warnings.warn(note, EvaluationWarning, stacklevel=2)
        log.warning(note)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = _summary(result, overlap, out_dir)
    save_json(
        out_dir / "results.json",
        {
            "summary": summary,
            "identification": result.identification.to_dict(),
            "verification": result.verification.to_dict(),
            "overlap": overlap.to_dict(),
            "notes": notes,
            "inputs": {
                "features": features_name,
                "manifest": manifest_name,
                "n_probe_rows": len(probe_rows),
                "n_distractor_rows": len(distractor_rows),
                "n_renormalised_probe_rows": result.probes.n_renormalised,
                "dim": int(features.shape[1]),
                "device": result.device,
                "seed": seed,
                **(provenance or {}),
            },
        },
    )
    save_parquet(out_dir / "identification.parquet", identification_table(result.identification))
    save_parquet(out_dir / "verification.parquet", verification_table(result.verification))
    _plots(result, out_dir)
    return summary


def identification_table(result: IdentificationResult) -> pd.DataFrame:
    """One row per distractor-set size: rank_1 .. rank_k."""
    table = pd.DataFrame({"n_distractors": np.asarray(result.sizes, dtype=np.int64)})
    for r in range(1, result.max_rank + 1):
        table[f"rank_{r}"] = result.cmc[:, r - 1]
    return table


def verification_table(result: VerificationResult) -> pd.DataFrame:
    """One row per FAR: TAR (NaN where not measurable), threshold, achieved FAR, counts."""
    return pd.DataFrame(
        {
            "far": result.fars,
            "tar": result.tar,
            "measurable": result.measurable,
            "threshold": result.thresholds,
            "achieved_far": result.achieved_far,
            "n_positives": result.n_positives,
            "n_negatives": result.n_negatives,
        }
    )


def compare(results: Mapping[str, Path | str], out_dir: Path | str) -> Path:
    """Draw several results.json on one plot and one table; returns out_dir/comparison.json.

    Also writes comparison.md, comparison.parquet and comparison.png (rank-1 vs distractors + ROC).
    """
    if not results:
        raise DataError("compare", "no results to compare")
    loaded = {label: _read_results(Path(path)) for label, path in results.items()}
    table = comparison_table(loaded)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_parquet(out_dir / "comparison.parquet", table)
    with atomic_open(out_dir / "comparison.md", "w", encoding="utf-8") as handle:
        handle.write(rates_markdown(table))
    plot_comparison(
        {label: (r["identification"]["sizes"], r["identification"]["rank1"]) for label, r in loaded.items()},
        {
            label: (r["verification"]["roc_far"], _floats(r["verification"]["roc_tar"]))
            for label, r in loaded.items()
        },
        out_dir / "comparison.png",
    )
    rows = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        for row in table.to_dict("records")
    ]
    return save_json(
        out_dir / "comparison.json",
        {"sources": {label: str(path) for label, path in results.items()}, "rows": rows},
    )


def comparison_table(loaded: Mapping[str, dict]) -> pd.DataFrame:
    """Rows: labels; columns: rank-1 at every size seen, TAR at every FAR seen (NaN where absent)."""
    sizes = sorted({s for r in loaded.values() for s in r["identification"]["sizes"]})
    fars = sorted({f for r in loaded.values() for f in r["verification"]["fars"]}, reverse=True)
    records = []
    for label, r in loaded.items():
        rank1 = dict(zip(r["identification"]["sizes"], r["identification"]["rank1"], strict=True))
        tar = dict(zip(r["verification"]["fars"], _floats(r["verification"]["tar"]), strict=True))
        record: dict[str, Any] = {"label": label}
        record.update({f"rank1@{size_label(s)}": rank1.get(s, np.nan) for s in sizes})
        record.update({f"TAR@FAR={f:.0e}": tar.get(f, np.nan) for f in fars})
        records.append(record)
    return pd.DataFrame.from_records(records)


def rates_markdown(table: pd.DataFrame) -> str:
    """Markdown with rates in percent; 'n/m' where not measured or not measurable."""

    def cell(value: Any) -> str:
        if isinstance(value, str):
            return value
        return "n/m" if value is None or np.isnan(value) else f"{100 * value:.2f}"

    return markdown_table(table.to_dict("records"), cell=cell) + (
        "\nRates in %; n/m: not measured or not measurable (FAR below 1 / negatives).\n"
    )


def _features(features: np.ndarray | Path | str) -> tuple[np.ndarray, str]:
    if isinstance(features, str | Path):
        return load_features(features, mmap=True), str(features)
    features = np.asarray(features)
    if features.ndim != 2:
        raise DataError("features", f"expected a 2-D [N, D] array, found shape {features.shape}")
    return features, "features"


def _manifest(manifest: pd.DataFrame | Path | str) -> tuple[pd.DataFrame, str]:
    if isinstance(manifest, str | Path):
        return read_manifest(manifest), str(manifest)
    return validate_manifest(manifest, "manifest"), "manifest"


def _overlap(
    frame: pd.DataFrame,
    features: np.ndarray,
    probe_features: np.ndarray,
    probe_identities: np.ndarray,
    train_identities: Iterable[str] | None,
    threshold: float,
) -> OverlapReport:
    in_train = frame["split"].isin(TRAIN_SPLITS).to_numpy()
    names = set(frame["identity"][in_train & known_identity_mask(frame["identity"])])
    names |= set(train_identities or ())
    labels = np.where(frame["split"].to_numpy() == "labelled", frame["label"].to_numpy(), -1)
    has_classes = bool((labels >= 0).any())
    return check_identity_overlap(
        probe_identities,
        train_identities=names if names or train_identities is not None else None,
        probe_features=probe_features if has_classes else None,
        train_features=features if has_classes else None,
        train_labels=labels if has_classes else None,
        threshold=threshold,
    )


def _summary(result: ProtocolResult, overlap: OverlapReport, out_dir: Path) -> dict[str, Any]:
    ident, verif = result.identification, result.verification
    return {
        "rank1": {size_label(s): float(v) for s, v in zip(ident.sizes, ident.rank1, strict=True)},
        "largest_size": ident.sizes[-1],
        "rank1_at_largest": float(ident.rank1[-1]),
        "tar_at_far": {
            f"{f:.0e}": (None if np.isnan(t) else float(t))
            for f, t in zip(verif.fars, verif.tar, strict=True)
        },
        "n_pairs": ident.n_pairs,
        "n_negatives": verif.n_negatives,
        "min_measurable_far": verif.min_measurable_far,
        "n_left_out_identities": len(ident.left_out_identities),
        "overlap_found": overlap.found,
        "results_json": str(out_dir / "results.json"),
    }


def _plots(result: ProtocolResult, out_dir: Path) -> None:
    ident, verif = result.identification, result.verification
    plot_rank1_vs_distractors({"rank-1": (ident.sizes, ident.rank1)}, out_dir / "rank1_vs_distractors.png")
    plot_cmc(ident.cmc[-1], ident.sizes[-1], out_dir / "cmc.png")
    plot_roc({"ROC": (verif.roc_far, verif.roc_tar)}, out_dir / "roc.png")


def _read_results(path: Path) -> dict:
    if not path.is_file():
        raise DataError(path, "results file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from exc
    for section, key in (("identification", "rank1"), ("identification", "sizes"), ("verification", "tar")):
        if key not in data.get(section, {}):
            raise DataError(path, f"missing {section}.{key}: not a recognition_eval results.json")
    return data


def _floats(values: Sequence[float | None]) -> list[float]:
    return [np.nan if v is None else float(v) for v in values]
