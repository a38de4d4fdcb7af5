"""What a run checks on its worker before any stage: the device it was sent to, the evaluation set its
Prefect Variables name, and distractor-set sizes against the set they are drawn from.

A deployment that needs a GPU (``device: cuda``) and is picked up by a worker without one fails here,
naming the host and why, instead of training on the CPU or failing hours later in a stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiface.errors import ConfigError

# ``eval_set={"from_variables": PREFIX}`` reads each key of an evaluation set from the Prefect Variable
# ``<PREFIX>_<key>`` when the run starts (``prefect variable set megaface_probes /data/facescrub``).
FROM_VARIABLES = "from_variables"
REQUIRED_EVAL_KEYS = ("probes", "distractors")
GPU_WORKER_HINT = ("a run with device='cuda' needs a worker on a GPU machine: start the workers of the GPU pool "
                   "there, one per GPU (docs/deployment.md), or run with device='cpu'")


def check_device_here(device: str) -> None:
    """Fail unless this process can use ``device`` (``cuda``, ``cuda:N``); ``auto`` and ``cpu`` always can."""
    if not device.startswith("cuda"):
        return
    from semiface.devices import resolve_device

    try:
        resolve_device(device)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; {GPU_WORKER_HINT}") from exc


def runtime_eval_set(eval_set: dict[str, Any] | None) -> dict[str, Any] | None:
    """``eval_set`` as given, or, for ``{"from_variables": PREFIX}``, the set the Variables
    ``PREFIX_probes``, ``PREFIX_distractors`` (required) and ``PREFIX_probe_root``, ``PREFIX_distractor_root``,
    ``PREFIX_probe_noise``, ``PREFIX_distractor_noise`` (when set) hold now."""
    if not eval_set or FROM_VARIABLES not in eval_set:
        return eval_set
    from prefect.variables import Variable

    from tasks.prepare_eval import EVAL_SET_KEYS

    if set(eval_set) != {FROM_VARIABLES} or not isinstance(eval_set[FROM_VARIABLES], str):
        raise ConfigError(f"eval_set: {{{FROM_VARIABLES!r}: PREFIX}} takes no other key, got {eval_set}")
    prefix = eval_set[FROM_VARIABLES]
    values = {key: Variable.get(f"{prefix}_{key}") for key in EVAL_SET_KEYS}
    missing = [f"{prefix}_{key}" for key in REQUIRED_EVAL_KEYS if not values[key]]
    if missing:
        raise ConfigError(f"eval_set: the Prefect variable(s) {missing} are not set; e.g. prefect variable set "
                          f"{prefix}_probes /data/megaface/facescrub_images (see docs/deployment.md)")
    return {key: str(value) for key, value in values.items() if value}


@dataclass(frozen=True)
class DistractorCount:
    """How many distractor images a run's evaluation draws from, and where that number comes from."""

    count: int
    source: str


def known_distractor_count(data_source: str, data_path: str | None, data_options: dict[str, Any],
                           eval_set: dict[str, Any] | None, seed: int) -> DistractorCount | None:
    """The distractor images of this run, where they are known without listing a folder: a MegaFace
    devkit list (less its noise list), the demo's settings, or a RecordIO source's identity records and
    the split shares (the split is drawn as ``prepare_data`` draws it). None otherwise (an image folder,
    a folder of distractors: ``check_prepared_distractors`` counts them once prepared)."""
    if eval_set:
        return _listed_distractors(eval_set)
    if data_source == "demo":
        from backbone.data.demo_faces import DemoConfig

        config = DemoConfig(**data_options)
        return DistractorCount(config.n_distractor_ids * config.distractor_images_per_id,
                               f"the demo's {config.n_distractor_ids} distractor identities")
    if data_source == "recordio" and data_path:
        return _recordio_distractors(data_path, data_options, seed)
    return None


def check_distractor_sizes(sizes: list[int], known: DistractorCount | None, explicit: bool) -> None:
    """ConfigError when a requested size exceeds the distractors there are. Sizes the caller did not
    choose (the flow's defaults, up to 1M) are capped by the evaluation instead, which says so."""
    if known is None or not explicit:
        return
    too_large = sorted(size for size in sizes if size > known.count)
    if too_large:
        fitting = [size for size in sizes if size <= known.count] or [known.count]
        raise ConfigError(f"distractor_sizes: {too_large} larger than the {known.count:,} distractor images of "
                          f"{known.source}; pass sizes up to {known.count} (e.g. {fitting}) or a larger "
                          "distractor set")


def check_prepared_distractors(sizes: list[int], explicit: bool, summary: dict[str, Any], where: str) -> None:
    """``check_distractor_sizes`` against a prepared manifest's count (its stage summary's ``images``)."""
    check_distractor_sizes(sizes, DistractorCount(int(summary["images"]["distractor"]), where), explicit)


def _listed_distractors(eval_set: dict[str, Any]) -> DistractorCount | None:
    from recognition_eval.megaface import list_distractors, noise_mask

    source = Path(str(eval_set["distractors"]))
    if source.is_dir():
        return None
    paths, _ = list_distractors(source, eval_set.get("distractor_root") or source.parent)
    noise = eval_set.get("distractor_noise")
    removed = int(noise_mask(paths, noise).sum()) if noise else 0
    less = f", less {removed} named by {noise}" if noise else ""
    return DistractorCount(len(paths) - removed, f"the list {source}{less}")


def _recordio_distractors(data_path: str, data_options: dict[str, Any], seed: int) -> DistractorCount | None:
    import pandas as pd

    from backbone.data.recordio import RecordIOReader, insightface_index
    from tasks.prepare_data import data_options_for, identity_roles, required_inputs

    options = data_options_for("recordio", data_options)
    record = required_inputs("recordio", data_path, options)["record"]
    with RecordIOReader(record) as reader:
        ranges = insightface_index(reader).identity_ranges
    if ranges is None:  # a plain im2rec file: the identities are known only from every image's header
        return None
    counts = pd.Series(ranges[:, 1] - ranges[:, 0], index=[str(c) for c in range(len(ranges))]).sort_index()
    roles = identity_roles(counts, options, seed)
    distractors = [name for name, role in roles.items() if role == "distractor"]
    return DistractorCount(int(counts.loc[distractors].sum()),
                           f"{record}'s {len(distractors):,} distractor identities (share {options['distractor']})")
