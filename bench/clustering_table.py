"""The clustering table: every tuned baseline, the learned pair models and the seed methods' ablation
rows, on development draws (where settings are chosen) and confirmation draws (never used for a choice).

A draw is a data set with a labelled part the methods are fitted / tuned on (thresholds included)
and a disjoint part they cluster and are scored on:

* ``generated:S``: generated MS1M-like benchmark features (``clustering.benchmark_features``,
  seed S: 600 labelled and 300 unseen identities, 64-d);
* ``real:S``: the 128-d dlib descriptors of ../shared/data (lfw + yale_b + orl,
  ``bench.dlib_features``), identities split in two halves by seed S; skipped when absent;
* with ``--backbone-real``, features of the same folders from a CPU-trained backbone
  (``bench.real_face_features``: trains one the first time, 10-25 minutes), an extra draw.

Development draws: generated 0-2, real 0-2. Confirmation draws: generated 100-109, real 100-104
(the real ones are other splits of the same 2,910 people, which the development splits also hold).
Every method tunes on a labelled slice of whole identities the size of the part clustered, as the
flow does (``tune_samples``).

    python -m bench.clustering_table [--confirm] [--draws generated:0,real:1] [--groups facet,...]
                                     [--jobs 2] [--threads 1] [--refresh] [--report]

Without ``--confirm``: generated 0 and real 0. With it: every development and confirmation draw.
Each (draw, group of rows fitted together) is computed once and kept under
``bench/results/clustering_draws/`` (a new setting of the group recomputes it; ``--refresh``
recomputes everything asked for); ``--report`` only prints what is kept. Prints, per role and kind
of draw, the mean and standard deviation of every row's FP / FB and of its paired lead over the best
baseline of the draw (the best FP and the best FB among the threshold baselines and the pair models),
with the share of draws on which the lead is >= 2 points and > 0; writes
``bench/results/clustering_table.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.measure import machine_info
from clustering.base import make_method
from clustering.evaluate import HarnessRow, run_rows
from semiface.atomic import save_json

RESULTS = Path(__file__).resolve().parent / "results"
DRAW_CACHE = RESULTS / "clustering_draws"
PROTOCOL = 1  # bump when a change outside the rows' settings changes results (the cache keys hold it)

K = 30  # neighbours (self included) of the baselines, pair_gbdt and Clusformer; FaceT's hop1 + 1
GRAPH_K = 31  # the harness graph: deep enough for the pair statistics (30 neighbours besides self)

THRESHOLD_BASELINES = ("knn_uf", "infomap", "hac", "dbscan")
PAIR_MODELS = ("pair_gbdt", "pair_gbdt+infomap")
# the pair model with the Markov time chosen for it (group markov_chosen_gbdt, where it ran) is a baseline too
BASELINES = THRESHOLD_BASELINES + PAIR_MODELS + ("pair_gbdt+infomap, markov 1.25",)

# CPU sizes shared by every row of a seed method, so that the rows differ by algorithm only.
FACET_SIZE = {"hop1": 29, "hop2": 5, "depth": 1, "heads": 2, "head_dim": 32, "ff_dim": 128, "dropout": 0.1,
              "epochs": 8, "batch_size": 32, "lr": 0.002, "warmup_steps": 50}
CLUSFORMER_SIZE = {"k": K, "d_model": 64, "nhead": 4, "dim_feedforward": 128, "num_encoder_layers": 1,
                   "num_decoder_layers": 1, "dropout": 0.0, "epochs": 8, "batch_size": 64, "lr": 2e-3}
# The project's FaceT: the demo preset (FACET_SIZE + the product edge embedding) with the pair
# statistics, balanced sampling and the link rule tuned; Infomap weighs links by the root of their odds.
# Infomap's Markov time is spelled out: these rows ran at 1, before the library default moved to the 2
# chosen here (MARKOV_CHOSEN, group markov_chosen_facet), so that the rows keep what they measured.
FACET = {"preset": "demo", **FACET_SIZE, "link_rule": "tuned", "infomap_weight": "sqrt_odds", "infomap_markov_time": 1.0}
CLUSFORMER = {**CLUSFORMER_SIZE}
# The pair models' trees and Infomap weight, chosen on the development draws (pair_gbdt_settings): the best
# mean of FP and FB over both kinds of draw for each row.
PAIR_GBDT = {"k": K, "max_iter": 100, "max_leaf_nodes": 15}
PAIR_GBDT_INFOMAP = {"k": K, "max_iter": 400, "learning_rate": 0.05, "infomap_weight": "sqrt_odds"}
# Infomap Markov times chosen on the development draws (markov_* groups) by the mean of FP and FB over both kinds
# of draw, row by row; the plain Infomap baseline kept 1 (every time over 1 lost there).
MARKOV_CHOSEN = {"pair_gbdt+infomap": 1.25, "facet+infomap": 2.0, "facet+infomap (p)": 1.5, "clusformer+infomap": 1.25}


@dataclass(frozen=True)
class Group:
    """Rows fitted together on one draw: the first fits, the others may retune it (``HarnessRow``)."""

    name: str
    rows: tuple[HarnessRow, ...]
    what: str


MARKOV_TIMES = (1.25, 1.5, 2.0)  # Infomap Markov times the markov_* exploration groups try


def _one_search(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with Infomap's default of one search (how the trials_* and markov_* groups run their base rows)."""
    return {key: value for key, value in params.items() if key != "infomap_trials"}


