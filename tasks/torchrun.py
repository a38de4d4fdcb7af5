"""Multi-process (DDP) backbone training from a stage: ``torchrun`` as a child process of the task.

The task keeps the stage lock and writes the stage record; the ranks only train (``python -m
backbone.train``: rank 0 writes the run folder, which resumes after a crash like a single-process run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from backbone.train_config import TrainConfig
from semiface.atomic import save_json

REPO_ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 2.0


def torchrun_command(nproc: int, manifest: Path, image_root: Path | None, run_dir: Path, config_file: Path,
                     record_file: Path | None, log_dir: Path) -> list[str]:
    """The command line of ``nproc`` ranks on this machine training with ``config_file``. torchrun's
    agent keeps its per-rank files (a failed rank's error record) in ``log_dir``; without one it makes
    a ``torchelastic_*`` folder in the system's temp folder on every launch and never removes it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               f"--log-dir={log_dir}", "-m", "backbone.train", "--manifest", str(manifest), "--run-dir", str(run_dir),
               "--config", str(config_file)]
    if image_root is not None:
        command += ["--image-root", str(image_root)]
    if record_file is not None:
        command += ["--record-file", str(record_file)]
    return command


def train_with_torchrun(
    nproc: int,
    manifest: Path,
    image_root: Path | None,
    run_dir: Path,
    config: TrainConfig,
    record_file: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> Path:
    """Train under ``torchrun --nproc_per_node nproc`` and return ``model.pt``; ``on_epoch`` gets each
    finished epoch's summary (read from the run folder's metrics as rank 0 writes them)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = save_json(run_dir.parent / f"{run_dir.name}_config.json", config.to_dict())
    log_file = run_dir.parent / f"{run_dir.name}_torchrun.log"
    log_dir = run_dir.parent / f"{run_dir.name}_torchrun_logs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    metrics, reported = run_dir / "metrics.json", 0
    with open(log_file, "w", encoding="utf-8") as log:
        process = subprocess.Popen(torchrun_command(nproc, manifest, image_root, run_dir, config_file, record_file, log_dir),
                                   cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                finished = process.poll() is not None
                reported = _report_epochs(metrics, reported, on_epoch)
                if finished:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            _stop(process)  # the task was stopped (its timeout, a cancellation): so are the ranks
    if process.returncode != 0:
        tail = "\n".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise TorchrunFailed(f"torchrun with {nproc} processes exited with {process.returncode} "
                             f"(log: {log_file}; per-rank files: {log_dir}):\n{tail}")
    return run_dir / "model.pt"


class TorchrunFailed(RuntimeError):
    """torchrun's ranks failed. Not a semiface error: the cause (a lost rank, NCCL, memory) may pass, so the
    stage is retried (resuming from the last epoch); a rank's own error is in the log the message names."""


def _stop(process: subprocess.Popen) -> None:
    """End a torchrun that is still running: its agent passes SIGTERM on to the ranks."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _report_epochs(metrics: Path, reported: int, on_epoch: Callable[[dict], None] | None) -> int:
    if on_epoch is None or not metrics.is_file():
        return reported
    try:
        history = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # being replaced right now: read it next time
        return reported
    for summary in history[reported:]:
        on_epoch(summary)
    return max(reported, len(history))
