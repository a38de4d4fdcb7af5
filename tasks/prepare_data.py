"""Stage 1, prepare data: turn the chosen source into one manifest (and, for features, one feature file).

Sources: ``demo`` (generated faces), ``folder`` (one sub-folder per identity), ``recordio``
(InsightFace ``train.rec``/``train.idx``), ``features`` (learn-to-cluster ``.bin``/``.meta``:
no images, so no backbone stages).
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task

from semiface.errors import ConfigError, DataError, reject_unknown
from semiface.features import check_features, l2_normalize, load_features, load_meta, save_features
from semiface.manifest import SPLITS, read_manifest, write_manifest
from semiface.markdown import markdown_table
from tasks.common import StageContext, execute, stage_options
from tasks.stage_cache import IMAGE_DIGEST, StageResult, StageSpec, StageStore, content_digest_of

SOURCES = ("demo", "folder", "recordio", "features")
# learn-to-cluster layout: <root>/features/<part>.bin and <root>/labels/<part>.meta
# dim None: each part's dimension is read from its .bin size and its .meta's label count.
FEATURE_OPTIONS = {"labelled_part": "part0_train", "unlabelled_part": "part1_test", "dim": None}
# folder / RecordIO sources hold labelled identities only: they are split by identity into the four
# roles (shares of the identities; probe identities need >= 2 images; probe and distractor 0 when the
# flow's eval_set evaluates on a MegaFace-layout set instead). "verify" decodes every image
# of a folder once (corrupt files are named); "max_identities" keeps a random subset (for trials).
SPLIT_OPTIONS = {"labelled": 0.1, "unlabelled": 0.7, "probe": 0.1, "distractor": 0.1, "max_identities": None,
                 "verify": True}
RECORD_FILE = "train.rec"


def data_options_for(source: str, options: dict[str, Any]) -> dict[str, Any]:
    """The source's options with defaults filled in; unknown names raise ConfigError."""
    if source == "demo":
        from backbone.data.demo_faces import DemoConfig

        reject_unknown(options, {f.name for f in fields(DemoConfig)}, "data_options (demo)")
        DemoConfig(**options)  # validates values
        return dict(options)
    if source == "features":
        reject_unknown(options, set(FEATURE_OPTIONS), "data_options (features)")
        return {**FEATURE_OPTIONS, **options}
    if source in ("folder", "recordio"):
        reject_unknown(options, set(SPLIT_OPTIONS), f"data_options ({source})")
        merged = {**SPLIT_OPTIONS, **options}
        shares = [merged[s] for s in SPLITS]
        if any(not isinstance(v, int | float) or v < 0 for v in shares) or merged["labelled"] <= 0 \
                or (merged["probe"] > 0) != (merged["distractor"] > 0):
            raise ConfigError(f"data_options ({source}): split shares {dict(zip(SPLITS, shares, strict=True))} "
                              "must be >= 0, with labelled > 0 and probe and distractor both > 0 (or both 0 when "
                              "eval_set evaluates on another data set)")
        return merged
    raise ConfigError(f"data_source: {source!r} is not one of {list(SOURCES)}")


def required_inputs(source: str, data_path: str | None, options: dict[str, Any]) -> dict[str, Path]:
    """The external files/folders a source reads (checked to exist before anything runs)."""
    if source == "demo":
        return {}
    if not data_path:
        raise ConfigError(f"data_path: required for data_source={source!r}")
    root = Path(data_path)
    if source == "features":
        opts = {**FEATURE_OPTIONS, **options}
        return {
            f"{role}_{kind}": root / folder / f"{opts[f'{role}_part']}{ext}"
            for role in ("labelled", "unlabelled")
            for kind, folder, ext in (("features", "features", ".bin"), ("labels", "labels", ".meta"))
        }
    if source == "recordio":
        rec = root / RECORD_FILE if root.is_dir() else root
        return {"record": rec, "index": rec.with_suffix(".idx")}
    return {"data": root}


def check_inputs(source: str, data_path: str | None, options: dict[str, Any]) -> None:
    """Raise DataError naming the first missing input of ``source`` (nothing is read or written)."""
    for path in required_inputs(source, data_path, data_options_for(source, options)).values():
        if not path.exists():
            raise DataError(path, f"not found (data_source={source!r})")


@task(name="prepare-data", task_run_name="prepare-data[{source}]", tags=["stage", "data"],
      retries=2, retry_delay_seconds=5, **stage_options("prepare_data"))
