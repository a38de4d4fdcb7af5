"""bench.demo_seeds: the share of the gap each ratio closes, and the summary over seeds."""

import pytest

from bench.demo_seeds import gap_closed, summarise


def _rows(lower: float, ratio3: float | None, upper: float) -> list[dict]:
    return [{"run": "lower-bound", "r_U/L": 0.0, "purity": None, "rank1": lower},
            {"run": "ratio-1", "r_U/L": 1.0, "purity": 0.86, "rank1": lower + 0.01},
            {"run": "ratio-3", "r_U/L": 3.0, "purity": 0.93, "rank1": ratio3},
            {"run": "upper-bound", "r_U/L": 3.0, "purity": 1.0, "rank1": upper}]


def test_the_gap_closed_is_the_ratio_runs_share_of_the_bounds_distance():
    figures = gap_closed(_rows(0.80, 0.86, 0.90))
    assert figures["gap@3"] == pytest.approx(0.6)
    assert figures["gap@1"] == pytest.approx(0.1)
    assert figures["purity@3"] == 0.93 and figures["lower"] == 0.80
    assert gap_closed(_rows(0.80, None, 0.90))["gap@3"] is None  # a ratio run without a rank-1
    assert gap_closed(_rows(0.80, 0.85, 0.80))["gap@3"] is None  # no gap to close


def test_the_summary_covers_finished_seeds_only():
    rows = [{"seed": 0, "minutes": 10.0, **gap_closed(_rows(0.80, 0.86, 0.90))},
            {"seed": 1, "minutes": 12.0, **gap_closed(_rows(0.80, 0.88, 0.90))},
            {"seed": 2, "minutes": 3.0, "failed": "boom"}]
    summary = summarise(rows)
    assert summary["gap@3"]["mean"] == pytest.approx(0.7)
    assert summary["gap@3"]["sd"] == pytest.approx(0.1414, abs=1e-3)
    assert summary["minutes"]["max"] == 12.0
    assert "seed" not in summary
