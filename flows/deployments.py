"""What a sweep needs to know about a deployment before it starts runs of it: its parameters and the
folder its runs write to, resolved the way a worker resolves it.

A worker starts a flow run in its working directory (a process pool's ``working_dir`` job variable,
else a temporary folder), then runs the deployment's pull steps: ``set_working_directory`` moves it
to the given folder (an absolute path, or one relative to the folder it was in), while steps that
fetch the code (``git_clone``, ``pull_from_*``) put it in a folder of their own for that run, and
without pull steps the worker runs where it finds the code. A relative ``run_dir`` is relative to
where the run is left; ``prefect deploy`` from a project folder gives a deployment one
``set_working_directory`` step to that folder, so its run folders resolve to the project folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiface.errors import ConfigError


@dataclass(frozen=True)
class DeploymentTarget:
    """A deployment as a sweep sees it: its stored parameters and the folder its runs start in (None: unknown)."""

    name: str
    parameters: dict[str, Any]
    working_directory: Path | None

    def run_dir(self, default: str) -> Path:
        """The deployment's run folder as an absolute path (``default``: the flow's, when the deployment
        sets none); ConfigError when it is relative to a folder that cannot be known from here."""
        run_dir = Path(str(self.parameters.get("run_dir") or default)).expanduser()
        if run_dir.is_absolute():
            return run_dir
        if self.working_directory is None:
            raise ConfigError(
                f"run_dir: deployment {self.name!r} keeps its run folder {str(run_dir)!r} relative to a working "
                "directory that cannot be known before a run (no set_working_directory pull step to an absolute "
                "folder, or its code is fetched for each run): pass run_dir, a folder every worker sees")
        return self.working_directory / run_dir


def read_deployment(name: str) -> DeploymentTarget:
    """``name`` ("flow/deployment") read from the Prefect API (ConfigError when the server has no such deployment)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise ConfigError(f"deployment: {name!r} not found on the Prefect server") from None
        pool_default = None
        if deployment.work_pool_name:
            pool = client.read_work_pool(deployment.work_pool_name)
            pool_default = (pool.base_job_template.get("variables", {}).get("properties", {})
                            .get("working_dir", {}).get("default"))
    working_dir = (deployment.job_variables or {}).get("working_dir") or pool_default
    return DeploymentTarget(name, dict(deployment.parameters or {}),
                            working_directory(deployment.pull_steps or [], working_dir))


def working_directory(pull_steps: Iterable[Mapping[str, Any]], start: str | None) -> Path | None:
    """The folder a run of a deployment is in after its pull steps, starting in ``start`` (the job's
    ``working_dir``; None: a temporary folder); None when it cannot be known before the run."""
    here = Path(start).expanduser() if start and "{{" not in str(start) else None
    if here is not None and not here.is_absolute():
        here = None
    steps = list(pull_steps)
    if not steps:
        return None  # the worker picks the job's folder or the deployment's path, whichever holds the code
    for step in steps:
        ((function, arguments),) = step.items()
        if function.rsplit(".", 1)[-1] != "set_working_directory":
            return None  # git_clone, pull_from_*: a folder of the run's own
        directory = str((arguments or {}).get("directory", ""))
        if not directory or "{{" in directory:
            return None
        target = Path(directory).expanduser()
        here = target if target.is_absolute() else (here / target if here is not None else None)
    return here
