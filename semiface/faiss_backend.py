"""Which faiss build this machine has, whether it runs on the GPU, and which kNN backend to use.

faiss ships as two wheels that unpack into the same ``faiss/`` package: ``faiss-cpu`` (the
default install) and a GPU build (``faiss-gpu``, the ``gpu`` extra). Both installed at once
break ``import faiss``; a GPU build without code for the card aborts the process at its first
kernel. This module names those problems and their fix, and picks the kNN backend:

* ``faiss-gpu``: CUDA in torch and a GPU faiss whose probe search (in a child process) ran;
* ``torch-cuda``: CUDA in torch but no working GPU faiss: exact search on torch
  (``clustering.torch_knn``);
* ``faiss-cpu``: no CUDA (or ``device="cpu"``).

``python -m semiface.faiss_backend`` (``make check-gpu``) prints the diagnosis.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import sys
from types import ModuleType

import torch

from semiface.errors import ConfigError

log = logging.getLogger(__name__)

FIX_CPU = "make install (= pip install -e '.[cpu,dev]')"
FIX_GPU = "make install-gpu (removes faiss-cpu, installs the 'gpu' extra: a faiss GPU build with Hopper code)"
BACKENDS = ("faiss-gpu", "torch-cuda", "faiss-cpu")

# A tiny search on GPU 0: the first kernel of a build without code for the card aborts the
# child (not us), which is why the probe runs in a subprocess.
_PROBE = (
    "import faiss, numpy as np\n"
    "x = np.random.default_rng(0).standard_normal((64, 8)).astype('float32')\n"
    "index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatIP(8))\n"
    "index.add(x)\n"
    "_, ids = index.search(x, 2)\n"
    "assert (ids[:, 0] == np.arange(64)).all(), 'wrong result'\n"
)


@functools.cache
def import_faiss() -> ModuleType:
    """``import faiss``, or a ConfigError that says why it failed and how to fix the install."""
    try:
        import faiss
    except Exception as exc:  # a half-overwritten package raises AttributeError, not ImportError
        both = isinstance(exc, AttributeError) and "Gpu" in str(exc)
        why = ("faiss-cpu and a GPU faiss build are both installed and overwrite each other's files"
               if both else "faiss is not installed or its install is broken")
        raise ConfigError(
            f"import faiss failed ({type(exc).__name__}: {exc}): {why}. "
            f"Fix: on a CPU machine {FIX_CPU}; on a CUDA machine {FIX_GPU}."
        ) from exc
    return faiss


def faiss_has_gpu_build(faiss: ModuleType) -> bool:
    """Whether the installed faiss is a GPU build that sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@functools.cache
def faiss_gpu_probe() -> tuple[bool, str]:
    """(works, reason): run a tiny GPU search in a child process (cached for this process)."""
    try:
        faiss = import_faiss()
    except ConfigError as exc:
        return False, str(exc)
    if not faiss_has_gpu_build(faiss):
        return False, f"faiss {faiss.__version__} is a CPU build (or sees no GPU)"
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False, "the GPU faiss probe search did not finish in 300 s"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return False, f"a GPU faiss search failed (exit {done.returncode}: {tail}); the build may lack code for this GPU"
    return True, f"faiss {faiss.__version__} GPU build ran a search on GPU 0"


def knn_backend(device: str = "auto") -> str:
    """The backend ``build_knn`` uses for ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``)."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"build_knn: unknown device {device!r} (use auto, cpu or cuda)")
    if device == "cpu" or not torch.cuda.is_available():
        if device.startswith("cuda"):
            raise ConfigError(f"build_knn: device={device!r} asked for but torch sees no CUDA device")
        return "faiss-cpu"
    works, reason = faiss_gpu_probe()
    if works:
        return "faiss-gpu"
    _warn_once(f"kNN on CUDA runs on torch (exact, chunked matmul), not faiss: {reason}. For faiss on the GPU: {FIX_GPU}.")
    return "torch-cuda"


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def diagnose() -> list[str]:
    """Lines describing torch's CUDA, the faiss build, and the kNN backend ``device="auto"`` gets."""
    from semiface.devices import cuda_problem

    lines = [f"torch {torch.__version__} (CUDA build {torch.version.cuda}), CUDA available: {torch.cuda.is_available()}"]
    problem = cuda_problem()
    if problem:
        lines.append(f"PROBLEM: {problem}")
    try:
        faiss = import_faiss()
        lines.append(f"faiss {faiss.__version__}: {'GPU' if hasattr(faiss, 'StandardGpuResources') else 'CPU'} build")
    except ConfigError as exc:
        lines.append(f"PROBLEM: {exc}")
    if torch.cuda.is_available():
        lines.append(f"faiss GPU probe: {faiss_gpu_probe()[1]}")
    lines.append(f"kNN backend for device=auto: {knn_backend('auto')}")
    return lines


def main() -> int:
    """Print the diagnosis; exit 1 when something needs fixing."""
    lines = diagnose()
    print("\n".join(lines))
    return 1 if any(line.startswith("PROBLEM") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