def _retune(label: str, base: str, **changes: Any) -> HarnessRow:
    return HarnessRow(label, base.split(" ")[0], changes, retune_of=base)


def _search_rows(method: str, params: dict[str, Any], setting: str, tag: str, values: Sequence[Any]) -> tuple[HarnessRow, ...]:
    """``method`` fitted once with one Infomap search (label "``method`` ``tag``1"), then retuned with Infomap's
    ``setting`` at each of ``values`` (labels "``method`` ``tag``value")."""
    base = f"{method} {tag}1"
    return (HarnessRow(base, method, _one_search(params)),
            *(_retune(f"{method} {tag}{value}", base, **{setting: value}) for value in values))


GROUPS: dict[str, Group] = {g.name: g for g in (
    Group("baselines", tuple(HarnessRow(m, m, {"k": K}) for m in THRESHOLD_BASELINES),
          "threshold baselines, threshold tuned"),
    Group("pair_gbdt", (
        HarnessRow("pair_gbdt", "pair_gbdt", PAIR_GBDT),
        HarnessRow("pair_gbdt+infomap", "pair_gbdt+infomap", PAIR_GBDT_INFOMAP),
    ), "gradient-boosted trees over the pair statistics, union-find / Infomap (tau and rule tuned as FaceT's)"),
    Group("facet_paper", (
        HarnessRow("facet (paper)", "facet", {"preset": "paper", **FACET_SIZE}),
    ), "FaceT as the paper: RE + LP on the embeddings, cat(g_q, g_qk), plain cross-entropy, rule any, union-find"),
    Group("facet", (
        HarnessRow("facet+infomap", "facet+infomap", FACET),
        _retune("facet", "facet+infomap", partition="union_find"),
        _retune("facet+infomap (p)", "facet+infomap", infomap_weight="probability"),
    ), "the project's FaceT (+ pair statistics, product edge, balanced sampling, tuned rule), then + Infomap "
       "(link probabilities), then + link weights (root of the odds)"),
    Group("clusformer_paper", (
        HarnessRow("clusformer (paper)", "clusformer", {"preset": "paper", **CLUSFORMER_SIZE}),
    ), "Clusformer as the paper: one linear layer per decoder slot, no pair statistics, rule any, union-find"),
    Group("clusformer", (
        HarnessRow("clusformer+infomap", "clusformer+infomap", CLUSFORMER),
        _retune("clusformer", "clusformer+infomap", partition="union_find"),
        _retune("clusformer+infomap (sqrt)", "clusformer+infomap", infomap_weight="sqrt_odds"),
        _retune("clusformer+infomap (rule tuned)", "clusformer+infomap", link_rule="tuned"),
    ), "the project's Clusformer (+ product head and pair statistics), then + Infomap (link probabilities), "
       "then + link weights (root of the odds)"),
    Group("markov_chosen_gbdt", (
        HarnessRow("pair_gbdt+infomap, markov 1.25", "pair_gbdt+infomap",
                   {**PAIR_GBDT_INFOMAP, "infomap_markov_time": MARKOV_CHOSEN["pair_gbdt+infomap"]}),
    ), "the pair model + Infomap at the Markov time chosen on the development draws (a baseline)"),
    Group("markov_chosen_facet", (
        HarnessRow("facet+infomap, markov 2", "facet+infomap", {**FACET, "infomap_markov_time": MARKOV_CHOSEN["facet+infomap"]}),
        _retune("facet+infomap (p), markov 1.5", "facet+infomap, markov 2", infomap_weight="probability",
                infomap_markov_time=MARKOV_CHOSEN["facet+infomap (p)"]),
    ), "FaceT + Infomap (root odds / probabilities) at the Markov times chosen on the development draws"),
    Group("markov_chosen_clusformer", (
        HarnessRow("clusformer+infomap, markov 1.25", "clusformer+infomap",
                   {**CLUSFORMER, "infomap_markov_time": MARKOV_CHOSEN["clusformer+infomap"]}),
    ), "Clusformer + Infomap at the Markov time chosen on the development draws"),
)}
DEFAULT_GROUPS = tuple(GROUPS)
# Designs tried on the development draws only (``--groups``): the pair models' settings, and levers
# for the seed methods (stacking their links with the pair model's, with each other).
_GBDT_MEMBER = ("pair_gbdt", {"k": K})
EXPLORATION: dict[str, Group] = {g.name: g for g in (
    Group("pair_gbdt_default", (
        HarnessRow("pair_gbdt 200x0.1", "pair_gbdt", {"k": K}),
        _retune("pair_gbdt+infomap 200x0.1", "pair_gbdt 200x0.1", partition="infomap"),
    ), "pair_gbdt's defaults (200 trees, learning rate 0.1, 31 leaves), Infomap on link probabilities"),
    Group("pair_gbdt_settings", (
        HarnessRow("pair_gbdt 400x0.05", "pair_gbdt", {"k": K, "max_iter": 400, "learning_rate": 0.05}),
        _retune("pair_gbdt+infomap 400x0.05", "pair_gbdt 400x0.05", partition="infomap"),
        _retune("pair_gbdt+infomap 400x0.05 sqrt", "pair_gbdt 400x0.05", partition="infomap",
                infomap_weight="sqrt_odds"),
        HarnessRow("pair_gbdt 100x0.1 l15", "pair_gbdt", {"k": K, "max_iter": 100, "max_leaf_nodes": 15}),
        _retune("pair_gbdt+infomap 100x0.1 l15", "pair_gbdt 100x0.1 l15", partition="infomap"),
    ), "pair_gbdt's trees and Infomap weight"),
    Group("stack_facet_gbdt", (
        HarnessRow("stack facet+gbdt +infomap", "link_stack", {"members": [("facet", FACET), _GBDT_MEMBER], "k": K,
                                                                "partition": "infomap", "infomap_weight": "sqrt_odds"}),
        _retune("stack facet+gbdt", "stack facet+gbdt +infomap", partition="union_find"),
        _retune("stack facet+gbdt +infomap (p)", "stack facet+gbdt +infomap", infomap_weight="probability"),
    ), "FaceT's and pair_gbdt's link log-odds stacked (logistic regression on held-out identities' links)"),
    Group("stack_facet_gbdt_markov", (
        HarnessRow("stack facet+gbdt +infomap m2", "link_stack", {"members": [("facet", FACET), _GBDT_MEMBER], "k": K,
                                                                   "partition": "infomap", "infomap_weight": "sqrt_odds",
                                                                   "infomap_markov_time": 2.0}),
        _retune("stack facet+gbdt +infomap m1.25", "stack facet+gbdt +infomap m2", infomap_markov_time=1.25),
        _retune("stack facet+gbdt +infomap (p) m1.5", "stack facet+gbdt +infomap m2", infomap_weight="probability",
                infomap_markov_time=1.5),
    ), "FaceT's and pair_gbdt's links stacked, Infomap at the Markov times chosen for FaceT's rows"),
    Group("stack_clusformer_gbdt", (
        HarnessRow("stack clusformer+gbdt +infomap", "link_stack", {"members": [("clusformer", CLUSFORMER), _GBDT_MEMBER],
                                                                     "k": K, "partition": "infomap"}),
        _retune("stack clusformer+gbdt +infomap (sqrt)", "stack clusformer+gbdt +infomap", infomap_weight="sqrt_odds"),
    ), "Clusformer's and pair_gbdt's link log-odds stacked"),
    Group("stack_facet_clusformer", (
        HarnessRow("stack facet+clusformer +infomap", "link_stack", {"members": [("facet", FACET), ("clusformer", CLUSFORMER)],
                                                                      "k": K, "partition": "infomap",
                                                                      "infomap_weight": "sqrt_odds"}),
        _retune("stack facet+clusformer +infomap (p)", "stack facet+clusformer +infomap", infomap_weight="probability"),
    ), "FaceT's and Clusformer's link log-odds stacked"),
    Group("trials_baselines", tuple(HarnessRow(f"infomap t{t}", "infomap", {"k": K, "num_trials": t}) for t in (3, 10)),
          "the Infomap baseline keeping the best of 3 / 10 searches"),
    Group("trials_gbdt", (
        *_search_rows("pair_gbdt+infomap", PAIR_GBDT_INFOMAP, "infomap_trials", "t", (3, 10)),
    ), "pair_gbdt + Infomap keeping the best of 1 / 3 / 10 searches"),
    Group("trials_facet", (
        *_search_rows("facet+infomap", FACET, "infomap_trials", "t", (3, 10)),
        *(_retune(f"facet+infomap (p) t{t}", "facet+infomap t1", infomap_weight="probability", infomap_trials=t)
          for t in (1, 3, 10)),
    ), "FaceT + Infomap (root odds / probabilities) keeping the best of 1 / 3 / 10 searches"),
    Group("trials_clusformer", (
        *_search_rows("clusformer+infomap", CLUSFORMER, "infomap_trials", "t", (3, 10)),
    ), "Clusformer + Infomap keeping the best of 1 / 3 / 10 searches"),
    Group("markov_baselines", tuple(HarnessRow(f"infomap m{m}", "infomap", {"k": K, "markov_time": m}) for m in MARKOV_TIMES),
          "the Infomap baseline at Markov times over 1 (fewer, larger modules)"),
    Group("markov_gbdt", (
        *_search_rows("pair_gbdt+infomap", PAIR_GBDT_INFOMAP, "infomap_markov_time", "m", MARKOV_TIMES),
    ), "pair_gbdt + Infomap at Markov times 1 / 1.25 / 1.5 / 2"),
    Group("markov_facet", (
        *_search_rows("facet+infomap", FACET, "infomap_markov_time", "m", MARKOV_TIMES),
        *(_retune(f"facet+infomap (p) m{m}", "facet+infomap m1", infomap_weight="probability", infomap_markov_time=m)
          for m in (1.0, *MARKOV_TIMES)),
    ), "FaceT + Infomap (root odds / probabilities) at Markov times 1 / 1.25 / 1.5 / 2"),
    Group("markov_clusformer", (
        *_search_rows("clusformer+infomap", CLUSFORMER, "infomap_markov_time", "m", MARKOV_TIMES),
    ), "Clusformer + Infomap at Markov times 1 / 1.25 / 1.5 / 2"),
)}
GROUPS.update(EXPLORATION)
# What each row adds to the one before it (the table's ablation column).
ABLATION = {
    "facet (paper)": "the paper's algorithm",
    "facet": "+ pair statistics (and product edge, balanced sampling, tuned rule)",
    "facet+infomap (p)": "+ Infomap partition (link probabilities)",
    "facet+infomap": "+ link weights (root of the odds)",
    "clusformer (paper)": "the paper's algorithm",
    "clusformer": "+ product head and pair statistics",
    "clusformer+infomap": "+ Infomap partition (link probabilities)",
    "clusformer+infomap (sqrt)": "+ link weights (root of the odds)",
    "clusformer+infomap (rule tuned)": "+ Infomap, link rule tuned (instead of average)",
}


