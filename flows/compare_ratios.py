"""Flow ``compare-ratios``: ``semi-supervised`` at several r_U/L plus the lower and upper bounds; one table, one plot.

All runs share one ``run_dir``, hence one stage cache: the data, the first model, its features and
the trained clusterer are computed once (by the lower-bound run, which goes first) and reused.
The other runs then go in parallel: as nested flow runs in threads (``max_parallel``), or, with
``deployment`` set (e.g. ``semi-supervised/ms1m``), as separate flow runs of that deployment that
workers of its pool pick up (the run directory must then be on storage every worker sees).
"""

from __future__ import annotations

if __name__ == "__main__":  # the command line, parsed before the heavy imports (--help answers at once)
    from flows.cli import parse_flow_arguments

    COMMAND_LINE = parse_flow_arguments(__file__, "compare_ratios", shared=(
        __file__.replace("compare_ratios.py", "semi_supervised.py"), "semi_supervised", ("ratio", "labels", "label")))

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import wait

from flows.notifications import notify_failure
from flows.semi_supervised import semi_supervised
from semiface.atomic import atomic_open, save_json, save_parquet
from semiface.errors import ConfigError, DataError
from semiface.markdown import markdown_table
from tasks.common import artifact_key, experiment_name, png_markdown, route_library_logs
from tasks.plots import plot_ratio_sweep

# The parameters compare-ratios passes to every run: semi_supervised's, less what the sweep sets per run.
# They stay spelled out in compare_ratios' signature so that Prefect's parameter form shows them.
RUN_PARAMETERS = tuple(name for name in inspect.signature(semi_supervised.fn).parameters
                       if name not in ("ratio", "labels", "label"))
TABLE_COLUMNS = ("run", "r_U/L", "reached", "kept", "pseudo_classes", "purity", "pairwise_f", "bcubed_f", "nmi",
                 "rank1", "gain_vs_lower", "status")
POLL_SECONDS = 2.0  # how often the sweep looks for a finished run to start the next
SWEEP_RUN_DIR = "runs/compare-ratios"
# Stages the lower bound computes for every run of the sweep (first run, alone): a refresh of them is its own.
SHARED_BY_LOWER_BOUND = ("prepare_data", "train_backbone")


def cap_ratios(ratios: list[float], n_labelled: int, n_unlabelled: int) -> tuple[list[float], float]:
    """Ratios sorted, those beyond the pool replaced by the largest reachable one, duplicates dropped."""
    if not ratios or any(not r > 0 for r in ratios):
        raise ConfigError(f"ratios: positive r_U/L values needed, got {ratios}")
    largest = n_unlabelled / n_labelled
    capped = sorted({min(float(r), round(largest, 4)) for r in ratios})
    return capped, largest


def child_parameters(common: dict[str, Any], deployment: str | None) -> dict[str, Any]:
    """What a run is given. Nested here: every parameter. On a deployment: those this sweep was given
    away from semi_supervised's defaults, so the deployment's own parameters hold for the rest (a
    sweep over ``semi-supervised/ms1m`` runs with the ms1m settings), and ``run_dir`` always (the
    runs share it, and the sweep reads each run's summary there)."""
    if deployment is None:
        return dict(common)
    defaults = {name: p.default for name, p in inspect.signature(semi_supervised.fn).parameters.items()}
    return {name: value for name, value in common.items() if name == "run_dir" or value != defaults[name]}


@task(name="run-semi-supervised", task_run_name="run-semi-supervised[{label}]", tags=["sweep"])
def run_child(label: str, parameters: dict[str, Any], deployment: str | None) -> dict[str, Any]:
    """One run of the sweep: a nested flow run here, or a flow run of ``deployment`` on a work pool
    (its summary is read from ``<run_dir>/<label>.json``, which the run writes last: flow results are
    not persisted, and the run folder is the storage every worker of a sweep must share)."""
    if deployment is None:
        return semi_supervised(**parameters, label=label)
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters={**parameters, "label": label}, timeout=None)
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"{deployment} run {run.name} for {label} ended {run.state}")
    summary_path = Path(parameters["run_dir"]) / f"{label}.json"
    if not summary_path.is_file():
        raise DataError(summary_path, f"{deployment} run {run.name} completed but its summary is not here: "
                                      "the workers and this flow must see the same run_dir")
    return json.loads(summary_path.read_text(encoding="utf-8"))