def prepare_data(ctx: StageContext, source: str, data_path: str | None, options: dict[str, Any],
                 seed: int) -> StageResult:
    """Build the manifest of ``source``; cached on the source's fingerprint and options."""
    options = data_options_for(source, options)
    external = {name: str(path) for name, path in required_inputs(source, data_path, options).items()}
    spec = StageSpec("prepare_data", {"source": source, "options": options, "seed": seed}, (), external,
                     ("tasks.prepare_data",))
    store = StageStore(ctx.cache_root)

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        if source == "demo":
            outputs, summary = _prepare_demo(folder, options)
            root = Path(summary["image_root"])
        elif source == "features":
            return _prepare_features(folder, external, options)
        elif source == "folder":
            from backbone.data.folder import scan_image_folder

            root = Path(external["data"])
            frame = scan_image_folder(root, verify=bool(options["verify"]))
            outputs, summary = _prepare_split(folder, frame, options, seed, image_root=root, record=None)
        else:
            from backbone.data.recordio import record_manifest

            frame = record_manifest(external["record"])
            outputs, summary = _prepare_split(folder, frame, options, seed, image_root=None,
                                              record=Path(external["record"]))
            summary[IMAGE_DIGEST] = content_digest_of({name: store.fingerprint(external[name])
                                                       for name in ("record", "index")})
            return outputs, summary
        summary[IMAGE_DIGEST] = store.files_digest(root, read_manifest(outputs["manifest"])["path"])
        return outputs, summary

    return execute(ctx, spec, compute, _report)


def with_current_inputs(data: StageResult, source: str, data_path: str | None, options: dict[str, Any]) -> StageResult:
    """``data`` whose image root / record file are this run's inputs: a cached manifest is keyed on the
    data's content, not on where it is mounted, so a moved data root must not send readers to the old one.
    Generated demo images live in the stage folder, wherever the run directory is reached from now (the
    recorded root is relative to the working directory the stage ran in)."""
    external = required_inputs(source, data_path, data_options_for(source, options))
    summary = dict(data.summary)
    if source == "demo":
        summary["image_root"] = str(data.path("manifest").parent)
    elif source == "folder":
        summary["image_root"] = str(external["data"])
    elif source == "recordio":
        summary["record_file"] = str(external["record"])
    return replace(data, summary=summary)


def _prepare_demo(folder: Path, options: dict[str, Any]) -> tuple[dict[str, Path], dict[str, Any]]:
    from backbone.data.demo_faces import DemoConfig, generate_demo_dataset

    manifest_path = generate_demo_dataset(folder / "data", DemoConfig(**options))
    return {"manifest": manifest_path}, _describe(read_manifest(manifest_path), image_root=manifest_path.parent)


def _prepare_features(folder: Path, external: dict[str, str], options: dict[str, Any]) -> tuple[dict, dict]:
    """Concatenate labelled then unlabelled learn-to-cluster parts into features.npy + a manifest.

    The unlabelled part's labels are kept only as ground-truth identities (for clustering metrics).
    """
    wanted = None if options["dim"] is None else int(options["dim"])
    dim, blocks, frames = wanted, [], []
    for role in ("labelled", "unlabelled"):
        feats_path, meta_path = Path(external[f"{role}_features"]), Path(external[f"{role}_labels"])
        feats = load_features(feats_path, dim=wanted, mmap=True)
        check_features(feats, feats_path, dim)
        dim = feats.shape[1]  # the unlabelled part must have the labelled part's dimension
        labels = load_meta(meta_path, expected=len(feats))
        blocks.append(l2_normalize(feats))
        part = options[f"{role}_part"]
        frames.append(pd.DataFrame({
            "path": [f"{part}#{i}" for i in range(len(labels))],
            "label": _contiguous(labels) if role == "labelled" else np.full(len(labels), -1, dtype=np.int64),
            "identity": [f"{part}:{v}" for v in labels],  # parts have disjoint people: prefix keeps them apart
            "split": role,
        }))
    manifest_path = write_manifest(pd.concat(frames, ignore_index=True), folder / "manifest.parquet")
    features_path = save_features(folder / "features.npy", np.concatenate(blocks))
    return (
        {"manifest": manifest_path, "features": features_path},
        _describe(read_manifest(manifest_path), image_root=None),
    )


def identities_wanted(identities: int, options: dict[str, Any]) -> dict[str, int]:
    """How many of ``identities`` (after ``max_identities``) each role is given by the shares in ``options``."""
    total = sum(float(options[s]) for s in SPLITS)
    return {s: int(round(identities * float(options[s]) / total)) for s in SPLITS}


