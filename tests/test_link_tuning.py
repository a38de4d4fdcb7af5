"""Tuning learned links on labelled rows: thresholds on log-odds (no collapse where float32
probabilities saturate), the rule, and held-out rows scored with their merges into trained ones."""

from __future__ import annotations

import numpy as np
import pytest

from clustering.evaluate import heldout_scores, tune_link_threshold
from clustering.link_tuning import EPOCH_RULE, log_odds, rules_to_try, tune_links
from clustering.links import LINK_RULES
from clustering.metrics import evaluate_partition
from clustering.thresholds import quantile_candidates
from semiface.errors import ConfigError, DataError


def _saturated_rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 identities of 5 rows; each row's 8 neighbours: 4 of its identity (log-odds 25-40) and 4 of
    the next identity (log-odds 18-22). Every link is p = 1.0 in float32, as 45 % of FaceT's were."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(40), 5)
    n = len(labels)
    ids = np.empty((n, 9), dtype=np.int64)
    scores = np.empty((n, 9), dtype=np.float32)
    for row in range(n):
        own = np.flatnonzero(labels == labels[row])
        own = own[own != row]
        other = np.flatnonzero(labels == (labels[row] + 1) % 40)[:4]
        ids[row] = np.r_[row, own, other]
        scores[row] = np.r_[np.inf, rng.uniform(25, 40, 4), rng.uniform(18, 22, 4)]
    return labels, ids, scores


def test_log_odds_thresholds_separate_links_that_saturate_as_probabilities() -> None:
    labels, ids, scores = _saturated_rows()
    probabilities = (1 / (1 + np.exp(-scores[:, 1:].astype(np.float64)))).astype(np.float32)
    assert (probabilities == 1.0).all()
    assert len(quantile_candidates(probabilities)) == 1  # the collapse: one candidate, which keeps no link
    assert len(quantile_candidates(scores[:, 1:])) == 24
    heldout = labels >= 30
    tuning = tune_links(labels, heldout, ids, scores, ("any",))
    assert 22 <= tuning.tau < 25
    assert tuning.scores["all_pairwise_f"] == 1.0 and tuning.scores["heldout_bcubed_f"] == 1.0


def test_rules_to_try_and_log_odds_of_given_probabilities() -> None:
    assert rules_to_try("tuned", final=True) == LINK_RULES and rules_to_try("tuned", final=False) == (EPOCH_RULE,)
    assert rules_to_try("mutual", final=True) == ("mutual",)
    with pytest.raises(ConfigError, match="link_rule must be one of"):
        rules_to_try("best", final=True)
    assert log_odds(0.5) == 0.0 and log_odds(0.9) == pytest.approx(np.log(9.0)) and log_odds(1.0) == np.inf
    with pytest.raises(ConfigError, match="probability"):
        log_odds(1.5)


def test_heldout_scores_count_merges_of_heldout_people_into_trained_ones() -> None:
    """Held-out identities 2 and 3 are clustered perfectly among themselves, but 3 is merged with the
    trained identity 1: scored alone (the old epoch score) the held-out rows look perfect; scored in the
    partition of the whole slice they lose precision, and only precision."""
    labels = np.repeat([0, 1, 2, 3], 4)
    heldout = labels >= 2
    pred = np.repeat([0, 1, 2, 1], 4)
    alone = evaluate_partition(labels[heldout], pred[heldout])
    assert alone["pairwise_f"] == alone["bcubed_f"] == 1.0
    scores = heldout_scores(labels, pred, heldout)
    # pairs with a held-out end: identity 3's 12 true ordered pairs + 2 x 4 x 4 false ones with identity 1
    assert scores["pairwise_precision"] == pytest.approx(24 / (24 + 32)) and scores["pairwise_recall"] == 1.0
    assert scores["bcubed_precision"] == pytest.approx((4 * 1.0 + 4 * 0.5) / 8) and scores["bcubed_recall"] == 1.0
    everyone = heldout_scores(labels, pred, np.ones(len(labels), dtype=bool))
    whole = evaluate_partition(labels, pred)
    assert all(everyone[key] == pytest.approx(whole[key]) for key in everyone)
    with pytest.raises(DataError, match="whole identities"):
        heldout_scores(labels, pred, np.arange(len(labels)) == 0)


def test_the_epoch_score_sees_merges_into_trained_identities() -> None:
    """A link from each held-out row into a trained identity, scored just above the links inside
    identities: the tau that keeps the identities whole merges them, which the held-out score now
    shows (it was 1.0 when only links between held-out rows were partitioned)."""
    labels = np.repeat([0, 1, 2, 3], 4)
    heldout = labels >= 2
    src, dst = np.triu_indices(len(labels), 1)
    inside = labels[src] == labels[dst]
    bridge = (labels[src] == 0) & (labels[dst] == 3)
    keep = inside | bridge
    src, dst = src[keep], dst[keep]
    weight = np.where(labels[src] == labels[dst], 5.0, 6.0).astype(np.float32)
    _, tau, scores = tune_link_threshold(labels, heldout, src, dst, weight, [4.0], logits=True)
    assert tau == 4.0 and scores["heldout_pairwise_f"] < 0.8 and scores["all_pairwise_f"] < 0.8


def test_every_infomap_partition_of_a_tuning_runs_the_configured_search(monkeypatch) -> None:
    """``InfomapSearch`` (trials, Markov time) reaches each partition of the sweep and the final one;
    union-find runs no search, and trials under 1 or a Markov time <= 0 are refused."""
    import infomap

    from clustering.partition import InfomapSearch

    searches: list[tuple[int, float]] = []
    original = infomap.Infomap.__init__

    def spy(self, *args, **kwargs):
        searches.append((kwargs["num_trials"], kwargs["markov_time"]))
        original(self, *args, **kwargs)

    monkeypatch.setattr(infomap.Infomap, "__init__", spy)
    labels, ids, scores = _saturated_rows()
    search = InfomapSearch(trials=3, markov_time=1.25)
    tuning = tune_links(labels, labels >= 30, ids, scores, ("average",), partition="infomap", infomap=search)
    assert len(searches) > 10 and set(searches) == {(3, 1.25)}
    assert tuning.scores["all_pairwise_f"] == 1.0
    searches.clear()
    tune_links(labels, labels >= 30, ids, scores, ("average",), infomap=search)
    assert searches == [] and search.params("union_find") == {}
    for trials, markov_time in ((0, 1.0), (1, 0.0)):
        with pytest.raises(ConfigError, match="infomap_trials must be >= 1 and infomap_markov_time > 0"):
            InfomapSearch(trials, markov_time)
