"""Stage keys through the ``semi-supervised`` flow on an image folder (CPU, tiny, under a temporary Prefect
server): a copy of the folder without its timestamps keeps every stage cached; a manifest recomputed to the
same bytes (refreshed, or keyed anew by a file it does not list) keeps the trained backbone; changed image
bytes retrain it."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.semi_supervised import semi_supervised

SETTINGS = {
    "data_source": "folder", "data_options": {"labelled": 2, "unlabelled": 0, "probe": 1, "distractor": 1},
    "labels": "labelled_only", "backbone": "resnet10t", "image_size": 32, "epochs": 1,
    "train_options": {"batch_size": 8}, "distractor_sizes": [4], "device": "cpu", "num_workers": 0,
    "extract_batch_size": 64,
}


def stage_states(state) -> dict[str, set[str]]:
    """Task name -> the names of its runs' final states (Completed, Cached) in the flow run of ``state``."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])), limit=100)
    states: dict[str, set[str]] = {}
    for run in runs:
        states.setdefault(run.name.split("[")[0], set()).add(run.state.name)
    return states


def test_keys_follow_the_images_bytes_not_their_copy_or_a_recomputed_manifest(prefect_server, tmp_path, face_folders):
    faces, _, _ = face_folders
    run_dir = tmp_path / "run"

    def run(data: Path, **extra) -> dict[str, set[str]]:
        state = semi_supervised(run_dir=str(run_dir), data_path=str(data), **SETTINGS, **extra, return_state=True)
        state.result()
        return stage_states(state)

    first = run(faces)
    assert first["train-backbone"] == {"Completed"}
    copy = Path(shutil.copytree(faces, tmp_path / "copy", copy_function=shutil.copyfile))  # no timestamps kept
    assert {s for states in run(copy).values() for s in states} == {"Cached"}

    # prepare_data computed again (refreshed; then keyed anew by a file it does not list): the same
    # manifest bytes and images, so nothing below it is.
    def only_prepare_data_computed(states: dict[str, set[str]]) -> bool:
        return states.pop("prepare-data") == {"Completed"} and {s for v in states.values() for s in v} == {"Cached"}

    assert only_prepare_data_computed(run(copy, refresh=["prepare_data"]))
    (copy / "README.txt").write_text("where these faces come from")
    assert only_prepare_data_computed(run(copy))

    # Two images swap their bytes: the manifest is the same, the images are not: the backbone retrains.
    one, two = sorted(copy.glob("*/*"))[:2]
    swapped = one.read_bytes()
    one.write_bytes(two.read_bytes())
    two.write_bytes(swapped)
    states = run(copy)
    assert states["prepare-data"] == {"Completed"} and states["train-backbone"] == {"Completed"}
