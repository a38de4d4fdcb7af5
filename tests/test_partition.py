"""partition_links (union-find variant) and link_confidence."""

from __future__ import annotations

import numpy as np
import pytest

from clustering.partition import link_confidence, partition_links
from clustering.union_find import connected_components
from semiface.errors import ConfigError


def test_union_find_partition_equals_components_of_links_above_tau() -> None:
    rng = np.random.default_rng(0)
    n, m = 1000, 3000
    src, dst, weight = rng.integers(0, n, m), rng.integers(0, n, m), rng.random(m).astype(np.float32)
    labels = partition_links(n, src, dst, weight, tau=0.7)
    keep = weight > 0.7
    np.testing.assert_array_equal(labels, connected_components(n, src[keep], dst[keep]))
    capped = partition_links(n, src, dst, weight, tau=0.3, max_size=5, min_size=2)
    keep = weight > 0.3
    expected = connected_components(n, src[keep], dst[keep], weight=weight[keep], max_size=5, min_size=2)
    np.testing.assert_array_equal(capped, expected)
    assert (capped == -1).any() and np.bincount(capped[capped >= 0]).max() <= 5


def test_unknown_method_or_parameter_is_refused() -> None:
    one = np.array([0])
    with pytest.raises(ConfigError, match="unknown method"):
        partition_links(2, one, one + 1, np.ones(1), method="spectral")
    with pytest.raises(ConfigError, match="unknown parameter"):
        partition_links(2, one, one + 1, np.ones(1), num_trials=3)


def test_link_confidence_is_mean_weight_inside_own_cluster() -> None:
    labels = np.array([0, 0, 0, 1, -1, 2])
    src = np.array([0, 1, 0, 2, 3, 4, 0])
    dst = np.array([1, 2, 2, 3, 4, 0, 0])
    weight = np.array([0.9, 0.6, 0.3, 0.8, 0.9, 0.9, 1.0])
    conf = link_confidence(labels, src, dst, weight)
    assert conf.dtype == np.float32
    # node 0: links 0-1 (0.9), 0-2 (0.3); 2-3 crosses clusters, 4-0 touches an unclustered node, 0-0 is a self loop
    np.testing.assert_allclose(conf, [0.6, 0.75, 0.45, 0.0, 0.0, 0.0], rtol=1e-6)
