"""Paper-scale modes give the small-scale results: where arrays are placed (GPU or host, decided from
the free memory), FaceT's host gathers and memory map, and the link pre-filter at the tuned tau."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from feature_blobs import blobs

from clustering import placement
from clustering.base import make_method
from clustering.clusformer.sequences import device_features
from clustering.clusformer.training import predict_sequences
from clustering.facet import infer
from clustering.knn import build_knn
from clustering.links import undirected_links
from clustering.partition import link_confidence, partition_links

FACET = dict(preset="demo", hop1=8, hop2=3, heads=2, head_dim=8, ff_dim=32, batch_size=16, warmup_steps=5, epochs=1,
             device="cpu")
CLUSFORMER = dict(k=10, d_model=16, nhead=2, dim_feedforward=32, num_encoder_layers=1, num_decoder_layers=1, epochs=1,
                  batch_size=32, device="cpu")
GIB = 2**30


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def free_memory(monkeypatch, free: int, total: int = 80 * GIB) -> None:
    """Pretend a GPU with ``free`` of ``total`` bytes free."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))


def test_budget_is_free_memory_minus_the_headroom(monkeypatch) -> None:
    free_memory(monkeypatch, 60 * GIB)
    assert placement.device_budget(torch.device("cuda", 0)) == 60 * GIB - int(0.2 * 80 * GIB)
    free_memory(monkeypatch, 1 * GIB, total=8 * GIB)  # headroom at least 2 GiB: nothing fits
    assert placement.device_budget(torch.device("cuda", 0)) == 0
    assert placement.device_budget(torch.device("cpu")) is None
    assert placement.fit_on_device([4, 3, 2], 6) == [True, False, True]
    assert placement.fit_on_device([4, 3, 2], None) == [True, True, True]


@pytest.mark.parametrize(("free_gib", "expected"), [(60, (True, True)), (26, (True, False)), (19, (False, False))])
def test_facet_keeps_features_and_g_on_the_gpu_while_they_fit(monkeypatch, free_gib, expected) -> None:
    """5.21M rows: the int32 table (151 columns, 2.9 GiB) first, then features (5.0 GiB), then g (5.0 GiB);
    the budget is the free memory less 16 GiB (20 % of the 80 GiB card)."""
    free_memory(monkeypatch, free_gib * GIB)
    assert infer.placement(5_210_000, 256, 256, 151, torch.device("cuda", 0)) == expected
    assert infer.placement(5_210_000, 256, 256, 151, torch.device("cpu")) == (True, True)


def test_clusformer_features_stay_on_the_host_when_the_gpu_is_full(monkeypatch) -> None:
    features = np.zeros((1000, 16), dtype=np.float32)
    free_memory(monkeypatch, 1 * GIB)
    assert device_features(features, "cuda:0") is features
    assert device_features(features, "cpu") is features


def test_facet_host_gathers_and_memory_map_give_the_in_memory_links(tmp_path) -> None:
    """Features read from a memory map row by row and g in a memory map (memmap_bytes=0), forced at a
    small size: the links of the in-memory mode."""
    features, labels = blobs(20, 5, seed=0)
    method = make_method("facet", **FACET, val_fraction=0.0).fit(features, labels)
    test_features, _ = blobs(12, 6, seed=5)
    knn = build_knn(test_features, 9, device="cpu")
    in_memory = method.predict_links(test_features, knn, 0.0)
    np.save(tmp_path / "features.npy", test_features)
    mapped = np.load(tmp_path / "features.npy", mmap_mode="r")
    method.config = method.config.replace(memmap_bytes=0, work_dir=str(tmp_path / "work"), inference_batch=7)
    host = method.predict_links(mapped, knn, 0.0)
    np.testing.assert_array_equal(host[0], in_memory[0])
    np.testing.assert_array_equal(host[1], in_memory[1])
    np.testing.assert_allclose(host[2], in_memory[2], rtol=1e-5, atol=1e-6)
    assert list((tmp_path / "work").iterdir()) == []  # the temporary memory map is removed