@dataclass(frozen=True)
class Draw:
    """One data set of the protocol: ``kind`` generated or real, its seed and its role."""

    kind: str
    seed: int
    role: str

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.seed}"


DEVELOPMENT = tuple(Draw(kind, seed, "development") for kind in ("generated", "real") for seed in range(3))
CONFIRMATION = (tuple(Draw("generated", seed, "confirmation") for seed in range(100, 110))
                + tuple(Draw("real", seed, "confirmation") for seed in range(100, 105)))
KINDS = ("generated", "real")
BACKBONE_DRAW = Draw("backbone", 0, "extra")


def parse_draws(text: str) -> tuple[Draw, ...]:
    """``generated:0,real:3`` -> draws (their role from the protocol's lists; others are "extra")."""
    known = {d.name: d for d in DEVELOPMENT + CONFIRMATION}
    draws = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        kind, _, seed = item.partition(":")
        if kind not in KINDS or not seed.isdigit():
            raise ValueError(f"--draws: expected KIND:SEED with KIND in {KINDS}, got {item!r}")
        draws.append(known.get(item, Draw(kind, int(seed), "extra")))
    return tuple(draws)


# ---------------------------------------------------------------------------------------------
# One draw


@dataclass(frozen=True)
class DrawData:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    title: str


def load_draw(draw: Draw, features_dir: Path | None = None,
              backbone_dirs: tuple[Path | None, Path | None] | None = None) -> DrawData:
    """The labelled and clustered parts of ``draw`` (``backbone_dirs``: data and cache folders of the
    backbone draw, None for ``bench.real_face_features``' defaults)."""
    if draw.kind == "generated":
        from clustering.benchmark_features import BenchmarkConfig, benchmark_splits

        splits = benchmark_splits(600, [300], config=BenchmarkConfig(dim=64, nuisance_dims=6), seed=draw.seed)
        title = (f"generated 64-d features, seed {draw.seed}: 600 labelled identities ({len(splits.train_labels)} samples), "
                 f"clustering 300 unseen ({len(splits.test_labels[0])} samples)")
        return DrawData(splits.train_features, splits.train_labels, splits.test_features[0], splits.test_labels[0], title)
    if draw.kind == "backbone":
        return _backbone_draw(*(backbone_dirs or (None, None)))
    from bench.dlib_features import DEFAULT_FEATURES, real_feature_split

    split = real_feature_split(features_dir or DEFAULT_FEATURES, seed=draw.seed)
    return DrawData(split.labelled_features, split.labelled_labels, split.unlabelled_features, split.unlabelled_labels,
                    f"real faces, {split.describe()} (identity split seed {draw.seed})")


