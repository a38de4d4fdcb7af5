"""The GPU install and device checks that CPU can exercise: torch exact kNN, the kNN backend choice,
faiss import errors, the GPU nprobe cap, and the reasons given when a GPU is present but unusable."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import clustering.knn as knn_module
import semiface.devices as devices
import semiface.faiss_backend as backend
from clustering.torch_knn import torch_exact_knn
from semiface.errors import ConfigError


def _points(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("query_chunk,base_chunk", [(64, 50), (1000, 1000), (7, 333)])
def test_torch_exact_knn_equals_faiss_whatever_the_chunking(query_chunk: int, base_chunk: int) -> None:
    features = _points(500, 24, 0) * 2.5
    reference = knn_module.build_knn(features, 12, device="cpu")
    nbrs, sims = torch_exact_knn(features, 12, torch.device("cpu"), query_chunk=query_chunk, base_chunk=base_chunk)
    np.testing.assert_allclose(sims, reference.sims, atol=1e-5)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    true_sims = np.einsum("nd,nkd->nk", unit, unit[nbrs])
    np.testing.assert_allclose(sims, true_sims, atol=1e-5)  # a differing id is a float tie, not a miss
    assert (nbrs == reference.nbrs).mean() > 0.99


def test_torch_exact_knn_in_bf16_keeps_the_neighbours() -> None:
    features = _points(400, 32, 1)
    exact, _ = torch_exact_knn(features, 10, torch.device("cpu"))
    low, sims = torch_exact_knn(features, 10, torch.device("cpu"), dtype=torch.bfloat16)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, low, strict=True)])
    assert recall > 0.9 and sims.dtype == np.float32


def test_build_knn_takes_the_torch_path_when_no_gpu_faiss_works(monkeypatch) -> None:
    """On CUDA without a working GPU faiss the graph comes from torch (run here on the CPU)."""
    features = _points(300, 16, 2)
    calls = []

    def fake_torch_knn(feats, k, device, progress=None):
        calls.append(device)
        return torch_exact_knn(feats, k, torch.device("cpu"), query_chunk=128, progress=progress)

    monkeypatch.setattr(knn_module, "knn_backend", lambda device: "torch-cuda")
    monkeypatch.setattr(knn_module, "_cuda_device", lambda device: torch.device("cpu"))
    monkeypatch.setattr(knn_module, "torch_exact_knn", fake_torch_knn)
    seen: list[float] = []
    graph = knn_module.build_knn(features, 8, device="cuda", progress=seen.append)
    assert len(calls) == 1
    assert seen == pytest.approx([100 * 128 / 300, 100 * 256 / 300, 100.0])  # after each query chunk
    np.testing.assert_array_equal(graph.nbrs[:, 0], np.arange(300))
    monkeypatch.undo()
    np.testing.assert_array_equal(graph.nbrs, knn_module.build_knn(features, 8, device="cpu").nbrs)


def test_backend_choice(monkeypatch) -> None:
    assert backend.knn_backend("cpu") == "faiss-cpu"
    with pytest.raises(ConfigError, match="unknown device"):
        backend.knn_backend("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backend, "faiss_gpu_probe", lambda: (False, "faiss 1.15 is a CPU build"))
    assert backend.knn_backend("auto") == "torch-cuda"
    assert backend.knn_backend("cpu") == "faiss-cpu"
    monkeypatch.setattr(backend, "faiss_gpu_probe", lambda: (True, "ran"))
    assert backend.knn_backend("cuda:0") == "faiss-gpu"


def test_cuda_asked_without_cuda_is_refused_by_the_knn() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA"):
        backend.knn_backend("cuda")


def test_broken_faiss_install_names_the_fix(monkeypatch) -> None:
    backend.import_faiss.cache_clear()
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    try:
        with pytest.raises(ConfigError, match="make install"):
            backend.import_faiss()
    finally:
        backend.import_faiss.cache_clear()


def test_both_faiss_builds_installed_is_recognised(monkeypatch) -> None:
    class HalfOverwritten:
        def __getattr__(self, name):
            raise AttributeError("module 'faiss' has no attribute 'delete_GpuResourcesVector'")

    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "faiss":
            return HalfOverwritten().missing
        return real_import(name, *args, **kwargs)

    backend.import_faiss.cache_clear()
    monkeypatch.setattr(builtins, "__import__", fake_import)
    try:
        with pytest.raises(ConfigError, match="both installed") as info:
            backend.import_faiss()
        assert "install-gpu" in str(info.value)
    finally:
        monkeypatch.undo()
        backend.import_faiss.cache_clear()


class _RecordingIvf:
    """Stands in for a GPU IVF index: refuses nprobe > 2048 as GPU faiss does."""

    def __init__(self, nlist: int) -> None:
        self.nlist, self.nprobe, self.seen = nlist, 32, []

    def search(self, queries: np.ndarray, k: int):
        if self.nprobe > knn_module.GPU_MAX_NPROBE:
            raise RuntimeError("nprobe must be <= 2048 on the GPU")
        self.seen.append(self.nprobe)
        return np.ones((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)


def test_ivf_research_caps_nprobe_on_the_gpu() -> None:
    """At 584K rows nlist is ~3,057: the re-search of short rows must not ask GPU faiss for more than 2048."""
    index = _RecordingIvf(nlist=3057)
    queries = _points(4, 8, 3)
    sims, nbrs = np.zeros((4, 5), np.float32), np.zeros((4, 5), np.int64)
    nbrs[1, 4] = -1
    knn_module._research_incomplete_rows(index, queries, sims, nbrs, knn_module.GPU_MAX_NPROBE)
    assert index.seen == [2048] and index.nprobe == 32 and (nbrs[1] >= 0).all()
    # on the CPU every list is searched
    cpu_index = _RecordingIvf(nlist=1500)
    nbrs[1, 4] = -1
    knn_module._research_incomplete_rows(cpu_index, queries, sims, nbrs)
    assert cpu_index.seen == [1500]


def test_driver_version_is_read_from_the_proc_file(tmp_path) -> None:
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  Wed Jan 22 2025\nGCC version: 12\n")
    assert devices.nvidia_driver_version(proc) == "570.86.15"
    assert devices.nvidia_driver_version(tmp_path / "absent") is None


def test_cuda_problem_names_driver_and_torch_cuda() -> None:
    old = devices.explain_cuda_problem("570.86.15", "13.0", False)
    assert "570.86.15" in old and "13.0" in old and ">= 580" in old
    assert devices.explain_cuda_problem(None, "13.0", False) is None
    assert devices.explain_cuda_problem("580.1", "13.0", True) is None
    assert "CPU-only" in devices.explain_cuda_problem("580.1", None, False)
    assert "sees no usable GPU" in devices.explain_cuda_problem("580.1", "13.0", False)


def test_auto_warns_loudly_and_cuda_fails_with_the_reason(monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(devices, "nvidia_driver_version", lambda path=None: "535.104.05")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    devices._warn_cpu_fallback.cache_clear()
    with pytest.warns(RuntimeWarning, match="535.104.05"):
        assert devices.resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match=">= 580"):
        devices.resolve_device("cuda")
    devices._warn_cpu_fallback.cache_clear()


def test_local_rank_beyond_the_visible_gpus_is_refused(monkeypatch) -> None:
    """torchrun with more processes than GPUs: a clear error, not a CUDA 'invalid device ordinal' later."""
    from backbone.distributed import setup_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match="LOCAL_RANK=1"):
        setup_distributed("auto")
