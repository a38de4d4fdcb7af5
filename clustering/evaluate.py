"""Scoring partitions: the threshold sweep the learned methods tune tau with, and the harness.

``run_harness`` fits every method on a labelled part (methods tune their thresholds on it, never
on the part being clustered), builds the kNN graph of the part to cluster once, clusters it with
every method and scores the result. ``main`` is its CLI (``semiface-cluster-eval``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clustering.base import make_method
from clustering.knn import build_knn
from clustering.metrics import evaluate_partition, singletons_for_unclustered
from clustering.partition import ONE_SEARCH, InfomapSearch, partition_links
from clustering.thresholds import COARSE_COUNT, REFINE_COUNT, quantile_candidates, two_stage_search
from semiface.atomic import atomic_open, save_json
from semiface.cli import parse_assignment
from semiface.errors import ConfigError, DataError
from semiface.features import check_features, l2_normalize, load_features, load_meta


def sweep_threshold(
    labels: np.ndarray,
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    taus: Sequence[float] | None = None,
    *,
    partition: str = "union_find",
    max_size: int | None = None,
    seed: int = 0,
    link_weight: str = "probability",
    logits: bool = False,
    heldout: np.ndarray | None = None,
    candidates: int = COARSE_COUNT,
    refine: int = REFINE_COUNT,
    infomap: InfomapSearch = ONE_SEARCH,
) -> tuple[pd.DataFrame, float]:
    """Partition the links at every tau and score it against ``labels``; return (table, best tau).

    ``taus`` None: ``candidates`` quantiles of the link weights, then ``refine`` values around the
    best (``clustering.thresholds``), so any score range is searched well. The table has one row per
    tau (pairwise and BCubed P/R/F, NMI, cluster counts); the best tau maximises the mean of
    pairwise F and BCubed F (ties: the smallest tau). ``heldout`` (bool [n]): score only those rows,
    within the partition of all rows (``heldout_scores``). ``link_weight`` and ``logits`` (weights
    and taus are log-odds): see ``partition_links``. ``infomap``: how Infomap searches
    (``InfomapSearch``; union-find ignores it).
    """
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise DataError("labels", f"expected {n} ground-truth labels, got shape {labels.shape}")
    if taus is not None and len(taus) == 0:
        raise ConfigError("sweep_threshold: no tau to try (empty taus)")

    search = infomap.params(partition)

    def score(thresholds: list[float]) -> list[dict]:
        partitions = (partition_links(n, src, dst, weight, method=partition, tau=tau, max_size=max_size, seed=seed,
                                      link_weight=link_weight, logits=logits, **search) for tau in thresholds)
        if heldout is None:
            return [evaluate_partition(labels, pred) for pred in partitions]
        return [heldout_scores(labels, pred, heldout) for pred in partitions]

    coarse = quantile_candidates(weight, candidates) if taus is None else list(taus)
    best, table = two_stage_search(score, coarse, refine=refine if taus is None else 0)
    return table, best


def heldout_scores(labels: np.ndarray, pred: np.ndarray, heldout: np.ndarray) -> dict[str, float]:
    """Pairwise and BCubed P/R/F of the ``heldout`` rows (bool [N], whole identities) within ``pred``, a
    partition of all N rows: a held-out row's cluster counts its other rows too, so a held-out person
    merged into a trained one costs precision.

    Pairwise: over the ordered pairs of distinct rows with at least one held-out end. BCubed: averaged
    over the held-out rows. Unclustered rows (-1) are singletons.
    """
    labels, heldout = np.asarray(labels), np.asarray(heldout, dtype=bool)
    if heldout.shape != labels.shape or np.shape(pred) != labels.shape:
        raise DataError("heldout", f"expected {len(labels)} predictions and held-out flags, got shapes "
                                   f"{np.shape(pred)} and {heldout.shape}")
    if np.isin(labels[~heldout], labels[heldout]).any():
        raise DataError("heldout", "held-out rows must be whole identities (an identity is partly held out)")
    pred = singletons_for_unclustered(pred)
    cluster = np.unique(pred, return_inverse=True)[1]
    sizes = np.bincount(cluster).astype(np.float64)
    held_in = np.bincount(cluster[heldout], minlength=len(sizes)).astype(np.float64)
    _, cell_of_row, cells = np.unique(np.stack([labels[heldout], cluster[heldout]]), axis=1, return_inverse=True,
                                      return_counts=True)
    _, class_of_row, class_sizes = np.unique(labels[heldout], return_inverse=True, return_counts=True)
    cells, class_sizes = cells.astype(np.float64), class_sizes.astype(np.float64)
    agree = float((cells * (cells - 1)).sum())
    true_pairs = float((class_sizes * (class_sizes - 1)).sum())
    pred_pairs = float((held_in * (held_in - 1) + 2 * held_in * (sizes - held_in)).sum())
    precision = agree / pred_pairs if pred_pairs > 0 else 1.0
    recall = agree / true_pairs if true_pairs > 0 else 1.0
    n_held = max(int(heldout.sum()), 1)
    cell_size = cells[cell_of_row.reshape(-1)]
    b_precision = float((cell_size / sizes[cluster[heldout]]).sum() / n_held)
    b_recall = float((cell_size / class_sizes[class_of_row.reshape(-1)]).sum() / n_held)
    return {"pairwise_precision": precision, "pairwise_recall": recall, "pairwise_f": _harmonic(precision, recall),
            "bcubed_precision": b_precision, "bcubed_recall": b_recall, "bcubed_f": _harmonic(b_precision, b_recall)}


def _harmonic(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


TUNE_ON = ("heldout", "all")
QUICK_CANDIDATES = 16
QUICK_REFINE = 4


def tune_link_threshold(
    labels: np.ndarray,
    heldout: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    taus: Sequence[float] | None = None,
    *,
    tune_on: str = "all",
    partition: str = "union_find",
    max_size: int | None = None,
    seed: int = 0,
    link_weight: str = "probability",
    logits: bool = False,
    quick: bool = False,
    infomap: InfomapSearch = ONE_SEARCH,
) -> tuple[pd.DataFrame, float, dict[str, float]]:
    """Tau for a learned linkage from the links of the whole labelled set; (sweep table, tau, scores).

    ``heldout`` marks rows of identities the model was not trained on. Every tau partitions all
    rows. ``tune_on="heldout"``: tau maximises the scores of the held-out rows in that partition
    (``heldout_scores``: what a trained model gives people it has never seen, merges into trained
    people included). ``"all"``: the scores of all rows, training identities included (their links
    score higher than unseen ones' and pull tau down). ``scores``: pairwise / BCubed F of the
    held-out rows and of the whole set at the chosen tau. ``quick``: fewer candidates and a shorter
    refinement (per-epoch validation: each candidate is one partition). ``link_weight`` and
    ``logits``: see ``partition_links``; ``infomap``: ``sweep_threshold``.
    """
    if tune_on not in TUNE_ON:
        raise ConfigError(f"tune_on must be one of {', '.join(TUNE_ON)}, got {tune_on!r}")
    labels, heldout = np.asarray(labels), np.asarray(heldout, dtype=bool)
    n = len(labels)
    search = {"partition": partition, "max_size": max_size, "seed": seed, "link_weight": link_weight, "logits": logits,
              "candidates": QUICK_CANDIDATES if quick else COARSE_COUNT, "refine": QUICK_REFINE if quick else REFINE_COUNT,
              "infomap": infomap}
    table, tau = sweep_threshold(labels, n, src, dst, weight, taus, heldout=heldout if tune_on == "heldout" else None,
                                 **search)
    pred = partition_links(n, src, dst, weight, method=partition, tau=tau, max_size=max_size, seed=seed,
                           link_weight=link_weight, logits=logits, **infomap.params(partition))
    all_scores, held_scores = evaluate_partition(labels, pred), heldout_scores(labels, pred, heldout)
    return table, tau, {
        "all_pairwise_f": float(all_scores["pairwise_f"]), "all_bcubed_f": float(all_scores["bcubed_f"]),
        "heldout_pairwise_f": float(held_scores["pairwise_f"]), "heldout_bcubed_f": float(held_scores["bcubed_f"]),
    }


# Columns of the printed table: (column of run_harness's frame, header).
TABLE_COLUMNS = (
    ("method", "method"), ("pairwise_f", "FP"), ("bcubed_f", "FB"), ("nmi", "NMI"),
    ("noise_ratio", "noise"), ("n_clusters", "clusters"), ("n_singletons", "singletons"),
    ("n_unclustered", "unclustered"), ("fit_seconds", "fit s"), ("cluster_seconds", "cluster s"),
)


@dataclass(frozen=True)
class HarnessRow:
    """One row of the harness: ``label`` in the table, the registered ``method`` built with ``params``;
    or, with ``retune_of`` (the label of an earlier row), that row's fitted method retuned with
    ``params`` as changes (``Clusterer.retuned``: same learned model, another partition, rule or weight)."""

    label: str
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    retune_of: str | None = None


def run_harness(
    methods: Sequence[str],
    train_features: np.ndarray | None,
    train_labels: np.ndarray | None,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    k: int = 80,
    *,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per method: pairwise/BCubed P/R/F, NMI, FMI, noise ratio, cluster counts, seconds.

    Methods that learn (``needs_training``: FaceT, Clusformer, the threshold baselines) are fitted
    on ``train_features``/``train_labels`` only; ``test_labels`` serve only to score. The kNN
    graphs (``k`` neighbours, self included, capped at N) are built once per part and given to
    every method; methods with a ``k`` parameter use ``k`` unless ``method_params`` says
    otherwise. Oracle methods are given the true number of test identities. The frame's
    ``attrs`` hold the kNN build seconds and sizes.
    """
    method_params = dict(method_params or {})
    unknown = sorted(set(method_params) - set(methods))
    if unknown:
        raise ConfigError(f"run_harness: parameters given for method(s) not run: {', '.join(unknown)}")
    rows = [HarnessRow(name, name, dict(method_params.get(name, {}))) for name in methods]
    return run_rows(rows, train_features, train_labels, test_features, test_labels, k, progress=progress)


def run_rows(
    rows: Sequence[HarnessRow],
    train_features: np.ndarray | None,
    train_labels: np.ndarray | None,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    k: int = 80,
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """``run_harness`` over ``rows`` (``HarnessRow``): several rows may run one method with other
    parameters, and a row may retune an earlier row's fitted method instead of fitting its own
    (``fit_seconds`` is then the retuning's)."""
    labels_seen = [row.label for row in rows]
    if len(set(labels_seen)) != len(labels_seen):
        raise ConfigError(f"run_harness: row labels must be unique, got {labels_seen}")
    test_features = _checked(test_features, test_labels, "features to cluster", "labels to score with")
    has_train = train_features is not None
    if has_train:
        if train_labels is None:
            raise DataError("train labels", "train features given without train labels")
        train_features = _checked(train_features, train_labels, "train features", "train labels")
        if train_features.shape[1] != test_features.shape[1]:
            raise DataError(
                "train features",
                f"dimension {train_features.shape[1]} differs from the features to cluster ({test_features.shape[1]})",
            )
    started = time.perf_counter()
    test_graph = build_knn(test_features, min(k, len(test_features)))
    knn_seconds = time.perf_counter() - started
    train_graph = build_knn(train_features, min(k, len(train_features))) if has_train else None

    out = []
    fitted: dict[str, Any] = {}
    todo = rows
    if progress:
        from tqdm import tqdm

        todo = tqdm(rows, desc="methods", unit="method")
    for row in todo:
        fit_seconds = 0.0
        started = time.perf_counter()
        if row.retune_of is not None:
            if row.retune_of not in fitted:
                raise ConfigError(f"run_harness: row {row.label!r} retunes {row.retune_of!r}, which is not an earlier row")
            if not has_train:
                raise ConfigError(f"run_harness: row {row.label!r} retunes a fitted method: give labelled train features")
            method = fitted[row.retune_of].retuned(train_features, train_labels, train_graph, **row.params)
            fit_seconds = time.perf_counter() - started
        else:
            method = _build(row.method, dict(row.params), k, test_labels)
            if method.needs_training and has_train:
                method.fit(train_features, train_labels, train_graph)
                fit_seconds = time.perf_counter() - started
        fitted[row.label] = method
        started = time.perf_counter()
        try:
            pred = np.asarray(method.fit_predict(test_features, test_graph), dtype=np.int64)
        except ConfigError as exc:
            hint = "" if has_train else " (no labelled train features were given to fit it on)"
            raise ConfigError(f"{row.label}: {exc}{hint}") from exc
        cluster_seconds = time.perf_counter() - started
        tau = getattr(method, "tau_", None)
        out.append({
            "method": row.label, "oracle": method.is_oracle, **evaluate_partition(test_labels, pred),
            "tau": None if tau is None else float(tau), "fit_seconds": fit_seconds, "cluster_seconds": cluster_seconds,
        })
    frame = pd.DataFrame(out)
    frame.attrs.update({
        "knn_seconds": knn_seconds, "k": min(k, len(test_features)), "n_test": len(test_features),
        "n_train": len(train_features) if has_train else 0,
    })
    return frame


def _checked(features: np.ndarray, labels: np.ndarray, source: str, label_source: str) -> np.ndarray:
    """Unit-row float32 copy of ``features`` after checking them and the length of ``labels``."""
    check_features(features, source)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(features):
        raise DataError(label_source, f"expected {len(features)} labels (one per feature row), got shape {labels.shape}")
    return l2_normalize(features)


def _build(name: str, params: dict[str, Any], k: int, test_labels: np.ndarray):
    """``make_method`` with the harness's ``k`` and, for oracles, the true number of identities filled in."""
    probe = make_method(name, **params)
    accepted = inspect.signature(type(probe)).parameters
    extra: dict[str, Any] = {}
    if "k" in accepted and "k" not in params:
        extra["k"] = k
    if probe.is_oracle and "n_clusters" in accepted and "n_clusters" not in params:
        extra["n_clusters"] = len(np.unique(test_labels))
    return make_method(name, **params, **extra) if extra else probe


def format_table(frame: pd.DataFrame) -> str:
    """The harness frame as an aligned text table (method, FP, FB, NMI, noise, counts, seconds)."""
    table = frame[[c for c, _ in TABLE_COLUMNS]].rename(columns=dict(TABLE_COLUMNS))
    table["method"] = [f"{m} (oracle)" if o else m for m, o in zip(frame["method"], frame["oracle"], strict=True)]
    return table.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: cluster features with one or more methods and print/write the scores (exit 2 on bad input)."""
    args = _parser().parse_args(argv)
    try:
        return _run_cli(args)
    except (ConfigError, DataError) as exc:
        print(f"semiface-cluster-eval: {exc}", file=sys.stderr)
        return 2


def _run_cli(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    params = _parse_params(args.param, methods)
    if args.benchmark is not None:
        from clustering.benchmark_features import benchmark_splits

        n_train, n_test = args.benchmark
        splits = benchmark_splits(n_train, [n_test], seed=args.seed)
        train_x, train_y = splits.train_features, splits.train_labels
        test_x, test_y = splits.test_features[0], splits.test_labels[0]
        source = f"generated benchmark features ({n_train} train / {n_test} test identities, seed {args.seed})"
    else:
        if args.features is None or args.labels is None:
            raise ConfigError("give --features and --labels, or --benchmark TRAIN_IDS TEST_IDS")
        test_x, test_y = _load_pair(args.features, args.labels)
        train_x = train_y = None
        if args.train_features is not None or args.train_labels is not None:
            if args.train_features is None or args.train_labels is None:
                raise ConfigError("--train-features and --train-labels go together")
            train_x, train_y = _load_pair(args.train_features, args.train_labels)
            if train_x.shape[1] != test_x.shape[1]:
                raise DataError(args.train_features, f"{train_x.shape[1]} feature columns but {args.features} has {test_x.shape[1]}")
        source = str(args.features)
    frame = run_harness(methods, train_x, train_y, test_x, test_y, args.k, method_params=params, progress=True)
    print(f"{source}: {frame.attrs['n_test']} samples to cluster, {frame.attrs['n_train']} labelled, "
          f"kNN k={frame.attrs['k']} built in {frame.attrs['knn_seconds']:.1f} s")
    print(format_table(frame))
    if args.out is not None:
        write_results(frame, args.out, {"source": source, "methods": methods, "params": params, "k": args.k})
    return 0


def write_results(frame: pd.DataFrame, out: str | Path, run: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.json`` (run description, kNN timing, rows) into ``out``, atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "results.csv", "w", encoding="utf-8") as handle:
        frame.to_csv(handle, index=False)
    payload = {"run": dict(run), **frame.attrs, "results": json.loads(frame.to_json(orient="records"))}
    return out / "results.csv", save_json(out / "results.json", payload)


def _load_pair(features_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(load_features(features_path), dtype=np.float32)
    path = Path(labels_path)
    if path.suffix == ".meta":
        labels = load_meta(path, expected=len(features))
    else:
        if not path.is_file():
            raise DataError(path, "label file not found")
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(path, f"not a readable .npy file ({exc})") from exc
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(path, f"expected a 1-D integer label array, found {labels.dtype} of shape {labels.shape}")
        if len(labels) != len(features):
            raise DataError(path, f"{len(labels)} labels for {len(features)} feature rows in {features_path}")
    check_features(features, features_path)
    return features, labels.astype(np.int64)


def _parse_params(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.NAME=VALUE`` items (VALUE read as JSON when it parses, else as a string)."""
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        key, value = parse_assignment(item, "--param")
        method, dot, name = key.partition(".")
        if not dot or method not in methods:
            raise ConfigError(f"--param {item!r}: expected METHOD.NAME=VALUE with METHOD one of {', '.join(methods)}")
        params.setdefault(method, {})[name] = tuple(value) if isinstance(value, list) else value
    return params


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semiface-cluster-eval",
        description="Cluster features with one or more methods and score them against ground truth.",
    )
    parser.add_argument("--method", default="knn_uf,infomap", help="comma-separated method names (default: %(default)s)")
    parser.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                        help="a method parameter, e.g. knn_uf.tau=0.6 (repeatable; VALUE is JSON or a string)")
    parser.add_argument("--features", help="features to cluster (.npy or .bin float32 [N, D])")
    parser.add_argument("--labels", help="their ground-truth labels (.npy int or .meta), used only to score")
    parser.add_argument("--train-features", help="labelled features to fit methods / tune thresholds on")
    parser.add_argument("--train-labels", help="their labels (.npy int or .meta)")
    parser.add_argument("--benchmark", type=int, nargs=2, metavar=("TRAIN_IDS", "TEST_IDS"),
                        help="use generated MS1M-like features with this many train and test identities")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated features (default: %(default)s)")
    parser.add_argument("--k", type=int, default=80, help="neighbours in the kNN graph, self included (default: %(default)s)")
    parser.add_argument("--out", help="folder to write results.csv and results.json into")
    return parser


if __name__ == "__main__":
    sys.exit(main())
