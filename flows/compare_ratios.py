"""Flow ``compare-ratios``: ``semi-supervised`` at several r_U/L plus the lower and upper bounds; one table, one plot.

All runs share one ``run_dir``, hence one stage cache: the data, the first model, its features and
the trained clusterer are computed once (by the lower-bound run, which goes first) and reused.
The other runs then go in parallel: as nested flow runs in threads (``max_parallel``), or, with
``deployment`` set (e.g. ``semi-supervised/ms1m``), as separate flow runs of that deployment that
workers of its pool pick up (the run directory must then be on storage every worker sees).

A run parameter left unset (None) is not sent: a run of a deployment keeps the deployment's value,
a nested run semi-supervised's default. Every parameter the caller set is sent, a value equal to a
default included. Without ``run_dir`` a sweep over a deployment runs in the deployment's own run
folder (absolute, as its workers resolve it), so the stages its runs computed there are reused.
Runs are labelled with their method (``facet-ratio-3``) and the table goes to
``<run_dir>/compare-<method>/``: sweeps of two methods in one folder keep their own files.
"""

from __future__ import annotations

SWEEP_RUN_DIR = "runs/compare-ratios"  # run_dir when neither the caller nor a deployment gives one
# What a run parameter that the sweep leaves unset takes, where it is not the deployment's or semi-supervised's.
UNSET = {"run_dir": f"{SWEEP_RUN_DIR}; with deployment, the deployment's run folder (absolute)"}

if __name__ == "__main__":  # the command line, parsed before the heavy imports (--help answers at once)
    from flows.cli import Shared, parse_flow_arguments

    COMMAND_LINE = parse_flow_arguments(__file__, "compare_ratios", shared=Shared(
        __file__.replace("compare_ratios.py", "semi_supervised.py"), "semi_supervised", ("ratio", "labels", "label"),
        UNSET))

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from flows.cli import parameter_descriptions, unset_text
from flows.deployments import read_deployment
from flows.notifications import notify_failure
from flows.parameters import as_options
from flows.semi_supervised import comparison_name, run_settings, semi_supervised
from semiface.atomic import atomic_open, save_json, save_parquet
from semiface.code_version import code_version, version_tag
from semiface.errors import ConfigError, DataError
from semiface.markdown import markdown_table
from tasks.common import artifact_key, experiment_name, png_markdown, route_library_logs, tag_flow_run
from tasks.plots import plot_ratio_sweep

# The parameters compare-ratios passes to every run: semi_supervised's, less what the sweep sets per run.
# They stay spelled out in compare_ratios' signature so that Prefect's parameter form shows them.
RUN_PARAMETERS = tuple(name for name in inspect.signature(semi_supervised.fn).parameters
                       if name not in ("ratio", "labels", "label"))
RUN_DEFAULTS = {name: p.default for name, p in inspect.signature(semi_supervised.fn).parameters.items()}
TABLE_COLUMNS = ("run", "r_U/L", "reached", "kept", "pseudo_classes", "purity", "pairwise_f", "bcubed_f", "nmi",
                 "rank1", "gain_vs_lower", "status")
POLL_SECONDS = 2.0  # how often the sweep looks for a finished run to start the next
# Stages the lower bound computes for every run of the sweep (first run, alone): a refresh of them is its own.
SHARED_BY_LOWER_BOUND = ("prepare_data", "train_backbone")


def cap_ratios(ratios: list[float], n_labelled: int, n_unlabelled: int) -> tuple[list[float], float]:
    """Ratios sorted, those beyond the pool replaced by the largest reachable one, duplicates dropped."""
    if not ratios or any(not r > 0 for r in ratios):
        raise ConfigError(f"ratios: positive r_U/L values needed, got {ratios}")
    largest = n_unlabelled / n_labelled
    capped = sorted({min(float(r), round(largest, 4)) for r in ratios})
    return capped, largest


