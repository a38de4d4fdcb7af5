"""The Dockerfile and the Docker work-pool template, checked without a Docker engine (none runs here): the
files parse, the make target and paths they name exist, the template's job configuration is the Docker
worker's, it renders with Prefect's own templating, and its container settings build a docker-py host
configuration with the GPU request and the /dev/shm size. What this cannot check: an image build and a
container on a GPU (docs/deployment.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "deploy" / "docker" / "gpu-pool-template.json"
# prefect-docker's DockerWorkerJobConfiguration fields (src/integrations/prefect-docker/prefect_docker/worker.py
# in PrefectHQ/prefect) and BaseJobConfiguration's; read from the package itself when it is installed.
DOCKER_JOB_FIELDS = {"command", "env", "labels", "name", "image", "registry_credentials", "image_pull_policy",
                     "networks", "network_mode", "auto_remove", "volumes", "stream_output", "mem_limit",
                     "memswap_limit", "privileged", "container_create_kwargs"}
DATALOADER_SHM_PER_RANK = 1.2e9  # bytes of /dev/shm a training process's DataLoader workers use (issue 29)


def docker_job_fields() -> set[str]:
    try:
        from prefect_docker.worker import DockerWorkerJobConfiguration
    except ImportError:
        return DOCKER_JOB_FIELDS
    return set(DockerWorkerJobConfiguration.model_fields)


def dockerfile_lines() -> list[str]:
    return [line.strip() for line in (REPO_ROOT / "Dockerfile").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_dockerfile_installs_the_gpu_build_of_the_repository_as_a_non_root_user() -> None:
    lines = dockerfile_lines()
    base = next(line for line in lines if line.startswith("ARG CUDA_IMAGE="))
    assert re.fullmatch(r"ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d\d\.\d\d", base)
    assert "FROM ${CUDA_IMAGE}" in lines
    assert any("python3.11" in line and "python3.11-venv" in line for line in lines)
    make = [line for line in lines if line.startswith("RUN make ")]
    assert make == ["RUN make install-gpu PYTHON=python3.11"]
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^install-gpu:", makefile, re.M) and "PYTHON ?= python3.11" in makefile
    user = lines.index("USER semiface")
    assert lines.index("COPY --chown=semiface:semiface . /app") < user < lines.index(make[0])
    assert any(line.startswith("RUN useradd") and "semiface" in line for line in lines[:user])
    assert "ENV PATH=/app/.venv/bin:$PATH" in lines
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)  # the shared venv link, run outputs and history stay out


def test_the_gpu_pool_template_is_the_docker_workers_and_renders_with_its_defaults() -> None:
    from prefect.utilities.templating import apply_values, find_placeholders

    template = json.loads(TEMPLATE.read_text())
    configuration, properties = template["job_configuration"], template["variables"]["properties"]
    assert set(configuration) <= docker_job_fields()
    used = {placeholder.name for placeholder in find_placeholders(configuration)}
    assert used == set(properties)  # every variable is used, every placeholder is a variable
    defaults = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
    rendered = apply_values(configuration, defaults, remove_notset=True)
    assert rendered["image"] == "semiface:latest" and rendered["auto_remove"] is True
    assert "/srv/semiface/runs:/app/runs" in rendered["volumes"]  # relative run folders land on shared storage
    assert "command" not in rendered  # the worker's own flow-run command


def test_the_container_settings_request_a_gpu_and_enough_shared_memory_for_the_dataloaders() -> None:
    docker = pytest.importorskip("docker")
    from docker.models.containers import RUN_CREATE_KWARGS, RUN_HOST_CONFIG_KWARGS
    from docker.types import HostConfig

    settings = json.loads(TEMPLATE.read_text())["variables"]["properties"]["container_create_kwargs"]["default"]
    assert set(settings) <= set(RUN_CREATE_KWARGS) | set(RUN_HOST_CONFIG_KWARGS)
    host = HostConfig(version="1.44", **settings)  # docker-py's own validation of the values
    assert host["ShmSize"] >= DATALOADER_SHM_PER_RANK and host["ShmSize"] == 8 * 1024**3
    (request,) = host["DeviceRequests"]
    assert isinstance(request, docker.types.DeviceRequest)
    assert request["Driver"] == "nvidia" and request["Count"] == 1 and request["Capabilities"] == [["gpu"]]