def test_facet_pair_statistics_from_the_graph_cosines_equal_those_from_the_features() -> None:
    """The cluster stage reads the statistics' cosines from the kNN graph (float16 on disk) instead of
    gathering each neighbour's features: the same link log-odds, to float16's rounding."""
    features, labels = blobs(20, 5, seed=0)
    method = make_method("facet", **FACET, val_fraction=0.0).fit(features, labels)
    test_features, _ = blobs(12, 6, seed=5)
    knn = build_knn(test_features, 31, device="cpu")  # as deep as the pair statistics read: used as given
    neighbourhood = method._neighbourhood(test_features, knn, torch.device("cpu"))
    assert neighbourhood.index is not None and neighbourhood.cosines is not None
    np.testing.assert_array_equal(neighbourhood.cosines, knn.sims[:, : neighbourhood.table.shape[1]])
    scores = {name: infer.link_probabilities(method.model, test_features, neighbourhood.table, method.config,
                                             torch.device("cpu"), neighbourhood.index, logits=True, cosines=cosines)
              for name, cosines in [("features", None), ("graph", neighbourhood.cosines),
                                    ("disk", neighbourhood.cosines.astype(np.float16))]}
    finite = np.isfinite(scores["features"])
    assert finite.sum() > len(test_features) * 5
    np.testing.assert_allclose(scores["graph"][finite], scores["features"][finite], atol=1e-4)
    np.testing.assert_allclose(scores["disk"][finite], scores["features"][finite], atol=0.05)
    shuffled = knn.nbrs.copy()
    shuffled[:, [0, 1]] = shuffled[:, [1, 0]]  # not build_knn's layout: the table is compacted, no cosines
    assert method._neighbourhood(test_features, type(knn)(shuffled, knn.sims), torch.device("cpu")).cosines is None


def test_facet_links_at_the_tuned_tau_are_those_over_it_of_all_links() -> None:
    features, labels = blobs(20, 5, seed=0)
    method = make_method("facet", **FACET, val_fraction=0.25).fit(features, labels)
    test_features, _ = blobs(12, 6, seed=5)
    knn = build_knn(test_features, 9, device="cpu")
    src, dst, weight = method.predict_links(test_features, knn)  # floor: the tuned tau
    all_src, all_dst, all_weight = method.predict_links(test_features, knn, 0.0)
    keep = all_weight >= method.tau
    assert 0 < keep.sum() < len(keep)
    np.testing.assert_array_equal(src, all_src[keep])
    np.testing.assert_array_equal(dst, all_dst[keep])
    np.testing.assert_array_equal(weight, all_weight[keep])


@pytest.mark.parametrize("partition", ["union_find", "infomap"])
def test_clusformer_pre_filter_changes_neither_clusters_nor_confidence(partition) -> None:
    """fit_predict (links under tau dropped before the partition) against every link kept."""
    features, labels = blobs(16, 6, seed=1)
    method = make_method("clusformer", **CLUSFORMER, partition=partition).fit(features, labels)
    test_features, _ = blobs(12, 6, seed=5)
    graph = build_knn(test_features, 31, device="cpu")  # deep enough for the pair statistics: used as given
    predicted = method.fit_predict(test_features, graph)
    cfg, n = method.config, len(test_features)
    ids, scores = predict_sequences(method.model_, test_features, graph, cfg, torch.device("cpu"))
    src, dst, weight = undirected_links(n, ids, scores, method.link_rule, logits=True)  # every link (log-odds)
    assert (weight <= method.tau).any()
    expected = partition_links(n, src, dst, weight, method=partition, tau=method.tau, link_weight=cfg.infomap_weight,
                               max_size=cfg.max_size, min_size=cfg.min_size, seed=cfg.seed, logits=True)
    np.testing.assert_array_equal(predicted, expected)
    # confidence: every pair scored inside a cluster, those under tau included
    probability = 1.0 / (1.0 + np.exp(-weight.astype(np.float64)))
    np.testing.assert_allclose(method.confidence_, link_confidence(expected, src, dst, probability), rtol=1e-6)
