"""A training run folder: what it holds, and whether it may be reused.

* ``run.json``: the training config and a fingerprint of the training rows (and of the init
  checkpoint); a run folder belongs to one config: another config is refused, never overwritten;
* ``checkpoint.pt``: full training state after the last finished epoch (exact resume);
* ``metrics.json``: the per-epoch summaries;
* ``model.pt``: the finished model; when present for the same config, the run is reused.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from backbone.train_config import RUNTIME_FIELDS, TrainConfig
from backbone.training_rows import TrainingRows
from semiface.digests import file_sha256
from semiface.errors import ConfigError, DataError

RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
TRAIN_STATE_FORMAT = "semiface-backbone-train-v1"  # checkpoint.pt (semiface.training.checkpoints)
TRAINING_SPLITS = ("labelled", "unlabelled")  # unlabelled rows carry a label only as pseudo-labels


def run_identity(config: TrainConfig, rows: TrainingRows) -> dict[str, Any]:
    """What a run computes: config, training rows and (when not from scratch) the init checkpoint's content."""
    init_digest = None
    if config.init != "scratch":
        init = Path(config.init)
        if not init.is_file():
            raise DataError(init, "init checkpoint not found (TrainConfig.init: a backbone checkpoint or 'scratch')")
        init_digest = file_sha256(init)
    return {"train_config": config.to_dict(), "num_classes": rows.num_classes,
            "head_classes": list(rows.head_classes), "num_images": len(rows.labels),
            "rows_fingerprint": rows.fingerprint(), "init_sha256": init_digest}


def identity_differences(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    diffs = []
    # a field added to TrainConfig after a run was written had its default value there
    old_cfg = {**{f.name: f.default for f in fields(TrainConfig)}, **found.get("train_config", {})}
    new_cfg = wanted["train_config"]
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if key not in RUNTIME_FIELDS and old_cfg.get(key) != new_cfg.get(key):
            diffs.append(f"{key}: {old_cfg.get(key)!r} there, {new_cfg.get(key)!r} now")
    found = {"head_classes": [found.get("num_classes")], **found}  # runs written before two heads existed
    for key in ("num_classes", "head_classes", "num_images"):
        if found.get(key) != wanted[key]:
            diffs.append(f"{key}: {found.get(key)!r} there, {wanted[key]!r} now")
    if found.get("rows_fingerprint") != wanted["rows_fingerprint"]:
        diffs.append("training rows differ (images, labels or weights)")
    if found.get("init_sha256") != wanted["init_sha256"]:
        diffs.append("init checkpoint content differs")
    return diffs


def resume_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """What ``checkpoint.pt`` must match to be resumed: the run identity without the settings that
    change how a run executes (device, workers, verbosity)."""
    settings = {k: v for k, v in identity["train_config"].items() if k not in RUNTIME_FIELDS}
    return {"settings": settings, **{k: v for k, v in identity.items() if k != "train_config"}}


def check_run_dir(run_dir: Path, identity: dict[str, Any]) -> Path | None:
    """The finished model when ``run_dir`` holds one for this config; None when training must run.

    A run directory of another config (or holding models of unknown origin) is refused.
    """
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        leftovers = [name for name in (MODEL_FILE, CHECKPOINT_FILE) if (run_dir / name).exists()]
        if leftovers:
            raise ConfigError(f"{run_dir}: holds {', '.join(leftovers)} but no {RUN_FILE}; refusing to overwrite")
        return None
    try:
        found = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(run_file, f"not a readable run description ({exc})") from exc
    diffs = identity_differences(found, identity)
    if diffs:
        raise ConfigError(
            f"{run_dir}: already holds a run with a different config ({'; '.join(diffs)}); "
            "use another run directory or remove this one"
        )
    model = run_dir / MODEL_FILE
    return model if model.is_file() else None