def sweep_parameters(run: dict[str, Any], deployment: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what every run of the sweep is sent, what every run then runs with) from the run parameters the
    caller gave (``run``, None: not set).

    Sent: every parameter set, models as the plain dicts of their fields; ``run_dir`` always, absolute
    on a deployment (the caller's made absolute here, else the deployment's own as its workers resolve
    it); ``method_params={}`` when ``method`` is set without them and differs from the deployment's
    (a method's parameters mean nothing to another method). The effective parameters: semi-supervised's
    defaults, under the deployment's parameters, under those sent."""
    sent = {name: as_options(value) if name in ("data_options", "train_options", "retrain_options", "eval_set")
            else value for name, value in run.items() if value is not None}
    base = dict(RUN_DEFAULTS)
    if deployment is None:
        sent.setdefault("run_dir", SWEEP_RUN_DIR)
    else:
        target = read_deployment(deployment)
        base.update(target.parameters)
        given = Path(sent["run_dir"]).expanduser().resolve() if "run_dir" in sent else None
        sent["run_dir"] = str(given or target.run_dir(RUN_DEFAULTS["run_dir"]))
    if "method" in sent and "method_params" not in sent and sent["method"] != base.get("method"):
        sent["method_params"] = {}
    return sent, {**base, **sent}


def check_runs(effective: dict[str, Any], runs: list[dict[str, Any]], deployment: str | None) -> None:
    """Every check each run will make when it starts (``run_settings``), here and now, before any run
    starts; a deployment's stored parameters are type-checked as its runs will be. Each ``runs`` entry
    holds what differs between runs (ratio, labels)."""
    for differs in runs:
        params = semi_supervised.validate_parameters({**effective, **differs, "label": "check"})
        run_settings(**params, here=deployment is None)


@task(name="run-semi-supervised", task_run_name="run-semi-supervised[{label}]", tags=["sweep"], cache_policy=NO_CACHE)
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


def run_all(plan: list[tuple[str, str, dict[str, Any]]], deployment: str | None, max_parallel: int,
            ) -> dict[str, dict[str, Any]]:
    """Every run of ``plan`` (name in the table, label, parameters), at most ``max_parallel`` at a time
    (a finished run frees its slot at once); name -> its summary, or for a run that failed
    ``{"failed": why, "ratio", "labels"}``."""
    results: dict[str, dict[str, Any]] = {}
    waiting, running = list(plan), {}
    while waiting or running:
        while waiting and len(running) < max_parallel:
            name, label, params = waiting.pop(0)
            running[name] = (run_child.submit(label, params, deployment), params)
        wait([future for future, _ in running.values()], timeout=POLL_SECONDS)
        for name, (future, params) in list(running.items()):
            if future.state.is_final():
                del running[name]
                try:
                    results[name] = future.result()
                except Exception as exc:  # a failed run is reported in the table, not fatal to the sweep
                    get_run_logger().error("run %s failed: %s", name, exc)
                    results[name] = {"failed": str(exc), "ratio": params["ratio"], "labels": params["labels"]}
    return results


def with_run_parameters(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``fn`` (own parameters, then ``**run``) the signature and docstring its callers and Prefect
    see: its own parameters followed by every parameter of one run (``RUN_PARAMETERS``, keyword-only,
    semi_supervised's types made optional, default None: not set), each described as in
    semi_supervised's docstring with the value an unset one takes. Prefect builds the parameter form,
    the deployment schema and the validation from these: one list of run parameters for both flows."""
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    run = inspect.signature(semi_supervised.fn, eval_str=True).parameters
    shared = [run[name].replace(kind=inspect.Parameter.KEYWORD_ONLY, default=None,
                                annotation=run[name].annotation | None) for name in RUN_PARAMETERS]
    fn.__signature__ = inspect.signature(fn).replace(parameters=[*own, *shared])
    described = parameter_descriptions(inspect.getdoc(semi_supervised.fn) or "")
    lines = [f"    {name}: {described.get(name, '')} Not set: {unset_text(name, RUN_DEFAULTS[name], UNSET)}."
             for name in RUN_PARAMETERS]
    fn.__doc__ = (inspect.getdoc(fn) or "") + "\n" + "\n".join(lines) + "\n"
    return fn


@flow(name="compare-ratios", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
@with_run_parameters
def compare_ratios(
    ratios: tuple[float, ...] = (1.0, 3.0, 5.0),
    include_bounds: bool = True,
    max_parallel: int = 1,
    deployment: str | None = None,
    **run: Any,
) -> dict[str, Any]:
    """Rank-1 at the largest distractor set vs r_U/L, with the lower bound (labelled only) and the upper bound.

    Args:
        ratios: the r_U/L to run (capped by the unlabelled pool: ratios beyond it run at the largest reachable).
        include_bounds: also run the upper bound (ground-truth labels for the largest ratio's sample) and
            show the lower bound in the table (it runs first either way).
        max_parallel: runs at a time after the lower bound (threads here, or flow runs on the deployment's pool).
        deployment: run each run as a flow run of this deployment (e.g. semi-supervised/ms1m) instead of
            nested here; unset run parameters keep the deployment's values.
    """
    logger = get_run_logger()
    route_library_logs()
    unknown = sorted(set(run) - set(RUN_PARAMETERS))
    if unknown:
        raise ConfigError(f"compare-ratios: unknown parameter(s) {unknown}")
    if max_parallel < 1:
        raise ConfigError(f"max_parallel: at least 1, got {max_parallel}")
    wanted = list(ratios)
    if not wanted or any(not r > 0 for r in wanted):
        raise ConfigError(f"ratios: positive r_U/L values needed, got {wanted}")
    sent, effective = sweep_parameters(run, deployment)
    method, run_dir = effective["method"], sent["run_dir"]
    version = code_version()
    tag_flow_run(version_tag(version))
    check_runs(effective, [{"labels": "labelled_only"}, {"labels": "clusters", "ratio": min(wanted)},
                           *([{"labels": "ground_truth", "ratio": max(wanted)}] if include_bounds else [])], deployment)
    logger.info("compare-ratios: %s, r_U/L %s, in %s%s", method, wanted, run_dir,
                f" (runs of {deployment})" if deployment else "")

    # The lower bound first: it computes every shared stage once (a failure there fails the sweep:
    # every other run would fail the same way).
    lower = run_child(f"{method}-lower-bound", {**sent, "labels": "labelled_only"}, deployment)
    pool = lower["n_unlabelled_pool"]
    capped, largest = cap_ratios(wanted, lower["n_labelled"], pool)
    if capped != sorted(float(r) for r in wanted):
        logger.warning("r_U/L %s capped by the data (%d labelled, %d unlabelled images: at most %.2f): running %s",
                       wanted, lower["n_labelled"], pool, largest, capped)
    given = dict(sent)
    if sent.get("refresh"):  # the lower bound recomputed the stages every run shares: once is enough
        given["refresh"] = [stage for stage in sent["refresh"] if stage not in SHARED_BY_LOWER_BOUND]
    plan = [(f"ratio-{r:g}", f"{method}-ratio-{r:g}", {**given, "ratio": r, "labels": "clusters"}) for r in capped]
    if include_bounds:
        plan.append(("upper-bound", f"{method}-upper-bound", {**given, "ratio": capped[-1], "labels": "ground_truth"}))
    results: dict[str, dict[str, Any]] = {"lower-bound": lower} if include_bounds else {}
    results.update(run_all(plan, deployment, max_parallel))
    return publish_comparison(Path(run_dir) / comparison_name(method), results, lower, method, version)


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


def publish_comparison(out_dir: Path, results: dict[str, dict[str, Any]], lower: dict[str, Any],
                       method: str, version: dict[str, Any]) -> dict[str, Any]:
    """Table (parquet, markdown, artifact) and plot (PNG, embedded in a markdown artifact) of ``method``'s runs."""
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
        handle.write(f"{method}: rank-1 at {size} distractors; gain in points vs the lower bound\n\n" + table_md)
    summary = {"rows": rows, "table": str(out_dir / "comparison.md"), "plot": str(plot),
               "largest_distractor_size": size, "runs": results, "code_version": version}
    save_json(out_dir / "comparison.json", summary)
    experiment = experiment_name(out_dir.parent)
    verdicts = ", ".join(f"`{artifact_key(experiment, method, name, 'verdict')}`" for name in results)
    create_table_artifact(rows, key=artifact_key(experiment, comparison_name(method), "table"),
                          description=f"{method}: rank-1 at {size} distractors vs r_U/L")
    create_markdown_artifact(
        f"## r_U/L sweep of {method}: rank-1 at {size} distractors\n\n" + table_md + "\n"
        + png_markdown(plot, "rank-1 vs r_U/L") + f"\n\nEach run's own verdict: {verdicts}.\n",
        key=artifact_key(experiment, comparison_name(method)), description=f"r_U/L sweep of {method} with both bounds")
    return summary


if __name__ == "__main__":
    print(compare_ratios(**COMMAND_LINE))