def labelled_identities(source: str, data_path: str | None, options: dict[str, Any]) -> int | None:
    """The number of labelled identities ``source`` will give, known before it is read: the demo's setting,
    a folder's identity folders, a RecordIO's ``property`` file; None when it cannot be known
    (features, a RecordIO without ``property``). The inputs must exist (``check_inputs``)."""
    options = data_options_for(source, options)
    if source == "demo":
        from backbone.data.demo_faces import DemoConfig

        return DemoConfig(**options).n_labelled_ids
    if source == "features":
        return None
    inputs = required_inputs(source, data_path, options)
    if source == "folder":
        count = sum(1 for d in Path(inputs["data"]).iterdir() if d.is_dir() and not d.name.startswith("."))
    else:
        from backbone.data.recordio import read_property

        found = read_property(Path(inputs["record"]).parent)
        if found is None:
            return None
        count = found[0]
    if options.get("max_identities"):
        count = min(count, int(options["max_identities"]))
    return identities_wanted(count, options)["labelled"]


def split_identities(frame: pd.DataFrame, options: dict[str, Any], seed: int) -> pd.DataFrame:
    """Give each identity one role by the shares in ``options`` (seeded); labelled ones get labels 0..C-1.

    Probe identities are drawn among those with at least two images (a probe needs a pair).
    """
    role = identity_roles(frame.groupby("identity")["identity"].size(), options, seed)
    out = frame[frame["identity"].isin(role)].copy()
    out["split"] = out["identity"].map(role)
    labelled = sorted(n for n, r in role.items() if r == "labelled")
    out["label"] = out["identity"].map({n: i for i, n in enumerate(labelled)}).fillna(-1).astype(np.int64)
    missing = [s for s in ("labelled", "probe", "distractor") if float(options[s]) > 0 and not (out["split"] == s).any()]
    if missing:
        raise DataError("data", f"{len(role)} identities are too few to fill the split(s) {missing} "
                                f"with shares {[options[s] for s in SPLITS]}")
    order = {s: i for i, s in enumerate(SPLITS)}
    return out.sort_values("split", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)


def identity_roles(counts: pd.Series, options: dict[str, Any], seed: int) -> dict[Any, str]:
    """Identity -> role (``split_identities``' draw) from the images per identity (``counts``, indexed by
    identity, sorted): the split's sizes are known from a source's counts without its manifest."""
    rng = np.random.default_rng([seed, 7])
    names = counts.index.to_numpy()[rng.permutation(len(counts))]
    if options.get("max_identities"):
        names = names[: int(options["max_identities"])]
    wanted = identities_wanted(len(names), options)
    is_probe = np.zeros(len(names), dtype=bool)  # by position: np.isin on 85K names x 4K probes took 20 s
    is_probe[np.flatnonzero(counts.loc[names].to_numpy() >= 2)[: wanted["probe"]]] = True
    probe, rest = names[is_probe], names[~is_probe]
    role = dict.fromkeys(probe, "probe")
    start = 0
    for split in ("labelled", "unlabelled", "distractor"):
        take = rest[start : start + wanted[split]] if split != "distractor" else rest[start:]
        role.update(dict.fromkeys(take, split))
        start += len(take)
    return role


def _prepare_split(folder: Path, frame: pd.DataFrame, options: dict[str, Any], seed: int,
                   image_root: Path | None, record: Path | None) -> tuple[dict[str, Path], dict[str, Any]]:
    manifest_path = write_manifest(split_identities(frame, options, seed), folder / "manifest.parquet")
    summary = _describe(read_manifest(manifest_path), image_root=image_root)
    if record is not None:
        summary.update(has_images=True, record_file=str(record))
    return {"manifest": manifest_path}, summary


def _contiguous(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def _describe(frame: pd.DataFrame, image_root: Path | None) -> dict[str, Any]:
    counts = frame.groupby("split")["identity"].agg(["size", "nunique"])
    if not (frame["split"] == "labelled").any():
        raise DataError("manifest", "no labelled rows: nothing to train the first model on")
    return {
        "image_root": str(image_root) if image_root is not None else None,
        "has_images": image_root is not None,
        "n_rows": len(frame),
        "images": {s: int(counts.loc[s, "size"]) if s in counts.index else 0 for s in SPLITS},
        "identities": {s: int(counts.loc[s, "nunique"]) if s in counts.index else 0 for s in SPLITS},
    }


def _report(result: StageResult) -> str:
    s = result.summary
    rows = [{"split": split, "images": s["images"][split], "identities": s["identities"][split]} for split in SPLITS]
    return f"Manifest: `{result.outputs['manifest']}`\n\n" + markdown_table(rows)
