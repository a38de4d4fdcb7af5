"""link_stack: members' link log-odds combined on held-out identities' links, then tuned and partitioned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustering.base import make_method
from clustering.benchmark_features import BenchmarkConfig, benchmark_splits
from clustering.knn import build_knn
from clustering.metrics import evaluate_partition
from semiface.errors import ConfigError, DataError

TINY_FACET = dict(preset="demo", hop1=10, hop2=3, heads=2, head_dim=8, ff_dim=16, epochs=2, device="cpu")


@pytest.fixture(scope="module")
def splits():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield benchmark_splits(100, [60], config=BenchmarkConfig(dim=32, nuisance_dims=4), seed=2)
    torch.set_num_threads(threads)


def test_stack_weighs_its_members_on_heldout_links_and_clusters(splits, tmp_path) -> None:
    members = [("facet", TINY_FACET), ("pair_gbdt", {"k": 11, "max_iter": 40})]
    stack = make_method("link_stack", members=members, k=11, partition="infomap")
    stack.fit(splits.train_features, splits.train_labels)
    assert stack.weights_.shape == (3,) and (stack.weights_[:2] > 0).all()  # both members carry signal
    assert [type(m).name for m in stack.fitted_] == ["facet", "pair_gbdt"]
    assert all(m.config.val_fraction == 0.2 if hasattr(m, "config") else m.val_fraction == 0.2 for m in stack.fitted_)
    test_x, test_y = splits.test_features[0], splits.test_labels[0]
    graph = build_knn(test_x, 31)
    stacked = evaluate_partition(test_y, stack.fit_predict(test_x, graph))
    alone = evaluate_partition(test_y, stack.fitted_[1].fit_predict(test_x, graph))
    assert stacked["bcubed_f"] > 0.7 and stacked["bcubed_f"] > alone["bcubed_f"] - 0.05, (stacked, alone)
    union_find = stack.retuned(splits.train_features, splits.train_labels, partition="union_find")
    assert union_find.fitted_ is stack.fitted_ and union_find.partition == "union_find" and stack.partition == "infomap"
    assert stack.confidence_.shape == (len(test_x),) and (stack.confidence_ <= 1).all()
    loaded = type(stack).load(stack.save(tmp_path / "stack.pkl"))
    np.testing.assert_array_equal(loaded.fit_predict(test_x, graph), stack.fit_predict(test_x, graph))
    (tmp_path / "foreign.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="foreign.pkl"):
        type(stack).load(tmp_path / "foreign.pkl")


def test_stack_refuses_members_that_set_what_it_shares() -> None:
    with pytest.raises(ConfigError, match="at least two members"):
        make_method("link_stack", members=[("pair_gbdt", {})])
    with pytest.raises(ConfigError, match="sets seed"):
        make_method("link_stack", members=[("pair_gbdt", {"seed": 3}), ("facet", {})])
    with pytest.raises(ConfigError, match="partitions the stacked links itself"):
        make_method("link_stack", members=[("facet+infomap", {}), ("pair_gbdt", {})])
    with pytest.raises(ConfigError, match="call fit"):
        make_method("link_stack").fit_predict(np.eye(4, dtype=np.float32), None)
