"""The clustering bench's protocol: development and confirmation draws, results kept per (draw, group)
and recomputed when a setting changes, paired leads over each draw's best baseline, their spread and
the share of draws on which they hold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bench.clustering_table as table
from clustering.benchmark_features import BenchmarkConfig, benchmark_splits
from clustering.evaluate import HarnessRow


def test_protocol_draws_never_mix_development_and_confirmation() -> None:
    development = {d.name for d in table.DEVELOPMENT}
    confirmation = {d.name for d in table.CONFIRMATION}
    assert development == {f"{kind}:{seed}" for kind in ("generated", "real") for seed in range(3)}
    assert not development & confirmation
    assert sum(d.kind == "generated" for d in table.CONFIRMATION) >= 10 and sum(d.kind == "real" for d in table.CONFIRMATION) >= 5
    assert [d.role for d in table.parse_draws("generated:1,real:100,real:7")] == ["development", "confirmation", "extra"]
    with pytest.raises(ValueError, match="KIND:SEED"):
        table.parse_draws("lfw:1")


def test_every_protocol_group_tunes_on_a_slice_the_size_of_the_part_clustered() -> None:
    for group in table.DEFAULT_GROUPS:
        for row in table.group_rows(table.GROUPS[group], 5015):
            if row.retune_of is None:
                assert row.params["tune_samples"] == 5015, (group, row.label)
    labels = {row.label for name in table.DEFAULT_GROUPS for row in table.GROUPS[name].rows}
    assert set(table.BASELINES) <= labels and set(table.ABLATION) <= labels


def test_results_are_kept_per_draw_and_group_and_recomputed_when_a_setting_changes(tmp_path, monkeypatch) -> None:
    splits = benchmark_splits(40, [30], config=BenchmarkConfig(dim=16, nuisance_dims=2), seed=0)
    data = table.DrawData(splits.train_features, splits.train_labels, splits.test_features[0], splits.test_labels[0], "tiny")
    monkeypatch.setattr(table, "DRAW_CACHE", tmp_path)
    monkeypatch.setattr(table, "load_draw", lambda *args: data)
    group = table.Group("tiny", (HarnessRow("knn_uf", "knn_uf", {"k": 8}), HarnessRow("infomap", "infomap", {"k": 8})), "")
    draw = table.Draw("generated", 0, "development")
    computed = []
    run_rows = table.run_rows
    monkeypatch.setattr(table, "run_rows", lambda *a, **k: computed.append(a[0]) or run_rows(*a, **k))
    first = table.run_group(group, draw)
    assert [r["method"] for r in first["results"]] == ["knn_uf", "infomap"] and len(computed) == 1
    assert table.run_group(group, draw)["results"] == first["results"] and len(computed) == 1  # kept
    table.run_group(table.Group("tiny", (HarnessRow("knn_uf", "knn_uf", {"k": 6}),), ""), draw)
    assert len(computed) == 2  # another setting: computed again
    table.run_group(group, draw, refresh=True)
    assert len(computed) == 3


def _frame(rows: list[tuple[str, int, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"role": "confirmation", "kind": kind, "seed": seed, "method": method, "pairwise_f": fp,
                          "bcubed_f": fb, "fit_seconds": 1.0} for kind, seed, method, fp, fb in rows])


def test_leads_are_paired_per_draw_over_the_best_baseline_of_each_metric() -> None:
    frame = _frame([
        ("generated", 1, "infomap", 0.90, 0.80), ("generated", 1, "pair_gbdt", 0.85, 0.85),
        ("generated", 1, "facet+infomap", 0.93, 0.86),
        ("generated", 2, "infomap", 0.50, 0.50), ("generated", 2, "pair_gbdt", 0.40, 0.60),
        ("generated", 2, "facet+infomap", 0.51, 0.63),
    ])
    leads = table.with_leads(frame).set_index(["seed", "method"])
    assert leads.loc[(1, "facet+infomap"), "lead_fp"] == pytest.approx(3.0)  # over infomap's FP
    assert leads.loc[(1, "facet+infomap"), "lead_fb"] == pytest.approx(1.0)  # over pair_gbdt's FB
    assert leads.loc[(2, "facet+infomap"), "lead_fp"] == pytest.approx(1.0)
    summary = table.summarise(table.with_leads(frame)).set_index("method")
    row = summary.loc["facet+infomap"]
    assert row["draws"] == 2 and row["lead_fp"] == pytest.approx(2.0) and row["lead_fp_sd"] == pytest.approx(np.sqrt(2))
    assert row["fp_ge2"] == 0.5 and row["fp_gt0"] == 1.0 and row["fb_ge2"] == 0.5
    assert "facet+infomap" in table.format_summary(table.summarise(table.with_leads(frame)), "confirmation", "generated")