def _backbone_draw(data_dir: Path | None, cache_dir: Path | None) -> DrawData:
    # Imported here: it trains a backbone (albumentations), which the other draws never need.
    from bench.real_face_features import DEFAULT_CACHE, DEFAULT_DATA, RealFaceConfig, real_face_features

    config = RealFaceConfig()
    feats = real_face_features(data_dir or DEFAULT_DATA, cache_dir or DEFAULT_CACHE, config, progress=True)
    title = (f"real face folders, features of a {config.backbone.trunk} backbone trained {config.backbone.epochs} "
             f"epochs on CPU: fitted on {len(np.unique(feats.labelled_labels))} labelled identities "
             f"({len(feats.labelled_labels)} images), clustering {len(np.unique(feats.unlabelled_labels))} unseen "
             f"({len(feats.unlabelled_labels)} images)")
    return DrawData(feats.labelled_features, feats.labelled_labels, feats.unlabelled_features, feats.unlabelled_labels,
                    title)


def group_rows(group: Group, tune_samples: int) -> tuple[HarnessRow, ...]:
    """The group's rows with ``tune_samples`` set where the method takes it (the flow's rule: the
    size of the part clustered); retuning rows inherit it."""
    rows = []
    for row in group.rows:
        params = dict(row.params)
        if row.retune_of is None and "tune_samples" in _accepted(row.method):
            params.setdefault("tune_samples", tune_samples)
        rows.append(HarnessRow(row.label, row.method, params, row.retune_of))
    return tuple(rows)


