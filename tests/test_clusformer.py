"""Clusformer: visual grammar, Cosine Distance Encoding, model, training, links, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustering.base import make_method
from clustering.benchmark_features import BenchmarkConfig, benchmark_splits
from clustering.clusformer import Clusformer, ClusformerConfig, ClusformerNet, build_sequences
from clustering.clusformer.training import (
    predict_sequences,
    sequence_loss,
    sequence_targets,
    train_clusformer,
)
from clustering.evaluate import sweep_threshold
from clustering.knn import KnnGraph, build_knn
from clustering.links import undirected_links
from clustering.metrics import evaluate_partition
from clustering.pair_stats import STAT_NEIGHBOURS, NeighbourhoodIndex
from semiface.errors import ConfigError, DataError

CPU = torch.device("cpu")
# Hand-made set: unit vectors in the plane at these angles (degrees); cosines are cos(a_i - a_j).
ANGLES = np.array([0.0, 60.0, 10.0, 100.0, 30.0, 180.0])


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny: one intra-op thread is faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _plane(angles: np.ndarray, scale: float = 1.0) -> np.ndarray:
    rad = np.deg2rad(angles)
    return (scale * np.stack([np.cos(rad), np.sin(rad)], axis=1)).astype(np.float32)


def _scrambled_graph(feats: np.ndarray, k: int) -> KnnGraph:
    """Each row holds its k nearest samples (itself included) in a scrambled order, then the others
    scrambled: the grammar must re-sort the first k columns by cosine; fake sims."""
    rng = np.random.default_rng(3)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    nearest = np.argsort(-(unit @ unit.T), axis=1, kind="stable")
    nbrs = np.concatenate([np.stack([rng.permutation(row) for row in nearest[:, :k]]),
                           np.stack([rng.permutation(row) for row in nearest[:, k:]])], axis=1)
    return KnnGraph(nbrs=nbrs.astype(np.int64), sims=np.zeros(nbrs.shape, dtype=np.float32))


def _blobs(n_id: int, per_id: int, dim: int = 16, spread: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Small identity clusters on the sphere for the training tests."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_id, dim))
    labels = np.repeat(np.arange(n_id), per_id)
    x = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
    x = x + rng.normal(size=x.shape) * spread / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_sequence_is_centre_then_decreasing_cosine():
    feats = _plane(ANGLES, scale=3.0)  # not unit-norm on purpose: the grammar normalises
    graph = _scrambled_graph(feats, 4)
    batch = build_sequences(feats, graph, np.array([0, 3]), k=4)
    # centre 0 (0 deg): 10, 30, 60 deg next; centre 3 (100 deg): 60 (cos 40), 30 (cos 70), 180 (cos 80)
    np.testing.assert_array_equal(batch.ids, [[0, 2, 4, 1], [3, 1, 4, 5]])
    assert not batch.pad.any()
    # a graph deeper than k gives the sequences of its first k columns (the rest is never gathered)
    narrow = build_sequences(feats, KnnGraph(graph.nbrs[:, :4], graph.sims[:, :4]), np.array([0, 3]), k=4)
    np.testing.assert_array_equal(narrow.ids, batch.ids)
    np.testing.assert_array_equal(narrow.feats.numpy(), batch.feats.numpy())


def test_cosine_distance_encoding_values():
    feats = _plane(ANGLES)
    batch = build_sequences(feats, _scrambled_graph(feats, 4), np.array([0]), k=4)
    angles = ANGLES[batch.ids[0]]
    expected = np.cos(np.deg2rad(angles[:, None] - angles[None, :]))
    np.testing.assert_allclose(batch.sims[0].numpy(), expected, atol=1e-6)
    cde = batch.cde_input()
    assert cde.shape == (1, 4, 2 + 4)
    np.testing.assert_allclose(cde[0, :, :2].numpy(), feats[batch.ids[0]], atol=1e-6)
    np.testing.assert_allclose(cde[0, :, 2:].numpy(), expected, atol=1e-6)


def test_radius_step_stops_at_first_empty_band():
    feats = _plane(ANGLES)
    # cosine distances from 0 deg: 10 -> 0.015, 30 -> 0.134, 60 -> 0.5: bands 0, 0, 1, 5 with step 0.1
    batch = build_sequences(feats, _scrambled_graph(feats, 5), np.array([0]), k=5, radius_step=0.1)
    np.testing.assert_array_equal(batch.ids, [[0, 2, 4, -1, -1]])
    np.testing.assert_array_equal(batch.pad.numpy(), [[False, False, False, True, True]])
    assert float(batch.feats[0, 3:].abs().sum()) == 0.0 and float(batch.sims[0, 3:].abs().sum()) == 0.0


def test_centre_first_even_when_graph_misses_it_and_pads_short_rows():
    feats = _plane(ANGLES)
    graph = KnnGraph(nbrs=np.array([[4, -1, 2]] * 6), sims=np.zeros((6, 3), dtype=np.float32))
    batch = build_sequences(feats, graph, np.array([0]), k=5)
    np.testing.assert_array_equal(batch.ids, [[0, 2, 4, -1, -1]])
    np.testing.assert_array_equal(batch.pad.numpy(), [[False, False, False, True, True]])


@pytest.mark.parametrize("encoding", ["cde", "none", "learnable", "sinusoidal"])
def test_every_encoding_gives_one_logit_per_position(encoding):
    feats, _ = _blobs(4, 5)
    cfg = ClusformerConfig(k=6, encoding=encoding, d_model=16, nhead=2, dim_feedforward=32,
                           num_encoder_layers=1, num_decoder_layers=1)
    model = ClusformerNet(16, cfg)
    assert model.input_proj.in_features == (16 + 6 if encoding == "cde" else 16)
    graph = build_knn(feats, 6)
    batch = build_sequences(feats, graph, np.arange(3), k=6, index=NeighbourhoodIndex.from_graph(graph))
    logits = model(batch.feats, batch.sims, batch.pad, batch.stats)
    assert logits.shape == (3, 6) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="pair_stats"):
        model(batch.feats, batch.sims, batch.pad)


@pytest.mark.parametrize(("encoding", "head", "pair_stats"), [("cde", "product", True), ("learnable", "paper", False)])
def test_inference_shortcuts_give_the_modules_values(encoding, head, pair_stats):
    """Inference projects the CDE per part and runs the first decoder layer's self-attention once for the
    batch; training runs the modules as built: with no dropout both give the same logits, padding included."""
    feats, _ = _blobs(6, 5)
    cfg = ClusformerConfig(k=8, encoding=encoding, head=head, pair_stats=pair_stats, d_model=16, nhead=2,
                           dim_feedforward=32, num_encoder_layers=2, num_decoder_layers=2, dropout=0.0)
    model = ClusformerNet(16, cfg)
    graph = build_knn(feats, 8)
    index = NeighbourhoodIndex.from_graph(graph) if pair_stats else None
    batch = build_sequences(feats, graph, np.arange(7), k=8, index=index)
    pad = batch.pad.clone()
    pad[:2, -3:] = True  # some sequences padded
    with torch.no_grad():
        fast = model.eval()(batch.feats, batch.sims, pad, batch.stats)
        modules = model.train()(batch.feats, batch.sims, pad, batch.stats)
        cat = model.input_proj(torch.cat([batch.feats, batch.sims], -1) if encoding == "cde" else batch.feats)
        torch.testing.assert_close(model._project(batch.feats, batch.sims), cat, rtol=0, atol=1e-5)
    real = ~pad
    torch.testing.assert_close(fast[real], modules[real], rtol=0, atol=1e-5)


def test_targets_exclude_centre_and_padding():
    feats = _plane(ANGLES)
    labels = np.array([7, 7, 7, 8, 8, 9])
    graph = KnnGraph(nbrs=np.array([[4, -1, 2]] * 6), sims=np.zeros((6, 3), dtype=np.float32))
    batch = build_sequences(feats, graph, np.array([0]), k=4)  # ids 0, 2, 4, pad
    targets, counted = sequence_targets(batch, labels, CPU)
    np.testing.assert_array_equal(targets.numpy(), [[1, 1, 0, 1]])
    np.testing.assert_array_equal(counted.numpy(), [[False, True, True, False]])


def test_training_steps_lower_the_loss():
    feats, labels = _blobs(12, 10, spread=1.0)
    cfg = ClusformerConfig(k=12, d_model=32, nhead=4, dim_feedforward=64, epochs=6, batch_size=8, lr=2e-3)
    graph = build_knn(feats, 12)
    torch.manual_seed(0)
    model = ClusformerNet(16, cfg)
    batch = build_sequences(feats, graph, np.arange(len(feats)), k=12, index=NeighbourhoodIndex.from_graph(graph))
    targets, counted = sequence_targets(batch, labels, CPU)

    def loss_now() -> float:
        with torch.no_grad():
            return float(sequence_loss(model(batch.feats, batch.sims, batch.pad, batch.stats), targets, counted))

    before = loss_now()
    history = train_clusformer(model, feats, labels, graph, cfg, CPU)
    after = loss_now()
    assert len(history) == 6
    assert after < 0.7 * before, (before, after)


def test_resume_from_checkpoint_matches_uninterrupted_training(tmp_path):
    feats, labels = _blobs(6, 8)
    cfg = ClusformerConfig(k=8, d_model=16, nhead=2, dim_feedforward=32, num_encoder_layers=1,
                           num_decoder_layers=1, epochs=2, batch_size=16, dropout=0.1)
    graph = build_knn(feats, 8)

    def fresh() -> ClusformerNet:
        torch.manual_seed(1)
        return ClusformerNet(16, cfg)

    straight = fresh()
    train_clusformer(straight, feats, labels, graph, cfg, CPU)

    class Crash(RuntimeError):
        pass

    def crash_after_first_epoch(model: ClusformerNet) -> dict[str, float]:
        if crash_after_first_epoch.calls:
            raise Crash
        crash_after_first_epoch.calls += 1
        return {}

    crash_after_first_epoch.calls = 0
    ckpt = tmp_path / "clusformer.pt"
    with pytest.raises(Crash):
        train_clusformer(fresh(), feats, labels, graph, cfg, CPU, validate=crash_after_first_epoch, checkpoint=ckpt)
    resumed = fresh()
    history = train_clusformer(resumed, feats, labels, graph, cfg, CPU, checkpoint=ckpt)
    assert [h["epoch"] for h in history] == [1, 2]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="another run .*settings.d_model: 16 there, 32 now"):
        train_clusformer(ClusformerNet(16, cfg.with_updates(d_model=32)), feats, labels, graph,
                         cfg.with_updates(d_model=32), CPU, checkpoint=ckpt)
    # Settings training reads beyond the architecture, and the labelled data, are checked too (as FaceT's).
    with pytest.raises(ConfigError, match="settings.lr"):
        train_clusformer(fresh(), feats, labels, graph, cfg.with_updates(lr=0.5), CPU, checkpoint=ckpt)
    with pytest.raises(ConfigError, match="data: other data"):
        train_clusformer(fresh(), feats, (labels + 1) % 6, graph, cfg, CPU, checkpoint=ckpt)
    # How the trained model is run is not part of the identity: resuming (nothing left to train) works.
    assert len(train_clusformer(fresh(), feats, labels, graph, cfg.with_updates(tau=0.7, infer_batch_size=7), CPU,
                                checkpoint=ckpt)) == 2


def test_link_rules_combine_both_directions():
    # sequences: 0 -> [1 (0.9), 2 (0.6)], 1 -> [0 (0.7)], 2 -> [1 (0.4)]
    ids = np.array([[0, 1, 2], [1, 0, -1], [2, 1, -1]])
    probs = np.array([[1, 0.9, 0.6], [1, 0.7, 0], [1, 0.4, 0]], dtype=np.float32)
    got = {rule: undirected_links(3, ids, probs, rule) for rule in ("any", "mutual", "average")}
    src, dst, w = got["any"]
    assert list(zip(src, dst, np.round(w, 3), strict=True)) == [(0, 1, 0.9), (0, 2, 0.6), (1, 2, 0.4)]
    src, dst, w = got["mutual"]
    assert list(zip(src, dst, np.round(w, 3), strict=True)) == [(0, 1, 0.7)]
    src, dst, w = got["average"]
    assert list(zip(src, dst, np.round(w, 3), strict=True)) == [(0, 1, 0.8), (0, 2, 0.3), (1, 2, 0.2)]


def _small_method(name: str = "clusformer", **overrides) -> Clusformer:
    params = dict(k=10, d_model=16, nhead=2, dim_feedforward=32, num_encoder_layers=1, num_decoder_layers=1,
                  epochs=2, batch_size=32, val_fraction=0.25)
    return make_method(name, **{**params, **overrides})


def test_save_load_gives_identical_predictions(tmp_path):
    feats, labels = _blobs(16, 8, spread=0.8)
    test_feats, _ = _blobs(10, 8, spread=0.8, seed=5)
    method = _small_method().fit(feats, labels)
    assert method.tau_ is not None and method.history_[-1]["val_pairwise_f"] > 0
    graph = build_knn(test_feats, 10)
    first = method.fit_predict(test_feats, graph)
    path = method.save(tmp_path / "model.pt")
    loaded = Clusformer.load(path)
    second = loaded.fit_predict(test_feats, graph)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(method.confidence_, loaded.confidence_)
    assert first.dtype == np.int64 and method.confidence_.dtype == np.float32
    assert loaded.tau_ == method.tau_ and loaded.config == method.config


def test_drop_below_removes_low_confidence_members():
    feats, labels = _blobs(16, 8, spread=0.8)
    test_feats, _ = _blobs(10, 8, spread=0.8, seed=5)
    graph = build_knn(test_feats, 10)
    method = _small_method(epochs=1).fit(feats, labels)
    kept = method.fit_predict(test_feats, graph)
    confidence = method.confidence_
    cut = float(np.quantile(confidence, 0.3))
    method.config = method.config.with_updates(drop_below=cut)
    dropped = method.fit_predict(test_feats, graph)
    np.testing.assert_array_equal(dropped == -1, confidence < cut)
    np.testing.assert_array_equal(dropped[dropped >= 0], kept[dropped >= 0])


def test_infomap_weight_and_trials_reach_the_tau_search_and_the_partition(partitions_seen):
    """``infomap_weight="odds"``, ``infomap_trials=2`` and ``infomap_markov_time=1.25`` are used where tau is tuned and where the set is clustered."""
    feats, labels = _blobs(16, 8, spread=0.8)
    method = _small_method("clusformer+infomap", epochs=1, infomap_weight="odds", infomap_trials=2,
                           infomap_markov_time=1.25).fit(feats, labels)
    tuning = len(partitions_seen)
    test_feats, _ = _blobs(10, 8, spread=0.8, seed=5)
    method.fit_predict(test_feats, build_knn(test_feats, 10))
    assert tuning > 0 and len(partitions_seen) == tuning + 1
    assert {(weight, markov_time) for weight, _, markov_time in partitions_seen} == {("odds", 1.25)}
    # epochs are scored with one search; the final tuning and the clustering run two
    assert partitions_seen[0][1] == 1 and partitions_seen[-1][1] == 2 and {t for _, t, _ in partitions_seen} == {1, 2}
    with pytest.raises(ConfigError, match="infomap_weight"):
        make_method("clusformer", infomap_weight="logit")
    with pytest.raises(ConfigError, match="infomap_trials"):
        make_method("clusformer", infomap_trials=0)


def test_clusformer_plus_infomap_partitions_the_learned_links():
    feats, labels = _blobs(16, 8, spread=0.8)
    test_feats, test_labels = _blobs(10, 8, spread=0.8, seed=5)
    graph = build_knn(test_feats, 10)
    method = _small_method("clusformer+infomap")
    assert method.config.partition == "infomap"
    method.fit(feats, labels)
    pred = method.fit_predict(test_feats, graph)
    again = method.fit_predict(test_feats, graph)
    np.testing.assert_array_equal(pred, again)  # seeded
    scores = evaluate_partition(test_labels, pred)
    assert scores["pairwise_f"] > 0.8 and scores["n_clusters"] < len(test_labels) / 2, scores


def test_bad_input_is_refused(tmp_path):
    feats, labels = _blobs(6, 5)
    with pytest.raises(ConfigError, match="encoding"):
        make_method("clusformer", encoding="rotary")
    with pytest.raises(ConfigError, match="link_rule"):
        make_method("clusformer", link_rule="sometimes")
    with pytest.raises(ConfigError, match="fit"):
        make_method("clusformer").fit_predict(feats, build_knn(feats, 5))
    with pytest.raises(DataError, match="labels"):
        _small_method().fit(feats, labels[:-1])
    bad = feats.copy()
    bad[3, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        _small_method().fit(bad, labels)
    method = _small_method(epochs=1, val_fraction=0.0).fit(feats, labels)
    with pytest.raises(DataError, match="16 feature columns"):
        method.fit_predict(np.ones((5, 8), dtype=np.float32), build_knn(np.ones((5, 8), dtype=np.float32), 3))
    with pytest.raises(DataError, match="rows"):
        method.fit_predict(feats, build_knn(feats[:10], 5))
    with pytest.raises(DataError, match="not found"):
        Clusformer.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pt"):
        Clusformer.load(tmp_path / "junk.pt")


def test_inference_is_batched_and_deterministic():
    feats, labels = _blobs(8, 6)
    cfg = ClusformerConfig(k=6, d_model=16, nhead=2, dim_feedforward=32, num_encoder_layers=1,
                           num_decoder_layers=1, infer_batch_size=7)
    model = ClusformerNet(16, cfg)
    graph = build_knn(feats, 6)
    ids, probs = predict_sequences(model, feats, graph, cfg, CPU)
    ids_one, probs_one = predict_sequences(model, feats, graph, cfg.with_updates(infer_batch_size=1000), CPU)
    np.testing.assert_array_equal(ids, ids_one)
    np.testing.assert_allclose(probs, probs_one, atol=1e-6)
    assert (ids[:, 0] == np.arange(len(feats))).all() and (probs[:, 0] == np.inf).all()  # log-odds: the centre is sure


# ---------------------------------------------------------------- generated benchmark features
# Small generated MS1M-like sets (64-d so that CPU training takes seconds): a labelled part to train
# on and a disjoint unlabelled part to cluster, as learn-to-cluster's part0_train / part1_test.
_BENCH_FEATURES = BenchmarkConfig(dim=64, nuisance_dims=16)
_SMALL = dict(k=16, d_model=32, nhead=4, dim_feedforward=64, num_encoder_layers=1, num_decoder_layers=1,
              epochs=3, batch_size=64, lr=2e-3, max_train_centres=2000)


@pytest.fixture(scope="module")
def small_benchmark_run():
    """A small Clusformer trained on 200 generated identities, applied to 100 unseen ones."""
    splits = benchmark_splits(200, [100], config=_BENCH_FEATURES, seed=0)
    method = make_method("clusformer", **_SMALL).fit(splits.train_features, splits.train_labels)
    features, labels = splits.test_features[0], splits.test_labels[0]
    graph = build_knn(features, STAT_NEIGHBOURS + 1)  # as deep as the pair statistics read
    return method, features, labels, graph


def test_tau_tuned_on_labelled_data_transfers_to_the_unlabelled_part(small_benchmark_run):
    method, features, labels, graph = small_benchmark_run
    history = method.history_
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]
    assert {"val_pairwise_f", "val_bcubed_f", "heldout_pairwise_f", "heldout_bcubed_f"} <= set(history[-1])
    scores = evaluate_partition(labels, method.fit_predict(features, graph))
    ids, probs = predict_sequences(method.model_, features, graph, method.config, CPU)
    src, dst, weight = undirected_links(len(labels), ids, probs, method.config.link_rule, logits=True)
    table, _ = sweep_threshold(labels, len(labels), src, dst, weight, logits=True)
    best = float(((table["pairwise_f"] + table["bcubed_f"]) / 2).max())
    # the tau chosen on labelled identities is within 4 points of the best tau for the unseen part
    # (an oracle searched with the same adaptive candidates, finer than the old fixed grid: 3.1 points seen)
    assert (scores["pairwise_f"] + scores["bcubed_f"]) / 2 > best - 0.04, (method.tau_, scores, table)
    untrained = make_method("clusformer", **{**_SMALL, "epochs": 0}).fit(*_train_part())
    baseline = evaluate_partition(labels, untrained.fit_predict(features, graph))
    assert scores["pairwise_f"] > baseline["pairwise_f"] + 0.2 and scores["bcubed_f"] > baseline["bcubed_f"] + 0.1


def _train_part() -> tuple[np.ndarray, np.ndarray]:
    splits = benchmark_splits(200, [], config=_BENCH_FEATURES, seed=0)
    return splits.train_features, splits.train_labels


def test_dropping_low_confidence_members_lowers_the_noise_ratio(small_benchmark_run):
    method, features, labels, graph = small_benchmark_run
    kept = method.fit_predict(features, graph)
    confidence = method.confidence_
    before = evaluate_partition(labels, kept)
    clustered = np.bincount(kept)[kept] >= 2
    cut = float(np.quantile(confidence[clustered], 0.2))
    method.config = method.config.with_updates(drop_below=cut)
    try:
        dropped = method.fit_predict(features, graph)
    finally:
        method.config = method.config.with_updates(drop_below=None)
    after = evaluate_partition(labels, dropped)
    # the members the model is least sure of are the impostors: removing a fifth of the clustered
    # samples removes a clearly larger share of the wrongly clustered ones (measured: 28 %). Pairwise
    # precision is not asserted: it weighs the largest clusters, whose diverse but true members also
    # hold weak pairs (measured 0.9355 -> 0.9348 here)
    assert after["noise_ratio"] < 0.8 * before["noise_ratio"], (before["noise_ratio"], after["noise_ratio"])


@pytest.mark.slow
def test_beats_knn_threshold_union_find_on_generated_benchmark_features():
    """Done-when of issue 6: >= 5 points of pairwise F and BCubed F over kNN + threshold + union-find.

    Both are tuned on labelled data only: Clusformer's tau on the whole labelled set with held-out
    identities in it, knn_uf's threshold on the whole labelled set (it trains nothing, so all of it
    is its validation data). Seed 0: Clusformer FP 0.854 FB 0.870 noise 0.071 vs knn_uf FP 0.754
    FB 0.799 noise 0.086 (seed 1: 0.869 / 0.878 / 0.064 vs 0.803 / 0.829 / 0.102).
    """
    splits = benchmark_splits(300, [300], config=_BENCH_FEATURES, seed=0)
    train = (splits.train_features, splits.train_labels)
    features, labels = splits.test_features[0], splits.test_labels[0]
    graph = build_knn(features, 16)
    params = {**_SMALL, "d_model": 64, "dim_feedforward": 128, "epochs": 8, "max_train_centres": None}
    ours = evaluate_partition(labels, make_method("clusformer", **params).fit(*train).fit_predict(features, graph))
    knn_uf = evaluate_partition(labels, make_method("knn_uf", k=16).fit(*train).fit_predict(features, graph))
    assert ours["pairwise_f"] >= knn_uf["pairwise_f"] + 0.05, (ours, knn_uf)
    assert ours["bcubed_f"] >= knn_uf["bcubed_f"] + 0.05, (ours, knn_uf)
    assert ours["noise_ratio"] < knn_uf["noise_ratio"], (ours, knn_uf)


def test_pair_stats_can_be_switched_off_and_the_product_head_stays() -> None:
    """pair_stats=False drops the statistics but keeps the project's head (slot, encoder output and
    its product with the centre's, one linear layer): not the paper's model (its preset is below)."""
    feats, labels = _blobs(6, 5)
    plain = make_method("clusformer", **{**_SMALL, "epochs": 1, "pair_stats": False}).fit(feats, labels)
    assert plain.config.pair_stats is False and plain.model_.pair_norm is None
    assert isinstance(plain.model_.head, torch.nn.Linear) and plain.model_.head.in_features == 3 * _SMALL["d_model"]
    assert plain.fit_predict(feats, None).shape == (len(feats),)
    default = make_method("clusformer", **{**_SMALL, "epochs": 1})
    assert default.config.pair_stats is True and default.config.head == "product"


def test_paper_preset_is_the_papers_algorithm_and_learns() -> None:
    """preset="paper": one linear layer per decoder slot (section 4.3.5), no pair statistics, a link
    when either direction passes tau, union-find; at CPU sizes it trains and clusters well-separated
    identities far better than chance."""
    sizes = {k: v for k, v in _SMALL.items() if k != "max_train_centres"}
    paper = make_method("clusformer", preset="paper", **{**sizes, "epochs": 6})
    cfg = paper.config
    assert (cfg.head, cfg.pair_stats, cfg.link_rule, cfg.partition) == ("paper", False, "any", "union_find")
    feats, labels = _blobs(12, 6)
    paper.fit(feats, labels)
    head = paper.model_.head
    assert isinstance(head, torch.nn.Linear) and head.in_features == _SMALL["d_model"] and paper.model_.pair_norm is None
    test_feats, test_labels = _blobs(10, 6, seed=3)
    assert evaluate_partition(test_labels, paper.fit_predict(test_feats, None))["bcubed_f"] > 0.6
    full = make_method("clusformer", preset="paper")
    assert (full.config.d_model, full.config.num_encoder_layers, full.config.nhead, full.config.epochs) == (256, 6, 8, 50)
    with pytest.raises(ConfigError, match="head 'paper'"):
        make_method("clusformer", preset="paper", pair_stats=True)


def test_retuned_and_untuned_clusformer(caplog) -> None:
    """retuned: same network, another partition / rule, tau tuned again (nothing changed: the fit's
    tau); without a validation slice tau falls back to p = 0.5 with a warning, and a graph too shallow
    for the sequences is rebuilt with a warning."""
    import logging

    feats, labels = _blobs(12, 6)
    params = {**_SMALL, "epochs": 1, "k": 8}
    method = make_method("clusformer", **params, link_rule="tuned").fit(feats, labels)
    same = method.retuned(feats, labels)
    assert same.model_ is method.model_ and (same.tau_, same.link_rule_) == (method.tau_, method.link_rule_)
    infomap = method.retuned(feats, labels, partition="infomap", link_rule="any")
    assert infomap.config.partition == "infomap" and infomap.link_rule == "any" and method.config.partition == "union_find"
    with pytest.raises(ConfigError, match="k change what training computes"):
        method.retuned(feats, labels, k=4)
    with caplog.at_level(logging.WARNING, logger="clustering.clusformer.method"):
        untuned = make_method("clusformer", **params, val_fraction=0.0).fit(feats, labels)
        assert "no validation slice to tune tau on" in caplog.text and untuned.tau == 0.0
        untuned.fit_predict(feats, build_knn(feats, 4))
        assert "the kNN graph given has k=4" in caplog.text


def test_bfloat16_inference_gives_logits_close_to_float32_ones() -> None:
    """``inference_precision='bfloat16'`` autocasts the CPU inference: the logits move by bf16 rounding only."""
    feats, labels = _blobs(8, 6)
    method = Clusformer(k=8, d_model=16, nhead=2, dim_feedforward=32, num_encoder_layers=1, num_decoder_layers=1,
                        epochs=1, val_fraction=0.0, tau=0.5).fit(feats, labels)
    ids, full = method.directed_links(feats)
    method.config = method.config.with_updates(inference_precision="bfloat16")
    half_ids, half = method.directed_links(feats)
    np.testing.assert_array_equal(half_ids, ids)
    real = np.isfinite(full)
    np.testing.assert_array_equal(np.isfinite(half), real)
    difference = np.abs(half[real] - full[real])
    assert 0 < difference.max() < 0.25 and np.median(difference) < 0.05  # bf16 keeps 8 bits of mantissa
    with pytest.raises(ConfigError, match="inference_precision"):
        ClusformerConfig(inference_precision="float16")