def run_all(plan: list[tuple[str, dict[str, Any]]], deployment: str | None, max_parallel: int,
            ) -> dict[str, dict[str, Any]]:
    """Every run of ``plan``, at most ``max_parallel`` at a time (a finished run frees its slot at
    once); label -> its summary, or for a run that failed ``{"failed": why, "ratio", "labels"}``."""
    results: dict[str, dict[str, Any]] = {}
    waiting, running = list(plan), {}
    while waiting or running:
        while waiting and len(running) < max_parallel:
            label, params = waiting.pop(0)
            running[label] = (run_child.submit(label, params, deployment), params)
        wait([future for future, _ in running.values()], timeout=POLL_SECONDS)
        for label, (future, params) in list(running.items()):
            if future.state.is_final():
                del running[label]
                try:
                    results[label] = future.result()
                except Exception as exc:  # a failed run is reported in the table, not fatal to the sweep
                    get_run_logger().error("run %s failed: %s", label, exc)
                    results[label] = {"failed": str(exc), "ratio": params["ratio"], "labels": params["labels"]}
    return results


def with_run_parameters(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``fn`` (own parameters, then ``**run``) the signature its callers and Prefect see: its own
    parameters followed by every parameter of one run (``RUN_PARAMETERS``, keyword-only, with
    semi_supervised's types and defaults; ``run_dir`` defaults to ``SWEEP_RUN_DIR``). Prefect builds
    the parameter form, the deployment schema and the validation from this signature: one list of
    run parameters for both flows, shown in full."""
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    run = inspect.signature(semi_supervised.fn, eval_str=True).parameters
    shared = [run[name].replace(kind=inspect.Parameter.KEYWORD_ONLY,
                                default=SWEEP_RUN_DIR if name == "run_dir" else run[name].default)
              for name in RUN_PARAMETERS]
    fn.__signature__ = inspect.signature(fn).replace(parameters=[*own, *shared])
    return fn


@flow(name="compare-ratios", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
@with_run_parameters
def compare_ratios(
    ratios: list[float] | None = None,
    include_bounds: bool = True,
    max_parallel: int = 1,
    deployment: str | None = None,
    **run: Any,
) -> dict[str, Any]:
    """Rank-1 at the largest distractor set vs r_U/L (default 1, 3, 5, capped by the data) with both bounds."""
    logger = get_run_logger()
    route_library_logs()
    if max_parallel < 1:
        raise ConfigError(f"max_parallel: at least 1, got {max_parallel}")
    # Every parameter of one run: as given, else semi_supervised's default (Prefect fills them in from
    # the signature; a direct call of the undecorated function may leave some out).
    common = {**{name: p.default for name, p in inspect.signature(compare_ratios.fn).parameters.items()
                 if name in RUN_PARAMETERS}, **run}
    unknown = sorted(set(common) - set(RUN_PARAMETERS))
    if unknown:
        raise ConfigError(f"compare-ratios: unknown parameter(s) {unknown}")
    run_dir, refresh = common["run_dir"], common["refresh"]
    wanted = list(ratios or [1.0, 3.0, 5.0])
    if not wanted or any(not r > 0 for r in wanted):
        raise ConfigError(f"ratios: positive r_U/L values needed, got {wanted}")

    # The lower bound first: it validates the parameters and computes every shared stage once (a
    # failure there fails the sweep: every other run would fail the same way).
    lower = run_child("lower-bound", {**child_parameters(common, deployment), "labels": "labelled_only"}, deployment)
    pool = lower["n_unlabelled_pool"]
    capped, largest = cap_ratios(wanted, lower["n_labelled"], pool)
    if capped != sorted(float(r) for r in wanted):
        logger.warning("r_U/L %s capped by the data (%d labelled, %d unlabelled images: at most %.2f): running %s",
                       wanted, lower["n_labelled"], pool, largest, capped)
    given = child_parameters(common, deployment)
    if refresh:  # the lower bound recomputed the stages every run shares: once is enough
        given["refresh"] = [stage for stage in refresh if stage not in SHARED_BY_LOWER_BOUND]
    plan = [(f"ratio-{r:g}", {**given, "ratio": r, "labels": "clusters"}) for r in capped]
    if include_bounds:
        plan.append(("upper-bound", {**given, "ratio": capped[-1], "labels": "ground_truth"}))
    results: dict[str, dict[str, Any]] = {"lower-bound": lower} if include_bounds else {}
    results.update(run_all(plan, deployment, max_parallel))
    return publish_comparison(Path(run_dir) / "compare", results, lower)


def final_rank1(summary: dict[str, Any]) -> float | None:
    """Rank-1 at the largest distractor set of a run's final model (the retrained one where there is one)."""
    return summary.get("rank1_after_largest", summary.get("rank1_before_largest"))


def comparison_rows(results: dict[str, dict[str, Any]], lower: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run, in the order lower bound, ratios ascending, upper bound; a failed run keeps
    its row, with its failure as status and no figures."""
    base = final_rank1(lower)
    rows = []
    for label, s in results.items():
        if "failed" in s:
            rows.append({**dict.fromkeys(TABLE_COLUMNS), "run": label, "r_U/L": s["ratio"],
                         "status": f"failed: {s['failed']}"})
            continue
        rank1 = final_rank1(s)
        rows.append({
            "run": label, "r_U/L": s["ratio"] if s["labels"] != "labelled_only" else 0.0,
            "reached": s["effective_ratio"], "kept": s["n_kept"], "pseudo_classes": s["n_pseudo_classes"],
            "purity": s["purity"], "pairwise_f": s["pairwise_f"], "bcubed_f": s["bcubed_f"], "nmi": s["nmi"],
            "rank1": rank1, "gain_vs_lower": None if rank1 is None else 100 * (rank1 - base), "status": "completed",
        })
    order = {"lower-bound": (0, 0.0), "upper-bound": (2, 0.0)}
    return sorted(rows, key=lambda r: order.get(r["run"], (1, r["r_U/L"])))


def publish_comparison(out_dir: Path, results: dict[str, dict[str, Any]], lower: dict[str, Any]) -> dict[str, Any]:
    """Table (parquet, markdown, artifact) and plot (PNG, embedded in a markdown artifact)."""
    rows = comparison_rows(results, lower)
    sweep = [r for r in rows if r["run"].startswith("ratio-") and r["rank1"] is not None]
    upper = next((r for r in rows if r["run"] == "upper-bound"), None)
    size = lower["largest_distractor_size"]
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_ratio_sweep([r["r_U/L"] for r in sweep], [r["rank1"] for r in sweep], final_rank1(lower),
                            upper["rank1"] if upper else None, out_dir / "rank1_vs_ratio.png", size,
                            upper["r_U/L"] if upper else None)
    save_parquet(out_dir / "comparison.parquet", pd.DataFrame(rows, columns=list(TABLE_COLUMNS)))
    table_md = markdown_table(rows)
    with atomic_open(out_dir / "comparison.md", "w", encoding="utf-8") as handle:
        handle.write(f"rank-1 at {size} distractors; gain in points vs the lower bound\n\n" + table_md)
    summary = {"rows": rows, "table": str(out_dir / "comparison.md"), "plot": str(plot),
               "largest_distractor_size": size, "runs": results}
    save_json(out_dir / "comparison.json", summary)
    experiment = experiment_name(out_dir.parent)
    verdicts = ", ".join(f"`{artifact_key(experiment, label, 'verdict')}`" for label in results)
    create_table_artifact(rows, key=artifact_key(experiment, "compare-ratios-table"),
                          description=f"rank-1 at {size} distractors vs r_U/L")
    create_markdown_artifact(
        f"## r_U/L sweep: rank-1 at {size} distractors\n\n" + table_md + "\n" + png_markdown(plot, "rank-1 vs r_U/L")
        + f"\n\nEach run's own verdict: {verdicts}.\n",
        key=artifact_key(experiment, "compare-ratios"), description="r_U/L sweep with lower and upper bounds")
    return summary


if __name__ == "__main__":
    print(compare_ratios(**COMMAND_LINE))
