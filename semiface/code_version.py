"""The version of the code a run executes: its git commit and whether the checkout had local changes.

Recorded on every run and stage (never in a cache key), so that a result can be traced to the code
that produced it. Outside a git checkout (an image built without ``.git``, an installed wheel) the
commit is ``"unknown"``, unless the environment names it: ``SEMIFACE_GIT_COMMIT`` (e.g. set by a
Docker build argument) is then taken as it is, with the tree taken as clean.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

COMMIT_ENV = "SEMIFACE_GIT_COMMIT"
UNKNOWN = "unknown"
REPO_ROOT = Path(__file__).resolve().parents[1]
_GIT_SECONDS = 30


def code_version(root: str | Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha or "unknown", "dirty": True / False, or None when unknown}`` of the checkout at ``root``.

    ``dirty``: a tracked file differs from the commit (staged or not); untracked files do not count,
    as for ``git describe --dirty``. A checkout is only ``root``'s own: ``root`` inside another
    project's repository (an installed copy) is unknown, not that project's commit.
    """
    named = os.environ.get(COMMIT_ENV, "").strip()
    if named:
        return {"commit": named, "dirty": False}
    found = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    lines = found.splitlines() if found else []
    if len(lines) != 2 or Path(lines[0]).resolve() != Path(root).resolve():
        return {"commit": UNKNOWN, "dirty": None}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"commit": lines[1], "dirty": None if status is None else bool(status)}


def version_tag(version: dict[str, Any]) -> str:
    """A short label for a flow run's tags: ``code:1a2b3c4d5e6f``, ``code:1a2b3c4d5e6f-dirty`` or ``code:unknown``."""
    commit = str(version.get("commit") or UNKNOWN)
    short = commit if commit == UNKNOWN else commit[:12]
    return f"code:{short}{'-dirty' if version.get('dirty') else ''}"


def _git(root: str | Path, *args: str) -> str | None:
    """git's trimmed output, or None without git, outside a checkout, or on any git error."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=_GIT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