def _accepted(method: str) -> set[str]:
    return set(inspect.signature(type(make_method(method))).parameters)


def group_key(group: Group, draw: Draw) -> str:
    """What a kept result must match: the protocol version, the draw and every row's settings."""
    spec = {"protocol": PROTOCOL, "draw": draw.name, "rows": [
        (r.label, r.method, sorted(r.params.items()), r.retune_of) for r in group.rows]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path(group: Group, draw: Draw) -> Path:
    return DRAW_CACHE / draw.name.replace(":", "-") / f"{group.name}.json"


def run_group(group: Group, draw: Draw, threads: int | None = None, features_dir: Path | None = None,
              refresh: bool = False, backbone_dirs: tuple[Path | None, Path | None] | None = None) -> dict:
    """The group's rows on ``draw`` (kept on disk; computed when absent, stale or ``refresh``)."""
    path, key = cache_path(group, draw), group_key(group, draw)
    if not refresh and path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return kept
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    data = load_draw(draw, features_dir, backbone_dirs)
    rows = group_rows(group, len(data.test_y))
    frame = run_rows(rows, data.train_x, data.train_y, data.test_x, data.test_y, GRAPH_K)
    result = {"key": key, "draw": draw.name, "group": group.name, "title": data.title, "threads": torch.get_num_threads(),
              "seconds": time.perf_counter() - started, "machine": machine_info(),
              "params": {r.label: {**r.params, **({"retune_of": r.retune_of} if r.retune_of else {})} for r in rows},
              "results": json.loads(frame.to_json(orient="records"))}
    save_json(path, result)
    print(f"{draw.name} {group.name}: {result['seconds']:.0f} s", flush=True)
    return result


def _run_task(task: tuple) -> dict:
    name, draw, threads, features_dir, refresh, backbone_dirs = task
    return run_group(GROUPS[name], draw, threads, features_dir, refresh, backbone_dirs)


# ---------------------------------------------------------------------------------------------
# Across draws


def collect(draws: Sequence[Draw], groups: Sequence[str]) -> pd.DataFrame:
    """One row per (draw, method) of every kept result that is current."""
    records = []
    for draw in draws:
        for name in groups:
            group = GROUPS[name]
            path = cache_path(group, draw)
            if not path.is_file():
                continue
            kept = json.loads(path.read_text())
            if kept.get("key") != group_key(group, draw):
                continue
            for row in kept["results"]:
                records.append({"role": draw.role, "kind": draw.kind, "seed": draw.seed, "group": name, **row})
    return pd.DataFrame(records)


def with_leads(frame: pd.DataFrame, baselines: Sequence[str] = BASELINES) -> pd.DataFrame:
    """Points of FP / FB over the best baseline of each draw, per metric (the best FP and the best FB may
    come from two baselines); NaN where a draw has none of ``baselines``."""
    keys = ["role", "kind", "seed"]
    best = (frame[frame["method"].isin(baselines)].groupby(keys)[["pairwise_f", "bcubed_f"]].max()
            .rename(columns={"pairwise_f": "best_fp", "bcubed_f": "best_fb"}))
    out = frame.join(best, on=keys)
    return out.assign(lead_fp=100 * (out["pairwise_f"] - out["best_fp"]), lead_fb=100 * (out["bcubed_f"] - out["best_fb"]))


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (role, kind, method): draws, mean and sd of FP, FB and of the leads, the share of draws with
    a lead >= 2 and > 0, mean fit seconds."""
    def share(at_least: float, strict: bool = False) -> Callable[[pd.Series], float]:
        return lambda s: float(((s > at_least) if strict else (s >= at_least)).mean())

    grouped = frame.groupby(["role", "kind", "method"], sort=False)
    out = grouped.agg(
        draws=("seed", "nunique"), fp=("pairwise_f", "mean"), fp_sd=("pairwise_f", "std"),
        fb=("bcubed_f", "mean"), fb_sd=("bcubed_f", "std"),
        lead_fp=("lead_fp", "mean"), lead_fp_sd=("lead_fp", "std"), fp_ge2=("lead_fp", share(2.0)),
        fp_gt0=("lead_fp", share(0.0, strict=True)),
        lead_fb=("lead_fb", "mean"), lead_fb_sd=("lead_fb", "std"), fb_ge2=("lead_fb", share(2.0)),
        fb_gt0=("lead_fb", share(0.0, strict=True)), fit_s=("fit_seconds", "mean"),
    )
    return out.reset_index()


def format_summary(summary: pd.DataFrame, role: str, kind: str) -> str:
    part = summary[(summary["role"] == role) & (summary["kind"] == kind)]
    if part.empty:
        return ""
    order = {name: i for i, name in enumerate((*BASELINES, *ABLATION))}
    part = part.sort_values("method", key=lambda m: m.map(lambda name: order.get(name, len(order))), kind="stable")
    lines = [f"{'method':32} {'n':>2} {'FP':>13} {'FB':>13} {'FP lead':>13} {'>=2':>4} {'>0':>4} "
             f"{'FB lead':>13} {'>=2':>4} {'>0':>4} {'fit s':>6}  what it adds"]
    for r in part.itertuples():
        if r.method in BASELINES:
            leads = f"{'':13} {'':4} {'':4} {'':13} {'':4} {'':4}"
        else:
            leads = (f"{r.lead_fp:+6.1f} ±{_sd(r.lead_fp_sd):4.1f} {100 * r.fp_ge2:3.0f}% {100 * r.fp_gt0:3.0f}% "
                     f"{r.lead_fb:+6.1f} ±{_sd(r.lead_fb_sd):4.1f} {100 * r.fb_ge2:3.0f}% {100 * r.fb_gt0:3.0f}%")
        lines.append(f"{r.method:32} {r.draws:2d} {r.fp:.3f} ±{_sd(r.fp_sd):.3f} {r.fb:.3f} ±{_sd(r.fb_sd):.3f} "
                     f"{leads} {r.fit_s:6.0f}  {'baseline' if r.method in BASELINES else ABLATION.get(r.method, '')}")
    return "\n".join(lines)


def _sd(value: float) -> float:
    return 0.0 if pd.isna(value) else float(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--confirm", action="store_true", help="every development and confirmation draw")
    parser.add_argument("--draws", help="draws to run, e.g. generated:0,real:100 (default: generated:0,real:0)")
    parser.add_argument("--groups", default=",".join(DEFAULT_GROUPS), help=f"groups of rows ({', '.join(GROUPS)})")
    parser.add_argument("--features", type=Path, help="folder holding dlib_128.npy and its labels (real draws)")
    parser.add_argument("--backbone-real", action="store_true",
                        help="also cluster features of the real folders from a CPU-trained backbone (an extra draw)")
    parser.add_argument("--data", type=Path, help="folder holding lfw/, yale_b/, orl/ (--backbone-real; default ../shared/data)")
    parser.add_argument("--cache", type=Path, help="backbone feature cache (--backbone-real; default bench/results/real_faces)")
    parser.add_argument("--jobs", type=int, default=1, help="(draw, group) pairs computed at once, one process each")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process (1 when the cores are shared)")
    parser.add_argument("--refresh", action="store_true", help="recompute kept results")
    parser.add_argument("--report", action="store_true", help="print what is kept, compute nothing")
    args = parser.parse_args(argv)
    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"--groups: unknown {', '.join(unknown)}; known: {', '.join(GROUPS)}")
    if "baselines" not in groups and "pair_gbdt" not in groups and not args.report:
        print("note: no baseline group asked for: leads use the baselines already kept for these draws")
    try:
        draws = parse_draws(args.draws) if args.draws else (DEVELOPMENT + CONFIRMATION if args.confirm
                                                              else parse_draws("generated:0,real:0"))
    except ValueError as exc:
        parser.error(str(exc))
    from bench.dlib_features import DEFAULT_FEATURES

    features_dir = args.features or DEFAULT_FEATURES
    if not (features_dir / "dlib_128.npy").is_file():
        print(f"real face features not found in {features_dir}: real draws skipped")
        draws = tuple(d for d in draws if d.kind != "real")
    if args.backbone_real:
        draws += (BACKBONE_DRAW,)

    started = time.perf_counter()
    if not args.report:
        tasks = [(g, d, args.threads, features_dir, args.refresh, (args.data, args.cache)) for d in draws for g in groups]
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
                list(pool.map(_run_task, tasks))
        else:
            for task in tasks:
                _run_task(task)
    frame = collect(draws, tuple(GROUPS))
    if frame.empty:
        print("nothing kept for these draws yet")
        return
    summary = summarise(with_leads(frame))
    for role in ("development", "confirmation", "extra"):
        for kind in (*KINDS, BACKBONE_DRAW.kind):
            text = format_summary(summary, role, kind)
            if text:
                seeds = sorted(frame[(frame["role"] == role) & (frame["kind"] == kind)]["seed"].unique())
                print(f"\n{role} draws, {kind} (seeds {', '.join(map(str, seeds))}): mean ±sd over draws; leads in "
                      "points over the draw's best baseline (pair models included), share of draws >= 2 / > 0")
                print(text)
    report = {"machine": machine_info(), "k": K, "graph_k": GRAPH_K, "protocol": PROTOCOL,
              "groups": {name: {"what": GROUPS[name].what, "rows": [r.label for r in GROUPS[name].rows]} for name in GROUPS},
              "params": {r.label: r.params for g in GROUPS.values() for r in g.rows},
              "summary": json.loads(summary.to_json(orient="records")), "draws": json.loads(frame.to_json(orient="records")),
              "seconds": time.perf_counter() - started}
    out = save_json(RESULTS / "clustering_table.json", report)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
