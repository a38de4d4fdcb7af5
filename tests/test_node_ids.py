"""int32 node ids (every set below 2^31 rows) give the results of int64 ids in every kNN consumer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from feature_blobs import blobs

from clustering.base import make_method
from clustering.clusformer.sequences import build_sequences
from clustering.facet.neighbours import neighbour_table
from clustering.knn import KnnGraph, build_knn
from clustering.links import undirected_links
from clustering.node_ids import id_dtype
from clustering.pair_stats import NeighbourhoodIndex
from clustering.pseudo_labels import merge_pseudo_labels
from semiface.manifest import validate_manifest

FACET = dict(preset="demo", hop1=8, hop2=3, heads=2, head_dim=8, ff_dim=32, batch_size=16, warmup_steps=5, epochs=1,
             device="cpu")
CLUSFORMER = dict(k=10, d_model=16, nhead=2, dim_feedforward=32, num_encoder_layers=1, num_decoder_layers=1, epochs=1,
                  batch_size=32, device="cpu")
METHODS = {
    "knn_uf": dict(k=10), "infomap": dict(k=10), "dbscan": dict(k=10), "hac": dict(k=10), "pair_gbdt": dict(k=10, max_iter=20),
    "facet": FACET, "facet+infomap": FACET, "clusformer": CLUSFORMER, "clusformer+infomap": CLUSFORMER,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def graphs() -> tuple[np.ndarray, KnnGraph, KnnGraph]:
    """Unlabelled features with the same graph twice: int32 ids (what build_knn gives) and int64."""
    features, _ = blobs(12, 6, seed=5)
    graph = build_knn(features, 12, device="cpu")
    assert graph.nbrs.dtype == np.int32 and id_dtype(len(features)) == np.int32
    return features, graph, KnnGraph(graph.nbrs.astype(np.int64), graph.sims)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_clusters_alike_from_int32_and_int64_ids(name, graphs) -> None:
    features, graph32, graph64 = graphs
    train_features, train_labels = blobs(16, 6, seed=1)
    method = make_method(name, **METHODS[name]).fit(train_features, train_labels)
    from32 = method.fit_predict(features, graph32)
    confidence32 = method.confidence_
    from64 = method.fit_predict(features, graph64)
    np.testing.assert_array_equal(from32, from64)
    np.testing.assert_array_equal(confidence32, method.confidence_)
    assert len(np.unique(from32)) > 1


def test_neighbour_table_pair_statistics_and_sequences_alike(graphs) -> None:
    features, graph32, graph64 = graphs
    table32, table64 = neighbour_table(graph32.nbrs, 8), neighbour_table(graph64.nbrs, 8)
    assert table32.dtype == np.int32 and np.shares_memory(table32, graph32.nbrs)  # a view: one copy of the ids
    np.testing.assert_array_equal(table32, table64)
    index32, index64 = NeighbourhoodIndex.from_graph(graph32), NeighbourhoodIndex.from_graph(graph64)
    assert index32.nbrs.dtype == torch.int32
    np.testing.assert_array_equal(index32.nbrs.numpy(), index64.nbrs.numpy())
    centres = np.arange(len(features))
    batch32 = build_sequences(features, graph32, centres, 10, index=index32)
    batch64 = build_sequences(features, graph64, centres, 10, index=index64)
    assert batch32.ids.dtype == np.int32
    np.testing.assert_array_equal(batch32.ids, batch64.ids)
    torch.testing.assert_close(batch32.stats, batch64.stats, rtol=0, atol=0)


def test_links_and_the_merge_alike(graphs) -> None:
    features, graph32, _ = graphs
    n = len(features)
    probs = np.random.default_rng(2).random(graph32.nbrs.shape).astype(np.float32)
    links32 = undirected_links(n, graph32.nbrs, probs, "average", floor=0.5)
    links64 = undirected_links(n, graph32.nbrs.astype(np.int64), probs, "average", floor=0.5)
    assert links32[0].dtype == np.int32
    for a, b in zip(links32, links64, strict=True):
        np.testing.assert_array_equal(a, b)
    pred = make_method("knn_uf", k=10, tau=0.6).fit_predict(features, graph32)
    rows = [{"path": f"l{i}.png", "label": i // 2, "identity": f"L{i // 2}", "split": "labelled"} for i in range(4)]
    rows += [{"path": f"u{i}.png", "label": -1, "identity": f"U{i}", "split": "unlabelled"} for i in range(n)]
    manifest = validate_manifest(pd.DataFrame(rows))
    index = np.arange(4, 4 + n)
    frame32, summary32 = merge_pseudo_labels(manifest, index.astype(np.int32), pred.astype(np.int32))
    frame64, summary64 = merge_pseudo_labels(manifest, index, pred)
    pd.testing.assert_frame_equal(frame32, frame64)
    assert summary32 == summary64
